"""Validation at ingest: every impossible value is refused with a reason; good events pass."""

from __future__ import annotations

import time
from typing import Any

import pytest

from streams.pipeline.validate import (
    MAX_COST_MICROS,
    MAX_TOKENS,
    IngestBounds,
    Rejection,
    validate_event,
)
from tests.unit.pipeline.test_accounting import T0, ev

BOUNDS = IngestBounds.from_seconds(600, 30 * 86400)
RECORD_US = T0 + 10_000_000


def check(
    event: dict[str, Any], key: bytes | None = b"s1", record_us: int | None = RECORD_US
) -> Rejection:
    """The rejection of a bad event (an AssertionError when it passes)."""
    rejection = validate_event(event, key, record_us, BOUNDS)
    assert rejection is not None, "accepted"
    return rejection


def test_a_good_event_passes() -> None:
    good = [
        ev(2, "LLM_CALL", model="gpt-4o", input_tokens=10, cost_micros=5),
        ev(3, "EVALUATION", evaluation_name="q", evaluation_score=0.4),
        # a resumed session's seq: the wall clock in ms
        {**ev(4, "LLM_CALL", model="gpt-4o"), "seq": time.time_ns() // 1_000_000},
    ]
    for event in good:
        assert validate_event(event, b"s1", RECORD_US, BOUNDS) is None


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"cost_micros": -1}, "cost_out_of_range"),
        ({"cost_micros": MAX_COST_MICROS + 1}, "cost_out_of_range"),
        ({"input_tokens": -5}, "tokens_out_of_range"),
        ({"output_tokens": 2**62}, "tokens_out_of_range"),
        ({"cache_read_input_tokens": MAX_TOKENS + 1}, "tokens_out_of_range"),
        ({"reasoning_output_tokens": -1}, "tokens_out_of_range"),
        ({"duration_us": -1}, "duration_out_of_range"),
        ({"duration_us": 2**62}, "duration_out_of_range"),
        ({"evaluation_score": float("nan")}, "score_not_finite"),
        ({"evaluation_score": float("inf")}, "score_not_finite"),
        ({"evaluation_score": float("-inf")}, "score_not_finite"),
        ({"seq": 0}, "seq_out_of_range"),
        ({"seq": -3}, "seq_out_of_range"),
        ({"seq": 2**62}, "seq_out_of_range"),
        ({"start_time_us": 2**62}, "time_in_future"),
        ({"start_time_us": 0}, "time_out_of_range"),
        ({"start_time_us": -1}, "time_out_of_range"),
        ({"start_time_us": RECORD_US + 601_000_000}, "time_in_future"),
        ({"start_time_us": RECORD_US - 31 * 86400 * 1_000_000}, "time_too_old"),
        ({"kind": "UNKNOWN"}, "unknown_kind"),
        ({"status": "UNKNOWN"}, "unknown_status"),
        ({"session_id": ""}, "missing_id"),
        ({"tenant_id": ""}, "missing_id"),
        ({"agent_id": ""}, "missing_id"),
        ({"event_id": ""}, "missing_id"),
        ({"agent_id": "a" * 10_000}, "id_too_long"),
    ],
)
def test_impossible_values_are_refused_with_their_reason(
    fields: dict[str, Any], reason: str
) -> None:
    event = ev(2, "LLM_CALL", model="gpt-4o") | fields
    key = event["session_id"].encode() if event["session_id"] else b""
    rejection = check(event, key=key)
    assert rejection.reason == reason
    assert rejection.detail


def test_the_key_must_be_the_session_id() -> None:
    event = ev(2, "TOOL_CALL", tool_name="search")
    assert check(event, key=None).reason == "null_key"
    assert check(event, key=b"s2").reason == "key_mismatch"


def test_without_a_record_time_only_the_absolute_bounds_apply() -> None:
    assert validate_event(ev(2, "TOOL_CALL", tool_name="x"), b"s1", None, BOUNDS) is None
    late = ev(2, "TOOL_CALL", tool_name="x") | {"start_time_us": 0}
    assert check(late, record_us=None).reason == "time_out_of_range"
