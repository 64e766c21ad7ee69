"""``governor console``: serve the operations console (read-only web pages over the query
layer)."""

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

# the server (aiohttp, jinja2) is imported when the command runs, so that every other governor
# command starts as fast as before
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6070


def console(
    host: HostOption = DEFAULT_HOST,
    port: Annotated[int, typer.Option(help="Port to listen on (0 picks a free one).")] = (
        DEFAULT_PORT
    ),
    port_file: PortFileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Serve the operations console: an overview (outcome shares, p50/p99 session latency,
    cost today against the same day last week, SLO error budgets with their firing alerts),
    the top sessions by cost with tenant/agent/outcome filters, and each session's timeline
    (steps on a time axis, the bottleneck, decisions and when they were acted on, PII findings
    without values, alerts).

    Every figure is what `governor ask ... --json` prints, and each page has that JSON under
    /api/ (/api/overview, /api/sessions, /api/sessions/ID/timeline, /api/outcomes, /api/cost,
    /api/latency, /api/slo, /api/top-cost). Read-only. Reads Redis (GOVERNOR_REDIS_URL), Kafka
    (GOVERNOR_BOOTSTRAP, for timelines) and the worker's web port (GOVERNOR_WEB_PORT, for SLOs
    and step latency). No assets from the internet: it works offline.
    """
    try:
        from streams.console.server import serve
    except ModuleNotFoundError as exc:
        typer.echo(
            f"error: governor console needs {exc.name}: pip install 'fleet-governor[worker]'",
            err=True,
        )
        raise typer.Exit(code=1) from exc

    settings = Settings.from_env()
    facts = {"redis": settings.redis_url, "bootstrap": settings.bootstrap}
    tail = f"Redis {settings.redis_url}, Kafka {settings.bootstrap}"

    def ready(bound: int) -> None:
        announce("console", host, bound, port_file, as_json, facts, tail)

    run_server(serve(settings, host, port, on_ready=ready), host, port)
