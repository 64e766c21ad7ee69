"""The LangGraph adapter against the real broker: a small real graph (a model node and a ToolNode)
with langchain_core's fake chat model; the thread id is the session."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AnyMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from streams.client import Governor, Session, SessionKilled, StepBlocked
from streams.client.langgraph import GovernorThreads, NoThreadId
from streams.control import SigningKey, session_target
from streams.settings import Settings
from tests.integration.client.adapters.test_sdk_wrappers import _comparable, _events
from tests.integration.client.conftest import GovernorFactory, decide

ran: list[str] = []


class FakeChat(GenericFakeChatModel):
    model: str = "fake-gpt"


@tool
def lookup_order(order_id: int) -> str:
    """Look up an order's status."""
    ran.append("lookup_order")
    return f"order {order_id} shipped"


@tool
def drop_table(order_id: int) -> str:
    """Drop the orders table."""
    ran.append("drop_table")
    return "dropped"


def _usage(inputs: int, outputs: int) -> Any:
    return {"input_tokens": inputs, "output_tokens": outputs, "total_tokens": inputs + outputs}


def _graph(tool_name: str) -> Any:
    """model → tools → model → end, the model asking for ``tool_name`` first."""
    model = FakeChat(
        messages=iter(
            [
                AIMessage(
                    "",
                    tool_calls=[{"name": tool_name, "args": {"order_id": 7}, "id": "call-1"}],
                    usage_metadata=_usage(120, 15),
                ),
                AIMessage("Order 7 has shipped.", usage_metadata=_usage(160, 8)),
            ]
        )
    )

    def call_model(state: MessagesState) -> dict[str, list[AnyMessage]]:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("model", call_model)
    graph.add_node("tools", ToolNode([lookup_order, drop_table]))
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", tools_condition)
    graph.add_edge("tools", "model")
    graph.add_edge("model", END)
    return graph.compile()


def run_native(s: Session) -> None:
    s.llm_call(
        model="fake-gpt",
        provider="openai",
        input_tokens=120,
        output_tokens=15,
        content=[("USER", "where is order 7?")],
    )
    s.tool_call(
        name="lookup_order", args={"order_id": 7}, result="order 7 shipped", call_id="call-1"
    )
    s.llm_call(
        model="fake-gpt",
        provider="openai",
        input_tokens=160,
        output_tokens=8,
        content=[
            ("USER", "where is order 7?"),
            ("TOOL_RESULT", "order 7 shipped"),
            ("ASSISTANT", "Order 7 has shipped."),
        ],
    )


def test_a_graph_thread_produces_the_native_clients_events(
    topics: Settings, governor: GovernorFactory
) -> None:
    ran.clear()
    native = governor(obey=False)
    with native.session("thread-1", category="orders") as s:
        run_native(s)
    assert native.emitter.flush() == 0
    gov = governor(obey=False)
    threads = GovernorThreads(gov, provider="openai", category="orders")
    config = {"configurable": {"thread_id": "thread-1"}}
    result = threads.invoke(
        _graph("lookup_order"), {"messages": [("user", "where is order 7?")]}, config
    )
    assert result["messages"][-1].content == "Order 7 has shipped."
    assert threads.handlers["thread-1"].problems == {}
    threads.end(config)  # the conversation is over
    assert gov.emitter.flush() == 0
    with pytest.raises(NoThreadId):
        threads.invoke(_graph("lookup_order"), {"messages": []}, {})

    count = 5
    events = _events(topics, 2 * count)
    from_native, from_graph = events[:count], events[count:]
    assert [_comparable(e) for e in from_graph] == [_comparable(e) for e in from_native]
    assert [e["kind"] for e in from_graph][1:-1] == ["LLM_CALL", "TOOL_CALL", "LLM_CALL"]
    assert ran == ["lookup_order"]


async def test_a_denied_tool_never_runs_turns_continue_and_a_killed_thread_stops(
    topics: Settings, denying: Governor, signing_key: SigningKey
) -> None:
    ran.clear()
    threads = GovernorThreads(denying)
    config = {"configurable": {"thread_id": "thread-2"}}
    with pytest.raises(StepBlocked) as blocked:
        await threads.ainvoke(_graph("drop_table"), {"messages": [("user", "drop it")]}, config)
    assert (blocked.value.name, blocked.value.policy_id) == ("drop_table", "no-drops")
    assert ran == []
    # the next turn of the thread continues its session
    threads.invoke(_graph("lookup_order"), {"messages": [("user", "where?")]}, config)
    assert ran == ["lookup_order"]
    decision = signing_key.sign(decide(session_target("thread-2"), "KILL", reason="budget"))
    assert denying.book.offer(decision, denying.now_us()) is None
    with pytest.raises(SessionKilled):
        threads.invoke(_graph("lookup_order"), {"messages": [("user", "where?")]}, config)
    assert ran == ["lookup_order"]  # not again
    assert denying.emitter.flush() == 0

    # one session for the thread: the refused turn leaves it open, the KILL ends it
    events = _events(topics, 7)
    assert [e["seq"] for e in events] == list(range(1, 8))
    assert [(e["kind"], e["status"], e["error_type"]) for e in events] == [
        ("SESSION_START", "OK", None),
        ("LLM_CALL", "OK", None),
        ("TOOL_CALL", "BLOCKED", "PolicyBlocked"),
        ("LLM_CALL", "OK", None),
        ("TOOL_CALL", "OK", None),
        ("LLM_CALL", "OK", None),
        ("SESSION_END", "KILLED", None),
    ]
    assert "thread-2" not in threads.handlers  # the killed thread is closed
    assert events[2]["tool_name"] == "drop_table"
