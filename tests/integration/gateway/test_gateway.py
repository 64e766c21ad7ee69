"""The gateway with the official SDKs as its clients, a fake provider behind it, and real
Kafka and Redis: usage recorded streamed or not, budgets, kills (also mid-stream), PII blocks and
redaction, tool denials, upstream errors and retries."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import urllib.request
from typing import Any

import anthropic
import openai
import pytest

from streams.client.policies import BLOCKED_POLICY_ATTR
from tests.integration.gateway.conftest import GATEWAY_KEY, Harness, new_session
from tests.integration.gateway.fake_upstream import SLOW_CHUNKS

SECRET = "sk_live_" + "a" * 24


def oai(h: Harness, session: str | None = None) -> openai.OpenAI:
    headers = {"X-Governor-Session": session} if session else {}
    return openai.OpenAI(
        base_url=h.openai_url, api_key=GATEWAY_KEY, max_retries=0, default_headers=headers
    )


def ant(h: Harness, session: str | None = None) -> anthropic.Anthropic:
    headers = {"X-Governor-Session": session} if session else {}
    return anthropic.Anthropic(
        base_url=h.anthropic_url, api_key=GATEWAY_KEY, max_retries=0, default_headers=headers
    )


def llm_calls(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["kind"] == "LLM_CALL"]


def governor_of(exc: openai.APIStatusError | anthropic.APIStatusError) -> dict[str, Any]:
    body = exc.body if isinstance(exc.body, dict) else {}
    info = body.get("governor") or (body.get("error") or {}).get("governor") or {}
    assert isinstance(info, dict)
    return info


def test_openai_and_anthropic_calls_pass_with_the_provider_key_and_record_their_usage(
    harness: Harness,
) -> None:
    h, sid = harness, new_session()
    client = oai(h, sid)
    reply = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hello there"}], max_tokens=400
    )
    assert reply.choices[0].message.content == "echo: hello there"
    streamed = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "stream me"}],
        max_tokens=400,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text.strip() == "echo: stream me"
    sent = h.provider.received[-1]
    assert sent.headers["Authorization"] == "Bearer sk-fake-openai"  # never the gateway key
    assert sent.body["stream_options"] == {"include_usage": True}  # asked for, for the record
    claude = ant(h, sid).messages.create(
        model="claude-sonnet-4", max_tokens=400, messages=[{"role": "user", "content": "hi"}]
    )
    assert claude.content[0].text == "echo: hi"  # type: ignore[union-attr]
    assert h.provider.received[-1].headers["x-api-key"] == "sk-ant-fake"
    with ant(h, sid).messages.stream(
        model="claude-sonnet-4", max_tokens=400, messages=[{"role": "user", "content": "again"}]
    ) as stream:
        assert "".join(stream.text_stream).strip() == "echo: again"
    events = h.events.of(sid, lambda es: len(llm_calls(es)) == 4)
    calls = llm_calls(events)
    assert [(c["input_tokens"], c["output_tokens"], c["status"]) for c in calls] == [
        (2000, 300, "OK")
    ] * 4
    assert [c["provider"] for c in calls] == ["openai", "openai", "anthropic", "anthropic"]
    assert calls[0]["content"] == [
        {"role": "USER", "text": "hello there"},
        {"role": "ASSISTANT", "text": "echo: hello there"},
    ]
    assert events[0]["kind"] == "SESSION_START"
    assert all(e["agent_id"] == "support-bot" and e["tenant_id"] == "acme" for e in events)


def test_responses_embeddings_models_and_a_session_per_request(harness: Harness) -> None:
    h = harness
    client = oai(h)
    response = client.responses.create(model="gpt-4o", input="what now", max_output_tokens=50)
    assert response.output_text == "echo: what now"
    raw = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input="x")
    assert len(raw.parse().data) == 1
    own = raw.headers["X-Governor-Session"]
    events = h.events.of(own, lambda es: any(e["kind"] == "SESSION_END" for e in es))
    assert [e["kind"] for e in events] == ["SESSION_START", "LLM_CALL", "SESSION_END"]
    assert events[1]["operation"] == "embeddings"
    assert "gpt-*" in [m.id for m in client.models.list()]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=h.openai_url, api_key="wrong", max_retries=0).models.list()


def spend(client: openai.OpenAI, answered: list[str]) -> None:
    for _ in range(10):
        reply = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "spend"}], max_tokens=400
        )
        answered.append(reply.choices[0].message.content or "")


def read_openai_stream(client: openai.OpenAI, got: list[str], first: threading.Event) -> None:
    for chunk in client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "[slow] tell me a long story"}],
        max_tokens=400,
        stream=True,
    ):
        got.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
        first.set()


def read_anthropic_stream(
    client: anthropic.Anthropic, got: list[str], first: threading.Event
) -> None:
    with client.messages.stream(
        model="claude-sonnet-4",
        max_tokens=400,
        messages=[{"role": "user", "content": "[slow] tell me a long story"}],
    ) as stream:
        for text in stream.text_stream:
            got.append(text)
            first.set()


def test_a_session_budget_is_never_exceeded(harness: Harness) -> None:
    """$0.008 a call (2000 in, 300 out): the 7th call's estimate would pass $0.05."""
    h, sid = harness, new_session()
    client = oai(h, sid)
    sent_before = len(h.provider.received)
    answered: list[str] = []
    with pytest.raises(openai.PermissionDeniedError) as refused:
        spend(client, answered)
    assert len(answered) == 6
    assert len(h.provider.received) - sent_before == 6  # the 7th never reached the provider
    info = governor_of(refused.value)
    assert (info["policy_id"], info["action"]) == ("tight-budget", "KILL")
    events = h.events.of(sid, lambda es: any(e["status"] == "BLOCKED" for e in es))
    assert sum(c["status"] == "OK" for c in llm_calls(events)) == 6


