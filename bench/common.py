"""Shared by the benchmarks: a stack to run on, isolated topics, realistic events, percentiles."""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from streams import stack
from streams.pipeline.pricing import load_prices
from streams.settings import Settings
from streams.simulator.offline import simulate_offline
from streams.simulator.params import FleetParams
from streams.simulator.plan import plan_fleet
from streams.topics import ensure_topics


@contextlib.contextmanager
def bench_stack() -> Iterator[Settings]:
    """Settings on isolated topics of a running stack, started here (and stopped) if needed."""
    base = Settings.from_env()
    started = False
    if not all(s.running for s in stack.status(base)) and base.bootstrap == Settings().bootstrap:
        print("starting the local stack (governor up) ...", flush=True)
        stack.up(base)
        started = True
    tag = uuid.uuid4().hex[:6]
    settings = base.replace(topic_prefix=f"bench{tag}.", app_id=f"bench-{tag}")
    ensure_topics(settings)
    try:
        yield settings
    finally:
        if started:
            stack.down(base)


def realistic_events(count: int, seed: int = 3, days: float = 1.0) -> list[dict[str, Any]]:
    """At least ``count`` simulator events of a fleet, interleaved in event-time order."""
    settings = Settings.from_env()
    prices = load_prices(settings.policies_dir / "prices.yaml")
    sessions = max(100, count // 9)
    while True:
        plans = plan_fleet(FleetParams(sessions=sessions, seed=seed, days=days))
        events, _truth = simulate_offline(plans, prices)
        if len(events) >= count:
            break
        sessions = int(sessions * count / max(1, len(events)) * 1.05) + 10
    events.sort(key=lambda e: (e["start_time_us"], e["seq"]))
    return events


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started
