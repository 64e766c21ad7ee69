"""The OpenTelemetry adapter against the real broker: spans in, StepEvents on ``gov.events`` out."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Status, StatusCode, Tracer

from streams.client import Governor, Session, SessionKilled
from streams.client.otel import GovernorSpanProcessor
from streams.codec import Codecs
from streams.control import SigningKey, session_target
from streams.pipeline.bypass import CLIENT_ID_ATTR
from streams.settings import Settings
from tests.integration.client.conftest import GovernorFactory, decide
from tests.kafka_helpers import consume

T0_US = 1_760_000_000_000_000


def _events(settings: Settings, count: int) -> list[dict[str, Any]]:
    """``count`` events in offset order (one session id → one partition → emission order)."""
    codecs = Codecs.load(settings.schemas_dir)
    messages = consume(settings.bootstrap, settings.topic("events"), count)
    ordered = sorted(messages, key=lambda m: (m.partition(), m.offset()))
    return [codecs.step_event.decode(m.value() or b"") for m in ordered]


# --- the toy agent, described once and driven two ways --------------------------------------


@dataclass(frozen=True)
class LlmStep:
    at_us: int
    duration_ms: float
    model: str
    provider: str
    input_tokens: int
    output_tokens: int
    prompt: list[tuple[str, str]]
    answer: str
    cache_read_input_tokens: int | None = None
    evaluations: list[tuple[str, float, int]] = field(default_factory=list)


@dataclass(frozen=True)
class ToolStep:
    at_us: int
    duration_ms: float
    name: str
    call_id: str
    args: dict[str, Any]
    result: dict[str, Any] | None
    error_type: str | None = None


SESSION = {
    "category": "billing",
    "prompt_version": "p7",
    "model_version": "2025-06",
    "tool_schema_version": "t3",
}
TOY: list[LlmStep | ToolStep] = [
    LlmStep(
        T0_US + 1_000,
        812.5,
        "gpt-4o-mini",
        "openai",
        1200,
        90,
        [("SYSTEM", "be brief"), ("USER", "where is order 7?")],
        "Let me look that up.",
        cache_read_input_tokens=800,
    ),
    ToolStep(T0_US + 900_000, 42.0, "lookup_order", "call-1", {"id": 7}, {"status": "shipped"}),
    ToolStep(T0_US + 950_000, 3.25, "track", "call-2", {"id": 7}, None, error_type="TimeoutError"),
    LlmStep(
        T0_US + 1_000_000,
        400.0,
        "claude-sonnet-4",
        "anthropic",
        50,
        5,
        [("USER", "summarise")],
        "Order 7 shipped.",
        evaluations=[("relevance", 0.91, T0_US + 1_500_000)],
    ),
]
AGENT_EVALUATION = ("helpfulness", 0.83, T0_US + 1_600_000)
END_US = T0_US + 2_000_000


def run_native(gov: Governor, session_id: str) -> None:
    s = gov.session(
        session_id,
        category=SESSION["category"],
        prompt_version=SESSION["prompt_version"],
        model_version=SESSION["model_version"],
        tool_schema_version=SESSION["tool_schema_version"],
    )
    s.start(start_us=T0_US)
    for step in TOY:
        if isinstance(step, LlmStep):
            s.llm_call(
                model=step.model,
                provider=step.provider,
                input_tokens=step.input_tokens,
                output_tokens=step.output_tokens,
                cache_read_input_tokens=step.cache_read_input_tokens,
                duration_ms=step.duration_ms,
                start_us=step.at_us,
                content=[*step.prompt, ("ASSISTANT", step.answer)],
            )
            for name, score, at_us in step.evaluations:
                s.evaluation(name=name, score=score, start_us=at_us)
        else:
            s.tool_call(
                name=step.name,
                args=step.args,
                result=step.result,
                call_id=step.call_id,
                duration_ms=step.duration_ms,
                start_us=step.at_us,
                status="ERROR" if step.error_type else "OK",
                error_type=step.error_type,
            )
    name, score, at_us = AGENT_EVALUATION
    s.evaluation(name=name, score=score, start_us=at_us)
    s.finish(end_us=END_US)


def _ns(us: int) -> int:
    return us * 1000


def _messages(segments: list[tuple[str, str]]) -> str:
    """``gen_ai.input.messages`` in the semconv shape (role + parts)."""
    roles = {"SYSTEM": "system", "USER": "user", "ASSISTANT": "assistant"}
    return json.dumps(
        [
            {"role": roles[role], "parts": [{"type": "text", "content": text}]}
            for role, text in segments
        ]
    )


def run_otel(tracer: Tracer, session_id: str) -> None:
    agent = tracer.start_span(
        "invoke_agent support-bot",
        start_time=_ns(T0_US),
        attributes={
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.conversation.id": session_id,
            "gen_ai.agent.name": "support-bot",
            **{f"governor.{k}": v for k, v in SESSION.items()},
        },
    )
    parent = trace.set_span_in_context(agent)
    for i, step in enumerate(TOY):
        # only the first child names its conversation: the others inherit it from the parent,
        # as spans from provider instrumentations do
        attrs: dict[str, Any] = {"gen_ai.conversation.id": session_id} if i == 0 else {}
        if isinstance(step, LlmStep):
            attrs |= {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": step.model,
                "gen_ai.provider.name": step.provider,
                "gen_ai.input.messages": _messages(step.prompt),
            }
            span = tracer.start_span(
                f"chat {step.model}", parent, start_time=_ns(step.at_us), attributes=attrs
            )
            span.set_attributes(
                {
                    "gen_ai.usage.input_tokens": step.input_tokens,
                    "gen_ai.usage.output_tokens": step.output_tokens,
                    "gen_ai.response.model": step.model + "-2025-01-01",
                    "gen_ai.output.messages": json.dumps(
                        [
                            {
                                "role": "assistant",
                                "parts": [{"type": "text", "content": step.answer}],
                                "finish_reason": "stop",
                            }
                        ]
                    ),
                }
            )
            if step.cache_read_input_tokens is not None:
                span.set_attribute(
                    "gen_ai.usage.cache_read.input_tokens", step.cache_read_input_tokens
                )
            for name, score, at_us in step.evaluations:
                span.add_event(
                    "gen_ai.evaluation.result",
                    {"gen_ai.evaluation.name": name, "gen_ai.evaluation.score.value": score},
                    _ns(at_us),
                )
        else:
            attrs |= {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": step.name,
                "gen_ai.tool.call.id": step.call_id,
                "gen_ai.tool.call.arguments": json.dumps(step.args),
            }
            span = tracer.start_span(
                f"execute_tool {step.name}", parent, start_time=_ns(step.at_us), attributes=attrs
            )
            if step.result is not None:
                span.set_attribute("gen_ai.tool.call.result", json.dumps(step.result))
            if step.error_type:
                span.set_attribute("error.type", step.error_type)
                span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=_ns(step.at_us) + round(step.duration_ms * 1_000_000))
    name, score, at_us = AGENT_EVALUATION
    agent.add_event(
        "gen_ai.evaluation.result",
        {"gen_ai.evaluation.name": name, "gen_ai.evaluation.score.value": score},
        _ns(at_us),
    )
    agent.end(end_time=_ns(END_US))


@pytest.fixture
def otel(governor: GovernorFactory) -> Iterator[tuple[Governor, GovernorSpanProcessor, Tracer]]:
    gov = governor(obey=False)
    processor = GovernorSpanProcessor(gov)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    yield gov, processor, provider.get_tracer("toy-agent")
    provider.shutdown()


def _without_ids(event: dict[str, Any]) -> dict[str, Any]:
    attributes = {k: v for k, v in event["attributes"].items() if k != CLIENT_ID_ATTR}
    return {**{k: v for k, v in event.items() if k != "event_id"}, "attributes": attributes}


def test_an_otel_instrumented_agent_produces_the_same_events_as_the_native_client(
    topics: Settings,
    governor: GovernorFactory,
    otel: tuple[Governor, GovernorSpanProcessor, Tracer],
) -> None:
    native = governor(obey=False)
    run_native(native, "toy-1")
    assert native.emitter.flush() == 0
    _, processor, tracer = otel
    run_otel(tracer, "toy-1")
    assert processor.force_flush()

    count = len(TOY) + 4  # SESSION_START, one EVALUATION on a chat span, one on the agent, END
    # both runs acknowledged by the broker, so a shortfall below is the read, not the write
    assert (native.emitter.stats.delivered, native.emitter.stats.failed) == (count, 0)
    assert (processor.gov.emitter.stats.delivered, processor.problems) == (count, {})
    events = _events(topics, 2 * count)
    # one session id → one partition, and the native run was flushed before the OTel run began
    from_native, from_otel = events[:count], events[count:]
    # event_id is a fresh uuid4 per event in both clients and, with the client id each client
    # reports, the only field that differs: the OTel run reads every time from the spans, so
    # times are equal to the microsecond
    strip = [_without_ids(e) for e in (*from_native, *from_otel)]
    assert strip[count:] == strip[:count]
    assert processor.problems == {}

    # the comparison is not vacuous: the events carry what the toy agent did
    kinds = [e["kind"] for e in from_otel]
    assert kinds == [
        "SESSION_START",
        "LLM_CALL",
        "TOOL_CALL",
        "TOOL_CALL",
        "LLM_CALL",
        "EVALUATION",
        "EVALUATION",
        "SESSION_END",
    ]
    assert [e["seq"] for e in from_otel] == list(range(1, count + 1))
    first = from_otel[1]
    assert (first["model"], first["input_tokens"], first["cache_read_input_tokens"]) == (
        "gpt-4o-mini",
        1200,
        800,
    )
    assert (first["start_time_us"], first["duration_us"]) == (T0_US + 1_000, 812_500)
    assert [c["role"] for c in first["content"]] == ["SYSTEM", "USER", "ASSISTANT"]
    assert (from_otel[3]["status"], from_otel[3]["error_type"]) == ("ERROR", "TimeoutError")
    assert from_otel[2]["content"][0] == {"role": "TOOL_ARGUMENTS", "text": '{"id": 7}'}
    assert (from_otel[-1]["duration_us"], from_otel[-1]["category"]) == (2_000_000, "billing")


def test_lazy_sessions_inherited_conversations_errors_kill_and_next_turns(
    topics: Settings,
    signing_key: SigningKey,
    otel: tuple[Governor, GovernorSpanProcessor, Tracer],
) -> None:
    gov, processor, tracer = otel
    # a chat span of a conversation whose agent span was never seen opens the session lazily
    with tracer.start_as_current_span(
        "chat",
        attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.conversation.id": "lazy-1",
            "gen_ai.system": "openai",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.usage.prompt_tokens": 7,
            "gen_ai.usage.completion_tokens": 2,
        },
    ):
        pass
    # two turns of one conversation: the second is a session of its own under the first
    for _turn in range(2):
        with tracer.start_as_current_span(
            "invoke_agent",
            attributes={
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.conversation.id": "conv-2",
                "gen_ai.request.model": "gpt-4o",
            },
        ):
            # a failing provider call, recorded by the SDK as an exception event
            with (
                pytest.raises(ConnectionError),
                tracer.start_as_current_span("chat", attributes={"gen_ai.operation.name": "chat"}),
            ):
                raise ConnectionError("provider down")
            # the toy agent obeys before its next step, as the module doc asks
            processor.check("conv-2")
    # a sub-agent sharing the conversation does not end its parent's session
    with (
        tracer.start_as_current_span(
            "invoke_agent",
            attributes={
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.conversation.id": "conv-4",
            },
        ),
        tracer.start_as_current_span(
            "invoke_agent", attributes={"gen_ai.operation.name": "invoke_agent"}
        ),
        tracer.start_as_current_span(
            "chat", attributes={"gen_ai.operation.name": "chat", "gen_ai.request.model": "m"}
        ),
    ):
        pass
    # a KILL for conv-3: the agent that checks stops, and its session ends KILLED
    decision = signing_key.sign(decide(session_target("conv-3"), "KILL", reason="budget"))
    assert gov.book.offer(decision, gov.now_us()) is None

    def killed_agent() -> None:
        with tracer.start_as_current_span(
            "invoke_agent",
            attributes={
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.conversation.id": "conv-3",
            },
        ):
            processor.check("conv-3")

    with pytest.raises(SessionKilled):
        killed_agent()
    # a GenAI span outside any conversation becomes its trace's session (the fallback counted)
    with tracer.start_as_current_span("chat", attributes={"gen_ai.operation.name": "chat"}):
        pass
    assert processor.force_flush()

    events = _events(topics, 2 + 2 * 3 + 3 + 2 + 2)
    by_session: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_session.setdefault(event["session_id"], []).append(event)
    lazy = by_session["lazy-1"]
    assert [e["kind"] for e in lazy] == ["SESSION_START", "LLM_CALL"]
    assert (lazy[1]["provider"], lazy[1]["input_tokens"], lazy[1]["output_tokens"]) == (
        "openai",
        7,
        2,
    )
    assert lazy[0]["start_time_us"] == lazy[1]["start_time_us"]

    first, second = by_session["conv-2"], by_session["conv-2#2"]
    turns = first + second
    assert [e["seq"] for e in turns] == [1, 2, 3] * 2
    assert [e["kind"] for e in turns] == ["SESSION_START", "LLM_CALL", "SESSION_END"] * 2
    assert second[0]["attributes"]["governor.parent_session_id"] == "conv-2"
    assert "governor.parent_session_id" not in first[0]["attributes"]
    failed = turns[1]
    # the chat span had no conversation id or model: inherited, and flagged as unknown
    assert (failed["status"], failed["error_type"], failed["model"]) == (
        "ERROR",
        "ConnectionError",
        "unknown",
    )
    # no governor.model_version: the agent span's requested model stands in for it
    assert {e["model_version"] for e in turns} == {"gpt-4o"}
    assert turns[2]["status"] == "OK"

    nested = by_session["conv-4"]
    assert [e["kind"] for e in nested] == ["SESSION_START", "LLM_CALL", "SESSION_END"]

    killed = by_session["conv-3"]
    assert [(e["kind"], e["status"]) for e in killed] == [
        ("SESSION_START", "OK"),
        ("SESSION_END", "KILLED"),
    ]
    assert processor.problems == {"no_model": 3}
    assert processor.fallbacks == {"trace_id": 1}
    orphan = [s for s in by_session if len(s) == 32]
    assert [e["kind"] for e in by_session[orphan[0]]] == ["SESSION_START", "LLM_CALL"]


def test_the_processor_never_raises_into_the_sdk(
    otel: tuple[Governor, GovernorSpanProcessor, Tracer], monkeypatch: pytest.MonkeyPatch
) -> None:
    gov, processor, tracer = otel

    def broken(*_args: Any, **_kwargs: Any) -> Session:
        raise RuntimeError("Governor is broken")

    monkeypatch.setattr(gov, "session", broken)
    with tracer.start_as_current_span(
        "invoke_agent",
        attributes={
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.conversation.id": "conv-x",
        },
    ):
        pass
    # start (open the session) and end (open it lazily) both failed, and the agent went on
    assert processor.problems == {"internal_error": 2}


def test_an_agent_span_under_another_conversations_span_names_it_as_its_parent(
    topics: Settings, otel: tuple[Governor, GovernorSpanProcessor, Tracer]
) -> None:
    """An orchestrator agent calls a sub-agent with a conversation of its own: the sub-agent's
    session records the orchestrator's as its parent (cost rolls up over it)."""
    _gov, processor, tracer = otel
    agent = {"gen_ai.operation.name": "invoke_agent"}
    with (
        tracer.start_as_current_span(
            "invoke_agent planner", attributes={**agent, "gen_ai.conversation.id": "plan-1"}
        ),
        tracer.start_as_current_span(
            "invoke_agent researcher", attributes={**agent, "gen_ai.conversation.id": "research-1"}
        ),
    ):
        pass
    assert processor.force_flush()
    events = _events(topics, 4)
    starts = {e["session_id"]: e for e in events if e["kind"] == "SESSION_START"}
    assert starts["research-1"]["attributes"].get("governor.parent_session_id") == "plan-1"
    assert "governor.parent_session_id" not in starts["plan-1"]["attributes"]
