"""``governor policy check``: the whole bundle, errors exit 1, warnings are loud but exit 0."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from streams.cli import app

REPO = Path(__file__).resolve().parents[2]
PRICE_TABLE = REPO / "tests" / "fixtures" / "policies" / "prices-table.yaml"
runner = CliRunner()


def copy(tmp_path: Path) -> Path:
    folder = tmp_path / "policies"
    shutil.copytree(REPO / "policies", folder)
    return folder


def check(folder: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["policy", "check", str(folder), *args])
    # rich wraps long lines at the console width
    return result.exit_code, " ".join(result.output.split())


def test_a_valid_bundle_is_listed_without_warnings(tmp_path: Path) -> None:
    code, output = check(copy(tmp_path))
    assert code == 0, output
    assert "session-budget" in output
    assert "3 model prices + genai-prices" in output
    assert "SLOs: availability, latency, quality, compliance, degradation" in output
    assert "warning" not in output


def test_a_broken_price_table_is_refused_with_file_line_and_field(tmp_path: Path) -> None:
    folder = copy(tmp_path)
    prices = folder / "prices.yaml"
    prices.write_text(PRICE_TABLE.read_text().replace("input: 2.50", "input: .inf"))
    code, output = check(folder)
    assert code == 1
    assert "error: " in output
    assert "prices.yaml:7: per_million_tokens.gpt-4o.input: Input should be a finite" in output
    assert "refused: 1 problem " in output


def test_a_yml_file_is_refused(tmp_path: Path) -> None:
    folder = copy(tmp_path)
    (folder / "extra.yml").write_text("version: 1\npolicies: []\n")
    code, output = check(folder)
    assert code == 1
    assert "extra.yml:1:" in output
    assert "rename it to extra.yaml" in output


def test_warnings_are_printed_and_the_check_passes(tmp_path: Path) -> None:
    folder = copy(tmp_path)
    governor = folder / "governor.yaml"
    governor.write_text(
        governor.read_text().replace(
            'deny: ["delete_account", "shell_exec", "drop_*"]', 'deny: ["*"]'
        )
    )
    code, output = check(folder)
    assert code == 0, output
    assert "warning: " in output
    assert "policies.3.deny: deny '*': tools policy 'dangerous-tools' refuses every tool" in output
    assert "1 warning" in output


def test_json_reports_problems_and_warnings(tmp_path: Path) -> None:
    folder = copy(tmp_path)
    (folder / "governor.yaml").write_text("version: 1\npolicies: []\n")
    result = runner.invoke(app, ["policy", "check", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["valid"] is True
    assert report["policies"] == []
    [warning] = report["warnings"]
    assert "no enforcement policy is in force" in warning

    (folder / "slo.yaml").write_text("")
    result = runner.invoke(app, ["policy", "check", str(folder), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["valid"] is False
    empty = "the file is empty: slo.yaml is a mapping with 'version' and 'slos'"
    assert report["problems"] == [f"{folder / 'slo.yaml'}:1: {empty}"]
