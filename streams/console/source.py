"""Where the console's figures come from: the same calls as ``governor ask ... --json`` (I/O
at this edge; the rest of the console is pure)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypedDict

from streams.query.answers import Answers
from streams.query.readmodel import SessionReadModel
from streams.query.session_records import session_timeline
from streams.query.timeline import Timeline
from streams.redis_client import redis_client
from streams.settings import Settings

#: the statuses a session ends with (the read-model's outcome counters)
OUTCOMES = ("OK", "ERROR", "TIMEOUT", "KILLED")


class Overview(TypedDict):
    """The overview's JSON twin: each part is what ``governor ask <part> --json`` prints
    (``slo`` None when no worker answers, as ``ask slo`` then fails)."""

    outcomes: dict[str, Any]
    latency: dict[str, Any]
    cost: dict[str, Any]
    slo: dict[str, Any] | None


@dataclass(frozen=True)
class SessionFilter:
    """What the sessions page narrows the top sessions by cost to (None: any)."""

    tenant: str | None = None
    agent: str | None = None
    outcome: str | None = None

    def __post_init__(self) -> None:
        if self.outcome is not None and self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, not {self.outcome!r}")

    def keeps(self, row: dict[str, Any]) -> bool:
        return (
            (self.tenant is None or row["tenant_id"] == self.tenant)
            and (self.agent is None or row["agent_id"] == self.agent)
            and (self.outcome is None or row.get("outcome") == self.outcome)
        )


def filter_sessions(
    top_cost: dict[str, Any], outcomes: dict[str, str], chosen: SessionFilter
) -> list[dict[str, Any]]:
    """The rows of a ``top_cost`` answer, in its order, each with its session's ``outcome``
    (from its summary), that ``chosen`` keeps."""
    rows = [{**row, "outcome": outcomes.get(row["session_id"])} for row in top_cost["top"]]
    return [row for row in rows if chosen.keeps(row)]


@dataclass
class Source:
    """The console's one door to the read-model, the workers and Kafka."""

    settings: Settings
    #: one client (connection pool) for every request; connects on first use
    model: SessionReadModel = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.model = SessionReadModel(redis_client(self.settings), self.settings.redis_key_prefix)

    def answers(self) -> Answers:
        """Answers as of now (each request asks its own)."""
        return Answers(self.model)

    def outcomes(self, since: str = "24h") -> dict[str, Any]:
        """``governor ask outcomes --since S --json``."""
        return self.answers().outcomes(since=since)

    def cost(self) -> dict[str, Any]:
        """``governor ask cost --json``."""
        return self.answers().cost()

    def top_cost(self, pct: float = 1.0, since: str = "24h") -> dict[str, Any]:
        """``governor ask top-cost --pct P --since S --json``."""
        return self.answers().top_cost(pct=pct, since=since)

    def latency(self, window: str = "1h") -> dict[str, Any]:
        """``governor ask latency --window W --json``: the workers' answer (step latency
        added up over the group) or, with no worker, the read-model's."""
        from streams.query.latency import merge_step_latency
        from streams.worker import fetch_json
        from streams.workers import group_answers

        s = self.settings
        path = f"/ask/latency?window={window}"
        answer = fetch_json(f"http://{s.web_host}:{s.web_port}{path}", timeout_s=3)
        if answer is None:
            return self.answers().latency(window=window)
        group = [
            a for a in group_answers(s, path) if a.get("partitions") != answer.get("partitions")
        ]
        merged: dict[str, Any] = merge_step_latency([answer, *group])
        return merged

    def slo(self) -> dict[str, Any] | None:
        """``governor ask slo --json``; None when no worker answers."""
        from streams.worker import fetch_json
        from streams.workers import slo_from_group

        s = self.settings
        answer = fetch_json(f"http://{s.web_host}:{s.web_port}/ask/slo", timeout_s=3)
        if answer is not None and answer.get("held") is False:
            answer = slo_from_group(s) or answer
        return answer if isinstance(answer, dict) else None

    def overview(self, since: str = "24h", window: str = "1h") -> Overview:
        """The four answers, asked at once (the workers' latency answer is the slow one)."""
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="console-overview") as pool:
            outcomes = pool.submit(self.outcomes, since)
            latency = pool.submit(self.latency, window)
            cost = pool.submit(self.cost)
            slo = pool.submit(self.slo)
            return {
                "outcomes": outcomes.result(),
                "latency": latency.result(),
                "cost": cost.result(),
                "slo": slo.result(),
            }

    def sessions(
        self, chosen: SessionFilter, pct: float = 10.0, since: str = "24h"
    ) -> dict[str, Any]:
        """The top ``pct`` % sessions by cost (``ask top-cost``) that ``chosen`` keeps."""
        answer = self.top_cost(pct=pct, since=since)
        ids = [row["session_id"] for row in answer["top"]]
        outcomes = {sid: s["status"] for sid, s in self.answers().summaries(ids).items()}
        return {
            "since": since,
            "pct": pct,
            "ranked": answer["sessions"],
            # what the filters can choose from: the tenants and agents of the top sessions
            "tenants": sorted({row["tenant_id"] for row in answer["top"]}),
            "agents": sorted({row["agent_id"] for row in answer["top"]}),
            "filter": {"tenant": chosen.tenant, "agent": chosen.agent, "outcome": chosen.outcome},
            "sessions": filter_sessions(answer, outcomes, chosen),
        }

    def timeline(self, session_id: str) -> Timeline:
        """``governor incident timeline --session ID``: raises SessionNotFound."""
        return session_timeline(self.settings, session_id)

    def close(self) -> None:
        self.model.redis.close()
