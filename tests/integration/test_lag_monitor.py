"""The lag monitor against the real broker: exact numbers from the accounting group's committed
offsets, including partitions whose last records came in a transaction (commit and abort
markers), offsets still pending in an open transaction, and a broker that does not answer."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from streams.metrics import WorkerMetrics, worker_metrics
from streams.processor.lag import LagMonitor, LagSnapshot, accounting_group
from streams.settings import Settings
from streams.topics import admin_client, create_topics, new_topic, wait_for_topics
from tests.conftest import free_port
from tests.kafka_helpers import producer

PARTITIONS = 3


@pytest.fixture
def events(settings: Settings) -> Iterator[Settings]:
    """Only the events topic (3 partitions) under the test's prefix; deleted afterwards."""
    admin = admin_client(settings)
    create_topics(admin, [new_topic(settings.events_source_topic, PARTITIONS, 1, {})])
    wait_for_topics(admin, [settings.events_source_topic])
    yield settings
    for future in admin.delete_topics([settings.events_source_topic]).values():
        future.result(timeout=30)


def _produce(settings: Settings, partition: int, n: int) -> None:
    p = producer(settings.bootstrap)
    for i in range(n):
        p.produce(settings.events_source_topic, b"v%d" % i, partition=partition)
    assert p.flush(30) == 0


def _transactional(settings: Settings, name: str) -> Producer:
    p = Producer(
        {
            "bootstrap.servers": settings.bootstrap,
            "transactional.id": f"{settings.app_id}-{name}-{uuid.uuid4().hex[:6]}",
            "log_level": 3,
        }
    )
    p.init_transactions(30)
    return p


def _produce_in_transaction(p: Producer, settings: Settings, partition: int, n: int) -> None:
    p.begin_transaction()
    for i in range(n):
        p.produce(settings.events_source_topic, b"t%d" % i, partition=partition)
    p.commit_transaction(30)


def _accounting_consumer(settings: Settings, partitions: list[int]) -> Consumer:
    """Reads like the accounting loop (read-committed, the group's id), assigned, not
    subscribed, so that it holds no partitions of anybody's."""
    c = Consumer(
        {
            "bootstrap.servers": settings.bootstrap,
            "group.id": accounting_group(settings),
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "log_level": 3,
        }
    )
    c.assign([TopicPartition(settings.events_source_topic, p) for p in partitions])
    return c


def _drain(
    c: Consumer, until: Callable[[list[TopicPartition]], bool], timeout_s: float = 20
) -> list[TopicPartition]:
    """Consume until ``until(positions)``; the positions then (the test fails if it never is)."""
    deadline = time.monotonic() + timeout_s
    positions: list[TopicPartition] = []
    while time.monotonic() < deadline:
        messages: list[Message] = c.consume(500, 0.2)
        for msg in messages:
            error = msg.error()
            assert error is None or error.code() == KafkaError._PARTITION_EOF, error
        positions = sorted(c.position(c.assignment()), key=lambda tp: tp.partition)
        if until(positions):
            return positions
    raise AssertionError(f"positions {[(tp.partition, tp.offset) for tp in positions]}")


def _commit_in_transaction(p: Producer, c: Consumer, offsets: list[TopicPartition]) -> None:
    """What the accounting loop does at a checkpoint."""
    p.begin_transaction()
    p.send_offsets_to_transaction(offsets, c.consumer_group_metadata(), 30)
    p.commit_transaction(30)


def _eventually(
    monitor: LagMonitor, check: Callable[[LagSnapshot], bool], timeout_s: float = 15
) -> LagSnapshot:
    """Commit and abort markers are written by the transaction coordinator after the commit
    call returns, so for a moment the end offset can trail it (markers on the events topic)
    and so can the committed offsets (markers on __consumer_offsets): seen here, a measurement
    right after ``commit_transaction`` returned still reported the previous commit."""
    deadline = time.monotonic() + timeout_s
    snapshot = monitor.measure_once()
    while not check(snapshot) and time.monotonic() < deadline:
        time.sleep(0.2)
        snapshot = monitor.measure_once()
    assert check(snapshot), snapshot
    return snapshot


def _gauge(metrics: WorkerMetrics, partition: int) -> float | None:
    return metrics.registry.get_sample_value("governor_consumer_lag", {"partition": str(partition)})


