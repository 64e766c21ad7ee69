"""Planning is deterministic, and a planned fleet has the statistics its parameters ask for."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Iterator
from typing import Any

import phonenumbers
import pytest

from streams.pipeline.pricing import PriceTable
from streams.simulator import catalog
from streams.simulator.offline import simulate_offline
from streams.simulator.params import FleetParams
from streams.simulator.pii import (
    CREDIT_CARD,
    EMAIL_ADDRESS,
    ENTITY_TYPES,
    PERSON,
    PHONE_NUMBER,
    US_SSN,
    luhn_valid,
    ssn_valid,
)
from streams.simulator.plan import (
    ABANDONED,
    BLOCKED,
    ERROR,
    OK,
    PII_BLOCKED,
    EvaluationStep,
    LlmStep,
    OutputStep,
    Segment,
    SessionPlan,
    ToolStep,
    plan_fleet,
    shipped_pii_policy,
)
from tests.unit.simulator.conftest import END_US

S = 1_000_000


def _texts(plans: list[SessionPlan]) -> Iterator[Segment]:
    """Every text that may carry PII (system prompts never do)."""
    for plan in plans:
        for step in plan.steps:
            yield from (s for s in step.segments if s.role != "SYSTEM")


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


# --- determinism ---------------------------------------------------------------------------


def test_the_same_seed_plans_the_same_fleet_and_the_same_truth(prices: PriceTable) -> None:
    params = FleetParams(sessions=300, seed=5, end_us=END_US)
    first, again = plan_fleet(params), plan_fleet(params)
    assert first == again
    truth = simulate_offline(first, prices)[1]
    assert json.dumps(truth) == json.dumps(simulate_offline(again, prices)[1])


def test_another_seed_plans_another_fleet(prices: PriceTable) -> None:
    one = plan_fleet(FleetParams(sessions=300, seed=5, end_us=END_US))
    other = plan_fleet(FleetParams(sessions=300, seed=6, end_us=END_US))
    assert {p.session_id for p in one}.isdisjoint(p.session_id for p in other)
    assert [p.steps for p in one] != [p.steps for p in other]
    # names come from a small pool and may recur across seeds; every other value is random
    canaries = [
        {v.value for p in f for v in p.pii if v.entity_type != PERSON} for f in (one, other)
    ]
    assert canaries[0]
    assert canaries[0].isdisjoint(canaries[1])


def test_another_end_gives_other_session_ids_but_the_same_shapes() -> None:
    """Two runs of one seed at different times must not collide in the worker's state."""
    early = plan_fleet(FleetParams(sessions=50, seed=5, end_us=END_US))
    # a day later, so the diurnal pattern lines up the same way
    later = plan_fleet(FleetParams(sessions=50, seed=5, end_us=END_US + 86_400 * S))
    assert {p.session_id for p in early}.isdisjoint(p.session_id for p in later)
    assert [len(p.steps) for p in early] == [len(p.steps) for p in later]


# --- time ----------------------------------------------------------------------------------


def test_sessions_are_sorted_and_inside_the_simulated_week(
    fleet: list[SessionPlan], fleet_params: FleetParams
) -> None:
    starts = [p.start_us for p in fleet]
    assert starts == sorted(starts)
    assert [p.index for p in fleet] == list(range(len(fleet)))
    assert fleet_params.start_us <= starts[0]
    assert starts[-1] < fleet_params.end_us
    assert fleet_params.end_us - fleet_params.start_us == 7 * 86_400 * S


def test_each_step_starts_after_the_previous_one_ended_plus_its_think_time(
    fleet: list[SessionPlan],
) -> None:
    for plan in fleet:
        previous_end = plan.start_us
        for step in plan.steps:
            assert step.start_us == previous_end + step.think_us
            assert step.think_us > 0
            previous_end = step.end_us
        if plan.ending == ABANDONED:
            assert plan.end_us is None
        else:
            assert plan.end_us is not None
            assert plan.end_us > previous_end


