"""Topic creation and description against the real broker."""

from __future__ import annotations

import time

from confluent_kafka import Producer

from streams.settings import Settings
from streams.topics import (
    admin_client,
    describe_topics,
    ensure_state_topic,
    ensure_topics,
    scan_partitions,
    topic_specs,
)


def test_ensure_topics_is_idempotent_and_the_broker_reports_the_specs(
    settings: Settings,
) -> None:
    names = [spec.name(settings) for spec in topic_specs(settings)]
    assert sorted(ensure_topics(settings)) == sorted(names)
    assert ensure_topics(settings) == []
    infos = {i.name: i for i in describe_topics(admin_client(settings), names)}
    for spec in topic_specs(settings):
        info = infos[spec.name(settings)]
        assert info.exists
        assert info.partitions == spec.partitions
        assert info.replication == 1
        assert info.retention_ms == str(spec.retention_ms)
        assert info.cleanup_policy == spec.cleanup_policy


def test_missing_topics_are_reported_as_missing(settings: Settings) -> None:
    [info] = describe_topics(admin_client(settings), [settings.topic("events")])
    assert not info.exists


def test_a_restore_reads_past_a_dead_workers_open_transaction(settings: Settings) -> None:
    """A worker dies mid-checkpoint, leaving a transaction open on a changelog partition; the
    partition's next owner commits state after it and hands it on. A read_committed reader
    ends where the open transaction starts, so a plain scan misses that committed state (and
    a restore from it would redo what was done); a restore's scan waits until the broker has
    aborted the dead transaction and reads it."""
    topic = settings.topic("scan-test")
    ensure_state_topic(settings, topic, 1)
    dead = Producer(
        {
            "bootstrap.servers": settings.bootstrap,
            "log_level": 3,
            "transactional.id": f"dead-{topic}",
            "transaction.timeout.ms": 3000,
        }
    )
    dead.init_transactions()
    dead.begin_transaction()
    dead.produce(topic, b"uncommitted", b"s|1", partition=0)
    assert dead.flush(10) == 0
    owner = Producer({"bootstrap.servers": settings.bootstrap, "log_level": 3,
                      "transactional.id": f"owner-{topic}"})  # fmt: skip
    owner.init_transactions()
    owner.begin_transaction()
    owner.produce(topic, b"committed", b"s|1", partition=0)
    owner.commit_transaction(10)

    def scan(until_stable: bool) -> tuple[list[bytes | None], int]:
        seen: list[bytes | None] = []
        calls = [0]

        def progress() -> None:
            calls[0] += 1

        scan_partitions(settings, topic, [0], lambda _p, r: seen.append(r[2]),
                        until_stable=until_stable, progress=progress)  # fmt: skip
        return seen, calls[0]

    assert scan(until_stable=False)[0] == []
    started = time.monotonic()
    seen, waits = scan(until_stable=True)
    assert seen == [b"committed"]
    assert waits > 1  # it waited, telling the loop it is alive
    assert time.monotonic() - started < 3 + 10 + 5  # the timeout and the broker's sweep
