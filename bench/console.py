"""How fast the console renders its pages on a simulated fleet (default a week of 1M events).

    python -m bench.console [--events 1000000] [--requests 300]

Fills a fresh events topic with a realistic simulated week (as bench.answers does), lets a
worker account for it, then serves `governor console` in this process and times ``--requests``
GETs of each page (and its JSON twin), one at a time over HTTP, as a browser asks them: p50 and
p99 of the whole response, render included. The session timeline is timed on the most
expensive sessions of the last 7 days (it reads Kafka: fewer requests, ``--timelines``).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp
from aiohttp import web

from bench.answers import accounted_week
from bench.common import bench_stack, percentile
from streams.console.server import make_app
from streams.query.answers import Answers
from streams.settings import Settings


async def timed(settings: Settings, paths: dict[str, list[str]]) -> dict[str, list[float]]:
    runner = web.AppRunner(make_app(settings), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = int(runner.addresses[0][1])
    times: dict[str, list[float]] = {}
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            for name, urls in paths.items():
                for url in urls:
                    started = time.perf_counter()
                    async with http.get(url) as response:
                        await response.read()
                        assert response.status == 200, (url, response.status)
                    times.setdefault(name, []).append(time.perf_counter() - started)
    finally:
        await runner.cleanup()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--timelines", type=int, default=30)
    args = parser.parse_args()
    with (
        bench_stack() as settings,
        accounted_week(settings, args.events, "bench-console.log") as (model, sessions),
    ):
        top = Answers(model).top_cost(pct=100, since="7d")["top"][: args.timelines]
        n = args.requests
        paths = {
            "overview": ["/?since=7d"] * n,
            "api/overview": ["/api/overview?since=7d"] * n,
            "sessions": ["/sessions?since=24h&pct=10"] * n,
            "sessions (a tenant, 7d)": ["/sessions?since=7d&pct=10&tenant=acme"] * n,
            "api/sessions": ["/api/sessions?since=24h&pct=10"] * n,
            "timeline": [f"/sessions/{s['session_id']}" for s in top],
        }
        times = asyncio.run(timed(settings, paths))
        print(f"console on {args.events:,} events ({sessions:,} sessions), one at a time:")
        for name, took in times.items():
            print(
                f"  {name:<24} n={len(took):<4} p50 {percentile(took, 0.5) * 1000:7.1f} ms"
                f"   p99 {percentile(took, 0.99) * 1000:7.1f} ms"
                f"   max {max(took) * 1000:7.1f} ms"
            )


if __name__ == "__main__":
    main()
