"""The one mapping of OpenTelemetry GenAI telemetry to Governor steps (pure, no I/O).

Used by both ways spans reach Governor: the in-process :class:`GovernorSpanProcessor`
(``streams.client.otel``) and the OTLP/HTTP receiver (``governor ingest``,
``streams.ingest.steps``). It follows the GenAI semantic conventions (Development status, now
kept in ``open-telemetry/semantic-conventions-genai``; names checked against
``opentelemetry-semantic-conventions`` 0.66b2):

- ``gen_ai.operation.name``: ``invoke_agent`` and ``invoke_workflow`` open a session;
  ``chat``, ``text_completion``, ``generate_content`` and ``embeddings`` are LLM_CALL steps;
  ``execute_tool`` and ``retrieval`` are TOOL_CALL steps; ``create_agent`` is no step (it
  creates an agent, it does not run one) and is counted as ignored
- MCP client spans (``mcp.method.name = tools/call``) are TOOL_CALL steps naming the MCP server
  (``server.address``/``server.port``, else the transport); the MCP *server's* span of the same
  call is ignored, or every call would count twice
- usage: ``gen_ai.usage.input_tokens``/``output_tokens`` (legacy ``prompt_tokens``/
  ``completion_tokens``), ``gen_ai.usage.cache_read.input_tokens``,
  ``gen_ai.usage.cache_creation.input_tokens``, ``gen_ai.usage.reasoning.output_tokens``
  (legacy underscore forms too). Per the conventions input tokens include both cache kinds
- ``gen_ai.evaluation.result`` as a span event or as a log record → EVALUATION
- the conversation: ``gen_ai.conversation.id``, else OpenInference ``session.id``, else
  ``mcp.session.id`` (else, decided by the caller, the parent span's or the trace id)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

INVOKE_AGENT = "invoke_agent"
INVOKE_WORKFLOW = "invoke_workflow"
EXECUTE_TOOL = "execute_tool"
RETRIEVAL = "retrieval"
CREATE_AGENT = "create_agent"
EMBEDDINGS = "embeddings"
#: operations that run an agent (a session, or a sub-agent inside one)
AGENT_OPERATIONS = frozenset({INVOKE_AGENT, INVOKE_WORKFLOW})
LLM_OPERATIONS = frozenset({"chat", "text_completion", "generate_content", EMBEDDINGS})
TOOL_OPERATIONS = frozenset({EXECUTE_TOOL, RETRIEVAL})
#: known operations that are not steps
IGNORED_OPERATIONS = frozenset({CREATE_AGENT})
KNOWN_OPERATIONS = AGENT_OPERATIONS | LLM_OPERATIONS | TOOL_OPERATIONS | IGNORED_OPERATIONS
MCP_TOOLS_CALL = "tools/call"
EVALUATION_EVENT = "gen_ai.evaluation.result"
#: semconv: ``error.type`` is ``_OTHER`` when no better value is known
OTHER_ERROR = "_OTHER"
UNKNOWN_MODEL = "unknown"
CACHE_CREATION_ATTRIBUTE = "gen_ai.usage.cache_creation.input_tokens"

#: message role (semconv ``gen_ai.*.messages``) → SegmentRole
ROLES = {
    "system": "SYSTEM",
    "developer": "SYSTEM",
    "user": "USER",
    "assistant": "ASSISTANT",
    "tool": "TOOL_RESULT",
}


class SpanKind(StrEnum):
    """OTLP ``Span.SpanKind`` without its ``SPAN_KIND_`` prefix."""

    UNSPECIFIED = "UNSPECIFIED"
    INTERNAL = "INTERNAL"
    SERVER = "SERVER"
    CLIENT = "CLIENT"
    PRODUCER = "PRODUCER"
    CONSUMER = "CONSUMER"


class ConversationSource(StrEnum):
    """Where a span's conversation (the session id) came from, best first."""

    CONVERSATION_ID = "gen_ai.conversation.id"
    SESSION_ID = "session.id"
    MCP_SESSION_ID = "mcp.session.id"
    PARENT = "parent_span"
    TRACE_ID = "trace_id"


