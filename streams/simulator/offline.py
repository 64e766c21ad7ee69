"""Simulating without a broker: a stand-in governor that builds the events the client would.

For unit tests and for feeding the pipeline directly: the driver plays plans through
:class:`OfflineGovernor` exactly as through the real one, and the events come out as the
client's ``Session`` builds them (the integration test checks the two agree), with event ids
derived from session id and seq so a run is reproducible. ``kills`` stands in for KILL
decisions: session id -> how many steps pass before the next one raises ``SessionKilled``; the
SESSION_END then reports acting on decision ``offline-<session id>`` as the client reports a KILL.
The client's PII guard is stood in for by :class:`PlannedGuard`, which refuses the tool calls
the plans mark as blocked (looked up by their arguments: no scanner runs): such a call is
recorded as BLOCKED with its arguments only and raises ``ToolBlocked``, as in the client.
With ``checks`` (a :class:`~streams.client.checks.ClientPolicies`, as ``governor demo`` runs the
real fleet) each LLM and tool step is first judged by :func:`streams.client.checks.verdict`, the
client's own check: a refused step is recorded as BLOCKED (``PolicyBlocked``, naming the policy)
and raises ``StepBlocked``, and the driver ends a session refused under a KILL policy as KILLED.
Reservations of fleet budgets (Redis) and throttling are not modelled: they need the fleet.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from streams.client import SessionKilled, StepBlocked, ToolBlocked
from streams.client import checks as client_checks
from streams.client.checks import ClientPolicies
from streams.client.policies import BLOCKED_POLICY_ATTR
from streams.control import ActedOn, acted_attributes
from streams.pipeline.accounting import SessionState, close_timed_out, fold, new_state, summary
from streams.pipeline.pricing import PriceTable
from streams.simulator.driver import AgentKey, Connect, EventSink, GovernorLike, SimClock, drive
from streams.simulator.params import FleetParams
from streams.simulator.plan import BLOCKED, PII_BLOCKED, SessionPlan, ToolStep
from streams.simulator.truth import TruthWriter

#: uuid5 namespace of offline event ids
EVENT_NAMESPACE = uuid.UUID("9e3c1d52-7a0b-4f7e-8c11-3b5a2d9e6f08")


class OfflineSession:
    def __init__(
        self,
        gov: OfflineGovernor,
        session_id: str,
        *,
        category: str | None,
        prompt_version: str | None,
        model_version: str | None,
        tool_schema_version: str | None,
    ) -> None:
        self.gov = gov
        self.session_id = session_id
        self.seq = 0
        self._steps = 0
        self._started_us = 0
        self._acted: list[ActedOn] = []
        #: the client's view of the session and its scratch state (with checks only)
        self._state: SessionState | None = None
        self._trial: SessionState | None = None
        self._common = {
            "session_id": session_id,
            "tenant_id": gov.key.tenant_id,
            "agent_id": gov.key.agent_id,
            "agent_version": gov.key.agent_version,
            "category": category,
            "prompt_version": prompt_version,
            "model_version": model_version,
            "tool_schema_version": tool_schema_version,
        }

    def _emit(
        self,
        kind: str,
        *,
        start_us: int | None = None,
        duration_us: int = 0,
        status: str = "OK",
        **fields: Any,
    ) -> dict[str, Any]:
        acted, self._acted = self._acted, []
        if acted:
            fields["attributes"] = acted_attributes(acted)
        self.seq += 1
        event = {
            **self._common,
            "event_id": str(uuid.uuid5(EVENT_NAMESPACE, f"{self.session_id}/{self.seq}")),
            "seq": self.seq,
            "kind": kind,
            "start_time_us": self.gov.clock.now_us if start_us is None else start_us,
            "duration_us": duration_us,
            "status": status,
            **fields,
        }
        self.gov.emit(event)
        client = self.gov.checks
        if client is not None:
            if self._state is None:
                self._state = new_state(event)
            client_checks.observe(self._state, event, client.prices, client.version)
        return event

    def _gate(self, kind: str, fields: dict[str, Any], start_us: int | None) -> None:
        """The client's check of a step before it runs (with ``checks``): refused, it is
        recorded as BLOCKED without the usage it never had, and StepBlocked is raised."""
        client = self.gov.checks
        if client is None:
            return
        now = self.gov.clock.now_us if start_us is None else start_us
        state = self._state or new_state({**self._common, "start_time_us": now})
        if self._trial is None:
            self._trial = new_state({**self._common, "start_time_us": now})
        step = {**self._common, "event_id": "", "seq": self.seq + 1, "kind": kind,
                "start_time_us": now, "duration_us": 0, "status": "OK", **fields}  # fmt: skip
        refused = client_checks.verdict(client, state, step, self._trial).refused
        if refused is None:
            return
        usage = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cost_micros")
        blocked = {k: v for k, v in fields.items() if k not in usage}
        self._emit(
            kind, start_us=start_us, status=BLOCKED, error_type="PolicyBlocked",
            attributes={BLOCKED_POLICY_ATTR: refused.policy_id}, **blocked,
        )  # fmt: skip
        name = fields.get("tool_name") if kind == "TOOL_CALL" else fields.get("model")
        raise StepBlocked(kind, name, refused.policy_id, refused.action, refused.reason)

    def _check(self) -> None:
        limit = self.gov.kills.get(self.session_id)
        if limit is not None and self._steps >= limit:
            decision_id = f"offline-{self.session_id}"
            self._acted.append(ActedOn(decision_id, "KILL", self.gov.clock.now_us))
            raise SessionKilled("offline kill", "offline", decision_id)
        self._steps += 1

    def start(self) -> None:
        self._started_us = self.gov.clock.now_us
        self._emit("SESSION_START", start_us=self._started_us)

    def finish(
        self,
        exc: BaseException | None = None,
        *,
        status: str | None = None,
        error_type: str | None = None,
    ) -> None:
        if status is not None:
            pass  # the agent says how it ended (a refusal under a KILL policy: KILLED)
        elif isinstance(exc, SessionKilled):
            status, error_type = "KILLED", None
        elif exc is not None:
            status, error_type = "ERROR", type(exc).__name__
        else:
            status, error_type = "OK", None
        now = self.gov.clock.now_us
        self._emit(
            "SESSION_END",
            duration_us=max(0, now - self._started_us),
            status=status,
            error_type=error_type,
        )

    def llm_call(
        self,
        *,
        model: str,
        provider: str | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cache_read_input_tokens: int | None = None,
        cost_usd: float | None = None,
        duration_ms: float = 0.0,
        status: str = "OK",
        error_type: str | None = None,
        content: Iterable[tuple[str, str]] | None = None,
        start_us: int | None = None,
    ) -> dict[str, Any]:
        self._check()
        fields: dict[str, Any] = {
            "operation": "chat",
            "model": model,
            "provider": provider,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_read_input_tokens": cache_read_input_tokens,
            "cost_micros": None if cost_usd is None else round(cost_usd * 1_000_000),
            "content": [{"role": role.upper(), "text": text} for role, text in content or ()],
        }
        self._gate("LLM_CALL", fields, start_us)
        return self._emit(
            "LLM_CALL",
            start_us=start_us,
            duration_us=round(duration_ms * 1000),
            status=status,
            error_type=error_type,
            cache_write_input_tokens=None,
            reasoning_output_tokens=None,
            **fields,
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
    ) -> dict[str, Any]:
        self._check()
        content = []
        if args is not None:
            content.append({"role": "TOOL_ARGUMENTS", "text": _as_text(args)})
            refused = self.gov.pii.refused(name, content)
            if refused:
                self._emit(
                    "TOOL_CALL",
                    start_us=start_us,
                    status=BLOCKED,
                    error_type=PII_BLOCKED,
                    tool_name=name,
                    tool_call_id=call_id,
                    operation="execute_tool",
                    content=content,
                )
                raise ToolBlocked(name, refused)
        gated = {"operation": "execute_tool", "tool_name": name, "tool_call_id": call_id,
                 "content": list(content)}  # fmt: skip
        self._gate("TOOL_CALL", gated, start_us)
        if result is not None:
            content.append({"role": "TOOL_RESULT", "text": _as_text(result)})
        return self._emit(
            "TOOL_CALL",
            start_us=start_us,
            duration_us=round(duration_ms * 1000),
            status=status,
            error_type=error_type,
            operation="execute_tool",
            tool_name=name,
            tool_call_id=call_id,
            cost_micros=None if cost_usd is None else round(cost_usd * 1_000_000),
            content=content,
        )

    def evaluation(self, *, name: str, score: float, start_us: int | None = None) -> dict[str, Any]:
        return self._emit(
            "EVALUATION", start_us=start_us, evaluation_name=name, evaluation_score=score
        )

    def output(self, text: str) -> dict[str, Any]:
        return self._emit(
            "EVALUATION", evaluation_name="output", content=[{"role": "OUTPUT", "text": text}]
        )


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)


class PlannedGuard:
    """The client's PII guard as the plans foresee it: ``refused`` answers like
    :meth:`streams.client.pii.PiiGuard.refused`, from the verdicts the planner wrote on its
    tool calls (:attr:`ToolStep.blocked`), looked up by tool and arguments."""

    def __init__(self, plans: Iterable[SessionPlan]) -> None:
        self._refused: dict[tuple[str, str], tuple[str, ...]] = {
            (step.name, step.args.text): step.blocked
            for plan in plans
            for step in plan.steps
            if isinstance(step, ToolStep) and step.blocked
        }

    def refused(self, tool: str, content: Sequence[Mapping[str, str]]) -> list[str]:
        """Entity types for which the client refuses this call of ``tool``; none: it runs."""
        entities = {
            entity
            for segment in content
            if segment["role"] == "TOOL_ARGUMENTS"
            for entity in self._refused.get((tool, segment["text"]), ())
        }
        return sorted(entities)


class OfflineGovernor:
    """Sends nothing: every event goes to ``sink``, and counts as delivered."""

    def __init__(
        self,
        key: AgentKey,
        clock: SimClock,
        sink: EventSink,
        kills: Mapping[str, int],
        pii: PlannedGuard,
        checks: ClientPolicies | None = None,
    ) -> None:
        self.key = key
        self.clock = clock
        self.kills = kills
        self.pii = pii
        #: the client's own checks (None: the fleet checks nothing itself, the default)
        self.checks = checks
        self._sink = sink
        self.emitted = 0

    def emit(self, event: dict[str, Any]) -> None:
        self.emitted += 1
        self._sink(event)

    def session(
        self,
        session_id: str | None = None,
        *,
        category: str | None = None,
        prompt_version: str | None = None,
        model_version: str | None = None,
        tool_schema_version: str | None = None,
    ) -> OfflineSession:
        return OfflineSession(
            self,
            session_id or str(uuid.uuid4()),
            category=category,
            prompt_version=prompt_version,
            model_version=model_version,
            tool_schema_version=tool_schema_version,
        )

    def stats(self) -> dict[str, Any]:
        return {
            "emitted": self.emitted,
            "delivered": self.emitted,
            "dropped": 0,
            "failed": 0,
            "pending": 0,
            "decisions_accepted": 0,
        }

    def close(self, timeout_s: float = 10.0) -> None:
        pass


def offline_governors(
    plans: Iterable[SessionPlan],
    kills: Mapping[str, int] | None = None,
    checks: ClientPolicies | None = None,
) -> Connect:
    """Offline governors for playing ``plans`` (their PII guard refuses what the plans say;
    with ``checks`` they also run the client's policy checks)."""
    guard = PlannedGuard(plans)

    def connect(key: AgentKey, clock: SimClock, sink: EventSink) -> GovernorLike:
        return OfflineGovernor(key, clock, sink, kills or {}, guard, checks)

    return connect


def simulate_offline(
    plans: Sequence[SessionPlan],
    prices: PriceTable,
    *,
    kills: Mapping[str, int] | None = None,
    concurrency: int = 64,
    checks: ClientPolicies | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The events of every session (grouped by session, in the order sessions were done) and
    the truth of each, without a broker; ``checks``: a fleet whose clients check each step."""
    events: list[dict[str, Any]] = []
    truths: list[dict[str, Any]] = []
    writer = TruthWriter(None, FleetParams(sessions=len(plans)), prices)

    def done(plan: SessionPlan, emitted: Sequence[dict[str, Any]]) -> None:
        events.extend(emitted)
        truths.append(writer.add(emitted, planted=plan.pii, budget_breaker=plan.budget_breaker))

    connect = offline_governors(plans, kills, checks)
    drive(plans, connect, concurrency=concurrency, on_session=done)
    return events, truths


def offline_summaries(
    events: Iterable[Mapping[str, Any]], prices: PriceTable
) -> list[dict[str, Any]]:
    """The SessionSummary records a worker would publish for ``events`` (sessions without a
    SESSION_END end as TIMEOUT), in the order they end: for feeding what reads gov.sessions
    without running the worker."""
    by_session: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_session.setdefault(str(event["session_id"]), []).append(dict(event))
    summaries = []
    for session_events in by_session.values():
        session_events.sort(key=lambda e: int(e["seq"]))
        state = new_state(session_events[0])
        for event in session_events:
            fold(state, event, prices)
        if not state.ended:
            close_timed_out(state)
        summaries.append(summary(state))
    summaries.sort(key=lambda s: (s["end_time_us"], s["session_id"]))
    return summaries
