"""Fault injection on the real stack: the pieces of tests/reliability/test_faults.py and of
``bench/faults.py`` (which imports this module; it is no test module itself).

- :class:`PrivateRedis`: a ``redis-server`` of the test's own, to stop (SIGSTOP), continue, kill
  (SIGKILL) and restart without touching the shared one.
- :class:`FleetDriver`: a planned fleet's events produced at a steady rate over a period, so a
  fault falls in the middle of it, with records injected on the way (probes, poison) through
  the same producer (per-partition order holds). Every good event it produced is kept: the
  truth is computed from exactly those.
- :class:`ControlWatcher`: decisions as they arrive on ``<prefix>control``.
- :class:`KillProber`: every interval a short session that breaks a session budget (agent
  ``kill-probe``, the policy of :data:`PROBE_POLICY`); the time from producing the breaking
  event to its KILL on the control topic is the decision latency before, during and after a
  fault.
- :class:`HealthPoller`: ``/healthz`` and ``/readyz`` status over time, and the accounting
  group's committed offsets, for "red while degraded, green after" and the recovery time: from
  the end of the fault until ``/readyz`` is 200 and the committed offsets have passed the end
  of the events topic as it was when the fault ended.
- :func:`poison_corpus`: 60 kinds of bad record, each with a name, the stage (DECODE or
  VALIDATE) and, when validated, the reason the worker must give.
- :func:`run_fault`: one scenario from start to end (worker, fleet, probes, the fault, the
  closing events, the wait for the totals) and a :class:`FaultRun` to check or print.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import fastavro
import redis
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from prometheus_client.parser import text_string_to_metric_families

from streams.codec import HEADER_LEN, MAGIC, Codecs, DecodeError, header_pairs
from streams.control import decision_redis_key
from streams.pipeline.causes import killing_policy
from streams.pipeline.pricing import PriceTable, load_prices
from streams.pipeline.validate import MAX_COST_MICROS, MAX_DURATION_US, MAX_SEQ, MAX_TOKENS
from streams.processor.lag import accounting_group, measure_lag
from streams.publisher import make_decision
from streams.settings import Settings
from streams.simulator.offline import offline_summaries, simulate_offline
from streams.simulator.params import FleetParams
from streams.simulator.plan import plan_fleet
from streams.simulator.truth import session_truth
from streams.topics import admin_client
from streams.worker import WorkerProcess
from tests.private_redis import PrivateRedis, free_low_port

REPO = Path(__file__).resolve().parents[2]
US = 1_000_000
DAY_US = 86_400 * US

#: the header that names a poison record's kind (the dead letter keeps the original headers)
POISON_HEADER = "governor.test.poison"
REJECT_REASON_HEADER = "governor.reject.reason"
STAGE_HEADER = "__connect.errors.stage"
MESSAGE_HEADER = "__connect.errors.exception.message"

PROBE_TENANT = "probe"
PROBE_AGENT = "kill-probe"
PROBE_POLICY_FILE = "probes.yaml"
PROBE_LIMIT_USD = "0.01"
#: a session of the probe agent may spend a cent: each probe's one LLM call costs two
PROBE_POLICY = f"""version: 1
policies:
  - id: probe-budget
    description: the fault suite's probes break this on purpose (one call of $0.02)
    kind: budget
    scope: session
    limit_usd: {PROBE_LIMIT_USD}
    warn_at: null
    action: kill
    match: {{tenants: ["{PROBE_TENANT}"], agents: ["{PROBE_AGENT}"]}}
"""
PROBE_COST_MICROS = 20_000

#: what /state/sessions and a summary must agree on with the truth of the events produced
COMPARED = (
    "cost_micros",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "steps_by_kind",
    "tool_calls",
    "errors_by_type",
    "retries",
    "unpriced_calls",
    "max_context_tokens",
)
#: summary fields a fault-free fold cannot know (decisions the worker took)
NOT_IN_OFFLINE_SUMMARY = ("violations", "policy_version")
CLOCK_TENANT = "clock"


def now_us() -> int:
    return time.time_ns() // 1000


# --- ports and a private Redis -------------------------------------------------------------


# --- settings and policies -----------------------------------------------------------------


def policies_folder(folder: Path) -> Path:
    """The repository's policies plus the probe policy, in a folder the test may rewrite."""
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(REPO / "policies", folder)
    (folder / PROBE_POLICY_FILE).write_text(PROBE_POLICY)
    return folder


def worker_settings(base: Settings, folder: Path, **changes: Any) -> Settings:
    """A worker of the test's own: its policies folder and keys, finished sessions kept long
    enough (event time) to compare every one of them with the truth, and the production
    bounds on event time (the suite's fixtures widen the past one for their 2025 events)."""
    defaults = Settings()
    values: dict[str, Any] = {
        "policies_dir": policies_folder(folder / "policies"),
        "keys_dir": folder / "keys",
        "finished_retention_s": 60 * 86400,
        "max_event_past_skew_s": defaults.max_event_past_skew_s,
        "max_event_future_skew_s": defaults.max_event_future_skew_s,
        # below the ephemeral range, where no client's source port can hold it
        "web_port": free_low_port(),
    }
    return base.replace(**{**values, **changes})


# --- records and the fleet -----------------------------------------------------------------


@dataclass(frozen=True)
class Outgoing:
    """One record to produce: ``event`` is the good StepEvent it carries (in the truth), None
    for a bad record."""

    key: bytes | None
    value: bytes | None
    event: dict[str, Any] | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    partition: int | None = None


def good(codecs: Codecs, event: dict[str, Any], partition: int | None = None) -> Outgoing:
    return Outgoing(
        str(event["session_id"]).encode(), codecs.step_event.encode(event), event, (), partition
    )


def plan_events(
    prices: PriceTable,
    sessions: int,
    *,
    seed: int = 5,
    days: float = 1.0,
    end_us: int | None = None,
    budget_breaker_fraction: float = 0.05,
) -> list[dict[str, Any]]:
    """A fleet's events in event-time order. The fleet ends three hours ago, so the closing
    events (later than the idle timeout) are still in the past for the worker's time bounds."""
    end = end_us if end_us is not None else (int(time.time()) - 3 * 3600) * US
    params = FleetParams(
        sessions=sessions,
        seed=seed,
        days=days,
        end_us=end,
        budget_breaker_fraction=budget_breaker_fraction,
    )
    events, _truths = simulate_offline(plan_fleet(params), prices)
    events.sort(key=lambda e: (e["start_time_us"], e["seq"]))
    last: dict[str, int] = {}
    for event in events:  # the worker folds a session's events in seq order
        sid = event["session_id"]
        if event["seq"] <= last.get(sid, 0):
            raise AssertionError(f"{sid}: seq {event['seq']} after {last[sid]} in time order")
        last[sid] = event["seq"]
    return events


def closing_records(codecs: Codecs, partitions: int, after_us: int) -> list[Outgoing]:
    """One SESSION_START per partition later than the idle timeout: the watermark passes every
    session still open, so the abandoned ones time out (as ``close_silent_sessions`` does)."""
    out = []
    for partition in range(partitions):
        event: dict[str, Any] = {
            "event_id": f"clock-{partition}-{uuid.uuid4().hex[:8]}",
            "seq": 1,
            "session_id": f"clock-{partition}",
            "tenant_id": CLOCK_TENANT,
            "agent_id": "clock",
            "kind": "SESSION_START",
            "start_time_us": after_us,
            "status": "OK",
        }
        out.append(good(codecs, event, partition))
    return out


