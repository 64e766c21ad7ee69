"""The console's pages: rendered from the answers, escaped, and never a PII value."""

from __future__ import annotations

from typing import Any

import pytest

from streams.console.views import Pages, bar, change, money, share
from streams.query.session_search import SessionQuery, search
from streams.query.timeline import build_timeline
from tests.unit.query.test_timeline import CARD, PRICES, alert, finding, killed_session

Summary = dict[str, Any]


def test_a_timeline_page_shows_steps_bottleneck_kill_and_findings_but_no_value() -> None:
    s, kill = killed_session()
    s.events[2]["tool_name"] = "<script>alert(1)</script>"
    timeline = build_timeline(
        s.events, [kill], [finding(3, 4)], [alert("FIRING", 2, started_s=1)], PRICES
    )
    html = Pages().timeline(timeline)
    assert CARD not in html
    assert "<script>alert(1)</script>" not in html  # escaped, not markup
    assert "&lt;script&gt;" in html
    assert html.count('data-bottleneck="true"') == 1
    assert timeline.totals.slowest is not None
    assert f"#{timeline.totals.slowest.seq} LLM_CALL" in html
    assert "CREDIT_CARD" in html
    assert "TOOL_ARGUMENTS" in html
    assert "(step #4)" in html  # the kill, acted on at the SESSION_END
    assert "availability burning" in html
    assert 'href="/static/console.css"' in html
    assert "http://" not in html  # nothing from a CDN
    assert "https://" not in html


def test_bars_stay_on_the_axis() -> None:
    assert bar(0, 500, 1000) == bar(0, 500, 1000)
    assert (bar(0, 500, 1000).left, bar(0, 500, 1000).width) == (0.0, 50.0)
    late = bar(990, 100, 1000)
    assert late.left == 99.0
    assert late.left + late.width <= 100.0
    instant = bar(500, 0, 1000)
    assert instant.width == 0.5
    assert bar(0, 0, 0).width >= 0.5  # a session of no length


def test_figures_are_formatted_as_the_cli_prints_them() -> None:
    assert money(1234.5) == "$1,234.5000"
    assert money(None) == "-"
    assert share(0.3333) == "33.3%"
    assert change(12.0, 10.0) == "+20.0%"
    assert change(1.0, 0.0) == "-"


def summary(sid: str, tenant: str, agent: str, status: str, cost: int, secs: float) -> Summary:
    return {"session_id": sid, "tenant_id": tenant, "agent_id": agent, "status": status,
            "cost_micros": cost, "start_time_us": 0, "end_time_us": int(secs * 1e6),
            "cost_by_model": {"m": cost}, "steps_by_kind": {"LLM_CALL": 2}, "retries": 0,
            "max_context_tokens": 10}  # fmt: skip


def test_sessions_are_searched_over_the_whole_period_by_every_filter() -> None:
    fleet = [
        summary("a", "acme", "bot", "OK", 900_000, 2),
        summary("b", "globex", "bot", "KILLED", 50_000, 30),
        summary("c", "acme", "x", "KILLED", 10_000, 400),
        summary("d", "acme", "bot", "OK", 10_000, 1),
    ]

    def ids(query: SessionQuery, **kw: int) -> list[str]:
        return [r["session_id"] for r in search(fleet, query, **kw)["sessions"]]

    assert ids(SessionQuery()) == ["a", "b", "c", "d"]  # dearest first, then by id
    assert ids(SessionQuery(outcome="KILLED")) == ["b", "c"]
    assert ids(SessionQuery(tenant="acme", agent="bot")) == ["a", "d"]
    assert ids(SessionQuery(min_cost_usd=0.05)) == ["a", "b"]
    assert ids(SessionQuery(max_cost_usd=0.01)) == ["c", "d"]
    assert ids(SessionQuery(min_duration_s=10, max_duration_s=60)) == ["b"]
    assert ids(SessionQuery(), limit=2, offset=1) == ["b", "c"]
    found = search(fleet, SessionQuery(tenant="acme"), limit=1)
    assert (found["matched"], found["sessions_in_period"], found["tenants"]) == (
        3, 4, ["acme", "globex"])  # fmt: skip
    assert found["sessions"][0]["duration_ms"] == 2000.0
    with pytest.raises(ValueError, match="outcome must be one of"):
        SessionQuery(outcome="DONE")
    with pytest.raises(ValueError, match="the least"):
        SessionQuery(min_cost_usd=2, max_cost_usd=1)
    with pytest.raises(ValueError, match="at least 0"):
        SessionQuery(min_duration_s=-1)


def test_an_empty_fleet_renders_every_page() -> None:
    pages = Pages()
    empty_outcomes = {
        "since": "24h",
        "sessions": 0,
        "counts": dict.fromkeys(("OK", "ERROR", "TIMEOUT", "KILLED"), 0),
        "shares": dict.fromkeys(("OK", "ERROR", "TIMEOUT", "KILLED"), 0.0),
        "failure_modes": [],
    }
    latency = {"sessions": 0, "session_ms": {"p50": None, "p90": None, "p99": None}}
    html = pages.overview(
        {"outcomes": empty_outcomes, "latency": latency, "cost": {"scopes": {}}, "slo": None},
        "24h",
        "1h",
    )
    assert "No worker answers" in html
    answer = {"since": "24h", **search([], SessionQuery()), "since_us": 0, "until_us": 1}
    assert "No session matches" in pages.sessions(answer, {})
    assert "cannot read" in pages.error(503, "cannot read Redis")
