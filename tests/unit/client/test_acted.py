"""A session reports each decision it applied, once, on its next event (for a KILL, its end):
decision id, action, when, and for THROTTLE and PAUSE how long it waited."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from streams.client import Governor, SessionKilled
from streams.codec import Codecs
from streams.control import (
    ACTED_ACTION,
    ACTED_AT_US,
    ACTED_DECISION_ID,
    ACTED_WAITED_US,
    ActedOn,
    KeyRing,
    SigningKey,
    acted_attributes,
    acted_reports,
    agent_target,
    generate_signing_key,
    session_target,
    tenant_target,
)
from streams.publisher import make_decision
from streams.settings import Settings

REPO = Path(__file__).resolve().parents[3]
T0 = 1_764_000_000_000_000


class Clock:
    def __init__(self, now_us: int) -> None:
        self.now_us = now_us

    def __call__(self) -> float:
        return self.now_us / 1_000_000


class Capturing(Governor):
    """The real Governor and Session; emitted events are kept here instead of produced."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.events: list[dict[str, Any]] = []
        super().__init__(*args, **kwargs)

    def emit(self, event: dict[str, Any]) -> None:
        self.events.append(event)


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return generate_signing_key(tmp_path / "keys", "k1")


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def gov(tmp_path: Path, key: SigningKey, clock: Clock) -> Any:
    settings = Settings.from_env(
        {},
        bootstrap="127.0.0.1:1",
        redis_url="redis://127.0.0.1:1/0",
        policies_dir=REPO / "policies",
    )
    made = Capturing(
        "acme",
        "support-bot",
        "1.0",
        settings=settings,
        public_keys=KeyRing.from_dir(tmp_path / "keys"),
        clock=clock,
        obey=False,  # no control subscriber: decisions are offered to the book by the test
        pii_guard=False,
        checks=False,  # what is under test is obeying decisions, not the client's own checks
    )
    yield made
    made.close(timeout_s=0)


def offer(
    gov: Governor, key: SigningKey, target: str, action: str, epoch: int = 1, **kw: Any
) -> str:
    decision = key.sign(
        make_decision(
            target=target,
            tenant_id="acme",
            action=action,
            policy_id=f"test-{action.lower()}",
            epoch=epoch,
            issued_at_us=T0,
            **kw,
        )
    )
    assert gov.book.offer(decision, gov.now_us()) is None
    gov._on_decision(decision)  # what the control subscriber does: wake paused sessions
    return str(decision["decision_id"])


def reports(event: dict[str, Any]) -> list[ActedOn]:
    return acted_reports(event.get("attributes"))


def test_a_kill_of_the_session_that_started_one_stops_it_too(
    gov: Capturing, key: SigningKey, clock: Clock
) -> None:
    orchestrator = gov.session("s-boss")
    orchestrator.start()
    sub_agent = gov.session("s-sub", parent=orchestrator)
    sub_agent.start()
    unrelated = gov.session("s-other")
    unrelated.start()
    offer(gov, key, session_target("s-boss"), "KILL", reason="tree budget")
    clock.now_us = T0 + 5_000_000
    with pytest.raises(SessionKilled):
        sub_agent.llm_call(model="gpt-4o-mini")
    unrelated.llm_call(model="gpt-4o-mini")  # not in the tree: runs
    start = next(e for e in gov.events if e["session_id"] == "s-sub")
    assert start["attributes"] == {"governor.parent_session_id": "s-boss"}


def test_a_kill_is_reported_on_the_session_end(
    gov: Capturing, key: SigningKey, clock: Clock
) -> None:
    s = gov.session("s-kill")
    s.start()
    s.llm_call(model="gpt-4o-mini", input_tokens=10, output_tokens=2)
    decision = offer(gov, key, session_target("s-kill"), "KILL", reason="budget")
    clock.now_us = T0 + 5_000_000
    with pytest.raises(SessionKilled) as killed:
        s.llm_call(model="gpt-4o-mini")
    s.finish(killed.value)
    start, call, end = gov.events
    assert end["kind"] == "SESSION_END"
    assert end["status"] == "KILLED"
    assert end["attributes"] == {
        ACTED_DECISION_ID: decision,
        ACTED_ACTION: "KILL",
        ACTED_AT_US: str(T0 + 5_000_000),
    }
    assert "attributes" not in start
    assert "attributes" not in call
    # the map<string,string> the schema already has carries it through Avro
    codec = Codecs.load(REPO / "schemas").step_event
    assert codec.decode(codec.encode(end))["attributes"] == end["attributes"]


