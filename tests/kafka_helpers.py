"""Small helpers for integration tests that talk to the real broker and worker (no mocks)."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from typer.testing import CliRunner

from streams.cli import app as cli
from streams.codec import Codecs, header_pairs
from streams.settings import Settings


def producer(bootstrap: str) -> Producer:
    return Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})


def produce(bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes]]) -> None:
    """Produce (key, value) records and wait until every one is acknowledged."""
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err)

    p = producer(bootstrap)
    for key, value in records:
        p.produce(topic, value, key, on_delivery=on_delivery)
    assert p.flush(30) == 0, "records still in flight after 30 s"
    assert not errors, errors


def consume(bootstrap: str, topic: str, count: int, timeout_s: float = 30) -> list[Message]:
    """Read ``count`` records from the start of ``topic`` (fails if they do not come).

    Every partition is assigned at its beginning rather than subscribed through a group: a
    group join under load can take most of the timeout, and a shortfall is then reported with
    what the broker holds, so a lost record is told apart from a slow read."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    got: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        partitions = _partitions(consumer, topic, deadline)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        while len(got) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            got.append(msg)
        held = {} if len(got) == count else _held(consumer, topic, partitions)
    finally:
        consumer.close()
    read = Counter(m.partition() for m in got)
    assert len(got) == count, (
        f"{topic}: {len(got)} of {count} records within {timeout_s}s; "
        f"read per partition {dict(read)}, held by the broker {held}"
    )
    return got


def _partitions(consumer: Consumer, topic: str, deadline: float) -> list[int]:
    while True:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is not None and metadata.error is None and metadata.partitions:
            return sorted(metadata.partitions)
        assert time.monotonic() < deadline, f"{topic}: no partitions in the metadata"
        time.sleep(0.2)


def _held(consumer: Consumer, topic: str, partitions: list[int]) -> dict[int, int]:
    """Records each partition holds (high minus low watermark), for a failure message."""
    held = {}
    for p in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        if high > low:
            held[p] = high - low
    return held


def headers_of(message: Message) -> dict[str, bytes]:
    return dict(header_pairs(message.headers()))


def ask(settings: Settings, *args: str) -> Any:
    result = CliRunner().invoke(cli, ["ask", *args, "--json"], env=settings.to_env())
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def close_silent_sessions(settings: Settings, after_us: int) -> None:
    """One event per partition, later than the idle timeout: every abandoned session closes."""
    codecs = Codecs.load(settings.schemas_dir)
    producer = Producer({"bootstrap.servers": settings.bootstrap})
    for partition in range(settings.event_partitions):
        event: dict[str, Any] = {
            "event_id": f"clock-{partition}",
            "seq": 1,
            "session_id": f"clock-{partition}",
            "tenant_id": "clock",
            "agent_id": "clock",
            "kind": "SESSION_START",
            "start_time_us": after_us,
            "status": "OK",
        }
        producer.produce(
            settings.topic("events"),
            codecs.step_event.encode(event),
            event["session_id"].encode(),
            partition=partition,
        )
    producer.flush(10)
