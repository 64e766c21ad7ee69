"""Client-side checks against the real broker and Redis: the signed set from gov.policies,
denied tools that never run, a session budget never exceeded, BLOCKED steps on gov.events."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from streams.client import Governor, InputBlocked, StepBlocked, ToolBlocked
from streams.client.policies import BLOCKED_POLICY_ATTR, POLICY_VERSION_ATTR
from streams.codec import Codecs
from streams.control import KeyRing, SigningKey
from streams.policy_files import load_bundle
from streams.policy_history import PolicyHistory, client_reports, read_event_tail
from streams.settings import Settings
from tests.integration.client.conftest import GovernorFactory, wait_until
from tests.kafka_helpers import consume

REPO = Path(__file__).resolve().parents[3]
TIGHT = """version: 4
policies:
  - id: tight-budget
    kind: budget
    scope: session
    limit_usd: 0.05
    action: kill
  - id: no-drops
    kind: tools
    deny: ["drop_*"]
    action: kill
"""


def publish(settings: Settings, key: SigningKey, folder: Path) -> None:
    """What the worker does with an accepted bundle: record it, and sign it for clients."""
    history = PolicyHistory(settings, folder, key)
    try:
        history.accepted(load_bundle(folder).policies).result(timeout=30)
    finally:
        history.close()


def guarded(s: Any, tool: str, run: Any) -> None:
    """An adapter's way: check before the step (guard_tool), run it, record it after."""
    s.guard_tool(name=tool, args={"i": 1})
    run(tool)


def spend_until_refused(s: Any, costs: list[float]) -> None:
    """LLM calls asking for at most 400 output tokens, each using 300 ($0.008)."""
    for _ in range(50):
        with s.llm(model="gpt-4o", input_tokens=2000, max_output_tokens=400) as step:
            costs.append(0.008)
            step.usage(input_tokens=2000, output_tokens=300, cost_usd=0.008)


@pytest.fixture
def policies_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "accepted"
    folder.mkdir()
    for name in ("prices.yaml", "pii.yaml"):
        shutil.copy(REPO / "policies" / name, folder / name)
    (folder / "governor.yaml").write_text(TIGHT)
    return folder


def test_denied_tools_never_run_budgets_hold_and_blocked_steps_reach_the_events_topic(
    topics: Settings,
    governor: GovernorFactory,
    signing_key: SigningKey,
    keyring: KeyRing,
    policies_folder: Path,
) -> None:
    publish(topics, signing_key, policies_folder)
    gov = governor(checks=True, obey=False)
    assert gov.policy_set.source == "gov.policies"
    assert gov.policy_set.version == 4
    ran: list[str] = []

    def drop_table(name: str) -> None:
        ran.append(name)  # the side effect that must never happen

    with gov.session() as s:
        with pytest.raises(StepBlocked) as refused, s.tool(name="drop_table", args={"t": "users"}):
            drop_table("users")
        assert (refused.value.policy_id, refused.value.action) == ("no-drops", "KILL")
        with pytest.raises(StepBlocked):
            guarded(s, "drop_index", drop_table)
        with pytest.raises(StepBlocked):
            s.tool_call(name="drop_db", args={})
        with pytest.raises(ToolBlocked), s.tool(name="pay", args={"card": "4111 1111 1111 1111"}):
            drop_table("paid")
        with (
            pytest.raises(InputBlocked),
            s.llm(model="gpt-4o", content=[("USER", "sk_live_" + "a" * 24)]),
        ):
            drop_table("secret")
        assert ran == []
        # gpt-4o: 2000 in at $2.50 and 400 out at $10 per 1M: $0.009 a call at most
        costs: list[float] = []
        with pytest.raises(StepBlocked) as over:
            spend_until_refused(s, costs)
        assert over.value.policy_id == "tight-budget"
        assert sum(costs) <= 0.05
        calls = len(costs)
        assert calls == 6  # 6 * 0.008 = 0.048; the 7th's estimate (0.009) would pass 0.05
    label = gov.policy_set.label
    gov.close()
    codecs = Codecs.load(topics.schemas_dir)
    events = [
        codecs.step_event.decode(m.value() or b"")
        for m in consume(topics.bootstrap, topics.topic("events"), 2 + 5 + calls + 1)
    ]
    blocked = [e for e in events if e["status"] == "BLOCKED"]
    assert [(e["kind"], e["attributes"][BLOCKED_POLICY_ATTR]) for e in blocked] == [
        ("TOOL_CALL", "no-drops"),
        ("TOOL_CALL", "no-drops"),
        ("TOOL_CALL", "no-drops"),
        ("TOOL_CALL", "pii"),
        ("LLM_CALL", "pii"),
        ("LLM_CALL", "tight-budget"),
    ]
    assert all(e["attributes"][POLICY_VERSION_ATTR] == label for e in events)
    assert sum(e["cost_micros"] or 0 for e in events) == calls * 8000
    # governor policy history: which version this client reports using
    [report] = client_reports(read_event_tail(topics, 100))
    assert (report.client_id, report.policy_version, report.source) == (
        gov.client_id,
        label,
        "gov.policies",
    )


