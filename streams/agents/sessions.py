"""The read-model agent: finished sessions (gov.sessions) into the Redis read-model."""

from __future__ import annotations

import asyncio
from typing import Any

import faust

from streams.agents.pii import raw_topic
from streams.codec import Codecs, DecodeError
from streams.query.readmodel import SessionReadModel
from streams.settings import Settings

BATCH_SIZE = 1000
BATCH_WITHIN_S = 0.2


def attach_read_model(
    app: faust.App, settings: Settings, codecs: Codecs, model: SessionReadModel
) -> None:
    sessions = raw_topic(app, settings.topic("sessions"))
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
            if summaries:
                await asyncio.to_thread(model.apply, summaries, settings.quality_threshold)
