"""Percentiles read from the log-bucket histograms: never above the maximum nor below the
minimum, within their stated relative error of the exact percentile, the same merged or not."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from streams.pipeline.aggregates import (
    BUCKET_RELATIVE_ERROR,
    LATENCY_BOUNDS_MS,
    Histogram,
    Quantile,
    quantile_estimate,
    quantile_from_counts,
)
from streams.query.latency import merge_step_latency, step_quantiles
from streams.query.readmodel import COST_BOUNDS_MICROS, combine, cost_bucket

#: float slack: a value on a bucket's bound is exactly RELATIVE_ERROR away
EPS = 1e-9

latencies = st.lists(
    st.floats(min_value=0.0, max_value=LATENCY_BOUNDS_MS[-1], allow_nan=False),
    min_size=1,
    max_size=300,
)
quantiles = st.sampled_from([0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0])


def exact(values: list[float], q: float) -> float:
    """The nearest-rank percentile: the ceil(q*n)-th smallest value."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def histogram(values: list[float]) -> Histogram:
    h = Histogram()
    for v in values:
        h.observe(v)
    return h


def within_error(estimate: Quantile, truth: float, first_bound: float) -> bool:
    """Within the bound the estimate states; without one (its bucket reaches down to 0), within
    the first bucket's width."""
    if estimate.relative_error is None:
        return truth <= first_bound and abs(estimate.value - truth) <= first_bound
    assert 0 <= estimate.relative_error <= BUCKET_RELATIVE_ERROR + EPS
    return abs(estimate.value - truth) <= estimate.relative_error * truth * (1 + EPS) + EPS


@given(latencies, quantiles)
def test_a_percentile_is_inside_min_max_and_within_the_stated_error(
    values: list[float], q: float
) -> None:
    estimate = histogram(values).estimate(q)
    assert min(values) <= estimate.value <= max(values)
    assert within_error(estimate, exact(values, q), LATENCY_BOUNDS_MS[0])


@given(
    st.lists(st.integers(min_value=0, max_value=3_000_000_000), min_size=1, max_size=300),
    quantiles,
)
def test_session_cost_percentiles_hold_the_same_bounds(costs: list[int], q: float) -> None:
    counts = [0] * (len(COST_BOUNDS_MICROS) + 1)
    for c in costs:
        counts[cost_bucket(c)] += 1
    estimate = quantile_estimate(
        counts, q, COST_BOUNDS_MICROS, minimum=min(costs), maximum=max(costs)
    )
    assert min(costs) <= estimate.value <= max(costs)
    assert within_error(estimate, exact([float(c) for c in costs], q), COST_BOUNDS_MICROS[0])


@given(latencies, quantiles, st.integers(min_value=1, max_value=5))
def test_merged_across_workers_it_is_the_same_percentile(
    values: list[float], q: float, workers: int
) -> None:
    """Each worker holds some partitions' histograms; the group's answer adds them up."""
    parts = [histogram(values[i::workers]) for i in range(workers)]
    answers = [
        {"step_histograms": {"LLM_CALL": list(h.counts)}, "step_ms_by_kind": step_quantiles(
            {"LLM_CALL": h}) if h.count else {}}
        for h in parts
    ]  # fmt: skip
    merged = merge_step_latency(answers)["step_ms_by_kind"]["LLM_CALL"]
    whole = histogram(values)
    assert merged["steps"] == len(values)
    assert (merged["min"], merged["max"]) == (min(values), max(values))
    assert merged["p99"] == whole.quantile(0.99)
    assert merged["error"]["p99"] == whole.estimate(0.99).relative_error
    assert min(values) <= whole.quantile(q) <= max(values)


def test_the_overflow_bucket_reads_as_the_maximum_not_infinity() -> None:
    values = [5.0, 10.0, LATENCY_BOUNDS_MS[-1] * 3]
    assert histogram(values).quantile(1.0) == values[-1]
    counts = histogram(values).counts
    assert quantile_from_counts(counts, 1.0) == math.inf, "unclamped: the bucket has no top"


def test_the_issue_case_a_p99_above_the_most_expensive_session_cannot_happen() -> None:
    """ask cost: a p99 of $2.49 when the most expensive session cost $2.10 (the bucket's upper
    bound): now the p99 is at most the maximum, here the maximum itself."""
    costs = [100_000] * 98 + [1_900_000, 2_100_000]
    counts = [0] * (len(COST_BOUNDS_MICROS) + 1)
    for c in costs:
        counts[cost_bucket(c)] += 1
    upper_bound = COST_BOUNDS_MICROS[cost_bucket(2_100_000)]
    assert upper_bound > 2_400_000, "the old answer"
    p99 = quantile_estimate(counts, 0.99, COST_BOUNDS_MICROS, minimum=1e5, maximum=2.1e6)
    assert p99.value <= 2_100_000
    assert within_error(p99, exact([float(c) for c in costs], 0.99), 1)
    assert quantile_estimate(counts, 1.0, COST_BOUNDS_MICROS, maximum=2.1e6) == Quantile(
        2.1e6, 0.0
    ), "the largest rank is the maximum itself"


def test_a_histogram_restored_from_an_old_changelog_is_not_clamped() -> None:
    """State written before the extremes were kept has none: its percentiles stay the bucket
    estimates, and merging it into a new histogram does not pretend to know them."""
    new = histogram([3.0, 4.0])
    old_state = {"counts": histogram([500.0]).to_state()["counts"], "count": 1, "sum_ms": 500.0}
    old = Histogram.from_state(old_state)
    assert (old.min_ms, old.max_ms) == (-math.inf, math.inf)
    old.merge(new)
    assert old.quantile(1.0) == quantile_from_counts(old.counts, 1.0), "not clamped to 4 ms"
    again = Histogram.from_state(new.to_state())
    assert (again.min_ms, again.max_ms, again.counts) == (3.0, 4.0, new.counts)
    assert math.isnan(Histogram.from_state(Histogram().to_state()).quantile(0.5))


def test_read_model_extremes_combine_by_max_and_min_and_counters_by_sum() -> None:
    total: dict[str, float] = {}
    for field, value in [
        ("~max|all|cost", 5.0),
        ("~max|all|cost", 3.0),
        ("~min|all|cost", 3.0),
        ("~min|all|cost", 4.0),
        ("all|cost", 5.0),
        ("all|cost", 3.0),
    ]:
        combine(total, field, value)  # fmt: skip
    assert total == {"~max|all|cost": 5.0, "~min|all|cost": 3.0, "all|cost": 8.0}