class FleetDriver:
    """Produces ``records`` evenly over ``duration_s`` on a thread, plus whatever is injected
    (at once, before the next fleet record, on the same producer)."""

    def __init__(self, settings: Settings, records: Sequence[Outgoing], duration_s: float) -> None:
        self.settings = settings
        self.topic = settings.topic("events")
        self.records = list(records)
        self.interval_s = duration_s / max(1, len(self.records))
        self.producer = Producer(
            {
                "bootstrap.servers": settings.bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 5,
                "log_level": 3,
            }
        )
        #: every good event produced, in order, and when (monotonic) each was produced
        self.good_events: list[dict[str, Any]] = []
        self.sent_at: dict[str, float] = {}
        self.bad_sent = 0
        self.delivery_errors: list[str] = []
        #: event time of the latest fleet event produced: the fleet's clock
        first = self.records[0].event if self.records else None
        self.position_us = int(first["start_time_us"]) if first is not None else 0
        self.fleet_done = threading.Event()
        self._injected: list[Outgoing] = []
        self._cond = threading.Condition()
        self._closing = False
        self._aborted = False
        self._thread = threading.Thread(target=self._run, name="fleet-driver", daemon=True)
        self.started_at = 0.0

    @property
    def produced(self) -> int:
        return len(self.good_events) + self.bad_sent

    def start(self) -> FleetDriver:
        self.started_at = time.monotonic()
        self._thread.start()
        return self

    def inject(self, records: Sequence[Outgoing]) -> None:
        with self._cond:
            self._injected.extend(records)
            self._cond.notify()

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self.delivery_errors.append(str(err))

    def _send(self, record: Outgoing) -> None:
        kwargs: dict[str, Any] = {"on_delivery": self._on_delivery}
        if record.headers:
            kwargs["headers"] = list(record.headers)
        if record.partition is not None:
            kwargs["partition"] = record.partition
        while True:
            try:
                self.producer.produce(self.topic, record.value, record.key, **kwargs)
                break
            except BufferError:
                self.producer.poll(0.05)
        if record.event is None:
            self.bad_sent += 1
        else:
            self.good_events.append(record.event)
            self.sent_at[record.event["event_id"]] = time.monotonic()

    def _drain_injected(self) -> None:
        with self._cond:
            batch, self._injected = self._injected, []
        for record in batch:
            self._send(record)
        if batch:
            self.producer.poll(0)

    def _run(self) -> None:
        started = self.started_at
        index = 0
        while True:
            self._drain_injected()
            now = time.monotonic()
            if index < len(self.records):
                while index < len(self.records) and started + index * self.interval_s <= now:
                    record = self.records[index]
                    self._send(record)
                    if record.event is not None:
                        self.position_us = int(record.event["start_time_us"])
                    index += 1
                self.producer.poll(0)
                if index == len(self.records):
                    self.fleet_done.set()
                    continue
                wait = min(0.05, started + index * self.interval_s - time.monotonic())
            else:
                wait = 0.05
            with self._cond:
                if self._aborted or (
                    self._closing and not self._injected and index >= len(self.records)
                ):
                    break
                if wait > 0 and not self._injected:
                    self._cond.wait(wait)
        self.fleet_done.set()

    def abort(self) -> None:
        """Stop producing at once (a run that failed half-way)."""
        with self._cond:
            self._aborted = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(10)

    def close(self, timeout_s: float = 30.0) -> None:
        """Produce what is left (fleet and injected), wait for every acknowledgement."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()
        left = self.producer.flush(timeout_s)
        if left:
            self.delivery_errors.append(f"{left} records not acknowledged in {timeout_s:.0f}s")


# --- the truth and what the worker holds ---------------------------------------------------


def by_session(events: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        grouped[str(event["session_id"])].append(dict(event))
    return dict(grouped)


def truths_of(events: Sequence[Mapping[str, Any]], prices: PriceTable) -> dict[str, dict[str, Any]]:
    """The simulator's truth of exactly these (good) events, per session."""
    return {sid: session_truth(evs, prices) for sid, evs in by_session(events).items()}


