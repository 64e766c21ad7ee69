"""Prometheus and Alertmanager configuration.

The rules are valid (`promtool check rules`), their unit tests pass (`promtool test rules` on
every file of ops/prometheus/tests/), every alert has a severity and a runbook that exists and
names the layer to suspect, every worker metric they use is one the worker exports, and
Alertmanager accepts its configuration and routes by severity.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.metrics import worker_metrics

REPO_ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = REPO_ROOT / "ops" / "prometheus" / "rules"
RULE_TESTS_DIR = REPO_ROOT / "ops" / "prometheus" / "tests"
RUNBOOKS_DIR = REPO_ROOT / "ops" / "runbooks"
ALERTMANAGER_CONFIG = REPO_ROOT / "ops" / "alertmanager" / "alertmanager.yml"
RUNBOOK_URL_PREFIX = "ops/runbooks/"  # relative to the repository root (streams.runbooks)
SEVERITIES = {"page", "ticket", "none"}
SLOS = {"availability", "latency", "quality", "compliance", "degradation"}
SLO_WINDOWS = ("5m", "30m", "1h", "6h", "3d")
#: the worker's health alerts and their severities (page: a human now; ticket: next working day)
HEALTH_ALERTS = {
    "GovernorWorkerStalled": "page",
    "GovernorWorkerUnhealthy": "page",
    "GovernorWorkerNotReady": "ticket",
}
#: the series names Prometheus sees for each metric type of prometheus_client
_SERIES_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "gauge": ("",),
}


def _yaml_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in {".yml", ".yaml"})


def _rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for path in _yaml_files(RULES_DIR):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        for group in data["groups"]:
            rules.extend(group["rules"])
    return rules


def _alerting_rules() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "alert" in rule]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False
    )


def test_there_are_rule_files() -> None:
    assert _yaml_files(RULES_DIR), f"no rule files in {RULES_DIR}"


def test_promtool_check_rules() -> None:
    promtool = _tool("promtool")
    for path in _yaml_files(RULES_DIR):
        result = _run([promtool, "check", "rules", str(path)])
        assert result.returncode == 0, (
            f"promtool check rules {path.name} failed:\n{result.stdout}{result.stderr}"
        )


@pytest.mark.parametrize("path", _yaml_files(RULE_TESTS_DIR), ids=lambda p: p.name)
def test_promtool_test_rules(path: Path) -> None:
    promtool = _tool("promtool")
    result = _run([promtool, "test", "rules", str(path)])
    assert result.returncode == 0, (
        f"promtool test rules {path.name} failed:\n{result.stdout}{result.stderr}"
    )


def test_every_alert_has_severity_and_runbook() -> None:
    for rule in _alerting_rules():
        name = rule["alert"]
        severity = rule.get("labels", {}).get("severity")
        assert severity in SEVERITIES, f"{name}: severity {severity!r} not in {SEVERITIES}"
        annotations = rule.get("annotations", {})
        assert annotations.get("summary"), f"{name} has no summary annotation"
        assert annotations.get("description"), f"{name} has no description annotation"
        runbook_url = str(annotations.get("runbook_url", ""))
        assert runbook_url == f"{RUNBOOK_URL_PREFIX}{name}.md", f"{name}: bad runbook_url"
        assert (RUNBOOKS_DIR / f"{name}.md").is_file(), f"{name}: runbook file missing"


def test_every_worker_metric_in_the_rules_is_exported_by_the_worker() -> None:
    """A renamed metric would leave its alert silently never firing."""
    exported = {
        family.name + suffix
        for family in worker_metrics().registry.collect()
        for suffix in _SERIES_SUFFIXES[family.type]
    }
    for rule in _rules():
        used = set(re.findall(r"\bgovernor_[a-z_]+", rule["expr"]))
        name = rule.get("alert") or rule.get("record")
        assert used <= exported, f"{name}: {sorted(used - exported)} not exported by the worker"


def test_the_health_alerts_exist_with_their_severities() -> None:
    by_name = {rule["alert"]: rule for rule in _alerting_rules()}
    for name, severity in HEALTH_ALERTS.items():
        assert name in by_name, f"no alert {name}"
        assert by_name[name]["labels"]["severity"] == severity, name
    assert "governor_last_batch_timestamp_seconds" in by_name["GovernorWorkerStalled"]["expr"]
    assert "time()" in by_name["GovernorWorkerStalled"]["expr"]


def test_every_health_runbook_says_what_the_worker_does_and_what_to_check() -> None:
    for name in HEALTH_ALERTS:
        text = (RUNBOOKS_DIR / f"{name}.md").read_text(encoding="utf-8")
        for needle in ("/healthz", "/readyz", "FATAL in", "governor status", "exit"):
            assert needle in text, f"{name}.md does not mention {needle}"


def test_the_lag_runbook_scales_out_up_to_the_partition_count() -> None:
    text = (RUNBOOKS_DIR / "GovernorConsumerLagHigh.md").read_text(encoding="utf-8")
    assert "one worker per app id" not in text
    assert "more worker instances, up to the partition count" in text


def test_every_runbook_names_the_layer_to_suspect_and_its_rollback() -> None:
    for name in sorted({rule["alert"] for rule in _alerting_rules()}):
        text = (RUNBOOKS_DIR / f"{name}.md").read_text(encoding="utf-8").lower()
        assert "layer to suspect" in text, f"{name}.md does not say which layer to suspect"
        assert "rollback" in text or "roll back" in text, f"{name}.md says nothing of rollback"


def test_every_slo_is_recorded_over_every_window() -> None:
    recorded = {
        (rule["record"], rule.get("labels", {}).get("slo")) for rule in _rules() if "record" in rule
    }
    for slo in SLOS:
        for window in SLO_WINDOWS:
            assert (f"governor:slo_errors:ratio_rate{window}", slo) in recorded, (
                f"no governor:slo_errors:ratio_rate{window} for slo={slo}"
            )


def test_every_slo_pages_and_tickets() -> None:
    by_slo: dict[str, set[str]] = {}
    for rule in _alerting_rules():
        labels = rule.get("labels", {})
        if "slo" in labels:
            by_slo.setdefault(labels["slo"], set()).add(labels["severity"])
    assert set(by_slo) == SLOS
    for slo, severities in by_slo.items():
        assert severities == {"page", "ticket"}, f"slo={slo}: {severities}"


def test_amtool_check_config() -> None:
    amtool = _tool("amtool")
    result = _run([amtool, "check-config", str(ALERTMANAGER_CONFIG)])
    assert result.returncode == 0, f"amtool check-config failed:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=GovernorDeadMansSwitch", "severity=none"], "deadmansswitch"),
        (["alertname=GovernorRedisDown", "severity=page"], "pager"),
        (
            ["alertname=GovernorAvailabilityBudgetBurn", "severity=page", "slo=availability"],
            "pager",
        ),
        (["alertname=GovernorDLQGrowing", "severity=ticket"], "ticket"),
        (["alertname=GovernorWorkerStalled", "severity=page"], "pager"),
        (["alertname=GovernorWorkerUnhealthy", "severity=page"], "pager"),
        (["alertname=GovernorWorkerNotReady", "severity=ticket"], "ticket"),
        (["alertname=SomethingElse"], "governor-webhook"),
    ],
)
def test_alertmanager_routes_by_severity(labels: list[str], receiver: str) -> None:
    amtool = _tool("amtool")
    result = _run(
        [amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}", *labels]
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == receiver, f"{labels} went to {result.stdout.strip()!r}"


def test_deadmansswitch_repeats_every_minute() -> None:
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text(encoding="utf-8"))
    routes = [r for r in config["route"]["routes"] if r["receiver"] == "deadmansswitch"]
    assert len(routes) == 1
    assert routes[0]["repeat_interval"] == "1m"
