"""The provider APIs as the gateway reads them (pure functions, no I/O).

A request body becomes a :class:`Call`: the model, whether it streams, the output-token cap,
every text it sends as a :class:`Segment` (with its role as Governor records it and where it is
in the body, so a redacted text can be written back), the tools it offers and any session id it
carries. A response (or each streamed SSE event) gives its :class:`Usage`, its text and the tool
calls the model asks for. Errors are written the way each SDK reads them.

OpenAI: ``/v1/chat/completions``, ``/v1/responses``, ``/v1/embeddings``; Anthropic:
``/v1/messages``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from streams.gateway.config import Api

Path = tuple[str | int, ...]
Kind = Literal["chat", "responses", "embeddings", "messages"]


@dataclass(frozen=True)
class Endpoint:
    kind: Kind
    api: Api
    #: appended to the upstream's base URL
    upstream_path: str
    #: the StepEvent operation
    operation: str


ENDPOINTS = {
    "/v1/chat/completions": Endpoint("chat", "openai", "/chat/completions", "chat"),
    "/v1/responses": Endpoint("responses", "openai", "/responses", "chat"),
    "/v1/embeddings": Endpoint("embeddings", "openai", "/embeddings", "embeddings"),
    "/v1/messages": Endpoint("messages", "anthropic", "/v1/messages", "chat"),
}


class RequestError(ValueError):
    """A request body the gateway cannot read (answered 400, naming the field)."""


@dataclass
class Segment:
    #: SYSTEM, USER, ASSISTANT, TOOL_ARGUMENTS or TOOL_RESULT
    role: str
    text: str
    #: where the text is in the body (keys and indexes)
    path: Path
    #: the tool whose arguments or result this is
    tool: str | None = None


@dataclass(frozen=True)
class ToolResult:
    """A tool's result fed back to the model: the tool ran in the agent."""

    call_id: str
    name: str
    arguments: str
    result: str


@dataclass
class Call:
    """A request as Governor sees it. ``tool_results`` are the ones fed back since the model's
    last answer (the new turn: earlier ones were recorded by the request that carried them)."""

    model: str
    stream: bool
    max_output_tokens: int | None
    segments: list[Segment]
    #: names of the tools offered to the model, with their path in the body
    tools: list[tuple[str, Path]] = field(default_factory=list)
    #: a session id the body carries (user / metadata / conversation), if any
    session_hint: str | None = None
    tool_results: list[ToolResult] = field(default_factory=list)

    def inputs(self) -> list[Segment]:
        """What the model reads that it did not write: checked before the call."""
        return [s for s in self.segments if s.role not in ("ASSISTANT", "TOOL_ARGUMENTS")]

    def new_turn(self) -> list[Segment]:
        """The inputs since the model's last answer: what the LLM_CALL records (the rest of the
        conversation was recorded by the calls before)."""
        start = 0
        for i, segment in enumerate(self.segments):
            if segment.role in ("ASSISTANT", "TOOL_ARGUMENTS"):
                start = i + 1
        return [s for s in self.segments[start:] if s.role not in ("ASSISTANT", "TOOL_ARGUMENTS")]


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int | None = None
    reasoning_output_tokens: int | None = None
    #: the provider reported usage (a stream cut short may not)
    reported: bool = False
    #: Anthropic's cache writes (in ``input_tokens`` too), priced at the cache-write rate
    cache_write_input_tokens: int | None = None


@dataclass(frozen=True)
class ToolCall:
    call_id: str
    name: str
    arguments: str
    #: where it is in the response body (to strip it)
    path: Path


# --- reading requests -------------------------------------------------------------------------


def _int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RequestError(f"{name} must be a non-negative integer, not {value!r}")
    return value


def _text_parts(content: Any, path: Path, kinds: tuple[str, ...]) -> Iterator[tuple[str, Path]]:
    """Texts of a string content or of a list of typed parts."""
    if isinstance(content, str):
        yield content, path
    elif isinstance(content, list):
        for i, part in enumerate(content):
            if isinstance(part, Mapping) and part.get("type") in kinds:
                text = part.get("text")
                if isinstance(text, str):
                    yield text, (*path, i, "text")


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


