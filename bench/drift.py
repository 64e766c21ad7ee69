"""Drift detection over many seeds: how soon a prompt change is caught, how often nothing is.

For each seed, two simulated fleets (offline events folded into the SessionSummaries a worker
publishes) go through the drift detector on the real Redis: one where acme/support-bot's prompt
change raises its tool-call rate by ``--factor``, one with no change at all. Prints, per seed,
the sessions after the change when the drift alert fired and its layer, and every alert the
no-change fleet raised (each one is a false alarm).

    python -m bench.drift --seeds 10 --sessions 3000
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

import redis

from streams.pipeline.pricing import load_prices
from streams.query.drift import DriftDetector, DriftStore
from streams.settings import Settings
from streams.simulator.offline import offline_summaries, simulate_offline
from streams.simulator.params import FleetParams
from streams.simulator.plan import plan_fleet

BATCH = 200


def run_fleet(client: redis.Redis, params: FleetParams) -> tuple[list[dict[str, Any]], int]:
    """Every alert the detector raised, and the changed scope's sessions after the change when
    the first drift alert on that scope came out (-1 if none)."""
    prices = load_prices(Settings.from_env().policies_dir / "prices.yaml")
    events, _truth = simulate_offline(plan_fleet(params), prices, concurrency=16)
    summaries = offline_summaries(events, prices)
    detector = DriftDetector(DriftStore(client, f"benchdrift{uuid.uuid4().hex[:8]}."))
    changed = f"{params.changed_tenant}/{params.changed_agent}"
    alerts: list[dict[str, Any]] = []
    after = 0
    caught_at = -1
    for start in range(0, len(summaries), BATCH):
        batch = summaries[start : start + BATCH]
        for s in batch:
            if f"{s['tenant_id']}/{s['agent_id']}" == changed:
                after += s["prompt_version"] == params.prompt_after != params.prompt_before
        raised = detector.observe(batch)
        for alert in raised:
            if caught_at < 0 and f"{alert['tenant_id']}/{alert['agent_id']}" == changed:
                caught_at = after
        alerts.extend(raised)
    return alerts, caught_at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--sessions", type=int, default=3000)
    parser.add_argument("--factor", type=float, default=1.3)
    args = parser.parse_args()
    client = redis.Redis.from_url(Settings.from_env().redis_url)
    caught: list[int] = []
    false_alarms = 0
    started = time.perf_counter()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        base = FleetParams(sessions=args.sessions, seed=seed, end_us=1_795_000_000_000_000)
        change = base.replace(
            changed_tool_call_factor=args.factor, changed_tool_error_rate=base.tool_error_rate
        )
        quiet = base.replace(
            prompt_after=base.prompt_before,
            changed_tool_call_factor=1.0,
            changed_tool_error_rate=base.tool_error_rate,
        )
        alerts, at = run_fleet(client, change)
        layers = sorted({str(a["layer"]) for a in alerts})
        caught.append(at)
        quiet_alerts, _ = run_fleet(client, quiet)
        false_alarms += len(quiet_alerts)
        print(
            f"seed {seed:3}: change caught after {at if at >= 0 else 'never':>5} sessions "
            f"(alerts {len(alerts)}, layers {layers}); no-change fleet: {len(quiet_alerts)} alerts"
            + "".join(f"\n      false alarm: {a['summary']}" for a in quiet_alerts),
            flush=True,
        )
    hits = sorted(c for c in caught if c >= 0)
    print(
        f"\n{len(hits)}/{len(caught)} changes caught; sessions after the change: "
        f"median {hits[len(hits) // 2] if hits else '-'}, max {hits[-1] if hits else '-'}; "
        f"false alarms in {args.seeds} no-change fleets: {false_alarms}; "
        f"{time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
