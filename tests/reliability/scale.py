"""Scale-out on the real stack: the pieces of tests/reliability/test_scale_out.py and of
``bench/scale.py`` (which imports this module; it is no test module itself).

- :class:`Workers`: N ``governor worker`` processes of one deployment (one app id, group and
  topic prefix; a web port and a state folder each), started in parallel, killed with SIGKILL
  and replaced, or stopped gracefully; with each one's CPU time from ``/proc``.
- :func:`wait_for_members`: the accounting group stable with N members, each assigned.
- :func:`settle`: wait until every event of the (closed) events topic is accounted: the
  accounting group's committed offsets at the end of the topic, every session's summary on
  ``<prefix>sessions``, the tenant-keyed stage at the end of ``<prefix><app>-scope-deltas``
  and the control topic quiet; then :func:`collect` what the run left on its topics.
- :class:`ScaleOutcome`: summaries (last per session wins), decisions, the audit verification;
  checked against a recomputation from the raw events topic (the helpers of
  :mod:`tests.reliability.faults`) and against another run (another number of workers).
- :func:`tenant_budget_for` and :func:`crossing`: a tenant budget whose limit the fleet crosses
  at one event that no ordering within equal event times can move.
- :class:`TenantProber`: every interval a session of a tenant of its own that breaks a tenant
  budget, for the tenant-decision latency.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import ConsumerGroupState, KafkaException
from confluent_kafka.admin import AdminClient

from streams.audit import AuditVerification, ChainBreak, verify_audit_topic
from streams.codec import Codecs, header_pairs
from streams.control import ensure_signing_key
from streams.pipeline.pricing import PriceTable
from streams.pipeline.session_facts import CALL_KINDS, call_cost_micros
from streams.policy_files import load_policy_set
from streams.processor.lag import accounting_group, measure_lag
from streams.settings import Settings
from streams.simulator.params import TENANT_NAMES
from streams.topics import admin_client, ensure_topics, scope_deltas_topic
from streams.worker import WorkerProcess
from tests.private_redis import free_low_port
from tests.reliability.faults import (
    CLOCK_TENANT,
    POISON_HEADER,
    US,
    ControlWatcher,
    FleetDriver,
    KillProber,
    Probe,
    closing_records,
    good,
    last_seqs,
    metric_values,
    metrics_text,
    now_us,
    probe_events,
    read_topic,
    summaries_on_topic,
    summary_mismatches,
    total_mismatches,
    truths_of,
    worker_settings,
)

#: the tenants of the suite's fleets (FleetParams' default of three)
FLEET_TENANTS = TENANT_NAMES[:3]
#: the policy file the scale suite writes into its workers' policies folder (governor.yaml's
#: place: the repository's policies would fire nothing on a fleet this small)
POLICY_FILE = "governor.yaml"
#: files of the repository's policies folder a scale run keeps (prices, PII, SLOs)
KEPT_FILES = ("prices.yaml", "pii.yaml", "slo.yaml")
TENANT_BUDGET_ID = "tenant-fleet-budget"
AGENT_BUDGET_ID = "agent-fleet-budget"
#: scoped policies whose decisions no wall-clock tick can move: budgets over a window longer
#: than the fleet (nothing they decide lapses), whose crossings depend on the order of the
#: tenant-keyed stage's merge alone. The others' (step rate, hour budgets, degradation,
#: concurrency) move wherever a lapsed decision is forgotten, or an abandoned session closed,
#: on the wall-clock tick that notices it rather than at the event time it falls on
LONG_WINDOW = frozenset({AGENT_BUDGET_ID, TENANT_BUDGET_ID})
#: items the tenant-keyed stage holds until every source partition has caught up (a gauge), and
#: the ones it released without waiting for a silent source (a counter)
PENDING_METRIC = "governor_scope_pending_items"
FORCED_METRIC = "governor_scope_forced_releases"


# --- settings and policies -----------------------------------------------------------------


def isolated(base: Settings, name: str, partitions: int = 6) -> Settings:
    """``base`` on topics, a group and a state folder of its own (topics created)."""
    tag = f"{name}{uuid.uuid4().hex[:8]}"
    settings = base.replace(
        topic_prefix=f"s{tag}.",
        app_id=f"governor-scale-{tag}",
        event_partitions=partitions,
    )
    ensure_topics(settings)
    return settings


def scoped_policies(tenants: Sequence[str] = FLEET_TENANTS) -> str:
    """Policies that fire on a small fleet, every tenant/agent-scoped kind among them: agent and
    tenant budgets over an hour, an agent budget over the whole fleet, agent concurrency, agent
    step rate and tool degradation (the tenant-keyed stage's), and the session budget (the
    session-keyed stage's). They match the
    fleet's tenants only: the clock sessions that close a run (random event ids) decide
    nothing."""
    match = "{tenants: [" + ", ".join(f'"{t}"' for t in tenants) + "]}"
    return f"""version: 1
policies:
  - id: session-budget
    kind: budget
    scope: session
    limit_usd: 2.00
    warn_at: 0.8
    action: kill
    match: {match}
  - id: agent-hour-budget
    kind: budget
    scope: agent
    window: 1h
    limit_usd: 1.0
    warn_at: 0.5
    action: throttle
    match: {match}
  - id: tenant-hour-budget
    kind: budget
    scope: tenant
    window: 1h
    limit_usd: 3.0
    warn_at: 0.6
    action: pause
    match: {match}
  - id: {AGENT_BUDGET_ID}
    kind: budget
    scope: agent
    window: 30d
    limit_usd: 3.0
    warn_at: 0.5
    action: throttle
    match: {match}
  - id: agent-concurrency
    kind: concurrency
    scope: agent
    max_active: 1
    action: throttle
    match: {match}
  - id: agent-step-rate
    kind: step_rate
    scope: agent
    max_steps: 4
    window: 1m
    action: throttle
    match: {match}
  - id: tool-degradation
    kind: degradation
    tool: "*"
    max_failures: 3
    window: 10m
    action: pause
    resume_after: 10m
    match: {match}
"""


@dataclass(frozen=True)
class TenantBudget:
    """A tenant budget over a window longer than the fleet: it sums the tenant's whole spend."""

    tenant_id: str
    limit_micros: int
    policy_id: str = TENANT_BUDGET_ID
    window: str = "30d"

    @property
    def target(self) -> str:
        return f"tenant:{self.tenant_id}"

    def policy(self) -> str:
        """One entry of a policies list (to append to :func:`scoped_policies`)."""
        return f"""  - id: {self.policy_id}
    description: the whole fleet's spend of one tenant, shared by sessions on every partition
    kind: budget
    scope: tenant
    window: {self.window}
    limit_usd: {self.limit_micros / 1_000_000!r}
    warn_at: null
    action: kill
    match: {{tenants: ["{self.tenant_id}"]}}
"""


def scale_settings(base: Settings, folder: Path, policies: str, **changes: Any) -> Settings:
    """A worker deployment of the test's own (see :func:`faults.worker_settings`) whose policies
    are ``policies`` beside the repository's prices, PII and SLO files."""
    settings = worker_settings(base, folder, **changes)
    use_policies(settings.policies_dir, policies)
    return settings


def use_policies(folder: Path, policies: str, keep: Iterable[str] = KEPT_FILES) -> None:
    """Leave in ``folder`` the files of ``keep`` and a ``governor.yaml`` of ``policies``."""
    kept = set(keep)
    for path in folder.iterdir():
        if path.name not in kept:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    (folder / POLICY_FILE).write_text(policies)


@dataclass(frozen=True)
class PolicyIds:
    """The policies of a folder by the stage that decides them."""

    #: need fleet-wide state (the tenant-keyed stage's): agent and tenant budgets, concurrency,
    #: agent step rates, degradation
    scoped: frozenset[str]
    #: decided on one session's state (the session-keyed stage's)
    session: frozenset[str]

    @property
    def all(self) -> frozenset[str]:
        return self.scoped | self.session


def policy_ids(policies_dir: Path) -> PolicyIds:
    """The policy ids of the folder by stage. (The PII agent's KILLs, policy ``pii``, are
    neither: they are the Faust agent's, which commits on no transaction of the stages.)"""
    scoped, session = set(), set()
    for policy in load_policy_set(policies_dir).policies:
        scope = getattr(policy, "scope", None)
        if policy.kind in ("concurrency", "degradation") or (
            policy.kind in ("budget", "step_rate") and scope != "session"
        ):
            scoped.add(policy.id)
        else:
            session.add(policy.id)
    return PolicyIds(frozenset(scoped), frozenset(session))


# --- worker processes ----------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (``/proc/<pid>/stat``)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # the command name (field 2) may hold spaces: count the fields after its closing paren
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def ingest(worker: WorkerProcess) -> dict[str, Any]:
    """The worker's /ingest view ({} while it does not answer)."""
    view = worker.get_json("/ingest")
    return view if isinstance(view, dict) else {}


class Workers:
    """The worker processes of one deployment: one settings (app id, group, topic prefix) with
    a web port and a state folder per process, and one signing key for all."""

    def __init__(self, settings: Settings, folder: Path, *, start_timeout_s: float = 120.0) -> None:
        self.settings = settings
        self.folder = folder
        self.start_timeout_s = start_timeout_s
        #: every process started, in order (the killed ones too: their logs tell a failure)
        self.started: list[WorkerProcess] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="worker-start")
        ensure_signing_key(settings.control_keys_dir)  # before any two start at once

    def _new(self) -> WorkerProcess:
        with self._lock:
            n = len(self.started) + 1
            settings = self.settings.replace(
                web_port=free_low_port(), state_dir=self.folder / f"worker-{n}"
            )
            worker = WorkerProcess(settings, self.folder / f"worker-{n}.log")
            self.started.append(worker)
        return worker

    def spawn(self, n: int = 1) -> list[Future[WorkerProcess]]:
        """Start ``n`` workers in the background; each future ends when its web view answers."""
        futures = []
        for _ in range(n):
            worker = self._new()
            futures.append(self._pool.submit(worker.start, self.start_timeout_s))
        return futures

    def start(self, n: int = 1) -> list[WorkerProcess]:
        """Start ``n`` workers in parallel and wait until each answers."""
        return [future.result() for future in self.spawn(n)]

    @property
    def live(self) -> list[WorkerProcess]:
        """The started processes still running, oldest first."""
        return [w for w in self.started if w.proc is not None and w.proc.poll() is None]

    def ready(self) -> list[WorkerProcess]:
        """The live workers whose accounting loop has had its partitions, oldest first."""
        return [w for w in self.live if ingest(w).get("ready")]

    def kill(self, worker: WorkerProcess) -> int:
        """SIGKILL (no goodbye: its open transaction stays open until the broker aborts it);
        the pid killed."""
        assert worker.proc is not None
        pid = worker.proc.pid
        os.kill(pid, signal.SIGKILL)
        worker.proc.wait(30)
        return pid

    def stop(self, workers: Sequence[WorkerProcess]) -> None:
        """Graceful stops (SIGTERM: the group is left, the last checkpoint committed), in
        parallel."""
        for future in [self._pool.submit(w.stop) for w in workers]:
            future.result()

    def cpu(self) -> dict[int, float]:
        """CPU seconds of every live worker, by pid."""
        out = {}
        for worker in self.live:
            assert worker.proc is not None
            try:
                out[worker.proc.pid] = cpu_seconds(worker.proc.pid)
            except (FileNotFoundError, ProcessLookupError):
                continue
        return out

    def logs(self, lines: int = 25) -> str:
        """The tail of every worker's log, for a failure message."""
        parts = []
        for worker in self.started:
            state = (
                "running" if worker in self.live else f"exit {worker.proc and worker.proc.poll()}"
            )
            parts.append(f"--- {worker.log_file.name} ({state})\n{worker.log_tail(lines)}")
        return "\n".join(parts)

    def close(self) -> None:
        self.stop(self.live)
        self._pool.shutdown(wait=True)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the group and its progress ------------------------------------------------------------


