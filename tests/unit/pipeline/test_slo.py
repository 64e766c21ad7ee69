"""Burn-rate alerts on event time: a burst fires the fast page and it resolves afterwards."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import yaml

from streams.pipeline.slo import MINUTE_US, SloCounts, SloFile, evaluate, session_verdicts

REPO = Path(__file__).resolve().parents[3]
SLOS = SloFile.model_validate(yaml.safe_load((REPO / "policies" / "slo.yaml").read_text())).slos
T0 = 1_764_000_000_000_000 - 1_764_000_000_000_000 % (60 * MINUTE_US)


def summary(status: str = "OK", seconds: float = 5, score: float = 0.9) -> dict[str, object]:
    return {
        "status": status,
        "start_time_us": 0,
        "end_time_us": int(seconds * 1e6),
        "evaluations": {"helpfulness": score},
        "violations": 0,
    }


def test_verdicts_per_slo() -> None:
    assert session_verdicts(summary(), SLOS) == {
        "availability": True,
        "latency": True,
        "quality": True,
        "compliance": True,
    }
    bad = session_verdicts(summary("TIMEOUT", 45, 0.2), SLOS)
    assert bad == {"availability": False, "latency": False, "quality": False, "compliance": True}
    assert session_verdicts(summary("KILLED"), SLOS)["availability"]


def test_an_error_burst_fires_the_fast_page_within_minutes_and_resolves() -> None:
    counts, firing = SloCounts(), set[str]()
    changes = []
    for minute in range(180):  # 3 h of traffic, 100 sessions a minute
        now = T0 + minute * MINUTE_US
        burst = 120 <= minute < 135  # every session fails for 15 minutes
        counts.add("availability", now, good=True, n=0 if burst else 100)
        counts.add("availability", now, good=False, n=100 if burst else 0)
        changes += [(minute, c) for c in evaluate(counts, SLOS[:1], now + MINUTE_US - 1, firing)]
    fast = [(m, c.firing) for m, c in changes if c.tier == "fast"]
    # 1h at 14.4x a 1 % budget means 14.4 % of an hour's sessions: 9 minutes of total failure
    assert fast[0] == (128, True)
    assert fast[-1][1] is False, "and resolve once the burst is over"
    assert 135 <= fast[-1][0] < 140, "within one short (5m) window of its end"
    assert all(c.severity == "PAGE" for _m, c in changes if c.tier in ("fast", "slow"))


def test_steady_errors_within_budget_raise_nothing() -> None:
    counts, firing = SloCounts(), set[str]()
    changes = []
    for minute in range(300):
        now = T0 + minute * MINUTE_US
        counts.add("availability", now, good=True, n=995)
        counts.add("availability", now, good=False, n=5)  # 0.5 % < the 1 % budget
        changes += evaluate(counts, SLOS[:1], now, firing)
    assert changes == []


def test_a_failed_tool_call_is_good_when_its_fallback_follows() -> None:
    from streams.pipeline.slo import FallbackTracker

    [degradation] = [s for s in SLOS if s.name == "degradation"]
    tracker = FallbackTracker(degradation)
    # the failed tool waiting for its fallback lives on each session's own state
    s1, s2, s3 = (SimpleNamespace(pending_fallback=None) for _ in range(3))
    assert tracker.tool_call(s1, "web_search", failed=True) is None
    assert s1.pending_fallback == "web_search"
    assert tracker.tool_call(s1, "search_kb", failed=False) is True  # the defined fallback
    assert tracker.tool_call(s1, "web_search", failed=True) is None
    assert tracker.tool_call(s1, "send_email", failed=False) is False  # not a fallback
    assert tracker.tool_call(s2, "lookup_order", failed=True) is None
    assert tracker.tool_call(s2, "lookup_order", failed=False) is True  # a retry, no entry
    assert tracker.tool_call(s3, "lookup_order", failed=True) is None
    assert tracker.session_ended(s3) is False  # ended without a fallback
    assert tracker.session_ended(s1) is None