def test_durations_are_realistic_with_a_tail(fleet: list[SessionPlan]) -> None:
    steps = [s for p in fleet for s in p.steps]
    llm = [s.duration_us for s in steps if isinstance(s, LlmStep) and s.status == OK]
    tools = [s.duration_us for s in steps if isinstance(s, ToolStep) and s.status == OK]
    assert min(llm) >= 300_000
    assert 0.8 * S < statistics.median(llm) < 8 * S
    assert max(llm) > 8 * S  # the tail
    assert min(tools) >= 5_000
    assert statistics.median(tools) < 1 * S
    assert max(tools) > 3 * S
    timeouts = [s for s in steps if isinstance(s, ToolStep) and s.error_type == "ToolTimeout"]
    assert timeouts
    assert all(s.duration_us == catalog.TOOLS[s.name].timeout_ms * 1000 for s in timeouts)


def test_more_sessions_start_in_the_afternoon_than_at_night(fleet: list[SessionPlan]) -> None:
    hours = Counter((p.start_us // (3600 * S)) % 24 for p in fleet)
    afternoon = sum(hours[h] for h in range(12, 17))
    night = sum(hours[h] for h in range(0, 5))
    assert afternoon > 2.5 * night


# --- shape ---------------------------------------------------------------------------------


def test_session_lengths_and_costs_are_heavy_tailed(
    fleet: list[SessionPlan], fleet_truth: dict[str, dict[str, Any]]
) -> None:
    normal = [p for p in fleet if not p.budget_breaker]
    turns = sorted(sum(isinstance(s, LlmStep) for s in p.steps) for p in normal)
    assert turns[len(turns) // 2] <= 4
    assert turns[int(len(turns) * 0.99)] >= 4 * turns[len(turns) // 2]
    costs = sorted(fleet_truth[p.session_id]["cost_micros"] for p in normal)
    assert statistics.mean(costs) > 2 * statistics.median(costs)


def test_the_fleet_has_tenants_with_two_to_four_named_agents(fleet: list[SessionPlan]) -> None:
    agents: dict[str, set[str]] = {}
    for plan in fleet:
        agents.setdefault(plan.tenant_id, set()).add(plan.agent_id)
    assert set(agents) == {"acme", "globex", "initech"}
    for names in agents.values():
        assert 2 <= len(names) <= 4
        assert {"support-bot", "billing-agent"} <= names <= set(catalog.AGENTS)


def test_outcome_fractions_match_the_parameters(
    fleet: list[SessionPlan], fleet_params: FleetParams
) -> None:
    endings = Counter(p.ending for p in fleet)
    n = len(fleet)
    assert abs(_share(endings[ERROR], n) - fleet_params.error_fraction) < 0.012
    assert abs(_share(endings[ABANDONED], n) - fleet_params.abandoned_fraction) < 0.012
    errors = [p for p in fleet if p.ending == ERROR]
    assert all(p.error_type for p in errors)
    assert all(p.error_type is None for p in fleet if p.ending != ERROR)
    # an ERROR session ends on a failing step or with an exception of the agent's own
    kinds = Counter(p.error_type in catalog.AGENT_EXCEPTIONS for p in errors)
    assert kinds[True] > 0
    assert kinds[False] > 0
    for plan in errors:
        if plan.error_type not in catalog.AGENT_EXCEPTIONS:
            last = plan.steps[-1]
            assert isinstance(last, LlmStep | ToolStep)
            assert last.error_type == plan.error_type


def test_only_completed_sessions_answer_and_are_evaluated(fleet: list[SessionPlan]) -> None:
    for plan in fleet:
        outputs = [s for s in plan.steps if isinstance(s, OutputStep)]
        evaluations = [s for s in plan.steps if isinstance(s, EvaluationStep)]
        expected = 1 if plan.ending == OK else 0
        assert len(outputs) == len(evaluations) == expected


def test_returns_scores_below_the_threshold_and_other_categories_above(
    fleet: list[SessionPlan], fleet_params: FleetParams
) -> None:
    scores: dict[str, list[float]] = {}
    for plan in fleet:
        for step in plan.steps:
            if isinstance(step, EvaluationStep):
                scores.setdefault(plan.category, []).append(step.score)
    assert set(scores) == set(fleet_params.category_names)
    means = {category: statistics.mean(values) for category, values in scores.items()}
    assert means["returns"] < fleet_params.score_threshold - 0.1
    for category, mean in means.items():
        if category != "returns":
            assert mean > fleet_params.score_threshold + 0.05, category
        assert abs(mean - dict(fleet_params.category_scores)[category]) < 0.03


# --- the prompt change ---------------------------------------------------------------------


def _tool_rate(plans: list[SessionPlan]) -> float:
    """First attempts of ordinary tool calls per LLM turn that may call tools."""
    tools = turns = 0
    for plan in plans:
        tools += sum(isinstance(s, ToolStep) and not (s.retry or s.denied) for s in plan.steps)
        answered = sum(isinstance(s, LlmStep) and s.status == OK for s in plan.steps)
        turns += answered - 1  # the last turn answers instead of calling tools
    return tools / turns


def _tool_error_rate(plans: list[SessionPlan]) -> float:
    tools = [s for p in plans for s in p.steps if isinstance(s, ToolStep) and not s.denied]
    return _share(sum(s.status == ERROR for s in tools), len(tools))


def test_the_prompt_change_brings_more_tool_calls_and_more_tool_errors(
    fleet: list[SessionPlan], fleet_params: FleetParams
) -> None:
    changed = [
        p
        for p in fleet
        if (p.tenant_id, p.agent_id) == (fleet_params.changed_tenant, fleet_params.changed_agent)
        and p.ending == OK
        and not p.budget_breaker
    ]
    before = [p for p in changed if p.start_us < fleet_params.change_us]
    after = [p for p in changed if p.start_us >= fleet_params.change_us]
    assert {p.prompt_version for p in before} == {"p7"}
    assert {p.prompt_version for p in after} == {"p8"}
    assert len(before) > 150
    assert len(after) > 100
    ratio = _tool_rate(after) / _tool_rate(before)
    assert 1.15 < ratio < 1.5, ratio
    per_session = [statistics.mean(len(p.steps) for p in group) for group in (before, after)]
    assert per_session[1] > per_session[0]
    assert _tool_error_rate(after) > 2 * _tool_error_rate(before)


def test_no_other_agent_changes_its_prompt(
    fleet: list[SessionPlan], fleet_params: FleetParams
) -> None:
    versions: dict[tuple[str, str], set[str]] = {}
    for plan in fleet:
        versions.setdefault((plan.tenant_id, plan.agent_id), set()).add(plan.prompt_version)
    changed = (fleet_params.changed_tenant, fleet_params.changed_agent)
    assert versions.pop(changed) == {"p7", "p8"}
    assert all(len(v) == 1 and "p8" not in v for v in versions.values())


def test_the_change_moves_with_change_at() -> None:
    late = FleetParams(sessions=400, seed=3, end_us=END_US, change_at=1.0)
    early = late.replace(change_at=0.0)
    assert "p8" not in {p.prompt_version for p in plan_fleet(late)}
    changed = [p for p in plan_fleet(early) if (p.tenant_id, p.agent_id) == ("acme", "support-bot")]
    assert changed
    assert {p.prompt_version for p in changed} == {"p8"}


# --- PII -----------------------------------------------------------------------------------


def test_about_a_tenth_of_the_texts_carry_pii(
    fleet: list[SessionPlan], fleet_params: FleetParams
) -> None:
    texts = list(_texts(fleet))
    share = _share(sum(bool(t.pii) for t in texts), len(texts))
    assert abs(share - fleet_params.pii_fraction) < 0.015
    hops = Counter(t.role for t in texts if t.pii)
    assert set(hops) == {"USER", "TOOL_ARGUMENTS", "TOOL_RESULT", "OUTPUT"}


def test_no_pii_without_the_fraction() -> None:
    plans = plan_fleet(FleetParams(sessions=200, seed=2, end_us=END_US, pii_fraction=0.0))
    assert not any(p.pii for p in plans)


def test_pii_values_are_unique_valid_and_where_the_plan_says() -> None:
    plans = plan_fleet(FleetParams(sessions=2000, seed=4, end_us=END_US, pii_fraction=0.3))
    values = [v for p in plans for v in p.pii]
    assert len(values) == len({v.value for v in values}) > 1000
    by_type = Counter(v.entity_type for v in values)
    assert set(by_type) == set(ENTITY_TYPES)
    for value in values:
        if value.entity_type == CREDIT_CARD:
            assert luhn_valid(value.value)
            assert len([c for c in value.value if c.isdigit()]) == 16
        elif value.entity_type == US_SSN:
            assert ssn_valid(value.value)
        elif value.entity_type == PHONE_NUMBER:
            assert phonenumbers.is_valid_number(phonenumbers.parse(value.value, "US"))
        elif value.entity_type == EMAIL_ADDRESS:
            local, domain = value.value.split("@")
            assert domain.startswith("example.")
            assert local.count(".") == 2
    for text in _texts(plans):
        assert all(v.value in text.text for v in text.pii)


def test_a_value_appears_in_one_session_only(fleet: list[SessionPlan]) -> None:
    owners: dict[str, str] = {}
    for plan in fleet:
        for value in plan.pii:
            assert owners.setdefault(value.value, plan.session_id) == plan.session_id


def test_tool_calls_the_client_refuses_are_planned_as_it_records_them(
    fleet: list[SessionPlan], fleet_truth: dict[str, dict[str, Any]]
) -> None:
    blocked = 0
    for plan in fleet:
        for n, step in enumerate(plan.steps):
            if not isinstance(step, ToolStep):
                continue
            planted = {v.entity_type for v in step.args.pii}
            assert step.blocked == tuple(sorted(planted & {CREDIT_CARD, US_SSN}))
            if not step.blocked:
                assert step.status in (OK, ERROR)
                continue
            blocked += 1
            # what the client records for it: the arguments, nothing it would have returned
            assert (step.status, step.error_type) == (BLOCKED, PII_BLOCKED)
            assert (step.result, step.duration_us, step.cost_usd) == (None, 0, None)
            # never retried (the same arguments would be refused again), nor a retry itself
            assert not step.retry
            later = [s for s in plan.steps[n + 1 :] if isinstance(s, ToolStep)]
            assert all(s.call_id != step.call_id for s in later)
        truth = fleet_truth[plan.session_id]
        assert truth["blocked_tool_calls"] == sum(
            isinstance(s, ToolStep) and bool(s.blocked) for s in plan.steps
        )
    assert blocked > 100


def test_a_session_that_fails_on_a_refused_call_ends_with_its_error_type(
    prices: PriceTable,
) -> None:
    plans = plan_fleet(FleetParams(sessions=600, seed=21, end_us=END_US, error_fraction=0.2))
    failing = [p for p in plans if p.ending == ERROR and p.error_type == PII_BLOCKED]
    assert failing
    truths = {t["session_id"]: t for t in simulate_offline(failing, prices)[1]}
    for plan in failing:
        last = plan.steps[-1]
        assert isinstance(last, ToolStep)
        assert last.blocked
        truth = truths[plan.session_id]
        assert (truth["outcome"], truth["error_type"]) == ("ERROR", PII_BLOCKED)
        assert (truth["failure_step_kind"], truth["failure_tool"]) == ("TOOL_CALL", last.name)


def test_without_a_block_rule_every_tool_call_runs() -> None:
    shipped = shipped_pii_policy()
    assert shipped.blocks_tool_arguments()
    open_policy = shipped.model_copy(
        update={"rules": [r for r in shipped.rules if r.handling != "block"]}
    )
    params = FleetParams(sessions=300, seed=4, end_us=END_US, pii_fraction=0.3)
    guarded, unguarded = plan_fleet(params), plan_fleet(params, open_policy)
    assert any(isinstance(s, ToolStep) and s.blocked for p in guarded for s in p.steps)
    assert not any(isinstance(s, ToolStep) and s.blocked for p in unguarded for s in p.steps)
    assert plan_fleet(params, shipped) == guarded


# --- governance ----------------------------------------------------------------------------


def test_budget_breakers_cost_well_above_two_dollars(
    fleet: list[SessionPlan], fleet_truth: dict[str, dict[str, Any]], fleet_params: FleetParams
) -> None:
    breakers = [p for p in fleet if p.budget_breaker]
    assert abs(_share(len(breakers), len(fleet)) - fleet_params.budget_breaker_fraction) < 0.006
    for plan in breakers:
        truth = fleet_truth[plan.session_id]
        assert truth["budget_breaker"] is True
        assert truth["cost_micros"] > 3_000_000
        assert truth["max_context_tokens"] >= 70_000
        assert truth["llm_calls"] >= 25
    ordinary = sorted(
        fleet_truth[p.session_id]["cost_micros"] for p in fleet if not p.budget_breaker
    )
    assert ordinary[len(ordinary) // 2] < 100_000  # the typical session costs cents


def test_some_sessions_call_denied_tools(
    fleet: list[SessionPlan], fleet_truth: dict[str, dict[str, Any]], fleet_params: FleetParams
) -> None:
    denied = [p for p in fleet if p.denied_tool]
    assert abs(_share(len(denied), len(fleet)) - fleet_params.denied_tool_fraction) < 0.01
    for plan in denied:
        assert plan.denied_tool in catalog.DENIED_TOOLS
        assert fleet_truth[plan.session_id]["denied_tools"] == [plan.denied_tool]
    assert all(not fleet_truth[p.session_id]["denied_tools"] for p in fleet if not p.denied_tool)


def test_most_llm_calls_leave_pricing_to_the_worker_and_a_few_cannot_be_priced(
    fleet: list[SessionPlan], fleet_params: FleetParams, prices: PriceTable
) -> None:
    llm = [s for p in fleet for s in p.steps if isinstance(s, LlmStep)]
    answered = [s for s in llm if s.status == OK]
    reported = _share(sum(s.cost_usd is not None for s in answered), len(answered))
    assert abs(reported - fleet_params.reported_cost_fraction) < 0.03
    unknown = [s for s in llm if s.model == catalog.UNKNOWN_MODEL]
    assert abs(_share(len(unknown), len(llm)) - fleet_params.unknown_model_fraction) < 0.006
    assert all(s.cost_usd is None and prices.price_micros(s.model, 1, 1) is None for s in unknown)
    assert all(prices.price_micros(s.model, 1, 1) is not None for s in llm if s not in unknown)


def test_a_few_percent_of_llm_calls_have_long_contexts(fleet: list[SessionPlan]) -> None:
    llm = [
        s
        for p in fleet
        if not p.budget_breaker
        for s in p.steps
        if isinstance(s, LlmStep) and s.status == OK
    ]
    long = [s for s in llm if s.input_tokens >= 50_000]
    assert 0.015 < _share(len(long), len(llm)) < 0.05
    assert max(s.input_tokens for s in long) > 120_000


def test_failures_have_named_types_and_retries_match_the_truth(
    fleet: list[SessionPlan], fleet_truth: dict[str, dict[str, Any]]
) -> None:
    steps = [s for p in fleet for s in p.steps if isinstance(s, LlmStep | ToolStep)]
    ran = [s for s in steps if not (isinstance(s, ToolStep) and s.blocked)]
    tool_errors = {s.error_type for s in ran if isinstance(s, ToolStep) and s.error_type}
    llm_errors = {s.error_type for s in ran if isinstance(s, LlmStep) and s.error_type}
    assert tool_errors == set(catalog.TOOL_ERRORS)
    assert llm_errors == {catalog.LLM_OVERLOADED, catalog.LLM_CONTEXT_EXCEEDED}
    assert all(s.status == ERROR for s in ran if s.error_type)
    retried = 0
    for plan in fleet:
        planned = sum(isinstance(s, LlmStep | ToolStep) and s.retry for s in plan.steps)
        assert fleet_truth[plan.session_id]["retries"] == planned
        retried += planned
    assert retried > 50


# --- parameters ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"sessions": -1},
        {"days": 0},
        {"tenants": 0},
        {"tenants": 9},
        {"pii_fraction": 1.5},
        {"change_at": -0.1},
        {"min_agents_per_tenant": 3, "max_agents_per_tenant": 2},
        {"changed_agent": "ops-agent"},
        {"changed_tenant": "nobody"},
    ],
)
def test_invalid_parameters_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="invalid fleet parameters"):
        FleetParams(**changes)


def test_parameters_round_trip_through_json() -> None:
    params = FleetParams(sessions=10, seed=3, end_us=END_US, change_at=0.25)
    assert FleetParams.from_json(json.loads(json.dumps(params.to_json()))) == params


def test_the_truth_of_an_uninterrupted_session_keeps_the_planned_times(
    fleet: list[SessionPlan], fleet_truth: dict[str, dict[str, Any]]
) -> None:
    for plan in fleet:
        truth = fleet_truth[plan.session_id]
        last_step_end = max([plan.start_us, *(s.end_us for s in plan.steps)])
        assert truth["start_time_us"] == plan.start_us
        assert truth["end_time_us"] == plan.end_us
        assert truth["last_event_time_us"] == (plan.end_us or last_step_end)
        assert truth["outcome"] == {OK: "OK", ERROR: "ERROR", ABANDONED: "TIMEOUT"}[plan.ending]
        assert truth["events"] == plan.planned_events
        assert truth["error_type"] == plan.error_type