@dataclass(frozen=True)
class GroupView:
    state: str
    #: client id -> the partitions assigned to it
    members: dict[str, tuple[int, ...]]


def group_view(admin: AdminClient, group: str, timeout_s: float = 5.0) -> GroupView:
    found = admin.describe_consumer_groups([group], request_timeout=timeout_s)[group]
    description = found.result(timeout=timeout_s)
    members = {}
    for member in description.members:
        partitions = member.assignment.topic_partitions if member.assignment else []
        members[member.member_id] = tuple(sorted(tp.partition for tp in partitions))
    return GroupView(description.state.name, members)


def stable_with(view: GroupView, n: int) -> bool:
    """The group is stable with ``n`` members, each with partitions."""
    return (
        view.state == ConsumerGroupState.STABLE.name
        and len(view.members) == n
        and all(view.members.values())
    )


def has_members(settings: Settings, n: int) -> bool:
    """The accounting group is stable with ``n`` members, each assigned (False when the broker
    does not say)."""
    try:
        return stable_with(group_view(admin_client(settings), accounting_group(settings)), n)
    except KafkaException:
        return False


def wait_for_members(settings: Settings, n: int, timeout_s: float = 60.0) -> GroupView:
    """Until the accounting group is stable with ``n`` members, each with partitions."""
    admin = admin_client(settings)
    group = accounting_group(settings)
    deadline = time.monotonic() + timeout_s
    view = GroupView("UNKNOWN", {})
    while time.monotonic() < deadline:
        try:
            view = group_view(admin, group)
        except KafkaException:
            time.sleep(0.5)
            continue
        if stable_with(view, n):
            return view
        time.sleep(0.25)
    raise TimeoutError(f"{group}: not {n} stable members in {timeout_s:.0f}s: {view}")


