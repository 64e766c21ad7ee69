"""OTLP spans and log records → StepEvents, statelessly (pure, no I/O).

Each request is mapped on its own: nothing is remembered between requests, so any number of
``governor ingest`` processes can share the load. What the in-process span processor learns
from open spans, this mapping takes from the request itself:

- **Identity.** Tenant: resource attribute ``governor.tenant`` (else the span's), else the
  receiver's default tenant; without one the span is refused (partial success), never guessed.
  Agent: ``governor.agent``, else ``service.name``; version: ``governor.agent_version``, else
  ``service.version``.
- **Session.** The conversation id chain of :mod:`streams.ingest.mapping`
  (``gen_ai.conversation.id`` → ``session.id`` → ``mcp.session.id``), else the nearest ancestor
  span *in the same request* that names one, else the trace id. Every fallback is counted per
  source (a Prometheus counter): a span is never dropped for want of a conversation. An SDK's
  batch usually holds a whole short trace; a Collector in front of the receiver should run the
  ``groupbytrace`` processor so that every trace arrives whole.
- **Steps.** An agent span (``invoke_agent``/``invoke_workflow``) gives SESSION_START at its
  start. A session that is its trace (no conversation id: the trace-id fallback) ends with its
  root agent span: SESSION_END, OK or ERROR.
- **Turns.** A named conversation has turns, as in the in-process span processor: each trace
  of the conversation is a turn, numbered in the receivers' Redis in the order they first see
  it (:class:`streams.ingest.seq.TurnLedger`), and each turn is its own session,
  :func:`~streams.ingest.mapping.turn_session_id` (``<conversation>``, ``<conversation>#2``,
  ...), whose parent is the conversation's first turn (:func:`~streams.ingest.mapping.turn_parent`,
  shared with the processor). A turn ends (SESSION_END) at its root agent span: the agent span
  of the conversation with no agent span of the same conversation above it, known from the
  request (its parent chain reaches the trace root or a remote parent). When the chain leaves
  the request, the end waits for the missing ancestor (:class:`PendingEnd`, kept in Redis by
  :class:`streams.ingest.seq.PendingEnds`; counted in :attr:`Mapped.open_turns`) and comes
  with the request that brings it (:func:`settle_pending`), or is dropped if that ancestor's
  chain shows a sub-agent; a failed agent span that does not end a turn gives an ERROR event.
  Mapping is pure: drafts carry their :class:`Turn`, and :func:`apply_turns` gives them their
  session once the ledger has numbered the turns.
  LLM spans give LLM_CALL, tool/retrieval/MCP ``tools/call`` spans TOOL_CALL,
  ``gen_ai.evaluation.result`` span events and log records EVALUATION. An MCP ``tools/call``
  span whose parent is an ``execute_tool`` span is the same call: it is ignored (counted).
- **Parents.** An agent span in its own conversation whose parent span (in the request)
  belongs to another session records that session on its SESSION_START, attribute
  ``governor.parent_session_id``: the link a roll-up of cost over agents that call agents needs.
- **Idempotence.** Event ids are UUIDv5 of (trace id, span id, role) — a log record's of its
  content — so a re-sent span gives the same events; :mod:`streams.ingest.seq` gives a re-sent
  event its first seq, which the worker then skips as a duplicate.

The events here have no ``seq`` yet: :mod:`streams.ingest.seq` numbers them per session.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streams.ingest.mapping import (
    EVALUATION_EVENT,
    ConversationSource,
    SpanFacts,
    StepClass,
    classify,
    conversation_of,
    evaluation_fields,
    evaluations,
    is_mcp_tool_call,
    llm_call_fields,
    mcp_server,
    operation,
    session_fields,
    session_outcome,
    text_attr,
    tool_call_fields,
    turn_parent,
    turn_session_id,
    unscored_evaluations,
)
from streams.ingest.otlp import OtlpLog, OtlpSpan
from streams.pipeline.accounting import PARENT_SESSION_ATTR

#: the namespace of every event id the receiver derives (uuid5)
EVENT_NAMESPACE = uuid.UUID("6f1c2a0e-5b7d-4c1e-9a63-0d9e4b2f7a15")
TENANT_ATTRIBUTE = "governor.tenant"
AGENT_ATTRIBUTE = "governor.agent"
AGENT_VERSION_ATTRIBUTE = "governor.agent_version"
#: on SESSION_START: the session of the agent that called this one (multi-agent sessions)
_ZERO_TRACE = "0" * 32
NO_TENANT = (
    f"no tenant: set the resource attribute {TENANT_ATTRIBUTE} (or start governor ingest "
    "with --tenant)"
)
_ZERO_SPAN = "0" * 16


@dataclass(frozen=True)
class Identity:
    tenant_id: str
    agent_id: str
    agent_version: str | None


@dataclass(frozen=True)
class Turn:
    """A turn of a named conversation: one trace of it. A log record asks on its own
    (``record``: its event id): it goes to its trace's turn (no trace: the conversation's latest
    turn) unless that turn has ended, then to the next one, as a span processor's conversation
    that comes back after its end; the answer is kept, so a retried record lands alike."""

    conversation: str
    trace_id: str
    record: str = ""


@dataclass(frozen=True)
class Draft:
    """A StepEvent without its seq (``event`` has every other field of the schema)."""

    session_id: str
    event_id: str
    event: dict[str, Any]
    #: the span or log record it came from (for a partial-success message)
    item: str = ""
    #: the turn of a named conversation (None: a trace-id session, final as it is)
    turn: Turn | None = None
    #: on a SESSION_START: the turn of the named conversation of the agent that called it
    caller: Turn | None = None


@dataclass(frozen=True)
class PendingEnd:
    """A turn's SESSION_END that waits for ``awaiting``, an ancestor span of its root agent
    span that was not in the request: if that span's chain holds no agent span of the turn's
    conversation up to the trace root (or a remote parent), the turn ends; if it holds one, the
    agent span was a sub-agent and the end is dropped. Kept in Redis by the receivers."""

    trace_id: str
    awaiting: str
    end: Draft

    def to_json(self) -> str:
        turn = self.end.turn
        return json.dumps(
            {
                "t": self.trace_id,
                "a": self.awaiting,
                "s": self.end.session_id,
                "e": self.end.event,
                "i": self.end.item,
                "c": turn.conversation if turn else None,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> PendingEnd:
        data = json.loads(raw)
        turn = Turn(data["c"], data["t"]) if data["c"] is not None else None
        end = Draft(data["s"], data["e"]["event_id"], data["e"], data["i"], turn)
        return cls(data["t"], data["a"], end)


def settle_pending(
    spans: Sequence[OtlpSpan], waiting: Sequence[PendingEnd]
) -> tuple[list[Draft], list[PendingEnd]]:
    """The ends that ``waiting`` (ends whose awaited span is in this request) give now, and
    the ones that wait again, on an ancestor still missing. The others are dropped."""
    conversations = _Conversations([span.facts for span in spans])
    ended: list[Draft] = []
    again: list[PendingEnd] = []
    for pending in waiting:
        awaited = conversations.span(pending.trace_id, pending.awaiting)
        if awaited is None:
            again.append(pending)
            continue
        root = conversations.turn_root(awaited, pending.end.session_id, itself=True)
        if root is True:
            ended.append(pending.end)
        elif isinstance(root, str):
            again.append(PendingEnd(pending.trace_id, root, pending.end))
    return ended, again


@dataclass(frozen=True)
class Refusal:
    """An item refused: ``reason`` is a short code (a metric label), ``detail`` for people."""

    item: str
    reason: str
    detail: str

    def describe(self) -> str:
        return f"{self.item}: {self.detail}"


@dataclass
class Mapped:
    """What one request became."""

    drafts: list[Draft] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    #: items that are no step on purpose, by reason (not_genai, create_agent, mcp_server_span)
    ignored: Counter[str] = field(default_factory=Counter)
    #: GenAI items whose session came from a fallback, by source
    fallbacks: Counter[str] = field(default_factory=Counter)
    #: items that became at least one event
    accepted: int = 0
    #: agent spans that may end a turn but whose ancestors are not in the request: their
    #: SESSION_END waits for the missing ancestor (see :func:`settle_pending`)
    open_turns: int = 0
    pending: list[PendingEnd] = field(default_factory=list)
    #: the request's spans (traces), to settle ends that earlier requests left waiting
    spans: Sequence[OtlpSpan] = ()

    def refusal_message(self, limit: int = 20) -> str:
        """The partial-success message: every refused item (up to ``limit``) and why."""
        if not self.refused:
            return ""
        shown = "; ".join(r.describe() for r in self.refused[:limit])
        more = len(self.refused) - limit
        return shown + (f"; and {more} more" if more > 0 else "")


def event_id(*parts: str) -> str:
    return str(uuid.uuid5(EVENT_NAMESPACE, "/".join(parts)))


def identity_of(
    resource: Mapping[str, Any], attrs: Mapping[str, Any], default_tenant: str | None
) -> Identity | None:
    """Who sent an item; None when no tenant is named and the receiver has no default."""
    tenant = text_attr(resource, TENANT_ATTRIBUTE) or text_attr(attrs, TENANT_ATTRIBUTE)
    tenant = tenant or default_tenant
    if tenant is None:
        return None
    agent = text_attr(resource, AGENT_ATTRIBUTE, "service.name") or "unknown_service"
    version = text_attr(resource, AGENT_VERSION_ATTRIBUTE, "service.version")
    return Identity(tenant, agent, version)


def _valid_ids(facts: SpanFacts) -> str | None:
    """Why the span's ids cannot key events, or None."""
    if len(facts.trace_id) != 32 or facts.trace_id == _ZERO_TRACE:
        return f"trace id {facts.trace_id or '(empty)'!r} is not 16 non-zero bytes"
    if len(facts.span_id) != 16 or facts.span_id == _ZERO_SPAN:
        return f"span id {facts.span_id or '(empty)'!r} is not 8 non-zero bytes"
    return None


