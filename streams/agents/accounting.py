"""The accounting runner: the worker's hot path, on its own thread.

Why not a Faust agent: Faust's per-event stream machinery tops out at ~13-16k events/s on two
cores before any work is done (see the issue notes); the hot path therefore consumes in batches
with confluent-kafka (consumer group ``<app_id>-accounting``), folds in memory
(:class:`streams.engine.Engine`) and, every ``checkpoint_interval_s``, writes the dirty state to
a compacted changelog, the session summaries, dead letters and audit records, and the consumed
offsets in ONE Kafka transaction. A crash replays from the last transaction: state, outputs and
offsets move together, and seq-based idempotence absorbs redelivered events. Decisions are
published at once on a separate producer (they must not wait for a checkpoint); their ids and
epochs are deterministic, so a replay re-publishes the same decisions and clients skip them.

Faults (:mod:`streams.processor.faults`): a record that decodes but carries impossible values is
dead-lettered (stage VALIDATE) before anything counts it; a transient fault aborts the open
transaction, rewinds the consumer to the committed offsets, restores the state from the
changelog and retries with backoff; anything else ends the process non-zero. Metrics and audit
work of a batch take effect when its transaction commits, so a retried batch counts once.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)

from streams.audit import AuditChains, ChainHead
from streams.codec import Codecs, DecodeError, SourceRecord, dead_letter, header_pairs
from streams.engine import (
    DEFAULT_DECISION_TTL_US,
    BatchResult,
    Decided,
    Engine,
    PartitionState,
    checkpoint_records,
    restore_record,
)
from streams.metrics import WorkerMetrics
from streams.pipeline.slo import (
    MINUTE_US,
    FallbackTracker,
    Slo,
    SloCounts,
    evaluate,
    session_verdicts,
)
from streams.pipeline.validate import IngestBounds, Rejection, validate_event
from streams.processor.faults import Backoff, Fault, classify, describe, fatal
from streams.processor.slo_state import (
    SLO_STATE_KEY,
    SLO_STATE_PARTITION,
    decode_slo_state,
    encode_slo_state,
)
from streams.publisher import DecisionPublisher, make_decision
from streams.settings import Settings
from streams.topics import (
    Record,
    admin_client,
    create_topics,
    new_topic,
    read_partitions,
    replication_for,
    scan_partitions,
)
from streams.workers import INSTANCE_ID, worker_client_id

log = logging.getLogger("governor.accounting")

BATCH_MAX = 5000
POLL_TIMEOUT_S = 0.02
TICK_INTERVAL_S = 1.0
PRODUCE_STALL_S = 30.0
#: a crashed worker's open transaction holds back read_committed readers of its outputs (the
#: scope stage, the read-model) until the coordinator aborts it: this long at most
TRANSACTION_TIMEOUT_MS = 20_000
#: a decision for a target without a window lasts this long unless resumed, counted from the
#: wall clock when it is issued (a backfilled session's kill must not arrive expired)
DEFAULT_DECISION_TTL_S = DEFAULT_DECISION_TTL_US / 1_000_000
#: the loop's states, as /healthz and /readyz report them
STARTING, RESTORING, RUNNING, RECOVERING, STOPPED = (
    "starting",
    "restoring",
    "running",
    "recovering",
    "stopped",
)


def decision_expiry(issued_at_us: int, ttl_s: float | None, wall_us: int) -> int:
    """When a decision stops being in force: its time (or a day) from the wall clock at issue.

    Not from the event time that caused it: a backfilled or late session's events may be days
    old, and a kill that arrives already expired is dropped by the client.
    """
    ttl = ttl_s if ttl_s is not None else DEFAULT_DECISION_TTL_S
    return max(wall_us, issued_at_us) + int(ttl * 1_000_000)


class RejectedRecord(ValueError):
    """A StepEvent that decodes but carries impossible values (the dead letter's exception)."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(f"{rejection.reason}: {rejection.detail}")
        self.rejection = rejection


RUNBOOK_URL = (
    "https://github.com/governor/governor/blob/main/ops/runbooks/Governor{slo}BudgetBurn.md"
)


def changelog_topic(settings: Settings) -> str:
    return settings.topic(f"{settings.app_id}-state")


def ensure_changelog(settings: Settings) -> None:
    admin = admin_client(settings)
    metadata = admin.list_topics(timeout=10)
    replication, min_isr = replication_for(settings, len(metadata.brokers))
    # one changelog partition per events partition: the events topic (a replay topic, say) may
    # have more partitions than this worker's setting
    events = metadata.topics.get(settings.events_source_topic)
    partitions = max(settings.event_partitions, len(events.partitions) if events else 0)
    config = {
        "cleanup.policy": "compact",
        "min.insync.replicas": str(min_isr),
        "segment.ms": str(3600 * 1000),
        # pruned state leaves a tombstone per key: an hour is ample for any restore to see it
        # (the default keeps them a day, and a restore reads every one of them)
        "delete.retention.ms": str(3600 * 1000),
    }
    create_topics(
        admin,
        [new_topic(changelog_topic(settings), partitions, replication, config)],
    )


class AccountingRunner:
    """Consume, fold, decide, publish, checkpoint: see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        codecs: Codecs,
        publisher: DecisionPublisher,
        metrics: WorkerMetrics,
        on_result: Callable[[BatchResult], None] | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.codecs = codecs
        self.publisher = publisher
        self.metrics = metrics
        self.on_result = on_result
        #: held while the engine changes; web views take it to read consistent state
        self.lock = threading.RLock()
        self.chains = AuditChains()
        self.processed = 0
        #: wall time of the first and latest batch, for throughput measurements
        self.first_batch_at = 0.0
        self.last_batch_at = 0.0
        self.ready = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="governor-accounting", daemon=True)
        self._events_topic = settings.events_source_topic
        self._changelog = changelog_topic(settings)
        self._in_txn = False
        #: records consumed since the last commit (nothing new: no empty transactions)
        self._consumed = False
        self._dirty_partitions: set[int] = set()
        self._heads_dirty: set[str] = set()
        self.error: BaseException | None = None
        #: what the loop is doing (STARTING ... STOPPED), the last transient fault it recovered
        #: from, and when it last came round (monotonic): /healthz and /readyz read these
        self.loop_state = STARTING
        self.loop_heartbeat = time.monotonic()
        self.last_fault = ""
        self.recoveries = 0
        #: assigned partitions whose state is restored (readiness)
        self.assigned: set[int] = set()
        self.bounds = IngestBounds.of(settings)
        #: the open transaction's side effects: metrics to count and calls to forget when it
        #: commits; on abort the metrics are dropped and the calls run again
        self._on_commit: list[Callable[[], None]] = []
        self._calls_in_txn: list[Callable[[], None]] = []
        #: set by a rebalance callback whose checkpoint failed: rewind before the next batch
        self._rewind_needed = False
        self._callback_error: BaseException | None = None
        #: SLO good/bad counts on event time, and the alerts firing (checkpointed with the
        #: alerts they produce, on changelog partition 0)
        self.slos: list[Slo] = []
        self.fallbacks: FallbackTracker | None = None
        self.slo_counts = SloCounts()
        self.firing: set[str] = set()
        self._firing_since: dict[str, int] = {}
        self._evaluated_minute = 0
        #: work other threads hand to the runner thread (it owns the transactional producer)
        self._calls: list[Callable[[], None]] = []
        bootstrap = settings.bootstrap
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"{settings.app_id}-accounting",
                "client.id": worker_client_id(settings),
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                # a worker that dies without leaving hands its partitions over within ~10 s
                "session.timeout.ms": 10_000,
                "heartbeat.interval.ms": 2_000,
                "fetch.wait.max.ms": 20,
                "queued.max.messages.kbytes": 65536,
                "log_level": 3,
            }
        )
        self.producer = self._transactional_producer()

    def _transactional_producer(self) -> Producer:
        settings = self.settings
        return Producer(
            {
                "bootstrap.servers": settings.bootstrap,
                # one id per process (KIP-447): fencing of a zombie is the group generation's
                # job (send_offsets_to_transaction), so any number of workers can run side by
                # side; a dead instance's open transaction is aborted by the coordinator after
                # transaction.timeout.ms, which is kept short for that reason
                "transactional.id": f"{settings.app_id}-accounting-{INSTANCE_ID}",
                "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
                "linger.ms": 20,
                "batch.size": 1_000_000,
                "compression.type": "lz4",
                "log_level": 3,
            }
        )

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        ensure_changelog(self.settings)
        self.producer.init_transactions(30)
        self._restore_heads()
        self.consumer.subscribe(
            [self._events_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        """Supervise the loop: recover from transient faults, end the process on the rest."""
        backoff = Backoff(self.settings.retry_backoff_s, self.settings.retry_backoff_max_s)
        try:
            while not self._stopping.is_set():
                try:
                    self._loop(backoff)
                except BaseException as exc:
                    if self._stopping.is_set():
                        raise
                    if classify(exc) is not Fault.TRANSIENT:
                        self.error = exc
                        fatal("the accounting loop", exc)
                    self._recover(exc, backoff)
            self.checkpoint()
        except BaseException as exc:  # on the way out: a stop that could not checkpoint
            self.error = exc
            log.warning("accounting loop stopped without a last checkpoint: %s", describe(exc))
        finally:
            self.loop_state = STOPPED
            self.consumer.close()

    def _loop(self, backoff: Backoff) -> None:
        last_checkpoint = last_tick = time.monotonic()
        self.loop_state = RUNNING
        while not self._stopping.is_set():
            while self._calls:
                call = self._calls.pop(0)
                self._calls_in_txn.append(call)
                with self.lock:
                    call()
            messages = self.consumer.consume(BATCH_MAX, POLL_TIMEOUT_S)
            self._raise_callback_error()
            if self._rewind_needed:
                self._rewind()
                continue
            if messages:
                self._handle(messages)
            now = time.monotonic()
            self.loop_heartbeat = now
            self.metrics.last_batch_timestamp.set(time.time())
            if now - last_tick >= TICK_INTERVAL_S:
                last_tick = now
                self._tick()
            if now - last_checkpoint >= self.settings.checkpoint_interval_s:
                last_checkpoint = now
                self.checkpoint()
                backoff.reset()
                self.loop_state = RUNNING

    def _raise_callback_error(self) -> None:
        error, self._callback_error = self._callback_error, None
        if error is not None:
            raise error

    def _recover(self, exc: BaseException, backoff: Backoff) -> None:
        """Abort, rewind to the committed offsets, restore, back off; retried until it works."""
        self.loop_state = RECOVERING
        self.recoveries += 1
        self.last_fault = describe(exc)
        source = "redis" if "redis" in type(exc).__module__ else "kafka"
        self.metrics.recoveries.labels("accounting", source).inc()
        while not self._stopping.is_set():
            delay = backoff.next_delay()
            log.warning(
                "accounting: transient fault (%s): transaction aborted, rewinding to the "
                "committed offsets and restoring state; next attempt in %.1fs",
                self.last_fault,
                delay,
            )
            self._stopping.wait(delay)
            self.loop_heartbeat = time.monotonic()
            try:
                self._rewind()
                return
            except BaseException as again:
                if classify(again) is not Fault.TRANSIENT:
                    self.error = again
                    fatal("the accounting loop's recovery", again)
                self.last_fault = describe(again)

    def _rewind(self) -> None:
        """Undo everything since the last commit: abort the transaction, restore the owned
        partitions' state and the audit heads from Kafka, seek to the committed offsets."""
        self._rewind_needed = False
        self._abort()
        assignment = self.consumer.assignment()
        numbers = sorted(tp.partition for tp in assignment)
        restored = self._restore_partitions(numbers)
        self._restore_heads()
        committed = self.consumer.committed(assignment, timeout=30) if assignment else []
        with self.lock:
            self.engine.revoke_all()
            for state in restored.values():
                self.engine.assign(state)
        for tp in committed:
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            self.consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
        self.assigned = set(numbers)
        log.info("rewound partitions %s to their committed offsets", numbers)

    def _abort(self) -> None:
        """Abort the open transaction; its metrics are dropped and its calls queued again."""
        if self._in_txn:
            self.producer.abort_transaction(30)
            self._in_txn = False
        self._on_commit.clear()
        self._calls[:0] = self._calls_in_txn
        self._calls_in_txn = []
        self._dirty_partitions.clear()
        self._heads_dirty.clear()

    # --- the hot path --------------------------------------------------------------------

    def _handle(self, messages: list[Message]) -> None:
        by_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
        sources: dict[int, list[Message]] = defaultdict(list)
        decode = self.codecs.step_event.decode
        validate, bounds = validate_event, self.bounds
        now_s = time.time()
        for msg in messages:
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", error)
                continue
            try:
                event = decode(msg.value() or b"")
            except DecodeError as exc:
                self._dead_letter(msg, exc)
                continue
            kind, stamp_ms = msg.timestamp()
            record_us = None if kind == TIMESTAMP_NOT_AVAILABLE else stamp_ms * 1000
            rejection = validate(event, msg.key(), record_us, bounds)
            if rejection is not None:
                self._reject(msg, rejection)
                continue
            partition = msg.partition() or 0
            by_partition[partition].append(event)
            sources[partition].append(msg)
        if not self._evaluated_minute and by_partition and self.slos:
            earliest = min(e["start_time_us"] for evs in by_partition.values() for e in evs)
            self._evaluated_minute = earliest - earliest % MINUTE_US - MINUTE_US
        with self.lock:
            for partition, events in by_partition.items():
                result = self.engine.process(partition, events)
                self._dirty_partitions.add(partition)
                if result.rejected:
                    refused = {index for index, _ in result.rejected}
                    for index, rejection in result.rejected:
                        self._reject(sources[partition][index], rejection)
                    events = [e for i, e in enumerate(events) if i not in refused]
                # metrics first: a failing tool call and its session's end in one batch must
                # reach the degradation SLI in that order
                self._observe(result, events, now_s)
                self._publish(result)
            self._evaluate_slos()
        self.processed += len(messages)
        self._consumed = True
        self.last_batch_at = time.time()
        if not self.first_batch_at:
            self.first_batch_at = now_s

    def _observe(self, result: BatchResult, events: list[dict[str, Any]], now_s: float) -> None:
        """Metrics for a batch: summed here first, since a labelled update costs microseconds;
        counted when the batch's transaction commits."""
        m = self.metrics
        kinds: dict[str, int] = defaultdict(int)
        for event in events:
            kinds[event["kind"]] += 1
        duplicates = result.duplicates
        delay = max(0.0, now_s - events[-1]["start_time_us"] / 1e6) if events else None
        cost: dict[tuple[str, str, str], int] = defaultdict(int)
        tokens: dict[tuple[str, str, str, str], int] = defaultdict(int)
        unpriced: dict[str, int] = defaultdict(int)
        started: dict[tuple[str, str], int] = defaultdict(int)
        latencies: dict[tuple[str, str], list[float]] = defaultdict(list)
        tool_outcomes: dict[tuple[str, str], int] = defaultdict(int)
        for state, delta in result.deltas:
            kind = delta.kind
            if kind == "LLM_CALL":
                model = delta.name or "unknown"
                key = (state.tenant_id, state.agent_id, model)
                cost[key] += delta.cost_micros
                tokens[(*key, "input")] += delta.input_tokens
                tokens[(*key, "output")] += delta.output_tokens
                if delta.unpriced:
                    unpriced[model] += 1
            if kind in ("LLM_CALL", "TOOL_CALL"):
                latencies[(state.agent_id, kind)].append(delta.duration_us / 1e6)
            if kind == "TOOL_CALL":
                failed = delta.status not in ("OK", "UNKNOWN")
                if self.fallbacks is not None:
                    verdict = self.fallbacks.tool_call(state.session_id, delta.name or "", failed)
                    if verdict is not None:
                        self.slo_counts.add("degradation", delta.event_time_us, verdict)
                outcome = "error" if failed else ("retried_ok" if delta.retry else "ok")
                tool_outcomes[(state.agent_id, outcome)] += 1
            if delta.started:
                started[(state.tenant_id, state.agent_id)] += 1

        def count() -> None:
            for kind, n in kinds.items():
                m.events.labels(kind).inc(n)
            if duplicates:
                m.duplicates.inc(duplicates)
            if delay is not None:
                m.processing_delay.observe(delay)
            for key, micros in cost.items():
                if micros:
                    m.cost.labels(*key).inc(micros / 1e6)
            for tkey, n in tokens.items():
                m.tokens.labels(*tkey).inc(n)
            for model, n in unpriced.items():
                m.unpriced_calls.labels(model).inc(n)
            for skey, n in started.items():
                m.active_sessions.labels(*skey).inc(n)
            for okey, n in tool_outcomes.items():
                m.tool_calls.labels(*okey).inc(n)
            for lkey, seconds in latencies.items():
                child = m.step_latency.labels(*lkey)
                for value in seconds:
                    child.observe(value)

        self._on_commit.append(count)

    def _publish(self, result: BatchResult) -> None:
        if result.decisions:
            self._decide(result.decisions)
        for record in result.summaries:
            self._txn_produce(
                self.settings.topic("sessions"),
                record["session_id"].encode(),
                self.codecs.session_summary.encode(record),
            )
            self._on_commit.append(functools.partial(self._count_session, record))
            for slo, good in session_verdicts(record, self.slos).items():
                self.slo_counts.add(slo, record["end_time_us"], good)
            if self.fallbacks is not None:
                ended = self.fallbacks.session_ended(record["session_id"])
                if ended is not None:
                    self.slo_counts.add("degradation", record["end_time_us"], ended)
        if self.on_result is not None:
            self.on_result(result)

    def _count_session(self, record: dict[str, Any]) -> None:
        m = self.metrics
        tenant, agent = record["tenant_id"], record["agent_id"]
        m.sessions.labels(tenant, agent, record["status"], record["error_type"] or "").inc()
        m.session_latency.labels(tenant, agent).observe(
            max(0, record["end_time_us"] - record["start_time_us"]) / 1e6
        )
        m.active_sessions.labels(tenant, agent).dec()
        scores = [s for name, s in record["evaluations"].items() if name != "output"]
        if scores:
            good = min(scores) >= self.settings.quality_threshold
            m.session_quality.labels(tenant, agent, "good" if good else "bad").inc()
        compliant = "compliant" if record["violations"] == 0 else "violating"
        m.session_compliance.labels(tenant, agent, compliant).inc()

    def _decide(self, batch: list[Decided]) -> None:
        """Publish the batch's decisions at once (signed, one Redis round trip), then audit."""
        decisions = []
        wall_us = time.time_ns() // 1000
        for decided in batch:
            outcome = decided.outcome
            expires_at_us = decision_expiry(decided.issued_at_us, outcome.ttl_s, wall_us)
            decisions.append(
                make_decision(
                    target=outcome.target,
                    tenant_id=decided.tenant_id,
                    action=outcome.action,
                    policy_id=outcome.policy_id,
                    policy_version=decided.policy_version,
                    epoch=decided.epoch,
                    issued_at_us=decided.issued_at_us,
                    expires_at_us=expires_at_us,
                    reason=outcome.reason,
                    parameters=outcome.parameters,
                    trigger_event_id=decided.trigger_event_id,
                )
            )
        for decided, signed in zip(batch, self.publisher.publish_many(decisions), strict=True):
            outcome = decided.outcome
            self._on_commit.append(
                self.metrics.decisions.labels(outcome.action, outcome.policy_id).inc
            )
            record = self.chains.append(
                decided.tenant_id,
                "DECISION",
                decided.issued_at_us,
                outcome.target,
                f"{outcome.action} by {outcome.policy_id}: {outcome.reason}",
                {
                    "decision_id": signed["decision_id"],
                    "action": outcome.action,
                    "policy_id": outcome.policy_id,
                    "policy_version": str(decided.policy_version),
                    "epoch": str(decided.epoch),
                    "trigger_event_id": decided.trigger_event_id or "",
                },
                record_id=signed["decision_id"],
            )
            self._audit(record)

    def audit_policy_change(
        self,
        previous: Any,
        current: Any,
        kind: str = "POLICY_CHANGE",
        actor: str = "governor-worker",
        summary_prefix: str = "",
        extra: dict[str, str] | None = None,
    ) -> None:
        """Audit a policy change (or, with kind ROLLBACK, an operator's rollback) in every
        tenant's chain (called from the app's event loop)."""

        def write() -> None:
            tenants = sorted(self.chains.heads) or ["*"]
            for tenant in tenants:
                record = self.chains.append(
                    tenant,
                    kind,
                    self.engine.watermark_us or time.time_ns() // 1000,
                    str(self.settings.policies_dir),
                    f"{summary_prefix}policies v{previous.version} ({previous.digest}) -> "
                    f"v{current.version} ({current.digest})",
                    {
                        "from_version": str(previous.version),
                        "to_version": str(current.version),
                        "digest": current.digest,
                        "policies": ",".join(p.id for p in current.policies),
                        **(extra or {}),
                    },
                    actor=actor,
                )
                self._audit(record)

        self.submit(write)

    def submit(self, call: Callable[[], None]) -> None:
        """Run ``call`` on the runner thread, which owns the transactional producer and the
        audit chains (other threads must not touch either)."""
        self._calls.append(call)

    def audit(
        self,
        tenant_id: str,
        kind: str,
        time_us: int,
        subject: str,
        summary: str,
        details: dict[str, str],
        record_id: str | None = None,
    ) -> None:
        """Append to a tenant's audit chain from any thread (written with the next batch)."""
        self.submit(
            lambda: self._audit(
                self.chains.append(
                    tenant_id, kind, time_us, subject, summary, details, record_id=record_id
                )
            )
        )

    def _audit(self, record: dict[str, Any]) -> None:
        self._txn_produce(
            self.settings.topic("audit"),
            record["tenant_id"].encode(),
            self.codecs.audit_record.encode(record),
        )
        self._heads_dirty.add(record["tenant_id"])

    def _reject(self, msg: Message, rejection: Rejection) -> None:
        self._dead_letter(msg, RejectedRecord(rejection), stage="VALIDATE")
        self._on_commit.append(self.metrics.rejected_events.labels(rejection.reason).inc)

    def _dead_letter(self, msg: Message, exc: ValueError, stage: str = "DECODE") -> None:
        source = SourceRecord(
            topic=msg.topic() or "",
            partition=msg.partition() or 0,
            offset=msg.offset() or 0,
            key=msg.key(),
            value=msg.value(),
            headers=header_pairs(msg.headers()),
            timestamp_ms=msg.timestamp()[1],
        )
        letter = dead_letter(
            source, exc, stage, codec=self.codecs.step_event, keep_raw=self.settings.dlq_keep_raw
        )
        headers = list(letter.headers)
        if isinstance(exc, RejectedRecord):
            headers.append(("governor.reject.reason", exc.rejection.reason.encode()))
        self._txn_produce(
            self.settings.topic("events.dlq"), letter.key, letter.value, headers=headers
        )
        self._on_commit.append(self.metrics.dead_letters.labels(type(exc).__name__).inc)

    def _tick(self) -> None:
        with self.lock:
            for partition in list(self.engine.partitions):
                result = self.engine.tick(partition)
                if result.summaries or self.engine.partitions[partition].dirty:
                    self._dirty_partitions.add(partition)
                self._publish(result)
        self._evaluate_slos()

    def use_slos(self, slos: list[Slo]) -> None:
        self.slos = slos
        degradation = next((s for s in slos if s.name == "degradation"), None)
        self.fallbacks = FallbackTracker(degradation) if degradation else None

    def _evaluate_slos(self) -> None:
        """Evaluate the burn-rate alerts at the end of every event-time minute passed since the
        last evaluation, so a replay fires and resolves the alerts the live run did."""
        watermark = self.engine.watermark_us
        if not self.slos or not watermark:
            return
        current = watermark - watermark % MINUTE_US
        first = self._evaluated_minute + MINUTE_US if self._evaluated_minute else current
        for minute in range(max(first, current - 3 * 86400 * 1_000_000), current + 1, MINUTE_US):
            self._evaluate_at(min(minute + MINUTE_US - 1, watermark))
        self._evaluated_minute = current
        self.slo_counts.expire(watermark)

    def _evaluate_at(self, now: int) -> None:
        for change in evaluate(self.slo_counts, self.slos, now, self.firing):
            if change.firing:
                self._firing_since[change.alert_id] = now
            started = self._firing_since.get(change.alert_id, now)
            state = "FIRING" if change.firing else "RESOLVED"
            alert = {
                "alert_id": change.alert_id,
                "kind": "SLO_BURN",
                "state": state,
                "severity": change.severity,
                "tenant_id": None,
                "agent_id": None,
                "slo": change.slo,
                "layer": None,
                "summary": f"{change.slo} SLO burning its error budget {change.burn_long:.1f}x "
                f"({change.tier} burn) — {state.lower()}",
                "description": f"error ratio {change.error_ratio:.2%} over the long window",
                "event_time_us": now,
                "started_at_us": started,
                "labels": {"tier": change.tier},
                "values": {"burn_long": change.burn_long, "burn_short": change.burn_short,
                           "error_ratio": change.error_ratio},
                "runbook_url": RUNBOOK_URL.format(slo=change.slo.capitalize()),
            }  # fmt: skip
            self._txn_produce(
                self.settings.topic("alerts"), change.alert_id.encode(),
                self.codecs.alert.encode(alert),
            )  # fmt: skip
            log.warning("alert %s %s: %s", change.alert_id, state, alert["summary"])

    # --- transactions --------------------------------------------------------------------

    def _txn_produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        if not self._in_txn:
            self.producer.begin_transaction()
            self._in_txn = True
        kwargs: dict[str, Any] = {}
        if partition is not None:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = headers
        deadline = time.monotonic() + PRODUCE_STALL_S
        while True:
            try:
                self.producer.produce(topic, value, key, **kwargs)
                return
            except BufferError:
                # the broker takes nothing: a transient fault once it has lasted this long
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"producer queue full for {PRODUCE_STALL_S:.0f}s writing {topic}"
                    ) from None
                self.producer.poll(0.05)

    def checkpoint(self) -> None:
        """Write dirty state, then commit it with the consumed offsets in one transaction."""
        with self.lock:
            for partition in sorted(self._dirty_partitions):
                part = self.engine.partitions.get(partition)
                if part is None:
                    continue
                for key, value in checkpoint_records(part):
                    self._txn_produce(self._changelog, key, value, partition=partition)
            if self._dirty_partitions and SLO_STATE_PARTITION in self.engine.partitions:
                self._txn_produce(
                    self._changelog, SLO_STATE_KEY, self._slo_state(), partition=SLO_STATE_PARTITION
                )
            self._dirty_partitions.clear()
            for tenant in sorted(self._heads_dirty):
                head = self.chains.heads[tenant]
                value = json.dumps({"chain_seq": head.chain_seq, "hash": head.hash}).encode()
                self._txn_produce(self.settings.topic("audit.heads"), tenant.encode(), value)
            self._heads_dirty.clear()
        if not self._in_txn and not self._consumed:
            return
        assignment = self.consumer.assignment()
        positions = [tp for tp in self.consumer.position(assignment) if tp.offset >= 0]
        if not self._in_txn and not positions:
            return
        if not self._in_txn:
            self.producer.begin_transaction()
            self._in_txn = True
        if positions:
            self.producer.send_offsets_to_transaction(
                positions, self.consumer.consumer_group_metadata(), 30
            )
        self.producer.commit_transaction(60)
        self._in_txn = False
        self._consumed = False
        self._calls_in_txn = []
        counts, self._on_commit = self._on_commit, []
        for count in counts:
            count()
        self.publisher.flush()

    def _slo_state(self) -> bytes:
        return encode_slo_state(
            self.slo_counts,
            self.firing,
            self._firing_since,
            self._evaluated_minute,
            self.fallbacks,
        )

    def _use_slo_state(self, value: bytes | None) -> None:
        """Put the checkpointed SLO state in force (None: start the windows afresh)."""
        if value is None:
            self.slo_counts = SloCounts()
            self.firing, self._firing_since, self._evaluated_minute = set(), {}, 0
            if self.fallbacks is not None:
                self.fallbacks.pending = {}
            return
        state = decode_slo_state(value)
        self.slo_counts = state.counts
        self.firing, self._firing_since = state.firing, state.firing_since
        self._evaluated_minute = state.evaluated_minute
        if self.fallbacks is not None:
            self.fallbacks.pending = state.pending_fallbacks

    # --- rebalancing ---------------------------------------------------------------------
    # librdkafka calls these from inside consume(); an error is kept and raised after it
    # returns, where the loop's fault handling sees it

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            self.loop_state = RESTORING
            started = time.monotonic()
            numbers = [tp.partition for tp in partitions]
            restored = self._restore_partitions(numbers)
            with self.lock:
                for state in restored.values():
                    self.engine.assign(state)
            self.assigned |= set(numbers)
            log.info(
                "assigned partitions %s: restored %d sessions in %.2fs",
                sorted(restored),
                sum(len(s.sessions) for s in restored.values()),
                time.monotonic() - started,
            )
            self.loop_state = RUNNING
            self.ready.set()
        except BaseException as exc:
            self._callback_error = exc

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            self.checkpoint()
        except BaseException as exc:
            # the transaction spans every partition: abort it, and rewind what stays ours
            log.warning("checkpoint on revoke failed (%s): aborting", describe(exc))
            try:
                self._abort()
            except BaseException as abort_error:
                self._callback_error = abort_error
            self._rewind_needed = True
        self._drop(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """The group went on without us (a pause past the session timeout): nothing of the
        open transaction may be committed, and the partitions are someone else's now."""
        log.warning(
            "partitions %s lost to the group (paused past the session timeout?): aborting the "
            "open transaction and rejoining",
            sorted(tp.partition for tp in partitions),
        )
        try:
            self._abort()
        except BaseException as exc:
            self._callback_error = exc
        self._rewind_needed = True
        self._drop(partitions)

    def _drop(self, partitions: list[TopicPartition]) -> None:
        with self.lock:
            for tp in partitions:
                self.engine.revoke(tp.partition)
                self.assigned.discard(tp.partition)

    def _restore_partitions(self, numbers: list[int]) -> dict[int, PartitionState]:
        """Rebuild the partitions' state from the changelog, streaming (nothing held twice)."""
        states = {p: PartitionState(p) for p in numbers}
        slo_state: list[bytes | None] = [None]

        def apply(partition: int, record: Record) -> None:
            _offset, key, value = record
            if key is None:
                return
            if key == SLO_STATE_KEY:
                slo_state[0] = value
            else:
                restore_record(states[partition], key, value)

        scan_partitions(self.settings, self._changelog, numbers, apply)
        for state in states.values():
            state.dirty.clear()
        if SLO_STATE_PARTITION in states:
            with self.lock:
                self._use_slo_state(slo_state[0])
        return states

    def _restore_heads(self) -> None:
        heads: dict[str, ChainHead] = {}
        heads_topic = self.settings.topic("audit.heads")
        for _offset, key, value in read_partitions(self.settings, heads_topic, [0])[0]:
            if key is None:
                continue
            if value is None:
                heads.pop(key.decode(), None)
            else:
                data = json.loads(value)
                heads[key.decode()] = ChainHead(int(data["chain_seq"]), str(data["hash"]))
        self.chains = AuditChains(heads)
