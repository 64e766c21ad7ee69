"""The drift comparison: real shifts are flagged with their layer, noise and trivia are not."""

from __future__ import annotations

import random
from typing import Any

from streams.pipeline.drift import (
    DriftConfig,
    changed_layers,
    compare,
    describe_change,
    mix_test,
    rate_test,
    sample,
    suspect_layer,
    version_checkpoints,
    window_checkpoint,
)

CONFIG = DriftConfig()
TOOLS = ("search", "lookup", "email", "ticket")


def fake_session(rng: random.Random, *, tool_rate: float = 0.9, output: float = 300.0) -> Any:
    llm = max(1, round(rng.lognormvariate(1.1, 0.6)))
    tools: dict[str, int] = {}
    for _ in range(llm - 1):
        while rng.random() < tool_rate / (1 + tool_rate):
            name = rng.choice(TOOLS)
            tools[name] = tools.get(name, 0) + 1
    out = round(rng.gauss(output, output / 5)) * llm
    return {
        "sid": f"s{rng.random()}",
        "t": 0,
        "v": ["1", "m", "p7", "t1", "1"],
        "llm": llm,
        "tools": tools,
        "tok": 1000 * llm + out,
        "out": out,
        "cost": 100 * llm,
        "dur": 1_000_000 * llm,
        "failed": rng.random() < 0.05,
        "fail": None,
        "cat": rng.choice(("billing", "returns")),
        "score": rng.gauss(0.8, 0.1),
    }


def fleet(seed: int, n: int, **kwargs: float) -> list[Any]:
    rng = random.Random(seed)
    return [fake_session(rng, **kwargs) for _ in range(n)]


def test_a_higher_tool_call_rate_is_a_shift_of_the_tool_rate() -> None:
    result = compare(fleet(1, 1000), fleet(2, 200, tool_rate=0.9 * 1.5), CONFIG)
    shifted = {r.metric for r in result.shifted}
    assert "tool calls per LLM call" in shifted
    row = next(r for r in result.rows if r.metric == "tool calls per LLM call")
    assert row.effect > 0.3
    assert row.p_adjusted < CONFIG.alpha
    assert suspect_layer(result.shifted) == "tool"


def test_longer_outputs_point_at_the_model() -> None:
    result = compare(fleet(3, 600), fleet(4, 300, output=450.0), CONFIG, window=True)
    shifted = {r.metric for r in result.shifted}
    assert "output length (tokens)" in shifted
    assert suspect_layer(result.shifted) == "model"


def test_two_samples_of_one_fleet_show_no_shift() -> None:
    for seed in range(10):
        result = compare(fleet(seed, 800), fleet(seed + 100, 300), CONFIG)
        assert result.shifted == (), [r.metric for r in result.shifted]
        assert {r.metric for r in result.rows} >= {
            "tool calls per LLM call",
            "steps per session",
            "tokens per session",
            "cost per session (micro-USD)",
            "session latency (ms)",
            "error rate",
            "output length (tokens)",
            "quality[billing]",
            "quality[returns]",
        }


def test_adjusted_p_values_are_never_below_the_raw_ones() -> None:
    result = compare(fleet(5, 500), fleet(6, 200, tool_rate=1.2), CONFIG)
    assert all(r.p_adjusted >= r.p_value for r in result.rows)


def test_a_tiny_effect_is_not_a_shift_however_significant() -> None:
    config = DriftConfig(min_effect=0.9)
    result = compare(fleet(1, 1000), fleet(2, 1000, tool_rate=0.9 * 1.5), config)
    assert result.shifted == ()


def test_too_few_sessions_compare_nothing() -> None:
    result = compare(fleet(1, 1000), fleet(2, CONFIG.min_sessions - 1), CONFIG)
    assert result.rows == ()


def test_the_mix_test_discounts_sessions_that_repeat_one_tool() -> None:
    rng = random.Random(9)
    before = [{rng.choice(TOOLS): rng.choice((1, 1, 1, 40))} for _ in range(300)]
    after = [{rng.choice(TOOLS): rng.choice((1, 1, 1, 40))} for _ in range(300)]
    assert mix_test(before, after).p_value > 1e-3
    shifted = [{"search": 1} for _ in range(250)] + after[:50]
    assert mix_test(before, shifted).p_value < 1e-3
    plain = [{rng.choice(TOOLS): 1} for _ in range(300)]
    assert mix_test(plain, [{"search": 1} for _ in range(100)] + plain[:200]).p_value < 1e-6


def test_rate_test_sees_a_pooled_change() -> None:
    before = [(1.0, 2.0)] * 100 + [(0.0, 1.0)] * 100
    after = [(2.0, 2.0)] * 100 + [(0.0, 1.0)] * 100
    result = rate_test(before, after)
    assert result.effect == 1.0
    assert result.p_value < 1e-6
    assert rate_test(before, before).p_value == 1.0


def test_layers_of_a_version_change() -> None:
    before = ["1.4.0", "2025-06", "p7", "t3", "1"]
    after = ["1.4.0", "2025-06", "p8", "t3", "1"]
    assert changed_layers(before, after) == ["prompt"]
    assert changed_layers(before, ["1.5.0", "2025-07", "p7", "t3", "2"]) == [
        "agent",
        "model",
        "policy",
    ]
    assert describe_change(before, after) == "prompt p7 -> p8"


def test_when_the_detector_looks() -> None:
    assert version_checkpoints(CONFIG.min_sessions, 100, CONFIG)
    assert not version_checkpoints(CONFIG.min_sessions - 1, 100, CONFIG)
    assert not version_checkpoints(500, 101, CONFIG)
    first = CONFIG.baseline_sessions + CONFIG.window_sessions
    assert window_checkpoint(first, CONFIG)
    assert window_checkpoint(first + CONFIG.window_sessions, CONFIG)
    assert not window_checkpoint(first - 1, CONFIG)
    assert not window_checkpoint(first + 1, CONFIG)


def test_a_sample_keeps_no_content_and_names_its_failure() -> None:
    summary = {
        "session_id": "s1", "tenant_id": "acme", "agent_id": "bot", "agent_version": "1",
        "model_version": None, "prompt_version": "p7", "tool_schema_version": "t1",
        "policy_version": 3, "status": "ERROR", "error_type": "Timeout",
        "failure_step_kind": "TOOL_CALL", "failure_tool": "search", "start_time_us": 10,
        "end_time_us": 2_000_010, "cost_micros": 5, "input_tokens": 7, "output_tokens": 3,
        "steps_by_kind": {"LLM_CALL": 2, "TOOL_CALL": 1}, "tool_calls": {"search": 1},
        "evaluations": {"output": 1.0, "helpfulness": 0.5, "accuracy": 0.7},
        "category": "billing",
    }  # fmt: skip
    s = sample(summary)
    assert s["v"] == ["1", "-", "p7", "t1", "3"]
    assert s["fail"] == "Timeout|TOOL_CALL|search"
    assert s["failed"]
    assert (s["tok"], s["dur"], s["llm"]) == (10, 2_000_000, 2)
    assert abs(s["score"] - 0.6) < 1e-12
