"""Replay: read a time range of a topic, and copy the matching StepEvents to a replay topic.

:func:`iter_range` is the general reader (``governor replay`` and backtests use it): for every
partition Kafka's time index gives the first offset at or after ``from_us`` and the first after
``to_us``, and the records between them are read in offset order. Time is the Kafka record
timestamp, the only time Kafka indexes.

:func:`replay` copies what matches a :class:`ReplaySpec` into ``<prefix>replay.<id>`` keeping
key, value bytes, headers, timestamp and partition number, so every session keeps its order and
a fresh worker pointed at the copy (``GOVERNOR_EVENTS_TOPIC``) folds the same events in the same
per-session order as the live one did.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from streams.codec import Codecs, DecodeError, header_pairs
from streams.kafka_config import client_config
from streams.settings import Settings
from streams.topics import admin_client, create_topics, new_topic, replication_for

#: (records done, records total) -> None; ``total`` is the offset span of the range
Progress = Callable[[int, int], None]

BATCH = 10_000
POLL_S = 0.5
PROGRESS_INTERVAL_S = 0.1
#: consumer errors the client recovers from by itself (a broker restarting, say)
TRANSIENT = (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT)
METADATA_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RangeRecord:
    """One record of a topic as Kafka holds it."""

    partition: int
    offset: int
    #: the Kafka record timestamp (ms since the epoch): CreateTime as the producer set it
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class OffsetRange:
    """Offsets ``[start, end)`` of one partition."""

    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return max(0, self.end - self.start)


# --- pure parts ----------------------------------------------------------------------------


def ms_bounds(from_us: int, to_us: int) -> tuple[int, int]:
    """The timestamps (ms) to look up for an inclusive µs range: the first record at or after
    the start, and the first one past the end (a record's ms timestamp t is in the range when
    ``from_us <= t * 1000 <= to_us``)."""
    if to_us < from_us:
        raise ValueError(f"the range ends ({to_us}) before it starts ({from_us})")
    return -(-from_us // 1000), to_us // 1000 + 1


def offset_range(partition: int, start: int, end: int, low: int, high: int) -> OffsetRange:
    """The offsets to read given the time-index answers (``OFFSET_END``/-1 when no record is
    that late) and the partition's watermarks."""
    first = high if start < 0 else max(start, low)
    last = high if end < 0 else min(end, high)
    return OffsetRange(partition, first, max(first, last))


def replay_id(now_us: int, suffix: str) -> str:
    """``20261125-113000-ab12``: when the replay was made (UTC) and a random suffix."""
    stamp = datetime.fromtimestamp(now_us / 1_000_000, UTC).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{suffix}"