def accounting_lag(settings: Settings, admin: AdminClient) -> dict[int, int]:
    """Records of the events topic the accounting group has not committed, per partition."""
    lags = measure_lag(admin, settings.events_source_topic, accounting_group(settings))
    return {p.partition: p.lag for p in lags}


def scope_group(settings: Settings) -> str:
    """The consumer group of the tenant-keyed stage (streams.processor.scope_stage)."""
    return f"{settings.app_id}-scope"


def scope_visible_ends(settings: Settings) -> dict[int, int]:
    """Per partition of ``<prefix><app>-scope-deltas``, the offset after the last record a
    read-committed reader sees (not the end offset: a partition whose last transaction was
    aborted, a killed worker's, ends with a marker no consumer position passes until more
    records come)."""
    visible: dict[int, int] = {}
    for msg in read_topic(settings, scope_deltas_topic(settings)):
        partition = msg.partition() or 0
        visible[partition] = max(visible.get(partition, 0), (msg.offset() or 0) + 1)
    return visible


def scope_stage_lag(
    settings: Settings, admin: AdminClient, ends: dict[int, int] | None = None
) -> dict[int, int]:
    """Records of the scope deltas up to ``ends`` (default: all visible now) the tenant-keyed
    stage has not committed, per partition behind. The session stages keep writing their
    sources' marks (they move with the clock once a source is read to its end), so "caught
    up" means past what was there when the sessions were all accounted, not at the end."""
    ends = scope_visible_ends(settings) if ends is None else ends
    topic = scope_deltas_topic(settings)
    committed = {
        p.partition: p.committed or 0 for p in measure_lag(admin, topic, scope_group(settings))
    }
    return {p: end - committed.get(p, 0) for p, end in ends.items() if end > committed.get(p, 0)}


