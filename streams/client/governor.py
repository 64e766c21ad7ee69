"""``Governor`` and its sessions: what an agent fleet imports.

    gov = Governor(tenant="acme", agent="support-bot", agent_version="1.4.0")
    with gov.session(category="billing", prompt_version="p7") as s:
        s.llm_call(model="gpt-4o-mini", input_tokens=900, output_tokens=120, duration_ms=840)
        with s.tool(name="lookup_order", args={"id": 42}) as step:
            step.result(lookup_order(42))

Emitting never waits on the broker (see :mod:`streams.client.emitter` for the buffer bound).
Before each step the session applies the strongest decision in force for it, its agent or its
tenant: KILL raises :class:`SessionKilled`, THROTTLE waits, PAUSE blocks until RESUME (or
:class:`PauseTimeout`), WARN calls ``on_warn``. A KILL that arrives while an async step runs
cancels that step at once; the step is recorded as CANCELLED. Each decision a session applies is
reported once, on the session's next event (for a KILL, its SESSION_END), as the attributes of
:func:`streams.control.acted_attributes`: decision id, action, when, and how long it waited.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any

import redis

from streams.client.budget import Budgets, Reservation
from streams.client.emitter import Emitter
from streams.client.errors import PauseTimeout, SessionKilled, ToolBlocked
from streams.client.pii import PiiGuard
from streams.client.subscriber import ControlSubscriber
from streams.codec import Codecs, DecodeError
from streams.control import (
    ActedOn,
    DecisionBook,
    DropReason,
    KeyRing,
    acted_attributes,
    agent_target,
    decision_redis_key,
    session_target,
    tenant_target,
)
from streams.settings import Settings

log = logging.getLogger("governor.client")

Content = Iterable[tuple[str, str] | Mapping[str, str]]
WarnCallback = Callable[["Session", dict[str, Any]], None]
PAUSE_POLL_S = 0.05


def _segments(content: Content | None) -> list[dict[str, str]]:
    segments = []
    for item in content or ():
        role, text = (item["role"], item["text"]) if isinstance(item, Mapping) else item
        segments.append({"role": role.upper(), "text": text})
    return segments


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class Governor:
    """One agent process's connection to Governor (one tenant, one agent)."""

    def __init__(
        self,
        tenant: str,
        agent: str,
        agent_version: str | None = None,
        *,
        bootstrap: str | None = None,
        redis_url: str | None = None,
        settings: Settings | None = None,
        public_keys: KeyRing | None = None,
        on_warn: WarnCallback | None = None,
        clock: Callable[[], float] = time.time,
        obey: bool = True,
        pii_guard: bool | None = None,
        redact: bool = False,
    ) -> None:
        base = settings or Settings.from_env()
        self.settings = base.replace(
            bootstrap=bootstrap or base.bootstrap, redis_url=redis_url or base.redis_url
        )
        self.tenant = tenant
        self.agent = agent
        self.agent_version = agent_version
        self.on_warn = on_warn
        self.clock = clock
        self.codecs = Codecs.load(self.settings.schemas_dir)
        self.pii = PiiGuard.build(self.settings, enabled=pii_guard, redact=redact)
        self._events_topic = self.settings.topic("events")
        self.emitter = Emitter(
            self.settings.bootstrap,
            buffer_events=self.settings.client_buffer_events,
            buffer_max_age_s=self.settings.client_buffer_max_age_s,
        )
        self.book = DecisionBook(
            tenant, public_keys if public_keys is not None else self._trusted_keys()
        )
        self.changed = threading.Condition()
        self._sessions: dict[str, Session] = {}
        self._sessions_lock = threading.Lock()
        self._redis = redis.Redis.from_url(
            self.settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5
        )
        self.budgets = Budgets(self._redis, self.settings.redis_key_prefix)
        self.redis_errors = 0
        self._subscriber: ControlSubscriber | None = None
        if obey:
            self._load_decisions([tenant_target(tenant), agent_target(tenant, agent)])
            self._subscriber = ControlSubscriber(
                self.settings.bootstrap,
                self.settings.topic("control"),
                self.codecs.decision,
                self.book,
                self.now_us,
                on_accept=self._on_decision,
                on_reconnect=self._reload_decisions,
            )
            self._subscriber.start()

    def _trusted_keys(self) -> KeyRing:
        if self.settings.control_public_keys:
            return KeyRing.parse(self.settings.control_public_keys)
        ring = KeyRing.from_dir(self.settings.control_keys_dir)
        if not len(ring):
            log.warning(
                "no trusted control keys (GOVERNOR_CONTROL_PUBLIC_KEYS or %s/*.pub): every "
                "decision will be dropped as unknown_key",
                self.settings.control_keys_dir,
            )
        return ring

    def now_us(self) -> int:
        return int(self.clock() * 1_000_000)

    # --- sessions ----------------------------------------------------------------------

    def session(
        self,
        session_id: str | None = None,
        *,
        category: str | None = None,
        prompt_version: str | None = None,
        model_version: str | None = None,
        tool_schema_version: str | None = None,
        resume: bool = False,
    ) -> Session:
        """A new session (with your id, or a random one), or with ``resume=True`` the
        continuation of a session another process started: its decisions are re-read from Redis
        and its ``seq`` continues from the wall clock in milliseconds, above anything the earlier
        process can have used, so the worker does not take the new events for duplicates."""
        if session_id is not None:
            self._load_decisions([session_target(session_id)])
        session = Session(
            self,
            session_id or str(uuid.uuid4()),
            category=category,
            prompt_version=prompt_version,
            model_version=model_version,
            tool_schema_version=tool_schema_version,
        )
        if resume:
            session.seq = time.time_ns() // 1_000_000
        return session

    def _register(self, session: Session) -> None:
        with self._sessions_lock:
            self._sessions[session.session_id] = session

    def _unregister(self, session: Session) -> None:
        with self._sessions_lock:
            self._sessions.pop(session.session_id, None)

    def emit(self, event: dict[str, Any]) -> None:
        if self.pii.redact and event.get("content"):
            event["content"] = self.pii.redacted(event["content"])
        self.emitter.emit(
            self._events_topic,
            event["session_id"].encode(),
            self.codecs.step_event.encode(event),
        )

    # --- decisions ---------------------------------------------------------------------

    def _on_decision(self, decision: dict[str, Any]) -> None:
        with self.changed:
            self.changed.notify_all()
        if decision["action"] != "KILL":
            return
        target = decision["target"]
        with self._sessions_lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            if target in session.targets:
                session._cancel_running_steps()

    def _load_decisions(self, targets: list[str]) -> None:
        """Latest decision per target from Redis, so a restarted agent remembers a kill."""
        prefix = self.settings.redis_key_prefix
        try:
            pipe = self._redis.pipeline(transaction=False)
            for target in targets:
                pipe.hget(decision_redis_key(prefix, target), "payload")
            values = pipe.execute()
        except redis.RedisError as exc:
            self.redis_errors += 1
            log.warning("cannot read decisions from Redis (%s); relying on the control topic", exc)
            return
        accepted = False
        for raw in values:
            if raw is None:
                continue
            try:
                decision = self.codecs.decision.decode(
                    raw if isinstance(raw, bytes) else raw.encode()
                )
            except DecodeError:
                self.book.count_drop(DropReason.UNDECODABLE)
                continue
            accepted |= self.book.offer(decision, self.now_us()) is None
        if accepted:
            with self.changed:
                self.changed.notify_all()

    def _reload_decisions(self) -> None:
        with self._sessions_lock:
            sessions = [session_target(s) for s in self._sessions]
        self._load_decisions(
            [tenant_target(self.tenant), agent_target(self.tenant, self.agent), *sessions]
        )

    # --- hard caps ---------------------------------------------------------------------

    def preflight(self, session: Session, estimated_cost_usd: float) -> Reservation:
        """Reserve ``estimated_cost_usd`` on every hard-capped target of ``session``.

        Raises :class:`BudgetExhausted` when a cap has no room. Pass the reservation to
        ``llm_call(reservation=...)`` (or call ``settle``/``release``) when the call is done.
        """
        return self.budgets.reserve(session.targets, round(estimated_cost_usd * 1_000_000))

    # --- lifecycle ---------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        s = self.emitter.stats
        return {
            "emitted": s.emitted,
            "delivered": s.delivered,
            "dropped": s.dropped,
            "failed": s.failed,
            "pending": s.pending,
            "decisions_accepted": self.book.accepted,
            "decisions_dropped": dict(self.book.drops),
            "redis_errors": self.redis_errors,
        }

    def close(self, timeout_s: float = 10.0) -> None:
        if self._subscriber is not None:
            self._subscriber.stop()
        self.emitter.close(timeout_s)
        self._redis.close()

    def __enter__(self) -> Governor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Session:
    """One agent session: a context manager (sync or async) that emits and obeys."""

    def __init__(
        self,
        gov: Governor,
        session_id: str,
        *,
        category: str | None,
        prompt_version: str | None,
        model_version: str | None,
        tool_schema_version: str | None,
    ) -> None:
        self.gov = gov
        self.session_id = session_id
        self.targets = (
            session_target(session_id),
            agent_target(gov.tenant, gov.agent),
            tenant_target(gov.tenant),
        )
        self.seq = 0
        self.killed_by: dict[str, Any] | None = None
        self._warned: set[str] = set()
        #: decisions applied and not yet reported on an event; ids ever reported (once each)
        self._acted: list[ActedOn] = []
        self._reported: set[str] = set()
        self._running: set[tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]]] = set()
        self._started_us = 0
        self._common = {
            "session_id": session_id,
            "tenant_id": gov.tenant,
            "agent_id": gov.agent,
            "agent_version": gov.agent_version,
            "category": category,
            "prompt_version": prompt_version,
            "model_version": model_version,
            "tool_schema_version": tool_schema_version,
        }

    # --- emitting ----------------------------------------------------------------------

    def emit(
        self,
        kind: str,
        *,
        start_us: int | None = None,
        duration_us: int = 0,
        status: str = "OK",
        **fields: Any,
    ) -> dict[str, Any]:
        """Publish one StepEvent of this session (no policy check); returns it."""
        acted, self._acted = self._acted, []
        if acted:
            fields["attributes"] = {**(fields.get("attributes") or {}), **acted_attributes(acted)}
        self.seq += 1
        event = {
            **self._common,
            "event_id": str(uuid.uuid4()),
            "seq": self.seq,
            "kind": kind,
            "start_time_us": self.gov.now_us() if start_us is None else start_us,
            "duration_us": duration_us,
            "status": status,
            **fields,
        }
        self.gov.emit(event)
        return event

    def llm_call(
        self,
        *,
        model: str,
        provider: str | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cache_read_input_tokens: int | None = None,
        reasoning_output_tokens: int | None = None,
        cost_usd: float | None = None,
        duration_ms: float = 0.0,
        status: str = "OK",
        error_type: str | None = None,
        content: Content | None = None,
        operation: str = "chat",
        reservation: Reservation | None = None,
        start_us: int | None = None,
        obey: bool = True,
    ) -> dict[str, Any]:
        """Record a finished LLM call (after the policy check for this step).

        ``obey=False`` records a call that already ran without applying the decision in force:
        adapters that report after the fact check before the step instead."""
        if obey:
            self.check()
        if reservation is not None:
            reservation.settle(cost_usd or 0.0)
        return self.emit(
            "LLM_CALL",
            start_us=start_us,
            duration_us=round(duration_ms * 1000),
            status=status,
            error_type=error_type,
            operation=operation,
            model=model,
            provider=provider,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_input_tokens=cache_read_input_tokens,
            reasoning_output_tokens=reasoning_output_tokens,
            cost_micros=None if cost_usd is None else round(cost_usd * 1_000_000),
            content=_segments(content),
        )

    def tool_call(
        self,
        *,
        name: str,
        args: Any = None,
        result: Any = None,
        duration_ms: float = 0.0,
        status: str = "OK",
        error_type: str | None = None,
        call_id: str | None = None,
        cost_usd: float | None = None,
        start_us: int | None = None,
        obey: bool = True,
    ) -> dict[str, Any]:
        """Record a finished tool call (after the policy check for this step); ``obey`` as
        in :meth:`llm_call`.

        With ``obey`` the arguments also pass the PII guard first: if the policy blocks what
        they hold, the call is recorded as BLOCKED (without its result) and
        :class:`ToolBlocked` is raised. Call this before relying on the tool's result, or
        :meth:`guard_tool` (or ``with s.tool(...)``) before running the tool."""
        if obey:
            self.check()
            self.guard_tool(name=name, args=args, call_id=call_id, start_us=start_us)
        content = []
        if args is not None:
            content.append(("TOOL_ARGUMENTS", _as_text(args)))
        if result is not None:
            content.append(("TOOL_RESULT", _as_text(result)))
        return self.emit(
            "TOOL_CALL",
            start_us=start_us,
            duration_us=round(duration_ms * 1000),
            status=status,
            error_type=error_type,
            operation="execute_tool",
            tool_name=name,
            tool_call_id=call_id,
            cost_micros=None if cost_usd is None else round(cost_usd * 1_000_000),
            content=_segments(content),
        )

    def guard_tool(
        self,
        *,
        name: str,
        args: Any = None,
        call_id: str | None = None,
        start_us: int | None = None,
    ) -> None:
        """Refuse a tool call whose arguments the PII policy blocks, before it runs: records it
        as BLOCKED and raises :class:`ToolBlocked`. For adapters that record tool calls after
        the fact (``tool_call(obey=False)``) and check before the step."""
        if args is None:
            return
        self._refuse_blocked_tool(
            {
                "tool_name": name,
                "tool_call_id": call_id,
                "operation": "execute_tool",
                "content": _segments([("TOOL_ARGUMENTS", _as_text(args))]),
            },
            start_us,
        )

    def _refuse_blocked_tool(self, fields: dict[str, Any], start_us: int | None = None) -> None:
        """The one PII guard of every tool call: BLOCKED on the record, ToolBlocked raised."""
        tool = fields.get("tool_name") or "unknown"
        blocked = self.gov.pii.refused(tool, fields.get("content") or [])
        if blocked:
            self.emit(
                "TOOL_CALL", start_us=start_us, status="BLOCKED", error_type="PiiBlocked", **fields
            )
            raise ToolBlocked(tool, blocked)

    def evaluation(self, *, name: str, score: float, start_us: int | None = None) -> dict[str, Any]:
        """Record an evaluation score of this session (no policy check: it is not a step)."""
        return self.emit(
            "EVALUATION", start_us=start_us, evaluation_name=name, evaluation_score=score
        )

    def error(self, error_type: str, message: str | None = None) -> dict[str, Any]:
        """Record an error that is not tied to one step."""
        attributes = {"message": message} if message else {}
        return self.emit("ERROR", status="ERROR", error_type=error_type, attributes=attributes)

    def output(self, text: str) -> dict[str, Any]:
        """Record what the agent finally returned to its user (scanned for PII, not a step)."""
        return self.emit(
            "EVALUATION", evaluation_name="output", content=[{"role": "OUTPUT", "text": text}]
        )

    def llm(
        self, *, model: str, provider: str | None = None, content: Content | None = None
    ) -> Step:
        """Time an LLM call yourself: ``with s.llm(model=...) as step: ...; step.usage(...)``."""
        return Step(
            self,
            "LLM_CALL",
            model=model,
            provider=provider,
            operation="chat",
            content=_segments(content),
        )

    def tool(self, *, name: str, args: Any = None, call_id: str | None = None) -> Step:
        """Time a tool call yourself: ``with s.tool(name=...) as step: step.result(...)``."""
        content = [("TOOL_ARGUMENTS", _as_text(args))] if args is not None else []
        return Step(
            self,
            "TOOL_CALL",
            tool_name=name,
            tool_call_id=call_id,
            operation="execute_tool",
            content=_segments(content),
        )

    # --- obeying -----------------------------------------------------------------------

    def _decision(self) -> dict[str, Any] | None:
        return self.gov.book.effective(self.targets, self.gov.now_us())

    def _note_acted(
        self, decision: Mapping[str, Any], acted_at_us: int, waited_us: int | None = None
    ) -> None:
        """Remember that this session applied ``decision``, for its next event (once per id)."""
        if decision["decision_id"] in self._reported:
            return
        self._reported.add(decision["decision_id"])
        self._acted.append(
            ActedOn(decision["decision_id"], decision["action"], acted_at_us, waited_us)
        )

    def _raise_if_killed(self, decision: dict[str, Any] | None) -> None:
        if decision is not None and decision["action"] == "KILL":
            self.killed_by = decision
            self._note_acted(decision, self.gov.now_us())
            raise SessionKilled(decision["reason"], decision["policy_id"], decision["decision_id"])

    def _warn(self, decision: dict[str, Any]) -> None:
        if decision["decision_id"] not in self._warned:
            self._warned.add(decision["decision_id"])
            self._note_acted(decision, self.gov.now_us())
            if self.gov.on_warn is not None:
                self.gov.on_warn(self, decision)

    def _next_step(self) -> tuple[str, float, dict[str, Any] | None]:
        """What the decision in force asks of the next step: ``go``, ``sleep`` (THROTTLE, for
        the returned seconds) or ``pause``. KILL raises; WARN calls back and goes on."""
        decision = self._decision()
        self._raise_if_killed(decision)
        if decision is None:
            return "go", 0.0, None
        if decision["action"] == "WARN":
            self._warn(decision)
            return "go", 0.0, decision
        if decision["action"] == "THROTTLE":
            return "sleep", _delay_s(decision), decision
        return "pause", 0.0, decision

    def _pause_left(self, deadline: float, decision: dict[str, Any] | None) -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            policy = decision["policy_id"] if decision else "?"
            raise PauseTimeout(f"paused by {policy} for too long")
        return remaining

    def check(self) -> None:
        """Apply the decision in force before a step. In a running event loop this only raises
        for KILL and calls WARN; THROTTLE and PAUSE are applied by ``await check_async()`` and
        by ``async with`` steps, so the loop is never blocked."""
        if _in_event_loop():
            self._next_step()
            return
        deadline = time.monotonic() + self.gov.settings.pause_timeout_s
        paused: _Paused | None = None
        try:
            while True:
                verdict, seconds, decision = self._next_step()
                if verdict == "go":
                    return
                if verdict == "sleep":
                    throttled = _Paused.begin(self, decision)
                    time.sleep(seconds)
                    throttled.report(self)
                    return
                # PAUSE: block until a decision changes, then look again
                paused = self._pausing(paused, decision)
                remaining = self._pause_left(deadline, decision)
                with self.gov.changed:
                    self.gov.changed.wait(min(remaining, 1.0))
        finally:
            if paused is not None:
                paused.report(self)  # released, timed out or killed: how long it blocked

    async def check_async(self) -> None:
        """:meth:`check` for async agents: waits with ``asyncio.sleep``."""
        deadline = time.monotonic() + self.gov.settings.pause_timeout_s
        paused: _Paused | None = None
        try:
            while True:
                verdict, seconds, decision = self._next_step()
                if verdict == "go":
                    return
                if verdict == "sleep":
                    throttled = _Paused.begin(self, decision)
                    await asyncio.sleep(seconds)
                    throttled.report(self)
                    return
                paused = self._pausing(paused, decision)
                self._pause_left(deadline, decision)
                await asyncio.sleep(PAUSE_POLL_S)
        finally:
            if paused is not None:
                paused.report(self)

    def _pausing(self, paused: _Paused | None, decision: dict[str, Any] | None) -> _Paused:
        """The pause in progress; another PAUSE decision taking over ends the previous one's."""
        if paused is not None:
            if decision is not None and paused.decision["decision_id"] == decision["decision_id"]:
                return paused
            paused.report(self)
        return _Paused.begin(self, decision)

    def _cancel_running_steps(self) -> None:
        """Called from the control thread when a KILL for this session arrives."""
        for loop, task in list(self._running):
            loop.call_soon_threadsafe(task.cancel)

    # --- context -----------------------------------------------------------------------

    def start(self, start_us: int | None = None) -> None:
        """Emit SESSION_START (the context manager does this for you); ``start_us`` lets an
        adapter report when the session really began (an OTel span's start)."""
        self.gov._register(self)
        self._started_us = self.gov.now_us() if start_us is None else start_us
        self.emit("SESSION_START", start_us=self._started_us)

    def finish(
        self,
        exc: BaseException | None = None,
        *,
        end_us: int | None = None,
        status: str | None = None,
        error_type: str | None = None,
    ) -> None:
        """Emit SESSION_END: KILLED for :class:`SessionKilled`, ERROR for another exception.

        An adapter that saw the session end elsewhere (an OTel span) passes ``end_us`` and,
        instead of an exception, ``status`` and ``error_type``.
        A session that is never finished is what an abandoned session looks like: the worker
        closes it as TIMEOUT after its idle timeout.
        """
        if status is not None:
            pass  # the adapter saw how the session ended
        elif isinstance(exc, SessionKilled) or self.killed_by is not None:
            # killed even if the agent caught SessionKilled and returned normally
            status, error_type = "KILLED", None
        elif exc is not None:
            status, error_type = "ERROR", type(exc).__name__
        else:
            status, error_type = "OK", None
        now = self.gov.now_us() if end_us is None else end_us
        self.emit(
            "SESSION_END",
            start_us=now,
            duration_us=max(0, now - self._started_us),
            status=status,
            error_type=error_type,
        )
        self.gov._unregister(self)

    def __enter__(self) -> Session:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish(exc)

    async def __aenter__(self) -> Session:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish(exc)


