"""Event-time aggregates: hour/day buckets of spend, latency histograms (pure, no I/O).

Buckets are plain dict entries keyed by (scope, bucket start); they expire by event time, which
the caller controls, so a replay of old events builds the same buckets as the live run did.
Every aggregate here is a sum, so partial aggregates of different partitions add up.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US
MINUTE_US = 60_000_000

#: latency histogram upper bounds in ms: 2^(i/4), i.e. 19 % apart, from 1 ms to ~30 min;
#: a percentile read from it is within one bucket (< 19 %) of the true value
LATENCY_BOUNDS_MS: tuple[float, ...] = tuple(2 ** (i / 4) for i in range(0, 84))
BUCKETS = len(LATENCY_BOUNDS_MS) + 1  # the last one is +Inf


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
    """Counts per fixed latency bucket, plus exact count and sum."""

    counts: list[int] = field(default_factory=lambda: [0] * BUCKETS)
    count: int = 0
    sum_ms: float = 0.0

    def observe(self, duration_ms: float) -> None:
        self.counts[latency_bucket(duration_ms)] += 1
        self.count += 1
        self.sum_ms += duration_ms

    def merge(self, other: Histogram) -> None:
        for i, n in enumerate(other.counts):
            if n:
                self.counts[i] += n
        self.count += other.count
        self.sum_ms += other.sum_ms

    def quantile(self, q: float) -> float:
        """The upper bound of the bucket holding the q-quantile (NaN when empty)."""
        return quantile_from_counts(self.counts, q)


def quantile_from_counts(counts: Sequence[int], q: float) -> float:
    total = sum(counts)
    if total == 0:
        return math.nan
    rank = max(1, math.ceil(q * total))
    seen = 0
    for i, n in enumerate(counts):
        seen += n
        if seen >= rank:
            return LATENCY_BOUNDS_MS[i] if i < len(LATENCY_BOUNDS_MS) else math.inf
    return math.inf


def merged(histograms: Iterable[Histogram]) -> Histogram:
    result = Histogram()
    for h in histograms:
        result.merge(h)
    return result


def expired(bucket_us: int, size_us: int, watermark_us: int, retention_us: int) -> bool:
    """A bucket is dropped once its end is older than the retention, in event time."""
    return bucket_us + size_us < watermark_us - retention_us
