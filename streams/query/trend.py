"""Per-day series for the console's trends (UTC, event time): the fleet's cost, PII findings.

Each day is :meth:`Answers.stats` over :meth:`Period.day`, the counters ``governor ask cost``
reads for its ``today`` and ``same_day_last_week`` rows: a day's figure here equals that
answer's for the same day (asserted in the tests), never a second sum.
"""

from __future__ import annotations

from typing import TypedDict

from streams.pii.ledger import PiiLedger
from streams.pipeline.aggregates import DAY_US
from streams.query.answers import Answers, Period


class DayCost(TypedDict):
    #: the day's start (UTC midnight), microseconds
    day_us: int
    sessions: int
    cost_usd: float


def day_starts(now_us: int, days: int) -> list[int]:
    """The starts of the last ``days`` days, today included, oldest first."""
    if days < 1:
        raise ValueError(f"days must be at least 1, not {days}")
    today = now_us - now_us % DAY_US
    return [today - n * DAY_US for n in range(days - 1, -1, -1)]


def daily_cost(answers: Answers, days: int = 7) -> list[DayCost]:
    """The fleet's sessions and cost of each of the last ``days`` days (today so far last)."""
    out: list[DayCost] = []
    for start in day_starts(answers.now_us, days):
        stats = answers.stats(Period.day(start))
        out.append(
            {
                "day_us": start,
                "sessions": int(stats["all|sessions"]),
                "cost_usd": int(stats["all|cost"]) / 1e6,
            }
        )
    return out


class DayPii(TypedDict):
    day_us: int
    total: int
    by_entity: dict[str, int]
    by_handling: dict[str, int]


def daily_pii(ledger: PiiLedger, now_us: int, days: int = 7) -> list[DayPii]:
    """PII findings of each of the last ``days`` days (UTC): :meth:`PiiLedger.counts`, the
    counters ``governor ask pii`` sums, one day at a time."""
    out: list[DayPii] = []
    for start in day_starts(now_us, days):
        counts = ledger.counts(start, start + DAY_US - 1).as_dict()
        out.append(
            {
                "day_us": start,
                "total": counts["total"],
                "by_entity": counts["by_entity"],
                "by_handling": counts["by_handling"],
            }
        )
    return out
