"""The OpenAI and Anthropic SDK wrappers against the real broker, the real SDKs pointed at a fake
provider (httpx2 MockTransport: the provider is not ours)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from streams.client import Governor, Session, SessionKilled, StepBlocked
from streams.client.sdk_wrappers import governed
from streams.codec import Codecs
from streams.control import SigningKey, session_target
from streams.pipeline.bypass import CLIENT_ID_ATTR
from streams.settings import Settings
from tests.integration.client.conftest import GovernorFactory, decide
from tests.kafka_helpers import consume

Handler = Callable[[httpx2.Request], httpx2.Response]


def _events(settings: Settings, count: int) -> list[dict[str, Any]]:
    codecs = Codecs.load(settings.schemas_dir)
    messages = consume(settings.bootstrap, settings.topic("events"), count)
    ordered = sorted(messages, key=lambda m: (m.partition(), m.offset()))
    return [codecs.step_event.decode(m.value() or b"") for m in ordered]


def _sse(events: list[dict[str, Any]], named: bool = False, done: bool = False) -> bytes:
    out = ""
    for event in events:
        head = f"event: {event['type']}\n" if named else ""
        out += f"{head}data: {json.dumps(event)}\n\n"
    return (out + ("data: [DONE]\n\n" if done else "")).encode()


# --- the fake provider -----------------------------------------------------------------------

CHAT: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": "Order 7 shipped."},
        }
    ],
    "usage": {
        "prompt_tokens": 120,
        "completion_tokens": 9,
        "total_tokens": 129,
        "prompt_tokens_details": {"cached_tokens": 100},
    },
}


def _chunk(delta: dict[str, Any], usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-2",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}] if delta else [],
        "usage": usage,
    }


RESPONSE = {
    "id": "resp-1",
    "object": "response",
    "created_at": 1,
    "model": "gpt-4.1",
    "status": "completed",
    "output": [
        {
            "type": "message",
            "id": "msg-1",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Hello.", "annotations": []}],
        }
    ],
    "usage": {
        "input_tokens": 30,
        "output_tokens": 4,
        "total_tokens": 34,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 2},
    },
    "parallel_tool_calls": False,
    "tool_choice": "auto",
    "tools": [],
}
EMBEDDINGS = {
    "object": "list",
    "model": "text-embedding-3-small",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
    "usage": {"prompt_tokens": 5, "total_tokens": 5},
}


def _message(content: list[dict[str, Any]], stop: str = "end_turn") -> dict[str, Any]:
    return {
        "id": "msg-1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4",
        "content": content,
        "stop_reason": stop,
        "usage": {"input_tokens": 40, "output_tokens": 6, "cache_read_input_tokens": 10},
    }


MESSAGE_STREAM: list[dict[str, Any]] = [
    {
        "type": "message_start",
        "message": {
            **_message([]),
            "usage": {"input_tokens": 50, "output_tokens": 1},
        },
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi "}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "there"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 7}},
    {"type": "message_stop"},
]


class FakeProvider:
    """Answers the four endpoints; remembers each request body. A chat request whose last
    message asks to "drop" gets a tool call to ``drop_table``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        path = request.url.path
        if path.startswith("/nowhere"):
            return httpx2.Response(404, json={"error": {"message": f"no {path}"}})
        if path.endswith("/chat/completions"):
            if body.get("stream"):
                if not (body.get("stream_options") or {}).get("include_usage"):
                    chunks = [_chunk({"role": "assistant", "content": "no usage"})]
                else:
                    chunks = [
                        _chunk({"role": "assistant", "content": "Order "}),
                        _chunk({"content": "7."}),
                        _chunk(
                            {}, {"prompt_tokens": 80, "completion_tokens": 3, "total_tokens": 83}
                        ),
                    ]
                return httpx2.Response(
                    200,
                    content=_sse(chunks, done=True),
                    headers={"content-type": "text/event-stream"},
                )
            if "drop" in str(body["messages"][-1]["content"]):
                call = {
                    "id": "call-9",
                    "type": "function",
                    "function": {"name": "drop_table", "arguments": '{"table": "orders"}'},
                }
                message = {"role": "assistant", "content": None, "tool_calls": [call]}
                return httpx2.Response(
                    200, json={**CHAT, "choices": [{**CHAT["choices"][0], "message": message}]}
                )
            return httpx2.Response(200, json=CHAT)
        if path.endswith("/responses"):
            return httpx2.Response(200, json=RESPONSE)
        if path.endswith("/embeddings"):
            return httpx2.Response(200, json=EMBEDDINGS)
        if path.endswith("/messages"):
            if body.get("stream"):
                return httpx2.Response(
                    200,
                    content=_sse(MESSAGE_STREAM, named=True),
                    headers={"content-type": "text/event-stream"},
                )
            return httpx2.Response(200, json=_message([{"type": "text", "text": "Sure."}]))
        return httpx2.Response(404, json={"error": {"message": f"no {path}"}})


