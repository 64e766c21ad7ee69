"""The PII agent: scans every content segment of every StepEvent, beside the accounting.

A Faust agent (the app's own consumer group) reads gov.events, so scanning never holds up the
accounting runner's enforcement of other policies. Findings (never values) go to gov.pii and the
Redis ledger; every handling but ALLOW is audited; a KILL handling publishes a signed KILL for
the session.

Enforcement never waits on Redis: per batch the kills are published and the findings sent to
gov.pii first (Kafka; retried in place until they are out), and the ledger, a mirror of gov.pii,
is written behind them by :class:`LedgerWriter`, which retries on its own while Redis is away
and rebuilds the ledger from gov.pii when Redis came back without it. Every step is safe to
repeat: a session is killed once (deterministic decision ids besides), a finding is sent and
audited once per batch, and the ledger counts each finding id once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import faust

from streams.agents.health import AgentHealth, Retrier, guarded
from streams.codec import Codecs, DecodeError
from streams.control import EPOCH_SLOTS, PII_EPOCH_SLOT, session_target
from streams.metrics import WorkerMetrics
from streams.pii.ledger import PiiLedger
from streams.pii.scanner import PiiScanner
from streams.pipeline.bypass import ClientBypass, bypass_details, pii_bypass
from streams.pipeline.pii import HOP_OF_ROLE, Match, PiiPolicy, findings
from streams.pipeline.validate import IngestBounds, validate_event
from streams.publisher import DecisionPublisher, make_decision
from streams.query.rebuild import RebuildResult, ensure_pii_ledger, rebuild_pii_ledger
from streams.settings import Settings

log = logging.getLogger("governor.pii")

AGENT_NAME = "pii-scanner"
BATCH_SIZE = 500
BATCH_WITHIN_S = 0.25
PII_POLICY_ID = "pii"
#: how often the ledger writer comes round (it writes what is pending, or checks the marker)
LEDGER_FLUSH_S = 0.5
#: the ledger's marker is checked at least this often, findings or not
LEDGER_CHECK_S = 5.0
#: findings held for the ledger while Redis is away; past this the oldest are let go and the
#: ledger is rebuilt from gov.pii (where every one of them is) once Redis is back
MAX_PENDING = 100_000
#: how often the PII stage's lag (governor_pii_lag, governor_pii_delay_seconds) is measured
LAG_INTERVAL_S = 5.0


def raw_topic(app: faust.App, name: str) -> faust.TopicT:
    """A topic of undecoded bytes: decoding is ours, so failures reach our error path."""
    return app.topic(
        name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )


def record_time_us(message: Any) -> int | None:
    """A Faust message's broker time in µs (None when the broker gave none)."""
    timestamp = getattr(message, "timestamp", None)
    return None if not timestamp or timestamp <= 0 else int(timestamp * 1_000_000)


def scan_event(event: dict[str, Any], scanner: PiiScanner) -> list[tuple[int, list[Match]]]:
    """Matches per content segment of one event (segments without a hop are not scanned)."""
    return scan_events([event], scanner)[0]


def scan_events(
    events: Sequence[dict[str, Any]], scanner: PiiScanner
) -> list[list[tuple[int, list[Match]]]]:
    """Matches per content segment of each event, in one scanner pass over every segment of the
    batch (the prefilter's engine scans them all at once)."""
    where: list[tuple[int, int]] = []
    texts: list[str] = []
    for number, event in enumerate(events):
        for index, segment in enumerate(event.get("content") or ()):
            if HOP_OF_ROLE.get(segment["role"]) is not None:
                where.append((number, index))
                texts.append(segment["text"])
    found: list[list[tuple[int, list[Match]]]] = [[] for _ in events]
    for (number, index), matches in zip(where, scanner.scan_many(texts), strict=True):
        if matches:
            found[number].append((index, matches))
    return found


@dataclass(frozen=True)
class PiiLag:
    """How far the PII stage is behind: events not yet scanned per partition, and the delay."""

    behind: dict[int, int]
    #: while events wait, the age (s) of the newest event scanned; 0 when caught up
    delay_s: float


def pii_lag(
    next_offsets: Mapping[int, int],
    highwaters: Mapping[int, int],
    newest_scanned_us: int | None,
    now_us: int,
) -> PiiLag:
    """The lag of the partitions in ``highwaters`` (the end offsets the consumer knows) against
    the next offset the stage will scan on each; a partition not scanned yet since it was
    assigned is left out (its position is not known here)."""
    behind = {
        partition: max(0, end - next_offsets[partition])
        for partition, end in highwaters.items()
        if partition in next_offsets
    }
    waiting = any(behind.values())
    delay_s = (
        max(0.0, (now_us - newest_scanned_us) / 1e6)
        if waiting and newest_scanned_us is not None
        else 0.0
    )
    return PiiLag(behind, delay_s)


