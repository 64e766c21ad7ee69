"""Replay on a real broker: a time range (and a session, agent or tenant of it) is copied with
its keys, bytes, headers, timestamps, partitions and per-partition order; nothing else is."""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from typer.testing import CliRunner

from streams.cli import app as cli
from streams.codec import Codecs, header_pairs
from streams.replay import RangeRecord, ReplaySpec, iter_range, replay
from streams.settings import Settings
from streams.topics import admin_client, describe_topics, ensure_topics

TENANTS = ("acme", "globex")
AGENTS = ("support-bot", "billing-agent")


@dataclass(frozen=True)
class Sent:
    partition: int
    timestamp_ms: int
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    tenant: str | None  #: None: the value does not decode
    agent: str | None


def produce_fleet(settings: Settings, base_ms: int) -> list[Sent]:
    """60 records of 9 sessions over 3 partitions, one second apart, each with headers, and
    one undecodable record of session s1 among them."""
    codecs = Codecs.load(settings.schemas_dir)
    sent: list[Sent] = []
    seqs: dict[str, int] = defaultdict(int)
    for i in range(60):
        n = (i * 7) % 9
        session = f"s{n}"
        tenant, agent = TENANTS[n % 2], AGENTS[(n // 2) % 2]
        headers = (("traceparent", f"00-{i:032x}-{n:016x}-01".encode()), ("n", str(i).encode()))
        if i == 31:
            sent.append(Sent(n % 3, base_ms + i * 1000, b"s1", b"garbage #31", headers, None, None))
            continue
        seqs[session] += 1
        event: dict[str, Any] = {
            "event_id": f"{session}-{seqs[session]}",
            "seq": seqs[session],
            "session_id": session,
            "tenant_id": tenant,
            "agent_id": agent,
            "kind": "SESSION_START" if seqs[session] == 1 else "TOOL_CALL",
            "tool_name": None if seqs[session] == 1 else "search_kb",
            "start_time_us": (base_ms + i * 1000) * 1000,
            "status": "OK",
        }
        value = codecs.step_event.encode(event)
        sent.append(
            Sent(n % 3, base_ms + i * 1000, session.encode(), value, headers, tenant, agent)
        )
    producer = Producer({"bootstrap.servers": settings.bootstrap, "acks": "all"})
    for s in sent:
        producer.produce(
            settings.topic("events"),
            s.value,
            s.key,
            partition=s.partition,
            timestamp=s.timestamp_ms,
            headers=list(s.headers),
        )
    assert producer.flush(30) == 0
    return sent


def read_topic(settings: Settings, topic: str) -> dict[int, list[Message]]:
    """Every record of ``topic`` by partition, read by an independent plain consumer."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    metadata = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, 0) for p in metadata.partitions])
    got: dict[int, list[Message]] = {p: [] for p in metadata.partitions}
    at_end: set[int] = set()
    deadline = time.monotonic() + 30
    while len(at_end) < len(got):
        assert time.monotonic() < deadline, f"{topic}: no end of partitions {set(got) - at_end}"
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        error = msg.error()
        if error is not None:
            assert error.code() == KafkaError._PARTITION_EOF, error
            at_end.add(msg.partition() or 0)
            continue
        got[msg.partition() or 0].append(msg)
    consumer.close()
    return got


def as_sent(msg: Message) -> tuple[int, int, bytes | None, bytes | None, tuple[Any, ...]]:
    return (
        msg.partition() or 0,
        msg.timestamp()[1],
        msg.key(),
        msg.value(),
        header_pairs(msg.headers()),
    )


def expected(sent: list[Sent], keep: Any) -> dict[int, list[tuple[Any, ...]]]:
    by_partition: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
    for s in sent:
        if keep(s):
            by_partition[s.partition].append(
                (s.partition, s.timestamp_ms, s.key, s.value, s.headers)
            )
    return by_partition


def copied(settings: Settings, topic: str) -> dict[int, list[tuple[Any, ...]]]:
    return {p: [as_sent(m) for m in ms] for p, ms in read_topic(settings, topic).items() if ms}


def test_replay_copies_exactly_the_range_and_filter(topics: Settings) -> None:
    base_ms = (time.time_ns() // 1_000_000) - 30 * 60 * 1000
    sent = produce_fleet(topics, base_ms)
    # records 10..45 inclusive, by time: the bounds are on a record and inside a millisecond
    from_us, to_us = (base_ms + 10_000) * 1000, (base_ms + 45_000) * 1000 + 999
    in_range = [s for s in sent if from_us <= s.timestamp_ms * 1000 <= to_us]
    assert len(in_range) == 36

    # the reader: exactly the range, per partition in offset order, with progress
    calls: list[tuple[int, int]] = []
    records = list(
        iter_range(
            topics, topics.topic("events"), from_us, to_us, progress=lambda *a: calls.append(a)
        )
    )
    assert calls[0] == (0, 36)
    assert calls[-1] == (36, 36)
    by_partition: dict[int, list[RangeRecord]] = defaultdict(list)
    for r in records:
        by_partition[r.partition].append(r)
    for partition, rows in by_partition.items():
        assert [r.offset for r in rows] == sorted(r.offset for r in rows)
        assert [(r.partition, r.timestamp_ms, r.key, r.value, r.headers) for r in rows] == (
            expected(in_range, lambda s: True)[partition]
        )

    # everything in the range, undecodable record included
    report = replay(topics, ReplaySpec(from_us, to_us, to_topic=topics.topic("replay.all")))
    assert (report.scanned, report.copied, report.skipped_undecodable) == (36, 36, 0)
    assert report.created_topic
    assert copied(topics, report.to_topic) == expected(in_range, lambda s: True)
    [info] = describe_topics(admin_client(topics), [report.to_topic])
    assert (info.partitions, info.cleanup_policy) == (3, "delete")
    assert info.retention_ms == str(topics.events_retention_ms)
    assert {p.partition: p.copied for p in report.partitions} == {
        p: len(rows) for p, rows in expected(in_range, lambda s: True).items()
    }

    # one session, by its key: its undecodable record comes along
    report = replay(
        topics, ReplaySpec(from_us, to_us, session_id="s1", to_topic=topics.topic("replay.s1"))
    )
    want = expected(in_range, lambda s: s.key == b"s1")
    assert any(s.tenant is None for s in in_range if s.key == b"s1")
    assert report.copied == sum(len(v) for v in want.values())
    assert report.skipped_undecodable == 0
    assert copied(topics, report.to_topic) == want

    # an agent, and a tenant: decoded, the undecodable record skipped and counted
    by_agent = ReplaySpec(from_us, to_us, agent_id="billing-agent")
    by_tenant = ReplaySpec(from_us, to_us, tenant_id="globex")
    for name, spec, keep in (
        ("agent", by_agent, lambda s: s.agent == "billing-agent"),
        ("tenant", by_tenant, lambda s: s.tenant == "globex"),
    ):
        report = replay(topics, spec)
        assert report.to_topic.startswith(topics.topic("replay.")), name
        want = expected(in_range, keep)
        assert report.copied == sum(len(v) for v in want.values()) > 0, name
        assert report.skipped_undecodable == 1, name
        assert copied(topics, report.to_topic) == want, name

    # the command line: the same counts as JSON, into a topic it names
    result = CliRunner().invoke(
        cli,
        ["replay", "--from", str(from_us), "--to", str(to_us), "--tenant", "acme", "--json"],
        env=topics.to_env(),
    )
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    want = expected(in_range, lambda s: s.tenant == "acme")
    assert answer["scanned"] == 36
    assert answer["copied"] == sum(len(v) for v in want.values())
    assert answer["skipped_undecodable"] == 1
    assert [p["copied"] for p in answer["partitions"]] == [len(want[p]) for p in range(3)]
    assert answer["to_topic"].startswith(topics.topic("replay."))
    assert copied(topics, answer["to_topic"]) == want
    assert answer["worker_env"]["GOVERNOR_EVENTS_TOPIC"] == answer["to_topic"]


def test_a_range_past_the_end_and_transaction_markers_end_the_read(topics: Settings) -> None:
    """The end offset may be a transaction marker, never delivered: the read still ends."""
    topic = topics.topic("sessions")
    producer = Producer(
        {"bootstrap.servers": topics.bootstrap, "transactional.id": f"t-{uuid.uuid4().hex}"}
    )
    producer.init_transactions(30)
    for i in range(3):
        producer.begin_transaction()
        producer.produce(topic, f"v{i}".encode(), b"k", partition=0)
        producer.commit_transaction(30)
    started = time.monotonic()
    now_us = time.time_ns() // 1000
    records = list(iter_range(topics, topic, now_us - 600_000_000, now_us + 600_000_000))
    assert [r.value for r in records] == [b"v0", b"v1", b"v2"]
    assert time.monotonic() - started < 10
    assert list(iter_range(topics, topic, now_us + 600_000_000, now_us + 700_000_000)) == []


def test_a_worker_on_another_events_topic_creates_no_events_topic_of_its_own(
    settings: Settings,
) -> None:
    replay_settings = settings.replace(
        topic_prefix=settings.topic("replay.x."), events_topic=settings.topic("replay.x")
    )
    created = ensure_topics(replay_settings)
    assert replay_settings.topic("control") in created
    assert replay_settings.topic("events") not in created
    [info] = describe_topics(admin_client(settings), [replay_settings.topic("events")])
    assert not info.exists