class AsyncFake:
    def __init__(self, sync: FakeProvider) -> None:
        self.sync = sync

    async def __call__(self, request: httpx2.Request) -> httpx2.Response:
        await request.aread()
        return self.sync(request)


def _clients(fake: FakeProvider) -> tuple[openai.OpenAI, anthropic.Anthropic]:
    http = httpx2.Client(transport=httpx2.MockTransport(fake))
    return (
        openai.OpenAI(base_url="http://fake/v1", api_key="k", http_client=http, max_retries=0),
        anthropic.Anthropic(base_url="http://fake", api_key="k", http_client=http, max_retries=0),
    )


# --- the toy agent, driven through the SDKs and natively -------------------------------------

ASK = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "where is 7?"}]


def run_wrapped(s: Session, fake: FakeProvider) -> None:
    oai, claude = _clients(fake)
    client, aclient = governed(oai, s), governed(claude, s)
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=ASK, max_tokens=50)
    assert reply.choices[0].message.content == "Order 7 shipped."
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=ASK, stream=True))
    assert len(chunks) == 3
    client.responses.create(model="gpt-4.1", input="say hello", max_output_tokens=20)
    client.embeddings.create(model="text-embedding-3-small", input=["order 7"])
    aclient.messages.create(
        model="claude-sonnet-4", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    )
    with aclient.messages.create(
        model="claude-sonnet-4",
        max_tokens=64,
        system="be kind",
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
    ) as stream:
        assert [e.type for e in stream][-1] == "message_stop"


def run_native(s: Session) -> None:
    """What the wrapped calls are, as the native client records them."""
    s.llm_call(
        model="gpt-4o-mini",
        provider="openai",
        input_tokens=120,
        output_tokens=9,
        cache_read_input_tokens=100,
        content=[
            ("SYSTEM", "be brief"),
            ("USER", "where is 7?"),
            ("ASSISTANT", "Order 7 shipped."),
        ],
    )
    s.llm_call(
        model="gpt-4o-mini",
        provider="openai",
        input_tokens=80,
        output_tokens=3,
        content=[("SYSTEM", "be brief"), ("USER", "where is 7?"), ("ASSISTANT", "Order 7.")],
    )
    s.llm_call(
        model="gpt-4.1",
        provider="openai",
        input_tokens=30,
        output_tokens=4,
        cache_read_input_tokens=0,
        reasoning_output_tokens=2,
        content=[("USER", "say hello"), ("ASSISTANT", "Hello.")],
    )
    s.llm_call(
        model="text-embedding-3-small",
        provider="openai",
        input_tokens=5,
        operation="embeddings",
        content=[("USER", "order 7")],
    )
    s.llm_call(
        model="claude-sonnet-4",
        provider="anthropic",
        input_tokens=50,
        output_tokens=6,
        cache_read_input_tokens=10,
        content=[("USER", "hi"), ("ASSISTANT", "Sure.")],
    )
    s.llm_call(
        model="claude-sonnet-4",
        provider="anthropic",
        input_tokens=50,
        output_tokens=7,
        content=[("SYSTEM", "be kind"), ("USER", "hello"), ("ASSISTANT", "Hi there")],
    )


def _comparable(event: dict[str, Any]) -> dict[str, Any]:
    """Without what differs by nature: ids, and the times the wrapper measured itself."""
    attributes = {k: v for k, v in event["attributes"].items() if k != CLIENT_ID_ATTR}
    dropped = ("event_id", "start_time_us", "duration_us")
    return {**{k: v for k, v in event.items() if k not in dropped}, "attributes": attributes}


