"""The scope stage's pure core: a deterministic merge, decisions, audit chains, checkpoints."""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.audit import AuditRecord, verify_chain
from streams.demo import demo_sessions
from streams.engine import Engine
from streams.pipeline.policy import PolicyFile, PolicySet
from streams.pipeline.pricing import load_prices
from streams.pipeline.scope import (
    AuditRequest,
    ScopeCore,
    ScopeDelta,
    ScopeItem,
    ScopeResult,
    ScopeState,
    SourceMark,
    checkpoint_records,
    finish_restore,
    restore_record,
    scope_partition,
)

PRICES = load_prices(Path(__file__).resolve().parents[3] / "policies" / "prices.yaml")
SOURCES = 3
T0_US = 1_760_000_000_000_000
END_OF_TIME = 2**62
POLICIES: list[dict[str, Any]] = [
    {"id": "tenant-day", "kind": "budget", "scope": "tenant", "limit_usd": 0.5, "window": "1d"},
    {"id": "agent-hour", "kind": "budget", "scope": "agent", "limit_usd": 0.2, "window": "1h"},
    {"id": "agent-steps", "kind": "step_rate", "scope": "agent", "max_steps": 40, "window": "1m"},
    {"id": "fleet-cap", "kind": "concurrency", "scope": "tenant", "max_active": 2},
]


def policy_set(policies: list[dict[str, Any]] = POLICIES) -> PolicySet:
    return PolicySet.build([PolicyFile.model_validate({"version": 3, "policies": policies})])


def source_streams(sessions: int = 120, seed: int = 7) -> dict[int, list[ScopeItem]]:
    """What stage 1 sends for a fleet spread over SOURCES partitions, per source in order."""
    engine = Engine(PRICES, policy_set(), local_scope=False)
    by_source: dict[int, list[dict[str, Any]]] = {p: [] for p in range(SOURCES)}
    first: dict[str, int] = {}
    for event in demo_sessions(sessions, seed=seed):
        # the demo's sessions follow one another: start one every 20 ms so that they overlap
        start = first.setdefault(event["session_id"], event["start_time_us"])
        shift = T0_US + len(first) * 20_000 - start
        event = {**event, "start_time_us": event["start_time_us"] + shift}
        by_source[zlib.crc32(event["session_id"].encode()) % SOURCES].append(event)
    for events in by_source.values():
        events.sort(key=lambda e: e["start_time_us"])  # emitted in time order
    streams: dict[int, list[ScopeItem]] = {}
    for source, events in by_source.items():
        result = engine.process(source, events, list(range(len(events))))
        streams[source] = result.scope_items + engine.tick(source).scope_items
    return streams


def deliveries(
    streams: dict[int, list[ScopeItem]], rng: random.Random
) -> Iterator[tuple[int, ScopeDelta]]:
    """The streams cut into random chunks and interleaved at random (as N workers would),
    each chunk carrying its source's watermark; the last chunk of a source says it is idle."""
    cursors = {s: 0 for s in streams}
    while cursors:
        source = rng.choice(sorted(cursors))
        items = streams[source]
        start = cursors[source]
        end = min(len(items), start + rng.randint(1, 60))
        chunk = tuple(items[start:end])
        done = end == len(items)
        # a source read to its end: stage 1 moves its watermark on with the clock
        watermark = END_OF_TIME if done else (chunk[-1].order_us if chunk else 0)
        yield source, ScopeDelta(source, SourceMark(watermark, done), chunk)
        if done:
            del cursors[source]
        else:
            cursors[source] = end


def run(
    streams: dict[int, list[ScopeItem]], seed: int, partitions: int = 2
) -> tuple[ScopeCore, list[tuple[str, str, str, int, str | None]], list[AuditRecord]]:
    core = ScopeCore(policy_set(), SOURCES)
    decisions: list[tuple[str, str, str, int, str | None]] = []
    audits: list[AuditRecord] = []
    rng = random.Random(seed)
    for _source, delta in deliveries(streams, rng):
        for partition in range(partitions):
            mine = tuple(
                i for i in delta.items if scope_partition(i.tenant_id, partitions) == partition
            )
            core.offer(partition, ScopeDelta(delta.source, delta.mark, mine), wall_s=0.0)
            result = core.release(partition, wall_s=0.0)
            decisions += [
                (
                    d.outcome.policy_id,
                    d.outcome.target,
                    d.outcome.action,
                    d.epoch,
                    d.trigger_event_id,
                )
                for d in result.decisions
            ]
            audits += result.audits
    return core, decisions, audits


