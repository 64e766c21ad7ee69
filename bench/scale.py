"""Scale-out: 1, 2 and 3 workers over the same fleet, side by side, with the decision latency.

    python -m bench.scale [--events 150000] [--workers 1,2,3] [--partitions 6]
                          [--probe-s 15] [--probe-every-s 0.25] [--load 500] [--no-tenant-budget]

Uses the stack of GOVERNOR_BOOTSTRAP (starting the local one, as ``governor up`` does, if it is
not running). One fleet is generated and encoded once; for each number of workers N:

1. a deployment of its own (topics, groups, a policies folder: the repository's policies, the
   fault suite's session-budget probe policy and, unless ``--no-tenant-budget``, a tenant
   budget for probe tenants); N ``governor worker`` processes started in parallel, until the
   accounting group is stable with N members;
2. the fleet's records (the same bytes, keys and so partitions for every N) produced at once
   into its events topic. Produced after the workers joined, because a topic filled before
   would be taken whole by the first worker to join; the producer takes a second or two, far
   less than the workers;
3. until the workers have accounted every record: **events/s**, all records over the span from
   the first batch of any worker to the last of any (the workers report both), and **events per
   worker CPU-second**, all records over the CPU time (user + system, ``/proc/<pid>/stat``) the
   N processes spent from just before the fill to the end (the PII agent and the scope stage in
   the same processes included);
4. latency (``--probe-s`` > 0): for that long a background fleet at ``--load`` events/s, and every
   ``--probe-every-s`` a session probe (its one LLM call breaks a session budget: the fault
   suite's KillProber) and a tenant probe (a tenant of its own whose one call breaks a tenant
   budget: through both stages, scope-deltas included); p50/p99 from producing the breaking
   event to reading its decision on the control topic.

References measured in the same run: a decode-only confluent-kafka consumer over the first
run's topic, while its workers are idle (events/s and events per CPU-second of this one
process), and the raw Kafka produce->consume round trip during each latency phase. The ``x1``
columns divide by the first worker row (the issue's goal: events per CPU-second at 3 workers
>= 0.85 x 1 worker, tenant p99 <= 250 ms).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from bench.common import Stopwatch, bench_stack, percentile
from bench.kill_latency import kafka_round_trips
from streams.codec import Codecs
from streams.kafka_config import client_config
from streams.pipeline.pricing import PriceTable, load_prices
from streams.settings import Settings
from tests.reliability.faults import (
    US,
    ControlWatcher,
    FleetDriver,
    KillProber,
    Probe,
    good,
    plan_events,
    worker_settings,
)
from tests.reliability.scale import (
    TENANT_PROBE_POLICY,
    TenantProber,
    Workers,
    ingest,
    isolated,
    wait_for_members,
    wait_until,
)

#: simulator events per planned session (measured on the default fleet), to plan --events
EVENTS_PER_SESSION = 13.5
TENANT_PROBE_FILE = "tenant-probes.yaml"


@dataclass(frozen=True)
class Fleet:
    """The records every run produces (key, value), and the load fleet's events."""

    records: list[tuple[bytes, bytes]]
    sessions: int
    load: list[dict[str, object]]


@dataclass
class Row:
    name: str
    events: int
    seconds: float
    cpu_s: float
    fill_s: float = math.nan
    session_ms: list[float] = field(default_factory=list)
    tenant_ms: list[float] = field(default_factory=list)
    raw_ms: list[float] = field(default_factory=list)
    #: probes whose decision never came
    missing: int = 0

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else math.nan

    @property
    def per_cpu(self) -> float:
        return self.events / self.cpu_s if self.cpu_s > 0 else math.nan


def plan(prices: PriceTable, codecs: Codecs, args: argparse.Namespace) -> Fleet:
    """The fleet (a day ending an hour ago) and the load fleet (the hour after it), so the load
    continues the fleet's event time instead of arriving behind its watermark."""
    now = int(time.time()) * US
    sessions = max(100, round(args.events / EVENTS_PER_SESSION))
    events = plan_events(prices, sessions, seed=args.seed, days=1.0, end_us=now - 3600 * US)
    records = [(str(e["session_id"]).encode(), codecs.step_event.encode(e)) for e in events]
    load_sessions = max(1, round(args.load * args.probe_s / EVENTS_PER_SESSION))
    load = plan_events(prices, load_sessions, seed=args.seed + 1, days=1 / 24, end_us=now)
    return Fleet(records, sessions, list(load))


