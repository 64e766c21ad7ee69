"""The incident timeline of one session, built from records (no broker): its totals are the
simulator's truth, and it keeps the decisions, findings and alerts that concern the session."""

from __future__ import annotations

import io
import json
import random
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich.console import Console

from streams.control import ActedOn, acted_attributes
from streams.pipeline.pricing import ModelPrice, PriceTable, load_prices
from streams.publisher import make_decision
from streams.query.timeline import (
    ActedRow,
    AlertRow,
    DecisionRow,
    PiiRow,
    StepRow,
    build_timeline,
    describe_totals,
    offset,
    span,
    timeline_table,
)
from streams.simulator.offline import simulate_offline
from streams.simulator.params import FleetParams
from streams.simulator.plan import plan_fleet

REPO = Path(__file__).resolve().parents[3]
T0 = 1_764_000_000_000_000
S = 1_000_000
PRICES = PriceTable({"m-small": ModelPrice(Decimal("1"), Decimal("10"), Decimal("0.1"))})
CARD = "4111 1111 1111 1111"


class Session:
    """The events of one session laid out as the client lays them out."""

    def __init__(self, session_id: str = "s-1", agent: str = "support-bot") -> None:
        self.session_id = session_id
        self.agent = agent
        self.events: list[dict[str, Any]] = []

    def add(self, kind: str, at_s: float, duration_s: float = 0, **fields: Any) -> dict[str, Any]:
        event = {
            "event_id": f"{self.session_id}-{len(self.events) + 1}",
            "seq": len(self.events) + 1,
            "session_id": self.session_id,
            "tenant_id": "acme",
            "agent_id": self.agent,
            "agent_version": "1.4.0",
            "category": "billing",
            "prompt_version": "p7",
            "kind": kind,
            "start_time_us": T0 + round(at_s * S),
            "duration_us": round(duration_s * S),
            "status": "OK",
            **fields,
        }
        self.events.append(event)
        return event


def decision(
    target: str, action: str, issued_s: float, epoch: int = 1, **kw: Any
) -> dict[str, Any]:
    kw.setdefault("tenant_id", "acme")
    return make_decision(
        target=target,
        action=action,
        policy_id=f"p-{action.lower()}",
        epoch=epoch,
        issued_at_us=T0 + round(issued_s * S),
        reason=f"{action} [because]",
        **kw,
    )


def killed_session() -> tuple[Session, dict[str, Any]]:
    s = Session()
    s.add("SESSION_START", 0)
    s.add("LLM_CALL", 1, 2, model="m-small", input_tokens=1000, output_tokens=100)
    s.add("TOOL_CALL", 4, 0.5, tool_name="charge_card", tool_call_id="t1",
          content=[{"role": "TOOL_ARGUMENTS", "text": f'{{"card": "{CARD}"}}'}])  # fmt: skip
    kill = decision("session:s-1", "KILL", 4.5)
    end = s.add("SESSION_END", 6, 6, status="KILLED")
    end["attributes"] = acted_attributes([ActedOn(kill["decision_id"], "KILL", T0 + 6 * S)])
    return s, kill


def finding(seq: int, at_s: float, session_id: str = "s-1", n: int = 0) -> dict[str, Any]:
    return {
        "finding_id": f"f-{session_id}-{seq}-{n}",
        "event_id": f"{session_id}-{seq}",
        "session_id": session_id,
        "tenant_id": "acme",
        "agent_id": "support-bot",
        "seq": seq,
        "time_us": T0 + round(at_s * S),
        "entity_type": "CREDIT_CARD",
        "hop": "TOOL_ARGUMENTS",
        "tool_name": "charge_card",
        "destination": "tool:charge_card",
        "handling": "BLOCK",
        "start": 10,
        "end": 29,
        "score": 1.0,
        "fingerprint": "ab" * 32,
        "key_id": "k1",
        "recognizer": "CreditCardRecognizer",
    }


def alert(state: str, at_s: float, started_s: float | None = None, **kw: Any) -> dict[str, Any]:
    return {
        "alert_id": kw.pop("alert_id", "slo:availability:page-fast"),
        "kind": "SLO_BURN",
        "state": state,
        "severity": "PAGE",
        "tenant_id": kw.pop("tenant_id", None),
        "agent_id": None,
        "summary": "availability burning",
        "event_time_us": T0 + round(at_s * S),
        "started_at_us": None if started_s is None else T0 + round(started_s * S),
        **kw,
    }


