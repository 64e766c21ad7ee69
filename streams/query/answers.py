"""The operational answers from the sessions read-model (shared by the CLI and HTTP views).

Times are event time: a session belongs to the hour (and day, UTC) in which it ended. Counts
and costs are exact; percentiles come from fixed log-spaced histograms and are the upper bound
of the bucket holding them (within 19 %).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from streams.pipeline.aggregates import DAY_US, HOUR_US, LATENCY_BOUNDS_MS, quantile_from_counts
from streams.pipeline.policy import duration_s
from streams.query.readmodel import COST_BOUNDS_MICROS, SessionReadModel

Stats = defaultdict[str, float]


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class Period:
    since_us: int
    until_us: int

    @classmethod
    def last(cls, span: str, until_us: int) -> Period:
        return cls(until_us - int(duration_s(span) * 1_000_000), until_us)

    @classmethod
    def day(cls, day_start_us: int) -> Period:
        return cls(day_start_us, day_start_us + DAY_US - 1)

    def hours(self) -> list[int]:
        first = self.since_us - self.since_us % HOUR_US
        return list(range(first, self.until_us + 1, HOUR_US))


def _percentile(counts: Sequence[int], bounds: Sequence[float], q: float) -> float | None:
    if not sum(counts):
        return None
    if bounds is LATENCY_BOUNDS_MS:
        return quantile_from_counts(counts, q)
    total, rank, seen = sum(counts), max(1, math.ceil(q * sum(counts))), 0
    for i, n in enumerate(counts):
        seen += n
        if seen >= rank:
            return bounds[i] if i < len(bounds) else math.inf
    return math.inf if total else None


class Answers:
    def __init__(self, model: SessionReadModel, clock_us: int | None = None) -> None:
        self.model = model
        self.now_us = clock_us or now_us()

    # --- reading ---------------------------------------------------------------------------

    def stats(self, period: Period) -> Stats:
        pipe = self.model.redis.pipeline(transaction=False)
        for hour in period.hours():
            pipe.hgetall(self.model.key("stats", hour))
        total: Stats = defaultdict(float)
        for raw in pipe.execute():
            for field, value in raw.items():
                total[field.decode()] += float(value)
        return total

    def _histogram(self, stats: Stats, scope: str, kind: str, size: int) -> list[int]:
        counts = [0] * (size + 1)
        prefix = f"{scope}|{kind}|"
        for field, n in stats.items():
            if field.startswith(prefix):
                counts[int(field[len(prefix) :])] += int(n)
        return counts

    def _sessions(self, period: Period, kind: str) -> list[tuple[str, float]]:
        """(session id, score) of every session that ended in the period, from hourly sets."""
        pipe = self.model.redis.pipeline(transaction=False)
        for hour in period.hours():
            pipe.zrange(self.model.key(kind, hour), 0, -1, withscores=True)
        found = [(m.decode(), s) for rows in pipe.execute() for m, s in rows]
        if not found:
            return []
        summaries = self.summaries([sid for sid, _ in found])
        return [(sid, score) for sid, score in found
                if sid in summaries and period.since_us <= summaries[sid]["end_time_us"]
                <= period.until_us]  # fmt: skip

    def summaries(self, session_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        values = self.model.redis.mget([self.model.summary_key(s) for s in session_ids])
        return {sid: json.loads(v) for sid, v in zip(session_ids, values, strict=True) if v}

    def scopes(self, stats: Stats) -> list[str]:
        return sorted({f.split("|", 1)[0] for f in stats if f.endswith("|sessions")})

    # --- the answers -----------------------------------------------------------------------

    def cost(self) -> dict[str, Any]:
        today = self.now_us - self.now_us % DAY_US
        periods = {
            "today": Period.day(today),
            "same_day_last_week": Period.day(today - 7 * DAY_US),
            "last_7_days": Period(today - 7 * DAY_US, today - 1),
        }
        rows: dict[str, dict[str, Any]] = {}
        for name, period in periods.items():
            stats = self.stats(period)
            for scope in self.scopes(stats) or ["all"]:
                sessions = int(stats[f"{scope}|sessions"])
                cost = int(stats[f"{scope}|cost"])
                counts = self._histogram(stats, scope, "cost_bucket", len(COST_BOUNDS_MICROS))
                rows.setdefault(scope, {})[name] = {
                    "sessions": sessions,
                    "cost_usd": cost / 1e6,
                    "avg_usd": cost / sessions / 1e6 if sessions else None,
                    "p50_usd": _usd(_percentile(counts, COST_BOUNDS_MICROS, 0.5)),
                    "p99_usd": _usd(_percentile(counts, COST_BOUNDS_MICROS, 0.99)),
                }
        return {"scopes": rows}

    def top_cost(self, pct: float = 1.0, since: str = "24h") -> dict[str, Any]:
        period = Period.last(since, self.now_us)
        ranked = sorted(self._sessions(period, "cost"), key=lambda kv: (-kv[1], kv[0]))
        if not ranked:
            return {"since": since, "sessions": 0, "top": [], "median": None}
        count = max(1, math.ceil(len(ranked) * pct / 100))
        top_ids = [sid for sid, _ in ranked[:count]]
        median_id = sorted(ranked, key=lambda kv: (kv[1], kv[0]))[(len(ranked) - 1) // 2][0]
        summaries = self.summaries([*top_ids, median_id])
        return {
            "since": since,
            "sessions": len(ranked),
            "pct": pct,
            "top": [_expense(summaries[s]) for s in top_ids if s in summaries],
            "median": _expense(summaries[median_id]) if median_id in summaries else None,
        }

    def outcomes(self, since: str = "24h", top: int = 10) -> dict[str, Any]:
        period = Period.last(since, self.now_us)
        stats = self.stats(period)
        total = int(stats["all|sessions"])
        by_status = {s: int(stats[f"all|outcome|{s}"]) for s in ("OK", "ERROR", "TIMEOUT",
                                                                  "KILLED")}  # fmt: skip
        modes = Counter({f.split("|", 2)[2]: int(n) for f, n in stats.items()
                         if f.startswith("failure|")})  # fmt: skip
        return {
            "since": since,
            "sessions": total,
            "counts": by_status,
            "shares": {s: (n / total if total else 0.0) for s, n in by_status.items()},
            "failure_modes": [
                dict(
                    zip(("error_type", "step_kind", "tool"), mode.split("|"), strict=True), count=n
                )
                for mode, n in modes.most_common(top)
            ],
        }

    def quality(self, threshold: float, since: str = "7d") -> dict[str, Any]:
        """Evaluation scores by query category against the threshold, with sample sessions."""
        period = Period.last(since, self.now_us)
        stats = self.stats(period)
        rows: dict[tuple[str, str], dict[str, float]] = {}
        for field, value in stats.items():
            if field.startswith("quality|"):
                _, category, name, measure = field.split("|")
                rows.setdefault((category, name), {})[measure] = value
        categories = []
        for (category, name), m in sorted(rows.items()):
            count = int(m.get("count", 0))
            mean = m.get("sum", 0.0) / count if count else None
            flagged = mean is not None and mean < threshold
            samples: list[str] = []
            if flagged:
                pipe = self.model.redis.pipeline(transaction=False)
                for hour in period.hours():
                    pipe.lrange(self.model.key(f"quality-samples:{category}", hour), 0, 4)
                samples = [s.decode() for rows_ in pipe.execute() for s in rows_][:5]
            categories.append({
                "category": category, "evaluation": name, "sessions": count, "mean": mean,
                "below_threshold": int(m.get("below", 0)), "flagged": flagged,
                "samples": samples,
            })  # fmt: skip
        return {"since": since, "threshold": threshold, "categories": categories}

    def latency(self, window: str = "1h", slowest: int = 10) -> dict[str, Any]:
        period = Period.last(window, self.now_us)
        stats = self.stats(period)
        counts = self._histogram(stats, "all", "duration_bucket", len(LATENCY_BOUNDS_MS))
        today = Period(self.now_us - self.now_us % DAY_US, self.now_us)
        ranked = sorted(self._sessions(today, "duration"), key=lambda kv: (-kv[1], kv[0]))
        summaries = self.summaries([sid for sid, _ in ranked[:slowest]])
        return {
            "window": window,
            "sessions": int(stats["all|sessions"]),
            "session_ms": {q: _percentile(counts, LATENCY_BOUNDS_MS, v)
                           for q, v in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))},
            "slowest_today": [_bottleneck(summaries[s]) for s, _ in ranked[:slowest]
                              if s in summaries],
        }  # fmt: skip


def _usd(micros: float | None) -> float | None:
    return None if micros is None else micros / 1e6


def _expense(s: dict[str, Any]) -> dict[str, Any]:
    """What made a session expensive: tokens by model, steps, retries, context, tool costs."""
    llm_cost = sum(s["cost_by_model"].values())
    return {
        "session_id": s["session_id"],
        "tenant_id": s["tenant_id"],
        "agent_id": s["agent_id"],
        "cost_usd": s["cost_micros"] / 1e6,
        "tokens_by_model": s["tokens_by_model"],
        "cost_by_model_usd": {m: c / 1e6 for m, c in s["cost_by_model"].items()},
        "steps": sum(s["steps_by_kind"].get(k, 0) for k in ("LLM_CALL", "TOOL_CALL")),
        "retries": s["retries"],
        "max_context_tokens": s["max_context_tokens"],
        "tool_cost_usd": (s["cost_micros"] - llm_cost) / 1e6,
    }


def _bottleneck(s: dict[str, Any]) -> dict[str, Any]:
    duration = max(1, s["end_time_us"] - s["start_time_us"])
    step = s["slowest_step"] or {}
    return {
        "session_id": s["session_id"],
        "agent_id": s["agent_id"],
        "duration_ms": duration / 1000,
        "bottleneck": {
            "kind": step.get("kind"),
            "name": step.get("name"),
            "duration_ms": step.get("duration_us", 0) / 1000,
            "share": step.get("duration_us", 0) / duration,
        },
    }
