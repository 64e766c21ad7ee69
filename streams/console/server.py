"""The console's aiohttp app: HTML pages and their JSON twins over :class:`Source`.

Read-only but for the two mutations (POST, admin token: the ``Authorization: Bearer`` header
console.js sends, or the form's field). The blocking reads (Redis, Kafka, a worker's web port) run
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

from streams.console.source import NotFound, Source, incident_form
from streams.console.views import Pages, policy_diff
from streams.http_auth import bearer_token, check, parse_tokens
from streams.pipeline.policy import duration_s
from streams.query.session_records import SessionNotFound, TopicNotFound
from streams.query.session_search import SessionQuery
from streams.settings import Settings

log = logging.getLogger("governor.console")

STATIC = Path(__file__).parent / "static"
SOURCE = web.AppKey("source", Source)
PAGES = web.AppKey("pages", Pages)
#: the path the app is served under ("" on its own port, "/console" on the worker's)
ROOT = web.AppKey("root", str)
#: the host the server is bound to (mutations without tokens only on loopback)
BOUND_HOST = web.AppKey("bound_host", str)
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


def _number(request: web.Request, name: str) -> float | None:
    raw = (request.query.get(name) or "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise BadQuery(f"{name}: {raw!r} is not a number") from None


def _count_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = (request.query.get(name) or "").strip() or str(default)
    try:
        value = int(raw)
    except ValueError:
        raise BadQuery(f"{name}: {raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise BadQuery(f"{name}: {value} must be {low} to {high}")
    return value


def _query(request: web.Request) -> SessionQuery:
    """The Sessions page's filters: tenant, agent, outcome, cost in USD, duration in s."""
    try:
        return SessionQuery(
            tenant=request.query.get("tenant") or None,
            agent=request.query.get("agent") or None,
            outcome=request.query.get("outcome") or None,
            min_cost_usd=_number(request, "min_cost"),
            max_cost_usd=_number(request, "max_cost"),
            min_duration_s=_number(request, "min_duration"),
            max_duration_s=_number(request, "max_duration"),
        )
    except ValueError as exc:
        raise BadQuery(str(exc)) from exc


def _json(answer: Any, status: int = 200) -> web.Response:
    return web.json_response(answer, status=status, dumps=lambda v: json.dumps(v, indent=2))


def _wants_json(request: web.Request) -> bool:
    # mounted under a root (the worker's /console), the path still starts with it
    return request.path.removeprefix(request.app[ROOT]).startswith("/api/")


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
    except NotFound as exc:
        status, message = 404, str(exc)
    except redis.RedisError as exc:
        status, message = 503, f"cannot read Redis at {settings.redis_url}: {exc}"
    except KafkaException as exc:
        status, message = 503, f"cannot read Kafka at {settings.bootstrap}: {exc}"
    except Refused as exc:
        status, message = exc.status, str(exc)
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
    source = request.app[SOURCE]
    health, now = await asyncio.gather(
        asyncio.to_thread(source.health), asyncio.to_thread(source.sessions_now)
    )
    html = request.app[PAGES].overview(answer, since, window, health, now)
    return web.Response(text=html, content_type="text/html")


async def sessions(request: web.Request) -> web.Response:
    query = _query(request)
    since = _span(request, "since", DEFAULT_SINCE)
    from_, to = _text_param(request, "from"), _text_param(request, "to")
    limit = _count_param(request, "limit", 50, 1, 500)
    offset = _count_param(request, "offset", 0, 0, 10_000_000)
    try:
        answer = await asyncio.to_thread(
            request.app[SOURCE].sessions, query, since, from_, to, limit, offset
        )
    except ValueError as exc:
        raise BadQuery(f"from/to: {exc}") from exc
    if _wants_json(request):
        return _json(answer)
    html = request.app[PAGES].sessions(answer, request.query)
    return web.Response(text=html, content_type="text/html")


async def timeline(request: web.Request) -> web.Response:
    session_id = request.match_info["session_id"]
    found = await asyncio.to_thread(request.app[SOURCE].timeline, session_id)
    if _wants_json(request):
        return _json(found.to_dict())
    return web.Response(text=request.app[PAGES].timeline(found), content_type="text/html")


async def session_tree(request: web.Request) -> web.Response:
    """One session's tree (``ask tree SESSION``), linked from its timeline."""
    session_id = request.match_info["session_id"]
    since = _span(request, "since", "7d")  # the CLI's default
    answer = await asyncio.to_thread(request.app[SOURCE].session_tree, session_id, since)
    if _wants_json(request):
        return _json(answer)
    return _html(request, "tree", tr=answer, since=since)


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


def _text_param(request: web.Request, name: str) -> str | None:
    return (request.query.get(name) or "").strip() or None


def _html(request: web.Request, name: str, **context: Any) -> web.Response:
    html = request.app[PAGES].page(name, **context)
    return web.Response(text=html, content_type="text/html")


