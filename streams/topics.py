"""Every Governor topic: name, key, value schema, partitions, replication, retention, cleanup.

``ensure_topics`` creates what is missing and leaves existing topics alone, so it is safe to run
at every start; ``describe_topics`` reports the configuration the broker actually holds.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from streams.kafka_config import client_config
from streams.settings import Settings

log = logging.getLogger("governor.topics")

#: (offset, key, value) of one record read back from a topic
Record = tuple[int, bytes | None, bytes | None]

#: retention.ms = -1 keeps a topic forever: the audit chain must never lose its head
FOREVER = -1


@dataclass(frozen=True)
class TopicSpec:
    suffix: str
    key: str
    value: str
    partitions: int
    retention_ms: int
    cleanup_policy: str = "delete"
    description: str = ""

    def name(self, settings: Settings) -> str:
        return settings.topic(self.suffix)


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """The topics of DESIGN.md. ``gov.replay.<id>`` topics are made by ``governor replay``."""
    p = settings.event_partitions
    keep = settings.retention_ms
    return [
        TopicSpec(
            "events",
            "session_id",
            "StepEvent",
            p,
            settings.events_retention_ms,
            description="one event per agent step",
        ),
        TopicSpec(
            "control",
            "target",
            "Decision",
            3,
            keep,
            description="signed enforcement decisions, read by every client",
        ),
        TopicSpec(
            "sessions",
            "session_id",
            "SessionSummary",
            p,
            keep,
            description="one summary per finished or timed-out session",
        ),
        TopicSpec(
            "pii",
            "session_id",
            "PiiFinding",
            p,
            keep,
            description="PII findings: fingerprints, never values",
        ),
        TopicSpec(
            "alerts",
            "alert_id",
            "Alert",
            3,
            keep,
            description="SLO burn, budget, drift and lag alerts",
        ),
        TopicSpec(
            "audit",
            "tenant_id",
            "AuditRecord",
            3,
            FOREVER,
            description="hash-chained audit trail per tenant",
        ),
        TopicSpec(
            "events.dlq",
            "original key",
            "original bytes",
            3,
            keep,
            description="undecodable events with Kafka-Connect error headers",
        ),
        TopicSpec(
            "incidents",
            "incident_id",
            "Incident",
            1,
            FOREVER,
            "compact",
            description="incident records, latest state per incident",
        ),
        TopicSpec(
            "policies",
            "version",
            "PolicyVersion",
            1,
            FOREVER,
            "compact",
            description="every policy set the worker accepted, with its files (rollback)",
        ),
        TopicSpec(
            "audit.heads",
            "tenant_id",
            "JSON chain head",
            1,
            FOREVER,
            "compact",
            description="latest chain_seq and hash per tenant: detects truncation",
        ),
    ]


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient({**client_config(settings), "socket.timeout.ms": 10000})


def cluster_size(admin: AdminClient, timeout_s: float = 10.0) -> int:
    return len(admin.list_topics(timeout=timeout_s).brokers)


def replication_for(settings: Settings, brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas): the setting, or up to 3 copies by default."""
    replication = settings.replication_factor or min(3, brokers)
    if replication > brokers:
        raise ValueError(
            f"replication factor {replication} needs {replication} brokers, the cluster has "
            f"{brokers}"
        )
    return replication, 2 if replication >= 3 else 1


def new_topic(name: str, partitions: int, replication: int, config: dict[str, str]) -> NewTopic:
    return NewTopic(name, num_partitions=partitions, replication_factor=replication, config=config)


def create_topics(
    admin: AdminClient, topics: Iterable[NewTopic], timeout_s: float = 30
) -> list[str]:
    """Create topics that do not exist yet and wait until every partition has a leader.

    Returns the names that were created.
    """
    topics = list(topics)
    if not topics:
        return []
    created = []
    futures = admin.create_topics(topics, operation_timeout=timeout_s, request_timeout=timeout_s)
    for name, future in futures.items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise
    wait_for_topics(admin, [t.topic for t in topics], timeout_s)
    return created


def wait_for_topics(admin: AdminClient, names: list[str], timeout_s: float = 30) -> None:
    """Block until the cluster's metadata shows each topic with a leader for every partition.

    Brokers answer from their own metadata view, which can lag behind; three ready answers in
    a row count as ready.
    """
    deadline = time.monotonic() + timeout_s
    ready_in_a_row = 0
    while ready_in_a_row < 3:
        metadata = admin.list_topics(timeout=timeout_s)
        missing = [
            n
            for n in names
            if n not in metadata.topics
            or not metadata.topics[n].partitions
            or any(p.leader < 0 for p in metadata.topics[n].partitions.values())
        ]
        if not missing:
            ready_in_a_row += 1
            continue
        ready_in_a_row = 0
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics without leaders after {timeout_s:.0f}s: {missing}")
        time.sleep(0.1)


