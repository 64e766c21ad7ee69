"""Client-side checks without a broker: verdicts, estimates, PII refusals, the signed set."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from streams.client import checks
from streams.client.policies import PolicyCache, RefusedSet, accept_record, local_policies
from streams.codec import Codecs
from streams.control import KeyRing, generate_signing_key
from streams.pipeline.accounting import new_state
from streams.pipeline.bypass import client_bypass
from streams.pipeline.policy import Outcome, PolicySet
from streams.policy_files import load_bundle
from streams.policy_history import bundle_version_of, signed, verify_signed

REPO = Path(__file__).resolve().parents[3]
T0 = 1_764_000_000_000_000
COMMON = {"session_id": "s-1", "tenant_id": "acme", "agent_id": "bot"}


def tool(name: str, seq: int, at: int = T0, args: str = "{}") -> dict[str, Any]:
    return {**COMMON, "event_id": f"e{seq}", "seq": seq, "kind": "TOOL_CALL", "start_time_us": at,
            "status": "OK", "tool_name": name,
            "content": [{"role": "TOOL_ARGUMENTS", "text": args}]}  # fmt: skip


def llm(seq: int, input_tokens: int, output_tokens: int, at: int = T0) -> dict[str, Any]:
    return {**COMMON, "event_id": f"e{seq}", "seq": seq, "kind": "LLM_CALL", "start_time_us": at,
            "status": "OK", "model": "gpt-4o", "input_tokens": input_tokens,
            "output_tokens": output_tokens}  # fmt: skip


@pytest.fixture(scope="module")
def shipped() -> checks.ClientPolicies:
    return local_policies(REPO / "policies")


def session(shipped: checks.ClientPolicies) -> Any:
    start = {**COMMON, "event_id": "e1", "seq": 1, "kind": "SESSION_START", "start_time_us": T0}
    state = new_state(start)
    checks.observe(state, start, shipped.prices)
    return state


def test_a_denied_tool_is_refused_by_its_policy_and_an_allowed_one_runs(
    shipped: checks.ClientPolicies,
) -> None:
    state = session(shipped)
    refused = checks.verdict(shipped, state, tool("drop_users", 2)).refused
    assert refused is not None
    assert (refused.policy_id, refused.action) == ("dangerous-tools", "KILL")
    assert checks.verdict(shipped, state, tool("lookup_order", 2)) == checks.ALLOW


def test_the_fifth_identical_call_is_refused_as_a_loop_and_other_arguments_are_not(
    shipped: checks.ClientPolicies,
) -> None:
    state = session(shipped)
    for seq in range(2, 6):
        assert checks.verdict(shipped, state, tool("lookup", seq)).refused is None
        checks.observe(state, tool("lookup", seq), shipped.prices)
    refused = checks.verdict(shipped, state, tool("lookup", 6)).refused
    assert refused is not None
    assert refused.policy_id == "tool-loop"
    assert checks.verdict(shipped, state, tool("lookup", 6, args='{"id": 2}')).refused is None


def test_the_session_budget_refuses_the_call_whose_estimate_would_pass_the_limit(
    shipped: checks.ClientPolicies,
) -> None:
    state = session(shipped)
    # gpt-4o: $2.50 in, $10 out per 1M tokens; session-budget is $2.00
    checks.observe(state, llm(2, 400_000, 90_000), shipped.prices)  # $1.90
    assert state.cost_micros == 1_900_000
    assert checks.verdict(shipped, state, llm(3, 10_000, 7_500)).refused is None  # $0.10: at $2
    refused = checks.verdict(shipped, state, llm(3, 10_000, 7_501)).refused  # a cent more
    assert refused is not None
    assert refused.policy_id == "session-budget"
    assert "over the $2.0000 limit" in refused.reason


def test_duration_and_step_rate_are_checked_at_the_step_time(
    shipped: checks.ClientPolicies,
) -> None:
    state = session(shipped)
    late = checks.verdict(shipped, state, tool("lookup", 2, at=T0 + 2 * 3600 * 1_000_000 + 1))
    assert late.refused is not None
    assert late.refused.policy_id == "session-max-duration"
    for seq in range(2, 122):  # 120 steps in one minute are allowed, the 121st throttled
        checks.observe(state, tool("lookup", seq, at=T0 + seq, args=str(seq)), shipped.prices)
    throttled = checks.verdict(shipped, state, tool("lookup", 122, at=T0 + 200, args="x"))
    assert throttled.refused is None
    assert [o.policy_id for o in throttled.throttles] == ["session-step-rate"]
    assert throttled.delay_s == 1.0


def test_kill_wins_over_pause_and_warnings_do_not_refuse() -> None:
    def outcome(policy: str, action: str) -> Outcome:
        return Outcome(policy, "session:s", action, "r", 2 if action != "WARN" else 1)

    both = checks.verdict_of([outcome("p", "PAUSE"), outcome("k", "KILL")])
    assert both.refused is not None
    assert both.refused.policy_id == "k"
    warned = checks.verdict_of([outcome("w", "WARN")])
    assert warned.refused is None
    assert len(warned.warnings) == 1


def test_an_input_estimate_without_a_count_over_estimates_short_texts() -> None:
    assert checks.estimated_input_tokens(["hello world"]) >= 3
    assert checks.estimated_input_tokens([]) == 0


def test_pii_block_and_kill_handlings_refuse_log_and_allow_do_not(
    shipped: checks.ClientPolicies,
) -> None:
    pii = shipped.pii
    card = [("TOOL_ARGUMENTS", ["CREDIT_CARD"])]
    assert checks.pii_refusal(pii, "TOOL_CALL", "pay", card) == ["CREDIT_CARD"]
    assert checks.pii_refusal(pii, "LLM_CALL", None, [("USER", ["SECRET"])]) == ["SECRET"]
    assert checks.pii_refusal(pii, "LLM_CALL", None, [("USER", ["EMAIL_ADDRESS"])]) == []
    assert checks.pii_refusal(pii, "LLM_CALL", None, [("ASSISTANT", ["SECRET"])]) == [], (
        "the model's own output is not its input"
    )
    assert checks.pii_refusal(None, "LLM_CALL", None, [("USER", ["SECRET"])]) == []


# --- the signed set ----------------------------------------------------------------------


def test_a_signed_bundle_round_trips_and_any_change_breaks_its_signature(tmp_path: Path) -> None:
    key = generate_signing_key(tmp_path / "keys", "k1")
    ring = KeyRing.from_dir(tmp_path / "keys")
    record = signed(bundle_version_of(load_bundle(REPO / "policies"), 1_000), key)
    assert verify_signed(record, ring) is None
    policies = accept_record(record, ring, "gov.policies")
    assert policies.label == f"v{record.version}:{record.digest}"
    assert policies.pii is not None
    assert policies.prices.models
    edited = dict(record.files)
    edited["governor.yaml"] = edited["governor.yaml"].replace("limit_usd: 2.00", "limit_usd: 99")
    tampered = dataclasses.replace(record, files=edited)
    with pytest.raises(RefusedSet) as refused:
        accept_record(tampered, ring, "gov.policies")
    assert refused.value.reason == "bad_signature"
    unsigned = dataclasses.replace(record, signature=None)
    with pytest.raises(RefusedSet, match="unsigned"):
        accept_record(unsigned, ring, "gov.policies")
    with pytest.raises(RefusedSet, match="unknown_key"):
        accept_record(record, KeyRing({}), "gov.policies")


def test_signed_files_that_do_not_make_their_digest_are_refused(tmp_path: Path) -> None:
    key = generate_signing_key(tmp_path / "keys", "k1")
    ring = KeyRing.from_dir(tmp_path / "keys")
    record = bundle_version_of(load_bundle(REPO / "policies"), 1_000)
    wrong = signed(dataclasses.replace(record, digest="000000000000"), key)
    with pytest.raises(RefusedSet) as refused:
        accept_record(wrong, ring, "gov.policies")
    assert refused.value.reason == "invalid"


def test_the_cache_keeps_the_last_good_set_and_verifies_it_again(tmp_path: Path) -> None:
    key = generate_signing_key(tmp_path / "keys", "k1")
    ring = KeyRing.from_dir(tmp_path / "keys")
    codec = Codecs.load(REPO / "schemas").policy_version
    cache = PolicyCache(tmp_path / "cache", codec)
    assert cache.load(ring) is None
    record = signed(bundle_version_of(load_bundle(REPO / "policies"), 1_000), key)
    cache.save(record)
    loaded = cache.load(ring)
    assert loaded is not None
    assert loaded[0] == record
    assert loaded[1].source == "cache"
    assert cache.load(KeyRing({})) is None, "a cache signed by an untrusted key is refused"
    cache.path.write_bytes(b"garbage")
    assert cache.load(ring) is None


def test_text_is_scanned_only_on_hops_where_a_finding_can_refuse(
    shipped: checks.ClientPolicies,
) -> None:
    assert checks.pii_may_refuse(shipped.pii, "TOOL_CALL")
    assert checks.pii_may_refuse(shipped.pii, "LLM_CALL")  # SECRET: kill on every hop
    assert shipped.pii is not None
    logging_only = shipped.pii.model_copy(update={"rules": [], "default": "log"})
    assert not checks.pii_may_refuse(logging_only, "LLM_CALL")
    assert not checks.pii_may_refuse(None, "LLM_CALL")


def test_policy_history_reports_each_clients_latest_version() -> None:
    from streams.policy_history import client_reports, clients_answer

    def event(client: str, version: str, at: int) -> dict[str, Any]:
        attributes = {
            "governor.client_id": client,
            "governor.policy_version": version,
            "governor.policy_source": "gov.policies",
        }
        return {**COMMON, "start_time_us": at, "attributes": attributes}

    reports = client_reports(
        [
            event("c1", "v4:aaa", 2),
            event("c1", "v3:bbb", 1),  # older, read later: v4 stays
            event("c2", "v3:bbb", 5),
            {**COMMON, "start_time_us": 9, "attributes": {}},  # a client without checks
        ]
    )
    assert [(r.client_id, r.policy_version, r.events) for r in reports] == [
        ("c1", "v4:aaa", 2),
        ("c2", "v3:bbb", 1),
    ]
    assert clients_answer(reports, 4)["by_version"] == {"v4:aaa": 1, "v3:bbb": 1}


def test_a_tool_call_is_refused_by_what_its_arguments_hold(tmp_path: Path) -> None:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "governor.yaml").write_text(
        """version: 2
