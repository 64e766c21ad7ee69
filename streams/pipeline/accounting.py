"""Per-session accounting: ``fold`` one StepEvent into a SessionState (pure, no I/O).

State is idempotent under at-least-once delivery: each session keeps the highest ``seq`` it
applied, so a redelivered event changes nothing. ``fold`` mutates the state it is given (that is
what keeps the hot path cheap) and returns what the event changed, for aggregates and policies.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from dataclasses import dataclass, field
from sys import intern
from typing import Any

from streams.pipeline.pricing import PriceTable
from streams.pipeline.seqs import admit

ACTIVE = "ACTIVE"
FINAL_STATUSES = ("OK", "ERROR", "TIMEOUT", "KILLED")
STEP_KINDS = ("LLM_CALL", "TOOL_CALL")


@dataclass(slots=True)
class SlowestStep:
    seq: int
    kind: str
    name: str | None
    duration_us: int


@dataclass(slots=True)
class SessionState:
    session_id: str
    tenant_id: str
    agent_id: str
    agent_version: str | None = None
    category: str | None = None
    prompt_version: str | None = None
    model_version: str | None = None
    tool_schema_version: str | None = None
    policy_version: int = 0
    status: str = ACTIVE
    error_type: str | None = None
    failure_step_kind: str | None = None
    failure_tool: str | None = None
    start_time_us: int | None = None
    end_time_us: int | None = None
    first_event_us: int = 0
    last_event_us: int = 0
    last_seq: int = 0
    missing_events: int = 0
    #: seqs below last_seq not applied yet, applied once if they come late (pipeline.seqs)
    seq_open_below: int = 0
    #: the lowest seq applied (0: restored from a checkpoint older than the window)
    first_seq: int = 0
    events: int = 0
    cost_micros: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    reasoning_output_tokens: int = 0
    llm_calls: int = 0
    retries: int = 0
    unpriced_calls: int = 0
    max_context_tokens: int = 0
    step_time_us: int = 0
    violations: int = 0
    steps_by_kind: dict[str, int] = field(default_factory=dict)
    tool_calls: dict[str, int] = field(default_factory=dict)
    tool_errors: dict[str, int] = field(default_factory=dict)
    errors_by_type: dict[str, int] = field(default_factory=dict)
    tokens_by_model: dict[str, int] = field(default_factory=dict)
    cost_by_model: dict[str, int] = field(default_factory=dict)
    evaluations: dict[str, float] = field(default_factory=dict)
    slowest: SlowestStep | None = None
    #: (kind, name) of the last LLM or tool step that failed: the next identical one is a retry
    last_failed: tuple[str, str] | None = None
    #: identical tool calls in a row (loop detection): identity and run length
    repeat_key: str | None = None
    repeat_count: int = 0
    #: steps per event-time minute over the last STEP_MINUTES_KEPT minutes (session step rate)
    step_minutes: dict[int, int] = field(default_factory=dict)
    #: 8-byte digests of the event ids applied, to refuse an event id reused with another seq
    #: (the first MAX_TRACKED_EVENT_IDS events of a session)
    event_ids: bytes = b""
    #: degradation SLI: a failed tool waiting for the session's next tool call (its fallback?)
    pending_fallback: str | None = None
    #: the session that started this one (an agent another agent called), from its
    #: SESSION_START's ``governor.parent_session_id``: cost and steps roll up over descendants
    parent_session_id: str | None = None

    @property
    def ended(self) -> bool:
        return self.status != ACTIVE

    @property
    def duration_us(self) -> int:
        start = self.start_time_us if self.start_time_us is not None else self.first_event_us
        end = self.end_time_us if self.end_time_us is not None else self.last_event_us
        return max(0, end - start)

    def to_dict(self) -> dict[str, Any]:
        # a hand-rolled asdict: checkpoints serialise thousands of states a second
        raw = {name: getattr(self, name) for name in _STATE_FIELDS}
        raw["event_ids"] = base64.b64encode(self.event_ids).decode()
        raw["step_minutes"] = {str(m): n for m, n in self.step_minutes.items()}
        slowest = self.slowest
        if slowest is not None:
            raw["slowest"] = {
                "seq": slowest.seq,
                "kind": slowest.kind,
                "name": slowest.name,
                "duration_us": slowest.duration_us,
            }
        return raw

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SessionState:
        raw = dict(raw)
        slowest = raw.pop("slowest", None)
        last_failed = raw.pop("last_failed", None)
        event_ids = raw.pop("event_ids", "")
        step_minutes = raw.pop("step_minutes", None) or {}
        state = cls(**raw)
        for name in _SHARED_NAMES:  # as new_state does: one copy of what sessions share
            value = getattr(state, name)
            if value is not None:
                setattr(state, name, intern(value))
        state.event_ids = base64.b64decode(event_ids)
        state.step_minutes = {int(m): n for m, n in step_minutes.items()}
        state.slowest = SlowestStep(**slowest) if slowest else None
        state.last_failed = (last_failed[0], last_failed[1]) if last_failed else None
        return state


_STATE_FIELDS = tuple(f.name for f in dataclasses.fields(SessionState))
#: fields whose values many sessions share (interned)
_SHARED_NAMES = (
    "tenant_id",
    "agent_id",
    "agent_version",
    "category",
    "prompt_version",
    "model_version",
    "tool_schema_version",
    "status",
    "error_type",
    "failure_step_kind",
    "failure_tool",
)

MAX_TRACKED_EVENT_IDS = 256
#: a SESSION_START attribute naming the session that started this one (client, OTel, ingest)
PARENT_SESSION_ATTR = "governor.parent_session_id"
MAX_PARENT_ID_CHARS = 256
#: the longest step-rate window a policy may use, in minutes (policy.MAX_RATE_WINDOW_S)
STEP_MINUTES_KEPT = 120
MINUTE_US = 60_000_000


def event_id_digest(event_id: str) -> bytes:
    return hashlib.blake2b(event_id.encode(), digest_size=8).digest()


def reuses_event_id(state: SessionState, digest: bytes) -> bool:
    """Whether ``digest`` is among the session's applied event ids (8-byte aligned)."""
    ids = state.event_ids
    start = ids.find(digest)
    while start >= 0:
        if start % 8 == 0:
            return True
        start = ids.find(digest, start + 1)
    return False


