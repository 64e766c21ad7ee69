"""The OTel adapter's pure mapping: span attributes and events → native client arguments."""

from __future__ import annotations

import json
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.trace import Status, StatusCode

from streams.client.otel import (
    SpanEvent,
    SpanFacts,
    conversation_id,
    error_type,
    evaluations,
    facts_of,
    llm_call_fields,
    message_segments,
    operation,
    session_fields,
    session_outcome,
    tool_call_fields,
)

START_NS = 1_760_000_000_123_456_789


def facts(
    attrs: dict[str, Any],
    *,
    duration_ns: int = 250_000_000,
    error: bool = False,
    events: tuple[SpanEvent, ...] = (),
) -> SpanFacts:
    return SpanFacts(attrs, START_NS, START_NS + duration_ns, error, events)


def test_llm_span_maps_every_semconv_attribute() -> None:
    fields = llm_call_fields(
        facts(
            {
                "gen_ai.operation.name": "generate_content",
                "gen_ai.request.model": "gemini-2.5-pro",
                "gen_ai.response.model": "gemini-2.5-pro-002",
                "gen_ai.provider.name": "gcp.gemini",
                "gen_ai.system": "legacy-ignored",
                "gen_ai.usage.input_tokens": 1200,
                "gen_ai.usage.output_tokens": 90,
                "gen_ai.usage.cache_read.input_tokens": 800,
                "gen_ai.usage.cache_creation.input_tokens": 100,
                "gen_ai.usage.reasoning.output_tokens": 12,
                "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "be brief"}]),
                "gen_ai.input.messages": json.dumps(
                    [{"role": "user", "parts": [{"type": "text", "content": "where is order 7?"}]}]
                ),
                "gen_ai.output.messages": json.dumps(
                    [
                        {
                            "role": "assistant",
                            "parts": [{"type": "text", "content": "shipped"}],
                            "finish_reason": "stop",
                        }
                    ]
                ),
            }
        )
    )
    assert fields == {
        "model": "gemini-2.5-pro",
        "provider": "gcp.gemini",
        "input_tokens": 1200,
        "output_tokens": 90,
        "cache_read_input_tokens": 800,
        "cache_write_input_tokens": 100,
        "reasoning_output_tokens": 12,
        "operation": "generate_content",
        "duration_ms": 250.0,
        "start_us": START_NS // 1000,
        "status": "OK",
        "error_type": None,
        "content": [
            ("SYSTEM", "be brief"),
            ("USER", "where is order 7?"),
            ("ASSISTANT", "shipped"),
        ],
    }


def test_llm_span_fallbacks_legacy_names_and_missing_usage() -> None:
    legacy = llm_call_fields(
        facts(
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.response.model": "gpt-4o-2024-08-06",
                "gen_ai.system": "openai",
                "gen_ai.usage.prompt_tokens": 7,
                "gen_ai.usage.completion_tokens": 2,
                "gen_ai.usage.cache_read_input_tokens": 3,
                "gen_ai.usage.reasoning_output_tokens": 1,
            }
        )
    )
    assert (legacy["model"], legacy["provider"]) == ("gpt-4o-2024-08-06", "openai")
    assert (legacy["input_tokens"], legacy["output_tokens"]) == (7, 2)
    assert (legacy["cache_read_input_tokens"], legacy["reasoning_output_tokens"]) == (3, 1)
    bare = llm_call_fields(facts({"gen_ai.usage.input_tokens": True}))
    # a boolean is no token count; unknown usage is 0 as in the native client
    assert (bare["model"], bare["provider"], bare["input_tokens"], bare["output_tokens"]) == (
        "unknown",
        None,
        0,
        0,
    )
    assert (bare["operation"], bare["cache_read_input_tokens"], bare["content"]) == (
        "chat",
        None,
        [],
    )


