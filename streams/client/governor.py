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

By default (``checks=True``; ``GOVERNOR_CLIENT_CHECKS=false`` or ``checks=False`` leaves
enforcement to the worker alone) the client also evaluates, before each step and in this process,
every policy that needs no fleet-wide state (:mod:`streams.client.checks`: denied tools, loops,
the session budget with the next call's estimated cost, maximum duration, session step rate,
PII rules on tool arguments and LLM input), with the worker's signed set from gov.policies
(:mod:`streams.client.policies`). A refused step raises :class:`StepBlocked` (or
:class:`ToolBlocked` / :class:`InputBlocked` for PII) before the tool or model runs and is
recorded as BLOCKED naming the policy. An LLM step also reserves its estimated cost on the
agent's and tenant's budgets in Redis (:mod:`streams.client.reservations`), settled with the
actual cost when it is recorded. Every event then carries the set's version.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, TypeVar

import redis

from streams.client import checks
from streams.client.budget import Budgets, Reservation
from streams.client.checks import ClientPolicies
from streams.client.emitter import Emitter
from streams.client.errors import (
    InputBlocked,
    PauseTimeout,
    SessionKilled,
    StepBlocked,
    ToolBlocked,
)
from streams.client.pii import PiiGuard
from streams.client.policies import (
    BLOCKED_POLICY_ATTR,
    CLIENT_ID_ATTR,
    POLICY_SOURCE_ATTR,
    POLICY_VERSION_ATTR,
    PolicyCache,
    PolicyFeed,
    empty_policies,
    local_policies,
)
from streams.client.reservations import (
    Budget,
    Cap,
    FleetReservations,
    Full,
    Held,
    NoRoom,
    concurrency_caps,
    fleet_budgets,
)
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
from streams.kafka_config import security_from_settings
from streams.pipeline.accounting import PARENT_SESSION_ATTR, SessionState, new_state
from streams.pipeline.bypass import REFUSING
from streams.pipeline.policy import PolicySet
from streams.pipeline.pricing import preload_genai_prices
from streams.policy_history import PolicyVersion
from streams.settings import Settings