def _segments(pairs: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"role": role, "text": text} for role, text in pairs]


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)


class _Conversations:
    """Resolves each span's session within one request (the ancestor chain, the trace id)."""

    def __init__(self, spans: Sequence[SpanFacts]) -> None:
        self._by_id = {(s.trace_id, s.span_id): s for s in spans}
        self._memo: dict[tuple[str, str], tuple[str, ConversationSource]] = {}

    def parent_is_tool(self, facts: SpanFacts) -> bool:
        """Whether the span's parent, in this request, is an execute_tool/retrieval span."""
        parent = self._by_id.get((facts.trace_id, facts.parent_span_id))
        return parent is not None and classify(parent) is StepClass.TOOL

    def parent_session(
        self, facts: SpanFacts, session_id: str
    ) -> tuple[str, ConversationSource] | None:
        """The session of the span's parent, when it is in this request and another session
        (an agent called by another agent's conversation), and where its id came from."""
        parent = self._by_id.get((facts.trace_id, facts.parent_span_id))
        if parent is None:
            return None
        parent_session, source = self.of(parent)
        return (parent_session, source) if parent_session != session_id else None

    def span(self, trace_id: str, span_id: str) -> SpanFacts | None:
        return self._by_id.get((trace_id, span_id))

    def turn_root(self, facts: SpanFacts, session_id: str, *, itself: bool = False) -> bool | str:
        """Whether an agent span is its turn's root: no agent span of ``session_id`` above it
        (``itself``: nor the span itself) up to the trace root or a remote parent. A span id:
        not known yet, that ancestor is missing from this request (it ends later, so it comes
        in a later one)."""
        current: SpanFacts | None = facts
        if itself and classify(facts) is StepClass.AGENT and self.of(facts)[0] == session_id:
            return False
        for _ in range(256):
            assert current is not None
            if not current.parent_span_id or current.parent_remote:
                return True
            parent = self._by_id.get((current.trace_id, current.parent_span_id))
            if parent is None:
                return current.parent_span_id
            if classify(parent) is StepClass.AGENT and self.of(parent)[0] == session_id:
                return False
            current = parent
        return False

    def of(self, facts: SpanFacts) -> tuple[str, ConversationSource]:
        key = (facts.trace_id, facts.span_id)
        found = self._memo.get(key)
        if found is not None:
            return found
        chain: list[tuple[str, str]] = []
        current: SpanFacts | None = facts
        resolved: tuple[str, ConversationSource] | None = None
        while current is not None and len(chain) < 256:
            current_key = (current.trace_id, current.span_id)
            if current_key in self._memo:
                resolved = self._memo[current_key]
                break
            named = conversation_of(current.attributes)
            if named is not None:
                self._memo[current_key] = named
                resolved = named
                break
            chain.append(current_key)
            parent = (current.trace_id, current.parent_span_id)
            current = self._by_id.get(parent) if current.parent_span_id else None
        if resolved is None:
            resolved = (facts.trace_id, ConversationSource.TRACE_ID)
        # the spans below the one that named it inherit its conversation
        inherited = (
            resolved
            if resolved[1] is ConversationSource.TRACE_ID
            else (resolved[0], ConversationSource.PARENT)
        )
        for chain_key in chain:
            self._memo[chain_key] = inherited
        return self._memo.get(key, resolved)


