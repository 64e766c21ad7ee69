"""Step latency of several workers: their histograms added up, not their quantiles."""

from __future__ import annotations

from typing import Any

import pytest

from streams.pipeline.aggregates import Histogram
from streams.query.latency import histogram_counts, merge_step_latency, step_quantiles


def answer(partitions: list[int], durations_ms: dict[str, list[float]]) -> dict[str, Any]:
    by_kind: dict[str, Histogram] = {}
    for kind, values in durations_ms.items():
        for value in values:
            by_kind.setdefault(kind, Histogram()).observe(value)
    return {
        "sessions": 7,  # the read-model's part: the same on every worker
        "step_ms_by_kind": step_quantiles(by_kind),
        "step_histograms": histogram_counts(by_kind),
        "partitions": partitions,
    }


def test_the_group_quantiles_are_those_of_all_steps_together() -> None:
    fast = answer([0, 2], {"LLM_CALL": [10.0] * 90, "TOOL_CALL": [5.0]})
    slow = answer([1], {"LLM_CALL": [5000.0] * 10})
    together = answer([0, 1, 2], {"LLM_CALL": [10.0] * 90 + [5000.0] * 10, "TOOL_CALL": [5.0]})
    merged = merge_step_latency([fast, slow])
    assert merged["step_ms_by_kind"] == together["step_ms_by_kind"]
    assert merged["step_ms_by_kind"]["LLM_CALL"]["steps"] == 100
    # one worker alone would have said p99 = 10 ms
    assert fast["step_ms_by_kind"]["LLM_CALL"]["p99"] < merged["step_ms_by_kind"]["LLM_CALL"]["p99"]
    assert (merged["partitions"], merged["workers"], merged["sessions"]) == ([0, 1, 2], 2, 7)


def test_a_worker_without_histograms_is_counted_and_a_bad_one_refused() -> None:
    old = {"sessions": 7, "step_ms_by_kind": {}}
    merged = merge_step_latency([answer([0], {"LLM_CALL": [1.0]}), old])
    assert (merged["workers"], merged["workers_without_histograms"]) == (1, 1)
    with pytest.raises(ValueError, match="buckets"):
        merge_step_latency([{"step_histograms": {"LLM_CALL": [1, 2]}}])
    with pytest.raises(ValueError, match="no answers"):
        merge_step_latency([])
