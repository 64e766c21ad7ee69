"""Policies: their validated model, and ``decide`` (pure) turning state into outcomes."""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from streams.pipeline.aggregates import agent_scope, scope_of

Action = Literal["warn", "throttle", "pause", "kill"]
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}

# Bounds of every number in the policy, price, PII and SLO files. Money is integer micro-USD and
# time integer microseconds in signed 64-bit Avro longs (9.2e18): with these bounds no product
# the worker forms (a limit in micro-USD, a window or TTL in microseconds added to a timestamp)
# comes near that, and a value a file cannot mean (.inf, .nan, -1, 1e30) is refused at load
# instead of overflowing on the first event.
#: a money amount in USD (1e15 micro-USD)
MAX_USD = 1_000_000_000
#: a count of sessions, steps, repeats or failures
MAX_COUNT = 1_000_000_000
#: a window, duration or TTL (3.2e13 microseconds)
MAX_DURATION_S = 366 * 86400
#: a throttle delay: a day
MAX_DELAY_MS = 86_400_000
#: a file's ``version:`` (held exactly by every reader: Avro longs, the metrics' float gauge)
MAX_VERSION = 2**31 - 1
#: strict: a number is a YAML number ("10" and true are refused), finite and never NaN
FILE_MODEL_CONFIG = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

Version = Annotated[int, Field(ge=1, le=MAX_VERSION)]
Count = Annotated[int, Field(ge=1, le=MAX_COUNT)]
DelayMs = Annotated[int, Field(ge=0, le=MAX_DELAY_MS)]
#: the throttle delay of a policy that names none
DEFAULT_THROTTLE_DELAY_MS = 1000