def test_the_merge_decides_the_same_whatever_the_interleaving() -> None:
    streams = source_streams()
    _, reference, _ = run(streams, seed=0)
    kinds = {policy for policy, *_ in reference}
    # not vacuous: every scope kind decided something on this fleet
    assert {"tenant-day", "agent-hour", "agent-steps", "fleet-cap"} <= kinds
    for seed in range(1, 6):
        _, decisions, _ = run(streams, seed=seed)
        assert sorted(decisions) == sorted(reference)


def test_a_tenant_budget_fires_once_at_the_item_that_crosses_it_in_merge_order() -> None:
    streams = source_streams()
    core, decisions, _ = run(streams, seed=3)
    merged = sorted((i for items in streams.values() for i in items), key=lambda i: i.key)
    for tenant in sorted({i.tenant_id for i in merged}):
        spent, crossing = 0, None
        for item in merged:
            if item.tenant_id == tenant and item.audit is None:
                spent += item.cost_micros
                if spent > 500_000 and crossing is None:
                    crossing = item.event_id
        kills = [
            d
            for d in decisions
            if d[0] == "tenant-day" and d[1] == f"tenant:{tenant}" and d[2] == "KILL"
        ]
        if crossing is None:
            assert kills == []
        else:
            assert [k[4] for k in kills] == [crossing]
    assert not any(core.partitions[p].held for p in core.partitions)


def test_items_wait_until_every_source_still_reading_is_past_them() -> None:
    core = ScopeCore(policy_set(), 2, max_hold_s=30.0, grace_s=2.0)
    # an event of 9 s read after one of 10 s: it is merged at its partition's watermark
    item = ScopeItem(10_000_000, 1, 0, 0, 9_000_000, "acme", "bot", "s1", "e1", "LLM_CALL")
    core.offer(0, ScopeDelta(1, SourceMark(10_000_000, False), (item,)), wall_s=0.0)
    assert core.release(0, wall_s=1.0).released == 0  # source 0 never heard from
    core.offer(0, ScopeDelta(0, SourceMark(13_000_000, False), ()), wall_s=1.0)
    # source 1 may still send more at its watermark (later offsets, after this one)
    assert core.release(0, wall_s=1.0).released == 0
    core.offer(0, ScopeDelta(0, SourceMark(9_500_000, False), ()), wall_s=1.0)
    core.offer(0, ScopeDelta(1, SourceMark(10_000_001, False), ()), wall_s=1.0)
    # a watermark told never goes back: source 0 is still at 13 s
    assert core.release(0, wall_s=1.0).released == 1


def test_a_quiet_source_counts_as_far_as_the_fleet_and_the_tail_goes_when_all_are() -> None:
    core = ScopeCore(policy_set(), 2, max_hold_s=30.0, grace_s=2.0)
    early = ScopeItem(10_000_000, 1, 0, 0, 10_000_000, "acme", "bot", "s1", "e1", "LLM_CALL")
    late = ScopeItem(20_000_000, 1, 1, 0, 20_000_000, "acme", "bot", "s1", "e2", "LLM_CALL")
    core.offer(0, ScopeDelta(0, SourceMark(1_000_000, True), ()), wall_s=0.0)
    core.offer(0, ScopeDelta(1, SourceMark(20_000_000, False), (early, late)), wall_s=0.0)
    # read to its end, but not yet quiet for the grace: source 0 holds at its own watermark
    assert core.release(0, wall_s=1.0).released == 0
    # quiet now (its owner says so again): it counts as far as source 1 is
    core.offer(0, ScopeDelta(0, SourceMark(1_000_000, True), ()), wall_s=1.5)
    assert core.release(0, wall_s=2.0).released == 1
    core.offer(0, ScopeDelta(1, SourceMark(20_000_000, True), ()), wall_s=2.5)
    for wall_s in (2.5, 3.5, 4.0):  # both owners keep saying so
        for source, watermark in ((0, 1_000_000), (1, 20_000_000)):
            core.offer(0, ScopeDelta(source, SourceMark(watermark, True), ()), wall_s)
    assert core.release(0, wall_s=4.4).released == 0
    assert core.release(0, wall_s=4.5).released == 1  # every source quiet: the tail goes