def test_wrapped_sdk_calls_produce_the_native_clients_events(
    topics: Settings, governor: GovernorFactory
) -> None:
    fake = FakeProvider()
    native, wrapped = governor(obey=False), governor(obey=False)
    with native.session("sdk-1") as s:
        run_native(s)
    assert native.emitter.flush() == 0
    with wrapped.session("sdk-1") as s:
        run_wrapped(s, fake)
    assert wrapped.emitter.flush() == 0

    count = 8
    events = _events(topics, 2 * count)
    from_native, from_sdk = events[:count], events[count:]
    assert [_comparable(e) for e in from_sdk] == [_comparable(e) for e in from_native]
    # not vacuous: the streamed chat call asked for its usage, and the calls were timed
    assert fake.requests[1]["stream_options"] == {"include_usage": True}
    assert [e["kind"] for e in from_sdk][1:-1] == ["LLM_CALL"] * 6
    assert from_sdk[1]["input_tokens"] == 120
    start, end = from_sdk[0]["start_time_us"], from_sdk[-1]["start_time_us"]
    assert all(start <= e["start_time_us"] <= end for e in from_sdk)


async def test_async_clients_streams_and_provider_errors(
    topics: Settings, governor: GovernorFactory
) -> None:
    fake = FakeProvider()
    http = httpx2.AsyncClient(transport=httpx2.MockTransport(AsyncFake(fake)))
    gov = governor(obey=False)
    async with gov.session("sdk-async") as s:
        oai = governed(
            openai.AsyncOpenAI(base_url="http://fake/v1", api_key="k", http_client=http), s
        )
        claude = governed(
            anthropic.AsyncAnthropic(base_url="http://fake", api_key="k", http_client=http), s
        )
        await oai.chat.completions.create(model="gpt-4o-mini", messages=ASK)
        stream = await oai.chat.completions.create(model="gpt-4o-mini", messages=ASK, stream=True)
        assert len([c async for c in stream]) == 3
        stream = await claude.messages.create(
            model="claude-sonnet-4",
            max_tokens=64,
            messages=[{"role": "user", "content": "hello"}],
            stream=True,
        )
        assert len([e async for e in stream]) == len(MESSAGE_STREAM)
        bad = governed(
            openai.AsyncOpenAI(
                base_url="http://fake/nowhere", api_key="k", http_client=http, max_retries=0
            ),
            s,
        )
        with pytest.raises(openai.NotFoundError):
            await bad.embeddings.create(model="text-embedding-3-small", input="x")
    assert gov.emitter.flush() == 0

    events = _events(topics, 6)
    llm = [e for e in events if e["kind"] == "LLM_CALL"]
    assert [(e["input_tokens"], e["output_tokens"]) for e in llm] == [
        (120, 9),
        (80, 3),
        (50, 7),
        (0, 0),
    ]
    assert (llm[-1]["status"], llm[-1]["error_type"], llm[-1]["operation"]) == (
        "ERROR",
        "NotFoundError",
        "embeddings",
    )
    assert llm[2]["content"][-1] == {"role": "ASSISTANT", "text": "Hi there"}


def test_a_denied_tool_call_in_the_answer_raises_and_a_kill_stops_before_the_provider(
    topics: Settings, denying: Governor, signing_key: SigningKey
) -> None:
    fake = FakeProvider()
    oai, _ = _clients(fake)
    s = denying.session("sdk-deny")
    s.start()
    client = governed(oai, s)
    ask = [{"role": "user", "content": "drop the orders table"}]
    with pytest.raises(StepBlocked) as blocked:
        client.chat.completions.create(model="gpt-4o-mini", messages=ask)
    assert (blocked.value.kind, blocked.value.name, blocked.value.policy_id) == (
        "TOOL_CALL",
        "drop_table",
        "no-drops",
    )
    # left to the agent: the answer comes back with its tool call
    reply = governed(oai, s, tool_calls="leave").chat.completions.create(
        model="gpt-4o-mini", messages=ask
    )
    assert reply.choices[0].message.tool_calls[0].function.name == "drop_table"
    decision = signing_key.sign(decide(session_target("sdk-deny"), "KILL", reason="budget"))
    assert denying.book.offer(decision, denying.now_us()) is None
    sent = len(fake.requests)
    with pytest.raises(SessionKilled):
        client.chat.completions.create(model="gpt-4o-mini", messages=ASK)
    assert len(fake.requests) == sent  # the provider never heard of the killed call
    s.finish()
    assert denying.emitter.flush() == 0

    events = _events(topics, 5)
    assert [(e["kind"], e["status"]) for e in events] == [
        ("SESSION_START", "OK"),
        ("LLM_CALL", "OK"),
        ("TOOL_CALL", "BLOCKED"),
        ("LLM_CALL", "OK"),
        ("SESSION_END", "KILLED"),
    ]
    assert events[2]["tool_name"] == "drop_table"
    assert events[2]["content"] == [{"role": "TOOL_ARGUMENTS", "text": '{"table": "orders"}'}]
