"""Two-sample tests for behavioural drift: chi-square, Mann-Whitney U, Kolmogorov-Smirnov (pure).

Drift detection compares a window of agent behaviour before a change with a window after it:
categorical outcomes (status, tool choice) through a contingency table, numeric ones (latency,
cost, tokens) through rank and distribution tests. Every test returns a p-value and an effect
size, because with streams of thousands of sessions a tiny, harmless shift is "significant" and
only the effect says whether it matters. Many metrics are tested at once, so Holm and
Benjamini-Hochberg adjust the p-values for multiplicity.

Only ``math`` is used: the worker should not pull numpy and scipy in for a handful of
p-values. The p-values follow scipy's definitions (``chi2_contingency(correction=False)``,
``mannwhitneyu(method="asymptotic")``, ``ks_2samp(method="asymp")``) and the tests check them
against scipy. The asymptotic p-values mean little for a handful of observations; callers should
require a minimum sample size before acting on them.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

OTHER = "other"

_EPS = 1e-16
_TINY = 1e-300
_MAX_ITERATIONS = 100_000
_SQRT_2PI = math.sqrt(2 * math.pi)
_PI2 = math.pi**2
_PI4 = math.pi**4
_PI6 = math.pi**6
# The exact finite-n Kolmogorov computation rescales by 2**±128 to stay inside double range
_SCALE_EXPONENT = 128
_SCALE = 2.0**_SCALE_EXPONENT


@dataclass(frozen=True)
class TestResult:
    # Not a test class, whatever its name says
    __test__: ClassVar[bool] = False

    test: str
    statistic: float
    p_value: float
    effect: float
    effect_name: str
    n_before: int
    n_after: int
    dof: int | None = None


# --- distributions ------------------------------------------------------------------------------


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z; erfc keeps the far tail accurate (1 - cdf would not)."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def chi2_sf(x: float, dof: float) -> float:
    """P(X > x) for X ~ chi-square(dof): the regularized upper incomplete gamma Q(dof/2, x/2)."""
    if math.isnan(x) or math.isnan(dof):
        raise ValueError("chi2_sf needs numbers, got NaN")
    if dof <= 0:
        raise ValueError(f"chi-square degrees of freedom must be positive, got {dof}")
    if x <= 0:
        return 1.0
    if math.isinf(x):
        return 0.0
    return _gamma_q(dof / 2.0, x / 2.0)


def _gamma_q(a: float, x: float) -> float:
    log_prefactor = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1.0:
        # The series converges fast here and Q is not small, so 1 - P loses nothing
        return max(0.0, 1.0 - _gamma_p_series(a, x, log_prefactor))
    return _gamma_q_continued_fraction(a, x, log_prefactor)


def _gamma_p_series(a: float, x: float, log_prefactor: float) -> float:
    term = 1.0 / a
    total = term
    denominator = a
    for _ in range(_MAX_ITERATIONS):
        denominator += 1.0
        term *= x / denominator
        total += term
        if abs(term) < abs(total) * _EPS:
            break
    return min(1.0, total * math.exp(log_prefactor))


def _gamma_q_continued_fraction(a: float, x: float, log_prefactor: float) -> float:
    # Modified Lentz: evaluates Q directly, so tiny upper tails keep their relative accuracy
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    fraction = d
    for i in range(1, _MAX_ITERATIONS):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        if abs(d) < _TINY:
            d = _TINY
        c = b + an / c
        if abs(c) < _TINY:
            c = _TINY
        d = 1.0 / d
        delta = d * c
        fraction *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return min(1.0, math.exp(log_prefactor) * fraction)


def kolmogorov_sf(x: float) -> float:
    """P(K > x) for Kolmogorov's limiting distribution (of sqrt(n) * D_n as n grows).

    ``ks_2samp`` does not use it: at the sample sizes drift windows have, the finite-n
    distribution (``kstwo_sf``) differs from the limit in the third decimal.
    """
    if math.isnan(x):
        raise ValueError("kolmogorov_sf needs a number, got NaN")
    if x <= 0:
        return 1.0
    if x < 1.0:
        # Jacobi's theta form of the CDF converges in a few terms where the usual series is slow
        exponent = -_PI2 / (8.0 * x * x)
        cdf = 0.0
        for k in range(1, 100):
            term = math.exp(exponent * (2 * k - 1) ** 2)
            cdf += term
            if term < _EPS * cdf:
                break
        return max(0.0, min(1.0, 1.0 - _SQRT_2PI / x * cdf))
    total = 0.0
    sign = 1.0
    for k in range(1, 100):
        term = math.exp(-2.0 * k * k * x * x)
        total += sign * term
        if term <= _EPS * total:
            break
        sign = -sign
    return max(0.0, min(1.0, 2.0 * total))


def kstwo_sf(d: float, n: int) -> float:
    """P(D_n > d) for the two-sided one-sample Kolmogorov-Smirnov statistic with n observations.

    Follows Simard and L'Ecuyer (2011), as scipy's ``kstwo`` does: closed forms at the extremes,
    Durbin's matrix method (exact) for small n * d**2, the Smirnov one-sided formula doubled in
    the tail, and the Pelz-Good expansion elsewhere. Where scipy would run the Durbin matrix for
    n > 500, Pelz-Good is used instead: it agrees to better than 1e-7 there and costs no matrix.
    """
    if math.isnan(d):
        raise ValueError("kstwo_sf needs a number, got NaN")
    if n < 1:
        raise ValueError(f"kstwo_sf needs n >= 1, got {n}")
    if d >= 1.0:
        return 0.0
    if d <= 0.0:
        return 1.0
    t = n * d
    if t <= 1.0:
        # Ruben and Gambino: P(D_n <= d) = n!/n^n (2t - 1)^n for 1/(2n) <= d <= 1/n
        if t <= 0.5:
            return 1.0
        log_cdf = math.lgamma(n + 1) - n * math.log(n) + n * math.log(2 * t - 1)
        return _clip(1.0 - math.exp(log_cdf))
    if t >= n - 1:
        return _clip(2.0 * (1.0 - d) ** n)
    if d >= 0.5:
        # Exact here: D_n+ and D_n- cannot both exceed 1/2
        return _clip(2.0 * _smirnov_sf(n, d))
    n_d_squared = t * d
    if n <= 140:
        if n_d_squared <= 4.0:
            return _clip(1.0 - _kolmogorov_cdf_durbin(n, d))
        return _clip(2.0 * _smirnov_sf(n, d))
    if n_d_squared >= 370.0:
        return 0.0
    if n_d_squared >= 2.2:
        return _clip(2.0 * _smirnov_sf(n, d))
    if n <= 500 and n * d**1.5 <= 1.4:
        return _clip(1.0 - _kolmogorov_cdf_durbin(n, d))
    return _clip(1.0 - _kolmogorov_cdf_pelz_good(n, d))


def _clip(p: float) -> float:
    return max(0.0, min(1.0, p))


def _smirnov_sf(n: int, d: float) -> float:
    """P(D_n+ >= d), one-sided, by the Birnbaum-Tingey sum (all terms positive, taken in logs)."""
    last = math.floor(n * (1.0 - d))
    log_n_factorial = math.lgamma(n + 1)
    total = 0.0
    for v in range(last + 1):
        upper = d + v / n
        lower = 1.0 - upper
        if lower <= 0.0:
            continue
        log_term = (
            log_n_factorial
            - math.lgamma(v + 1)
            - math.lgamma(n - v + 1)
            + (v - 1) * math.log(upper)
            + (n - v) * math.log(lower)
        )
        total += math.exp(log_term)
    return d * total


def _kolmogorov_cdf_durbin(n: int, d: float) -> float:
    """P(D_n <= d) exactly: n!/n^n times the (k, k) entry of H^n (Marsaglia, Tsang, Wang 2003).

    Only row k of H^n is needed, so a row vector is multiplied by H n times (n * m**2 work, m is
    at most 2 * sqrt(4n) + 1 in the region this runs in), folding in one factor i/n of n!/n^n per
    step so the vector stays in range; the rescaling is a safety net.
    """
    k = math.ceil(n * d)
    h = k - n * d
    m = 2 * k - 1
    inverse_factorials = [1.0]
    for j in range(1, m + 1):
        inverse_factorials.append(inverse_factorials[-1] / j)
    first_column = [(1.0 - h ** (j + 1)) * inverse_factorials[j + 1] for j in range(m)]
    first_column[-1] = (1.0 + max(2 * h - 1.0, 0.0) ** m - 2 * h**m) * inverse_factorials[m]
    # Column b of H: 1/(a-b+1)! for rows a >= b-1, with the first column and last row replaced
    columns: list[list[float]] = []
    for b in range(m):
        column = [inverse_factorials[a - b + 1] if a >= b - 1 else 0.0 for a in range(m)]
        column[-1] = first_column[m - 1 - b]
        columns.append(column)
    columns[0] = first_column
    row = [0.0] * m
    row[k - 1] = 1.0
    exponent = 0
    for i in range(1, n + 1):
        factor = i / n
        row = [factor * sum(map(operator.mul, row, column)) for column in columns]
        largest = max(abs(value) for value in row)
        if largest > _SCALE:
            row = [value / _SCALE for value in row]
            exponent += _SCALE_EXPONENT
        elif 0.0 < largest < 1.0 / _SCALE:
            row = [value * _SCALE for value in row]
            exponent -= _SCALE_EXPONENT
    return _clip(math.ldexp(row[k - 1], exponent))


def _kolmogorov_cdf_pelz_good(n: int, d: float) -> float:
    """P(D_n <= d) by the Pelz-Good (1976) expansion to order n**-1.5, in theta-function form."""
    z = math.sqrt(n) * d
    z2 = z * z
    z4 = z2 * z2
    z6 = z4 * z2
    q_log = -_PI2 / 8.0 / z2
    if q_log < -708.0:
        return 0.0
    q = math.exp(q_log)
    k1a, k1b = -z2, _PI2 / 4.0
    k2a = 6.0 * z6 + 2.0 * z4
    k2b = (2.0 * z4 - 5.0 * z2) * _PI2 / 4.0
    k2c = _PI4 * (1.0 - 2.0 * z2) / 16.0
    k3a = -30.0 * z6 - 90.0 * z4 * z4
    k3b = _PI2 * (135.0 * z4 - 96.0 * z6) / 4.0
    k3c = _PI4 * (-60.0 * z2 + 212.0 * z4) / 16.0
    k3d = _PI6 * (5.0 - 30.0 * z2) / 64.0
    terms = [0.0, 0.0, 0.0, 0.0]
    max_k = math.ceil(16.0 * z / math.pi)
    # Horner over q**((2k-1)**2): the step between consecutive odd squares is q**(8k)
    for k in range(max_k, 0, -1):
        m2 = (2 * k - 1) ** 2
        q_power = q ** (8 * k)
        coefficients = (
            1.0,
            k1a + k1b * m2,
            k2a + k2b * m2 + k2c * m2 * m2,
            k3a + k3b * m2 + k3c * m2 * m2 + k3d * m2 * m2 * m2,
        )
        terms = [term * q_power + c for term, c in zip(terms, coefficients, strict=True)]
    divisors = (z, 6.0 * z4, 72.0 * z6 * z, 6480.0 * z6 * z4)
    terms = [term * q * _SQRT_2PI / divisor for term, divisor in zip(terms, divisors, strict=True)]
    q_all = math.exp(-_PI2 / 2.0 / z2)
    weights = [k * k * q_all ** (k * k) for k in range(max_k, 0, -1)]
    terms[2] += sum(weights) * _PI2 * _SQRT_2PI / (-36.0 * z2 * z)
    terms[3] += (
        sum(
            w * (3.0 * z2 - _PI2 * k * k) for w, k in zip(weights, range(max_k, 0, -1), strict=True)
        )
        * _PI2
        * _SQRT_2PI
        / (216.0 * z6)
    )
    return sum(term / math.pow(n, power / 2.0) for power, term in enumerate(terms))


# --- tests --------------------------------------------------------------------------------------


def chi_square(table: Sequence[Sequence[float]], n_before: int, n_after: int) -> TestResult:
    """Pearson's chi-square test of independence on an r x c table (rows are the groups).

    Rows and columns that are all zero carry no information and would divide by zero, so they
    are dropped first. No Yates correction: with drift windows the counts are large, and the
    correction only makes the 2x2 case conservative. ``n_before`` and ``n_after`` are recorded
    in the result as given; the statistic uses the table.
    """
    if n_before < 0 or n_after < 0:
        raise ValueError(f"sample sizes must be non-negative, got {n_before} and {n_after}")
    rows = [list(row) for row in table]
    if rows and any(len(row) != len(rows[0]) for row in rows):
        raise ValueError("a contingency table needs rows of equal length")
    for row in rows:
        for count in row:
            _check_count(count)
    rows = [row for row in rows if any(row)]
    width = len(rows[0]) if rows else 0
    kept_columns = [j for j in range(width) if any(row[j] for row in rows)]
    rows = [[row[j] for j in kept_columns] for row in rows]
    n_rows, n_columns = len(rows), len(kept_columns)
    if n_rows < 2 or n_columns < 2:
        return TestResult("chi-square", 0.0, 1.0, 0.0, "cramers_v", n_before, n_after, dof=0)
    row_totals = [math.fsum(row) for row in rows]
    column_totals = [math.fsum(row[j] for row in rows) for j in range(n_columns)]
    total = math.fsum(row_totals)
    statistic = math.fsum(
        (observed - expected) ** 2 / expected
        for row, row_total in zip(rows, row_totals, strict=True)
        for observed, column_total in zip(row, column_totals, strict=True)
        for expected in (row_total * column_total / total,)
    )
    dof = (n_rows - 1) * (n_columns - 1)
    cramers_v = math.sqrt(statistic / (total * (min(n_rows, n_columns) - 1)))
    return TestResult(
        "chi-square",
        statistic,
        chi2_sf(statistic, dof),
        min(1.0, cramers_v),
        "cramers_v",
        n_before,
        n_after,
        dof=dof,
    )


def contingency(
    before: Mapping[str, float], after: Mapping[str, float], min_expected: float = 5.0
) -> tuple[list[str], list[list[float]]]:
    """The 2 x k table (before row, after row) of two count mappings, ready for ``chi_square``.

    The chi-square approximation needs every expected count to be at least ``min_expected``, so
    the sparsest categories are merged into ``"other"`` until that holds (a category already
    named "other" belongs to that bucket from the start). Columns come most frequent first (ties
    by name), with "other" last. When one side has no counts at all no merging can help, and the
    categories come back unmerged.
    """
    if not math.isfinite(min_expected) or min_expected < 0:
        raise ValueError(f"min_expected must be a non-negative number, got {min_expected}")
    for counts in (before, after):
        for category, count in counts.items():
            _check_count(count, category)
    categories = sorted(set(before) | set(after))
    pairs = {c: (float(before.get(c, 0.0)), float(after.get(c, 0.0))) for c in categories}
    before_total = math.fsum(b for b, _ in pairs.values())
    after_total = math.fsum(a for _, a in pairs.values())
    grand_total = before_total + after_total
    # Most frequent first; the sparsest sit at the end, ready to be popped
    ranked = sorted((c for c in categories if c != OTHER), key=lambda c: (-sum(pairs[c]), c))
    smaller_row = min(before_total, after_total)
    if smaller_row <= 0:
        labels = [*ranked, OTHER] if OTHER in pairs else ranked
        return labels, [[pairs[c][0] for c in labels], [pairs[c][1] for c in labels]]
    # The smallest expected count in a column is its total times the smaller row's share
    needed_column_total = min_expected * grand_total / smaller_row
    other_before, other_after = pairs.get(OTHER, (0.0, 0.0))
    has_other = OTHER in pairs
    while ranked and (
        sum(pairs[ranked[-1]]) < needed_column_total
        or (has_other and other_before + other_after < needed_column_total)
    ):
        merged = ranked.pop()
        other_before += pairs[merged][0]
        other_after += pairs[merged][1]
        has_other = True
    labels = list(ranked)
    table = [[pairs[c][0] for c in labels], [pairs[c][1] for c in labels]]
    if has_other:
        labels.append(OTHER)
        table[0].append(other_before)
        table[1].append(other_after)
    return labels, table


def mann_whitney(before: Sequence[float], after: Sequence[float]) -> TestResult:
    """Two-sided Mann-Whitney U test, normal approximation with tie and continuity corrections.

    The statistic is U of ``after``; the effect is Cliff's delta, P(after > before) minus
    P(after < before), so positive means ``after`` tends to be larger. Ranks come from one sort
    of the pooled sample (average ranks for ties), not from comparing every pair.
    """
    n_before, n_after = len(before), len(after)
    if n_before == 0 or n_after == 0:
        return TestResult("mann-whitney", 0.0, 1.0, 0.0, "cliffs_delta", n_before, n_after)
    pooled = [(_check_value(v), 0) for v in before] + [(_check_value(v), 1) for v in after]
    pooled.sort(key=lambda item: item[0])
    n = n_before + n_after
    after_rank_sum = 0.0
    tie_term = 0.0
    start = 0
    while start < n:
        end = start + 1
        while end < n and pooled[end][0] == pooled[start][0]:
            end += 1
        average_rank = (start + 1 + end) / 2.0
        after_in_run = sum(group for _, group in pooled[start:end])
        after_rank_sum += average_rank * after_in_run
        run = end - start
        tie_term += run**3 - run
        start = end
    pairs = n_before * n_after
    u_after = after_rank_sum - n_after * (n_after + 1) / 2.0
    u_larger = max(u_after, pairs - u_after)
    variance = pairs / 12.0 * ((n + 1) - tie_term / (n * (n - 1)))
    if variance <= 0:
        # Every value tied: nothing separates the samples
        p_value = 1.0
    else:
        z = (u_larger - pairs / 2.0 - 0.5) / math.sqrt(variance)
        p_value = _clip(2.0 * normal_sf(z))
    cliffs_delta = (2.0 * u_after - pairs) / pairs
    return TestResult(
        "mann-whitney", u_after, p_value, cliffs_delta, "cliffs_delta", n_before, n_after
    )


def ks_2samp(before: Sequence[float], after: Sequence[float]) -> TestResult:
    """Two-sided two-sample Kolmogorov-Smirnov test with scipy's asymptotic p-value.

    D is the largest gap between the two empirical CDFs. As in ``scipy.stats.ks_2samp(
    method="asymp")``, the p-value is that of a one-sample D with the effective size
    round(n1 * n2 / (n1 + n2)). The effect is D itself.

    Like scipy's, this p-value is 0 whenever the samples do not overlap at all (D = 1), however
    few the values; the exact p-value for 3 against 3 separated values is 0.1.
    """
    n_before, n_after = len(before), len(after)
    if n_before == 0 or n_after == 0:
        return TestResult("ks", 0.0, 1.0, 0.0, "ks_d", n_before, n_after)
    first = sorted(_check_value(v) for v in before)
    second = sorted(_check_value(v) for v in after)
    i = j = 0
    largest_gap = 0
    # Gaps in units of 1/(n1*n2) stay integers, so ties at a value are compared exactly
    while i < n_before and j < n_after:
        value = min(first[i], second[j])
        while i < n_before and first[i] == value:
            i += 1
        while j < n_after and second[j] == value:
            j += 1
        largest_gap = max(largest_gap, abs(i * n_after - j * n_before))
    d = largest_gap / (n_before * n_after)
    effective_n = round(n_before * n_after / (n_before + n_after))
    # One value a side rounds the effective size to 0 (scipy answers NaN); the exact p-value
    # there is 1, as either order of the two values gives D = 1
    p_value = kstwo_sf(d, effective_n) if effective_n >= 1 else 1.0
    return TestResult("ks", d, p_value, d, "ks_d", n_before, n_after)


# --- multiplicity -------------------------------------------------------------------------------


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni step-down adjusted p-values, in the order given (controls the FWER)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: _check_p(p_values[i]))
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg step-up adjusted p-values, in the order given (controls the FDR)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: _check_p(p_values[i]))
    adjusted = [0.0] * m
    running = 1.0
    for rank in range(m - 1, -1, -1):
        index = order[rank]
        running = min(running, m * p_values[index] / (rank + 1))
        adjusted[index] = running
    return adjusted


# --- validation ---------------------------------------------------------------------------------


def _check_count(count: float, category: str | None = None) -> None:
    if not math.isfinite(count) or count < 0:
        where = f" for {category!r}" if category is not None else ""
        raise ValueError(f"counts must be finite and non-negative, got {count}{where}")


def _check_value(value: float) -> float:
    if math.isnan(value):
        raise ValueError("samples must not contain NaN: it has no rank")
    return value


def _check_p(p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p-values must lie in [0, 1], got {p}")
    return p
