"""SLOs on event time: good/bad counts per minute, burn rates over windows, alert states (pure).

Each finished session (and each tool call, for degradation) is good or bad for each SLO. Counts
are kept per event-time minute and per hour; a window's error ratio sums hours for the long
windows and minutes for the short ones. The burn rate is the error ratio over the error budget
(1 - objective). Alerts follow the multi-window, multi-burn-rate rules of the SRE workbook.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from streams.pipeline.policy import FILE_MODEL_CONFIG, MAX_DURATION_S, Version
from streams.runbooks import runbook_url

MINUTE_US = 60_000_000
HOUR_US = 60 * MINUTE_US

#: (name, severity, long window s, short window s, burn-rate factor)
TIERS = (
    ("fast", "PAGE", 3600, 300, 14.4),
    ("slow", "PAGE", 6 * 3600, 1800, 6.0),
    ("ticket", "TICKET", 3 * 86400, 6 * 3600, 1.0),
)


#: the SLIs the worker computes: an SLO with another name would never be measured
SloName = Literal["availability", "latency", "quality", "compliance", "degradation"]


class Slo(BaseModel):
    model_config = FILE_MODEL_CONFIG
    name: SloName
    description: str = ""
    objective: Annotated[float, Field(gt=0, lt=1)]
    #: latency: a session is good within this many seconds
    threshold_s: Annotated[float, Field(gt=0, le=MAX_DURATION_S)] = 30.0
    #: quality: every evaluation score (0..1) of a good session reaches this
    threshold: Annotated[float, Field(ge=0, le=1)] = 0.7
    #: degradation: failed tool (glob) -> tools (globs) that count as its fallback; a tool with
    #: no entry falls back by retrying itself
    fallbacks: dict[str, list[str]] = {}

    def is_fallback(self, failed_tool: str, next_tool: str) -> bool:
        for pattern, fallbacks in self.fallbacks.items():
            if fnmatch.fnmatchcase(failed_tool, pattern):
                return any(fnmatch.fnmatchcase(next_tool, f) for f in fallbacks)
        return next_tool == failed_tool


class SloFile(BaseModel):
    model_config = FILE_MODEL_CONFIG
    version: Version
    slos: list[Slo]

    @model_validator(mode="after")
    def _unique_names(self) -> SloFile:
        names = [s.name for s in self.slos]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"SLO names must be unique, repeated: {', '.join(repeated)}")
        return self


def session_verdicts(summary: Mapping[str, Any], slos: Iterable[Slo]) -> dict[str, bool]:
    """slo name -> good? for one finished session (SLOs it does not concern are left out)."""
    verdicts: dict[str, bool] = {}
    for slo in slos:
        if slo.name == "availability":
            verdicts[slo.name] = summary["status"] not in ("ERROR", "TIMEOUT")
        elif slo.name == "latency":
            duration_s = (summary["end_time_us"] - summary["start_time_us"]) / 1e6
            verdicts[slo.name] = duration_s <= slo.threshold_s
        elif slo.name == "quality":
            scores = [s for n, s in summary["evaluations"].items() if n != "output"]
            if scores:
                verdicts[slo.name] = min(scores) >= slo.threshold
        elif slo.name == "compliance":
            verdicts[slo.name] = summary["violations"] == 0
    return verdicts


@dataclass
class FallbackTracker:
    """Degradation SLI: each failed tool call is good when the session's next tool call is its
    defined fallback, bad when it is something else or the session ends first. The failed
    tool waiting for its fallback is kept on the session's own state (``pending_fallback``),
    checkpointed with it on its partition."""

    slo: Slo

    def tool_call(self, session: Any, tool: str, failed: bool) -> bool | None:
        """The verdict on the previous failure, if this call settles one."""
        verdict = None
        failed_tool = session.pending_fallback
        session.pending_fallback = None
        if failed_tool is not None:
            verdict = self.slo.is_fallback(failed_tool, tool)
        if failed:
            session.pending_fallback = tool
        return verdict

    def session_ended(self, session: Any) -> bool | None:
        failed_tool, session.pending_fallback = session.pending_fallback, None
        return False if failed_tool is not None else None


@dataclass
class SloCounts:
    """Good/bad per (slo, minute) and (slo, hour), event time."""

    minutes: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    hours: dict[tuple[str, int], list[int]] = field(default_factory=dict)

    def add(self, slo: str, time_us: int, good: bool, n: int = 1) -> None:
        index = 0 if good else 1
        for table, size in ((self.minutes, MINUTE_US), (self.hours, HOUR_US)):
            key = (slo, time_us - time_us % size)
            counts = table.get(key)
            if counts is None:
                counts = table[key] = [0, 0]
            counts[index] += n

    def ratio(self, slo: str, now_us: int, window_s: int) -> tuple[float, int]:
        """(error ratio, events) over the window ending at ``now_us``."""
        table, size = (self.minutes, MINUTE_US) if window_s < 3600 * 2 else (self.hours, HOUR_US)
        end = now_us - now_us % size
        buckets = max(1, window_s * 1_000_000 // size)
        good = bad = 0
        for i in range(buckets):
            counts = table.get((slo, end - i * size))
            if counts is not None:
                good += counts[0]
                bad += counts[1]
        total = good + bad
        return (bad / total if total else 0.0), total

    def expire(self, now_us: int) -> None:
        for table, keep in ((self.minutes, 3 * HOUR_US), (self.hours, 4 * 86400 * 1_000_000)):
            for key in [k for k in table if k[1] < now_us - keep]:
                del table[key]


@dataclass(frozen=True)
class AlertChange:
    alert_id: str
    slo: str
    tier: str
    severity: str
    firing: bool
    burn_long: float
    burn_short: float
    error_ratio: float


def evaluate(
    counts: SloCounts, slos: Iterable[Slo], now_us: int, firing: set[str]
) -> list[AlertChange]:
    """The alerts that start or stop firing at ``now_us`` (``firing`` is updated)."""
    changes = []
    for slo in slos:
        budget = 1 - slo.objective
        for tier, severity, long_s, short_s, factor in TIERS:
            long_ratio, long_n = counts.ratio(slo.name, now_us, long_s)
            short_ratio, _ = counts.ratio(slo.name, now_us, short_s)
            burn_long, burn_short = long_ratio / budget, short_ratio / budget
            on = long_n > 0 and burn_long > factor and burn_short > factor
            alert_id = f"slo:{slo.name}:{tier}"
            if on != (alert_id in firing):
                (firing.add if on else firing.discard)(alert_id)
                changes.append(AlertChange(alert_id, slo.name, tier, severity, on, burn_long,
                                           burn_short, long_ratio))  # fmt: skip
    return changes


#: the runbook of an SLO's burn alert (streams.runbooks: relative, or GOVERNOR_RUNBOOK_BASE_URL)
RUNBOOK_ALERT = "Governor{slo}BudgetBurn"


@dataclass
class SloAlerting:
    """The burn-rate alerts over event time: counts, what fires and since when, and the last
    minute evaluated. ``advance`` evaluates every minute passed since, so a replay fires and
    resolves the alerts the live run did."""

    counts: SloCounts = field(default_factory=SloCounts)
    firing: set[str] = field(default_factory=set)
    firing_since: dict[str, int] = field(default_factory=dict)
    evaluated_minute: int = 0

    def add(self, slo: str, time_us: int, good: bool) -> None:
        if not self.evaluated_minute:
            # the first minute of a stream is evaluated too (it may already burn)
            self.evaluated_minute = time_us - time_us % MINUTE_US - MINUTE_US
        self.counts.add(slo, time_us, good)

    def advance(self, slos: Iterable[Slo], watermark_us: int) -> list[dict[str, Any]]:
        """Alert records for every change up to the watermark's minute."""
        slos = list(slos)
        if not slos or not watermark_us:
            return []
        # complete minutes only: what a minute decides is then a function of the events, not
        # of how far the stream had got when it was looked at
        current = watermark_us - watermark_us % MINUTE_US - MINUTE_US
        first = self.evaluated_minute + MINUTE_US if self.evaluated_minute else current
        alerts: list[dict[str, Any]] = []
        for minute in range(max(first, current - 3 * 86400 * 1_000_000), current + 1, MINUTE_US):
            now = minute + MINUTE_US - 1
            for change in evaluate(self.counts, slos, now, self.firing):
                if change.firing:
                    self.firing_since[change.alert_id] = now
                started = self.firing_since.get(change.alert_id, now)
                alerts.append(alert_record(change, now, started))
        self.evaluated_minute = max(self.evaluated_minute, current)
        self.counts.expire(watermark_us)
        return alerts


def alert_record(change: AlertChange, now_us: int, started_us: int) -> dict[str, Any]:
    """The Alert record (gov.alerts) of a burn-rate alert starting or stopping."""
    state = "FIRING" if change.firing else "RESOLVED"
    return {
        "alert_id": change.alert_id,
        "kind": "SLO_BURN",
        "state": state,
        "severity": change.severity,
        "tenant_id": None,
        "agent_id": None,
        "slo": change.slo,
        "layer": None,
        "summary": f"{change.slo} SLO burning its error budget {change.burn_long:.1f}x "
        f"({change.tier} burn) — {state.lower()}",
        "description": f"error ratio {change.error_ratio:.2%} over the long window",
        "event_time_us": now_us,
        "started_at_us": started_us,
        "labels": {"tier": change.tier},
        "values": {"burn_long": change.burn_long, "burn_short": change.burn_short,
                   "error_ratio": change.error_ratio},
        "runbook_url": runbook_url(RUNBOOK_ALERT.format(slo=change.slo.capitalize())),
    }  # fmt: skip
