"""``governor gateway``: run the LLM gateway (OpenAI and Anthropic APIs, governed)."""

from __future__ import annotations

from pathlib import Path
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

# the server (aiohttp, the client, presidio) is imported when the command runs, so that every
# other governor command starts as fast as before
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4000


def gateway(
    host: HostOption = DEFAULT_HOST,
    port: Annotated[int, typer.Option(help="Port to listen on (0 picks a free one).")] = (
        DEFAULT_PORT
    ),
    config: Annotated[
        Path | None,
        typer.Option(
            help="The gateway file (default: gateway.yaml in GOVERNOR_POLICIES_DIR).",
            show_default=False,
        ),
    ] = None,
    port_file: PortFileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Serve the OpenAI API (POST /v1/chat/completions, /v1/responses, /v1/embeddings; GET
    /v1/models) and the Anthropic Messages API (POST /v1/messages), governing every call and
    forwarding it to the upstream gateway.yaml routes its model to, with the provider key the
    gateway holds.

    Clients change only their base URL (OpenAI SDKs: http://HOST:PORT/v1, Anthropic SDKs:
    http://HOST:PORT) and use a gateway key (its SHA-256 listed in gateway.yaml, with its tenant
    and agent) as their API key. Sessions: the X-Governor-Session header (end one with
    X-Governor-Session-End: true), else the body's user / metadata / conversation id, else one
    per request. Refusals: KILL 403, PAUSE 429 with Retry-After, PII block 403 naming entities
    and hops, denied tools refused or stripped. Stateless: run as many as you need. Needs Kafka
    (GOVERNOR_BOOTSTRAP), Redis (GOVERNOR_REDIS_URL) and the worker's public keys; GET /metrics
    serves Prometheus metrics, GET /healthz is 503 while Kafka or Redis is down.
    """
    from streams.gateway.config import FILE_NAME, MissingProviderKey, load_gateway
    from streams.gateway.server import GatewayUnavailable, serve
    from streams.policy_files import PolicyError

    settings = Settings.from_env()
    path = config or settings.policies_dir / FILE_NAME
    if not path.exists():
        typer.echo(
            f"error: {path} does not exist: write one (see policies/gateway.yaml) or pass --config",
            err=True,
        )
        raise typer.Exit(code=1)
    try:
        loaded = load_gateway(path)
    except PolicyError as exc:
        for problem in exc.problems:
            typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(code=1) from exc
    except MissingProviderKey as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc

    routes = sorted(loaded.upstreams)
    facts = {"upstreams": routes, "config": str(path)}
    tail = f"{', '.join(routes)} ({path})"

    def ready(bound: int) -> None:
        announce("gateway", host, bound, port_file, as_json, facts, tail)

    try:
        run_server(serve(settings, loaded, host, port, on_ready=ready), host, port)
    except GatewayUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