async def cost_page(request: web.Request) -> web.Response:
    pct = _pct(request)
    # the top sessions of the last day by default (the trend covers the week)
    since = _span(request, "since", DEFAULT_SINCE)
    answer = await asyncio.to_thread(request.app[SOURCE].cost_page, pct, since)
    if _wants_json(request):
        return _json(answer)
    return _html(request, "cost", c=answer, pct=pct, since=since)


async def cost_chart(request: web.Request) -> web.Response:
    """The 7-day cost chart as an SVG image (the overview shows it; the Cost page inlines it)."""
    days = await asyncio.to_thread(request.app[SOURCE].cost_days, 7)
    svg = request.app[PAGES].env.get_template("_chart.html").render(days=days, standalone=True)
    svg = svg.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1)
    return web.Response(text=svg, content_type="image/svg+xml")


async def pii_page(request: web.Request) -> web.Response:
    since = _span(request, "since", "7d")
    fingerprint = _text_param(request, "fingerprint")
    source = request.app[SOURCE]
    answer = await asyncio.to_thread(source.pii, since, fingerprint)
    if _wants_json(request):
        return _json(answer)
    days = [] if fingerprint else await asyncio.to_thread(source.pii_days, 7)
    return _html(request, "pii", p=answer, since=since, fingerprint=fingerprint, days=days)


async def drift_page(request: web.Request) -> web.Response:
    source = request.app[SOURCE]
    agents = await asyncio.to_thread(source.drift_agents)
    agent = _text_param(request, "agent") or (agents[0] if agents else None)
    tenant = _text_param(request, "tenant")
    report = None if agent is None else await asyncio.to_thread(source.drift, agent, tenant)
    if _wants_json(request):
        if report is None:
            return _json({"error": "no agent has drift samples yet (agents finish sessions)"}, 404)
        return _json(report)
    return _html(request, "drift", agents=agents, agent=agent, tenant=tenant, d=report)


async def policies_page(request: web.Request) -> web.Response:
    found = await asyncio.to_thread(request.app[SOURCE].policies)
    if _wants_json(request):
        return _json(found["history"])
    files = found["files"]
    # each version against the one recorded before it (None: the first)
    earlier = {v: max((u for u in files if u < v), default=None) for v in files}
    diffs = {
        v: (before, policy_diff(files[before] if before is not None else {}, files[v]))
        for v, before in earlier.items()
    }
    return _html(request, "policies", h=found["history"], diffs=diffs)


def _version(raw: str | None) -> int:
    try:
        return int(raw or "")
    except ValueError:
        raise BadQuery(f"to_version: {raw!r} is not a policy version number") from None


def request_token(authorization: str | None, form_token: str | None) -> str:
    """The token a mutation carries: the ``Authorization: Bearer`` header's (what console.js
    sends from the form, and what the worker's port requires when tokens are set; curl too),
    else the form's password field (the standalone console without JS); "" with neither."""
    from_header = bearer_token(authorization)
    return from_header if from_header is not None else (form_token or "").strip()


def _authorized(request: web.Request, token: str) -> None:
    """A mutation goes on only with a token the deployment's GOVERNOR_API_TOKENS gives the
    admin role (streams/http_auth.py), or, with no tokens configured, on a loopback bind; and
    only from a page of this console (Origin, when the browser sends one, is this host)."""
    origin = request.headers.get("Origin")
    if origin and origin.split("://", 1)[-1] != request.host:
        raise web.HTTPForbidden(text=f"a change must come from this console, not {origin}")
    tokens = parse_tokens(request.app[SOURCE].settings.api_tokens)
    header = f"Bearer {token}" if token else None
    answer = check(header, tokens, mutating=True, bound_host=request.app[BOUND_HOST])
    if not answer.ok:
        raise Refused(answer.status, answer.error)