_OPENAI_ROLES = {
    "system": "SYSTEM",
    "developer": "SYSTEM",
    "user": "USER",
    "assistant": "ASSISTANT",
    "tool": "TOOL_RESULT",
    "function": "TOOL_RESULT",
}


def _hint(body: Mapping[str, Any]) -> str | None:
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping):
        for key in ("session_id", "conversation_id"):
            value = metadata.get(key)
            if isinstance(value, str) and value:
                return value
    conversation = body.get("conversation")
    if isinstance(conversation, Mapping):
        conversation = conversation.get("id")
    if isinstance(conversation, str) and conversation:
        return conversation
    user = body.get("user") or (metadata.get("user_id") if isinstance(metadata, Mapping) else None)
    return user if isinstance(user, str) and user else None


def _chat(body: Mapping[str, Any]) -> Call:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list")
    segments: list[Segment] = []
    calls: dict[str, tuple[str, str]] = {}
    results: list[ToolResult] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise RequestError(f"messages[{i}] must be an object")
        role = _OPENAI_ROLES.get(str(message.get("role")))
        if role is None:
            raise RequestError(f"messages[{i}].role {message.get('role')!r} is not known")
        tool = None
        if role == "ASSISTANT":
            results.clear()  # only the results fed back since the model last answered are new
        if role == "TOOL_RESULT":
            call_id = str(message.get("tool_call_id") or "")
            tool, arguments = calls.get(call_id, (str(message.get("name") or "unknown"), ""))
        where: Path = ("messages", i, "content")
        for text, path in _text_parts(message.get("content"), where, ("text",)):
            segments.append(Segment(role, text, path, tool))
            if role == "TOOL_RESULT" and tool is not None:
                results.append(ToolResult(call_id, tool, arguments, text))
        for j, call in enumerate(message.get("tool_calls") or ()):
            function = call.get("function") if isinstance(call, Mapping) else None
            if isinstance(function, Mapping):
                name = str(function.get("name") or "unknown")
                arguments = str(function.get("arguments") or "")
                calls[str(call.get("id") or "")] = (name, arguments)
                path = ("messages", i, "tool_calls", j, "function", "arguments")
                segments.append(Segment("TOOL_ARGUMENTS", arguments, path, name))
    cap = body.get("max_completion_tokens", body.get("max_tokens"))
    return Call(
        model=_model(body),
        stream=bool(body.get("stream")),
        max_output_tokens=_int(cap, "max_completion_tokens"),
        segments=segments,
        tools=_openai_tools(body),
        session_hint=_hint(body),
        tool_results=results,
    )


def _openai_tools(body: Mapping[str, Any]) -> list[tuple[str, Path]]:
    tools: list[tuple[str, Path]] = []
    for i, tool in enumerate(body.get("tools") or ()):
        if not isinstance(tool, Mapping):
            continue
        function = tool.get("function")
        name = function.get("name") if isinstance(function, Mapping) else tool.get("name")
        if isinstance(name, str):
            tools.append((name, ("tools", i)))
    return tools