def _base(
    session_id: str, ident: Identity, kind: str, eid: str, start_us: int, duration_us: int
) -> dict[str, Any]:
    return {
        "event_id": eid,
        "session_id": session_id,
        "tenant_id": ident.tenant_id,
        "agent_id": ident.agent_id,
        "agent_version": ident.agent_version,
        "kind": kind,
        "start_time_us": start_us,
        "duration_us": max(0, duration_us),
        "status": "OK",
        "category": None,
        "prompt_version": None,
        "model_version": None,
        "tool_schema_version": None,
        "content": [],
        "attributes": {},
    }


def _span_events(
    facts: SpanFacts,
    step: StepClass,
    session_id: str,
    source: ConversationSource,
    ident: Identity,
    item: str,
    parent_session: tuple[str, ConversationSource] | None = None,
    ends_turn: bool = False,
) -> list[Draft]:
    trace, span = facts.trace_id, facts.span_id
    duration_us = (facts.end_ns - facts.start_ns) // 1000
    drafts: list[Draft] = []
    named = source is not ConversationSource.TRACE_ID
    turn = Turn(session_id, trace) if named else None
    caller = None
    if parent_session is not None and parent_session[1] is not ConversationSource.TRACE_ID:
        caller = Turn(parent_session[0], trace)

    def add(role: str, event: dict[str, Any]) -> None:
        drafts.append(
            Draft(
                session_id,
                event["event_id"],
                event,
                item,
                turn,
                caller if role == "start" else None,
            )
        )

    attrs = facts.attributes
    if step is StepClass.AGENT:
        eid = event_id(trace, span, "start")
        start = _base(session_id, ident, "SESSION_START", eid, facts.start_us, 0)
        start.update(session_fields(attrs, agent_span=True))
        start["operation"] = operation(attrs)
        if parent_session is not None:
            start["attributes"] = {PARENT_SESSION_ATTR: parent_session[0]}
        add("start", start)
    elif step is StepClass.LLM:
        fields = llm_call_fields(facts)
        eid = event_id(trace, span, "step")
        event = _base(session_id, ident, "LLM_CALL", eid, facts.start_us, duration_us)
        event.update(
            status=fields["status"],
            error_type=fields["error_type"],
            operation=fields["operation"],
            model=fields["model"],
            provider=fields["provider"],
            input_tokens=fields["input_tokens"],
            output_tokens=fields["output_tokens"],
            cache_read_input_tokens=fields["cache_read_input_tokens"],
            cache_write_input_tokens=fields["cache_write_input_tokens"],
            reasoning_output_tokens=fields["reasoning_output_tokens"],
            cost_micros=None,
            content=_segments(fields["content"]),
        )
        add("step", event)
    elif step in (StepClass.TOOL, StepClass.MCP_TOOL):
        fields = tool_call_fields(facts)
        eid = event_id(trace, span, "step")
        event = _base(session_id, ident, "TOOL_CALL", eid, facts.start_us, duration_us)
        content = []
        if fields["args"] is not None:
            content.append({"role": "TOOL_ARGUMENTS", "text": _as_text(fields["args"])})
        if fields["result"] is not None:
            content.append({"role": "TOOL_RESULT", "text": _as_text(fields["result"])})
        event.update(
            status=fields["status"],
            error_type=fields["error_type"],
            operation=operation(attrs) or "execute_tool",
            tool_name=fields["name"],
            tool_call_id=fields["call_id"],
            content=content,
        )
        if is_mcp_tool_call(attrs):
            event["attributes"] = {
                "mcp.method.name": "tools/call",
                "mcp.server": mcp_server(attrs),
                **(
                    {"mcp.session.id": str(attrs["mcp.session.id"])}
                    if attrs.get("mcp.session.id")
                    else {}
                ),
            }
        add("step", event)
    for index, evaluation in enumerate(evaluations(facts)):
        eid = event_id(trace, span, f"evaluation/{index}")
        event = _base(session_id, ident, "EVALUATION", eid, evaluation["start_us"], 0)
        event.update(evaluation_name=evaluation["name"], evaluation_score=evaluation["score"])
        add(f"evaluation/{index}", event)
    if step is StepClass.AGENT:
        status, kind = session_outcome(facts, killed=False)
        if (not named and not facts.parent_span_id) or (named and ends_turn):
            eid = event_id(trace, span, "end")
            end = _base(session_id, ident, "SESSION_END", eid, facts.end_us, duration_us)
            end.update(status=status, error_type=kind)
            add("end", end)
        elif kind is not None:
            eid = event_id(trace, span, "error")
            error = _base(session_id, ident, "ERROR", eid, facts.end_us, 0)
            error.update(status="ERROR", error_type=kind, attributes={"span": facts.name[:200]})
            add("error", error)
    return drafts


