"""The worker enforces policies end to end: real broker, Redis, worker process and client.

The tests share one worker (its start-up is most of their time): each drives sessions of its
own, and the one that breaks the policy file puts it back before it ends."""

from __future__ import annotations

import functools
import json
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from streams.audit import verify_audit_topic
from streams.client import Governor, SessionKilled
from streams.codec import Codecs
from streams.control import session_target
from streams.settings import Settings
from streams.topics import ensure_topics, read_partitions
from streams.worker import WorkerProcess
from tests.conftest import isolated_settings

REPO = Path(__file__).resolve().parents[2]

POLICIES = """version: 7
policies:
  - id: session-budget
    kind: budget
    scope: session
    limit_usd: 0.05
    warn_at: 0.5
    action: kill
  - id: dangerous-tools
    kind: tools
    deny: ["delete_*"]
    action: kill
  - id: agent-concurrency
    kind: concurrency
    scope: agent
    max_active: 2
    action: throttle
    throttle_delay_ms: 400
  - id: tree-budget
    kind: budget
    scope: session_tree
    match: {agents: ["tree-*"]}
    limit_usd: 0.01
    warn_at: null
    action: kill
  - id: ledger-budget
    kind: budget
    scope: agent
    match: {agents: ["ledger-bot"]}
    limit_usd: 100
    window: 1h
    action: kill
"""


def wait_until(predicate: Callable[[], Any], timeout_s: float = 20, what: str = "") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def worker(
    stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[WorkerProcess, Settings]]:
    """One worker for the module's tests, on topics of its own."""
    folder = tmp_path_factory.mktemp("enforcement")
    policies = folder / "policies"
    policies.mkdir()
    shutil.copy(REPO / "policies" / "prices.yaml", policies)
    (policies / "governor.yaml").write_text(POLICIES)
    settings = isolated_settings(stack_settings, folder).replace(
        policies_dir=policies, keys_dir=folder / "keys", checkpoint_interval_s=0.2
    )
    ensure_topics(settings)
    with WorkerProcess(settings, folder / "worker.log") as process:
        wait_until(lambda: (process.get_json("/ingest") or {}).get("ready"), what="assignment")
        yield process, settings


def spend_until_killed(gov: Governor) -> tuple[int, SessionKilled, str]:
    """Run gpt-4o calls ($0.006 each) until a KILL stops the session."""
    steps = 0
    with gov.session() as s:
        try:
            for _ in range(200):
                s.llm_call(model="gpt-4o", input_tokens=2000, output_tokens=100, duration_ms=5)
                steps += 1
                time.sleep(0.02)
        except SessionKilled as exc:
            return steps, exc, s.session_id
    raise AssertionError("200 steps ran without a KILL")


def client(settings: Settings, agent: str = "support-bot") -> Governor:
    # checks off: these tests show the worker alone stopping a client that does not check
    return Governor(
        tenant="acme", agent=agent, agent_version="2.0", settings=settings, checks=False
    )


def test_a_session_over_budget_is_killed_before_its_next_step(
    worker: tuple[WorkerProcess, Settings],
) -> None:
    process, settings = worker
    gov = client(settings)
    try:
        steps_run, killed, session_id = spend_until_killed(gov)
        assert killed.policy_id == "session-budget"
        # gpt-4o: 2000 * 2.5 + 100 * 10 per 1M tokens = $0.006 a call: the 9th passes $0.05
        assert 9 <= steps_run < 60, steps_run
        state = wait_until(
            lambda: (
                (process.get_json(f"/state/session/{session_id}") or {}).get("status") == "KILLED"
                and process.get_json(f"/state/session/{session_id}")
            ),
            what="the KILLED end",
        )
        assert state["violations"] >= 1
    finally:
        gov.close()
    assert gov.book.drops.get("bad_signature", 0) == 0


