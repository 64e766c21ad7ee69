"""The worker's topology: ``build_app(settings)`` returns a Faust app; nothing runs at import."""

from __future__ import annotations

from collections import Counter
from typing import Any

import faust
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST

from streams.agents.ingest import attach_ingest
from streams.codec import Codecs
from streams.metrics import worker_metrics
from streams.settings import Settings
from streams.topics import replication_for


def faust_config(settings: Settings, brokers: int = 1) -> dict[str, Any]:
    replication, _ = replication_for(settings, brokers)
    return {
        "broker": ";".join(f"kafka://{b}" for b in settings.bootstrap.split(",")),
        "store": "memory://",
        "datadir": str(settings.state_dir / "worker" / settings.app_id),
        "web_enabled": True,
        "web_host": settings.web_host,
        "web_port": settings.web_port,
        "web_bind": settings.web_host,
        "topic_partitions": settings.event_partitions,
        "topic_replication_factor": replication,
        "consumer_auto_offset_reset": "earliest",
        "producer_acks": -1,
        "stream_wait_empty": False,
    }


def build_app(settings: Settings, brokers: int = 1) -> faust.App:
    app = faust.App(settings.app_id, **faust_config(settings, brokers))
    codecs = Codecs.load(settings.schemas_dir)
    metrics = worker_metrics()
    kind_counts: Counter[str] = Counter()
    attach_ingest(app, settings, codecs, metrics, kind_counts)

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/ingest")
    class IngestView(View):
        async def get(self, request: Request) -> Response:
            dead = sum(int(s.value) for s in _samples(metrics.dead_letters))
            return self.json({"by_kind": dict(kind_counts), "dead_letters": dead})

    return app


def _samples(counter: Any) -> list[Any]:
    return [
        sample
        for family in counter.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    ]
