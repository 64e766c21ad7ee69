"""Rebuilding the Redis read-models from Kafka: the sessions read-model and drift samples from
gov.sessions (drift alert states from gov.alerts), the PII ledger from gov.pii.

Redis holds mirrors only; Kafka is the record. A rebuild reads a topic from the beginning to
the end offsets it finds at the start (``read_committed``: the worker writes summaries in
transactions) and re-applies every record through the same idempotent Lua calls the agents use,
so it can run over a full Redis, next to the agents, or twice, and changes nothing that was
there. Drift samples are re-added without looking at checkpoints: a rebuild sends no alert.

A marker key per read-model (``<prefix>readmodel:built``, ``<prefix>pii:built``) says it was
built; the agents check it once per batch and rebuild first when it is gone (Redis restarted
without its data, or flushed). A lock key lets one process rebuild while the others go on
applying their batches (idempotent, so nothing is lost); the marker is only set if the lock
survived the whole rebuild, so a Redis flushed half-way through is rebuilt again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any

import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from streams.codec import Codec, Codecs, DecodeError
from streams.kafka_config import client_config
from streams.pii.ledger import PiiLedger
from streams.query.drift import DriftDetector, DriftStore
from streams.query.readmodel import SessionReadModel, without_non_finite
from streams.redis_client import redis_client
from streams.settings import Settings

log = logging.getLogger("governor.rebuild")

READ_MODEL = "read-model"
PII_LEDGER = "pii-ledger"
#: the Redis key name of each read-model's marker and lock (after the key prefix)
DECISIONS = "decisions"
_KEY_NAMES = {READ_MODEL: "readmodel", PII_LEDGER: "pii", DECISIONS: "decisions"}

#: records per Redis pipeline: one round trip applies this many
CHUNK = 2000
POLL_S = 0.1
METADATA_TIMEOUT_S = 10.0
#: no record and no end of partition for this long: Kafka is not answering
STALL_S = 30.0
LOCK_TTL_S = 60.0
PROGRESS_EVERY_S = 1.0
#: how often a rebuild starts over because Redis lost it half-way before giving up
MAX_RESTARTS = 3

#: a lock is extended, or the marker set, only by the rebuild that holds it
HOLD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
FINISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[1])
return 1
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class SourceUnavailable(TimeoutError):
    """Kafka stopped answering in the middle of a rebuild (a transient fault)."""


class RebuildInterrupted(redis.RedisError):
    """Redis lost what was being rebuilt (flushed or restarted) every time it was rebuilt."""


class _LockLost(Exception):
    pass


@dataclass(frozen=True)
class Progress:
    target: str
    topic: str
    records: int
    #: records between the start and end offsets: an upper bound (transaction markers count)
    total: int
    elapsed_s: float

    @property
    def rate(self) -> float:
        return self.records / self.elapsed_s if self.elapsed_s > 0 else 0.0


ProgressFn = Callable[[Progress], None]


@dataclass(frozen=True)
class RebuildResult:
    target: str
    topic: str
    #: False when another process holds the rebuild lock (it rebuilds; this one did not)
    rebuilt: bool
    records: int = 0
    #: records Redis did not hold yet (0 when rebuilding over a complete read-model)
    applied: int = 0
    undecodable: int = 0
    #: evaluation scores left out as not finite (NaN, inf)
    dropped_scores: int = 0
    #: drift alert states put back from gov.alerts
    alert_states: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def marker_key(prefix: str, target: str) -> str:
    return f"{prefix}{_KEY_NAMES[target]}:built"


def lock_key(prefix: str, target: str) -> str:
    return f"{prefix}{_KEY_NAMES[target]}:rebuilding"


# --- reading a topic to its end ------------------------------------------------------------


class BoundedReader:
    """The committed records of a topic from the beginning to the end offsets at :meth:`open`,
    in chunks; a missing topic is empty. Raises :class:`SourceUnavailable` when Kafka stops
    answering for ``stall_s``, KafkaException when it refuses."""

    def __init__(self, settings: Settings, topic: str, stall_s: float = STALL_S) -> None:
        self.settings = settings
        self.topic = topic
        self.stall_s = stall_s
        self.ends: dict[int, int] = {}
        self.total = 0
        self._last_error = ""
        self._consumer = Consumer(
            {
                **client_config(settings),
                # joins no group and commits nothing: the id only because the client wants one
                "group.id": f"governor-rebuild-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
                "fetch.wait.max.ms": 50,
                "allow.auto.create.topics": False,
                # errors reach the caller as exceptions, not as lines on stderr
                "error_cb": self._on_error,
                "log_level": 0,
            }
        )

    def _on_error(self, error: KafkaError) -> None:
        self._last_error = error.str()

    def __enter__(self) -> BoundedReader:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        found = self._consumer.list_topics(self.topic, timeout=METADATA_TIMEOUT_S).topics
        metadata = found.get(self.topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            return
        starts: list[TopicPartition] = []
        for p in sorted(metadata.partitions):
            low, high = self._consumer.get_watermark_offsets(
                TopicPartition(self.topic, p), timeout=METADATA_TIMEOUT_S
            )
            if high > low:
                self.ends[p] = high
                self.total += high - low
                starts.append(TopicPartition(self.topic, p, low))
        if starts:
            self._consumer.assign(starts)

    def chunks(self, size: int = CHUNK) -> Iterator[list[bytes]]:
        """Values (tombstones left out) in chunks of up to ``size``; an empty chunk after a
        poll that brought nothing, so the caller can keep its lock and progress up to date."""
        pending = dict(self.ends)
        answered = time.monotonic()
        while pending:
            chunk: list[bytes] = []
            for msg in self._consumer.consume(num_messages=size, timeout=POLL_S):
                partition = msg.partition() or 0
                error = msg.error()
                answered = time.monotonic()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(error)
                    self._done(pending, partition)  # all that is committed (the LSO) is read
                    continue
                end = pending.get(partition)
                offset = msg.offset() or 0
                if end is None or offset >= end:
                    self._done(pending, partition)  # past the end as of the start
                    continue
                value = msg.value()
                if value is not None:
                    chunk.append(value)
                if offset >= end - 1:
                    self._done(pending, partition)
            if not chunk and time.monotonic() - answered > self.stall_s:
                raise SourceUnavailable(
                    f"Kafka at {self.settings.bootstrap} sent nothing of {self.topic} for "
                    f"{self.stall_s:.0f}s" + (f" ({self._last_error})" if self._last_error else "")
                )
            yield chunk

    def _done(self, pending: dict[int, int], partition: int) -> None:
        if pending.pop(partition, None) is not None:
            # what the broker sends past the end is not wanted: stop fetching it
            self._consumer.pause([TopicPartition(self.topic, partition)])

    def close(self) -> None:
        self._consumer.close()


def latest_decisions(
    settings: Settings, codec: Codec, on_chunk: Callable[[], None] | None = None
) -> dict[str, tuple[int, bytes]]:
    """The newest decision per target on the control topic: (epoch, the record's bytes), what
    the decision mirror keeps in Redis."""
    latest: dict[str, tuple[int, bytes]] = {}
    with BoundedReader(settings, settings.topic("control")) as reader:
        for chunk in reader.chunks():
            for value in chunk:
                try:
                    decision = codec.decode(value)
                except DecodeError:
                    continue  # not a decision: clients drop it too
                current = latest.get(decision["target"])
                if current is None or decision["epoch"] > current[0]:
                    latest[decision["target"]] = (decision["epoch"], value)
            if on_chunk is not None:
                on_chunk()
    return latest


def _decoded(values: list[bytes], codec: Codec) -> tuple[list[dict[str, Any]], int]:
    records: list[dict[str, Any]] = []
    bad = 0
    for value in values:
        try:
            records.append(codec.decode(value))
        except DecodeError:
            bad += 1  # only a foreign writer gets here: the worker writes what it can read
    return records, bad


class _Meter:
    """Progress reports every PROGRESS_EVERY_S, and the lock kept alive as records flow."""

    def __init__(
        self, target: str, topic: str, total: int, on_progress: ProgressFn | None, hold: _Hold
    ) -> None:
        self.target, self.topic, self.total = target, topic, total
        self.on_progress = on_progress
        self.hold = hold
        self.started = time.monotonic()
        self.reported = self.started
        self.records = 0

    def tick(self, records: int) -> None:
        self.records += records
        self.hold()
        now = time.monotonic()
        if self.on_progress is not None and now - self.reported >= PROGRESS_EVERY_S:
            self.reported = now
            self.on_progress(self.progress())

    def progress(self) -> Progress:
        elapsed = time.monotonic() - self.started
        return Progress(self.target, self.topic, self.records, self.total, elapsed)


# --- the lock and the marker ---------------------------------------------------------------


class _Hold:
    """Extends the rebuild lock every third of its TTL; raises _LockLost once it is gone."""

    def __init__(self, client: redis.Redis, key: str, token: str) -> None:
        self._script = client.register_script(HOLD)
        self.key, self.token = key, token
        self._at = time.monotonic()

    def __call__(self) -> None:
        if time.monotonic() - self._at < LOCK_TTL_S / 3:
            return
        if not self._script(keys=[self.key], args=[self.token, int(LOCK_TTL_S * 1000)]):
            raise _LockLost
        self._at = time.monotonic()


Build = Callable[[_Hold], RebuildResult]


def _guarded(
    client: redis.Redis, prefix: str, target: str, topic: str, force: bool, build: Build
) -> RebuildResult:
    """Run ``build`` holding the target's lock and set its marker after it; start over when
    Redis lost the lock half-way (flushed, restarted). Without ``force`` a lock held by another
    process means it rebuilds: this one returns at once."""
    lock, marker = lock_key(prefix, target), marker_key(prefix, target)
    finish = client.register_script(FINISH)
    for _ in range(MAX_RESTARTS):
        token = uuid.uuid4().hex
        ttl_ms = int(LOCK_TTL_S * 1000)
        if force:
            client.set(lock, token, px=ttl_ms)
        elif not client.set(lock, token, px=ttl_ms, nx=True):
            log.info("%s: another process is rebuilding it", target)
            return RebuildResult(target, topic, rebuilt=False)
        try:
            result = build(_Hold(client, lock, token))
        except _LockLost:
            log.warning("%s: Redis lost it during the rebuild (flushed or restarted)", target)
            continue
        except BaseException:
            _release(client, lock, token)
            raise
        done = json.dumps(
            {"built_at_us": time.time_ns() // 1000, "records": result.records,
             "seconds": round(result.seconds, 3)}
        )  # fmt: skip
        if finish(keys=[lock, marker], args=[token, done]):
            return result
        log.warning("%s: Redis lost it during the rebuild (flushed or restarted)", target)
    raise RebuildInterrupted(f"{target}: Redis lost it during {MAX_RESTARTS} rebuilds in a row")


def _release(client: redis.Redis, lock: str, token: str) -> None:
    # best effort: with Redis away the lock expires by itself
    with contextlib.suppress(redis.RedisError):
        client.register_script(RELEASE)(keys=[lock], args=[token])


def _client(settings: Settings, client: redis.Redis | None) -> tuple[redis.Redis, bool]:
    return (client, False) if client is not None else (redis_client(settings), True)


# --- the read-models -----------------------------------------------------------------------


def rebuild_read_model(
    settings: Settings,
    *,
    client: redis.Redis | None = None,
    store: DriftStore | None = None,
    codecs: Codecs | None = None,
    force: bool = True,
    on_progress: ProgressFn | None = None,
) -> RebuildResult:
    """Re-apply every summary of gov.sessions to the read-model and the drift samples, and put
    back the drift alert states of gov.alerts that Redis lacks."""
    redis_, owned = _client(settings, client)
    codecs = codecs or Codecs.load(settings.schemas_dir)
    topic = settings.topic("sessions")
    prefix = settings.redis_key_prefix

    def build(hold: _Hold) -> RebuildResult:
        model = SessionReadModel(redis_, prefix)
        samples = DriftDetector(store or DriftStore(redis_, prefix))
        applied = undecodable = dropped = 0
        with BoundedReader(settings, topic) as reader:
            meter = _Meter(READ_MODEL, topic, reader.total, on_progress, hold)
            for values in reader.chunks():
                summaries, bad = _decoded(values, codecs.session_summary)
                clean, n = without_non_finite(summaries)
                applied += model.apply(clean, settings.quality_threshold)
                samples.add(clean)  # the checkpoints it reports are left alone: no alerts
                undecodable, dropped = undecodable + bad, dropped + n
                meter.tick(len(values))
        states = samples.store.restore_alert_states(drift_alert_states(settings, codecs))
        progress = meter.progress()
        if on_progress is not None:
            on_progress(progress)
        return RebuildResult(
            READ_MODEL, topic, True, progress.records, applied, undecodable, dropped, states,
            progress.elapsed_s,
        )  # fmt: skip

    try:
        return _guarded(redis_, prefix, READ_MODEL, topic, force, build)
    finally:
        if owned:
            redis_.close()


def drift_alert_states(settings: Settings, codecs: Codecs) -> dict[str, str]:
    """The latest state of every drift alert on gov.alerts."""
    states: dict[str, str] = {}
    with BoundedReader(settings, settings.topic("alerts")) as reader:
        for values in reader.chunks():
            alerts, _ = _decoded(values, codecs.alert)
            for alert in alerts:
                if alert["kind"] == "DRIFT":
                    states[alert["alert_id"]] = alert["state"]
    return states


def rebuild_pii_ledger(
    settings: Settings,
    *,
    client: redis.Redis | None = None,
    codecs: Codecs | None = None,
    force: bool = True,
    on_progress: ProgressFn | None = None,
) -> RebuildResult:
    """Re-apply every finding of gov.pii to the PII ledger (each counts once)."""
    redis_, owned = _client(settings, client)
    codecs = codecs or Codecs.load(settings.schemas_dir)
    topic = settings.topic("pii")
    prefix = settings.redis_key_prefix

    def build(hold: _Hold) -> RebuildResult:
        ledger = PiiLedger(redis_, prefix, settings.pii_ledger_days)
        applied = undecodable = 0
        with BoundedReader(settings, topic) as reader:
            meter = _Meter(PII_LEDGER, topic, reader.total, on_progress, hold)
            for values in reader.chunks():
                findings, bad = _decoded(values, codecs.pii_finding)
                applied += ledger.record(findings)
                undecodable += bad
                meter.tick(len(values))
        progress = meter.progress()
        if on_progress is not None:
            on_progress(progress)
        return RebuildResult(
            PII_LEDGER, topic, True, progress.records, applied, undecodable,
            seconds=progress.elapsed_s,
        )  # fmt: skip

    try:
        return _guarded(redis_, prefix, PII_LEDGER, topic, force, build)
    finally:
        if owned:
            redis_.close()


# --- what the agents call before each batch ------------------------------------------------


def is_built(client: redis.Redis, prefix: str, target: str) -> bool:
    return bool(client.exists(marker_key(prefix, target)))


def marker(client: redis.Redis, prefix: str, target: str) -> Mapping[str, Any] | None:
    raw = client.get(marker_key(prefix, target))
    return None if raw is None else dict(json.loads(raw))


def ensure_read_model(
    settings: Settings,
    client: redis.Redis,
    *,
    store: DriftStore | None = None,
    codecs: Codecs | None = None,
    on_progress: ProgressFn | None = None,
) -> RebuildResult | None:
    """Rebuild the read-model first if Redis came back without it (one EXISTS when it is
    there); None when it was there."""
    if is_built(client, settings.redis_key_prefix, READ_MODEL):
        return None
    log.warning(
        "the read-model's marker is not in Redis (a first start, or Redis came back empty or "
        "was flushed): rebuilding it from %s",
        settings.topic("sessions"),
    )
    return rebuild_read_model(
        settings, client=client, store=store, codecs=codecs, force=False, on_progress=on_progress
    )


def ensure_pii_ledger(
    settings: Settings,
    client: redis.Redis,
    *,
    codecs: Codecs | None = None,
    on_progress: ProgressFn | None = None,
) -> RebuildResult | None:
    """Rebuild the PII ledger first if Redis came back without it; None when it was there."""
    if is_built(client, settings.redis_key_prefix, PII_LEDGER):
        return None
    log.warning(
        "the PII ledger's marker is not in Redis (a first start, or Redis came back empty or "
        "was flushed): rebuilding it from %s",
        settings.topic("pii"),
    )
    return rebuild_pii_ledger(
        settings, client=client, codecs=codecs, force=False, on_progress=on_progress
    )
