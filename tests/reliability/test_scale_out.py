"""Scale-out (issue 12) on the real stack: N workers of one deployment give the results of one.

- 3 workers on 6 partitions and 1 worker over the same pre-filled events: equal session totals
  and the same tenant/agent-scoped decisions (ids, targets, actions and trigger events);
- one of 3 workers killed with SIGKILL five times mid-stream (each replaced): the totals equal
  a recomputation from the raw events topic, every tenant's audit chain verifies intact and no
  decision of a 1-worker reference is missing;
- 1 -> 3 -> 1 workers during a stream: nothing lost, nothing counted twice;
- a tenant budget shared by sessions on every partition fires once, with 3 workers, at the
  event where the tenant's spend first exceeds it in event-time order.

The 1-worker reference and the 3-worker run over pre-filled events are module fixtures (they
run side by side, once); the helpers are in :mod:`tests.reliability.scale`. The fleet is small
(300 sessions, ~4 k events, one day of event time) and its policies fire often, so each
comparison covers some hundred decisions of every scoped kind. Decisions are compared in three
groups, so that a failure says what moved: the session-scoped ones, the long-window budgets
(nothing of theirs lapses: the order of the tenant-keyed merge alone decides them), then every
tenant/agent-scoped one. The streams with faults in them are paced by the faults (each kill or
scale change lands while records flow, however long a worker takes to start).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from streams.codec import Codecs
from streams.pipeline.pricing import PriceTable, load_prices
from streams.settings import Settings
from tests.reliability.faults import COMPARED, REPO, plan_events
from tests.reliability.scale import (
    LONG_WINDOW,
    Crossing,
    PolicyIds,
    Pump,
    ScaleOutcome,
    TenantBudget,
    Workers,
    crossing,
    decision_differences,
    fill,
    has_members,
    isolated,
    policy_ids,
    scale_settings,
    scoped_policies,
    settle,
    summary_differences,
    tenant_budget_for,
    wait_for_members,
)

SESSIONS = 300
SEED = 11
PARTITIONS = 6
BUDGET_TENANT = "acme"
#: kill -9 this many times during one stream (the issue's figure)
KILLS = 5
#: events/s of a stream with faults in it (the fleet takes ~20 s when nothing waits)
RATE = 200.0
#: what two runs' summaries of a session must agree on
SUMMARY_FIELDS = (*COMPARED, "status", "last_seq", "end_time_us")


@dataclass(frozen=True)
class Fleet:
    """The suite's one fleet (every run produces exactly these events) and its policies."""

    events: list[dict[str, Any]]
    prices: PriceTable
    codecs: Codecs
    budget: TenantBudget
    crossing: Crossing
    policies: str


@dataclass(frozen=True)
class Prefilled:
    reference: ScaleOutcome
    three: ScaleOutcome
    policies: PolicyIds


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    prices = load_prices(REPO / "policies" / "prices.yaml")
    events = plan_events(prices, SESSIONS, seed=SEED, days=1.0)
    budget, crossed = tenant_budget_for(events, BUDGET_TENANT, prices)
    policies = scoped_policies() + budget.policy()
    return Fleet(events, prices, Codecs.load(Settings().schemas_dir), budget, crossed, policies)


@pytest.fixture(scope="module")
def prefilled(
    stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory, fleet: Fleet
) -> Prefilled:
    """One worker and three workers (two deployments) over one events topic, filled once every
    worker is in its group (filled earlier, the first worker to join would take it all)."""
    folder = tmp_path_factory.mktemp("prefilled")
    three = scale_settings(isolated(stack_settings, "three", PARTITIONS), folder / "three",
                           fleet.policies)  # fmt: skip
    one = scale_settings(isolated(stack_settings, "one", PARTITIONS), folder / "one",
                         fleet.policies, events_topic=three.topic("events"))  # fmt: skip
    started = time.monotonic()
    with Workers(three, folder / "three") as threes, Workers(one, folder / "one") as ones:
        for future in [*threes.spawn(3), *ones.spawn(1)]:
            future.result()
        wait_for_members(three, 3)
        wait_for_members(one, 1)
        ready_s = time.monotonic() - started
        fill_s = fill(three, fleet.codecs, fleet.events)
        out_three = settle(three, fleet.codecs, threes)
        out_one = settle(one, fleet.codecs, ones)
        for workers in (threes, ones):
            assert len(workers.live) == len(workers.started), workers.logs()
    steps = ("caught_up_s", "summaries_s", "scope_s", "settled_s")
    print(
        f"\n[prefilled] {len(fleet.events)} events: workers ready {ready_s:.1f}s, filled in "
        f"{fill_s:.1f}s; 3 workers caught up, summaries, scope stage, settled at "
        f"{[round(out_three.notes[k], 1) for k in steps]}s, 1 worker "
        f"{[round(out_one.notes[k], 1) for k in steps]}s later; {len(out_one.keys())} decisions"
    )
    return Prefilled(out_one, out_three, policy_ids(three.policies_dir))


