"""Ground truth folded from hand-made events: pricing, retries, outcomes, PII, files."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from streams.pipeline.accounting import fold, new_state, summary
from streams.pipeline.pricing import ModelPrice, PriceTable
from streams.simulator.offline import offline_summaries, simulate_offline
from streams.simulator.params import FleetParams
from streams.simulator.pii import EMAIL_ADDRESS, PERSON, PiiValue
from streams.simulator.plan import plan_fleet
from streams.simulator.truth import TruthSummary, TruthWriter, load_truth, session_truth
from tests.unit.simulator.conftest import END_US

PRICES = PriceTable(
    {
        # $1 per million input tokens, $10 per million output, $0.10 per million cached
        "m-small": ModelPrice(Decimal("1"), Decimal("10"), Decimal("0.1")),
        "m-big": ModelPrice(Decimal("5"), Decimal("20"), Decimal("5")),
    }
)
T0 = 1_764_000_000_000_000


class Session:
    """Builds the events of one session the way the client lays them out."""

    def __init__(self, session_id: str = "s-1") -> None:
        self.session_id = session_id
        self.events: list[dict[str, Any]] = []
        self.t = T0

    def add(self, kind: str, duration_us: int = 0, status: str = "OK", **fields: Any) -> int:
        self.events.append(
            {
                "session_id": self.session_id,
                "tenant_id": "acme",
                "agent_id": "support-bot",
                "agent_version": "1.4.0",
                "category": "returns",
                "prompt_version": "p7",
                "model_version": "2025-06",
                "tool_schema_version": "t3",
                "event_id": f"{self.session_id}-e{len(self.events) + 1}",
                "seq": len(self.events) + 1,
                "kind": kind,
                "start_time_us": self.t,
                "duration_us": duration_us,
                "status": status,
                **fields,
            }
        )
        self.t += duration_us + 1_000
        return len(self.events)

    def llm(self, model: str = "m-small", duration_us: int = 500_000, **fields: Any) -> int:
        return self.add("LLM_CALL", duration_us, model=model, **fields)

    def tool(self, name: str, call_id: str, duration_us: int = 20_000, **fields: Any) -> int:
        return self.add("TOOL_CALL", duration_us, tool_name=name, tool_call_id=call_id, **fields)

    def end(self, status: str = "OK", error_type: str | None = None) -> None:
        # as the client does: stamped at the end, lasting the whole session
        self.events.append({**self.events[0], "event_id": f"{self.session_id}-end"})
        self.events[-1].update(
            seq=len(self.events),
            kind="SESSION_END",
            start_time_us=self.t,
            duration_us=self.t - T0,
            status=status,
            error_type=error_type,
        )


def test_cost_uses_reported_costs_else_the_price_table_and_flags_unpriced_calls() -> None:
    s = Session()
    s.add("SESSION_START")
    # priced: 1000 fresh input at $1/M + 200 output at $10/M = $0.003
    s.llm(input_tokens=1000, output_tokens=200)
    # cached input is cheaper: 400 fresh ($0.0004) + 600 cached ($0.00006) + 0 output
    s.llm(input_tokens=1000, output_tokens=0, cache_read_input_tokens=600)
    # reported cost wins over the table
    s.llm(model="m-big", input_tokens=10_000, output_tokens=10, cost_micros=1234)
    # no price for this model: flagged, adds nothing
    s.llm(model="acme-llm-9", input_tokens=5000, output_tokens=50)
    s.tool("web_search", "c1", cost_micros=5000)
    s.tool("lookup_order", "c2")
    s.end()
    truth = session_truth(s.events, PRICES)
    assert truth["cost_micros"] == 3000 + 460 + 1234 + 5000
    assert truth["unpriced_calls"] == 1
    assert truth["cost_by_model"] == {"m-small": 3460, "m-big": 1234, "acme-llm-9": 0}
    assert truth["input_tokens"] == 17_000
    assert truth["output_tokens"] == 260
    assert truth["cache_read_input_tokens"] == 600
    assert truth["tokens_by_model"]["m-small"] == {
        "input_tokens": 2000,
        "output_tokens": 200,
        "cache_read_input_tokens": 600,
    }
    assert truth["llm_calls"] == 4
    assert truth["max_context_tokens"] == 10_000
    assert truth["tool_calls"] == {"web_search": 1, "lookup_order": 1}


def test_retries_are_repeats_right_after_a_failure() -> None:
    s = Session()
    s.add("SESSION_START")
    s.tool("lookup_order", "c1", status="ERROR", error_type="ToolTimeout")
    s.tool("lookup_order", "c1")  # retry: same call id after a failure
    s.tool("lookup_order", "c2", status="ERROR", error_type="SchemaMismatch")
    s.tool("lookup_order", "c3")  # a new call (another id): not a retry
    s.llm(status="ERROR", error_type="ProviderOverloaded", input_tokens=0)
    s.llm(status="ERROR", error_type="ProviderOverloaded", input_tokens=0)  # retry
    s.llm()  # retry
    s.llm()  # after a success: not a retry
    s.llm(status="ERROR", error_type="ProviderOverloaded")
    s.llm(model="m-big")  # another model: a fallback, not a retry
    s.tool("lookup_order", "c4", status="ERROR", error_type="RateLimited")
    s.add("EVALUATION", evaluation_name="quality", evaluation_score=0.4)
    s.tool("lookup_order", "c4")  # an evaluation is not a call: still right after the failure
    s.end()
    truth = session_truth(s.events, PRICES)
    assert truth["retries"] == 4
    assert truth["errors_by_type"] == {
        "ToolTimeout": 1,
        "SchemaMismatch": 1,
        "ProviderOverloaded": 3,
        "RateLimited": 1,
    }
    assert truth["failure_step_kind"] == "TOOL_CALL"
    assert truth["failure_tool"] == "lookup_order"
    assert truth["outcome"] == "OK"
    assert truth["error_type"] is None


#: what the worker's fold and the truth both say of a session
FOLDED_ALIKE = (
    "cost_micros",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "steps_by_kind",
    "tool_calls",
    "errors_by_type",
    "retries",
    "unpriced_calls",
    "max_context_tokens",
    "failure_step_kind",
    "failure_tool",
)


def _worker_fold(events: list[dict[str, Any]], prices: PriceTable) -> dict[str, Any]:
    state = new_state(events[0])
    for event in events:
        fold(state, event, prices)
    return summary(state)


def test_a_blocked_tool_call_is_a_failed_call_as_the_worker_counts_it() -> None:
    card = '{"card_number": "4111 1111 1111 1111", "invoice_id": "INV-12345"}'
    s = Session()
    s.add("SESSION_START")
    s.llm(input_tokens=100, output_tokens=10)
    s.tool(
        "refund_payment",
        "c1",
        duration_us=0,
        status="BLOCKED",
        error_type="PiiBlocked",
        content=[{"role": "TOOL_ARGUMENTS", "text": card}],
    )
    s.tool("lookup_order", "c2")  # the agent goes on: another call, not a retry
    s.tool("lookup_order", "c3", status="ERROR")  # a failure without an error type
    s.llm(input_tokens=200, output_tokens=10)
    s.end()
    truth = session_truth(s.events, PRICES)
    assert truth["blocked_tool_calls"] == 1
    assert truth["tool_calls"] == {"refund_payment": 1, "lookup_order": 2}
    assert truth["errors_by_type"] == {"PiiBlocked": 1, "ERROR": 1}
    assert (truth["failure_step_kind"], truth["failure_tool"]) == ("TOOL_CALL", "lookup_order")
    assert truth["retries"] == 0
    assert (truth["outcome"], truth["error_type"]) == ("OK", None)
    worker = _worker_fold(s.events, PRICES)
    assert {k: worker[k] for k in FOLDED_ALIKE} == {k: truth[k] for k in FOLDED_ALIKE}


def test_the_truth_of_a_simulated_fleet_is_what_the_worker_folds_from_its_events(
    prices: PriceTable,
) -> None:
    plans = plan_fleet(FleetParams(sessions=300, seed=9, end_us=END_US, pii_fraction=0.3))
    events, truths = simulate_offline(plans, prices)
    assert sum(t["blocked_tool_calls"] for t in truths) > 20
    folded = {s["session_id"]: s for s in offline_summaries(events, prices)}
    for truth in truths:
        worker = folded[truth["session_id"]]
        # the worker names the model of a failed LLM call as its "tool"; the truth only tools
        alike = [k for k in FOLDED_ALIKE if k != "failure_tool"]
        assert {k: worker[k] for k in alike} == {k: truth[k] for k in alike}
        if truth["failure_step_kind"] == "TOOL_CALL":
            assert worker["failure_tool"] == truth["failure_tool"]
        assert worker["status"] == truth["outcome"]


def test_slowest_step_durations_and_evaluations() -> None:
    s = Session()
    s.add("SESSION_START")
    s.llm(duration_us=700_000)
    slow = s.tool("run_sql", "c1", duration_us=2_500_000)
    s.llm(duration_us=2_500_000)  # as slow, but later: the first one stays the slowest
    s.add("EVALUATION", evaluation_name="output", content=[{"role": "OUTPUT", "text": "done"}])
    s.add("EVALUATION", evaluation_name="quality", evaluation_score=0.55)
    s.end()
    truth = session_truth(s.events, PRICES)
    assert truth["slowest_step"] == {
        "seq": slow,
        "kind": "TOOL_CALL",
        "name": "run_sql",
        "duration_us": 2_500_000,
    }
    assert truth["evaluations"] == {"quality": 0.55}
    assert truth["steps_by_kind"] == {
        "SESSION_START": 1,
        "LLM_CALL": 2,
        "TOOL_CALL": 1,
        "EVALUATION": 2,
        "SESSION_END": 1,
    }
    assert truth["events"] == 7
    assert truth["start_time_us"] == T0
    assert truth["end_time_us"] == s.events[-1]["start_time_us"]
    assert truth["duration_us"] == truth["end_time_us"] - T0
    assert truth["last_event_time_us"] == truth["end_time_us"]
    assert truth["failure_step_kind"] is None
    assert truth["slowest_step"]["kind"] == "TOOL_CALL"


def test_an_abandoned_session_times_out_and_lasts_until_its_last_activity() -> None:
    s = Session()
    s.add("SESSION_START")
    s.llm(duration_us=1_000_000)
    last = s.tool("lookup_order", "c1", duration_us=3_000_000)
    truth = session_truth(s.events, PRICES)
    assert truth["outcome"] == "TIMEOUT"
    assert truth["end_time_us"] is None
    assert truth["error_type"] is None
    last_end = s.events[last - 1]["start_time_us"] + 3_000_000
    assert truth["last_event_time_us"] == last_end
    assert truth["duration_us"] == last_end - T0


def test_killed_and_failed_sessions_take_their_outcome_from_session_end() -> None:
    killed = Session("s-killed")
    killed.add("SESSION_START")
    killed.llm()
    killed.end("KILLED")
    assert session_truth(killed.events, PRICES)["outcome"] == "KILLED"

    before_any_step = Session("s-killed-at-once")
    before_any_step.add("SESSION_START")
    before_any_step.end("KILLED")
    truth = session_truth(before_any_step.events, PRICES)
    assert truth["outcome"] == "KILLED"
    assert (truth["retries"], truth["llm_calls"], truth["cost_micros"]) == (0, 0, 0)
    assert truth["slowest_step"] is None

    failed = Session("s-failed")
    failed.add("SESSION_START")
    failed.tool("refund_payment", "c1", status="ERROR", error_type="UpstreamHTTP500")
    failed.end("ERROR", "UpstreamHTTP500")
    truth = session_truth(failed.events, PRICES)
    assert (truth["outcome"], truth["error_type"]) == ("ERROR", "UpstreamHTTP500")
    assert (truth["failure_step_kind"], truth["failure_tool"]) == ("TOOL_CALL", "refund_payment")


def test_events_in_any_order_give_the_same_truth() -> None:
    s = Session()
    s.add("SESSION_START")
    s.llm(status="ERROR", error_type="ProviderOverloaded")
    s.llm(input_tokens=10, output_tokens=1)
    s.end()
    assert session_truth(list(reversed(s.events)), PRICES) == session_truth(s.events, PRICES)


def test_pii_is_located_by_hop_tool_and_event() -> None:
    email = PiiValue("maria.garcia.k2x9q1@example.com", EMAIL_ADDRESS)
    name = PiiValue("Maria Garcia", PERSON)
    never_sent = PiiValue("Ghost Person", PERSON)
    s = Session()
    s.add("SESSION_START")
    s.llm(
        content=[
            {"role": "SYSTEM", "text": "be nice"},
            {"role": "USER", "text": f"I am {name.value}, mail {email.value}"},
        ]
    )
    s.tool(
        "send_email",
        "c1",
        content=[
            {"role": "TOOL_ARGUMENTS", "text": f'{{"email": "{email.value}"}}'},
            {"role": "TOOL_RESULT", "text": '{"queued": true}'},
        ],
    )
    s.add(
        "EVALUATION",
        evaluation_name="output",
        content=[{"role": "OUTPUT", "text": f"Done, {name.value}."}],
    )
    truth = session_truth(s.events, PRICES, planted=[email, name, never_sent])
    found = {(p["value"], p["hop"], p["tool_name"], p["seq"]) for p in truth["pii"]}
    assert found == {
        (name.value, "CONTEXT", None, 2),
        (email.value, "CONTEXT", None, 2),
        (email.value, "TOOL_ARGUMENTS", "send_email", 3),
        (name.value, "OUTPUT", None, 4),
    }
    assert {p["event_id"] for p in truth["pii"] if p["seq"] == 3} == {"s-1-e3"}
    assert {p["entity_type"] for p in truth["pii"] if p["value"] == email.value} == {EMAIL_ADDRESS}


def test_no_events_no_truth() -> None:
    with pytest.raises(ValueError, match="without events"):
        session_truth([], PRICES)


def test_a_truth_file_round_trips_with_its_params_and_summary(tmp_path: Path) -> None:
    params = FleetParams(sessions=2, seed=9, end_us=T0)
    ok, abandoned = Session("s-ok"), Session("s-gone")
    ok.add("SESSION_START")
    ok.llm(input_tokens=1000, output_tokens=200, content=[{"role": "USER", "text": "hi Ann Lee"}])
    ok.end()
    abandoned.add("SESSION_START")
    abandoned.tool("delete_account", "c9")
    path = tmp_path / "truth" / "run.jsonl"
    with TruthWriter(path, params, PRICES) as writer:
        writer.add(ok.events, planted=[PiiValue("Ann Lee", PERSON)])
        writer.add(abandoned.events, budget_breaker=True)
        written = writer.summary
    truth = load_truth(path)
    assert truth.fleet_params == params
    assert truth.params["prices_version"] == PRICES.version
    assert [s["session_id"] for s in truth.sessions] == ["s-ok", "s-gone"]
    assert truth.by_id()["s-gone"]["denied_tools"] == ["delete_account"]
    assert (
        truth.summary
        == written
        == TruthSummary(
            sessions=2,
            by_outcome={"OK": 1, "ERROR": 0, "TIMEOUT": 1, "KILLED": 0},
            events=5,
            cost_micros=3000,
            unpriced_calls=0,
            llm_calls=1,
            tool_calls=1,
            retries=0,
            pii_values=1,
            pii_occurrences=1,
            budget_breakers=1,
            denied_tool_sessions=1,
        )
    )


def test_an_unknown_record_type_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"type": "params"}\n{"type": "mystery"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        load_truth(path)
