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
