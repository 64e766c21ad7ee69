"""Event-time aggregates: hour/day buckets of spend, latency histograms (pure, no I/O).

Buckets are plain dict entries keyed by (scope, bucket start); they expire by event time, which
the caller controls, so a replay of old events builds the same buckets as the live run did.
Every aggregate here is a sum, so partial aggregates of different partitions add up.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US
MINUTE_US = 60_000_000

#: latency histogram upper bounds in ms: 2^(i/4), i.e. 19 % apart, from 1 ms to ~30 min
LATENCY_BOUNDS_MS: tuple[float, ...] = tuple(2 ** (i / 4) for i in range(0, 84))
BUCKETS = len(LATENCY_BOUNDS_MS) + 1  # the last one is +Inf

#: the ratio of a bucket's bounds: these histograms are DDSketch's logarithmic mapping with
#: gamma = 2^(1/4) (bucket i holds (gamma^(i-1), gamma^i]), so they merge by adding counts
GAMMA = 2**0.25
#: the worst relative error of a value placed anywhere in a bucket (19 %); each percentile
#: states its own, smaller bound (:class:`Quantile`)
BUCKET_RELATIVE_ERROR = GAMMA - 1


def tenant_scope(tenant_id: str) -> str:
    return f"tenant:{tenant_id}"


def agent_scope(tenant_id: str, agent_id: str) -> str:
    """Agent ids are unique within a tenant only."""
    return f"agent:{tenant_id}/{agent_id}"


def scope_of(scope: str, tenant_id: str, agent_id: str) -> str:
    return tenant_scope(tenant_id) if scope == "tenant" else agent_scope(tenant_id, agent_id)


def bucket_start(time_us: int, size_us: int) -> int:
    return time_us - time_us % size_us


def latency_bucket(duration_ms: float) -> int:
    return bisect.bisect_left(LATENCY_BOUNDS_MS, duration_ms)


@dataclass(slots=True)
class Totals:
    """Spend and volume of one scope in one time bucket."""

    cost_micros: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    llm_calls: int = 0
    tool_calls: int = 0
    sessions_started: int = 0
    sessions_ended: int = 0

    def add(self, other: Totals) -> None:
        self.cost_micros += other.cost_micros
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.llm_calls += other.llm_calls
        self.tool_calls += other.tool_calls
        self.sessions_started += other.sessions_started
        self.sessions_ended += other.sessions_ended


@dataclass(slots=True)
class Histogram:
    """Counts per fixed latency bucket, plus exact count, sum, minimum and maximum (+inf and
    -inf while empty; -inf and +inf, i.e. unknown, in a histogram restored from a changelog
    written before they were kept)."""

    counts: list[int] = field(default_factory=lambda: [0] * BUCKETS)
    count: int = 0
    sum_ms: float = 0.0
    min_ms: float = math.inf
    max_ms: float = -math.inf

    def observe(self, duration_ms: float) -> None:
        self.counts[latency_bucket(duration_ms)] += 1
        self.count += 1
        self.sum_ms += duration_ms
        self.min_ms = min(self.min_ms, duration_ms)
        self.max_ms = max(self.max_ms, duration_ms)

    def merge(self, other: Histogram) -> None:
        for i, n in enumerate(other.counts):
            if n:
                self.counts[i] += n
        self.count += other.count
        self.sum_ms += other.sum_ms
        self.min_ms = min(self.min_ms, other.min_ms)
        self.max_ms = max(self.max_ms, other.max_ms)

    def to_state(self) -> dict[str, Any]:
        """What a changelog keeps: sparse counts, count, sum and the known extremes."""
        state: dict[str, Any] = {
            "counts": {str(i): n for i, n in enumerate(self.counts) if n},
            "count": self.count,
            "sum_ms": self.sum_ms,
        }
        if self.count and math.isfinite(self.min_ms) and math.isfinite(self.max_ms):
            state["min_ms"], state["max_ms"] = self.min_ms, self.max_ms
        return state

    @classmethod
    def from_state(cls, data: Mapping[str, Any]) -> Histogram:
        """The inverse of :meth:`to_state`. A state written before the extremes were kept
        restores them as unknown: -inf and +inf, which stay so through observations and
        merges, so its percentiles (and those of whatever it is merged into) are not clamped
        to bounds that may not hold."""
        empty = not data["count"]
        hist = cls(
            count=data["count"],
            sum_ms=data["sum_ms"],
            min_ms=float(data.get("min_ms", math.inf if empty else -math.inf)),
            max_ms=float(data.get("max_ms", -math.inf if empty else math.inf)),
        )
        for index, n in data["counts"].items():
            hist.counts[int(index)] = n
        return hist

    def quantile(self, q: float) -> float:
        """The q-quantile, never outside [min, max] (NaN when empty): see
        :func:`quantile_estimate`."""
        return self.estimate(q).value

    def estimate(self, q: float) -> Quantile:
        return quantile_estimate(self.counts, q, minimum=self.min_ms, maximum=self.max_ms)


@dataclass(frozen=True)
class Quantile:
    """A percentile read from a histogram, and how far off it can be."""

    value: float
    #: |value - exact| <= relative_error * exact, proven by the bucket the rank falls in and
    #: the observed extremes; None in the first bucket (which reaches down to 0: the error is
    #: then at most its upper bound, 1 ms or 1 micro-USD) and in the overflow bucket when the
    #: maximum is unknown (the value is then +inf)
    relative_error: float | None


def quantile_estimate(
    counts: Sequence[int],
    q: float,
    bounds: Sequence[float] = LATENCY_BOUNDS_MS,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> Quantile:
    """The q-quantile (nearest rank: the ceil(q*n)-th smallest value) of values counted in log
    buckets of ``bounds``: geometrically interpolated by its rank inside its bucket, the bucket
    first narrowed to the observed [minimum, maximum] when they are known, so the percentile is
    never outside them (the smallest and largest ranks are the extremes themselves). NaN when
    empty; +inf in the overflow bucket when the maximum is unknown.

    The exact value lies in the same narrowed bucket [L, H], so its relative error is at most
    max((v - L) / L, (H - v) / H) for the estimate v: what ``relative_error`` states (at most
    BUCKET_RELATIVE_ERROR, 19 %; bench/percentiles.py measures 0.5 % on average on a fleet).
    """
    total = sum(counts)
    if total == 0:
        return Quantile(math.nan, None)
    rank = max(1, math.ceil(q * total))
    low = minimum if minimum is not None and math.isfinite(minimum) else None
    high = maximum if maximum is not None and math.isfinite(maximum) else None
    if rank == total and high is not None:
        return Quantile(high, 0.0)
    if rank == 1 and low is not None:
        return Quantile(low, 0.0)
    seen = 0
    index = len(counts) - 1
    for i, n in enumerate(counts):
        if seen + n >= rank:
            index = i
            break
        seen += n
    lo = bounds[index - 1] if index > 0 else 0.0
    hi = bounds[index] if index < len(bounds) else math.inf
    if low is not None:
        lo = min(max(lo, low), hi)
    if high is not None:
        hi = max(min(hi, high), lo)
    if not math.isfinite(hi):
        return Quantile(math.inf, None)
    position = (rank - seen - 0.5) / counts[index]
    if index == 0 or lo <= 0:
        # the first bucket, down to 0: linear, and only bounded absolutely (by its top)
        return Quantile(lo + (hi - lo) * position, None)
    value = math.exp(math.log(lo) + position * (math.log(hi) - math.log(lo)))
    value = min(max(value, lo), hi)
    return Quantile(value, max((value - lo) / lo, (hi - value) / hi))


def quantile_from_counts(
    counts: Sequence[int],
    q: float,
    bounds: Sequence[float] = LATENCY_BOUNDS_MS,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float:
    """The value of :func:`quantile_estimate`."""
    return quantile_estimate(counts, q, bounds, minimum=minimum, maximum=maximum).value


def merged(histograms: Iterable[Histogram]) -> Histogram:
    result = Histogram()
    for h in histograms:
        result.merge(h)
    return result


def expired(bucket_us: int, size_us: int, watermark_us: int, retention_us: int) -> bool:
    """A bucket is dropped once its end is older than the retention, in event time."""
    return bucket_us + size_us < watermark_us - retention_us
