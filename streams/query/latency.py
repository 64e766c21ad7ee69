"""Step latency by kind: the worker's histograms as an answer, and answers of several workers
merged (each worker holds the histograms of the partitions it owns)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from streams.pipeline.aggregates import BUCKETS, Histogram


class StepQuantiles(TypedDict):
    steps: int
    p50: float
    p90: float
    p99: float
    #: the fastest and slowest step (ms; None when not known: state kept before they were)
    min: float | None
    max: float | None
    #: per percentile, the bound of its relative error: |p - exact| <= error * exact
    #: (None: unbounded relatively, see aggregates.Quantile)
    error: dict[str, float | None]


QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))


def _known(value: float) -> float | None:
    return value if math.isfinite(value) else None


def step_quantiles(by_kind: Mapping[str, Histogram]) -> dict[str, StepQuantiles]:
    """p50/p90/p99 (ms, interpolated in their bucket, never outside [min, max]) of each step
    kind's histogram, with the bound of each one's relative error."""
    out: dict[str, StepQuantiles] = {}
    for kind, h in sorted(by_kind.items()):
        estimates = {name: h.estimate(q) for name, q in QUANTILES}
        out[kind] = {
            "steps": h.count,
            "p50": estimates["p50"].value,
            "p90": estimates["p90"].value,
            "p99": estimates["p99"].value,
            "min": _known(h.min_ms),
            "max": _known(h.max_ms),
            "error": {name: e.relative_error for name, e in estimates.items()},
        }
    return out


def histogram_counts(by_kind: Mapping[str, Histogram]) -> dict[str, list[int]]:
    """The bucket counts of each kind, for an answer another process can merge."""
    return {kind: list(h.counts) for kind, h in sorted(by_kind.items())}


def merge_step_latency(answers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The first answer (its session-level part is the read-model's, the same for every
    worker) with the step latency of all of them: their histograms added up. Answers without
    histograms (a worker of an older version) are left out of the steps and counted."""
    if not answers:
        raise ValueError("no answers to merge")
    merged: dict[str, Histogram] = {}
    partitions: set[int] = set()
    unmergeable = 0
    for answer in answers:
        counts = answer.get("step_histograms")
        if counts is None:
            unmergeable += 1
            continue
        partitions.update(answer.get("partitions", ()))
        quantiles = answer.get("step_ms_by_kind") or {}
        for kind, buckets in counts.items():
            histogram = merged.setdefault(kind, Histogram())
            if len(buckets) != BUCKETS:
                raise ValueError(f"a {kind} histogram of {len(buckets)} buckets, not {BUCKETS}")
            # the extremes ride in the answer's quantiles; a worker without them (an older
            # version) leaves the merged ones unknown (+-inf), so nothing is clamped wrongly
            if not any(buckets):
                continue
            seen = quantiles.get(kind) or {}
            low, high = seen.get("min"), seen.get("max")
            histogram.merge(
                Histogram(
                    counts=list(buckets),
                    count=sum(buckets),
                    min_ms=-math.inf if low is None else float(low),
                    max_ms=math.inf if high is None else float(high),
                )
            )
    result = dict(answers[0])
    result["step_ms_by_kind"] = step_quantiles(merged)
    result["step_histograms"] = histogram_counts(merged)
    result["partitions"] = sorted(partitions)
    result["workers"] = len(answers) - unmergeable
    if unmergeable:
        result["workers_without_histograms"] = unmergeable
    return result
