"""``governor ingest``: run the OTLP/HTTP receiver."""

from __future__ import annotations

from typing import Annotated

import typer

from streams.commands.serving import (
    HostOption,
    JsonOption,
    PortFileOption,
    announce,
    run_server,
)
from streams.settings import Settings

# the server (aiohttp, protobuf, redis.asyncio) is imported when the command runs, so that
# every other governor command starts as fast as before
DEFAULT_HOST = "127.0.0.1"
#: the OTLP/HTTP port
DEFAULT_PORT = 4318
DEFAULT_MAX_BODY_MB = 16


def ingest(
    host: HostOption = DEFAULT_HOST,
    port: Annotated[
        int, typer.Option(help="Port to listen on (4318 is OTLP/HTTP's; 0 picks a free one).")
    ] = DEFAULT_PORT,
    tenant: Annotated[
        str | None,
        typer.Option(
            help="Tenant of spans whose resource has no governor.tenant attribute "
            "(without it such spans are refused, named in the partial-success response)."
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="GOVERNOR_INGEST_TOKEN",
            help="Require 'Authorization: Bearer <token>' on every request.",
            show_default=False,
        ),
    ] = None,
    max_body_mb: Annotated[
        float, typer.Option(help="Largest request body accepted, decompressed (MB).")
    ] = DEFAULT_MAX_BODY_MB,
    port_file: PortFileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Receive OTLP/HTTP traces and logs (POST /v1/traces, /v1/logs; protobuf or JSON, gzip)
    and produce GenAI spans as StepEvents to the events topic.

    Stateless: run as many as you need. Needs Kafka (GOVERNOR_BOOTSTRAP) and Redis
    (GOVERNOR_REDIS_URL, for per-session seq numbers). Point an OpenTelemetry SDK at it with
    OTEL_EXPORTER_OTLP_ENDPOINT=http://HOST:PORT, or a Collector with the otlphttp exporter
    (ops/otel-collector/governor.yaml). GET /metrics serves Prometheus metrics.
    """
    from streams.ingest.server import IngestConfig, serve

    settings = Settings.from_env()
    if max_body_mb <= 0:
        raise typer.BadParameter("must be positive", param_hint="--max-body-mb")
    config = IngestConfig(
        default_tenant=tenant, token=token or None, max_body_bytes=int(max_body_mb * 1_000_000)
    )

    topic = settings.topic("events")

    def ready(bound: int) -> None:
        announce("ingest", host, bound, port_file, as_json, {"events_topic": topic}, topic)

    run_server(serve(settings, config, host, port, on_ready=ready), host, port)
