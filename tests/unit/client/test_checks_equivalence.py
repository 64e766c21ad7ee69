"""Equivalence: the client's verdict before a step is the worker's decision after it.

For random policy sets of every kind the client evaluates (session budget, tools, loop, maximum
duration, unpriced model, session step rate) and random sessions, the client folds what it
emitted into its projection and decides the next step before it runs; the worker folds the same
events into its whole SessionState, counts the step's minute as its aggregation does and calls
``decide_session`` after the step. The outcomes must be equal, step by step. For the PII rules,
the client's refusal of a step is compared with the handlings the worker's PII agent gives the
same findings.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.client import checks
from streams.pipeline.accounting import (
    STEP_KINDS,
    count_step_minute,
    fold,
    new_state,
    steps_in_window,
)
from streams.pipeline.pii import HOPS, Match, PiiPolicy, PiiRule, findings
from streams.pipeline.policy import (
    ArgumentPattern,
    BudgetPolicy,
    DurationPolicy,
    Facts,
    LoopPolicy,
    PolicyFile,
    PolicySet,
    StepRatePolicy,
    ToolPolicy,
    UnpricedModelPolicy,
    decide_session,
)
from streams.pipeline.pricing import PriceTable

PRICES = PriceTable.from_mapping(
    {
        "per_million_tokens": {
            "m-cheap": {"input": 0.5, "output": 1.5},
            "m-dear": {"input": 30, "output": 60},
        }
    }
)
ACTIONS = st.sampled_from(["warn", "throttle", "pause", "kill"])
TOOLS = ["lookup", "search_web", "drop_table", "shell_exec", "send_mail"]
MODELS = ["m-cheap", "m-dear", "m-unpriced"]
T0 = 1_764_000_000_000_000

policy_kinds = st.one_of(
    st.builds(
        BudgetPolicy,
        id=st.just("p-budget"),
        kind=st.just("budget"),
        scope=st.just("session"),
        limit_usd=st.floats(0.001, 0.5),
        warn_at=st.none() | st.floats(0.1, 0.9),
        action=ACTIONS,
    ),
    st.builds(
        ToolPolicy,
        id=st.just("p-tools"),
        kind=st.just("tools"),
        allow=st.sampled_from([["*"], ["lookup", "search_*"], ["*_mail", "lookup"]]),
        deny=st.lists(st.sampled_from(["drop_*", "shell_exec", "send_*", "x"]), max_size=2),
        deny_arguments=st.lists(
            st.builds(
                ArgumentPattern,
                tool=st.sampled_from(["*", "lookup", "search_*"]),
                pattern=st.sampled_from(['"id": 2', r"\d", "^never$"]),
            ),
            max_size=2,
        ),
        action=ACTIONS,
    ),
    st.builds(
        LoopPolicy,
        id=st.just("p-loop"),
        kind=st.just("loop"),
        max_repeats=st.integers(2, 4),
        action=ACTIONS,
    ),
    st.builds(
        DurationPolicy,
        id=st.just("p-duration"),
        kind=st.just("max_duration"),
        max_duration=st.sampled_from(["1s", "3s", "1m"]),
        action=ACTIONS,
    ),
    st.builds(
        UnpricedModelPolicy,
        id=st.just("p-unpriced"),
        kind=st.just("unpriced_model"),
        action=ACTIONS,
    ),
    st.builds(
        StepRatePolicy,
        id=st.just("p-rate"),
        kind=st.just("step_rate"),
        scope=st.just("session"),
        max_steps=st.integers(1, 6),
        window=st.sampled_from(["1m", "2m"]),
        action=ACTIONS,
    ),
)


@st.composite
def policy_sets(draw: st.DrawFn) -> PolicySet:
    chosen = draw(st.lists(policy_kinds, min_size=1, max_size=6, unique_by=lambda p: p.id))
    return PolicySet.build([PolicyFile(version=3, policies=chosen)], digest="d")


@st.composite
def steps(draw: st.DrawFn) -> list[dict[str, Any]]:
    common = {"session_id": "s-1", "tenant_id": "acme", "agent_id": "bot"}
    events: list[dict[str, Any]] = [
        {**common, "event_id": "e0", "seq": 1, "kind": "SESSION_START", "start_time_us": T0}
    ]
    now = T0
    for seq in range(2, draw(st.integers(2, 14))):
        now += draw(st.integers(0, 40_000_000))
        base = {
            **common,
            "event_id": f"e{seq}",
            "seq": seq,
            "start_time_us": now,
            "duration_us": 0,
            "status": "OK",
        }
        if draw(st.booleans()):
            args = draw(st.sampled_from(['{"id": 1}', '{"id": 2}']))
            base |= {
                "kind": "TOOL_CALL",
                "tool_name": draw(st.sampled_from(TOOLS)),
                "content": [{"role": "TOOL_ARGUMENTS", "text": args}],
            }
        else:
            base |= {
                "kind": "LLM_CALL",
                "model": draw(st.sampled_from(MODELS)),
                "input_tokens": draw(st.integers(0, 4000)),
                "output_tokens": draw(st.integers(0, 2000)),
            }
        events.append(base)
    return events


def worker_outcomes(policies: PolicySet, history: list[dict[str, Any]]) -> list[Any]:
    """The worker's path for the last event of ``history``: fold, count the minute, decide."""
    state = new_state(history[0])
    delta = None
    for event in history:
        delta = fold(state, dict(event), PRICES, policies.version)
        if delta is not None and delta.kind in STEP_KINDS:
            count_step_minute(state, delta.event_time_us)
    assert delta is not None
    now = delta.event_time_us
    facts = Facts(
        spend=lambda *_: 0,
        active=lambda *_: 0,
        steps=lambda scope, sid, w: steps_in_window(state, now, w) if scope == "session" else 0,
        tool_failures=lambda *_: 0,
    )
    return decide_session(policies, state, delta, facts)


