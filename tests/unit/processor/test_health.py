"""Liveness and readiness from a snapshot of the worker's loops."""

from __future__ import annotations

import dataclasses

from streams.processor.health import (
    HealthBounds,
    LoopSnapshot,
    WorkerSnapshot,
    liveness,
    readiness,
)

BOUNDS = HealthBounds(stall_s=30, max_lag_events=1000)
GOOD = WorkerSnapshot(
    loops=(LoopSnapshot("accounting", True, 0.1), LoopSnapshot("decision-mirror", True, 0.5)),
    assigned_partitions=3,
    lag_events=10,
)


def failing(report: object) -> list[str]:
    return [c.name for c in report.checks if not c.ok]  # type: ignore[attr-defined]


def test_a_healthy_worker_is_live_and_ready() -> None:
    assert liveness(GOOD, BOUNDS).ok
    assert readiness(GOOD, BOUNDS).ok
    assert readiness(GOOD, BOUNDS).as_dict()["status"] == "ok"


def test_a_dead_or_stalled_loop_is_not_live() -> None:
    dead = dataclasses.replace(GOOD, loops=(LoopSnapshot("accounting", False, 0.1),))
    stalled = dataclasses.replace(GOOD, loops=(LoopSnapshot("accounting", True, 31),))
    restoring = dataclasses.replace(
        GOOD, loops=(LoopSnapshot("accounting", True, 90, "restoring"),)
    )
    assert failing(liveness(dead, BOUNDS)) == ["loop:accounting"]
    assert failing(liveness(stalled, BOUNDS)) == ["loop:accounting"]
    assert liveness(restoring, BOUNDS).ok
    assert not readiness(restoring, BOUNDS).ok


def test_degraded_governance_is_not_ready() -> None:
    cases = {
        "partitions": dataclasses.replace(GOOD, assigned_partitions=0),
        "lag": dataclasses.replace(GOOD, lag_events=1001),
        "redis": dataclasses.replace(GOOD, redis_ok=False, redis_detail="timeout"),
        "policies": dataclasses.replace(GOOD, policy_refused="governor.yaml:3: limit_usd"),
        "state:accounting": dataclasses.replace(
            GOOD, loops=(LoopSnapshot("accounting", True, 0.1, "recovering", "UNKNOWN_MEMBER"),)
        ),
    }
    for name, snapshot in cases.items():
        report = readiness(snapshot, BOUNDS)
        assert failing(report) == [name], name
        assert report.as_dict()["status"] == "degraded"
    unmeasured = dataclasses.replace(GOOD, lag_events=None)
    assert failing(readiness(unmeasured, BOUNDS)) == ["lag"]
    broken = dataclasses.replace(GOOD, lag_error="broker down")
    assert failing(readiness(broken, BOUNDS)) == ["lag"]


def test_a_worker_still_starting_is_live_but_not_ready() -> None:
    starting = dataclasses.replace(
        GOOD, loops=(LoopSnapshot("accounting", False, 5.0, "starting"),), assigned_partitions=0
    )
    assert liveness(starting, BOUNDS).ok
    assert failing(readiness(starting, BOUNDS)) == ["state:accounting", "partitions"]
