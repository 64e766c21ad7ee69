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
from tests.private_redis import free_low_port


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[str]:
    """The console on a port of its own, on the test's event loop."""
    runner = web.AppRunner(make_app(settings), access_log=None)
    await runner.setup()
    port = free_low_port()
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
        ("/api/top-cost?pct=0", "pct: 0 must be more than 0"),
        ("/api/top-cost?pct=lots", "pct: 'lots' is not a number"),
        ("/api/sessions?min_cost=lots", "min_cost: 'lots' is not a number"),
        ("/api/sessions?min_cost=2&max_cost=1", "cost: the least (2.0) is more than the most"),
        ("/api/sessions?max_duration=-1", "duration: -1.0 must be a number of at least 0"),
        ("/api/sessions?from=2026-11-25&to=2026-11-24", "from/to: to: the end is before"),
        ("/api/sessions?from=someday", "from/to:"),
        ("/api/sessions?limit=0", "limit: 0 must be 1 to 500"),
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
    status, _, answer = await get(f"{console}/api/sessions/nobody/tree?since=1d")
    assert status == 404
    assert answer == {"error": "no session 'nobody' ended in the last 1d (try a longer --since)"}

    status, _, answer = await get(f"{console}/api/slo")
    assert status == 503
    assert "start: governor worker" in answer["error"]
    status, page, _ = await get(f"{console}/")
    assert status == 200
    assert "No worker answers" in page
    assert "open sessions are held by the worker (start one" in page
    status, _, now = await get(f"{console}/api/sessions-now")
    assert (status, now["answered"], now["open"]) == (200, False, 0)

    async with aiohttp.ClientSession() as http:
        for asset, kind in (("console.css", "text/css"), ("console.js", "javascript")):
            async with http.get(f"{console}/static/{asset}") as response:
                assert response.status == 200
                assert kind in response.content_type
        async with http.post(f"{console}/api/outcomes") as response:
            assert response.status == 405  # read-only


async def test_mounted_under_a_root_the_api_still_answers_json(topics: Settings) -> None:
    """The worker's port mounts the console at /console: its /console/api/ errors are JSON."""
    from streams.console import mount_console

    parent = web.Application()
    mount_console(parent, topics)
    runner = web.AppRunner(parent, access_log=None)
    await runner.setup()
    port = free_low_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        status, _, answer = await get(f"http://127.0.0.1:{port}/console/api/sessions?limit=0")
        assert (status, answer) == (400, {"error": "limit: 0 must be 1 to 500"})
        status, page, _ = await get(f"http://127.0.0.1:{port}/console/sessions?limit=0")
        assert (status, "<h1>400</h1>" in page) == (400, True)
    finally:
        await runner.cleanup()


async def test_no_redis_is_a_503_naming_it(topics: Settings) -> None:
    down = topics.replace(redis_url=f"redis://127.0.0.1:{free_low_port()}/0")
    async with serving(down) as console:
        status, _, answer = await get(f"{console}/api/outcomes")
    assert status == 503
    assert f"cannot read Redis at {down.redis_url}" in answer["error"]


ADMIN, READER = "admin-token-for-the-console-test", "reader-token-for-the-console-test"


async def post(url: str, form: dict[str, str], headers: dict[str, str] | None = None) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=form, headers=headers or {}, allow_redirects=False) as response,
    ):
        body = await response.json() if response.content_type == "application/json" else None
        return response.status, body, response.headers.get("Location")


async def test_the_two_mutations_need_an_admin_token_and_say_what_is_missing(
    topics: Settings,
) -> None:
    guarded = topics.replace(api_tokens=f"admin:{ADMIN},reader:{READER}")
    form = {"title": "checkout agent loops", "sessions": "s-1", "tenants": "acme",
            "agents": "checkout", "layer": "tool", "severity": "sev2"}  # fmt: skip
    async with serving(guarded) as console:
        status, answer, _ = await post(f"{console}/api/incidents", form)
        assert (status, "a bearer token is needed" in answer["error"]) == (401, True)
        status, answer, _ = await post(f"{console}/api/incidents", {**form, "token": READER})
        assert status == 403
        assert "needs an admin token" in answer["error"]
        status, answer, _ = await post(
            f"{console}/api/incidents", {**form, "token": ADMIN, "title": " "}
        )
        assert (status, answer["error"]) == (400, "title: say what is happening, in one line")
        status, answer, _ = await post(
            f"{console}/api/incidents", {**form, "token": ADMIN, "layer": "moon"}
        )
        assert status == 400
        assert "choose one of model, prompt" in answer["error"]
        # the header console.js sends (the worker's port takes only that): it wins over the field
        bearer = {"Authorization": f"Bearer {READER}"}
        status, answer, _ = await post(f"{console}/api/incidents", {**form, "token": ADMIN}, bearer)
        assert (status, "needs an admin token" in answer["error"]) == (403, True)
        bearer = {"Authorization": f"Bearer {ADMIN}"}
        status, answer, _ = await post(f"{console}/api/incidents", {**form, "title": " "}, bearer)
        assert status == 400  # past the token: the form is checked
        elsewhere = {"Origin": "http://evil.example"}
        status, _, _ = await post(f"{console}/incidents", {**form, "token": ADMIN}, elsewhere)
        assert status == 403
        # the page's form: opened, then sent to the incident's page
        status, _, location = await post(f"{console}/incidents", {**form, "token": ADMIN})
        assert status == 303
        incident_id = location.rsplit("/", 1)[1].split("?")[0]
        status, page, _ = await get(f"{console}{location}")
        assert status == 200
        assert f"Opened {incident_id}" in page
        # (that this is `governor incident list --all --json` is asserted in the browser test)
        _, _, twin = await get(f"{console}/api/incidents")
        [opened] = [i for i in twin["incidents"] if i["incident_id"] == incident_id]
        assert (opened["title"], opened["affected_sessions"], opened["suspected_layer"],
                opened["severity"]) == (form["title"], ["s-1"], "TOOL", "SEV2")  # fmt: skip
        status, _, shown = await get(f"{console}/api/incidents/{incident_id}")
        assert (status, shown) == (200, opened)
        status, _, answer = await get(f"{console}/api/incidents/INC-nope")
        assert status == 404
        assert "governor incident list --all" in answer["error"]

        # a rollback: confirmed, with a token, and only through a running worker
        rollback = f"{console}/api/policies/rollback"
        status, answer, _ = await post(rollback, {"to_version": "1", "token": ADMIN})
        assert (status, answer["error"]) == (400, "confirm: tick the box to confirm the rollback")
        status, answer, _ = await post(rollback, {"to_version": "1", "confirm": "yes"})
        assert status == 401
        status, answer, _ = await post(
            rollback, {"to_version": "1", "confirm": "yes", "token": ADMIN}
        )
        assert status == 503
        assert "a rollback needs the running worker (start: governor worker)" in answer["error"]
        status, answer, _ = await post(
            rollback, {"to_version": "1", "confirm": "yes"}, {"Authorization": f"Bearer {ADMIN}"}
        )
        assert status == 503  # the header's token let it through to the (absent) worker