@functools.lru_cache(maxsize=256)
def duration_s(text: str) -> float:
    """``30s``, ``5m``, ``1h``, ``7d`` in seconds."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 30s, 5m, 1h or 7d")
    return float(match[1]) * _UNIT_S[match[2]]


def _check_duration(value: str) -> str:
    seconds = duration_s(value)
    if not 0 < seconds <= MAX_DURATION_S:
        raise ValueError(f"{value!r} must be more than 0s and at most {MAX_DURATION_S // 86400}d")
    return value


#: rate windows (step rates, tool failures) are counted per minute and kept this long
MAX_RATE_WINDOW_S = 2 * 3600


def _check_rate_window(value: str) -> str:
    _check_duration(value)
    if duration_s(value) > MAX_RATE_WINDOW_S:
        raise ValueError(
            f"{value!r}: rate windows are at most {MAX_RATE_WINDOW_S // 3600}h "
            "(the worker keeps per-minute counts that long)"
        )
    return value


def usd_micros(usd: float) -> int:
    """``usd`` in integer micro-USD, clamped to [0, MAX_USD]: the files are validated to that
    range, and a model built in code without validation must not overflow the hot path."""
    if not usd < MAX_USD:  # NaN too
        return MAX_USD * 1_000_000
    if not usd > 0:  # -inf too
        return 0
    return round(usd * 1_000_000)


class Match(BaseModel):
    """Which tenants and agents a policy applies to (shell globs)."""

    model_config = FILE_MODEL_CONFIG
    tenants: list[str] = ["*"]
    agents: list[str] = ["*"]

    def covers(self, tenant_id: str, agent_id: str) -> bool:
        return any(fnmatch.fnmatchcase(tenant_id, g) for g in self.tenants) and any(
            fnmatch.fnmatchcase(agent_id, g) for g in self.agents
        )


class PolicyBase(BaseModel):
    model_config = FILE_MODEL_CONFIG
    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
    description: str = ""
    enabled: bool = True
    match: Match = Match()


class BudgetPolicy(PolicyBase):
    """Spend limit of a session, or of an agent or tenant over a rolling event-time window."""

    kind: Literal["budget"]
    #: session_tree: a session and every session it started, recursively (sub-agents), while
    #: any of them is open (the tree is the window)
    scope: Literal["session", "agent", "tenant", "session_tree"]
    limit_usd: Annotated[float, Field(gt=0, le=MAX_USD)]
    window: str = "1d"  #: ignored for scopes session and session_tree
    warn_at: Annotated[float, Field(gt=0, lt=1)] | None = 0.8
    action: Action = "kill"
    throttle_delay_ms: DelayMs = 1000
    #: agent/tenant scope, client-side reservations in Redis: what a step does when Redis does
    #: not answer (the worker enforces the budget after the fact either way)
    on_unavailable: Literal["allow", "deny"] = "allow"

    _window = field_validator("window")(classmethod(lambda cls, v: _check_duration(v)))


class ConcurrencyPolicy(PolicyBase):
    """At most ``max_active`` open sessions per agent or tenant; new sessions are held back."""

    kind: Literal["concurrency"]
    scope: Literal["agent", "tenant"] = "agent"
    max_active: Count
    action: Action = "throttle"
    throttle_delay_ms: DelayMs = 1000
    #: client-side admission in Redis: what a new session does when Redis does not answer
    #: (the worker enforces the cap after the fact either way)
    on_unavailable: Literal["allow", "deny"] = "allow"


class StepRatePolicy(PolicyBase):
    """At most ``max_steps`` LLM and tool steps per window for a session or an agent."""

    kind: Literal["step_rate"]
    scope: Literal["session", "agent"] = "session"
    max_steps: Count
    window: str = "1m"
    action: Action = "throttle"
    throttle_delay_ms: DelayMs = 1000

    _window = field_validator("window")(classmethod(lambda cls, v: _check_rate_window(v)))


#: a denied-arguments pattern is a regular expression of at most this many characters
MAX_PATTERN_CHARS = 1000


class ArgumentPattern(BaseModel):
    """Calls of the tools matching ``tool`` (glob) whose arguments (the text the client sends,
    JSON for structured arguments) match ``pattern`` (a Python regular expression, searched)."""

    model_config = FILE_MODEL_CONFIG
    tool: str = "*"
    pattern: Annotated[str, Field(min_length=1, max_length=MAX_PATTERN_CHARS)]

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{value!r} is not a regular expression: {exc}") from exc
        return value

    def matches(self, tool: str, arguments: str) -> bool:
        return (
            fnmatch.fnmatchcase(tool, self.tool)
            and _regex(self.pattern).search(arguments) is not None
        )


@functools.lru_cache(maxsize=1024)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


@functools.lru_cache(maxsize=8192)
def _matches_any(globs: tuple[str, ...], name: str) -> bool:
    """Whether ``name`` matches any of the globs (``fnmatchcase``), remembered: tool names
    and policy globs are few, and the hot path asks on every tool call."""
    return any(fnmatch.fnmatchcase(name, g) for g in globs)


class ToolPolicy(PolicyBase):
    """Tools allowed and denied by glob, and calls denied by their arguments; deny wins."""

    kind: Literal["tools"]
    allow: list[str] = ["*"]
    deny: list[str] = []
    #: calls refused by what their arguments hold (``rm -rf``, ``DROP TABLE``), any allowed tool
    deny_arguments: list[ArgumentPattern] = []
    action: Action = "kill"

    def permits(self, tool: str) -> bool:
        # asked on every tool call: the globs' answer for a tool name is remembered
        if _matches_any(tuple(self.deny), tool):
            return False
        return _matches_any(tuple(self.allow), tool)

    def denied_arguments(self, tool: str, arguments: str | None) -> ArgumentPattern | None:
        """The first pattern the call's ``arguments`` match, if any."""
        if not arguments:
            return None
        return next((p for p in self.deny_arguments if p.matches(tool, arguments)), None)


class LoopPolicy(PolicyBase):
    """``max_repeats`` identical tool calls (same tool, same arguments) in a row."""

    kind: Literal["loop"]
    max_repeats: Annotated[int, Field(ge=2, le=MAX_COUNT)]
    action: Action = "kill"


class DurationPolicy(PolicyBase):
    """A session may last at most ``max_duration`` of event time."""

    kind: Literal["max_duration"]
    max_duration: str
    action: Action = "kill"

    _max = field_validator("max_duration")(classmethod(lambda cls, v: _check_duration(v)))


class UnpricedModelPolicy(PolicyBase):
    """What to do when an LLM call uses a model without a price: warn, or fail closed."""

    kind: Literal["unpriced_model"]
    action: Action = "warn"


class DegradationPolicy(PolicyBase):
    """A tool failing ``max_failures`` times within ``window``: act on the agents that use it."""

    kind: Literal["degradation"]
    tool: str
    max_failures: Count
    window: str = "5m"
    action: Action = "pause"
    #: after this long without new failures the agents get a RESUME
    resume_after: str = "10m"
    throttle_delay_ms: DelayMs = 1000

    _window = field_validator("window")(classmethod(lambda cls, v: _check_rate_window(v)))
    _resume = field_validator("resume_after")(classmethod(lambda cls, v: _check_duration(v)))


Policy = Annotated[
    BudgetPolicy
    | ConcurrencyPolicy
    | StepRatePolicy
    | ToolPolicy
    | LoopPolicy
    | DurationPolicy
    | UnpricedModelPolicy
    | DegradationPolicy,
    Field(discriminator="kind"),
]


