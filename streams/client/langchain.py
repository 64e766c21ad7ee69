"""LangChain adapter: a callback handler that records and obeys for a Governor session.

    with gov.session(category="billing") as s:
        chain.invoke(question, config={"callbacks": [GovernorCallbackHandler(s)]})

Before every model and tool run the handler applies the decision in force (``session.check()``):
a KILL raises :class:`SessionKilled` out of the chain *before* the model or tool runs, because
the handler sets ``raise_error = True``; THROTTLE waits and PAUSE blocks, as in the native client.
When a run ends it is recorded through the session (``llm_call`` / ``tool_call``), so events are
identical to the native client's. Needs the ``fleet-governor[langchain]`` extra
(``langchain-core``).
With ``Governor(checks=True)`` the client's own checks run there too (``guard_llm`` in
``on_chat_model_start`` / ``on_llm_start``, ``guard_tool`` in ``on_tool_start``): a denied tool, a
call over the session budget (estimated with the invocation's ``max_tokens``) or PII the rules
block raises :class:`StepBlocked` out of the chain before the model or tool runs.

- chat model / LLM runs → LLM_CALL: model from the invocation params (``model``, ``model_name``,
  ``model_id``, ``deployment_name``), else the serialized kwargs, else LangChain's
  ``ls_model_name`` metadata, else the response's ``model_name``; provider from the handler's
  ``provider`` argument, else ``ls_provider`` metadata; tokens from the generated messages'
  ``usage_metadata`` (cache reads and reasoning from its details), else
  ``llm_output["token_usage"]``; duration measured between start and end of the run; input
  messages and generated text as content segments; an error as status ERROR with its class.
- tool runs → TOOL_CALL with name, arguments, result (a ``ToolMessage``'s content), tool call id,
  duration and status.

Only the check may raise into the chain: a failure to record is counted in
:attr:`GovernorCallbackHandler.problems` and logged, so Governor never breaks an agent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, LLMResult

from streams.client.governor import Session

log = logging.getLogger("governor.client.langchain")

UNKNOWN = "unknown"
MODEL_KEYS = ("model", "model_name", "model_id", "deployment_name")
#: LangChain message type → SegmentRole
ROLES = {
    "system": "SYSTEM",
    "human": "USER",
    "ai": "ASSISTANT",
    "tool": "TOOL_RESULT",
    "function": "TOOL_RESULT",
}


@dataclass
class _Run:
    kind: str  # "llm" or "tool"
    start_us: int
    t0: float
    fields: dict[str, Any] = field(default_factory=dict)

    def duration_ms(self) -> float:
        return (time.perf_counter() - self.t0) * 1000


# --- pure helpers ----------------------------------------------------------------------------


def model_name(
    invocation_params: Mapping[str, Any] | None,
    serialized: Mapping[str, Any] | None,
    metadata: Mapping[str, Any] | None,
) -> str | None:
    """The requested model: invocation params, then the serialized constructor kwargs, then
    LangChain's tracing metadata."""
    kwargs = (serialized or {}).get("kwargs")
    for source in (invocation_params, kwargs if isinstance(kwargs, Mapping) else None):
        for key in MODEL_KEYS:
            value = (source or {}).get(key)
            if isinstance(value, str) and value:
                return value
    value = (metadata or {}).get("ls_model_name")
    return value if isinstance(value, str) and value else None


def _text(message: BaseMessage) -> str:
    value: Any = message.text
    # a property from langchain-core 1.0, a method before
    return str(value if isinstance(value, str) else value())


def message_segments(messages: Sequence[Sequence[BaseMessage]]) -> list[tuple[str, str]]:
    """Content segments of a chat model's input (one list of messages per prompt)."""
    segments = []
    for prompt in messages:
        for message in prompt:
            text = _text(message)
            if text:
                segments.append((ROLES.get(message.type, "UNKNOWN"), text))
    return segments


