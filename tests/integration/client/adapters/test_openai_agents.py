"""The OpenAI Agents SDK adapter against the real broker: the real SDK and its Responses model,
pointed at a fake provider (httpx2 MockTransport: the provider is not ours)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest
from agents import (
    Agent,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    RunConfig,
    Runner,
    function_tool,
)
from agents.tracing import set_trace_processors

from streams.client import Governor, Session, SessionKilled, StepBlocked
from streams.client.openai_agents import GovernorRunHooks, GovernorTracingProcessor
from streams.control import SigningKey, session_target
from streams.settings import Settings
from tests.integration.client.adapters.test_sdk_wrappers import FakeProvider, _comparable, _events
from tests.integration.client.conftest import GovernorFactory, decide

USAGE = [(300, 20, 100, 0), (340, 12, 0, 5)]


class FakeResponses:
    """The Responses API: the first call of a run asks for the tool the question names, the
    next (with the tool's output) answers."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        items = body["input"]
        answered = any(i.get("type") == "function_call_output" for i in items)
        question = str(items[0]["content"])
        tool = "drop_table" if "drop" in question else "lookup_order"
        output: list[dict[str, Any]]
        if answered:
            output = [
                {
                    "type": "message",
                    "id": "msg-2",
                    "role": "assistant",
                    "status": "completed",
                    "content": [
                        {"type": "output_text", "text": "Order 7 has shipped.", "annotations": []}
                    ],
                }
            ]
        else:
            output = [
                {
                    "type": "function_call",
                    "id": "fc-1",
                    "call_id": "call-1",
                    "name": tool,
                    "arguments": json.dumps({"order_id": 7}),
                    "status": "completed",
                }
            ]
        inputs, outputs, cached, reasoning = USAGE[1 if answered else 0]
        return httpx2.Response(
            200,
            json={
                "id": f"resp-{len(self.requests)}",
                "object": "response",
                "created_at": 1,
                "model": "gpt-4.1",
                "instructions": body.get("instructions"),
                "status": "completed",
                "output": output,
                "usage": {
                    "input_tokens": inputs,
                    "output_tokens": outputs,
                    "total_tokens": inputs + outputs,
                    "input_tokens_details": {"cached_tokens": cached},
                    "output_tokens_details": {"reasoning_tokens": reasoning},
                },
                "parallel_tool_calls": True,
                "tool_choice": "auto",
                "tools": [],
            },
        )


ran: list[str] = []


@function_tool
def lookup_order(order_id: int) -> str:
    """Look up an order's status."""
    ran.append("lookup_order")
    return f"order {order_id} shipped"


@function_tool
def drop_table(order_id: int) -> str:
    """Drop the orders table."""
    ran.append("drop_table")
    return "dropped"


def _agent(fake: FakeResponses) -> Agent[Any]:
    client = openai.AsyncOpenAI(
        base_url="http://fake/v1",
        api_key="k",
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(fake)),
        max_retries=0,
    )
    return Agent(
        name="support-bot",
        instructions="be brief",
        tools=[lookup_order, drop_table],
        model=OpenAIResponsesModel("gpt-4.1", client),
    )


@pytest.fixture
def install() -> Iterator[Any]:
    """Put a processor in place of the SDK's own (which would export to OpenAI)."""

    def use(gov: Governor) -> GovernorTracingProcessor:
        processor = GovernorTracingProcessor(gov)
        set_trace_processors([processor])
        return processor

    ran.clear()
    yield use
    set_trace_processors([])


def run_native(s: Session) -> None:
    (i1, o1, c1, r1), (i2, o2, c2, r2) = USAGE
    s.llm_call(
        model="gpt-4.1",
        provider="openai",
        input_tokens=i1,
        output_tokens=o1,
        cache_read_input_tokens=c1,
        reasoning_output_tokens=r1,
        content=[("SYSTEM", "be brief"), ("USER", "where is order 7?")],
    )
    s.tool_call(
        name="lookup_order", args='{"order_id": 7}', result="order 7 shipped", call_id="call-1"
    )
    s.llm_call(
        model="gpt-4.1",
        provider="openai",
        input_tokens=i2,
        output_tokens=o2,
        cache_read_input_tokens=c2,
        reasoning_output_tokens=r2,
        content=[("TOOL_RESULT", "order 7 shipped"), ("ASSISTANT", "Order 7 has shipped.")],
    )