def produce(settings: Settings, records: Sequence[tuple[bytes, bytes]]) -> float:
    """Every record into the deployment's events topic, acknowledged; seconds it took."""
    producer = Producer(
        {
            **client_config(settings),
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 2_000_000,
            "log_level": 3,
        }
    )
    topic = settings.topic("events")
    clock = Stopwatch()
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(120)
    if left:
        raise RuntimeError(f"{left} records not acknowledged in 120 s")
    return clock.elapsed()


def raw_decode(settings: Settings, codecs: Codecs, count: int) -> Row:
    """A decode-only consumer over the deployment's events topic: its events/s and the CPU
    time of this process (librdkafka's threads included) per event."""
    topic = settings.topic("events")
    consumer = Consumer(
        {
            **client_config(settings),
            "group.id": f"bench-raw-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "log_level": 3,
        }
    )
    decode = codecs.step_event.decode
    seen = 0
    started = cpu0 = 0.0
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        deadline = time.monotonic() + 300
        while seen < count and time.monotonic() < deadline:
            for msg in consumer.consume(5000, 0.2):
                error = msg.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise RuntimeError(str(error))
                    continue
                if not started:
                    started, cpu0 = time.perf_counter(), time.process_time()
                decode(msg.value() or b"")
                seen += 1
        return Row("raw decode", seen, time.perf_counter() - started, time.process_time() - cpu0)
    finally:
        consumer.close()


def deployment(base: Settings, n: int, folder: Path, args: argparse.Namespace) -> Settings:
    """Topics and groups of its own; the repository's policies, the session probe policy and
    (unless --no-tenant-budget) the tenant probe policy."""
    settings = worker_settings(isolated(base, f"w{n}-", args.partitions), folder)
    if args.tenant_budget:
        text = "version: 1\npolicies:\n" + TENANT_PROBE_POLICY
        (settings.policies_dir / TENANT_PROBE_FILE).write_text(text)
    return settings


def latencies(probes: Sequence[Probe]) -> tuple[list[float], int]:
    """Latencies in ms of the probes that were decided, and how many were not."""
    decided = [p.latency_s * 1000 for p in probes if p.latency_s is not None]
    return decided, len(probes) - len(decided)


def probe(settings: Settings, codecs: Codecs, fleet: Fleet, args: argparse.Namespace) -> Row:
    """The latency phase: background load, session and tenant probes, raw round trips."""
    row = Row("", 0, math.nan, math.nan)
    watcher = ControlWatcher(settings, codecs).start()
    driver = FleetDriver(settings, [good(codecs, e) for e in fleet.load], args.probe_s)
    try:
        driver.start()
        session = KillProber(driver, codecs, args.probe_every_s).start()
        tenant = TenantProber(driver, codecs, args.probe_every_s) if args.tenant_budget else None
        if tenant is not None:
            tenant.start()
        clock = Stopwatch()
        row.raw_ms = [s * 1000 for s in kafka_round_trips(settings, 100)]
        time.sleep(max(0.0, args.probe_s - clock.elapsed()))
        session.stop()
        if tenant is not None:
            tenant.stop()
        driver.fleet_done.wait(args.probe_s + 30)
        driver.close()

        def decided() -> bool:
            pending = [p for p in session.results(watcher) if p.latency_s is None]
            if tenant is not None:
                pending += [p for p in tenant.results(watcher) if p.latency_s is None]
            return not pending

        with contextlib.suppress(TimeoutError):  # a missing decision is counted, not fatal
            wait_until(decided, 15, "every probe decided", poll_s=0.2)
        row.session_ms, missing = latencies(session.results(watcher))
        row.missing += missing
        if tenant is not None:
            row.tenant_ms, missing = latencies(tenant.results(watcher))
            row.missing += missing
    finally:
        driver.abort()
        watcher.stop()
    return row


