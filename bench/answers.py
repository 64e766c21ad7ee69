"""How fast `governor ask` answers on a simulated week of at least 1M events.

    python -m bench.answers [--events 1000000]

Fills a fresh events topic with a realistic simulated week, lets a worker account for it (its
read-model fills from gov.sessions), then times every question several times, as the CLI asks
them (read-model in Redis; latency and slo through the worker's HTTP API).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis

from bench.common import Stopwatch, bench_stack, percentile, realistic_events
from bench.throughput import fill
from streams.codec import Codecs
from streams.query.answers import Answers
from streams.query.readmodel import SessionReadModel
from streams.settings import Settings
from streams.worker import WorkerProcess, fetch_json


@contextlib.contextmanager
def accounted_week(
    settings: Settings, count: int, log_name: str
) -> Iterator[tuple[SessionReadModel, int]]:
    """A simulated week of ``count`` events on a fresh topic, accounted by a worker of its own
    (running until the block ends) whose read-model has caught up: that read-model, and how
    many sessions the week holds."""
    codecs = Codecs.load(settings.schemas_dir)
    clock = Stopwatch()
    events = realistic_events(count, days=7.0)
    sessions = len({e["session_id"] for e in events})
    print(
        f"generated {len(events):,} events of {sessions:,} sessions in {clock.elapsed():.0f}s",
        flush=True,
    )
    fill(settings, codecs, events)
    del events
    model = SessionReadModel(redis.Redis.from_url(settings.redis_url), settings.redis_key_prefix)
    with WorkerProcess(settings, settings.state_dir / "logs" / log_name) as worker:
        clock = Stopwatch()
        while (worker.get_json("/ingest") or {}).get("processed", 0) < count:
            time.sleep(2)
        while Answers(model).outcomes("30d")["sessions"] < sessions * 0.9:
            time.sleep(2)
        time.sleep(3)
        print(f"worker and read-model caught up in {clock.elapsed():.0f}s", flush=True)
        yield model, sessions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with (
        bench_stack() as settings,
        accounted_week(settings, args.events, "bench-answers.log") as (model, _sessions),
    ):
        base = f"http://{settings.web_host}:{settings.web_port}/ask"
        questions: dict[str, Callable[[], Any]] = {
            "latency": lambda: fetch_json(f"{base}/latency?window=24h", timeout_s=30),
            "outcomes": lambda: Answers(model).outcomes("24h"),
            "cost": lambda: Answers(model).cost(),
            "top-cost": lambda: Answers(model).top_cost(1.0, "24h"),
            "quality": lambda: Answers(model).quality(settings.quality_threshold, "7d"),
            "slo": lambda: fetch_json(f"{base}/slo", timeout_s=30),
            "pii": lambda: fetch_json(f"{base}/pii?since=7d", timeout_s=30),
        }
        for name, ask in questions.items():
            times = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                assert ask() is not None, name
                times.append(time.perf_counter() - started)
            print(
                f"ask {name:<9} p50 {percentile(times, 0.5) * 1000:7.1f} ms   "
                f"max {max(times) * 1000:7.1f} ms"
            )


if __name__ == "__main__":
    main()
