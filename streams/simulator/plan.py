"""Planning a fleet: every session, step and timestamp, decided up front (pure, no I/O but
reading the shipped PII policy once when the caller gives none).

``plan_fleet(params)`` draws everything from ``random.Random(params.seed)`` and returns the
sessions sorted by start time. A plan says what an agent *would* do if no decision intervened;
the driver then plays it through the real client, where a KILL can cut it short. Event time is
planned too: each step starts at the previous step's end plus a think time.

The one intervention planned up front is the client's PII guard, because the PII policy decides
it from the arguments alone: a tool call whose arguments hold a value the policy blocks there
(a card number or an SSN, with the shipped ``policies/pii.yaml``) never runs. The client records
it as BLOCKED, with its arguments and nothing else, and raises ``ToolBlocked``; the simulated
agent catches that and carries on with its next step. So the plan marks the step
(:attr:`ToolStep.blocked`) and gives it what the client records: no result, no duration, no
cost, status BLOCKED; it is never retried. If it was the call an ERROR session fails on, the
session ends with its error type, ``PiiBlocked``, as with any other failing call.

Retries are visible in the events alone: a retry is a call of the same kind and the same tool
(or model) right after a failed one, with the same ``tool_call_id`` for tools. The planner never
puts a non-retry there, so the count in the plan equals what :mod:`streams.simulator.truth`
derives from the events.
"""

from __future__ import annotations

import functools
import json
import math
import random
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

from streams.pipeline.pii import PiiPolicy
from streams.simulator import catalog
from streams.simulator.catalog import MODELS, TOOLS, AgentProfile
from streams.simulator.params import AGENT_NAMES, FleetParams
from streams.simulator.pii import ENTITY_TYPES, PiiFactory, PiiValue, client_refuses

#: uuid5 namespace of planned session ids
SESSION_NAMESPACE = uuid.UUID("5b0d6a3e-2f4c-4e7e-9a51-6c1f0e2d7b44")

OK = "OK"
ERROR = "ERROR"
ABANDONED = "ABANDONED"
#: the status and error type the client records a tool call with when its PII guard refuses it
BLOCKED = "BLOCKED"
PII_BLOCKED = "PiiBlocked"

MS = 1_000
S = 1_000_000
MAX_RETRIES = 2
#: runaway sessions: this many LLM turns, each with this many input tokens
RUNAWAY_TURNS = (25, 45)
RUNAWAY_INPUT_TOKENS = (70_000, 120_000)
LONG_CONTEXT_TOKENS = (50_000, 150_000)
#: chance that a later LLM turn carries a new USER message (a follow-up from the user)
FOLLOW_UP_PROBABILITY = 0.15
#: chance that a PII-bearing text carries two values rather than one
TWO_PII_PROBABILITY = 0.25
#: how an ERROR session fails: a tool call that keeps failing, an LLM call that keeps failing,
#: or an exception of the agent's own after a successful step
_FAILURES = ("tool", "llm", "agent")
_FAILURE_WEIGHTS = (0.5, 0.2, 0.3)


# --- the plan ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """A content segment as the client sends it, with the PII values planted in its text."""

    role: str
    text: str
    pii: tuple[PiiValue, ...] = ()


@dataclass(frozen=True)
class LlmStep:
    kind: ClassVar[str] = "LLM_CALL"
    start_us: int
    think_us: int
    duration_us: int
    model: str
    provider: str
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int | None
    cost_usd: float | None
    status: str
    error_type: str | None
    retry: bool
    content: tuple[Segment, ...]

    @property
    def end_us(self) -> int:
        return self.start_us + self.duration_us

    @property
    def segments(self) -> tuple[Segment, ...]:
        return self.content


