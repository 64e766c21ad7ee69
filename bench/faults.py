"""Faults during a fleet, longer and bigger than the test suite's: one line of figures per fault.

    python -m bench.faults [--sessions 1500] [--only redis-stop] [--redis-stop-s 120]
                           [--redis-down-s 15] [--worker-stop-s 30] [--poison-spacing-s 1]
                           [--policy-hold-s 10]

Uses the stack of GOVERNOR_BOOTSTRAP (starting the local one if needed); each fault gets its own
topics, its own worker and, for the Redis faults, a private redis-server. The scenarios are the
ones of tests/reliability/test_faults.py (helpers in tests/reliability/faults.py, imported from
there): a planned fleet produced at a steady rate, a probe session breaking a budget every
second, the fault in the middle, closing events, then the worker's totals against the truth of
exactly the events produced. Per fault it prints:

- events: records produced (fleet, probes, poison hosts and poison);
- lost: good events the worker did not account; off: sessions whose totals or summary
  differ from the truth (0 and 0 is the only good answer; the read-model, the decision mirror
  and the dead letters are checked too, and any difference is listed under the table);
- KILL ms: the raw Kafka produce->consume p99 measured before the fleet, the probes' KILL
  latency (breaking event produced -> KILL read on the control topic) max before the fault and
  max during it;
- red s: how long /readyz was not 200 from the fault's start to its recovery;
- recovery s: from the end of the fault until /readyz is 200 and the committed offsets have
  passed the end of the events topic as it was when the fault ended.
"""

from __future__ import annotations

import argparse
import math
import sys
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.common import bench_stack, percentile
from bench.kill_latency import kafka_round_trips
from streams.codec import Codecs
from streams.pipeline.pricing import load_prices
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.private_redis import free_low_port
from tests.reliability.faults import (
    REPO,
    Fault,
    FaultRun,
    PolicyChange,
    Scenario,
    poison,
    poison_corpus,
    policy_files,
    redis_kill,
    redis_stop,
    run_fault,
    worker_stop,
)

FAULTS = ("redis-stop", "redis-kill", "worker-stop", "poison", "policies")


@dataclass
class Row:
    fault: str
    events: int
    lost: int
    off: int
    raw_p99_ms: float
    kill_before_ms: float
    kill_during_ms: float
    red_s: float
    recovery_s: float | None
    problems: list[str]


def plan(
    name: str, args: argparse.Namespace, folder: Path
) -> tuple[Scenario, Fault, list[PolicyChange]]:
    """The scenario and fault of ``name``: the fleet runs on for a while after the fault."""
    changes: list[PolicyChange] = []
    lead = 30.0
    if name == "redis-stop":
        duration, fault = args.redis_stop_s, redis_stop(args.redis_stop_s)
    elif name == "redis-kill":
        duration, fault = args.redis_down_s, redis_kill(args.redis_down_s)
    elif name == "worker-stop":
        duration, fault = args.worker_stop_s, worker_stop(args.worker_stop_s)
    elif name == "poison":
        codecs = Codecs.load(Settings().schemas_dir)
        kinds = poison_corpus(codecs, load_prices(REPO / "policies" / "prices.yaml"))
        duration, fault = len(kinds) * args.poison_spacing_s, poison(kinds, args.poison_spacing_s)
        lead = 10.0
    elif name == "policies":
        fault, changes = policy_files(folder / "scratch", hold_s=args.policy_hold_s)
        duration, lead = 3 * (args.policy_hold_s + 6), 10.0
    else:
        raise ValueError(name)
    scenario = Scenario(
        name,
        sessions=args.sessions,
        seed=args.seed,
        fleet_s=lead + duration + 45,
        fault_at_s=lead,
        settle_timeout_s=300,
        private_redis=name.startswith("redis"),
    )
    return scenario, fault, changes