def test_a_policy_change_reaches_a_running_client_and_the_last_good_set_outlives_kafka(
    topics: Settings,
    governor: GovernorFactory,
    signing_key: SigningKey,
    policies_folder: Path,
    keyring: KeyRing,
) -> None:
    publish(topics, signing_key, policies_folder)
    gov = governor(checks=True, obey=False)
    assert gov.policy_set.version == 4
    (policies_folder / "governor.yaml").write_text(
        TIGHT.replace("version: 4", "version: 5").replace('"drop_*"', '"drop_*", "rm_*"')
    )
    publish(topics, signing_key, policies_folder)
    wait_until(lambda: gov.policy_set.version == 5, what="v5 in the running client")
    with gov.session() as s, pytest.raises(StepBlocked):
        s.guard_tool(name="rm_rf", args={})
    # a client that cannot reach Kafka starts with the last good set from disk
    offline = Governor(
        "acme",
        "bot",
        settings=topics,
        bootstrap="127.0.0.1:1",
        public_keys=keyring,
        obey=False,
        checks=True,
        policy_wait_s=0,
    )
    try:
        assert (offline.policy_set.source, offline.policy_set.version) == ("cache", 5)
    finally:
        offline.close(timeout_s=0.5)


def test_an_unsigned_or_foreign_set_is_refused_and_the_local_set_stays(
    topics: Settings, governor: GovernorFactory, tmp_path: Path, policies_folder: Path
) -> None:
    from streams.control import generate_signing_key

    foreign = generate_signing_key(tmp_path / "foreign", "evil")
    publish(topics, foreign, policies_folder)
    gov = governor(checks=True, obey=False)
    assert gov.policy_set.source == "local"  # the repo's policies folder
    stats: dict[str, Any] = gov.stats()
    assert stats["policy_sets_refused"] == {"unknown_key": 1}


def test_the_langchain_handler_refuses_a_denied_tool_in_on_tool_start(
    topics: Settings,
    governor: GovernorFactory,
    signing_key: SigningKey,
    policies_folder: Path,
) -> None:
    from langchain_core.tools import tool

    from streams.client.langchain import GovernorCallbackHandler

    publish(topics, signing_key, policies_folder)
    ran: list[int] = []

    @tool
    def drop_orders(order_id: int) -> str:
        """Drop an order."""
        ran.append(order_id)
        return "dropped"

    gov = governor(checks=True, obey=False)
    with gov.session() as s:
        handler = GovernorCallbackHandler(s)
        with pytest.raises(StepBlocked) as refused:
            drop_orders.invoke({"order_id": 7}, config={"callbacks": [handler]})
    assert refused.value.policy_id == "no-drops"
    assert ran == []
    # the OTel processor's check before execute_tool refuses it the same way
    from streams.client.otel import GovernorSpanProcessor

    with pytest.raises(StepBlocked):
        GovernorSpanProcessor(gov).check_tool("conversation-1", "drop_orders", {"order_id": 7})
    # ... and so does an execute_tool span of a known conversation, at its start: the body
    # that would run the tool never runs
    from opentelemetry.sdk.trace import TracerProvider

    processor = GovernorSpanProcessor(gov)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("agent")
    tool_span = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.conversation.id": "conversation-2",
        "gen_ai.tool.name": "drop_orders",
        "gen_ai.tool.call.arguments": '{"order_id": 8}',
    }
    span = tracer.start_as_current_span("execute_tool drop_orders", attributes=tool_span)
    with pytest.raises(StepBlocked) as at_start, span:
        ran.append(8)
    assert at_start.value.policy_id == "no-drops"
    assert (ran, processor.refused) == ([], 1)
    allowed = {**tool_span, "gen_ai.tool.name": "lookup_order"}
    with tracer.start_as_current_span("execute_tool lookup_order", attributes=allowed):
        ran.append(9)
    assert ran == [9]


