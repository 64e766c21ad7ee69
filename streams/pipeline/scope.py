"""Stage 2, pure: tenant- and agent-scoped state and decisions (no I/O).

The session stage (stage 1, keyed by session) turns each applied event into a :class:`ScopeItem`
and sends the items, inside its transaction, to the repartition topic ``gov.scope-deltas``,
partitioned by tenant (Kafka Streams' ``groupBy``). This module is what the tenant-keyed stage
does with them: spend per scope and hour, open sessions per scope, agent step and tool failure
rates per minute, how far each policy has escalated on each target, and each tenant's audit
chain, for the scope partitions one worker owns.

Why an order: with several workers the items of one tenant arrive from several source
partitions, interleaved by chance. Each item carries its source partition's watermark after its
event (``order_us``: the latest event time read there, so it never decreases along a partition
and is a function of the partition's records alone). :class:`ScopeCore` applies items in that
order (ties by source partition, offset, index), holding each until every source still reading
has reported a watermark past it. The order is then a function of the events alone, not of how
many workers read them or when: the same event crosses a tenant limit and the decision gets the
same id, whatever the events' disorder within a partition, with no allowance to wait out. A
session closed for silence comes at its deadline: its source keeps the watermark it reports
below that deadline until the item is sent.

A source read to its end and quiet for ``grace_s`` of wall time (nothing came from it since,
and its owner keeps saying so: a dead owner's last word is not taken for long) counts as far as
the fleet is for an item that has itself waited ``grace_s`` (records that
reached the quiet source just before may not be reported yet); with every source quiet
everything held goes once it has waited that long. A source that stays
silent without having read to its end (its worker died) holds the merge for at most
``max_hold_s`` of wall time; past that, items are released in order (counted as ``forced``).
An item that comes after the merge went past it (a quiet source woke up behind the fleet) is
applied when it comes.
"""

from __future__ import annotations

import heapq
import itertools
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from streams.audit import AuditChains, AuditRecord, ChainHead
from streams.control import ENGINE_EPOCH_SLOTS, EPOCH_SLOTS, decision_id
from streams.pipeline.aggregates import HOUR_US, MINUTE_US, agent_scope, bucket_start, tenant_scope
from streams.pipeline.bypass import ClientBypass, bypass_details
from streams.pipeline.policy import MAX_RATE_WINDOW_S, Facts, Outcome, PolicySet, decide_scope
from streams.pipeline.slo import Slo, SloAlerting
from streams.processor.slo_state import decode_slo_state, encode_slo_state

#: a decision for a target without a window of its own stays in force this long
DEFAULT_DECISION_TTL_US = 24 * 3600 * 1_000_000
#: rate counters are kept this long behind the merge position: the longest rate window
RATE_HORIZON_US = MAX_RATE_WINDOW_S * 1_000_000
#: an item waits at most this long (wall time) for a silent source
DEFAULT_MAX_HOLD_S = 30.0
#: how long (wall time) a source read to its end must stay quiet before it stops holding the
#: merge: records produced just before may still be on their way to it
DEFAULT_GRACE_S = 2.0
#: a source's owner says again that it is read to its end this often (stage 1) ...
IDLE_REPORT_S = 0.5
#: ... and a source is quiet only while it has: "read to its end" from an owner that died is
#: no longer true once records come (its new owner reports them after the group's timeout).
#: Shorter than any grace: a busy partition whose owner dies never turns quiet
QUIET_HEARD_S = 1.5
#: items per changelog record of the held items
PENDING_CHUNK = 1000
#: pruning trails the latest event time by this much (events arrive out of time order)
PRUNE_MARGIN_US = 3600 * 1_000_000
#: the pseudo-tenant of fleet-wide state: the SLO verdicts and alerts, the policy-change chain
FLEET = "*"


def scope_partition(tenant_id: str, partitions: int) -> int:
    """The scope-deltas partition of a tenant (CRC-32: stable across processes and runs)."""
    return zlib.crc32(tenant_id.encode()) % partitions