def measure(
    base: Settings,
    n: int,
    codecs: Codecs,
    fleet: Fleet,
    folder: Path,
    args: argparse.Namespace,
    raw: bool = False,
) -> tuple[Row, Row | None]:
    """One worker count: the run's row and, with ``raw``, the decode-only reference over the
    same topic (read while the workers are idle, between accounting and probing)."""
    settings = deployment(base, n, folder, args)
    count = len(fleet.records)
    with Workers(settings, folder) as workers:
        clock = Stopwatch()
        workers.start(n)
        wait_for_members(settings, n, timeout_s=180)
        print(f"  {n} worker(s) in the group after {clock.elapsed():.1f}s", flush=True)
        cpu_before = workers.cpu()
        fill_s = produce(settings, fleet.records)

        def accounted() -> bool:
            if len(workers.live) < n:
                raise RuntimeError(f"a worker exited during the run\n{workers.logs(8)}")
            return sum(int(ingest(w).get("processed", 0)) for w in workers.live) >= count

        # polling every second: each answer costs the workers a little CPU
        wait_until(accounted, 600, f"{count} records accounted by {n} worker(s)", poll_s=1.0)
        cpu_after = workers.cpu()
        views = [ingest(w) for w in workers.live]
        first = min(float(v["first_batch_at"]) for v in views if v.get("first_batch_at"))
        last = max(float(v["last_batch_at"]) for v in views if v.get("last_batch_at"))
        cpu_s = sum(cpu_after[pid] - cpu_before.get(pid, 0.0) for pid in cpu_after)
        row = Row(f"{n} worker{'s' if n > 1 else ''}", count, last - first, cpu_s, fill_s)
        print(
            f"  accounted {count:,} in {row.seconds:.1f}s ({row.rate:,.0f}/s), "
            f"{cpu_s:.1f} CPU-s; filled in {fill_s:.1f}s",
            flush=True,
        )
        reference = raw_decode(settings, codecs, count) if raw else None
        if args.probe_s > 0:
            probed = probe(settings, codecs, fleet, args)
            row.session_ms, row.tenant_ms = probed.session_ms, probed.tenant_ms
            row.raw_ms, row.missing = probed.raw_ms, probed.missing
    return row, reference


def p50_p99(ms: Sequence[float]) -> str:
    if not ms:
        return f"{'-':>15}"
    return f"{percentile(ms, 0.5):>6.0f} /{percentile(ms, 0.99):>6.0f}"


def print_table(rows: Sequence[Row], raw: Row | None) -> None:
    base = rows[0] if rows else None
    latency = ("raw Kafka ms", "session KILL ms", "tenant dec. ms")
    print(
        f"\n{'':<11} {'events':>8} {'events/s':>9} {'x1':>5}  {'CPU s':>6} {'ev/CPU-s':>8} "
        f"{'x1':>5}   " + " ".join(f"{name:>15}" for name in latency) + f" {'missing':>7}"
    )
    print(f"{'':<11} {'':>8} {'':>9} {'':>5}  {'':>6} {'':>8} {'':>5}   "
          + " ".join(f"{'p50 /   p99':>15}" for _ in latency))  # fmt: skip
    for row in ([raw] if raw else []) + list(rows):
        ratio = row.rate / base.rate if base and row is not raw else math.nan
        cpu_ratio = row.per_cpu / base.per_cpu if base and row is not raw else math.nan
        figures = (
            f"{p50_p99(row.raw_ms)} {p50_p99(row.session_ms)} {p50_p99(row.tenant_ms)} "
            f"{row.missing:>7}"
            if row is not raw
            else ""
        )
        print(
            f"{row.name:<11} {row.events:>8,} {row.rate:>9,.0f} {_ratio(ratio)}  "
            f"{row.cpu_s:>6.1f} {row.per_cpu:>8,.0f} {_ratio(cpu_ratio)}   {figures}"
        )


def _ratio(value: float) -> str:
    return f"{'':>5}" if math.isnan(value) else f"{value:>5.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--events", type=int, default=150_000, help="about this many events")
    parser.add_argument("--workers", default="1,2,3", help="worker counts, comma-separated")
    parser.add_argument("--partitions", type=int, default=6, help="partitions of the events")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--probe-s", type=float, default=15.0,
                        help="seconds of latency probes per worker count (0: none)")  # fmt: skip
    parser.add_argument("--probe-every-s", type=float, default=0.25,
                        help="one session and one tenant probe this often")  # fmt: skip
    parser.add_argument("--load", type=float, default=500.0,
                        help="background events/s while probing")  # fmt: skip
    parser.add_argument("--tenant-budget", action=argparse.BooleanOptionalAction, default=True,
                        help="configure a tenant budget for the tenant probes")  # fmt: skip
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",") if n.strip()]
    with bench_stack() as base:
        codecs = Codecs.load(base.schemas_dir)
        prices = load_prices(base.policies_dir / "prices.yaml")
        clock = Stopwatch()
        fleet = plan(prices, codecs, args)
        print(
            f"generated {len(fleet.records):,} events of {fleet.sessions:,} sessions and a load "
            f"fleet of {len(fleet.load):,} in {clock.elapsed():.1f}s",
            flush=True,
        )
        folder = base.state_dir / "bench-scale" / uuid.uuid4().hex[:6]
        print(f"worker logs under {folder}", flush=True)
        rows: list[Row] = []
        raw: Row | None = None
        for n in counts:
            print(f"{n} worker(s) on {args.partitions} partitions:", flush=True)
            row, reference = measure(base, n, codecs, fleet, folder / f"w{n}", args, raw is None)
            rows.append(row)
            raw = raw or reference
    print_table(rows, raw)


if __name__ == "__main__":
    main()
