"""decide: what each policy kind calls for, given a session and the facts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from streams.pipeline.accounting import fold, new_state
from streams.pipeline.policy import Facts, PolicyFile, PolicySet, decide, duration_s
from streams.pipeline.pricing import load_prices
from tests.unit.pipeline.test_accounting import ev

PRICES = load_prices(Path(__file__).resolve().parents[3] / "policies" / "prices.yaml")


def policies(*items: dict[str, Any]) -> PolicySet:
    return PolicySet.build([PolicyFile.model_validate({"version": 3, "policies": list(items)})])


def facts(spend: int = 0, active: int = 0, steps: int = 0, failures: int = 0) -> Facts:
    return Facts(
        spend=lambda key, window: spend,
        active=lambda key: active,
        steps=lambda scope, sid, window: steps,
        tool_failures=lambda tool, window: failures,
    )


def outcomes(policy_set: PolicySet, events: list[dict[str, Any]], f: Facts) -> list[Any]:
    state = new_state(events[0])
    found = []
    for event in events:
        delta = fold(state, event, PRICES)
        assert delta is not None
        found.extend(decide(policy_set, state, delta, f))
    return found


def test_session_budget_warns_then_acts() -> None:
    ps = policies(
        {"id": "b", "kind": "budget", "scope": "session", "limit_usd": 0.01, "warn_at": 0.5}
    )
    events = [
        ev(1, "SESSION_START"),
        ev(2, "LLM_CALL", model="gpt-4o", cost_micros=6_000),
        ev(3, "LLM_CALL", model="gpt-4o", cost_micros=6_000),
    ]
    found = outcomes(ps, events, facts())
    assert [(o.action, o.level, o.target) for o in found] == [
        ("WARN", 1, "session:s1"),
        ("KILL", 2, "session:s1"),
    ]
    assert "over the $0.0100 limit" in found[1].reason


def test_agent_budget_uses_window_spend_and_lapses() -> None:
    ps = policies(
        {
            "id": "a",
            "kind": "budget",
            "scope": "agent",
            "window": "1h",
            "limit_usd": 1,
            "action": "throttle",
            "throttle_delay_ms": 250,
        }
    )
    events = [ev(1, "LLM_CALL", model="gpt-4o", cost_micros=10)]
    [found] = outcomes(ps, events, facts(spend=1_000_001))
    assert (found.action, found.target, found.parameters) == (
        "THROTTLE",
        "agent:acme/bot",
        {"delay_ms": "250"},
    )
    assert found.ttl_s == 3600
    assert outcomes(ps, events, facts(spend=10)) == []


def test_denied_tools_loops_duration_unpriced() -> None:
    ps = policies(
        {"id": "t", "kind": "tools", "deny": ["delete_*"]},
        {"id": "l", "kind": "loop", "max_repeats": 3, "action": "pause"},
        {"id": "d", "kind": "max_duration", "max_duration": "2s"},
        {"id": "u", "kind": "unpriced_model", "action": "kill"},
    )
    events = [
        ev(1, "SESSION_START"),
        ev(2, "TOOL_CALL", tool_name="delete_account"),
        ev(3, "TOOL_CALL", tool_name="x"),
        ev(4, "TOOL_CALL", tool_name="x"),
        ev(5, "TOOL_CALL", tool_name="x"),
        ev(6, "LLM_CALL", model="mystery"),
    ]
    found = {(o.policy_id, o.action) for o in outcomes(ps, events, facts())}
    assert found == {("t", "KILL"), ("l", "PAUSE"), ("d", "KILL"), ("u", "KILL")}


def test_concurrency_acts_on_a_new_session_over_the_cap() -> None:
    ps = policies({"id": "c", "kind": "concurrency", "max_active": 2})
    assert outcomes(ps, [ev(1, "SESSION_START")], facts(active=2)) == []
    [found] = outcomes(ps, [ev(1, "SESSION_START")], facts(active=3))
    assert (found.action, found.target) == ("THROTTLE", "session:s1")


def test_degradation_pauses_the_agent_of_a_failing_tool() -> None:
    ps = policies(
        {
            "id": "g",
            "kind": "degradation",
            "tool": "search_*",
            "max_failures": 5,
            "resume_after": "10m",
        }
    )
    failing = [ev(1, "TOOL_CALL", tool_name="search_web", status="ERROR")]
    assert outcomes(ps, failing, facts(failures=4)) == []
    [found] = outcomes(ps, failing, facts(failures=5))
    assert (found.action, found.target, found.ttl_s) == ("PAUSE", "agent:acme/bot", 600)


def test_match_limits_a_policy_to_tenants_and_agents() -> None:
    ps = policies(
        {
            "id": "t",
            "kind": "tools",
            "deny": ["*"],
            "match": {"tenants": ["globex"], "agents": ["*"]},
        }
    )
    assert outcomes(ps, [ev(1, "TOOL_CALL", tool_name="x")], facts()) == []


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1.5h", 5400), ("7d", 604800)]
)
def test_durations(text: str, seconds: float) -> None:
    assert duration_s(text) == seconds


def test_a_bad_duration_is_refused() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        duration_s("3 weeks")


def test_tool_globs_answer_the_same_when_remembered() -> None:
    """Issue 18: a tools policy's globs are matched once per tool name and remembered; the
    answers stay those of fnmatch (deny wins, allow by glob), also after the lists change."""
    ps = policies(
        {"id": "t", "kind": "tools", "allow": ["search_*", "get_*"], "deny": ["get_secret*"]}
    )
    [policy] = ps.policies
    for _ in range(2):  # the second round answers from the cache
        assert policy.permits("search_kb")
        assert policy.permits("get_order")
        assert not policy.permits("get_secret_key")
        assert not policy.permits("delete_account")
    policy.deny.append("search_w*")
    assert not policy.permits("search_web")
    assert policy.permits("search_kb")