@dataclass(frozen=True, slots=True)
class AuditRequest:
    """An audit record to link into its tenant's chain (the chain's owner is stage 2)."""

    kind: str
    time_us: int
    subject: str
    summary: str
    details: dict[str, str]
    record_id: str | None = None
    actor: str = "governor-worker"


@dataclass(slots=True)
class ScopeItem:
    """One applied event as the scope stage needs it, or an audit record to chain.

    Read-only by convention, not frozen: one is built per event on both stages, and a frozen
    dataclass's ``__init__`` (``object.__setattr__`` per field) costs five times as much."""

    order_us: int  #: merge key: the source partition's watermark after the event
    source: int  #: source (events) partition
    offset: int  #: source offset (-1: not from a record, e.g. a session closed for silence)
    index: int  #: orders items of one record (an event's audits after the event)
    time_us: int  #: the event's own time: which hour its spend and minute its step count in
    tenant_id: str
    agent_id: str
    session_id: str
    event_id: str | None = None
    kind: str = ""  #: StepEvent kind; "" for an audit request
    name: str | None = None  #: model or tool
    status: str = "OK"
    cost_micros: int = 0
    started: bool = False
    ended: bool = False  #: the session ended or was closed for silence: one fewer open
    audit: AuditRequest | None = None
    #: on the item that started a session: the session that started it (session trees)
    parent_session_id: str | None = None

    @property
    def key(self) -> tuple[int, int, int, int]:
        return (self.order_us, self.source, self.offset, self.index)

    def to_wire(self) -> list[Any]:
        audit = self.audit
        return [
            self.order_us, self.source, self.offset, self.index, self.time_us, self.tenant_id,
            self.agent_id, self.session_id, self.event_id, self.kind, self.name, self.status,
            self.cost_micros, self.started, self.ended,
            None if audit is None else [audit.kind, audit.time_us, audit.subject, audit.summary,
                                        audit.details, audit.record_id, audit.actor],
            self.parent_session_id,
        ]  # fmt: skip

    @classmethod
    def from_wire(cls, row: list[Any]) -> ScopeItem:
        audit = None if row[15] is None else AuditRequest(*row[15])
        (order, source, offset, index, time_us, tenant, agent, session, event_id, kind, name,
         status, cost, started, ended) = row[:15]  # fmt: skip
        # rows written before session trees have 16 fields
        parent = row[16] if len(row) > 16 else None
        return cls(
            order, source, offset, index, time_us, tenant, agent, session, event_id, kind, name,
            status, cost, started, ended, audit, parent,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class SourceMark:
    """What a source partition's owner last said: its watermark, and whether it had read
    everything there was (idle sources do not hold the merge)."""

    watermark_us: int
    idle: bool


@dataclass(frozen=True, slots=True)
class ScopeDelta:
    """One record of ``gov.scope-deltas``: items of one source for one scope partition."""

    source: int
    mark: SourceMark
    items: tuple[ScopeItem, ...]

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "v": 1,
                "src": self.source,
                "wm": self.mark.watermark_us,
                "idle": self.mark.idle,
                "items": [i.to_wire() for i in self.items],
            }
        )

    @classmethod
    def decode(cls, value: bytes) -> ScopeDelta:
        data = orjson.loads(value)
        if not isinstance(data, dict) or data.get("v") != 1:
            raise ValueError("not a scope delta of version 1")
        items = tuple(ScopeItem.from_wire(row) for row in data["items"])
        return cls(int(data["src"]), SourceMark(int(data["wm"]), bool(data["idle"])), items)


class StateKind(StrEnum):
    """Changelog record kinds of a scope partition (the key is ``<kind>|<json key>``)."""

    SPEND = "spend"
    ACTIVE = "active"
    RATE = "rate"
    ENFORCED = "enforced"
    SOURCE = "source"
    PENDING = "pending"
    HEAD = "head"
    POSITION = "position"
    SLO = "slo"
    TREE = "tree"


@dataclass
class TreeSpend:
    """A session tree's spend (micro-USD, every member's since it was tracked) and the members
    still open."""

    spend: int = 0
    open: set[str] = field(default_factory=set)


