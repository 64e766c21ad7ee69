"""The client against the real broker and Redis: emitting, obeying, remembering, reserving."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from confluent_kafka import Producer

from streams.client import BudgetExhausted, Governor, SessionKilled
from streams.codec import Codecs
from streams.control import SigningKey, agent_target, session_target, tenant_target
from streams.publisher import DecisionPublisher
from streams.settings import Settings
from tests.integration.client.conftest import GovernorFactory, decide, wait_until
from tests.kafka_helpers import consume


def _events(settings: Settings, count: int) -> list[dict[str, Any]]:
    codecs = Codecs.load(settings.schemas_dir)
    messages = consume(settings.bootstrap, settings.topic("events"), count)
    return [codecs.step_event.decode(m.value() or b"") for m in messages]


def test_events_round_trip_with_every_field_and_gap_free_seq(
    topics: Settings, governor: GovernorFactory
) -> None:
    gov = governor(obey=False)
    sent = []
    with gov.session(
        category="billing", prompt_version="p7", model_version="2025-06", tool_schema_version="t3"
    ) as s:
        sent.append(
            s.llm_call(
                model="gpt-4o-mini",
                provider="openai",
                input_tokens=1200,
                output_tokens=90,
                cache_read_input_tokens=800,
                reasoning_output_tokens=12,
                cost_usd=0.000321,
                duration_ms=812.5,
                content=[("SYSTEM", "be brief"), ("USER", "where is order 7?")],
            )
        )
        sent.append(
            s.tool_call(
                name="lookup_order",
                args={"id": 7},
                result={"status": "shipped"},
                duration_ms=42.0,
                call_id="call-1",
            )
        )
        sent.append(
            s.tool_call(
                name="send_email", duration_ms=3.0, status="ERROR", error_type="RateLimited"
            )
        )
        with s.llm(model="claude-sonnet-4", provider="anthropic") as step:
            step.usage(input_tokens=50, output_tokens=5)
            step.output("your order shipped")
        with pytest.raises(TimeoutError), s.tool(name="track", args="7"):
            raise TimeoutError("carrier API")
        sent.append(s.evaluation(name="helpfulness", score=0.83))
        sent.append(s.output("Your order 7 shipped."))
        session_id = s.session_id
    gov.emitter.flush()
    events = _events(topics, 9)
    assert [e["seq"] for e in sorted(events, key=lambda e: e["seq"])] == list(range(1, 10))
    assert {e["session_id"] for e in events} == {session_id}
    by_seq = {e["seq"]: e for e in events}
    for original in sent:
        assert {k: by_seq[original["seq"]][k] for k in original} == {
            k: v if k != "content" else [{"role": c["role"], "text": c["text"]} for c in v]
            for k, v in original.items()
        }
    llm = by_seq[2]
    assert (llm["cost_micros"], llm["duration_us"], llm["cache_read_input_tokens"]) == (
        321,
        812_500,
        800,
    )
    assert [c["role"] for c in llm["content"]] == ["SYSTEM", "USER"]
    assert by_seq[3]["content"][0] == {"role": "TOOL_ARGUMENTS", "text": '{"id": 7}'}
    assert by_seq[5]["kind"] == "LLM_CALL"
    assert by_seq[5]["content"] == [{"role": "ASSISTANT", "text": "your order shipped"}]
    assert (by_seq[6]["status"], by_seq[6]["error_type"]) == ("ERROR", "TimeoutError")
    assert by_seq[1]["kind"] == "SESSION_START"
    assert (by_seq[9]["kind"], by_seq[9]["status"]) == ("SESSION_END", "OK")
    assert all(e["category"] == "billing" and e["tool_schema_version"] == "t3" for e in events)


def test_a_session_that_raises_ends_as_error(topics: Settings, governor: GovernorFactory) -> None:
    gov = governor(obey=False)
    with pytest.raises(KeyError), gov.session() as s:
        raise KeyError("boom")
    gov.emitter.flush()
    end = max(_events(topics, 2), key=lambda e: e["seq"])
    assert (end["kind"], end["status"], end["error_type"]) == ("SESSION_END", "ERROR", "KeyError")
    assert s.seq == 2


def test_invalid_decisions_are_ignored_and_counted(
    topics: Settings,
    governor: GovernorFactory,
    publisher: DecisionPublisher,
    signing_key: SigningKey,
    tmp_path: Any,
) -> None:
    from streams.control import generate_signing_key

    gov = governor()
    s = gov.session()
    target = session_target(s.session_id)
    codecs = Codecs.load(topics.schemas_dir)
    raw = Producer({"bootstrap.servers": topics.bootstrap})
    forged = {**signing_key.sign(decide(target, "KILL", epoch=9)), "action": "KILL", "reason": "x"}
    stranger = generate_signing_key(tmp_path / "stranger", "k1").sign(decide(target, "KILL", 9))
    for bad in (decide(target, "KILL", epoch=9), forged, stranger):
        raw.produce(topics.topic("control"), codecs.decision.encode(bad), target.encode())
    raw.produce(topics.topic("control"), b"garbage", target.encode())
    raw.flush(10)
    publisher.publish(decide(target, "KILL", epoch=9, expires_at_us=1))
    publisher.publish(decide(target, "KILL", epoch=9, tenant_id="globex"))
    publisher.publish(decide(target, "WARN", epoch=5))
    publisher.publish(decide(target, "KILL", epoch=4), wait=True)
    wait_until(lambda: sum(gov.book.drops.values()) >= 7, what="7 refused decisions")
    assert dict(gov.book.drops) == {
        "unsigned": 1,
        "bad_signature": 2,
        "undecodable": 1,
        "expired": 1,
        "other_tenant": 1,
        "stale_epoch": 1,
    }
    with s:
        s.llm_call(model="gpt-4o-mini", input_tokens=1, output_tokens=1)  # WARN does not stop


def test_a_valid_kill_stops_the_session_before_its_next_step(
    topics: Settings, governor: GovernorFactory, publisher: DecisionPublisher
) -> None:
    gov = governor()
    published: list[dict[str, Any]] = []

    def agent() -> None:
        with gov.session() as s:
            s.llm_call(model="gpt-4o-mini", input_tokens=10, output_tokens=1)
            target = session_target(s.session_id)
            published.append(
                publisher.publish(decide(target, "KILL", reason="session budget exceeded"), True)
            )
            wait_until(lambda: gov.book.latest(target), what="the KILL")
            s.tool_call(name="never_runs")

    with pytest.raises(SessionKilled) as killed:
        agent()
    assert killed.value.decision_id == published[0]["decision_id"]
    assert killed.value.reason == "session budget exceeded"
    gov.emitter.flush()
    events = sorted(_events(topics, 3), key=lambda e: e["seq"])
    assert [e["kind"] for e in events] == ["SESSION_START", "LLM_CALL", "SESSION_END"]
    assert events[-1]["status"] == "KILLED"


def test_an_agent_wide_pause_blocks_until_resume(
    governor: GovernorFactory, publisher: DecisionPublisher
) -> None:
    gov = governor()
    publisher.publish(decide(agent_target("acme", "support-bot"), "PAUSE", epoch=1), wait=True)
    wait_until(lambda: gov.book.latest(agent_target("acme", "support-bot")), what="the PAUSE")
    done = threading.Event()
    started = time.monotonic()

    def agent() -> None:
        with gov.session() as s:
            s.llm_call(model="gpt-4o-mini", input_tokens=1, output_tokens=1)
        done.set()

    thread = threading.Thread(target=agent)
    thread.start()
    assert not done.wait(1.0), "the paused agent went on"
    publisher.publish(decide(agent_target("acme", "support-bot"), "RESUME", epoch=2), wait=True)
    assert done.wait(10), "the agent did not resume"
    assert time.monotonic() - started >= 1.0
    thread.join()


def test_throttle_delays_each_step_and_warn_calls_back_once(
    governor: GovernorFactory, publisher: DecisionPublisher
) -> None:
    warnings: list[str] = []
    gov = governor(on_warn=lambda _s, d: warnings.append(d["decision_id"]))
    publisher.publish(decide(tenant_target("acme"), "WARN", epoch=1), wait=True)
    wait_until(lambda: gov.book.latest(tenant_target("acme")), what="the WARN")
    with gov.session() as s:
        s.llm_call(model="m", input_tokens=1, output_tokens=1)
        s.llm_call(model="m", input_tokens=1, output_tokens=1)
    assert len(warnings) == 1
    publisher.publish(
        decide(
            agent_target("acme", "support-bot"), "THROTTLE", epoch=1, parameters={"delay_ms": "300"}
        ),
        wait=True,
    )
    wait_until(lambda: gov.book.latest(agent_target("acme", "support-bot")), what="the THROTTLE")
    started = time.monotonic()
    with gov.session() as s:
        for _ in range(3):
            s.tool_call(name="t")
    assert time.monotonic() - started >= 0.9


def test_a_kill_cancels_a_running_async_step_at_once(
    topics: Settings, governor: GovernorFactory, publisher: DecisionPublisher
) -> None:
    gov = governor()

    async def agent() -> tuple[float, str]:
        started = time.monotonic()
        async with gov.session() as s:
            loop = asyncio.get_running_loop()
            target = session_target(s.session_id)
            loop.call_later(0.3, lambda: publisher.publish(decide(target, "KILL"), wait=True))
            try:
                async with s.llm(model="gpt-4o", provider="openai"):
                    await asyncio.sleep(30)  # a runaway streamed completion
            except SessionKilled:
                return time.monotonic() - started, s.session_id
        raise AssertionError("the step was not cancelled")

    elapsed, _session_id = asyncio.run(agent())
    assert elapsed < 5
    gov.emitter.flush()
    events = sorted(_events(topics, 3), key=lambda e: e["seq"])
    assert (events[1]["kind"], events[1]["status"]) == ("LLM_CALL", "CANCELLED")
    assert events[1]["duration_us"] < 5_000_000
    assert events[2]["status"] == "KILLED"


def test_a_restarted_agent_remembers_kills_from_redis(
    governor: GovernorFactory, publisher: DecisionPublisher
) -> None:
    publisher.publish(decide(session_target("resumed-1"), "KILL", reason="loop"), wait=True)
    publisher.publish(
        decide(agent_target("acme", "batch-bot"), "KILL", reason="retired"), wait=True
    )
    # both Governors start after the decisions: the control topic is read from its end
    resumed = governor().session("resumed-1")
    with pytest.raises(SessionKilled, match="loop"):
        resumed.check()
    with pytest.raises(SessionKilled, match="retired"):
        governor(agent="batch-bot").session().check()


def test_preflight_reserves_atomically_with_zero_overshoot(governor: GovernorFactory) -> None:
    gov = governor(agent="capped-bot")
    gov.budgets.set_cap(agent_target("acme", "capped-bot"), 1_000_000)  # $1.00
    s = gov.session()
    granted: list[Any] = []
    refused: list[BudgetExhausted] = []
    lock = threading.Lock()

    def reserve() -> None:
        try:
            r = gov.preflight(s, 0.10)
            with lock:
                granted.append(r)
        except BudgetExhausted as exc:
            with lock:
                refused.append(exc)

    threads = [threading.Thread(target=reserve) for _ in range(25)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(granted), len(refused)) == (10, 15)
    assert refused[0].target == agent_target("acme", "capped-bot")
    granted[0].settle(0.04)
    granted[1].release()
    with s:
        s.llm_call(
            model="gpt-4o", input_tokens=1, output_tokens=1, cost_usd=0.07, reservation=granted[2]
        )
    ledger = gov.budgets.ledger(agent_target("acme", "capped-bot"))
    assert ledger["spent_micros"] == 110_000
    assert ledger["reserved_micros"] == 700_000
    assert gov.preflight(s, 0.19).amount_micros == 190_000
    with pytest.raises(BudgetExhausted):
        gov.preflight(s, 0.01)


def test_governor_reads_settings_and_closes_cleanly(topics: Settings) -> None:
    with Governor("acme", "bot", settings=topics, obey=False) as gov:
        with gov.session() as s:
            s.evaluation(name="x", score=1.0)
        assert gov.emitter.flush(10) == 0
    assert gov.stats()["delivered"] == 3


def test_a_resumed_session_continues_above_the_earlier_seq(
    topics: Settings, governor: GovernorFactory
) -> None:
    first = governor(obey=False)
    with first.session("conv-7") as s:
        s.llm_call(model="gpt-4o-mini", input_tokens=1, output_tokens=1)
    first.emitter.flush()
    later = governor(obey=False)
    with later.session("conv-7", resume=True) as s:
        s.llm_call(model="gpt-4o-mini", input_tokens=1, output_tokens=1)
    later.emitter.flush()
    seqs = [e["seq"] for e in sorted(_events(topics, 6), key=lambda e: e["seq"])]
    assert seqs[:3] == [1, 2, 3]
    assert seqs[3] > 3
    assert seqs[3:] == [seqs[3], seqs[3] + 1, seqs[3] + 2]
