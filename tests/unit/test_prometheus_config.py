"""Prometheus alert rules are valid, each with a severity and a runbook that exists."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = REPO_ROOT / "ops" / "prometheus" / "rules"
RUNBOOKS_DIR = REPO_ROOT / "ops" / "runbooks"


def _rule_files() -> list[Path]:
    return sorted(p for p in RULES_DIR.iterdir() if p.suffix in {".yml", ".yaml"})


def _alerting_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for path in _rule_files():
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        for group in data["groups"]:
            rules.extend(rule for rule in group["rules"] if "alert" in rule)
    return rules


def test_there_are_rule_files() -> None:
    assert _rule_files(), f"no rule files in {RULES_DIR}"


def test_promtool_check_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed, so the alert rules cannot be validated")
    for path in _rule_files():
        result = subprocess.run(
            [promtool, "check", "rules", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, (
            f"promtool check rules {path.name} failed:\n{result.stdout}{result.stderr}"
        )


def test_every_alert_has_severity_and_runbook() -> None:
    for rule in _alerting_rules():
        name = rule["alert"]
        assert rule.get("labels", {}).get("severity"), f"{name} has no severity label"
        annotations = rule.get("annotations", {})
        assert annotations.get("summary"), f"{name} has no summary annotation"
        runbook_url = str(annotations.get("runbook_url", ""))
        assert runbook_url.endswith(f"ops/runbooks/{name}.md"), f"{name}: bad runbook_url"
        assert (RUNBOOKS_DIR / f"{name}.md").is_file(), f"{name}: runbook file missing"
