"""OpenTelemetry adapter: GenAI spans become StepEvents, emitted by a :class:`Governor`.

A fleet already instrumented with the OpenTelemetry GenAI semantic conventions adopts Governor
by adding one span processor::

    gov = Governor(tenant="acme", agent="support-bot", agent_version="1.4.0")
    processor = GovernorSpanProcessor(gov)
    tracer_provider.add_span_processor(processor)

Every event goes through the native client's :class:`Session` (``start``, ``llm_call``,
``tool_call``, ``evaluation``, ``finish``), so seq, event ids, buffering and decisions are exactly
those of the native client. Needs the ``fleet-governor[otel]`` extra (``opentelemetry-sdk``).

Mapping (span → StepEvent; the pure functions are :mod:`streams.ingest.mapping`, shared with
the OTLP receiver ``governor ingest``):

- ``gen_ai.conversation.id``, else ``session.id``, else ``mcp.session.id``, else the parent
  span's conversation, else the trace id → ``session_id`` (each fallback counted in
  :attr:`GovernorSpanProcessor.fallbacks`; a span is never dropped for want of one)
- ``invoke_agent`` / ``invoke_workflow`` span start / end → SESSION_START / SESSION_END (OK;
  ERROR with ``error_type``; KILLED when the agent was killed)
- ``chat``, ``text_completion``, ``generate_content``, ``embeddings`` spans → LLM_CALL
  (``operation`` = the span's)
- ``execute_tool``, ``retrieval`` and MCP client ``tools/call`` spans → TOOL_CALL
- span events ``gen_ai.evaluation.result`` → EVALUATION at the event's timestamp
  (``gen_ai.evaluation.name``, ``gen_ai.evaluation.score.value``)
- span start time, end minus start → ``start_time_us``, ``duration_us``
- status ERROR or ``error.type`` → ``status`` ERROR with ``error_type`` = ``error.type``, else
  the recorded exception's class name, else ``_OTHER`` (the semconv fallback)
- ``gen_ai.request.model`` (else ``gen_ai.response.model``, else ``unknown``) → ``model``
- ``gen_ai.provider.name`` (else the legacy ``gen_ai.system``) → ``provider``
- ``gen_ai.usage.input_tokens`` / ``output_tokens`` (legacy ``prompt_tokens`` /
  ``completion_tokens``) → ``input_tokens`` / ``output_tokens``
- ``gen_ai.usage.cache_read.input_tokens`` (or ``gen_ai.usage.cache_read_input_tokens``) →
  ``cache_read_input_tokens``; ``gen_ai.usage.reasoning.output_tokens`` likewise
- ``gen_ai.system_instructions``, ``gen_ai.input.messages``, ``gen_ai.output.messages`` (JSON)
  → content segments by message role (SYSTEM, USER, ASSISTANT, TOOL_RESULT), TOOL_ARGUMENTS
  for ``tool_call`` parts
- ``gen_ai.tool.name``, ``gen_ai.tool.call.id`` → ``tool_name``, ``tool_call_id``;
  ``gen_ai.tool.call.arguments`` / ``.result`` → TOOL_ARGUMENTS / TOOL_RESULT segments

Session attributes, read from the span that opens the session (normally ``invoke_agent``):
``governor.category``, ``governor.prompt_version``, ``governor.model_version`` (on an
``invoke_agent`` span it falls back to ``gen_ai.request.model``: the model behind the agent is
what its version tuple is about; a single chat span's model is not, an agent may use several),
``governor.tool_schema_version``. Tenant, agent and agent version are the Governor's own, not
``gen_ai.agent.*``: decisions are addressed to the Governor's identity.

A span of a conversation whose ``invoke_agent`` span was never seen opens the session lazily
(at that span's start); nothing ends such a session, so the worker closes it as TIMEOUT. A
conversation that comes back after its session ended (the next turn of a chat) is a new session,
``<conversation>#<turn>`` (``#2``, ``#3``, ...), whose parent is the conversation's first session:
the worker takes no events for a session after its end, and ``ask tree <conversation>`` (or a
``session_tree`` budget) covers every turn.

Obeying: with the client's checks (``Governor(checks=True)``, the default) the processor
checks each LLM and tool span of a known conversation **when it starts**: the decision in force
(KILL raises :class:`SessionKilled`, THROTTLE waits, PAUSE blocks) and the policies the client
evaluates (a denied tool, a loop, PII the rules block, the session budget on the request's
``gen_ai.request.max_tokens``: :class:`StepBlocked`, recorded BLOCKED). The OTel SDK lets an
exception from ``on_start`` reach the code that starts the span, so ``with
tracer.start_as_current_span("execute_tool ...")`` raises before its body: the tool never runs.
A span whose conversation is only known at its end (no agent span, no conversation attribute
at start) cannot be checked before; agent code can call :meth:`GovernorSpanProcessor.check` /
:meth:`check_tool` with its conversation id itself. Without checks, spans are only reported
after the fact. Problems (spans without a model, internal errors) are counted in
:attr:`GovernorSpanProcessor.problems` and logged, never raised.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Mapping
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanKind as OtelSpanKind
from opentelemetry.trace import StatusCode

from streams.client.errors import GovernorError
from streams.client.governor import Governor, Session
from streams.ingest.mapping import (
    AGENT_OPERATIONS,
    EVALUATION_EVENT,
    EXECUTE_TOOL,
    INVOKE_AGENT,
    LLM_OPERATIONS,
    OTHER_ERROR,
    ROLES,
    UNKNOWN_MODEL,
    ConversationSource,
    SpanEvent,
    SpanFacts,
    SpanKind,
    StepClass,
    classify,
    conversation_id,
    conversation_of,
    error_type,
    evaluations,
    int_attr,
    llm_call_fields,
    message_segments,
    operation,
    session_fields,
    session_outcome,
    step_outcome,
    text_attr,
    tool_call_fields,
    turn_parent,
    turn_session_id,
)

#: the pure mapping lives in streams.ingest.mapping (shared with ``governor ingest``); these
#: names stay importable from here
__all__ = [
    "AGENT_OPERATIONS",
    "EVALUATION_EVENT",
    "EXECUTE_TOOL",
    "INVOKE_AGENT",
    "LLM_OPERATIONS",
    "OTHER_ERROR",
    "ROLES",
    "UNKNOWN_MODEL",
    "GovernorSpanProcessor",
    "SpanEvent",
    "SpanFacts",
    "conversation_id",
    "error_type",
    "evaluations",
    "facts_of",
    "llm_call_fields",
    "message_segments",
    "operation",
    "session_fields",
    "session_outcome",
    "step_outcome",
    "tool_call_fields",
]

log = logging.getLogger("governor.client.otel")

_KINDS = {
    OtelSpanKind.INTERNAL: SpanKind.INTERNAL,
    OtelSpanKind.SERVER: SpanKind.SERVER,
    OtelSpanKind.CLIENT: SpanKind.CLIENT,
    OtelSpanKind.PRODUCER: SpanKind.PRODUCER,
    OtelSpanKind.CONSUMER: SpanKind.CONSUMER,
}
#: what the processor turns into steps (the rest is ignored, as before)
_STEP_CLASSES = frozenset({StepClass.AGENT, StepClass.LLM, StepClass.TOOL, StepClass.MCP_TOOL})


def facts_of(span: ReadableSpan) -> SpanFacts:
    start = span.start_time or 0
    context = span.context
    return SpanFacts(
        attributes=dict(span.attributes or {}),
        start_ns=start,
        end_ns=span.end_time or start,
        error=span.status.status_code is StatusCode.ERROR,
        events=tuple(SpanEvent(e.name, e.timestamp, dict(e.attributes or {})) for e in span.events),
        trace_id=f"{context.trace_id:032x}" if context else "",
        span_id=f"{context.span_id:016x}" if context else "",
        parent_span_id=f"{span.parent.span_id:016x}" if span.parent else "",
        kind=_KINDS.get(span.kind, SpanKind.INTERNAL),
        name=span.name,
    )


# --- the processor ---------------------------------------------------------------------------


class GovernorSpanProcessor(SpanProcessor):
    """Turns GenAI spans into StepEvents through ``gov``'s sessions (see the module doc).

    Thread-safe: spans may start and end on any thread. ``shutdown`` leaves ``gov`` open (it is
    the caller's); ``force_flush`` waits for the Governor's buffered events.
    """

    def __init__(
        self,
        gov: Governor,
        *,
        max_open_spans: int = 100_000,
        remembered_conversations: int = 10_000,
    ) -> None:
        self.gov = gov
        self.problems: Counter[str] = Counter()
        #: steps the client's checks refused at their span's start (they never ran)
        self.refused = 0
        #: spans whose conversation came from a fallback (session.id, mcp.session.id, the
        #: trace id), by source
        self.fallbacks: Counter[str] = Counter()
        self._max_open_spans = max_open_spans
        self._remembered = remembered_conversations
        # one lock for everything: Session is not thread-safe (seq) and the work under it is
        # a non-blocking emit, except opening a session, which reads its decisions from Redis
        self._lock = threading.RLock()
        self._sessions: dict[str, Session] = {}
        #: the invoke_agent span that opened each session (None: opened lazily); only its end
        #: ends the session, not the end of a sub-agent sharing the conversation
        self._owner: dict[str, int | None] = {}
        #: conversation of each open span, so child spans without the attribute inherit it
        self._span_conversation: dict[int, str] = {}
        #: turns finished by recently seen conversations (a returning one opens the next), and
        #: the turn each open conversation is in
        self._turns: OrderedDict[str, int] = OrderedDict()
        self._turn: dict[str, int] = {}

    # --- SpanProcessor -----------------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            conversation = self._on_start(span)
        except Exception as exc:  # never into the SDK: the agent must not fail because of us
            self._problem("internal_error", "span start", exc)
            return
        if conversation is not None and self.gov.checks:
            self._check_before(span, conversation)

    def _check_before(self, span: Span, conversation: str) -> None:
        """The client's checks before an LLM or tool span's step runs (``Governor(checks=
        True)``): the decision in force, then the policies. A refusal raises out of the span's
        start, into the agent's code that starts the span (``start_as_current_span`` raises
        before its body, so the tool or model never runs), and is recorded BLOCKED."""
        facts = facts_of(span)
        step = classify(facts)
        if step not in (StepClass.LLM, StepClass.TOOL, StepClass.MCP_TOOL):
            return
        attrs = facts.attributes
        try:
            session = self._obeying(conversation)
            session.check()
            if step is StepClass.LLM:
                content = [
                    *message_segments(attrs.get("gen_ai.system_instructions"), "SYSTEM"),
                    *message_segments(attrs.get("gen_ai.input.messages"), "USER"),
                ]
                delay = session.guard_llm(
                    model=text_attr(attrs, "gen_ai.request.model") or UNKNOWN_MODEL,
                    provider=text_attr(attrs, "gen_ai.provider.name", "gen_ai.system"),
                    content=content or None,
                    max_output_tokens=int_attr(attrs, "gen_ai.request.max_tokens"),
                    start_us=facts.start_us,
                )
                if delay:
                    time.sleep(delay)
            else:
                fields = tool_call_fields(facts)
                session.guard_tool(
                    name=fields["name"], args=fields["args"], start_us=facts.start_us
                )
        except GovernorError:
            # the span never ends: forget it, and let the refusal stop the step
            with self._lock:
                self._span_conversation.pop(span.context.span_id, None)
            self.refused += 1
            raise
        except Exception as exc:
            self._problem("internal_error", "checks before a step", exc)

    def on_end(self, span: ReadableSpan) -> None:
        try:
            self._on_end(span)
        except Exception as exc:
            self._problem("internal_error", "span end", exc)

    def shutdown(self) -> None:
        """Nothing to release: the Governor belongs to the caller (``gov.close()``)."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        try:
            return self.gov.emitter.flush(timeout_millis / 1000) == 0
        except Exception as exc:
            self._problem("internal_error", "flush", exc)
            return False

    # --- obeying -----------------------------------------------------------------------------

    def session(self, conversation_id: str) -> Session | None:
        """The open session of ``conversation_id``, if a span opened one."""
        with self._lock:
            return self._sessions.get(conversation_id)

    def check(self, conversation_id: str) -> None:
        """Apply the decision in force for ``conversation_id`` before a step, as
        ``Session.check`` does: raises :class:`SessionKilled`, waits on THROTTLE and PAUSE."""
        self._obeying(conversation_id).check()

    async def check_async(self, conversation_id: str) -> None:
        """:meth:`check` for async agents."""
        await self._obeying(conversation_id).check_async()

    def check_tool(self, conversation_id: str, name: str, args: Any = None) -> None:
        """:meth:`check`, then (with ``Governor(checks=True)``) the client's checks of the tool
        call before ``execute_tool`` runs: a denied tool, a loop or PII the rules block raises
        :class:`StepBlocked` and is recorded BLOCKED (issue 13)."""
        session = self._obeying(conversation_id)
        session.check()
        session.guard_tool(name=name, args=args)

    def _obeying(self, conversation_id: str) -> Session:
        open_session = self.session(conversation_id)
        # before its first span a conversation has no session yet; an unstarted one reads the
        # decisions for it all the same and emits nothing
        return open_session or self.gov.session(conversation_id)

    # --- mapping spans -----------------------------------------------------------------------

    def _conversation(self, attrs: Mapping[str, Any], parent: str | None, trace: int) -> str:
        """The span's conversation: its attributes (gen_ai.conversation.id, session.id,
        mcp.session.id), else its parent span's, else its trace id; each fallback counted in
        :attr:`fallbacks` (never dropped)."""
        named = conversation_of(attrs)
        if named is not None:
            value, source = named
        elif parent is not None:
            return parent
        else:
            value, source = f"{trace:032x}", ConversationSource.TRACE_ID
        if source is not ConversationSource.CONVERSATION_ID:
            self.fallbacks[source] += 1
        return value

    def _on_start(self, span: Span) -> str | None:
        """Place the span in its conversation (open the session of an agent span); returns
        the conversation, None while it is not known yet."""
        attrs = span.attributes or {}
        agent = operation(attrs) in AGENT_OPERATIONS
        with self._lock:
            parent = (
                self._span_conversation.get(span.parent.span_id)
                if span.parent is not None
                else None
            )
            if conversation_of(attrs) is None and parent is None and not agent:
                return None  # not yet known: a GenAI span is placed when it ends
            conversation = self._conversation(attrs, parent, span.context.trace_id)
            if len(self._span_conversation) < self._max_open_spans:
                self._span_conversation[span.context.span_id] = conversation
            else:
                # spans that never end would otherwise grow this forever
                self._problem("too_many_open_spans", "not tracking a span's conversation")
            if agent and conversation not in self._sessions:
                self._open(
                    conversation,
                    session_fields(attrs, agent_span=True),
                    (span.start_time or 0) // 1000,
                    owner=span.context.span_id,
                    parent=parent,
                )
            return conversation

    def _on_end(self, span: ReadableSpan) -> None:
        facts = facts_of(span)
        step = classify(facts)
        op = operation(facts.attributes)
        with self._lock:
            span_id = span.context.span_id if span.context else None
            inherited = self._span_conversation.pop(span_id, None) if span_id else None
            evaluated = evaluations(facts)
            if step not in _STEP_CLASSES and not evaluated:
                return
            agent = step is StepClass.AGENT
            # placed at its start (counted there), unless it named its own conversation since
            own = conversation_id(facts.attributes)
            if inherited is not None and own in (None, inherited):
                conversation = inherited
            else:
                trace = span.context.trace_id if span.context else 0
                conversation = self._conversation(facts.attributes, None, trace)
            session = self._sessions.get(conversation) or self._open(
                conversation,
                session_fields(facts.attributes, agent_span=agent),
                facts.start_us,
                owner=span_id if agent else None,
            )
            if step is StepClass.LLM:
                fields = llm_call_fields(facts)
                if fields["model"] == UNKNOWN_MODEL:
                    self._problem("no_model", f"a {op} span has no gen_ai.request.model")
                session.llm_call(obey=False, **fields)
            elif step in (StepClass.TOOL, StepClass.MCP_TOOL):
                session.tool_call(obey=False, **tool_call_fields(facts))
            for evaluation in evaluated:
                session.evaluation(**evaluation)
            if agent and self._owner.get(conversation) in (None, span_id):
                status, kind = session_outcome(facts, killed=session.killed_by is not None)
                session.finish(end_us=facts.end_us, status=status, error_type=kind)
                self._close(conversation, session)

    def _open(
        self,
        conversation: str,
        fields: dict[str, str | None],
        start_us: int,
        owner: int | None,
        parent: str | None = None,
    ) -> Session:
        """Open ``conversation``'s session; ``parent``: the conversation of the span that
        started it, when another (an agent calling a sub-agent: cost rolls up over it)."""
        turn = self._turns.pop(conversation, 0) + 1
        # the next turn is a session of its own under the conversation's first; an agent
        # called by another conversation's agent has that agent's turn as its parent
        caller = None
        if parent is not None and parent != conversation:
            caller = turn_session_id(parent, self._turn.get(parent, 1))
        session = self.gov.session(
            turn_session_id(conversation, turn),
            category=fields.get("category"),
            prompt_version=fields.get("prompt_version"),
            model_version=fields.get("model_version"),
            tool_schema_version=fields.get("tool_schema_version"),
            parent=turn_parent(conversation, turn, caller),
        )
        session.start(start_us=start_us)
        self._sessions[conversation] = session
        self._owner[conversation] = owner
        self._turn[conversation] = turn
        return session

    def _close(self, conversation: str, session: Session) -> None:
        del self._sessions[conversation]
        del self._owner[conversation]
        self._turns[conversation] = self._turn.pop(conversation, 1)
        while len(self._turns) > self._remembered:
            self._turns.popitem(last=False)

    def _problem(self, kind: str, what: str, exc: BaseException | None = None) -> None:
        self.problems[kind] += 1
        # the first of each kind is a warning, the rest debug: a busy fleet must not flood logs
        level = logging.WARNING if self.problems[kind] == 1 else logging.DEBUG
        log.log(
            level,
            "governor otel adapter: %s (%s, %d so far)%s",
            what,
            kind,
            self.problems[kind],
            f": {exc!r}" if exc else "",
            exc_info=exc is not None and level == logging.WARNING,
        )