#: the attribute chain, in order; PARENT and TRACE_ID are the caller's to apply
CONVERSATION_ATTRIBUTES = (
    ConversationSource.CONVERSATION_ID,
    ConversationSource.SESSION_ID,
    ConversationSource.MCP_SESSION_ID,
)


class StepClass(StrEnum):
    """What a span is to Governor."""

    AGENT = "agent"
    LLM = "llm"
    TOOL = "tool"
    MCP_TOOL = "mcp_tool"
    #: a known GenAI operation that is not a step (create_agent), or an MCP server span
    IGNORED = "ignored"
    #: ``gen_ai.operation.name`` set to a value this mapping does not know
    UNKNOWN_OPERATION = "unknown_operation"
    #: no GenAI operation at all (an HTTP span, a database span, ...)
    NOT_GENAI = "not_genai"


@dataclass(frozen=True)
class SpanEvent:
    name: str
    timestamp_ns: int
    attributes: Mapping[str, Any]


@dataclass(frozen=True)
class SpanFacts:
    """What the mapping needs of a finished span (pure data, so the mapping is testable).

    Ids are lowercase hex (32 digits for a trace, 16 for a span), empty when unknown."""

    attributes: Mapping[str, Any]
    start_ns: int
    end_ns: int
    error: bool = False
    events: tuple[SpanEvent, ...] = ()
    trace_id: str = ""
    span_id: str = ""
    parent_span_id: str = ""
    kind: SpanKind = SpanKind.INTERNAL
    name: str = ""
    #: the parent span is in another process (OTLP span flags): this span is a local root
    parent_remote: bool = False

    @property
    def start_us(self) -> int:
        return self.start_ns // 1000

    @property
    def end_us(self) -> int:
        return self.end_ns // 1000

    @property
    def duration_ms(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1_000_000


# --- attributes ----------------------------------------------------------------------------


def text_attr(attrs: Mapping[str, Any], *keys: str) -> str | None:
    """The first of ``keys`` holding a non-empty string."""
    for key in keys:
        value = attrs.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def int_attr(attrs: Mapping[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = attrs.get(key)
        # bool is an int to Python, never a token count
        if isinstance(value, int | float) and not isinstance(value, bool):
            return int(value)
    return None


def float_attr(attrs: Mapping[str, Any], *keys: str) -> float | None:
    for key in keys:
        value = attrs.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def conversation_id(attrs: Mapping[str, Any]) -> str | None:
    """``gen_ai.conversation.id`` alone (see :func:`conversation_of` for the fallbacks)."""
    return text_attr(attrs, ConversationSource.CONVERSATION_ID)


def conversation_of(attrs: Mapping[str, Any]) -> tuple[str, ConversationSource] | None:
    """The conversation named by the span's own attributes, and which attribute named it."""
    for source in CONVERSATION_ATTRIBUTES:
        value = text_attr(attrs, source)
        if value is not None:
            return value, source
    return None


TURN_SEPARATOR = "#"


def turn_session_id(conversation: str, turn: int) -> str:
    """The session of a conversation's ``turn`` (1, 2, ...): the first is the conversation
    itself, the next ``<conversation>#2``, ``#3``, ... (the worker takes no events for a
    session after its end, so each turn is a session of its own)."""
    return conversation if turn <= 1 else f"{conversation}{TURN_SEPARATOR}{turn}"


def turn_parent(conversation: str, turn: int, caller: str | None) -> str | None:
    """The parent session of a conversation's ``turn``: the session of the agent that called
    it (``caller``, when another session), else, for a later turn, the conversation's first
    turn, so ``ask tree <conversation>`` and a ``session_tree`` budget cover every turn."""
    if caller is not None and caller != turn_session_id(conversation, turn):
        return caller
    return conversation if turn > 1 else None


def operation(attrs: Mapping[str, Any]) -> str | None:
    return text_attr(attrs, "gen_ai.operation.name")


def is_mcp_tool_call(attrs: Mapping[str, Any]) -> bool:
    return text_attr(attrs, "mcp.method.name") == MCP_TOOLS_CALL


def classify(facts: SpanFacts) -> StepClass:
    """What ``facts`` is to Governor: an agent, a step, ignored on purpose, or not GenAI."""
    attrs = facts.attributes
    op = operation(attrs)
    if is_mcp_tool_call(attrs):
        # the client's span is the call; the server's span of the same call would count it twice
        return StepClass.IGNORED if facts.kind is SpanKind.SERVER else StepClass.MCP_TOOL
    if op is None:
        return StepClass.NOT_GENAI
    if op in AGENT_OPERATIONS:
        return StepClass.AGENT
    if op in LLM_OPERATIONS:
        return StepClass.LLM
    if op in TOOL_OPERATIONS:
        return StepClass.TOOL
    if op in IGNORED_OPERATIONS:
        return StepClass.IGNORED
    return StepClass.UNKNOWN_OPERATION


def session_fields(attrs: Mapping[str, Any], *, agent_span: bool) -> dict[str, str | None]:
    """Keyword arguments of ``Governor.session`` from the span that opens the session."""
    model_version = text_attr(attrs, "governor.model_version")
    if model_version is None and agent_span:
        model_version = text_attr(attrs, "gen_ai.request.model")
    return {
        "category": text_attr(attrs, "governor.category"),
        "prompt_version": text_attr(attrs, "governor.prompt_version"),
        "model_version": model_version,
        "tool_schema_version": text_attr(attrs, "governor.tool_schema_version"),
    }


# --- outcomes ------------------------------------------------------------------------------


def error_type(facts: SpanFacts) -> str | None:
    """``error.type``, else the recorded exception's type, else ``_OTHER``; None if it went well."""
    declared = text_attr(facts.attributes, "error.type")
    if declared is not None:
        return declared
    if not facts.error:
        return None
    for event in reversed(facts.events):
        if event.name == "exception":
            recorded = text_attr(event.attributes, "exception.type")
            if recorded is not None:
                # the SDK records the qualified name; the native client reports the class name
                return recorded.rsplit(".", 1)[-1]
    return OTHER_ERROR


def step_outcome(facts: SpanFacts) -> tuple[str, str | None]:
    kind = error_type(facts)
    return ("OK", None) if kind is None else ("ERROR", kind)


def session_outcome(facts: SpanFacts, *, killed: bool) -> tuple[str, str | None]:
    """SESSION_END status of an agent span, as ``Session.finish`` would judge it."""
    status, kind = step_outcome(facts)
    if killed or kind == "SessionKilled":
        return "KILLED", None
    return status, kind


# --- content -------------------------------------------------------------------------------


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


# --- steps ---------------------------------------------------------------------------------


def cache_creation_tokens(attrs: Mapping[str, Any]) -> int | None:
    """``gen_ai.usage.cache_creation.input_tokens`` (or the legacy underscore form)."""
    return int_attr(attrs, CACHE_CREATION_ATTRIBUTE, "gen_ai.usage.cache_creation_input_tokens")


def llm_call_fields(facts: SpanFacts) -> dict[str, Any]:
    """Keyword arguments of ``Session.llm_call`` for an LLM span (chat, embeddings, ...)."""
    attrs = facts.attributes
    status, kind = step_outcome(facts)
    content = [
        *message_segments(attrs.get("gen_ai.system_instructions"), "SYSTEM"),
        *message_segments(attrs.get("gen_ai.input.messages"), "USER"),
        *message_segments(attrs.get("gen_ai.output.messages"), "ASSISTANT"),
    ]
    # the native client counts unknown usage as 0 tokens; so does the adapter
    input_tokens = int_attr(attrs, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
    output_tokens = int_attr(attrs, "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")
    return {
        "model": text_attr(attrs, "gen_ai.request.model", "gen_ai.response.model") or UNKNOWN_MODEL,
        "provider": text_attr(attrs, "gen_ai.provider.name", "gen_ai.system"),
        "input_tokens": input_tokens or 0,
        "output_tokens": output_tokens or 0,
        "cache_read_input_tokens": int_attr(
            attrs, "gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens"
        ),
        # part of input_tokens (semconv), priced at the cache-write rate where there is one
        "cache_write_input_tokens": cache_creation_tokens(attrs),
        "reasoning_output_tokens": int_attr(
            attrs, "gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning_output_tokens"
        ),
        "operation": operation(attrs) or "chat",
        "duration_ms": facts.duration_ms,
        "start_us": facts.start_us,
        "status": status,
        "error_type": kind,
        "content": content,
    }


def mcp_server(attrs: Mapping[str, Any]) -> str:
    """The MCP server a ``tools/call`` client span talked to: ``server.address[:port]``, else
    its transport (``stdio``/``pipe``), else ``unknown``."""
    address = text_attr(attrs, "server.address")
    if address is not None:
        port = int_attr(attrs, "server.port")
        return address if port is None else f"{address}:{port}"
    return text_attr(attrs, "network.transport", "mcp.transport") or "unknown"


def _tool_name(facts: SpanFacts) -> str:
    attrs = facts.attributes
    name = text_attr(attrs, "gen_ai.tool.name")
    if name is not None:
        return name
    if operation(attrs) == RETRIEVAL:
        return text_attr(attrs, "gen_ai.data_source.id") or RETRIEVAL
    if is_mcp_tool_call(attrs):
        # the span name is "{mcp.method.name} {target}", the target being the tool's name
        method, _, target = facts.name.partition(" ")
        if method == MCP_TOOLS_CALL and target:
            return target
    return "unknown"


def tool_call_fields(facts: SpanFacts) -> dict[str, Any]:
    """Keyword arguments of ``Session.tool_call`` for a tool span (execute_tool, retrieval,
    an MCP ``tools/call``)."""
    attrs = facts.attributes
    status, kind = step_outcome(facts)
    return {
        "name": _tool_name(facts),
        "call_id": text_attr(attrs, "gen_ai.tool.call.id", "jsonrpc.request.id"),
        "args": attrs.get("gen_ai.tool.call.arguments", attrs.get("gen_ai.retrieval.query.text")),
        "result": attrs.get("gen_ai.tool.call.result"),
        "duration_ms": facts.duration_ms,
        "start_us": facts.start_us,
        "status": status,
        "error_type": kind,
    }


def evaluation_fields(attrs: Mapping[str, Any], timestamp_ns: int) -> dict[str, Any] | None:
    """Keyword arguments of ``Session.evaluation`` for one ``gen_ai.evaluation.result`` (span
    event or log record); None without a name and a numeric score (a label-only result has no
    score to record)."""
    name = text_attr(attrs, "gen_ai.evaluation.name")
    score = float_attr(attrs, "gen_ai.evaluation.score.value")
    if name is None or score is None:
        return None
    return {"name": name, "score": score, "start_us": timestamp_ns // 1000}


def evaluations(facts: SpanFacts) -> list[dict[str, Any]]:
    """:func:`evaluation_fields` of every ``gen_ai.evaluation.result`` event of the span."""
    found: list[dict[str, Any]] = []
    if not facts.events:
        return found
    for event in facts.events:
        if event.name == EVALUATION_EVENT:
            fields = evaluation_fields(event.attributes, event.timestamp_ns)
            if fields is not None:
                found.append(fields)
    return found


def unscored_evaluations(facts: SpanFacts) -> int:
    """``gen_ai.evaluation.result`` events that :func:`evaluations` cannot record."""
    total = sum(1 for event in facts.events if event.name == EVALUATION_EVENT)
    return total - len(evaluations(facts)) if total else 0
