"""Signed decisions over HTTP, so an agent without the Python client can obey.

Served by ``governor ingest`` next to the OTLP endpoints:

- ``GET /control/keys``: the public keys decisions are signed with (``{"keys": {kid: base64}}``,
  raw 32-byte Ed25519 keys, the same as ``<keys>/<kid>.pub`` and
  ``GOVERNOR_CONTROL_PUBLIC_KEYS``);
- ``GET /control/sessions/{session_id}[?tenant=T&agent=A]``: the latest decision for the
  session (and, with ``tenant``/``agent``, for its agent and tenant), from the worker's Redis
  mirror, and ``in_force``: the strongest one not expired;
- ``GET /control/tenants/{tenant}/stream``: server-sent events, one ``decision`` event per
  decision published for the tenant from the moment of connecting (read from the control topic;
  ``id:`` is the decision id), a comment line every 15 s to keep the connection open.

Every decision is sent as ``{"decision": {...}, "signed_payload": base64, "signature": base64,
"key_id": kid}``. **To verify**: base64-decode ``signed_payload`` and ``signature``, verify the
Ed25519 signature over those exact bytes with the public key ``key_id`` names (one you trust:
pin it from ``/control/keys`` or your deployment, never trust a key the same response gives
you), then parse ``signed_payload`` as JSON and act on *those* fields only: check ``target``
is your session, agent or tenant, ``tenant_id`` is yours, ``expires_at_us`` (if set) is in the
future, and ``epoch`` is above the last one you applied for that target. ``decision`` is the
same fields, for reading. Connect the stream first, then read the snapshot, to miss nothing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from confluent_kafka import OFFSET_END, Consumer, KafkaException, TopicPartition
from redis.exceptions import RedisError

from streams.codec import Codec, DecodeError
from streams.control import (
    SEVERITY,
    SIGNED_FIELDS,
    agent_target,
    decision_redis_key,
    session_target,
    signing_payload,
    tenant_target,
)
from streams.kafka_config import client_config
from streams.settings import Settings

log = logging.getLogger("governor.ingest.control")

KEEPALIVE_S = 15.0


def published(decision: Mapping[str, Any]) -> dict[str, Any]:
    """A signed decision as JSON: its signed fields, the exact signed bytes and the signature."""
    fields = {name: decision.get(name) for name in SIGNED_FIELDS}
    fields["parameters"] = dict(decision.get("parameters") or {})
    return {
        "decision": fields,
        "signed_payload": base64.b64encode(signing_payload(decision)).decode(),
        "signature": base64.b64encode(decision.get("signature") or b"").decode(),
        "key_id": decision.get("key_id"),
    }


def in_force(decisions: Sequence[Mapping[str, Any]], now_us: int) -> Mapping[str, Any] | None:
    """The strongest decision not expired (the latest epoch among equals), or None."""
    live = [d for d in decisions if not d.get("expires_at_us") or int(d["expires_at_us"]) > now_us]
    if not live:
        return None
    return max(live, key=lambda d: (SEVERITY.get(str(d.get("action")), 0), int(d["epoch"])))


def public_keys(settings: Settings) -> dict[str, str]:
    """Key id → base64 public key, as the clients are configured to trust them."""
    if settings.control_public_keys:
        pairs = (item.split(":", 1) for item in settings.control_public_keys.split(","))
        return {kid.strip(): b64.strip() for kid, b64 in pairs if b64.strip()}
    folder: Path = settings.control_keys_dir
    return {p.stem: p.read_text().strip() for p in sorted(folder.glob("*.pub"))}


class ControlFeed:
    """One consumer of the control topic per process, fanning decisions out to subscribers."""

    def __init__(self, settings: Settings, codec: Codec) -> None:
        self.settings = settings
        self.codec = codec
        self._subscribers: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.ready = asyncio.Event()
        self.undecodable = 0

    async def subscribe(self, tenant: str) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=10_000)
        with self._lock:
            self._subscribers.setdefault(tenant, set()).add(queue)
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(target=self._run, name="governor-control", daemon=True)
            self._thread.start()
        await self.ready.wait()
        return queue

    def unsubscribe(self, tenant: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
        with self._lock:
            self._subscribers.get(tenant, set()).discard(queue)

    def close(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _deliver(self, decision: dict[str, Any]) -> None:
        with self._lock:
            queues = list(self._subscribers.get(str(decision.get("tenant_id")), ()))
        for queue in queues:
            if queue.full():  # a stalled reader loses its oldest decision, not the process
                queue.get_nowait()
            queue.put_nowait(decision)

    def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        topic = self.settings.topic("control")
        consumer = Consumer(
            {
                **client_config(self.settings),
                "group.id": f"{self.settings.app_id}-ingest-control",
                "enable.auto.commit": False,
                "log_level": 3,
            }
        )
        try:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            assigned = [TopicPartition(topic, p, OFFSET_END) for p in partitions]
            consumer.assign(assigned)
            # resolve the end offsets now, so "ready" means every later decision is seen
            for tp in assigned:
                _low, high = consumer.get_watermark_offsets(tp, timeout=10)
                consumer.seek(TopicPartition(topic, tp.partition, high))
            loop.call_soon_threadsafe(self.ready.set)
            while not self._stopping.is_set():
                message = consumer.poll(0.2)
                if message is None or message.error() is not None:
                    continue
                try:
                    decision = self.codec.decode(message.value() or b"")
                except DecodeError:
                    self.undecodable += 1
                    continue
                loop.call_soon_threadsafe(self._deliver, decision)
        except (KafkaException, KeyError) as exc:
            log.warning("control feed stopped: %s", exc)
            loop.call_soon_threadsafe(self.ready.set)
        finally:
            consumer.close()


class ControlViews:
    """The ``/control`` views (see the module doc)."""

    def __init__(
        self,
        settings: Settings,
        client: aioredis.Redis,
        codec: Codec,
        feed: ControlFeed,
        authorized: Callable[[web.Request], bool] = lambda _request: True,
    ) -> None:
        self.settings = settings
        self.client = client
        self.codec = codec
        self.feed = feed
        self.authorized = authorized
        #: open event streams, ended when the server shuts down (they never end by themselves)
        self._streams: set[asyncio.Task[Any]] = set()

    @web.middleware
    async def guard(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Any],
    ) -> web.StreamResponse:
        """The receiver's bearer token, when configured, guards /control too."""
        if request.path.startswith("/control/") and not self.authorized(request):
            return web.json_response(
                {"error": "missing or wrong bearer token (Authorization: Bearer <token>)"},
                status=401,
            )
        response: web.StreamResponse = await handler(request)
        return response

    def add_routes(self, app: web.Application) -> None:
        app.middlewares.append(self.guard)
        app.on_shutdown.append(self._end_streams)
        app.router.add_get("/control/keys", self.keys)
        app.router.add_get("/control/sessions/{session_id}", self.session)
        app.router.add_get("/control/tenants/{tenant}/stream", self.stream)

    async def keys(self, _request: web.Request) -> web.Response:
        return web.json_response({"keys": public_keys(self.settings)})

    async def session(self, request: web.Request) -> web.Response:
        session_id = request.match_info["session_id"]
        tenant = request.query.get("tenant")
        agent = request.query.get("agent")
        targets = [session_target(session_id)]
        if tenant:
            if agent:
                targets.append(agent_target(tenant, agent))
            targets.append(tenant_target(tenant))
        prefix = self.settings.redis_key_prefix
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for target in targets:
                    pipe.hget(decision_redis_key(prefix, target), "payload")
                raw = await pipe.execute()
        except RedisError as exc:
            return web.json_response(
                {"error": f"the decision mirror (Redis) is unavailable: {exc}"}, status=503
            )
        decisions = []
        for value in raw:
            if value is None:
                continue
            try:
                decision = self.codec.decode(value)
            except DecodeError:
                continue
            if tenant and decision.get("tenant_id") != tenant:
                continue
            decisions.append(decision)
        strongest = in_force(decisions, time.time_ns() // 1000)
        return web.json_response(
            {
                "session_id": session_id,
                "targets": targets,
                "decisions": [published(d) for d in decisions],
                "in_force": None if strongest is None else published(strongest),
            }
        )

    async def _end_streams(self, _app: web.Application) -> None:
        for task in list(self._streams):
            task.cancel()

    async def stream(self, request: web.Request) -> web.StreamResponse:
        tenant = request.match_info["tenant"]
        queue = await self.feed.subscribe(tenant)
        task = asyncio.current_task()
        if task is not None:
            self._streams.add(task)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        try:
            await response.prepare(request)
            await response.write(f": governor decisions of tenant {tenant}\n\n".encode())
            while True:
                try:
                    decision = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    await response.write(b": keepalive\n\n")
                    continue
                data = json.dumps(published(decision), separators=(",", ":"))
                await response.write(
                    f"event: decision\nid: {decision['decision_id']}\ndata: {data}\n\n".encode()
                )
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.feed.unsubscribe(tenant, queue)
            if task is not None:
                self._streams.discard(task)
        return response