def assert_exact(outcome: ScaleOutcome, prices: PriceTable, name: str) -> None:
    problems = outcome.total_problems(prices)
    assert not problems, f"{name}: {len(problems)} totals differ from the raw topic: {problems[:8]}"


def assert_same_decisions(reference: ScaleOutcome, got: ScaleOutcome, policies: PolicyIds) -> None:
    """The same decisions of the policy files (the PII agent's KILLs aside), by id, target,
    action and trigger event: session-scoped; the long-window budgets (the tenant-keyed merge's
    order alone decides them); then every tenant/agent-scoped one."""
    for name, ids in (
        ("session-scoped", policies.session),
        ("long-window budget", LONG_WINDOW),
        ("tenant/agent-scoped", policies.scoped),
    ):
        differences = decision_differences(reference.keys(ids), got.keys(ids))
        by_policy = Counter(d.policy_id for d in reference.decisions if d.policy_id in ids)
        assert not differences, f"{name} decisions (reference: {dict(by_policy)}): {differences}"


def assert_chains_intact(outcome: ScaleOutcome, policies: PolicyIds) -> None:
    breaks = outcome.audit_breaks()
    described = {t: [f"{b.chain_seq}@{b.offset}: {b.problem}" for b in found[:3]]
                 for t, found in breaks.items()}  # fmt: skip
    assert not breaks, f"audit chains broken ({outcome.audit.records} records): {described}"
    unaudited = sorted(
        {(d.policy_id, d.target, d.decision_id) for d in outcome.unaudited(policies.all)}
    )
    assert not unaudited, f"{len(unaudited)} decisions not in the audit trail: {unaudited[:5]}"


def test_three_workers_give_the_totals_and_decisions_of_one(
    fleet: Fleet, prefilled: Prefilled
) -> None:
    """3 workers on 6 partitions and 1 worker over the same pre-filled events: every session's
    totals equal (and equal the raw topic's), and the same tenant/agent decisions, by id,
    target, action and trigger event."""
    one, three = prefilled.reference, prefilled.three
    assert_exact(one, fleet.prices, "1 worker")
    assert_exact(three, fleet.prices, "3 workers")
    differences = summary_differences(one.latest_summaries(), three.latest_summaries(),
                                      SUMMARY_FIELDS)  # fmt: skip
    assert not differences, f"{len(differences)} session totals differ: {differences[:8]}"
    scoped = prefilled.policies.scoped
    fired = Counter(d.policy_id for d in one.decisions if d.policy_id in scoped)
    # the comparison means something: every scoped policy decided in the reference
    assert set(fired) == scoped, fired
    print(f"\n[1 vs 3] scoped decisions of the reference: {dict(fired)}")
    assert_same_decisions(one, three, prefilled.policies)


def test_a_tenant_budget_on_every_partition_fires_once_at_its_crossing(
    fleet: Fleet, prefilled: Prefilled
) -> None:
    """A tenant budget summed over sessions on all six partitions, 3 workers: one KILL for the
    tenant, triggered by the event at which the tenant's spend, in event-time order, first
    exceeds the limit (computed from the raw events topic)."""
    run, budget = prefilled.three, fleet.budget
    found = crossing(run.good_events, budget.tenant_id, budget.limit_micros, fleet.prices)
    assert found == fleet.crossing, (found, fleet.crossing)  # the raw topic holds the fleet
    before = {r.partition for r in run.events
              if r.event["tenant_id"] == budget.tenant_id
              and int(r.event["start_time_us"]) <= found.start_time_us}  # fmt: skip
    assert before == set(range(PARTITIONS)), f"the spend came from partitions {before} only"
    kills = {d.decision_id: d for d in run.decisions if d.policy_id == budget.policy_id}
    assert len(kills) == 1, f"{len(kills)} decisions by {budget.policy_id}: {list(kills.values())}"
    [kill] = kills.values()
    assert (kill.target, kill.action) == (budget.target, "KILL"), kill
    print(f"\n[tenant budget] limit ${budget.limit_micros / 1e6:.6f} crossed at {found}; "
          f"the KILL names {kill.trigger_event_id} at {kill.issued_at_us}")  # fmt: skip
    # the tenant-keyed stage merges its sources in event-time order: the crossing is a function
    # of the events alone (the fleet's crossing has a start time no other priced event of the
    # tenant shares, so no tie-break can move it)
    assert (kill.trigger_event_id, kill.issued_at_us) == (found.event_id, found.start_time_us)


