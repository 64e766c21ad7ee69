"""The answers' pure parts: exact windows and failure modes summed over statuses."""

from __future__ import annotations

from streams.pipeline.aggregates import HOUR_US
from streams.query.answers import Period, failure_modes

NOW = 1_764_000_000_000_000 + 1_800_000_000  # half past an hour


def test_the_last_hour_is_exactly_the_last_hour() -> None:
    period = Period.last("1h", NOW)
    assert not period.contains(NOW - HOUR_US)
    assert period.contains(NOW - HOUR_US + 1)
    assert period.contains(NOW)
    assert not period.contains(NOW + 1)


def test_whole_hours_come_from_counters_and_cut_ones_from_sessions() -> None:
    start = NOW - NOW % HOUR_US
    whole, cut = Period.last("3h", NOW).split_hours()
    assert whole == [start - 2 * HOUR_US, start - HOUR_US]
    assert cut == [start - 3 * HOUR_US, start]
    assert Period.last("1h", NOW).split_hours() == ([], [start - HOUR_US, start])
    day = Period.day(start - start % (24 * HOUR_US))
    assert len(day.split_hours()[0]) == 24
    assert day.split_hours()[1] == []


def test_a_failure_mode_counts_every_status_it_ended_with() -> None:
    stats = {
        "failure|ERROR|ToolTimeout|TOOL_CALL|search": 2.0,
        "failure|TIMEOUT|ToolTimeout|TOOL_CALL|search": 3.0,
        "failure|KILLED|ToolTimeout|TOOL_CALL|search": 1.0,
        "failure|KILLED|KILLED|SESSION|-": 4.0,
        "all|sessions": 10.0,
    }
    assert failure_modes(stats, 10, idle_timeout_s=900) == [
        {"error_type": "ToolTimeout", "step_kind": "TOOL_CALL", "tool": "search", "count": 6,
         "statuses": {"ERROR": 2, "TIMEOUT": 3, "KILLED": 1}, "cause": "ToolTimeout"},
        {"error_type": "KILLED", "step_kind": "SESSION", "tool": "-", "count": 4,
         "statuses": {"KILLED": 4},
         "cause": "KILL (policy not recorded: see governor incident timeline)"},
    ]  # fmt: skip
    assert len(failure_modes(stats, 1)) == 1


def test_a_failure_mode_names_its_cause() -> None:
    """Issue 19: a KILL names its policy (the worker's ``KILL by <policy>`` error type), a
    TIMEOUT its idle time; other modes keep their error type."""
    stats = {
        "failure|KILLED|KILL by session-budget|SESSION|-": 2.0,
        "failure|TIMEOUT|TIMEOUT|SESSION|-": 3.0,
        "failure|TIMEOUT|PiiBlocked|TOOL_CALL|get_customer": 1.0,
    }
    causes = {m["cause"]: m["count"] for m in failure_modes(stats, 10, idle_timeout_s=900)}
    assert causes == {
        "KILL by policy session-budget": 2,
        "idle for 15m": 3,
        "idle for 15m after PiiBlocked": 1,
    }
    assert failure_modes(stats, 10)[0]["cause"] == "idle past the idle timeout"
