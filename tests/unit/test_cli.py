from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from streams.cli import app

runner = CliRunner()


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("up", "down", "status", "topics", "worker", "demo"):
        assert command in result.output


def test_up_help_explains_the_brokers_option() -> None:
    result = runner.invoke(app, ["up", "--help"])
    assert result.exit_code == 0
    assert "--brokers" in result.output


def test_policy_check_lists_a_valid_set() -> None:
    result = runner.invoke(app, ["policy", "check"])
    assert result.exit_code == 0, result.output
    assert "session-budget" in result.output
    assert "policies valid" in result.output


def test_policy_check_names_file_line_and_field(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "version: 1\npolicies:\n  - id: x\n    kind: loop\n    max_repeats: 1\n"
    )
    result = runner.invoke(app, ["policy", "check", str(tmp_path)])
    assert result.exit_code == 1
    assert "p.yaml:5: policies.0.max_repeats" in result.output.replace("\n", "")
