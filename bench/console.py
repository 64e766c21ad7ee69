"""How fast the console renders its pages on a simulated week (default 1M events).

    python -m bench.console [--events 1000000] [--requests 20] [--timelines 10] [--worker]

Without ``--worker`` (the default) the week's SessionSummary records are computed offline
(:func:`streams.simulator.offline.offline_summaries`, the worker's own fold) and applied to a
fresh read-model with :meth:`SessionReadModel.apply` (what the worker's read-model stage calls),
and the events are produced to a fresh events topic for the timelines: the same read-model as a
worker's, in minutes instead of the worker's catch-up. No worker runs, so the latency answer is
the read-model's and there are no PII findings or drift samples (their pages are timed empty).
With ``--worker``, a worker accounts for the topic (bench.answers' ``accounted_week``).

Serves the console in this process and times ``--requests`` GETs of each page (and JSON twin),
one at a time over HTTP as a browser asks them: p50 / p99 / max of the whole response. The 7-day
pages are timed twice: reading every hour's counters (as before the day rollups) and through
the rollups (first request included, which writes them), and the answers of both are asserted
equal but for float rounding in evaluation-score sums.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Iterator

import aiohttp
import redis
from aiohttp import web

from bench.answers import accounted_week
from bench.common import Stopwatch, bench_stack, percentile, realistic_events
from bench.throughput import fill
from streams.codec import Codecs
from streams.console.server import make_app
from streams.pipeline.pricing import load_prices
from streams.query import rollups
from streams.query.answers import Answers
from streams.query.readmodel import SessionReadModel
from streams.settings import Settings
from streams.simulator.offline import offline_summaries

APPLY_BATCH = 2_000


@contextlib.contextmanager
def direct_week(settings: Settings, count: int) -> Iterator[tuple[SessionReadModel, int]]:
    """A simulated week of ``count`` events: on a fresh events topic, and its summaries applied
    straight to the read-model."""
    clock = Stopwatch()
    events = realistic_events(count, days=7.0)
    prices = load_prices(settings.policies_dir / "prices.yaml")
    summaries = offline_summaries(events, prices)
    print(f"generated {len(events):,} events, {len(summaries):,} sessions in "
          f"{clock.elapsed():.0f}s", flush=True)  # fmt: skip
    clock = Stopwatch()
    fill(settings, Codecs.load(settings.schemas_dir), events)
    del events
    model = SessionReadModel(redis.Redis.from_url(settings.redis_url), settings.redis_key_prefix)
    for start in range(0, len(summaries), APPLY_BATCH):
        model.apply(summaries[start : start + APPLY_BATCH], settings.quality_threshold)
    print(f"events on Kafka, summaries in the read-model in {clock.elapsed():.0f}s", flush=True)
    yield model, len(summaries)


@contextlib.contextmanager
def reused_week(settings: Settings) -> Iterator[tuple[SessionReadModel, int]]:
    """The read-model (and events topic) an earlier run filled under ``settings``' prefix."""
    model = SessionReadModel(redis.Redis.from_url(settings.redis_url), settings.redis_key_prefix)
    sessions = sum(1 for _ in model.redis.scan_iter(model.summary_key("*"), count=10_000))
    print(f"reusing {settings.redis_key_prefix}: {sessions:,} sessions", flush=True)
    yield model, sessions


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


def report(title: str, times: dict[str, list[float]]) -> None:
    print(title, flush=True)
    for name, took in times.items():
        print(
            f"  {name:<30} n={len(took):<4} p50 {percentile(took, 0.5) * 1000:7.1f} ms"
            f"   p99 {percentile(took, 0.99) * 1000:7.1f} ms   max {max(took) * 1000:7.1f} ms",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--timelines", type=int, default=10)
    parser.add_argument("--worker", action="store_true", help="Account with a worker.")
    parser.add_argument(
        "--reuse",
        metavar="PREFIX",
        help="Time the week an earlier run left (its topic prefix, e.g. bench76d4e0.) "
        "instead of filling a new one.",
    )
    args = parser.parse_args()
    with bench_stack() as fresh:
        settings = fresh if not args.reuse else fresh.replace(topic_prefix=args.reuse)
        week = (
            reused_week(settings)
            if args.reuse
            else accounted_week(settings, args.events, "bench-console.log")
            if args.worker
            else direct_week(settings, args.events)
        )
        with week as (model, sessions):
            n = args.requests
            seven_day = {
                "overview (7d)": ["/?since=7d"] * n,
                "api/overview (7d)": ["/api/overview?since=7d"] * n,
                "cost (top 10% of 24h)": ["/cost?pct=10"] * n,
                "cost chart (7 days)": ["/cost/chart.svg"] * n,
            }
            # both answers at one instant: the week's window moves while the pages are timed
            instant = Answers(model).now_us
            rollups.ENABLED = False
            hourly = Answers(model, clock_us=instant)
            before = (hourly.outcomes("7d"), hourly.cost())
            report(
                f"console on {args.events:,} events ({sessions:,} sessions), hour by hour "
                "(no day rollups):",
                asyncio.run(timed(settings, seven_day)),
            )
            rollups.ENABLED = True
            report(
                "the same through the day rollups (the first request writes them):",
                asyncio.run(timed(settings, seven_day)),
            )
            rolled = Answers(model, clock_us=instant)
            after = (rolled.outcomes("7d"), rolled.cost())
            assert after[0] == before[0], "outcomes differ through the rollups"
            assert after[1] == before[1], "cost differs through the rollups"
            top = Answers(model).top_cost(pct=100, since="7d")["top"][: args.timelines]
            tenant = top[0]["tenant_id"] if top else "acme"
            others = {
                "sessions (24h)": ["/sessions?since=24h"] * n,
                "api/sessions (24h)": ["/api/sessions?since=24h"] * n,
                f"sessions (7d, {tenant})": [f"/sessions?since=7d&tenant={tenant}"] * n,
                "sessions (7d, >= $0.05)": ["/sessions?since=7d&min_cost=0.05"] * n,
                "cost (top 10% of 7d)": ["/cost?since=7d&pct=10"] * max(1, n // 4),
                "pii (7d)": ["/pii?since=7d"] * n,
                "drift": ["/drift"] * n,
                "policies": ["/policies"] * max(1, n // 4),
                "incidents": ["/incidents"] * max(1, n // 4),
                "timeline": [f"/sessions/{s['session_id']}" for s in top],
            }
            report("the other pages:", asyncio.run(timed(settings, others)))


if __name__ == "__main__":
    main()
