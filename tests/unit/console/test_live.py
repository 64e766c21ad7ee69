"""Sessions open now: counted from the workers' ``/state/sessions`` answers, once each, per
tenant, and shown on the overview (or "no worker answers" when none does); and which token a
mutation carries (the header console.js sends, else the form's field)."""

from __future__ import annotations

from typing import Any

from streams.console.live import sessions_now
from streams.console.server import request_token
from streams.console.views import Pages

XSS = "<script>alert(1)</script>"


def row(session: str, tenant: Any, status: str = "ACTIVE") -> dict[str, Any]:
    return {"session_id": session, "tenant_id": tenant, "status": status}


OVERVIEW: Any = {
    "outcomes": {
        "since": "24h",
        "sessions": 0,
        "counts": dict.fromkeys(("OK", "ERROR", "TIMEOUT", "KILLED"), 0),
        "shares": dict.fromkeys(("OK", "ERROR", "TIMEOUT", "KILLED"), 0.0),
        "failure_modes": [],
    },
    "latency": {"sessions": 0, "session_ms": {"p50": None, "p90": None, "p99": None}},
    "cost": {"scopes": {}},
    "slo": None,
}


def test_open_sessions_are_the_active_ones_counted_once_per_tenant() -> None:
    one = {
        "sessions": [
            row("a", "acme"),
            row("b", "acme"),
            row("c", "globex"),
            row("d", "acme", "OK"),  # ended: not open
            row("e", "initech", "TIMEOUT"),
            row("f", None),  # no tenant on its events yet
        ],
        "processed": 10,
    }
    # a second worker that also holds "c" (a rebalance under way) and one more session
    two = {"sessions": [row("c", "globex"), row("g", "globex"), "junk", {"status": "ACTIVE"}]}
    now = sessions_now([one, two, {"error": "not this shape"}])
    assert now == {
        "answered": True,
        "workers": 2,
        "open": 5,
        "by_tenant": {"acme": 2, "globex": 2, "(none)": 1},
        "error": None,
    }
    assert sessions_now([]) == {
        "answered": False, "workers": 0, "open": 0, "by_tenant": {}, "error": None}  # fmt: skip
    idle = sessions_now([{"sessions": [row("d", "acme", "OK")]}])
    assert (idle["answered"], idle["open"], idle["by_tenant"]) == (True, 0, {})


def test_the_overview_shows_the_count_per_tenant_or_why_there_is_none() -> None:
    pages = Pages(root="/console")
    now = sessions_now([{"sessions": [row("a", XSS), row("b", XSS), row("c", "acme")]}])
    html = pages.overview(OVERVIEW, "24h", "1h", now=now)
    assert 'data-figure="sessions-open">3<' in html
    assert "open, as 1 worker holds them." in html
    assert XSS not in html
    assert "&lt;script&gt;" in html
    assert 'href="/console/api/sessions-now"' in html
    none = pages.overview(OVERVIEW, "24h", "1h")
    assert "open sessions are held by the worker (start one" in none
    assert 'data-figure="sessions-open"' not in none
    refused = pages.overview(OVERVIEW, "24h", "1h", now=sessions_now([], error="HTTP 401 ..."))
    assert "The worker refused the console: HTTP 401 ..." in refused


def test_a_mutation_takes_the_header_token_before_the_form_field() -> None:
    assert request_token("Bearer from-header", "from-form") == "from-header"
    assert request_token("bearer  spaced  ", None) == "spaced"
    assert request_token(None, " from-form ") == "from-form"
    assert request_token("Basic dXNlcjpwdw==", "from-form") == "from-form"  # not a bearer
    assert request_token("Bearer ", None) == ""
    assert request_token(None, None) == ""


def test_a_session_tree_page_lists_its_members_linked_escaped_under_the_root() -> None:
    def member(session: str, cost: float) -> dict[str, Any]:
        return {"session_id": session, "tenant_id": XSS, "agent_id": "planner", "cost_usd": cost,
                "steps": 3, "retries": 1}  # fmt: skip

    answer = {
        "since": "7d",
        "session": member("root-1", 0.5),
        "tree": {
            "root": "root-1",
            "parent_outside": True,
            "sessions": 2,
            "depth": 1,
            "cost_usd": 0.75,
            "input_tokens": 1200,
            "output_tokens": 300,
            "steps": 6,
            "agents": [f"{XSS}/planner"],
            "descendants": ["child-1"],
        },
        "members": [member("root-1", 0.5), member("child-1", 0.25)],
    }
    html = Pages(root="/console").page("tree", tr=answer, since="7d")
    assert XSS not in html
    assert 'data-figure="tree-cost">$0.7500<' in html
    assert 'data-figure="tree-sessions">2<' in html
    assert 'href="/console/sessions/child-1"' in html
    assert 'href="/console/api/sessions/root-1/tree?since=7d"' in html
    assert "started by another session that did not end in the period" in html
