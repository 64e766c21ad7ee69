"""Every runbook link resolves to a file in this repository (issue 19: they pointed at a
placeholder repository): the Prometheus rules and their tests, the worker's own SLO and drift
alerts, the Grafana dashboards and the docs. Links are relative to the repository root unless
GOVERNOR_RUNBOOK_BASE_URL says where the team reads them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from streams.pipeline import slo
from streams.query import drift
from streams.runbooks import BASE_URL_ENV, RUNBOOK_DIR, runbook_url

REPO_ROOT = Path(__file__).resolve().parents[2]
SLOS = ("availability", "latency", "quality", "compliance", "degradation")
#: any link that names a runbook: a URL or a path ending in ops/runbooks/<name>.md
RUNBOOK_LINK = re.compile(r"[\w:/.\-]*ops/runbooks/[\w\-]+\.md")


def runbook_links(text: str) -> list[str]:
    return RUNBOOK_LINK.findall(text)


def files_with_links() -> list[Path]:
    globs = ("ops/prometheus/**/*.yml", "ops/grafana/**/*.json", "ops/runbooks/*.md",
             "ops/alertmanager/*.yml", "*.md", "docs/**/*.md")  # fmt: skip
    return sorted({p for g in globs for p in REPO_ROOT.glob(g) if p.is_file()})


def test_every_runbook_link_in_the_repository_resolves_to_a_file() -> None:
    checked = 0
    for path in files_with_links():
        for link in runbook_links(path.read_text()):
            assert link.startswith(RUNBOOK_DIR), f"{path}: {link} is not relative to the repo"
            assert (REPO_ROOT / link).is_file(), f"{path}: {link} names no file"
            checked += 1
    assert checked >= 20  # every alert rule and its promtool test


def test_every_alert_rule_links_its_runbook() -> None:
    for path in sorted((REPO_ROOT / "ops/prometheus/rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    url = rule["annotations"]["runbook_url"]
                    assert (REPO_ROOT / url).is_file(), f"{rule['alert']}: {url}"


def test_the_workers_alerts_link_runbooks_that_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BASE_URL_ENV, raising=False)
    urls = [runbook_url(slo.RUNBOOK_ALERT.format(slo=name.capitalize())) for name in SLOS]
    urls.append(runbook_url(drift.RUNBOOK_ALERT))
    for url in urls:
        assert (REPO_ROOT / url).is_file(), url


def test_a_base_url_replaces_the_relative_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BASE_URL_ENV, "https://git.example.com/ops/governor/-/blob/main/runbooks/")
    assert runbook_url("GovernorDrift") == (
        "https://git.example.com/ops/governor/-/blob/main/runbooks/GovernorDrift.md"
    )
    assert runbook_url("GovernorDrift", base="docs/rb") == "docs/rb/GovernorDrift.md"
    monkeypatch.delenv(BASE_URL_ENV)
    assert runbook_url("GovernorDrift") == "ops/runbooks/GovernorDrift.md"