def test_a_kill_stops_a_sync_stream_at_its_next_chunk(
    topics: Settings, governor: GovernorFactory, publisher: Any
) -> None:
    from streams.client import SessionKilled
    from streams.control import session_target
    from tests.integration.client.conftest import decide

    gov = governor()
    delivered: list[int] = []
    with gov.session() as s:
        killed = decide(session_target(s.session_id), "KILL")

        def chunks() -> Any:
            for n in range(1000):
                if n == 3:
                    publisher.publish(killed)
                    wait_until(lambda: gov.book.latest(session_target(s.session_id)), what="KILL")
                yield n

        with pytest.raises(SessionKilled), s.llm(model="gpt-4o") as step:
            delivered.extend(step.stream(chunks()))
    assert delivered == [0, 1, 2]
    codecs = Codecs.load(topics.schemas_dir)
    events = [
        codecs.step_event.decode(m.value() or b"")
        for m in consume(topics.bootstrap, topics.topic("events"), 3)
    ]
    assert [(e["kind"], e["status"]) for e in events] == [
        ("SESSION_START", "OK"),
        ("LLM_CALL", "CANCELLED"),
        ("SESSION_END", "KILLED"),
    ]


AGENT_BUDGET = """version: 6
policies:
  - id: shared-agent-budget
    kind: budget
    scope: agent
    window: 1d
    limit_usd: 0.10
    warn_at: null
    action: kill
"""


