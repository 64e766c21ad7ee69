"""Thin wrappers for the OpenAI and Anthropic Python SDKs: record usage, obey before each call.

    client = governed(OpenAI(), session)            # or AsyncOpenAI, Anthropic, AsyncAnthropic
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[...], max_tokens=200)

Wrapped: OpenAI ``chat.completions.create``, ``responses.create`` and ``embeddings.create``;
Anthropic ``messages.create``; sync and async clients, streamed (``stream=True``) or not. Every
other attribute is the client's own. Needs the ``fleet-governor[openai]`` /
``fleet-governor[anthropic]`` extra (only the SDK you wrap is imported).

Before each call: the decision in force (``session.check()`` / ``check_async()``: KILL raises
:class:`SessionKilled`, THROTTLE and PAUSE wait) and, with client checks, ``guard_llm`` with the
model, the output-token cap (``max_tokens`` / ``max_completion_tokens`` / ``max_output_tokens``)
and the input read from the request (budget, PII rules, denied models...): a refusal raises
:class:`StepBlocked` and the provider is never called. After it: ``llm_call(obey=False)`` with
the usage of the response (for a stream, of its final usage chunk: a streamed OpenAI chat call
is sent with ``stream_options={"include_usage": True}``; the Responses API and Anthropic always
send it), the new turn's input and the answer's text, the duration measured around the call; a
provider error is recorded as status ERROR with its class, then re-raised.

Tool calls in the answer (``tool_calls="raise"``, the default) are checked as tool steps
(``guard_tool``: denied tools, loops, PII in the arguments): the first refused one is recorded
BLOCKED and raises :class:`StepBlocked` after the LLM_CALL is recorded, so the agent never runs
it; for a stream, when the stream ends. ``tool_calls="leave"`` leaves them to the agent (check
its own tool step, ``with session.tool(...)``).

A KILL that arrives while a stream is being read is applied at the next call (the chunks
already coming are let through). Requests and responses are read with the gateway's parser
(:mod:`streams.gateway.protocol`), so a wrapped call records what ``governor gateway`` records
for the same call.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from streams.client.governor import Session
from streams.gateway.protocol import (
    ENDPOINTS,
    Answer,
    Call,
    Endpoint,
    SseEvent,
    StreamFold,
    prepared,
    read_answer,
    read_call,
)

log = logging.getLogger("governor.client.sdk")

# The SDKs look the legacy ``httpx`` up in sys.modules on every request; the client's PII
# detector imports it in a background thread when a Governor starts (PiiGuard.warm), and a
# request in between saw it half-initialized (AttributeError: partially initialized module
# 'httpx'). Importing it here, in the importing thread, waits for or finishes that import.
with contextlib.suppress(ImportError):
    import httpx  # noqa: F401

ToolCallsMode = Literal["raise", "leave"]
Provider = Literal["openai", "anthropic"]


# --- pure helpers ----------------------------------------------------------------------------


def _dump(obj: Any) -> Any:
    """A pydantic model of the SDKs as plain JSON data (anything else as it is)."""
    dump = getattr(obj, "model_dump", None)
    return dump(mode="json") if callable(dump) else obj


def _event(chunk: Any) -> SseEvent:
    """A streamed chunk of the SDK as the SSE event it was parsed from."""
    to_json = getattr(chunk, "model_dump_json", None)
    data = to_json() if callable(to_json) else "{}"
    return SseEvent(None, str(data), b"")


def given(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments a call sets: without the SDKs' ``NOT_GIVEN`` / ``omit`` placeholders."""
    return {k: v for k, v in kwargs.items() if type(v).__name__ not in ("NotGiven", "Omit")}


def max_output_tokens(kwargs: dict[str, Any], call: Call) -> int | None:
    """The output-token cap a request asks for (``max_completion_tokens`` counts too)."""
    value = kwargs.get("max_completion_tokens")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return call.max_output_tokens


