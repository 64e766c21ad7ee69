"""The engine: aggregates, escalation, idle timeout, eviction, checkpoint/restore."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streams.demo import demo_sessions
from streams.engine import Engine, PartitionState, checkpoint_records, restore_record
from streams.pipeline.aggregates import DAY_US, HOUR_US, agent_scope, bucket_start, tenant_scope
from streams.pipeline.policy import PolicyFile, PolicySet
from streams.pipeline.pricing import load_prices
from tests.unit.pipeline.test_accounting import T0, ev

PRICES = load_prices(Path(__file__).resolve().parents[2] / "policies" / "prices.yaml")


def engine(*policies: dict[str, Any], **kwargs: Any) -> Engine:
    ps = PolicySet.build([PolicyFile.model_validate({"version": 2, "policies": list(policies)})])
    return Engine(PRICES, ps, **kwargs)


def test_buckets_and_histograms_add_up_to_the_sessions() -> None:
    eng = engine()
    events = list(demo_sessions(200, seed=4))
    result = eng.process(0, events)
    part = eng.partitions[0]
    assert result.applied == len(events)
    assert len(result.summaries) == 200
    total = sum(s.cost_micros for s in part.sessions.values())
    tenants = {s.tenant_id for s in part.sessions.values()}
    daily = sum(
        t.cost_micros
        for (scope, size, _), t in part.buckets.items()
        if size == DAY_US and scope in {tenant_scope(x) for x in tenants}
    )
    hourly = sum(
        t.cost_micros
        for (scope, size, _), t in part.buckets.items()
        if size == HOUR_US and scope.startswith("agent:")
    )
    assert daily == hourly == total
    steps = sum(h.count for k, h in part.histograms.items() if k[1] in ("LLM_CALL", "TOOL_CALL"))
    assert steps == sum(e["kind"] in ("LLM_CALL", "TOOL_CALL") for e in events)
    assert sum(h.count for k, h in part.histograms.items() if k[1] == "SESSION") == 200
    assert all(v == 0 for v in part.active.values())


def test_escalation_is_published_once_per_level_with_deterministic_epochs() -> None:
    policy = {"id": "b", "kind": "budget", "scope": "session", "limit_usd": 0.001, "warn_at": 0.5}
    events = [
        ev(1, "SESSION_START"),
        *(ev(n, "LLM_CALL", model="gpt-4o", cost_micros=400) for n in range(2, 8)),
    ]
    first = engine(policy).process(0, events)
    again = engine(policy).process(0, events)
    assert [(d.outcome.action, d.epoch) for d in first.decisions] == [
        (d.outcome.action, d.epoch) for d in again.decisions
    ]
    assert [d.outcome.action for d in first.decisions] == ["WARN", "KILL"]
    assert first.decisions[1].trigger_event_id == "e4"  # 1200 micro-USD > 1000


def test_agent_spend_is_summed_over_the_window_across_partitions() -> None:
    eng = engine(
        {
            "id": "a",
            "kind": "budget",
            "scope": "agent",
            "window": "1h",
            "limit_usd": 0.001,
            "warn_at": None,
        }
    )
    eng.process(0, [ev(1, "LLM_CALL", model="gpt-4o", cost_micros=600)])
    other = [{**ev(1, "LLM_CALL", model="gpt-4o", cost_micros=600), "session_id": "s2"}]
    result = eng.process(1, other)
    assert eng.spend(agent_scope("acme", "bot"), 3600) == 1200
    assert [(d.outcome.target, d.outcome.action) for d in result.decisions] == [
        ("agent:acme/bot", "KILL")
    ]


def test_silent_sessions_time_out_and_finished_ones_are_evicted_but_remembered() -> None:
    eng = engine(idle_timeout_s=60, finished_retention_s=120)
    eng.process(0, [ev(1, "SESSION_START"), ev(2, "LLM_CALL", model="gpt-4o", cost_micros=5)])
    later = {**ev(1, "SESSION_START"), "session_id": "s2", "start_time_us": T0 + 100_000_000}
    eng.process(0, [later])
    result = eng.tick(0)
    assert [s["status"] for s in result.summaries] == ["TIMEOUT"]
    part = eng.partitions[0]
    assert part.active[tenant_scope("acme")] == 1  # s2 is still open
    part.watermark_us += 300_000_000
    eng.tick(0)
    assert "s1" not in part.sessions
    assert part.closed["s1"][0] == 2
    late = eng.process(0, [ev(2, "LLM_CALL", model="gpt-4o", cost_micros=5)])
    assert (late.duplicates, late.applied) == (1, 0)


def test_scope_items_are_merged_on_the_watermark_and_a_timeout_sits_at_its_deadline() -> None:
    """For the scope stage: an event later than its partition's latest is placed at the
    watermark (keys only grow along a partition); a session closed for silence is placed at
    its deadline, the same whenever the tick ran, and the partition's next deadline is what
    the stage-1 runner holds the watermark it reports below."""

    def timeouts(tick_every: int) -> tuple[list[tuple[int, int, int, int]], Engine]:
        eng = engine(idle_timeout_s=60, local_scope=False)
        keys = []
        eng.process(0, [ev(1, "SESSION_START"), ev(2, "LLM_CALL", model="gpt-4o")])
        for n in range(1, 40):
            # another session's events move the watermark on, 10 s each
            other = {**ev(n, "SESSION_START" if n == 1 else "TOOL_CALL"), "session_id": "s2"}
            other["start_time_us"] = T0 + n * 10_000_000
            result = eng.process(0, [other], [n])
            keys += [i.key for i in result.scope_items]
            if n % tick_every == 0:
                keys += [i.key for i in eng.tick(0).scope_items if i.kind == "TIMEOUT"]
        return keys, eng

    often, eng = timeouts(1)
    rarely, _ = timeouts(13)
    deadline = T0 + 2_000_000 + 60_000_000
    assert [k for k in often if k[0] == deadline] == [k for k in rarely if k[0] == deadline]
    assert len([k for k in often if k[0] == deadline]) == 1
    assert sorted(often) == sorted(rarely)
    # s2 is open: its deadline is the partition's next one
    assert eng.next_timeout_us(0) == T0 + 39 * 10_000_000 + 60_000_000
    # out of time order: merged at the watermark, not before what was read already
    late = {**ev(1, "SESSION_START"), "session_id": "s3", "start_time_us": T0 + 3_000_000}
    items = eng.process(0, [late], [99]).scope_items
    assert [i.key[0] for i in items] == [eng.partitions[0].watermark_us]
    assert items[0].time_us == T0 + 3_000_000


def test_checkpoint_records_restore_the_same_state() -> None:
    eng = engine({"id": "b", "kind": "budget", "scope": "session", "limit_usd": 0.001})
    eng.process(3, list(demo_sessions(50, seed=9)))
    eng.process(3, [ev(1, "SESSION_START"), ev(2, "LLM_CALL", model="gpt-4o", cost_micros=5000)])
    original = eng.partitions[3]
    restored = PartitionState(3)
    for key, value in checkpoint_records(original):
        restore_record(restored, key, value)
    assert restored.sessions == original.sessions
    assert restored.buckets == original.buckets
    assert restored.histograms == original.histograms
    assert restored.enforced == original.enforced
    assert restored.active == original.active
    assert restored.watermark_us == original.watermark_us
    assert checkpoint_records(original) == [(b"w|", str(original.watermark_us).encode())]


def test_hour_buckets_follow_event_time() -> None:
    eng = engine()
    eng.process(0, [ev(1, "LLM_CALL", model="gpt-4o", cost_micros=7)])
    hour = bucket_start(T0 + 1_000_000, HOUR_US)
    assert eng.partitions[0].buckets[(agent_scope("acme", "bot"), HOUR_US, hour)].cost_micros == 7


# --- refusals that need the session's state ---------------------------------------------


def test_an_event_after_its_session_ended_is_refused_and_changes_nothing() -> None:
    eng = engine()
    ended = [ev(1, "SESSION_START"), ev(2, "SESSION_END")]
    eng.process(0, ended)
    part = eng.partitions[0]
    before = checkpoint_records(PartitionState(0, sessions=dict(part.sessions)))
    late = ev(3, "LLM_CALL", model="gpt-4o", cost_micros=1000)
    result = eng.process(0, [late])
    assert [(i, r.reason) for i, r in result.rejected] == [(0, "after_session_end")]
    assert result.applied == 0
    assert part.sessions["s1"].cost_micros == 0
    assert checkpoint_records(PartitionState(0, sessions=dict(part.sessions))) == before
    # a redelivered event of the session is a duplicate, not a bad record
    assert eng.process(0, [ended[1]]).duplicates == 1


def test_an_event_after_an_evicted_session_is_refused() -> None:
    eng = engine(finished_retention_s=60)
    eng.process(0, [ev(1, "SESSION_START"), ev(2, "SESSION_END")])
    far = ev(1, "SESSION_START") | {"session_id": "other", "start_time_us": T0 + 3600_000_000}
    eng.process(0, [far])
    eng.tick(0)
    assert "s1" not in eng.partitions[0].sessions
    result = eng.process(0, [ev(3, "TOOL_CALL", tool_name="x")])
    assert [r.reason for _, r in result.rejected] == ["after_session_end"]


def test_a_session_closed_for_silence_may_speak_again() -> None:
    eng = engine(idle_timeout_s=60)
    eng.process(0, [ev(1, "SESSION_START")])
    eng.process(0, [ev(1, "SESSION_START") | {"session_id": "x", "start_time_us": T0 + 10**9}])
    eng.tick(0)
    assert eng.partitions[0].sessions["s1"].status == "TIMEOUT"
    result = eng.process(0, [ev(5, "TOOL_CALL", tool_name="x")])
    assert not result.rejected
    assert result.applied == 1


def test_an_event_id_reused_with_another_seq_is_refused() -> None:
    eng = engine()
    eng.process(0, [ev(1, "SESSION_START"), ev(2, "TOOL_CALL", tool_name="x")])
    reused = ev(3, "TOOL_CALL", tool_name="x") | {"event_id": "e1"}
    result = eng.process(0, [reused])
    assert [r.reason for _, r in result.rejected] == ["event_id_reused"]
    assert eng.partitions[0].sessions["s1"].last_seq == 2
    # the digests survive a checkpoint
    restored = PartitionState(0)
    for key, value in checkpoint_records(eng.partitions[0]):
        restore_record(restored, key, value)
    eng2 = engine()
    eng2.assign(restored)
    assert [r.reason for _, r in eng2.process(0, [reused]).rejected] == ["event_id_reused"]


# --- bounded state and checkpointed rates -----------------------------------------------


def test_enforced_decisions_are_pruned_by_the_watermark_so_the_next_window_decides_again() -> None:
    policy = {
        "id": "agent-budget",
        "kind": "budget",
        "scope": "agent",
        "window": "1h",
        "limit_usd": 0.001,
    }
    eng = engine(policy)

    def spend(session: str, at_us: int) -> list[str]:
        events = [
            ev(1, "SESSION_START") | {"session_id": session, "start_time_us": at_us},
            ev(2, "LLM_CALL", model="gpt-4o", cost_micros=5000)
            | {"session_id": session, "start_time_us": at_us + 1},
        ]
        return [d.outcome.action for d in eng.process(0, events).decisions]

    assert spend("a", T0) == ["KILL"]
    assert eng.partitions[0].enforced
    assert spend("b", T0 + 60_000_000) == []  # still in force: decided once
    later = T0 + 3 * 3600 * 10**6
    eng.process(0, [ev(1, "SESSION_START") | {"session_id": "c", "start_time_us": later}])
    eng.tick(0)
    assert not any(target.startswith("agent:") for _, target in eng.partitions[0].enforced)
    assert spend("d", later + 10) == ["KILL"]  # a new window breached: decided again


def test_step_rates_survive_a_checkpoint() -> None:
    policy = {"id": "rate", "kind": "step_rate", "scope": "agent", "window": "1m", "max_steps": 3}
    eng = engine(policy)
    steps = [ev(1, "SESSION_START")] + [
        ev(n, "TOOL_CALL", tool_name=f"t{n}") | {"start_time_us": T0 + n} for n in range(2, 5)
    ]
    assert not eng.process(0, steps).decisions
    restored = PartitionState(0)
    for key, value in checkpoint_records(eng.partitions[0]):
        restore_record(restored, key, value)
    again = engine(policy)
    again.assign(restored)
    more = [ev(5, "TOOL_CALL", tool_name="t5") | {"start_time_us": T0 + 5}]
    assert [d.outcome.policy_id for d in again.process(0, more).decisions] == ["rate"]


def test_the_kept_rate_minutes_cover_the_longest_rate_window_a_policy_may_use() -> None:
    from streams.engine import RATE_HORIZON_US
    from streams.pipeline.accounting import STEP_MINUTES_KEPT
    from streams.pipeline.policy import MAX_RATE_WINDOW_S

    assert STEP_MINUTES_KEPT * 60 >= MAX_RATE_WINDOW_S
    assert RATE_HORIZON_US >= MAX_RATE_WINDOW_S * 1_000_000
