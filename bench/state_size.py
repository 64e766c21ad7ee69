"""Bounded state: the engine's memory and restore time after 100 k and 1 M finished sessions.

    python bench/state_size.py [--sessions 1000000] [--partitions 6] [--json]
    python bench/state_size.py --open 100000     # RSS per 100 k OPEN sessions (no broker)

A generated fleet (four tenants, twelve agents, realistic sessions on a diurnal day, the repo's
policies producing kills, warnings, throttles and pauses) runs through the real Engine, which
ticks and checkpoints every ``--tick-events`` events into a compacted changelog on the broker of
GOVERNOR_BOOTSTRAP, one transaction per checkpoint, as the worker does once a second. After
100 k finished sessions and at the end it reports the process RSS, the entries and deep size of
every state structure, bytes per open session, and the restore: a fresh process reads the
changelog with scan_partitions + restore_record into new PartitionStates, timed, next to a fresh
process that only reads it (the raw reference), with the RSS each of them grew by. The changelog
is compacted eagerly (small segments, a low dirty ratio, short tombstone retention) so the broker
does in minutes what days of wall time do to the worker's changelog; the tombstones a 24 h
``delete.retention.ms`` would still hold are counted apart. Nothing is asserted: the goal lines
say whether <= 1 KB per open session and <= 2 s restore per 100 k sessions were met.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import gc
import heapq
import itertools
import json
import math
import os
import random
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from streams.engine import (
    CLOSED_GUARD_RETENTION_US,
    Engine,
    PartitionState,
    checkpoint_records,
    restore_record,
)
from streams.kafka_config import client_config
from streams.pipeline.aggregates import DAY_US, HOUR_US
from streams.pipeline.pricing import load_prices
from streams.policy_files import load_policy_set
from streams.settings import Settings
from streams.topics import (
    Record,
    cluster_size,
    create_topics,
    new_topic,
    replication_for,
    scan_partitions,
)

S = 1_000_000
START_US = 1_767_225_600 * S  # 2026-01-01 00:00 UTC: a Thursday
GOAL_BYTES_PER_OPEN = 1024
GOAL_RESTORE_S_PER_100K = 2.0
#: what the broker's cleaner is told, so compaction keeps up with a run of minutes
EAGER_COMPACTION = {
    "cleanup.policy": "compact",
    "segment.bytes": str(4 * 1024 * 1024),
    "segment.ms": str(10_000),
    "min.cleanable.dirty.ratio": "0.01",
    "min.compaction.lag.ms": "0",
    "delete.retention.ms": "1000",
}
#: the worker's changelog keeps tombstones the broker default: 24 h (wall time)
TOMBSTONE_RETENTION_US = 24 * HOUR_US


# --- the fleet ------------------------------------------------------------------------------

CATEGORIES = ("billing", "shipping", "returns", "technical", "account")
SEARCH_TOOLS = ("search_kb", "web_search")


@dataclass(frozen=True)
class Agent:
    tenant_id: str
    agent_id: str
    version: str
    weight: float
    models: tuple[str, ...]
    tools: tuple[str, ...]


def fleet_agents() -> list[Agent]:
    """Twelve agents of four tenants; agent ids repeat across tenants, as they do."""
    kinds = {
        "support-bot": (("gpt-4o-mini", "gpt-4o"), ("search_kb", "lookup_order", "create_ticket")),
        "billing-agent": (("gpt-4.1", "gpt-4o-mini"), ("lookup_invoice", "refund", "search_kb")),
        "research-agent": (
            ("claude-sonnet-4", "gemini-2.5-pro"),
            ("web_search", "fetch_url", "summarize"),
        ),
        "ops-agent": (("claude-haiku-4", "gemini-2.5-flash"), ("run_query", "restart_service")),
    }
    tenants = {
        "acme": ("support-bot", "billing-agent", "research-agent", "ops-agent"),
        "globex": ("support-bot", "billing-agent", "research-agent"),
        "initech": ("support-bot", "ops-agent"),
        "umbrella": ("support-bot", "billing-agent", "research-agent"),
    }
    agents = []
    for t, (tenant, names) in enumerate(tenants.items()):
        for a, name in enumerate(names):
            models, tools = kinds[name]
            weight = (4 - t) * (2.0 if name == "support-bot" else 1.0) / (1 + a * 0.3)
            agents.append(Agent(tenant, name, f"{2 + a}.{t}.0", weight, models, tools))
    return agents


class Fleet:
    """An endless fleet: sessions start as a diurnal Poisson stream of ``per_day`` a day on
    average, their events come out merged in event-time order (each session's in seq order)."""

    def __init__(self, per_day: float, seed: int = 11, start_us: int = START_US) -> None:
        self.rng = random.Random(seed)
        self.agents = fleet_agents()
        self.cum_weights = list(itertools.accumulate(a.weight for a in self.agents))
        self.per_day = per_day
        self.clock = start_us
        self.sessions = 0
        #: day -> (start, end) of that day's search outage (search tools fail 60 %)
        self._outages: dict[int, tuple[int, int]] = {}
        # mean of the diurnal factor over a day, to keep the daily mean at per_day
        self._mean_factor = sum(_diurnal(m / 60) for m in range(24 * 60)) / (24 * 60)

    def events(self) -> Iterator[dict[str, Any]]:
        heap: list[tuple[int, int, dict[str, Any]]] = []
        order = itertools.count()
        rng = self.rng
        while True:
            hour = (self.clock // (3600 * S)) % 24
            rate_per_us = self.per_day * _diurnal(hour) / self._mean_factor / DAY_US
            self.clock += int(rng.expovariate(rate_per_us)) + 1
            while heap and heap[0][0] <= self.clock:
                yield heapq.heappop(heap)[2]
            for event in self._session(self.clock):
                heapq.heappush(heap, (event["start_time_us"], next(order), event))
            self.sessions += 1

    def _outage(self, t: int) -> tuple[int, int]:
        day = t // DAY_US
        outage = self._outages.get(day)
        if outage is None:
            start = day * DAY_US + self.rng.randrange(8 * HOUR_US, 20 * HOUR_US)
            outage = self._outages[day] = (start, start + 20 * 60 * S)
        return outage

    def _session(self, start: int) -> list[dict[str, Any]]:
        rng = self.rng
        agent = self.agents[bisect.bisect(self.cum_weights, rng.random() * self.cum_weights[-1])]
        session_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        common = {
            "session_id": session_id,
            "tenant_id": agent.tenant_id,
            "agent_id": agent.agent_id,
            "agent_version": agent.version,
            "category": rng.choice(CATEGORIES),
            "prompt_version": "p4",
            "model_version": "2025-06",
            "tool_schema_version": "t3",
        }
        events: list[dict[str, Any]] = []
        t = start

        def emit(kind: str, duration_us: int, **fields: Any) -> None:
            nonlocal t
            seq = len(events) + 1
            events.append(
                {
                    **common,
                    "event_id": f"{session_id}/{seq}",
                    "seq": seq,
                    "kind": kind,
                    "start_time_us": t,
                    "duration_us": duration_us,
                    "status": fields.pop("status", "OK"),
                    **fields,
                }
            )
            # pauses stay under the idle timeout: a session evicted for silence that speaks
            # again is refused, which is not what this measures
            t += duration_us + min(int(rng.lognormvariate(gap, 1.0)), 600 * S) + 1

        human = rng.random() < 0.3
        gap = math.log(20 * S if human else 0.4 * S)
        special = rng.random()
        turns = min(20, max(1, round(rng.lognormvariate(math.log(3), 0.8))))
        if special < 0.001:  # a marathon: past the 2 h max-duration policy
            turns, gap = 150, math.log(55 * S)
        emit("SESSION_START", 0)
        outage = self._outage(start)
        for turn in range(turns):
            if 0.003 <= special < 0.006:  # a budget breaker: long contexts on a dear model
                model, tokens_in = "claude-sonnet-4", rng.randint(120_000, 150_000)
            elif 0.006 <= special < 0.011:
                model, tokens_in = "llama-3-local", rng.randint(500, 4000)  # unpriced
            else:
                model, tokens_in = rng.choice(agent.models), rng.randint(500, 3000) * (turn + 1)
            failed = rng.random() < 0.02
            emit(
                "LLM_CALL",
                int(rng.lognormvariate(math.log(1.5 * S), 0.6)),
                operation="chat",
                model=model,
                provider="openai",
                input_tokens=tokens_in,
                output_tokens=rng.randint(50, 800),
                status="ERROR" if failed else "OK",
                error_type="RateLimited" if failed else None,
            )
            if turn == turns - 1:
                break
            tools = int(rng.expovariate(1 / 0.9))
            if 0.001 <= special < 0.002 and turn == 0:  # a denied tool
                self._tool(emit, "shell_exec", "rm -rf /tmp/cache", outage, t)
            for _ in range(tools):
                tool = rng.choice(agent.tools)
                self._tool(emit, tool, f'{{"q": {rng.getrandbits(40)}}}', outage, t)
            if 0.002 <= special < 0.003 and turn == 0:  # a loop: the same call six times
                for _ in range(6):
                    self._tool(emit, agent.tools[0], '{"q": "same"}', outage, t)
        if rng.random() < 0.6:
            emit("EVALUATION", 0, evaluation_name="helpfulness", evaluation_score=rng.random())
        ending = rng.random()
        if ending < 0.03:
            pass  # abandoned: the worker times it out
        elif ending < 0.07:
            emit("SESSION_END", 0, status="ERROR", error_type="AgentCrash")
        else:
            emit("SESSION_END", 0)
        return events

    def _tool(self, emit: Any, tool: str, args: str, outage: tuple[int, int], t: int) -> None:
        rng = self.rng
        down = tool in SEARCH_TOOLS and outage[0] <= t < outage[1]
        failed = rng.random() < (0.6 if down else 0.05)
        emit(
            "TOOL_CALL",
            int(rng.lognormvariate(math.log(0.3 * S), 0.8)),
            operation="execute_tool",
            tool_name=tool,
            tool_call_id=f"call-{rng.getrandbits(32):08x}",
            content=[{"role": "TOOL_ARGUMENTS", "text": args}],
            status="ERROR" if failed else "OK",
            error_type="ToolTimeout" if failed else None,
        )


def _diurnal(hour: float) -> float:
    """More traffic in (UTC) working hours than at night, as the simulator plans it."""
    return 0.2 + 0.8 * math.exp(-(((hour - 14) / 4.0) ** 2))


# --- measuring ------------------------------------------------------------------------------


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def deep_size(roots: Iterable[object], seen: set[int]) -> int:
    """Bytes of the objects reachable from ``roots`` not in ``seen`` (sys.getsizeof each,
    containers, dataclass slots); shared objects count once, cached small ints and singletons
    not at all."""
    total = 0
    stack = list(roots)
    getsizeof = sys.getsizeof
    leaves = (str, bytes, float)
    while stack:
        obj = stack.pop()
        kind = type(obj)
        if obj is None or kind is bool or (kind is int and -5 <= obj <= 256):  # type: ignore[operator]
            continue
        oid = id(obj)
        if oid in seen:
            continue
        seen.add(oid)
        total += getsizeof(obj)
        if kind is int or kind in leaves:
            continue
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
        else:
            for klass in kind.__mro__:
                for name in getattr(klass, "__slots__", ()):
                    if hasattr(obj, name):
                        stack.append(getattr(obj, name))
            if hasattr(obj, "__dict__"):
                stack.append(obj.__dict__)
    return total


STRUCTURES = ("sessions", "closed", "enforced", "buckets", "histograms", "rates", "active")


def entries(parts: Iterable[PartitionState]) -> dict[str, int]:
    parts = list(parts)
    counts = {name: sum(len(getattr(p, name)) for p in parts) for name in STRUCTURES}
    counts["open"] = sum(not s.ended for p in parts for s in p.sessions.values())
    counts["held"] = counts["sessions"] - counts["open"]
    counts["enforced_session"] = sum(
        key[1].startswith("session:") for p in parts for key in p.enforced
    )
    return counts


def state_bytes(engine: Engine, parts: Iterable[PartitionState]) -> dict[str, int]:
    """Deep size per structure (one ``seen`` set, so the sum is the total)."""
    seen: set[int] = set()
    parts = list(parts)
    sizes = {name: deep_size([getattr(p, name) for p in parts], seen) for name in STRUCTURES}
    sizes["engine indexes"] = deep_size(
        [
            engine._rates,
            engine._hour_spend,
            engine._spend_before,
            engine._scopes,
            engine._levels,
            engine._active,
        ],
        seen,
    )
    sizes["total"] = sum(sizes.values())
    return sizes


# --- the changelog --------------------------------------------------------------------------


def make_changelog(settings: Settings, topic: str, partitions: int) -> None:
    admin = AdminClient({**client_config(settings), "socket.timeout.ms": 10000})
    replication, min_isr = replication_for(settings, cluster_size(admin))
    config = {**EAGER_COMPACTION, "min.insync.replicas": str(min_isr)}
    create_topics(admin, [new_topic(topic, partitions, replication, config)])


def delete_topic(settings: Settings, topic: str) -> None:
    admin = AdminClient({**client_config(settings), "socket.timeout.ms": 10000})
    for future in admin.delete_topics([topic], operation_timeout=30).values():
        future.result()


@dataclass
class Changelog:
    """The worker's checkpoint: every dirty key of every partition, in one transaction."""

    settings: Settings
    topic: str
    records: int = 0
    tombstones: int = 0
    transactions: int = 0
    seconds: float = 0.0
    #: (watermark, tombstones) per checkpoint, for the ones a 24 h delete.retention.ms keeps
    recent_tombstones: collections.deque[tuple[int, int]] = field(default_factory=collections.deque)
    producer: Producer = field(init=False)

    def __post_init__(self) -> None:
        self.producer = Producer(
            {
                **client_config(self.settings),
                "transactional.id": f"bench-state-size-{uuid.uuid4().hex[:8]}",
                "linger.ms": 20,
                "batch.size": 1_000_000,
                "compression.type": "lz4",
                "log_level": 3,
            }
        )
        self.producer.init_transactions(30)

    def checkpoint(self, engine: Engine) -> None:
        started = time.perf_counter()
        producer = self.producer
        producer.begin_transaction()
        tombstones = 0
        for partition, part in sorted(engine.partitions.items()):
            for key, value in checkpoint_records(part):
                tombstones += value is None
                while True:
                    try:
                        producer.produce(self.topic, value, key, partition=partition)
                        break
                    except BufferError:
                        producer.poll(0.05)
                self.records += 1
        producer.commit_transaction(60)
        self.transactions += 1
        self.tombstones += tombstones
        self.recent_tombstones.append((engine.watermark_us, tombstones))
        self.seconds += time.perf_counter() - started

    def tombstones_within(self, now_us: int, horizon_us: int) -> int:
        while self.recent_tombstones and self.recent_tombstones[0][0] < now_us - horizon_us:
            self.recent_tombstones.popleft()
        return sum(n for _, n in self.recent_tombstones)


def count_records(settings: Settings, topic: str, partitions: int) -> int:
    """In a child process: a consumer here would leave its buffers in this process's RSS."""
    return int(run_child(settings.bootstrap, topic, partitions, "read")["records"])


def forked(compute: Callable[[], Any]) -> Any:
    """``compute()`` (pure Python, JSON-able) in a forked copy of this process, so what it
    allocates, and the reference counts it touches, do not stay in this process's RSS."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no Kafka calls here, only Python objects
        os.close(read_fd)
        try:
            data = json.dumps(compute()).encode()
        except BaseException as exc:
            data = json.dumps({"error": repr(exc)}).encode()
        with os.fdopen(write_fd, "wb") as out:
            out.write(data)
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as source:
        result = json.loads(source.read())
    os.waitpid(pid, 0)
    if isinstance(result, dict) and "error" in result:
        raise RuntimeError(f"forked measurement failed: {result['error']}")
    return result


def settle(
    settings: Settings, topic: str, engine: Engine, log: Changelog, limit_s: float, say: Any
) -> tuple[int, int, float]:
    """Let the cleaner compact what was just written: roll the segments (a record after
    segment.ms) and wait until the record count stops falling. (before, after, seconds)"""
    started = time.monotonic()
    before = last = count_records(settings, topic, len(engine.partitions))
    if limit_s <= 0:
        return before, before, 0.0
    time.sleep(float(EAGER_COMPACTION["segment.ms"]) / 1000 + 1)
    log.checkpoint(engine)  # only watermarks: they roll every partition's segment
    steady = 0
    while time.monotonic() - started < limit_s and steady < 2:
        time.sleep(5)
        count = count_records(settings, topic, len(engine.partitions))
        steady = steady + 1 if count >= last else 0
        last = min(last, count)
        say(f"  compaction: {count:,} records in the changelog")
    return before, last, time.monotonic() - started


def restore_child(bootstrap: str, topic: str, partitions: int, mode: str) -> dict[str, Any]:
    """In a fresh process: read the changelog (``read``) or restore from it (``restore``), as
    AccountingRunner._restore_partitions does, and report time and RSS."""
    settings = Settings.from_env().replace(bootstrap=bootstrap)
    numbers = list(range(partitions))
    states = {p: PartitionState(p) for p in numbers}
    tombstones = [0]
    if mode == "read":

        def apply(partition: int, record: Record) -> None:
            return None

    else:

        def apply(partition: int, record: Record) -> None:
            _offset, key, value = record
            if key is None:
                return
            if value is None:
                tombstones[0] += 1
            restore_record(states[partition], key, value)

    folder = settings.policies_dir
    engine = Engine(load_prices(folder / "prices.yaml"), load_policy_set(folder))
    gc.collect()
    rss_before = rss_kb()
    started = time.perf_counter()
    records = scan_partitions(settings, topic, numbers, apply)
    scanned = time.perf_counter() - started
    for state in states.values():
        state.dirty.clear()
        engine.assign(state)
    total = time.perf_counter() - started
    gc.collect()
    report: dict[str, Any] = {
        "mode": mode,
        "records": records,
        "tombstones": tombstones[0],
        "scan_s": scanned,
        "total_s": total,
        "rss_before_kb": rss_before,
        "rss_growth_kb": rss_kb() - rss_before,
    }
    if mode == "restore":
        report["entries"] = entries(states.values())
        report["bytes"] = state_bytes(engine, states.values())
    return report


def run_child(bootstrap: str, topic: str, partitions: int, mode: str) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", mode]
    command += ["--bootstrap", bootstrap, "--topic", topic, "--partitions", str(partitions)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=1800)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# --- the run --------------------------------------------------------------------------------


@dataclass
class Ticks:
    calls: int = 0
    seconds: float = 0.0
    slowest: float = 0.0

    def add(self, seconds: float) -> None:
        self.calls += 1
        self.seconds += seconds
        self.slowest = max(self.slowest, seconds)


@dataclass
class Run:
    args: argparse.Namespace
    settings: Settings
    topic: str
    say: Any
    engine: Engine = field(init=False)
    log: Changelog = field(init=False)
    finished: int = 0
    events: int = 0
    decisions: collections.Counter[str] = field(default_factory=collections.Counter)
    rejected: int = 0
    duplicates: int = 0
    ticks: Ticks = field(default_factory=Ticks)
    started: float = field(default_factory=time.perf_counter)
    points: list[dict[str, Any]] = field(default_factory=list)
    days: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        folder = self.settings.policies_dir
        self.engine = Engine(
            load_prices(folder / "prices.yaml"),
            load_policy_set(folder),
            idle_timeout_s=self.settings.session_idle_timeout_s,
            finished_retention_s=self.settings.finished_retention_s,
            hourly_retention_s=self.settings.hourly_retention_s,
            daily_retention_s=self.settings.daily_retention_s,
        )
        for partition in range(self.args.partitions):
            self.engine.assign(PartitionState(partition))
        self.log = Changelog(self.settings, self.topic)

    def go(self) -> None:
        args = self.args
        partitions, batch, tick_every = args.partitions, args.batch, args.tick_events
        marks = sorted({min(args.sessions, 100_000), args.sessions})
        pending: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
        crc32 = zlib.crc32
        fleet = Fleet(args.per_day, seed=args.seed)
        self.rss_start_kb = rss_kb()
        next_day = START_US + DAY_US
        for n, event in enumerate(fleet.events(), start=1):
            pending[crc32(event["session_id"].encode()) % partitions].append(event)
            if n % batch:
                continue
            self._process(pending)
            if n % tick_every:
                continue
            self.events = n
            self._tick()
            self.log.checkpoint(self.engine)
            if self.engine.watermark_us >= next_day:
                next_day += DAY_US
                self._day()
            if self.finished >= marks[0]:
                self._point(fleet)
                marks.pop(0)
                if not marks:
                    return

    def _process(self, pending: dict[int, list[dict[str, Any]]]) -> None:
        for partition, events in pending.items():
            result = self.engine.process(partition, events)
            self.finished += len(result.summaries)
            self.rejected += len(result.rejected)
            self.duplicates += result.duplicates
            for decided in result.decisions:
                self.decisions[decided.outcome.action] += 1
        pending.clear()

    def _tick(self) -> None:
        for partition in self.engine.partitions:
            started = time.perf_counter()
            result = self.engine.tick(partition)
            self.ticks.add(time.perf_counter() - started)
            self.finished += len(result.summaries)

    def _day(self) -> None:
        counts = entries(self.engine.partitions.values())
        day = {
            "day": (self.engine.watermark_us - START_US) / DAY_US,
            "finished": self.finished,
            "rss_mb": rss_kb() / 1024,
            "changelog_records": self.log.records,
            **counts,
        }
        self.days.append(day)
        self.say(
            f"day {day['day']:4.1f}: {self.finished:>9,} finished, {counts['open']:>5,} open, "
            f"{counts['held']:>6,} held, {counts['closed']:>7,} guards, {counts['enforced']:>4,} "
            f"enforced, {counts['buckets']:>6,} buckets, {counts['histograms']:>6,} histograms, "
            f"{counts['rates']:>5,} rates, RSS {day['rss_mb']:,.0f} MB "
            f"({time.perf_counter() - self.started:.0f}s)"
        )

    def _point(self, fleet: Fleet) -> None:
        engine = self.engine
        wall = time.perf_counter() - self.started
        cpu = time.process_time()
        self.say(f"{self.finished:,} finished sessions after {wall:.0f}s: measuring")
        gc.collect()
        rss = rss_kb()
        counts = entries(engine.partitions.values())
        sizes = forked(lambda: state_bytes(engine, engine.partitions.values()))
        written, tombstones = self.log.records, self.log.tombstones
        tombstones_24h = self.log.tombstones_within(engine.watermark_us, TOMBSTONE_RETENTION_US)
        before, after, settled = settle(
            self.settings, self.topic, engine, self.log, self.args.settle, self.say
        )
        bootstrap, partitions = self.settings.bootstrap, self.args.partitions
        read = run_child(bootstrap, self.topic, partitions, "read")
        restore = run_child(bootstrap, self.topic, partitions, "restore")
        now = engine.watermark_us
        point = {
            "finished": self.finished,
            "started": fleet.sessions,
            "events": self.events,
            "event_days": (now - START_US) / DAY_US,
            "wall_s": wall,
            "cpu_s": cpu,
            "decisions": dict(self.decisions),
            "rejected": self.rejected,
            "duplicates": self.duplicates,
            "entries": counts,
            "bytes": sizes,
            "rss_kb": rss,
            "rss_start_kb": self.rss_start_kb,
            "ticks": {
                "calls": self.ticks.calls,
                "mean_ms": self.ticks.seconds / max(1, self.ticks.calls) * 1000,
                "max_ms": self.ticks.slowest * 1000,
            },
            "changelog": {
                "records_written": written,
                "tombstones_written": tombstones,
                "tombstones_24h": tombstones_24h,
                "transactions": self.log.transactions,
                "checkpoint_s": self.log.seconds,
                "records_before_settle": before,
                "records_after_settle": after,
                "settle_s": settled,
            },
            "read": read,
            "restore": restore,
        }
        self.points.append(point)
        self.ticks = Ticks()
        self.say(
            f"  restore {restore['total_s']:.2f}s of {restore['records']:,} records "
            f"(reading alone {read['total_s']:.2f}s)"
        )


# --- the report -----------------------------------------------------------------------------


def column(p: dict[str, Any]) -> list[tuple[str, str]]:
    """One measurement point as (label, value) rows."""
    e, b, c, rs, rd = p["entries"], p["bytes"], p["changelog"], p["restore"], p["read"]
    rb = rs["bytes"]
    mb = 1024 * 1024
    ticks = p["ticks"]
    per_open = b["total"] / max(1, e["open"])
    actions = ("KILL", "WARN", "THROTTLE", "PAUSE")
    apply_us = (rs["scan_s"] - rd["scan_s"]) / max(1, rs["records"]) * 1e6
    restore_goal = GOAL_RESTORE_S_PER_100K * p["finished"] / 100_000
    rows = [
        ("finished sessions", f"{p['finished']:,}"),
        ("  events / event-time days", f"{p['events']:,} / {p['event_days']:.1f}"),
        (
            "  wall / CPU s to here (checkpoints)",
            f"{p['wall_s']:.0f} / {p['cpu_s']:.0f} ({c['checkpoint_s']:.0f})",
        ),
        (
            "  decisions kill/warn/throttle/pause",
            "/".join(str(p["decisions"].get(a, 0)) for a in actions),
        ),
        ("entries: sessions open", f"{e['open']:,}"),
        ("  sessions ended, not evicted", f"{e['held']:,}"),
        ("  closed-session guards", f"{e['closed']:,}"),
        ("  enforced (of them session:)", f"{e['enforced']:,} ({e['enforced_session']:,})"),
        *((f"  {name}", f"{e[name]:,}") for name in ("buckets", "histograms", "rates", "active")),
        *(
            (f"deep MB live / restored: {name}", f"{b[name] / mb:.1f} / {rb[name] / mb:.1f}")
            for name in (*STRUCTURES, "engine indexes", "total")
        ),
        (
            "process RSS MB (at start: raw ref.)",
            f"{p['rss_kb'] / 1024:,.0f} ({p['rss_start_kb'] / 1024:,.0f})",
        ),
        ("bytes per open session: state", f"{per_open:,.0f}"),
        ("  one SessionState (deep, mean)", f"{b['sessions'] / max(1, e['sessions']):,.0f}"),
        ("  one closed guard (deep, mean)", f"{b['closed'] / max(1, e['closed']):,.0f}"),
        ("  one histogram (deep, mean)", f"{b['histograms'] / max(1, e['histograms']):,.0f}"),
        (
            "tick: calls / mean / max ms",
            f"{ticks['calls']:,} / {ticks['mean_ms']:.1f} / {ticks['max_ms']:.0f}",
        ),
        ("changelog: records written", f"{c['records_written']:,}"),
        ("  of them tombstones", f"{c['tombstones_written']:,}"),
        ("  tombstones of the last 24 h", f"{c['tombstones_24h']:,}"),
        (
            "  in the log: now / compacted",
            f"{c['records_before_settle']:,} / {c['records_after_settle']:,} "
            f"({c['settle_s']:.0f} s)",
        ),
        ("restore: records read", f"{rs['records']:,}"),
        ("  of them tombstones", f"{rs['tombstones']:,}"),
        ("  read only (raw reference) s", f"{rd['total_s']:.2f}"),
        ("  restore s (scan+apply / +assign)", f"{rs['scan_s']:.2f} / {rs['total_s']:.2f}"),
        ("  apply µs per record (restore - read)", f"{apply_us:.1f}"),
        ("  restore / read only", f"{rs['total_s'] / max(1e-9, rd['total_s']):.1f}x"),
        ("  restore s per 100 k sessions", f"{rs['total_s'] / p['finished'] * 100_000:.2f}"),
        (
            "  RSS growth MB: restore / read only",
            f"{rs['rss_growth_kb'] / 1024:,.0f} / {rd['rss_growth_kb'] / 1024:,.0f}",
        ),
        ("  restored entries equal the live ones", "yes" if _same_entries(p) else "NO"),
        (
            f"goal <= {GOAL_BYTES_PER_OPEN} B per open session",
            _verdict(per_open <= GOAL_BYTES_PER_OPEN),
        ),
        (
            f"goal restore <= {GOAL_RESTORE_S_PER_100K:.0f} s per 100 k",
            _verdict(rs["total_s"] <= restore_goal),
        ),
    ]
    return rows


def table(run: Run) -> str:
    columns = [column(p) for p in run.points]
    labels = [label for label, _ in columns[0]]
    width = max(len(label) for label in labels)
    widths = [max(len(v) for _, v in col) for col in columns]
    return "\n".join(
        f"{label:<{width}}  "
        + "  ".join(f"{col[i][1]:>{w}}" for col, w in zip(columns, widths, strict=True))
        for i, label in enumerate(labels)
    )


def _same_entries(point: dict[str, Any]) -> bool:
    return all(point["entries"][k] == point["restore"]["entries"][k] for k in STRUCTURES)


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def open_sessions(count: int, partitions: int, per_day: float, seed: int) -> dict[str, Any]:
    """RSS and deep size of ``count`` OPEN sessions in the worker's engine (scope left to the
    scope stage, as in the worker): the fleet's sessions without their SESSION_END, fed until
    ``count`` have started; measured in a forked process, from an engine holding nothing."""
    settings = Settings.from_env()

    def compute() -> dict[str, Any]:
        folder = settings.policies_dir
        engine = Engine(
            load_prices(folder / "prices.yaml"),
            load_policy_set(folder),
            idle_timeout_s=settings.session_idle_timeout_s,
            local_scope=False,
        )
        for partition in range(partitions):
            engine.assign(PartitionState(partition))
        fleet = Fleet(per_day, seed=seed)
        pending: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
        crc32 = zlib.crc32
        gc.collect()
        before = rss_kb()
        events = 0
        for event in fleet.events():
            if fleet.sessions > count:
                break
            if event["kind"] == "SESSION_END":
                continue
            pending[crc32(event["session_id"].encode()) % partitions].append(event)
            events += 1
            if events % 500 == 0:
                for partition, batch in pending.items():
                    engine.process(partition, batch)
                pending.clear()
        for partition, batch in pending.items():
            engine.process(partition, batch)
        pending.clear()
        gc.collect()
        grown = (rss_kb() - before) * 1024
        parts = list(engine.partitions.values())
        held = entries(parts)
        sizes = state_bytes(engine, parts)
        return {
            "open": held["open"],
            "events": events,
            "rss_bytes": grown,
            "rss_per_open": grown / max(1, held["open"]),
            "deep_per_open": sizes["sessions"] / max(1, held["open"]),
            "other_bytes": sizes["total"] - sizes["sessions"],
        }

    return dict(forked(compute))


def print_open(point: dict[str, Any]) -> None:
    per_100k = point["rss_per_open"] * 100_000 / 2**20
    print(
        f"{point['open']:,} open sessions ({point['events']:,} events, none ended): RSS grew "
        f"{point['rss_bytes'] / 2**20:,.1f} MB = {per_100k:,.1f} MB per 100 k open sessions, "
        f"{point['rss_per_open']:,.0f} B per open session (deep size of the sessions "
        f"{point['deep_per_open']:,.0f} B each; everything else {point['other_bytes'] / 2**20:.1f}"
        f" MB) — goal <= {GOAL_BYTES_PER_OPEN} B: "
        + _verdict(point["rss_per_open"] <= GOAL_BYTES_PER_OPEN)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=1_000_000, help="finished sessions")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--bootstrap", default=Settings.from_env().bootstrap)
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    parser.add_argument(
        "--per-day", type=float, default=150_000, help="sessions a day (event time) on average"
    )
    parser.add_argument(
        "--tick-events",
        type=int,
        default=2000,
        help="tick and checkpoint every N events (the worker: once a second)",
    )
    parser.add_argument("--batch", type=int, default=500, help="events per Engine.process call")
    parser.add_argument(
        "--settle",
        type=float,
        default=60.0,
        help="at most this long, let the broker compact before restoring (0: do not wait)",
    )
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--keep-topic", action="store_true", help="leave the changelog topic")
    parser.add_argument(
        "--open",
        type=int,
        metavar="N",
        help="only measure N open sessions (none ended; no broker): RSS per 100 k open sessions",
    )
    parser.add_argument("--child", choices=("read", "restore"), help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(restore_child(args.bootstrap, args.topic, args.partitions, args.child)))
        return
    if args.open:
        point = open_sessions(args.open, args.partitions, args.per_day, args.seed)
        print(json.dumps(point) if args.json else "", end="\n" if args.json else "")
        if not args.json:
            print_open(point)
        return
    if args.tick_events % args.batch:
        parser.error("--tick-events must be a multiple of --batch")
    settings = Settings.from_env().replace(bootstrap=args.bootstrap)

    def say(text: str) -> None:
        print(text, file=sys.stderr if args.json else sys.stdout, flush=True)

    topic = f"bench{uuid.uuid4().hex[:6]}.state-size-state"
    make_changelog(settings, topic, args.partitions)
    say(
        f"changelog {topic}: {args.partitions} partitions, "
        + ", ".join(f"{k}={v}" for k, v in EAGER_COMPACTION.items())
    )
    run = Run(args, settings, topic, say)
    try:
        run.go()
    finally:
        if not args.keep_topic:
            delete_topic(settings, topic)
    wall = time.perf_counter() - run.started
    if args.json:
        report = {"args": vars(args), "wall_s": wall, "points": run.points, "days": run.days}
        print(json.dumps(report))
        return
    print()
    print(table(run))
    print(
        f"\nwall time {wall:.0f} s; closed guards are kept "
        f"{CLOSED_GUARD_RETENTION_US / HOUR_US:.0f} h + finished retention after eviction"
    )


if __name__ == "__main__":
    main()