def map_spans(spans: Sequence[OtlpSpan], default_tenant: str | None) -> Mapped:
    """Every span of one request → drafts, refusals and counts."""
    out = Mapped()
    conversations = _Conversations([span.facts for span in spans])
    for span in spans:
        facts, resource = span.facts, span.resource
        step = classify(facts)
        item = f"span {facts.span_id or '?'} ({facts.name[:80] or 'unnamed'})"
        scored = bool(evaluations(facts))
        if step is StepClass.NOT_GENAI and not scored:
            out.ignored["not_genai"] += 1
            continue
        if step is StepClass.UNKNOWN_OPERATION:
            op = operation(facts.attributes)
            out.refused.append(
                Refusal(item, "unknown_operation", f"unknown gen_ai.operation.name {op!r}")
            )
            continue
        if step is StepClass.IGNORED and not scored:
            reason = operation(facts.attributes) or "ignored"
            if is_mcp_tool_call(facts.attributes):
                reason = "mcp_server_span"
            out.ignored[reason] += 1
            continue
        if step is StepClass.MCP_TOOL and not scored and conversations.parent_is_tool(facts):
            # an agent framework's execute_tool span around its MCP client call: one call
            out.ignored["mcp_inside_execute_tool"] += 1
            continue
        bad_ids = _valid_ids(facts)
        if bad_ids is not None:
            out.refused.append(Refusal(item, "invalid_id", bad_ids))
            continue
        ident = identity_of(resource, facts.attributes, default_tenant)
        if ident is None:
            out.refused.append(
                Refusal(
                    item,
                    "no_tenant",
                    NO_TENANT,
                )
            )
            continue
        if facts.start_ns <= 0:
            out.refused.append(Refusal(item, "no_time", "the span has no start time"))
            continue
        session_id, source = conversations.of(facts)
        if source is not ConversationSource.CONVERSATION_ID:
            out.fallbacks[source] += 1
        unscored = unscored_evaluations(facts)
        if unscored:
            out.ignored["evaluation_without_score"] += unscored
        parent = None
        root_known: bool | str = False
        if step is StepClass.AGENT:
            parent = conversations.parent_session(facts, session_id)
            if source is not ConversationSource.TRACE_ID:
                root_known = conversations.turn_root(facts, session_id)
        drafts = _span_events(
            facts, step, session_id, source, ident, item, parent, root_known is not False
        )
        if isinstance(root_known, str):  # the end waits for the missing ancestor
            end = next(d for d in drafts if d.event["kind"] == "SESSION_END")
            drafts.remove(end)
            out.pending.append(PendingEnd(facts.trace_id, root_known, end))
            out.open_turns += 1
        out.drafts.extend(drafts)
        out.accepted += 1
    out.spans = spans
    return out