class PolicyFile(BaseModel):
    model_config = FILE_MODEL_CONFIG
    version: Version
    policies: list[Policy] = []

    @model_validator(mode="after")
    def _unique_ids(self) -> PolicyFile:
        ids = [p.id for p in self.policies]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"policy ids must be unique, repeated: {', '.join(duplicates)}")
        return self

    @staticmethod
    def kind_tags() -> set[str]:
        return {
            "budget",
            "concurrency",
            "step_rate",
            "tools",
            "loop",
            "max_duration",
            "unpriced_model",
            "degradation",
        }


@dataclass(frozen=True)
class PolicySet:
    """The policies in force, with the version decisions cite."""

    version: int
    digest: str
    policies: tuple[Any, ...] = ()
    by_kind: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    #: (tenant, agent) -> kind -> the policies that match them: matching is per fleet member,
    #: not per event
    _applicable: dict[tuple[str, str], dict[str, tuple[Any, ...]]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def applicable(self, tenant_id: str, agent_id: str) -> dict[str, tuple[Any, ...]]:
        key = (tenant_id, agent_id)
        found = self._applicable.get(key)
        if found is None:
            kinds: dict[str, list[Any]] = {}
            for policy in self.policies:
                if policy.match.covers(tenant_id, agent_id):
                    kinds.setdefault(policy.kind, []).append(policy)
            found = self._applicable[key] = {k: tuple(v) for k, v in kinds.items()}
        return found

    @classmethod
    def build(cls, files: Sequence[PolicyFile], digest: str = "") -> PolicySet:
        policies = tuple(p for f in files for p in f.policies if p.enabled)
        by_kind: dict[str, list[Any]] = {}
        for policy in policies:
            by_kind.setdefault(policy.kind, []).append(policy)
        return cls(
            version=max((f.version for f in files), default=0),
            digest=digest,
            policies=policies,
            by_kind={k: tuple(v) for k, v in by_kind.items()},
        )

    def of_kind(self, kind: str) -> tuple[Any, ...]:
        return self.by_kind.get(kind, ())

    def slot(self, policy_id: str) -> int:
        """The policy's place in the set: the epoch slot of its decisions."""
        return self._slots.get(policy_id, 0)

    @functools.cached_property
    def _slots(self) -> dict[str, int]:
        return {p.id: index for index, p in enumerate(self.policies)}

    @functools.cached_property
    def tracks_trees(self) -> bool:
        """Whether a ``session_tree`` budget is in force (the scope stage then keeps trees)."""
        return any(p.kind == "budget" and p.scope == "session_tree" for p in self.policies)

    @functools.cached_property
    def spans_sessions(self) -> bool:
        """Whether any policy looks beyond one session (the scope stage decides those)."""
        return any(
            p.kind in ("concurrency", "degradation")
            or (p.kind in ("budget", "step_rate") and p.scope != "session")
            for p in self.policies
        )


# --- deciding ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What a policy wants done to a target; enforcement turns it into a signed Decision."""

    policy_id: str
    target: str
    action: str  #: WARN, THROTTLE, PAUSE, KILL or RESUME
    reason: str
    #: escalation level within the policy (warn stage 1, enforcement 2): re-issued only if higher
    level: int
    parameters: dict[str, str] = field(default_factory=dict)
    #: seconds after which the decision lapses (window-based limits), None = until resumed
    ttl_s: float | None = None


@dataclass(frozen=True)
class Facts:
    """What ``decide`` may look at beyond the session: computed by the caller per event."""

    #: spend in micro-USD of a scope (see aggregates.scope_of) over the last ``window_s`` seconds
    spend: Any  # Callable[[str, float], int]
    #: open sessions of a scope
    active: Any  # Callable[[str], int]
    #: LLM/tool steps of ("session"|"agent", id) in the last ``window_s`` seconds
    steps: Any  # Callable[[str, str, float], int]
    #: failures of a tool (all agents) in the last ``window_s`` seconds
    tool_failures: Any  # Callable[[str, float], int]
    #: how far (policy id, target) has escalated already: 2 means nothing more to decide
    level: Any = None  # Callable[[str, str], int]
    #: the tree of a session (its root, the tree's spend in micro-USD, its open sessions), or
    #: None when not known; None here: session_tree budgets are not evaluated (one process
    #: without the scope stage, e.g. a backtest)
    tree: Any = None  # Callable[[str], tuple[str, int, tuple[str, ...]] | None]


def _act(policy: Any, target: str, reason: str, level: int = 2, **extra: Any) -> Outcome:
    action = policy.action.upper()
    params = {}
    if action == "THROTTLE":
        # tools, loop, max_duration and unpriced_model policies may say throttle but have no
        # throttle_delay_ms of their own: they take the others' default
        params["delay_ms"] = str(getattr(policy, "throttle_delay_ms", DEFAULT_THROTTLE_DELAY_MS))
    return Outcome(policy.id, target, action, reason, level, params, extra.get("ttl_s"))


def _usd(micros: int) -> str:
    return f"${micros / 1_000_000:,.4f}"


@dataclass(frozen=True, slots=True)
class ScopedStep:
    """A step with its session's ids: what ``decide_scope`` reads (a ScopeItem has the same)."""

    tenant_id: str
    agent_id: str
    session_id: str
    kind: str
    name: str | None
    status: str
    cost_micros: int
    started: bool


def decide(policies: PolicySet, state: Any, delta: Any, facts: Facts) -> list[Outcome]:
    """Every outcome the policies call for after ``delta`` was applied to ``state``: the
    session-scoped ones, then the agent- and tenant-scoped ones (one process holding both)."""
    step = ScopedStep(
        state.tenant_id, state.agent_id, state.session_id, delta.kind, delta.name,
        delta.status, delta.cost_micros, delta.started,
    )  # fmt: skip
    return decide_session(policies, state, delta, facts) + decide_scope(policies, step, facts)


def decide_session(policies: PolicySet, state: Any, delta: Any, facts: Facts) -> list[Outcome]:
    """The session-scoped outcomes after ``delta`` was applied to ``state`` (stage 1).

    ``state`` is the session's SessionState and ``delta`` the event's StepDelta. Outcomes are
    wanted states, not messages: enforcement publishes one only when it escalates. Only the
    kinds the event can affect are evaluated (a budget only moves with a cost, and so on).
    """
    outcomes: list[Outcome] = []
    tenant, agent = state.tenant_id, state.agent_id
    applicable = policies.applicable(tenant, agent)
    if not applicable:
        return outcomes
    session = f"session:{state.session_id}"
    if delta.cost_micros:
        for policy in applicable.get("budget", ()):
            if policy.scope == "session":
                outcomes.extend(_budget(policy, state, delta, facts, session))
    if delta.kind == "TOOL_CALL" and delta.name is not None:
        for policy in applicable.get("tools", ()):
            if not policy.permits(delta.name):
                outcomes.append(_act(policy, session, f"tool {delta.name!r} is not allowed"))
            elif policy.deny_arguments:
                denied = policy.denied_arguments(delta.name, delta.arguments)
                if denied is not None:
                    reason = f"tool {delta.name!r} with arguments matching {denied.pattern!r}"
                    outcomes.append(_act(policy, session, reason))
        for policy in applicable.get("loop", ()):
            if state.repeat_count >= policy.max_repeats:
                reason = f"{state.repeat_count} identical calls of {delta.name!r} in a row"
                outcomes.append(_act(policy, session, reason))
    if not delta.ended:
        for policy in applicable.get("max_duration", ()):
            if state.duration_us > duration_s(policy.max_duration) * 1_000_000:
                outcomes.append(_act(policy, session, f"session longer than {policy.max_duration}"))
    if delta.unpriced:
        for policy in applicable.get("unpriced_model", ()):
            outcomes.append(_act(policy, session, f"model {delta.name!r} has no price"))
    if delta.kind in STEP_KINDS_POLICY:
        for policy in applicable.get("step_rate", ()):
            if policy.scope == "session":
                outcomes.extend(_step_rate(policy, state, facts, session))
    return outcomes


def decide_scope(policies: PolicySet, item: Any, facts: Facts) -> list[Outcome]:
    """The agent- and tenant-scoped outcomes after one step of a session (stage 2).

    ``item`` carries the step (kind, name, status, cost, started) and its session's ids
    (tenant_id, agent_id, session_id): a StepDelta with its state's ids, or a ScopeItem. The
    facts cover every session of the tenant, whichever partition it is on.
    """
    outcomes: list[Outcome] = []
    tenant, agent = item.tenant_id, item.agent_id
    applicable = policies.applicable(tenant, agent)
    if not applicable:
        return outcomes
    session = f"session:{item.session_id}"
    if item.cost_micros:
        for policy in applicable.get("budget", ()):
            if policy.scope == "session_tree":
                outcomes.extend(_tree_budget(policy, item, facts))
            elif policy.scope != "session":
                outcomes.extend(_budget(policy, item, item, facts, session))
    if item.kind == "TOOL_CALL" and item.name is not None:
        for policy in applicable.get("degradation", ()):
            outcomes.extend(_degradation(policy, item, item, facts))
    if item.started:
        for policy in applicable.get("concurrency", ()):
            scope_id = agent if policy.scope == "agent" else tenant
            active = facts.active(scope_of(policy.scope, tenant, agent))
            if active > policy.max_active:
                reason = (
                    f"{active} open sessions of {policy.scope} {scope_id} > {policy.max_active}"
                )
                outcomes.append(_act(policy, session, reason))
    if item.kind in STEP_KINDS_POLICY:
        for policy in applicable.get("step_rate", ()):
            if policy.scope != "session":
                outcomes.extend(_step_rate(policy, item, facts, session))
    return outcomes


STEP_KINDS_POLICY = ("LLM_CALL", "TOOL_CALL")


def _budget(policy: Any, state: Any, delta: Any, facts: Facts, session: str) -> list[Outcome]:
    if not delta.cost_micros:
        return []
    limit = usd_micros(policy.limit_usd)
    if policy.scope == "session":
        target = session
    else:
        target = scope_of(policy.scope, state.tenant_id, state.agent_id)
    if facts.level is not None and facts.level(policy.id, target) >= 2:
        return []  # enforced already: budgets are checked on every priced event, keep it cheap
    if policy.scope == "session":
        spent, ttl = state.cost_micros, None
    else:
        window_s = duration_s(policy.window)
        spent = facts.spend(scope_of(policy.scope, state.tenant_id, state.agent_id), window_s)
        ttl = window_s
    if spent > limit:
        reason = f"{policy.scope} spend {_usd(spent)} over the {_usd(limit)} limit"
        return [_act(policy, target, reason, ttl_s=ttl)]
    if policy.warn_at is not None and spent >= limit * policy.warn_at:
        if facts.level is not None and facts.level(policy.id, target) >= 1:
            return []  # warned already
        reason = f"{policy.scope} spend {_usd(spent)} reached {policy.warn_at:.0%} of {_usd(limit)}"
        return [Outcome(policy.id, target, "WARN", reason, 1, {}, ttl)]
    return []


def _tree_budget(policy: Any, item: Any, facts: Facts) -> list[Outcome]:
    """A budget over a session tree: past the limit, every open session of the tree is
    stopped (each its own target, so a session that joins the tree later is stopped at its
    first priced step); the warning goes to each once."""
    tree = facts.tree(item.session_id) if facts.tree is not None else None
    if tree is None:
        return []
    root, spent, members = tree
    limit = usd_micros(policy.limit_usd)
    outcomes = []
    for member in members:
        target = f"session:{member}"
        level = facts.level(policy.id, target) if facts.level is not None else 0
        if spent > limit and level < 2:
            reason = f"session tree {root} spend {_usd(spent)} over the {_usd(limit)} limit"
            outcomes.append(_act(policy, target, reason))
        elif level < 1 and policy.warn_at is not None and limit * policy.warn_at <= spent <= limit:
            reason = (
                f"session tree {root} spend {_usd(spent)} reached {policy.warn_at:.0%} "
                f"of {_usd(limit)}"
            )
            outcomes.append(Outcome(policy.id, target, "WARN", reason, 1, {}, None))
    return outcomes


def _step_rate(policy: Any, state: Any, facts: Facts, session: str) -> list[Outcome]:
    window_s = duration_s(policy.window)
    scope_id = (
        state.session_id if policy.scope == "session" else f"{state.tenant_id}/{state.agent_id}"
    )
    steps = facts.steps(policy.scope, scope_id, window_s)
    if steps <= policy.max_steps:
        return []
    target = session if policy.scope == "session" else agent_scope(state.tenant_id, state.agent_id)
    reason = f"{steps} steps in {policy.window} > {policy.max_steps}"
    return [_act(policy, target, reason, ttl_s=window_s)]


def _degradation(policy: Any, state: Any, delta: Any, facts: Facts) -> list[Outcome]:
    if not fnmatch.fnmatchcase(delta.name, policy.tool) or delta.status in ("OK", "UNKNOWN"):
        return []
    failures = facts.tool_failures(delta.name, duration_s(policy.window))
    if failures < policy.max_failures:
        return []
    reason = f"tool {delta.name!r} failed {failures} times in {policy.window}"
    target = agent_scope(state.tenant_id, state.agent_id)
    return [_act(policy, target, reason, ttl_s=duration_s(policy.resume_after))]