def test_an_item_passes_a_quiet_source_only_after_waiting_the_grace_itself() -> None:
    """Source 0 went quiet long ago; records that reach it just before source 1's item may
    still be on their way to the scope stage: the item waits the grace before passing it."""
    core = ScopeCore(policy_set(), 2, max_hold_s=30.0, grace_s=1.0)
    core.offer(0, ScopeDelta(0, SourceMark(1_000_000, True), ()), wall_s=0.0)
    item = ScopeItem(10_000_000, 1, 0, 0, 10_000_000, "acme", "bot", "s1", "e1", "LLM_CALL")
    core.offer(0, ScopeDelta(1, SourceMark(20_000_000, False), (item,)), wall_s=100.0)
    assert core.release(0, wall_s=100.5).released == 0
    # it woke up in time: its earlier item goes first
    woke = ScopeItem(9_000_000, 0, 5, 0, 9_000_000, "acme", "bot", "s2", "e2", "LLM_CALL")
    core.offer(0, ScopeDelta(0, SourceMark(9_000_000, False), (woke,)), wall_s=100.6)
    core.offer(0, ScopeDelta(0, SourceMark(30_000_000, True), ()), wall_s=100.7)
    result = core.release(0, wall_s=100.8)
    assert result.released == 2  # source 0 is past both now, quiet or not
    # and without a wake-up: an item past the quiet source goes once it has waited the grace
    later = ScopeItem(35_000_000, 1, 1, 0, 35_000_000, "acme", "bot", "s1", "e3", "LLM_CALL")
    core.offer(0, ScopeDelta(1, SourceMark(40_000_000, False), (later,)), wall_s=200.0)
    core.offer(0, ScopeDelta(0, SourceMark(30_000_000, True), ()), wall_s=200.0)  # still quiet
    assert core.release(0, wall_s=200.9).released == 0
    assert core.release(0, wall_s=201.0).released == 1


def test_a_quiet_source_whose_owner_stops_saying_so_holds_the_merge_again() -> None:
    """ "Read to its end" from an owner that died is not true for long: records keep coming to
    the partition, and its next owner reports them only after the group's timeout."""
    core = ScopeCore(policy_set(), 2, max_hold_s=30.0, grace_s=1.0)
    core.offer(0, ScopeDelta(0, SourceMark(1_000_000, True), ()), wall_s=0.0)
    first = ScopeItem(10_000_000, 1, 0, 0, 10_000_000, "acme", "bot", "s1", "e1", "LLM_CALL")
    core.offer(0, ScopeDelta(1, SourceMark(20_000_000, False), (first,)), wall_s=1.0)
    core.offer(0, ScopeDelta(0, SourceMark(1_000_000, True), ()), wall_s=1.5)
    assert core.release(0, wall_s=2.0).released == 1  # quiet, and heard 0.5 s ago
    second = ScopeItem(15_000_000, 1, 1, 0, 15_000_000, "acme", "bot", "s1", "e2", "LLM_CALL")
    core.offer(0, ScopeDelta(1, SourceMark(20_000_000, False), (second,)), wall_s=2.0)
    assert core.release(0, wall_s=3.5).released == 0  # not heard from for 2 s
    result = core.release(0, wall_s=32.0)
    assert (result.released, result.forced) == (1, 1)


def test_a_silent_source_holds_the_merge_for_max_hold_only() -> None:
    core = ScopeCore(policy_set(), 2, max_hold_s=5.0)
    item = ScopeItem(100, 0, 0, 0, 100, "acme", "bot", "s1", "e1", "LLM_CALL", cost_micros=10)
    core.offer(0, ScopeDelta(0, SourceMark(100, False), (item,)), wall_s=0.0)
    assert core.release(0, wall_s=4.9).released == 0
    result = core.release(0, wall_s=5.0)
    assert (result.released, result.forced) == (1, 1)


def test_audit_requests_are_chained_in_merge_order_and_the_chain_verifies() -> None:
    streams = source_streams(sessions=60)
    _, _, audits = run(streams, seed=1)
    assert audits
    assert verify_chain(enumerate(audits)) == []
    _, _, again = run(streams, seed=4)
    assert {a["record_id"] for a in again} == {a["record_id"] for a in audits}


def test_checkpoint_records_restore_the_same_state() -> None:
    streams = source_streams(sessions=60)
    core = ScopeCore(policy_set(), SOURCES)
    rng = random.Random(2)
    original = core.state(0)
    for n, (_source, delta) in enumerate(deliveries(streams, rng)):
        core.offer(0, delta, wall_s=0.0)
        if n % 3 == 0:  # leave some items pending
            core.release(0, wall_s=0.0)
    core.audit(0, "acme", AuditRequest("POLICY_CHANGE", 1, "policies", "v1 -> v2", {}))
    records = checkpoint_records(original)
    restored = ScopeState(0)
    for key, value in records:
        restore_record(restored, key, value, wall_s=0.0)
    finish_restore(restored, wall_s=0.0)
    for name in ("spend", "active", "rates", "enforced", "sources", "heads", "position_us"):
        assert getattr(restored, name) == getattr(original, name), name
    assert sorted(e[0] for e in restored.held) == sorted(e[0] for e in original.held)
    # a second checkpoint of unchanged state writes nothing
    assert checkpoint_records(original) == []