def usage(response: LLMResult) -> dict[str, int | None]:
    """Token usage of a run: the generated messages' ``usage_metadata`` (summed over
    generations), else the provider's ``llm_output["token_usage"]``."""
    found = False
    totals: dict[str, int | None] = {
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_read_input_tokens": None,
        "reasoning_output_tokens": None,
    }

    def add(key: str, value: Any) -> None:
        if isinstance(value, int) and not isinstance(value, bool):
            totals[key] = (totals[key] or 0) + value

    for generation in (g for batch in response.generations for g in batch):
        meta = (
            getattr(generation.message, "usage_metadata", None)
            if isinstance(generation, ChatGeneration)
            else None
        )
        if not meta:
            continue
        found = True
        add("input_tokens", meta.get("input_tokens"))
        add("output_tokens", meta.get("output_tokens"))
        add("cache_read_input_tokens", (meta.get("input_token_details") or {}).get("cache_read"))
        add("reasoning_output_tokens", (meta.get("output_token_details") or {}).get("reasoning"))
    if found:
        return totals
    llm_output = response.llm_output or {}
    raw = llm_output.get("token_usage") or llm_output.get("usage") or {}
    if isinstance(raw, Mapping):
        add("input_tokens", raw.get("prompt_tokens", raw.get("input_tokens")))
        add("output_tokens", raw.get("completion_tokens", raw.get("output_tokens")))
    return totals


def response_model(response: LLMResult) -> str | None:
    """The model the provider says answered (used only when the request did not say)."""
    name = (response.llm_output or {}).get("model_name")
    if isinstance(name, str) and name:
        return name
    for generation in (g for batch in response.generations for g in batch):
        if isinstance(generation, ChatGeneration):
            name = generation.message.response_metadata.get("model_name")
            if isinstance(name, str) and name:
                return name
    return None


def output_segments(response: LLMResult) -> list[tuple[str, str]]:
    return [("ASSISTANT", g.text) for batch in response.generations for g in batch if g.text]


# --- the handler -----------------------------------------------------------------------------


