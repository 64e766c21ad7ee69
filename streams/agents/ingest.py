"""The ingest agent: decode raw StepEvents in batches, dead-letter what does not decode."""

from __future__ import annotations

from collections import Counter
from typing import Any

import faust

from streams.codec import Codecs, SourceRecord
from streams.metrics import WorkerMetrics
from streams.pipeline.ingest import count_kinds, decode_batch
from streams.settings import Settings

BATCH_SIZE = 2000
BATCH_WITHIN_S = 0.05


def source_record(event: Any) -> SourceRecord:
    message = event.message
    return SourceRecord(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        headers=tuple((k, bytes(v)) for k, v in (message.headers or ())),
        timestamp_ms=int(message.timestamp * 1000) if message.timestamp else None,
    )


def raw_topic(app: faust.App, name: str) -> faust.TopicT:
    """A topic of undecoded bytes: decoding is ours, so failures reach the dead-letter path."""
    return app.topic(
        name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )


def attach_ingest(
    app: faust.App,
    settings: Settings,
    codecs: Codecs,
    metrics: WorkerMetrics,
    kind_counts: Counter[str],
) -> None:
    events = raw_topic(app, settings.topic("events"))
    dlq = raw_topic(app, settings.topic("events.dlq"))

    @app.agent(events, name="ingest")
    async def ingest(stream: Any) -> None:
        async for batch in stream.take_events(BATCH_SIZE, within=BATCH_WITHIN_S):
            decoded = decode_batch(codecs.step_event, (source_record(e) for e in batch))
            for letter in decoded.dead:
                # wait for the broker's ack: the offset may be committed right after this batch
                sent = await dlq.send(
                    key=letter.key, value=letter.value, headers=list(letter.headers), force=True
                )
                await sent
                error_class = dict(letter.headers)["__connect.errors.exception.class.name"]
                metrics.dead_letters.labels(error_class.decode().rsplit(".", 1)[-1]).inc()
            kinds = count_kinds(decoded.ok)
            kind_counts.update(kinds)
            for kind, n in kinds.items():
                metrics.events.labels(kind).inc(n)
