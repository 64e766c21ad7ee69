"""Percentile error on a simulated fleet: the bucket's upper bound (before), DDSketch's
estimate (the bucket's harmonic midpoint, stated error 8.6 %) and interpolation inside the
bucket (what Governor reports, with a bound per percentile), the last two clamped to the
observed [min, max]; over session cost, session duration and step latency by kind, each merged
from several workers' histograms. No broker needed.

    python -m bench.percentiles [--sessions 20000] [--workers 3] [--seed 7]

Prints, per measure and percentile, the exact value and each estimator's relative error; then
the worst and mean error of each estimator over every (measure, percentile, scope).
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from collections.abc import Callable, Sequence

from bench.common import percentile
from streams.pipeline.aggregates import (
    GAMMA,
    LATENCY_BOUNDS_MS,
    latency_bucket,
    quantile_estimate,
)
from streams.pipeline.pricing import load_prices
from streams.query.readmodel import COST_BOUNDS_MICROS, cost_bucket, duration_bucket
from streams.settings import Settings
from streams.simulator.offline import offline_summaries, simulate_offline
from streams.simulator.params import FleetParams
from streams.simulator.plan import plan_fleet

QS = (0.5, 0.9, 0.99)
Estimator = Callable[[Sequence[int], float, Sequence[float], float, float], float]


def upper_bound(
    counts: Sequence[int], q: float, bounds: Sequence[float], lo: float, hi: float
) -> float:
    """What Governor reported before: the upper bound of the bucket holding the rank."""
    total, seen = sum(counts), 0
    rank = max(1, math.ceil(q * total))
    for i, n in enumerate(counts):
        seen += n
        if seen >= rank:
            return bounds[i] if i < len(bounds) else math.inf
    return math.inf


#: DDSketch's guarantee for its estimate, the harmonic midpoint of the bucket
DDSKETCH_ERROR = (GAMMA - 1) / (GAMMA + 1)


def midpoint(
    counts: Sequence[int], q: float, bounds: Sequence[float], lo: float, hi: float
) -> float:
    """DDSketch's estimate: 2*lo*hi/(lo+hi) of the bucket, clamped to [min, max]."""
    i = _bucket_of_rank(counts, q)
    if i == 0:
        value = bounds[0]
    elif i >= len(bounds):
        value = math.inf
    else:
        value = 2 * bounds[i - 1] * bounds[i] / (bounds[i - 1] + bounds[i])
    return max(lo, min(hi, value))


def _bucket_of_rank(counts: Sequence[int], q: float) -> int:
    rank, seen = max(1, math.ceil(q * sum(counts))), 0
    for i, n in enumerate(counts):
        seen += n
        if seen >= rank:
            return i
    return len(counts) - 1


def interpolated(
    counts: Sequence[int], q: float, bounds: Sequence[float], lo: float, hi: float
) -> float:
    return quantile_estimate(counts, q, bounds, minimum=lo, maximum=hi).value


ESTIMATORS: dict[str, Estimator] = {
    "upper bound (before)": upper_bound,
    "DDSketch midpoint+clamp": midpoint,
    "interpolated+clamp (now)": interpolated,
}


def counts_of(values: Sequence[float], bucket: Callable[[float], int], size: int) -> list[int]:
    counts = [0] * (size + 1)
    for v in values:
        counts[bucket(v)] += 1
    return counts


def merged_counts(
    values: Sequence[float], bucket: Callable[[float], int], size: int, workers: int
) -> list[int]:
    """Each worker's histogram of its share, added up as the group's answer merges them."""
    parts = [counts_of(values[i::workers], bucket, size) for i in range(workers)]
    return [sum(col) for col in zip(*parts, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    prices = load_prices(Settings.from_env().policies_dir / "prices.yaml")
    plans = plan_fleet(FleetParams(sessions=args.sessions, seed=args.seed))
    events, _ = simulate_offline(plans, prices)
    summaries = offline_summaries(events, prices)
    measures: dict[str, tuple[list[float], Callable[[float], int], Sequence[float]]] = {}
    measures["session cost (micro-USD)"] = (
        [float(s["cost_micros"]) for s in summaries],
        lambda v: cost_bucket(int(v)),
        COST_BOUNDS_MICROS,
    )
    measures["session duration (ms)"] = (
        [max(0, s["end_time_us"] - s["start_time_us"]) / 1000 for s in summaries],
        lambda v: duration_bucket(int(v * 1000)),
        LATENCY_BOUNDS_MS,
    )
    steps: dict[str, list[float]] = defaultdict(list)
    for e in events:
        if e["kind"] in ("LLM_CALL", "TOOL_CALL") and e.get("duration_us") is not None:
            steps[e["kind"]].append(e["duration_us"] / 1000)
    for kind, values in sorted(steps.items()):
        measures[f"step {kind} (ms)"] = (values, latency_bucket, LATENCY_BOUNDS_MS)

    print(
        f"{len(summaries):,} sessions, {len(events):,} events, {args.workers} workers merged; "
        f"DDSketch's stated bound: {DDSKETCH_ERROR:.2%}"
    )
    errors: dict[str, list[float]] = defaultdict(list)
    stated: list[float] = []
    over_max: dict[str, int] = defaultdict(int)
    header = f"{'measure':28} {'q':>5} {'exact':>12} " + " ".join(f"{n:>24}" for n in ESTIMATORS)
    print(header)
    for name, (values, bucket, bounds) in measures.items():
        lo, hi = min(values), max(values)
        counts = merged_counts(values, bucket, len(bounds), args.workers)
        assert counts == counts_of(values, bucket, len(bounds)), "merging changed the counts"
        for q in QS:
            truth = percentile(values, q)
            bound = quantile_estimate(counts, q, bounds, minimum=lo, maximum=hi).relative_error
            stated.append(math.inf if bound is None else bound)
            cells = []
            for est_name, estimate in ESTIMATORS.items():
                value = estimate(counts, q, bounds, lo, hi)
                err = abs(value - truth) / truth if truth else abs(value - truth)
                errors[est_name].append(err)
                over_max[est_name] += value > hi
                cells.append(f"{value:>12,.1f} ({err:>7.2%})")
            print(f"{name:28} {q:>5} {truth:>12,.1f} " + " ".join(f"{c:>24}" for c in cells))
        print(f"{'':28} {'max':>5} {hi:>12,.1f}")
    print()
    for est_name, errs in errors.items():
        print(
            f"{est_name:26} worst {max(errs):7.2%}  mean {sum(errs) / len(errs):7.2%}  "
            f"above the maximum: {over_max[est_name]} of {len(errs)}"
        )
    print(
        f"interpolated: stated bound per percentile worst {max(stated):.2%}, "
        f"mean {sum(stated) / len(stated):.2%} (the --json *_error fields)"
    )


if __name__ == "__main__":
    main()
