"""Stage 2, the scope stage: tenant- and agent-scoped policies and the audit chains.

It consumes ``<app>-scope-deltas`` (written by the session stage inside its transactions,
partitioned by tenant) as its own consumer group ``<app>-scope``, on the same transactional
loop as stage 1 (:mod:`streams.processor.loop`): every worker process runs both stages, and
Kafka's group protocol spreads the tenants' partitions over them. The merge, the state and the
decisions are pure (:mod:`streams.pipeline.scope`); this module is the I/O around them:
decisions are published at once, audit records, chain heads and the changelog go out in the
stage's transaction with its offsets.

Why a transactional loop and not Faust tables: the stage must be exact under redelivery and
own hash chains, where a record written twice or lost breaks verification; Faust's table
changelogs are written outside any transaction with the offsets. The stage is low volume (one
record per source partition and commit, items for a tenant's steps), so the same loop as stage 1
costs little and gives end-to-end exactly-once with one mechanism to reason about.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Message

from streams.audit import (
    AuditRecord,
    ChainHead,
    audit_signing_key,
    due_for_signature,
    sign_head,
    sign_record,
)
from streams.client.reservations import session_closure, worker_spend_fields
from streams.codec import Codecs
from streams.metrics import WorkerMetrics
from streams.pipeline.policy import PolicySet
from streams.pipeline.scope import (
    FLEET,
    AuditRequest,
    Decided,
    ScopeCore,
    ScopeDelta,
    ScopeResult,
    ScopeState,
    checkpoint_records,
    finish_restore,
    restore_record,
    scope_partition,
)
from streams.pipeline.slo import Slo, SloAlerting
from streams.processor.loop import TransactionalLoop
from streams.publisher import DecisionPublisher, publish_decided
from streams.settings import Settings
from streams.topics import Record, ensure_state_topic, scope_deltas_topic

log = logging.getLogger("governor.scope")

#: the chain of fleet-wide records (policy changes), kept whether or not any tenant has one
FLEET_CHAIN = FLEET


def scope_changelog_topic(settings: Settings) -> str:
    return settings.topic(f"{settings.app_id}-scope-state")


class ScopeRunner(TransactionalLoop):
    """Merge, decide, chain, checkpoint the scope partitions this worker owns."""

    stage = "scope"

    def __init__(
        self,
        settings: Settings,
        policies: PolicySet,
        codecs: Codecs,
        publisher: DecisionPublisher,
        metrics: WorkerMetrics,
        source_partitions: int,
    ) -> None:
        super().__init__(
            settings,
            scope_deltas_topic(settings),
            f"{settings.app_id}-scope",
            scope_changelog_topic(settings),
        )
        self.core = ScopeCore(
            policies,
            source_partitions,
            hourly_retention_s=settings.hourly_retention_s,
            max_hold_s=settings.scope_max_hold_s,
            partitions=settings.event_partitions,
            grace_s=settings.scope_grace_s,
        )
        self.codecs = codecs
        self.publisher = publisher
        #: signs every chain head and every audit_sign_every-th record (streams.audit)
        self.audit_key = audit_signing_key(settings, publisher.key)
        self.metrics = metrics
        self._dirty: set[int] = set()
        self._heads_dirty: set[str] = set()
        #: work that needs the partitions (a policy change's audit), run once they are ours
        self._after_ready: list[Callable[[], None]] = []

    def use_policies(self, policies: PolicySet) -> None:
        """Put a new policy set in force (called under ``lock``)."""
        self.core.policies = policies

    def use_slos(self, slos: list[Slo]) -> None:
        with self.lock:
            self.core.slos = slos

    def slo_state(self) -> tuple[SloAlerting, int] | None:
        """The fleet's alerting state and its event time, if this worker holds it."""
        with self.lock:
            state = self.core.partitions.get(self.core.fleet_partition)
            if state is None:
                return None
            return state.alerting, state.position_us

    # --- lifecycle -----------------------------------------------------------------------

    def _prepare(self) -> None:
        ensure_scope_changelog(self.settings)

    def _count_recovery(self, exc: BaseException) -> None:
        source = "redis" if "redis" in type(exc).__module__ else "kafka"
        self.metrics.recoveries.labels("scope", source).inc()

    def _aborted(self) -> None:
        self._dirty.clear()
        self._heads_dirty.clear()

    def _committed(self) -> None:
        self.publisher.flush()

    # --- the stage -----------------------------------------------------------------------

    def _handle(self, messages: list[Message]) -> None:
        wall = time.time()
        touched: set[int] = set()
        with self.lock:
            for msg in messages:
                partition = msg.partition() or 0
                try:
                    delta = ScopeDelta.decode(msg.value() or b"")
                except (ValueError, TypeError, KeyError, IndexError) as exc:
                    # written by our own stage 1 in a transaction: a record that does not
                    # decode is a version this worker does not know (a newer worker wrote it)
                    raise RuntimeError(
                        f"scope delta at {msg.topic()}[{partition}]@{msg.offset()} does not "
                        f"decode ({exc}): run one worker version per deployment"
                    ) from exc
                if delta.source < 0:
                    self._apply_audits(partition, delta)
                else:
                    self.core.offer(partition, delta, wall)
                self._dirty.add(partition)
                touched.add(partition)
            for partition in sorted(touched):
                self._release(partition, wall)

    def _apply_audits(self, partition: int, delta: ScopeDelta) -> None:
        """Audit records from other threads of a worker (no order to keep): chained now."""
        for item in delta.items:
            if item.audit is not None:
                self._audit(self.core.audit(partition, item.tenant_id, item.audit))

    def _release(self, partition: int, wall: float) -> None:
        result = self.core.release(partition, wall)
        if result.released or result.decisions or result.alerts:
            self._publish(result)
            self._dirty.add(partition)

    def _publish(self, result: ScopeResult) -> None:
        if result.spent or result.closed:
            self._reconcile_reservations(result)
        if result.decisions:
            publish_decided(self.publisher, result.decisions)
            for decided in result.decisions:
                self._count_decision(decided)
        for record in result.audits:
            self._audit(record)
        for alert in result.alerts:
            self._txn_produce(
                self.settings.topic("alerts"),
                alert["alert_id"].encode(),
                self.codecs.alert.encode(alert),
            )
            log.warning("alert %s %s: %s", alert["alert_id"], alert["state"], alert["summary"])
        m = self.metrics
        released, forced = result.released, result.forced
        self._on_commit.append(lambda: m.scope_items.inc(released))
        if forced:
            log.warning(
                "scope stage: %d items released without waiting for a silent source partition",
                forced,
            )
            self._on_commit.append(lambda: m.scope_forced.inc(forced))

    def _reconcile_reservations(self, result: ScopeResult) -> None:
        """The worker's spend of each budget hour that changed, and the open reservations and
        open-session places of the sessions it closed, to the clients' reservations in Redis
        (best effort, through the decision mirror: enforcement never waits on Redis)."""
        policies, prefix = self.core.policies, self.settings.redis_key_prefix
        spend = worker_spend_fields(policies, prefix, result.spent, self._spend_of)
        closures = [
            closure
            for tenant, agent, session in result.closed
            if (closure := session_closure(policies, prefix, tenant, agent, session))
        ]
        self.publisher.mirror.put_reservations(spend, closures)

    def _spend_of(self, tenant: str, scope: str, hour: int) -> int:
        state = self.core.partitions.get(scope_partition(tenant, self.settings.event_partitions))
        return 0 if state is None else state.spend.get((scope, hour), 0)

    def _count_decision(self, decided: Decided) -> None:
        outcome = decided.outcome
        self._on_commit.append(self.metrics.decisions.labels(outcome.action, outcome.policy_id).inc)

    def _audit(self, record: AuditRecord) -> None:
        if due_for_signature(record["chain_seq"], self.settings.audit_sign_every):
            record = sign_record(record, self.audit_key)
        self._txn_produce(
            self.settings.topic("audit"),
            record["tenant_id"].encode(),
            self.codecs.audit_record.encode(record),
        )
        self._heads_dirty.add(record["tenant_id"])

    def _tick(self) -> None:
        wall = time.time()
        with self.lock:
            for partition in list(self.core.partitions):
                self._release(partition, wall)
                self.core.expire(partition)
                if self.core.partitions[partition].dirty:
                    self._dirty.add(partition)
            pending = sum(len(state.held) for state in self.core.partitions.values())
        self.metrics.scope_pending.set(pending)

    def audit_policy_change(
        self,
        previous: Any,
        current: Any,
        kind: str,
        actor: str,
        summary_prefix: str,
        extra: dict[str, str],
    ) -> None:
        """A policy change in the chain of every tenant whose partition this worker owns
        (every worker sees the change; each chain gets it once, from its owner)."""

        def write() -> None:
            if not self.ready.is_set():
                # not assigned yet: written once the partitions are restored
                self._after_ready.append(write)
                return
            fleet = scope_partition(FLEET_CHAIN, self.settings.event_partitions)
            for partition, state in sorted(self.core.partitions.items()):
                tenants = set(state.heads) | ({FLEET_CHAIN} if partition == fleet else set())
                for tenant in sorted(tenants):
                    request = AuditRequest(
                        kind,
                        state.position_us or time.time_ns() // 1000,
                        str(self.settings.policies_dir),
                        f"{summary_prefix}policies v{previous.version} ({previous.digest}) -> "
                        f"v{current.version} ({current.digest})",
                        {
                            "from_version": str(previous.version),
                            "to_version": str(current.version),
                            "digest": current.digest,
                            "policies": ",".join(p.id for p in current.policies),
                            **extra,
                        },
                        actor=actor,
                    )
                    self._audit(self.core.audit(partition, tenant, request))
                    self._dirty.add(partition)

        self.submit(write)

    # --- checkpoints ---------------------------------------------------------------------

    def _write_state(self) -> None:
        for partition in sorted(self._dirty):
            state = self.core.partitions.get(partition)
            if state is None:
                continue
            for key, value in checkpoint_records(state):
                self._txn_produce(self._changelog, key, value, partition=partition)
        self._dirty.clear()
        # the heads topic is what `governor audit verify` compares the chains with
        for tenant in sorted(self._heads_dirty):
            head = self._head(tenant)
            if head is None:
                continue
            every, now_us = self.settings.audit_sign_every, time.time_ns() // 1000
            value = sign_head(tenant, head, self.audit_key, now_us, every).to_json()
            self._txn_produce(self.settings.topic("audit.heads"), tenant.encode(), value)
        self._heads_dirty.clear()

    def _head(self, tenant: str) -> ChainHead | None:
        partition = scope_partition(tenant, self.settings.event_partitions)
        state = self.core.partitions.get(partition)
        return state.heads.get(tenant) if state is not None else None

    # --- partitions ----------------------------------------------------------------------

    def _restore(self, numbers: list[int]) -> None:
        wall = time.time()
        states = {p: ScopeState(p) for p in numbers}

        def apply(partition: int, record: Record) -> None:
            _offset, key, value = record
            if key is not None:
                restore_record(states[partition], key, value, wall)

        self._scan_changelog(numbers, apply)
        with self.lock:
            for state in states.values():
                finish_restore(state, wall)
                self.core.assign(state)
                # re-signed with the next checkpoint: heads written before they were signed
                # (or with a retired key) verify again without waiting for a new record
                self._heads_dirty.update(state.heads)
        waiting, self._after_ready = self._after_ready, []
        for call in waiting:
            self.submit(call)
        log.info(
            "scope: restored partitions %s (%d tenants' chains, %d items pending)",
            numbers,
            sum(len(s.heads) for s in states.values()),
            sum(len(s.held) for s in states.values()),
        )

    def _forget(self, partition: int) -> None:
        self.core.revoke(partition)
        self._dirty.discard(partition)

    def _forget_all(self) -> None:
        for partition in list(self.core.partitions):
            self.core.revoke(partition)
        self._dirty.clear()


def ensure_scope_changelog(settings: Settings) -> None:
    ensure_state_topic(settings, scope_changelog_topic(settings), settings.event_partitions)