def last_seqs(events: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    last: dict[str, int] = {}
    for event in events:
        sid = str(event["session_id"])
        last[sid] = max(last.get(sid, 0), int(event["seq"]))
    return last


def worker_sessions(worker: WorkerProcess) -> dict[str, dict[str, Any]]:
    view = worker.get_json("/state/sessions") or {"sessions": []}
    return {s["session_id"]: s for s in view["sessions"]}


def wait_for_sessions(
    worker: WorkerProcess,
    truths: Mapping[str, Mapping[str, Any]],
    expected_last_seq: Mapping[str, int],
    timeout_s: float,
) -> tuple[dict[str, dict[str, Any]], float]:
    """Poll /state/sessions until the worker's totals equal the truth, or the time is up;
    (the last sessions seen, seconds waited)."""
    started = time.monotonic()
    deadline = started + timeout_s
    sessions: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        sessions = worker_sessions(worker)
        if not total_mismatches(sessions, truths, expected_last_seq):
            break
        time.sleep(0.5)
    return sessions, time.monotonic() - started


def total_mismatches(
    sessions: Mapping[str, Mapping[str, Any]],
    truths: Mapping[str, Mapping[str, Any]],
    expected_last_seq: Mapping[str, int],
) -> list[str]:
    """Every way the worker's sessions differ from the truth (empty: equal)."""
    problems = []
    for sid, truth in truths.items():
        got = sessions.get(sid)
        if got is None:
            problems.append(f"{sid}: not in the worker")
            continue
        if got["last_seq"] != expected_last_seq[sid]:
            problems.append(f"{sid}: last_seq {got['last_seq']} != {expected_last_seq[sid]}")
        for name in COMPARED:
            if got[name] != truth[name]:
                problems.append(f"{sid}: {name} {got[name]!r} != truth {truth[name]!r}")
        if truth["tenant_id"] != CLOCK_TENANT and got["status"] != truth["outcome"]:
            problems.append(f"{sid}: status {got['status']} != outcome {truth['outcome']}")
    extra = sorted(set(sessions) - set(truths))
    if extra:
        problems.append(f"{len(extra)} sessions the fleet never produced: {extra[:5]}")
    return problems


def lost_events(
    sessions: Mapping[str, Mapping[str, Any]], truths: Mapping[str, Mapping[str, Any]]
) -> int:
    """Good events the worker did not account (steps by kind, summed; never negative)."""
    lost = 0
    for sid, truth in truths.items():
        got = sessions.get(sid, {}).get("steps_by_kind", {})
        for kind, n in truth["steps_by_kind"].items():
            lost += max(0, n - int(got.get(kind, 0)))
    return lost


def read_topic(settings: Settings, topic: str, timeout_s: float = 60.0) -> list[Message]:
    """Every committed record of ``topic`` (read_committed), with headers, to the end."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap,
            "group.id": f"fault-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 10,
            "log_level": 3,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        partitions = sorted(metadata.partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        pending = set(partitions)
        out: list[Message] = []
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: partitions {sorted(pending)} not read to the end")
            for msg in consumer.consume(10_000, 0.2):
                error = msg.error()
                if error is None:
                    out.append(msg)
                elif error.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition() or 0)
                else:
                    raise RuntimeError(f"{topic}: {error}")
        return out
    finally:
        consumer.close()


def summaries_on_topic(settings: Settings, codecs: Codecs) -> dict[str, list[dict[str, Any]]]:
    """Every committed SessionSummary on ``<prefix>sessions``, per session."""
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for msg in read_topic(settings, settings.topic("sessions")):
        value = msg.value()
        if value is None:
            continue
        summary = codecs.session_summary.decode(value)
        found[summary["session_id"]].append(summary)
    return dict(found)


def summary_mismatches(
    found: Mapping[str, Sequence[Mapping[str, Any]]],
    events: Sequence[Mapping[str, Any]],
    prices: PriceTable,
) -> list[str]:
    """Each session the events end (all but the clock sessions) has exactly one summary on
    the topic, equal to the one a fault-free fold of the same events gives."""
    expected = {
        s["session_id"]: s
        for s in offline_summaries([e for e in events if e["tenant_id"] != CLOCK_TENANT], prices)
    }
    problems = []
    for sid, want in expected.items():
        got = found.get(sid, [])
        if len(got) != 1:
            problems.append(f"{sid}: {len(got)} summaries on the topic")
            continue
        for name, value in want.items():
            if name in NOT_IN_OFFLINE_SUMMARY or got[0].get(name) == value:
                continue
            if name == "error_type" and killing_policy(got[0].get(name)) is not None:
                continue  # a session the worker killed names the policy (a decision it took)
            problems.append(f"{sid}: summary {name} {got[0].get(name)!r} != {value!r}")
    extra = sorted(set(found) - set(expected))
    if extra:
        problems.append(f"summaries of sessions that did not end: {extra[:5]}")
    return problems


def read_model_mismatches(
    client: redis.Redis, prefix: str, truths: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """The Redis read-model's answers (what `governor ask` says) against the truth of every
    ended session: sessions and outcomes, and each session's cost, steps and retries."""
    from streams.query.answers import Answers
    from streams.query.readmodel import SessionReadModel

    ended = {sid: t for sid, t in truths.items() if t["tenant_id"] != CLOCK_TENANT}
    answers = Answers(SessionReadModel(client, prefix), clock_us=now_us() + 3600 * US)
    problems = []
    outcomes = answers.outcomes("30d")
    want_counts = Counter(t["outcome"] for t in ended.values())
    if outcomes["sessions"] != len(ended):
        problems.append(f"read-model: {outcomes['sessions']} sessions, truth {len(ended)}")
    for outcome in ("OK", "ERROR", "TIMEOUT", "KILLED"):
        if outcomes["counts"][outcome] != want_counts.get(outcome, 0):
            problems.append(
                f"read-model: {outcome} {outcomes['counts'][outcome]} != "
                f"{want_counts.get(outcome, 0)}"
            )
    top = answers.top_cost(100.0, "30d")
    rows = {row["session_id"]: row for row in top["top"]}
    for sid, truth in ended.items():
        row = rows.get(sid)
        if row is None:
            problems.append(f"read-model: {sid} missing from top-cost")
            continue
        steps = sum(truth["steps_by_kind"].get(k, 0) for k in ("LLM_CALL", "TOOL_CALL"))
        got = (round(row["cost_usd"] * US), row["steps"], row["retries"])
        want = (truth["cost_micros"], steps, truth["retries"])
        if got != want:
            problems.append(f"read-model: {sid} (cost, steps, retries) {got} != {want}")
    return problems


def read_model_count(client: redis.Redis, prefix: str) -> int:
    from streams.query.answers import Answers
    from streams.query.readmodel import SessionReadModel

    answers = Answers(SessionReadModel(client, prefix), clock_us=now_us() + 3600 * US)
    return int(answers.outcomes("30d")["sessions"])


# --- decisions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    decision: dict[str, Any]
    #: monotonic time the watcher read it
    at: float


class ControlWatcher:
    """Reads every decision on ``<prefix>control`` from the beginning, on a thread."""

    def __init__(self, settings: Settings, codecs: Codecs) -> None:
        self.topic = settings.topic("control")
        self.codecs = codecs
        self.seen: list[Seen] = []
        self.undecodable = 0
        self._first: dict[tuple[str, str], Seen] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.bootstrap,
                "group.id": f"fault-watcher-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 5,
                "log_level": 3,
            }
        )
        metadata = self._consumer.list_topics(self.topic, timeout=10).topics[self.topic]
        self._consumer.assign(
            [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in metadata.partitions]
        )
        self._thread = threading.Thread(target=self._run, name="control-watcher", daemon=True)

    def start(self) -> ControlWatcher:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                for msg in self._consumer.consume(500, 0.05):
                    if msg.error() is not None:
                        continue
                    at = time.monotonic()
                    try:
                        decision = self.codecs.decision.decode(msg.value() or b"")
                    except DecodeError:
                        self.undecodable += 1
                        continue
                    seen = Seen(decision, at)
                    with self._lock:
                        self.seen.append(seen)
                        self._first.setdefault((decision["target"], decision["action"]), seen)
        finally:
            self._consumer.close()

    def first(self, target: str, action: str = "KILL") -> Seen | None:
        with self._lock:
            return self._first.get((target, action))

    def kills(self) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.decision["action"] == "KILL"]

    def latest_by_target(self) -> dict[str, Seen]:
        """The newest decision (highest epoch) per target, and when it was read."""
        latest: dict[str, Seen] = {}
        with self._lock:
            for s in self.seen:
                current = latest.get(s.decision["target"])
                if current is None or s.decision["epoch"] > current.decision["epoch"]:
                    latest[s.decision["target"]] = s
        return latest

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(10)


def mirror_mismatches(
    client: redis.Redis, prefix: str, codecs: Codecs, latest: Mapping[str, Seen]
) -> dict[str, str]:
    """Targets whose newest decision on the topic is not the one in the Redis decision
    mirror, with what is wrong (empty: the mirror holds every one)."""
    problems = {}
    pipe = client.pipeline(transaction=False)
    targets = sorted(latest)
    for target in targets:
        pipe.hget(decision_redis_key(prefix, target), "payload")
    for target, raw in zip(targets, pipe.execute(), strict=True):
        want = latest[target].decision
        if raw is None:
            problems[target] = f"no decision in Redis (the newest is {want['action']})"
            continue
        got = codecs.decision.decode(raw)
        if got["decision_id"] != want["decision_id"]:
            problems[target] = (
                f"Redis holds {got['action']} epoch {got['epoch']}, the newest is "
                f"{want['action']} epoch {want['epoch']}"
            )
    return problems