@pytest.mark.parametrize(
    ("attrs", "error", "events", "expected"),
    [
        ({}, False, (), None),
        ({"error.type": "RateLimitError"}, False, (), "RateLimitError"),
        ({"error.type": "timeout"}, True, (), "timeout"),
        (
            {},
            True,
            (SpanEvent("exception", 1, {"exception.type": "httpx.ConnectError"}),),
            "ConnectError",
        ),
        ({}, True, (), "_OTHER"),
    ],
)
def test_error_type_prefers_the_attribute_then_the_recorded_exception(
    attrs: dict[str, Any], error: bool, events: tuple[SpanEvent, ...], expected: str | None
) -> None:
    f = facts(attrs, error=error, events=events)
    assert error_type(f) == expected
    assert llm_call_fields(f)["status"] == ("OK" if expected is None else "ERROR")
    assert tool_call_fields(f)["error_type"] == expected


def test_session_outcome_is_killed_when_the_agent_was_killed() -> None:
    ok, failed = facts({}), facts({"error.type": "ValueError"}, error=True)
    killed_by_exception = facts(
        {}, error=True, events=(SpanEvent("exception", 1, {"exception.type": "SessionKilled"}),)
    )
    assert session_outcome(ok, killed=False) == ("OK", None)
    assert session_outcome(failed, killed=False) == ("ERROR", "ValueError")
    assert session_outcome(killed_by_exception, killed=False) == ("KILLED", None)
    # the agent caught SessionKilled and returned normally: still killed, as in the native client
    assert session_outcome(ok, killed=True) == ("KILLED", None)


def test_tool_span() -> None:
    fields = tool_call_fields(
        facts(
            {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "lookup_order",
                "gen_ai.tool.call.id": "call-1",
                "gen_ai.tool.call.arguments": '{"id": 7}',
                "gen_ai.tool.call.result": '{"status": "shipped"}',
            },
            duration_ns=42_000_000,
        )
    )
    assert fields == {
        "name": "lookup_order",
        "call_id": "call-1",
        "args": '{"id": 7}',
        "result": '{"status": "shipped"}',
        "duration_ms": 42.0,
        "start_us": START_NS // 1000,
        "status": "OK",
        "error_type": None,
    }
    assert tool_call_fields(facts({}))["name"] == "unknown"


def test_evaluations_need_a_name_and_a_numeric_score() -> None:
    events = (
        SpanEvent(
            "gen_ai.evaluation.result",
            5_000_999,
            {"gen_ai.evaluation.name": "relevance", "gen_ai.evaluation.score.value": 0.9},
        ),
        SpanEvent(
            "gen_ai.evaluation.result",
            6_000_000,
            {"gen_ai.evaluation.name": "tone", "gen_ai.evaluation.score.label": "polite"},
        ),
        SpanEvent("gen_ai.evaluation.result", 7_000_000, {"gen_ai.evaluation.score.value": 1}),
        SpanEvent(
            "exception",
            8_000_000,
            {"gen_ai.evaluation.name": "x", "gen_ai.evaluation.score.value": 1},
        ),
        SpanEvent(
            "gen_ai.evaluation.result",
            9_000_000,
            {"gen_ai.evaluation.name": "exact", "gen_ai.evaluation.score.value": 1},
        ),
    )
    assert evaluations(facts({}, events=events)) == [
        {"name": "relevance", "score": 0.9, "start_us": 5_000},
        {"name": "exact", "score": 1.0, "start_us": 9_000},
    ]


def test_session_fields_fall_back_to_the_requested_model_only_on_agent_spans() -> None:
    attrs = {
        "governor.category": "billing",
        "governor.prompt_version": "p7",
        "governor.tool_schema_version": "t3",
        "gen_ai.request.model": "gpt-4o",
    }
    assert session_fields(attrs, agent_span=True) == {
        "category": "billing",
        "prompt_version": "p7",
        "model_version": "gpt-4o",
        "tool_schema_version": "t3",
    }
    assert session_fields(attrs, agent_span=False)["model_version"] is None
    explicit = {**attrs, "governor.model_version": "2025-06"}
    assert session_fields(explicit, agent_span=True)["model_version"] == "2025-06"


