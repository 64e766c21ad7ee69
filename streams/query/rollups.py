"""Day rollups of the read-model's hourly counters: what makes 7-day answers cheap.

An answer over a week sums the hourly hashes of its whole hours (168 ``HGETALL`` of ~1,000
fields each, ~300 ms at 100k sessions). A day that is over changes only when a late session
ends in it, so its 24 hours' sum is kept in Redis (``rm:rollup-day:<day>``) and reused while
the day has not changed.

Whether it changed is known exactly and cheaply: every session the read-model applies adds 1 to
``all|sessions`` of its hour, in the same Lua call as everything else it adds
(:mod:`streams.query.readmodel`), so the 24 values of ``all|sessions`` (one ``HGET`` each) are a
version of the day's counters. A rollup is used only when the version stored with it equals the
hours' current one; otherwise the day is summed again from its hours inside ``MULTI`` (a
consistent snapshot with its version) and stored. An hour that expired changes the version as
well. So an answer read through rollups equals one read hour by hour: the same fields, the same
extremes, the same count of hours written before the extremes were kept; integer counters
(sessions, micro-USD, buckets) are exactly equal, float sums (evaluation scores) may differ in
their last bit, being added in another order.

Written by the reader that needs it (no worker change, nothing to backfill); only days that
ended before the current hour are rolled up (today's counters move every second).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TypedDict

from streams.pipeline.aggregates import DAY_US, HOUR_US
from streams.query.readmodel import MAX_PREFIX, SessionReadModel, combine

#: False reads every hour one by one, as before rollups (``bench.console --compare`` times both)
ENABLED = True
#: the counter every applied session adds 1 to (its value per hour versions the hour)
VERSION_FIELD = "all|sessions"
HOURS_PER_DAY = DAY_US // HOUR_US
#: KEYS: per day its 24 hour hashes then its rollup; ARGV[1]: the version field. Returns, per
#: day, the 24 versions (nil for none) then the rollup (nil for none)
LOOK = """
local out = {}
local per_day = 25
for i = 1, #KEYS, per_day do
  for h = i, i + per_day - 2 do
    out[#out + 1] = redis.call('HGET', KEYS[h], ARGV[1])
  end
  out[#out + 1] = redis.call('GET', KEYS[i + per_day - 1])
end
return out
"""


class Rollup(TypedDict):
    #: the hours' ``all|sessions`` (raw text, None for a missing hash) when it was summed
    version: list[str | None]
    fields: dict[str, float]
    #: hours that held counters but no extremes (written before the read-model kept them)
    without_extremes: int


def sum_hours(
    hashes: Sequence[Mapping[bytes | str, bytes | str]],
) -> tuple[dict[str, float], int]:
    """The hourly hashes added up as :meth:`Answers.stats` adds them (pure), and how many held
    counters but no extremes."""
    total: dict[str, float] = {}
    without = 0
    for raw in hashes:
        fields = {_name(field): float(value) for field, value in raw.items()}
        if fields and not any(f.startswith(MAX_PREFIX) for f in fields):
            without += 1
        for field, value in fields.items():
            combine(total, field, value)
    return total, without


def split_days(hours: Sequence[int], before_us: int) -> tuple[list[int], list[int]]:
    """(days all of whose hours are in ``hours`` and that ended by ``before_us``, the other
    hours) (pure)."""
    chosen = set(hours)
    days = sorted({h - h % DAY_US for h in hours})
    whole = [
        d
        for d in days
        if d + DAY_US <= before_us and all(d + i * HOUR_US in chosen for i in range(HOURS_PER_DAY))
    ]
    inside = {d + i * HOUR_US for d in whole for i in range(HOURS_PER_DAY)}
    return whole, [h for h in hours if h not in inside]


def _name(field: bytes | str) -> str:
    return field.decode() if isinstance(field, bytes) else field


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode()


class DayRollups:
    def __init__(self, model: SessionReadModel) -> None:
        self.model = model
        self._look = model.redis.register_script(LOOK)
        #: days summed again from their hours by the last :meth:`stats` (for tests and benches)
        self.recomputed = 0

    def key(self, day: int) -> str:
        return self.model.key("rollup-day", day)

    def _hour_keys(self, day: int) -> list[str]:
        return [self.model.key("stats", day + i * HOUR_US) for i in range(HOURS_PER_DAY)]

    def stats(self, hours: Sequence[int], now_us: int) -> tuple[dict[str, float], int]:
        """The hourly counters of ``hours`` (whole hours of a period) added up, through the
        day rollups where they hold; and how many of the hours had no extremes."""
        if ENABLED:
            days, rest = split_days(hours, now_us - now_us % HOUR_US)
        else:
            days, rest = [], list(hours)
        redis = self.model.redis
        # the days' versions and rollups in one script call (25 lookups a day run in Redis, not
        # 25 commands packed and parsed here: a 10-year window is 3,650 days)
        keys = [k for day in days for k in (*self._hour_keys(day), self.key(day))]
        looked = self._look(keys=keys, args=[VERSION_FIELD]) if keys else []
        pipe = redis.pipeline(transaction=False)
        for hour in rest:
            pipe.hgetall(self.model.key("stats", hour))
        replies = pipe.execute()
        parts: list[tuple[dict[str, float], int]] = []
        stale: list[int] = []
        per_day = HOURS_PER_DAY + 1
        for n, day in enumerate(days):
            chunk = looked[n * per_day : (n + 1) * per_day]
            version = [_text(v) for v in chunk[:-1]]
            if all(v is None for v in version):
                continue  # no session in any of its hours: an empty day (every one adds 1)
            stored: Rollup | None = json.loads(chunk[-1]) if chunk[-1] is not None else None
            if stored is not None and stored["version"] == version:
                parts.append((stored["fields"], stored["without_extremes"]))
            else:
                stale.append(day)
        self.recomputed = len(stale)
        parts.extend(self._roll_up(stale))
        parts.append(sum_hours(replies))
        total: dict[str, float] = {}
        without = 0
        for fields, n in parts:
            without += n
            for field, value in fields.items():
                combine(total, field, value)
        return total, without

    def _roll_up(self, days: Sequence[int]) -> list[tuple[dict[str, float], int]]:
        """Sum each day's hours in one MULTI (their versions and their counters as of one
        moment: one round trip for every stale day, however long the period) and store the
        rollups of the days that hold anything (an empty day costs nothing to read again)."""
        if not days:
            return []
        pipe = self.model.redis.pipeline(transaction=True)
        for day in days:
            keys = self._hour_keys(day)
            for key in keys:
                pipe.hget(key, VERSION_FIELD)
            for key in keys:
                pipe.hgetall(key)
        replies = pipe.execute()
        store = self.model.redis.pipeline(transaction=False)
        summed = []
        for n, day in enumerate(days):
            chunk = replies[n * 2 * HOURS_PER_DAY : (n + 1) * 2 * HOURS_PER_DAY]
            version = [_text(v) for v in chunk[:HOURS_PER_DAY]]
            fields, without = sum_hours(chunk[HOURS_PER_DAY:])
            summed.append((fields, without))
            if fields or any(v is not None for v in version):
                rollup: Rollup = {"version": version, "fields": fields, "without_extremes": without}
                store.set(self.key(day), json.dumps(rollup), ex=self.model.ttl_s)
        store.execute()
        return summed