@dataclass
class ScopeState:
    """Everything stage 2 keeps for one scope partition; all of it is checkpointed."""

    partition: int
    #: (scope, hour start) -> spend in micro-USD
    spend: Counter[tuple[str, int]] = field(default_factory=Counter)
    #: session trees, kept while a ``session_tree`` budget is in force: root -> the tree's
    #: spend and its open sessions (a tree is forgotten when its last session closes) ...
    trees: dict[str, TreeSpend] = field(default_factory=dict)
    #: ... and each open member's root (rebuilt from ``trees`` on restore)
    tree_of: dict[str, str] = field(default_factory=dict)
    #: scope -> open sessions
    active: Counter[str] = field(default_factory=Counter)
    #: (rate kind, id, minute start) -> count: agent steps, tool failures per tenant
    rates: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    #: (policy id, target) -> (level, epoch, in force until, merge time)
    enforced: dict[tuple[str, str], tuple[int, int, int]] = field(default_factory=dict)
    sources: dict[int, SourceMark] = field(default_factory=dict)
    #: items received and not yet released: a heap of (key, arrival number, arrival wall time
    #: s, item); the arrival number orders equal keys (two timeouts of one tick) as they came
    held: list[tuple[tuple[int, int, int, int], int, float, ScopeItem]] = field(
        default_factory=list
    )
    heads: dict[str, ChainHead] = field(default_factory=dict)
    #: the merge position: order key of the last released item
    position_us: int = 0
    #: the latest event time released: the clock of the SLO minutes and of pruning
    event_us: int = 0
    #: the fleet's burn-rate alerting (kept on the fleet's partition only)
    alerting: SloAlerting = field(default_factory=SloAlerting)
    dirty: set[tuple[StateKind, Any]] = field(default_factory=set)
    #: changelog records the held items were last written in (chunks)
    held_chunks: int = 0
    #: wall time (s) since each source has been read to its end with nothing new (not
    #: checkpointed: after a restore a source is quiet again only after the grace)
    idle_since: dict[int, float] = field(default_factory=dict)
    #: wall time (s) each source's owner last reported (not checkpointed: after a restore no
    #: source is quiet before its owner has reported again)
    heard_at: dict[int, float] = field(default_factory=dict)
    #: during a restore: the held items' chunks by index (see ``finish_restore``)
    restoring: dict[int, list[ScopeItem]] = field(default_factory=dict)

    def mark(self, kind: StateKind, key: Any = None) -> None:
        self.dirty.add((kind, key))


@dataclass(frozen=True)
class Decided:
    """An outcome that escalated (in either stage), with its deterministic epoch and trigger."""

    outcome: Outcome
    tenant_id: str
    epoch: int
    issued_at_us: int
    trigger_event_id: str | None
    policy_version: int
    #: the step ran although a client with checks would have refused it (stage 1 only)
    bypass: ClientBypass | None = None


@dataclass
class ScopeResult:
    decisions: list[Decided] = field(default_factory=list)
    #: audit records linked into their chains, to be written in order
    audits: list[AuditRecord] = field(default_factory=list)
    #: SLO burn-rate alerts starting or stopping (the fleet's partition only)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    released: int = 0
    #: released before every source had caught up (a silent source past max_hold_s)
    forced: int = 0
    #: (tenant, agent, hour start) whose spend changed, and (tenant, agent, session) of the
    #: sessions closed: what the clients' fleet-budget reservations in Redis hear of
    #: (streams.client.reservations)
    spent: set[tuple[str, str, int]] = field(default_factory=set)
    closed: list[tuple[str, str, str]] = field(default_factory=list)


