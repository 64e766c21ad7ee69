from __future__ import annotations

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
