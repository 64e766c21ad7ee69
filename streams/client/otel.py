"""OpenTelemetry adapter: GenAI spans become StepEvents, emitted by a :class:`Governor`.

A fleet already instrumented with the OpenTelemetry GenAI semantic conventions adopts Governor
by adding one span processor::

    gov = Governor(tenant="acme", agent="support-bot", agent_version="1.4.0")
    processor = GovernorSpanProcessor(gov)
    tracer_provider.add_span_processor(processor)

Every event goes through the native client's :class:`Session` (``start``, ``llm_call``,
``tool_call``, ``evaluation``, ``finish``), so seq, event ids, buffering and decisions are exactly
those of the native client. Needs the ``governor[otel]`` extra (``opentelemetry-sdk``).

Mapping (span → StepEvent):

- ``gen_ai.conversation.id`` (else the parent span's) → ``session_id``
- ``invoke_agent`` span start / end → SESSION_START / SESSION_END (OK; ERROR with ``error_type``;
  KILLED when the agent was killed)
- ``chat``, ``text_completion``, ``generate_content`` spans → LLM_CALL (``operation`` = the span's)
- ``execute_tool`` spans → TOOL_CALL
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
conversation that comes back after its session ended (the next turn of a chat) gets a new
session with the same id whose seq continues, so the worker does not drop it as duplicates.

Obeying: spans are reported after the fact and a span processor must never raise into the
SDK, so **pure OTel emission cannot stop an agent by itself**: steps are recorded even while a
KILL is in force. Agent code that wants to obey calls :meth:`GovernorSpanProcessor.check`
(or ``await check_async``) with its conversation id before each step: it raises
:class:`SessionKilled`, waits on THROTTLE, blocks on PAUSE, exactly as the native client does.
Problems (spans without a conversation, internal errors) are counted in
:attr:`GovernorSpanProcessor.problems` and logged, never raised.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import StatusCode

from streams.client.errors import SessionKilled
from streams.client.governor import Governor, Session

log = logging.getLogger("governor.client.otel")

INVOKE_AGENT = "invoke_agent"
EXECUTE_TOOL = "execute_tool"
LLM_OPERATIONS = frozenset({"chat", "text_completion", "generate_content"})
EVALUATION_EVENT = "gen_ai.evaluation.result"
#: semconv: ``error.type`` is ``_OTHER`` when no better value is known
OTHER_ERROR = "_OTHER"
UNKNOWN_MODEL = "unknown"

#: message role (semconv ``gen_ai.*.messages``) → SegmentRole
ROLES = {
    "system": "SYSTEM",
    "developer": "SYSTEM",
    "user": "USER",
    "assistant": "ASSISTANT",
    "tool": "TOOL_RESULT",
}


@dataclass(frozen=True)
class SpanEvent:
    name: str
    timestamp_ns: int
    attributes: Mapping[str, Any]


@dataclass(frozen=True)
class SpanFacts:
    """What the mapping needs of a finished span (pure data, so the mapping is testable)."""

    attributes: Mapping[str, Any]
    start_ns: int
    end_ns: int
    error: bool = False
    events: tuple[SpanEvent, ...] = ()

    @property
    def start_us(self) -> int:
        return self.start_ns // 1000

    @property
    def end_us(self) -> int:
        return self.end_ns // 1000

    @property
    def duration_ms(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1_000_000


def facts_of(span: ReadableSpan) -> SpanFacts:
    start = span.start_time or 0
    return SpanFacts(
        attributes=dict(span.attributes or {}),
        start_ns=start,
        end_ns=span.end_time or start,
        error=span.status.status_code is StatusCode.ERROR,
        events=tuple(SpanEvent(e.name, e.timestamp, dict(e.attributes or {})) for e in span.events),
    )


# --- pure attribute mapping ------------------------------------------------------------------


def _str(attrs: Mapping[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = attrs.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _int(attrs: Mapping[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = attrs.get(key)
        # bool is an int to Python, never a token count
        if isinstance(value, int | float) and not isinstance(value, bool):
            return int(value)
    return None


def _float(attrs: Mapping[str, Any], *keys: str) -> float | None:
    for key in keys:
        value = attrs.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def conversation_id(attrs: Mapping[str, Any]) -> str | None:
    return _str(attrs, "gen_ai.conversation.id")


def operation(attrs: Mapping[str, Any]) -> str | None:
    return _str(attrs, "gen_ai.operation.name")


def session_fields(attrs: Mapping[str, Any], *, agent_span: bool) -> dict[str, str | None]:
    """Keyword arguments of ``Governor.session`` from the span that opens the session."""
    model_version = _str(attrs, "governor.model_version")
    if model_version is None and agent_span:
        model_version = _str(attrs, "gen_ai.request.model")
    return {
        "category": _str(attrs, "governor.category"),
        "prompt_version": _str(attrs, "governor.prompt_version"),
        "model_version": model_version,
        "tool_schema_version": _str(attrs, "governor.tool_schema_version"),
    }


def error_type(facts: SpanFacts) -> str | None:
    """``error.type``, else the recorded exception's type, else ``_OTHER``; None if it went well."""
    declared = _str(facts.attributes, "error.type")
    if declared is not None:
        return declared
    if not facts.error:
        return None
    for event in reversed(facts.events):
        if event.name == "exception":
            recorded = _str(event.attributes, "exception.type")
            if recorded is not None:
                # the SDK records the qualified name; the native client reports the class name
                return recorded.rsplit(".", 1)[-1]
    return OTHER_ERROR