# --- totals are the truth ------------------------------------------------------------------


def test_totals_equal_the_truth_of_every_session_of_an_offline_fleet() -> None:
    prices = load_prices(REPO / "policies" / "prices.yaml")
    plans = plan_fleet(FleetParams(sessions=400, seed=5, end_us=T0, budget_breaker_fraction=0.02))
    kills = {p.session_id: 2 for p in plans[::37]}
    events, truths = simulate_offline(plans, prices, kills=kills)
    by_session: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        by_session[event["session_id"]].append(event)
    assert {t["outcome"] for t in truths} == {"OK", "ERROR", "TIMEOUT", "KILLED"}
    for truth in truths:
        timeline = build_timeline(by_session[truth["session_id"]], [], [], [], prices)
        h, t = timeline.header, timeline.totals
        assert (h.start_us, h.end_us, h.last_event_us, h.duration_us) == (
            truth["start_time_us"],
            truth["end_time_us"],
            truth["last_event_time_us"],
            truth["duration_us"],
        )
        assert (h.outcome, h.error_type, h.category, h.prompt_version) == (
            truth["outcome"],
            truth["error_type"],
            truth["category"],
            truth["prompt_version"],
        )
        assert t.steps_by_kind == truth["steps_by_kind"]
        assert (t.cost_micros, t.unpriced_calls, t.retries, t.llm_calls) == (
            truth["cost_micros"],
            truth["unpriced_calls"],
            truth["retries"],
            truth["llm_calls"],
        )
        assert (t.input_tokens, t.output_tokens) == (truth["input_tokens"], truth["output_tokens"])
        slowest = truth["slowest_step"]
        if slowest is None:
            assert t.slowest is None
        else:
            assert t.slowest is not None
            assert (t.slowest.seq, t.slowest.kind, t.slowest.name, t.slowest.duration_us) == (
                slowest["seq"],
                slowest["kind"],
                slowest["name"],
                slowest["duration_us"],
            )
        # the rows add up to the same totals
        steps = timeline.steps()
        assert [r.seq for r in steps] == list(range(1, len(steps) + 1))
        assert sum(r.cost_micros or 0 for r in steps) == t.cost_micros
        assert sum(r.retry for r in steps) == t.retries
        assert sum(r.unpriced for r in steps) == t.unpriced_calls
        if truth["session_id"] in kills and truth["outcome"] == "KILLED":
            # the offline stand-in reports its kill as the client does: acted, not on gov.control
            [acted] = timeline.acted()
            assert acted.action == "KILL"
            assert acted.policy_id is None
            assert acted.seq == steps[-1].seq


def test_redelivered_events_count_once_in_any_order() -> None:
    s, kill = killed_session()
    once = build_timeline(s.events, [kill], [], [], PRICES)
    shuffled = [*s.events, *s.events[1:3]]
    random.Random(3).shuffle(shuffled)
    twice = build_timeline(shuffled, [kill], [], [], PRICES)
    assert twice.rows == once.rows
    assert twice.totals.duplicates == 2
    assert twice.totals.steps_by_kind == once.totals.steps_by_kind


def test_calls_are_priced_as_the_worker_prices_them_and_unpriced_ones_are_flagged() -> None:
    s = Session()
    s.add("SESSION_START", 0)
    s.add("LLM_CALL", 1, 1, model="m-small", input_tokens=1000, output_tokens=100,
          cache_read_input_tokens=500)  # fmt: skip
    s.add("LLM_CALL", 2, 1, model="m-small", input_tokens=9, output_tokens=9, cost_micros=777)
    s.add("LLM_CALL", 3, 1, model="acme-llm-9", input_tokens=50, output_tokens=5)
    s.add("TOOL_CALL", 4, 1, tool_name="search_web")
    s.add("SESSION_END", 5, 5)
    timeline = build_timeline(s.events, [], [], [], PRICES)
    costs = [(r.kind, r.cost_micros, r.unpriced) for r in timeline.steps()]
    priced = PRICES.price_micros("m-small", 1000, 100, 500)
    assert costs == [
        ("SESSION_START", None, False),
        ("LLM_CALL", priced, False),
        ("LLM_CALL", 777, False),
        ("LLM_CALL", None, True),
        ("TOOL_CALL", 0, False),
        ("SESSION_END", None, False),
    ]
    assert timeline.totals.cost_micros == (priced or 0) + 777
    assert timeline.totals.unpriced_calls == 1
    assert "(1 unpriced call)" in describe_totals(timeline)[1]