@dataclass(frozen=True)
class ToolStep:
    kind: ClassVar[str] = "TOOL_CALL"
    start_us: int
    think_us: int
    duration_us: int
    name: str
    call_id: str
    args: Segment
    result: Segment | None
    cost_usd: float | None
    status: str
    error_type: str | None
    retry: bool
    denied: bool = False
    #: the entity types in ``args`` for which the client's PII guard refuses the call (see the
    #: module doc); empty for a call that runs
    blocked: tuple[str, ...] = ()

    @property
    def end_us(self) -> int:
        return self.start_us + self.duration_us

    @property
    def segments(self) -> tuple[Segment, ...]:
        return (self.args,) if self.result is None else (self.args, self.result)


@dataclass(frozen=True)
class EvaluationStep:
    kind: ClassVar[str] = "EVALUATION"
    start_us: int
    think_us: int
    name: str
    score: float
    duration_us: int = 0

    @property
    def end_us(self) -> int:
        return self.start_us

    @property
    def segments(self) -> tuple[Segment, ...]:
        return ()


@dataclass(frozen=True)
class OutputStep:
    """What the agent returned to its user (``session.output``: an EVALUATION event)."""

    kind: ClassVar[str] = "OUTPUT"
    start_us: int
    think_us: int
    segment: Segment
    duration_us: int = 0

    @property
    def end_us(self) -> int:
        return self.start_us

    @property
    def segments(self) -> tuple[Segment, ...]:
        return (self.segment,)


PlannedStep = LlmStep | ToolStep | EvaluationStep | OutputStep


@dataclass(frozen=True)
class SessionPlan:
    index: int
    session_id: str
    tenant_id: str
    agent_id: str
    agent_version: str
    category: str
    prompt_version: str
    model_version: str
    tool_schema_version: str
    start_us: int
    steps: tuple[PlannedStep, ...]
    #: OK, ERROR (ends with an exception) or ABANDONED (never sends SESSION_END)
    ending: str
    #: when SESSION_END is sent; None when abandoned
    end_us: int | None
    #: the exception the session ends with, when ``ending`` is ERROR
    error_type: str | None
    budget_breaker: bool
    denied_tool: str | None

    @property
    def planned_events(self) -> int:
        """Events the session sends if nothing stops it (SESSION_START, steps, SESSION_END)."""
        return 1 + len(self.steps) + (0 if self.ending == ABANDONED else 1)

    @property
    def pii(self) -> tuple[PiiValue, ...]:
        """Every PII value planted in this session, once each, in order of appearance."""
        seen: dict[str, PiiValue] = {}
        for step in self.steps:
            for segment in step.segments:
                for value in segment.pii:
                    seen.setdefault(value.value, value)
        return tuple(seen.values())


# --- the fleet -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetAgent:
    tenant_id: str
    profile: AgentProfile
    weight: float


def fleet_agents(params: FleetParams, rng: random.Random) -> tuple[FleetAgent, ...]:
    """Each tenant runs the first k agents of :data:`AGENT_NAMES`; tenant traffic is Zipf-like."""
    agents = []
    for rank, tenant in enumerate(params.tenant_ids):
        count = rng.randint(params.min_agents_per_tenant, params.max_agents_per_tenant)
        profiles = [catalog.AGENTS[name] for name in AGENT_NAMES[:count]]
        total = sum(p.weight for p in profiles)
        for profile in profiles:
            agents.append(FleetAgent(tenant, profile, profile.weight / total / (rank + 1)))
    return tuple(agents)


def plan_fleet(params: FleetParams, pii_policy: PiiPolicy | None = None) -> list[SessionPlan]:
    """Every session of the fleet, sorted by start time (deterministic for ``params`` and the
    policy).

    ``pii_policy`` is the PII policy the clients that play the plans read (it decides which tool
    calls they refuse); without one, the shipped ``policies/pii.yaml``, which is what a client
    with the default ``policies_dir`` reads.
    """
    policy = shipped_pii_policy() if pii_policy is None else pii_policy
    rng = random.Random(params.seed)
    pii = PiiFactory(rng)
    agents = fleet_agents(params, rng)
    weights = [a.weight for a in agents]
    starts = sorted(_diurnal_start(params, rng) for _ in range(params.sessions))
    plans = []
    for index, start_us in enumerate(starts):
        agent = rng.choices(agents, weights)[0]
        session_id = str(uuid.uuid5(SESSION_NAMESPACE, f"{params.seed}/{params.end_us}/{index}"))
        planner = _SessionPlanner(params, rng, pii, policy, agent, start_us)
        plans.append(planner.plan(index, session_id))
    return plans