@dataclass
class LagTracker:
    """Where the PII stage is, per partition, as its batches are scanned (on the event loop)."""

    next_offsets: dict[int, int] = field(default_factory=dict)
    newest_scanned_us: int | None = None

    def scanned(self, positions: Iterable[tuple[int, int, int | None]]) -> None:
        """``positions``: (partition, offset, record time µs) of each event of a batch."""
        for partition, offset, time_us in positions:
            if offset + 1 > self.next_offsets.get(partition, -1):
                self.next_offsets[partition] = offset + 1
            if time_us is not None and (
                self.newest_scanned_us is None or time_us > self.newest_scanned_us
            ):
                self.newest_scanned_us = time_us

    def publish(self, lag: PiiLag, metrics: WorkerMetrics, shown: set[int]) -> None:
        """Set the gauges; partitions no longer measured (revoked) lose their series."""
        for partition in shown - set(lag.behind):
            metrics.pii_lag.remove(str(partition))
            self.next_offsets.pop(partition, None)
        shown.clear()
        for partition, events in lag.behind.items():
            metrics.pii_lag.labels(str(partition)).set(events)
            shown.add(partition)
        metrics.pii_delay.set(lag.delay_s)


def kill_epoch(time_us: int) -> int:
    """A PII kill's epoch: its own slot, apart from every outcome slot of the engine."""
    return time_us * EPOCH_SLOTS + PII_EPOCH_SLOT


@dataclass
class FindingBatch:
    """The findings of one batch and how far handling them got: a retry resumes there."""

    records: list[dict[str, Any]]
    killed: bool = False
    #: findings already sent to gov.pii
    sent: int = 0
    audited: bool = False
    #: (tenant, event time µs, a step a client let run although its PII checks should have
    #: refused it)
    bypasses: list[tuple[str, int, ClientBypass]] = field(default_factory=list)