async def test_an_agents_sdk_run_produces_the_native_clients_events(
    topics: Settings, governor: GovernorFactory, install: Any
) -> None:
    native = governor(obey=False)
    with native.session("agents-1", category="orders") as s:
        run_native(s)
    assert native.emitter.flush() == 0
    processor = install(governor(obey=False))
    fake = FakeResponses()
    config = RunConfig(group_id="agents-1", trace_metadata={"category": "orders"})
    result = await Runner.run(
        _agent(fake), "where is order 7?", hooks=GovernorRunHooks(processor), run_config=config
    )
    assert result.final_output == "Order 7 has shipped."
    processor.end("agents-1")  # the conversation is over
    processor.force_flush()
    assert processor.problems == {}

    count = 5
    events = _events(topics, 2 * count)
    from_native, from_sdk = events[:count], events[count:]
    assert [_comparable(e) for e in from_sdk] == [_comparable(e) for e in from_native]
    assert [e["kind"] for e in from_sdk] == [
        "SESSION_START",
        "LLM_CALL",
        "TOOL_CALL",
        "LLM_CALL",
        "SESSION_END",
    ]
    assert ran == ["lookup_order"]
    # the steps are timed by the SDK's spans, inside the session
    start, end = from_sdk[0]["start_time_us"], from_sdk[-1]["start_time_us"]
    for step in from_sdk[1:-1]:
        assert start <= step["start_time_us"] <= step["start_time_us"] + step["duration_us"] <= end


async def test_a_denied_tool_never_runs_turns_continue_and_a_kill_stops_the_model(
    topics: Settings, denying: Governor, signing_key: SigningKey, install: Any
) -> None:
    processor = install(denying)
    hooks = GovernorRunHooks(processor)
    fake = FakeResponses()
    # a run outside any conversation is its trace's own session, ended with the run
    with pytest.raises(StepBlocked):
        await Runner.run(_agent(fake), "drop order 7", hooks=hooks)
    with pytest.raises(StepBlocked) as blocked:
        await Runner.run(
            _agent(fake), "drop order 7", hooks=hooks, run_config=RunConfig(group_id="agents-2")
        )
    assert (blocked.value.name, blocked.value.policy_id) == ("drop_table", "no-drops")
    assert ran == []
    # the next turn of the conversation continues the session; then a KILL for it
    await Runner.run(
        _agent(fake), "where is order 7?", hooks=hooks, run_config=RunConfig(group_id="agents-2")
    )
    decision = signing_key.sign(decide(session_target("agents-2"), "KILL", reason="budget"))
    assert denying.book.offer(decision, denying.now_us()) is None
    sent = len(fake.requests)
    with pytest.raises(SessionKilled):
        await Runner.run(
            _agent(fake), "and order 8?", hooks=hooks, run_config=RunConfig(group_id="agents-2")
        )
    assert len(fake.requests) == sent  # the model was never called
    processor.force_flush()
    assert processor.problems == {}

    # one session for the conversation: no SESSION_END between its turns (the worker refuses
    # events after one), and the KILL ends it
    everything = _events(topics, 4 + 7)
    alone = [e for e in everything if e["session_id"] != "agents-2"]
    assert [(e["kind"], e["status"], e["error_type"]) for e in alone] == [
        ("SESSION_START", "OK", None),
        ("LLM_CALL", "OK", None),
        ("TOOL_CALL", "BLOCKED", "PolicyBlocked"),
        ("SESSION_END", "ERROR", "StepBlocked"),
    ]
    assert alone[0]["session_id"].startswith("trace_")
    events = [e for e in everything if e["session_id"] == "agents-2"]
    assert [e["seq"] for e in events] == list(range(1, 8))
    assert [(e["kind"], e["status"]) for e in events] == [
        ("SESSION_START", "OK"),
        ("LLM_CALL", "OK"),
        ("TOOL_CALL", "BLOCKED"),
        ("LLM_CALL", "OK"),
        ("TOOL_CALL", "OK"),
        ("LLM_CALL", "OK"),
        ("SESSION_END", "KILLED"),
    ]
    assert (events[2]["tool_name"], events[2]["tool_call_id"]) == ("drop_table", "call-1")


async def test_generation_spans_of_the_chat_completions_model_are_llm_calls(
    topics: Settings, governor: GovernorFactory, install: Any
) -> None:
    native = governor(obey=False)
    with native.session("agents-3") as s:
        s.llm_call(
            model="gpt-4o-mini",
            provider="openai",
            input_tokens=120,
            output_tokens=9,
            cache_read_input_tokens=100,
            reasoning_output_tokens=0,
            content=[
                ("SYSTEM", "be brief"),
                ("USER", "where is 7?"),
                ("ASSISTANT", "Order 7 shipped."),
            ],
        )
    assert native.emitter.flush() == 0
    processor = install(governor(obey=False))
    client = openai.AsyncOpenAI(
        base_url="http://fake/v1",
        api_key="k",
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(FakeProvider())),
        max_retries=0,
    )
    agent: Agent[Any] = Agent(
        name="support-bot",
        instructions="be brief",
        model=OpenAIChatCompletionsModel("gpt-4o-mini", client),
    )
    result = await Runner.run(
        agent,
        "where is 7?",
        hooks=GovernorRunHooks(processor),
        run_config=RunConfig(group_id="agents-3"),
    )
    assert result.final_output == "Order 7 shipped."
    processor.close()
    processor.force_flush()

    events = _events(topics, 6)
    assert [_comparable(e) for e in events[3:]] == [_comparable(e) for e in events[:3]]
    assert events[4]["kind"] == "LLM_CALL"