def recorded_content(call: Call, answer: Answer) -> list[tuple[str, str]]:
    """What the LLM_CALL records: the new turn's input, then the answer's text."""
    content = [(s.role, s.text) for s in call.new_turn()]
    if answer.text:
        content.append(("ASSISTANT", "".join(answer.text)))
    return content


# --- one call --------------------------------------------------------------------------------


@dataclass
class _Exchange:
    """One wrapped call: what it asked for and when it began."""

    wrapper: Governed
    endpoint: Endpoint
    call: Call
    start_us: int = 0
    t0: float = 0.0
    fold: StreamFold | None = None
    done: bool = field(default=False)

    @property
    def session(self) -> Session:
        return self.wrapper.session

    def begin(self) -> None:
        self.start_us = self.session.gov.now_us()
        self.t0 = time.perf_counter()

    def record(self, answer: Answer, error: BaseException | None = None) -> None:
        """The LLM_CALL, once; then (no error) the answer's tool calls are checked."""
        if self.done:
            return
        self.done = True
        usage = answer.usage
        try:
            self.session.llm_call(
                obey=False,
                model=self.call.model,
                provider=self.wrapper.provider,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_read_input_tokens=usage.cache_read_input_tokens,
                reasoning_output_tokens=usage.reasoning_output_tokens,
                duration_ms=(time.perf_counter() - self.t0) * 1000,
                start_us=self.start_us,
                status="OK" if error is None else "ERROR",
                error_type=None if error is None else type(error).__name__,
                content=recorded_content(self.call, answer),
                operation=self.endpoint.operation,
            )
        except Exception as exc:  # recording never breaks the agent
            self.wrapper.problems["record_failed"] = (
                self.wrapper.problems.get("record_failed", 0) + 1
            )
            log.warning("governor sdk wrapper: cannot record the call: %r", exc)
        if error is None and self.wrapper.tool_calls == "raise":
            for tool in answer.tool_calls:
                self.session.guard_tool(
                    name=tool.name, args=tool.arguments or None, call_id=tool.call_id or None
                )


class _Stream:
    """A wrapped SDK stream (sync): chunks pass through as they come, folded on the way; the
    call is recorded when the stream ends, fails or is closed."""

    def __init__(self, inner: Any, exchange: _Exchange) -> None:
        self._inner = inner
        self._x = exchange
        self._fold = StreamFold(exchange.endpoint.kind)

    def __iter__(self) -> Iterator[Any]:
        try:
            for chunk in self._inner:
                self._fold.feed(_event(chunk))
                yield chunk
        except Exception as exc:
            self._x.record(self._fold.finished(), exc)
            raise
        self._x.record(self._fold.finished())

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._inner.close()
        self._x.record(self._fold.finished())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _AsyncStream:
    """:class:`_Stream` for the async clients."""

    def __init__(self, inner: Any, exchange: _Exchange) -> None:
        self._inner = inner
        self._x = exchange
        self._fold = StreamFold(exchange.endpoint.kind)

    async def __aiter__(self) -> AsyncIterator[Any]:
        try:
            async for chunk in self._inner:
                self._fold.feed(_event(chunk))
                yield chunk
        except Exception as exc:
            self._x.record(self._fold.finished(), exc)
            raise
        self._x.record(self._fold.finished())

    async def __aenter__(self) -> _AsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._inner.close()
        self._x.record(self._fold.finished())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# --- the wrappers ----------------------------------------------------------------------------