def worker_metric(workers: Sequence[WorkerProcess], name: str) -> float | None:
    """A metric summed over the workers' /metrics (None when one does not answer)."""
    total = 0.0
    for worker in workers:
        try:
            text = metrics_text(worker)
        except OSError:
            return None
        total += sum(metric_values(text, name).values())
    return total


def topic_end(settings: Settings, admin: AdminClient, topic: str) -> int:
    """Records (offsets) a topic holds up to its last stable offset, over all partitions."""
    return sum(p.end for p in measure_lag(admin, topic, accounting_group(settings)))


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f}s")
        time.sleep(poll_s)


# --- what a run left on its topics ---------------------------------------------------------


@dataclass(frozen=True)
class RawEvent:
    """A StepEvent as the events topic holds it, with where it is."""

    partition: int
    offset: int
    event: dict[str, Any]


def raw_events(settings: Settings, codecs: Codecs) -> list[RawEvent]:
    """Every good record of the events topic (poison-marked ones aside), decoded."""
    out = []
    for msg in read_topic(settings, settings.events_source_topic):
        if any(name == POISON_HEADER for name, _ in header_pairs(msg.headers())):
            continue
        event = codecs.step_event.decode(msg.value() or b"")
        out.append(RawEvent(msg.partition() or 0, msg.offset() or 0, event))
    return out


@dataclass(frozen=True, order=True)
class DecisionKey:
    """What two runs over the same events must agree on for each decision (the policy first,
    for sorting and counting: the decision id derives from it)."""

    policy_id: str
    decision_id: str
    target: str
    action: str
    trigger_event_id: str


@dataclass(frozen=True)
class SeenDecision:
    decision_id: str
    target: str
    tenant_id: str
    action: str
    policy_id: str
    epoch: int
    issued_at_us: int
    trigger_event_id: str | None

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> SeenDecision:
        return cls(
            decision_id=str(record["decision_id"]),
            target=str(record["target"]),
            tenant_id=str(record["tenant_id"]),
            action=str(record["action"]),
            policy_id=str(record["policy_id"]),
            epoch=int(record["epoch"]),
            issued_at_us=int(record["issued_at_us"]),
            trigger_event_id=record.get("trigger_event_id"),
        )

    @property
    def key(self) -> DecisionKey:
        return DecisionKey(
            self.policy_id, self.decision_id, self.target, self.action, self.trigger_event_id or ""
        )