def _log_event_id(log: OtlpLog) -> str:
    digest = hashlib.sha256(
        json.dumps(
            [log.time_ns, log.trace_id, log.span_id, log.event_name, log.attributes, log.body],
            default=str,
            sort_keys=True,
        ).encode()
    ).hexdigest()[:32]
    return event_id("log", digest)


def map_logs(logs: Sequence[OtlpLog], default_tenant: str | None) -> Mapped:
    """``gen_ai.evaluation.result`` log records → EVALUATION drafts; other records ignored."""
    out = Mapped()
    for log in logs:
        item = f"log record {log.index}"
        if log.event_name != EVALUATION_EVENT:
            out.ignored["not_genai"] += 1
            continue
        # the semconv event carries its result in attributes; some senders use a map body
        attrs = dict(log.body) if isinstance(log.body, dict) else {}
        attrs.update(log.attributes)
        fields = evaluation_fields(attrs, log.time_ns)
        if fields is None:
            out.refused.append(
                Refusal(
                    item,
                    "evaluation_without_score",
                    "a gen_ai.evaluation.result needs gen_ai.evaluation.name and a numeric "
                    "gen_ai.evaluation.score.value",
                )
            )
            continue
        if log.time_ns <= 0:
            out.refused.append(Refusal(item, "no_time", "the log record has no time"))
            continue
        ident = identity_of(log.resource, attrs, default_tenant)
        if ident is None:
            out.refused.append(
                Refusal(
                    item, "no_tenant", f"no tenant: set the resource attribute {TENANT_ATTRIBUTE}"
                )
            )
            continue
        named = conversation_of(attrs)
        traced = bool(log.trace_id) and log.trace_id != _ZERO_TRACE
        turn = None
        if named is not None:
            session_id, source = named
            turn = Turn(session_id, log.trace_id if traced else "", _log_event_id(log))
        elif traced:
            session_id, source = log.trace_id, ConversationSource.TRACE_ID
        else:
            out.refused.append(
                Refusal(
                    item,
                    "no_conversation",
                    "no gen_ai.conversation.id, session.id or mcp.session.id, and no trace id",
                )
            )
            continue
        if source is not ConversationSource.CONVERSATION_ID:
            out.fallbacks[source] += 1
        eid = turn.record if turn is not None else _log_event_id(log)
        event = _base(session_id, ident, "EVALUATION", eid, fields["start_us"], 0)
        event.update(evaluation_name=fields["name"], evaluation_score=fields["score"])
        out.drafts.append(Draft(session_id, eid, event, item, turn))
        out.accepted += 1
    return out