def step_outcome(facts: SpanFacts) -> tuple[str, str | None]:
    kind = error_type(facts)
    return ("OK", None) if kind is None else ("ERROR", kind)


def session_outcome(facts: SpanFacts, *, killed: bool) -> tuple[str, str | None]:
    """SESSION_END status of an ``invoke_agent`` span, as ``Session.finish`` would judge it."""
    status, kind = step_outcome(facts)
    if killed or kind == SessionKilled.__name__:
        return "KILLED", None
    return status, kind


def _part_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)


def _part_segments(part: Any, role: str) -> list[tuple[str, str]]:
    if isinstance(part, str):
        return [(role, part)] if part else []
    if not isinstance(part, Mapping):
        return []
    kind = part.get("type")
    if kind == "tool_call":
        arguments = part.get("arguments")
        return [] if arguments is None else [("TOOL_ARGUMENTS", _part_text(arguments))]
    if kind == "tool_call_response":
        response = part.get("response")
        return [] if response is None else [("TOOL_RESULT", _part_text(response))]
    # text and reasoning parts carry "content"; OpenAI-style blocks carry "text"; blobs and
    # uris carry no text to scan
    text = part.get("content", part.get("text"))
    return [(role, text)] if isinstance(text, str) and text else []


def _message_segments(message: Any, role: str) -> list[tuple[str, str]]:
    if not isinstance(message, Mapping) or ("role" not in message and "parts" not in message):
        # a bare part: gen_ai.system_instructions is a list of parts, not of messages
        return _part_segments(message, role)
    role = ROLES.get(str(message.get("role", "")).lower(), role)
    # semconv >= 1.37 has "parts"; older instrumentations send "content" (text or blocks)
    parts = message.get("parts", message.get("content"))
    if isinstance(parts, str | Mapping):
        parts = [parts]
    if not isinstance(parts, list):
        return []
    return [segment for part in parts for segment in _part_segments(part, role)]


def message_segments(raw: Any, default_role: str) -> list[tuple[str, str]]:
    """Content segments of a ``gen_ai.*.messages`` / ``gen_ai.system_instructions`` value.

    Lenient on purpose: text that cannot be parsed is kept whole under ``default_role``, because
    the segments exist to be scanned for PII and dropping them would hide what was sent.
    """
    if raw is None:
        return []
    value = raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except ValueError:
            return [(default_role, raw)] if raw else []
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [s for message in value for s in _message_segments(message, default_role)]
    return _message_segments(value, default_role)