def test_lag_is_end_minus_committed_and_zero_once_a_transaction_is_consumed(
    events: Settings,
) -> None:
    s = events
    metrics = worker_metrics()
    monitor = LagMonitor(s, metrics, interval_s=1.0)
    source = _transactional(s, "source")
    # p0: 5 records from an idempotent (plain) producer; p1: 4 records in one committed
    # transaction (offsets 0-3, the commit marker at 4); p2: 3 plain records nobody consumes
    _produce(s, 0, 5)
    _produce_in_transaction(source, s, 1, 4)
    _produce(s, 2, 3)

    # nothing committed yet: every partition counts its whole log, and offsets are what lag
    # counts, so p1's marker is one of them until a consumer moves past it
    snapshot = _eventually(monitor, lambda sn: sn.lags == {0: 5, 1: 5, 2: 3})
    assert snapshot.ok
    assert snapshot.total == 13
    assert [p.committed for p in snapshot.partitions] == [None, None, None]
    assert [(p.low, p.end) for p in snapshot.partitions] == [(0, 5), (0, 5), (0, 3)]
    assert _gauge(metrics, 1) == 5

    # a plain commit of part of p0
    c = _accounting_consumer(s, [0, 1])
    try:
        c.commit(offsets=[TopicPartition(s.events_source_topic, 0, 2)], asynchronous=False)
        assert monitor.measure_once().lags == {0: 3, 1: 5, 2: 3}

        # consume everything and commit the positions inside a transaction, as the loop does:
        # librdkafka's position on p1 moves past the commit marker (5, not 4), so the idle,
        # fully processed partition shows lag 0, not 1
        positions = _drain(c, lambda ps: [tp.offset for tp in ps] == [5, 5])
        accounting = _transactional(s, "accounting")
        _commit_in_transaction(accounting, c, positions)
        snapshot = _eventually(monitor, lambda sn: sn.lags == {0: 0, 1: 0, 2: 3})
        assert [p.committed for p in snapshot.partitions] == [5, 5, None]
        assert [_gauge(metrics, p) for p in range(PARTITIONS)] == [0, 0, 3]

        # an open transaction on the events topic: its records are not consumable by a
        # read-committed reader yet (the end is the last stable offset), so they are no lag
        source.begin_transaction()
        for i in range(2):
            source.produce(s.events_source_topic, b"open%d" % i, partition=1)
        assert source.flush(30) == 0
        assert monitor.measure_once().lags[1] == 0
        # aborted: the 2 records and the abort marker are offsets to pass, then nothing
        source.abort_transaction(30)
        _eventually(monitor, lambda sn: sn.lags[1] == 3)
        positions = _drain(c, lambda ps: [tp.offset for tp in ps] == [5, 8])
        _commit_in_transaction(accounting, c, positions)
        _eventually(monitor, lambda sn: sn.lags == {0: 0, 1: 0, 2: 3})

        # offsets pending in an open transaction of the group do not block the measurement
        # (a Consumer's committed() waits for stable offsets and times out here): the last
        # committed offsets are reported until the transaction commits
        _produce(s, 0, 4)
        positions = _drain(c, lambda ps: [tp.offset for tp in ps] == [9, 8])
        accounting.begin_transaction()
        accounting.send_offsets_to_transaction(positions, c.consumer_group_metadata(), 30)
        started = time.monotonic()
        snapshot = monitor.measure_once()
        assert time.monotonic() - started < 2.0
        assert snapshot.ok
        assert snapshot.lags == {0: 4, 1: 0, 2: 3}
        accounting.commit_transaction(30)
        _eventually(monitor, lambda sn: sn.lags == {0: 0, 1: 0, 2: 3})
    finally:
        c.close()


def test_a_missing_topic_is_an_error_until_it_exists_and_the_thread_keeps_going(
    settings: Settings,
) -> None:
    metrics = worker_metrics()
    monitor = LagMonitor(settings, metrics, interval_s=0.2)
    assert monitor.snapshot.error is None
    assert not monitor.snapshot.measured
    monitor.start()
    try:
        deadline = time.monotonic() + 15
        while "does not exist" not in (monitor.snapshot.error or ""):
            assert time.monotonic() < deadline, monitor.snapshot
            time.sleep(0.1)
        assert monitor.alive
        assert monitor.last_ok_monotonic == 0.0
        admin = admin_client(settings)
        create_topics(admin, [new_topic(settings.events_source_topic, PARTITIONS, 1, {})])
        wait_for_topics(admin, [settings.events_source_topic])
        _produce(settings, 1, 2)
        while not (monitor.snapshot.ok and monitor.snapshot.lags == {0: 0, 1: 2, 2: 0}):
            assert time.monotonic() < deadline + 15, monitor.snapshot
            time.sleep(0.1)
        assert monitor.alive
        assert monitor.last_ok_monotonic > 0
        assert monitor.snapshot.total == 2
        assert monitor.snapshot.error is None
        # gone again: the error is recorded, the last numbers (and the gauge) stay, with the
        # time they were measured
        measured_at = monitor.snapshot.measured_at
        for future in admin.delete_topics([settings.events_source_topic]).values():
            future.result(timeout=30)
        while "does not exist" not in (monitor.snapshot.error or ""):
            assert time.monotonic() < deadline + 30, monitor.snapshot
            time.sleep(0.1)
        assert monitor.alive
        assert monitor.snapshot.lags == {0: 0, 1: 2, 2: 0}
        assert monitor.snapshot.measured_at >= measured_at
        assert metrics.registry.get_sample_value("governor_consumer_lag", {"partition": "1"}) == 2
    finally:
        monitor.stop()
        admin_client(settings).delete_topics([settings.events_source_topic])
    assert not monitor.alive


def test_a_broker_that_does_not_answer_is_recorded_and_retried(settings: Settings) -> None:
    gone = settings.replace(bootstrap=f"127.0.0.1:{free_port()}")
    monitor = LagMonitor(gone, worker_metrics(), interval_s=1.0)
    monitor.start()
    try:
        deadline = time.monotonic() + 20
        while monitor.snapshot.failed_at is None:
            assert time.monotonic() < deadline, monitor.snapshot
            time.sleep(0.1)
        first_failure = monitor.snapshot.failed_at
        while monitor.snapshot.failed_at == first_failure:
            assert time.monotonic() < deadline, "no second attempt"
            time.sleep(0.1)
        snapshot = monitor.snapshot
        assert monitor.alive
        assert snapshot.error
        assert not snapshot.ok
        assert not snapshot.measured
        assert monitor.last_ok_monotonic == 0.0
    finally:
        monitor.stop()
    assert not monitor.alive