def _responses(body: Mapping[str, Any]) -> Call:
    segments: list[Segment] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        segments.append(Segment("SYSTEM", instructions, ("instructions",)))
    items = body.get("input")
    calls: dict[str, tuple[str, str]] = {}
    results: list[ToolResult] = []
    if isinstance(items, str):
        segments.append(Segment("USER", items, ("input",)))
    elif isinstance(items, list):
        for i, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise RequestError(f"input[{i}] must be an object")
            kind = item.get("type", "message")
            if kind == "function_call" or item.get("role") == "assistant":
                results.clear()
            if kind == "message":
                role = _OPENAI_ROLES.get(str(item.get("role")), "USER")
                parts = ("input_text", "output_text", "text")
                for text, path in _text_parts(item.get("content"), ("input", i, "content"), parts):
                    segments.append(Segment(role, text, path))
            elif kind == "function_call":
                name = str(item.get("name") or "unknown")
                arguments = str(item.get("arguments") or "")
                calls[str(item.get("call_id") or "")] = (name, arguments)
                where = ("input", i, "arguments")
                segments.append(Segment("TOOL_ARGUMENTS", arguments, where, name))
            elif kind == "function_call_output":
                call_id = str(item.get("call_id") or "")
                name, arguments = calls.get(call_id, ("unknown", ""))
                output = item.get("output")
                if isinstance(output, str):
                    segments.append(Segment("TOOL_RESULT", output, ("input", i, "output"), name))
                    results.append(ToolResult(call_id, name, arguments, output))
    else:
        raise RequestError("input must be a string or a list of items")
    return Call(
        model=_model(body),
        stream=bool(body.get("stream")),
        max_output_tokens=_int(body.get("max_output_tokens"), "max_output_tokens"),
        segments=segments,
        tools=_openai_tools(body),
        session_hint=_hint(body),
        tool_results=results,
    )


def _embeddings(body: Mapping[str, Any]) -> Call:
    value = body.get("input")
    segments: list[Segment] = []
    if isinstance(value, str):
        segments.append(Segment("USER", value, ("input",)))
    elif isinstance(value, list):
        segments.extend(
            Segment("USER", v, ("input", i)) for i, v in enumerate(value) if isinstance(v, str)
        )
    else:
        raise RequestError("input must be a string or a list")
    return Call(_model(body), False, 0, segments, session_hint=_hint(body))


def _messages(body: Mapping[str, Any]) -> Call:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list")
    segments: list[Segment] = []
    for text, path in _text_parts(body.get("system"), ("system",), ("text",)):
        segments.append(Segment("SYSTEM", text, path))
    calls: dict[str, tuple[str, str]] = {}
    results: list[ToolResult] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise RequestError(f"messages[{i}] must be an object")
        role = {"user": "USER", "assistant": "ASSISTANT"}.get(str(message.get("role")))
        if role is None:
            raise RequestError(f"messages[{i}].role {message.get('role')!r} is not user/assistant")
        if role == "ASSISTANT":
            results.clear()
        content = message.get("content")
        base: Path = ("messages", i, "content")
        if isinstance(content, str):
            segments.append(Segment(role, content, base))
            continue
        for j, block in enumerate(content if isinstance(content, list) else ()):
            if not isinstance(block, Mapping):
                continue
            kind = block.get("type")
            if kind == "text" and isinstance(block.get("text"), str):
                segments.append(Segment(role, block["text"], (*base, j, "text")))
            elif kind == "tool_use":
                name = str(block.get("name") or "unknown")
                arguments = _as_text(block.get("input"))
                calls[str(block.get("id") or "")] = (name, arguments)
                segments.append(Segment("TOOL_ARGUMENTS", arguments, (*base, j, "input"), name))
            elif kind == "tool_result":
                call_id = str(block.get("tool_use_id") or "")
                name, arguments = calls.get(call_id, ("unknown", ""))
                inner = block.get("content")
                for text, path in _text_parts(inner, (*base, j, "content"), ("text",)):
                    segments.append(Segment("TOOL_RESULT", text, path, name))
                    results.append(ToolResult(call_id, name, arguments, text))
    tools: list[tuple[str, Path]] = [
        (t["name"], ("tools", i))
        for i, t in enumerate(body.get("tools") or ())
        if isinstance(t, Mapping) and isinstance(t.get("name"), str)
    ]
    return Call(
        model=_model(body),
        stream=bool(body.get("stream")),
        max_output_tokens=_int(body.get("max_tokens"), "max_tokens"),
        segments=segments,
        tools=tools,
        session_hint=_hint(body),
        tool_results=results,
    )


def _model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("model must be a non-empty string")
    return model


_READERS = {
    "chat": _chat,
    "responses": _responses,
    "embeddings": _embeddings,
    "messages": _messages,
}


