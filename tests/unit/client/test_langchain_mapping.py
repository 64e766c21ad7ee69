"""The LangChain adapter's pure helpers: model names, token usage and content segments."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, Generation, LLMResult

from streams.client.langchain import (
    message_segments,
    model_name,
    output_segments,
    response_model,
    usage,
)


@pytest.mark.parametrize(
    ("params", "serialized", "metadata", "expected"),
    [
        ({"model": "gpt-4o", "model_name": "x"}, {}, {"ls_model_name": "y"}, "gpt-4o"),
        ({"model_name": "gpt-4o-mini"}, {}, None, "gpt-4o-mini"),
        ({"model_id": "anthropic.claude-3"}, None, None, "anthropic.claude-3"),
        ({"deployment_name": "prod-4o"}, None, None, "prod-4o"),
        ({"_type": "fake"}, {"kwargs": {"model": "from-kwargs"}}, None, "from-kwargs"),
        (None, {"kwargs": "not a mapping"}, {"ls_model_name": "from-metadata"}, "from-metadata"),
        ({"model": ""}, {}, {}, None),
    ],
)
def test_model_name_precedence(
    params: dict[str, Any] | None,
    serialized: dict[str, Any] | None,
    metadata: dict[str, Any] | None,
    expected: str | None,
) -> None:
    assert model_name(params, serialized, metadata) == expected


def _chat(message: AIMessage) -> ChatGeneration:
    return ChatGeneration(message=message)


def test_usage_sums_usage_metadata_with_details() -> None:
    result = LLMResult(
        generations=[
            [
                _chat(
                    AIMessage(
                        "a",
                        usage_metadata={
                            "input_tokens": 100,
                            "output_tokens": 20,
                            "total_tokens": 120,
                            "input_token_details": {"cache_read": 60},
                            "output_token_details": {"reasoning": 5},
                        },
                    )
                ),
                _chat(
                    AIMessage(
                        "b",
                        usage_metadata={"input_tokens": 1, "output_tokens": 2, "total_tokens": 3},
                    )
                ),
            ]
        ],
        llm_output={"token_usage": {"prompt_tokens": 999, "completion_tokens": 999}},
    )
    # usage_metadata wins over the provider's llm_output, which would count twice
    assert usage(result) == {
        "input_tokens": 101,
        "output_tokens": 22,
        "cache_read_input_tokens": 60,
        "reasoning_output_tokens": 5,
    }


def test_usage_falls_back_to_llm_output_token_usage() -> None:
    result = LLMResult(
        generations=[[Generation(text="done")]],
        llm_output={"token_usage": {"prompt_tokens": 7, "completion_tokens": 3}},
    )
    assert usage(result) == {
        "input_tokens": 7,
        "output_tokens": 3,
        "cache_read_input_tokens": None,
        "reasoning_output_tokens": None,
    }
    anthropic_style = LLMResult(
        generations=[[Generation(text="x")]],
        llm_output={"usage": {"input_tokens": 4, "output_tokens": 1}},
    )
    anthropic = usage(anthropic_style)
    assert (anthropic["input_tokens"], anthropic["output_tokens"]) == (4, 1)
    nothing = usage(LLMResult(generations=[[Generation(text="x")]]))
    assert (nothing["input_tokens"], nothing["output_tokens"]) == (0, 0)


def test_message_segments_by_message_type() -> None:
    segments = message_segments(
        [
            [
                SystemMessage("be brief"),
                HumanMessage("where is order 7?"),
                AIMessage("", tool_calls=[{"name": "lookup", "args": {"id": 7}, "id": "c1"}]),
                ToolMessage("shipped", tool_call_id="c1"),
                HumanMessage(
                    content=[
                        {"type": "text", "text": "block text"},
                        {"type": "image_url", "image_url": {"url": "https://x"}},
                    ]
                ),
            ]
        ]
    )
    # the AI message carried only a tool call (no text) and is left out
    assert segments == [
        ("SYSTEM", "be brief"),
        ("USER", "where is order 7?"),
        ("TOOL_RESULT", "shipped"),
        ("USER", "block text"),
    ]


def test_response_model_and_output_segments() -> None:
    chat = LLMResult(
        generations=[
            [
                _chat(AIMessage("shipped", response_metadata={"model_name": "gpt-4o-2024-08-06"})),
                _chat(AIMessage("")),
            ]
        ]
    )
    assert response_model(chat) == "gpt-4o-2024-08-06"
    assert output_segments(chat) == [("ASSISTANT", "shipped")]
    completion = LLMResult(
        generations=[[Generation(text="ok")]], llm_output={"model_name": "davinci"}
    )
    assert response_model(completion) == "davinci"
    assert response_model(LLMResult(generations=[[Generation(text="ok")]])) is None