def test_a_denied_tool_triggers_its_policy_and_is_audited(
    worker: tuple[WorkerProcess, Settings],
) -> None:
    """A client with checks off runs the denied tool: the worker still kills the session and
    audits, beside its decision, that the step bypassed the client's checks."""
    process, settings = worker
    gov = client(settings)
    try:
        s = gov.session()
        s.start()
        s.tool_call(name="delete_account", args={"user": 7})
        decision = wait_until(lambda: gov.book.latest(session_target(s.session_id)), what="KILL")
        assert (decision["action"], decision["policy_id"]) == ("KILL", "dangerous-tools")
        assert decision["policy_version"] == 7
        with pytest.raises(SessionKilled):
            s.tool_call(name="lookup_order")
        s.finish()
    finally:
        gov.close()
    codecs = Codecs.load(settings.schemas_dir)

    def audited() -> list[dict[str, Any]]:
        rows = read_partitions(settings, settings.topic("audit"), [0, 1, 2])
        records = [codecs.audit_record.decode(v) for p in rows.values() for _o, _k, v in p if v]
        return [r for r in records if r["details"].get("decision_id") == decision["decision_id"]]

    # the other tests' decisions are on the worker's audit topic too: this one's, once
    audit = wait_until(lambda: len(audited()) == 2 and audited(), what="the audit records")
    assert [r["kind"] for r in audit] == ["DECISION", "CLIENT_BYPASS"]
    bypass = audit[1]["details"]
    assert (bypass["policy_id"], bypass["action"], bypass["why"]) == (
        "dangerous-tools",
        "KILL",
        "none",
    )
    assert bypass["client_policy_version"] == ""  # no client checks, so no version reported
    assert bypass["worker_policy_version"].startswith("v7:")
    assert audit[1]["subject"] == f"session:{s.session_id}"
    with urllib.request.urlopen(process.url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    assert 'governor_client_bypass_total{policy="dangerous-tools",why="none"} 1.0' in text
    time.sleep(1.5)  # the chain head is written with the next checkpoint
    verification = verify_audit_topic(settings)
    assert verification.records >= 1
    assert verification.breaks == []


def test_concurrency_over_the_cap_throttles_new_sessions(
    worker: tuple[WorkerProcess, Settings],
) -> None:
    _process, settings = worker
    gov = client(settings, agent="busy-bot")
    try:
        open_sessions = [gov.session() for _ in range(3)]
        for s in open_sessions:
            s.start()

        def throttled() -> list[Any]:
            return [s for s in open_sessions if gov.book.latest(session_target(s.session_id))]

        # partitions may process the three starts in any order: the one seen third is held back
        [held] = wait_until(throttled, what="THROTTLE of the session over the cap")
        decision = gov.book.latest(session_target(held.session_id))
        assert decision is not None
        assert (decision["action"], decision["parameters"]) == ("THROTTLE", {"delay_ms": "400"})
        time.sleep(0.5)
        assert len(throttled()) == 1
        started = time.monotonic()
        held.tool_call(name="t")
        assert time.monotonic() - started >= 0.4
        for s in open_sessions:
            s.finish()
    finally:
        gov.close()


def test_an_invalid_policy_file_is_refused_and_enforcement_goes_on(
    worker: tuple[WorkerProcess, Settings],
) -> None:
    process, settings = worker
    policy_file = settings.policies_dir / "governor.yaml"
    policy_file.write_text(POLICIES.replace("limit_usd: 0.05", "limit_usd: lots"))
    try:
        refused = wait_until(
            lambda: (process.get_json("/policies") or {}).get("refused"), what="the refusal"
        )
        assert any("governor.yaml:6: policies.0.limit_usd" in line for line in refused), refused
        assert process.get_json("/policies")["version"] == 7
        gov = client(settings)
        try:
            _steps, killed, _session_id = spend_until_killed(gov)
            assert killed.policy_id == "session-budget"
        finally:
            gov.close()
        assert "policy change refused" in process.log_tail(200)
    finally:  # the worker is the module's: leave it with the files it started with
        policy_file.write_text(POLICIES)

        def in_force() -> bool:
            answer = process.get_json("/policies")
            return answer is not None and answer["refused"] is None

        wait_until(in_force, what="the restored file back in force")


def test_metrics_parse_and_have_the_families(worker: tuple[WorkerProcess, Settings]) -> None:
    process, settings = worker
    gov = client(settings)
    try:
        with gov.session() as s:
            s.llm_call(model="gpt-4o-mini", input_tokens=10, output_tokens=10, duration_ms=120)
            s.tool_call(name="lookup", duration_ms=30)
            s.llm_call(model="mystery-model", input_tokens=1, output_tokens=1)
        session_id = s.session_id
    finally:
        gov.close()
    wait_until(
        lambda: (process.get_json(f"/state/session/{session_id}") or {}).get("status") == "OK",
        what="the session's end",
    )
    with urllib.request.urlopen(process.url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    families = {f.name for f in text_string_to_metric_families(text)}
    assert families >= {
        "governor_events",
        "governor_dlq_records",
        "governor_sessions",
        "governor_session_duration_seconds",
        "governor_step_duration_seconds",
        "governor_cost_usd",
        "governor_tokens",
        "governor_unpriced_calls",
        "governor_decisions",
        "governor_consumer_lag",
        "governor_processing_delay_seconds",
        "governor_policy_version",
    }
    assert session_id not in text, "session ids must never be labels"
    notification = {
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "GovernorRedisDown"},
                "annotations": {"summary": "Redis unreachable"},
            }
        ]
    }
    request = urllib.request.Request(
        process.url + "/alerts/webhook",
        data=json.dumps(notification).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert json.loads(response.read()) == {"received": 1}
    assert "alertmanager: GovernorRedisDown firing" in process.log_tail(50)


def test_the_worker_reconciles_the_clients_fleet_budget_reservations(
    worker: tuple[WorkerProcess, Settings],
) -> None:
    """The worker writes its own spend of an agent budget into the hash the clients reserve
    on (so spend of clients without checks counts), and releases what a closed session left
    reserved (a client that reserved a step and never recorded it)."""
    process, settings = worker
    unchecked = client(settings, agent="ledger-bot")
    try:
        with unchecked.session() as s:
            s.llm_call(model="gpt-4o", input_tokens=2000, output_tokens=100, duration_ms=5)
        spender = s.session_id
    finally:
        unchecked.close()
    state = wait_until(
        lambda: (
            (process.get_json(f"/state/session/{spender}") or {}).get("status") == "OK"
            and process.get_json(f"/state/session/{spender}")
        ),
        what="the unchecked session's end",
    )
    cost = state["cost_micros"]
    assert cost > 0
    key = f"{settings.redis_key_prefix}reserve:ledger-budget:agent:acme/ledger-bot"
    redis_client = redis.Redis.from_url(settings.redis_url, decode_responses=True)

    def worker_fields() -> dict[str, int]:
        fields: dict[str, str] = redis_client.hgetall(key)  # type: ignore[assignment]
        return {k: int(v) for k, v in fields.items() if k.startswith("w:")}

    def reservations() -> list[str]:
        names: list[str] = redis_client.hkeys(key)  # type: ignore[assignment]
        return [name for name in names if name.startswith("r:")]

    written = wait_until(lambda: sum(worker_fields().values()) == cost and worker_fields(),
                         what="the worker's spend in the reservation hash")  # fmt: skip
    assert len(written) == 1  # one hour of spend

    checked = Governor("acme", "ledger-bot", settings=settings, obey=False, checks=True)
    try:
        assert checked.policy_set.version == 7
        s2 = checked.session()
        s2.start()
        s2.guard_llm(model="gpt-4o", input_tokens=1000, max_output_tokens=100)
        held = reservations()
        assert len(held) == 1
        assert held[0].startswith(f"r:{s2.session_id}|")
        s2.finish()  # the reserved step was never recorded: the reservation stays open ...
        assert checked.emitter.flush() == 0
    finally:
        checked.close()
    # ... until the worker closes the session and releases it
    wait_until(lambda: not reservations(), what="the closed session's reservation released")
    assert sum(worker_fields().values()) == cost


def test_sub_agent_sessions_roll_up_to_the_session_that_started_them(
    worker: tuple[WorkerProcess, Settings],
) -> None:
    """An orchestrator starts two sub-agents, one of which starts another: the worker records
    each link and `ask tree` / `ask top-cost --tree` roll cost, tokens and steps up."""
    from streams.query.answers import Answers
    from streams.query.readmodel import SessionReadModel

    process, settings = worker
    planner, helper = client(settings, agent="planner"), client(settings, agent="researcher")
    try:
        with planner.session() as root:
            root.llm_call(model="gpt-4o", input_tokens=1000, output_tokens=100, duration_ms=5)
            with helper.session(parent=root) as child:
                child.llm_call(model="gpt-4o-mini", input_tokens=500, output_tokens=50)
                with helper.session(parent=child.session_id) as grandchild:
                    grandchild.tool_call(name="search", duration_ms=3)
            with helper.session(parent=root) as sibling:
                sibling.llm_call(model="gpt-4o", input_tokens=200, output_tokens=20)
        assert planner.emitter.flush() == 0
        assert helper.emitter.flush() == 0
    finally:
        planner.close()
        helper.close()
    members = [root, child, grandchild, sibling]

    def ended(session_id: str) -> dict[str, Any] | None:
        state: dict[str, Any] | None = process.get_json(f"/state/session/{session_id}")
        return state if (state or {}).get("status") == "OK" else None

    states = [
        wait_until(functools.partial(ended, m.session_id), what="the sessions' ends")
        for m in members
    ]
    assert [s.get("parent_session_id") for s in states[1:]] == [
        root.session_id, child.session_id, root.session_id
    ]  # fmt: skip
    answers = Answers(
        SessionReadModel(redis.Redis.from_url(settings.redis_url), settings.redis_key_prefix)
    )
    tree = wait_until(lambda: _tree(answers, root.session_id), what="the tree in the read-model")
    assert tree["tree"]["sessions"] == 4
    assert round(tree["tree"]["cost_usd"] * 1e6) == sum(s["cost_micros"] for s in states)
    assert tree["tree"]["steps"] == 4  # three LLM calls and a tool call
    assert tree["tree"]["depth"] == 2
    assert [m["session_id"] for m in tree["members"]] == [
        root.session_id, *sorted([child.session_id, sibling.session_id]), grandchild.session_id
    ]  # fmt: skip
    ranked = answers.top_cost(100.0, "1h", tree=True)
    mine = next(t for t in ranked["top"] if t["session_id"] == root.session_id)
    assert mine["tree"] == tree["tree"]
    assert all(t["session_id"] not in {child.session_id, grandchild.session_id}
               for t in ranked["top"])  # fmt: skip
    # the incident timeline of the tree: every member's steps, the totals rolled up
    from typer.testing import CliRunner

    from streams.cli import app

    args = ["incident", "timeline", "--session", root.session_id, "--tree", "--json"]
    shown = CliRunner().invoke(app, args, env=settings.to_env())
    assert shown.exit_code == 0, shown.output
    timeline = json.loads(shown.output)
    assert [d["header"]["session_id"] for d in timeline["descendants"]] == [
        m["session_id"] for m in tree["members"][1:]
    ]
    assert timeline["tree_totals"]["cost_micros"] == sum(s["cost_micros"] for s in states)
    assert (timeline["tree_totals"]["sessions"], timeline["tree_totals"]["steps"]) == (4, 4)
    table = CliRunner().invoke(app, args[:-1], env=settings.to_env())
    assert "session tree of" in table.output, table.output


def _tree(answers: Any, session_id: str) -> dict[str, Any] | None:
    try:
        tree: dict[str, Any] = answers.session_tree(session_id, since="1h")
    except LookupError:
        return None
    return tree if tree["tree"]["sessions"] == 4 else None


def test_a_budget_on_a_session_tree_kills_the_sub_agents_with_their_orchestrator(
    worker: tuple[WorkerProcess, Settings],
) -> None:
    """$0.01 for an orchestrator and its sub-agents together: the call that takes the tree
    past it (a sub-agent's, in another process) kills every open session of the tree."""
    _process, settings = worker
    boss, team = client(settings, agent="tree-boss"), client(settings, agent="tree-worker")
    try:
        root = boss.session()
        root.start()
        root.llm_call(model="gpt-4o", input_tokens=1000, output_tokens=100)  # $0.0035
        child = team.session(parent=root)
        child.start()
        child.llm_call(model="gpt-4o", input_tokens=2000, output_tokens=100)  # $0.006
        child.llm_call(model="gpt-4o", input_tokens=1000, output_tokens=100)  # past $0.01
        for gov, session in ((boss, root), (team, child)):
            target = session_target(session.session_id)
            decision = wait_until(functools.partial(gov.book.latest, target), what="the KILL")
            assert (decision["action"], decision["policy_id"]) == ("KILL", "tree-budget")
        with pytest.raises(SessionKilled):
            root.llm_call(model="gpt-4o", input_tokens=10, output_tokens=10)
        with pytest.raises(SessionKilled):
            child.tool_call(name="lookup")
        child.finish()
        root.finish()
    finally:
        boss.close()
        team.close()
