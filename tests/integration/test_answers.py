"""`governor ask` cost, top-cost, outcomes and latency equal the truth of a simulated week
(real broker, Redis and worker): counts and costs exact, percentiles within the error they
state and never above the maximum."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console

from streams.pipeline.aggregates import DAY_US
from streams.settings import Settings
from streams.simulator.params import FleetParams
from streams.simulator.run import run_simulation
from streams.simulator.truth import load_truth
from streams.worker import WorkerProcess
from tests.kafka_helpers import ask, close_silent_sessions

REPO = Path(__file__).resolve().parents[2]
BUCKET = 2**0.25  # the histograms' bucket ratio


def end_of(s: Mapping[str, Any]) -> int:
    return int(s["end_time_us"] if s["end_time_us"] is not None else s["last_event_time_us"])


def nth(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def within_stated(true: float, reported: float, error: float | None, most: float) -> bool:
    """Never above the maximum, and within the relative error the answer states for it (no
    bound stated: the first bucket, within its top of 1 unit)."""
    if reported > most * 1.000001:
        return False
    if error is None:
        return abs(reported - true) <= 1.000001
    assert error <= BUCKET - 1 + 1e-9
    return abs(reported - true) <= error * true * 1.000001 + 1e-6


def test_answers_equal_the_truth_of_a_simulated_week(topics: Settings, tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    settings = topics.replace(policies_dir=policies, keys_dir=tmp_path / "keys")
    truth_path = tmp_path / "truth.jsonl"
    with WorkerProcess(settings, tmp_path / "worker.log"):
        run_simulation(
            settings,
            Console(quiet=True),
            FleetParams(sessions=400, seed=13, concurrency=16),
            rate=0,
            truth_path=truth_path,
        )
        truth = load_truth(truth_path).sessions
        close_silent_sessions(settings, max(end_of(s) for s in truth) + 3_600_000_000)
        deadline = time.monotonic() + 90
        while ask(settings, "outcomes", "--since", "30d")["sessions"] < len(truth):
            assert time.monotonic() < deadline, "the read-model did not catch up"
            time.sleep(0.25)

        outcomes = ask(settings, "outcomes", "--since", "30d")
        expected = {
            o: sum(s["outcome"] == o for s in truth) for o in ("OK", "ERROR", "TIMEOUT", "KILLED")
        }
        assert outcomes["counts"] == expected

        now = time.time_ns() // 1000
        today = now - now % DAY_US
        cost = ask(settings, "cost")["scopes"]["all"]
        for name, (lo, hi) in {
            "today": (today, today + DAY_US - 1),
            "same_day_last_week": (today - 7 * DAY_US, today - 6 * DAY_US - 1),
            "last_7_days": (today - 7 * DAY_US, today - 1),
        }.items():
            costs = [s["cost_micros"] for s in truth if lo <= end_of(s) <= hi]
            got = cost[name]
            assert got["sessions"] == len(costs), name
            assert round(got["cost_usd"] * 1e6) == sum(costs), name
            if costs:
                most = max(costs)
                assert round(got["max_usd"] * 1e6) == most, name
                for q, label in ((0.5, "p50"), (0.99, "p99")):
                    reported, error = got[f"{label}_usd"] * 1e6, got[f"{label}_error"]
                    assert within_stated(nth(costs, q), reported, error, most), (name, label)

        top = ask(settings, "top-cost", "--pct", "1", "--since", "30d")
        ranked = sorted(truth, key=lambda s: (-s["cost_micros"], s["session_id"]))
        count = math.ceil(len(truth) / 100)
        assert [t["session_id"] for t in top["top"]] == [s["session_id"] for s in ranked[:count]]
        first = {s["session_id"]: s for s in truth}[top["top"][0]["session_id"]]
        assert top["top"][0]["retries"] == first["retries"]
        assert top["median"] is not None

        quality = {
            (r["category"], r["evaluation"]): r
            for r in ask(settings, "quality", "--since", "30d")["categories"]
        }
        scores: dict[tuple[str, str], list[float]] = {}
        for s in truth:
            for name, score in s["evaluations"].items():
                if name != "output":
                    scores.setdefault((s["category"], name), []).append(score)
        assert set(quality) == set(scores)
        for key, values in scores.items():
            assert quality[key]["sessions"] == len(values)
            assert abs(quality[key]["mean"] - sum(values) / len(values)) < 1e-9
            assert quality[key]["flagged"] == (sum(values) / len(values) < 0.7)
        flagged = [k for k, r in quality.items() if r["flagged"]]
        assert ("returns", "helpfulness") in flagged or any(k[0] == "returns" for k in flagged)
        assert all(quality[k]["samples"] for k in flagged)

        latency = ask(settings, "latency", "--window", "30d")
        for kind in ("LLM_CALL", "TOOL_CALL"):
            steps = sum(s["steps_by_kind"].get(kind, 0) for s in truth)
            assert latency["step_ms_by_kind"][kind]["steps"] == steps
        durations = [s["duration_us"] / 1000 for s in truth]
        for q, label in ((0.5, "p50"), (0.9, "p90"), (0.99, "p99")):
            reported, error = latency["session_ms"][label], latency["session_ms_error"][label]
            assert within_stated(nth(durations, q), reported, error, max(durations)), label
        todays = sorted(
            (s for s in truth if end_of(s) >= today),
            key=lambda s: (-s["duration_us"], s["session_id"]),
        )[:10]
        assert [s["session_id"] for s in latency["slowest_today"]] == [
            s["session_id"] for s in todays
        ]


def _summary(
    session_id: str,
    end_us: int,
    status: str = "OK",
    error_type: str | None = None,
    step_kind: str | None = None,
    tool: str | None = None,
) -> dict[str, Any]:
    return {
        "session_id": session_id, "tenant_id": "acme", "agent_id": "bot",
        "category": "billing", "prompt_version": None, "status": status,
        "error_type": error_type, "start_time_us": end_us - 2_000_000, "end_time_us": end_us,
        "cost_micros": 100, "input_tokens": 0, "output_tokens": 0,
        "cache_read_input_tokens": 0, "steps_by_kind": {}, "tool_calls": {},
        "tokens_by_model": {}, "cost_by_model": {}, "retries": 0, "max_context_tokens": 0,
        "slowest_step": None, "evaluations": {}, "failure_step_kind": step_kind,
        "failure_tool": tool,
    }  # fmt: skip


def test_the_last_hour_is_exactly_the_last_hour_and_failure_modes_add_up(
    settings: Settings,
) -> None:
    """Sessions just outside "the last 1h" (at now - 1h, after now, earlier in the first hour)
    share hours with sessions inside it; only the inside ones are counted, and one failure mode
    that ended sessions as ERROR, TIMEOUT and KILLED counts all of them."""
    import redis

    from streams.pipeline.aggregates import HOUR_US
    from streams.query.answers import Answers
    from streams.query.readmodel import SessionReadModel

    now = (time.time_ns() // 1000) // HOUR_US * HOUR_US - 5 * HOUR_US + HOUR_US // 2
    model = SessionReadModel(redis.Redis.from_url(settings.redis_url), settings.redis_key_prefix)
    mode = {"error_type": "ToolTimeout", "step_kind": "TOOL_CALL", "tool": "search"}
    inside = [
        _summary("in-first", now - HOUR_US + 1),
        _summary("in-error", now - HOUR_US // 4, "ERROR", **mode),
        _summary("in-timeout", now - HOUR_US // 4, "TIMEOUT", **mode),
        _summary("in-killed", now - 1000, "KILLED", **mode),
        _summary("in-last", now),
    ]
    outside = [
        _summary("out-edge", now - HOUR_US, "ERROR", **mode),
        _summary("out-early", now - HOUR_US - 60_000_000, "KILLED", **mode),
        _summary("out-future", now + 1, "TIMEOUT", **mode),
        _summary("out-later", now + HOUR_US // 4),
    ]
    try:
        assert model.apply([*inside, *outside], 0.7) == len(inside) + len(outside)
        answers = Answers(model, clock_us=now)
        outcomes = answers.outcomes("1h")
        assert outcomes["sessions"] == len(inside)
        assert outcomes["counts"] == {"OK": 2, "ERROR": 1, "TIMEOUT": 1, "KILLED": 1}
        assert outcomes["failure_modes"] == [
            {**mode, "count": 3, "statuses": {"ERROR": 1, "TIMEOUT": 1, "KILLED": 1},
             "cause": "ToolTimeout"}
        ]  # fmt: skip
        latency = answers.latency("1h")
        assert latency["sessions"] == len(inside)
        assert latency["session_ms"]["p50"] is not None
        assert 2000 <= latency["session_ms"]["p50"] <= 2000 * BUCKET
        # a window with whole hours: those come from the counters, the cut ones from sessions
        assert answers.outcomes("3h")["sessions"] == len(inside) + 2
        assert Answers(model, clock_us=now + HOUR_US).outcomes("30d")["sessions"] == 9
        top = answers.top_cost(100.0, "1h")
        assert {t["session_id"] for t in top["top"]} == {s["session_id"] for s in inside}
    finally:
        keys = list(model.redis.scan_iter(match=f"{settings.redis_key_prefix}rm:*"))
        if keys:
            model.redis.delete(*keys)
