"""Day rollups on real Redis: a 7-day answer read through them equals the one read hour by
hour, a late session or an expired hour makes its day summed again, and a day unchanged is
read from its rollup."""

from __future__ import annotations

import math
import time

import redis

from streams.pipeline.aggregates import DAY_US, HOUR_US
from streams.query.answers import Answers, Period
from streams.query.readmodel import MAX_PREFIX, MIN_PREFIX, SessionReadModel, hour_of
from streams.query.rollups import DayRollups, sum_hours
from streams.settings import Settings
from tests.integration.test_answers import _summary


def hour_by_hour(model: SessionReadModel, hours: list[int]) -> tuple[dict[str, float], int]:
    """What the read-model's whole hours add up to, read one hour at a time (no rollup)."""
    return sum_hours([model.redis.hgetall(model.key("stats", h)) for h in hours])


def same(got: tuple[dict[str, float], int], want: tuple[dict[str, float], int]) -> bool:
    """Equal fields and counts; a float sum (evaluation scores) may differ in its last bits,
    added in another order."""
    (fields, n), (expected, m) = got, want
    return (
        n == m
        and fields.keys() == expected.keys()
        and all(
            fields[f] == expected[f]
            if not f.endswith("|sum")
            else math.isclose(fields[f], expected[f], rel_tol=1e-12)
            for f in fields
        )
    )


def test_day_rollups_answer_as_the_hours_do_and_follow_late_sessions(settings: Settings) -> None:
    now = time.time_ns() // 1000
    model = SessionReadModel(redis.Redis.from_url(settings.redis_url), settings.redis_key_prefix)
    fleet = []
    for n in range(100):  # every 100 min over the last 7 days, with every outcome
        status = ("OK", "ERROR", "TIMEOUT", "KILLED")[n % 4]
        end = now - n * 6_000_000_000 - 1
        s = _summary(f"s-{n}", end, status, "Boom" if status != "OK" else None, "TOOL_CALL")
        fleet.append({**s, "cost_micros": 1000 + n * 17, "tenant_id": ("acme", "globex")[n % 2],
                      "evaluations": {"relevance": (n % 10) / 10}})  # fmt: skip
    try:
        assert model.apply(fleet, 0.7) == len(fleet)
        period = Period.last("7d", now)
        whole, _cut = period.split_hours()
        rollups = DayRollups(model)
        assert same(rollups.stats(whole, now), hour_by_hour(model, whole))
        assert rollups.recomputed == 6  # every day that is over, once
        assert same(rollups.stats(whole, now), hour_by_hour(model, whole))
        assert rollups.recomputed == 0  # then read from the rollups
        fields = rollups.stats(whole, now)[0]
        assert any(f.startswith(MAX_PREFIX) for f in fields)
        assert any(f.startswith(MIN_PREFIX) for f in fields)

        # a session that ends late in a day already rolled up: that day is summed again
        late_end = (now - now % DAY_US) - 2 * DAY_US + 5 * HOUR_US
        late = {**_summary("late", late_end, "KILLED", "Late", "TOOL_CALL"), "cost_micros": 999}
        assert model.apply([late], 0.7) == 1
        assert same(rollups.stats(whole, now), hour_by_hour(model, whole))
        assert rollups.recomputed == 1
        # an hour that expired changes its day's version too
        model.redis.delete(model.key("stats", late_end - late_end % HOUR_US))
        assert same(rollups.stats(whole, now), hour_by_hour(model, whole))
        assert rollups.recomputed == 1

        # the answers through the rollups count the week's sessions but the expired hour's
        outcomes = Answers(model, clock_us=now).outcomes("7d")
        gone = late_end - late_end % HOUR_US
        ended = [
            s
            for s in [*fleet, late]
            if period.contains(s["end_time_us"]) and hour_of(s["end_time_us"]) != gone
        ]
        assert outcomes["sessions"] == len(ended)
        for status in ("OK", "ERROR", "TIMEOUT", "KILLED"):
            assert outcomes["counts"][status] == sum(1 for s in ended if s["status"] == status)
    finally:
        keys = list(model.redis.scan_iter(f"{settings.redis_key_prefix}rm:*"))
        if keys:
            model.redis.delete(*keys)