def new_replay_id() -> str:
    return replay_id(time.time_ns() // 1000, secrets.token_hex(2))


def target_partition(source_partition: int, target_partitions: int) -> int:
    """The copy lands in the same partition number, so per-session order stays as it was."""
    if not 0 <= source_partition < target_partitions:
        raise ValueError(
            f"partition {source_partition} has no counterpart in a target of "
            f"{target_partitions} partitions"
        )
    return source_partition


def check_target(source_partitions: int, target_partitions: int | None) -> bool:
    """Whether the target must be created (None: it does not exist); an existing target with
    fewer partitions than the source cannot keep the partition mapping."""
    if target_partitions is None:
        return True
    if target_partitions < source_partitions:
        raise ValueError(
            f"the target topic has {target_partitions} partitions, the source "
            f"{source_partitions}: copies must keep their partition number"
        )
    return False


@dataclass(frozen=True)
class ReplayFilter:
    """Which records to copy; every given field must match (none given: everything)."""

    session_id: str | None = None
    agent_id: str | None = None
    tenant_id: str | None = None

    @property
    def needs_event(self) -> bool:
        """Agent and tenant are only in the value: those filters decode the StepEvent."""
        return self.agent_id is not None or self.tenant_id is not None

    def key_matches(self, key: bytes | None) -> bool:
        """The session filter works on the key (gov.events is keyed by session id)."""
        return self.session_id is None or key == self.session_id.encode()

    def event_matches(self, event: Mapping[str, Any]) -> bool:
        return (self.agent_id is None or event.get("agent_id") == self.agent_id) and (
            self.tenant_id is None or event.get("tenant_id") == self.tenant_id
        )


#: what becomes of one record: copied, filtered out, or skipped because it does not decode
COPY, SKIP, UNDECODABLE = "copy", "skip", "undecodable"


def verdict(
    rule: ReplayFilter, key: bytes | None, value: bytes | None, decode: Callable[[bytes], Any]
) -> str:
    """COPY, SKIP or UNDECODABLE for one record. An undecodable value is copied when no
    agent/tenant filter asks for its content (the copy keeps what the source held, dead letters
    included), and skipped and counted otherwise: its agent and tenant are unknown."""
    if not rule.key_matches(key):
        return SKIP
    if not rule.needs_event:
        return COPY
    try:
        event = decode(value or b"")
    except DecodeError:
        return UNDECODABLE
    return COPY if rule.event_matches(event) else SKIP


# --- reading a range -----------------------------------------------------------------------


def _reader(settings: Settings) -> Consumer:
    return Consumer(
        {
            **client_config(settings),
            # never joins or commits: a throwaway id only because the client insists on one
            "group.id": f"governor-range-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 50,
            "log_level": 3,
        }
    )


def partition_count(consumer_or_admin: Consumer | AdminClient, topic: str) -> int | None:
    """Partitions of ``topic``, None when it does not exist."""
    # every topic, not just this one: asking for one by name may auto-create it
    metadata = consumer_or_admin.list_topics(timeout=METADATA_TIMEOUT_S)
    found = metadata.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        return None
    return len(found.partitions)


def offset_ranges(
    consumer: Consumer,
    topic: str,
    from_us: int,
    to_us: int,
    partitions: Sequence[int] | None = None,
) -> list[OffsetRange]:
    """Per partition, the offsets whose records Kafka's time index puts in the range."""
    if partitions is None:
        count = partition_count(consumer, topic)
        if count is None:
            raise ValueError(f"topic {topic!r} does not exist")
        partitions = range(count)
    start_ms, end_ms = ms_bounds(from_us, to_us)
    numbers = list(partitions)
    starts = consumer.offsets_for_times(
        [TopicPartition(topic, p, start_ms) for p in numbers], timeout=METADATA_TIMEOUT_S
    )
    ends = consumer.offsets_for_times(
        [TopicPartition(topic, p, end_ms) for p in numbers], timeout=METADATA_TIMEOUT_S
    )
    result = []
    for start, end in zip(starts, ends, strict=True):
        if start.error is not None:
            raise KafkaException(start.error)
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, start.partition), timeout=METADATA_TIMEOUT_S
        )
        result.append(offset_range(start.partition, start.offset, end.offset, low, high))
    return result


def iter_range(
    settings: Settings,
    topic: str,
    from_us: int,
    to_us: int,
    *,
    partitions: Sequence[int] | None = None,
    progress: Progress | None = None,
) -> Iterator[RangeRecord]:
    """Every record of ``topic`` (all partitions, or ``partitions``) whose Kafka timestamp lies
    in ``[from_us, to_us]`` (µs, inclusive), per partition in offset order.

    The range is the offsets between the two time-index lookups, read through: a record in the
    middle whose producer clock was off comes along, so a partition's sequence has no holes.
    Partitions interleave in the order the broker serves them; only per-partition order holds.
    Reads committed records only and joins no group. ``progress(done, total)`` is called at
    most every 0.1 s and once at the end, when ``total`` becomes what was actually read (the
    offset span counts transaction markers too).
    """
    consumer = _reader(settings)
    try:
        ranges = [r for r in offset_ranges(consumer, topic, from_us, to_us, partitions) if r.size]
        total = sum(r.size for r in ranges)
        done = 0
        last_report = 0.0
        if progress is not None:
            progress(0, total)
        if not ranges:
            return
        ends = {r.partition: r.end for r in ranges}
        consumer.assign([TopicPartition(topic, r.partition, r.start) for r in ranges])
        while ends:
            for msg in consumer.consume(num_messages=BATCH, timeout=POLL_S):
                record = _range_record(msg, ends, consumer, topic)
                if record is None:
                    continue
                done += 1
                yield record
            if progress is not None and time.monotonic() - last_report >= PROGRESS_INTERVAL_S:
                last_report = time.monotonic()
                progress(done, total)
        if progress is not None:
            progress(done, done)
    finally:
        consumer.close()