@settings(max_examples=300, deadline=None)
@given(policies=policy_sets(), events=steps())
def test_the_client_verdict_before_each_step_is_the_worker_decision_after_it(
    policies: PolicySet, events: list[dict[str, Any]]
) -> None:
    client = checks.ClientPolicies(policies, PRICES, None)
    state = new_state(events[0])
    trial = new_state(events[0])
    for k, event in enumerate(events):
        if k:
            before = checks.outcomes_if_run(policies, PRICES, state, event)
            assert before == worker_outcomes(policies, events[: k + 1]), f"step {k}"
            # a projection reused across steps (as a Session does) decides the same
            reused = checks.outcomes_if_run(policies, PRICES, state, event, trial)
            assert reused == before, f"step {k}, reused projection"
            verdict = checks.verdict(client, state, event)
            kills = [o for o in before if o.action in ("KILL", "PAUSE")]
            assert (verdict.refused is None) == (not kills)
        checks.observe(state, event, PRICES, policies.version)


@settings(max_examples=200, deadline=None)
@given(
    limit=st.floats(0.001, 0.2),
    calls=st.lists(
        st.tuples(st.integers(0, 3000), st.integers(1, 2000), st.integers(0, 2000)),
        min_size=1,
        max_size=30,
    ),
)
def test_with_the_estimate_a_session_budget_is_never_exceeded(
    limit: float, calls: list[tuple[int, int, int]]
) -> None:
    """Every call allowed on its estimate (input + max output tokens) and using at most its
    max output tokens keeps the session at or under its limit: the worker never fires."""
    budget = BudgetPolicy(id="b", kind="budget", scope="session", limit_usd=limit, warn_at=None)
    policies = PolicySet.build([PolicyFile(version=1, policies=[budget])])
    client = checks.ClientPolicies(policies, PRICES, None)
    common = {"session_id": "s", "tenant_id": "t", "agent_id": "a"}
    history = [{**common, "event_id": "e0", "seq": 1, "kind": "SESSION_START", "start_time_us": T0}]
    state = new_state(history[0])
    checks.observe(state, history[0], PRICES)
    for n, (input_tokens, max_output, used) in enumerate(calls, start=2):
        estimate = {
            **common,
            "event_id": "",
            "seq": n,
            "kind": "LLM_CALL",
            "start_time_us": T0 + n,
            "model": "m-dear",
            "input_tokens": input_tokens,
            "output_tokens": max_output,
        }
        if checks.verdict(client, state, estimate).refused is not None:
            continue
        actual = {**estimate, "event_id": f"e{n}", "output_tokens": min(used, max_output)}
        history.append(actual)
        assert worker_outcomes(policies, history) == []
        checks.observe(state, actual, PRICES)
    assert state.cost_micros <= round(limit * 1_000_000)


ENTITIES = ["EMAIL_ADDRESS", "CREDIT_CARD", "US_SSN", "SECRET"]
pii_rules = st.builds(
    PiiRule,
    entities=st.lists(st.sampled_from([*ENTITIES, "*"]), min_size=1, max_size=2),
    hops=st.lists(st.sampled_from(list(HOPS)), min_size=1, max_size=4, unique=True),
    tools=st.sampled_from([["*"], ["pay*"], ["lookup"]]),
    handling=st.sampled_from(["allow", "log", "redact", "block", "kill"]),
)


@settings(max_examples=300, deadline=None)
@given(
    rules=st.lists(pii_rules, max_size=4),
    default=st.sampled_from(["allow", "log", "block", "kill"]),
    kind=st.sampled_from(["TOOL_CALL", "LLM_CALL"]),
    tool=st.sampled_from(["pay_invoice", "lookup"]),
    segments=st.lists(
        st.tuples(
            st.sampled_from(["SYSTEM", "USER", "TOOL_ARGUMENTS", "TOOL_RESULT", "ASSISTANT"]),
            st.lists(st.sampled_from(ENTITIES), max_size=2),
        ),
        max_size=4,
    ),
)
def test_the_clients_pii_refusal_is_the_workers_block_or_kill_on_the_same_input(
    rules: list[PiiRule],
    default: str,
    kind: str,
    tool: str,
    segments: list[tuple[str, list[str]]],
) -> None:
    """The worker's PII agent records each finding with its handling (``findings``); the
    client refuses a step exactly when a finding in what the step sends is BLOCK or KILL."""
    policy = PiiPolicy.model_validate(
        {"version": 1, "entities": ENTITIES, "default": default, "rules": rules}
    )
    sent = [(role, found) for role, found in segments if role in checks.INPUT_ROLES[kind]]
    event = {
        "event_id": "e", "session_id": "s", "tenant_id": "t", "agent_id": "a", "seq": 1,
        "start_time_us": T0, "kind": kind, "tool_name": tool if kind == "TOOL_CALL" else None,
        "content": [{"role": role, "text": "x" * 10} for role, _ in sent],
    }  # fmt: skip
    matches = [
        (i, [Match(e, 0, 1, 0.9, "r") for e in found]) for i, (_role, found) in enumerate(sent)
    ]
    worker = {
        f["entity_type"]
        for f in findings(event, matches, policy, b"k", "k1")
        if f["handling"] in ("BLOCK", "KILL")
    }
    name = tool if kind == "TOOL_CALL" else None
    assert checks.pii_refusal(policy, kind, name, segments) == sorted(worker)
    if worker:
        assert checks.pii_may_refuse(policy, kind)