def decisions_on_topic(settings: Settings, codecs: Codecs) -> list[SeenDecision]:
    """Every decision on ``<prefix>control``, in log order per partition (replays included)."""
    return [
        SeenDecision.of(codecs.decision.decode(msg.value() or b""))
        for msg in read_topic(settings, settings.topic("control"))
        if msg.value() is not None
    ]


def audited_decisions(settings: Settings, codecs: Codecs) -> frozenset[str]:
    """Decision ids that have a DECISION record in the audit trail."""
    out = set()
    for msg in read_topic(settings, settings.topic("audit")):
        value = msg.value()
        if value is None:
            continue
        record = codecs.audit_record.decode(value)
        if record["kind"] == "DECISION":
            out.add(str(record["details"].get("decision_id") or record["record_id"]))
    return frozenset(out)


@dataclass
class ScaleOutcome:
    """The topics of one run after it settled."""

    settings: Settings
    events: list[RawEvent]
    #: every summary on <prefix>sessions, per session, in log order
    summaries: dict[str, list[dict[str, Any]]]
    decisions: list[SeenDecision]
    audit: AuditVerification
    audited: frozenset[str]
    #: items the live workers' scope stages released without waiting for a silent source
    #: (a killed worker's count is gone with it)
    forced: float = 0.0
    notes: dict[str, float] = field(default_factory=dict)

    @property
    def good_events(self) -> list[dict[str, Any]]:
        return [r.event for r in self.events]

    def latest_summaries(self) -> dict[str, dict[str, Any]]:
        """The last summary of every session (a later one supersedes an earlier)."""
        return {sid: found[-1] for sid, found in self.summaries.items() if found}

    def total_problems(self, prices: PriceTable) -> list[str]:
        """Every way the summaries differ from a recomputation from the raw events topic: each
        session that ended (all but the clock sessions) has exactly one summary, its totals
        (cost, tokens, steps by kind, tools, errors, retries, last seq, status) equal the truth
        of its raw events, and the rest of it equals a fault-free fold of them."""
        events = self.good_events
        truths = {
            sid: t for sid, t in truths_of(events, prices).items() if t["tenant_id"] != CLOCK_TENANT
        }
        problems = total_mismatches(self.latest_summaries(), truths, last_seqs(events))
        return problems + summary_mismatches(self.summaries, events, prices)

    def keys(self, policy_ids: frozenset[str] | None = None) -> set[DecisionKey]:
        """The distinct decisions, of ``policy_ids`` only when given."""
        return {d.key for d in self.decisions if policy_ids is None or d.policy_id in policy_ids}

    def repeated_decisions(self) -> dict[str, int]:
        """Decision ids the control topic holds more than once (a replay re-publishes)."""
        counts = Counter(d.decision_id for d in self.decisions)
        return {d: n for d, n in counts.items() if n > 1}

    def audit_breaks(self) -> dict[str, list[ChainBreak]]:
        """The audit trail's breaks per tenant (empty: every chain verifies intact)."""
        out: dict[str, list[ChainBreak]] = defaultdict(list)
        for chain_break in self.audit.breaks:
            out[chain_break.tenant_id].append(chain_break)
        return dict(out)

    def unaudited(self, policy_ids: frozenset[str]) -> list[SeenDecision]:
        """Decisions of ``policy_ids`` on the control topic with no DECISION record in the
        audit trail."""
        return [
            d
            for d in self.decisions
            if d.policy_id in policy_ids and d.decision_id not in self.audited
        ]


def collect(settings: Settings, codecs: Codecs) -> ScaleOutcome:
    return ScaleOutcome(
        settings=settings,
        events=raw_events(settings, codecs),
        summaries=summaries_on_topic(settings, codecs),
        decisions=decisions_on_topic(settings, codecs),
        audit=settled_audit(settings),
        audited=audited_decisions(settings, codecs),
    )


