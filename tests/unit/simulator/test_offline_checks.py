"""The offline stand-in models a fleet whose clients check each step (``governor demo``'s
fleet): what the policies forbid is refused before it runs, recorded as BLOCKED, and a refusal
under a KILL policy ends the session as KILLED naming the policy. Without checks the stand-in
behaves as before (the fleet `governor simulate` models)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

from streams.client.checks import ClientPolicies
from streams.client.policies import BLOCKED_POLICY_ATTR, client_policies
from streams.pipeline.causes import killed_by
from streams.pipeline.pricing import PriceTable
from streams.policy_files import load_bundle
from streams.simulator.offline import simulate_offline
from streams.simulator.params import FleetParams
from streams.simulator.plan import BLOCKED, SessionPlan, plan_fleet
from tests.unit.simulator.conftest import END_US, REPO_ROOT

DENIED = {"delete_account", "shell_exec"}


@pytest.fixture(scope="module")
def policies() -> ClientPolicies:
    return client_policies(load_bundle(REPO_ROOT / "policies"), "local")


@pytest.fixture(scope="module")
def plans() -> list[SessionPlan]:
    params = FleetParams(
        sessions=400, seed=5, end_us=END_US, denied_tool_fraction=0.1,
        budget_breaker_fraction=0.05, pii_fraction=0.0,
    )  # fmt: skip
    return plan_fleet(params)


def by_session(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        out[event["session_id"]].append(event)
    return out


def end_of(events: list[dict[str, Any]]) -> dict[str, Any]:
    return next(e for e in events if e["kind"] == "SESSION_END")


def test_checks_refuse_denied_tools_and_end_the_session_killed(
    plans: list[SessionPlan], prices: PriceTable, policies: ClientPolicies
) -> None:
    events, truths = simulate_offline(plans, prices, checks=policies)
    sessions = by_session(events)
    denied = [p for p in plans if p.denied_tool is not None]
    assert len(denied) > 10
    for plan in denied:
        mine = sessions[plan.session_id]
        calls = [e for e in mine if e["kind"] == "TOOL_CALL" and e["tool_name"] in DENIED]
        # never ran: the one call is BLOCKED, naming the policy, and nothing came after it
        assert [c["status"] for c in calls] == [BLOCKED]
        assert calls[0]["attributes"][BLOCKED_POLICY_ATTR] == "dangerous-tools"
        end = end_of(mine)
        assert end["status"] == "KILLED"
        assert end["error_type"] == killed_by("dangerous-tools")
        assert end["seq"] == calls[0]["seq"] + 1
    outcomes = {t["session_id"]: t["outcome"] for t in truths}
    assert all(outcomes[p.session_id] == "KILLED" for p in denied)


def test_checks_keep_every_session_within_its_budget(
    plans: list[SessionPlan], prices: PriceTable, policies: ClientPolicies
) -> None:
    _, unchecked = simulate_offline(plans, prices)
    _, checked = simulate_offline(plans, prices, checks=policies)
    limit = 2_000_000  # session-budget: $2
    over = [t for t in unchecked if t["cost_micros"] > limit]
    assert over, "the fleet has budget breakers"
    truth = {t["session_id"]: t for t in checked}
    assert max(t["cost_micros"] for t in checked) <= limit
    for breaker in over:
        got = truth[breaker["session_id"]]
        if got["outcome"] == "KILLED" and got["error_type"] == killed_by("session-budget"):
            continue
        # else stopped earlier by another policy (a denied tool) before it spent the budget
        assert got["outcome"] == "KILLED", got


def test_without_checks_the_fleet_runs_what_it_planned(
    plans: list[SessionPlan], prices: PriceTable
) -> None:
    events, _ = simulate_offline(plans, prices)
    ran = [e for e in events if e["kind"] == "TOOL_CALL" and e["tool_name"] in DENIED]
    assert ran
    assert all(e["status"] != BLOCKED for e in ran)
