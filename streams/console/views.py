"""The console's pages, rendered from the answers (pure: no I/O but reading the templates).

Jinja2 with autoescaping on: a tenant, agent or tool name can never inject markup. Figures
are formatted by the filters below, the same ones the browser test applies to the answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from streams.console.source import OUTCOMES, Overview
from streams.query.timeline import (
    ActedRow,
    AlertRow,
    DecisionRow,
    PiiRow,
    StepRow,
    Timeline,
    span,
)
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
    env.globals.update(change=change, outcomes=OUTCOMES)
    return env


class Pages:
    """Renders each page: ``page(name, **context)``."""

    def __init__(self) -> None:
        self.env = environment()

    def page(self, name: str, **context: Any) -> str:
        return self.env.get_template(f"{name}.html").render(page=name, **context)

    def overview(self, answer: Overview, since: str, window: str) -> str:
        return self.page("overview", o=answer, since=since, window=window)

    def sessions(self, answer: dict[str, Any], query: str) -> str:
        return self.page(
            "sessions", s=answer, tenants=answer["tenants"], agents=answer["agents"], query=query
        )

    def timeline(self, timeline: Timeline) -> str:
        return self.page("timeline", t=timeline_view(timeline))

    def error(self, status: int, message: str) -> str:
        return self.page("error", status=status, message=message)