def probe_events(session_id: str, at_us: int, event_id: str) -> list[dict[str, Any]]:
    """A probe session: start, one LLM call over the probe budget, end (KILLED, as a client
    that obeyed would end it)."""
    common = {"session_id": session_id, "tenant_id": PROBE_TENANT, "agent_id": PROBE_AGENT}
    return [
        {**common, "event_id": f"{session_id}-1", "seq": 1, "kind": "SESSION_START",
         "start_time_us": at_us, "status": "OK"},
        {**common, "event_id": event_id, "seq": 2, "kind": "LLM_CALL", "operation": "chat",
         "start_time_us": at_us + 1000, "duration_us": 1000, "status": "OK", "model": "gpt-4o",
         "provider": "openai", "input_tokens": 10, "output_tokens": 5,
         "cost_micros": PROBE_COST_MICROS},
        {**common, "event_id": f"{session_id}-3", "seq": 3, "kind": "SESSION_END",
         "start_time_us": at_us + 3000, "duration_us": 3000, "status": "KILLED"},
    ]  # fmt: skip


@dataclass(frozen=True)
class Probe:
    session_id: str
    breaking_event_id: str
    #: monotonic time the breaking event was produced; its KILL's latency (None: none came)
    sent_at: float
    latency_s: float | None


class KillProber:
    """Every ``interval_s`` a probe session through the driver, at the fleet's event time."""

    def __init__(
        self, driver: FleetDriver, codecs: Codecs, interval_s: float = 1.0, tag: str = ""
    ) -> None:
        self.driver = driver
        self.codecs = codecs
        self.interval_s = interval_s
        self.tag = tag or uuid.uuid4().hex[:6]
        self.sessions: list[tuple[str, str]] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kill-prober", daemon=True)

    def start(self) -> KillProber:
        self._thread.start()
        return self

    def _run(self) -> None:
        n = 0
        while not self._stopping.wait(self.interval_s):
            n += 1
            sid = f"probe-{self.tag}-{n:05d}"
            breaking = f"{sid}-2"
            at = self.driver.position_us or now_us() - 3 * 3600 * US
            events = probe_events(sid, at, breaking)
            self.sessions.append((sid, breaking))
            self.driver.inject([good(self.codecs, e) for e in events])

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(10)

    def results(self, watcher: ControlWatcher) -> list[Probe]:
        out = []
        for sid, breaking in self.sessions:
            sent = self.driver.sent_at.get(breaking)
            if sent is None:
                continue
            seen = watcher.first(f"session:{sid}")
            out.append(Probe(sid, breaking, sent, None if seen is None else seen.at - sent))
        return out


def kill_latencies(
    watcher: ControlWatcher, driver: FleetDriver, policy_id: str = "session-budget"
) -> list[tuple[float, float]]:
    """(sent at, latency) of every KILL by ``policy_id`` whose breaking event the driver
    produced: the fleet's own budget breakers."""
    out = []
    for seen in watcher.kills():
        decision = seen.decision
        sent = driver.sent_at.get(decision.get("trigger_event_id") or "")
        if decision["policy_id"] == policy_id and sent is not None:
            out.append((sent, seen.at - sent))
    return out


# --- health over time ----------------------------------------------------------------------


def http_get(url: str, timeout_s: float = 1.0) -> tuple[int | None, Any]:
    """(HTTP status, JSON body); (None, None) when nothing answers in time."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read())
        except ValueError:
            return exc.code, None
    except (OSError, ValueError):
        return None, None


@dataclass(frozen=True)
class HealthSample:
    at: float
    healthz: int | None
    readyz: int | None
    #: names of the failing /readyz checks (with their detail)
    failing: tuple[str, ...]


@dataclass(frozen=True)
class LagSample:
    at: float
    committed: dict[int, int | None]
    end: dict[int, int]


def end_offsets(settings: Settings) -> dict[int, int]:
    """The events topic's end (last stable offset) per partition, now."""
    lags = measure_lag(
        admin_client(settings), settings.events_source_topic, accounting_group(settings)
    )
    return {p.partition: p.end for p in lags}


class HealthPoller:
    """/healthz and /readyz every ``interval_s``; the committed offsets every ``lag_every_s``."""

    def __init__(
        self, settings: Settings, url: str, interval_s: float = 0.25, lag_every_s: float = 0.5
    ) -> None:
        self.settings = settings
        self.url = url
        self.interval_s = interval_s
        self.lag_every_s = lag_every_s
        self.samples: list[HealthSample] = []
        self.lags: list[LagSample] = []
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._poll, name="health-poller", daemon=True),
            threading.Thread(target=self._poll_lag, name="lag-poller", daemon=True),
        ]

    def start(self) -> HealthPoller:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(10)

    def _poll(self) -> None:
        while not self._stopping.is_set():
            at = time.monotonic()
            healthz, _ = http_get(self.url + "/healthz")
            readyz, body = http_get(self.url + "/readyz")
            # the answer describes the worker when it was given, not when it was asked: a
            # request made while the worker is stopped is answered after SIGCONT
            answered = time.monotonic()
            failing = tuple(
                f"{c['name']}: {c['detail']}"
                for c in (body or {}).get("checks", [])
                if not c.get("ok")
            )
            self.samples.append(HealthSample(answered, healthz, readyz, failing))
            self._stopping.wait(max(0.0, self.interval_s - (time.monotonic() - at)))

    def _poll_lag(self) -> None:
        admin = admin_client(self.settings)
        topic, group = self.settings.events_source_topic, accounting_group(self.settings)
        while not self._stopping.is_set():
            at = time.monotonic()
            with contextlib.suppress(Exception):  # a failed measurement is just not a sample
                lags = measure_lag(admin, topic, group, timeout_s=2.0)
                self.lags.append(
                    LagSample(
                        at,
                        {p.partition: p.committed for p in lags},
                        {p.partition: p.end for p in lags},
                    )
                )
            self._stopping.wait(max(0.0, self.lag_every_s - (time.monotonic() - at)))

    def between(self, start: float, end: float) -> list[HealthSample]:
        return [s for s in self.samples if start <= s.at <= end]

    def seconds_red(self, start: float, end: float, which: str = "readyz") -> float:
        """How long /readyz (or /healthz) was not 200 between ``start`` and ``end``."""
        red = 0.0
        samples = self.samples
        for before, after in itertools.pairwise(samples):
            lo, hi = max(before.at, start), min(after.at, end)
            if hi > lo and getattr(before, which) != 200:
                red += hi - lo
        return red

    def green_at(self, after: float) -> float | None:
        """First time at or after ``after`` that /readyz answered 200."""
        return next((s.at for s in self.samples if s.at >= after and s.readyz == 200), None)

    def caught_up_at(self, after: float, ends: Mapping[int, int]) -> float | None:
        """First lag sample at or after ``after`` whose committed offsets reach ``ends``."""
        for sample in self.lags:
            if sample.at >= after and all(
                (sample.committed.get(p) or 0) >= end for p, end in ends.items()
            ):
                return sample.at
        return None

    def recovery_s(self, fault_end: float, ends: Mapping[int, int]) -> float | None:
        green = self.green_at(fault_end)
        caught = self.caught_up_at(fault_end, ends)
        if green is None or caught is None:
            return None
        return max(green, caught) - fault_end

    def wait_recovered(
        self, fault_end: float, ends: Mapping[int, int], timeout_s: float
    ) -> float | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            recovery = self.recovery_s(fault_end, ends)
            if recovery is not None:
                return recovery
            time.sleep(0.25)
        return None