def read_call(endpoint: Endpoint, body: Any) -> Call:
    """The call a request body describes; :class:`RequestError` names what is wrong."""
    if not isinstance(body, Mapping):
        raise RequestError("the body must be a JSON object")
    return _READERS[endpoint.kind](body)


# --- rewriting requests -----------------------------------------------------------------------


def set_at(body: Any, path: Path, value: Any) -> None:
    """Write ``value`` at ``path`` of ``body`` (a tool_use input is JSON: kept as JSON)."""
    *parents, last = path
    node = body
    for key in parents:
        node = node[key]
    if isinstance(node[last], Mapping) and isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = {"redacted": value}
    node[last] = value


def without_tools(body: dict[str, Any], paths: list[Path]) -> None:
    """Remove the offered tools at ``paths`` (``("tools", i)``) from the request."""
    drop = {p[1] for p in paths}
    body["tools"] = [t for i, t in enumerate(body.get("tools") or ()) if i not in drop]
    if not body["tools"]:
        del body["tools"]
        body.pop("tool_choice", None)
        body.pop("parallel_tool_calls", None)


def prepared(endpoint: Endpoint, body: dict[str, Any]) -> dict[str, Any]:
    """The body to forward: a streamed OpenAI chat call asks for its usage at the end
    (Anthropic and the Responses API always send it)."""
    if endpoint.kind == "chat" and body.get("stream"):
        options = dict(body.get("stream_options") or {})
        options["include_usage"] = True
        body["stream_options"] = options
    return body


# --- reading responses ------------------------------------------------------------------------