def test_conversation_and_operation_must_be_non_empty_strings() -> None:
    assert conversation_id({"gen_ai.conversation.id": "c-1"}) == "c-1"
    assert conversation_id({"gen_ai.conversation.id": 42}) is None
    assert conversation_id({"gen_ai.conversation.id": ""}) is None
    assert operation({"gen_ai.operation.name": "chat"}) == "chat"
    assert operation({}) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, []),
        ("", []),
        # semconv shape, every part type
        (
            json.dumps(
                [
                    {"role": "system", "parts": [{"type": "text", "content": "rules"}]},
                    {
                        "role": "user",
                        "parts": [
                            {"type": "text", "content": "hi"},
                            {"type": "uri", "uri": "https://x/y.png"},
                        ],
                    },
                    {
                        "role": "assistant",
                        "parts": [
                            {"type": "reasoning", "content": "think"},
                            {
                                "type": "tool_call",
                                "id": "c1",
                                "name": "f",
                                "arguments": {"b": 1, "a": 2},
                            },
                        ],
                    },
                    {
                        "role": "tool",
                        "parts": [{"type": "tool_call_response", "id": "c1", "response": "42"}],
                    },
                ]
            ),
            [
                ("SYSTEM", "rules"),
                ("USER", "hi"),
                ("ASSISTANT", "think"),
                ("TOOL_ARGUMENTS", '{"a": 2, "b": 1}'),
                ("TOOL_RESULT", "42"),
            ],
        ),
        # older instrumentations: plain content, OpenAI-style blocks, a tool message
        (
            json.dumps(
                [
                    {"role": "user", "content": "plain"},
                    {"role": "user", "content": [{"type": "text", "text": "block"}]},
                    {"role": "tool", "content": "result"},
                ]
            ),
            [("USER", "plain"), ("USER", "block"), ("TOOL_RESULT", "result")],
        ),
        # unknown roles keep the attribute's default; a single message is fine too
        (
            json.dumps({"role": "critic", "parts": [{"type": "text", "content": "meh"}]}),
            [("USER", "meh")],
        ),
        # already-parsed values (an attribute sequence of strings)
        (("one", "two"), [("USER", "one"), ("USER", "two")]),
        # not JSON: kept whole, so the PII scanner still sees it
        ("call me at 555-0100", [("USER", "call me at 555-0100")]),
    ],
)
def test_message_segments(raw: Any, expected: list[tuple[str, str]]) -> None:
    assert message_segments(raw, "USER") == expected


def test_system_instructions_are_bare_parts() -> None:
    raw = json.dumps([{"type": "text", "content": "be brief"}, {"type": "text", "text": "no"}])
    assert message_segments(raw, "SYSTEM") == [("SYSTEM", "be brief"), ("SYSTEM", "no")]


def test_facts_of_a_real_sdk_span() -> None:
    tracer = TracerProvider().get_tracer("t")
    span = tracer.start_span(
        "chat", start_time=START_NS, attributes={"gen_ai.operation.name": "chat"}
    )
    span.add_event("gen_ai.evaluation.result", {"gen_ai.evaluation.name": "x"}, START_NS + 5)
    span.set_status(Status(StatusCode.ERROR, "boom"))
    span.end(end_time=START_NS + 1_500_000)
    assert isinstance(span, ReadableSpan)
    f = facts_of(span)
    assert (f.start_us, f.end_us, f.duration_ms, f.error) == (
        START_NS // 1000,
        (START_NS + 1_500_000) // 1000,
        1.5,
        True,
    )
    assert f.attributes == {"gen_ai.operation.name": "chat"}
    assert f.events == (
        SpanEvent("gen_ai.evaluation.result", START_NS + 5, {"gen_ai.evaluation.name": "x"}),
    )
