"""The second slice's pages (cost, PII, drift, policies, incidents, rollback) rendered from
answers shaped as the CLI prints them: escaped, linked under the console's root, with no
URL to another host; and the pure parts (the cost chart, the policy diff, the incident form)."""

from __future__ import annotations

from typing import Any

import pytest

from streams.console.source import incident_form
from streams.console.views import Pages, chart_bars, drift_value, policy_diff
from streams.pipeline.aggregates import DAY_US
from streams.query.trend import DayCost, day_starts

XSS = "<script>alert(1)</script>"
DAY0 = 20_000 * DAY_US


def days(*costs: float) -> list[DayCost]:
    return [
        {"day_us": DAY0 + n * DAY_US, "sessions": 1, "cost_usd": c} for n, c in enumerate(costs)
    ]


def test_the_cost_chart_has_a_bar_per_day_in_proportion_and_an_empty_day_shows() -> None:
    bars = chart_bars(days(1.0, 4.0, 0.0, 2.0))
    assert len(bars) == 4
    tallest = max(b.height for b in bars)
    assert bars[1].height == tallest
    assert bars[0].height == pytest.approx(tallest / 4)
    assert bars[2].height == 1.0  # a line, so that the day shows
    assert all(b.y + b.height == pytest.approx(bars[1].y + tallest) for b in bars)  # one baseline
    assert bars[0].label == "2024-10-04"
    assert bars[3].value == "$2.0000"
    assert chart_bars([]) == []
    assert chart_bars(days(0.0, 0.0))[0].height == 1.0


def test_the_last_days_end_with_today() -> None:
    now = DAY0 + 5 * DAY_US + 123
    assert day_starts(now, 3) == [DAY0 + 3 * DAY_US, DAY0 + 4 * DAY_US, DAY0 + 5 * DAY_US]
    with pytest.raises(ValueError, match="at least 1"):
        day_starts(now, 0)


def test_a_policy_diff_names_each_file_and_its_changed_lines() -> None:
    before = {"budget.yaml": "limit: 5\nwarn: 0.8\n", "tools.yaml": "deny: [rm]\n"}
    after = {
        "budget.yaml": "limit: 2\nwarn: 0.8\n",
        "loop.yaml": "max: 3\n",
        "tools.yaml": "deny: [rm]\n",
    }
    diff = {f.name: f for f in policy_diff(before, after)}
    assert {n: f.status for n, f in diff.items()} == {
        "budget.yaml": "changed", "loop.yaml": "added", "tools.yaml": "same"}  # fmt: skip
    assert "-limit: 5" in diff["budget.yaml"].lines
    assert "+limit: 2" in diff["budget.yaml"].lines
    assert diff["tools.yaml"].lines == ()
    assert policy_diff(after, {})[0].status == "removed"


def test_the_incident_form_is_checked_before_anything_is_written() -> None:
    form = incident_form({"title": " loops ", "sessions": "s-1, s-2,", "layer": "Tool",
                          "severity": "", "from_us": "17"})  # fmt: skip
    assert (form.title, form.sessions, form.layer, form.severity, form.from_us) == (
        "loops", ("s-1", "s-2"), "tool", None, 17)  # fmt: skip
    with pytest.raises(ValueError, match="title: say what is happening"):
        incident_form({"title": "  "})
    with pytest.raises(ValueError, match="choose one of"):
        incident_form({"title": "x", "layer": "moon"})
    with pytest.raises(ValueError, match="from_us"):
        incident_form({"title": "x", "from_us": "yesterday"})


def cost_page() -> dict[str, Any]:
    week = {"sessions": 3, "cost_usd": 1.5, "p50_usd": 0.2, "p99_usd": 1.0}
    top = {"session_id": XSS, "tenant_id": "acme", "agent_id": "bot", "cost_usd": 1.0,
           "tokens_by_model": {"gpt-4o": 1000}, "cost_by_model_usd": {"gpt-4o": 0.9},
           "steps": 4, "retries": 1, "max_context_tokens": 900, "tool_cost_usd": 0.1}  # fmt: skip
    return {
        "cost": {"scopes": {"all": {"last_7_days": week}, f"tenant:{XSS}": {"today": week}}},
        "top_cost": {"since": "7d", "sessions": 3, "pct": 10.0, "top": [top], "median": top},
        "days": days(0.5, 1.0),
    }