def test_a_scope_delta_round_trips_and_a_foreign_record_is_refused() -> None:
    audit = AuditRequest("DECISION", 5, "session:s", "KILL", {"a": "b"}, record_id="r")
    items = (
        ScopeItem(1, 2, 3, 0, 1, "t", "a", "s", "e", "TOOL_CALL", "grep", "ERROR", 0, False, True),
        ScopeItem(1, 2, 3, 1, 1, "t", "a", "s", audit=audit),
    )
    delta = ScopeDelta(2, SourceMark(9, True), items)
    assert ScopeDelta.decode(delta.encode()) == delta
    with pytest.raises(ValueError, match="version 1"):
        ScopeDelta.decode(b'{"v": 99}')


def test_scope_partitions_are_stable_and_spread() -> None:
    tenants = [f"tenant-{i}" for i in range(600)]
    placed = [scope_partition(t, 6) for t in tenants]
    assert placed == [scope_partition(t, 6) for t in tenants]
    assert all(placed.count(p) > 60 for p in range(6))


def test_a_result_counts_what_it_released() -> None:
    assert ScopeResult().released == 0


def test_results_name_every_hour_whose_spend_changed_and_every_session_closed() -> None:
    """What the worker tells the clients' fleet-budget reservations (streams.client
    .reservations): nothing spent or closed goes unreported, nothing is reported twice."""
    streams = source_streams()
    core = ScopeCore(policy_set(), SOURCES)
    spent: set[tuple[str, str, int]] = set()
    closed: list[tuple[str, str, str]] = []
    for _source, delta in deliveries(streams, random.Random(5)):
        core.offer(0, delta, wall_s=0.0)
        result = core.release(0, wall_s=0.0)
        spent |= result.spent
        closed += result.closed
    items = [i for items in streams.values() for i in items if i.audit is None]
    hour = 3_600_000_000
    assert spent == {
        (i.tenant_id, i.agent_id, i.time_us - i.time_us % hour) for i in items if i.cost_micros
    }
    ended = sorted((i.tenant_id, i.agent_id, i.session_id) for i in items if i.ended)
    assert ended  # not vacuous
    assert sorted(closed) == ended


def test_slo_verdicts_reach_the_fleet_partition_and_alert_the_same_whatever_the_interleaving() -> (
    None
):
    from streams.pipeline.slo import Slo

    availability = Slo(name="availability", objective=0.999)
    streams = source_streams()
    # every third session errs: the fast burn fires on this fleet
    for source, items in streams.items():
        streams[source] = [
            ScopeItem(
                i.order_us, i.source, i.offset, i.index, i.time_us, i.tenant_id, i.agent_id,
                i.session_id, kind="SLO", name="availability",
                status="BAD" if zlib.crc32(i.session_id.encode()) % 3 == 0 else "GOOD",
            )
            if i.kind == "SESSION_END"
            else i
            for i in items
        ]  # fmt: skip
        streams[source] += [
            ScopeItem(
                i.order_us, i.source, i.offset, i.index + 50, i.time_us, "*", "", i.session_id,
                kind="SLO", name="availability", status=i.status,
            )
            for i in streams[source]
            if i.kind == "SLO"
        ]  # fmt: skip
        streams[source].sort(key=lambda i: i.key)

    def alerts(seed: int) -> list[tuple[str, str, int]]:
        core = ScopeCore(policy_set([]), SOURCES, partitions=2)
        core.slos = [availability]
        fired = []
        for _source, delta in deliveries(streams, random.Random(seed)):
            for partition in range(2):
                mine = tuple(i for i in delta.items if scope_partition(i.tenant_id, 2) == partition)
                core.offer(partition, ScopeDelta(delta.source, delta.mark, mine), wall_s=0.0)
                result = core.release(partition, wall_s=0.0)
                assert not result.alerts or partition == core.fleet_partition
                fired += [(a["alert_id"], a["state"], a["event_time_us"]) for a in result.alerts]
        # a session ends two minutes later: the burst's minute is complete
        later = T0_US + 120_000_000
        verdict = ScopeItem(
            END_OF_TIME - 1, 0, 10**9, 0, later, "*", "", "late", kind="SLO", name="availability"
        )
        delta = ScopeDelta(0, SourceMark(END_OF_TIME, True), (verdict,))
        core.offer(core.fleet_partition, delta, 0.0)
        result = core.release(core.fleet_partition, wall_s=0.0)
        fired += [(a["alert_id"], a["state"], a["event_time_us"]) for a in result.alerts]
        return fired

    reference = alerts(0)
    assert ("slo:availability:fast", "FIRING") in {(a, s) for a, s, _ in reference}
    assert alerts(5) == reference


