"""Step latency by kind: the worker's histograms as an answer, and answers of several workers
merged (each worker holds the histograms of the partitions it owns)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from streams.pipeline.aggregates import BUCKETS, Histogram


class StepQuantiles(TypedDict):
    steps: int
    p50: float
    p90: float
    p99: float


def step_quantiles(by_kind: Mapping[str, Histogram]) -> dict[str, StepQuantiles]:
    """p50/p90/p99 (bucket upper bounds, ms) of each step kind's histogram."""
    return {
        kind: {"steps": h.count, "p50": h.quantile(0.5), "p90": h.quantile(0.9),
               "p99": h.quantile(0.99)}
        for kind, h in sorted(by_kind.items())
    }  # fmt: skip


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
        for kind, buckets in counts.items():
            histogram = merged.setdefault(kind, Histogram())
            if len(buckets) != BUCKETS:
                raise ValueError(f"a {kind} histogram of {len(buckets)} buckets, not {BUCKETS}")
            histogram.merge(Histogram(counts=list(buckets), count=sum(buckets)))
    result = dict(answers[0])
    result["step_ms_by_kind"] = step_quantiles(merged)
    result["step_histograms"] = histogram_counts(merged)
    result["partitions"] = sorted(partitions)
    result["workers"] = len(answers) - unmergeable
    if unmergeable:
        result["workers_without_histograms"] = unmergeable
    return result
