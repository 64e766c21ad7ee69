"""Small helpers for integration tests that talk to the real broker and worker (no mocks)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer
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
    """Read ``count`` records from the start of ``topic`` (fails if they do not come)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    got: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            got.append(msg)
    finally:
        consumer.close()
    assert len(got) == count, f"{topic}: {len(got)} of {count} records within {timeout_s}s"
    return got


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