def remember_event_id(state: SessionState, digest: bytes) -> None:
    if len(state.event_ids) < MAX_TRACKED_EVENT_IDS * 8:
        state.event_ids += digest


def count_step_minute(state: SessionState, time_us: int) -> None:
    minute = time_us - time_us % MINUTE_US
    minutes = state.step_minutes
    if minute not in minutes:
        horizon = minute - STEP_MINUTES_KEPT * MINUTE_US
        for old in [m for m in minutes if m <= horizon]:
            del minutes[old]
        minutes[minute] = 0
    minutes[minute] += 1


def steps_in_window(state: SessionState, now_us: int, window_s: float) -> int:
    """Steps of the session in the minutes of the window ending with ``now_us``'s minute."""
    now_min = now_us - now_us % MINUTE_US
    minutes = max(1, int(window_s // 60))
    counted = state.step_minutes
    if minutes < len(counted):
        # a short window: look its minutes up (keys are minute starts) rather than scan all
        return sum(counted.get(now_min - i * MINUTE_US, 0) for i in range(minutes))
    first = now_min - (minutes - 1) * MINUTE_US
    return sum(n for m, n in counted.items() if first <= m <= now_min)


@dataclass(slots=True)
class StepDelta:
    """What one applied event changed: input for aggregates, metrics and policies."""

    kind: str
    event_time_us: int
    cost_micros: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    duration_us: int = 0
    name: str | None = None  #: model of an LLM call, tool of a tool call
    status: str = "OK"
    error_type: str | None = None
    unpriced: bool = False
    retry: bool = False
    #: a tool call's arguments (its first TOOL_ARGUMENTS text): tools policies may deny by them
    arguments: str | None = None
    started: bool = False  #: this event started the session
    ended: bool = False  #: this event ended the session


def new_state(event: dict[str, Any]) -> SessionState:
    # names shared by many sessions are interned: each decoded event brings its own copies,
    # and a session keeping them would hold ~60 bytes each of what every session holds
    return SessionState(
        session_id=event["session_id"],
        tenant_id=intern(event["tenant_id"]),
        agent_id=intern(event["agent_id"]),
        first_event_us=event["start_time_us"],
    )


def step_name(event: dict[str, Any]) -> str | None:
    return event.get("model") if event["kind"] == "LLM_CALL" else event.get("tool_name")


def fold(
    state: SessionState, event: dict[str, Any], prices: PriceTable, policy_version: int = 0
) -> StepDelta | None:
    """Apply ``event`` to ``state``; None if it was already applied (duplicate or older seq)."""
    seq = event["seq"]
    order = admit(
        state.last_seq,
        state.seq_open_below,
        state.first_seq,
        state.missing_events,
        seq,
        not state.events,
    )
    if order is None:
        return None
    state.last_seq, state.seq_open_below, state.first_seq, state.missing_events = order
    state.events += 1
    kind = event["kind"]
    start = event["start_time_us"]
    duration = event.get("duration_us") or 0
    # SESSION_START/END are instants: the client gives SESSION_END the session's length as
    # its duration, which must not push the session's last event time past its end
    ends_at = start if kind in ("SESSION_START", "SESSION_END") else start + duration
    if ends_at > state.last_event_us:
        state.last_event_us = ends_at
    if start < state.first_event_us or not state.first_event_us:
        state.first_event_us = start
    if policy_version:
        state.policy_version = policy_version
    if state.events == 1 or kind == "SESSION_START":
        # the client stamps the versions on every event; a session's first event says them
        _versions(state, event)
    state.steps_by_kind[kind] = state.steps_by_kind.get(kind, 0) + 1
    delta = StepDelta(
        kind=kind,
        event_time_us=start,
        duration_us=duration,
        status=event.get("status") or "OK",
        error_type=event.get("error_type"),
    )

    if kind == "SESSION_START":
        if state.start_time_us is None:
            state.start_time_us = start
            delta.started = True
        parent = (event.get("attributes") or {}).get(PARENT_SESSION_ATTR)
        if parent and parent != state.session_id:
            state.parent_session_id = parent[:MAX_PARENT_ID_CHARS]
    elif kind == "SESSION_END":
        _end(state, event, start)
        delta.ended = True
    elif kind in STEP_KINDS:
        _step(state, event, delta, prices)
    elif kind == "EVALUATION":
        score = event.get("evaluation_score")
        if score is not None and event.get("evaluation_name"):
            state.evaluations[event["evaluation_name"]] = score
    elif kind == "ERROR":
        _count(state.errors_by_type, event.get("error_type") or "UNKNOWN")
        state.error_type = event.get("error_type") or state.error_type
    return delta


def _versions(state: SessionState, event: dict[str, Any]) -> None:
    for name in (
        "agent_version",
        "category",
        "prompt_version",
        "model_version",
        "tool_schema_version",
    ):
        value = event.get(name)
        if value is not None:
            setattr(state, name, intern(value))


def _count(counter: dict[str, int], key: str, n: int = 1) -> None:
    counter[key] = counter.get(key, 0) + n


def _step(state: SessionState, event: dict[str, Any], delta: StepDelta, prices: PriceTable) -> None:
    kind = event["kind"]
    name = step_name(event)
    if name is not None:
        name = intern(name)  # a key of the session's per-model and per-tool counts
    delta.name = name
    duration = delta.duration_us
    state.step_time_us += duration
    if state.slowest is None or duration > state.slowest.duration_us:
        state.slowest = SlowestStep(event["seq"], kind, name, duration)
    # a retry repeats the failed call right before it: the same model, or the same tool call id
    identity = (kind, (name if kind == "LLM_CALL" else event.get("tool_call_id")) or "")
    if state.last_failed == identity and identity[1]:
        state.retries += 1
        delta.retry = True
    failed = delta.status not in ("OK", "UNKNOWN")
    state.last_failed = identity if failed else None
    if failed:
        error_type = event.get("error_type") or delta.status
        _count(state.errors_by_type, error_type)
        state.failure_step_kind, state.failure_tool = kind, name
        state.error_type = error_type

    cost = event.get("cost_micros")
    if kind == "LLM_CALL":
        state.llm_calls += 1
        input_tokens = event.get("input_tokens") or 0
        output_tokens = event.get("output_tokens") or 0
        cached = event.get("cache_read_input_tokens") or 0
        state.input_tokens += input_tokens
        state.output_tokens += output_tokens
        state.cache_read_input_tokens += cached
        state.reasoning_output_tokens += event.get("reasoning_output_tokens") or 0
        state.max_context_tokens = max(state.max_context_tokens, input_tokens)
        model = name or "unknown"
        _count(state.tokens_by_model, model, input_tokens + output_tokens)
        delta.input_tokens, delta.output_tokens = input_tokens, output_tokens
        if cost is None:
            written = event.get("cache_write_input_tokens")
            cost = prices.price_micros(name, input_tokens, output_tokens, cached, written)
            if cost is None:
                state.unpriced_calls += 1
                delta.unpriced = True
        if cost:
            _count(state.cost_by_model, model, cost)
    else:
        tool = name or "unknown"
        _count(state.tool_calls, tool)
        if failed:
            _count(state.tool_errors, tool)
        arguments = (c["text"] for c in event.get("content") or () if c["role"] == "TOOL_ARGUMENTS")
        args = next(arguments, "")
        delta.arguments = args or None
        # a digest, not the arguments: state is checkpointed to Kafka and must never hold PII
        key = f"{tool}\0{hashlib.blake2b(args.encode(), digest_size=12).hexdigest()}"
        state.repeat_count = state.repeat_count + 1 if key == state.repeat_key else 1
        state.repeat_key = key
    if cost:
        state.cost_micros += cost
        delta.cost_micros = cost


def _end(state: SessionState, event: dict[str, Any], time_us: int) -> None:
    status = event.get("status") or "OK"
    state.status = status if status in FINAL_STATUSES else ("ERROR" if status != "OK" else "OK")
    state.end_time_us = time_us
    if event.get("error_type"):
        state.error_type = event["error_type"]
    elif state.status == "OK":
        state.error_type = None


def close_timed_out(state: SessionState) -> None:
    """The session went silent longer than the idle timeout: it ends as TIMEOUT."""
    state.status = "TIMEOUT"
    state.end_time_us = state.last_event_us


def summary(state: SessionState) -> dict[str, Any]:
    """The SessionSummary record of a finished session."""
    slowest = state.slowest
    return {
        "session_id": state.session_id,
        "tenant_id": state.tenant_id,
        "agent_id": state.agent_id,
        "agent_version": state.agent_version,
        "category": state.category,
        "prompt_version": state.prompt_version,
        "model_version": state.model_version,
        "tool_schema_version": state.tool_schema_version,
        "policy_version": state.policy_version,
        "status": state.status if state.ended else "UNKNOWN",
        "error_type": state.error_type,
        "failure_step_kind": state.failure_step_kind,
        "failure_tool": state.failure_tool,
        "start_time_us": state.start_time_us
        if state.start_time_us is not None
        else state.first_event_us,
        "end_time_us": state.end_time_us if state.end_time_us is not None else state.last_event_us,
        "cost_micros": state.cost_micros,
        "input_tokens": state.input_tokens,
        "output_tokens": state.output_tokens,
        "cache_read_input_tokens": state.cache_read_input_tokens,
        "reasoning_output_tokens": state.reasoning_output_tokens,
        "steps_by_kind": dict(state.steps_by_kind),
        "tool_calls": dict(state.tool_calls),
        "errors_by_type": dict(state.errors_by_type),
        "tokens_by_model": dict(state.tokens_by_model),
        "cost_by_model": dict(state.cost_by_model),
        "retries": state.retries,
        "max_context_tokens": state.max_context_tokens,
        "unpriced_calls": state.unpriced_calls,
        "violations": state.violations,
        "evaluations": dict(state.evaluations),
        "parent_session_id": state.parent_session_id,
        "slowest_step": None
        if slowest is None
        else {
            "seq": slowest.seq,
            "kind": slowest.kind,
            "name": slowest.name,
            "duration_us": slowest.duration_us,
        },
        "last_seq": state.last_seq,
    }
