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
import redis
from aiohttp import web

from bench.common import Stopwatch, bench_stack, percentile, realistic_events
from bench.throughput import fill
from streams.codec import Codecs
from streams.console.server import make_app
from streams.query.answers import Answers
from streams.query.readmodel import SessionReadModel
from streams.settings import Settings
from streams.worker import WorkerProcess


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
    with bench_stack() as settings:
        codecs = Codecs.load(settings.schemas_dir)
        clock = Stopwatch()
        events = realistic_events(args.events, days=7.0)
        sessions = len({e["session_id"] for e in events})
        print(
            f"generated {len(events):,} events of {sessions:,} sessions in {clock.elapsed():.0f}s",
            flush=True,
        )
        fill(settings, codecs, events)
        del events
        model = SessionReadModel(
            redis.Redis.from_url(settings.redis_url), settings.redis_key_prefix
        )
        with WorkerProcess(settings, settings.state_dir / "logs" / "bench-console.log") as worker:
            clock = Stopwatch()
            while (worker.get_json("/ingest") or {}).get("processed", 0) < args.events:
                time.sleep(2)
            while Answers(model).outcomes("30d")["sessions"] < sessions * 0.9:
                time.sleep(2)
            time.sleep(3)
            print(f"worker and read-model caught up in {clock.elapsed():.0f}s", flush=True)
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
            times = asyncio.run(timed(worker.settings, paths))
            print(f"console on {args.events:,} events ({sessions:,} sessions), one at a time:")
            for name, took in times.items():
                print(
                    f"  {name:<24} n={len(took):<4} p50 {percentile(took, 0.5) * 1000:7.1f} ms"
                    f"   p99 {percentile(took, 0.99) * 1000:7.1f} ms"
                    f"   max {max(took) * 1000:7.1f} ms"
                )


if __name__ == "__main__":
    main()