def turns_of(drafts: Sequence[Draft]) -> list[Turn]:
    """The turns the ledger must number for ``drafts`` (their own and their callers'), each
    once, in the order they began (so the turns of one request are numbered in time order)."""
    began: dict[Turn, int] = {}
    for draft in drafts:
        for turn in (draft.turn, draft.caller):
            if turn is not None:
                start = draft.event["start_time_us"]
                began[turn] = min(began.get(turn, start), start)
    return sorted(began, key=lambda t: (began[t], t.conversation, t.trace_id))


def ending_turns(drafts: Sequence[Draft]) -> set[Turn]:
    """The turns that ``drafts`` end (a SESSION_END): the ledger records them, so that a log
    record coming after its turn's end goes to the next turn (the worker takes none after)."""
    return {d.turn for d in drafts if d.turn is not None and d.event["kind"] == "SESSION_END"}


def apply_turns(drafts: Sequence[Draft], numbers: Mapping[Turn, int]) -> list[Draft]:
    """``drafts`` in the sessions of their turns (``numbers``: each turn's number, from the
    ledger): the session id of :func:`turn_session_id`, and on a SESSION_START the parent of
    :func:`turn_parent`. Drafts without a turn are returned as they are."""
    out: list[Draft] = []
    for draft in drafts:
        if draft.turn is None:
            out.append(draft)
            continue
        number = numbers[draft.turn]
        session_id = turn_session_id(draft.turn.conversation, number)
        event = {**draft.event, "session_id": session_id}
        if event["kind"] == "SESSION_START":
            caller = event["attributes"].get(PARENT_SESSION_ATTR)
            if draft.caller is not None:
                caller = turn_session_id(draft.caller.conversation, numbers[draft.caller])
            parent = turn_parent(draft.turn.conversation, number, caller)
            attributes = {k: v for k, v in event["attributes"].items() if k != PARENT_SESSION_ATTR}
            if parent is not None:
                attributes[PARENT_SESSION_ATTR] = parent
            event["attributes"] = attributes
        out.append(dataclasses.replace(draft, session_id=session_id, event=event))
    return out
