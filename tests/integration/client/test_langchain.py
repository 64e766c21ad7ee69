"""The LangChain callback handler against the real broker: it records runs and obeys decisions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import tool

from streams.client import Governor, SessionKilled
from streams.client.langchain import GovernorCallbackHandler
from streams.codec import Codecs
from streams.control import SigningKey, session_target
from streams.settings import Settings
from tests.integration.client.conftest import GovernorFactory, decide
from tests.kafka_helpers import consume


class FakeChat(GenericFakeChatModel):
    """The offline fake chat model, with a model name as real chat models have."""

    model: str = "fake-gpt"


def _events(settings: Settings, count: int) -> list[dict[str, Any]]:
    codecs = Codecs.load(settings.schemas_dir)
    messages = consume(settings.bootstrap, settings.topic("events"), count)
    events = [codecs.step_event.decode(m.value() or b"") for m in messages]
    return sorted(events, key=lambda e: (e["session_id"], e["seq"]))


@tool
def lookup_order(order_id: int) -> str:
    """Look up an order's status."""
    return f"order {order_id} shipped"


@tool
def cancel_order(order_id: int) -> str:
    """Cancel an order."""
    raise PermissionError(f"order {order_id} cannot be cancelled")


def _usage(inputs: int, outputs: int, **details: Any) -> Any:
    return {
        "input_tokens": inputs,
        "output_tokens": outputs,
        "total_tokens": inputs + outputs,
        **details,
    }


def test_the_handler_records_model_and_tool_runs_with_tokens(
    topics: Settings, governor: GovernorFactory
) -> None:
    gov = governor(obey=False)
    model = FakeChat(
        messages=iter(
            [
                AIMessage(
                    "",
                    tool_calls=[{"name": "lookup_order", "args": {"order_id": 7}, "id": "call-1"}],
                    usage_metadata=_usage(120, 15, input_token_details={"cache_read": 100}),
                ),
                AIMessage("Order 7 has shipped.", usage_metadata=_usage(160, 8)),
            ]
        )
    )

    def failing() -> Iterator[AIMessage]:
        raise ConnectionError("provider down")
        yield AIMessage("never")  # a generator, so the model fails when it is called

    with gov.session(category="orders") as s:
        config = RunnableConfig(callbacks=[GovernorCallbackHandler(s, provider="openai")])
        history: list[BaseMessage] = [HumanMessage("Where is order 7?")]
        reply = model.invoke(history, config)
        for call in reply.tool_calls:
            answer = lookup_order.invoke({**call, "type": "tool_call"}, config)
            assert isinstance(answer, ToolMessage)
            history += [reply, answer]
        assert model.invoke(history, config).text == "Order 7 has shipped."
        with pytest.raises(PermissionError):
            cancel_order.invoke({"order_id": 7}, config)
        with pytest.raises(ConnectionError):
            FakeChat(messages=failing()).invoke("hi", config)
        session_id = s.session_id
    gov.emitter.flush()

    events = _events(topics, 7)
    assert {e["session_id"] for e in events} == {session_id}
    start, llm1, tool1, llm2, tool2, llm3, end = events
    assert [e["kind"] for e in events] == [
        "SESSION_START",
        "LLM_CALL",
        "TOOL_CALL",
        "LLM_CALL",
        "TOOL_CALL",
        "LLM_CALL",
        "SESSION_END",
    ]
    assert (llm1["model"], llm1["provider"], llm1["operation"], llm1["status"]) == (
        "fake-gpt",
        "openai",
        "chat",
        "OK",
    )
    assert (llm1["input_tokens"], llm1["output_tokens"], llm1["cache_read_input_tokens"]) == (
        120,
        15,
        100,
    )
    assert llm1["content"] == [{"role": "USER", "text": "Where is order 7?"}]
    assert (llm2["input_tokens"], llm2["output_tokens"]) == (160, 8)
    assert [c["role"] for c in llm2["content"]] == ["USER", "TOOL_RESULT", "ASSISTANT"]
    assert llm2["content"][-1]["text"] == "Order 7 has shipped."
    assert (tool1["tool_name"], tool1["tool_call_id"], tool1["status"]) == (
        "lookup_order",
        "call-1",
        "OK",
    )
    assert tool1["content"] == [
        {"role": "TOOL_ARGUMENTS", "text": '{"order_id": 7}'},
        {"role": "TOOL_RESULT", "text": "order 7 shipped"},
    ]
    assert (tool2["tool_name"], tool2["status"], tool2["error_type"]) == (
        "cancel_order",
        "ERROR",
        "PermissionError",
    )
    assert (llm3["status"], llm3["error_type"], llm3["input_tokens"]) == (
        "ERROR",
        "ConnectionError",
        0,
    )
    # durations are measured per run: each run's start lies inside the session
    for step in (llm1, tool1, llm2, tool2, llm3):
        assert start["start_time_us"] <= step["start_time_us"] <= end["start_time_us"]
        assert 0 <= step["duration_us"] < 5_000_000
    assert end["status"] == "OK"


async def test_a_kill_in_force_stops_the_chain_before_the_model_or_tool_runs(
    topics: Settings, governor: GovernorFactory, signing_key: SigningKey
) -> None:
    gov: Governor = governor(obey=False)
    called: list[str] = []

    def answers() -> Iterator[AIMessage]:
        called.append("model")
        yield AIMessage("too late", usage_metadata=_usage(1, 1))

    @tool
    def refund(order_id: int) -> str:
        """Refund an order."""
        called.append("tool")
        return "refunded"

    model = FakeChat(messages=answers())
    chain = ChatPromptTemplate.from_messages([("human", "{question}")]) | model
    s = gov.session()
    s.start()
    decision = signing_key.sign(decide(session_target(s.session_id), "KILL", reason="budget"))
    assert gov.book.offer(decision, gov.now_us()) is None
    handler = GovernorCallbackHandler(s)
    config = RunnableConfig(callbacks=[handler])
    with pytest.raises(SessionKilled):
        chain.invoke({"question": "refund order 7"}, config)
    with pytest.raises(SessionKilled):
        refund.invoke({"order_id": 7}, config)
    with pytest.raises(SessionKilled):
        # async chains run the handler on an executor thread: the KILL still propagates
        await chain.ainvoke({"question": "refund order 7"}, config)
    s.finish()
    assert called == []
    assert handler.problems == {}
    gov.emitter.flush()

    events = _events(topics, 2)
    assert [(e["kind"], e["status"]) for e in events] == [
        ("SESSION_START", "OK"),
        ("SESSION_END", "KILLED"),
    ]