def test_the_bottleneck_is_the_slowest_call_with_its_share() -> None:
    s = Session()
    s.add("SESSION_START", 0)
    s.add("LLM_CALL", 1, 2, model="m-small", status="ERROR", error_type="RateLimited")
    s.add("LLM_CALL", 3, 2, model="m-small")  # a retry of the failed call
    s.add("TOOL_CALL", 5, 5, tool_name="search_web", tool_call_id="t1")
    s.add("SESSION_END", 10, 10)
    timeline = build_timeline(s.events, [], [], [], PRICES)
    slowest = timeline.totals.slowest
    assert slowest is not None
    assert (slowest.seq, slowest.name, slowest.duration_us, slowest.share) == (
        4,
        "search_web",
        5 * S,
        0.5,
    )
    assert [r.retry for r in timeline.steps()] == [False, False, True, False, False]
    assert timeline.totals.failed_calls == 1
    assert describe_totals(timeline)[-1] == (
        "bottleneck: TOOL_CALL #4 search_web took 5.00s (50% of the session)"
    )


# --- what concerns the session -------------------------------------------------------------


def test_decisions_in_force_during_the_session_and_when_the_client_acted() -> None:
    s, kill = killed_session()
    before = decision("agent:acme/support-bot", "THROTTLE", -60, expires_at_us=T0 + 2 * S)
    older_form = decision("agent:support-bot", "WARN", -50, expires_at_us=T0 + S)
    expired = decision("tenant:acme", "PAUSE", -60, expires_at_us=T0 - S)
    other_agent = decision("agent:acme/billing-agent", "KILL", -90)
    other_tenant = decision("agent:support-bot", "KILL", 1, tenant_id="globex")
    other_session = decision("session:s-2", "KILL", 1)
    warn_then_replaced = decision("tenant:acme", "WARN", -30, epoch=1)
    resume = decision("tenant:acme", "RESUME", -20, epoch=2)
    after = decision("session:s-1", "KILL", 7, epoch=2)  # the session had ended
    decisions = [before, older_form, expired, other_agent, other_tenant, other_session]
    decisions += [warn_then_replaced, resume, kill, kill, after]
    timeline = build_timeline(s.events, decisions, [], [], PRICES)
    rows = {r.decision_id: r for r in timeline.decisions()}
    assert set(rows) == {
        before["decision_id"],
        older_form["decision_id"],
        resume["decision_id"],
        kill["decision_id"],
    }
    killed = rows[kill["decision_id"]]
    assert (killed.acted_at_us, killed.acted_seq, killed.waited_us) == (T0 + 6 * S, 4, None)
    assert killed.acted_at_us is not None
    assert killed.acted_at_us >= killed.time_us
    assert rows[before["decision_id"]].acted_at_us is None
    assert rows[before["decision_id"]].in_force_until_us == T0 + 2 * S
    assert not rows[resume["decision_id"]].restricts
    [acted] = timeline.acted()
    assert (acted.policy_id, acted.issued_at_us) == ("p-kill", kill["issued_at_us"])
    assert (timeline.totals.decisions, timeline.totals.acted) == (4, 1)

    # in time: the kill follows the step that caused it; the client acts before the end
    kinds = [
        (type(r).__name__, getattr(r, "kind", getattr(r, "action", ""))) for r in timeline.rows
    ]
    assert kinds.index(("DecisionRow", "KILL")) > kinds.index(("StepRow", "TOOL_CALL"))
    assert kinds[-2:] == [("ActedRow", "KILL"), ("StepRow", "SESSION_END")]
    assert isinstance(timeline.rows[0], DecisionRow)  # issued before the session started
    assert timeline.rows[0].offset_us == -60 * S