def settled_audit(settings: Settings, timeout_s: float = 35.0) -> AuditVerification:
    """The audit topic verified once a killed worker's open transactions are gone: until the
    coordinator aborts one (transaction.timeout.ms, 20 s), read-committed readers stop at it,
    so the chain shows a head newer than its visible end ("truncated") for that long."""
    deadline = time.monotonic() + timeout_s
    while True:
        verification = verify_audit_topic(settings)
        truncated = any("truncated" in b.problem for b in verification.breaks)
        if not truncated or time.monotonic() > deadline:
            return verification
        time.sleep(1.0)


def settle(
    settings: Settings,
    codecs: Codecs,
    workers: Workers,
    timeout_s: float = 120.0,
    quiet_s: float = 1.0,
) -> ScaleOutcome:
    """Wait until every event of the events topic (produced whole, closing records included)
    is accounted, then collect the run.

    Accounted: the accounting group's committed offsets are at the end of every partition (its
    outputs commit in the same transactions), every session of the topic has its summary (a
    session closed for silence is closed by a tick after the commit of the clock event), the
    tenant-keyed stage has committed the end of the scope deltas and holds no item in its merge
    (it commits what it consumed while an item waits for the other sources; it publishes its
    decisions before it commits), and the control topic has had no new record for ``quiet_s``.
    """
    admin = admin_client(settings)
    started = time.monotonic()
    deadline = started + timeout_s

    def left() -> float:
        return max(1.0, deadline - time.monotonic())

    def caught_up() -> bool:
        return not any(accounting_lag(settings, admin).values())

    try:
        wait_until(caught_up, left(), f"{accounting_group(settings)} at the end of the events")
        caught_up_s = time.monotonic() - started
        ended = {
            str(r.event["session_id"])
            for r in raw_events(settings, codecs)
            if r.event["tenant_id"] != CLOCK_TENANT
        }
        wait_until(
            lambda: ended <= set(summaries_on_topic(settings, codecs)),
            left(),
            f"a summary of each of {len(ended)} sessions",
        )
        summaries_s = time.monotonic() - started
        ends = scope_visible_ends(settings)
        wait_until(
            lambda: not any(scope_stage_lag(settings, admin, ends).values()),
            left(),
            f"{scope_group(settings)} at the end of the scope deltas",
        )
        wait_until(
            lambda: worker_metric(workers.live, PENDING_METRIC) == 0,
            left(),
            "no item held by the tenant-keyed stage",
        )
        scope_s = time.monotonic() - started
        control = settings.topic("control")
        last = (topic_end(settings, admin, control), time.monotonic())

        def quiet() -> bool:
            nonlocal last
            end = topic_end(settings, admin, control)
            if end != last[0]:
                last = (end, time.monotonic())
            return time.monotonic() - last[1] >= quiet_s

        wait_until(quiet, left(), "the control topic quiet", poll_s=0.25)
    except TimeoutError as exc:
        lag, scope = accounting_lag(settings, admin), scope_stage_lag(settings, admin)
        pending = worker_metric(workers.live, PENDING_METRIC)
        raise TimeoutError(
            f"{exc}; lag: accounting {lag}, scope {scope}, held {pending}\n{workers.logs()}"
        ) from exc
    outcome = collect(settings, codecs)
    outcome.forced = worker_metric(workers.live, FORCED_METRIC) or 0.0
    outcome.notes["caught_up_s"] = caught_up_s
    outcome.notes["summaries_s"] = summaries_s
    outcome.notes["scope_s"] = scope_s
    outcome.notes["settled_s"] = time.monotonic() - started
    return outcome


def decision_differences(
    reference: set[DecisionKey], got: set[DecisionKey], limit: int = 8
) -> list[str]:
    """The decisions of ``reference`` missing from ``got`` and the ones ``got`` has besides."""
    missing, extra = sorted(reference - got), sorted(got - reference)
    problems = []
    for what, keys in (("missing", missing), ("not in the reference", extra)):
        if keys:
            by_policy = dict(Counter(k.policy_id for k in keys))
            problems.append(f"{len(keys)} {what} {by_policy}, e.g. {keys[:limit]}")
    return problems


def summary_differences(
    reference: Mapping[str, Mapping[str, Any]],
    got: Mapping[str, Mapping[str, Any]],
    fields: Sequence[str],
) -> list[str]:
    """Sessions whose summaries differ between two runs on ``fields``."""
    problems = []
    for sid in sorted(set(reference) | set(got)):
        want, have = reference.get(sid), got.get(sid)
        if want is None or have is None:
            problems.append(f"{sid}: in {'one run' if want is None else 'the reference'} only")
            continue
        problems.extend(
            f"{sid}: {name} {have.get(name)!r} != {want.get(name)!r}"
            for name in fields
            if have.get(name) != want.get(name)
        )
    return problems


