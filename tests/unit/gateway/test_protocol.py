"""Reading the provider APIs: calls, usage (streamed or not), tool calls, errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from streams.gateway.protocol import (
    ENDPOINTS,
    Refusal,
    RequestError,
    SseSplitter,
    StreamFold,
    error_body,
    parse_sse,
    prepared,
    read_answer,
    read_call,
    set_at,
    stream_error,
    strip_streamed,
    strip_tool_calls,
    without_tools,
)

CHAT = ENDPOINTS["/v1/chat/completions"]
RESPONSES = ENDPOINTS["/v1/responses"]
MESSAGES = ENDPOINTS["/v1/messages"]
EMBEDDINGS = ENDPOINTS["/v1/embeddings"]


def chat_body() -> dict[str, Any]:
    return {
        "model": "gpt-4o",
        "max_completion_tokens": 300,
        "user": "u-7",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "find order 42"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "function": {"name": "lookup", "arguments": '{"id": 42}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "shipped"},
        ],
        "tools": [{"type": "function", "function": {"name": "lookup"}}],
    }


def test_a_chat_call_names_roles_tools_and_the_new_turn() -> None:
    call = read_call(CHAT, chat_body())
    assert (call.model, call.max_output_tokens, call.session_hint) == ("gpt-4o", 300, "u-7")
    assert [(s.role, s.text, s.tool) for s in call.segments] == [
        ("SYSTEM", "be brief", None),
        ("USER", "find order 42", None),
        ("TOOL_ARGUMENTS", '{"id": 42}', "lookup"),
        ("TOOL_RESULT", "shipped", "lookup"),
    ]
    assert [s.role for s in call.inputs()] == ["SYSTEM", "USER", "TOOL_RESULT"]
    assert [s.text for s in call.new_turn()] == ["shipped"]
    assert [(r.name, r.arguments, r.result) for r in call.tool_results] == [
        ("lookup", '{"id": 42}', "shipped")
    ]
    assert call.tools == [("lookup", ("tools", 0))]


def test_only_tool_results_since_the_last_answer_are_new() -> None:
    body = chat_body()
    body["messages"] += [
        {"role": "assistant", "content": "it shipped"},
        {"role": "user", "content": "thanks"},
    ]
    assert read_call(CHAT, body).tool_results == []


def test_anthropic_and_responses_calls() -> None:
    anthropic = {
        "model": "claude-sonnet-4",
        "max_tokens": 100,
        "system": [{"type": "text", "text": "sys"}],
        "metadata": {"user_id": "u-9"},
        "messages": [
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "kb", "input": {"a": 1}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "r"}],
            },
        ],
    }
    call = read_call(MESSAGES, anthropic)
    assert [(s.role, s.text) for s in call.segments] == [
        ("SYSTEM", "sys"),
        ("USER", "q"),
        ("TOOL_ARGUMENTS", '{"a": 1}'),
        ("TOOL_RESULT", "r"),
    ]
    assert (call.max_output_tokens, call.session_hint) == (100, "u-9")
    responses = {
        "model": "gpt-4o",
        "instructions": "i",
        "conversation": {"id": "conv_1"},
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "hello"}]},
            {"type": "function_call", "call_id": "f1", "name": "kb", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "f1", "output": "done"},
        ],
    }
    call = read_call(RESPONSES, responses)
    assert [s.role for s in call.segments] == ["SYSTEM", "USER", "TOOL_ARGUMENTS", "TOOL_RESULT"]
    assert call.session_hint == "conv_1"
    assert [r.name for r in call.tool_results] == ["kb"]
    assert [
        s.text for s in read_call(EMBEDDINGS, {"model": "e", "input": ["a", "b"]}).segments
    ] == [
        "a",
        "b",
    ]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ([], "JSON object"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "max_tokens": -1, "messages": [{"role": "user", "content": "x"}]}, "max"),
    ],
)
def test_bad_requests_name_the_field(body: Any, says: str) -> None:
    with pytest.raises(RequestError, match=said(says)):
        read_call(CHAT, body)


def said(text: str) -> str:
    import re

    return re.escape(text)


def test_rewrites_redacted_text_strip_tools_and_ask_for_streamed_usage() -> None:
    body = chat_body()
    call = read_call(CHAT, body)
    set_at(body, call.segments[1].path, "find order <ID>")
    assert body["messages"][1]["content"][0]["text"] == "find order <ID>"
    without_tools(body, [("tools", 0)])
    assert "tools" not in body
    body["stream"] = True
    assert prepared(CHAT, body)["stream_options"] == {"include_usage": True}
    anthropic = {"input": {"card": "4111"}}
    set_at(anthropic, ("input",), '{"card": "<CREDIT_CARD>"}')
    assert anthropic == {"input": {"card": "<CREDIT_CARD>"}}


def test_usage_of_each_api_counts_cached_input_as_input() -> None:
    openai = {
        "usage": {
            "prompt_tokens": 100,
            "completion_tokens": 20,
            "prompt_tokens_details": {"cached_tokens": 60},
            "completion_tokens_details": {"reasoning_tokens": 5},
        },
        "choices": [{"message": {"content": "hi"}}],
    }
    usage = read_answer("chat", openai).usage
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_input_tokens) == (100, 20, 60)
    assert usage.reasoning_output_tokens == 5
    anthropic = {
        "usage": {
            "input_tokens": 10,
            "cache_read_input_tokens": 60,
            "cache_creation_input_tokens": 30,
            "output_tokens": 7,
        },
        "content": [{"type": "text", "text": "a"}, {"type": "tool_use", "name": "kb", "input": {}}],
    }
    answer = read_answer("messages", anthropic)
    assert (answer.usage.input_tokens, answer.usage.cache_read_input_tokens) == (100, 60)
    assert answer.usage.cache_write_input_tokens == 30
    assert [c.name for c in answer.tool_calls] == ["kb"]


def sse(*events: tuple[str | None, dict[str, Any] | str]) -> bytes:
    out = b""
    for name, data in events:
        text = data if isinstance(data, str) else json.dumps(data)
        out += (f"event: {name}\n" if name else "").encode() + f"data: {text}\n\n".encode()
    return out


def fold_all(kind: Any, raw: bytes, cut: int = 7) -> tuple[StreamFold, list[bytes], list[str]]:
    """Feed ``raw`` in ``cut``-byte pieces (events split anywhere)."""
    splitter, fold, passed, started = SseSplitter(), StreamFold(kind), [], []
    for i in range(0, len(raw), cut):
        for event in splitter.feed(raw[i : i + cut]):
            passed.append(event.raw)
            name = fold.feed(event)
            if name:
                started.append(name)
    return fold, passed, started


def test_streams_are_passed_on_unchanged_and_folded_into_usage_and_tool_calls() -> None:
    raw = sse(
        (None, {"choices": [{"delta": {"content": "he"}}]}),
        (None, {"choices": [{"delta": {"content": "llo"}}]}),
        (
            None,
            {
                "choices": [
                    {
                        "delta": {
                            "tool_calls": [
                                {"index": 0, "id": "c", "function": {"name": "kb", "arguments": ""}}
                            ]
                        }
                    }
                ]
            },
        ),
        (
            None,
            {
                "choices": [
                    {"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}}
                ]
            },
        ),
        (None, {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}}),
        (None, "[DONE]"),
    )
    fold, passed, started = fold_all("chat", raw)
    assert b"".join(passed) == raw
    answer = fold.finished()
    assert ("".join(answer.text), answer.usage.input_tokens, answer.usage.output_tokens) == (
        "hello",
        9,
        3,
    )
    assert started == ["kb"]
    assert [(c.name, c.arguments) for c in answer.tool_calls] == [("kb", "{}")]
    anthropic = sse(
        ("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 5}}}),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "x"},
            },
        ),
        ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 11}}),
    )
    fold, _, _ = fold_all("messages", anthropic, cut=5)
    assert (fold.answer.usage.input_tokens, fold.answer.usage.output_tokens) == (5, 11)


def test_denied_tool_calls_are_stripped_and_the_turn_stops() -> None:
    body = {
        "choices": [
            {
                "finish_reason": "tool_calls",
                "message": {"tool_calls": [{"id": "1", "function": {"name": "drop_x"}}]},
            }
        ]
    }
    answer = read_answer("chat", body)
    strip_tool_calls("chat", body, answer.tool_calls)
    assert body["choices"][0] == {"finish_reason": "stop", "message": {}}
    claude = {
        "stop_reason": "tool_use",
        "content": [{"type": "text", "text": "t"}, {"type": "tool_use", "name": "drop_x"}],
    }
    strip_tool_calls("messages", claude, read_answer("messages", claude).tool_calls)
    assert claude == {"stop_reason": "end_turn", "content": [{"type": "text", "text": "t"}]}


def test_errors_are_written_the_way_each_sdk_reads_them() -> None:
    refusal = Refusal(403, "killed", "ops", "KILL", "why", "d1", metric="kill")
    openai = error_body("openai", refusal)
    assert openai["error"]["message"] == "killed"
    assert openai["error"]["governor"] == {
        "policy_id": "ops",
        "action": "KILL",
        "reason": "why",
        "decision_id": "d1",
    }
    assert error_body("anthropic", refusal)["error"]["type"] == "permission_error"
    assert stream_error("openai", refusal).endswith(b"data: [DONE]\n\n")
    assert stream_error("anthropic", refusal).startswith(b"event: error\ndata: ")


def held_chat() -> list[bytes]:
    def call(index: int, name: str) -> dict[str, Any]:
        function = {"name": name, "arguments": "{}"}
        return {"choices": [{"delta": {"tool_calls": [{"index": index, "function": function}]}}]}

    return [
        sse((None, call(0, "lookup"))),
        sse((None, call(1, "drop_x"))),
        sse((None, {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]})),
        sse((None, "[DONE]")),
    ]


def streamed_calls(kind: Any, events: list[bytes]) -> list[Any]:
    fold = StreamFold(kind)
    for raw in events:
        fold.feed(parse_sse(raw))
    return fold.finished().tool_calls


def test_denied_streamed_tool_calls_are_taken_out_and_the_rest_renumbered() -> None:
    events = held_chat()
    calls = streamed_calls("chat", events)
    assert [(c.name, c.path) for c in calls] == [("lookup", (0,)), ("drop_x", (1,))]
    kept = strip_streamed("chat", events, [calls[1]], calls)
    assert [c.name for c in streamed_calls("chat", kept)] == ["lookup"]
    assert b'"finish_reason": "tool_calls"' in kept[-2]  # a call is left: still a tool turn
    only = strip_streamed("chat", events, calls, calls)
    assert streamed_calls("chat", only) == []
    assert b'"finish_reason": "stop"' in only[-2]
    assert only[-1] == b"data: [DONE]\n\n"
    anthropic = [
        sse(("content_block_start", {"type": "content_block_start", "index": 0,
                                      "content_block": {"type": "text", "text": ""}})),
        sse(("content_block_start", {"type": "content_block_start", "index": 1,
                                      "content_block": {"type": "tool_use", "name": "drop_x"}})),
        sse(("content_block_stop", {"type": "content_block_stop", "index": 1})),
        sse(("content_block_start", {"type": "content_block_start", "index": 2,
                                      "content_block": {"type": "tool_use", "name": "kb"}})),
        sse(("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"}})),
    ]  # fmt: skip
    calls = streamed_calls("messages", anthropic)
    kept = strip_streamed("messages", anthropic, [calls[0]], calls)
    assert [parse_sse(e).event for e in kept] == [
        "content_block_start",
        "content_block_start",
        "message_delta",
    ]
    assert json.loads(parse_sse(kept[1]).data)["index"] == 1  # kb renumbered after drop_x
    assert json.loads(parse_sse(kept[2]).data)["delta"]["stop_reason"] == "tool_use"
    ended = strip_streamed("messages", anthropic, calls, calls)
    assert json.loads(parse_sse(ended[-1]).data)["delta"]["stop_reason"] == "end_turn"
