"""The shared GenAI mapping: operations, usage, MCP, evaluations, the conversation chain."""

from __future__ import annotations

from typing import Any

import pytest

from streams.ingest.mapping import (
    ConversationSource,
    SpanEvent,
    SpanFacts,
    SpanKind,
    StepClass,
    cache_creation_tokens,
    classify,
    conversation_of,
    evaluation_fields,
    evaluations,
    llm_call_fields,
    mcp_server,
    tool_call_fields,
    unscored_evaluations,
)

START_NS = 1_760_000_000_000_000_000


def span(
    attrs: dict[str, Any],
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    name: str = "",
    events: tuple[SpanEvent, ...] = (),
) -> SpanFacts:
    return SpanFacts(attrs, START_NS, START_NS + 40_000_000, events=events, kind=kind, name=name)


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        ("invoke_agent", StepClass.AGENT),
        ("invoke_workflow", StepClass.AGENT),
        ("chat", StepClass.LLM),
        ("text_completion", StepClass.LLM),
        ("generate_content", StepClass.LLM),
        ("embeddings", StepClass.LLM),
        ("execute_tool", StepClass.TOOL),
        ("retrieval", StepClass.TOOL),
        ("create_agent", StepClass.IGNORED),
        ("summon_demon", StepClass.UNKNOWN_OPERATION),
        (None, StepClass.NOT_GENAI),
    ],
)
def test_every_operation_of_the_conventions_has_a_class(
    op: str | None, expected: StepClass
) -> None:
    attrs = {} if op is None else {"gen_ai.operation.name": op}
    assert classify(span(attrs)) is expected


def test_mcp_tool_calls_count_on_the_client_side_only() -> None:
    attrs = {"mcp.method.name": "tools/call", "gen_ai.tool.name": "get_weather"}
    assert classify(span(attrs, kind=SpanKind.CLIENT)) is StepClass.MCP_TOOL
    # the server's span of the same call would count it twice
    assert classify(span(attrs, kind=SpanKind.SERVER)) is StepClass.IGNORED
    # other MCP methods are no steps
    assert classify(span({"mcp.method.name": "tools/list"})) is StepClass.NOT_GENAI


def test_mcp_tool_name_falls_back_to_the_span_name_and_the_server_is_named() -> None:
    attrs = {"mcp.method.name": "tools/call", "server.address": "mcp.internal", "server.port": 8080}
    fields = tool_call_fields(span(attrs, kind=SpanKind.CLIENT, name="tools/call get_weather"))
    assert fields["name"] == "get_weather"
    assert mcp_server(attrs) == "mcp.internal:8080"
    assert mcp_server({"network.transport": "pipe"}) == "pipe"
    assert mcp_server({}) == "unknown"


def test_retrieval_is_named_after_its_data_source() -> None:
    attrs = {
        "gen_ai.operation.name": "retrieval",
        "gen_ai.data_source.id": "kb-orders",
        "gen_ai.retrieval.query.text": "where is order 7",
    }
    fields = tool_call_fields(span(attrs))
    assert (fields["name"], fields["args"]) == ("kb-orders", "where is order 7")
    assert tool_call_fields(span({"gen_ai.operation.name": "retrieval"}))["name"] == "retrieval"


def test_usage_with_both_cache_kinds_and_reasoning() -> None:
    attrs = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "claude-sonnet-4",
        "gen_ai.usage.input_tokens": 5000,
        "gen_ai.usage.output_tokens": 300,
        "gen_ai.usage.cache_read.input_tokens": 3000,
        "gen_ai.usage.cache_creation.input_tokens": 1500,
        "gen_ai.usage.reasoning.output_tokens": 120,
    }
    fields = llm_call_fields(span(attrs))
    assert (fields["input_tokens"], fields["output_tokens"]) == (5000, 300)
    assert (fields["cache_read_input_tokens"], fields["reasoning_output_tokens"]) == (3000, 120)
    assert cache_creation_tokens(attrs) == 1500
    assert cache_creation_tokens({"gen_ai.usage.cache_creation_input_tokens": 9}) == 9
    assert cache_creation_tokens({"gen_ai.usage.cache_creation.input_tokens": True}) is None


def test_embeddings_keep_their_operation() -> None:
    attrs = {
        "gen_ai.operation.name": "embeddings",
        "gen_ai.request.model": "text-embedding-3-small",
        "gen_ai.usage.input_tokens": 812,
    }
    fields = llm_call_fields(span(attrs))
    assert (fields["operation"], fields["input_tokens"], fields["output_tokens"]) == (
        "embeddings",
        812,
        0,
    )


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        (
            {"gen_ai.conversation.id": "c1", "session.id": "s1", "mcp.session.id": "m1"},
            ("c1", ConversationSource.CONVERSATION_ID),
        ),
        ({"session.id": "s1", "mcp.session.id": "m1"}, ("s1", ConversationSource.SESSION_ID)),
        ({"mcp.session.id": "m1"}, ("m1", ConversationSource.MCP_SESSION_ID)),
        ({"gen_ai.conversation.id": "", "session.id": 7}, None),
        ({}, None),
    ],
)
def test_the_conversation_chain(
    attrs: dict[str, Any], expected: tuple[str, ConversationSource] | None
) -> None:
    assert conversation_of(attrs) == expected


def test_evaluations_from_span_events_and_log_attributes() -> None:
    scored = SpanEvent(
        "gen_ai.evaluation.result",
        START_NS + 5,
        {"gen_ai.evaluation.name": "faithfulness", "gen_ai.evaluation.score.value": 0.25},
    )
    label_only = SpanEvent(
        "gen_ai.evaluation.result",
        START_NS + 6,
        {"gen_ai.evaluation.name": "tone", "gen_ai.evaluation.score.label": "polite"},
    )
    facts = span({}, events=(scored, label_only, SpanEvent("exception", START_NS, {})))
    assert evaluations(facts) == [
        {"name": "faithfulness", "score": 0.25, "start_us": (START_NS + 5) // 1000}
    ]
    assert unscored_evaluations(facts) == 1
    assert evaluation_fields(
        {"gen_ai.evaluation.name": "x", "gen_ai.evaluation.score.value": 1}, 2_000
    ) == {"name": "x", "score": 1.0, "start_us": 2}