def ensure_topics(settings: Settings, admin: AdminClient | None = None) -> list[str]:
    """Create every Governor topic that is missing; returns the names that were created."""
    admin = admin or admin_client(settings)
    replication, min_isr = replication_for(settings, cluster_size(admin))
    return create_topics(
        admin,
        (
            new_topic(
                spec.name(settings),
                spec.partitions,
                replication,
                {
                    "retention.ms": str(spec.retention_ms),
                    "cleanup.policy": spec.cleanup_policy,
                    "min.insync.replicas": str(min_isr),
                },
            )
            for spec in topic_specs(settings)
            # a worker reading another events topic (a replay) has no events of its own
            if not (spec.suffix == "events" and settings.events_topic)
        ),
    )


@dataclass(frozen=True)
class TopicInfo:
    name: str
    exists: bool
    partitions: int
    replication: int
    retention_ms: str
    cleanup_policy: str
    min_insync_replicas: str


REPORTED_CONFIGS = ("retention.ms", "cleanup.policy", "min.insync.replicas")


def describe_topics(admin: AdminClient, names: list[str], timeout_s: float = 10) -> list[TopicInfo]:
    """What the broker reports for each named topic (missing ones are marked so)."""
    metadata = admin.list_topics(timeout=timeout_s)
    present = [n for n in names if n in metadata.topics]
    configs: dict[str, dict[str, str]] = {}
    if present:
        resources = [ConfigResource(ConfigResource.Type.TOPIC, n) for n in present]
        for resource, future in admin.describe_configs(resources).items():
            entries = future.result()
            configs[resource.name] = {k: entries[k].value for k in REPORTED_CONFIGS if k in entries}
    result = []
    for name in names:
        topic = metadata.topics.get(name)
        if topic is None:
            result.append(TopicInfo(name, False, 0, 0, "", "", ""))
            continue
        partitions = topic.partitions
        replication = len(next(iter(partitions.values())).replicas) if partitions else 0
        cfg = configs.get(name, {})
        result.append(
            TopicInfo(
                name=name,
                exists=True,
                partitions=len(partitions),
                replication=replication,
                retention_ms=cfg.get("retention.ms", ""),
                cleanup_policy=cfg.get("cleanup.policy", ""),
                min_insync_replicas=cfg.get("min.insync.replicas", ""),
            )
        )
    return result


def read_latest(settings: Settings, topic: str) -> dict[bytes, bytes]:
    """The latest value of every key of a compacted topic, read from the beginning to the end
    offsets of all its partitions (a tombstone removes the key; a missing topic is empty)."""
    # all topics, not list_topics(topic): asking for one by name can auto-create it
    metadata = admin_client(settings).list_topics(timeout=10).topics.get(topic)
    if metadata is None or metadata.error is not None:
        return {}
    latest: dict[bytes, bytes] = {}
    for rows in read_partitions(settings, topic, sorted(metadata.partitions)).values():
        for _offset, key, value in rows:
            if key is None:
                continue
            if value is None:
                latest.pop(key, None)
            else:
                latest[key] = value
    return latest


def publish_keyed(settings: Settings, topic: str, key: bytes, value: bytes) -> None:
    """Write one record and wait for the broker's acknowledgement (idempotent producer, so a
    retried send is never duplicated); raises KafkaException if it was not written."""
    errors: list[KafkaError] = []
    producer = Producer(
        {
            **client_config(settings),
            "enable.idempotence": True,
            "acks": "all",
            "message.timeout.ms": 30_000,
            "log_level": 3,
        }
    )
    producer.produce(
        topic, value, key, on_delivery=lambda err, _msg: errors.append(err) if err else None
    )
    if producer.flush(35) or errors:
        raise KafkaException(errors[0] if errors else f"{topic}: record not acknowledged in 35s")


def read_partitions(
    settings: Settings, topic: str, partitions: list[int]
) -> dict[int, list[Record]]:
    """Every committed (offset, key, value) of the partitions, from the beginning to the end."""
    records: dict[int, list[Record]] = {p: [] for p in partitions}
    scan_partitions(settings, topic, partitions, lambda p, r: records[p].append(r))
    return records


