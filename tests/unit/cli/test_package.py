"""The ``streams.cli`` package: one module per command group, ``app`` and ``main`` exported,
``python -m streams.cli`` runs it, and the demo uses the renderers, never the commands."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import typer
from typer.testing import CliRunner

import streams.cli
from streams.cli import app, main

REPO_ROOT = Path(__file__).resolve().parents[3]
GROUPS = ("topics", "policy", "ask", "prices", "audit", "incident", "readmodel")
COMMANDS = ("up", "down", "status", "ingest", "gateway", "console", "worker", "demo",
            "simulate", "replay")  # fmt: skip


def test_app_and_main_are_exported_and_every_command_is_registered() -> None:
    assert callable(main)
    command = typer.main.get_command(app)
    names = list(command.commands)  # type: ignore[attr-defined]
    assert set(COMMANDS) | set(GROUPS) <= set(names)
    # --help lists the stack first, then the servers and the worker, as before the split
    assert names[:7] == ["up", "down", "status", "ingest", "gateway", "console", "worker"]


def test_python_dash_m_streams_cli_runs_the_app() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streams.cli", "ask", "--help"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "outcomes" in result.stdout
    assert "top-cost" in result.stdout


def test_the_demo_renders_answers_and_never_calls_a_command() -> None:
    tree = ast.parse((REPO_ROOT / "streams" / "demo.py").read_text())
    imported = {
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    from_cli = {name for module, name in imported if module == "streams.cli"}
    assert from_cli == {"render"}
    assert not any(module and module.startswith("streams.cli.") for module, _ in imported)


def test_demo_help_explains_keep_and_stop() -> None:
    result = CliRunner().invoke(app, ["demo", "--help"], terminal_width=100)
    assert result.exit_code == 0
    assert "--keep" in result.output
    assert "--stop" in result.output


def test_the_package_has_a_module_per_group() -> None:
    folder = Path(streams.cli.__file__).parent
    modules = {p.stem for p in folder.glob("*.py")}
    wanted = ("stack", "worker", "policy", "ask", "incident", "replay", "audit", "simulate",
              "demo", "prices", "readmodel", "render", "errors", "base", "__main__")  # fmt: skip
    for name in wanted:
        assert name in modules, name
