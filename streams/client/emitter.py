"""The client's producer: never blocks the agent, never loses an event silently.

Events wait in librdkafka's bounded queue (``client_buffer_events`` events, and at most
``client_buffer_max_age_s`` seconds each) while the broker is away. When the queue is full the
event is dropped and counted; when an event outlives its age it fails and is counted. Either
way a warning is logged at most once per interval, and :class:`EmitterStats` adds up exactly:
``emitted == delivered + dropped + failed + pending``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

log = logging.getLogger("governor.client")

WARN_INTERVAL_S = 10.0


@dataclass
class EmitterStats:
    emitted: int = 0
    delivered: int = 0
    dropped: int = 0  #: refused at once: the buffer was full
    failed: int = 0  #: given up by the producer (broker away longer than the buffer age)

    @property
    def pending(self) -> int:
        return self.emitted - self.delivered - self.dropped - self.failed


class Emitter:
    """Fire-and-forget producer with a background thread serving delivery reports."""

    def __init__(
        self,
        bootstrap: str,
        buffer_events: int = 100_000,
        buffer_max_age_s: float = 300.0,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        self.stats = EmitterStats()
        self._lock = threading.Lock()
        self._last_warning: dict[str, float] = {}
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 5,
                "queue.buffering.max.messages": buffer_events,
                "queue.buffering.max.kbytes": 256 * 1024,
                "message.timeout.ms": int(buffer_max_age_s * 1000),
                "error_cb": self._on_error,
                # librdkafka would print every refused reconnect (20 a second while the broker
                # is away); error_cb reports the outage instead, once per interval
                "log_level": 2,
                **(extra_config or {}),
            }
        )
        self._stopping = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="governor-emitter", daemon=True)
        self._poller.start()

    def emit(self, topic: str, key: bytes, value: bytes) -> bool:
        """Queue one event; False (and counted) if the buffer is full. Never blocks."""
        with self._lock:
            self.stats.emitted += 1
        try:
            self._producer.produce(topic, value, key, on_delivery=self._on_delivery)
        except BufferError:
            with self._lock:
                self.stats.dropped += 1
            self._warn(
                "dropped",
                "client buffer full: events are being dropped (%s so far)",
                self.stats.dropped,
            )
            return False
        return True

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        with self._lock:
            if err is None:
                self.stats.delivered += 1
            else:
                self.stats.failed += 1
        if err is not None:
            self._warn(
                "failed", "events could not be delivered (%s so far): %s", self.stats.failed, err
            )

    def _on_error(self, err: KafkaError) -> None:
        self._warn("broker", "broker unreachable, buffering events: %s", err)

    def _warn(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_warning.get(kind, -WARN_INTERVAL_S) >= WARN_INTERVAL_S:
            self._last_warning[kind] = now
            log.warning(message, *args)

    def _poll(self) -> None:
        while not self._stopping.is_set():
            self._producer.poll(0.1)

    def flush(self, timeout_s: float = 10.0) -> int:
        """Wait up to ``timeout_s`` for queued events; returns how many are still pending."""
        remaining: int = self._producer.flush(timeout_s)
        return remaining

    def close(self, timeout_s: float = 10.0) -> EmitterStats:
        pending = self.flush(timeout_s)
        self._stopping.set()
        self._poller.join(timeout=2)
        if pending:
            log.warning("closing with %d undelivered events", pending)
        return self.stats
