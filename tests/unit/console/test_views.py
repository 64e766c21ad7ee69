"""The console's pages: rendered from the answers, escaped, and never a PII value."""

from __future__ import annotations

import pytest

from streams.console.source import SessionFilter, filter_sessions
from streams.console.views import Pages, bar, change, money, share
from streams.query.timeline import build_timeline
from tests.unit.query.test_timeline import CARD, PRICES, alert, finding, killed_session


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


def test_sessions_are_filtered_in_the_order_of_the_answer() -> None:
    def row(sid: str, tenant: str, agent: str) -> dict[str, object]:
        return {"session_id": sid, "tenant_id": tenant, "agent_id": agent}

    answer = {"top": [row("a", "acme", "bot"), row("b", "globex", "bot"), row("c", "acme", "x")]}
    outcomes = {"a": "OK", "b": "KILLED", "c": "KILLED"}
    kept = filter_sessions(answer, outcomes, SessionFilter(outcome="KILLED"))
    assert [r["session_id"] for r in kept] == ["b", "c"]
    assert kept[0]["outcome"] == "KILLED"
    kept = filter_sessions(answer, outcomes, SessionFilter(tenant="acme", agent="bot"))
    assert [r["session_id"] for r in kept] == ["a"]
    assert len(filter_sessions(answer, outcomes, SessionFilter())) == 3
    with pytest.raises(ValueError, match="outcome must be one of"):
        SessionFilter(outcome="DONE")


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
    nothing = {"tenant": None, "agent": None, "outcome": None}
    answer = {"since": "24h", "pct": 10.0, "ranked": 0, "tenants": [], "agents": [],
              "filter": nothing, "sessions": []}  # fmt: skip
    assert "No session matches" in pages.sessions(answer, "")
    assert "cannot read" in pages.error(503, "cannot read Redis")
