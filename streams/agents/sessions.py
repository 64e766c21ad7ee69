"""The read-model agent: finished sessions (gov.sessions) into the Redis read-model, and the
drift samples; the drift alerts due go to gov.alerts.

Each batch is applied whole, however long Redis is away: the steps are retried until they
succeed (see :mod:`streams.agents.health`), and each is safe to repeat — the read-model applies
a session once (a guard in the same Lua call), the drift samples return their counts once, so
the checkpoints they reached are kept with the batch, and the alerts found are sent once each.
Before each batch one EXISTS checks that the read-model is still in Redis; when Redis came back
without it, it is rebuilt from gov.sessions first (:mod:`streams.query.rebuild`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import faust

from streams.agents.health import AgentHealth, Retrier, guarded
from streams.agents.pii import raw_topic
from streams.codec import Codecs, DecodeError
from streams.metrics import WorkerMetrics
from streams.query.drift import DriftDetector, DriftLooks
from streams.query.readmodel import NON_FINITE_SCORE, SessionReadModel, without_non_finite
from streams.query.rebuild import RebuildResult, ensure_read_model
from streams.settings import Settings

log = logging.getLogger(__name__)

AGENT_NAME = "read-model"
BATCH_SIZE = 1000
BATCH_WITHIN_S = 0.2
UNDECODABLE = "undecodable_summary"


@dataclass
class SummaryBatch:
    """One batch of summaries and how far applying it got: a retry resumes from there."""

    summaries: list[Mapping[str, Any]]
    applied: bool = False
    looks: DriftLooks | None = None
    #: alerts already sent to gov.alerts
    sent: int = 0

    @property
    def alerts(self) -> list[dict[str, Any]]:
        return [] if self.looks is None else self.looks.alerts


class ReadModelHandler:
    """What the agent does with one batch, apart from sending: decode, apply, drift."""

    def __init__(
        self,
        settings: Settings,
        codecs: Codecs,
        model: SessionReadModel,
        drift: DriftDetector,
        health: AgentHealth,
        ensure: Callable[[], RebuildResult | None] | None = None,
    ) -> None:
        self.settings = settings
        self.codecs = codecs
        self.model = model
        self.drift = drift
        self.health = health
        self.ensure = ensure or self._ensure

    def _ensure(self) -> RebuildResult | None:
        return ensure_read_model(
            self.settings,
            self.model.redis,
            store=self.drift.store,
            codecs=self.codecs,
            on_progress=lambda _: self.health.progress(),
        )

    def decode(self, payloads: Sequence[bytes]) -> SummaryBatch:
        summaries = []
        undecodable = 0
        for payload in payloads:
            try:
                summaries.append(self.codecs.session_summary.decode(payload))
            except DecodeError:
                undecodable += 1  # written by the worker itself: only a foreign writer gets here
        # a NaN or infinite score goes before anything of its session is written: Redis refuses
        # it half-way through the session's Lua call, and drift would average it
        clean, dropped = without_non_finite(summaries)
        self.health.count_dropped(UNDECODABLE, undecodable)
        self.health.count_dropped(NON_FINITE_SCORE, dropped)
        if dropped:
            log.warning("left out %d non-finite evaluation scores of this batch", dropped)
        return SummaryBatch(clean)

    def apply(self, batch: SummaryBatch) -> None:
        """Every Redis step of the batch not done yet (called again after a fault)."""
        rebuilt = self.ensure()
        if rebuilt is not None and rebuilt.rebuilt:
            self.health.rebuilds += 1
            log.warning(
                "read-model rebuilt from %s: %d summaries (%d new) in %.1fs",
                rebuilt.topic,
                rebuilt.records,
                rebuilt.applied,
                rebuilt.seconds,
            )
        self.health.progress()
        if not batch.applied:
            self.model.apply(batch.summaries, self.settings.quality_threshold)
            batch.applied = True
        if batch.looks is None:
            batch.looks = self.drift.add(batch.summaries)
        self.health.progress()
        self.drift.look(batch.looks)


def attach_read_model(
    app: faust.App,
    settings: Settings,
    codecs: Codecs,
    model: SessionReadModel,
    drift: DriftDetector,
    metrics: WorkerMetrics,
) -> AgentHealth:
    sessions = raw_topic(app, settings.topic("sessions"))
    alerts_topic = raw_topic(app, settings.topic("alerts"))
    health = AgentHealth(AGENT_NAME)
    handler = ReadModelHandler(settings, codecs, model, drift, health)
    retrier = Retrier(health, metrics, settings)

    async def step(batch: SummaryBatch) -> None:
        await asyncio.to_thread(handler.apply, batch)
        while batch.sent < len(batch.alerts):
            alert = batch.alerts[batch.sent]
            log.warning("alert %s %s: %s", alert["alert_id"], alert["state"], alert["summary"])
            await alerts_topic.send(
                key=alert["alert_id"].encode(), value=codecs.alert.encode(alert)
            )
            batch.sent += 1

    @app.agent(sessions, name=AGENT_NAME)
    async def project(stream: Any) -> None:
        async def body() -> None:
            async for events in stream.take_events(BATCH_SIZE, within=BATCH_WITHIN_S):
                health.busy = True
                health.progress()
                batch = handler.decode([e.value for e in events if e.value])
                if batch.summaries:
                    await retrier.run(partial(step, batch))
                health.batches += 1
                health.busy = False
                health.progress()

        await guarded(health, body)

    return health