class Refused(Exception):
    """A mutation the token does not allow: 401/403 with why (never the token)."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status


async def rollback_confirm(request: web.Request) -> web.Response:
    """The confirmation step: what would change, and the form that does it."""
    version = _version(request.query.get("to_version"))
    found = await asyncio.to_thread(request.app[SOURCE].policies, 0)
    files = found["files"]
    if version not in files:
        known = ", ".join(map(str, sorted(files))) or "none yet"
        raise BadQuery(f"to_version: no policy version {version} (known: {known})")
    current = (found["history"].get("in_force") or {}).get("version")
    diff = policy_diff(files.get(current, {}) if current is not None else {}, files[version])
    return _html(request, "rollback", version=version, current=current, diff=diff, done=None)


async def rollback(request: web.Request) -> web.Response:
    form = await request.post()
    fields = {k: str(v) for k, v in form.items()}
    version = _version(fields.get("to_version"))
    if fields.get("confirm") != "yes":
        raise BadQuery("confirm: tick the box to confirm the rollback")
    token = request_token(request.headers.get("Authorization"), fields.get("token"))
    _authorized(request, token)
    by = fields.get("by", "").strip() or "console"
    reply = await asyncio.to_thread(
        request.app[SOURCE].rollback, version, fields.get("reason", ""), by, token
    )
    if _wants_json(request):
        return _json(reply["answer"], reply["status"])
    if reply["status"] != 200:
        raise Refused(reply["status"], str(reply["answer"].get("error", reply["answer"])))
    return _html(request, "rollback", version=version, current=None, diff=[], done=reply["answer"])


async def incidents_page(request: web.Request) -> web.Response:
    include_closed = request.query.get("all", "1") != "0"
    answer = await asyncio.to_thread(request.app[SOURCE].incidents, include_closed)
    if _wants_json(request):
        return _json(answer)
    return _html(request, "incidents", i=answer, include_closed=include_closed)


async def incident_page(request: web.Request) -> web.Response:
    incident_id = request.match_info["incident_id"]
    answer = await asyncio.to_thread(request.app[SOURCE].incident, incident_id)
    if _wants_json(request):
        return _json(answer)
    return _html(request, "incident", i=answer, opened=request.query.get("opened") == "1")


async def open_incident(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    fields = {k: str(v) for k, v in form.items()}
    try:
        chosen = incident_form(fields)
    except ValueError as exc:
        raise BadQuery(str(exc)) from exc
    _authorized(request, request_token(request.headers.get("Authorization"), fields.get("token")))
    by = fields.get("by", "").strip() or "console"
    record = await asyncio.to_thread(request.app[SOURCE].open_incident, chosen, by)
    if _wants_json(request):
        return _json(record, 201)
    raise web.HTTPSeeOther(f"{request.app[ROOT]}/incidents/{record['incident_id']}?opened=1")


async def health(request: web.Request) -> web.Response:
    return _json(await asyncio.to_thread(request.app[SOURCE].health))


async def sessions_now(request: web.Request) -> web.Response:
    """Sessions open now, from the workers' state (``answered`` false when none answers)."""
    return _json(await asyncio.to_thread(request.app[SOURCE].sessions_now))


async def decisions(request: web.Request) -> web.Response:
    raw = request.query.get("limit") or "20"
    try:
        limit = int(raw)
    except ValueError:
        raise BadQuery(f"limit: {raw!r} is not a number of decisions") from None
    if not 1 <= limit <= 500:
        raise BadQuery(f"limit: {limit} must be 1 to 500")
    return _json(await asyncio.to_thread(request.app[SOURCE].decisions, 15, limit))


async def healthz(_request: web.Request) -> web.Response:
    return _json({"ok": True})


def make_app(
    settings: Settings,
    source: Source | None = None,
    *,
    root: str = "",
    bound_host: str = "127.0.0.1",
) -> web.Application:
    """The console as an aiohttp app: served on its own (``root`` "") or mounted as a sub-app
    under ``root`` (the worker's web port mounts it at ``/console``)."""
    app = web.Application(middlewares=[errors])
    app[SOURCE] = source or Source(settings)
    app[ROOT] = root.rstrip("/")
    app[PAGES] = Pages(root=app[ROOT])
    app[BOUND_HOST] = bound_host
    app.router.add_get("/", overview)
    app.router.add_get("/sessions", sessions)
    app.router.add_get("/sessions/{session_id}", timeline)
    app.router.add_get("/api/overview", overview)
    app.router.add_get("/api/sessions", sessions)
    app.router.add_get("/api/sessions/{session_id}/timeline", timeline)
    app.router.add_get("/sessions/{session_id}/tree", session_tree)
    app.router.add_get("/api/sessions/{session_id}/tree", session_tree)
    for name in ("outcomes", "cost", "latency", "slo", "top-cost"):
        app.router.add_get(f"/api/{name}", _ask(name))
    for path, page in (("/cost", cost_page), ("/pii", pii_page), ("/drift", drift_page),
                       ("/policies", policies_page), ("/incidents", incidents_page)):  # fmt: skip
        app.router.add_get(path, page)
    app.router.add_get("/api/cost-page", cost_page)
    app.router.add_get("/cost/chart.svg", cost_chart)
    app.router.add_get("/api/pii", pii_page)
    app.router.add_get("/api/drift", drift_page)
    app.router.add_get("/api/policies", policies_page)
    app.router.add_get("/api/incidents", incidents_page)
    app.router.add_get("/incidents/{incident_id}", incident_page)
    app.router.add_get("/api/incidents/{incident_id}", incident_page)
    app.router.add_get("/policies/rollback", rollback_confirm)
    # the two mutations: an admin token (or a loopback bind without tokens) and a confirmation
    app.router.add_post("/policies/rollback", rollback)
    app.router.add_post("/api/policies/rollback", rollback)
    app.router.add_post("/incidents", open_incident)
    app.router.add_post("/api/incidents", open_incident)
    app.router.add_get("/api/health", health)
    app.router.add_get("/api/sessions-now", sessions_now)
    app.router.add_get("/api/decisions", decisions)
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
    runner = web.AppRunner(make_app(settings, bound_host=host), access_log=None)
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
