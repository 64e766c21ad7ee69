"""OpenAI Agents SDK adapter: a tracing processor that records, run hooks that obey.

    from agents import Runner, add_trace_processor
    processor = GovernorTracingProcessor(gov)
    add_trace_processor(processor)
    result = await Runner.run(agent, question, hooks=GovernorRunHooks(processor),
                              run_config=RunConfig(group_id="conv-42"))

Recording (:class:`GovernorTracingProcessor`, added with ``agents.add_trace_processor``):

- a trace (one ``Runner.run``, or a ``with trace(...)`` block around several) belongs to the
  session of its ``group_id`` (the SDK's conversation id), else of its trace id. A trace
  without a group is the whole session: SESSION_START when it starts, SESSION_END when it
  ends (ERROR if an agent span failed or a refusal ended the run). A group is a conversation:
  its first trace starts the session, the next ones continue it (the worker refuses events
  after a SESSION_END), and it ends with :meth:`GovernorTracingProcessor.end` (or ``close``),
  on a KILL, or as TIMEOUT after the worker's idle timeout. Trace metadata ``category``,
  ``prompt_version``, ``model_version`` and ``tool_schema_version`` become the session's. The
  agent spans of the trace (an agent, the agents it hands off to) all belong to it.
- response spans (the Responses API model, the SDK's default) and generation spans (the Chat
  Completions model, LiteLLM...) → LLM_CALL with the span's usage (cache reads and reasoning
  tokens from its details), the model, the new turn's input and the answer's text (with
  ``trace_include_sensitive_data``, the SDK's default; without it, usage only and the model
  ``unknown`` on response spans), timed by the span.
- function spans → TOOL_CALL with name, arguments, result, status (the call id when the hooks
  run too), timed by the span.

Obeying (:class:`GovernorRunHooks`, passed to ``Runner.run(hooks=...)``): before each model call
the decision in force is applied (``check_async``: KILL raises :class:`SessionKilled`, THROTTLE
and PAUSE wait) and, with client checks, ``guard_llm`` with the agent's model, its
``model_settings.max_tokens`` and the input; before each tool call ``guard_tool`` with the
arguments. A refusal raises :class:`StepBlocked` out of ``Runner.run`` before the model or tool
runs (the exception is also an ``agents.AgentsException``, so the SDK passes it on instead of
wrapping it). A session a concurrency cap refuses at the trace's start (the SDK swallows a
processor's errors) is raised by the hooks before the run's first model call. Client checks and
a THROTTLE's wait run in the event loop's thread (as in the LangChain handler). Needs the
``fleet-governor[openai-agents]`` extra.

Only the hooks may raise into the run: a failure to record is counted in
:attr:`GovernorTracingProcessor.problems` and logged, so Governor never breaks an agent.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agents import Agent, AgentsException, RunContextWrapper, RunHooks, Tool
from agents.tool_context import ToolContext
from agents.tracing import Span, Trace, TracingProcessor, get_current_span, get_current_trace

from streams.client.errors import GovernorError
from streams.client.governor import Governor, Session
from streams.gateway.protocol import (
    ENDPOINTS,
    Answer,
    RequestError,
    Usage,
    read_answer,
    read_call,
    usage_of,
)

log = logging.getLogger("governor.client.openai_agents")

# The SDKs look the legacy ``httpx`` up in sys.modules on every request; the client's PII
# detector imports it in a background thread when a Governor starts (PiiGuard.warm), and a
# request in between saw it half-initialized (AttributeError: partially initialized module
# 'httpx'). Importing it here, in the importing thread, waits for or finishes that import.
with contextlib.suppress(ImportError):
    import httpx  # noqa: F401

UNKNOWN = "unknown"


# --- pure helpers ----------------------------------------------------------------------------


def parse_time_us(value: str | None) -> int | None:
    """An SDK span time (ISO 8601) in microseconds since the epoch."""
    if not value:
        return None
    moment = datetime.fromisoformat(value)
    return round(moment.timestamp() * 1_000_000)


def span_usage(usage: Mapping[str, Any] | None) -> Usage | None:
    """A span's ``usage`` (the SDK's Responses-shaped usage dict) as Governor records it."""
    return usage_of("responses", usage) if usage else None


def model_input(
    model: str, instructions: Any, items: Any, chat: bool = False
) -> list[tuple[str, str]]:
    """The new turn's input segments of a model call, read as the gateway reads a request
    (the Responses input items, or the Chat Completions messages of a generation span)."""
    if chat:
        endpoint, body = ENDPOINTS["/v1/chat/completions"], {"model": model, "messages": items}
    else:
        endpoint = ENDPOINTS["/v1/responses"]
        body = {"model": model, "input": items if items is not None else []}
        if isinstance(instructions, str):
            body["instructions"] = instructions
    try:
        call = read_call(endpoint, body)
    except RequestError:
        return []
    return [(s.role, s.text) for s in call.new_turn()]


def model_answer(output: Any) -> Answer:
    """The answer of a model call: a Responses response (as data), a list of them (a
    generation span's ``output``), or Chat Completions data."""
    if isinstance(output, Sequence) and not isinstance(output, str):
        answers = [model_answer(item) for item in output]
        merged = Answer()
        for answer in answers:
            merged.text += answer.text
            merged.tool_calls += answer.tool_calls
        return merged
    if not isinstance(output, Mapping):
        return Answer()
    if "choices" in output:
        return read_answer("chat", output)
    if "output" in output:
        return read_answer("responses", output)
    content = output.get("content")  # a bare assistant message
    answer = Answer()
    if output.get("role") == "assistant" and isinstance(content, str):
        answer.text.append(content)
    return answer


def _dump(obj: Any) -> Any:
    dump = getattr(obj, "model_dump", None)
    return dump(mode="json") if callable(dump) else obj


def agent_model(agent: Agent[Any]) -> str:
    """The model name an agent calls (a string, or a Model object's ``model``)."""
    model = agent.model
    name = model if isinstance(model, str) else getattr(model, "model", None)
    return str(name) if name else UNKNOWN


# --- obeying through the SDK -----------------------------------------------------------------

_PASSING: dict[type[BaseException], type[BaseException]] = {}


def passing_through(exc: GovernorError) -> GovernorError:
    """``exc`` as an instance of a subclass of its own class *and* of ``AgentsException``: the
    SDK re-raises AgentsExceptions from hooks as they are (any other error it wraps in a
    UserError), so ``except StepBlocked`` still catches it."""
    cls = type(exc)
    passing = _PASSING.get(cls)
    if passing is None:
        passing = type(cls.__name__, (cls, AgentsException), {"__module__": cls.__module__})
        _PASSING[cls] = passing
    new: Any = passing.__new__(passing)
    new.__dict__.update(exc.__dict__)
    new.args = exc.args
    new.run_data = None
    new.__cause__ = exc.__cause__
    return new  # type: ignore[no-any-return]


# --- the processor ---------------------------------------------------------------------------


@dataclass
class _Turn:
    session: Session
    #: the trace has a group_id: a turn of a conversation that goes on after it
    conversation: bool
    error_type: str | None = None
    #: function spans the hooks refused (recorded BLOCKED already), and tool call ids by span
    refused: set[str] = field(default_factory=set)
    call_ids: dict[str, str] = field(default_factory=dict)


class GovernorTracingProcessor(TracingProcessor):
    """Records the SDK's traces as Governor sessions (module doc)."""

    def __init__(self, gov: Governor, *, provider: str | None = "openai") -> None:
        self.gov = gov
        self.provider = provider
        self.problems: Counter[str] = Counter()
        self._turns: dict[str, _Turn] = {}
        #: open sessions by id, so the next trace of a conversation continues it
        self._sessions: dict[str, Session] = {}
        #: traces whose session was refused at its start (a concurrency cap), for the hooks
        self._refused: dict[str, GovernorError] = {}

    # --- what the hooks ask ------------------------------------------------------------------

    def turn(self, trace_id: str | None = None) -> _Turn | None:
        """The open turn of ``trace_id`` (default: the SDK's current trace)."""
        if trace_id is None:
            current = get_current_trace()
            trace_id = current.trace_id if current is not None else None
        return self._turns.get(trace_id) if trace_id else None

    def session(self, trace_id: str | None = None) -> Session | None:
        turn = self.turn(trace_id)
        return turn.session if turn is not None else None

    # --- traces ------------------------------------------------------------------------------

    def on_trace_start(self, trace: Trace) -> None:
        try:
            data = trace.export() or {}
            group = data.get("group_id")
            session_id = group if isinstance(group, str) and group else trace.trace_id
            conversation = isinstance(group, str) and bool(group)
            session = self._sessions.get(session_id)
            if session is None:
                metadata = data.get("metadata") or {}

                def meta(name: str) -> str | None:
                    value = metadata.get(name)
                    return value if isinstance(value, str) else None

                session = self.gov.session(
                    session_id,
                    category=meta("category"),
                    prompt_version=meta("prompt_version"),
                    model_version=meta("model_version"),
                    tool_schema_version=meta("tool_schema_version"),
                )
                session.start()
                self._sessions[session_id] = session
            self._turns[trace.trace_id] = _Turn(session, conversation)
        except GovernorError as exc:
            # a concurrency cap refused the session: the SDK swallows a processor's errors, so
            # the hooks raise it before the run's first model call
            self._refused[trace.trace_id] = exc
        except Exception as exc:
            self._problem("record_failed", exc)

    def refusal(self) -> GovernorError | None:
        """Why the current trace's session was refused at its start, if it was."""
        current = get_current_trace()
        return self._refused.get(current.trace_id) if current is not None else None

    def on_trace_end(self, trace: Trace) -> None:
        if self._refused.pop(trace.trace_id, None) is not None:
            return
        turn = self._turns.pop(trace.trace_id, None)
        if turn is None:
            self._problem("unmatched_trace")
            return
        session = turn.session
        if session.killed_by is not None:
            self.end(session.session_id)
        elif not turn.conversation:  # the trace was the whole session
            if turn.error_type is not None:
                self.end(session.session_id, status="ERROR", error_type=turn.error_type)
            else:
                self.end(session.session_id)

    def end(
        self, session_id: str, *, status: str | None = None, error_type: str | None = None
    ) -> None:
        """End a conversation's session (SESSION_END; KILLED if a KILL stopped it). Traces
        without a ``group_id`` end their own; a conversation's ends here, at :meth:`close`, or
        as TIMEOUT after the worker's idle timeout."""
        session = self._sessions.pop(session_id, None)
        if session is None:
            return
        try:
            if session.killed_by is not None:
                session.finish()
            else:
                session.finish(status=status or "OK", error_type=error_type)
        except Exception as exc:
            self._problem("record_failed", exc)

    def close(self) -> None:
        """End every conversation still open."""
        for session_id in list(self._sessions):
            self.end(session_id)

    # --- spans -------------------------------------------------------------------------------

    def on_span_start(self, span: Span[Any]) -> None:
        pass

    def on_span_end(self, span: Span[Any]) -> None:
        turn = self._turns.get(span.trace_id)
        if turn is None:
            return  # a span outside any trace this processor saw start
        try:
            kind = span.span_data.type
            if kind in ("response", "generation"):
                self._llm(turn, span, kind)
            elif kind == "function":
                self._tool(turn, span)
            elif kind == "agent" and span.error is not None and turn.error_type is None:
                turn.error_type = "AgentError"
        except Exception as exc:
            self._problem("record_failed", exc)

    def _times(self, span: Span[Any]) -> tuple[int | None, float]:
        start = parse_time_us(span.started_at)
        end = parse_time_us(span.ended_at)
        duration_ms = (end - start) / 1000 if start is not None and end is not None else 0.0
        return start, max(duration_ms, 0.0)

    def _llm(self, turn: _Turn, span: Span[Any], kind: str) -> None:
        data = span.span_data
        if kind == "response":
            response = _dump(data.response)
            model = response.get("model") if isinstance(response, Mapping) else None
            model = model if isinstance(model, str) and model else UNKNOWN
            instructions = response.get("instructions") if isinstance(response, Mapping) else None
            content = model_input(model, instructions, data.input)
            answer = model_answer(response)
        else:
            model = data.model or UNKNOWN
            content = model_input(model, None, data.input, chat=True) if data.input else []
            answer = model_answer(data.output)
        usage = span_usage(data.usage) or answer.usage
        if answer.text:
            content.append(("ASSISTANT", "".join(answer.text)))
        start_us, duration_ms = self._times(span)
        turn.session.llm_call(
            obey=False,
            model=model,
            provider=self.provider,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_input_tokens=usage.cache_read_input_tokens,
            reasoning_output_tokens=usage.reasoning_output_tokens,
            duration_ms=duration_ms,
            start_us=start_us,
            status="ERROR" if span.error is not None else "OK",
            error_type="ModelError" if span.error is not None else None,
            content=content,
        )

    def _tool(self, turn: _Turn, span: Span[Any]) -> None:
        if span.span_id in turn.refused:
            turn.refused.discard(span.span_id)
            return  # refused by the hooks: recorded BLOCKED already
        data = span.span_data
        start_us, duration_ms = self._times(span)
        turn.session.tool_call(
            obey=False,
            name=data.name or UNKNOWN,
            args=data.input or None,
            result=None if span.error is not None or data.output is None else str(data.output),
            call_id=turn.call_ids.pop(span.span_id, None),
            duration_ms=duration_ms,
            start_us=start_us,
            status="ERROR" if span.error is not None else "OK",
            error_type="ToolError" if span.error is not None else None,
        )

    # --- lifecycle ---------------------------------------------------------------------------

    def shutdown(self) -> None:
        self.close()
        self.force_flush()

    def force_flush(self) -> None:
        self.gov.emitter.flush()

    def _problem(self, kind: str, exc: BaseException | None = None) -> None:
        self.problems[kind] += 1
        level = logging.WARNING if self.problems[kind] == 1 else logging.DEBUG
        log.log(
            level,
            "governor agents processor: %s (%d so far)%s",
            kind,
            self.problems[kind],
            f": {exc!r}" if exc else "",
        )


class GovernorRunHooks(RunHooks[Any]):
    """Applies decisions and client checks before each model and tool call of a run (module
    doc), in the session ``processor`` opened for the run's trace."""

    def __init__(self, processor: GovernorTracingProcessor) -> None:
        self.processor = processor

    def _session(self) -> Session:
        refused = self.processor.refusal()
        if refused is not None:
            raise passing_through(refused)
        session = self.processor.session()
        if session is None:
            raise RuntimeError(
                "GovernorRunHooks found no Governor session for this run: add the processor "
                "with agents.add_trace_processor(processor) and keep tracing enabled"
            )
        return session

    def _ended_by(self, exc: GovernorError) -> None:
        """The run ends with ``exc``: its session ends ERROR naming it (KILLED for a KILL)."""
        turn = self.processor.turn()
        if turn is not None:
            turn.error_type = type(exc).__name__

    async def on_llm_start(
        self,
        context: RunContextWrapper[Any],
        agent: Agent[Any],
        system_prompt: str | None,
        input_items: list[Any],
    ) -> None:
        session = self._session()
        try:
            await session.check_async()
            if session.gov.checks:
                model = agent_model(agent)
                max_tokens = agent.model_settings.max_tokens
                delay = session.guard_llm(
                    model=model,
                    provider=self.processor.provider,
                    content=model_input(model, system_prompt, [_dump(i) for i in input_items]),
                    max_output_tokens=max_tokens if isinstance(max_tokens, int) else None,
                )
                if delay > 0:
                    import asyncio

                    await asyncio.sleep(delay)
        except GovernorError as exc:
            self._ended_by(exc)
            raise passing_through(exc) from None

    async def on_tool_start(
        self, context: RunContextWrapper[Any], agent: Agent[Any], tool: Tool
    ) -> None:
        session = self._session()
        turn = self.processor.turn()
        span = get_current_span()
        span_id = span.span_id if span is not None and span.span_data.type == "function" else None
        call_id = context.tool_call_id if isinstance(context, ToolContext) else None
        if turn is not None and span_id is not None and call_id:
            turn.call_ids[span_id] = call_id
        try:
            await session.check_async()
            if session.gov.checks:
                args = context.tool_arguments if isinstance(context, ToolContext) else None
                session.guard_tool(name=tool.name, args=args or None, call_id=call_id)
        except GovernorError as exc:
            if turn is not None and span_id is not None:
                turn.refused.add(span_id)
            self._ended_by(exc)
            raise passing_through(exc) from None