def test_an_agent_budget_shared_by_20_concurrent_sessions_is_never_exceeded(
    topics: Settings,
    governor: GovernorFactory,
    signing_key: SigningKey,
    policies_folder: Path,
) -> None:
    import threading

    (policies_folder / "governor.yaml").write_text(AGENT_BUDGET)
    publish(topics, signing_key, policies_folder)
    govs = [governor(agent="shared-bot", checks=True, obey=False) for _ in range(2)]
    spent: list[float] = []
    refusals: list[str] = []
    lock = threading.Lock()

    def agent(gov: Governor) -> None:
        with gov.session() as s:
            for _ in range(10):
                try:
                    with s.llm(model="gpt-4o", input_tokens=2000, max_output_tokens=400) as step:
                        step.usage(input_tokens=2000, output_tokens=300, cost_usd=0.008)
                        with lock:
                            spent.append(0.008)
                except StepBlocked as exc:
                    refusals.append(exc.policy_id)
                    return

    threads = [threading.Thread(target=agent, args=(govs[i % 2],)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    # estimates of $0.009 against $0.10: at most 11 can be held at once, 12 calls of $0.008
    # settle to $0.096 and then nothing fits; 20 sessions in 2 processes never pass the cap
    assert round(sum(spent), 6) <= 0.10
    assert len(spent) >= 11
    assert refusals
    assert set(refusals) == {"shared-agent-budget"}
    counts = [g.reservations.counts for g in govs]
    assert sum(c["refused"] for c in counts) >= 1
    assert sum(c["unavailable"] for c in counts) == 0


def test_a_leaked_reservation_lapses_and_redis_down_runs_the_step_unless_a_policy_denies(
    topics: Settings,
    governor: GovernorFactory,
    signing_key: SigningKey,
    policies_folder: Path,
) -> None:
    from streams.client.reservations import STALE_US

    strict = AGENT_BUDGET.replace("version: 6", "version: 7") + (
        "    match: {agents: [leaky-bot]}\n"
        "  - id: strict-budget\n    kind: budget\n    scope: agent\n    limit_usd: 1\n"
        "    on_unavailable: deny\n    match: {agents: [strict-bot]}\n"
    )
    (policies_folder / "governor.yaml").write_text(strict)
    publish(topics, signing_key, policies_folder)
    gov = governor(agent="leaky-bot", checks=True, obey=False)
    [budget] = gov.fleet_budgets()
    now = gov.now_us()
    # a client that died mid-step held the whole budget
    gov.reservations.reserve([budget], 100_000, now - STALE_US - 1)
    with gov.session() as s, s.llm(model="gpt-4o", input_tokens=2000, max_output_tokens=400):
        pass  # fits: the leaked hold lapsed
    down = governor(agent="leaky-bot", checks=True, obey=False, redis_url="redis://127.0.0.1:1/0")
    with down.session() as s, s.llm(model="gpt-4o", input_tokens=2000, max_output_tokens=400):
        pass  # Redis unreachable: the step runs, counted
    assert down.reservations.counts["unavailable"] >= 1
    denied = governor(
        agent="strict-bot", checks=True, obey=False, redis_url="redis://127.0.0.1:1/0"
    )
    with denied.session() as s, pytest.raises(StepBlocked) as refused:
        s.guard_llm(model="gpt-4o", input_tokens=10, max_output_tokens=10)
    assert (refused.value.policy_id, refused.value.action) == ("strict-budget", "DENY")


def test_an_hour_counts_the_larger_of_the_clients_and_the_workers_spend(
    topics: Settings,
    governor: GovernorFactory,
    signing_key: SigningKey,
    policies_folder: Path,
) -> None:
    """The worker's spend (``w:``, every client's, checked or not) and the clients' settled
    spend (``h:``) of one hour are not added: the larger counts, so neither is counted twice."""
    from streams.client.reservations import HOUR_US, NoRoom, reservation_key

    (policies_folder / "governor.yaml").write_text(AGENT_BUDGET)  # $0.10 per day
    publish(topics, signing_key, policies_folder)
    gov = governor(agent="shared-bot", checks=True, obey=False)
    [budget] = gov.fleet_budgets()
    now = gov.now_us()
    hour = now - now % HOUR_US
    key = reservation_key(topics.redis_key_prefix, budget)
    gov._redis.hset(key, mapping={f"h:{hour}": 60_000, f"w:{hour}": 70_000})
    held = gov.reservations.reserve([budget], 30_000, now, "s-1")  # 70k + 30k fits in 100k
    gov.reservations.settle(held, 0, now)
    with pytest.raises(NoRoom) as refused:
        gov.reservations.reserve([budget], 30_001, now, "s-1")
    assert refused.value.room_micros == 30_000
    # the worker reads further than the clients settled: its spend counts
    gov._redis.hset(key, f"w:{hour - HOUR_US}", 25_000)
    with pytest.raises(NoRoom) as refused:
        gov.reservations.reserve([budget], 10_000, now, "s-1")
    assert refused.value.room_micros == 5_000


CAPS = """version: 8
policies:
  - id: hard-cap
    kind: concurrency
    scope: agent
    max_active: 2
    action: kill
    match: {agents: [hard-bot]}
  - id: soft-cap
    kind: concurrency
    scope: agent
    max_active: 1
    action: throttle
    throttle_delay_ms: 50
    match: {agents: [soft-bot]}
"""


def test_concurrency_caps_hold_across_clients_refusing_or_holding_back_new_sessions(
    topics: Settings,
    governor: GovernorFactory,
    signing_key: SigningKey,
    policies_folder: Path,
) -> None:
    import threading

    (policies_folder / "governor.yaml").write_text(CAPS)
    publish(topics, signing_key, policies_folder)
    hard = [governor(agent="hard-bot", checks=True, obey=False) for _ in range(2)]
    first, second = hard[0].session(), hard[1].session()
    first.start()
    second.start()
    third = hard[1].session()
    with pytest.raises(StepBlocked) as refused:
        third.start()
    assert (refused.value.policy_id, refused.value.action) == ("hard-cap", "KILL")
    assert third.seq == 0  # refused before anything was emitted
    first.finish()
    third.start()  # a slot freed
    second.finish()
    third.finish()

    soft = [governor(agent="soft-bot", checks=True, obey=False) for _ in range(2)]
    holder = soft[0].session()
    holder.start()
    order: list[str] = []

    def second_session() -> None:
        soft[1].session().start()
        order.append("in")

    waiter = threading.Thread(target=second_session)
    waiter.start()
    waiter.join(timeout=0.5)
    assert waiter.is_alive(), "a second session of soft-bot was not held back"
    order.append("out")
    holder.finish()
    waiter.join(timeout=5)
    assert order == ["out", "in"]
    assert soft[1].check_stats["throttled"] >= 1


def test_a_client_started_before_the_policy_topic_exists_gets_the_set_once_it_does(
    settings: Settings, signing_key: SigningKey, keyring: KeyRing, policies_folder: Path
) -> None:
    from streams.topics import ensure_topics

    early = Governor(
        "acme", "bot", settings=settings, public_keys=keyring, obey=False, checks=True,
        policy_wait_s=0,
    )  # fmt: skip
    try:
        assert early.policy_set.source == "local"
        ensure_topics(settings)
        publish(settings, signing_key, policies_folder)
        wait_until(lambda: early.policy_set.source == "gov.policies", what="the set, later")
        assert early.policy_set.version == 4
    finally:
        early.close(timeout_s=1)