def _delay_s(decision: Mapping[str, Any]) -> float:
    return float(decision.get("parameters", {}).get("delay_ms", "1000")) / 1000


class _Paused:
    """A THROTTLE sleep or PAUSE block in progress: reported when it ends, with its length."""

    def __init__(self, decision: Mapping[str, Any], acted_at_us: int) -> None:
        self.decision = decision
        self.acted_at_us = acted_at_us
        self._t0 = time.monotonic()

    @classmethod
    def begin(cls, session: Session, decision: Mapping[str, Any] | None) -> _Paused:
        if decision is None:  # _next_step always names the decision it sleeps or pauses for
            raise ValueError("a wait without a decision")
        return cls(decision, session.gov.now_us())

    def report(self, session: Session) -> None:
        waited_us = round((time.monotonic() - self._t0) * 1_000_000)
        session._note_acted(self.decision, self.acted_at_us, waited_us)


class Step:
    """A step timed by the client (sync or async context manager)."""

    def __init__(self, session: Session, kind: str, **fields: Any) -> None:
        self.session = session
        self.kind = kind
        self.fields = fields
        self._start_us = 0
        self._t0 = 0.0
        self._task: tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]] | None = None

    def usage(
        self,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cache_read_input_tokens: int | None = None,
        reasoning_output_tokens: int | None = None,
        cost_usd: float | None = None,
    ) -> None:
        self.fields.update(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_input_tokens=cache_read_input_tokens,
            reasoning_output_tokens=reasoning_output_tokens,
            cost_micros=None if cost_usd is None else round(cost_usd * 1_000_000),
        )

    def output(self, text: str) -> None:
        """The model's answer (an ASSISTANT segment, scanned for PII)."""
        self.fields["content"].append({"role": "ASSISTANT", "text": text})

    def result(self, value: Any) -> None:
        """The tool's result (a TOOL_RESULT segment, scanned for PII)."""
        self.fields["content"].append({"role": "TOOL_RESULT", "text": _as_text(value)})

    def _open(self) -> None:
        self._start_us = self.session.gov.now_us()
        self._t0 = time.perf_counter()

    def _close(self, exc: BaseException | None, cancelled: bool = False) -> None:
        duration_us = round((time.perf_counter() - self._t0) * 1_000_000)
        if cancelled:
            status, error_type = "CANCELLED", "SessionKilled"
        elif exc is not None:
            status, error_type = "ERROR", type(exc).__name__
        else:
            status, error_type = "OK", None
        self.session.emit(
            self.kind,
            start_us=self._start_us,
            duration_us=duration_us,
            status=status,
            error_type=error_type,
            **self.fields,
        )

    def _guard(self) -> None:
        """A tool call whose arguments the PII policy blocks is refused before it runs."""
        if self.kind == "TOOL_CALL":
            self.session._refuse_blocked_tool(self.fields)

    def __enter__(self) -> Step:
        self.session.check()
        self._guard()
        self._open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close(exc)

    async def __aenter__(self) -> Step:
        await self.session.check_async()
        self._guard()
        task = asyncio.current_task()
        if task is not None:
            self._task = (asyncio.get_running_loop(), task)
            self.session._running.add(self._task)
        self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self.session._running.discard(self._task)
        killed = self.session._decision()
        if isinstance(exc, asyncio.CancelledError) and killed and killed["action"] == "KILL":
            self._close(exc, cancelled=True)
            task = self._task[1] if self._task else None
            if task is not None:
                task.uncancel()
            self.session._raise_if_killed(killed)
        self._close(exc)
