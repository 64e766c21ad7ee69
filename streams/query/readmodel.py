"""The sessions read-model in Redis, fed by gov.sessions: what `governor ask` answers from.

Per hour of session end (event time): a hash of counters (sessions, cost, outcomes, failure
modes, evaluation scores by category, histograms of session cost and duration per scope),
sorted sets of sessions by cost and by duration (exact top-k), and a compact summary per session
(what made it expensive, its bottleneck step, the session that started it). Each summary is
applied once (SADD guard in the same Lua call), so a redelivered summary counts once. All of
it can be rebuilt from gov.sessions (:mod:`streams.query.rebuild`), and a rebuild gives the
same answers whatever order the partitions are read in: the sample sessions of a category are
the latest ending, not the last applied.

A non-finite evaluation score (NaN, ±inf) is dropped before anything of its session is written:
Redis refuses to add one (``HINCRBYFLOAT``), and an error in the middle of the Lua call would
leave the session marked seen with half of its counters.
"""

from __future__ import annotations

import bisect
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import redis

from streams.pipeline.aggregates import HOUR_US, LATENCY_BOUNDS_MS

#: session cost histogram bounds in micro-USD: 2^(i/4), 19 % apart, up to ~$4,300
COST_BOUNDS_MICROS: tuple[float, ...] = tuple(2 ** (i / 4) for i in range(0, 128))

#: sample sessions kept per category and hour (the quality answer shows them)
QUALITY_SAMPLES = 5

APPLY = """
-- KEYS: seen, stats, by_cost, by_duration, summary, quality samples list and its sessions by
--       end time ('' and '' when good)
-- ARGV: session id, cost, duration, summary json, ttl, end time, samples kept, then
--       field/increment pairs
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
for i = 8, #ARGV, 2 do
  local field, value = ARGV[i], ARGV[i + 1]
  local op = string.sub(field, 1, 5)
  if op == '~max|' or op == '~min|' then
    -- an extreme (EXTREME_PREFIXES): kept, not added
    local current = redis.call('HGET', KEYS[2], field)
    local v = tonumber(value)
    if not current or (op == '~max|' and v > tonumber(current))
        or (op == '~min|' and v < tonumber(current)) then
      redis.call('HSET', KEYS[2], field, value)
    end
  else
    redis.call('HINCRBYFLOAT', KEYS[2], field, value)
  end
end
if KEYS[6] ~= '' then
  -- the latest ending sessions, not the last applied: the same after a rebuild in any order
  local keep = tonumber(ARGV[7])
  redis.call('ZADD', KEYS[7], ARGV[6], ARGV[1])
  redis.call('ZREMRANGEBYRANK', KEYS[7], 0, -keep - 1)
  local latest = redis.call('ZREVRANGE', KEYS[7], 0, keep - 1)
  redis.call('DEL', KEYS[6])
  redis.call('RPUSH', KEYS[6], unpack(latest))
  redis.call('EXPIRE', KEYS[6], ARGV[5])
  redis.call('EXPIRE', KEYS[7], ARGV[5])
end
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
redis.call('SET', KEYS[5], ARGV[4], 'EX', ARGV[5])
for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[5]) end
return 1
"""


#: why a value of a summary was left out of the read-model (counted per reason)
NON_FINITE_SCORE = "non_finite_evaluation_score"


def finite_scores(summary: Mapping[str, Any]) -> tuple[Mapping[str, Any], int]:
    """The summary without its non-finite evaluation scores, and how many there were (the
    summary itself when all are finite)."""
    evaluations = summary["evaluations"]
    kept = {name: v for name, v in evaluations.items() if math.isfinite(v)}
    if len(kept) == len(evaluations):
        return summary, 0
    return {**summary, "evaluations": kept}, len(evaluations) - len(kept)


def without_non_finite(
    summaries: Iterable[Mapping[str, Any]],
) -> tuple[list[Mapping[str, Any]], int]:
    """Every summary with only finite evaluation scores, and how many scores were dropped."""
    out: list[Mapping[str, Any]] = []
    dropped = 0
    for s in summaries:
        clean, n = finite_scores(s)
        out.append(clean)
        dropped += n
    return out, dropped


def hour_of(time_us: int) -> int:
    return time_us - time_us % HOUR_US


def scopes(summary: Mapping[str, Any]) -> tuple[str, ...]:
    return ("all", f"tenant:{summary['tenant_id']}",
            f"agent:{summary['tenant_id']}/{summary['agent_id']}")  # fmt: skip


def cost_bucket(cost_micros: int) -> int:
    return bisect.bisect_left(COST_BOUNDS_MICROS, max(cost_micros, 1))


def duration_bucket(duration_us: int) -> int:
    return bisect.bisect_left(LATENCY_BOUNDS_MS, duration_us / 1000)


#: fields of the hourly hash that keep an extreme (the least or greatest value of the hour)
#: instead of a sum: ``~max|<scope>|cost`` (micro-USD), ``~min|<scope>|duration`` (ms), ...;
#: no counter starts with "~". Percentiles are clamped to them (older hours have none).
MAX_PREFIX = "~max|"
MIN_PREFIX = "~min|"