class PiiHandler:
    """What the agent does with one batch: findings, kills, audit, metrics (the ledger is the
    :class:`LedgerWriter`'s)."""

    def __init__(
        self,
        settings: Settings,
        codecs: Codecs,
        scanner: PiiScanner,
        policy: PiiPolicy,
        key: bytes,
        ledger: PiiLedger,
        publisher: DecisionPublisher,
        audit: Any,
        metrics: WorkerMetrics,
    ) -> None:
        self.settings = settings
        self.codecs = codecs
        self.scanner = scanner
        self.policy = policy
        self.key = key
        self.ledger = ledger
        self.publisher = publisher
        self.audit = audit
        self.metrics = metrics
        self.health = AgentHealth(AGENT_NAME)
        self.bounds = IngestBounds.of(settings)
        #: set by attach_pii
        self.writer: LedgerWriter | None = None
        self._killed: set[str] = set()

    def scan(
        self,
        payloads: Sequence[bytes],
        scanner: PiiScanner | None = None,
        policy: PiiPolicy | None = None,
        sources: Sequence[tuple[bytes | None, int | None]] | None = None,
    ) -> FindingBatch:
        """The batch's findings to act on. ``scanner`` and ``policy``: the pair in force when
        the batch began (a reload replaces both on the event loop while this runs on a thread).
        ``sources``: each payload's (record key, record time µs), to pass over the events the
        accounting runner refuses as bad records, as it does.
        """
        scanner = scanner or self.scanner
        policy = policy or self.policy
        records: list[dict[str, Any]] = []
        bypasses: list[tuple[str, int, ClientBypass]] = []
        events: list[dict[str, Any]] = []
        for index, payload in enumerate(payloads):
            try:
                event = self.codecs.step_event.decode(payload)
            except DecodeError:
                continue  # the accounting runner dead-letters it
            if not event.get("content"):
                continue
            if sources is not None:
                key, record_us = sources[index]
                if validate_event(event, key, record_us, self.bounds) is not None:
                    self.health.count_dropped("invalid_event", 1)
                    continue
            events.append(event)
        for event, matches in zip(events, scan_events(events, scanner), strict=True):
            if matches:
                found = findings(event, matches, policy, self.key, self.settings.pii_key_id)
                records.extend(found)
                bypass = next(
                    (
                        b
                        for r in found
                        if (b := pii_bypass(event, r["handling"], r["hop"], policy.version))
                    ),
                    None,
                )
                if bypass is not None:
                    bypasses.append((event["tenant_id"], event["start_time_us"], bypass))
        self.metrics.pii_skip_rate.set(scanner.stats.skip_rate)
        return FindingBatch([r for r in records if r["handling"] != "ALLOW"], bypasses=bypasses)

    def kill(self, batch: FindingBatch) -> None:
        """Publish the batch's kills (Kafka first; the Redis copy is the publisher's)."""
        if batch.killed:
            return
        decisions: dict[str, dict[str, Any]] = {}
        for record in batch.records:
            session = record["session_id"]
            if record["handling"] != "KILL" or session in self._killed or session in decisions:
                continue
            decisions[session] = make_decision(
                target=session_target(session),
                tenant_id=record["tenant_id"],
                action="KILL",
                policy_id=PII_POLICY_ID,
                policy_version=self.policy.version,
                epoch=kill_epoch(record["time_us"]),
                issued_at_us=record["time_us"],
                expires_at_us=record["time_us"] + 86_400_000_000,
                reason=f"{record['entity_type']} in {record['hop'].lower()} "
                f"(fingerprint {record['fingerprint'][:12]})",
                trigger_event_id=record["event_id"],
            )
        if decisions:
            self.publisher.publish_many(list(decisions.values()))
            # only once they are out: a publish that failed is retried, not forgotten
            self._killed.update(decisions)
            self.metrics.decisions.labels("KILL", PII_POLICY_ID).inc(len(decisions))
        batch.killed = True

    def account(self, batch: FindingBatch) -> None:
        """Audit and count the batch's findings, once."""
        if batch.audited:
            return
        for record in batch.records:
            self._audit(record)
            self.metrics.pii_findings.labels(
                record["entity_type"], record["hop"], record["handling"]
            ).inc()
        for tenant, time_us, bypass in batch.bypasses:
            self.audit(
                tenant,
                "CLIENT_BYPASS",
                time_us,
                f"session:{bypass.session_id}",
                f"{bypass.action} by pii on a step the client let run ({bypass.why}: client "
                f"{bypass.client_policy_version or 'without checks'})",
                bypass_details(bypass),
                f"bypass:{bypass.event_id}:pii",
            )
            self.metrics.client_bypass.labels(bypass.why, PII_POLICY_ID).inc()
        batch.audited = True

    def handle(self, payloads: Sequence[bytes]) -> list[dict[str, Any]]:
        """Scan, kill, audit and record one batch at once (for callers without an agent)."""
        batch = self.scan(payloads)
        if batch.records:
            self.ledger.record(batch.records)
            self.kill(batch)
            self.account(batch)
        return batch.records

    def _audit(self, record: dict[str, Any]) -> None:
        self.audit(
            record["tenant_id"],
            "PII_HANDLING",
            record["time_us"],
            f"session:{record['session_id']}",
            f"{record['handling']} {record['entity_type']} in {record['hop']}",
            {
                "finding_id": record["finding_id"],
                "event_id": record["event_id"],
                "entity_type": record["entity_type"],
                "hop": record["hop"],
                "tool_name": record["tool_name"] or "",
                "handling": record["handling"],
                "fingerprint": record["fingerprint"],
            },
            record["finding_id"],
        )


