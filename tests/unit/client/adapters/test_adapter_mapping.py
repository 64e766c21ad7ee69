"""The framework adapters' pure parts: span and request reading, thread ids, configs, errors."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from agents import Agent, AgentsException, OpenAIResponsesModel
from langchain_core.callbacks import CallbackManager

from streams.client import SessionKilled, StepBlocked, ToolBlocked
from streams.client.langgraph import NoThreadId, thread_id, with_handler
from streams.client.openai_agents import (
    agent_model,
    model_answer,
    model_input,
    parse_time_us,
    passing_through,
    span_usage,
)
from streams.client.sdk_wrappers import given, governed, max_output_tokens, recorded_content
from streams.gateway.protocol import ENDPOINTS, Answer, read_call


def test_span_times_and_usage() -> None:
    assert parse_time_us("2026-12-01T20:30:27.107006+00:00") == 1_796_157_027_107_006
    assert parse_time_us(None) is None
    usage = span_usage(
        {
            "requests": 1,
            "input_tokens": 300,
            "output_tokens": 20,
            "input_tokens_details": {"cached_tokens": 100},
            "output_tokens_details": {"reasoning_tokens": 4},
        }
    )
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens) == (300, 20)
    assert (usage.cache_read_input_tokens, usage.reasoning_output_tokens) == (100, 4)
    assert span_usage(None) is None


def test_model_input_is_the_new_turn_of_responses_items_or_chat_messages() -> None:
    items = [
        {"role": "user", "content": "where is 7?"},
        {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "shipped"},
    ]
    assert model_input("m", "be brief", items[:1]) == [
        ("SYSTEM", "be brief"),
        ("USER", "where is 7?"),
    ]
    assert model_input("m", "be brief", items) == [("TOOL_RESULT", "shipped")]
    assert model_input("m", None, "hello") == [("USER", "hello")]
    chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert model_input("m", None, chat, chat=True) == [("SYSTEM", "s"), ("USER", "u")]
    assert model_input("m", None, 42) == []  # unreadable input: nothing, not an error


def test_model_answer_reads_responses_generation_outputs_and_chat() -> None:
    response = {
        "output": [
            {"type": "message", "content": [{"type": "output_text", "text": "Hi."}]},
            {"type": "function_call", "call_id": "c2", "name": "drop", "arguments": "{}"},
        ]
    }
    answer = model_answer(response)
    assert answer.text == ["Hi."]
    assert [(c.call_id, c.name) for c in answer.tool_calls] == [("c2", "drop")]
    merged = model_answer([response, {"role": "assistant", "content": "Bye."}])
    assert merged.text == ["Hi.", "Bye."]
    chat = {"choices": [{"message": {"role": "assistant", "content": "ok"}}]}
    assert model_answer(chat).text == ["ok"]
    assert model_answer(None).text == []


def test_agent_model_names_a_string_or_a_model_object() -> None:
    client = openai.AsyncOpenAI(base_url="http://fake/v1", api_key="k")
    assert agent_model(Agent(name="a", model="gpt-4.1")) == "gpt-4.1"
    assert agent_model(Agent(name="a", model=OpenAIResponsesModel("gpt-5", client))) == "gpt-5"


def test_governor_errors_pass_through_the_sdk_as_agents_exceptions() -> None:
    blocked = passing_through(StepBlocked("TOOL_CALL", "drop", "no-drops", "KILL", "denied"))
    assert isinstance(blocked, StepBlocked)
    assert isinstance(blocked, AgentsException)
    assert (blocked.name, blocked.policy_id, str(blocked)) == (
        "drop",
        "no-drops",
        "TOOL_CALL 'drop' refused by policy 'no-drops': denied",
    )
    pii = passing_through(ToolBlocked("send", ["EMAIL_ADDRESS"]))
    assert isinstance(pii, ToolBlocked)
    assert pii.entity_types == ["EMAIL_ADDRESS"]
    killed = passing_through(SessionKilled("budget", "p1", "d1"))
    assert isinstance(killed, SessionKilled)
    assert killed.decision_id == "d1"
    assert type(passing_through(SessionKilled("x", "p", "d"))) is type(killed)  # one class each


def test_thread_ids_and_governed_configs() -> None:
    assert thread_id({"configurable": {"thread_id": 42}}) == "42"
    missing: list[dict[str, Any] | None] = [
        {},
        None,
        {"configurable": {}},
        {"configurable": {"thread_id": ""}},
    ]
    for config in missing:
        with pytest.raises(NoThreadId, match=r"configurable\.thread_id"):
            thread_id(config)
    handler: Any = object()
    assert with_handler({"tags": ["x"]}, handler) == {"tags": ["x"], "callbacks": [handler]}
    other: Any = object()
    assert with_handler({"callbacks": [other]}, handler)["callbacks"] == [other, handler]
    manager = CallbackManager([])
    governed_config = with_handler({"callbacks": manager}, handler)
    assert governed_config["callbacks"].handlers == [handler]  # type: ignore[union-attr]
    assert manager.handlers == []  # the caller's manager is not changed


def test_wrapped_requests_their_caps_and_content() -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9}
    call = read_call(ENDPOINTS["/v1/chat/completions"], body)
    assert max_output_tokens(body, call) == 9
    assert max_output_tokens({**body, "max_completion_tokens": 30}, call) == 30
    answer = Answer(text=["Hel", "lo"])
    assert recorded_content(call, answer) == [("USER", "hi"), ("ASSISTANT", "Hello")]
    assert recorded_content(call, Answer()) == [("USER", "hi")]
    # what frameworks pass for "not set" is not read (nor sent) as a value
    assert given({**body, "max_tokens": openai.NOT_GIVEN, "user": openai.omit}) == {
        "model": "gpt-4o",
        "messages": body["messages"],
    }


def test_governed_refuses_what_it_cannot_wrap() -> None:
    session: Any = None
    with pytest.raises(TypeError, match=r"wraps openai\.OpenAI"):
        governed(object(), session)
    client = openai.OpenAI(base_url="http://fake/v1", api_key="k")
    with pytest.raises(ValueError, match="tool_calls must be"):
        governed(client, session, tool_calls="strip")  # type: ignore[arg-type]
    wrapped = governed(client, session)
    assert wrapped.models is client.models  # what is not wrapped is the client's own
    assert wrapped.chat.completions.with_raw_response is client.chat.completions.with_raw_response
