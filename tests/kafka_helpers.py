"""Small real-Kafka helpers for integration tests (no mocks: these talk to the broker)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from confluent_kafka import Consumer, KafkaError, Message, Producer

from streams.codec import header_pairs


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