def combine(total: dict[str, float], field: str, value: float) -> None:
    """Add one hash field into ``total``: an extreme by max/min, any other counter by sum."""
    if field.startswith(MAX_PREFIX):
        total[field] = max(total[field], value) if field in total else value
    elif field.startswith(MIN_PREFIX):
        total[field] = min(total[field], value) if field in total else value
    else:
        total[field] = total.get(field, 0.0) + value


def increments(summary: Mapping[str, Any], quality_threshold: float) -> dict[str, float]:
    """The counters one finished session adds to its hour (and the extremes it may raise)."""
    out: dict[str, float] = {}
    duration = max(0, summary["end_time_us"] - summary["start_time_us"])
    for scope in scopes(summary):
        out[f"{scope}|sessions"] = 1
        out[f"{scope}|cost"] = summary["cost_micros"]
        out[f"{scope}|outcome|{summary['status']}"] = 1
        out[f"{scope}|cost_bucket|{cost_bucket(summary['cost_micros'])}"] = 1
        out[f"{scope}|duration_bucket|{duration_bucket(duration)}"] = 1
        for prefix in (MAX_PREFIX, MIN_PREFIX):
            out[f"{prefix}{scope}|cost"] = summary["cost_micros"]
            out[f"{prefix}{scope}|duration"] = duration / 1000
    if summary["status"] in ("ERROR", "TIMEOUT", "KILLED"):
        mode = "|".join((summary["error_type"] or summary["status"],
                         summary["failure_step_kind"] or "SESSION",
                         summary["failure_tool"] or "-"))  # fmt: skip
        out[f"failure|{summary['status']}|{mode}"] = 1
    category = summary["category"] or "uncategorised"
    for name, score in summary["evaluations"].items():
        if name == "output" or not math.isfinite(score):
            continue
        out[f"quality|{category}|{name}|count"] = 1
        out[f"quality|{category}|{name}|sum"] = score
        out[f"quality|{category}|{name}|below"] = int(score < quality_threshold)
    return out


def compact(summary: Mapping[str, Any]) -> dict[str, Any]:
    """What answers need of one session: never content, only totals and names."""
    keep = ("session_id", "tenant_id", "agent_id", "category", "prompt_version", "status",
            "error_type", "start_time_us", "end_time_us", "cost_micros", "input_tokens",
            "output_tokens", "cache_read_input_tokens", "steps_by_kind", "tool_calls",
            "tokens_by_model", "cost_by_model", "retries", "max_context_tokens", "slowest_step",
            "evaluations",
            # the failure mode, so answers can count a cut hour from its sessions exactly
            "failure_step_kind", "failure_tool")  # fmt: skip
    # older summaries (SessionSummary v1) have no parent
    return {**{k: summary[k] for k in keep}, "parent_session_id": summary.get("parent_session_id")}


class SessionReadModel:
    def __init__(self, client: redis.Redis, key_prefix: str, retention_days: int = 35) -> None:
        self.redis = client
        self.prefix = key_prefix
        self.ttl_s = retention_days * 86_400
        self._apply = client.register_script(APPLY)
        #: values left out of the read-model, by reason (NON_FINITE_SCORE)
        self.dropped: Counter[str] = Counter()

    def key(self, kind: str, hour: int) -> str:
        return f"{self.prefix}rm:{kind}:{hour}"

    def summary_key(self, session_id: str) -> str:
        return f"{self.prefix}rm:session:{session_id}"

    def apply(self, summaries: Iterable[Mapping[str, Any]], quality_threshold: float) -> int:
        """Apply finished sessions (each once, however often it is applied); returns how many
        were new. Safe to repeat after any failure: each session is one atomic Lua call."""
        clean, dropped = without_non_finite(summaries)
        if dropped:
            self.dropped[NON_FINITE_SCORE] += dropped
        pipe = self.redis.pipeline(transaction=False)
        n = 0
        for s in clean:
            hour = hour_of(s["end_time_us"])
            fields: list[Any] = []
            for field, value in increments(s, quality_threshold).items():
                fields.extend((field, value))
            duration = max(0, s["end_time_us"] - s["start_time_us"])
            scores = [v for name, v in s["evaluations"].items() if name != "output"]
            below = bool(scores) and min(scores) < quality_threshold
            category = s["category"] or "uncategorised"
            samples = self.key(f"quality-samples:{category}", hour) if below else ""
            latest = self.key(f"quality-latest:{category}", hour) if below else ""
            self._apply(
                keys=[self.key("seen", hour), self.key("stats", hour), self.key("cost", hour),
                      self.key("duration", hour), self.summary_key(s["session_id"]), samples,
                      latest],
                args=[s["session_id"], s["cost_micros"], duration,
                      json.dumps(compact(s), separators=(",", ":")), self.ttl_s,
                      s["end_time_us"], QUALITY_SAMPLES, *fields],
                client=pipe,
            )  # fmt: skip
            n += 1
        return sum(int(x) for x in pipe.execute()) if n else 0
