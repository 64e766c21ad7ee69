"""Consumer lag measured from the broker, on a thread of its own.

Lag is what the accounting group has committed (inside its Kafka transactions) against the end
of the events topic, asked of the broker every few seconds by a client that belongs to nothing
else. It used to be set by the accounting loop from its own consumer, so the gauge froze when
that loop died, exactly when it mattered; Faust's commits are no measure either (they trail the
end of a quiet topic by hundreds of records for minutes).

Why the AdminClient (``list_consumer_group_offsets`` + ``list_offsets``) and not a Consumer with
the group's id calling ``committed()``: measured on Kafka 4.1 with confluent-kafka 2.16, a
Consumer's ``committed()`` asks for *stable* offsets (KIP-447), so while the group has offsets
pending in an open transaction it blocks for its whole timeout and fails (``_TIMED_OUT``),
and a loop that died mid-transaction leaves one open until the broker aborts it. The admin call
with ``require_stable=False`` answers at once with the last committed offset, and it joins no
group and can commit nothing by mistake.

The end offset is read with ``isolation_level=READ_COMMITTED``, i.e. the last stable offset:
records of a transaction still open on the events topic are not yet consumable, so they are not
lag. Transaction markers need no correction (measured, see ``tests/integration/
test_lag_monitor.py``): librdkafka moves a read-committed consumer's position past the commit
or abort marker that ends a partition, so a partition whose last records came in a transaction
commits ``end`` and shows lag 0, not 1. Lag counts offsets, so until then each marker of a
transaction not yet consumed counts one, as aborted records do until the consumer skips them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    KafkaError,
    KafkaException,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from streams.metrics import WorkerMetrics
from streams.processor.faults import describe, kafka_error
from streams.settings import Settings
from streams.topics import admin_client

log = logging.getLogger("governor.lag")

DEFAULT_INTERVAL_S = 5.0
# confluent-kafka leaves these two classmethods unannotated
_LATEST: OffsetSpec = OffsetSpec.latest()  # type: ignore[no-untyped-call]
_EARLIEST: OffsetSpec = OffsetSpec.earliest()  # type: ignore[no-untyped-call]


def accounting_group(settings: Settings) -> str:
    """The consumer group of the accounting loop, whose commits are the measure of progress."""
    return f"{settings.app_id}-accounting"


@dataclass(frozen=True)
class PartitionLag:
    partition: int
    #: the group's committed offset; None when it never committed on this partition
    committed: int | None
    #: the log start (low watermark) and the last stable offset (end for read-committed readers)
    low: int
    end: int
    lag: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "committed": self.committed,
            "low": self.low,
            "end": self.end,
            "lag": self.lag,
        }


def partition_lag(partition: int, committed: int | None, low: int, end: int) -> PartitionLag:
    """The offsets of ``[max(committed, low), end)``: a partition never committed counts its whole
    log; a commit below the log start (retention deleted records unread) counts from the start,
    since that is where the consumer resumes (``auto.offset.reset=earliest``)."""
    start = low if committed is None else max(committed, low)
    return PartitionLag(partition, committed, low, end, max(0, end - start))


@dataclass(frozen=True)
class LagSnapshot:
    """The latest measurement. After a failed attempt the numbers are the last good ones
    (``measured_at`` says how old) and ``error`` says why the newer attempt failed."""

    topic: str
    group: str
    partitions: tuple[PartitionLag, ...] = ()
    #: wall time the numbers were measured; 0.0 before the first success
    measured_at: float = 0.0
    #: why the latest attempt failed; None when it succeeded (or none was made yet)
    error: str | None = None
    #: wall time of the latest failed attempt
    failed_at: float | None = None

    @property
    def measured(self) -> bool:
        return self.measured_at > 0

    @property
    def ok(self) -> bool:
        return self.measured and self.error is None

    @property
    def lags(self) -> dict[int, int]:
        return {p.partition: p.lag for p in self.partitions}

    @property
    def total(self) -> int:
        return sum(p.lag for p in self.partitions)

    def lag_of(self, partitions: Iterable[int]) -> int:
        """Total lag over some partitions (a worker's assignment, once there are several)."""
        lags = self.lags
        return sum(lags.get(p, 0) for p in partitions)

    def age_s(self, now: float | None = None) -> float | None:
        """Seconds since the numbers were measured; None before the first measurement."""
        if not self.measured:
            return None
        return max(0.0, (time.time() if now is None else now) - self.measured_at)

    def as_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "group": self.group,
            "total": self.total,
            "lags": {str(p): lag for p, lag in self.lags.items()},
            "partitions": [p.as_dict() for p in self.partitions],
            "measured_at": self.measured_at or None,
            "error": self.error,
            "failed_at": self.failed_at,
        }


