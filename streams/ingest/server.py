"""``governor ingest``: the OTLP/HTTP receiver (``POST /v1/traces``, ``POST /v1/logs``).

Served with aiohttp (already Governor's web stack through Faust): one asyncio process, no state
of its own, so run as many as the load needs behind any HTTP load balancer. Each request is
decoded (:mod:`streams.ingest.otlp`), mapped (:mod:`streams.ingest.steps`), checked with the
worker's own validation (so nothing it would dead-letter is produced), numbered
(:mod:`streams.ingest.seq`), produced to ``<prefix>events`` keyed by session id and answered
only once the broker has acknowledged every event (:mod:`streams.ingest.sink`).

Responses follow OTLP/HTTP: 200 with an ``Export*ServiceResponse`` (``partial_success`` names
each refused span or log record and why); 400 for a payload that is not an OTLP request, 413
too large, 415 neither protobuf nor JSON, 401 without the configured bearer token, 503 when
Redis or Kafka did not take the events (the exporter retries). ``GET /metrics`` (Prometheus),
``GET /healthz`` and the signed decisions of :mod:`streams.ingest.control_http`
(``/control/...``, for agents that obey without the Python client) are served on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

from streams.codec import Codec, Codecs
from streams.http_auth import ApiTokens, check
from streams.ingest.control_http import ControlFeed, ControlViews
from streams.ingest.otlp import (
    DEFAULT_MAX_BODY_BYTES,
    Encoding,
    OtlpError,
    TooLarge,
    UnsupportedMediaType,
    decompress,
    encoding_of,
    logs_of,
    logs_response,
    parse_logs,
    parse_traces,
    spans_of,
    status_body,
    traces_response,
)
from streams.ingest.seq import PendingEnds, SeqLedger, SeqUnavailable, TurnLedger
from streams.ingest.sink import DEFAULT_DELIVERY_TIMEOUT_S, EventSink, SinkUnavailable
from streams.ingest.steps import (
    Draft,
    Mapped,
    PendingEnd,
    Refusal,
    apply_turns,
    ending_turns,
    map_logs,
    map_spans,
    settle_pending,
    turns_of,
)
from streams.pipeline.validate import IngestBounds, validate_event
from streams.settings import Settings

log = logging.getLogger("governor.ingest")

DEFAULT_HOST = "127.0.0.1"
#: the OTLP/HTTP port
DEFAULT_PORT = 4318
UNAVAILABLE = 14  # google.rpc.Code.UNAVAILABLE
#: on SIGTERM, requests in flight get this long to be answered (their events acknowledged)
SHUTDOWN_TIMEOUT_S = DEFAULT_DELIVERY_TIMEOUT_S + 1
UNAUTHENTICATED = 16


@dataclass(frozen=True)
class IngestConfig:
    #: tenant of items whose resource names none (None: such items are refused)
    default_tenant: str | None = None
    #: when set, every request needs ``Authorization: Bearer <token>``
    token: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    delivery_timeout_s: float = DEFAULT_DELIVERY_TIMEOUT_S


@dataclass(frozen=True)
class IngestMetrics:
    registry: CollectorRegistry
    requests: Counter
    items: Counter
    refused: Counter
    ignored: Counter
    fallbacks: Counter
    events: Counter
    latency: Histogram
    open_turns: Counter

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def ingest_metrics() -> IngestMetrics:
    """A fresh registry per receiver (several in one process in tests)."""
    r = CollectorRegistry()
    return IngestMetrics(
        registry=r,
        requests=Counter(
            "governor_ingest_requests",
            "OTLP export requests, by signal and HTTP status",
            ["signal", "code"],
            registry=r,
        ),
        items=Counter(
            "governor_ingest_items",
            "spans and log records received, by signal and outcome (accepted/refused/ignored)",
            ["signal", "outcome"],
            registry=r,
        ),
        refused=Counter(
            "governor_ingest_refused",
            "spans, log records and events refused (named in the partial-success response)",
            ["signal", "reason"],
            registry=r,
        ),
        ignored=Counter(
            "governor_ingest_ignored",
            "spans and log records that are no step on purpose (not GenAI, create_agent, ...)",
            ["signal", "reason"],
            registry=r,
        ),
        fallbacks=Counter(
            "governor_ingest_conversation_fallbacks",
            "GenAI items whose session id is not gen_ai.conversation.id, by the source used",
            ["signal", "source"],
            registry=r,
        ),
        events=Counter(
            "governor_ingest_events",
            "StepEvents produced to the events topic, by kind",
            ["kind"],
            registry=r,
        ),
        latency=Histogram(
            "governor_ingest_request_seconds",
            "time to answer an export request (decode to broker acknowledgement)",
            ["signal"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=r,
        ),
        open_turns=Counter(
            "governor_ingest_open_turns",
            "root agent spans of a turn whose ancestors were not in their request: the turn's "
            "end waits in Redis for them (send whole traces to end turns at once)",
            registry=r,
        ),
    )


def bearer_ok(authorization: str | None, token: str | None) -> bool:
    """Whether an ``Authorization`` header carries ``token`` (always, when no token is set);
    the check is :mod:`streams.http_auth`'s, constant time."""
    if not token:
        return True
    answer = check(authorization, ApiTokens.single(token), mutating=True, bound_host="")
    return answer.ok


