"""Liveness and readiness of a worker, from a snapshot of its loops (pure, no I/O).

- **Live** (``/healthz``): every loop of the process is alive and came round recently. A dead or
  stuck loop is a reason to restart the process.
- **Ready** (``/readyz``): the worker governs as configured: partitions assigned and restored, no
  fault being recovered from, lag under its bound, Redis reachable (read-models and the decision
  mirror current), the policy files on disk in force.

Both answer ``{"status": "ok"|"degraded", "checks": [{"name", "ok", "detail"}]}``; the views
return 200 or 503.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class HealthReport:
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.ok else "degraded",
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }


@dataclass(frozen=True)
class LoopSnapshot:
    """One loop: the accounting thread, the decision mirror, a Faust agent."""

    name: str
    alive: bool
    #: seconds since it last came round
    idle_s: float
    state: str = "running"
    detail: str = ""


@dataclass(frozen=True)
class WorkerSnapshot:
    loops: tuple[LoopSnapshot, ...]
    assigned_partitions: int
    #: committed offsets behind the end, from the lag monitor (None: not measured yet)
    lag_events: int | None
    lag_error: str = ""
    redis_ok: bool = True
    redis_detail: str = ""
    policy_refused: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HealthBounds:
    stall_s: float
    max_lag_events: int


#: loop states in which a loop may sit still for a while without being stuck
_BUSY_STATES = ("restoring", "starting")


def liveness(snapshot: WorkerSnapshot, bounds: HealthBounds) -> HealthReport:
    checks = []
    for loop in snapshot.loops:
        if not loop.alive and loop.state != "starting":
            checks.append(Check(f"loop:{loop.name}", False, "not running"))
        elif loop.idle_s > bounds.stall_s and loop.state not in _BUSY_STATES:
            checks.append(
                Check(
                    f"loop:{loop.name}",
                    False,
                    f"stalled: last came round {loop.idle_s:.0f}s ago "
                    f"(bound {bounds.stall_s:.0f}s)",
                )
            )
        else:
            checks.append(
                Check(f"loop:{loop.name}", True, f"{loop.state}, came round {loop.idle_s:.1f}s ago")
            )
    return HealthReport(tuple(checks))


def readiness(snapshot: WorkerSnapshot, bounds: HealthBounds) -> HealthReport:
    checks: list[Check] = []
    for loop in snapshot.loops:
        running = loop.alive and loop.state == "running"
        detail = loop.state if not loop.detail else f"{loop.state}: {loop.detail}"
        checks.append(Check(f"state:{loop.name}", running, detail))
    checks.append(
        Check(
            "partitions",
            snapshot.assigned_partitions > 0,
            f"{snapshot.assigned_partitions} assigned and restored",
        )
    )
    checks.append(_lag(snapshot, bounds))
    checks.append(
        Check(
            "redis", snapshot.redis_ok, "reachable" if snapshot.redis_ok else snapshot.redis_detail
        )
    )
    checks.append(
        Check(
            "policies",
            not snapshot.policy_refused,
            "the files on disk are in force"
            if not snapshot.policy_refused
            else f"refused, the last good set stays in force: {snapshot.policy_refused}",
        )
    )
    return HealthReport(tuple(checks))


def _lag(snapshot: WorkerSnapshot, bounds: HealthBounds) -> Check:
    if snapshot.lag_error:
        return Check("lag", False, f"not measured: {snapshot.lag_error}")
    if snapshot.lag_events is None:
        return Check("lag", False, "not measured yet")
    ok = snapshot.lag_events <= bounds.max_lag_events
    return Check("lag", ok, f"{snapshot.lag_events} events behind (bound {bounds.max_lag_events})")
