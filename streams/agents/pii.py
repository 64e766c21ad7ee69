"""The PII agent: scans every content segment of every StepEvent, beside the accounting.

A Faust agent (the app's own consumer group) reads gov.events, so scanning never holds up the
accounting runner's enforcement of other policies. Findings (never values) go to gov.pii and the
Redis ledger; every handling but ALLOW is audited; a KILL handling publishes a signed KILL for
the session.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import faust

from streams.codec import Codecs, DecodeError
from streams.control import session_target
from streams.metrics import WorkerMetrics
from streams.pii.ledger import PiiLedger
from streams.pii.scanner import PiiScanner
from streams.pipeline.pii import HOP_OF_ROLE, Match, PiiPolicy, findings
from streams.publisher import DecisionPublisher, make_decision
from streams.settings import Settings

log = logging.getLogger("governor.pii")

BATCH_SIZE = 500
BATCH_WITHIN_S = 0.25
PII_POLICY_ID = "pii"
#: outcome index of PII kills in the decision epoch (the engine uses 0..14)
PII_EPOCH_INDEX = 15


def raw_topic(app: faust.App, name: str) -> faust.TopicT:
    """A topic of undecoded bytes: decoding is ours, so failures reach our error path."""
    return app.topic(
        name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )


def scan_event(event: dict[str, Any], scanner: PiiScanner) -> list[tuple[int, list[Match]]]:
    """Matches per content segment of one event (segments without a hop are not scanned)."""
    found = []
    for index, segment in enumerate(event.get("content") or ()):
        if HOP_OF_ROLE.get(segment["role"]) is None:
            continue
        matches = scanner.scan(segment["text"])
        if matches:
            found.append((index, matches))
    return found


class PiiHandler:
    """What the agent does with one batch: findings, ledger, kills, audit, metrics."""

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
        self._killed: set[str] = set()

    def handle(self, payloads: Sequence[bytes]) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        for payload in payloads:
            try:
                event = self.codecs.step_event.decode(payload)
            except DecodeError:
                continue  # the accounting runner dead-letters it
            if not event.get("content"):
                continue
            matches = scan_event(event, self.scanner)
            if matches:
                records.extend(
                    findings(event, matches, self.policy, self.key, self.settings.pii_key_id)
                )
        records = [r for r in records if r["handling"] != "ALLOW"]
        if records:
            self.ledger.record(records)
            self._kill(records)
            for record in records:
                self._audit(record)
                self.metrics.pii_findings.labels(
                    record["entity_type"], record["hop"], record["handling"]
                ).inc()
        self.metrics.pii_skip_rate.set(self.scanner.stats.skip_rate)
        return records

    def _kill(self, records: list[dict[str, Any]]) -> None:
        decisions = []
        for record in records:
            if record["handling"] != "KILL" or record["session_id"] in self._killed:
                continue
            self._killed.add(record["session_id"])
            decisions.append(
                make_decision(
                    target=session_target(record["session_id"]),
                    tenant_id=record["tenant_id"],
                    action="KILL",
                    policy_id=PII_POLICY_ID,
                    policy_version=self.policy.version,
                    epoch=record["time_us"] * 16 + PII_EPOCH_INDEX,
                    issued_at_us=record["time_us"],
                    expires_at_us=record["time_us"] + 86_400_000_000,
                    reason=f"{record['entity_type']} in {record['hop'].lower()} "
                    f"(fingerprint {record['fingerprint'][:12]})",
                    trigger_event_id=record["event_id"],
                )
            )
        if decisions:
            self.publisher.publish_many(decisions)
            self.metrics.decisions.labels("KILL", PII_POLICY_ID).inc(len(decisions))

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


def attach_pii(app: faust.App, settings: Settings, handler: PiiHandler) -> None:
    events = raw_topic(app, settings.events_source_topic)
    findings_topic = raw_topic(app, settings.topic("pii"))
    codec = handler.codecs.pii_finding

    @app.agent(events, name="pii-scanner")
    async def scan(stream: Any) -> None:
        async for batch in stream.take_events(BATCH_SIZE, within=BATCH_WITHIN_S):
            records = handler.handle([e.value for e in batch if e.value])
            for record in records:
                await findings_topic.send(
                    key=record["session_id"].encode(), value=codec.encode(record)
                )