def test_a_kill_ends_a_stream_with_the_sdks_error_event_and_refuses_what_follows(
    harness: Harness,
) -> None:
    h = harness
    for api in ("openai", "anthropic"):
        sid = new_session()
        got: list[str] = []
        first = threading.Event()

        def kill_after_first_chunk(sid: str = sid, first: threading.Event = first) -> None:
            first.wait(10)
            h.decide(sid, "KILL")

        killer = threading.Thread(target=kill_after_first_chunk)
        killer.start()
        if api == "openai":
            with pytest.raises(openai.APIError) as ended:
                read_openai_stream(oai(h, sid), got, first)
            assert "ops-kill" in str(ended.value)
        else:
            with pytest.raises(anthropic.APIStatusError) as stopped:
                read_anthropic_stream(ant(h, sid), got, first)
            assert "ops-kill" in str(stopped.value)
        killer.join()
        assert 0 < len(got) < SLOW_CHUNKS  # cut short: the fake sends them 50 ms apart
        with pytest.raises(openai.PermissionDeniedError) as after:
            oai(h, sid).chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "more"}], max_tokens=10
            )
        assert governor_of(after.value)["policy_id"] == "ops-kill"
        events = h.events.of(sid, lambda es: any(e["kind"] == "SESSION_END" for e in es))
        assert [e["status"] for e in llm_calls(events)] == ["CANCELLED"]
        assert events[-1]["status"] == "KILLED"


def test_a_throttle_delays_a_call_and_a_pause_is_a_429_with_retry_after(harness: Harness) -> None:
    h, sid = harness, new_session()
    client = oai(h, sid)
    client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "x"}], max_tokens=10
    )
    h.decide(sid, "THROTTLE", policy_id="ops-slow", parameters={"delay_ms": "400"})
    started = time.monotonic()
    client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "x"}], max_tokens=10
    )
    assert time.monotonic() - started >= 0.4
    h.decide(sid, "PAUSE", policy_id="ops-pause", epoch=2)
    with pytest.raises(openai.RateLimitError) as paused:
        oai(h, sid).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}], max_tokens=10
        )
    assert int(paused.value.response.headers["Retry-After"]) >= 1
    assert governor_of(paused.value)["action"] == "PAUSE"
    metrics = urllib.request.urlopen(f"{h.anthropic_url}/metrics").read().decode()
    assert 'governor_gateway_refusals_total{reason="pause"}' in metrics
    health = json.loads(urllib.request.urlopen(f"{h.anthropic_url}/healthz").read())
    assert health["status"] == "ok"


def test_pii_blocks_name_entity_and_hop_and_redaction_is_forwarded(harness: Harness) -> None:
    h, sid = harness, new_session()
    client = oai(h, sid)
    sent_before = len(h.provider.received)
    messages: list[Any] = [
        {"role": "user", "content": "look up my key"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "vault", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": f"the key is {SECRET}"},
    ]
    with pytest.raises(openai.PermissionDeniedError) as blocked:
        client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=10)
    info = governor_of(blocked.value)
    assert (info["entities"], info["hops"]) == (["SECRET"], ["TOOL_RESULT"])
    assert len(h.provider.received) == sent_before  # it never left
    reply = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "mail jane.doe@example.com the invoice"}],
        max_tokens=10,
    )
    assert reply.choices[0].message.content == "echo: mail <EMAIL_ADDRESS> the invoice"
    assert "jane.doe" not in json.dumps(h.provider.received[-1].body)
    card = client.chat.completions.create(  # echoed: the card is in the model's output
        model="gpt-4o",
        messages=[{"role": "user", "content": "card 4111 1111 1111 1111 ok"}],
        max_tokens=10,
    )
    assert card.choices[0].message.content == "echo: card <CREDIT_CARD> ok"
    events = h.events.of(sid, lambda es: len(llm_calls(es)) == 3)
    calls = llm_calls(events)
    assert [(c["status"], c.get("error_type")) for c in calls] == [
        ("BLOCKED", "PiiBlocked"),
        ("OK", None),
        ("OK", None),
    ]
    assert calls[2]["content"][-1] == {"role": "ASSISTANT", "text": "echo: card <CREDIT_CARD> ok"}
    assert calls[2]["attributes"]["gateway.redacted"] == "CREDIT_CARD"
    tools = [e for e in events if e["kind"] == "TOOL_CALL"]
    assert [t["tool_name"] for t in tools] == ["vault"]  # the result fed back: a tool that ran