# --- producing a fleet ---------------------------------------------------------------------


def closing_after(settings: Settings, events: Sequence[Mapping[str, Any]]) -> int:
    """An event time later than the idle timeout after the fleet's last activity."""
    last_us = max(int(e["start_time_us"]) + max(0, int(e.get("duration_us") or 0)) for e in events)
    return last_us + int(settings.session_idle_timeout_s * US) + US


def fill(settings: Settings, codecs: Codecs, events: Sequence[dict[str, Any]]) -> float:
    """Produce the fleet and its closing records at once (acks all); seconds it took."""
    started = time.monotonic()
    driver = FleetDriver(settings, [good(codecs, e) for e in events], 0.0)
    driver.start()
    driver.fleet_done.wait()
    driver.inject(
        closing_records(codecs, settings.event_partitions, closing_after(settings, events))
    )
    driver.close(60)
    if driver.delivery_errors:
        raise RuntimeError(f"the fleet was not produced whole: {driver.delivery_errors[:3]}")
    return time.monotonic() - started


class Pump:
    """A fleet produced at a steady rate, but never past what the test has released: a fault
    is placed in the middle of a flow of records (release the next part, wait until some of it
    is out, strike) whatever the time workers take to start. One producer (the driver's), so
    each partition gets its records in fleet order."""

    TICK_S = 0.05

    def __init__(self, settings: Settings, codecs: Codecs, events: Sequence[dict[str, Any]],
                 rate_per_s: float) -> None:  # fmt: skip
        self.codecs = codecs
        self.records = [good(codecs, e) for e in events]
        self.driver = FleetDriver(settings, [], 0.0)
        self.slice = max(1, round(rate_per_s * self.TICK_S))
        self.sent = 0
        self._allowed = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-pump", daemon=True)

    def __len__(self) -> int:
        return len(self.records)

    def start(self) -> Pump:
        self.driver.start()
        self._thread.start()
        return self

    def allow(self, upto: int) -> None:
        """Let the fleet flow up to record ``upto`` (never back)."""
        with self._lock:
            self._allowed = max(self._allowed, min(upto, len(self.records)))

    def flow_while(self, busy: Callable[[], bool], upto: int, timeout_s: float) -> None:
        """Keep about a second of records flowing while ``busy()`` (but not past ``upto``)."""
        deadline = time.monotonic() + timeout_s
        while busy():
            if time.monotonic() > deadline:
                raise TimeoutError(f"still waiting after {timeout_s:.0f}s")
            self.allow(min(upto, self.sent + self.slice * round(1 / self.TICK_S)))
            time.sleep(0.1)

    def wait_sent(self, count: int, timeout_s: float = 60.0) -> None:
        """Until ``count`` records are out (it releases them if need be)."""
        self.allow(count)
        wait_until(lambda: self.sent >= min(count, len(self.records)), timeout_s,
                   f"{count} records produced", poll_s=0.05)  # fmt: skip

    @property
    def flowing(self) -> bool:
        """Records are still to come."""
        return self.sent < len(self.records)

    def _run(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                take = min(self.slice, self._allowed - self.sent)
            if take > 0:
                self.driver.inject(self.records[self.sent : self.sent + take])
                self.sent += take
            self._stopping.wait(self.TICK_S)

    def close(self, timeout_s: float = 120.0) -> None:
        """The whole fleet, then the closing records, every acknowledgement waited for."""
        self.wait_sent(len(self.records), timeout_s)
        self._stopping.set()
        self._thread.join(10)
        events = self.driver.good_events
        after = closing_after(self.driver.settings, events)
        self.driver.inject(closing_records(self.codecs, self.driver.settings.event_partitions,
                                           after))  # fmt: skip
        self.driver.close()
        if self.driver.delivery_errors:
            raise RuntimeError(
                f"the fleet was not produced whole: {self.driver.delivery_errors[:3]}"
            )

    def abort(self) -> None:
        self._stopping.set()
        self.driver.abort()


# --- a tenant budget crossed at a known event ----------------------------------------------


@dataclass(frozen=True)
class Crossing:
    """The event at which a tenant's cumulative spend first exceeds a limit, in event-time
    order (the order of the tenant-keyed stage)."""

    event_id: str
    session_id: str
    start_time_us: int
    #: position among the tenant's priced events in event-time order
    index: int
    spent_before: int
    spent_after: int


def priced(
    events: Iterable[Mapping[str, Any]], tenant_id: str, prices: PriceTable
) -> list[tuple[Mapping[str, Any], int]]:
    """The tenant's calls that cost something, with their cost, in event-time order (ties in
    start time kept in the order given)."""
    out = []
    for event in events:
        if event["tenant_id"] != tenant_id or event["kind"] not in CALL_KINDS:
            continue
        cost = call_cost_micros(event, prices) or 0
        if cost > 0:
            out.append((event, cost))
    out.sort(key=lambda pair: int(pair[0]["start_time_us"]))
    return out


def crossing(
    events: Iterable[Mapping[str, Any]], tenant_id: str, limit_micros: int, prices: PriceTable
) -> Crossing | None:
    """Where the tenant's spend first goes over ``limit_micros`` (None: it never does)."""
    spent = 0
    for index, (event, cost) in enumerate(priced(events, tenant_id, prices)):
        if spent + cost > limit_micros:
            return Crossing(
                str(event["event_id"]),
                str(event["session_id"]),
                int(event["start_time_us"]),
                index,
                spent,
                spent + cost,
            )
        spent += cost
    return None


def tenant_budget_for(
    events: Sequence[Mapping[str, Any]],
    tenant_id: str,
    prices: PriceTable,
    fraction: float = 0.4,
) -> tuple[TenantBudget, Crossing]:
    """A budget the tenant crosses at about ``fraction`` of its spend, at an event no other
    priced event of the tenant shares a start time with (so no tie-break can move it): the
    limit sits halfway through that event's cost."""
    calls = priced(events, tenant_id, prices)
    if not calls:
        raise ValueError(f"tenant {tenant_id} spends nothing")
    times = Counter(int(e["start_time_us"]) for e, _ in calls)
    total = sum(cost for _, cost in calls)
    spent = 0
    for event, cost in calls:
        if spent >= fraction * total and cost >= 2 and times[int(event["start_time_us"])] == 1:
            budget = TenantBudget(tenant_id, spent + cost // 2)
            found = crossing(events, tenant_id, budget.limit_micros, prices)
            assert found is not None
            assert found.event_id == event["event_id"]
            return budget, found
        spent += cost
    raise ValueError(f"no unambiguous crossing for tenant {tenant_id}")


# --- tenant-decision latency ---------------------------------------------------------------

TENANT_PROBE_PREFIX = "tprobe"
TENANT_PROBE_AGENT = "tenant-probe"
TENANT_PROBE_POLICY_ID = "tenant-probe-budget"
#: each probe tenant may spend a cent; its one LLM call costs two (faults.PROBE_COST_MICROS)
TENANT_PROBE_POLICY = f"""  - id: {TENANT_PROBE_POLICY_ID}
    description: the scale bench's tenant probes break this on purpose (one call of $0.02)
    kind: budget
    scope: tenant
    window: 1h
    limit_usd: 0.01
    warn_at: null
    action: kill
    match: {{tenants: ["{TENANT_PROBE_PREFIX}-*"]}}
"""


class TenantProber(KillProber):
    """Every ``interval_s`` a probe session of a tenant of its own through the driver (the
    fault suite's :class:`KillProber`, another tenant each time), whose one LLM call breaks
    :data:`TENANT_PROBE_POLICY`: the time from producing that call to the tenant's KILL on the
    control topic is the tenant-decision latency, through both stages."""

    def _run(self) -> None:
        n = 0
        while not self._stopping.wait(self.interval_s):
            n += 1
            tenant = f"{TENANT_PROBE_PREFIX}-{self.tag}-{n:05d}"
            sid, at = f"{tenant}-s", self.driver.position_us or now_us() - 3 * 3600 * US
            events = [
                {**e, "tenant_id": tenant, "agent_id": TENANT_PROBE_AGENT}
                for e in probe_events(sid, at, f"{sid}-2")
            ]
            self.sessions.append((tenant, f"{sid}-2"))
            self.driver.inject([good(self.codecs, e) for e in events])

    def results(self, watcher: ControlWatcher) -> list[Probe]:
        """(tenant, breaking event, when it was produced, its KILL's latency) per probe."""
        out = []
        for tenant, breaking in self.sessions:
            sent = self.driver.sent_at.get(breaking)
            if sent is not None:
                seen = watcher.first(f"tenant:{tenant}")
                out.append(Probe(tenant, breaking, sent, None if seen is None else seen.at - sent))
        return out