#: a restore that reads nothing for this long gives up (the caller retries: a transient fault)
SCAN_STALL_S = 60.0


def scan_partitions(
    settings: Settings,
    topic: str,
    partitions: list[int],
    apply: Callable[[int, Record], None],
    *,
    until_stable: bool = False,
    progress: Callable[[], None] | None = None,
) -> int:
    """Hand every committed record of the partitions, from the beginning to the end, to
    ``apply(partition, record)`` without holding them (restores stay flat in memory).
    Returns the number of records; raises TimeoutError when the broker stops answering.

    A read_committed reader ends at the last stable offset: an open transaction (a worker
    that died mid-checkpoint, until the broker aborts it) hides every record after its first,
    committed ones of a later owner included. ``until_stable`` (a restore: nobody else writes
    there) reads on until the end is the partition's true end, once that transaction is
    resolved. ``progress`` is called while it waits (a loop's liveness)."""
    if not partitions:
        return 0
    reader = Consumer(
        {
            **client_config(settings),
            "group.id": f"governor-restore-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 10,
            "log_level": 3,
        }
    )
    ends = _TrueEnds(settings, topic) if until_stable else None
    pending = set(partitions)
    count = 0
    last_progress = time.monotonic()
    try:
        reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        while pending:
            # a batch returns when full or at the timeout: a short one ends small reads sooner
            messages = reader.consume(10_000, 0.1)
            if progress is not None:
                progress()
            if messages:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > SCAN_STALL_S:
                held = f" (held by an open transaction at {ends.waiting})" if ends else ""
                raise TimeoutError(
                    f"reading {topic} partitions {sorted(pending)}: nothing for "
                    f"{SCAN_STALL_S:.0f}s{held}"
                )
            for msg in messages:
                error = msg.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(error)
                    partition = msg.partition() or 0
                    if ends is None or ends.reached(partition, msg.offset() or 0):
                        pending.discard(partition)
                    continue
                apply(msg.partition() or 0, (msg.offset() or 0, msg.key(), msg.value()))
                count += 1
        return count
    finally:
        reader.close()
        if ends is not None:
            ends.close()


class _TrueEnds:
    """Where partitions really end (read_uncommitted high watermarks), to tell a reader's
    end at the last stable offset from the end of the partition."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic = topic
        self.waiting: dict[int, tuple[int, int]] = {}
        self._probe = Consumer(
            {
                **client_config(settings),
                "group.id": f"governor-restore-{uuid.uuid4().hex[:8]}",
                "isolation.level": "read_uncommitted",
                "log_level": 3,
            }
        )

    def reached(self, partition: int, offset: int) -> bool:
        """Whether a read_committed reader at ``offset`` has read everything there is."""
        _low, high = self._probe.get_watermark_offsets(
            TopicPartition(self.topic, partition), timeout=10
        )
        if offset >= high:
            self.waiting.pop(partition, None)
            return True
        if partition not in self.waiting:
            log.warning(
                "%s[%d]: an open transaction holds the read at %d of %d (a worker that died "
                "mid-checkpoint?): waiting until the broker resolves it",
                self.topic,
                partition,
                offset,
                high,
            )
        self.waiting[partition] = (offset, high)
        return False

    def close(self) -> None:
        self._probe.close()


def scope_deltas_topic(settings: Settings) -> str:
    """The repartition topic from the session stage to the scope stage (per app, like the
    changelogs: a replay's worker has its own)."""
    return settings.topic(f"{settings.app_id}-scope-deltas")


def ensure_state_topic(
    settings: Settings, name: str, partitions: int, retention_ms: int | None = None
) -> None:
    """Create a stage's internal topic if it is missing: a compacted changelog, or (with
    ``retention_ms``) a repartition topic that only has to outlive its reader's outages."""
    admin = admin_client(settings)
    replication, min_isr = replication_for(settings, cluster_size(admin))
    config = {"min.insync.replicas": str(min_isr)}
    if retention_ms is None:
        config |= {
            "cleanup.policy": "compact",
            "segment.ms": str(3600 * 1000),
            # pruned state leaves a tombstone per key: an hour is ample for any restore to see
            # it (the default keeps them a day, and a restore reads every one of them)
            "delete.retention.ms": str(3600 * 1000),
        }
    else:
        config |= {"cleanup.policy": "delete", "retention.ms": str(retention_ms)}
    create_topics(admin, [new_topic(name, partitions, replication, config)])