def _n(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _opt(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def usage_of(kind: Kind, usage: Any) -> Usage | None:
    """Usage as Governor records it (input tokens include cached ones) from a usage object."""
    if not isinstance(usage, Mapping):
        return None
    if kind == "messages":
        cached = _opt(usage.get("cache_read_input_tokens"))
        written = _opt(usage.get("cache_creation_input_tokens"))
        fresh = _n(usage.get("input_tokens")) + (written or 0)
        return Usage(
            fresh + (cached or 0), _n(usage.get("output_tokens")), cached, None, True, written
        )
    if kind == "responses":
        details = usage.get("input_tokens_details") or {}
        out = usage.get("output_tokens_details") or {}
        return Usage(
            _n(usage.get("input_tokens")),
            _n(usage.get("output_tokens")),
            _opt(details.get("cached_tokens")) if isinstance(details, Mapping) else None,
            _opt(out.get("reasoning_tokens")) if isinstance(out, Mapping) else None,
            True,
        )
    details = usage.get("prompt_tokens_details") or {}
    out = usage.get("completion_tokens_details") or {}
    return Usage(
        _n(usage.get("prompt_tokens")),
        _n(usage.get("completion_tokens")),
        _opt(details.get("cached_tokens")) if isinstance(details, Mapping) else None,
        _opt(out.get("reasoning_tokens")) if isinstance(out, Mapping) else None,
        True,
    )


@dataclass
class Answer:
    """What a (non-streamed, or streamed and folded) response says."""

    usage: Usage = field(default_factory=Usage)
    text: list[str] = field(default_factory=list)
    #: where each text is in a non-streamed body (for the PII rules on the model's output)
    text_paths: list[Path] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    response_id: str | None = None


def read_answer(kind: Kind, body: Any) -> Answer:
    """Usage, text and tool calls of a non-streamed response body."""
    answer = Answer()
    if not isinstance(body, Mapping):
        return answer
    answer.usage = usage_of(kind, body.get("usage")) or Usage()
    response_id = body.get("id")
    answer.response_id = response_id if isinstance(response_id, str) else None
    if kind == "chat":
        for i, choice in enumerate(body.get("choices") or ()):
            message = choice.get("message") if isinstance(choice, Mapping) else None
            if not isinstance(message, Mapping):
                continue
            if isinstance(message.get("content"), str):
                answer.text.append(message["content"])
                answer.text_paths.append(("choices", i, "message", "content"))
            for j, call in enumerate(message.get("tool_calls") or ()):
                function = call.get("function") or {}
                answer.tool_calls.append(
                    ToolCall(
                        str(call.get("id") or ""),
                        str(function.get("name") or "unknown"),
                        str(function.get("arguments") or ""),
                        ("choices", i, "message", "tool_calls", j),
                    )
                )
    elif kind == "responses":
        for i, item in enumerate(body.get("output") or ()):
            if not isinstance(item, Mapping):
                continue
            if item.get("type") == "function_call":
                answer.tool_calls.append(
                    ToolCall(
                        str(item.get("call_id") or ""),
                        str(item.get("name") or "unknown"),
                        str(item.get("arguments") or ""),
                        ("output", i),
                    )
                )
            for text, path in _text_parts(
                item.get("content"), ("output", i, "content"), ("output_text",)
            ):
                answer.text.append(text)
                answer.text_paths.append(path)
    elif kind == "messages":
        for i, block in enumerate(body.get("content") or ()):
            if not isinstance(block, Mapping):
                continue
            if block.get("type") == "text" and isinstance(block.get("text"), str):
                answer.text.append(block["text"])
                answer.text_paths.append(("content", i, "text"))
            elif block.get("type") == "tool_use":
                answer.tool_calls.append(
                    ToolCall(
                        str(block.get("id") or ""),
                        str(block.get("name") or "unknown"),
                        _as_text(block.get("input")),
                        ("content", i),
                    )
                )
    return answer


def strip_tool_calls(kind: Kind, body: dict[str, Any], calls: list[ToolCall]) -> None:
    """Remove ``calls`` from a response body; a turn left without any ends as a plain stop."""
    by_parent: dict[Path, set[int]] = {}
    for call in calls:
        by_parent.setdefault(call.path[:-1], set()).add(int(call.path[-1]))
    for parent, drop in by_parent.items():
        node: Any = body
        for key in parent:
            node = node[key]
        kept = [item for i, item in enumerate(node) if i not in drop]
        node[:] = kept
        if kind == "chat" and not kept:
            message = body["choices"][parent[1]]["message"]
            message.pop("tool_calls", None)
            if body["choices"][parent[1]].get("finish_reason") == "tool_calls":
                body["choices"][parent[1]]["finish_reason"] = "stop"
    content = body.get("content") or ()
    if kind == "messages" and body.get("stop_reason") == "tool_use":
        body["stop_reason"] = (
            "tool_use" if any(b.get("type") == "tool_use" for b in content) else "end_turn"
        )


# --- streams (server-sent events) -------------------------------------------------------------


@dataclass(frozen=True)
class SseEvent:
    event: str | None
    data: str
    raw: bytes


class SseSplitter:
    """Cut a byte stream into whole SSE events (the raw bytes are passed on unchanged)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self._buffer += chunk.replace(b"\r\n", b"\n")
        events: list[SseEvent] = []
        while True:
            end = self._buffer.find(b"\n\n")
            if end < 0:
                return events
            raw, self._buffer = self._buffer[: end + 2], self._buffer[end + 2 :]
            events.append(parse_sse(raw))

    def rest(self) -> bytes:
        rest, self._buffer = self._buffer, b""
        return rest


def parse_sse(raw: bytes) -> SseEvent:
    event: str | None = None
    data: list[str] = []
    for line in raw.decode("utf-8", "replace").split("\n"):
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    return SseEvent(event, "\n".join(data), raw)


@dataclass
class StreamFold:
    """A streamed answer folded event by event: usage, text and tool calls so far."""

    kind: Kind
    answer: Answer = field(default_factory=Answer)
    #: tool calls being streamed: index -> [id, name, arguments]
    _calls: dict[int, list[str]] = field(default_factory=dict)

    def feed(self, event: SseEvent) -> str | None:
        """Fold one event; returns the name of a tool call that starts in it, if any."""
        if not event.data or event.data == "[DONE]":
            return None
        try:
            data = json.loads(event.data)
        except ValueError:
            return None
        if not isinstance(data, Mapping):
            return None
        if self.kind == "chat":
            return self._chat(data)
        if self.kind == "responses":
            return self._responses(data)
        return self._messages(data)

    def _start(self, index: int, call_id: str, name: str) -> str:
        self._calls[index] = [call_id, name, ""]
        return name

    def _chat(self, data: Mapping[str, Any]) -> str | None:
        usage = usage_of("chat", data.get("usage"))
        if usage is not None:
            self.answer.usage = usage
        started = None
        for choice in data.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, Mapping) else None
            if not isinstance(delta, Mapping):
                continue
            if isinstance(delta.get("content"), str):
                self.answer.text.append(delta["content"])
            for call in delta.get("tool_calls") or ():
                index = _n(call.get("index"))
                function = call.get("function") or {}
                if index not in self._calls and function.get("name"):
                    started = self._start(index, str(call.get("id") or ""), function["name"])
                if index in self._calls and isinstance(function.get("arguments"), str):
                    self._calls[index][2] += function["arguments"]
        return started

    def _responses(self, data: Mapping[str, Any]) -> str | None:
        kind = data.get("type")
        if kind == "response.output_text.delta" and isinstance(data.get("delta"), str):
            self.answer.text.append(data["delta"])
        elif kind == "response.output_item.added":
            item = data.get("item") or {}
            if item.get("type") == "function_call":
                index = _n(data.get("output_index"))
                return self._start(index, str(item.get("call_id") or ""), str(item.get("name")))
        elif kind == "response.function_call_arguments.delta":
            index = _n(data.get("output_index"))
            if index in self._calls and isinstance(data.get("delta"), str):
                self._calls[index][2] += data["delta"]
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            response = data.get("response") or {}
            usage = usage_of("responses", response.get("usage"))
            if usage is not None:
                self.answer.usage = usage
            if isinstance(response.get("id"), str):
                self.answer.response_id = response["id"]
        return None

    def _messages(self, data: Mapping[str, Any]) -> str | None:
        kind = data.get("type")
        if kind == "message_start":
            message = data.get("message") or {}
            usage = usage_of("messages", message.get("usage"))
            if usage is not None:
                self.answer.usage = usage
        elif kind == "message_delta":
            delta_usage = data.get("usage") or {}
            if isinstance(delta_usage.get("output_tokens"), int):
                self.answer.usage.output_tokens = delta_usage["output_tokens"]
                self.answer.usage.reported = True
        elif kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = _n(data.get("index"))
                return self._start(index, str(block.get("id") or ""), str(block.get("name")))
        elif kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
                self.answer.text.append(delta["text"])
            elif delta.get("type") == "input_json_delta":
                index = _n(data.get("index"))
                if index in self._calls and isinstance(delta.get("partial_json"), str):
                    self._calls[index][2] += delta["partial_json"]
        return None

    def finished(self) -> Answer:
        """The answer so far; a streamed tool call's ``path`` is its index in the stream."""
        self.answer.tool_calls = [
            ToolCall(call_id, name, arguments, (index,))
            for index, (call_id, name, arguments) in self._calls.items()
        ]
        return self.answer


#: the streams whose denied tool calls can be taken out (the Responses API's are refused)
STRIPPABLE_STREAMS = ("chat", "messages")


def strip_streamed(
    kind: Kind, events: list[bytes], calls: list[ToolCall], streamed: list[ToolCall]
) -> list[bytes]:
    """The held events of a stream without the tool calls ``calls`` of all those ``streamed``
    (a streamed call's path is its index): the others renumbered, and a turn left without any
    ending as a stop (OpenAI ``finish_reason: stop``, Anthropic ``stop_reason: end_turn``)."""
    drop = {int(c.path[0]) for c in calls if c.path}
    ends = len({int(c.path[0]) for c in streamed if c.path} - drop) == 0
    out: list[bytes] = []
    for raw in events:
        event = parse_sse(raw)
        try:
            data = json.loads(event.data) if event.data and event.data != "[DONE]" else None
        except ValueError:
            data = None
        if not isinstance(data, dict):
            out.append(raw)
            continue
        if kind == "chat":
            kept = _strip_chat(data, drop, ends)
        else:
            kept = _strip_messages(data, drop, ends)
        if kept is None:
            continue
        head = f"event: {event.event}\n" if event.event else ""
        out.append(f"{head}data: {json.dumps(kept)}\n\n".encode())
    return out


def _renumber(index: int, drop: set[int]) -> int:
    return index - sum(1 for d in drop if d < index)


def _strip_chat(data: dict[str, Any], drop: set[int], ends: bool) -> dict[str, Any] | None:
    for choice in data.get("choices") or ():
        delta = choice.get("delta") or {}
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            left = [
                {**c, "index": _renumber(_n(c.get("index")), drop)}
                for c in calls
                if _n(c.get("index")) not in drop
            ]
            if left:
                delta["tool_calls"] = left
            else:
                del delta["tool_calls"]
                if not delta and choice.get("finish_reason") is None:
                    return None  # a chunk of a removed call only
        if choice.get("finish_reason") == "tool_calls" and ends:
            choice["finish_reason"] = "stop"
    return data


def _strip_messages(data: dict[str, Any], drop: set[int], ends: bool) -> dict[str, Any] | None:
    if "index" in data and data.get("type", "").startswith("content_block"):
        index = _n(data.get("index"))
        if index in drop:
            return None
        data["index"] = _renumber(index, drop)
    if data.get("type") == "message_delta":
        delta = data.get("delta") or {}
        if delta.get("stop_reason") == "tool_use" and ends:
            delta["stop_reason"] = "end_turn"
    return data


# --- errors the SDKs understand ---------------------------------------------------------------

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_denied",
    404: "not_found_error",
    429: "rate_limit_exceeded",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout",
}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}


