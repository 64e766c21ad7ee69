"""The worker's accounting engine: per-partition state, aggregates, policies, outputs.

``Engine.process`` folds a batch of decoded StepEvents of one source partition into that
partition's state, updates the event-time aggregates, asks the policies for outcomes and
collects what must be published (session summaries, decisions). It does no I/O: the runner
(:mod:`streams.agents.accounting`) consumes, calls it, publishes and checkpoints.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from streams.control import ENGINE_EPOCH_SLOTS, EPOCH_SLOTS
from streams.pipeline.accounting import (
    SessionState,
    StepDelta,
    close_timed_out,
    count_step_minute,
    event_id_digest,
    fold,
    new_state,
    remember_event_id,
    reuses_event_id,
    steps_in_window,
    summary,
)
from streams.pipeline.aggregates import (
    DAY_US,
    HOUR_US,
    MINUTE_US,
    Histogram,
    Totals,
    agent_scope,
    bucket_start,
    expired,
    tenant_scope,
)
from streams.pipeline.bypass import client_bypass
from streams.pipeline.causes import killed_by
from streams.pipeline.policy import (
    MAX_RATE_WINDOW_S,
    Facts,
    Outcome,
    PolicySet,
    decide,
    decide_session,
)
from streams.pipeline.pricing import PriceTable
from streams.pipeline.scope import FLEET, ScopeItem, bypass_audit, decision_audit
from streams.pipeline.scope import Decided as Decided
from streams.pipeline.slo import FallbackTracker, Slo, session_verdicts
from streams.pipeline.validate import Rejection

SESSION_KIND = "SESSION"  #: histogram kind of whole-session latency
#: a decision for a target without a window of its own stays in force this long
DEFAULT_DECISION_TTL_US = 24 * 3600 * 1_000_000
NO_END = 2**62
#: rate counters are kept this long behind the watermark: the longest rate window
RATE_HORIZON_US = MAX_RATE_WINDOW_S * 1_000_000
#: a session that ended this long ago (event time) is forgotten, its guard too: late duplicates
#: come from client retries and rewinds, both minutes behind, never a day
CLOSED_GUARD_RETENTION_US = 24 * HOUR_US
#: ``PartitionState.next_deadline_us`` of a partition without open sessions
NONE_OPEN = 1 << 62


class StateKind(StrEnum):
    """Changelog record kinds of a session-stage partition: the key is ``<kind>|<key>`` (the
    one-letter values are the changelog's format, kept for changelogs already written)."""

    SESSION = "s"
    CLOSED = "c"
    BUCKET = "b"
    HISTOGRAM = "h"
    ENFORCED = "e"
    RATE = "r"
    ACTIVE = "a"
    WATERMARK = "w"
    #: a merge key of earlier changelogs, since dropped: read and ignored
    ORDER = "o"


@dataclass
class PartitionState:
    """Everything the engine keeps for one source partition; all of it is checkpointed."""

    partition: int
    sessions: dict[str, SessionState] = field(default_factory=dict)
    #: last seq of sessions evicted after they finished, so late duplicates stay duplicates
    closed: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: (scope, bucket size, bucket start) -> totals
    buckets: dict[tuple[str, int, int], Totals] = field(default_factory=dict)
    #: (agent scope, step kind, model or tool, hour start) -> latency histogram
    histograms: dict[tuple[str, str, str, int], Histogram] = field(default_factory=dict)
    #: open sessions per scope
    active: Counter[str] = field(default_factory=Counter)
    #: (policy id, target) -> (escalation level, epoch, in force until, event time µs) of what
    #: was already decided; pruned once the watermark passes the end (a session target's end
    #: is its eviction), so the next window can decide again and state stays bounded
    enforced: dict[tuple[str, str], tuple[int, int, int]] = field(default_factory=dict)
    #: (rate kind, id, minute start) -> count: agent steps and tool failures per event-time
    #: minute, for step-rate and degradation policies (kept 2 h)
    rates: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    watermark_us: int = 0
    dirty: set[tuple[StateKind, Any]] = field(default_factory=set)
    #: the watermark's hour when buckets and histograms were last expired (not checkpointed:
    #: the first tick after a restore expires them)
    expired_at_hour: int = -1
    #: at most the earliest timeout deadline of the open sessions (NONE_OPEN: none open;
    #: None: not known, computed when asked). Not checkpointed: the tick sets it exactly, each
    #: event lowers it, so checkpoints need not scan every session for it
    next_deadline_us: int | None = None

    def mark(self, kind: StateKind, key: Any) -> None:
        self.dirty.add((kind, key))


@dataclass
class BatchResult:
    applied: int = 0
    duplicates: int = 0
    late: int = 0
    summaries: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[Decided] = field(default_factory=list)
    deltas: list[tuple[SessionState, StepDelta]] = field(default_factory=list)
    #: (index of the event in the batch, why): refused before anything was applied
    rejected: list[tuple[int, Rejection]] = field(default_factory=list)
    #: for the scope stage (``local_scope=False``): every applied event, every session closed
    #: for silence, and the audit record of every decision, in order
    scope_items: list[ScopeItem] = field(default_factory=list)


class Engine:
    """Accounting, aggregates and policy outcomes for the partitions this worker owns."""

    def __init__(
        self,
        prices: PriceTable,
        policies: PolicySet,
        idle_timeout_s: float = 900.0,
        finished_retention_s: float = 3600.0,
        hourly_retention_s: float = 8 * 86400.0,
        daily_retention_s: float = 35 * 86400.0,
        local_scope: bool = True,
    ) -> None:
        """``local_scope``: decide agent- and tenant-scoped policies here, over the partitions
        this engine holds (one process, backtests); False: leave them to the scope stage and
        hand it ``BatchResult.scope_items`` instead (the worker, any number of them)."""
        self.local_scope = local_scope
        self.prices = prices
        self.policies = policies
        self.idle_timeout_us = int(idle_timeout_s * 1_000_000)
        self.finished_retention_us = int(finished_retention_s * 1_000_000)
        self.hourly_retention_us = int(hourly_retention_s * 1_000_000)
        self.daily_retention_us = int(daily_retention_s * 1_000_000)
        self.partitions: dict[int, PartitionState] = {}
        #: the partitions' rate counters summed (policies read these; partitions checkpoint)
        self._rates: Counter[tuple[str, str, int]] = Counter()
        #: the session being decided (its own step rate lives in its state)
        self._deciding_state: SessionState | None = None
        self._spend_before: dict[tuple[str, float], tuple[int, int]] = {}
        #: spend per (scope, hour) of all owned partitions, kept current by _aggregate
        self._hour_spend: Counter[tuple[str, int]] = Counter()
        self._watermark_us = 0
        #: event time of the event being decided: step and failure rates are counted over the
        #: minutes up to it, not up to the watermark, so a partition read behind the others (a
        #: replay consumed one partition after another) sees its own minutes, as the live run did
        self._deciding_us = 0
        self._scopes: dict[tuple[str, str], tuple[str, str]] = {}
        #: (policy id, target) -> level, over all owned partitions (for Facts.level)
        self._levels: dict[tuple[str, str], int] = {}

        #: open sessions per scope over all owned partitions (for Facts.active)
        self._active: Counter[str] = Counter()
        #: source offset of the event being applied (orders its scope items)
        self._offset = 0
        #: SLIs measured per session for the scope stage's burn-rate alerts (remote scope)
        self.slos: list[Slo] = []
        self.fallbacks: FallbackTracker | None = None
        #: (slo, time, good) of sessions just closed, to follow their event's scope items
        self._verdicts: list[tuple[str, int, bool]] = []
        self.facts = Facts(
            spend=self.spend,
            active=self.active,
            steps=self.steps,
            tool_failures=self.failures,
            level=self.enforced_level,
        )

    def use_slos(self, slos: list[Slo]) -> None:
        self.slos = slos
        degradation = next((s for s in slos if s.name == "degradation"), None)
        self.fallbacks = FallbackTracker(degradation) if degradation else None

    # --- partitions --------------------------------------------------------------------

    def assign(self, state: PartitionState) -> None:
        self.partitions[state.partition] = state
        self._spend_before.clear()
        self._hour_spend.clear()
        self._recompute_watermark()
        self._index_levels()
        self._index_active()
        self._index_rates()

    def revoke(self, partition: int) -> None:
        self.partitions.pop(partition, None)
        self._spend_before.clear()
        self._hour_spend.clear()
        self._recompute_watermark()
        self._index_levels()
        self._index_active()
        self._index_rates()

    def revoke_all(self) -> None:
        """Forget every partition (a transient fault: state is restored from the changelog)."""
        for partition in list(self.partitions):
            self.revoke(partition)

    def _index_rates(self) -> None:
        self._rates = Counter()
        for part in self.partitions.values():
            self._rates.update(part.rates)

    def state(self, partition: int) -> PartitionState:
        if partition not in self.partitions:
            self.partitions[partition] = PartitionState(partition)
        return self.partitions[partition]

    def enforced_level(self, policy_id: str, target: str) -> int:
        """How far a policy has already escalated on a target (0: not at all)."""
        return self._levels.get((policy_id, target), 0)

    def _index_levels(self) -> None:
        self._levels = {}
        for part in self.partitions.values():
            for key, (level, _epoch, _until) in part.enforced.items():
                self._levels[key] = max(level, self._levels.get(key, 0))

    @property
    def watermark_us(self) -> int:
        """The latest event time of all owned partitions (kept current by ``_apply``)."""
        return self._watermark_us

    def _recompute_watermark(self) -> None:
        self._watermark_us = max((p.watermark_us for p in self.partitions.values()), default=0)

    # --- facts for policies --------------------------------------------------------------

    def spend(self, key: str, window_s: float) -> int:
        """Spend of a scope over the window, hour-aligned (the current hour counts whole).

        The complete hours before the current one are summed once per hour and cached: budget
        checks run on every priced event.
        """
        now_hour = bucket_start(self.watermark_us, HOUR_US)
        cached = self._spend_before.get((key, window_s))
        if cached is None or cached[0] != now_hour:
            first = bucket_start(self.watermark_us - int(window_s * 1_000_000), HOUR_US) + HOUR_US
            before = sum(self._hour_cost(key, hour) for hour in range(first, now_hour, HOUR_US))
            cached = self._spend_before[(key, window_s)] = (now_hour, before)
            self._hour_spend[(key, now_hour)] = self._hour_cost(key, now_hour)
        return cached[1] + self._hour_spend[(key, now_hour)]

    def _hour_cost(self, key: str, hour: int) -> int:
        total = 0
        for part in self.partitions.values():
            totals = part.buckets.get((key, HOUR_US, hour))
            if totals is not None:
                total += totals.cost_micros
        return total

    def active(self, key: str) -> int:
        return self._active.get(key, 0)

    def _index_active(self) -> None:
        self._active = Counter()
        for part in self.partitions.values():
            self._active.update(part.active)

    def steps(self, scope: str, scope_id: str, window_s: float) -> int:
        now = self._deciding_us or self._watermark_us
        if scope == "session":
            state = self._deciding_state
            if state is None or state.session_id != scope_id:
                return 0
            return steps_in_window(state, now, window_s)
        return self._rate("agent", scope_id, now, window_s)

    def failures(self, tool: str, window_s: float) -> int:
        return self._rate("tool", tool, self._deciding_us or self._watermark_us, window_s)

    def _rate(self, kind: str, key: str, now_us: int, window_s: float) -> int:
        now_min = bucket_start(now_us, MINUTE_US)
        minutes = max(1, int(window_s // 60))
        rates = self._rates
        return sum(rates.get((kind, key, now_min - i * MINUTE_US), 0) for i in range(minutes))

    def step_latency(self, since_us: int) -> dict[str, Histogram]:
        """Step latency histograms by step kind, over hours from ``since_us``, all partitions."""
        merged_by_kind: dict[str, Histogram] = {}
        for part in self.partitions.values():
            for (_agent, kind, _name, hour), histogram in part.histograms.items():
                if kind == SESSION_KIND or hour + HOUR_US <= since_us:
                    continue
                merged_by_kind.setdefault(kind, Histogram()).merge(histogram)
        return merged_by_kind

    # --- processing ----------------------------------------------------------------------

    def process(
        self,
        partition: int,
        events: Iterable[dict[str, Any]],
        offsets: list[int] | None = None,
    ) -> BatchResult:
        """Fold validated events (see :mod:`streams.pipeline.validate`); the two checks that
        need a session's state refuse an event here, before it changes anything. ``offsets``
        are the events' place in their partition: the scope stage merges partitions on them."""
        part = self.state(partition)
        result = BatchResult()
        for index, event in enumerate(events):
            self._offset = offsets[index] if offsets is not None else index
            rejection = self._apply(part, event, result)
            if rejection is not None:
                result.rejected.append((index, rejection))
        return result

    def _apply(
        self, part: PartitionState, event: dict[str, Any], result: BatchResult
    ) -> Rejection | None:
        session_id = event["session_id"]
        seq = event["seq"]
        state = part.sessions.get(session_id)
        digest = event_id_digest(event["event_id"])
        if state is None:
            closed = part.closed.get(session_id)
            if closed is not None:
                if seq <= closed[0]:
                    result.duplicates += 1
                    return None
                return Rejection("after_session_end", f"seq {seq} after the session ended")
            state = new_state(event)
            part.sessions[session_id] = state
        elif seq > state.last_seq:
            # a session closed for silence (TIMEOUT) may speak again; one that ended may not
            if state.ended and state.status != "TIMEOUT":
                return Rejection(
                    "after_session_end",
                    f"seq {seq} after the session ended {state.status} at seq {state.last_seq}",
                )
            if reuses_event_id(state, digest):
                return Rejection(
                    "event_id_reused", f"event id {event['event_id'][:64]!r} again with seq {seq}"
                )
        elif reuses_event_id(state, digest):  # a late seq (pipeline.seqs) already applied
            result.duplicates += 1
            return None
        delta = fold(state, event, self.prices, self.policies.version)
        if delta is None:
            result.duplicates += 1
            return None
        remember_event_id(state, digest)
        if part.next_deadline_us is not None and not state.ended:
            part.next_deadline_us = min(part.next_deadline_us, self.timeout_deadline_us(state))
        result.applied += 1
        part.mark(StateKind.SESSION, session_id)
        if delta.event_time_us > part.watermark_us:
            part.watermark_us = delta.event_time_us
            if delta.event_time_us > self._watermark_us:
                self._watermark_us = delta.event_time_us
        scopes = self._scopes.get((state.tenant_id, state.agent_id))
        if scopes is None:
            scopes = self._scopes[(state.tenant_id, state.agent_id)] = (
                tenant_scope(state.tenant_id),
                agent_scope(state.tenant_id, state.agent_id),
            )
        tenant, agent = scopes
        self._aggregate(part, state, delta, tenant, agent)
        result.deltas.append((state, delta))
        decided_here: list[Decided] = []
        if self.policies.policies and not (state.ended and not delta.ended):
            self._deciding_us = delta.event_time_us
            self._deciding_state = state
            choose = decide if self.local_scope else decide_session
            for index, outcome in enumerate(choose(self.policies, state, delta, self.facts)):
                decided = self._escalate(part, outcome, state, delta, event, index)
                if decided is not None:
                    decided_here.append(decided)
                    state.violations += outcome.level >= 2
                    if outcome.action == "KILL" and outcome.target == f"session:{session_id}":
                        # the killed session's failure mode names its cause (issue 19)
                        state.error_type = killed_by(outcome.policy_id)
            result.decisions.extend(decided_here)
        opened_and_closed = self._finish(part, state, result) if delta.ended else False
        if not self.local_scope:
            self._scope_items(part, state, delta, event, opened_and_closed, decided_here, result)
        return None

    def _scope_items(
        self,
        part: PartitionState,
        state: SessionState,
        delta: StepDelta,
        event: dict[str, Any],
        closed: bool,
        decided: list[Decided],
        result: BatchResult,
    ) -> None:
        items = result.scope_items
        # merged on the partition's watermark, not the event's own time: a function of the
        # partition's records alone that only grows along it, so the scope stage needs no
        # allowance for events out of time order (see streams.pipeline.scope)
        common = (part.watermark_us, part.partition, self._offset)
        items.append(
            ScopeItem(
                *common, 0, delta.event_time_us, state.tenant_id, state.agent_id,
                state.session_id, event.get("event_id"), delta.kind, delta.name, delta.status,
                delta.cost_micros, delta.started, closed,
                parent_session_id=state.parent_session_id if delta.started else None,
            )
        )  # fmt: skip
        if decided:  # most events decide nothing
            audits = [decision_audit(d) for d in decided]
            audits += [bypass_audit(d, d.bypass) for d in decided if d.bypass is not None]
            for index, audit in enumerate(audits, start=1):
                items.append(
                    ScopeItem(
                        *common, index, delta.event_time_us, state.tenant_id, state.agent_id,
                        state.session_id, audit=audit,
                    )
                )  # fmt: skip
        if self.fallbacks is not None and delta.kind == "TOOL_CALL":
            failed = delta.status not in ("OK", "UNKNOWN")
            verdict = self.fallbacks.tool_call(state, delta.name or "", failed)
            if verdict is not None:
                self._verdicts.insert(0, ("degradation", delta.event_time_us, verdict))
        if self._verdicts:
            self._slo_items(common, len(items), state.session_id, items)

    def _slo_items(
        self, common: tuple[int, int, int], index: int, session_id: str, items: list[ScopeItem]
    ) -> None:
        """The SLI verdicts waiting (a tool call's fallback, a closed session's SLOs) as items
        for the fleet's scope partition, right after the event that settled them."""
        for n, (slo, time_us, good) in enumerate(self._verdicts):
            items.append(
                ScopeItem(
                    *common, index + n, time_us, FLEET, "", session_id, kind="SLO", name=slo,
                    status="GOOD" if good else "BAD",
                )
            )  # fmt: skip
        self._verdicts.clear()

    def _aggregate(
        self, part: PartitionState, state: SessionState, delta: StepDelta, tenant: str, agent: str
    ) -> None:
        when = delta.event_time_us
        kind = delta.kind
        is_llm, is_tool = kind == "LLM_CALL", kind == "TOOL_CALL"
        # spend buckets and agent/tool rates are the facts of agent- and tenant-scoped policies:
        # the scope stage keeps them when it decides those
        local = self.local_scope
        if local and (is_llm or is_tool or delta.started or delta.ended or delta.cost_micros):
            dirty = part.dirty
            hour, day = when - when % HOUR_US, when - when % DAY_US
            cost = delta.cost_micros
            for key in (
                (tenant, HOUR_US, hour),
                (tenant, DAY_US, day),
                (agent, HOUR_US, hour),
                (agent, DAY_US, day),
            ):
                totals = part.buckets.get(key)
                if totals is None:
                    totals = part.buckets[key] = Totals()
                totals.cost_micros += cost
                if is_llm:
                    totals.llm_calls += 1
                    totals.input_tokens += delta.input_tokens
                    totals.output_tokens += delta.output_tokens
                elif is_tool:
                    totals.tool_calls += 1
                elif delta.started:
                    totals.sessions_started += 1
                elif delta.ended:
                    totals.sessions_ended += 1
                dirty.add((StateKind.BUCKET, key))
            if cost:
                self._hour_spend[(tenant, hour)] += cost
                self._hour_spend[(agent, hour)] += cost
        if delta.started:
            part.active[tenant] += 1
            part.active[agent] += 1
            self._active[tenant] += 1
            self._active[agent] += 1
            part.dirty.add((StateKind.ACTIVE, None))
        if is_llm or is_tool:
            hour = when - when % HOUR_US
            hkey = (agent, kind, delta.name or "unknown", hour)
            histogram = part.histograms.get(hkey)
            if histogram is None:
                histogram = part.histograms[hkey] = Histogram()
            histogram.observe(delta.duration_us / 1000)
            part.dirty.add((StateKind.HISTOGRAM, hkey))
            minute = when - when % MINUTE_US
            count_step_minute(state, when)
            keys = [("agent", f"{state.tenant_id}/{state.agent_id}", minute)]
            if is_tool and delta.status not in ("OK", "UNKNOWN"):
                keys.append(("tool", delta.name or "unknown", minute))
            for rkey in keys if local else ():
                part.rates[rkey] += 1
                self._rates[rkey] += 1
                part.dirty.add((StateKind.RATE, rkey))

    def _escalate(
        self,
        part: PartitionState,
        outcome: Outcome,
        state: SessionState,
        delta: StepDelta,
        event: dict[str, Any],
        index: int,
    ) -> Decided | None:
        key = (outcome.policy_id, outcome.target)
        # across partitions: an agent's or tenant's target is decided once, not per partition
        if outcome.level <= self._levels.get(key, 0):
            return None
        # event time makes the epoch deterministic under replay; the index orders outcomes of
        # one event, so two decisions for one target never share an epoch
        epoch = delta.event_time_us * EPOCH_SLOTS + min(index, ENGINE_EPOCH_SLOTS - 1)
        if outcome.target.startswith("session:"):
            until = NO_END  # forgotten with the session
        else:
            ttl_us = (
                int(outcome.ttl_s * 1_000_000)
                if outcome.ttl_s is not None
                else DEFAULT_DECISION_TTL_US
            )
            until = delta.event_time_us + ttl_us
        part.enforced[key] = (outcome.level, epoch, until)
        self._levels[key] = max(outcome.level, self._levels.get(key, 0))
        part.mark(StateKind.ENFORCED, key)
        return Decided(
            outcome=outcome,
            tenant_id=state.tenant_id,
            epoch=epoch,
            issued_at_us=delta.event_time_us,
            trigger_event_id=event.get("event_id"),
            policy_version=self.policies.version,
            bypass=client_bypass(self.policies, event, outcome),
        )

    def _finish(self, part: PartitionState, state: SessionState, result: BatchResult) -> bool:
        """Close a session; True if it counted as open (it had started)."""
        tenant = tenant_scope(state.tenant_id)
        agent = agent_scope(state.tenant_id, state.agent_id)
        opened = state.start_time_us is not None
        if opened:
            part.active[tenant] -= 1
            part.active[agent] -= 1
            self._active[tenant] -= 1
            self._active[agent] -= 1
            part.mark(StateKind.ACTIVE, None)
        hour = bucket_start(state.end_time_us or state.last_event_us, HOUR_US)
        hkey = (agent, SESSION_KIND, "", hour)
        histogram = part.histograms.get(hkey)
        if histogram is None:
            histogram = part.histograms[hkey] = Histogram()
        histogram.observe(state.duration_us / 1000)
        part.mark(StateKind.HISTOGRAM, hkey)
        record = summary(state)
        result.summaries.append(record)
        if self.slos and not self.local_scope:
            end = record["end_time_us"]
            self._verdicts += [
                (n, end, good) for n, good in session_verdicts(record, self.slos).items()
            ]
            if self.fallbacks is not None and self.fallbacks.session_ended(state) is not None:
                self._verdicts.append(("degradation", end, False))
        return opened

    # --- time ----------------------------------------------------------------------------

    def tick(self, partition: int) -> BatchResult:
        """Close silent sessions, evict old finished ones and expire old buckets (event time)."""
        part = self.state(partition)
        result = BatchResult()
        now = part.watermark_us
        evicted: set[str] = set()
        upcoming = NONE_OPEN
        for session_id, state in list(part.sessions.items()):
            deadline = self.timeout_deadline_us(state)
            if not state.ended and deadline >= now:
                upcoming = min(upcoming, deadline)
            elif not state.ended:
                close_timed_out(state)
                part.mark(StateKind.SESSION, session_id)
                opened = self._finish(part, state, result)
                if not self.local_scope:
                    self._timeout_items(part, state, opened, result.scope_items)
            elif (state.end_time_us or 0) < now - self.finished_retention_us:
                part.closed[session_id] = (state.last_seq, state.end_time_us or 0)
                del part.sessions[session_id]
                part.mark(StateKind.SESSION, session_id)
                part.mark(StateKind.CLOSED, session_id)
                evicted.add(f"session:{session_id}")
        part.next_deadline_us = upcoming
        self._expire_enforced(part, now, evicted)
        self._expire_rates(part, now)
        # buckets and histograms are hourly and kept whole hours or days: one expires when the
        # watermark passes an hour boundary, so scanning them (more each day) once an hour is
        # enough; ``now - 1``: a watermark exactly on the boundary expires nothing yet
        hour = bucket_start(now - 1, HOUR_US)
        if hour != part.expired_at_hour:
            part.expired_at_hour = hour
            for key in [k for k in part.buckets if self._bucket_expired(k[1], k[2], now)]:
                del part.buckets[key]
                part.mark(StateKind.BUCKET, key)
            for hkey in [
                k for k in part.histograms if expired(k[3], HOUR_US, now, self.hourly_retention_us)
            ]:
                del part.histograms[hkey]
                part.mark(StateKind.HISTOGRAM, hkey)
        # guards are kept in eviction order: the oldest are first, so pruning stops early
        horizon = now - self.finished_retention_us - CLOSED_GUARD_RETENTION_US
        expired_guards = []
        for session_id, (_, end) in part.closed.items():
            if end >= horizon:
                break
            expired_guards.append(session_id)
        for session_id in expired_guards:
            del part.closed[session_id]
            part.mark(StateKind.CLOSED, session_id)
        self._expire_minutes(now)
        return result

    def timeout_deadline_us(self, state: SessionState) -> int:
        """When a silent session times out: the first watermark past this closes it."""
        return state.last_event_us + self.idle_timeout_us

    def next_timeout_us(self, partition: int) -> int | None:
        """The earliest deadline of the partition's open sessions (``None``: none open).

        The scope stage must not merge past it before the tick has closed the session: the
        source's watermark it is told is kept below it (see the accounting runner)."""
        part = self.partitions.get(partition)
        if part is None:
            return None
        if part.next_deadline_us is None:
            part.next_deadline_us = min(
                (self.timeout_deadline_us(s) for s in part.sessions.values() if not s.ended),
                default=NONE_OPEN,
            )
        return None if part.next_deadline_us >= NONE_OPEN else part.next_deadline_us

    def _timeout_items(
        self, part: PartitionState, state: SessionState, opened: bool, items: list[ScopeItem]
    ) -> None:
        """A session closed for silence, for the scope stage: placed at its deadline (not when
        the tick ran), and after every other item there at the same time from its partition,
        ordered by session (the tick's order of sessions is no order)."""
        deadline = self.timeout_deadline_us(state)
        place = -1 - zlib.crc32(state.session_id.encode())
        if opened:
            items.append(
                ScopeItem(
                    deadline, part.partition, place, 0, deadline, state.tenant_id,
                    state.agent_id, state.session_id, kind="TIMEOUT", ended=True,
                )
            )  # fmt: skip
        self._slo_items((deadline, part.partition, place), 1, state.session_id, items)

    def _expire_enforced(self, part: PartitionState, now: int, evicted: set[str]) -> None:
        gone = [
            key for key, (_, _, until) in part.enforced.items() if until < now or key[1] in evicted
        ]
        for key in gone:
            del part.enforced[key]
            part.mark(StateKind.ENFORCED, key)
        if gone:
            self._index_levels()

    def _expire_rates(self, part: PartitionState, now: int) -> None:
        horizon = bucket_start(now, MINUTE_US) - RATE_HORIZON_US
        for rkey in [k for k in part.rates if k[2] < horizon]:
            self._rates[rkey] -= part.rates.pop(rkey)
            if self._rates[rkey] <= 0:
                del self._rates[rkey]
            part.mark(StateKind.RATE, rkey)

    def _bucket_expired(self, size: int, start: int, now: int) -> bool:
        retention = self.hourly_retention_us if size == HOUR_US else self.daily_retention_us
        return expired(start, size, now, retention)

    def _expire_minutes(self, now: int) -> None:
        previous_hour = bucket_start(now, HOUR_US) - HOUR_US
        for spend_key in [k for k in self._hour_spend if k[1] < previous_hour]:
            del self._hour_spend[spend_key]


# --- checkpoint records --------------------------------------------------------------------


def checkpoint_records(part: PartitionState) -> list[tuple[bytes, bytes | None]]:
    """The dirty state of ``part`` as changelog records (key, value or None to delete)."""
    records: list[tuple[bytes, bytes | None]] = []
    for kind, key in part.dirty:
        if kind is StateKind.SESSION:
            state = part.sessions.get(key)
            value = None if state is None else orjson.dumps(state.to_dict())
            records.append((f"s|{key}".encode(), value))
        elif kind is StateKind.CLOSED:
            closed = part.closed.get(key)
            value = None if closed is None else orjson.dumps(closed)
            records.append((f"c|{key}".encode(), value))
        elif kind is StateKind.BUCKET:
            totals = part.buckets.get(key)
            value = None if totals is None else orjson.dumps(_totals(totals))
            records.append((b"b|" + orjson.dumps(list(key)), value))
        elif kind is StateKind.HISTOGRAM:
            hist = part.histograms.get(key)
            value = None if hist is None else orjson.dumps(hist.to_state())
            records.append((b"h|" + orjson.dumps(list(key)), value))
        elif kind is StateKind.ENFORCED:
            entry = part.enforced.get(key)
            value = None if entry is None else orjson.dumps(list(entry))
            records.append((b"e|" + orjson.dumps(list(key)), value))
        elif kind is StateKind.RATE:
            n = part.rates.get(key)
            records.append((b"r|" + orjson.dumps(list(key)), None if n is None else b"%d" % n))
        elif kind is StateKind.ACTIVE:
            records.append((b"a|", orjson.dumps(dict(part.active))))
    part.dirty.clear()
    records.append((b"w|", orjson.dumps(part.watermark_us)))
    return records


def restore_record(part: PartitionState, key: bytes, value: bytes | None) -> None:
    """Apply one changelog record while rebuilding ``part`` (later records win)."""
    name, _, rest = key.decode().partition("|")
    kind = StateKind(name)
    data = None if value is None else orjson.loads(value)
    if kind is StateKind.SESSION:
        if data is None:
            part.sessions.pop(rest, None)
        else:
            part.sessions[rest] = SessionState.from_dict(data)
    elif kind is StateKind.CLOSED:
        if data is None:
            part.closed.pop(rest, None)
        else:
            part.closed[rest] = (data[0], data[1])
    elif kind is StateKind.BUCKET:
        bkey = tuple(orjson.loads(rest))
        if data is None:
            part.buckets.pop(bkey, None)
        else:
            part.buckets[bkey] = Totals(**data)
    elif kind is StateKind.HISTOGRAM:
        hkey = tuple(orjson.loads(rest))
        if data is None:
            part.histograms.pop(hkey, None)
        else:
            part.histograms[hkey] = Histogram.from_state(data)
    elif kind is StateKind.ENFORCED:
        policy_id, target = orjson.loads(rest)
        if data is None:
            part.enforced.pop((policy_id, target), None)
        else:
            # records written before the expiry was kept: a day from the decision's event time
            until = data[2] if len(data) > 2 else data[1] // EPOCH_SLOTS + DEFAULT_DECISION_TTL_US
            part.enforced[(policy_id, target)] = (data[0], data[1], until)
    elif kind is StateKind.RATE:
        rate_kind, rate_id, minute = orjson.loads(rest)
        if data is None:
            part.rates.pop((rate_kind, rate_id, minute), None)
        else:
            part.rates[(rate_kind, rate_id, minute)] = int(data)
    elif kind is StateKind.ACTIVE and data is not None:
        part.active = Counter(data)
    elif kind is StateKind.WATERMARK and data is not None:
        part.watermark_us = int(data)


def _totals(t: Totals) -> dict[str, int]:
    return {
        "cost_micros": t.cost_micros,
        "input_tokens": t.input_tokens,
        "output_tokens": t.output_tokens,
        "llm_calls": t.llm_calls,
        "tool_calls": t.tool_calls,
        "sessions_started": t.sessions_started,
        "sessions_ended": t.sessions_ended,
    }