def test_denied_tools_are_stripped_from_the_offer_and_refused_when_called(
    harness: Harness,
) -> None:
    h, sid = harness, new_session()
    client = oai(h, sid)
    tools: list[Any] = [
        {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
        for n in ("lookup", "drop_table")
    ]
    client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], tools=tools, max_tokens=10
    )
    offered = [t["function"]["name"] for t in h.provider.received[-1].body["tools"]]
    assert offered == ["lookup"]
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "[tool:drop_db]"}], max_tokens=10
        )
    assert governor_of(refused.value)["policy_id"] == "no-drops"
    allowed = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "[tool:lookup]"}],
        max_tokens=10,
        stream=True,
    )
    names = [
        call.function.name
        for chunk in allowed
        for choice in chunk.choices
        for call in choice.delta.tool_calls or ()
        if call.function and call.function.name
    ]
    assert names == ["lookup"]  # held until whole and checked, then passed on
    sid2 = new_session()
    with (
        pytest.raises(anthropic.APIStatusError) as ended,
        ant(h, sid2).messages.stream(
            model="claude-sonnet-4",
            max_tokens=100,
            messages=[{"role": "user", "content": "[tool:drop_users]"}],
        ) as stream,
    ):
        for _ in stream:
            pass
    assert "no-drops" in str(ended.value)
    ok = ant(h, sid2).messages.create(
        model="claude-sonnet-4",
        max_tokens=100,
        messages=[{"role": "user", "content": "[tool:lookup]"}],
    )
    assert [b.type for b in ok.content] == ["text", "tool_use"]
    events = h.events.of(sid, lambda es: any(e["status"] == "BLOCKED" for e in es))
    blocked = [e for e in events if e["status"] == "BLOCKED"]
    assert [(e["kind"], e["tool_name"], e["attributes"][BLOCKED_POLICY_ATTR]) for e in blocked] == [
        ("TOOL_CALL", "drop_db", "no-drops")
    ]


def test_upstream_errors_are_retried_then_passed_on_and_recorded(harness: Harness) -> None:
    h, sid = harness, new_session()
    client = oai(h, sid)
    h.provider.fail_next = 1
    reply = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "flaky"}], max_tokens=10
    )
    assert reply.choices[0].message.content == "echo: flaky"
    h.provider.fail_next = 10
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "down"}], max_tokens=10
        )
    h.provider.fail_next = 0
    with pytest.raises(openai.APIStatusError) as unreachable:
        client.chat.completions.create(
            model="gone-1", messages=[{"role": "user", "content": "x"}], max_tokens=10
        )
    assert unreachable.value.status_code == 502
    h.provider.delay_s = 0.8
    try:
        with pytest.raises(openai.APIStatusError) as late:
            client.chat.completions.create(
                model="gpt-slow", messages=[{"role": "user", "content": "x"}], max_tokens=10
            )
    finally:
        h.provider.delay_s = 0.0
    assert late.value.status_code == 504
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="llama-3", messages=[{"role": "user", "content": "x"}], max_tokens=10
        )
    events = h.events.of(sid, lambda es: len(llm_calls(es)) == 4)
    calls = llm_calls(events)
    assert [(c["status"], c.get("error_type")) for c in calls] == [
        ("OK", None),
        ("ERROR", "UpstreamHttpError"),
        ("ERROR", "UpstreamUnreachable"),
        ("ERROR", "UpstreamTimeout"),
    ]
    assert calls[0]["attributes"]["gateway.retried"] == "HTTP 503"
    assert calls[1]["attributes"]["gateway.attempts"] == "3"


def test_with_strip_a_denied_tool_call_is_taken_out_of_the_answer_streamed_or_not(
    harness: Harness,
) -> None:
    gateway = harness.running.gateway
    config = gateway.config
    strip = config.file.model_copy(update={"denied_tool_calls": "strip"})
    gateway.config = dataclasses.replace(config, file=strip)
    try:
        sid = new_session()
        reply = oai(harness, sid).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "[tool:drop_db]"}], max_tokens=10
        )
        assert reply.choices[0].message.tool_calls is None
        assert reply.choices[0].finish_reason == "stop"
        with ant(harness, sid).messages.stream(
            model="claude-sonnet-4",
            max_tokens=100,
            messages=[{"role": "user", "content": "[tool:drop_users]"}],
        ) as stream:
            final = stream.get_final_message()
        assert [b.type for b in final.content] == ["text"]
        assert final.stop_reason == "end_turn"
    finally:
        gateway.config = config
    events = harness.events.of(sid, lambda es: sum(e["status"] == "BLOCKED" for e in es) == 2)
    assert [e["tool_name"] for e in events if e["status"] == "BLOCKED"] == ["drop_db", "drop_users"]
