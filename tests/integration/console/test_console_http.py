"""The console's HTTP surface on the real stack (no worker): the JSON twins are the answers,
bad queries are 400s that say the fix, an unknown session a 404, no worker or no Redis a 503,
and the assets are served from the package."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import web

from streams.console.server import make_app
from streams.query.answers import Answers
from streams.query.readmodel import SessionReadModel
from streams.redis_client import redis_client
from streams.settings import Settings
from tests.integration.console.test_console_browser import console_port


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[str]:
    """The console on a port of its own, on the test's event loop."""
    runner = web.AppRunner(make_app(settings), access_log=None)
    await runner.setup()
    port = console_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def get(url: str) -> tuple[int, str, Any]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        body = await response.text()
        as_json = await response.json() if response.content_type == "application/json" else None
        return response.status, body, as_json


async def test_answers_errors_and_assets(topics: Settings) -> None:
    async with serving(topics) as console:
        await answers_errors_and_assets(console, topics)


async def answers_errors_and_assets(console: str, topics: Settings) -> None:
    status, _, outcomes = await get(f"{console}/api/outcomes?since=7d")
    assert status == 200
    model = SessionReadModel(redis_client(topics), topics.redis_key_prefix)
    assert outcomes == Answers(model).outcomes("7d")

    for query, says in (
        ("/api/outcomes?since=soon", "since: 'soon' is not a duration"),
        ("/api/sessions?pct=0", "pct: 0 must be more than 0"),
        ("/api/sessions?pct=lots", "pct: 'lots' is not a number"),
        ("/api/sessions?outcome=DONE", "outcome must be one of OK, ERROR, TIMEOUT, KILLED"),
    ):
        status, _, answer = await get(console + query)
        assert status == 400, query
        assert says in answer["error"], answer

    status, page, _ = await get(f"{console}/sessions?outcome=DONE")
    assert status == 400
    assert "outcome must be one of" in page
    assert "<h1>400</h1>" in page

    # topics this fresh may have no partition leader yet: a 503 naming Kafka, for a moment
    deadline = time.monotonic() + 20
    status, _, answer = await get(f"{console}/api/sessions/nobody/timeline")
    while status == 503 and time.monotonic() < deadline:
        assert "cannot read Kafka" in answer["error"]
        await asyncio.sleep(0.5)
        status, _, answer = await get(f"{console}/api/sessions/nobody/timeline")
    assert status == 404
    assert "no events of session 'nobody'" in answer["error"]

    status, _, answer = await get(f"{console}/api/slo")
    assert status == 503
    assert "start: governor worker" in answer["error"]
    status, page, _ = await get(f"{console}/")
    assert status == 200
    assert "No worker answers" in page

    async with aiohttp.ClientSession() as http:
        for asset, kind in (("console.css", "text/css"), ("console.js", "javascript")):
            async with http.get(f"{console}/static/{asset}") as response:
                assert response.status == 200
                assert kind in response.content_type
        async with http.post(f"{console}/api/outcomes") as response:
            assert response.status == 405  # read-only


async def test_no_redis_is_a_503_naming_it(topics: Settings) -> None:
    down = topics.replace(redis_url=f"redis://127.0.0.1:{console_port()}/0")
    async with serving(down) as console:
        status, _, answer = await get(f"{console}/api/outcomes")
    assert status == 503
    assert f"cannot read Redis at {down.redis_url}" in answer["error"]
