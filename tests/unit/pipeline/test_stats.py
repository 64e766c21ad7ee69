"""Drift tests agree with scipy (a dev-only dependency) and behave on empty and degenerate input."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special
from scipy import stats as scipy_stats
from scipy.stats.contingency import association

from streams.pipeline.stats import (
    OTHER,
    TestResult,
    benjamini_hochberg,
    chi2_sf,
    chi_square,
    contingency,
    holm,
    kolmogorov_sf,
    ks_2samp,
    kstwo_sf,
    mann_whitney,
    normal_sf,
)

# Below this scipy's own values are subnormal or zero, where relative error means nothing
UNDERFLOW = 1e-290


def close_p(ours: float, reference: float, rel: float = 1e-9) -> bool:
    if reference < UNDERFLOW:
        return ours < UNDERFLOW
    return math.isclose(ours, reference, rel_tol=rel)


def samples(rng: random.Random, n: int, kind: str, shift: float = 0.0) -> list[float]:
    if kind == "continuous":
        return [rng.gauss(shift, 1.0) for _ in range(n)]
    if kind == "few-values":
        return [float(rng.randint(0, 4) + (1 if rng.random() < shift else 0)) for _ in range(n)]
    return [round(rng.expovariate(1.0) + shift, 1) for _ in range(n)]


# --- distributions ------------------------------------------------------------------------------


DOFS = [0.5, 1, 2, 3, 4, 5, 7, 10, 25, 50, 100, 300, 1000, 5000]
XS = [10.0**e for e in (-6, -3, -1)] + [0.5 * i for i in range(1, 40)] + [50, 100, 500, 2000]


@pytest.mark.parametrize("dof", DOFS)
def test_chi2_sf_matches_scipy(dof: float) -> None:
    # Points right around the mean too, where the series hands over to the continued fraction
    xs = [*XS, *(dof + delta for delta in (-3.0, -1.0, -0.25, 0.0, 0.25, 1.0, 3.0))]
    for x in xs:
        if x > 0:
            assert close_p(chi2_sf(x, dof), float(scipy_stats.chi2.sf(x, dof))), (x, dof)


def test_chi2_sf_edges() -> None:
    assert chi2_sf(0.0, 3) == 1.0
    assert chi2_sf(-1.0, 3) == 1.0
    assert chi2_sf(math.inf, 3) == 0.0
    assert chi2_sf(1e6, 2) == 0.0
    with pytest.raises(ValueError, match="degrees of freedom"):
        chi2_sf(1.0, 0)
    with pytest.raises(ValueError, match="NaN"):
        chi2_sf(math.nan, 1)


def test_normal_sf_matches_scipy() -> None:
    for i in range(-80, 300):
        z = i / 10
        assert close_p(normal_sf(z), float(scipy_stats.norm.sf(z)), rel=1e-12), z


def test_kolmogorov_sf_matches_scipy() -> None:
    for i in range(0, 400):
        x = i / 100
        assert kolmogorov_sf(x) == pytest.approx(float(special.kolmogorov(x)), abs=1e-13), x


@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 40, 139, 140, 141, 300, 500, 501, 2500, 20000])
def test_kstwo_sf_matches_scipy(n: int) -> None:
    # Covers each regime: Ruben-Gambino ends, Durbin's matrix, Pelz-Good, doubled Smirnov
    ds = [i / 400 for i in range(1, 400)]
    ds += [0.5 / n, 0.75 / n, 1.0 / n, (n - 1.0) / n, 0.5, (1.4 / n) ** (2 / 3), math.sqrt(2.2 / n)]
    ds += [math.sqrt(4.0 / n) * f for f in (0.5, 0.99, 1.01)]
    for d in ds:
        if 0 < d < 1:
            reference = float(scipy_stats.kstwo.sf(d, n))
            assert kstwo_sf(d, n) == pytest.approx(reference, abs=1e-6), (n, d)


# --- chi-square ---------------------------------------------------------------------------------


def random_table(rng: random.Random) -> list[list[float]]:
    n_rows, n_columns = rng.randint(2, 4), rng.randint(2, 6)
    scale = rng.choice([3, 20, 500])
    table = [[float(rng.randint(0, scale)) for _ in range(n_columns)] for _ in range(n_rows)]
    if rng.random() < 0.3:
        for row in table:
            row[rng.randrange(n_columns)] = 0.0
    if rng.random() < 0.2:
        table.append([0.0] * n_columns)
    return table


def without_empty_lines(table: list[list[float]]) -> list[list[float]]:
    rows = [row for row in table if any(row)]
    columns = [j for j in range(len(table[0])) if any(row[j] for row in rows)]
    return [[row[j] for j in columns] for row in rows]


def test_chi_square_matches_scipy() -> None:
    rng = random.Random(20240601)
    checked = 0
    for _ in range(400):
        table = random_table(rng)
        reduced = without_empty_lines(table)
        result = chi_square(table, n_before=int(sum(table[0])), n_after=int(sum(table[1])))
        if len(reduced) < 2 or len(reduced[0]) < 2:
            assert (result.statistic, result.p_value, result.effect) == (0.0, 1.0, 0.0)
            continue
        statistic, p_value, dof, _ = scipy_stats.chi2_contingency(reduced, correction=False)
        assert result.statistic == pytest.approx(float(statistic), rel=1e-9, abs=1e-12)
        assert close_p(result.p_value, float(p_value)), table
        assert result.dof == dof
        cramers_v = association([[int(c) for c in row] for row in reduced], method="cramer")
        assert result.effect == pytest.approx(float(cramers_v), rel=1e-9, abs=1e-12)
        checked += 1
    assert checked > 300


def test_chi_square_result_fields() -> None:
    result = chi_square([[30, 10], [10, 30]], n_before=40, n_after=40)
    assert (result.test, result.effect_name, result.dof) == ("chi-square", "cramers_v", 1)
    assert (result.n_before, result.n_after) == (40, 40)
    # 2x2 with a 3:1 split each way: chi2 = 20, V = sqrt(20/80)
    assert result.statistic == pytest.approx(20.0)
    assert result.effect == pytest.approx(0.5)


@pytest.mark.parametrize(
    "table",
    [[], [[]], [[0, 0], [0, 0]], [[5], [7]], [[5, 0], [7, 0]], [[5, 3, 2]], [[5, 3], [0, 0]]],
)
def test_chi_square_degenerate_tables(table: list[list[float]]) -> None:
    result = chi_square(table, n_before=0, n_after=0)
    assert (result.statistic, result.p_value, result.effect, result.dof) == (0.0, 1.0, 0.0, 0)


def test_chi_square_rejects_bad_tables() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        chi_square([[1, -1], [2, 3]], 0, 5)
    with pytest.raises(ValueError, match="non-negative"):
        chi_square([[1, math.nan], [2, 3]], 1, 5)
    with pytest.raises(ValueError, match="equal length"):
        chi_square([[1, 2], [3]], 3, 3)


# --- contingency --------------------------------------------------------------------------------


def test_contingency_merges_the_sparsest_into_other() -> None:
    before = {"ok": 78, "timeout": 10, "error": 6, "killed": 6}
    after = {"ok": 70, "timeout": 20, "error": 5, "rate_limited": 5}
    labels, table = contingency(before, after)
    # Every expected count >= 5 needs column totals >= 5 * 200 / 100 = 10
    assert labels == ["ok", "timeout", "error", OTHER]
    assert table == [[78, 10, 6, 6], [70, 20, 5, 5]]


def test_contingency_merges_until_other_meets_the_rule_too() -> None:
    before = {"ok": 90, "timeout": 6, "error": 3, "killed": 1}
    after = {"ok": 80, "timeout": 15, "error": 4, "rate_limited": 1}
    labels, table = contingency(before, after)
    # killed, rate_limited and error add up to 9 < 10, so timeout has to join them
    assert labels == ["ok", OTHER]
    assert table == [[90, 10], [80, 20]]


def test_contingency_keeps_everything_when_counts_are_ample() -> None:
    labels, table = contingency({"b": 50, "a": 50, "c": 20}, {"a": 40, "c": 30, "b": 60})
    assert labels == ["b", "a", "c"]  # by total (110, 90, 50)
    assert table == [[50, 50, 20], [60, 40, 30]]


def test_contingency_folds_an_existing_other_category_in() -> None:
    labels, table = contingency({"x": 100, OTHER: 2, "y": 1}, {"x": 100, OTHER: 3, "y": 9})
    assert labels == ["x", OTHER]
    assert table == [[100, 3], [100, 12]]


def test_contingency_with_an_empty_side_merges_nothing() -> None:
    labels, table = contingency({"a": 3, "b": 1}, {})
    assert labels == ["a", "b"]
    assert table == [[3, 1], [0, 0]]
    assert contingency({}, {}) == ([], [[], []])
    assert chi_square(table, 4, 0).p_value == 1.0


def test_contingency_rejects_bad_counts() -> None:
    with pytest.raises(ValueError, match="'b'"):
        contingency({"a": 1, "b": -2}, {"a": 1})
    with pytest.raises(ValueError, match="min_expected"):
        contingency({"a": 1}, {"a": 1}, min_expected=-1)


counts = st.dictionaries(
    st.sampled_from(["ok", "error", "timeout", "killed", OTHER, "tool:a", "tool:b", "tool:c"]),
    st.integers(0, 60),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(counts, counts, st.sampled_from([0.0, 1.0, 5.0, 10.0]))
def test_contingency_meets_the_expected_count_rule(
    before: dict[str, int], after: dict[str, int], min_expected: float
) -> None:
    labels, table = contingency(before, after, min_expected)
    assert len(table) == 2
    assert all(len(row) == len(labels) for row in table)
    assert len(set(labels)) == len(labels)
    assert sum(table[0]) == sum(before.values())
    assert sum(table[1]) == sum(after.values())
    assert contingency(dict(reversed(before.items())), after, min_expected) == (labels, table)
    row_totals = [sum(table[0]), sum(table[1])]
    total = sum(row_totals)
    if min(row_totals) == 0 or len(labels) < 2:
        return
    for j in range(len(labels)):
        column_total = table[0][j] + table[1][j]
        expected = [row_total * column_total / total for row_total in row_totals]
        assert min(expected) >= min_expected - 1e-9, (labels, table)


# --- Mann-Whitney -------------------------------------------------------------------------------


def cliffs_delta_by_pairs(before: Sequence[float], after: Sequence[float]) -> float:
    greater = sum(1 for a in after for b in before if a > b)
    smaller = sum(1 for a in after for b in before if a < b)
    return (greater - smaller) / (len(before) * len(after))


@pytest.mark.parametrize("kind", ["continuous", "few-values", "rounded"])
def test_mann_whitney_matches_scipy(kind: str) -> None:
    rng = random.Random(f"mann-whitney-{kind}")
    for _ in range(150):
        before = samples(rng, rng.randint(1, 80), kind)
        after = samples(rng, rng.randint(1, 80), kind, shift=rng.choice([0.0, 0.3, 1.0]))
        if len(set(before) | set(after)) == 1:
            continue
        result = mann_whitney(before, after)
        reference = scipy_stats.mannwhitneyu(
            after, before, alternative="two-sided", method="asymptotic", use_continuity=True
        )
        assert result.statistic == float(reference.statistic)
        assert close_p(result.p_value, float(reference.pvalue)), (before, after)
        assert result.effect == pytest.approx(cliffs_delta_by_pairs(before, after), abs=1e-12)


def test_mann_whitney_large_samples_match_scipy() -> None:
    rng = random.Random(7)
    before = samples(rng, 3000, "rounded")
    after = samples(rng, 2000, "rounded", shift=0.05)
    result = mann_whitney(before, after)
    reference = scipy_stats.mannwhitneyu(after, before, method="asymptotic")
    assert result.statistic == float(reference.statistic)
    assert close_p(result.p_value, float(reference.pvalue))


def test_mann_whitney_sign_and_fields() -> None:
    result = mann_whitney([1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0])
    assert (result.test, result.effect_name, result.dof) == ("mann-whitney", "cliffs_delta", None)
    assert (result.n_before, result.n_after, result.statistic, result.effect) == (3, 4, 12.0, 1.0)
    assert mann_whitney([4.0, 5.0, 6.0, 7.0], [1.0, 2.0, 3.0]).effect == -1.0


def test_mann_whitney_degenerate_input() -> None:
    for before, after in [
        ([], []),
        ([], [1.0]),
        ([2.0], []),
        ([3.0] * 5, [3.0] * 7),
        ([1.0], [1.0]),
    ]:
        result = mann_whitney(before, after)
        assert (result.p_value, result.effect) == (1.0, 0.0)
    with pytest.raises(ValueError, match="NaN"):
        mann_whitney([1.0, math.nan], [2.0])


# --- Kolmogorov-Smirnov -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["continuous", "few-values", "rounded"])
def test_ks_2samp_matches_scipy(kind: str) -> None:
    rng = random.Random(f"ks-{kind}")
    sizes = [1, 2, 3, 5, 10, 30, 100, 280, 600, 1500]
    for _ in range(120):
        before = samples(rng, rng.choice(sizes), kind)
        after = samples(rng, rng.choice(sizes), kind, shift=rng.choice([0.0, 0.2, 0.5, 1.5]))
        result = ks_2samp(before, after)
        if len(before) == len(after) == 1:
            assert result.p_value == 1.0  # scipy: NaN, from an effective size of 0
            continue
        reference = scipy_stats.ks_2samp(before, after, method="asymp")
        assert result.statistic == pytest.approx(float(reference.statistic), abs=1e-12)
        assert result.effect == result.statistic
        assert result.p_value == pytest.approx(float(reference.pvalue), abs=1e-6), (
            len(before),
            len(after),
            result.statistic,
        )


def test_ks_2samp_degenerate_input() -> None:
    for before, after in [([], []), ([], [1.0]), ([2.0], [])]:
        result = ks_2samp(before, after)
        assert (result.statistic, result.p_value, result.effect) == (0.0, 1.0, 0.0)
    same = ks_2samp([3.0] * 50, [3.0] * 40)
    assert (same.statistic, same.p_value) == (0.0, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        ks_2samp([math.nan], [2.0])


# --- the tests detect what they should ----------------------------------------------------------


def test_a_large_shift_is_significant_and_identical_samples_are_not() -> None:
    rng = random.Random(11)
    before = [rng.gauss(0.0, 1.0) for _ in range(500)]
    shifted = [rng.gauss(1.0, 1.0) for _ in range(500)]
    for test in (mann_whitney, ks_2samp):
        assert test(before, shifted).p_value < 1e-20
        assert test(before, list(before)).p_value > 0.99
    assert mann_whitney(before, shifted).effect > 0.4
    assert ks_2samp(before, shifted).effect > 0.3

    drifted = chi_square([[450, 50], [300, 200]], 500, 500)
    assert drifted.p_value < 1e-20
    assert drifted.effect > 0.3
    steady = chi_square([[450, 50], [450, 50]], 500, 500)
    assert (steady.p_value, steady.effect) == (1.0, 0.0)


# --- multiplicity -------------------------------------------------------------------------------


def test_holm_by_hand() -> None:
    # sorted: 0.01*4 = 0.04, 0.02*3 = 0.06, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([0.001]) == [0.001]
    assert holm([]) == []


def test_benjamini_hochberg_by_hand() -> None:
    # sorted: 0.01*4/1 = 0.04, 0.02*4/2 = 0.04, 0.03*4/3 = 0.04, 0.5*4/4 = 0.5
    assert benjamini_hochberg([0.5, 0.03, 0.01, 0.02]) == pytest.approx([0.5, 0.04, 0.04, 0.04])
    # step-up: 0.04*3/2 = 0.06 is lowered to min(0.06, 0.045*3/3) = 0.045
    assert benjamini_hochberg([0.045, 0.04, 0.001]) == pytest.approx([0.045, 0.045, 0.003])
    assert benjamini_hochberg([]) == []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), max_size=40))
def test_adjustments_are_monotone_capped_and_match_scipy(p_values: list[float]) -> None:
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    for adjust in (holm, benjamini_hochberg):
        adjusted = adjust(p_values)
        # m * p / m need not give p back exactly
        assert all(p * (1 - 1e-15) <= a <= 1.0 for p, a in zip(p_values, adjusted, strict=True))
        in_order = [adjusted[i] for i in order]
        assert in_order == sorted(in_order)
    if p_values:
        reference = scipy_stats.false_discovery_control(p_values, method="bh")
        assert benjamini_hochberg(p_values) == pytest.approx(list(reference), rel=1e-12)


def test_adjustments_reject_values_outside_0_1() -> None:
    for adjust in (holm, benjamini_hochberg):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            adjust([0.1, 1.5])
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            adjust([math.nan])


def test_result_class_is_not_collected_as_a_test() -> None:
    assert TestResult.__test__ is False