def test_held_items_are_checkpointed_in_chunks_and_shrink_with_tombstones() -> None:
    from streams.pipeline.scope import PENDING_CHUNK

    core = ScopeCore(policy_set(), 2, grace_s=0.0)
    items = tuple(
        ScopeItem(1000 + n, 0, n, 0, 1000 + n, "acme", "bot", f"s{n}", f"e{n}", "LLM_CALL")
        for n in range(2 * PENDING_CHUNK + 5)
    )
    core.offer(0, ScopeDelta(0, SourceMark(items[-1].order_us, False), items), wall_s=0.0)
    state = core.state(0)
    records = [r for r in checkpoint_records(state) if r[0].startswith(b"pending|")]
    assert len(records) == 3
    assert all(value is not None and len(value) < 900_000 for _, value in records)
    restored = ScopeState(0)
    for key, value in records:
        restore_record(restored, key, value, wall_s=0.0)
    finish_restore(restored, wall_s=0.0)
    assert [e[3] for e in sorted(restored.held)] == list(items)
    # source 1 catches up: all but a few are released, two chunks are deleted
    core.offer(0, ScopeDelta(1, SourceMark(items[-5].order_us, False), ()), wall_s=0.0)
    assert core.release(0, wall_s=0.0).released == len(items) - 5
    shrunk = [r for r in checkpoint_records(state) if r[0].startswith(b"pending|")]
    assert [value is None for _, value in shrunk] == [False, True, True]


TREE_POLICY = [
    {"id": "tree-budget", "kind": "budget", "scope": "session_tree", "limit_usd": 0.01,
     "warn_at": 0.5},
]  # fmt: skip


def test_a_session_tree_budget_stops_every_open_session_of_the_tree() -> None:
    """An orchestrator and its sub-agents (on different source partitions) share one budget:
    past it, every open member is killed, a member that joins later at its first priced step,
    and a tree is forgotten with its last session; the trees survive a checkpoint."""
    core = ScopeCore(policy_set(TREE_POLICY), 1)
    at = iter(range(1, 1000))

    def item(session: str, kind: str, cost: int = 0, parent: str | None = None) -> ScopeItem:
        n = next(at)
        return ScopeItem(
            T0_US + n, 0, n, 0, T0_US + n, "acme", "bot", session, f"e{n}", kind,
            cost_micros=cost, started=kind == "SESSION_START", ended=kind == "SESSION_END",
            parent_session_id=parent,
        )  # fmt: skip

    def run(*items: ScopeItem) -> list[tuple[str, str]]:
        core.offer(0, ScopeDelta(0, SourceMark(T0_US + 10_000, True), items), wall_s=0.0)
        result = core.release(0, wall_s=100.0)
        return [(d.outcome.target, d.outcome.action) for d in result.decisions]

    assert (
        run(
            item("root", "SESSION_START"),
            item("child", "SESSION_START", parent="root"),
            item("grandchild", "SESSION_START", parent="child"),
            item("other", "SESSION_START"),  # a tree of its own
            item("root", "LLM_CALL", 3_000),
            item("grandchild", "LLM_CALL", 1_000),
        )
        == []
    )
    warned = run(item("child", "LLM_CALL", 1_500))  # 5,500 of 10,000: half the budget
    assert sorted(warned) == [(f"session:{s}", "WARN") for s in ("child", "grandchild", "root")]
    assert run(item("grandchild", "SESSION_END")) == []
    state = core.partitions[0]
    assert state.trees["root"].open == {"root", "child"}
    records = checkpoint_records(state)
    restored = ScopeState(0)
    for key, value in records:
        restore_record(restored, key, value, wall_s=0.0)
    finish_restore(restored, wall_s=0.0)
    assert (restored.trees, restored.tree_of) == (state.trees, state.tree_of)
    killed = run(item("other", "LLM_CALL", 9_000), item("child", "LLM_CALL", 5_000))
    # "other" is a tree of its own: 9,000 of its 10,000 is only a warning
    assert sorted(killed) == [
        ("session:child", "KILL"), ("session:other", "WARN"), ("session:root", "KILL")
    ]  # fmt: skip
    late = run(item("late", "SESSION_START", parent="child"), item("late", "LLM_CALL", 1))
    assert late == [("session:late", "KILL")]
    assert run(*(item(s, "SESSION_END") for s in ("late", "child", "root", "other"))) == []
    assert (state.trees, state.tree_of) == ({}, {})