def llm_call_fields(facts: SpanFacts) -> dict[str, Any]:
    """Keyword arguments of ``Session.llm_call`` for an LLM span (chat, text_completion, ...)."""
    attrs = facts.attributes
    status, kind = step_outcome(facts)
    content = [
        *message_segments(attrs.get("gen_ai.system_instructions"), "SYSTEM"),
        *message_segments(attrs.get("gen_ai.input.messages"), "USER"),
        *message_segments(attrs.get("gen_ai.output.messages"), "ASSISTANT"),
    ]
    # the native client counts unknown usage as 0 tokens; so does the adapter
    input_tokens = _int(attrs, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
    output_tokens = _int(attrs, "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")
    return {
        "model": _str(attrs, "gen_ai.request.model", "gen_ai.response.model") or UNKNOWN_MODEL,
        "provider": _str(attrs, "gen_ai.provider.name", "gen_ai.system"),
        "input_tokens": input_tokens or 0,
        "output_tokens": output_tokens or 0,
        "cache_read_input_tokens": _int(
            attrs, "gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens"
        ),
        "reasoning_output_tokens": _int(
            attrs, "gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning_output_tokens"
        ),
        "operation": operation(attrs) or "chat",
        "duration_ms": facts.duration_ms,
        "start_us": facts.start_us,
        "status": status,
        "error_type": kind,
        "content": content,
    }


def tool_call_fields(facts: SpanFacts) -> dict[str, Any]:
    """Keyword arguments of ``Session.tool_call`` for an ``execute_tool`` span."""
    attrs = facts.attributes
    status, kind = step_outcome(facts)
    return {
        "name": _str(attrs, "gen_ai.tool.name") or "unknown",
        "call_id": _str(attrs, "gen_ai.tool.call.id"),
        "args": attrs.get("gen_ai.tool.call.arguments"),
        "result": attrs.get("gen_ai.tool.call.result"),
        "duration_ms": facts.duration_ms,
        "start_us": facts.start_us,
        "status": status,
        "error_type": kind,
    }


def evaluations(facts: SpanFacts) -> list[dict[str, Any]]:
    """Keyword arguments of ``Session.evaluation``, one per ``gen_ai.evaluation.result`` event
    with a name and a numeric score (a label-only result has no score to record)."""
    found = []
    for event in facts.events:
        if event.name != EVALUATION_EVENT:
            continue
        name = _str(event.attributes, "gen_ai.evaluation.name")
        score = _float(event.attributes, "gen_ai.evaluation.score.value")
        if name is not None and score is not None:
            found.append({"name": name, "score": score, "start_us": event.timestamp_ns // 1000})
    return found


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
        #: last seq of recently finished conversations, so a returning one continues its seq
        self._last_seq: OrderedDict[str, int] = OrderedDict()

    # --- SpanProcessor -----------------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            self._on_start(span)
        except Exception as exc:  # never into the SDK: the agent must not fail because of us
            self._problem("internal_error", "span start", exc)

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

    def _obeying(self, conversation_id: str) -> Session:
        open_session = self.session(conversation_id)
        # before its first span a conversation has no session yet; an unstarted one reads the
        # decisions for it all the same and emits nothing
        return open_session or self.gov.session(conversation_id)

    # --- mapping spans -----------------------------------------------------------------------

    def _on_start(self, span: Span) -> None:
        attrs = span.attributes or {}
        conversation = conversation_id(attrs)
        with self._lock:
            if conversation is None and span.parent is not None:
                conversation = self._span_conversation.get(span.parent.span_id)
            if conversation is None:
                return
            if len(self._span_conversation) < self._max_open_spans:
                self._span_conversation[span.context.span_id] = conversation
            else:
                # spans that never end would otherwise grow this forever
                self._problem("too_many_open_spans", "not tracking a span's conversation")
            if operation(attrs) == INVOKE_AGENT and conversation not in self._sessions:
                self._open(
                    conversation,
                    session_fields(attrs, agent_span=True),
                    (span.start_time or 0) // 1000,
                    owner=span.context.span_id,
                )

    def _on_end(self, span: ReadableSpan) -> None:
        facts = facts_of(span)
        op = operation(facts.attributes)
        with self._lock:
            span_id = span.context.span_id if span.context else None
            inherited = self._span_conversation.pop(span_id, None) if span_id else None
            is_step = op in LLM_OPERATIONS or op in (EXECUTE_TOOL, INVOKE_AGENT)
            evaluated = evaluations(facts)
            if not is_step and not evaluated:
                return
            conversation = conversation_id(facts.attributes) or inherited
            if conversation is None:
                self._problem("no_conversation", f"a {op or 'span'} span has no conversation id")
                return
            session = self._sessions.get(conversation) or self._open(
                conversation,
                session_fields(facts.attributes, agent_span=op == INVOKE_AGENT),
                facts.start_us,
                owner=span_id if op == INVOKE_AGENT else None,
            )
            if op in LLM_OPERATIONS:
                fields = llm_call_fields(facts)
                if fields["model"] == UNKNOWN_MODEL:
                    self._problem("no_model", f"a {op} span has no gen_ai.request.model")
                session.llm_call(obey=False, **fields)
            elif op == EXECUTE_TOOL:
                session.tool_call(obey=False, **tool_call_fields(facts))
            for evaluation in evaluated:
                session.evaluation(**evaluation)
            if op == INVOKE_AGENT and self._owner.get(conversation) in (None, span_id):
                status, kind = session_outcome(facts, killed=session.killed_by is not None)
                session.finish(end_us=facts.end_us, status=status, error_type=kind)
                self._close(conversation, session)

    def _open(
        self, conversation: str, fields: dict[str, str | None], start_us: int, owner: int | None
    ) -> Session:
        session = self.gov.session(
            conversation,
            category=fields.get("category"),
            prompt_version=fields.get("prompt_version"),
            model_version=fields.get("model_version"),
            tool_schema_version=fields.get("tool_schema_version"),
        )
        # a conversation coming back (its next turn) continues its seq: the worker skips
        # events whose seq it has already applied for this session id
        session.seq = self._last_seq.pop(conversation, 0)
        session.start(start_us=start_us)
        self._sessions[conversation] = session
        self._owner[conversation] = owner
        return session

    def _close(self, conversation: str, session: Session) -> None:
        del self._sessions[conversation]
        del self._owner[conversation]
        self._last_seq[conversation] = session.seq
        while len(self._last_seq) > self._remembered:
            self._last_seq.popitem(last=False)

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