class ScopeCore:
    """Stage 2's state and decisions for the scope partitions one worker owns."""

    def __init__(
        self,
        policies: PolicySet,
        sources: int,
        hourly_retention_s: float = 8 * 86400.0,
        max_hold_s: float = DEFAULT_MAX_HOLD_S,
        partitions: int = 1,
        grace_s: float = DEFAULT_GRACE_S,
    ) -> None:
        self.policies = policies
        self.slos: list[Slo] = []
        #: the scope partition holding the fleet's SLO state
        self.fleet_partition = scope_partition(FLEET, partitions)
        #: how many source partitions exist: a source never heard from holds the merge
        self.source_count = sources
        self.hourly_retention_us = int(hourly_retention_s * 1_000_000)
        self.max_hold_s = max_hold_s
        self.grace_s = grace_s
        #: numbers the items held, in the order they came (after a restore: above its own)
        self._arrivals = itertools.count(1 << 40)
        self.partitions: dict[int, ScopeState] = {}
        self._state: ScopeState | None = None
        self._item: ScopeItem | None = None
        self.facts = Facts(
            spend=self._spend,
            active=self._active,
            steps=self._steps,
            tool_failures=self._failures,
            level=self._level,
            tree=self._tree,
        )

    # --- partitions ------------------------------------------------------------------------

    def assign(self, state: ScopeState) -> None:
        self.partitions[state.partition] = state

    def revoke(self, partition: int) -> None:
        self.partitions.pop(partition, None)

    def state(self, partition: int) -> ScopeState:
        if partition not in self.partitions:
            self.partitions[partition] = ScopeState(partition)
        return self.partitions[partition]

    # --- input -------------------------------------------------------------------------------

    def offer(self, partition: int, delta: ScopeDelta, wall_s: float) -> None:
        """Take one record: hold its items and note what its source says about itself."""
        state = self.state(partition)
        previous = state.sources.get(delta.source)
        watermark = max(delta.mark.watermark_us, previous.watermark_us if previous else 0)
        mark = SourceMark(watermark, delta.mark.idle)
        if not mark.idle or previous is None or previous.watermark_us != watermark:
            state.idle_since.pop(delta.source, None)  # new records came: not quiet
        if mark.idle:
            state.idle_since.setdefault(delta.source, wall_s)
        state.sources[delta.source] = mark
        state.heard_at[delta.source] = wall_s
        state.mark(StateKind.SOURCE, delta.source)
        for item in delta.items:
            heapq.heappush(state.held, (item.key, next(self._arrivals), wall_s, item))
        if delta.items:
            state.mark(StateKind.PENDING)

    def release(self, partition: int, wall_s: float) -> ScopeResult:
        """Apply every item the merge allows, in key order; decide after each."""
        state = self.state(partition)
        result = ScopeResult()
        chains = AuditChains(state.heads)
        every, reading, everyone_quiet = self._thresholds(state, wall_s)
        held = state.held
        while held:
            _key, _n, arrived, item = held[0]
            waited = wall_s - arrived
            # past a quiet source only once the item has waited the grace itself: the quiet
            # source's owner may have records that came just before it, not yet reported;
            # with every source quiet, nothing is on its way: all of it goes, in order
            settled = item.order_us < every or (
                waited >= self.grace_s and (everyone_quiet or item.order_us < reading)
            )
            if not settled:
                if waited < self.max_hold_s:
                    break
                result.forced += 1
            heapq.heappop(held)
            state.mark(StateKind.PENDING)
            self._apply(state, item, chains, result)
            result.released += 1
        state.heads = chains.heads
        if partition == self.fleet_partition and self.slos:
            before = state.alerting.evaluated_minute
            result.alerts = state.alerting.advance(self.slos, state.event_us)
            if result.alerts or state.alerting.evaluated_minute != before:
                state.mark(StateKind.SLO)
        return result

    def _thresholds(self, state: ScopeState, wall_s: float) -> tuple[int, int, bool]:
        """Merge keys below which no source can still send an item (what a source sends next
        is at or past its watermark): the least watermark of every source, and of the sources
        still reading, where a source read to its end and quiet for ``grace_s`` of wall time
        (its owner saying so again within ``QUIET_HEARD_S``) counts as far as the fleet is
        (the latest watermark). A source never heard from holds
        everything. Also: whether every source is quiet (nothing can be on its way)."""
        marks = [state.sources.get(s) for s in range(self.source_count)]
        if any(m is None for m in marks):
            return -1, -1, False
        known = [m for m in marks if m is not None]
        fleet = max(m.watermark_us for m in known)
        heard = state.heard_at
        quiet = {
            s
            for s, since in state.idle_since.items()
            if wall_s - since >= self.grace_s and wall_s - heard.get(s, -1e18) <= QUIET_HEARD_S
        }
        reading = [m.watermark_us for s, m in enumerate(known) if not (m.idle and s in quiet)]
        every = min(m.watermark_us for m in known)
        return every, min(reading, default=fleet), not reading

    # --- applying ----------------------------------------------------------------------------

    def _apply(
        self, state: ScopeState, item: ScopeItem, chains: AuditChains, result: ScopeResult
    ) -> None:
        if item.order_us > state.position_us or item.time_us > state.event_us:
            state.position_us = max(state.position_us, item.order_us)
            state.event_us = max(state.event_us, item.time_us)
            state.mark(StateKind.POSITION)
        if item.audit is not None:
            self._chain(state, chains, item.tenant_id, item.audit, result)
            return
        if item.kind == "SLO":
            state.alerting.add(item.name or "", item.time_us, item.status == "GOOD")
            state.mark(StateKind.SLO)
            return
        tenant = tenant_scope(item.tenant_id)
        agent = agent_scope(item.tenant_id, item.agent_id)
        if item.cost_micros:
            hour = bucket_start(item.time_us, HOUR_US)
            for scope in (tenant, agent):
                state.spend[(scope, hour)] += item.cost_micros
                state.mark(StateKind.SPEND, (scope, hour))
            result.spent.add((item.tenant_id, item.agent_id, hour))
        if item.started:
            for scope in (tenant, agent):
                state.active[scope] += 1
            state.mark(StateKind.ACTIVE)
        if self.policies.tracks_trees:
            track_tree(state, item)
        if item.kind in ("LLM_CALL", "TOOL_CALL"):
            minute = bucket_start(item.time_us, MINUTE_US)
            keys = [("agent", f"{item.tenant_id}/{item.agent_id}", minute)]
            if item.kind == "TOOL_CALL" and item.status not in ("OK", "UNKNOWN"):
                keys.append(("tool", f"{item.tenant_id}/{item.name or 'unknown'}", minute))
            for rkey in keys:
                state.rates[rkey] += 1
                state.mark(StateKind.RATE, rkey)
        if self.policies.policies:
            self._state, self._item = state, item
            for index, outcome in enumerate(decide_scope(self.policies, item, self.facts)):
                decided = self._escalate(state, outcome, item, index)
                if decided is not None:
                    result.decisions.append(decided)
                    self._chain(state, chains, item.tenant_id, decision_audit(decided), result)
            self._state = self._item = None
        if item.ended:
            leave_tree(state, item.session_id)
            result.closed.append((item.tenant_id, item.agent_id, item.session_id))
            for scope in (tenant, agent):
                state.active[scope] -= 1
                if state.active[scope] <= 0:
                    del state.active[scope]
            state.mark(StateKind.ACTIVE)

    def _chain(
        self,
        state: ScopeState,
        chains: AuditChains,
        tenant_id: str,
        request: AuditRequest,
        result: ScopeResult,
    ) -> None:
        record = chains.append(
            tenant_id,
            request.kind,
            request.time_us,
            request.subject,
            request.summary,
            request.details,
            actor=request.actor,
            record_id=request.record_id,
        )
        state.mark(StateKind.HEAD, tenant_id)
        result.audits.append(record)

    def audit(self, partition: int, tenant_id: str, request: AuditRequest) -> AuditRecord:
        """Link a record into a chain this worker owns (a policy change, say) at once."""
        state = self.state(partition)
        chains = AuditChains(state.heads)
        result = ScopeResult()
        self._chain(state, chains, tenant_id, request, result)
        state.heads = chains.heads
        return result.audits[0]

    def _escalate(
        self, state: ScopeState, outcome: Outcome, item: ScopeItem, index: int
    ) -> Decided | None:
        key = (outcome.policy_id, outcome.target)
        if outcome.level <= self._level(*key):
            return None
        # the merge key never decreases: epochs per target only grow, under replay too; the
        # slot is the policy's place in the set, not in this event's outcomes, so a policy's
        # decision keeps its id whatever else fires on the same event
        slot = self.policies.slot(outcome.policy_id) % ENGINE_EPOCH_SLOTS
        epoch = item.order_us * EPOCH_SLOTS + slot
        previous = state.enforced.get(key)
        if previous is not None and epoch <= previous[1]:
            epoch = previous[1] + 1  # an item later than the grace: epochs still only grow
        ttl_us = (
            int(outcome.ttl_s * 1_000_000) if outcome.ttl_s is not None else DEFAULT_DECISION_TTL_US
        )
        state.enforced[key] = (outcome.level, epoch, item.time_us + ttl_us)
        state.mark(StateKind.ENFORCED, key)
        return Decided(
            outcome=outcome,
            tenant_id=item.tenant_id,
            epoch=epoch,
            issued_at_us=item.time_us,
            trigger_event_id=item.event_id,
            policy_version=self.policies.version,
        )

    # --- facts ---------------------------------------------------------------------------------

    def _spend(self, scope: str, window_s: float) -> int:
        """Spend of a scope over the window, hour-aligned (the current hour counts whole)."""
        state, item = self._state, self._item
        if state is None or item is None:
            return 0
        # the window ends with the event deciding (its own time: the same whatever was read
        # before it) and reaches back no further than the spend kept
        window_us = min(int(window_s * 1_000_000), self.hourly_retention_us)
        now_hour = bucket_start(item.time_us, HOUR_US)
        first = bucket_start(item.time_us - window_us, HOUR_US) + HOUR_US
        spend = state.spend
        return sum(spend.get((scope, hour), 0) for hour in range(first, now_hour + 1, HOUR_US))

    def _active(self, scope: str) -> int:
        return self._state.active.get(scope, 0) if self._state is not None else 0

    def _steps(self, scope: str, scope_id: str, window_s: float) -> int:
        return self._rate("agent", scope_id, window_s) if scope == "agent" else 0

    def _failures(self, tool: str, window_s: float) -> int:
        item = self._item
        return self._rate("tool", f"{item.tenant_id}/{tool}", window_s) if item else 0

    def _tree(self, session_id: str) -> tuple[str, int, tuple[str, ...]] | None:
        state = self._state
        root = state.tree_of.get(session_id) if state is not None else None
        if state is None or root is None:
            return None
        tree = state.trees[root]
        return root, tree.spend, tuple(sorted(tree.open))

    def _rate(self, kind: str, key: str, window_s: float) -> int:
        state, item = self._state, self._item
        if state is None or item is None:
            return 0
        now_min = bucket_start(item.time_us, MINUTE_US)
        rates = state.rates
        minutes = max(1, int(window_s // 60))
        return sum(rates.get((kind, key, now_min - i * MINUTE_US), 0) for i in range(minutes))

    def _level(self, policy_id: str, target: str) -> int:
        state, item = self._state, self._item
        if state is None or item is None:
            return 0
        entry = state.enforced.get((policy_id, target))
        # lapsed by the deciding event's time, pruned or not: pruning runs on a timer
        return entry[0] if entry is not None and entry[2] >= item.time_us else 0

    # --- time ----------------------------------------------------------------------------------

    def expire(self, partition: int) -> None:
        """Forget what the merge position has left behind: lapsed decisions, old rates and
        spend hours past the retention (the longest budget window counts whole hours)."""
        state = self.state(partition)
        # an hour behind the latest event time: an event that late still finds what it needs
        now = state.event_us - PRUNE_MARGIN_US
        for key in [k for k, (_, _, until) in state.enforced.items() if until < now]:
            del state.enforced[key]
            state.mark(StateKind.ENFORCED, key)
        horizon = bucket_start(now, MINUTE_US) - RATE_HORIZON_US
        for rkey in [k for k in state.rates if k[2] < horizon]:
            del state.rates[rkey]
            state.mark(StateKind.RATE, rkey)
        spend_horizon = bucket_start(now, HOUR_US) - self.hourly_retention_us
        for skey in [k for k in state.spend if k[1] < spend_horizon]:
            del state.spend[skey]
            state.mark(StateKind.SPEND, skey)


def decision_audit(decided: Decided) -> AuditRequest:
    """The audit record of a decision (stage 1's and stage 2's alike), under the decision's
    own deterministic id: a replay links the same record."""
    outcome = decided.outcome
    signed_id = decision_id(outcome.policy_id, outcome.target, decided.epoch)
    return AuditRequest(
        kind="DECISION",
        time_us=decided.issued_at_us,
        subject=outcome.target,
        summary=f"{outcome.action} by {outcome.policy_id}: {outcome.reason}",
        details={
            "decision_id": signed_id,
            "action": outcome.action,
            "policy_id": outcome.policy_id,
            "policy_version": str(decided.policy_version),
            "epoch": str(decided.epoch),
            "trigger_event_id": decided.trigger_event_id or "",
        },
        record_id=signed_id,
    )


def track_tree(state: ScopeState, item: ScopeItem) -> None:
    """Count ``item`` in its session tree: a session's start joins the tree of the session
    that started it (or begins its own), a cost adds to its tree's spend."""
    if item.started and item.session_id not in state.tree_of:
        parent = item.parent_session_id
        root = state.tree_of.get(parent, parent) if parent else item.session_id
        tree = state.trees.get(root)
        if tree is None:
            tree = state.trees[root] = TreeSpend()
        tree.open.add(item.session_id)
        state.tree_of[item.session_id] = root
        state.mark(StateKind.TREE, root)
    if item.cost_micros:
        member_of = state.tree_of.get(item.session_id)
        if member_of is not None:
            state.trees[member_of].spend += item.cost_micros
            state.mark(StateKind.TREE, member_of)


def leave_tree(state: ScopeState, session_id: str) -> None:
    """A session closed: it leaves its tree, and the tree is forgotten with its last session."""
    root = state.tree_of.pop(session_id, None)
    if root is None:
        return
    tree = state.trees[root]
    tree.open.discard(session_id)
    if not tree.open:
        del state.trees[root]
    state.mark(StateKind.TREE, root)


def bypass_audit(decided: Decided, bypass: ClientBypass) -> AuditRequest:
    """The CLIENT_BYPASS record beside a decision: the step it was decided on ran although
    the client's checks should have refused it, and which policy version the client reported."""
    signed_id = decision_id(decided.outcome.policy_id, decided.outcome.target, decided.epoch)
    reported = bypass.client_policy_version or "no client checks"
    return AuditRequest(
        kind="CLIENT_BYPASS",
        time_us=decided.issued_at_us,
        subject=f"session:{bypass.session_id}",
        summary=(
            f"{bypass.action} by {bypass.policy_id} on a step the client let run "
            f"({bypass.why}: client {reported}, worker {bypass.worker_policy_version})"
        ),
        details={"decision_id": signed_id, **bypass_details(bypass)},
        record_id=f"bypass:{signed_id}",
    )


# --- checkpoint records ------------------------------------------------------------------------


def _key(kind: StateKind, key: Any) -> bytes:
    return f"{kind.value}|".encode() + orjson.dumps(key)


def checkpoint_records(state: ScopeState) -> list[tuple[bytes, bytes | None]]:
    """The dirty state of a scope partition as changelog records (None deletes)."""
    records: list[tuple[bytes, bytes | None]] = []
    for kind, key in sorted(state.dirty, key=lambda d: (d[0].value, orjson.dumps(d[1]))):
        value: bytes | None
        if kind is StateKind.SPEND:
            n = state.spend.get(key)
            value = None if n is None else b"%d" % n
        elif kind is StateKind.RATE:
            n = state.rates.get(key)
            value = None if n is None else b"%d" % n
        elif kind is StateKind.ACTIVE:
            value = orjson.dumps(dict(state.active))
        elif kind is StateKind.ENFORCED:
            entry = state.enforced.get(key)
            value = None if entry is None else orjson.dumps(list(entry))
        elif kind is StateKind.SOURCE:
            mark = state.sources.get(key)
            value = None if mark is None else orjson.dumps([mark.watermark_us, mark.idle])
        elif kind is StateKind.PENDING:
            # the held items in records of PENDING_CHUNK (a record stays far below the broker's
            # 1 MB), the chunks they no longer fill deleted
            items = [entry[3] for entry in sorted(state.held)]
            chunks = [items[i : i + PENDING_CHUNK] for i in range(0, len(items), PENDING_CHUNK)]
            for index in range(max(len(chunks), state.held_chunks)):
                chunk = chunks[index] if index < len(chunks) else None
                encoded = None if chunk is None else orjson.dumps([i.to_wire() for i in chunk])
                records.append((_key(kind, index), encoded))
            state.held_chunks = len(chunks)
            continue
        elif kind is StateKind.HEAD:
            head = state.heads.get(key)
            value = None if head is None else orjson.dumps([head.chain_seq, head.hash])
        elif kind is StateKind.SLO:
            value = encode_slo_state(state.alerting)
        elif kind is StateKind.TREE:
            tree = state.trees.get(key)
            value = None if tree is None else orjson.dumps([tree.spend, sorted(tree.open)])
        else:
            value = orjson.dumps([state.position_us, state.event_us])
        records.append((_key(kind, key), value))
    state.dirty.clear()
    return records


def restore_record(state: ScopeState, key: bytes, value: bytes | None, wall_s: float) -> None:
    """Apply one changelog record while rebuilding a scope partition (later records win)."""
    name, _, rest = key.decode().partition("|")
    kind = StateKind(name)
    raw = orjson.loads(rest)
    data = None if value is None else orjson.loads(value)
    if kind is StateKind.SPEND:
        _put(state.spend, (raw[0], raw[1]), data)
    elif kind is StateKind.RATE:
        _put(state.rates, (raw[0], raw[1], raw[2]), data)
    elif kind is StateKind.ACTIVE:
        state.active = Counter(data or {})
    elif kind is StateKind.ENFORCED:
        _put(state.enforced, (raw[0], raw[1]), None if data is None else tuple(data))
    elif kind is StateKind.SOURCE:
        _put(state.sources, int(raw), None if data is None else SourceMark(data[0], data[1]))
    elif kind is StateKind.PENDING:
        _put(state.restoring, int(raw), [ScopeItem.from_wire(row) for row in data or []] or None)
    elif kind is StateKind.HEAD:
        _put(state.heads, raw, None if data is None else ChainHead(data[0], data[1]))
    elif kind is StateKind.SLO:
        state.alerting = decode_slo_state(value) if value is not None else SloAlerting()
    elif kind is StateKind.TREE:
        _put(state.trees, raw, None if data is None else TreeSpend(int(data[0]), set(data[1])))
    elif data is not None:
        state.position_us, state.event_us = int(data[0]), int(data[1])


def finish_restore(state: ScopeState, wall_s: float) -> None:
    """After the last changelog record: the held items, from their chunks."""
    items = [item for index in sorted(state.restoring) for item in state.restoring[index]]
    state.held = [(item.key, n, wall_s, item) for n, item in enumerate(items)]
    heapq.heapify(state.held)
    state.held_chunks = max(state.restoring, default=-1) + 1
    state.restoring.clear()
    state.tree_of = {member: root for root, tree in state.trees.items() for member in tree.open}
    state.dirty.clear()


def _put(table: Any, key: Any, value: Any) -> None:
    if value is None:
        table.pop(key, None)
    else:
        table[key] = value


def items_by_partition(items: Iterable[ScopeItem], partitions: int) -> dict[int, list[ScopeItem]]:
    """Items grouped by the scope partition of their tenant, order kept."""
    grouped: dict[int, list[ScopeItem]] = {}
    for item in items:
        grouped.setdefault(scope_partition(item.tenant_id, partitions), []).append(item)
    return grouped