# --- metrics -------------------------------------------------------------------------------


def metric_values(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples of counter ``name`` (without ``_total``) by their labels."""
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name in (name, name + "_total"):
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def metrics_text(worker: WorkerProcess) -> str:
    with urllib.request.urlopen(worker.url + "/metrics", timeout=5) as response:
        return bytes(response.read()).decode()


# --- the poison corpus ---------------------------------------------------------------------


@dataclass(frozen=True)
class PoisonKind:
    """One kind of bad record. ``build(at_us, wall_us)`` gives the records to produce: the good
    events of a host session (in the truth) and the one bad record (headed with its kind),
    which claims the seq the host uses next, so a bad record taken for good would make the
    next good event a duplicate and show in the totals."""

    name: str
    stage: str  # DECODE or VALIDATE
    reason: str  # the refusal reason (VALIDATE); "" for DECODE
    build: Callable[[int, int], list[Outgoing]]


def _host(name: str) -> str:
    return f"poison-{name}"


def _event(sid: str, seq: int, kind: str, at_us: int, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": f"{sid}-{seq}",
        "seq": seq,
        "session_id": sid,
        "tenant_id": "poison",
        "agent_id": "poison-bot",
        "kind": kind,
        "start_time_us": at_us,
        "duration_us": 0,
        "status": "OK",
        **fields,
    }


def _llm(sid: str, seq: int, at_us: int, **fields: Any) -> dict[str, Any]:
    base = {
        "operation": "chat",
        "model": "gpt-4o-mini",
        "provider": "openai",
        "input_tokens": 100,
        "output_tokens": 20,
        "duration_us": 500,
    }
    return _event(sid, seq, "LLM_CALL", at_us, **{**base, **fields})


def _schema_variant(codecs: Codecs, change: Callable[[dict[str, Any]], None]) -> Any:
    """The StepEvent writer schema with ``change`` applied (to write what it cannot)."""
    raw = json.loads(codecs.step_event.schema.path.read_text())
    change(raw)
    return fastavro.parse_schema(raw)


def _field(raw: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(f for f in raw["fields"] if f["name"] == name)
    return found


def _write(schema: Any, prefix: bytes, value: Mapping[str, Any]) -> bytes:
    import io

    buf = io.BytesIO()
    buf.write(prefix)
    fastavro.schemaless_writer(buf, schema, dict(value))
    return buf.getvalue()


def _zigzag(n: int) -> bytes:
    """An Avro long (zig-zag varint)."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        byte = z & 0x7F
        z >>= 7
        if z:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def poison_corpus(codecs: Codecs, prices: PriceTable) -> list[PoisonKind]:
    """60 kinds of bad record: 19 that do not decode, 41 valid-Avro StepEvents the worker must
    refuse (every reason of :mod:`streams.pipeline.validate` and the engine's two)."""
    prefix = MAGIC + codecs.step_event.schema.fingerprint
    kinds: list[PoisonKind] = []

    def hosted(
        name: str,
        stage: str,
        reason: str,
        bad: Callable[[str, int, int], tuple[bytes | None, bytes | None]],
        *,
        after_end: bool = False,
    ) -> None:
        """Host: START(1), LLM(2), [bad claiming seq 3], LLM(3), END(4); with ``after_end`` the
        bad record comes after the END and claims seq 5."""

        def build(at_us: int, wall_us: int) -> list[Outgoing]:
            sid = _host(name)
            start = _event(sid, 1, "SESSION_START", at_us)
            first = _llm(sid, 2, at_us + 1000)
            second = _llm(sid, 3, at_us + 3000, output_tokens=30)
            end = _event(sid, 4, "SESSION_END", at_us + 5000, duration_us=5000)
            key, value = bad(sid, at_us + 2000, wall_us)
            poison = Outgoing(key, value, None, ((POISON_HEADER, name.encode()),))
            hosts = [good(codecs, e) for e in (start, first, second, end)]
            if after_end:
                return [*hosts, poison]
            return [*hosts[:2], poison, *hosts[2:]]

        kinds.append(PoisonKind(name, stage, reason, build))

    def raw(name: str, payload: Callable[[bytes], bytes | None]) -> None:
        """A payload that must not decode; ``payload`` gets a good encoding to spoil."""

        def bad(sid: str, at: int, _wall: int) -> tuple[bytes | None, bytes | None]:
            return sid.encode(), payload(codecs.step_event.encode(_llm(sid, 3, at)))

        hosted(name, "DECODE", "", bad)

    def invalid(
        name: str,
        reason: str,
        fields: Mapping[str, Any] | Callable[[int], Mapping[str, Any]],
        *,
        key: Callable[[str], bytes | None] = lambda sid: sid.encode(),
    ) -> None:
        """A valid-Avro StepEvent: a good LLM call of seq 3 with ``fields`` (or
        ``fields(wall_us)``) over it."""

        def bad(sid: str, at: int, wall: int) -> tuple[bytes | None, bytes | None]:
            event = _llm(sid, 3, at, event_id=f"{sid}-bad")
            event.update(fields(wall) if callable(fields) else fields)
            return key(sid), codecs.step_event.encode(event)

        hosted(name, "VALIDATE", reason, bad)

    # -- 19 payloads that do not decode
    raw("empty-value", lambda good_: b"")
    raw("null-value", lambda good_: None)
    raw("not-avro-text", lambda good_: b"this is not an Avro payload at all")
    raw("json-instead-of-avro", lambda good_: json.dumps({"seq": 3, "kind": "LLM_CALL"}).encode())
    raw("wrong-magic", lambda good_: b"\xc3\x02" + good_[2:])
    raw("magic-only", lambda good_: MAGIC)
    raw("short-fingerprint", lambda good_: good_[:6])
    raw("unknown-fingerprint", lambda good_: MAGIC + bytes(range(1, 9)) + good_[HEADER_LEN:])
    raw("header-without-body", lambda good_: good_[:HEADER_LEN])
    raw("truncated-body", lambda good_: good_[: HEADER_LEN + (len(good_) - HEADER_LEN) // 2])
    raw("trailing-bytes", lambda good_: good_ + b"\x00\x02")
    raw("garbage-body", lambda good_: prefix + b"\xff" * 40)
    raw("negative-string-length", lambda good_: prefix + _zigzag(-5) + b"abc")
    raw("huge-string-length", lambda good_: prefix + _zigzag(2**40) + b"abc")
    raw(
        "a-decision-record",
        lambda good_: codecs.decision.encode(
            make_decision(
                target="session:x", tenant_id="poison", action="KILL", policy_id="p", epoch=1,
                issued_at_us=1,
            )
        ),
    )  # fmt: skip
    raw(
        "a-session-summary-record",
        lambda good_: codecs.session_summary.encode(
            offline_summaries(
                [_event("summary-x", 1, "SESSION_START", 1_700_000_000 * US)], prices
            )[0]
        ),
    )

    bogus_enum = _schema_variant(
        codecs, lambda r: _field(r, "kind")["type"]["symbols"].append("BOGUS_KIND")
    )
    raw(
        "enum-index-out-of-range",
        lambda good_: _write(
            bogus_enum, prefix, {**codecs.step_event.decode(good_), "kind": "BOGUS_KIND"}
        ),
    )
    wider_union = _schema_variant(
        codecs, lambda r: _field(r, "input_tokens")["type"].extend(["string"])
    )
    raw(
        "union-branch-out-of-range",
        lambda good_: _write(
            wider_union, prefix, {**codecs.step_event.decode(good_), "input_tokens": "many"}
        ),
    )

    def bytes_id(r: dict[str, Any]) -> None:
        _field(r, "event_id")["type"] = "bytes"

    bytes_event_id = _schema_variant(codecs, bytes_id)
    raw(
        "invalid-utf8-string",
        lambda good_: _write(
            bytes_event_id, prefix, {**codecs.step_event.decode(good_), "event_id": b"\xff\xfe\xfd"}
        ),
    )

    # -- 41 valid-Avro StepEvents with impossible values
    invalid("cost-negative", "cost_out_of_range", {"cost_micros": -1})
    invalid("cost-over-a-million-usd", "cost_out_of_range", {"cost_micros": MAX_COST_MICROS + 1})
    invalid("cost-2^62", "cost_out_of_range", {"cost_micros": 2**62})
    for token_field, short in (
        ("input_tokens", "input-tokens"),
        ("output_tokens", "output-tokens"),
        ("cache_read_input_tokens", "cache-read-tokens"),
        ("reasoning_output_tokens", "reasoning-tokens"),
    ):
        invalid(f"{short}-negative", "tokens_out_of_range", {token_field: -1})
        invalid(f"{short}-over-a-billion", "tokens_out_of_range", {token_field: MAX_TOKENS + 1})
    invalid("tokens-2^62", "tokens_out_of_range", {"output_tokens": 2**62})
    invalid("duration-negative", "duration_out_of_range", {"duration_us": -1})
    invalid("duration-32-days", "duration_out_of_range",
            {"duration_us": MAX_DURATION_US + DAY_US})  # fmt: skip
    invalid("duration-2^62", "duration_out_of_range", {"duration_us": 2**62})
    for label, score in (("nan", math.nan), ("inf", math.inf), ("minus-inf", -math.inf)):
        evaluation = {"kind": "EVALUATION", "evaluation_name": "helpfulness",
                      "evaluation_score": score, "model": None, "provider": None,
                      "operation": None, "input_tokens": None, "output_tokens": None,
                      "duration_us": 0}  # fmt: skip
        invalid(f"score-{label}", "score_not_finite", evaluation)
    invalid("seq-zero", "seq_out_of_range", {"seq": 0})
    invalid("seq-negative", "seq_out_of_range", {"seq": -3})
    invalid("seq-over-a-billion", "seq_out_of_range", {"seq": MAX_SEQ + 1})
    invalid("seq-2^62", "seq_out_of_range", {"seq": 2**62})
    invalid("start-time-zero", "time_out_of_range", {"start_time_us": 0})
    invalid("start-time-negative", "time_out_of_range", {"start_time_us": -US})
    invalid("start-time-2^62", "time_in_future", {"start_time_us": 2**62})
    invalid("start-time-year-9999", "time_in_future", {"start_time_us": 253_402_300_799 * US})
    invalid("start-time-beyond-future-skew", "time_in_future",
            lambda wall: {"start_time_us": wall + 900 * US})  # fmt: skip
    invalid("start-time-1990", "time_too_old", {"start_time_us": 631_152_000 * US})
    invalid("start-time-beyond-past-skew", "time_too_old",
            lambda wall: {"start_time_us": wall - 31 * DAY_US})  # fmt: skip
    invalid("null-key", "null_key", {}, key=lambda sid: None)
    invalid("key-is-another-session", "key_mismatch", {},
            key=lambda sid: _host("cost-negative").encode())  # fmt: skip
    invalid("empty-key", "key_mismatch", {}, key=lambda sid: b"")
    for id_field in ("session_id", "tenant_id", "agent_id", "event_id"):
        invalid(f"empty-{id_field.replace('_', '-')}", "missing_id", {id_field: ""})
    invalid("agent-id-10k-chars", "id_too_long", {"agent_id": "a" * 10_000})
    invalid("kind-unknown", "unknown_kind", {"kind": "UNKNOWN"})
    invalid("status-unknown", "unknown_status", {"status": "UNKNOWN"})

    def after_end(sid: str, at: int, _wall: int) -> tuple[bytes | None, bytes | None]:
        return sid.encode(), codecs.step_event.encode(
            _llm(sid, 5, at + 10_000, event_id=f"{sid}-late")
        )

    hosted("event-after-session-end", "VALIDATE", "after_session_end", after_end, after_end=True)

    def reused(sid: str, at: int, _wall: int) -> tuple[bytes | None, bytes | None]:
        # the id of seq 2 again, on the seq the host uses next
        return sid.encode(), codecs.step_event.encode(_llm(sid, 3, at, event_id=f"{sid}-2"))

    hosted("event-id-reused-with-another-seq", "VALIDATE", "event_id_reused", reused)
    return kinds


def check_corpus(codecs: Codecs, kinds: Sequence[PoisonKind], at_us: int, wall_us: int) -> None:
    """Without a worker: every DECODE kind fails to decode, every VALIDATE kind decodes."""
    for kind in kinds:
        [bad] = [r for r in kind.build(at_us, wall_us) if r.event is None]
        try:
            codecs.step_event.decode(bad.value or b"")
        except DecodeError:
            decoded = False
        else:
            decoded = True
        if decoded != (kind.stage == "VALIDATE"):
            raise AssertionError(f"{kind.name}: decodes={decoded}, stage {kind.stage}")


@dataclass(frozen=True)
class DeadLetterSeen:
    kind: str
    stage: str
    reason: str
    message: str


def dead_letters(settings: Settings) -> list[DeadLetterSeen]:
    out = []
    for msg in read_topic(settings, settings.topic("events.dlq")):
        headers: dict[str, bytes] = {}
        for name, value in header_pairs(msg.headers()):
            headers.setdefault(name, value)
        out.append(
            DeadLetterSeen(
                headers.get(POISON_HEADER, b"").decode(),
                headers.get(STAGE_HEADER, b"").decode(),
                headers.get(REJECT_REASON_HEADER, b"").decode(),
                headers.get(MESSAGE_HEADER, b"").decode(errors="replace"),
            )
        )
    return out


# --- one scenario, start to end ------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    sessions: int = 300
    seed: int = 5
    days: float = 1.0
    #: the fleet's events are produced evenly over this long
    fleet_s: float = 60.0
    #: the fault starts this long after the fleet (the fault function may wait longer)
    fault_at_s: float = 15.0
    probe_every_s: float = 1.0
    #: how long the end (totals, recovery, read-model) may take after the fleet
    settle_timeout_s: float = 120.0
    #: a private Redis for the worker (needed to fault Redis); its AOF setting
    private_redis: bool = False
    redis_aof: bool = False
    settings_changes: dict[str, Any] = field(default_factory=dict)


@dataclass
class FaultContext:
    """What a fault function gets: the running pieces, and marks for the fault's span."""

    settings: Settings
    worker: WorkerProcess
    driver: FleetDriver
    watcher: ControlWatcher
    poller: HealthPoller
    prober: KillProber
    codecs: Codecs
    prices: PriceTable
    redis: PrivateRedis | None
    started_at: float
    fault_start: float = 0.0
    fault_end: float = 0.0
    ends_at_fault_end: dict[int, int] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    def begin(self) -> None:
        self.fault_start = time.monotonic()

    def end(self) -> None:
        self.fault_end = time.monotonic()
        self.ends_at_fault_end = end_offsets(self.settings)

    def sleep_until(self, offset_s: float) -> None:
        """Until ``offset_s`` after the fleet started."""
        time.sleep(max(0.0, self.started_at + offset_s - time.monotonic()))


@dataclass
class FaultRun:
    scenario: Scenario
    ctx: FaultContext
    truths: dict[str, dict[str, Any]]
    expected_last_seq: dict[str, int]
    sessions: dict[str, dict[str, Any]]
    summaries: dict[str, list[dict[str, Any]]]
    probes: list[Probe]
    fleet_kills: list[tuple[float, float]]
    recovery_s: float | None
    totals_s: float
    read_model_problems: list[str] | None
    mirror_problems: dict[str, str] | None
    dead_letters: list[DeadLetterSeen]
    metrics: str
    worker_exit: int | None
    log_text: str
    #: the truth recomputed from the raw events topic (every record that decodes, but the
    #: poison), and how many records the topic holds
    raw_truths: dict[str, dict[str, Any]] = field(default_factory=dict)
    raw_records: int = 0

    @property
    def produced(self) -> int:
        return self.ctx.driver.produced

    @property
    def good_events(self) -> list[dict[str, Any]]:
        return self.ctx.driver.good_events

    def total_problems(self) -> list[str]:
        return total_mismatches(self.sessions, self.truths, self.expected_last_seq)

    def summary_problems(self) -> list[str]:
        return summary_mismatches(self.summaries, self.good_events, self.ctx.prices)

    def lost(self) -> int:
        return lost_events(self.sessions, self.truths)

    def probes_between(self, start: float, end: float) -> list[Probe]:
        return [p for p in self.probes if start <= p.sent_at <= end]

    def seconds_red(self) -> float:
        poller = self.ctx.poller
        end = self.ctx.fault_end + (self.recovery_s or 0.0) + 1.0
        return poller.seconds_red(self.ctx.fault_start - 1.0, end)


def run_fault(
    base: Settings,
    folder: Path,
    scenario: Scenario,
    fault: Callable[[FaultContext], None],
    *,
    log: Callable[[str], None] = lambda _line: None,
) -> FaultRun:
    """Worker, fleet, probes, ``fault``, closing events, then everything the checks need.

    The worker runs until the end (its exit status is recorded: None means it never exited);
    a fault function raising stops the run and the exception propagates after clean-up.
    """
    folder.mkdir(parents=True, exist_ok=True)
    private = (
        PrivateRedis(folder / "redis", aof=scenario.redis_aof).start()
        if scenario.private_redis
        else None
    )
    changes = dict(scenario.settings_changes)
    if private is not None:
        changes["redis_url"] = private.url
    settings = worker_settings(base, folder, **changes)
    codecs = Codecs.load(settings.schemas_dir)
    prices = load_prices(settings.policies_dir / "prices.yaml")
    events = plan_events(prices, scenario.sessions, seed=scenario.seed, days=scenario.days)
    records = [good(codecs, e) for e in events]
    worker = WorkerProcess(settings, folder / "worker.log")
    stack = contextlib.ExitStack()
    try:
        if private is not None:
            stack.callback(private.close)
        worker.start()
        stack.callback(worker.stop)
        poller = HealthPoller(settings, worker.url).start()
        stack.callback(poller.stop)
        deadline = time.monotonic() + 60
        while poller.green_at(time.monotonic() - 0.5) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready in 60 s:\n{worker.log_tail()}")
            time.sleep(0.2)
        watcher = ControlWatcher(settings, codecs).start()
        stack.callback(watcher.stop)
        driver = FleetDriver(settings, records, scenario.fleet_s).start()
        stack.callback(driver.abort)
        prober = KillProber(driver, codecs, scenario.probe_every_s).start()
        stack.callback(prober.stop)
        ctx = FaultContext(
            settings, worker, driver, watcher, poller, prober, codecs, prices, private,
            driver.started_at,
        )  # fmt: skip
        log(f"{scenario.name}: {len(records)} fleet events over {scenario.fleet_s:.0f}s")
        ctx.sleep_until(scenario.fault_at_s)
        fault(ctx)
        if not ctx.fault_end:
            ctx.end()
        log(f"{scenario.name}: fault over; waiting for the fleet")
        driver.fleet_done.wait(scenario.fleet_s + 60)
        prober.stop()
        time.sleep(0.5)
        last_us = max(
            max(int(e["start_time_us"]) + int(e.get("duration_us") or 0), int(e["start_time_us"]))
            for e in driver.good_events
        )
        idle_us = int(settings.session_idle_timeout_s * US)
        driver.inject(closing_records(codecs, settings.event_partitions, last_us + idle_us + US))
        driver.close()
        if driver.delivery_errors:
            raise RuntimeError(f"the fleet was not produced whole: {driver.delivery_errors[:3]}")
        truths = truths_of(driver.good_events, prices)
        expected = last_seqs(driver.good_events)
        sessions, totals_s = wait_for_sessions(worker, truths, expected, scenario.settle_timeout_s)
        recovery = poller.wait_recovered(ctx.fault_end, ctx.ends_at_fault_end, 30)
        # the totals are in; the summaries of the last sessions may still be in a checkpoint
        time.sleep(2 * settings.checkpoint_interval_s + 1)
        read_model: list[str] | None = None
        mirror: dict[str, str] | None = None
        if private is not None:
            client = private.client()
            want = sum(1 for t in truths.values() if t["tenant_id"] != CLOCK_TENANT)
            deadline = time.monotonic() + scenario.settle_timeout_s
            while time.monotonic() < deadline:
                with contextlib.suppress(redis.RedisError):
                    if read_model_count(client, settings.redis_key_prefix) >= want:
                        break
                time.sleep(0.5)
            read_model = read_model_mismatches(client, settings.redis_key_prefix, truths)
            time.sleep(1.0)  # the mirror writes on its own thread
            mirror = mirror_mismatches(
                client, settings.redis_key_prefix, codecs, watcher.latest_by_target()
            )
            client.close()
        probes = prober.results(watcher)
        # the topics read side by side (each read mostly waits on the broker)
        with ThreadPoolExecutor(max_workers=3, thread_name_prefix="fault-reads") as pool:
            summaries = pool.submit(summaries_on_topic, settings, codecs)
            letters = pool.submit(dead_letters, settings)
            raw = pool.submit(raw_truths, settings, codecs, prices)
            run = FaultRun(
                scenario=scenario,
                ctx=ctx,
                truths=truths,
                expected_last_seq=expected,
                sessions=sessions,
                summaries=summaries.result(),
                probes=probes,
                fleet_kills=kill_latencies(watcher, driver),
                recovery_s=recovery,
                totals_s=totals_s,
                read_model_problems=read_model,
                mirror_problems=mirror,
                dead_letters=letters.result(),
                metrics=metrics_text(worker) if worker.proc and worker.proc.poll() is None else "",
                worker_exit=None if worker.proc is None else worker.proc.poll(),
                log_text="",
            )
            run.raw_truths, run.raw_records = raw.result()
    finally:
        stack.close()
    run.log_text = (folder / "worker.log").read_text(errors="replace")
    return run


def raw_truths(
    settings: Settings, codecs: Codecs, prices: PriceTable
) -> tuple[dict[str, dict[str, Any]], int]:
    """The truth recomputed from the raw events topic: every record that decodes and is not
    marked poison, per session; and the number of records on the topic."""
    records = read_topic(settings, settings.events_source_topic)
    events = []
    for msg in records:
        if any(name == POISON_HEADER for name, _ in header_pairs(msg.headers())):
            continue
        events.append(codecs.step_event.decode(msg.value() or b""))
    return truths_of(events, prices), len(records)


def describe_run(run: FaultRun) -> str:
    """One block of text: what a failed check should print."""
    ctx = run.ctx
    red = [
        (round(s.at - ctx.fault_start, 1), s.healthz, s.readyz, s.failing[:2])
        for s in ctx.poller.between(ctx.started_at, math.inf)
        if s.readyz != 200 or s.healthz != 200
    ]
    return (
        f"{run.scenario.name}: produced {run.produced}, recovery {run.recovery_s}, "
        f"worker exit {run.worker_exit}\nred samples (s after fault start, healthz, readyz, "
        f"failing): {red[:12]} ... {red[-6:]}\nlog tail:\n"
        + "\n".join(run.log_text.splitlines()[-40:])
    )


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# --- the faults ----------------------------------------------------------------------------

Fault = Callable[[FaultContext], None]


def redis_stop(seconds: float) -> Fault:
    """SIGSTOP on the worker's Redis for ``seconds``, then SIGCONT."""

    def fault(ctx: FaultContext) -> None:
        assert ctx.redis is not None, "the scenario needs private_redis"
        ctx.begin()
        ctx.redis.stop()
        time.sleep(seconds)
        ctx.redis.cont()
        ctx.end()

    return fault


def redis_kill(down_s: float) -> Fault:
    """SIGKILL on the worker's Redis, started again ``down_s`` later (empty without AOF)."""

    def fault(ctx: FaultContext) -> None:
        assert ctx.redis is not None, "the scenario needs private_redis"
        ctx.begin()
        ctx.redis.kill()
        time.sleep(down_s)
        ctx.redis.start()
        ctx.end()

    return fault


def worker_stop(seconds: float) -> Fault:
    """SIGSTOP on the worker process for ``seconds``, then SIGCONT (its pid in notes)."""

    def fault(ctx: FaultContext) -> None:
        proc = ctx.worker.proc
        assert proc is not None
        ctx.notes["pid"] = proc.pid
        ctx.begin()
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        ctx.end()

    return fault


def poison(kinds: Sequence[PoisonKind], spacing_s: float) -> Fault:
    """Each kind of the corpus, one every ``spacing_s``, at the fleet's event time."""

    def fault(ctx: FaultContext) -> None:
        ctx.begin()
        first = time.monotonic() - ctx.started_at
        for index, kind in enumerate(kinds):
            ctx.sleep_until(first + index * spacing_s)
            ctx.driver.inject(kind.build(ctx.driver.position_us, now_us()))
        ctx.end()

    return fault


@dataclass
class PolicyChange:
    """One refused change of the policies folder and what the worker did about it (monotonic
    times; None: it did not happen within the wait)."""

    name: str
    file: str
    written: float
    refused: float | None = None
    #: governor_policy_reload_errors_total after minus before
    reload_errors: float = 0.0
    restored: float = 0.0
    green: float | None = None


def _replace_file(path: Path, text: str, scratch: Path) -> None:
    """Replace a file whole (the reload never sees half of it)."""
    scratch.mkdir(parents=True, exist_ok=True)
    tmp = scratch / f".{path.name}.{time.monotonic_ns()}"
    tmp.write_text(text)
    os.replace(tmp, path)


def _wait_until(check: Callable[[], bool], timeout_s: float) -> float | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(0.1)
    return None


def reload_errors(worker: WorkerProcess) -> float:
    return sum(metric_values(metrics_text(worker), "governor_policy_reload_errors").values())


def more_errors(worker: WorkerProcess, before: float) -> bool:
    return reload_errors(worker) > before


def green_since(poller: HealthPoller, since: float) -> bool:
    return poller.green_at(since) is not None


def broken_policy_files(policies: Path) -> list[tuple[str, str, str]]:
    """(name, file, broken text): a policy with ``limit_usd: .inf`` (the probes' own, so an
    accepted one would stop their kills), prices.yaml that is not YAML, and prices.yaml with a
    NaN price (an accepted one would change the fleet's totals)."""
    probe_text = (policies / PROBE_POLICY_FILE).read_text()
    prices_text = (policies / "prices.yaml").read_text()
    infinite = probe_text.replace(f"limit_usd: {PROBE_LIMIT_USD}", "limit_usd: .inf")
    # claude-haiku-4 is the fleet's and priced by the override alone (genai-prices lacks it)
    nan_price = prices_text.replace(
        "claude-haiku-4:    {input: 1.00,", "claude-haiku-4: {input: .nan,"
    )
    if infinite == probe_text or nan_price == prices_text:
        raise AssertionError("the policy files changed: update broken_policy_files")
    return [
        ("limit_usd .inf", PROBE_POLICY_FILE, infinite),
        ("prices.yaml not YAML", "prices.yaml", prices_text + "  gpt-5: {input: [1,\n"),
        ("prices.yaml NaN price", "prices.yaml", nan_price),
    ]


def policy_files(scratch: Path, hold_s: float = 3.0) -> tuple[Fault, list[PolicyChange]]:
    """Each broken file of :func:`broken_policy_files` written into the worker's folder, held
    ``hold_s`` after it is refused, then the original restored; the changes are recorded."""
    changes: list[PolicyChange] = []

    def refused_since(ctx: FaultContext, since: float) -> bool:
        return any(
            s.readyz == 503 and any(f.startswith("policies") for f in s.failing)
            for s in ctx.poller.between(since, math.inf)
        )

    def fault(ctx: FaultContext) -> None:
        folder = ctx.settings.policies_dir
        ctx.begin()
        for name, file, broken in broken_policy_files(folder):
            original = (folder / file).read_text()
            before = reload_errors(ctx.worker)
            change = PolicyChange(name, file, time.monotonic())
            changes.append(change)
            _replace_file(folder / file, broken, scratch)
            change.refused = _wait_until(partial(refused_since, ctx, change.written), 15)
            _wait_until(partial(more_errors, ctx.worker, before), 10)
            time.sleep(hold_s)  # the probes of these seconds meet the refused file
            change.reload_errors = reload_errors(ctx.worker) - before
            change.restored = time.monotonic()
            _replace_file(folder / file, original, scratch)
            change.green = _wait_until(partial(green_since, ctx.poller, change.restored), 15)
        ctx.end()

    return fault, changes
