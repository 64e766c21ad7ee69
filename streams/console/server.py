"""The console's aiohttp app: HTML pages and their JSON twins over :class:`Source`.

Read-only: every route is a GET. The blocking reads (Redis, Kafka, a worker's web port) run
in a thread so that one slow timeline does not hold the other pages.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis
from aiohttp import web
from confluent_kafka import KafkaException

from streams.console.source import SessionFilter, Source
from streams.console.views import Pages
from streams.pipeline.policy import duration_s
from streams.query.session_records import SessionNotFound, TopicNotFound
from streams.settings import Settings

log = logging.getLogger("governor.console")

STATIC = Path(__file__).parent / "static"
SOURCE = web.AppKey("source", Source)
PAGES = web.AppKey("pages", Pages)
#: how far back a page looks when the query does not say (the CLI's defaults)
DEFAULT_SINCE = "24h"
DEFAULT_WINDOW = "1h"
DEFAULT_PCT = 10.0


class BadQuery(ValueError):
    """A query parameter the console cannot use: a 400 naming the fix."""


def _span(request: web.Request, name: str, default: str) -> str:
    value = request.query.get(name) or default
    try:
        if duration_s(value) <= 0:
            raise ValueError(f"{value!r} is not a positive duration")
    except ValueError as exc:
        raise BadQuery(f"{name}: {exc}") from exc
    return value


def _pct(request: web.Request, default: float = DEFAULT_PCT) -> float:
    raw = request.query.get("pct") or str(default)
    try:
        pct = float(raw)
    except ValueError:
        raise BadQuery(f"pct: {raw!r} is not a number (a percent, 0 < pct <= 100)") from None
    if not 0 < pct <= 100:
        raise BadQuery(f"pct: {raw} must be more than 0 and at most 100")
    return pct


def _filter(request: web.Request) -> SessionFilter:
    try:
        return SessionFilter(
            tenant=request.query.get("tenant") or None,
            agent=request.query.get("agent") or None,
            outcome=request.query.get("outcome") or None,
        )
    except ValueError as exc:
        raise BadQuery(f"outcome: {exc}") from exc


def _json(answer: Any, status: int = 200) -> web.Response:
    return web.json_response(answer, status=status, dumps=lambda v: json.dumps(v, indent=2))


def _wants_json(request: web.Request) -> bool:
    return request.path.startswith("/api/")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure is a page (or, under /api/, a JSON ``{"error": ...}``) that says the fix."""
    settings = request.app[SOURCE].settings
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except BadQuery as exc:
        status, message = 400, str(exc)
    except (SessionNotFound, TopicNotFound) as exc:
        status, message = 404, str(exc)
    except redis.RedisError as exc:
        status, message = 503, f"cannot read Redis at {settings.redis_url}: {exc}"
    except KafkaException as exc:
        status, message = 503, f"cannot read Kafka at {settings.bootstrap}: {exc}"
    if _wants_json(request):
        return _json({"error": message}, status)
    html = request.app[PAGES].error(status, message)
    return web.Response(text=html, status=status, content_type="text/html")


async def overview(request: web.Request) -> web.Response:
    since = _span(request, "since", DEFAULT_SINCE)
    window = _span(request, "window", DEFAULT_WINDOW)
    answer = await asyncio.to_thread(request.app[SOURCE].overview, since, window)
    if _wants_json(request):
        return _json(answer)
    html = request.app[PAGES].overview(answer, since, window)
    return web.Response(text=html, content_type="text/html")


async def sessions(request: web.Request) -> web.Response:
    chosen = _filter(request)
    pct = _pct(request)
    since = _span(request, "since", DEFAULT_SINCE)
    answer = await asyncio.to_thread(request.app[SOURCE].sessions, chosen, pct, since)
    if _wants_json(request):
        return _json(answer)
    html = request.app[PAGES].sessions(answer, request.query_string)
    return web.Response(text=html, content_type="text/html")


async def timeline(request: web.Request) -> web.Response:
    session_id = request.match_info["session_id"]
    found = await asyncio.to_thread(request.app[SOURCE].timeline, session_id)
    if _wants_json(request):
        return _json(found.to_dict())
    return web.Response(text=request.app[PAGES].timeline(found), content_type="text/html")


def _ask(name: str) -> Handler:
    """``/api/<name>``: what ``governor ask <name> --json`` prints."""

    async def handler(request: web.Request) -> web.Response:
        source = request.app[SOURCE]
        if name == "outcomes":
            since = _span(request, "since", DEFAULT_SINCE)
            return _json(await asyncio.to_thread(source.outcomes, since))
        if name == "cost":
            return _json(await asyncio.to_thread(source.cost))
        if name == "latency":
            window = _span(request, "window", DEFAULT_WINDOW)
            return _json(await asyncio.to_thread(source.latency, window))
        if name == "top-cost":
            pct = _pct(request, default=1.0)  # the CLI's default
            since = _span(request, "since", DEFAULT_SINCE)
            return _json(await asyncio.to_thread(source.top_cost, pct, since))
        slo = await asyncio.to_thread(source.slo)
        if slo is None:
            s = source.settings
            fix = f"no worker answers on {s.web_host}:{s.web_port} (start: governor worker)"
            return _json({"error": fix}, 503)
        return _json(slo)

    return handler


async def healthz(_request: web.Request) -> web.Response:
    return _json({"ok": True})


def make_app(settings: Settings, source: Source | None = None) -> web.Application:
    app = web.Application(middlewares=[errors])
    app[SOURCE] = source or Source(settings)
    app[PAGES] = Pages()
    app.router.add_get("/", overview)
    app.router.add_get("/sessions", sessions)
    app.router.add_get("/sessions/{session_id}", timeline)
    app.router.add_get("/api/overview", overview)
    app.router.add_get("/api/sessions", sessions)
    app.router.add_get("/api/sessions/{session_id}/timeline", timeline)
    for name in ("outcomes", "cost", "latency", "slo", "top-cost"):
        app.router.add_get(f"/api/{name}", _ask(name))
    app.router.add_get("/healthz", healthz)
    app.router.add_static("/static/", STATIC, show_index=False)

    async def close(app: web.Application) -> None:
        app[SOURCE].close()

    app.on_cleanup.append(close)
    return app


async def serve(
    settings: Settings, host: str, port: int, on_ready: Callable[[int], None] | None = None
) -> None:
    """Serve the console until cancelled; ``on_ready(bound port)`` once listening."""
    runner = web.AppRunner(make_app(settings), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = port or int(runner.addresses[0][1])
        if on_ready is not None:
            on_ready(bound)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