def measure_lag(
    admin: AdminClient, topic: str, group: str, timeout_s: float = 5.0
) -> tuple[PartitionLag, ...]:
    """One measurement of every partition of ``topic``; raises on any error, since a lag with a
    partition missing would read as "caught up" on that partition."""
    # describe_topics, not list_topics(topic=...): a metadata request for one topic makes a
    # broker with auto.create.topics.enable (the default) create it, with one partition
    described = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout_s)
    try:
        description = described[topic].result(timeout=timeout_s)
    except KafkaException as exc:
        error = kafka_error(exc)
        if error is not None and error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            raise LookupError(f"topic {topic} does not exist") from exc
        raise
    numbers = sorted(p.id for p in description.partitions)
    tps = [TopicPartition(topic, p) for p in numbers]
    # the three requests go out together; each future is then waited for in turn
    ends = admin.list_offsets(
        {tp: _LATEST for tp in tps},
        isolation_level=IsolationLevel.READ_COMMITTED,
        request_timeout=timeout_s,
    )
    lows = admin.list_offsets({tp: _EARLIEST for tp in tps}, request_timeout=timeout_s)
    committed_futures = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, tps)], require_stable=False, request_timeout=timeout_s
    )
    committed: dict[int, int | None] = {}
    answer = committed_futures[group].result(timeout=timeout_s)
    for tp in answer.topic_partitions or []:
        if tp.error is not None:
            raise KafkaException(tp.error)
        committed[tp.partition] = None if tp.offset < 0 else tp.offset
    end_by_partition = {tp.partition: f.result(timeout=timeout_s).offset for tp, f in ends.items()}
    low_by_partition = {tp.partition: f.result(timeout=timeout_s).offset for tp, f in lows.items()}
    return tuple(
        partition_lag(p, committed.get(p), low_by_partition[p], end_by_partition[p])
        for p in numbers
    )


class LagMonitor:
    """Every ``interval_s``, measure the accounting group's lag on the events topic, set
    ``governor_consumer_lag{partition}`` and keep the :class:`LagSnapshot` that /readyz reads.

    A failed measurement (broker down, topic missing) never ends the thread: it is recorded in
    the snapshot and tried again at the next interval.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: WorkerMetrics,
        interval_s: float = DEFAULT_INTERVAL_S,
        admin: AdminClient | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.interval_s = interval_s
        self.topic = settings.events_source_topic
        self.group = accounting_group(settings)
        #: monotonic time of the latest successful measurement; 0.0 before the first
        self.last_ok_monotonic = 0.0
        self._admin = admin
        # not measured yet: no error, but not ok either (``measured`` is False)
        self._snapshot = LagSnapshot(self.topic, self.group)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def snapshot(self) -> LagSnapshot:
        # a frozen record swapped whole, so a reader on another thread never sees half of one
        return self._snapshot

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.alive:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="governor-lag", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def measure_once(self) -> LagSnapshot:
        """Measure now (on the caller's thread), update the gauge and the snapshot."""
        # a request may not outlive the interval, or measurements would queue up behind it
        timeout_s = max(1.0, min(10.0, self.interval_s))
        previous = self._snapshot
        try:
            if self._admin is None:
                self._admin = admin_client(self.settings)
            partitions = measure_lag(self._admin, self.topic, self.group, timeout_s)
        except Exception as exc:  # every failure is recorded and retried, none ends the thread
            if isinstance(exc, TimeoutError):
                error = f"no answer from {self.settings.bootstrap} within {timeout_s:g} s"
            else:
                error = describe(exc)
            if error != previous.error:
                log.warning("cannot measure the consumer lag of %s: %s", self.group, error)
            self._snapshot = LagSnapshot(
                self.topic,
                self.group,
                previous.partitions,
                previous.measured_at,
                error=error,
                failed_at=time.time(),
            )
            return self._snapshot
        if previous.error is not None:
            log.info("consumer lag of %s measured again", self.group)
        for p in partitions:
            self.metrics.consumer_lag.labels(str(p.partition)).set(p.lag)
        self.last_ok_monotonic = time.monotonic()
        self._snapshot = LagSnapshot(self.topic, self.group, partitions, time.time())
        return self._snapshot

    def _run(self) -> None:
        while not self._stopping.is_set():
            self.measure_once()
            self._stopping.wait(self.interval_s)