def problems_of(run: FaultRun, name: str, changes: list[PolicyChange]) -> list[str]:
    problems = [*run.total_problems(), *run.summary_problems()]
    problems += run.read_model_problems or []
    problems += [f"mirror: {t}: {p}" for t, p in (run.mirror_problems or {}).items()]
    if run.worker_exit is not None:
        problems.append(f"the worker exited with {run.worker_exit}")
    if run.raw_truths != run.truths:
        problems.append("the raw topic's truth differs from the events produced")
    if name == "poison":
        letters = Counter(d.kind for d in run.dead_letters)
        kinds = {k.name for k in poison_corpus(run.ctx.codecs, run.ctx.prices)}
        problems += [f"DLQ: {k} {letters.get(k, 0)} times" for k in kinds if letters.get(k) != 1]
        problems += [f"DLQ: {n} records of no poison kind" for k, n in letters.items() if not k]
    for change in changes:
        if change.refused is None or change.green is None or change.reload_errors != 1:
            problems.append(f"policies: {change}")
    missing = [p.session_id for p in run.probes if p.latency_s is None]
    if missing:
        problems.append(f"{len(missing)} probes never killed")
    return problems


def measure(name: str, base: Settings, folder: Path, args: argparse.Namespace) -> Row:
    tag = uuid.uuid4().hex[:6]
    settings = base.replace(
        topic_prefix=f"{base.topic_prefix}{name}-{tag}.",
        app_id=f"{base.app_id}-{name}-{tag}",
        web_port=free_low_port(),
        event_partitions=args.partitions,
    )
    ensure_topics(settings)
    rtts = kafka_round_trips(settings, 100)
    scenario, fault, changes = plan(name, args, folder)
    run = run_fault(settings, folder / name, scenario, fault, log=lambda line: print(line))
    ctx = run.ctx
    before = [p.latency_s for p in run.probes if p.sent_at < ctx.fault_start and p.latency_s]
    during = [
        p.latency_s
        for p in run.probes_between(ctx.fault_start, ctx.fault_end)
        if p.latency_s is not None
    ]
    problems = problems_of(run, name, changes)
    off = {p.split(":", 1)[0] for p in [*run.total_problems(), *run.summary_problems()]}
    return Row(
        fault=name,
        events=run.produced,
        lost=run.lost(),
        off=len(off),
        raw_p99_ms=percentile(rtts, 0.99) * 1000,
        kill_before_ms=max(before, default=math.nan) * 1000,
        kill_during_ms=max(during, default=math.nan) * 1000,
        red_s=run.seconds_red(),
        recovery_s=run.recovery_s,
        problems=problems,
    )


def print_table(rows: list[Row]) -> None:
    print(
        f"\n{'fault':<12} {'events':>8} {'lost':>5} {'off':>4}   {'KILL ms: raw p99':>16} "
        f"{'before':>7} {'during':>8}   {'red s':>6} {'recovery s':>10}   result"
    )
    for r in rows:
        recovery = "never" if r.recovery_s is None else f"{r.recovery_s:.1f}"
        result = "ok" if not r.problems else f"{len(r.problems)} problems: {r.problems[0]}"
        print(
            f"{r.fault:<12} {r.events:>8,} {r.lost:>5} {r.off:>4}   {r.raw_p99_ms:>16.1f} "
            f"{r.kill_before_ms:>7.0f} {r.kill_during_ms:>8.0f}   {r.red_s:>6.1f} "
            f"{recovery:>10}   {result[:90]}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--only", action="append", choices=FAULTS, help="run only these faults")
    parser.add_argument("--sessions", type=int, default=1500, help="sessions of each fleet")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--partitions", type=int, default=3, help="partitions of the events")
    parser.add_argument("--redis-stop-s", type=float, default=120.0, help="Redis SIGSTOP")
    parser.add_argument("--redis-down-s", type=float, default=15.0, help="Redis killed this long")
    parser.add_argument("--worker-stop-s", type=float, default=30.0, help="worker SIGSTOP")
    parser.add_argument("--poison-spacing-s", type=float, default=1.0,
                        help="seconds between two poison kinds")  # fmt: skip
    parser.add_argument("--policy-hold-s", type=float, default=10.0,
                        help="how long each refused policy file stays")  # fmt: skip
    args = parser.parse_args()
    rows: list[Row] = []
    with bench_stack() as base:
        folder = base.state_dir / "bench-faults" / uuid.uuid4().hex[:6]
        print(f"work folders and worker logs under {folder}", flush=True)
        for name in args.only or FAULTS:
            rows.append(measure(name, base, folder, args))
            print_table(rows[-1:])
    print_table(rows)
    for row in rows:
        for problem in row.problems[:10]:
            print(f"  {row.fault}: {problem}")
    if any(r.problems for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
