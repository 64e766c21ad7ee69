"""Finding sessions in the read-model: every session that ended in a period, narrowed by
tenant, agent, outcome, cost and duration, most expensive first (the console's Sessions page).

The filters run over all the period's sessions (their compact summaries), not over a top-k, so
a tenant's cheap sessions are found as well as its dear ones. :func:`search` is pure; the I/O is
:meth:`Answers.ended` (the hourly cost sets and the summaries, the same reading as
``governor ask top-cost``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypedDict

from streams.query.answers import Answers, Period

#: the statuses a session ends with (the read-model's outcome counters)
OUTCOMES = ("OK", "ERROR", "TIMEOUT", "KILLED")


@dataclass(frozen=True)
class SessionQuery:
    """Which sessions to keep (None: any). Costs in USD, durations in seconds, both ends
    included."""

    tenant: str | None = None
    agent: str | None = None
    outcome: str | None = None
    min_cost_usd: float | None = None
    max_cost_usd: float | None = None
    min_duration_s: float | None = None
    max_duration_s: float | None = None

    def __post_init__(self) -> None:
        if self.outcome is not None and self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, not {self.outcome!r}")
        for low, high, what in (
            (self.min_cost_usd, self.max_cost_usd, "cost"),
            (self.min_duration_s, self.max_duration_s, "duration"),
        ):
            for value in (low, high):
                if value is not None and (not math.isfinite(value) or value < 0):
                    raise ValueError(f"{what}: {value} must be a number of at least 0")
            if low is not None and high is not None and low > high:
                raise ValueError(f"{what}: the least ({low}) is more than the most ({high})")

    def keeps(self, s: Mapping[str, Any]) -> bool:
        cost = s["cost_micros"] / 1e6
        duration = max(0, s["end_time_us"] - s["start_time_us"]) / 1e6
        return (
            (self.tenant is None or s["tenant_id"] == self.tenant)
            and (self.agent is None or s["agent_id"] == self.agent)
            and (self.outcome is None or s["status"] == self.outcome)
            and (self.min_cost_usd is None or cost >= self.min_cost_usd)
            and (self.max_cost_usd is None or cost <= self.max_cost_usd)
            and (self.min_duration_s is None or duration >= self.min_duration_s)
            and (self.max_duration_s is None or duration <= self.max_duration_s)
        )


class SessionRow(TypedDict):
    session_id: str
    tenant_id: str
    agent_id: str
    outcome: str
    cost_usd: float
    duration_ms: float
    start_time_us: int
    end_time_us: int
    steps: int
    retries: int
    max_context_tokens: int
    tool_cost_usd: float


def row(s: Mapping[str, Any]) -> SessionRow:
    llm_cost = sum(s["cost_by_model"].values())
    return {
        "session_id": s["session_id"],
        "tenant_id": s["tenant_id"],
        "agent_id": s["agent_id"],
        "outcome": s["status"],
        "cost_usd": s["cost_micros"] / 1e6,
        "duration_ms": max(0, s["end_time_us"] - s["start_time_us"]) / 1000,
        "start_time_us": s["start_time_us"],
        "end_time_us": s["end_time_us"],
        "steps": sum(s["steps_by_kind"].get(k, 0) for k in ("LLM_CALL", "TOOL_CALL")),
        "retries": s["retries"],
        "max_context_tokens": s["max_context_tokens"],
        "tool_cost_usd": (s["cost_micros"] - llm_cost) / 1e6,
    }


def search(
    summaries: Sequence[Mapping[str, Any]], query: SessionQuery, limit: int = 50, offset: int = 0
) -> dict[str, Any]:
    """The sessions ``query`` keeps, most expensive first (then by id), ``limit`` of them from
    ``offset``; with how many matched, and the tenants and agents there were to choose from."""
    if limit < 1 or offset < 0:
        raise ValueError("limit must be at least 1 and offset at least 0")
    kept = sorted(
        (s for s in summaries if query.keeps(s)), key=lambda s: (-s["cost_micros"], s["session_id"])
    )
    return {
        "query": asdict(query),
        "sessions_in_period": len(summaries),
        "matched": len(kept),
        "offset": offset,
        "limit": limit,
        "tenants": sorted({s["tenant_id"] for s in summaries}),
        "agents": sorted({s["agent_id"] for s in summaries}),
        "sessions": [row(s) for s in kept[offset : offset + limit]],
    }


def find_sessions(
    answers: Answers, period: Period, query: SessionQuery, limit: int = 50, offset: int = 0
) -> dict[str, Any]:
    """:func:`search` over every session that ended in ``period``."""
    found = search(answers.ended(period), query, limit, offset)
    return {"since_us": period.since_us, "until_us": period.until_us, **found}