log = logging.getLogger("governor.client")
T = TypeVar("T")
Derived = TypeVar("Derived")

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
    """One agent process's connection to Governor (one tenant, one agent).

    ``checks`` (default: the ``client_checks`` setting, on) runs the client-side checks before
    each step (module docstring) with the worker's signed set from gov.policies, waiting at
    most ``policy_wait_s`` at start for it (the last good set on disk, else the local
    policies folder, is in force until then), and as long again at most for genai-prices'
    table to load (it loads in the background from the start of ``__init__``)."""

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
        checks: bool | None = None,
        policy_wait_s: float = 2.0,
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
        # the first step must not wait for genai-prices (~0.3 s) or presidio (~1 s) to load:
        # both load in the background (issue 14; streams/client/pii.py): the price table from
        # here, while the connections below are made, and is waited for with the policy set;
        # the PII detector once started (it would slow the start down, holding the GIL)
        prices_loading = (
            preload_genai_prices()
            if (self.settings.client_checks if checks is None else checks)
            else None
        )
        self.pii = PiiGuard.build(self.settings, enabled=pii_guard, redact=redact)
        self._events_topic = self.settings.topic("events")
        #: the Kafka security of every client here (GOVERNOR_KAFKA_*, streams/kafka_config.py)
        self.kafka_security = security_from_settings(self.settings)
        self.emitter = Emitter(
            self.settings.bootstrap,
            security=self.kafka_security,
            buffer_events=self.settings.client_buffer_events,
            buffer_max_age_s=self.settings.client_buffer_max_age_s,
        )
        self.book = DecisionBook(
            tenant, public_keys if public_keys is not None else self._trusted_keys()
        )
        #: the same keys sign decisions and the policy sets on gov.policies
        self.keyring = self.book.keyring
        self.changed = threading.Condition()
        self._sessions: dict[str, Session] = {}
        self._sessions_lock = threading.Lock()
        self._redis = redis.Redis.from_url(
            self.settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5
        )
        self.budgets = Budgets(self._redis, self.settings.redis_key_prefix)
        self.redis_errors = 0
        self._subscriber: ControlSubscriber | None = None
        #: client-side checks before each step (module docstring), and the set they use
        checks = self.settings.client_checks if checks is None else checks
        self.checks = checks
        self.client_id = uuid.uuid4().hex[:12]
        self.check_stats: dict[str, int] = {"checked": 0, "refused": 0, "throttled": 0}
        self.policy_set: ClientPolicies = empty_policies()
        self._policy_attributes: dict[str, str] = {}
        self._policy_feed: PolicyFeed | None = None
        #: agent/tenant budgets reserved in Redis before each LLM step (client/reservations.py)
        self.reservations = FleetReservations(self._redis, self.settings.redis_key_prefix)
        #: what this agent derives from the set in force (fleet budgets, concurrency caps)
        self._derived: dict[str, tuple[ClientPolicies, Any]] = {}
        if checks:
            self._start_policies(self.keyring, policy_wait_s)
            if prices_loading is not None and policy_wait_s > 0:
                prices_loading.join(policy_wait_s)  # the rest of ~0.3 s, spent meanwhile
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
                security=self.kafka_security,
            )
            self._subscriber.start()
        self.pii.warm()

    # --- the policy set of the client-side checks -----------------------------------------

    def _start_policies(self, keyring: KeyRing, wait_s: float) -> None:
        """The cached signed set, else the local folder; then gov.policies' ``current``."""
        self._policy_cache = PolicyCache(
            self.settings.state_dir / "client-policies", self.codecs.policy_version
        )
        cached = self._policy_cache.load(keyring)
        self._use_policies(cached[1] if cached else local_policies(self.settings.policies_dir))
        self._policy_feed = PolicyFeed(
            self.settings.bootstrap,
            self.settings.topic("policies"),
            self.codecs.policy_version,
            keyring,
            self._on_policies,
            known_digest=self.policy_set.bundle_digest if cached else "",
            security=self.kafka_security,
        )
        self._policy_feed.start()
        if wait_s > 0 and not self._policy_feed.caught_up.wait(wait_s):
            log.warning(
                "%s not read within %.1fs: enforcing the %s set v%s until it is",
                self.settings.topic("policies"),
                wait_s,
                self.policy_set.source,
                self.policy_set.version,
            )

    def _use_policies(self, policies: ClientPolicies) -> None:
        self.policy_set = policies
        if policies.pii is not None and self.pii.policy is not None:  # pii_guard=False: off
            self.pii.use_policy(policies.pii)
        self._policy_attributes = {
            POLICY_VERSION_ATTR: policies.label,
            POLICY_SOURCE_ATTR: policies.source,
            CLIENT_ID_ATTR: self.client_id,
        }

    def _on_policies(self, record: PolicyVersion, policies: ClientPolicies) -> None:
        """A new verified set from gov.policies (the feed's thread): in force from the next
        step, and the last good copy on disk."""
        self._use_policies(policies)
        try:
            self._policy_cache.save(record)
        except OSError as exc:
            log.warning("cannot keep the policy set on disk (%s): %s", self._policy_cache.path, exc)
        log.info("client policies %s (%s) in force", policies.label, policies.source)

    def concurrency_caps(self) -> tuple[Cap, ...]:
        """The agent's and tenant's concurrency caps under the set in force."""
        return self._of_set("caps", concurrency_caps)

    def fleet_budgets(self) -> tuple[Budget, ...]:
        """The agent- and tenant-scoped budgets of this agent under the set in force."""
        return self._of_set("budgets", fleet_budgets)

    def _of_set(self, name: str, derive: Callable[[PolicySet, str, str], Derived]) -> Derived:
        """What this agent derives from the set in force, derived again when the set changes."""
        policies = self.policy_set
        known = self._derived.get(name)
        if known is None or known[0] is not policies:
            known = self._derived[name] = (policies, derive(policies.policies, self.tenant,
                                                            self.agent))  # fmt: skip
        value: Derived = known[1]
        return value

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
        parent: Session | str | None = None,
    ) -> Session:
        """A new session (with your id, or a random one), or with ``resume=True`` the
        continuation of a session another process started: its decisions are re-read from Redis
        and its ``seq`` continues from the wall clock in milliseconds, above anything the earlier
        process can have used, so the worker does not take the new events for duplicates.

        ``parent``: the session (or its id, from another process or agent) that started this
        one, e.g. an orchestrator calling a sub-agent: the worker records the link and ``ask
        top-cost --tree`` rolls cost, tokens and steps up over a session's descendants; a
        decision for the parent session (a KILL) applies to this one too."""
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
        if parent is not None:
            parent_id = parent if isinstance(parent, str) else parent.session_id
            session.parent_session_id = parent_id
            # a decision for the session that started it applies to it too (kill the
            # orchestrator, its sub-agents stop; a conversation's later turns stay killed)
            session.targets = (*session.targets, session_target(parent_id))
            if isinstance(parent, str):
                self._load_decisions([session_target(parent_id)])
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
            "checks": dict(self.check_stats),
            #: texts the client could not check for PII: presidio ([pii]) is not installed
            "pii_unchecked": self.pii.unchecked,
            "policy_version": self.policy_set.label if self.checks else None,
            "policy_source": self.policy_set.source if self.checks else None,
            "policy_sets_refused": dict(self._policy_feed.refused) if self._policy_feed else {},
            "reservations": dict(self.reservations.counts),
        }

    def close(self, timeout_s: float = 10.0) -> None:
        if self._subscriber is not None:
            self._subscriber.stop()
        if self._policy_feed is not None:
            self._policy_feed.stop()
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
        #: the session that started this one (``Governor.session(parent=...)``)
        self.parent_session_id: str | None = None
        #: the decision targets that apply to it (its parent session's too, when it has one)
        self.targets: tuple[str, ...] = (
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
        #: the worker's view of this session, folded from what it emitted (client checks)
        self._state: SessionState | None = None
        #: the projection the checks fold the next step into, reused (checks.scratch)
        self._trial: SessionState | None = None
        #: the fleet-wide reservation of the LLM step checked last, settled when it is recorded
        self._held: Held | None = None
        #: the concurrency caps this session was admitted against, and when it last said so
        self._admitted: tuple[Cap, ...] = ()
        self._admitted_at_us = 0
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
        gov = self.gov
        if gov.checks:
            fields["attributes"] = {**(fields.get("attributes") or {}), **gov._policy_attributes}
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
        gov.emit(event)
        if self._admitted and event["start_time_us"] - self._admitted_at_us > self._refresh_us:
            self._refresh_admission(event["start_time_us"])
        if gov.checks:
            if self._state is None:
                self._state = new_state(event)
            checks.observe(self._state, event, gov.policy_set.prices, gov.policy_set.version)
            if kind == "LLM_CALL" and self._held is not None:
                held, self._held = self._held, None
                cost = 0 if status == "BLOCKED" else checks.cost_micros(gov.policy_set, event)
                gov.reservations.settle(held, cost, gov.now_us())
        return event

    # --- client-side checks --------------------------------------------------------------

    def _gate(self, kind: str, fields: dict[str, Any], ran: bool = False) -> float:
        """Refuse the step ``fields`` describe (as emitted after running) if a policy would act
        on it: BLOCKED is recorded and StepBlocked raised. Returns seconds to wait first (a
        THROTTLE the step would draw), 0 when it may run at once. ``ran``: the step already
        ran (``llm_call`` reporting after the fact), so its BLOCKED record keeps its usage."""
        gov = self.gov
        if not gov.checks:
            return 0.0
        gov.check_stats["checked"] += 1
        policies = gov.policy_set
        name = fields.get("tool_name") if kind == "TOOL_CALL" else fields.get("model")
        self._gate_pii(kind, name, fields, ran)
        now = gov.now_us()
        state = self._state
        if state is None:
            state = new_state({**self._common, "start_time_us": now})
        step = {
            **self._common,
            "event_id": "",
            "seq": self.seq + 1,
            "kind": kind,
            "start_time_us": now,
            "duration_us": 0,
            "status": "OK",
            **fields,
        }
        if self._trial is None:
            self._trial = new_state({**self._common, "start_time_us": now})
        verdict = checks.verdict(policies, state, step, self._trial)
        refused = verdict.refused
        if refused is not None:
            gov.check_stats["refused"] += 1
            self._emit_blocked(kind, fields, refused.policy_id, "PolicyBlocked", ran)
            raise StepBlocked(kind, name, refused.policy_id, refused.action, refused.reason)
        for warning in verdict.warnings:
            log.info("session %s: %s (%s)", self.session_id, warning.reason, warning.policy_id)
        if verdict.throttles:
            gov.check_stats["throttled"] += 1
        delay = verdict.delay_s
        if kind == "LLM_CALL":
            delay = max(delay, self._reserve(step, fields, name, now, ran))
        return delay

    def _reserve(
        self, step: dict[str, Any], fields: dict[str, Any], name: str | None, now: int, ran: bool
    ) -> float:
        """Reserve the step's estimated cost on the agent's and tenant's budgets (Redis): no
        room refuses it (kill/pause policies) or waits the throttle delay (throttle)."""
        gov = self.gov
        budgets = gov.fleet_budgets()
        if not budgets:
            return 0.0
        if self._held is not None:  # checked before and never recorded: give it back
            gov.reservations.settle(self._held, 0, now)
            self._held = None
        try:
            self._held = gov.reservations.reserve(
                budgets, checks.cost_micros(gov.policy_set, step), now, self.session_id
            )
            deny = next((b for b in budgets if b.on_unavailable == "deny"), None)
            if self._held is None and deny is not None:  # Redis did not answer
                gov.check_stats["refused"] += 1
                self._emit_blocked("LLM_CALL", fields, deny.policy_id, "BudgetUnavailable", ran)
                reason = "Redis does not answer and the policy says on_unavailable: deny"
                raise StepBlocked("LLM_CALL", name, deny.policy_id, "DENY", reason)
        except NoRoom as exc:
            policy = next(
                p for p in gov.policy_set.policies.policies if p.id == exc.budget.policy_id
            )
            action = policy.action.upper()
            if action in REFUSING:
                gov.check_stats["refused"] += 1
                self._emit_blocked("LLM_CALL", fields, policy.id, "BudgetExhausted", ran)
                raise StepBlocked("LLM_CALL", name, policy.id, action, str(exc)) from exc
            if action == "THROTTLE":
                gov.check_stats["throttled"] += 1
                return float(policy.throttle_delay_ms) / 1000
        return 0.0

    def _gate_pii(self, kind: str, name: str | None, fields: dict[str, Any], ran: bool) -> None:
        """The PII rules on what the step sends (tool arguments; the model's input)."""
        content = fields.get("content") or []
        policy = self.gov.pii.policy
        if not content or not checks.pii_may_refuse(policy, kind):
            return
        roles = checks.INPUT_ROLES.get(kind, ())
        found = [
            (c["role"], self.gov.pii.found([c["text"]])) for c in content if c["role"] in roles
        ]
        tool = name if kind == "TOOL_CALL" else None
        refused = checks.pii_refusal(policy, kind, tool, found)
        if refused:
            self.gov.check_stats["refused"] += 1
            self._emit_blocked(kind, fields, "pii", "PiiBlocked", ran)
            if kind == "TOOL_CALL":
                raise ToolBlocked(name or "unknown", refused)
            raise InputBlocked(name or "unknown", refused)

    def _emit_blocked(
        self, kind: str, fields: dict[str, Any], policy_id: str, error_type: str, ran: bool
    ) -> None:
        """The refused step, as BLOCKED: what it would have been, without usage it never had
        (unless it ``ran``)."""
        dropped = ("attributes",) if ran else _USAGE
        blocked = {k: v for k, v in fields.items() if k not in dropped}
        attributes = {**(fields.get("attributes") or {}), BLOCKED_POLICY_ATTR: policy_id}
        self.emit(kind, status="BLOCKED", error_type=error_type, attributes=attributes, **blocked)

    def guard_llm(
        self,
        *,
        model: str,
        provider: str | None = None,
        content: Content | None = None,
        input_tokens: int | None = None,
        max_output_tokens: int | None = None,
        estimated_cost_usd: float | None = None,
        start_us: int | None = None,
    ) -> float:
        """Check an LLM call before it runs (adapters that record it after the fact): raises
        :class:`StepBlocked` / :class:`InputBlocked` (recorded as BLOCKED) when a policy refuses
        it; returns seconds a THROTTLE asks to wait first. The session budget is checked with
        the estimate: ``input_tokens`` (else counted from ``content``) at the input price plus
        ``max_output_tokens`` at the output price, or ``estimated_cost_usd``. ``start_us``:
        when the call starts, for adapters that report their own times (now by default)."""
        estimate = _llm_estimate(
            model, provider, _segments(content), input_tokens, max_output_tokens,
            estimated_cost_usd,
        )  # fmt: skip
        if start_us is not None:
            estimate["start_time_us"] = start_us
        return self._gate("LLM_CALL", estimate)

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
        cache_write_input_tokens: int | None = None,
    ) -> dict[str, Any]:
        """Record a finished LLM call (after the policy check for this step).

        ``obey=False`` records a call that already ran without applying the decision in force:
        adapters that report after the fact check before the step instead (``guard_llm``).

        With client checks, the call is checked with its reported usage before it is recorded:
        a refusal records it as BLOCKED *with* that usage (it ran: its spend is real) and raises
        :class:`StepBlocked`. Use ``with s.llm(...)`` or ``guard_llm`` to refuse a call before
        it costs anything."""
        if obey:
            self.check()
            if self.gov.checks:
                estimate: dict[str, Any] = {
                    "model": model,
                    "provider": provider,
                    "input_tokens": input_tokens,
                    "output_tokens": output_tokens,
                    "cache_read_input_tokens": cache_read_input_tokens,
                    "cache_write_input_tokens": cache_write_input_tokens,
                    "cost_micros": None if cost_usd is None else round(cost_usd * 1_000_000),
                    "content": _segments(content),
                }
                if start_us is not None:  # a call reported with its own time is judged at it
                    estimate["start_time_us"] = start_us
                _sleep(self._gate("LLM_CALL", estimate, ran=True))
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
            cache_write_input_tokens=cache_write_input_tokens,
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
        the fact (``tool_call(obey=False)``) and check before the step.

        With client checks it runs every check of a tool step (denied tools, loops, duration,
        step rate, PII rules): a refusal is recorded as BLOCKED and raises
        :class:`StepBlocked`; a THROTTLE the step would draw is waited here."""
        if self.gov.checks:
            content = [("TOOL_ARGUMENTS", _as_text(args))] if args is not None else []
            fields: dict[str, Any] = {
                "tool_name": name,
                "tool_call_id": call_id,
                "operation": "execute_tool",
                "content": _segments(content),
            }
            if start_us is not None:
                fields["start_time_us"] = start_us
            _sleep(self._gate("TOOL_CALL", fields))
            return
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
        self,
        *,
        model: str,
        provider: str | None = None,
        content: Content | None = None,
        input_tokens: int | None = None,
        max_output_tokens: int | None = None,
        estimated_cost_usd: float | None = None,
    ) -> Step:
        """Time an LLM call yourself: ``with s.llm(model=...) as step: ...; step.usage(...)``.

        With client checks the call is checked before the block runs; the session budget with
        the estimate (see :meth:`guard_llm`): pass ``max_output_tokens`` (what you ask the
        model for) so the budget can never be exceeded."""
        step = Step(
            self,
            "LLM_CALL",
            model=model,
            provider=provider,
            operation="chat",
            content=_segments(content),
        )
        step.estimate = (input_tokens, max_output_tokens, estimated_cost_usd)
        return step

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
        adapter report when the session really began (an OTel span's start).

        With client checks the session is first admitted against the agent's and tenant's
        concurrency caps in Redis: a cap with no room refuses it (kill: :class:`StepBlocked`,
        nothing emitted) or holds it back until a slot frees (throttle, pause; at most the
        pause timeout, then :class:`PauseTimeout`)."""
        if self.gov.checks:
            self._admit()
        self.gov._register(self)
        self._started_us = self.gov.now_us() if start_us is None else start_us
        parent = self.parent_session_id
        if parent is None:
            self.emit("SESSION_START", start_us=self._started_us)
        else:
            attributes = {PARENT_SESSION_ATTR: parent}
            self.emit("SESSION_START", start_us=self._started_us, attributes=attributes)

    # --- concurrency caps (client checks) ------------------------------------------------

    @property
    def _refresh_us(self) -> int:
        """How often an open session says it is still open: well within the staleness."""
        return int(self.gov.settings.session_idle_timeout_s * 1_000_000 / 4)

    def _admit(self) -> None:
        gov = self.gov
        caps = gov.concurrency_caps()
        if not caps:
            return
        stale_us = int(gov.settings.session_idle_timeout_s * 1_000_000)
        deadline = time.monotonic() + gov.settings.pause_timeout_s
        while True:
            now = gov.now_us()
            try:
                admitted = gov.reservations.admit(caps, self.session_id, now, stale_us)
            except Full as full:
                action = full.cap.action.upper()
                if action == "WARN":
                    log.warning("session %s admitted over the cap: %s", self.session_id, full)
                    return
                if action == "KILL":
                    gov.check_stats["refused"] += 1
                    raise StepBlocked(
                        "SESSION_START", None, full.cap.policy_id, action, str(full)
                    ) from full
                if time.monotonic() >= deadline:
                    raise PauseTimeout(f"held back by {full.cap.policy_id} for too long") from full
                gov.check_stats["throttled"] += 1
                _sleep(max(full.cap.delay_s, 0.05))
                continue
            if not admitted:
                deny = next((c for c in caps if c.on_unavailable == "deny"), None)
                if deny is not None:
                    gov.check_stats["refused"] += 1
                    reason = "Redis does not answer and the policy says on_unavailable: deny"
                    raise StepBlocked("SESSION_START", None, deny.policy_id, "DENY", reason)
                return
            self._admitted, self._admitted_at_us = caps, now
            return

    def _refresh_admission(self, now_us: int) -> None:
        stale_us = int(self.gov.settings.session_idle_timeout_s * 1_000_000)
        self._admitted_at_us = now_us
        # a session dropped as stale finds the cap full: it is open all the same, and the
        # worker judges the cap
        with contextlib.suppress(Full):
            self.gov.reservations.admit(self._admitted, self.session_id, now_us, stale_us)

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
        if self._admitted:
            self.gov.reservations.leave(self._admitted, self.session_id)
            self._admitted = ()

    def forget(self) -> None:
        """Stop tracking a session that will not be finished by this process (a proxy letting
        an idle session go): nothing is emitted; the worker closes it after its idle timeout,
        and only then does it stop counting against a concurrency cap."""
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


