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
    cost today against the same day last week with a 7-day chart, SLO error budgets with
    their firing alerts, worker health and lag, a live feed of decisions), sessions filtered
    by tenant, agent, outcome, cost, duration and time, each session's timeline (steps on a
    time axis, the bottleneck, decisions and when they were acted on, PII findings without
    values, alerts), and pages for cost, PII (with one value's lineage), drift, policies
    (history with diffs) and incidents.

    Every figure is what `governor ask ... --json` (or `policy history`, `incident list`)
    prints, and each page has that JSON under /api/. Read-only but for two changes, each
    needing an admin token of GOVERNOR_API_TOKENS (none when it listens on loopback without
    tokens): a policy rollback after a confirmation page, and opening an incident from a
    session's page. Reads Redis (GOVERNOR_REDIS_URL), Kafka (GOVERNOR_BOOTSTRAP) and the
    worker's web port (GOVERNOR_WEB_PORT); the worker also serves this console at /console/.
    No assets from the internet: it works offline.
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
