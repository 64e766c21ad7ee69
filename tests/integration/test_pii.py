"""PII end to end: seeded canaries are found at the right hop with the right handling, their
lineage can be followed, and their clear text is nowhere but gov.events (real broker, Redis,
worker).

The card check runs on a thread beside the canary fleet (each has a worker and topics of its
own): see :func:`card_check`."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
from rich.console import Console
from typer.testing import CliRunner

from streams.app import fingerprint_key
from streams.cli import app as cli
from streams.control import load_signing_key
from streams.pipeline.pii import fingerprint
from streams.policy_files import load_pii_policy
from streams.settings import Settings
from streams.simulator.params import FleetParams
from streams.simulator.run import run_simulation
from streams.simulator.truth import load_truth
from streams.topics import admin_client, ensure_topics, read_partitions
from streams.worker import WorkerProcess
from tests.conftest import isolated_settings

REPO = Path(__file__).resolve().parents[2]
STRUCTURED = {"EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "US_SSN"}


def _lineage(settings: Settings, fp: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(
        cli, ["ask", "pii", "--fingerprint", fp, "--json"], env=settings.to_env()
    )
    assert result.exit_code == 0, result.output
    hops: list[dict[str, Any]] = json.loads(result.output)["hops"]
    return hops


def _topic_bytes(settings: Settings, events: bool) -> list[bytes]:
    """Keys and values of every record of gov.events, or of every other topic of this test
    (read side by side: each read is mostly waiting on the broker)."""
    chosen = [
        (topic, sorted(meta.partitions))
        for topic, meta in admin_client(settings).list_topics(timeout=10).topics.items()
        if topic.startswith(settings.topic_prefix) and (topic == settings.topic("events")) == events
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        read = pool.map(lambda t: read_partitions(settings, *t), chosen)
        return [
            (key or b"") + b"\0" + (value or b"")
            for records in read
            for rows in records.values()
            for _o, key, value in rows
        ]


def _redis_bytes(settings: Settings) -> list[bytes]:
    client = redis.Redis.from_url(settings.redis_url)
    blobs: list[bytes] = []

    def add(*items: Any) -> None:
        blobs.extend(i if isinstance(i, bytes) else str(i).encode() for i in items)

    for key in client.scan_iter(match=f"{settings.redis_key_prefix}*"):
        kind = client.type(key)
        add(key)
        if kind == b"string":
            add(client.get(key) or b"")
        elif kind == b"hash":
            for field, value in client.hgetall(key).items():
                add(field, value)
        elif kind == b"zset":
            add(*client.zrange(key, 0, -1))
        elif kind == b"set":
            add(*client.smembers(key))
    return blobs


def test_canaries_are_found_handled_followed_and_never_stored(
    topics: Settings, tmp_path: Path
) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    settings = topics.replace(
        policies_dir=policies, keys_dir=tmp_path / "keys", finished_retention_s=30 * 86400
    )
    truth_path = tmp_path / "truth.jsonl"
    log = tmp_path / "worker.log"
    with WorkerProcess(settings, log) as worker:
        run_simulation(
            settings,
            Console(quiet=True),
            FleetParams(sessions=120, seed=8, concurrency=8),
            rate=0,
            truth_path=truth_path,
        )
        truth = load_truth(truth_path).sessions
        planted = [(s, p) for s in truth for p in s["pii"] if p["entity_type"] in STRUCTURED]
        assert len(planted) >= 20
        policy = load_pii_policy(policies)
        key = fingerprint_key(settings, load_signing_key(settings.control_keys_dir))
        deadline = time.monotonic() + 90
        while True:
            missing: list[Any] = []
            for session, pii in planted:
                fp = fingerprint(key, pii["entity_type"], pii["value"])
                hops = _lineage(settings, fp)
                handling = policy.handling(pii["entity_type"], pii["hop"], pii["tool_name"])
                if not any(
                    h["session_id"] == session["session_id"]
                    and h["hop"] == pii["hop"]
                    and h["handling"] == handling
                    for h in hops
                ):
                    missing.append((session["session_id"], pii["entity_type"], pii["hop"]))
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        assert not missing, f"{len(missing)} of {len(planted)} canaries not found: {missing[:5]}"
        summary = worker.get_json("/ask/pii?since=30d")
        assert summary["total"] >= len(planted)
        assert set(summary["by_hop"]) <= {"CONTEXT", "TOOL_ARGUMENTS", "TOOL_RESULT", "OUTPUT"}
        # the PII stage's lag, measured every 5 s against the consumer's end offsets: caught up
        lag = _pii_lag(worker.url, deadline=time.monotonic() + 15)
        assert lag, "no governor_pii_lag series on /metrics"
        assert sum(lag.values()) == 0, lag
        time.sleep(1.5)  # the last checkpoint
    in_events = b"\n".join(_topic_bytes(settings, events=True))
    outside = b"\n".join(
        [*_topic_bytes(settings, events=False), *_redis_bytes(settings), log.read_bytes()]
    )
    # the search works: the values are in gov.events, where raw content is allowed
    assert all(p["value"].encode() in in_events for _s, p in planted)
    leaked = [p["value"] for _s, p in planted if p["value"].encode() in outside]
    assert not leaked, f"clear-text PII outside gov.events: {leaked[:3]}"


def _pii_lag(url: str, deadline: float) -> dict[str, float]:
    """``governor_pii_lag`` by partition from /metrics, once the PII stage has caught up (or
    as it is at ``deadline``)."""
    while True:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
            text = response.read().decode()
        lag = {
            line.split(" ")[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("governor_pii_lag{")
        }
        if (lag and not any(lag.values())) or time.monotonic() > deadline:
            return lag
        time.sleep(0.5)


CARD_TEST = "test_a_card_in_a_tools_arguments_is_blocked_before_the_call_and_audited"


@pytest.fixture(scope="module", autouse=True)
def card_check(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Future[None] | None]:
    """The card check (a worker and a client of its own, on its own topics) runs on a thread
    from the module's start, while the canary fleet runs: its test waits for it."""
    selected = {
        i.name for i in request.session.items if getattr(i, "module", None) is request.module
    }
    if CARD_TEST not in selected:
        yield None
        return
    stack_settings: Settings = request.getfixturevalue("stack_settings")
    folder = tmp_path_factory.mktemp("card")
    topics = isolated_settings(stack_settings, folder)
    ensure_topics(topics)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="card-check") as pool:
        yield pool.submit(card_is_blocked_and_audited, topics, folder)


