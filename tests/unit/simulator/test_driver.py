"""The driver plays plans in event-time order and ends sessions the way the client says."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from streams.pipeline.pricing import PriceTable
from streams.simulator.driver import (
    AgentKey,
    Connect,
    EventRecord,
    EventSink,
    GovernorLike,
    SimClock,
    drive,
)
from streams.simulator.offline import (
    OfflineGovernor,
    PlannedGuard,
    offline_governors,
    simulate_offline,
)
from streams.simulator.params import FleetParams
from streams.simulator.plan import (
    ABANDONED,
    BLOCKED,
    ERROR,
    OK,
    PII_BLOCKED,
    LlmStep,
    OutputStep,
    SessionPlan,
    ToolStep,
    plan_fleet,
)
from streams.simulator.truth import session_truth
from tests.unit.simulator.conftest import END_US


def _plans(sessions: int = 120, seed: int = 21, **changes: Any) -> list[SessionPlan]:
    return plan_fleet(FleetParams(sessions=sessions, seed=seed, end_us=END_US, **changes))


def _recording(
    plans: Sequence[SessionPlan], log: list[EventRecord], kills: dict[str, int] | None = None
) -> Connect:
    """Offline governors that also note every event in emission order."""
    offline = offline_governors(plans, kills)

    def connect(key: AgentKey, clock: SimClock, sink: EventSink) -> GovernorLike:
        def both(event: EventRecord) -> None:
            log.append(event)
            sink(event)

        return offline(key, clock, both)

    return connect


def test_events_go_out_in_event_time_order_with_gap_free_seq() -> None:
    plans = _plans()
    log: list[EventRecord] = []
    report = drive(plans, _recording(plans, log), concurrency=len(plans))
    times = [e["start_time_us"] for e in log]
    assert times == sorted(times)
    seqs: dict[str, list[int]] = {}
    for event in log:
        seqs.setdefault(event["session_id"], []).append(event["seq"])
    assert set(seqs) == {p.session_id for p in plans}
    assert all(s == list(range(1, len(s) + 1)) for s in seqs.values())
    assert report.emitted == report.delivered == len(log) == sum(p.planned_events for p in plans)


def test_sessions_interleave_only_up_to_the_concurrency() -> None:
    plans = _plans(sessions=300, days=0.05)  # crowded: sessions overlap in event time
    for concurrency in (1, 3):
        log: list[EventRecord] = []
        drive(plans, _recording(plans, log), concurrency=concurrency)
        open_now: set[str] = set()
        most = 0
        for event in log:
            open_now.add(event["session_id"])
            most = max(most, len(open_now))
            if event["kind"] == "SESSION_END" or _last_of_abandoned(plans, event):
                open_now.discard(event["session_id"])
        assert most == concurrency


def _last_of_abandoned(plans: Sequence[SessionPlan], event: EventRecord) -> bool:
    plan = next(p for p in plans if p.session_id == event["session_id"])
    return plan.ending == ABANDONED and event["seq"] == plan.planned_events


def test_events_carry_what_the_plan_says(prices: PriceTable) -> None:
    plans = _plans()
    done: dict[str, Sequence[EventRecord]] = {}

    def keep(plan: SessionPlan, events: Sequence[EventRecord]) -> None:
        done[plan.session_id] = events

    drive(plans, offline_governors(plans), on_session=keep)
    for plan in plans:
        events = done[plan.session_id]
        assert [e["kind"] for e in events[1 : len(plan.steps) + 1]] == [
            "EVALUATION" if s.kind == "OUTPUT" else s.kind for s in plan.steps
        ]
        for step, event in zip(plan.steps, events[1:], strict=False):
            assert event["start_time_us"] == step.start_us
            assert event["duration_us"] == step.duration_us
            texts = [(c["role"], c["text"]) for c in event.get("content") or ()]
            assert texts == [(s.role, s.text) for s in step.segments]
            if isinstance(step, LlmStep):
                expected = None if step.cost_usd is None else round(step.cost_usd * 1e6)
                assert event["cost_micros"] == expected
                assert event["input_tokens"] == step.input_tokens
            if isinstance(step, ToolStep):
                assert (event["tool_name"], event["tool_call_id"]) == (step.name, step.call_id)
            if isinstance(step, OutputStep):
                assert event["evaluation_name"] == "output"
        end = events[-1]
        if plan.ending == ABANDONED:
            assert end["kind"] != "SESSION_END"
        else:
            assert plan.end_us is not None
            assert (end["kind"], end["start_time_us"]) == ("SESSION_END", plan.end_us)
            assert end["duration_us"] == plan.end_us - plan.start_us
            assert end["status"] == plan.ending
            assert end["error_type"] == plan.error_type


def test_a_kill_stops_the_session_before_its_next_step(prices: PriceTable) -> None:
    plans = _plans()
    victim = next(
        p
        for p in plans
        if p.ending == OK and sum(isinstance(s, LlmStep | ToolStep) for s in p.steps) >= 4
    )
    events, truths = simulate_offline(plans, prices, kills={victim.session_id: 2})
    mine = [e for e in events if e["session_id"] == victim.session_id]
    assert [e["kind"] for e in mine][-1] == "SESSION_END"
    assert mine[-1]["status"] == "KILLED"
    calls = [e for e in mine if e["kind"] in ("LLM_CALL", "TOOL_CALL")]
    assert len(calls) == 2
    truth = next(t for t in truths if t["session_id"] == victim.session_id)
    assert truth["outcome"] == "KILLED"
    assert truth == session_truth(mine, prices, planted=victim.pii)
    # what the killed session never sent is not in its truth
    full = simulate_offline([victim], prices)[1][0]
    assert truth["cost_micros"] <= full["cost_micros"]
    assert truth["events"] < full["events"]
    assert len(truths) == len(plans)


def test_a_refused_tool_call_is_recorded_blocked_and_the_agent_carries_on(
    prices: PriceTable,
) -> None:
    plans = _plans(sessions=400)
    victim = next(
        p
        for p in plans
        if p.ending == OK and any(isinstance(s, ToolStep) and s.blocked for s in p.steps[:-3])
    )
    events, [truth] = simulate_offline([victim], prices)
    assert len(events) == victim.planned_events
    refused = []
    for step, event in zip(victim.steps, events[1:], strict=False):
        if isinstance(step, ToolStep) and step.blocked:
            refused.append(step.name)
            # as the client records a refusal: at once, the arguments only, no cost
            assert (event["kind"], event["status"], event["error_type"]) == (
                "TOOL_CALL",
                BLOCKED,
                PII_BLOCKED,
            )
            assert (event["start_time_us"], event["duration_us"]) == (step.start_us, 0)
            assert event["content"] == [{"role": "TOOL_ARGUMENTS", "text": step.args.text}]
            assert "cost_micros" not in event
    assert (events[-1]["kind"], events[-1]["status"]) == ("SESSION_END", "OK")
    assert truth["outcome"] == "OK"
    assert truth["blocked_tool_calls"] == len(refused)
    assert truth["errors_by_type"].get(PII_BLOCKED) == len(refused)
    assert all(truth["tool_calls"][name] >= refused.count(name) for name in refused)


class _RefuseEverything(PlannedGuard):
    def refused(self, tool: str, content: Sequence[Mapping[str, str]]) -> list[str]:
        return ["CREDIT_CARD"] if any(c["role"] == "TOOL_ARGUMENTS" for c in content) else []


def test_the_agent_carries_on_after_a_refusal_the_plan_did_not_foresee() -> None:
    """The simulated agent's answer to ToolBlocked does not depend on the plan: a client that
    refuses more than the planner foresaw shows in the events, not in the sessions' course."""
    plans = _plans(sessions=60)

    def connect(key: AgentKey, clock: SimClock, sink: EventSink) -> GovernorLike:
        return OfflineGovernor(key, clock, sink, {}, _RefuseEverything(()))

    done: dict[str, Sequence[EventRecord]] = {}

    def keep(plan: SessionPlan, events: Sequence[EventRecord]) -> None:
        done[plan.session_id] = events

    report = drive(plans, connect, on_session=keep)
    assert report.emitted == sum(p.planned_events for p in plans)
    tools = [e for events in done.values() for e in events if e["kind"] == "TOOL_CALL"]
    assert tools
    assert {e["status"] for e in tools} == {BLOCKED}
    planned = {p.session_id: p.ending for p in plans}
    for session_id, events in done.items():
        if planned[session_id] != ABANDONED:
            assert events[-1]["status"] == planned[session_id]


def test_outcomes_are_counted_from_the_events() -> None:
    plans = _plans(sessions=400)
    report = drive(plans, offline_governors(plans), concurrency=16)
    planned = {ending: sum(p.ending == ending for p in plans) for ending in (OK, ERROR, ABANDONED)}
    assert report.sessions == len(plans)
    assert report.outcomes == {
        outcome: n
        for outcome, n in {
            "OK": planned[OK],
            "ERROR": planned[ERROR],
            "TIMEOUT": planned[ABANDONED],
        }.items()
        if n
    }


def test_rate_paces_the_run() -> None:
    plans = _plans(sessions=4, seed=3)
    events = sum(p.planned_events for p in plans)
    started = time.monotonic()
    drive(plans, offline_governors(plans), rate=events / 0.3)
    assert time.monotonic() - started >= 0.25
