"""A fake LLM provider (the provider is not ours): OpenAI and Anthropic APIs, streamed or not.

What it answers is steered by the last user text: ``[tool:NAME]`` asks for a call of tool NAME,
``[slow]`` streams slowly (100 chunks, 50 ms apart: time for a KILL to arrive). Otherwise it
echoes. Usage is fixed: 2000 input tokens, 300 output tokens (gpt-4o: $0.008 a call).
``fail_next`` answers that many requests with 503 first. Every request is kept in
``received`` (path, headers, body) so tests can see what reached the provider.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

OPENAI_KEY = "sk-fake-openai"
ANTHROPIC_KEY = "sk-ant-fake"
INPUT_TOKENS = 2000
OUTPUT_TOKENS = 300
SLOW_CHUNKS = 100
SLOW_DELAY_S = 0.05
TOOL = re.compile(r"\[tool:([A-Za-z0-9_]+)\]")


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeProvider:
    received: list[Received] = field(default_factory=list)
    fail_next: int = 0
    #: seconds to wait before answering (a slow provider: timeouts)
    delay_s: float = 0.0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/messages", self.messages)
        return app

    async def _take(self, request: web.Request, key_ok: bool) -> dict[str, Any] | web.Response:
        body = await request.json()
        self.received.append(Received(request.path, dict(request.headers), body))
        if not key_ok:
            return web.json_response({"error": {"message": "bad provider key"}}, status=401)
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.json_response({"error": {"message": "overloaded"}}, status=503)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return dict(body)

    # --- OpenAI -------------------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        ok = request.headers.get("Authorization") == f"Bearer {OPENAI_KEY}"
        body = await self._take(request, ok)
        if isinstance(body, web.Response):
            return body
        text = _last_user(body.get("messages") or [])
        tool = TOOL.search(text)
        usage = {"prompt_tokens": INPUT_TOKENS, "completion_tokens": OUTPUT_TOKENS}
        usage["total_tokens"] = INPUT_TOKENS + OUTPUT_TOKENS
        answer = f"echo: {text}"
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": None if tool else answer}
            if tool:
                message["tool_calls"] = [_openai_call(tool.group(1))]
            choice = {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if tool else "stop",
            }
            return web.json_response(_completion(body["model"], [choice], usage))
        out = await _sse(request)
        base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0}
        base["model"] = body["model"]

        async def chunk(delta: dict[str, Any], finish: str | None = None) -> None:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            await out.write(f"data: {json.dumps({**base, 'choices': [choice]})}\n\n".encode())

        await chunk({"role": "assistant", "content": ""})
        for word in _words(answer, "[slow]" in text):
            await chunk({"content": word})
            if "[slow]" in text:
                await asyncio.sleep(SLOW_DELAY_S)
        if tool:
            call = _openai_call(tool.group(1))
            await chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            **call,
                            "function": {"name": call["function"]["name"], "arguments": ""},
                        }
                    ]
                }
            )
            await chunk(
                {
                    "tool_calls": [
                        {"index": 0, "function": {"arguments": call["function"]["arguments"]}}
                    ]
                }
            )
        await chunk({}, "tool_calls" if tool else "stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            await out.write(
                f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n".encode()
            )
        await out.write(b"data: [DONE]\n\n")
        await out.write_eof()
        return out

    async def responses(self, request: web.Request) -> web.StreamResponse:
        ok = request.headers.get("Authorization") == f"Bearer {OPENAI_KEY}"
        body = await self._take(request, ok)
        if isinstance(body, web.Response):
            return body
        raw = body.get("input")
        text = raw if isinstance(raw, str) else json.dumps(raw)
        usage = {
            "input_tokens": INPUT_TOKENS,
            "output_tokens": OUTPUT_TOKENS,
            "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        }
        message = {
            "type": "message",
            "id": "msg_1",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": f"echo: {text}", "annotations": []}],
        }
        response: dict[str, Any] = {
            "id": "resp_1",
            "object": "response",
            "created_at": 0,
            "model": body["model"],
            "status": "completed",
            "output": [message],
            "usage": usage,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
        }
        if not body.get("stream"):
            return web.json_response(response)
        out = await _sse(request)
        events: list[dict[str, Any]] = [
            {
                "type": "response.created",
                "response": {**response, "status": "in_progress", "output": [], "usage": None},
            },
            {
                "type": "response.output_text.delta",
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "delta": f"echo: {text}",
            },
            {"type": "response.completed", "response": response},
        ]
        for seq, event in enumerate(events):
            event["sequence_number"] = seq
            await out.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
        await out.write_eof()
        return out

    async def embeddings(self, request: web.Request) -> web.Response:
        ok = request.headers.get("Authorization") == f"Bearer {OPENAI_KEY}"
        body = await self._take(request, ok)
        if isinstance(body, web.Response):
            return body
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [
            {"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
            for i, _ in enumerate(inputs)
        ]
        usage = {"prompt_tokens": 8 * len(inputs), "total_tokens": 8 * len(inputs)}
        return web.json_response(
            {"object": "list", "data": data, "model": body["model"], "usage": usage}
        )

    # --- Anthropic ----------------------------------------------------------------------------

    async def messages(self, request: web.Request) -> web.StreamResponse:
        ok = request.headers.get("x-api-key") == ANTHROPIC_KEY
        body = await self._take(request, ok)
        if isinstance(body, web.Response):
            return body
        text = _last_user(body.get("messages") or [])
        tool = TOOL.search(text)
        slow = "[slow]" in text
        answer = f"echo: {text}"
        content: list[dict[str, Any]] = [{"type": "text", "text": answer}]
        if tool:
            content.append(
                {"type": "tool_use", "id": "toolu_1", "name": tool.group(1), "input": {"q": "x"}}
            )
        message: dict[str, Any] = {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": "tool_use" if tool else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": OUTPUT_TOKENS},
        }
        if not body.get("stream"):
            return web.json_response(message)
        out = await _sse(request)

        async def event(kind: str, data: dict[str, Any]) -> None:
            await out.write(
                f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()
            )

        start = {**message, "content": [], "stop_reason": None}
        start["usage"] = {"input_tokens": INPUT_TOKENS, "output_tokens": 1}
        await event("message_start", {"message": start})
        await event(
            "content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}
        )
        for word in _words(answer, slow):
            await event(
                "content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": word}}
            )
            if slow:
                await asyncio.sleep(SLOW_DELAY_S)
        await event("content_block_stop", {"index": 0})
        if tool:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": "toolu_1",
                "name": tool.group(1),
                "input": {},
            }
            await event("content_block_start", {"index": 1, "content_block": block})
            delta = {"type": "input_json_delta", "partial_json": '{"q": "x"}'}
            await event("content_block_delta", {"index": 1, "delta": delta})
            await event("content_block_stop", {"index": 1})
        stop = {"stop_reason": "tool_use" if tool else "end_turn", "stop_sequence": None}
        await event("message_delta", {"delta": stop, "usage": {"output_tokens": OUTPUT_TOKENS}})
        await event("message_stop", {})
        await out.write_eof()
        return out


def _last_user(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") in ("user", "tool"):
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(
                    str(p.get("text") or p.get("content") or "")
                    for p in content
                    if isinstance(p, dict)
                )
    return ""


def _words(text: str, slow: bool) -> list[str]:
    words = [w + " " for w in text.split()] or [""]
    if slow:
        words = (words * SLOW_CHUNKS)[:SLOW_CHUNKS]
    return words


def _openai_call(name: str) -> dict[str, Any]:
    return {
        "id": "call_1",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps({"q": "x"})},
    }


def _completion(model: str, choices: list[dict[str, Any]], usage: dict[str, int]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": choices,
        "usage": usage,
    }


async def _sse(request: web.Request) -> web.StreamResponse:
    out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await out.prepare(request)
    return out


def main() -> None:
    """``python -m tests.integration.gateway.fake_upstream --port P`` (for bench/gateway.py)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(FakeProvider().app(), host="127.0.0.1", port=args.port, access_log=None)


if __name__ == "__main__":
    main()