class Receiver:
    """The request handlers; :meth:`app` wires them into an aiohttp application."""

    def __init__(
        self,
        settings: Settings,
        config: IngestConfig,
        sink: EventSink,
        ledger: SeqLedger,
        codec: Codec,
        metrics: IngestMetrics | None = None,
        turns: TurnLedger | None = None,
        pending: PendingEnds | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.sink = sink
        self.ledger = ledger
        self.turns = turns
        self.pending = pending
        self.codec = codec
        self.metrics = metrics or ingest_metrics()
        self.topic = settings.topic("events")
        self.bounds = IngestBounds.of(settings)
        # numbering and producing one request at a time keeps each session's events in seq
        # order on its partition (the broker work is awaited outside the lock)
        self._order = asyncio.Lock()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.router.add_post("/v1/traces", self.traces)
        app.router.add_post("/v1/logs", self.logs)
        app.router.add_get("/metrics", self.metrics_view)
        app.router.add_get("/healthz", self.healthz)
        return app

    # --- views ---------------------------------------------------------------------------

    async def traces(self, request: web.Request) -> web.Response:
        return await self._export(
            request,
            "traces",
            lambda data, enc: map_spans(spans_of(parse_traces(data, enc)), self._tenant),
            traces_response,
        )

    async def logs(self, request: web.Request) -> web.Response:
        return await self._export(
            request,
            "logs",
            lambda data, enc: map_logs(logs_of(parse_logs(data, enc)), self._tenant),
            logs_response,
        )

    async def metrics_view(self, _request: web.Request) -> web.Response:
        response = web.Response(body=self.metrics.exposition())
        response.content_type = CONTENT_TYPE_LATEST.split(";", 1)[0]
        return response

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    # --- the export path -----------------------------------------------------------------

    @property
    def _tenant(self) -> str | None:
        return self.config.default_tenant

    async def _export(
        self,
        request: web.Request,
        signal: str,
        decode_and_map: Callable[[bytes, Encoding], Mapped],
        respond: Callable[[int, str, Encoding], bytes],
    ) -> web.Response:
        started = time.perf_counter()
        content_type = request.headers.get("Content-Type")
        # errors are answered in the request's encoding, JSON when it has none we know
        protobuf = (content_type or "").startswith(Encoding.PROTOBUF.value)
        encoding = Encoding.PROTOBUF if protobuf else Encoding.JSON
        if not self.authorized(request):
            message = "missing or wrong bearer token (Authorization: Bearer <token>)"
            return self._error(signal, 401, message, encoding, UNAUTHENTICATED)
        try:
            encoding = encoding_of(content_type)
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge as exc:
                raise TooLarge(f"body exceeds {self.config.max_body_bytes:,} bytes") from exc
            data = decompress(
                raw, request.headers.get("Content-Encoding"), self.config.max_body_bytes
            )
            mapped = decode_and_map(data, encoding)
        except UnsupportedMediaType as exc:
            return self._error(signal, 415, str(exc), encoding)
        except TooLarge as exc:
            return self._error(signal, 413, str(exc), encoding)
        except OtlpError as exc:
            return self._error(signal, 400, str(exc), encoding)
        try:
            settled, waiting, consumed = await self._waiting_ends(mapped)
            drafts = self._checked(mapped, await self._turned([*mapped.drafts, *settled]))
            produced = await self._produce(drafts)
            if self.pending is not None and (consumed or waiting):
                await self.pending.settle(consumed, waiting)
        except (SeqUnavailable, SinkUnavailable, TimeoutError) as exc:
            log.warning("ingest: %s request not taken: %s", signal, exc)
            reason = str(exc) or "Kafka did not acknowledge the events in time"
            return self._error(signal, 503, reason, encoding, UNAVAILABLE)
        self._count(signal, mapped, produced)
        rejected = len({r.item for r in mapped.refused})
        body = respond(rejected, mapped.refusal_message(), encoding)
        self.metrics.requests.labels(signal, "200").inc()
        self.metrics.latency.labels(signal).observe(time.perf_counter() - started)
        return web.Response(body=body, content_type=encoding.value)

    def authorized(self, request: web.Request) -> bool:
        return bearer_ok(request.headers.get("Authorization"), self.config.token)

    async def _waiting_ends(
        self, mapped: Mapped
    ) -> tuple[list[Draft], list[PendingEnd], dict[str, list[str]]]:
        """Turn ends that earlier requests left waiting for a span of this one: the ends it
        gives, the ends that wait (this request's and the ones waiting again), and the
        Redis fields it settles."""
        if self.pending is None or not mapped.spans:
            return [], [], {}
        found, consumed = await self.pending.find(mapped.spans)
        settled, again = settle_pending(mapped.spans, found) if found else ([], [])
        return settled, [*mapped.pending, *again], consumed

    async def _turned(self, drafts: list[Draft]) -> list[Draft]:
        """The drafts in their turns' sessions (named conversations: see steps.apply_turns)."""
        turns = turns_of(drafts)
        if not turns:
            return drafts
        if self.turns is None:  # numbering off: every conversation is one session
            return apply_turns(drafts, dict.fromkeys(turns, 1))
        return apply_turns(drafts, await self.turns.number(turns, ending_turns(drafts)))

    def _checked(self, mapped: Mapped, drafts: list[Draft]) -> list[Draft]:
        """The drafts the worker would accept; the rest refused with the worker's reason."""
        now_us = time.time_ns() // 1000
        kept: list[Draft] = []
        for draft in drafts:
            event = {**draft.event, "seq": 1}
            rejection = validate_event(event, draft.session_id.encode(), now_us, self.bounds)
            if rejection is not None:
                mapped.refused.append(Refusal(draft.item, rejection.reason, rejection.detail))
                continue
            kept.append(draft)
        return kept

    async def _produce(self, drafts: list[Draft]) -> int:
        if not drafts:
            return 0
        async with self._order:
            numbered = await self.ledger.assign(drafts)
            records = []
            for draft, seq in numbered:
                records.append(
                    (draft.session_id.encode(), self.codec.encode({**draft.event, "seq": seq}))
                )
                self.metrics.events.labels(draft.event["kind"]).inc()
            delivered = self.sink.send(self.topic, records)
        await asyncio.wait_for(delivered, self.config.delivery_timeout_s)
        return len(records)

    def _count(self, signal: str, mapped: Mapped, produced: int) -> None:
        m = self.metrics
        refused_items = len({r.item for r in mapped.refused})
        m.items.labels(signal, "accepted").inc(max(0, mapped.accepted - refused_items))
        m.items.labels(signal, "refused").inc(refused_items)
        m.items.labels(signal, "ignored").inc(sum(mapped.ignored.values()))
        for refusal in mapped.refused:
            m.refused.labels(signal, refusal.reason).inc()
        for reason, n in mapped.ignored.items():
            m.ignored.labels(signal, reason).inc(n)
        for source, n in mapped.fallbacks.items():
            m.fallbacks.labels(signal, source).inc(n)
        if mapped.open_turns:
            m.open_turns.inc(mapped.open_turns)
        if mapped.refused:
            log.info("ingest: %s refused: %s", signal, mapped.refusal_message(5))

    def _error(
        self, signal: str, status: int, message: str, encoding: Encoding, code: int = 3
    ) -> web.Response:
        self.metrics.requests.labels(signal, str(status)).inc()
        return web.Response(
            status=status, body=status_body(message, encoding, code), content_type=encoding.value
        )


@dataclass
class Running:
    """A started receiver: where it listens and how to stop it."""

    receiver: Receiver
    runner: web.AppRunner
    port: int
    redis: aioredis.Redis
    feed: ControlFeed

    async def stop(self) -> None:
        await self.runner.cleanup()
        await asyncio.get_running_loop().run_in_executor(None, self.feed.close)
        await asyncio.get_running_loop().run_in_executor(None, self.receiver.sink.close)
        await self.redis.aclose()


async def start(
    settings: Settings, config: IngestConfig, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT
) -> Running:
    """Start a receiver on ``host:port`` (0: a free port; see :attr:`Running.port`)."""
    client = aioredis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
    )
    codecs = Codecs.load(settings.schemas_dir)
    receiver = Receiver(
        settings,
        config,
        EventSink(settings),
        SeqLedger(client, settings.redis_key_prefix),
        codecs.step_event,
        turns=TurnLedger(client, settings.redis_key_prefix),
        pending=PendingEnds(client, settings.redis_key_prefix),
    )
    app = receiver.app()
    feed = ControlFeed(settings, codecs.decision)
    ControlViews(settings, client, codecs.decision, feed, receiver.authorized).add_routes(app)
    # the receiver inflates bodies itself, bounded by max_body_bytes (a gzip bomb stops there)
    runner = web.AppRunner(
        app, access_log=None, auto_decompress=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = port or int(runner.addresses[0][1])
    return Running(receiver, runner, bound, client, feed)


async def serve(
    settings: Settings,
    config: IngestConfig,
    host: str,
    port: int,
    on_ready: Callable[[int], Awaitable[None] | None] | None = None,
) -> None:
    """Run a receiver until cancelled (Ctrl-C) or SIGTERM; requests in flight are answered."""
    running = await start(settings, config, host, port)
    stopping = asyncio.Event()
    with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    try:
        if on_ready is not None:
            ready = on_ready(running.port)
            if ready is not None:
                await ready
        await stopping.wait()
    finally:
        await running.stop()
