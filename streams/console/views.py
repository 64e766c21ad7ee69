"""The console's pages, rendered from the answers (pure: no I/O but reading the templates).

Jinja2 with autoescaping on: a tenant, agent or tool name can never inject markup. Figures
are formatted by the filters below, the same ones the browser test applies to the answers.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from streams.console.live import SessionsNow, sessions_now
from streams.console.source import Overview
from streams.query.session_search import OUTCOMES
from streams.query.timeline import (
    ActedRow,
    AlertRow,
    DecisionRow,
    PiiRow,
    StepRow,
    Timeline,
    span,
)
from streams.query.trend import DayCost
from streams.times import format_instant


def money(value: float | None) -> str:
    """Dollars as ``governor ask`` prints them (4 decimals); ``-`` when unknown."""
    return "-" if value is None else f"${value:,.4f}"


def share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def seconds(ms: float | None) -> str:
    """Milliseconds as seconds, 2 decimals."""
    return "-" if ms is None else f"{ms / 1000:,.2f} s"


def count(value: int | float | None) -> str:
    return "-" if value is None else f"{int(value):,}"


def change(now: float | None, before: float | None) -> str:
    """How much ``now`` differs from ``before``, in percent (``-`` without a base)."""
    if now is None or not before:
        return "-"
    return f"{(now - before) / before:+.1%}"


def instant(time_us: int | None) -> str:
    return "-" if time_us is None else format_instant(time_us)


def span_ms(us: int | None) -> str:
    """A length of time as the timeline table prints it (850µs, 12ms, 3.40s, 2m05.0s)."""
    return "-" if us is None else span(us)


@dataclass(frozen=True)
class Bar:
    """A row's place on the session's time axis, in percent of its length."""

    left: float
    width: float


def bar(offset_us: int, duration_us: int, total_us: int) -> Bar:
    """Where a step of ``duration_us`` starting ``offset_us`` into a session of ``total_us``
    sits (at least 0.5 % wide, so that an instant stays visible; never past the end)."""
    total = max(1, total_us)
    left = min(100.0, max(0.0, 100 * offset_us / total))
    width = max(0.5, min(100.0 - left, 100 * duration_us / total))
    return Bar(round(left, 3), round(width, 3))


@dataclass(frozen=True)
class TimelineView:
    timeline: Timeline
    steps: list[tuple[StepRow, Bar]]
    decisions: tuple[DecisionRow, ...]
    acted: tuple[ActedRow, ...]
    pii: tuple[PiiRow, ...]
    alerts: tuple[AlertRow, ...]
    bottleneck_seq: int | None


def timeline_view(timeline: Timeline) -> TimelineView:
    total = timeline.header.duration_us
    slowest = timeline.totals.slowest
    return TimelineView(
        timeline=timeline,
        steps=[(s, bar(s.offset_us, s.duration_us, total)) for s in timeline.steps()],
        decisions=timeline.decisions(),
        acted=timeline.acted(),
        pii=timeline.pii(),
        alerts=timeline.alerts(),
        bottleneck_seq=None if slowest is None else slowest.seq,
    )


@dataclass(frozen=True)
class ChartBar:
    """One day of the cost chart, in the SVG's user units."""

    x: float
    y: float
    width: float
    height: float
    label: str
    value: str


#: the chart's size (SVG user units): a bar per day, labels below
CHART_W, CHART_H, CHART_PAD = 560.0, 180.0, 24.0


def chart_bars(days: Sequence[DayCost]) -> list[ChartBar]:
    """The cost chart's bars: one per day, its height in proportion to the day's cost (the
    dearest day fills the chart; a day without cost is a 1-unit line so that it shows)."""
    if not days:
        return []
    top = max(d["cost_usd"] for d in days) or 1.0
    slot = CHART_W / len(days)
    inner = CHART_H - 2 * CHART_PAD
    bars = []
    for n, d in enumerate(days):
        height = max(1.0, inner * d["cost_usd"] / top)
        bars.append(
            ChartBar(
                x=round(n * slot + slot * 0.15, 2),
                y=round(CHART_PAD + inner - height, 2),
                width=round(slot * 0.7, 2),
                height=round(height, 2),
                label=format_instant(d["day_us"])[:10],
                value=money(d["cost_usd"]),
            )
        )
    return bars


@dataclass(frozen=True)
class FileDiff:
    """How one policy file changed from one version to the next (unified diff lines)."""

    name: str
    status: str  #: added, removed, changed or same
    lines: tuple[str, ...]


def policy_diff(before: Mapping[str, str], after: Mapping[str, str]) -> list[FileDiff]:
    """Each enforcement file of either version with what changed (pure)."""
    out = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        status = ("added" if old is None else "removed" if new is None
                  else "same" if old == new else "changed")  # fmt: skip
        lines = difflib.unified_diff(
            (old or "").splitlines(), (new or "").splitlines(), name, name, lineterm="", n=2
        )
        out.append(FileDiff(name, status, tuple(lines)[2:]))
    return out


def drift_value(value: float | None, how: str) -> str:
    """A drift row's before/after as ``governor ask drift`` prints it."""
    if value is None:
        return "-"
    if how == "rate":
        return f"{value:.1%}"
    return f"{value:,.3g} ({how})"


def diff_class(line: str) -> str:
    return {"+": "add", "-": "del", "@": "hunk"}.get(line[:1], "")


def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("streams.console", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        money=money,
        share=share,
        seconds=seconds,
        count=count,
        instant=instant,
        span_ms=span_ms,
    )
    env.globals.update(
        change=change, outcomes=OUTCOMES, chart_bars=chart_bars, diff_class=diff_class,
        drift_value=drift_value, chart_w=CHART_W, chart_h=CHART_H,
    )  # fmt: skip
    return env


class Pages:
    """Renders each page: ``page(name, **context)``."""

    def __init__(self, root: str = "") -> None:
        self.env = environment()
        #: the path the console is served under: every link starts with it
        self.env.globals["root"] = root

    def page(self, name: str, **context: Any) -> str:
        return self.env.get_template(f"{name}.html").render(page=name, **context)

    def overview(
        self,
        answer: Overview,
        since: str,
        window: str,
        health: dict[str, Any] | None = None,
        now: SessionsNow | None = None,
    ) -> str:
        health = health or {"answered": False, "http_status": None, "status": None, "checks": []}
        now = now or sessions_now([])
        return self.page("overview", o=answer, since=since, window=window, health=health, now=now)

    def sessions(self, answer: dict[str, Any], params: Mapping[str, str]) -> str:
        """The Sessions page; ``params`` is the request's query (kept by the paging links)."""
        kept = {k: v for k, v in params.items() if k != "offset" and v}

        def page_query(offset: int) -> str:
            return urlencode({**kept, "offset": offset})

        return self.page(
            "sessions",
            s=answer,
            params=kept,
            query_string=urlencode(kept),
            page_query=page_query,
        )

    def timeline(self, timeline: Timeline) -> str:
        return self.page("timeline", t=timeline_view(timeline))

    def error(self, status: int, message: str) -> str:
        return self.page("error", status=status, message=message)