class GovernorCallbackHandler(BaseCallbackHandler):
    """Records model and tool runs in ``session`` and applies its decisions before each run."""

    #: LangChain swallows handler errors unless this is set: it is what lets a KILL stop the
    #: chain. Every other failure of the handler is caught here, so only the check propagates.
    raise_error = True

    def __init__(self, session: Session, *, provider: str | None = None) -> None:
        super().__init__()
        self.session = session
        self.provider = provider
        self.problems: Counter[str] = Counter()
        self._runs: dict[UUID, _Run] = {}
        # async chains run sync handlers on executor threads; Session is not thread-safe
        self._lock = threading.Lock()

    # --- models ------------------------------------------------------------------------------

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.session.check()
        try:
            content = message_segments(messages)
        except Exception as exc:
            content = []
            self._problem("bad_messages", exc)
        self._start_llm(run_id, "chat", serialized, metadata, kwargs, content)

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.session.check()
        content = [("USER", p) for p in prompts if isinstance(p, str) and p]
        self._start_llm(run_id, "text_completion", serialized, metadata, kwargs, content)

    def on_llm_end(
        self,
        response: LLMResult,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            run = self._pop(run_id, "llm")
            fields = dict(run.fields)
            fields["model"] = fields["model"] or response_model(response) or UNKNOWN
            fields["content"] = [*fields["content"], *output_segments(response)]
            fields.update(usage(response))
            with self._lock:
                self.session.llm_call(
                    obey=False, start_us=run.start_us, duration_ms=run.duration_ms(), **fields
                )
        except Exception as exc:
            self._problem("record_failed", exc)

    def on_llm_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            run = self._pop(run_id, "llm")
            fields = {**run.fields, "model": run.fields["model"] or UNKNOWN}
            with self._lock:
                self.session.llm_call(
                    obey=False,
                    start_us=run.start_us,
                    duration_ms=run.duration_ms(),
                    status="ERROR",
                    error_type=type(error).__name__,
                    **fields,
                )
        except Exception as exc:
            self._problem("record_failed", exc)

    # --- tools -------------------------------------------------------------------------------

    def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.session.check()
        fields: dict[str, Any] | None = None
        try:
            name = (serialized or {}).get("name") or kwargs.get("name") or UNKNOWN
            call_id = kwargs.get("tool_call_id")
            fields = {
                "name": str(name),
                "args": inputs if inputs is not None else input_str,
                "call_id": call_id if isinstance(call_id, str) else None,
            }
            self._begin(run_id, "tool", fields)
        except Exception as exc:
            self._problem("record_failed", exc)
        if fields is not None and self.session.gov.checks:
            tool = fields

            def guard() -> float:
                self.session.guard_tool(
                    name=tool["name"], args=tool["args"], call_id=tool["call_id"]
                )
                return 0.0  # guard_tool waits a THROTTLE itself

            self._guard(run_id, guard)

    def on_tool_end(
        self,
        output: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            run = self._pop(run_id, "tool")
            fields = dict(run.fields)
            if isinstance(output, ToolMessage):
                # a tool called with a ToolCall answers with a ToolMessage carrying the id
                fields["call_id"] = fields["call_id"] or output.tool_call_id
                output = output.content
            with self._lock:
                self.session.tool_call(
                    obey=False,
                    start_us=run.start_us,
                    duration_ms=run.duration_ms(),
                    result=output,
                    **fields,
                )
        except Exception as exc:
            self._problem("record_failed", exc)

    def on_tool_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            run = self._pop(run_id, "tool")
            with self._lock:
                self.session.tool_call(
                    obey=False,
                    start_us=run.start_us,
                    duration_ms=run.duration_ms(),
                    status="ERROR",
                    error_type=type(error).__name__,
                    **run.fields,
                )
        except Exception as exc:
            self._problem("record_failed", exc)

    # --- bookkeeping -------------------------------------------------------------------------

    def _start_llm(
        self,
        run_id: UUID,
        operation: str,
        serialized: Mapping[str, Any] | None,
        metadata: Mapping[str, Any] | None,
        kwargs: Mapping[str, Any],
        content: list[tuple[str, str]],
    ) -> None:
        params = kwargs.get("invocation_params")
        fields: dict[str, Any] | None = None
        try:
            provider = self.provider or (metadata or {}).get("ls_provider")
            fields = {
                "model": model_name(
                    params if isinstance(params, Mapping) else None, serialized, metadata
                ),
                "provider": provider if isinstance(provider, str) else None,
                "operation": operation,
                "content": content,
            }
            self._begin(run_id, "llm", fields)
        except Exception as exc:
            self._problem("record_failed", exc)
        if fields is not None and self.session.gov.checks:
            max_tokens = params.get("max_tokens") if isinstance(params, Mapping) else None
            self._guard(
                run_id,
                lambda: self.session.guard_llm(
                    model=fields["model"] or UNKNOWN,
                    provider=fields["provider"],
                    content=content,
                    max_output_tokens=max_tokens if isinstance(max_tokens, int) else None,
                ),
            )

    def _guard(self, run_id: UUID, guard: Callable[[], float]) -> None:
        """Client checks before a run (``Governor(checks=True)``): a refusal is recorded as
        BLOCKED by the session and raised into LangChain (``raise_error``), so the model or tool
        never runs; a THROTTLE it would draw is waited here."""
        try:
            delay = guard()
        except Exception:
            with self._lock:
                self._runs.pop(run_id, None)  # refused: it will not end
            raise
        if delay > 0:
            time.sleep(delay)

    def _begin(self, run_id: UUID, kind: str, fields: dict[str, Any]) -> None:
        run = _Run(kind, self.session.gov.now_us(), time.perf_counter(), fields)
        with self._lock:
            self._runs[run_id] = run

    def _pop(self, run_id: UUID, kind: str) -> _Run:
        with self._lock:
            run = self._runs.pop(run_id, None)
        if run is None or run.kind != kind:
            # the handler was attached mid-run: record the end anyway, without a duration
            self._problem("unmatched_run")
            empty: dict[str, Any] = (
                {"model": None, "provider": self.provider, "content": []}
                if kind == "llm"
                else {"name": UNKNOWN, "args": None, "call_id": None}
            )
            return _Run(kind, self.session.gov.now_us(), time.perf_counter(), empty)
        return run

    def _problem(self, kind: str, exc: BaseException | None = None) -> None:
        self.problems[kind] += 1
        level = logging.WARNING if self.problems[kind] == 1 else logging.DEBUG
        log.log(
            level,
            "governor langchain handler: %s (%d so far)%s",
            kind,
            self.problems[kind],
            f": {exc!r}" if exc else "",
            exc_info=exc is not None and level == logging.WARNING,
        )
