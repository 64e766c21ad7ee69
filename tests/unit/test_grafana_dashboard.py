"""The Grafana dashboard: valid JSON, the panels the operators need, PromQL that parses, and
only metrics the worker exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.metrics import worker_metrics

REPO_ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = REPO_ROOT / "ops" / "grafana" / "dashboards" / "governor.json"
DATASOURCE_UID = "prometheus"

#: what the panel titles must cover: every key is matched (case-insensitive) by some title
REQUIRED_TOPICS = {
    "session latency": r"session latency",
    "step latency": r"step latency",
    "cost": r"\bcost\b",
    "outcomes": r"\boutcome",
    "decisions": r"\bdecisions?\b",
    "PII": r"\bpii\b",
    "SLO budget": r"\bslo\b.*\bbudget\b",
    "consumer lag": r"consumer lag",
    "worker health": r"worker health|healthy",
}
#: the series names Prometheus sees for each metric type of prometheus_client
_SERIES_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "gauge": ("",),
}

#: Grafana's built-in and dashboard variables, replaced by something PromQL accepts
_INTERVAL_VARIABLES = {"__rate_interval", "__interval", "__range"}
_VARIABLE = re.compile(r"\$\{?(\w+)(?::\w+)?\}?")


def _dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    found: list[dict[str, Any]] = []
    for panel in panels:
        found.append(panel)
        found.extend(_panels(panel.get("panels", [])))
    return found


def _query_panels() -> list[dict[str, Any]]:
    return [p for p in _panels(_dashboard()["panels"]) if p.get("type") != "row"]


def _exprs() -> list[str]:
    return [t["expr"] for p in _query_panels() for t in p.get("targets", []) if "expr" in t]


def _substitute(expr: str) -> str:
    return _VARIABLE.sub(lambda m: "5m" if m.group(1) in _INTERVAL_VARIABLES else ".*", expr)


def test_dashboard_identity() -> None:
    data = _dashboard()
    assert data["uid"] == "governor"
    assert data["title"]


def test_panels_have_ids_positions_and_prometheus_targets() -> None:
    ids = [p["id"] for p in _panels(_dashboard()["panels"])]
    assert len(ids) == len(set(ids)), "panel ids are not unique"
    for panel in _query_panels():
        title = panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), f"{title}: incomplete gridPos"
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, f"{title}: wider than 24"
        assert panel["targets"], f"{title}: no targets"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE_UID, f"{title}: datasource"
            assert target["expr"].strip(), f"{title}: empty expr"


def test_panel_titles_cover_the_topics() -> None:
    titles = [p["title"] for p in _query_panels()]
    for topic, pattern in REQUIRED_TOPICS.items():
        assert any(re.search(pattern, t, re.IGNORECASE) for t in titles), (
            f"no panel about {topic} among {titles}"
        )


def test_every_expr_parses(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed, so the dashboard's PromQL cannot be parsed")
    exprs = _exprs()
    assert exprs
    rules = [
        {"record": f"dashboard:expr_{i}", "expr": _substitute(expr)} for i, expr in enumerate(exprs)
    ]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8"
    )
    result = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (
        f"promtool cannot parse a dashboard expr:\n{result.stdout}{result.stderr}"
    )


def test_every_worker_metric_in_the_panels_is_exported_by_the_worker() -> None:
    """A renamed metric would leave its panel silently empty."""
    exported = {
        family.name + suffix
        for family in worker_metrics().registry.collect()
        for suffix in _SERIES_SUFFIXES[family.type]
    }
    for expr in _exprs():
        used = set(re.findall(r"\bgovernor_[a-z_]+", expr))
        assert used <= exported, f"{expr}: {sorted(used - exported)} not exported by the worker"
