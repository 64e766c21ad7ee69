"""The sessions read-model on a real (private) Redis: a non-finite evaluation score never
half-applies a session, each session counts once, and the answers do not depend on the order
the summaries arrive in (what a rebuild from gov.sessions relies on)."""

from __future__ import annotations

import math
import random

import redis

from streams.query.answers import Answers, Period
from streams.query.readmodel import (
    NON_FINITE_SCORE,
    SessionReadModel,
    finite_scores,
    increments,
    without_non_finite,
)
from tests.summaries import HOUR_US, T0, summary

PERIOD = Period(T0, T0 + HOUR_US - 1)


def dump(client: redis.Redis) -> dict[bytes | str, object]:
    """Every key with its value (lists in order, sets and hashes as sets/dicts)."""
    out: dict[bytes | str, object] = {}
    for key in sorted(client.keys("*")):
        kind = client.type(key)
        if kind == b"string":
            out[key] = client.get(key)
        elif kind == b"hash":
            out[key] = {k: round(float(v), 9) for k, v in client.hgetall(key).items()}
        elif kind == b"list":
            out[key] = client.lrange(key, 0, -1)
        elif kind == b"set":
            out[key] = client.smembers(key)
        elif kind == b"zset":
            out[key] = client.zrange(key, 0, -1, withscores=True)
    return out


def test_finite_scores_drops_only_the_non_finite_ones() -> None:
    s = summary(1, evaluations={"a": 0.5, "b": math.nan, "c": math.inf, "d": -math.inf})
    clean, dropped = finite_scores(s)
    assert clean["evaluations"] == {"a": 0.5}
    assert dropped == 3
    assert s["evaluations"]["c"] == math.inf  # the input is left alone
    same = summary(2)
    assert finite_scores(same) == (same, 0)
    assert without_non_finite([s, same])[1] == 3
    fields = increments(s, 0.7)
    assert not any(math.isnan(v) or math.isinf(v) for v in fields.values())


def test_a_nan_or_infinite_score_is_left_out_and_the_session_applied_whole(
    client: redis.Redis,
) -> None:
    model = SessionReadModel(client, "t.")
    bad = summary(1, evaluations={"helpfulness": math.nan, "accuracy": math.inf, "tone": 0.2})
    assert model.apply([summary(0), bad, summary(2)], 0.7) == 3
    assert model.dropped[NON_FINITE_SCORE] == 2
    answers = Answers(model, clock_us=T0 + HOUR_US - 1)
    stats = answers.stats(PERIOD)
    assert stats["all|sessions"] == 3
    assert stats["all|cost"] == 100 + 200 + 300
    assert stats["quality|billing|helpfulness|count"] == 2  # the NaN one is not counted
    assert stats["quality|billing|tone|below"] == 1
    assert "quality|billing|accuracy|count" not in stats
    stored = answers.summaries(["s00001"])["s00001"]
    assert stored["evaluations"] == {"tone": 0.2}
    # applied again (a redelivery, a retry, a rebuild): nothing counts twice
    before = dump(client)
    assert model.apply([summary(0), bad, summary(2)], 0.7) == 0
    assert dump(client) == before


def test_the_read_model_is_the_same_whatever_order_the_summaries_come_in(
    client: redis.Redis,
) -> None:
    # enough below-threshold sessions in one hour that only some are kept as samples
    summaries = [
        summary(n, evaluations={"helpfulness": 0.3 if n % 2 else 0.9}, cost_micros=17 * n + 1)
        for n in range(40)
    ]
    model = SessionReadModel(client, "t.")
    model.apply(summaries, 0.7)
    in_order = dump(client)
    samples = Answers(model, clock_us=T0 + HOUR_US - 1).quality(0.7, "30d")
    client.flushall()
    shuffled = summaries[:]
    random.Random(7).shuffle(shuffled)
    for start in range(0, len(shuffled), 7):
        model.apply(shuffled[start : start + 7], 0.7)
    assert dump(client) == in_order
    flagged = [c for c in samples["categories"] if c["flagged"]] or samples["categories"]
    # the samples are the latest ending sessions below the threshold, latest first
    assert flagged[0]["samples"] == ["s00039", "s00037", "s00035", "s00033", "s00031"]
