"""The planner foresees the client's PII guard exactly: the real guard (presidio) refuses the tool
calls a plan marks as blocked and no others, and the real client then emits what the offline
stand-in emits (no broker: the real Governor's events are captured instead of produced)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from streams.client import Governor
from streams.client.pii import PiiGuard
from streams.control import KeyRing
from streams.pipeline.pricing import PriceTable
from streams.policy_files import load_pii_policy
from streams.settings import Settings
from streams.simulator.driver import AgentKey, EventRecord, EventSink, GovernorLike, SimClock, drive
from streams.simulator.offline import simulate_offline
from streams.simulator.params import FleetParams
from streams.simulator.pii import CREDIT_CARD, EMAIL_ADDRESS, US_SSN
from streams.simulator.plan import BLOCKED, SessionPlan, ToolStep, plan_fleet
from tests.unit.simulator.conftest import END_US, REPO_ROOT

SHIPPED = REPO_ROOT / "policies"


def _settings(policies: Path) -> Settings:
    return Settings.from_env(
        {}, bootstrap="127.0.0.1:1", redis_url="redis://127.0.0.1:1/0", policies_dir=policies
    )


@functools.cache
def _guard(policies: Path) -> PiiGuard:
    """The guard a client with ``policies`` builds (one per folder: presidio loads once)."""
    return PiiGuard.build(_settings(policies), enabled=None, redact=False)


def _tool_steps(plans: Sequence[SessionPlan]) -> list[ToolStep]:
    return [s for p in plans for s in p.steps if isinstance(s, ToolStep)]


def _verdicts(policies: Path, plans: Sequence[SessionPlan]) -> list[tuple[str, str, Any, Any]]:
    """Every tool call where the planner and the real guard disagree, and the blocked count."""
    guard = _guard(policies)
    wrong = []
    for step in _tool_steps(plans):
        real = guard.refused(step.name, [{"role": "TOOL_ARGUMENTS", "text": step.args.text}])
        if real != list(step.blocked):
            wrong.append((step.name, step.args.text, real, step.blocked))
    return wrong


@pytest.mark.parametrize("seed", [3, 7, 2024])
def test_the_real_guard_refuses_exactly_the_calls_the_plan_marks_blocked(seed: int) -> None:
    plans = plan_fleet(FleetParams(sessions=500, seed=seed, end_us=END_US, pii_fraction=0.3))
    assert _verdicts(SHIPPED, plans) == []
    blocked = [s for s in _tool_steps(plans) if s.blocked]
    assert len(blocked) > 40
    assert {e for s in blocked for e in s.blocked} == {CREDIT_CARD, US_SSN}
    # every planted card or SSN in a tool's arguments is in a blocked call (the shipped policy
    # blocks both in every tool's arguments), and nothing else is
    for step in _tool_steps(plans):
        planted = {v.entity_type for v in step.args.pii} & {CREDIT_CARD, US_SSN}
        assert step.blocked == tuple(sorted(planted))


ALL = "entities: [EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD, US_SSN, PERSON]\n"


@pytest.mark.parametrize(
    ("policy", "refused"),
    [
        # SSNs score 0.5 without context: under this floor the guard lets them through
        (
            ALL + "min_score: 0.6\nrules:\n"
            "  - {entities: [CREDIT_CARD, US_SSN], hops: [TOOL_ARGUMENTS], handling: block}\n",
            {CREDIT_CARD},
        ),
        # by tool; names are never found (the client scans without a spaCy model)
        (
            ALL + "rules:\n"
            "  - {entities: [EMAIL_ADDRESS], hops: [TOOL_ARGUMENTS], tools: ['send_*'], "
            "handling: block}\n"
            "  - {entities: [PERSON], hops: [TOOL_ARGUMENTS], handling: block}\n",
            {EMAIL_ADDRESS},
        ),
        # the guard is on only with a block rule for tool arguments, whatever the default
        (
            ALL + "default: block\nrules:\n"
            "  - {entities: [CREDIT_CARD], hops: [OUTPUT], handling: block}\n",
            set(),
        ),
        # an entity the policy does not scan for is never found
        (
            "entities: [EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD]\nrules:\n"
            "  - {entities: [CREDIT_CARD, US_SSN], hops: [TOOL_ARGUMENTS], handling: block}\n",
            {CREDIT_CARD},
        ),
    ],
    ids=["score-floor", "by-tool", "no-block-rule", "not-scanned"],
)
def test_other_policies_are_foreseen_as_well(
    policy: str, refused: set[str], tmp_path: Path
) -> None:
    (tmp_path / "pii.yaml").write_text("version: 1\n" + policy)
    pii = load_pii_policy(tmp_path)
    plans = plan_fleet(FleetParams(sessions=400, seed=5, end_us=END_US, pii_fraction=0.3), pii)
    assert _verdicts(tmp_path, plans) == []
    blocked = [s for s in _tool_steps(plans) if s.blocked]
    assert {e for s in blocked for e in s.blocked} == refused
    if refused == {EMAIL_ADDRESS}:
        assert {s.name for s in blocked} == {"send_email"}


class _Capturing(Governor):
    """The real Governor and Session (real PII guard); events go to ``sink``, not to Kafka."""

    def __init__(self, *args: Any, sink: EventSink, **kwargs: Any) -> None:
        self._sink = sink
        super().__init__(*args, **kwargs)

    def emit(self, event: dict[str, Any]) -> None:
        self._sink(event)


def _without_ids(events: Sequence[EventRecord]) -> list[dict[str, Any]]:
    # the offline stand-in has no cost_micros on a blocked call either: keys must agree too
    return [{**e, "event_id": None} for e in events]


def test_the_real_client_emits_what_the_offline_stand_in_emits(prices: PriceTable) -> None:
    plans = plan_fleet(FleetParams(sessions=150, seed=17, end_us=END_US, pii_fraction=0.3))
    assert sum(bool(s.blocked) for s in _tool_steps(plans)) > 10
    settings = _settings(SHIPPED)
    governors: list[Governor] = []

    def connect(key: AgentKey, clock: SimClock, sink: EventSink) -> GovernorLike:
        gov = _Capturing(
            tenant=key.tenant_id,
            agent=key.agent_id,
            agent_version=key.agent_version,
            settings=settings,
            public_keys=KeyRing({}),
            clock=clock,
            obey=False,  # no control subscriber (the PII guard is on all the same)
            checks=False,  # the offline stand-in models a client that checks nothing itself
            sink=sink,
        )
        gov.pii._scanner = _guard(SHIPPED).scanner()  # presidio loaded once
        governors.append(gov)
        return gov

    real: dict[str, Sequence[EventRecord]] = {}

    def done(plan: SessionPlan, events: Sequence[EventRecord]) -> None:
        real[plan.session_id] = events

    report = drive(plans, connect, on_session=done, close_timeout_s=0)
    assert all(gov.pii.guards_tools for gov in governors)
    offline, truths = simulate_offline(plans, prices)
    by_session: dict[str, list[EventRecord]] = {}
    for event in offline:
        by_session.setdefault(event["session_id"], []).append(event)
    assert set(real) == set(by_session)
    for session_id, events in real.items():
        assert _without_ids(events) == _without_ids(by_session[session_id]), session_id
    # the agent carried on after each refusal: every planned event was sent, and sessions
    # planned to succeed did
    assert report.emitted == sum(p.planned_events for p in plans)
    blocked = [e for events in real.values() for e in events if e.get("status") == BLOCKED]
    assert len(blocked) == sum(bool(s.blocked) for s in _tool_steps(plans))
    assert sum(t["blocked_tool_calls"] for t in truths) == len(blocked)
    planned_ok = {p.session_id for p in plans if p.ending == "OK"}
    assert {t["session_id"] for t in truths if t["outcome"] == "OK"} == planned_ok