def test_every_new_page_renders_escaped_under_its_root_with_no_other_host() -> None:
    pages = Pages(root="/console")
    version = {"version": 2, "digest": "abc", "accepted_at_us": DAY0, "policies": [XSS],
               "files": ["b.yaml"], "in_force": True}  # fmt: skip
    history = {"worker_reachable": True, "in_force": {"version": 2, "digest": "abc"},
               "versions": [{**version, "version": 1, "in_force": False}, version],
               "clients": {"clients": [], "events_scanned": 0}}  # fmt: skip
    incident = {"incident_id": "INC-1", "title": XSS, "status": "OPEN", "severity": "SEV2",
                "opened_at_us": DAY0, "opened_by": "me", "closed_at_us": None,
                "closed_by": None, "resolution": None, "from_us": DAY0, "to_us": None,
                "suspected_layer": "TOOL", "tenants": ["acme"], "agents": [],
                "affected_sessions": ["s-1"], "updated_at_us": DAY0,
                "entries": [{"time_us": DAY0, "author": "me", "kind": "STATUS",
                             "text": "opened", "sessions": ["s-1"]}]}  # fmt: skip
    row = {"metric": XSS, "test": "mann-whitney", "before": 1.0, "after": 2.0,
           "summary": "median", "effect_name": "cliff", "effect": 0.5, "p_value": 0.0001,
           "p_adjusted": 0.0002, "shifted": True}  # fmt: skip
    scope = {"scope": "acme/bot", "kind": "version change", "change": "prompt v1 -> v2",
             "layers": ["prompt"], "n_before": 40, "n_after": 41, "rows": [row],
             "versions": [{"versions": "v2", "first_seen_us": DAY0, "sessions": 41}],
             "alerts": {}}  # fmt: skip
    pii = {"since": "7d", "total": 3, "by_entity": {"EMAIL_ADDRESS": 3}, "by_hop": {"X": 3},
           "by_handling": {"MASKED": 3}, "by_destination": {},
           "rows": [{"entity_type": "EMAIL_ADDRESS", "hop": "X", "handling": "MASKED",
                     "destination": XSS, "count": 3}]}  # fmt: skip
    change = policy_diff({"b.yaml": "a: 1\n"}, {"b.yaml": "a: 2\n"})
    diffs = {2: (1, change), 1: (None, policy_diff({}, {"b.yaml": "a: 1\n"}))}
    rendered = {
        "cost": pages.page("cost", c=cost_page(), pct=10.0, since="7d"),
        "pii": pages.page("pii", p=pii, since="7d", fingerprint=None, days=[]),
        "lineage": pages.page(
            "pii",
            p={"fingerprint": "ff" * 16, "hops": []},
            since="7d",
            fingerprint="ff" * 16,
            days=[],
        ),
        "drift": pages.page(
            "drift", agents=["bot"], agent="bot", tenant=None, d={"scopes": [scope]}
        ),
        "no drift": pages.page("drift", agents=[], agent=None, tenant=None, d=None),
        "policies": pages.page("policies", h=history, diffs=diffs),
        "rollback": pages.page("rollback", version=1, current=2, diff=change, done=None),
        "incidents": pages.page("incidents", i={"incidents": [incident]}, include_closed=True),
        "incident": pages.page("incident", i=incident, opened=True),
    }
    for name, html in rendered.items():
        assert XSS not in html, name
        assert "http://" not in html, name
        assert "https://" not in html, name
        assert 'href="/console/static/console.css"' in html, name
        assert 'href="/sessions' not in html, name  # every link under the root
    assert "&lt;script&gt;" in rendered["cost"]
    assert rendered["cost"].count('class="chart-bar"') == 2
    assert '<span class="badge alert">SHIFT</span>' in rendered["drift"]
    assert "+a: 2" in rendered["policies"]
    assert "v2 against v1: 1 file(s) changed" in rendered["policies"]
    assert "v1: the first version recorded (1 file(s))" in rendered["policies"]
    assert 'name="confirm"' in rendered["rollback"]  # the confirmation step
    assert 'href="/console/policies/rollback?to_version=1"' in rendered["policies"]
    assert "Opened INC-1" in rendered["incident"]
    assert "No agent has drift samples" in rendered["no drift"]
    assert "No hop of this fingerprint" in rendered["lineage"]
    assert drift_value(0.25, "rate") == "25.0%"
    assert drift_value(None, "median") == "-"
