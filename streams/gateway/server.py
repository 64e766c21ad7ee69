"""``governor gateway``: an OpenAI- and Anthropic-compatible proxy that governs every call.

Point any client at it (OpenAI SDKs: ``base_url=http://HOST:4000/v1``; Anthropic SDKs:
``base_url=http://HOST:4000``) with a gateway key from ``policies/gateway.yaml`` instead of the
provider key: the gateway holds the provider keys and forwards each call to the upstream its
route names. It is a thin HTTP layer (aiohttp, server and client) over the Python client: one
:class:`~streams.client.Governor` per tenant and agent of its keys (each subscribes to
gov.control and gov.policies, verifies signatures, prices calls, reserves fleet budgets in
Redis and scans PII) and one :class:`~streams.client.Session` per gateway session; each request
is one ``async with session.llm(...)`` step. Nothing of the policies is re-implemented.

Identity: tenant and agent from the gateway key (``Authorization: Bearer`` or ``x-api-key``).
Session: the ``X-Governor-Session`` header, else the body's ``metadata.session_id`` /
``metadata.conversation_id`` / ``conversation`` / ``user`` (``metadata.user_id`` for Anthropic),
prefixed with the tenant; else a session of its own per request (started and ended with it).
A named session is never ended by a proxy on its own: ``X-Governor-Session-End: true`` on its
last request ends it (SESSION_END OK), otherwise the worker closes it after its idle timeout
(``GOVERNOR_SESSION_IDLE_TIMEOUT_S``). Every answer says its session in ``X-Governor-Session``.

Before forwarding: the decision in force (KILL: 403 naming the policy and reason; PAUSE: 429
with Retry-After; THROTTLE: the call waits; WARN: logged), then the client checks on the call as
it would run (session budget with the input and ``max_tokens``, loops, rates, PII on the prompt
and on tool results fed back: block -> 403 naming entities and hops; the fleet budget
reservation). PII ``redact`` rules rewrite the request before it leaves (and a non-streamed
answer, by the OUTPUT rules, before the client gets it). Tools the request
offers that a tool policy denies are stripped (or refused: ``denied_tool_definitions``).
After: usage (streamed or not; OpenAI streams are asked for it), the LLM_CALL step recorded
with its usage, tool calls the model asks for checked (``denied_tool_calls``: refuse or strip),
upstream errors, timeouts and retries recorded on the step. Tool results fed back in a request
are recorded as the TOOL_CALL steps they were (the tool ran in the agent).

Streams pass through event by event; only once the model starts a tool call are the events held
until it is complete and checked (a denied call stripped from them, or the stream ended). A
KILL for the session mid-stream ends it with the terminal event the SDK raises from (OpenAI: an
error chunk and ``[DONE]``; Anthropic: an ``error`` event).

Stateless: sessions live in Redis and Kafka (decisions, fleet reservations, the worker's
state); a gateway keeps only the client's projection of the sessions it served (forgotten after
``session_idle_s``). Run several behind a load balancer; with sticky sessions the session budget
is checked before the call on all of the session's spend, otherwise on what this gateway saw (the
worker still enforces it on everything, as for any client).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web
from confluent_kafka import KafkaException
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

from streams.client import Governor, InputBlocked, SessionKilled, StepBlocked
from streams.client.governor import Session, Step
from streams.control import KeyRing
from streams.gateway import guard
from streams.gateway.config import GatewayConfig, Identity, ResolvedUpstream
from streams.gateway.protocol import (
    ENDPOINTS,
    STRIPPABLE_STREAMS,
    Answer,
    Call,
    Endpoint,
    Refusal,
    RequestError,
    Segment,
    SseSplitter,
    StreamFold,
    ToolCall,
    error_body,
    prepared,
    read_answer,
    read_call,
    set_at,
    stream_error,
    strip_streamed,
    strip_tool_calls,
    without_tools,
)
from streams.http_auth import bearer_token
from streams.settings import Settings

log = logging.getLogger("governor.gateway")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4000
SESSION_HEADER = "X-Governor-Session"
END_HEADER = "X-Governor-Session-End"
#: a PAUSE without an expiry: how long the client is asked to wait before trying again
PAUSE_RETRY_AFTER_S = 5
MAX_SESSION_ID = 200
SWEEP_EVERY_S = 30.0
HEALTH_CACHE_S = 2.0
ANTHROPIC_VERSION = "2023-06-01"
#: request headers passed on to the upstream (the rest, the client's key first, are not)
PASSED_HEADERS = ("anthropic-version", "anthropic-beta", "openai-beta")


@dataclass(frozen=True)
class GatewayMetrics:
    registry: CollectorRegistry
    requests: Counter
    refusals: Counter
    upstream_latency: Histogram
    upstream_errors: Counter
    latency: Histogram

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def gateway_metrics() -> GatewayMetrics:
    r = CollectorRegistry()
    buckets = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 30, 120)
    return GatewayMetrics(
        registry=r,
        requests=Counter(
            "governor_gateway_requests",
            "requests answered, by route and HTTP status",
            ["route", "code"],
            registry=r,
        ),
        refusals=Counter(
            "governor_gateway_refusals",
            "requests refused by Governor, by reason (kill, pause, budget, pii, tool, ...)",
            ["reason"],
            registry=r,
        ),
        upstream_latency=Histogram(
            "governor_gateway_upstream_seconds",
            "time from sending to an upstream to its response headers, by upstream",
            ["upstream"],
            buckets=buckets,
            registry=r,
        ),
        upstream_errors=Counter(
            "governor_gateway_upstream_errors",
            "failed upstream attempts (connect, timeout, 5xx, 429), by upstream and kind",
            ["upstream", "kind"],
            registry=r,
        ),
        latency=Histogram(
            "governor_gateway_request_seconds",
            "time to answer a request (to the end of a stream), by route",
            ["route"],
            buckets=buckets,
            registry=r,
        ),
    )


# --- upstream failures (raised inside the LLM step: recorded on it as its error_type) --------


class GatewayUnavailable(Exception):
    """The gateway cannot start: what it needs (Kafka, the decision feed) is not there."""


class UpstreamError(Exception):
    """The upstream did not answer the call; ``refusal`` is what the client is told."""

    def __init__(self, refusal: Refusal, attempts: list[str]) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal
        self.attempts = attempts


class UpstreamUnreachable(UpstreamError):
    pass


class UpstreamTimeout(UpstreamError):
    pass


class UpstreamHttpError(UpstreamError):
    """The upstream answered with an error status: passed on to the client as it came."""

    def __init__(self, status: int, body: bytes, content_type: str, attempts: list[str]) -> None:
        super().__init__(Refusal(status, f"upstream answered HTTP {status}"), attempts)
        self.status = status
        self.body = body
        self.content_type = content_type


@dataclass
class Served:
    """A session this gateway process serves."""

    session: Session
    #: one request of a session at a time (the client's session is not shared by concurrent
    #: steps: its reservation and state are per step)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_seen: float = field(default_factory=time.monotonic)
    #: an id of its own for this request only: ended with it
    ephemeral: bool = False
    #: its SESSION_START was emitted by this process (and it is registered with its Governor,
    #: so that a KILL cancels the step it runs)
    started: bool = False


@dataclass
class Exchange:
    """One request on its way through the gateway."""

    request: web.Request
    endpoint: Endpoint
    identity: Identity
    gov: Governor
    body: dict[str, Any]
    call: Call
    upstream: ResolvedUpstream
    served: Served
    #: upstream attempts that failed (recorded on the step), and how many requests were sent
    attempts: list[str] = field(default_factory=list)
    sent: int = 0
    #: PII entity types redacted before forwarding
    redacted: list[str] = field(default_factory=list)
    stripped_tools: list[str] = field(default_factory=list)

    @property
    def api(self) -> str:
        return self.endpoint.api

    @property
    def session(self) -> Session:
        return self.served.session


class Gateway:
    """The request handlers and what they share; :meth:`app` wires the routes."""

    def __init__(
        self,
        settings: Settings,
        config: GatewayConfig,
        *,
        public_keys: KeyRing | None = None,
        policy_wait_s: float = 2.0,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.public_keys = public_keys
        self.policy_wait_s = policy_wait_s
        self.metrics = metrics or gateway_metrics()
        self.governors: dict[tuple[str, str], Governor] = {}
        self.sessions: dict[tuple[str, str, str], Served] = {}
        self._http: aiohttp.ClientSession | None = None
        self._redis: aioredis.Redis | None = None
        self._health: tuple[float, dict[str, str]] = (0.0, {})
        self._sweeper: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        identities = self.config.identities()
        if not identities:
            log.warning(
                "%s lists no keys: every request is refused (401); add one per tenant/agent",
                self.config.path,
            )
        try:
            governors = await asyncio.gather(
                *(asyncio.to_thread(self._governor, i) for i in identities)
            )
        except (KafkaException, RuntimeError) as exc:  # no broker; no control topic
            raise GatewayUnavailable(
                f"cannot subscribe to {self.settings.topic('control')} at "
                f"{self.settings.bootstrap} ({exc}): start Kafka and create the topics "
                "(governor up), or point GOVERNOR_BOOTSTRAP at the cluster"
            ) from exc
        for identity, gov in zip(identities, governors, strict=True):
            self.governors[(identity.tenant, identity.agent)] = gov
        await asyncio.to_thread(self._load_detectors)
        # no total timeout: a stream lasts as long as the model writes; each upstream's timeouts
        # bound the connect and every read
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None),
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            auto_decompress=True,
        )
        self._redis = aioredis.Redis.from_url(
            self.settings.redis_url,
            socket_timeout=self.settings.redis_timeout_s,
            socket_connect_timeout=self.settings.redis_timeout_s,
        )
        self._sweeper = asyncio.create_task(self._sweep())

    def _load_detectors(self) -> None:
        """Load the PII detector now, not on the first request (presidio takes seconds; the
        client shares one detector per entity set between its Governors)."""
        for gov in self.governors.values():
            if gov.pii.policy is not None:
                gov.pii.scanner()

    def _governor(self, identity: Identity) -> Governor:
        version = next(
            (
                k.agent_version
                for k in self.config.file.keys
                if (k.tenant, k.agent) == (identity.tenant, identity.agent)
            ),
            None,
        )
        return Governor(
            identity.tenant,
            identity.agent,
            version,
            settings=self.settings,
            public_keys=self.public_keys,
            checks=True,
            policy_wait_s=self.policy_wait_s,
            on_warn=lambda s, d: log.info(
                "session %s: WARN by %s: %s", s.session_id, d["policy_id"], d["reason"]
            ),
        )

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._http is not None:
            await self._http.close()
        if self._redis is not None:
            await self._redis.aclose()
        await asyncio.gather(*(asyncio.to_thread(g.close) for g in self.governors.values()))

    async def _sweep(self) -> None:
        """Forget named sessions idle longer than ``session_idle_s`` (not ended: see module)."""
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            self.forget_idle(time.monotonic())

    def forget_idle(self, now: float) -> int:
        idle = self.config.file.session_idle_s
        gone = [
            key
            for key, served in self.sessions.items()
            if not served.ephemeral and not served.lock.locked() and now - served.last_seen > idle
        ]
        for key in gone:
            served = self.sessions.pop(key)
            served.session.forget()  # it runs no step here any more
        return len(gone)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        for path, endpoint in ENDPOINTS.items():
            app.router.add_post(path, self._handler(endpoint))
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/metrics", self.metrics_view)
        app.router.add_get("/healthz", self.healthz)
        return app

    def _handler(
        self, endpoint: Endpoint
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            started = time.perf_counter()
            response = await self.handle(request, endpoint)
            self.metrics.requests.labels(endpoint.kind, str(response.status)).inc()
            self.metrics.latency.labels(endpoint.kind).observe(time.perf_counter() - started)
            return response

        return handle

    # --- small views ---------------------------------------------------------------------------

    async def models(self, request: web.Request) -> web.Response:
        if self._identify(request) is None:
            return self._refuse("openai", Refusal(401, _NO_KEY, metric="auth"))
        data = [
            {"id": glob, "object": "model", "created": 0, "owned_by": "governor"}
            for glob in self.config.models("openai")
        ]
        return web.json_response({"object": "list", "data": data})

    async def metrics_view(self, _request: web.Request) -> web.Response:
        response = web.Response(body=self.metrics.exposition())
        response.content_type = CONTENT_TYPE_LATEST.split(";", 1)[0]
        return response

    async def healthz(self, _request: web.Request) -> web.Response:
        """200 when Kafka (with the decision feed's topic) and Redis answer, 503 naming what
        does not (cached for a moment)."""
        at, problems = self._health
        if time.monotonic() - at > HEALTH_CACHE_S:
            problems = await self._check_health()
            self._health = (time.monotonic(), problems)
        if problems:
            return web.json_response({"status": "down", "problems": problems}, status=503)
        return web.json_response({"status": "ok", "agents": len(self.governors)})

    async def _check_health(self) -> dict[str, str]:
        problems: dict[str, str] = {}
        control = self.settings.topic("control")

        def kafka() -> str | None:
            from confluent_kafka.admin import AdminClient

            from streams.kafka_config import client_config

            admin = AdminClient(client_config(self.settings))
            try:
                topics = admin.list_topics(topic=control, timeout=1.5).topics
            except Exception as exc:  # KafkaException: the broker does not answer
                return f"Kafka at {self.settings.bootstrap} does not answer: {exc}"
            found = topics.get(control)
            if found is None or found.error is not None or not found.partitions:
                return f"the decision feed {control} is missing (governor up creates it)"
            return None

        kafka_problem = await asyncio.to_thread(kafka)
        if kafka_problem:
            problems["kafka"] = kafka_problem
        try:
            assert self._redis is not None
            await self._redis.ping()
        except Exception as exc:  # redis.RedisError, OSError
            problems["redis"] = f"Redis at {self.settings.redis_url_display} does not answer: {exc}"
        return problems

    # --- the call path -------------------------------------------------------------------------

    def _identify(self, request: web.Request) -> Identity | None:
        presented = bearer_token(request.headers.get("Authorization"))
        return self.config.identify(presented or request.headers.get("x-api-key"))

    async def handle(self, request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
        api = endpoint.api
        identity = self._identify(request)
        if identity is None:
            return self._refuse(api, Refusal(401, _NO_KEY, metric="auth"))
        try:
            body = await request.json()
            call = read_call(endpoint, body)
        except ValueError as exc:  # JSONDecodeError, RequestError
            reason = str(exc) if isinstance(exc, RequestError) else f"not JSON: {exc}"
            return self._refuse(api, Refusal(400, reason, metric="bad_request"))
        upstream = self.config.route(call.model, api)
        if upstream is None:
            message = (
                f"model {call.model!r} has no route to an {api} upstream in "
                f"{self.config.path.name} (routes: {', '.join(self.config.models(api)) or 'none'})"
            )
            return self._refuse(api, Refusal(404, message, metric="no_route"))
        gov = self.governors.get((identity.tenant, identity.agent))
        if gov is None:  # a key added to the file after the start: its Governor on first use
            gov = await asyncio.to_thread(self._governor, identity)
            self.governors[(identity.tenant, identity.agent)] = gov
        served = await self._served(request, gov, call)
        async with served.lock:
            served.last_seen = time.monotonic()
            exchange = Exchange(request, endpoint, identity, gov, body, call, upstream, served)
            try:
                response = await self._governed(exchange)
            finally:
                served.last_seen = time.monotonic()
                self._maybe_end(exchange)
        if not response.prepared:  # a stream sent its headers (with the session) already
            response.headers[SESSION_HEADER] = served.session.session_id
        return response

    def _session_id(self, request: web.Request, identity: Identity, call: Call) -> str | None:
        named = request.headers.get(SESSION_HEADER, "").strip()
        if named:
            return named[:MAX_SESSION_ID]
        if call.session_hint:
            return f"{identity.tenant}:{call.session_hint}"[:MAX_SESSION_ID]
        return None

    async def _served(self, request: web.Request, gov: Governor, call: Call) -> Served:
        identity = Identity(gov.tenant, gov.agent, gov.agent_version)
        session_id = self._session_id(request, identity, call)
        if session_id is None:
            return Served(gov.session(), ephemeral=True)
        key = (gov.tenant, gov.agent, session_id)
        served = self.sessions.get(key)
        if served is None:
            # resume: its seq continues from the wall clock, above what another gateway (or an
            # earlier process) used for it; its decisions are read from Redis (off the loop)
            session = await asyncio.to_thread(gov.session, session_id, resume=True)
            served = self.sessions.setdefault(key, Served(session))  # first of concurrent ones
        return served

    def _maybe_end(self, exchange: Exchange) -> None:
        served = exchange.served
        ending = exchange.request.headers.get(END_HEADER, "").strip().lower() in ("true", "1")
        killed = served.session.killed_by is not None
        if served.ephemeral or ending or killed:
            if served.started:
                served.session.finish()
            key = (exchange.gov.tenant, exchange.gov.agent, served.session.session_id)
            if self.sessions.get(key) is served:
                del self.sessions[key]

    async def _governed(self, x: Exchange) -> web.StreamResponse:
        session, gov = x.session, x.gov
        decision = gov.book.effective(session.targets, gov.now_us())
        if decision is not None and decision["action"] == "PAUSE":
            return self._refuse(x.api, _paused(decision, gov.now_us()))
        try:
            if decision is not None and decision["action"] == "KILL":
                session.check()  # raises SessionKilled (and notes the decision it acted on)
            if not x.served.started:
                session.start()
                x.served.started = True
            refusal = self._offered_tools(x)
            if refusal is not None:
                return self._refuse(x.api, refusal)
            self._redact(x)
            self._record_tool_results(x)
            if x.call.stream:
                return await self._streamed(x)
            return await self._unary(x)
        except SessionKilled as killed:
            return self._refuse(x.api, _killed(killed))
        except InputBlocked as blocked:
            return self._refuse(x.api, self._pii_refusal(x, blocked))
        except StepBlocked as blocked:
            return self._refuse(x.api, self._blocked(x, blocked))
        except UpstreamHttpError as failed:
            return web.Response(
                status=failed.status, body=failed.body, content_type=failed.content_type
            )
        except UpstreamError as failed:
            return self._refuse(x.api, failed.refusal)

    # --- before the call -----------------------------------------------------------------------

    def _offered_tools(self, x: Exchange) -> Refusal | None:
        policies = x.gov.policy_set.policies
        denied = [
            (path, d)
            for name, path in x.call.tools
            if (d := guard.denied_tool(policies, x.identity.tenant, x.identity.agent, name))
        ]
        if not denied:
            return None
        if self.config.file.denied_tool_definitions == "strip":
            without_tools(x.body, [path for path, _ in denied])
            x.stripped_tools = [d.tool for _, d in denied]
            return None
        first = denied[0][1]
        message = f"the request offers tool {first.tool!r}, which policy {first.policy_id!r} denies"
        return Refusal(
            403, message, first.policy_id, first.action, first.reason, metric="tool_definition"
        )

    def _redact(self, x: Exchange) -> None:
        policy = x.gov.pii.policy
        if policy is None or not guard.redacts(policy):
            return
        scanner = x.gov.pii.scanner()
        for change in guard.redactions(policy, x.call.segments, scanner.scan):
            set_at(x.body, change.segment.path, change.text)
            change.segment.text = change.text  # checked and recorded as forwarded
            x.redacted.extend(change.entities)

    def _redact_answer(self, x: Exchange, answer: Answer, body: Any) -> bool:
        """The PII ``redact`` rules on the model's output (hop OUTPUT) applied to a
        non-streamed answer before the client gets it (and as it is recorded)."""
        policy = x.gov.pii.policy
        if policy is None or not guard.redacts(policy) or not answer.text_paths:
            return False
        segments = [
            Segment("ASSISTANT", text, path)
            for text, path in zip(answer.text, answer.text_paths, strict=True)
        ]
        changes = guard.redactions(policy, segments, x.gov.pii.scanner().scan)
        for change in changes:
            set_at(body, change.segment.path, change.text)
            answer.text[segments.index(change.segment)] = change.text
            x.redacted.extend(change.entities)
        return bool(changes)

    def _record_tool_results(self, x: Exchange) -> None:
        for result in x.call.tool_results:
            x.session.tool_call(
                name=result.name,
                args=result.arguments or None,
                result=result.result,
                call_id=result.call_id or None,
                obey=False,  # it ran in the agent: the record says so, the worker decides
            )

    def _llm_step(self, x: Exchange) -> Step:
        from streams.client.checks import estimated_input_tokens

        inputs = x.call.inputs()
        return x.session.llm(
            model=x.call.model,
            provider=x.upstream.spec.api,
            content=guard.as_content(inputs),
            input_tokens=estimated_input_tokens([s.text for s in x.call.segments]),
            max_output_tokens=x.call.max_output_tokens,
        )

    def _opened(self, x: Exchange, step: Step) -> None:
        """The step passed its checks: record only the new turn, say what the gateway did."""
        step.fields["content"] = [{"role": s.role, "text": s.text} for s in x.call.new_turn()]
        step.fields["operation"] = x.endpoint.operation

    def _close_step(self, x: Exchange, step: Step, answer: Answer) -> None:
        usage = answer.usage
        step.usage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_input_tokens=usage.cache_read_input_tokens,
            cache_write_input_tokens=usage.cache_write_input_tokens,
            reasoning_output_tokens=usage.reasoning_output_tokens,
        )
        if answer.text:
            step.output("".join(answer.text))
        self._annotate(x, step, usage_reported=usage.reported)

    def _annotate(self, x: Exchange, step: Step, **extra: Any) -> None:
        step.fields["attributes"] = guard.attributes(
            {
                "gateway.upstream": x.upstream.name,
                "gateway.route": x.endpoint.kind,
                "gateway.attempts": x.sent,
                "gateway.retried": "; ".join(x.attempts) or None,
                "gateway.redacted": ",".join(sorted(set(x.redacted))) or None,
                "gateway.stripped_tools": ",".join(x.stripped_tools) or None,
                **extra,
            }
        )

    # --- the upstream --------------------------------------------------------------------------

    def _upstream_request(self, x: Exchange) -> tuple[str, dict[str, str], bytes]:
        spec = x.upstream.spec
        headers = {"Content-Type": "application/json", "Accept-Encoding": "gzip"}
        for name in PASSED_HEADERS:
            value = x.request.headers.get(name)
            if value:
                headers[name] = value
        if spec.api == "anthropic":
            headers.setdefault("anthropic-version", ANTHROPIC_VERSION)
            if x.upstream.key:
                headers["x-api-key"] = x.upstream.key
        elif x.upstream.key:
            headers["Authorization"] = f"Bearer {x.upstream.key}"
        body = json.dumps(prepared(x.endpoint, x.body)).encode()
        return spec.base_url + x.endpoint.upstream_path, headers, body

    @contextlib.asynccontextmanager
    async def _send(self, x: Exchange) -> AsyncIterator[aiohttp.ClientResponse]:
        """The upstream's response (status 200), after bounded retries on a connect error, a
        5xx or a 429 (each failed attempt noted on ``x.attempts``). Raises UpstreamError."""
        assert self._http is not None
        spec = x.upstream.spec
        url, headers, body = self._upstream_request(x)
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=spec.connect_timeout_s, sock_read=spec.timeout_s
        )
        name = x.upstream.name
        for attempt in range(spec.retries + 1):
            last = attempt == spec.retries
            sent = time.perf_counter()
            x.sent += 1
            try:
                response = await self._http.post(url, data=body, headers=headers, timeout=timeout)
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                # nothing was sent: safe to try again
                self.metrics.upstream_errors.labels(name, "connect").inc()
                x.attempts.append(f"connect: {exc}")
                if last:
                    message = f"upstream {name!r} ({spec.base_url}) cannot be reached: {exc}"
                    raise UpstreamUnreachable(
                        Refusal(502, message, metric="upstream"), x.attempts
                    ) from exc
                await asyncio.sleep(spec.retry_backoff_s * 2**attempt)
                continue
            except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
                # sent: the provider may be working on it (and billing it): not retried
                self.metrics.upstream_errors.labels(name, "timeout").inc()
                x.attempts.append("timeout")
                message = f"upstream {name!r} did not answer within {spec.timeout_s:g}s"
                raise UpstreamTimeout(Refusal(504, message, metric="upstream"), x.attempts) from exc
            self.metrics.upstream_latency.labels(name).observe(time.perf_counter() - sent)
            if response.status == 200:
                try:
                    yield response
                finally:
                    response.release()
                return
            retryable = response.status >= 500 or response.status == 429
            if retryable and not last:
                self.metrics.upstream_errors.labels(name, str(response.status)).inc()
                x.attempts.append(f"HTTP {response.status}")
                wait = _retry_after(response.headers.get("Retry-After"))
                response.release()
                await asyncio.sleep(max(wait, spec.retry_backoff_s * 2**attempt))
                continue
            payload = await response.read()
            content_type = response.content_type or "application/json"
            response.release()
            self.metrics.upstream_errors.labels(name, str(response.status)).inc()
            x.attempts.append(f"HTTP {response.status}")
            raise UpstreamHttpError(response.status, payload, content_type, x.attempts)

    async def _unary(self, x: Exchange) -> web.StreamResponse:
        async with self._llm_step(x) as step:
            self._opened(x, step)
            answer = Answer()
            try:
                async with self._send(x) as response:
                    raw = await _read(x, response.read())
                try:
                    data = json.loads(raw)
                except ValueError:
                    data = None
                answer = read_answer(x.endpoint.kind, data)
                if self._redact_answer(x, answer, data):
                    raw = json.dumps(data).encode()
            finally:
                self._close_step(x, step, answer)
        denied = self._tool_calls(x, answer.tool_calls)
        if denied:
            if self.config.file.denied_tool_calls == "refuse" or not isinstance(data, dict):
                return self._refuse(x.api, denied[0][1])
            strip_tool_calls(x.endpoint.kind, data, [call for call, _ in denied])
            raw = json.dumps(data).encode()
        return web.Response(body=raw, content_type="application/json")

    def _tool_calls(self, x: Exchange, calls: list[ToolCall]) -> list[tuple[ToolCall, Refusal]]:
        """The tool calls the model asks for that the checks refuse (recorded BLOCKED)."""
        denied = []
        for call in calls:
            try:
                x.session.guard_tool(
                    name=call.name, args=call.arguments or None, call_id=call.call_id
                )
            except StepBlocked as blocked:
                refusal = self._blocked(x, blocked, metric="tool_call")
                denied.append((call, refusal))
        return denied

    async def _streamed(self, x: Exchange) -> web.StreamResponse:
        out: web.StreamResponse | None = None
        held: list[bytes] = []
        fold = StreamFold(x.endpoint.kind)
        try:
            async with self._llm_step(x) as step:
                self._opened(x, step)
                try:
                    async with self._send(x) as response:
                        out = web.StreamResponse(
                            headers={
                                "Content-Type": "text/event-stream",
                                "Cache-Control": "no-cache",
                                SESSION_HEADER: x.session.session_id,
                            }
                        )
                        await out.prepare(x.request)
                        splitter = SseSplitter()
                        chunks = response.content.iter_any()
                        while (chunk := await _read(x, anext(chunks, b""))) != b"":
                            passed = []  # the whole events of this chunk: one write
                            for event in splitter.feed(chunk):
                                if fold.feed(event) is not None or held:
                                    held.append(event.raw)  # a tool call: checked when whole
                                else:
                                    passed.append(event.raw)
                            if passed:
                                await out.write(b"".join(passed))
                        rest = splitter.rest()
                        if rest:
                            held.append(rest)
                finally:
                    # also when cut short (a KILL, a timeout): what the stream said so far
                    self._close_step(x, step, fold.finished())
        except SessionKilled as killed:
            if out is None:
                raise
            await self._end_stream(x, out, _killed(killed))
            return out
        except UpstreamError as failed:
            if out is None:
                raise
            await self._end_stream(x, out, failed.refusal)
            return out
        except ConnectionError:  # the client went away mid-stream (recorded on the step)
            if out is None:
                raise
            return out
        answer = fold.answer
        denied = self._tool_calls(x, answer.tool_calls)
        assert out is not None
        strip = self.config.file.denied_tool_calls == "strip"
        if denied and strip and x.endpoint.kind in STRIPPABLE_STREAMS:
            held = strip_streamed(
                x.endpoint.kind, held, [call for call, _ in denied], answer.tool_calls
            )
        elif denied:
            await self._end_stream(x, out, denied[0][1])
            return out
        for raw in held:
            await out.write(raw)
        await out.write_eof()
        return out

    async def _end_stream(self, x: Exchange, out: web.StreamResponse, refusal: Refusal) -> None:
        self.metrics.refusals.labels(refusal.metric).inc()
        with contextlib.suppress(ConnectionError):
            await out.write(stream_error(x.endpoint.api, refusal))
            await out.write_eof()

    # --- refusals ------------------------------------------------------------------------------

    def _refuse(self, api: str, refusal: Refusal) -> web.Response:
        if refusal.status in (403, 429) or refusal.metric in ("auth",):
            self.metrics.refusals.labels(refusal.metric).inc()
        headers = {}
        if refusal.retry_after_s is not None:
            headers["Retry-After"] = str(refusal.retry_after_s)
        body = error_body("anthropic" if api == "anthropic" else "openai", refusal)
        return web.json_response(body, status=refusal.status, headers=headers)

    def _blocked(self, x: Exchange, blocked: StepBlocked, metric: str | None = None) -> Refusal:
        policy = next(
            (p for p in x.gov.policy_set.policies.policies if p.id == blocked.policy_id), None
        )
        kind = metric or (policy.kind if policy is not None else "policy")
        status = 429 if blocked.action == "PAUSE" else 403
        return Refusal(
            status,
            str(blocked),
            blocked.policy_id,
            blocked.action,
            blocked.reason,
            retry_after_s=PAUSE_RETRY_AFTER_S if status == 429 else None,
            metric=kind,
        )

    def _pii_refusal(self, x: Exchange, blocked: InputBlocked) -> Refusal:
        hops = guard.hops_of(
            x.call.inputs(), blocked.entity_types, lambda text: x.gov.pii.found([text])
        )
        message = (
            f"the request was not sent: {', '.join(blocked.entity_types)} found in "
            f"{', '.join(hops) or 'the input'}, which the PII policy blocks"
        )
        return Refusal(
            403,
            message,
            "pii",
            "BLOCK",
            blocked.reason,
            entities=tuple(blocked.entity_types),
            hops=tuple(hops),
            metric="pii",
        )


_NO_KEY = (
    "missing or unknown gateway key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>' "
    "with a key whose SHA-256 is listed in gateway.yaml"
)


async def _read(x: Exchange, reading: Awaitable[bytes]) -> bytes:
    """A read of the upstream's body; a stall or a cut becomes an UpstreamError."""
    name, spec = x.upstream.name, x.upstream.spec
    try:
        return await reading
    except TimeoutError as exc:  # aiohttp's ServerTimeoutError too
        x.attempts.append("read timeout")
        message = f"upstream {name!r} stopped sending for {spec.timeout_s:g}s"
        raise UpstreamTimeout(Refusal(504, message, metric="upstream"), x.attempts) from exc
    except aiohttp.ClientError as exc:
        x.attempts.append(f"read: {exc}")
        message = f"upstream {name!r} broke off its answer: {exc}"
        raise UpstreamUnreachable(Refusal(502, message, metric="upstream"), x.attempts) from exc


def _retry_after(value: str | None) -> float:
    try:
        seconds = float(value or 0)
    except ValueError:
        return 0.0
    return min(max(seconds, 0.0), 10.0) if math.isfinite(seconds) else 0.0


def _killed(killed: SessionKilled) -> Refusal:
    return Refusal(
        403,
        str(killed),
        killed.policy_id,
        "KILL",
        killed.reason,
        killed.decision_id,
        metric="kill",
    )


def _paused(decision: dict[str, Any], now_us: int) -> Refusal:
    expires = decision.get("expires_at_us")
    wait = PAUSE_RETRY_AFTER_S
    if expires is not None and expires > now_us:
        wait = max(1, math.ceil((expires - now_us) / 1_000_000))
    return Refusal(
        429,
        f"session paused by policy {decision['policy_id']!r}: {decision['reason']}",
        decision["policy_id"],
        "PAUSE",
        decision["reason"],
        decision["decision_id"],
        retry_after_s=wait,
        metric="pause",
    )


# --- running -------------------------------------------------------------------------------------


@dataclass
class Running:
    gateway: Gateway
    runner: web.AppRunner
    port: int

    async def stop(self) -> None:
        await self.runner.cleanup()
        await self.gateway.stop()


async def start(
    settings: Settings,
    config: GatewayConfig,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    public_keys: KeyRing | None = None,
    policy_wait_s: float = 2.0,
) -> Running:
    """Start a gateway on ``host:port`` (0: a free port; see :attr:`Running.port`)."""
    gateway = Gateway(settings, config, public_keys=public_keys, policy_wait_s=policy_wait_s)
    await gateway.start()
    runner = web.AppRunner(gateway.app(), access_log=None, shutdown_timeout=10.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        await gateway.stop()
        raise
    bound = port or int(runner.addresses[0][1])
    return Running(gateway, runner, bound)


async def serve(
    settings: Settings,
    config: GatewayConfig,
    host: str,
    port: int,
    on_ready: Callable[[int], Awaitable[None] | None] | None = None,
) -> None:
    """Run a gateway until cancelled (Ctrl-C) or SIGTERM."""
    running = await start(settings, config, host, port)
    stopping = asyncio.Event()
    with contextlib.suppress(NotImplementedError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    try:
        if on_ready is not None:
            ready = on_ready(running.port)
            if ready is not None:
                await ready
        await stopping.wait()
    finally:
        await running.stop()
