"""The client's producer: never blocks the agent, never loses an event silently.

Events wait in librdkafka's bounded queue (``client_buffer_events`` events, and at most
``client_buffer_max_age_s`` seconds each) while the broker is away. When the queue is full the
event is dropped and counted; when an event outlives its age, or the producer or the broker
refuses it (too large for ``message.max.bytes``, say), it fails and is counted. Either way a
warning is logged at most once per interval per kind, nothing is raised into the agent, and
:class:`EmitterStats` adds up exactly: ``emitted == delivered + dropped + failed + pending``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streams.kafka_config import KafkaSecurity, connection_config

log = logging.getLogger("governor.client")

WARN_INTERVAL_S = 10.0
#: librdkafka's default ``message.max.bytes``: the largest event the producer accepts
DEFAULT_MAX_MESSAGE_BYTES = 1_000_000


@dataclass
class EmitterStats:
    emitted: int = 0
    delivered: int = 0
    dropped: int = 0  #: refused at once: the buffer was full
    #: given up: the broker away longer than the buffer age, or the event refused (too large)
    failed: int = 0

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
        security: KafkaSecurity | None = None,
    ) -> None:
        self.stats = EmitterStats()
        self._lock = threading.Lock()
        self._last_warning: dict[str, float] = {}
        config: dict[str, Any] = {
            **connection_config(bootstrap, security),
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
        self.max_message_bytes = int(config.get("message.max.bytes", DEFAULT_MAX_MESSAGE_BYTES))
        self._producer = Producer(config)
        self._stopping = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="governor-emitter", daemon=True)
        self._poller.start()

    def emit(self, topic: str, key: bytes, value: bytes) -> bool:
        """Queue one event; False (and counted) if the buffer is full or the producer refuses
        it. Never blocks, never raises."""
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
        except KafkaException as exc:
            # refused before it was queued (too large, an invalid argument, a producer failed
            # for good): it will never be delivered, so it is failed, not pending
            self._failed(_kafka_error(exc), len(key) + len(value), topic, by_broker=False)
            return False
        return True

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            with self._lock:
                self.stats.delivered += 1
            return
        value, key = msg.value() or b"", msg.key() or b""
        self._failed(err, len(key) + len(value), msg.topic() or "?", by_broker=True)

    def _failed(self, err: KafkaError | None, size: int, topic: str, *, by_broker: bool) -> None:
        with self._lock:
            self.stats.failed += 1
            failed = self.stats.failed
        if err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            if by_broker:  # the broker refuses a batch: a small event can share its fate
                limit = (
                    "the broker's limit for the topic (max.message.bytes), alone or in its batch"
                )
            else:
                limit = f"the producer's limit of {self.max_message_bytes:,} bytes"
            self._warn(
                "too_large",
                "event of %s bytes to %s not sent: larger than %s; events failed so far: %s",
                f"{size:,}",
                topic,
                limit,
                failed,
            )
            return
        if err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
            self._warn(
                "unauthorized",
                "events to %s refused: this client's Kafka principal may not write that topic "
                "(TOPIC_AUTHORIZATION_FAILED; `governor topics acls` lists each role's ACLs); "
                "events failed so far: %s",
                topic,
                failed,
            )
            return
        self._warn("failed", "events could not be delivered (%s so far): %s", failed, err)

    def _on_error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED):
            self._warn(
                "auth",
                "Kafka refused this client's credentials (check GOVERNOR_KAFKA_USERNAME, "
                "GOVERNOR_KAFKA_PASSWORD and GOVERNOR_KAFKA_SASL_MECHANISM): %s",
                err.str(),
            )
            return
        self._warn("broker", "broker unreachable, buffering events: %s", err)

    def _warn(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_warning.get(kind, -WARN_INTERVAL_S) >= WARN_INTERVAL_S:
            self._last_warning[kind] = now
            log.warning(message, *args)

    def _poll(self) -> None:
        while not self._stopping.is_set():
            try:
                self._producer.poll(0.1)
            except Exception as exc:  # a failing report must not stop the ones after it
                self._warn("poll", "serving delivery reports failed: %s", exc)

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


def _kafka_error(exc: KafkaException) -> KafkaError | None:
    error = exc.args[0] if exc.args else None
    return error if isinstance(error, KafkaError) else None
