"""Reads the control topic from its end on every partition (no consumer group)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from streams.codec import Codec, DecodeError
from streams.control import DecisionBook, DropReason
from streams.kafka_config import KafkaSecurity, connection_config

log = logging.getLogger("governor.client")

RECONNECT_PROBE_S = 1.0
_LEADERSHIP_CHANGES = (
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
)


class ControlSubscriber:
    """Background thread feeding verified decisions into a :class:`DecisionBook`.

    ``on_accept`` runs (on this thread) for each accepted decision; ``on_reconnect`` runs when
    the brokers answer again after all were unreachable, so the owner can re-read Redis for
    what it may have missed.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        codec: Codec,
        book: DecisionBook,
        now_us: Callable[[], int],
        on_accept: Callable[[dict[str, object]], None],
        on_reconnect: Callable[[], None],
        security: KafkaSecurity | None = None,
    ) -> None:
        self.topic = topic
        self._codec = codec
        self._book = book
        self._now_us = now_us
        self._on_accept = on_accept
        self._on_reconnect = on_reconnect
        self._disconnected = False
        self._stopping = threading.Event()
        self._consumer = Consumer(
            {
                **connection_config(bootstrap, security),
                # assign() without subscribe(): the group is never joined, nothing is committed
                "group.id": f"governor-client-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
                "error_cb": self._on_error,
                "log_level": 2,  # outages are reported by _on_error, rate-limited
            }
        )
        self._thread = threading.Thread(target=self._run, name="governor-control", daemon=True)

    def start(self, timeout_s: float = 10.0) -> None:
        """Assign every partition at its current end, then consume in the background."""
        metadata = self._consumer.list_topics(self.topic, timeout=timeout_s)
        partitions = metadata.topics[self.topic].partitions
        if not partitions:
            raise RuntimeError(f"control topic {self.topic} does not exist")
        deadline = time.monotonic() + timeout_s
        assignment = [
            TopicPartition(self.topic, p, self._end_offset(p, deadline)) for p in partitions
        ]
        self._consumer.assign(assignment)
        self._thread.start()

    def _end_offset(self, partition: int, deadline: float) -> int:
        while True:
            try:
                _low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(self.topic, partition),
                    timeout=max(0.1, deadline - time.monotonic()),
                )
                return int(high)
            except KafkaException as exc:
                # a freshly created or just failed-over partition answers "not leader" for a while
                error = exc.args[0]
                transient = error.retriable() or error.code() in _LEADERSHIP_CHANGES
                if not transient or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _on_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            if not self._disconnected:
                log.warning("control topic unreachable (%s); decisions resume on reconnect", err)
            self._disconnected = True

    def _run(self) -> None:
        last_probe = 0.0
        while not self._stopping.is_set():
            msg = self._consumer.poll(0.05)
            if self._disconnected and time.monotonic() - last_probe > RECONNECT_PROBE_S:
                last_probe = time.monotonic()
                self._probe_reconnect()
            if msg is None or msg.error() is not None:
                continue
            try:
                decision = self._codec.decode(msg.value() or b"")
            except DecodeError:
                self._book.count_drop(DropReason.UNDECODABLE)
                continue
            if self._book.offer(decision, self._now_us()) is None:
                self._on_accept(decision)
        self._consumer.close()

    def _probe_reconnect(self) -> None:
        try:
            self._consumer.list_topics(self.topic, timeout=0.5)
        except Exception:
            return
        self._disconnected = False
        log.info("control topic reachable again; re-reading decisions from Redis")
        self._on_reconnect()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