def test_a_throttle_is_reported_once_with_the_time_it_slept(
    gov: Capturing, key: SigningKey, clock: Clock
) -> None:
    decision = offer(
        gov, key, agent_target("acme", "support-bot"), "THROTTLE", parameters={"delay_ms": "30"}
    )
    s = gov.session("s-throttle")
    s.start()
    clock.now_us = T0 + 1_000_000
    s.llm_call(model="gpt-4o-mini")
    s.llm_call(model="gpt-4o-mini")  # slept again, but the decision was reported already
    s.finish()
    _, first, second, end = gov.events
    [report] = reports(first)
    assert (report.decision_id, report.action, report.acted_at_us) == (
        decision,
        "THROTTLE",
        T0 + 1_000_000,
    )
    assert report.waited_us is not None
    assert report.waited_us >= 30_000
    assert reports(second) == []
    assert reports(end) == []


def test_a_pause_reports_how_long_it_blocked_once_released(
    gov: Capturing, key: SigningKey, clock: Clock
) -> None:
    paused = offer(gov, key, tenant_target("acme"), "PAUSE")
    s = gov.session("s-pause")
    s.start()
    clock.now_us = T0 + 2_000_000
    release = threading.Timer(0.2, lambda: offer(gov, key, tenant_target("acme"), "RESUME", 2))
    release.start()
    began = time.monotonic()
    s.tool_call(name="lookup_order", args={"id": 1})
    assert time.monotonic() - began >= 0.15
    s.finish()
    [report] = reports(gov.events[1])
    assert (report.decision_id, report.action, report.acted_at_us) == (
        paused,
        "PAUSE",
        T0 + 2_000_000,
    )
    assert report.waited_us is not None
    assert report.waited_us >= 150_000


def test_a_pause_ended_by_a_kill_reports_both_on_the_end(gov: Capturing, key: SigningKey) -> None:
    paused = offer(gov, key, agent_target("acme", "support-bot"), "PAUSE")
    s = gov.session("s-pause-kill")
    s.start()
    killer = threading.Timer(0.1, lambda: offer(gov, key, session_target("s-pause-kill"), "KILL"))
    killer.start()
    with pytest.raises(SessionKilled) as killed:
        s.llm_call(model="gpt-4o-mini")
    s.finish(killed.value)
    end = gov.events[-1]
    assert end["status"] == "KILLED"
    by_action = {r.action: r for r in reports(end)}
    assert set(by_action) == {"PAUSE", "KILL"}
    assert by_action["PAUSE"].decision_id == paused
    assert by_action["PAUSE"].waited_us is not None
    assert by_action["PAUSE"].waited_us >= 50_000
    assert by_action["KILL"].waited_us is None


def test_a_warning_is_reported_beside_what_the_event_already_carries(
    tmp_path: Path, key: SigningKey, clock: Clock
) -> None:
    warned: list[str] = []
    settings = Settings.from_env({}, bootstrap="127.0.0.1:1", redis_url="redis://127.0.0.1:1/0")
    gov = Capturing(
        "acme",
        "support-bot",
        settings=settings,
        public_keys=KeyRing.from_dir(tmp_path / "keys"),
        clock=clock,
        obey=False,
        pii_guard=False,
        on_warn=lambda _s, d: warned.append(d["decision_id"]),
    )
    try:
        decision = offer(gov, key, tenant_target("acme"), "WARN")
        s = gov.session("s-warn")
        s.start()
        s.check()
        s.error("Upstream", "the model timed out")
        s.finish()
        assert warned == [decision]
        error = gov.events[1]
        assert error["attributes"]["message"] == "the model timed out"
        assert reports(error) == [ActedOn(decision, "WARN", T0)]
        assert reports(gov.events[2]) == []
    finally:
        gov.close(timeout_s=0)


def test_an_async_step_reports_the_throttle_it_awaited(gov: Capturing, key: SigningKey) -> None:
    decision = offer(gov, key, session_target("s-async"), "THROTTLE", parameters={"delay_ms": "20"})

    async def agent() -> None:
        async with gov.session("s-async") as s, s.tool(name="search_web", args={"q": "x"}) as step:
            step.result("ok")

    asyncio.run(agent())
    _, tool, _ = gov.events
    [report] = reports(tool)
    assert (report.decision_id, report.action) == (decision, "THROTTLE")
    assert report.waited_us is not None
    assert report.waited_us >= 20_000


def test_reports_round_trip_and_garbled_ones_are_ignored() -> None:
    one = [ActedOn("d1", "KILL", 5)]
    assert acted_reports(acted_attributes(one)) == one
    assert ACTED_WAITED_US not in acted_attributes(one)
    two = [ActedOn("d1", "PAUSE", 5, 700), ActedOn("d2", "KILL", 9)]
    attributes = acted_attributes(two)
    assert attributes[ACTED_WAITED_US] == "700,"
    assert acted_reports(attributes) == two
    assert acted_attributes([]) == {}
    assert acted_reports(None) == []
    assert acted_reports({"message": "x"}) == []
    assert acted_reports({ACTED_DECISION_ID: "d1,d2", ACTED_ACTION: "KILL", ACTED_AT_US: "1"}) == []
    assert acted_reports({ACTED_DECISION_ID: "d1", ACTED_ACTION: "KILL", ACTED_AT_US: "soon"}) == []