def test_a_kill_the_session_never_applied_shows_as_not_acted() -> None:
    s = Session()
    s.add("SESSION_START", 0)
    s.add("LLM_CALL", 1, 1, model="m-small")
    s.add("SESSION_END", 3, 3)
    late = decision("session:s-1", "KILL", 2)
    timeline = build_timeline(s.events, [late], [], [], PRICES)
    [row] = timeline.decisions()
    assert not row.acted
    assert timeline.acted() == ()
    assert "→ not acted" in _rendered(timeline)


def test_findings_of_the_session_only_and_never_a_value() -> None:
    s, kill = killed_session()
    findings = [finding(3, 4), finding(3, 4), finding(2, 1, session_id="s-2")]
    timeline = build_timeline(s.events, [kill], findings, [], PRICES)
    [row] = timeline.pii()
    assert (row.seq, row.entity_type, row.hop, row.handling, row.destination) == (
        3,
        "CREDIT_CARD",
        "TOOL_ARGUMENTS",
        "BLOCK",
        "tool:charge_card",
    )
    rendered = _rendered(timeline) + json.dumps(timeline.to_dict())
    assert CARD not in rendered
    assert "PII CREDIT_CARD" in rendered
    assert timeline.totals.pii_findings == 1


def test_alerts_firing_at_some_point_of_the_session() -> None:
    s, kill = killed_session()
    alerts = [
        alert("FIRING", -600),
        alert("RESOLVED", 3, started_s=-600),  # firing when the session started: both records
        alert("FIRING", 2, alert_id="slo:latency:page-slow"),
        alert("RESOLVED", 3600, started_s=2, alert_id="slo:latency:page-slow"),  # not this one
        alert("FIRING", -900, alert_id="slo:latency:ticket"),
        alert("RESOLVED", -300, started_s=-900, alert_id="slo:latency:ticket"),  # over before
        alert("FIRING", 5, alert_id="slo:quality:page-slow"),  # fires during, never resolved
        alert("FIRING", 1, alert_id="budget:globex", tenant_id="globex"),  # another tenant
        alert("FIRING", 60, alert_id="slo:tools:page-fast"),  # after the end
    ]
    timeline = build_timeline(s.events, [kill], [], alerts, PRICES)
    got = [(r.alert_id, r.state) for r in timeline.alerts()]
    assert got == [
        ("slo:availability:page-fast", "FIRING"),
        ("slo:latency:page-slow", "FIRING"),
        ("slo:availability:page-fast", "RESOLVED"),
        ("slo:quality:page-slow", "FIRING"),
    ]


def test_a_timed_out_session_ends_at_its_last_activity() -> None:
    s = Session()
    s.add("SESSION_START", 0)
    s.add("LLM_CALL", 1, 4, model="m-small")
    timeline = build_timeline(s.events, [], [], [], PRICES)
    assert timeline.header.outcome == "TIMEOUT"
    assert timeline.header.end_us is None
    assert timeline.header.duration_us == 5 * S
    assert "no end (timed out)" in _rendered(timeline)


def test_the_json_form_names_every_row_type() -> None:
    s, kill = killed_session()
    timeline = build_timeline(s.events, [kill], [finding(3, 4)], [alert("FIRING", 1)], PRICES)
    as_json = json.loads(json.dumps(timeline.to_dict()))
    assert {r["type"] for r in as_json["rows"]} == {"step", "decision", "acted", "pii", "alert"}
    assert as_json["header"]["outcome"] == "KILLED"
    assert as_json["totals"]["slowest"]["seq"] == 2
    assert {type(r) for r in timeline.rows} == {StepRow, DecisionRow, ActedRow, PiiRow, AlertRow}


def test_spans_and_offsets_read_as_people_write_them() -> None:
    assert [span(us) for us in (850, 12_000, 3_400_000, 125 * S, 4020 * S)] == [
        "850µs",
        "12ms",
        "3.40s",
        "2m05.0s",
        "1h07m",
    ]
    assert (offset(1_500_000), offset(-60 * S)) == ("+1.50s", "-1m00.0s")


def _rendered(timeline: Any) -> str:
    console = Console(record=True, width=240, file=io.StringIO())
    console.print(timeline_table(timeline))
    for line in describe_totals(timeline):
        console.print(line, markup=False)
    return console.export_text()