@dataclass(frozen=True)
class Refusal:
    """Why the gateway answers with an error instead of the model."""

    status: int
    message: str
    #: the policy that refused (None: not a policy refusal)
    policy_id: str | None = None
    action: str | None = None
    reason: str | None = None
    decision_id: str | None = None
    #: PII: entity types and the hop each was found on
    entities: tuple[str, ...] = ()
    hops: tuple[str, ...] = ()
    retry_after_s: int | None = None
    #: a label for the refusals metric (kill, pause, budget, pii, tool, ...)
    metric: str = "error"

    def governor(self) -> dict[str, Any]:
        found = {
            "policy_id": self.policy_id,
            "action": self.action,
            "reason": self.reason,
            "decision_id": self.decision_id,
            "entities": list(self.entities) or None,
            "hops": list(self.hops) or None,
        }
        return {k: v for k, v in found.items() if v is not None}


def error_body(api: Api, refusal: Refusal) -> dict[str, Any]:
    """The error body each SDK raises from (OpenAI: ``error``; Anthropic: ``type: error``),
    with what Governor knows in ``governor``."""
    if api == "anthropic":
        kind = _ANTHROPIC_TYPES.get(refusal.status, "api_error")
        return {
            "type": "error",
            "error": {"type": kind, "message": refusal.message},
            "governor": refusal.governor(),
        }
    kind = _OPENAI_TYPES.get(refusal.status, "api_error")
    return {
        "error": {
            "message": refusal.message,
            "type": kind,
            "code": refusal.policy_id or kind,
            "param": None,
            "governor": refusal.governor(),
        }
    }


def stream_error(api: Api, refusal: Refusal) -> bytes:
    """The terminal SSE event that ends a stream with an error the SDK raises: OpenAI an error
    chunk then ``[DONE]``; Anthropic an ``error`` event."""
    body = json.dumps(error_body(api, refusal))
    if api == "anthropic":
        return f"event: error\ndata: {body}\n\n".encode()
    return f"data: {body}\n\ndata: [DONE]\n\n".encode()
