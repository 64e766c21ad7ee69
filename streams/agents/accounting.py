"""Stage 1, the session stage: the worker's hot path, on its own thread.

Why not a Faust agent: Faust's per-event stream machinery tops out at ~13-16k events/s on two
cores before any work is done (see the issue notes); the hot path therefore consumes in batches
with confluent-kafka (consumer group ``<app_id>-accounting``) on the transactional loop of
:mod:`streams.processor.loop`, folds in memory (:class:`streams.engine.Engine`) and, every
``checkpoint_interval_s``, writes the dirty state, the session summaries, dead letters, the
scope stage's items and the consumed offsets in ONE Kafka transaction. Decisions are published
at once on a separate producer (they must not wait for a checkpoint); their ids and epochs are
deterministic, so a replay re-publishes the same decisions and clients skip them.

Session-scoped policies are decided here. Everything that spans sessions on several partitions
(agent and tenant budgets, concurrency, agent step rates, degradation) and every tenant's audit
chain belong to the scope stage (:mod:`streams.processor.scope_stage`): each applied event
becomes a :class:`~streams.pipeline.scope.ScopeItem` on ``<app>-scope-deltas``, partitioned by
tenant, written in the same transaction as the offsets (exactly once end to end).

A record that decodes but carries impossible values is dead-lettered (stage VALIDATE) before
anything counts it.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message, TopicPartition

from streams.codec import Codecs, DecodeError, SourceRecord, dead_letter, header_pairs
from streams.engine import (
    BatchResult,
    Decided,
    Engine,
    PartitionState,
    checkpoint_records,
    restore_record,
)
from streams.metrics import WorkerMetrics
from streams.pipeline.scope import (
    IDLE_REPORT_S,
    AuditRequest,
    ScopeDelta,
    ScopeItem,
    SourceMark,
    scope_partition,
)
from streams.pipeline.slo import Slo
from streams.pipeline.validate import IngestBounds, Rejection, validate_event
from streams.processor.loop import (
    BATCH_MAX,
    POLL_TIMEOUT_S,
    RECOVERING,
    RESTORING,
    RUNNING,
    STARTING,
    STOPPED,
    TICK_INTERVAL_S,
    TransactionalLoop,
)
from streams.processor.slo_state import SLO_STATE_KEY
from streams.publisher import (
    DEFAULT_DECISION_TTL_S,
    DecisionPublisher,
    decision_expiry,
    publish_decided,
)
from streams.settings import Settings
from streams.topics import (
    Record,
    admin_client,
    ensure_state_topic,
    scope_deltas_topic,
)

__all__ = [
    "BATCH_MAX",
    "DEFAULT_DECISION_TTL_S",
    "POLL_TIMEOUT_S",
    "RECOVERING",
    "RESTORING",
    "RUNNING",
    "STARTING",
    "STOPPED",
    "TICK_INTERVAL_S",
    "AccountingRunner",
    "decision_expiry",
    "publish_decided",
]

log = logging.getLogger("governor.accounting")

#: items per scope-deltas record (a record stays far below the broker's 1 MB limit)
SCOPE_CHUNK = 1000


class RejectedRecord(ValueError):
    """A StepEvent that decodes but carries impossible values (the dead letter's exception)."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(f"{rejection.reason}: {rejection.detail}")
        self.rejection = rejection


def changelog_topic(settings: Settings) -> str:
    return settings.topic(f"{settings.app_id}-state")


def ensure_changelog(settings: Settings) -> None:
    # one changelog partition per events partition: the events topic (a replay topic, say) may
    # have more partitions than this worker's setting
    events = admin_client(settings).list_topics(timeout=10).topics.get(settings.events_source_topic)
    partitions = max(settings.event_partitions, len(events.partitions) if events else 0)
    ensure_state_topic(settings, changelog_topic(settings), partitions)


class AccountingRunner(TransactionalLoop):
    """Consume, fold, decide, publish, checkpoint: see the module docstring."""

    stage = "accounting"

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        codecs: Codecs,
        publisher: DecisionPublisher,
        metrics: WorkerMetrics,
        on_result: Callable[[BatchResult], None] | None = None,
    ) -> None:
        super().__init__(
            settings,
            settings.events_source_topic,
            f"{settings.app_id}-accounting",
            changelog_topic(settings),
        )
        self.engine = engine
        self.codecs = codecs
        self.publisher = publisher
        self.metrics = metrics
        self.on_result = on_result
        self._events_topic = settings.events_source_topic
        self._dirty_partitions: set[int] = set()
        self.bounds = IngestBounds.of(settings)
        #: for the scope stage, written with the next checkpoint: items by source partition,
        #: audit records from other threads (no source), and what each owned source last
        #: reported about itself
        self._scope_items: dict[int, list[ScopeItem]] = defaultdict(list)
        self._scope_audits: list[ScopeItem] = []
        self._reported: dict[int, SourceMark] = {}
        #: when each source's mark was last sent (monotonic): "read to its end" is said again
        self._reported_at: dict[int, float] = {}
        #: committed offset of each partition when it was assigned (its position until the
        #: first record is consumed)
        self._start_offsets: dict[int, int] = {}
        self._scope_topic = scope_deltas_topic(settings)
        self._scope_partitions = settings.event_partitions
        self._scope_since = 0.0

    # --- lifecycle -----------------------------------------------------------------------

    def _prepare(self) -> None:
        ensure_changelog(self.settings)
        ensure_scope_deltas(self.settings)

    def _count_recovery(self, exc: BaseException) -> None:
        source = "redis" if "redis" in type(exc).__module__ else "kafka"
        self.metrics.recoveries.labels("accounting", source).inc()

    def _heartbeat(self) -> None:
        self.metrics.last_batch_timestamp.set(time.time())

    def _aborted(self) -> None:
        self._dirty_partitions.clear()
        self._scope_items.clear()
        self._scope_audits.clear()
        self._reported.clear()

    def _checkpoint_due(self) -> bool:
        """Commit early while the scope stage waits for items: tenant decisions are only as
        quick as this commit (its readers see committed records only); and when a partition
        read to its end is to be reported so again (the scope stage trusts that only fresh)."""
        now = time.monotonic()
        if (
            self._scope_items
            and self.engine.policies.spans_sessions
            and now - self._scope_since >= self.settings.scope_commit_interval_s
        ):
            return True
        return any(
            mark.idle and now - self._reported_at.get(p, 0.0) >= IDLE_REPORT_S
            for p, mark in self._reported.items()
        )

    def _committed(self) -> None:
        self._scope_since = time.monotonic()
        self.publisher.flush()

    # --- the hot path --------------------------------------------------------------------

    def _handle(self, messages: list[Message]) -> None:
        by_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
        sources: dict[int, list[Message]] = defaultdict(list)
        decode = self.codecs.step_event.decode
        validate, bounds = validate_event, self.bounds
        now_s = time.time()
        for msg in messages:
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
        with self.lock:
            for partition, events in by_partition.items():
                offsets = [m.offset() or 0 for m in sources[partition]]
                result = self.engine.process(partition, events, offsets)
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
        for item in result.scope_items:
            if not self._scope_items:
                self._scope_since = time.monotonic()
            self._scope_items[item.source].append(item)
        for record in result.summaries:
            self._txn_produce(
                self.settings.topic("sessions"),
                record["session_id"].encode(),
                self.codecs.session_summary.encode(record),
            )
            self._on_commit.append(functools.partial(self._count_session, record))
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
        """Publish the batch's decisions at once (signed, one Redis round trip); their audit
        records travel to the scope stage with the batch's items."""
        publish_decided(self.publisher, batch)
        for decided in batch:
            outcome = decided.outcome
            self._on_commit.append(
                self.metrics.decisions.labels(outcome.action, outcome.policy_id).inc
            )
            if decided.bypass is not None:
                self._on_commit.append(
                    self.metrics.client_bypass.labels(decided.bypass.why, outcome.policy_id).inc
                )

    #: the scope stage of this worker, which owns the tenants' audit chains (set by the app)
    scope: Any = None

    def audit_policy_change(
        self,
        previous: Any,
        current: Any,
        kind: str = "POLICY_CHANGE",
        actor: str = "governor-worker",
        summary_prefix: str = "",
        extra: dict[str, str] | None = None,
    ) -> None:
        """Audit a policy change (or, with kind ROLLBACK, an operator's rollback) in the chain
        of every tenant this worker's scope stage owns (called from the app's event loop)."""
        if self.scope is not None:
            self.scope.audit_policy_change(
                previous, current, kind, actor, summary_prefix, extra or {}
            )

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
        """Append to a tenant's audit chain from any thread: the record goes to the chain's
        owner (the scope stage of the tenant's partition) with the next checkpoint."""
        request = AuditRequest(kind, time_us, subject, summary, dict(details), record_id)
        item = ScopeItem(0, -1, -1, 0, time_us, tenant_id, "", "", audit=request)
        self.submit(lambda: self._scope_audits.append(item))

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

    @property
    def slos(self) -> list[Slo]:
        return self.engine.slos

    def use_slos(self, slos: list[Slo]) -> None:
        """The SLIs to measure per session; the scope stage counts and alerts on them."""
        self.engine.use_slos(slos)
        if self.scope is not None:
            self.scope.use_slos(slos)

    # --- checkpoints -----------------------------------------------------------------------

    def _write_state(self) -> None:
        for partition in sorted(self._dirty_partitions):
            part = self.engine.partitions.get(partition)
            if part is None:
                continue
            for key, value in checkpoint_records(part):
                self._txn_produce(self._changelog, key, value, partition=partition)
        self._dirty_partitions.clear()
        self._write_scope_deltas()

    def _write_scope_deltas(self) -> None:
        """The scope stage's items of this transaction, by tenant partition, and what each
        owned source partition says about itself (to every scope partition: each one merges
        all sources)."""
        marks = self._source_marks()
        now = time.monotonic()
        # a mark is sent when it changes, and "read to its end" again every IDLE_REPORT_S:
        # the scope stage counts a source quiet only while its owner keeps saying so
        changed = {
            p: m
            for p, m in marks.items()
            if self._reported.get(p) != m
            or (m.idle and now - self._reported_at.get(p, 0.0) >= IDLE_REPORT_S)
        }
        count = self._scope_partitions
        for source in sorted(set(self._scope_items) | set(changed)):
            mark = marks.get(source)
            if mark is None:
                continue  # no longer ours: its new owner reports it
            grouped: dict[int, list[ScopeItem]] = defaultdict(list)
            for item in self._scope_items.get(source, ()):
                grouped[scope_partition(item.tenant_id, count)].append(item)
            targets = range(count) if source in changed else sorted(grouped)
            for target in targets:
                items = grouped.get(target, [])
                for start in range(0, max(1, len(items)), SCOPE_CHUNK):
                    chunk = tuple(items[start : start + SCOPE_CHUNK])
                    delta = ScopeDelta(source, mark, chunk)
                    self._txn_produce(self._scope_topic, None, delta.encode(), partition=target)
            self._reported[source] = mark
            self._reported_at[source] = now
        if self._scope_audits:
            grouped = defaultdict(list)
            for item in self._scope_audits:
                grouped[scope_partition(item.tenant_id, count)].append(item)
            for target, items in sorted(grouped.items()):
                delta = ScopeDelta(-1, SourceMark(0, True), tuple(items))
                self._txn_produce(self._scope_topic, None, delta.encode(), partition=target)
        self._scope_items.clear()
        self._scope_audits.clear()

    def _source_marks(self) -> dict[int, SourceMark]:
        """Each restored partition's watermark, and whether everything it held was read.

        The watermark told is kept below the deadline of a session the tick has still to close
        for silence: its TIMEOUT item comes at that deadline, and the merge must not have gone
        past it. Such a partition is not idle either (it has an item to send)."""
        marks = {}
        topic = self._events_topic
        assignment = [TopicPartition(topic, p) for p in sorted(self.assigned)]
        positions = {tp.partition: tp.offset for tp in self.consumer.position(assignment)}
        for partition in sorted(self.assigned):
            part = self.engine.partitions.get(partition)
            watermark = part.watermark_us if part is not None else 0
            deadline = self.engine.next_timeout_us(partition)
            closing = False
            if deadline is not None and deadline < watermark:
                watermark, closing = deadline - 1, True
            tp = TopicPartition(topic, partition)
            # nothing consumed since the assignment: the position is where it started
            position = positions.get(partition, -1)
            if position < 0:
                position = self._start_offsets.get(partition, -1)
            marks[partition] = SourceMark(
                watermark, not closing and self._read_to_end(tp, position)
            )
        return marks

    def _read_to_end(self, tp: TopicPartition, position: int) -> bool:
        """Whether ``position`` is at the partition's end. The last fetch's high watermark
        only says "not yet" for sure (it only grows); "at the end" is asked of the broker,
        since a fetch that has not come back for a while (a busy process) would make a
        partition look read to its end."""
        low, high = self.consumer.get_watermark_offsets(tp, cached=True)
        if high >= 0 and max(position, low) < high:
            return False
        low, high = self.consumer.get_watermark_offsets(tp, timeout=5, cached=False)
        return high >= 0 and max(position, low) >= high

    # --- partitions ------------------------------------------------------------------------

    def _restore(self, numbers: list[int]) -> None:
        """Rebuild the partitions' state from the changelog, streaming (nothing held twice)."""
        states = {p: PartitionState(p) for p in numbers}

        def apply(partition: int, record: Record) -> None:
            _offset, key, value = record
            if key is None:
                return
            # an older worker's SLO record: the scope stage keeps that state now
            if key != SLO_STATE_KEY:
                restore_record(states[partition], key, value)

        self._scan_changelog(numbers, apply)
        with self.lock:
            for state in states.values():
                state.dirty.clear()
                self.engine.assign(state)
        # a new owner reports every source it took, even one with nothing to read
        for partition in numbers:
            self._reported.pop(partition, None)
        if numbers:
            taken = [TopicPartition(self._events_topic, p) for p in numbers]
            for tp in self.consumer.committed(taken, timeout=30):
                self._start_offsets[tp.partition] = tp.offset
        log.info(
            "restored %d sessions of partitions %s",
            sum(len(s.sessions) for s in states.values()),
            numbers,
        )

    def _forget(self, partition: int) -> None:
        self.engine.revoke(partition)
        self._reported.pop(partition, None)

    def _forget_all(self) -> None:
        self.engine.revoke_all()
        self._reported.clear()


def ensure_scope_deltas(settings: Settings) -> None:
    # read within seconds by the scope stage; a day covers any outage worth waiting out
    ensure_state_topic(
        settings,
        scope_deltas_topic(settings),
        settings.event_partitions,
        retention_ms=24 * 3600 * 1000,
    )