_USAGE = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_write_input_tokens",
    "reasoning_output_tokens",
    "cost_micros",
    "attributes",
)


def _sleep(seconds: float) -> None:
    if seconds > 0:
        time.sleep(seconds)


def _llm_estimate(
    model: str,
    provider: str | None,
    content: list[dict[str, str]],
    input_tokens: int | None,
    max_output_tokens: int | None,
    estimated_cost_usd: float | None,
) -> dict[str, Any]:
    """An LLM step as it would be recorded if it ran, from what is known before it runs."""
    if input_tokens is None:
        input_tokens = checks.estimated_input_tokens(
            [c["text"] for c in content if c["role"] != "ASSISTANT"]
        )
    return {
        "model": model,
        "provider": provider,
        "input_tokens": input_tokens,
        "output_tokens": max_output_tokens or 0,
        "cost_micros": None if estimated_cost_usd is None else round(estimated_cost_usd * 1e6),
        "content": content,
    }


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
        #: an LLM step's (input tokens, max output tokens, estimated cost USD) for the checks
        self.estimate: tuple[int | None, int | None, float | None] = (None, None, None)

    def usage(
        self,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cache_read_input_tokens: int | None = None,
        reasoning_output_tokens: int | None = None,
        cost_usd: float | None = None,
        cache_write_input_tokens: int | None = None,
    ) -> None:
        """The call's usage (``cache_write_input_tokens``: the input tokens written to the
        provider's prompt cache, priced at their own rate where the provider has one)."""
        self.fields.update(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_input_tokens=cache_read_input_tokens,
            cache_write_input_tokens=cache_write_input_tokens,
            reasoning_output_tokens=reasoning_output_tokens,
            cost_micros=None if cost_usd is None else round(cost_usd * 1_000_000),
        )

    def output(self, text: str) -> None:
        """The model's answer (an ASSISTANT segment, scanned for PII)."""
        self.fields["content"].append({"role": "ASSISTANT", "text": text})

    def result(self, value: Any) -> None:
        """The tool's result (a TOOL_RESULT segment, scanned for PII)."""
        self.fields["content"].append({"role": "TOOL_RESULT", "text": _as_text(value)})

    def stream(self, chunks: Iterable[T]) -> Iterator[T]:
        """Yield ``chunks`` (a streamed model answer, a tool's iterator), checking before each
        one that no KILL arrived meanwhile: :class:`SessionKilled` is raised at that yield
        point and the step is recorded CANCELLED. Sync code has no other place to be stopped
        in the middle of a step (async steps are cancelled at once)."""
        session = self.session
        for chunk in chunks:
            session._raise_if_killed(session._decision())
            yield chunk

    def _open(self) -> None:
        self._start_us = self.session.gov.now_us()
        self._t0 = time.perf_counter()

    def _close(self, exc: BaseException | None, cancelled: bool = False) -> None:
        duration_us = round((time.perf_counter() - self._t0) * 1_000_000)
        if cancelled or isinstance(exc, SessionKilled):
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

    def _guard(self) -> float:
        """A tool call whose arguments the PII policy blocks is refused before it runs; with
        client checks, any step a policy refuses. Returns seconds a THROTTLE asks to wait."""
        session = self.session
        if session.gov.checks:
            fields = self.fields
            if self.kind == "LLM_CALL":
                fields = {
                    **fields,
                    **_llm_estimate(
                        fields["model"], fields.get("provider"), fields["content"], *self.estimate
                    ),
                }
            return session._gate(self.kind, fields)
        if self.kind == "TOOL_CALL":
            session._refuse_blocked_tool(self.fields)
        return 0.0

    def __enter__(self) -> Step:
        self.session.check()
        _sleep(self._guard())
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
        delay = self._guard()
        if delay > 0:
            await asyncio.sleep(delay)
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
