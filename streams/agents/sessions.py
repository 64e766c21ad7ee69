"""The read-model agent: finished sessions (gov.sessions) into the Redis read-model, and the
drift samples; the drift alerts due go to gov.alerts."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust

from streams.agents.pii import raw_topic
from streams.codec import Codecs, DecodeError
from streams.query.drift import DriftDetector
from streams.query.readmodel import SessionReadModel
from streams.settings import Settings

log = logging.getLogger(__name__)

BATCH_SIZE = 1000
BATCH_WITHIN_S = 0.2


def attach_read_model(
    app: faust.App,
    settings: Settings,
    codecs: Codecs,
    model: SessionReadModel,
    drift: DriftDetector,
) -> None:
    sessions = raw_topic(app, settings.topic("sessions"))
    alerts_topic = raw_topic(app, settings.topic("alerts"))
    decode = codecs.session_summary.decode

    @app.agent(sessions, name="read-model")
    async def project(stream: Any) -> None:
        async for batch in stream.take_events(BATCH_SIZE, within=BATCH_WITHIN_S):
            summaries = []
            for event in batch:
                try:
                    summaries.append(decode(event.value))
                except DecodeError:
                    continue  # written by the worker itself: only a foreign writer gets here
            if not summaries:
                continue
            await asyncio.to_thread(model.apply, summaries, settings.quality_threshold)
            for alert in await asyncio.to_thread(drift.observe, summaries):
                log.warning("alert %s %s: %s", alert["alert_id"], alert["state"], alert["summary"])
                await alerts_topic.send(
                    key=alert["alert_id"].encode(), value=codecs.alert.encode(alert)
                )