def _range_record(
    msg: Message, ends: dict[int, int], consumer: Consumer, topic: str
) -> RangeRecord | None:
    """The record of ``msg`` if it lies before its partition's end; retires finished
    partitions (end reached, or end of partition: the rest of the span was markers)."""
    partition = msg.partition() or 0
    end = ends.get(partition)
    error = msg.error()
    if error is not None:
        if error.code() != KafkaError._PARTITION_EOF:
            if error.fatal() or not (error.retriable() or error.code() in TRANSIENT):
                raise KafkaException(error)
            return None  # the client reconnects and fetches again by itself
        if end is not None and (msg.offset() or 0) >= end:
            _retire(ends, consumer, topic, partition)
        return None
    if end is None:
        return None  # fetched before the partition was retired
    offset = msg.offset() or 0
    if offset >= end:
        _retire(ends, consumer, topic, partition)
        return None
    if offset == end - 1:
        _retire(ends, consumer, topic, partition)
    return RangeRecord(
        partition=partition,
        offset=offset,
        timestamp_ms=msg.timestamp()[1],
        key=msg.key(),
        value=msg.value(),
        headers=header_pairs(msg.headers()),
    )


def _retire(ends: dict[int, int], consumer: Consumer, topic: str, partition: int) -> None:
    ends.pop(partition, None)
    # paused: what the broker sends past the end is not fetched (and not read) any more
    consumer.pause([TopicPartition(topic, partition)])


# --- replaying into a topic ----------------------------------------------------------------


@dataclass(frozen=True)
class ReplaySpec:
    """What ``governor replay`` copies: a time range (µs, inclusive, Kafka record time) of the
    events topic, optionally one session, agent or tenant, into a replay topic."""

    from_us: int
    to_us: int
    session_id: str | None = None
    agent_id: str | None = None
    tenant_id: str | None = None
    #: default ``<prefix>replay.<id>``
    to_topic: str | None = None
    #: default the events topic (``GOVERNOR_EVENTS_TOPIC`` or ``<prefix>events``)
    source_topic: str | None = None

    @property
    def rule(self) -> ReplayFilter:
        return ReplayFilter(self.session_id, self.agent_id, self.tenant_id)


@dataclass(frozen=True)
class PartitionCount:
    partition: int
    scanned: int
    copied: int


@dataclass(frozen=True)
class ReplayReport:
    source_topic: str
    to_topic: str
    from_us: int
    to_us: int
    scanned: int
    copied: int
    skipped_undecodable: int
    partitions: tuple[PartitionCount, ...]
    created_topic: bool
    elapsed_s: float = 0.0
    worker_env: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source_topic": self.source_topic,
            "to_topic": self.to_topic,
            "from_us": self.from_us,
            "to_us": self.to_us,
            "scanned": self.scanned,
            "copied": self.copied,
            "skipped_undecodable": self.skipped_undecodable,
            "partitions": [
                {"partition": p.partition, "scanned": p.scanned, "copied": p.copied}
                for p in self.partitions
            ],
            "created_topic": self.created_topic,
            "elapsed_s": round(self.elapsed_s, 3),
            "worker_env": self.worker_env,
        }


