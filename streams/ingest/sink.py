"""The receiver's producer: a request is answered once the broker has every one of its events.

An OTLP exporter retries a request that fails with 429/502/503/504, so the receiver says
"accepted" only after Kafka acknowledged each event (``acks=all``, idempotent producer), and
503 otherwise: a retried request gives the same event ids and seqs (``streams.ingest.seq``),
so nothing is counted twice. The producer settings are the client emitter's
(``streams.client.emitter``), with delivery reports awaited per request instead of counted.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streams.kafka_config import client_config
from streams.settings import Settings

#: how long a request waits for the broker before it fails with 503 (the exporter retries)
DEFAULT_DELIVERY_TIMEOUT_S = 10.0


class SinkUnavailable(RuntimeError):
    """The events were not all acknowledged (HTTP 503; the exporter retries)."""


class _Batch:
    """The delivery reports of one request, resolved on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self._left = count
        self._error: KafkaError | None = None
        self._lock = threading.Lock()

    def report(self, err: KafkaError | None, _msg: Message) -> None:
        with self._lock:
            if err is not None and self._error is None:
                self._error = err
            self._left -= 1
            done = self._left == 0
        if done:
            self.loop.call_soon_threadsafe(self._finish)

    def fail(self, reason: str) -> None:
        if not self.future.done():
            self.future.set_exception(SinkUnavailable(reason))

    def _finish(self) -> None:
        if self.future.done():
            return
        if self._error is not None:
            self.future.set_exception(SinkUnavailable(f"Kafka refused an event: {self._error}"))
        else:
            self.future.set_result(None)


class EventSink:
    """Produces keyed records and lets a request await their acknowledgement."""

    def __init__(self, settings: Settings, extra_config: dict[str, Any] | None = None) -> None:
        self._producer = Producer(
            {
                **client_config(settings),
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 5,
                "compression.type": "lz4",
                "queue.buffering.max.messages": 100_000,
                "message.timeout.ms": int(DEFAULT_DELIVERY_TIMEOUT_S * 1000),
                "log_level": 3,
                **(extra_config or {}),
            }
        )
        self._stopping = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="governor-ingest", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stopping.is_set():
            self._producer.poll(0.05)

    def send(self, topic: str, records: Sequence[tuple[bytes, bytes]]) -> asyncio.Future[None]:
        """Queue ``records`` (key, value) in order; the future resolves when all are
        acknowledged, or fails with :class:`SinkUnavailable`. Call on the event loop."""
        batch = _Batch(asyncio.get_running_loop(), len(records))
        if not records:
            batch.future.set_result(None)
            return batch.future
        for index, (key, value) in enumerate(records):
            try:
                self._producer.produce(topic, value, key, on_delivery=batch.report)
            except (BufferError, KafkaException) as exc:
                # fail now; the records already queued still report (ignored then), and the
                # retried request gives them the same ids and seqs
                batch.fail(f"the producer refused record {index + 1} of {len(records)}: {exc}")
                break
        return batch.future

    def close(self, timeout_s: float = 10.0) -> int:
        """Flush and stop; returns how many records were still undelivered."""
        remaining: int = self._producer.flush(timeout_s)
        self._stopping.set()
        self._poller.join(timeout=2)
        return remaining