class LedgerWriter:
    """Findings into the Redis ledger behind the agent, retried while Redis is away.

    The agent adds findings once they are on gov.pii; :meth:`flush` writes what is pending
    (first rebuilding the ledger from gov.pii if Redis came back without it) and retries until
    it is written. Pending findings are numbered, so those added while a write is under way stay
    for the next one.
    """

    def __init__(
        self,
        settings: Settings,
        codecs: Codecs,
        ledger: PiiLedger,
        health: AgentHealth,
        max_pending: int = MAX_PENDING,
        ensure: Callable[[], RebuildResult | None] | None = None,
        rebuild: Callable[[], RebuildResult] | None = None,
    ) -> None:
        self.settings = settings
        self.codecs = codecs
        self.ledger = ledger
        self.health = health
        self.max_pending = max_pending
        self.ensure = ensure or self._ensure
        self.rebuild = rebuild or self._rebuild
        self.pending: list[tuple[int, dict[str, Any]]] = []
        self._seq = 0
        #: findings were let go while Redis was away: rebuild from gov.pii before writing
        self.overflowed = False
        self.checked_at = 0.0

    def _progress(self, _: object) -> None:
        self.health.progress()

    def _ensure(self) -> RebuildResult | None:
        return ensure_pii_ledger(
            self.settings, self.ledger.client, codecs=self.codecs, on_progress=self._progress
        )

    def _rebuild(self) -> RebuildResult:
        return rebuild_pii_ledger(
            self.settings, client=self.ledger.client, codecs=self.codecs, on_progress=self._progress
        )

    def add(self, records: Sequence[dict[str, Any]]) -> None:
        for record in records:
            self._seq += 1
            self.pending.append((self._seq, record))
        excess = len(self.pending) - self.max_pending
        if excess > 0:
            del self.pending[:excess]
            if not self.overflowed:
                log.warning(
                    "PII ledger: more than %d findings wait for Redis; it will be rebuilt from "
                    "gov.pii when Redis is back",
                    self.max_pending,
                )
            self.overflowed = True

    def due(self, now: float) -> bool:
        return bool(self.pending) or self.overflowed or now - self.checked_at >= LEDGER_CHECK_S

    def write(self, records: Sequence[dict[str, Any]], rebuild: bool = False) -> None:
        """One attempt (on a thread): the marker check, or a rebuild, then the findings."""
        result = self.rebuild() if rebuild else self.ensure()
        if result is not None and result.rebuilt:
            self.health.rebuilds += 1
            log.warning(
                "PII ledger rebuilt from %s: %d findings (%d new) in %.1fs",
                result.topic,
                result.records,
                result.applied,
                result.seconds,
            )
        self.health.progress()
        if records:
            self.ledger.record(records)

    async def flush(self, retrier: Retrier) -> None:
        async def attempt() -> None:
            # taken on the event loop, where add() runs: what comes in meanwhile stays pending
            upto = self._seq
            records = [r for _, r in self.pending]
            rebuild, self.overflowed = self.overflowed, False
            try:
                await asyncio.to_thread(self.write, records, rebuild)
            except BaseException:
                self.overflowed = self.overflowed or rebuild
                raise
            self.pending = [(seq, r) for seq, r in self.pending if seq > upto]

        await retrier.run(attempt)
        self.checked_at = time.monotonic()


def attach_pii(
    app: faust.App, settings: Settings, handler: PiiHandler, max_pending: int = MAX_PENDING
) -> AgentHealth:
    events = raw_topic(app, settings.events_source_topic)
    findings_topic = raw_topic(app, settings.topic("pii"))
    codec = handler.codecs.pii_finding
    health = handler.health
    retrier = Retrier(health, handler.metrics, settings)
    writer = LedgerWriter(settings, handler.codecs, handler.ledger, health, max_pending)
    writer_retrier = Retrier(health, handler.metrics, settings, part="ledger")

    async def step(batch: FindingBatch) -> None:
        await asyncio.to_thread(handler.kill, batch)
        while batch.sent < len(batch.records):
            record = batch.records[batch.sent]
            await findings_topic.send(key=record["session_id"].encode(), value=codec.encode(record))
            batch.sent += 1
        handler.account(batch)

    lag = LagTracker()
    shown: set[int] = set()

    @app.agent(events, name=AGENT_NAME)
    async def scan(stream: Any) -> None:
        async def body() -> None:
            async for events in stream.take_events(BATCH_SIZE, within=BATCH_WITHIN_S):
                health.busy = True
                health.progress()
                positions = [
                    (e.message.partition, e.message.offset, record_time_us(e.message))
                    for e in events
                ]
                kept = [e for e in events if e.value]
                payloads = [e.value for e in kept]
                sources = [(e.key, record_time_us(e.message)) for e in kept]
                batch = await asyncio.to_thread(
                    handler.scan, payloads, handler.scanner, handler.policy, sources
                )
                if batch.records:
                    await retrier.run(partial(step, batch))
                    writer.add(batch.records)
                lag.scanned(positions)
                health.batches += 1
                health.busy = False
                health.progress()

        await guarded(health, body)

    @app.timer(interval=LEDGER_FLUSH_S)  # type: ignore[untyped-decorator]
    async def write_ledger() -> None:
        if writer.due(time.monotonic()):
            await guarded(health, partial(writer.flush, writer_retrier))

    @app.timer(interval=LAG_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def measure_lag() -> None:
        consumer = getattr(app, "consumer", None)
        if consumer is None:
            return
        try:
            highwaters = {
                tp.partition: end
                for tp in consumer.assignment()
                if tp.topic == settings.events_source_topic
                and isinstance(end := consumer.highwater(tp), int)
                and end >= 0
            }
        except Exception as exc:  # the consumer is (re)starting: measured next time
            log.debug("PII lag not measured: %s", exc)
            return
        now_us = int(time.time() * 1_000_000)
        lag.publish(
            pii_lag(lag.next_offsets, highwaters, lag.newest_scanned_us, now_us),
            handler.metrics,
            shown,
        )

    handler.writer = writer
    return health