class _Create:
    """A wrapped resource (``chat.completions``, ``messages``...): ``create`` is governed,
    everything else is the SDK's."""

    def __init__(self, inner: Any, path: str, wrapper: Governed) -> None:
        self._inner = inner
        self._endpoint = ENDPOINTS[path]
        self._wrapper = wrapper

    def _prepare(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], _Exchange]:
        body = prepared(self._endpoint, given(kwargs))
        call = read_call(self._endpoint, body)
        return body, _Exchange(self._wrapper, self._endpoint, call)

    def _guard(self, kwargs: dict[str, Any], x: _Exchange) -> float:
        session = self._wrapper.session
        if not session.gov.checks:
            return 0.0
        return session.guard_llm(
            model=x.call.model,
            provider=self._wrapper.provider,
            content=[(s.role, s.text) for s in x.call.inputs()],
            max_output_tokens=max_output_tokens(kwargs, x.call),
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _SyncCreate(_Create):
    def create(self, **kwargs: Any) -> Any:
        body, x = self._prepare(kwargs)
        session = self._wrapper.session
        session.check()
        delay = self._guard(kwargs, x)
        if delay > 0:
            time.sleep(delay)
        x.begin()
        try:
            response = self._inner.create(**body)
        except Exception as exc:
            x.record(Answer(), exc)
            raise
        if x.call.stream:
            return _Stream(response, x)
        x.record(read_answer(self._endpoint.kind, _dump(response)))
        return response


class _AsyncCreate(_Create):
    async def create(self, **kwargs: Any) -> Any:
        import asyncio

        body, x = self._prepare(kwargs)
        session = self._wrapper.session
        await session.check_async()
        delay = self._guard(kwargs, x)
        if delay > 0:
            await asyncio.sleep(delay)
        x.begin()
        try:
            response = await self._inner.create(**body)
        except Exception as exc:
            x.record(Answer(), exc)
            raise
        if x.call.stream:
            return _AsyncStream(response, x)
        x.record(read_answer(self._endpoint.kind, _dump(response)))
        return response


class _Namespace:
    """``client.chat`` (whose ``completions`` is wrapped), passing the rest through."""

    def __init__(self, inner: Any, **wrapped: Any) -> None:
        self._inner = inner
        self.__dict__.update(wrapped)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class Governed:
    """An SDK client whose model calls are governed by ``session`` (see the module doc)."""

    def __init__(
        self,
        client: Any,
        session: Session,
        provider: Provider,
        is_async: bool,
        tool_calls: ToolCallsMode = "raise",
    ) -> None:
        if tool_calls not in ("raise", "leave"):
            raise ValueError(f"tool_calls must be 'raise' or 'leave', not {tool_calls!r}")
        self._client = client
        self.session = session
        self.provider = provider
        self.tool_calls: ToolCallsMode = tool_calls
        #: failures to record (counted, logged: never raised into the agent)
        self.problems: dict[str, int] = {}
        create: Callable[[Any, str, Governed], _Create] = _AsyncCreate if is_async else _SyncCreate
        if provider == "openai":
            self.chat = _Namespace(
                client.chat,
                completions=create(client.chat.completions, "/v1/chat/completions", self),
            )
            self.responses = create(client.responses, "/v1/responses", self)
            self.embeddings = create(client.embeddings, "/v1/embeddings", self)
        else:
            self.messages = create(client.messages, "/v1/messages", self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def _kind_of(client: Any) -> tuple[Provider, bool]:
    root = type(client).__module__.split(".")[0]
    if root == "openai":
        import openai

        if isinstance(client, openai.AsyncOpenAI):
            return "openai", True
        if isinstance(client, openai.OpenAI):
            return "openai", False
    elif root == "anthropic":
        import anthropic

        if isinstance(client, anthropic.AsyncAnthropic):
            return "anthropic", True
        if isinstance(client, anthropic.Anthropic):
            return "anthropic", False
    raise TypeError(
        f"governed() wraps openai.OpenAI/AsyncOpenAI or anthropic.Anthropic/AsyncAnthropic "
        f"clients, not {type(client).__module__}.{type(client).__name__}"
    )


def governed(client: Any, session: Session, *, tool_calls: ToolCallsMode = "raise") -> Any:
    """``client`` (an OpenAI or Anthropic SDK client, sync or async) with its model calls
    checked before and recorded after, in ``session``. Typed ``Any`` so the SDK's own types
    stay what the editor sees."""
    provider, is_async = _kind_of(client)
    return Governed(client, session, provider, is_async, tool_calls)
