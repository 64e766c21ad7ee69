"""The operational answers from the sessions read-model (shared by the CLI and HTTP views).

Times are event time: a session belongs to the moment (hour, day, UTC) it ended, and "the last
N" means exactly the sessions that ended in (now - N, now]. Whole hours of a window are read
from the hourly counters; the hours it cuts (its first and last) are summed from the summaries
of the sessions that ended inside it, so no window is rounded to hours. Counts and costs are
exact; percentiles come from fixed log-spaced histograms (ratio 2^(1/4), DDSketch's mapping),
interpolated inside the bucket holding them, never above the period's most expensive (slowest)
session nor below its cheapest, each with the bound of its relative error (``*_error``).
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from streams.pipeline.aggregates import (
    DAY_US,
    HOUR_US,
    LATENCY_BOUNDS_MS,
    Quantile,
    quantile_estimate,
)
from streams.pipeline.causes import failure_cause
from streams.pipeline.policy import duration_s
from streams.query.readmodel import (
    COST_BOUNDS_MICROS,
    MAX_PREFIX,
    MIN_PREFIX,
    SessionReadModel,
    combine,
    hour_of,
    increments,
)
from streams.query.rollups import DayRollups
from streams.query.trees import descendants, session_trees
from streams.settings import Settings

Stats = defaultdict[str, float]

#: session ids per MGET: bounds one Redis command when a cut hour holds many sessions
MGET_CHUNK = 5_000
#: what an evaluation score counts as "below" in the hours summed from summaries, unless the
#: question names a threshold (the worker's default, which the hourly counters used)
DEFAULT_QUALITY_THRESHOLD = Settings.quality_threshold


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class Period:
    """Sessions that ended in [since_us, until_us], both ends included (microseconds)."""

    since_us: int
    until_us: int

    @classmethod
    def last(cls, span: str, until_us: int) -> Period:
        """Exactly the last ``span``: (until - span, until]."""
        return cls(until_us - int(duration_s(span) * 1_000_000) + 1, until_us)

    @classmethod
    def day(cls, day_start_us: int) -> Period:
        return cls(day_start_us, day_start_us + DAY_US - 1)

    def contains(self, time_us: int) -> bool:
        return self.since_us <= time_us <= self.until_us

    def hours(self) -> list[int]:
        first = self.since_us - self.since_us % HOUR_US
        return list(range(first, self.until_us + 1, HOUR_US))

    def split_hours(self) -> tuple[list[int], list[int]]:
        """(hours wholly inside the period, hours it cuts): at most two are cut."""
        whole: list[int] = []
        cut: list[int] = []
        for hour in self.hours():
            inside = self.since_us <= hour and hour + HOUR_US - 1 <= self.until_us
            (whole if inside else cut).append(hour)
        return whole, cut


def failure_modes(
    stats: Mapping[str, float], top: int, idle_timeout_s: float | None = None
) -> list[dict[str, Any]]:
    """The most frequent failure modes, each counted over every status it ended with.

    The counters are ``failure|<status>|<error type>|<step kind>|<tool>``: one mode can end
    sessions as ERROR, KILLED and TIMEOUT alike, and its count is the sum of the three (each
    is in ``statuses``). ``cause`` names it as a person would: the policy that killed, the idle
    time of a TIMEOUT (``idle_timeout_s``, the worker's), else the error type.
    """
    modes: Counter[str] = Counter()
    statuses: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for field, n in stats.items():
        if field.startswith("failure|"):
            _, status, mode = field.split("|", 2)
            modes[mode] += int(n)
            statuses[mode][status] += int(n)
    ranked = sorted(modes.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    names = ("error_type", "step_kind", "tool")
    return [
        dict(
            zip(names, mode.split("|", 2), strict=True),
            count=n,
            statuses=dict(statuses[mode]),
            cause=failure_cause(dict(statuses[mode]), mode.split("|", 1)[0], idle_timeout_s),
        )
        for mode, n in ranked
    ]


def _with_failure_fields(summary: Mapping[str, Any]) -> dict[str, Any]:
    """A stored summary as :func:`increments` reads it (summaries stored before the read-model
    kept the failing step's kind and tool count their mode as SESSION, -)."""
    return {"failure_step_kind": None, "failure_tool": None, **summary}


def _percentile(
    counts: Sequence[int], bounds: Sequence[float], q: float, extremes: tuple[float, float] | None
) -> Quantile | None:
    """The q-quantile of a read-model histogram, clamped to the period's [min, max] (None
    when no session counts; unclamped for hours written before the extremes were kept)."""
    if not sum(counts):
        return None
    low, high = extremes if extremes is not None else (None, None)
    return quantile_estimate(counts, q, bounds, minimum=low, maximum=high)


def _value(estimate: Quantile | None) -> float | None:
    return None if estimate is None else estimate.value


def _error(estimate: Quantile | None) -> float | None:
    return None if estimate is None else estimate.relative_error


def _extremes(stats: Stats, scope: str, measure: str) -> tuple[float, float] | None:
    """The least and greatest ``measure`` (cost, duration) of a scope's sessions in the
    period: known only when every hour of it kept them (an older hour leaves them unknown)."""
    low, high = (
        stats.get(f"{MIN_PREFIX}{scope}|{measure}"),
        stats.get(f"{MAX_PREFIX}{scope}|{measure}"),
    )
    if low is None or high is None:
        return None
    return low, high


class Answers:
    def __init__(self, model: SessionReadModel, clock_us: int | None = None) -> None:
        self.model = model
        self.now_us = clock_us or now_us()

    # --- reading ---------------------------------------------------------------------------

    def stats(self, period: Period, quality_threshold: float = DEFAULT_QUALITY_THRESHOLD) -> Stats:
        """The counters of the sessions that ended in the period: the hourly hashes of its whole
        hours, plus, for the hours it cuts, the same increments the read-model applied, summed
        over the sessions that ended inside it (``quality_threshold`` decides their "below")."""
        whole, cut = period.split_hours()
        # whole days that are over come from their rollups (streams/query/rollups.py)
        summed, hours_without_extremes = DayRollups(self.model).stats(whole, now_us())
        total: Stats = defaultdict(float, summed)
        for summary, _score in self._ended(period, cut, "duration"):
            for field, n in increments(_with_failure_fields(summary), quality_threshold).items():
                combine(total, field, float(n))
        if hours_without_extremes:
            # an hour written before the extremes were kept: the period's are not known
            for field in [f for f in total if f.startswith((MAX_PREFIX, MIN_PREFIX))]:
                del total[field]
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
        return [(s["session_id"], score) for s, score in self._ended(period, period.hours(), kind)]

    def _ended(
        self, period: Period, hours: Sequence[int], kind: str
    ) -> list[tuple[dict[str, Any], float]]:
        """(summary, score in the ``kind`` set) of the sessions of these hours that ended in the
        period. A session counts in the hour its stored summary ends in: a summary sent again
        with another end can sit in two hours' sets, and the hourly counters hold it once."""
        pipe = self.model.redis.pipeline(transaction=False)
        for hour in hours:
            pipe.zrange(self.model.key(kind, hour), 0, -1, withscores=True)
        found = [(hour, m.decode(), score)
                 for hour, rows in zip(hours, pipe.execute(), strict=True)
                 for m, score in rows]  # fmt: skip
        summaries = self.summaries([sid for _, sid, _ in found])
        ended = []
        for hour, sid, score in found:
            s = summaries.get(sid)
            if (
                s is not None
                and hour_of(s["end_time_us"]) == hour
                and period.contains(s["end_time_us"])
            ):
                ended.append((s, score))
        return ended

    def ended(self, period: Period) -> list[dict[str, Any]]:
        """The summary of every session that ended in the period (what top-cost ranks)."""
        return [s for s, _score in self._ended(period, period.hours(), "cost")]

    def summaries(self, session_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        ids = list(dict.fromkeys(session_ids))
        pipe = self.model.redis.pipeline(transaction=False)
        for start in range(0, len(ids), MGET_CHUNK):
            pipe.mget([self.model.summary_key(s) for s in ids[start : start + MGET_CHUNK]])
        values = [v for chunk in pipe.execute() for v in chunk]
        # orjson: the same values as json.loads, twice as fast over a week's summaries
        return {sid: orjson.loads(v) for sid, v in zip(ids, values, strict=True) if v}

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
                extremes = _extremes(stats, scope, "cost")
                p50 = _percentile(counts, COST_BOUNDS_MICROS, 0.5, extremes)
                p99 = _percentile(counts, COST_BOUNDS_MICROS, 0.99, extremes)
                rows.setdefault(scope, {})[name] = {
                    "sessions": sessions,
                    "cost_usd": cost / 1e6,
                    "avg_usd": cost / sessions / 1e6 if sessions else None,
                    "p50_usd": _usd(_value(p50)),
                    "p99_usd": _usd(_value(p99)),
                    "max_usd": _usd(extremes[1]) if extremes else None,
                    # |p - exact| <= error * exact (None: not bounded relatively)
                    "p50_error": _error(p50),
                    "p99_error": _error(p99),
                }
        return {"scopes": rows}

    def top_cost(self, pct: float = 1.0, since: str = "24h", tree: bool = False) -> dict[str, Any]:
        if tree:
            return self.top_cost_trees(pct, since)
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

    def top_cost_trees(self, pct: float = 1.0, since: str = "24h") -> dict[str, Any]:
        """The top ``pct`` % of session trees by total cost (a session and its descendants, the
        sessions that ended in the period), each with its root's "what made it expensive"."""
        period = Period.last(since, self.now_us)
        ended = {s["session_id"]: s for s, _score in self._ended(period, period.hours(), "cost")}
        trees = session_trees(ended)
        if not trees:
            return {"since": since, "tree": True, "trees": 0, "sessions": 0, "top": [],
                    "median": None}  # fmt: skip
        count = max(1, math.ceil(len(trees) * pct / 100))
        median = sorted(trees, key=lambda t: (t.cost_micros, t.root))[(len(trees) - 1) // 2]
        return {
            "since": since,
            "tree": True,
            "trees": len(trees),
            "sessions": len(ended),
            "pct": pct,
            "top": [{**_expense(ended[t.root]), "tree": t.to_json()} for t in trees[:count]],
            "median": {**_expense(ended[median.root]), "tree": median.to_json()},
        }

    def session_tree(self, session_id: str, since: str = "7d") -> dict[str, Any]:
        """One session's tree: the session, every descendant that ended in the period, and
        the totals rolled up over them."""
        period = Period.last(since, self.now_us)
        ended = {s["session_id"]: s for s, _score in self._ended(period, period.hours(), "cost")}
        if session_id not in ended:
            raise LookupError(
                f"no session {session_id!r} ended in the last {since} (try a longer --since)"
            )
        below = descendants(ended, session_id)
        [tree] = session_trees({s: ended[s] for s in (session_id, *below)})
        return {
            "since": since,
            "session": _expense(ended[session_id]),
            "tree": tree.to_json(),
            "members": [_expense(ended[s]) for s in (session_id, *below)],
        }

    def outcomes(
        self, since: str = "24h", top: int = 10, idle_timeout_s: float | None = None
    ) -> dict[str, Any]:
        period = Period.last(since, self.now_us)
        stats = self.stats(period)
        total = int(stats["all|sessions"])
        by_status = {s: int(stats[f"all|outcome|{s}"]) for s in ("OK", "ERROR", "TIMEOUT",
                                                                  "KILLED")}  # fmt: skip
        return {
            "since": since,
            "sessions": total,
            "counts": by_status,
            "shares": {s: (n / total if total else 0.0) for s, n in by_status.items()},
            "failure_modes": failure_modes(stats, top, idle_timeout_s),
        }

    def quality(self, threshold: float, since: str = "7d") -> dict[str, Any]:
        """Evaluation scores by query category against the threshold, with sample sessions."""
        period = Period.last(since, self.now_us)
        stats = self.stats(period, threshold)
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
        extremes = _extremes(stats, "all", "duration")
        session = {q: _percentile(counts, LATENCY_BOUNDS_MS, v, extremes)
                   for q, v in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))}  # fmt: skip
        today = Period(self.now_us - self.now_us % DAY_US, self.now_us)
        ranked = sorted(self._sessions(today, "duration"), key=lambda kv: (-kv[1], kv[0]))
        summaries = self.summaries([sid for sid, _ in ranked[:slowest]])
        return {
            "window": window,
            "sessions": int(stats["all|sessions"]),
            "session_ms": {q: _value(e) for q, e in session.items()},
            "session_ms_error": {q: _error(e) for q, e in session.items()},
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