@functools.cache
def shipped_pii_policy() -> PiiPolicy:
    """``policies/pii.yaml`` of the checkout (read once)."""
    from streams.policy_files import load_pii_policy
    from streams.settings import project_root

    return load_pii_policy(project_root() / "policies")


def _diurnal_start(params: FleetParams, rng: random.Random) -> int:
    """A start time with more traffic in (UTC) working hours than at night."""
    span = params.end_us - params.start_us
    # leave room at the end so sessions finish inside the period
    usable = span - min(30 * 60 * S, span // 10)
    while True:
        t = params.start_us + rng.randrange(max(1, usable))
        hour = (t // (3600 * S)) % 24
        busy = 0.2 + 0.8 * math.exp(-(((hour - 14) / 4.0) ** 2))
        if rng.random() < busy:
            return t


# --- one session ---------------------------------------------------------------------------


@dataclass
class _Timeline:
    """Where the planner is while it lays out one session: the time and the context size."""

    t: int
    context: int
    steps: list[PlannedStep] = field(default_factory=list)


class _SessionPlanner:
    def __init__(
        self,
        params: FleetParams,
        rng: random.Random,
        pii: PiiFactory,
        pii_policy: PiiPolicy,
        agent: FleetAgent,
        start_us: int,
    ) -> None:
        self.p = params
        self.rng = rng
        self.pii = pii
        self.pii_policy = pii_policy
        self.agent = agent
        self.profile = agent.profile
        self.start_us = start_us
        changed = (
            agent.tenant_id == params.changed_tenant
            and self.profile.agent_id == params.changed_agent
        )
        self.after_change = changed and start_us >= params.change_us
        if changed:
            self.prompt = params.prompt_after if self.after_change else params.prompt_before
        else:
            self.prompt = self.profile.prompt_version
        self.tool_rate = params.tool_calls_per_turn * (
            params.changed_tool_call_factor if self.after_change else 1.0
        )
        self.tool_error_rate = (
            params.changed_tool_error_rate if self.after_change else params.tool_error_rate
        )
        self.category = rng.choice(params.category_names)

    def plan(self, index: int, session_id: str) -> SessionPlan:
        rng, p = self.rng, self.p
        breaker = rng.random() < p.budget_breaker_fraction
        roll = rng.random()
        if breaker:
            # a runaway ends on its own; cutting it short is the governor's job
            ending = OK
        elif roll < p.error_fraction:
            ending = ERROR
        elif roll < p.error_fraction + p.abandoned_fraction:
            ending = ABANDONED
        else:
            ending = OK
        if breaker:
            turns = rng.randint(*RUNAWAY_TURNS)
        else:
            drawn = rng.lognormvariate(math.log(p.llm_calls_median), p.llm_calls_sigma)
            turns = max(1, min(p.max_llm_calls, round(drawn)))
        # an ERROR or ABANDONED session stops in this turn; an ERROR one fails like this
        stop_turn = rng.randrange(turns) if ending != OK else turns
        failure = rng.choices(_FAILURES, _FAILURE_WEIGHTS)[0] if ending == ERROR else None
        denied_turn = rng.randrange(turns) if rng.random() < p.denied_tool_fraction else None

        state = _Timeline(t=self.start_us, context=rng.randint(900, 2500))
        error_type: str | None = None
        for turn in range(turns):
            stopping = turn == stop_turn
            error_type = self._llm_turn(state, turn, breaker, fail=stopping and failure == "llm")
            if denied_turn == turn:
                self._tool(state, self.profile.denied_tool, denied=True)
            if stopping:
                if failure == "tool":
                    error_type = self._tool_with_retries(state, breaker, fail=True)
                elif failure == "agent":
                    error_type = rng.choice(catalog.AGENT_EXCEPTIONS)
                break
            if turn == turns - 1:
                break  # the last turn answers the user
            for _ in range(1 if breaker else _poisson(rng, self.tool_rate)):
                self._tool_with_retries(state, breaker)
        end_us: int | None = None
        if ending == OK:
            self._finish_ok(state)
            end_us = state.t + self._think(5, 200)
        elif ending == ERROR:
            end_us = state.t + self._think(1, 50)
        steps = tuple(state.steps)
        denied = [s.name for s in steps if isinstance(s, ToolStep) and s.denied]
        return SessionPlan(
            index=index,
            session_id=session_id,
            tenant_id=self.agent.tenant_id,
            agent_id=self.profile.agent_id,
            agent_version=self.profile.agent_version,
            category=self.category,
            prompt_version=self.prompt,
            model_version=self.profile.model_version,
            tool_schema_version=self.profile.tool_schema_version,
            start_us=self.start_us,
            steps=steps,
            ending=ending,
            end_us=end_us,
            error_type=error_type,
            budget_breaker=breaker,
            denied_tool=denied[0] if denied else None,
        )

    # --- LLM calls -------------------------------------------------------------------------

    def _llm_turn(self, state: _Timeline, turn: int, breaker: bool, fail: bool) -> str | None:
        """One LLM turn with its retries and fallbacks.

        A turn always succeeds in the end (another model takes over) unless ``fail``: then every
        attempt fails and the error type is returned (the session ends with it).
        """
        rng = self.rng
        content: list[Segment] = []
        think = self._think(20, 300)
        if turn == 0:
            content.append(Segment("SYSTEM", catalog.SYSTEM_PROMPTS[self.profile.agent_id]))
            content.append(self._user_text(first=True))
        elif rng.random() < FOLLOW_UP_PROBABILITY:
            # the user reads the answer and writes again
            think = rng.randint(5 * S, 90 * S)
            content.append(self._user_text(first=False))
        if breaker:
            model = rng.choice(catalog.RUNAWAY_MODELS)
            input_tokens = rng.randint(*RUNAWAY_INPUT_TOKENS)
        else:
            model = self._pick_model()
            if turn:
                state.context += round(rng.lognormvariate(math.log(600), 0.7))
            long = rng.random() < self.p.long_context_fraction
            input_tokens = rng.randint(*LONG_CONTEXT_TOKENS) if long else state.context
        retries = 0
        retry = False
        while True:
            if fail:
                error: str | None = catalog.LLM_OVERLOADED
            else:
                # a runaway never fails: its cost is the point
                error = None if breaker else self._llm_error(model, input_tokens)
            self._llm(state, think, model, input_tokens, turn, tuple(content), error, retry)
            if error is None:
                return None
            if retries < MAX_RETRIES and (fail or rng.random() < self.p.retry_probability):
                retries += 1
                retry = True
                think = rng.randint(300 * MS, 4 * S)  # back-off
                if error == catalog.LLM_CONTEXT_EXCEEDED:
                    input_tokens = rng.randint(20_000, MODELS[model].context_limit - 8_000)
                continue
            if fail:
                return error
            # switch to another model: a new call, not a retry
            model = next(m for m in (*self.profile.models, "gpt-4.1") if m != model)
            retries, retry = 0, False
            think = self._think(20, 300)
            input_tokens = min(input_tokens, MODELS[model].context_limit - 8_000)

    def _pick_model(self) -> str:
        if self.rng.random() < self.p.unknown_model_fraction:
            return catalog.UNKNOWN_MODEL
        models = self.profile.models
        return models[0] if self.rng.random() < 0.85 else self.rng.choice(models[1:] or models)

    def _llm_error(self, model: str, input_tokens: int) -> str | None:
        if input_tokens > MODELS[model].context_limit:
            return catalog.LLM_CONTEXT_EXCEEDED
        if self.rng.random() < self.p.llm_error_rate:
            return catalog.LLM_OVERLOADED
        return None

    def _llm(
        self,
        state: _Timeline,
        think: int,
        model: str,
        input_tokens: int,
        turn: int,
        content: tuple[Segment, ...],
        error: str | None,
        retry: bool,
    ) -> None:
        rng = self.rng
        spec = MODELS[model]
        cache_read: int | None = None
        cost: float | None = None
        if error is not None:
            # a refused request is not billed: no usage comes back
            input_used = output_tokens = 0
            fast = error == catalog.LLM_CONTEXT_EXCEEDED
            duration = rng.randint(50 * MS, 300 * MS) if fast else rng.randint(100 * MS, 1500 * MS)
        else:
            input_used = input_tokens
            output_tokens = min(4000, max(5, round(rng.lognormvariate(math.log(150), 0.8))))
            if spec.caches_prompts and turn > 0 and rng.random() < 0.5:
                cache_read = round(input_tokens * rng.uniform(0.5, 0.9))
            seconds = 0.3 + output_tokens / rng.uniform(40, 120) + input_tokens / 60_000
            if rng.random() < 0.03:
                seconds *= rng.uniform(2, 5)  # the slow tail
            duration = round(min(seconds, 90.0) * S)
            known = model != catalog.UNKNOWN_MODEL
            if known and rng.random() < self.p.reported_cost_fraction:
                fresh = input_tokens - (cache_read or 0)
                usd = (
                    fresh * spec.usd_input_per_m
                    + (cache_read or 0) * spec.usd_input_per_m / 4
                    + output_tokens * spec.usd_output_per_m
                ) / 1_000_000
                cost = round(usd * rng.uniform(0.9, 1.0), 6)
        start = state.t + think
        state.t = start + duration
        state.steps.append(
            LlmStep(
                start_us=start,
                think_us=think,
                duration_us=duration,
                model=model,
                provider=spec.provider,
                input_tokens=input_used,
                output_tokens=output_tokens,
                cache_read_input_tokens=cache_read,
                cost_usd=cost,
                status=OK if error is None else ERROR,
                error_type=error,
                retry=retry,
                content=content,
            )
        )

    # --- tool calls ------------------------------------------------------------------------

    def _tool_with_retries(self, state: _Timeline, breaker: bool, fail: bool = False) -> str | None:
        """A tool call and its retries; the error type if it finally failed.

        With ``fail`` every attempt fails with the same error (the one that ends the session).
        A call the client refuses fails at once with PiiBlocked, which is never retried: the same
        arguments would be refused again.
        """
        rng = self.rng
        name = self.profile.tools[0] if breaker else rng.choice(self.profile.tools)
        call_id = f"call_{rng.getrandbits(48):012x}"
        args = self._tool_args(name)
        forced = rng.choices(catalog.TOOL_ERRORS, catalog.TOOL_ERROR_WEIGHTS)[0] if fail else None
        retry = False
        for attempt in range(MAX_RETRIES + 1):
            error = self._tool(state, name, call_id=call_id, args=args, retry=retry, error=forced)
            if error is None:
                return None
            retryable = error in catalog.RETRYABLE_TOOL_ERRORS
            if attempt == MAX_RETRIES or not retryable or rng.random() >= self.p.retry_probability:
                return error
            retry = True
        raise AssertionError("unreachable: the last attempt returns")

    def _tool(
        self,
        state: _Timeline,
        name: str,
        *,
        call_id: str | None = None,
        args: Segment | None = None,
        retry: bool = False,
        denied: bool = False,
        error: str | None = None,
    ) -> str | None:
        rng = self.rng
        spec = TOOLS[name]
        if error is None and not denied and rng.random() < self.tool_error_rate:
            error = rng.choices(catalog.TOOL_ERRORS, catalog.TOOL_ERROR_WEIGHTS)[0]
        if error == "ToolTimeout":
            duration = spec.timeout_ms * MS
        elif error == "RateLimited":
            duration = rng.randint(5 * MS, 50 * MS)
        elif error == "SchemaMismatch":
            duration = rng.randint(5 * MS, 30 * MS)
        else:
            seconds = rng.lognormvariate(math.log(spec.median_ms / 1000), 0.9)
            if rng.random() < 0.02:
                seconds *= rng.uniform(3, 10)  # the slow tail
            duration = round(min(max(seconds, 0.005), 30.0) * S)
        think = rng.randint(300 * MS, 4 * S) if retry else self._think(5, 150)
        start = state.t + think
        # the result (or the refusal) enters the next prompt
        state.context += 150 + rng.randint(0, 600)
        call_id = call_id or f"call_{rng.getrandbits(48):012x}"
        args = args or self._tool_args(name)
        result = None if error else self._tool_result(name)
        cost: float | None = spec.cost_usd
        status = OK if error is None else ERROR
        blocked = client_refuses(self.pii_policy, name, args.pii)
        if blocked:
            # refused before it runs: recorded at once, with its arguments only
            duration, result, cost, status, error = 0, None, None, BLOCKED, PII_BLOCKED
        state.t = start + duration
        state.steps.append(
            ToolStep(
                start_us=start,
                think_us=think,
                duration_us=duration,
                name=name,
                call_id=call_id,
                args=args,
                result=result,
                cost_usd=cost,
                status=status,
                error_type=error,
                retry=retry,
                denied=denied,
                blocked=blocked,
            )
        )
        return error

    def _tool_args(self, name: str) -> Segment:
        return self._json_segment("TOOL_ARGUMENTS", _tool_args(self.rng, name))

    def _tool_result(self, name: str) -> Segment:
        return self._json_segment("TOOL_RESULT", _tool_result(self.rng, name))

    # --- the end of a session --------------------------------------------------------------

    def _finish_ok(self, state: _Timeline) -> None:
        rng = self.rng
        answer = catalog.ANSWERS.get(self.category, catalog.DEFAULT_ANSWER)
        think = self._think(5, 100)
        state.t += think
        state.steps.append(OutputStep(state.t, think, self._free_text("OUTPUT", answer)))
        mean = dict(self.p.category_scores)[self.category]
        score = round(min(1.0, max(0.0, rng.gauss(mean, self.p.score_sd))), 3)
        think = self._think(5, 500)
        state.t += think
        state.steps.append(EvaluationStep(state.t, think, "quality", score))

    # --- texts -----------------------------------------------------------------------------

    def _user_text(self, first: bool) -> Segment:
        requests = catalog.REQUESTS.get(self.category, catalog.DEFAULT_REQUESTS)
        text = self.rng.choice(requests)
        if not first:
            text = f"{self.rng.choice(catalog.FOLLOW_UPS)} {text}"
        return self._free_text("USER", text)

    def _planted(self) -> tuple[PiiValue, ...]:
        """The PII values of the next text: none for most texts."""
        rng = self.rng
        if rng.random() >= self.p.pii_fraction:
            return ()
        count = 2 if rng.random() < TWO_PII_PROBABILITY else 1
        weights = [catalog.PII_TYPE_WEIGHTS[t] for t in ENTITY_TYPES]
        return tuple(self.pii.make(rng.choices(ENTITY_TYPES, weights)[0]) for _ in range(count))

    def _free_text(self, role: str, text: str) -> Segment:
        planted = self._planted()
        sentences = [catalog.PII_SENTENCES[v.entity_type].format(value=v.value) for v in planted]
        return Segment(role, " ".join([text, *sentences]), planted)

    def _json_segment(self, role: str, payload: dict[str, Any]) -> Segment:
        planted = self._planted()
        for n, value in enumerate(planted):
            key = catalog.PII_KEYS[value.entity_type]
            payload[key if key not in payload else f"{key}_{n + 1}"] = value.value
        return Segment(role, json.dumps(payload, sort_keys=True), planted)

    def _think(self, low_ms: int, high_ms: int) -> int:
        return self.rng.randint(low_ms * MS, high_ms * MS)


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method: fine for the small means of tool calls per turn."""
    limit, k, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k


def _code(rng: random.Random, prefix: str) -> str:
    return f"{prefix}-{rng.randint(10_000, 99_999)}"


_SERVICES = ("checkout", "search", "payments", "auth", "notifications")


def _tool_args(rng: random.Random, name: str) -> dict[str, Any]:
    """Plausible, PII-free arguments of a tool call (short ids never look like PII)."""
    by_tool: dict[str, dict[str, Any]] = {
        "lookup_order": {"order_id": _code(rng, "ORD")},
        "search_kb": {
            "query": rng.choice(("refund policy", "reset password", "late delivery")),
            "top_k": 5,
        },
        "get_customer": {"customer_id": _code(rng, "C")},
        "create_ticket": {
            "priority": rng.choice(("low", "normal", "high")),
            "summary": "customer needs follow-up",
        },
        "send_email": {"customer_id": _code(rng, "C"), "template": "case_update"},
        "get_invoice": {"invoice_id": _code(rng, "INV")},
        "refund_payment": {"amount_usd": rng.randint(5, 400), "invoice_id": _code(rng, "INV")},
        "update_billing": {
            "customer_id": _code(rng, "C"),
            "plan": rng.choice(("annual", "monthly")),
        },
        "web_search": {"q": rng.choice(("kafka consumer lag", "avro schema evolution", "tls 1.3"))},
        "fetch_url": {"url": f"https://docs.example.com/{_code(rng, 'page')}"},
        "run_sql": {"sql": "select status, count(*) from orders group by status"},
        "get_metrics": {"service": rng.choice(_SERVICES), "window": "1h"},
        "restart_service": {"service": rng.choice(_SERVICES)},
        "delete_account": {"account_id": _code(rng, "ACC"), "confirm": True},
        "shell_exec": {"command": rng.choice(("rm -rf /var/cache/app", "cat /etc/passwd"))},
    }
    return by_tool.get(name, {"input": _code(rng, "X")})


def _tool_result(rng: random.Random, name: str) -> dict[str, Any]:
    by_tool: dict[str, dict[str, Any]] = {
        "lookup_order": {
            "status": rng.choice(("processing", "shipped", "delivered")),
            "eta_days": rng.randint(1, 9),
        },
        "search_kb": {"best": _code(rng, "KB"), "hits": rng.randint(0, 5)},
        "get_customer": {"since": rng.randint(2015, 2025), "tier": rng.choice(("gold", "basic"))},
        "create_ticket": {"ticket_id": _code(rng, "TCK")},
        "send_email": {"queued": True},
        "get_invoice": {"status": rng.choice(("paid", "open")), "total_usd": rng.randint(9, 900)},
        "refund_payment": {"refund_id": _code(rng, "RF")},
        "update_billing": {"ok": True},
        "web_search": {"results": rng.randint(3, 10)},
        "fetch_url": {"bytes": rng.randint(2_000, 90_000), "status": 200},
        "run_sql": {"rows": rng.randint(1, 12)},
        "get_metrics": {"error_rate": round(rng.random() / 20, 4), "p99_ms": rng.randint(80, 4000)},
        "restart_service": {"restarted": True},
        "delete_account": {"deleted": True},
        "shell_exec": {"exit_code": 0},
    }
    return by_tool.get(name, {"ok": True})