def replay_worker_env(settings: Settings, to_topic: str) -> dict[str, str]:
    """The variables that run a fresh worker on a replay topic: its own consumer group, state,
    output topics and Redis keys (all under the replay's prefix), never the live ones."""
    name = to_topic.removeprefix(settings.topic_prefix).replace(".", "-")
    return {
        "GOVERNOR_EVENTS_TOPIC": to_topic,
        "GOVERNOR_TOPIC_PREFIX": f"{to_topic}.",
        "GOVERNOR_APP_ID": name,
        # the port after the live worker's; with port 0 (any free port) the replay's too
        "GOVERNOR_WEB_PORT": str(settings.web_port + 1 if settings.web_port else 0),
    }


def ensure_target(
    settings: Settings, admin: AdminClient, name: str, source_partitions: int
) -> bool:
    """Create the replay topic with the source's partition count (delete policy, the events'
    retention) unless it exists; True when it was created."""
    if not check_target(source_partitions, partition_count(admin, name)):
        return False
    replication, min_isr = replication_for(settings, len(admin.list_topics(timeout=10).brokers))
    config = {
        "cleanup.policy": "delete",
        "retention.ms": str(settings.events_retention_ms),
        "min.insync.replicas": str(min_isr),
    }
    return bool(create_topics(admin, [new_topic(name, source_partitions, replication, config)]))


class _Copier:
    """An idempotent producer (acks=all) that fails loudly if any copy is not acknowledged."""

    def __init__(self, settings: Settings) -> None:
        self.errors: list[KafkaError] = []
        self.producer = Producer(
            {
                **client_config(settings),
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 20,
                "batch.size": 1_000_000,
                "compression.type": "lz4",
                "log_level": 3,
            }
        )

    def _delivered(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self.errors.append(err)

    def copy(self, topic: str, partition: int, record: RangeRecord) -> None:
        while True:
            try:
                self.producer.produce(
                    topic,
                    record.value,
                    record.key,
                    partition=partition,
                    timestamp=record.timestamp_ms,
                    headers=list(record.headers) or None,
                    on_delivery=self._delivered,
                )
                return
            except BufferError:
                self.producer.poll(0.05)

    def finish(self, timeout_s: float = 60.0) -> None:
        pending = self.producer.flush(timeout_s)
        if pending:
            raise TimeoutError(f"{pending} copies not acknowledged within {timeout_s:.0f}s")
        if self.errors:
            raise KafkaException(self.errors[0])


def replay(settings: Settings, spec: ReplaySpec, progress: Progress | None = None) -> ReplayReport:
    """Copy the records of ``spec`` into the replay topic (created first if missing)."""
    started = time.monotonic()
    source = spec.source_topic or settings.events_source_topic
    target = spec.to_topic or settings.topic("replay." + new_replay_id())
    if target == source:
        raise ValueError(f"cannot replay {source!r} into itself")
    admin = admin_client(settings)
    source_partitions = partition_count(admin, source)
    if source_partitions is None:
        raise ValueError(f"source topic {source!r} does not exist")
    created = ensure_target(settings, admin, target, source_partitions)
    rule = spec.rule
    decode = Codecs.load(settings.schemas_dir).step_event.decode
    scanned: dict[int, int] = dict.fromkeys(range(source_partitions), 0)
    copied: dict[int, int] = dict.fromkeys(range(source_partitions), 0)
    undecodable = 0
    copier = _Copier(settings)
    for record in iter_range(settings, source, spec.from_us, spec.to_us, progress=progress):
        scanned[record.partition] += 1
        outcome = verdict(rule, record.key, record.value, decode)
        if outcome == COPY:
            copier.copy(target, target_partition(record.partition, source_partitions), record)
            copied[record.partition] += 1
        elif outcome == UNDECODABLE:
            undecodable += 1
        copier.producer.poll(0)
    copier.finish()
    return ReplayReport(
        source_topic=source,
        to_topic=target,
        from_us=spec.from_us,
        to_us=spec.to_us,
        scanned=sum(scanned.values()),
        copied=sum(copied.values()),
        skipped_undecodable=undecodable,
        partitions=tuple(
            PartitionCount(p, scanned[p], copied[p]) for p in range(source_partitions)
        ),
        created_topic=created,
        elapsed_s=time.monotonic() - started,
        worker_env=replay_worker_env(settings, target),
    )
