"""fold: per-session accounting, idempotence, pricing, retries, loops, outcomes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streams.pipeline.accounting import SessionState, close_timed_out, fold, new_state, summary
from streams.pipeline.pricing import PriceTable, load_prices

PRICES = load_prices(Path(__file__).resolve().parents[3] / "policies" / "prices.yaml")
T0 = 1_764_000_000_000_000


def ev(seq: int, kind: str, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": f"e{seq}",
        "seq": seq,
        "session_id": "s1",
        "tenant_id": "acme",
        "agent_id": "bot",
        "kind": kind,
        "start_time_us": T0 + seq * 1_000_000,
        "duration_us": fields.pop("duration_us", 0),
        "status": fields.pop("status", "OK"),
        **fields,
    }


def run(events: list[dict[str, Any]], prices: PriceTable = PRICES) -> SessionState:
    state = new_state(events[0])
    for event in events:
        fold(state, event, prices)
    return state


SESSION = [
    ev(1, "SESSION_START", category="billing", prompt_version="p7"),
    ev(
        2,
        "LLM_CALL",
        model="gpt-4o-mini",
        input_tokens=1000,
        output_tokens=200,
        duration_us=900_000,
    ),
    ev(
        3,
        "TOOL_CALL",
        tool_name="lookup",
        tool_call_id="c1",
        status="ERROR",
        error_type="ToolTimeout",
        duration_us=3_000_000,
    ),
    ev(4, "TOOL_CALL", tool_name="lookup", tool_call_id="c1", duration_us=40_000),
    ev(5, "LLM_CALL", model="acme-llm-9", input_tokens=50_000, output_tokens=10, cost_micros=None),
    ev(6, "LLM_CALL", model="gpt-4o", input_tokens=10, output_tokens=10, cost_micros=1234),
    ev(7, "EVALUATION", evaluation_name="helpfulness", evaluation_score=0.4),
    ev(8, "SESSION_END"),
]


def test_a_session_is_accounted_step_by_step() -> None:
    state = run(SESSION)
    # gpt-4o-mini: 1000 * 0.15 + 200 * 0.60 per 1M tokens = 270 micro-USD; acme-llm-9 unpriced
    assert state.cost_micros == 270 + 1234
    assert state.unpriced_calls == 1
    assert (state.input_tokens, state.output_tokens) == (51_010, 220)
    assert state.max_context_tokens == 50_000
    assert state.steps_by_kind == {
        "SESSION_START": 1,
        "LLM_CALL": 3,
        "TOOL_CALL": 2,
        "EVALUATION": 1,
        "SESSION_END": 1,
    }
    assert state.tool_calls == {"lookup": 2}
    assert state.errors_by_type == {"ToolTimeout": 1}
    assert state.retries == 1  # the second lookup followed its failure
    assert state.slowest is not None
    assert (state.slowest.seq, state.slowest.name, state.slowest.duration_us) == (
        3,
        "lookup",
        3_000_000,
    )
    assert state.evaluations == {"helpfulness": 0.4}
    assert (state.status, state.category, state.prompt_version) == ("OK", "billing", "p7")
    assert state.duration_us == 7_000_000
    assert state.cost_by_model == {"gpt-4o-mini": 270, "gpt-4o": 1234}


def test_redelivered_and_older_events_change_nothing() -> None:
    state = run(SESSION)
    before = state.to_dict()
    for event in SESSION:
        assert fold(state, event, PRICES) is None
    assert state.to_dict() == before


def test_state_round_trips_through_its_dict() -> None:
    state = run(SESSION)
    assert SessionState.from_dict(state.to_dict()) == state


def test_a_session_started_by_another_names_its_parent_in_its_summary() -> None:
    linked = {"governor.parent_session_id": "orchestrator-1"}
    state = run([ev(1, "SESSION_START", attributes=linked), *SESSION[1:]])
    assert state.parent_session_id == "orchestrator-1"
    assert summary(state)["parent_session_id"] == "orchestrator-1"
    assert SessionState.from_dict(state.to_dict()) == state
    # only the start names it; a session naming itself has no parent
    itself = run([ev(1, "SESSION_START", attributes={"governor.parent_session_id": "s1"})])
    assert itself.parent_session_id is None
    later = run([SESSION[0], ev(2, "LLM_CALL", model="gpt-4o", attributes=linked)])
    assert later.parent_session_id is None
    assert summary(run(SESSION))["parent_session_id"] is None


def test_a_gap_in_seq_is_counted_not_fatal() -> None:
    state = run([SESSION[0], SESSION[3]])
    assert state.missing_events == 2
    assert state.last_seq == 4


def test_identical_tool_calls_in_a_row_are_counted() -> None:
    calls = [
        ev(
            n,
            "TOOL_CALL",
            tool_name="search",
            content=[{"role": "TOOL_ARGUMENTS", "text": '{"q": "x"}'}],
        )
        for n in range(1, 5)
    ]
    other = ev(
        5,
        "TOOL_CALL",
        tool_name="search",
        content=[{"role": "TOOL_ARGUMENTS", "text": '{"q": "y"}'}],
    )
    state = run(calls)
    assert state.repeat_count == 4
    fold(state, other, PRICES)
    assert state.repeat_count == 1


def test_an_error_end_and_a_timeout_are_outcomes() -> None:
    failed = run([*SESSION[:3], ev(4, "SESSION_END", status="ERROR", error_type="KeyError")])
    assert (failed.status, failed.error_type) == ("ERROR", "KeyError")
    assert (failed.failure_step_kind, failed.failure_tool) == ("TOOL_CALL", "lookup")
    silent = run(SESSION[:4])
    assert not silent.ended
    close_timed_out(silent)
    assert silent.status == "TIMEOUT"
    assert silent.end_time_us == silent.last_event_us
    record = summary(silent)
    assert record["status"] == "TIMEOUT"
    assert record["slowest_step"]["name"] == "lookup"


def test_steps_in_window_looks_minutes_up_or_scans_with_one_answer() -> None:
    """Issue 18: a short window looks its minutes up instead of scanning the session's
    minutes; both ways count the same steps (window ends with now's minute)."""
    from streams.pipeline.accounting import MINUTE_US, count_step_minute, steps_in_window

    state = new_state(ev(1, "SESSION_START"))
    base = T0 - T0 % MINUTE_US
    for minute, n in ((0, 3), (1, 1), (4, 2), (9, 5)):
        for _ in range(n):
            count_step_minute(state, base + minute * MINUTE_US + 1_000)
    now = base + 9 * MINUTE_US + 30_000_000
    # 1 and 5 minutes: fewer minutes than the session counted (look-up); 60: scan
    assert steps_in_window(state, now, 60) == 5
    assert steps_in_window(state, now, 300) == 5
    assert steps_in_window(state, now, 360) == 7
    assert steps_in_window(state, now, 600) == 11
    assert steps_in_window(state, now, 3600) == 11
    assert steps_in_window(state, base + 4 * MINUTE_US, 120) == 2


def test_shared_names_are_interned_on_fold_and_restore() -> None:
    """Issue 18 (memory per open session): every decoded event brings its own copy of the
    tenant, agent and version strings; sessions keep one shared copy."""
    from sys import intern

    first = ev(1, "SESSION_START", category="billing", prompt_version="p7")
    # copies, as a decoder makes them (not the interned objects of the literals)
    first["tenant_id"], first["prompt_version"] = "".join(["ac", "me"]), "".join(["p", "7"])
    model = "".join(["gpt-4o", "-mini"])
    state = run([first, ev(2, "LLM_CALL", model=model, input_tokens=5)])
    assert state.tenant_id is intern("acme")
    assert state.prompt_version is intern("p7")
    assert next(iter(state.tokens_by_model)) is intern("gpt-4o-mini")
    restored = SessionState.from_dict({**state.to_dict(), "tenant_id": "".join(["ac", "me"])})
    assert restored.tenant_id is intern("acme")
    assert restored.to_dict() == state.to_dict()
