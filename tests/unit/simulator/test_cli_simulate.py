"""``governor simulate``: its help, and parameters refused before anything is sent."""

from __future__ import annotations

from typer.testing import CliRunner

from streams.cli import app

runner = CliRunner()


def test_simulate_is_listed_and_explains_its_options() -> None:
    assert "simulate" in runner.invoke(app, ["--help"]).output
    result = runner.invoke(app, ["simulate", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    for option in (
        "--sessions",
        "--rate",
        "--seed",
        "--ground-truth",
        "--days",
        "--change-at",
        "--concurrency",
    ):
        assert option in result.output


def test_invalid_parameters_fail_before_touching_kafka() -> None:
    # an unreachable broker would take seconds to fail: the parameters are refused first
    env = {"GOVERNOR_BOOTSTRAP": "127.0.0.1:1", "COLUMNS": "200"}
    result = runner.invoke(app, ["simulate", "--change-at", "1.5"], env=env)
    assert result.exit_code == 1
    assert "change_at must be within 0..1" in result.output