policies:
  - id: no-destructive-sql
    kind: tools
    deny_arguments:
      - tool: "sql_*"
        pattern: "(?i)\\\\b(drop|truncate)\\\\b"
"""
    )
    policies = local_policies(folder)
    state = session(policies)
    refused = checks.verdict(policies, state, tool("sql_run", 2, args='{"q": "DROP TABLE x"}'))
    assert refused.refused is not None
    assert refused.refused.policy_id == "no-destructive-sql"
    assert "matching" in refused.refused.reason
    assert (
        checks.verdict(policies, state, tool("sql_run", 2, args='{"q": "select 1"}')).refused
        is None
    )
    assert checks.verdict(policies, state, tool("grep", 2, args='{"q": "drop"}')).refused is None


def test_an_argument_pattern_that_is_not_a_regular_expression_is_refused_at_load(
    tmp_path: Path,
) -> None:
    from streams.policy_files import PolicyError

    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "governor.yaml").write_text(
        "version: 1\npolicies:\n  - id: t\n    kind: tools\n"
        "    deny_arguments: [{pattern: '(unclosed'}]\n"
    )
    with pytest.raises(PolicyError, match=r"governor\.yaml:5: .*deny_arguments\.0\.pattern"):
        load_bundle(folder)


def test_a_step_that_ran_in_breach_is_a_client_bypass_naming_the_clients_version(
    shipped: checks.ClientPolicies,
) -> None:
    kill = Outcome("dangerous-tools", "session:s-1", "KILL", "tool 'drop_x' is not allowed", 2)
    ran = tool("drop_x", 2)
    bypass = client_bypass(shipped.policies, ran, kill)
    assert bypass is not None
    assert (bypass.why, bypass.client_policy_version) == ("none", None)
    stale = {**ran, "attributes": {"governor.policy_version": "v0:old", "governor.client_id": "c"}}
    bypass = client_bypass(shipped.policies, stale, kill)
    assert bypass is not None
    assert (bypass.why, bypass.client_id) == ("stale", "c")
    same = {**ran, "attributes": {"governor.policy_version": shipped.label}}
    assert client_bypass(shipped.policies, same, kill).why == "same"  # type: ignore[union-attr]
    assert client_bypass(shipped.policies, {**ran, "status": "BLOCKED"}, kill) is None
    throttle = Outcome("session-step-rate", "session:s-1", "THROTTLE", "r", 2)
    assert client_bypass(shipped.policies, ran, throttle) is None
    agent = Outcome("agent-daily-budget", "agent:acme/bot", "KILL", "r", 2)
    assert client_bypass(shipped.policies, ran, agent) is None, "fleet-wide: not the client's"


def test_fleet_budgets_come_from_the_agent_and_tenant_budget_policies(
    shipped: checks.ClientPolicies,
) -> None:
    from streams.client.reservations import HOUR_US, first_hour_us, fleet_budgets

    budgets = fleet_budgets(shipped.policies, "acme", "bot")
    assert [(b.policy_id, b.target, b.cap_micros) for b in budgets] == [
        ("agent-daily-budget", "agent:acme/bot", 500_000_000),
        ("tenant-daily-budget", "tenant:acme", 2_000_000_000),
    ]
    now = 10 * HOUR_US + 5
    assert first_hour_us(now, 86400) == now - 5 - 23 * HOUR_US
    assert first_hour_us(now, 60) == now - 5, "a window under an hour counts the current hour"


def test_the_worker_writes_its_spend_per_budget_hour_and_releases_by_session(
    shipped: checks.ClientPolicies,
) -> None:
    from streams.client.reservations import (
        HOUR_US,
        reservation_id,
        session_closure,
        worker_spend_fields,
    )

    spend = {("agent:acme/bot", HOUR_US): 7, ("tenant:acme", HOUR_US): 9}
    fields = worker_spend_fields(
        shipped.policies, "gov.", [("acme", "bot", HOUR_US)],
        lambda tenant, scope, hour: spend[(scope, hour)] if tenant == "acme" else -1,
    )  # fmt: skip
    assert fields == {
        ("gov.reserve:agent-daily-budget:agent:acme/bot", f"w:{HOUR_US}"): 7,
        ("gov.reserve:tenant-daily-budget:tenant:acme", f"w:{HOUR_US}"): 9,
    }
    closure = session_closure(shipped.policies, "gov.", "acme", "bot", "s-1")
    assert closure is not None
    assert (closure.session_id, closure.field_prefix) == ("s-1", "r:s-1|")
    assert closure.budget_keys == (
        "gov.reserve:agent-daily-budget:agent:acme/bot",
        "gov.reserve:tenant-daily-budget:tenant:acme",
    )
    assert closure.active_keys == ("gov.active:agent-concurrency:agent:acme/bot",)
    assert reservation_id("s-1", "ab") == "s-1|ab"
    assert session_closure(PolicySet.build([]), "gov.", "acme", "bot", "s-1") is None


def test_a_step_costs_its_reported_cost_else_its_priced_tokens(
    shipped: checks.ClientPolicies,
) -> None:
    assert checks.cost_micros(shipped, llm(2, 1000, 100)) == 3_500  # gpt-4o
    assert checks.cost_micros(shipped, {**llm(2, 1000, 100), "cost_micros": 7}) == 7
    assert checks.cost_micros(shipped, {**llm(2, 1000, 100), "model": "no-price"}) == 0
    assert checks.cost_micros(shipped, tool("lookup", 2)) == 0