def test_a_card_in_a_tools_arguments_is_blocked_before_the_call_and_audited(
    card_check: Future[None] | None,
) -> None:
    assert card_check is not None
    card_check.result(timeout=280)  # its checks fail here, with their traceback


def card_is_blocked_and_audited(topics: Settings, tmp_path: Path) -> None:
    from streams.audit import verify_audit_topic
    from streams.client import Governor, ToolBlocked
    from streams.codec import Codecs
    from tests.kafka_helpers import consume

    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    settings = topics.replace(policies_dir=policies, keys_dir=tmp_path / "keys")
    with WorkerProcess(settings, tmp_path / "worker.log"):
        # checks off: the worker's own findings are under test, not the client's refusals
        gov = Governor("acme", "payments-bot", settings=settings, checks=False)
        try:
            assert gov.pii.guards_tools
            s = gov.session()
            s.start()
            blocked = s.tool(name="charge_card", args={"card": "4111 1111 1111 1111"})
            with pytest.raises(ToolBlocked) as refused:
                blocked.__enter__()
            assert refused.value.entity_types == ["CREDIT_CARD"]
            with s.tool(name="lookup_order", args={"order": 7}):
                pass  # nothing to block
            s.finish()
        finally:
            gov.close()
        # a client with no PII guard and no checks runs the same call: the worker finds what
        # the client should have refused, and audits the bypass
        bare = Governor("acme", "bare-bot", settings=settings, checks=False, pii_guard=False)
        try:
            with bare.session() as b:
                b.tool_call(name="charge_card", args={"card": "4111 1111 1111 1111"})
        finally:
            bare.close()
        codecs = Codecs.load(settings.schemas_dir)
        found = [
            codecs.pii_finding.decode(m.value() or b"")
            for m in consume(settings.bootstrap, settings.topic("pii"), 2)
        ]
        [finding] = [f for f in found if f["session_id"] == s.session_id]
        assert [f["session_id"] for f in found if f is not finding] == [b.session_id]
        assert (
            finding["entity_type"],
            finding["hop"],
            finding["tool_name"],
            finding["handling"],
        ) == ("CREDIT_CARD", "TOOL_ARGUMENTS", "charge_card", "BLOCK")
        deadline = time.monotonic() + 20
        audit: list[dict[str, Any]] = []
        while time.monotonic() < deadline and len(audit) < 3:
            audit = [
                codecs.audit_record.decode(m.value() or b"")
                for m in consume(settings.bootstrap, settings.topic("audit"), 3)
            ]
        record = next(r for r in audit if r["details"].get("finding_id") == finding["finding_id"])
        assert record["kind"] == "PII_HANDLING"
        assert record["details"]["handling"] == "BLOCK"
        assert sorted(r["kind"] for r in audit) == ["CLIENT_BYPASS", "PII_HANDLING", "PII_HANDLING"]
        bypass = next(r for r in audit if r["kind"] == "CLIENT_BYPASS")
        assert bypass["subject"] == f"session:{b.session_id}"
        assert (bypass["details"]["policy_id"], bypass["details"]["why"]) == ("pii", "none")
        time.sleep(1.5)
        assert verify_audit_topic(settings).breaks == []