@pytest.mark.long
def test_killing_a_worker_five_times_mid_stream(
    stack_settings: Settings, tmp_path: Path, fleet: Fleet, prefilled: Prefilled
) -> None:
    """3 workers; five times, while the fleet flows, the oldest worker that has its partitions
    gets SIGKILL and a replacement is started: the totals equal a recomputation from the events
    topic, every tenant's audit chain verifies intact, and the decisions are the 1-worker
    reference's (none missing, none besides)."""
    settings = scale_settings(isolated(stack_settings, "kill", PARTITIONS), tmp_path,
                              fleet.policies)  # fmt: skip
    pump = Pump(settings, fleet.codecs, fleet.events, RATE)
    part = len(pump) // (KILLS + 2)
    #: (seconds into the stream, records produced, records still to come) at each kill
    kills: list[tuple[float, int, int]] = []
    with Workers(settings, tmp_path) as workers:
        workers.start(3)
        wait_for_members(settings, 3)
        pump.start()
        started = time.monotonic()
        replacements = []
        try:
            pump.wait_sent(part)
            for n in range(KILLS):
                # the oldest ready worker dies: the three first ones, then the first
                # replacements, which may still be starting (the fleet flows meanwhile)
                pump.flow_while(lambda: not workers.ready(), (n + 1) * part, 180)
                pump.wait_sent((n + 1) * part + part // 3)  # it is folding the next part ...
                pump.allow((n + 2) * part)  # ... and more is coming
                workers.kill(workers.ready()[0])
                kills.append((time.monotonic() - started, pump.sent, len(pump) - pump.sent))
                replacements.extend(workers.spawn(1))
            pump.close()
        finally:
            pump.abort()
        for future in replacements:
            future.result()
        outcome = settle(settings, fleet.codecs, workers, timeout_s=150)
        live = len(workers.live)
        logs = workers.logs()
    notes = outcome.notes
    print(
        f"\n[kill -9] {len(pump)} events; kills (s, produced, to come): "
        f"{[(round(t, 1), a, b) for t, a, b in kills]}; caught up {notes['caught_up_s']:.1f}s, "
        f"settled {notes['settled_s']:.1f}s after the stream; "
        f"{len(outcome.repeated_decisions())} decisions re-published, {outcome.forced:.0f} "
        "scope items released without waiting for a silent source (live workers)"
    )
    assert len(kills) == KILLS, kills
    assert all(to_come > 0 for _, _, to_come in kills), f"a kill after the stream: {kills}"
    assert live == 3, f"{live} workers left running\n{logs}"
    assert "FATAL" not in logs, logs
    assert_exact(outcome, fleet.prices, "killed workers")
    assert_chains_intact(outcome, prefilled.policies)
    assert_same_decisions(prefilled.reference, outcome, prefilled.policies)


@pytest.mark.long
def test_scaling_one_three_one_during_a_stream(
    stack_settings: Settings, tmp_path: Path, fleet: Fleet, prefilled: Prefilled
) -> None:
    """1 worker, then 3 (two join while the fleet flows), then 1 (two leave gracefully, the
    first among them, while it flows): nothing lost, nothing counted twice (one summary per
    session, no decision published twice), the reference's decisions, intact audit chains."""
    settings = scale_settings(isolated(stack_settings, "scale", PARTITIONS), tmp_path,
                              fleet.policies)  # fmt: skip
    pump = Pump(settings, fleet.codecs, fleet.events, RATE)
    part = len(pump) // 5
    #: records produced when the group had 3 members, then 1 again
    marks: dict[str, int] = {}
    with Workers(settings, tmp_path) as workers:
        [first] = workers.start(1)
        wait_for_members(settings, 1)
        pump.start()
        try:
            pump.wait_sent(part // 2)
            joining = workers.spawn(2)
            pump.flow_while(lambda: not all(f.done() for f in joining), 2 * part, 180)
            added = [f.result() for f in joining]
            pump.flow_while(lambda: not has_members(settings, 3), 2 * part, 60)
            marks["three"] = pump.sent
            pump.wait_sent(2 * part + part // 3)
            pump.allow(3 * part)
            workers.stop([first, added[0]])
            pump.flow_while(lambda: not has_members(settings, 1), 4 * part, 60)
            marks["one"] = pump.sent
            pump.close()
        finally:
            pump.abort()
        outcome = settle(settings, fleet.codecs, workers, timeout_s=120)
        logs = workers.logs()
    print(
        f"\n[1 -> 3 -> 1] of {len(pump)} events, {marks['three']} were produced when 3 workers "
        f"had the partitions, {marks['one']} when 1 had them again; settled "
        f"{outcome.notes['settled_s']:.1f}s after the stream; {outcome.forced:.0f} scope items "
        "released without waiting for a silent source"
    )
    assert marks["one"] < len(pump), f"the fleet was produced before the scale-down: {marks}"
    assert "FATAL" not in logs, logs
    assert_exact(outcome, fleet.prices, "1 -> 3 -> 1")
    repeated = outcome.repeated_decisions()
    assert not repeated, (
        f"{len(repeated)} decisions published twice: {sorted(repeated.items())[:5]}"
    )
    assert_chains_intact(outcome, prefilled.policies)
    assert_same_decisions(prefilled.reference, outcome, prefilled.policies)


pytestmark = pytest.mark.timeout(400)
