"""The simulator through the real client and broker: what arrives is exactly what the truth says.

A fleet of ~150 sessions is played through real Governors on the test's topics while two
sessions are killed by signed decisions (one before it starts, through Redis; one mid-session,
through the control topic). Then ``gov.events`` is read back and every session is recomputed
from what arrived.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from streams.client import Governor
from streams.codec import Codecs
from streams.control import ACTED_DECISION_ID, KeyRing, generate_signing_key, session_target
from streams.pipeline.pricing import load_prices
from streams.publisher import DecisionPublisher, make_decision, now_us
from streams.settings import Settings
from streams.simulator.driver import (
    AgentKey,
    EventRecord,
    EventSink,
    GovernorLike,
    SimClock,
    drive,
    real_governors,
)
from streams.simulator.offline import simulate_offline
from streams.simulator.params import FleetParams
from streams.simulator.plan import ABANDONED, ERROR, OK, LlmStep, SessionPlan, ToolStep, plan_fleet
from streams.simulator.truth import HOP_OF_ROLE, TruthWriter, load_truth, session_truth
from tests.kafka_helpers import consume

END_US = 1_764_000_000_000_000
#: the mid-session victim is killed once it has sent this many events (start + 2 steps)
KILL_AFTER_EVENTS = 3


def _ids_aside(event: dict[str, Any]) -> dict[str, Any]:
    """An event without its id and the id of the decision it reports acting on (the offline
    stand-in names its kills ``offline-<session>``, the real client the signed decision)."""
    attributes = {**event["attributes"], ACTED_DECISION_ID: None} if event["attributes"] else {}
    return {**event, "event_id": None, "attributes": attributes}


def _calls(plan: SessionPlan) -> int:
    return sum(isinstance(s, LlmStep | ToolStep) for s in plan.steps)


def _kill(publisher: DecisionPublisher, plan: SessionPlan) -> None:
    decision = make_decision(
        target=session_target(plan.session_id),
        tenant_id=plan.tenant_id,
        action="KILL",
        policy_id="test-kill",
        epoch=1,
        issued_at_us=now_us(),
        reason="integration test",
    )
    publisher.publish(decision, wait=True)


def _wait_for_decision(gov: Governor, target: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while gov.book.latest(target) is None:
        assert time.monotonic() < deadline, f"the KILL for {target} never reached the client"
        time.sleep(0.01)


def test_a_simulated_fleet_arrives_whole_and_matches_its_ground_truth(
    topics: Settings, tmp_path: Path
) -> None:
    params = FleetParams(
        sessions=150,
        seed=2024,
        end_us=END_US,
        pii_fraction=0.2,
        budget_breaker_fraction=0.03,
        denied_tool_fraction=0.05,
        error_fraction=0.08,
        abandoned_fraction=0.06,
    )
    plans = plan_fleet(params)
    endings = Counter(p.ending for p in plans)
    assert endings[ERROR]
    assert endings[ABANDONED]
    assert any(p.budget_breaker for p in plans)
    ok = [p for p in plans if p.ending == OK and not p.budget_breaker and _calls(p) >= 5]
    killed_early, killed_midway = ok[0], ok[1]
    prices = load_prices(topics.policies_dir / "prices.yaml")
    key = generate_signing_key(tmp_path / "keys", "sim")
    publisher = DecisionPublisher(topics, key)
    _kill(publisher, killed_early)  # in Redis before the session exists

    governors: dict[AgentKey, Governor] = {}
    real = real_governors(topics, public_keys=KeyRing.from_dir(tmp_path / "keys"))

    def connect(agent: AgentKey, clock: SimClock, sink: EventSink) -> GovernorLike:
        def kill_midway(event: EventRecord) -> None:
            sink(event)
            if event["session_id"] == killed_midway.session_id and (
                event["seq"] == KILL_AFTER_EVENTS
            ):
                _kill(publisher, killed_midway)
                _wait_for_decision(gov, session_target(killed_midway.session_id))

        made = real(agent, clock, kill_midway)
        assert isinstance(made, Governor)
        gov: Governor = made
        governors[agent] = gov
        return gov

    sent: dict[str, Sequence[EventRecord]] = {}
    truth_path = tmp_path / "truth.jsonl"
    with TruthWriter(truth_path, params, prices) as writer:

        def done(plan: SessionPlan, events: Sequence[EventRecord]) -> None:
            sent[plan.session_id] = events
            writer.add(events, planted=plan.pii, budget_breaker=plan.budget_breaker)

        report = drive(plans, connect, on_session=done)
    publisher.close()

    # every event the client emitted was delivered and arrives, in a gap-free seq per session
    assert report.emitted == report.delivered == sum(len(e) for e in sent.values())
    assert (report.dropped, report.failed, report.pending) == (0, 0, 0)
    codecs = Codecs.load(topics.schemas_dir)
    arrived: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for message in consume(topics.bootstrap, topics.topic("events"), report.emitted):
        event = codecs.step_event.decode(message.value() or b"")
        assert message.key() == event["session_id"].encode()
        arrived[event["session_id"]].append(event)
    assert set(arrived) == {p.session_id for p in plans}
    for session_id, events in arrived.items():
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), session_id
        assert [e["event_id"] for e in events] == [e["event_id"] for e in sent[session_id]]

    # the ground truth file agrees with what arrived, recomputed here and by the truth fold
    truth = load_truth(truth_path)
    assert truth.fleet_params == params
    by_id = truth.by_id()
    assert set(by_id) == set(arrived)
    planned = {p.session_id: p for p in plans}
    for session_id, events in arrived.items():
        expected = by_id[session_id]
        calls = [e for e in events if e["kind"] in ("LLM_CALL", "TOOL_CALL")]
        cost = 0
        for call in calls:
            if call["cost_micros"] is not None:
                cost += call["cost_micros"]
            elif call["kind"] == "LLM_CALL":
                tokens = (call["input_tokens"], call["output_tokens"])
                priced = prices.price_micros(
                    call["model"], *tokens, call["cache_read_input_tokens"]
                )
                cost += priced or 0  # an unpriced call adds nothing
        assert expected["cost_micros"] == cost, session_id
        assert expected["input_tokens"] == sum(c["input_tokens"] or 0 for c in calls)
        assert expected["output_tokens"] == sum(c["output_tokens"] or 0 for c in calls)
        assert expected["steps_by_kind"] == dict(Counter(e["kind"] for e in events))
        assert expected["events"] == len(events)
        plan = planned[session_id]
        refolded = session_truth(
            events, prices, planted=plan.pii, budget_breaker=plan.budget_breaker
        )
        assert json.loads(json.dumps(refolded)) == dict(expected)

    # the kills ended their sessions where the client stopped them
    early, midway = by_id[killed_early.session_id], by_id[killed_midway.session_id]
    assert early["outcome"] == midway["outcome"] == "KILLED"
    assert early["steps_by_kind"] == {"SESSION_START": 1, "SESSION_END": 1}
    assert midway["events"] == KILL_AFTER_EVENTS + 1
    outcomes = Counter(s["outcome"] for s in truth.sessions)
    assert outcomes == {
        "KILLED": 2,
        "OK": endings[OK] - 2,
        "ERROR": endings[ERROR],
        "TIMEOUT": endings[ABANDONED],
    }
    assert report.outcomes == dict(outcomes)
    assert report.decisions_accepted >= 2

    # each planted PII value is in the content of the hop the truth names
    located = [p for s in truth.sessions for p in s["pii"]]
    assert {p["entity_type"] for p in located} == {
        "EMAIL_ADDRESS",
        "PHONE_NUMBER",
        "CREDIT_CARD",
        "US_SSN",
        "PERSON",
    }
    events_by_id = {e["event_id"]: e for events in arrived.values() for e in events}
    for pii in located:
        event = events_by_id[pii["event_id"]]
        assert event["seq"] == pii["seq"]
        assert event["tool_name"] == pii["tool_name"]
        hops = {HOP_OF_ROLE[c["role"]] for c in event["content"] if pii["value"] in c["text"]}
        assert pii["hop"] in hops

    # the offline stand-in builds the same events as the real client (ids aside)
    offline, _ = simulate_offline(
        plans,
        prices,
        kills={killed_early.session_id: 0, killed_midway.session_id: KILL_AFTER_EVENTS - 1},
    )
    round_trip = [codecs.step_event.decode(codecs.step_event.encode(e)) for e in offline]
    by_session: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in round_trip:
        by_session[event["session_id"]].append(event)
    for session_id, events in arrived.items():
        real_events = [_ids_aside(e) for e in events]
        assert real_events == [_ids_aside(e) for e in by_session[session_id]]
    for gov in governors.values():
        assert gov.stats()["decisions_dropped"] == {}
