"""`governor policy backtest` over real history: the live policies reproduce the decisions the
live worker published, id for id; a stricter candidate stops more and says what it saves."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from rich.console import Console
from typer.testing import CliRunner

from streams.backtest import backtest
from streams.cli import app as cli
from streams.settings import Settings
from streams.simulator.params import FleetParams
from streams.simulator.run import run_simulation
from streams.simulator.truth import load_truth
from streams.worker import WorkerProcess
from tests.kafka_helpers import ask

REPO = Path(__file__).resolve().parents[2]


def test_backtest_reproduces_the_live_decisions(topics: Settings, tmp_path: Path) -> None:
    live = tmp_path / "policies"
    shutil.copytree(REPO / "policies", live)
    settings = topics.replace(policies_dir=live, keys_dir=tmp_path / "keys")
    started_us = time.time_ns() // 1000 - 1_000_000
    truth_path = tmp_path / "truth.jsonl"
    with WorkerProcess(settings, tmp_path / "worker.log"):
        run_simulation(
            settings,
            Console(quiet=True),
            FleetParams(sessions=300, seed=21, concurrency=16),
            rate=0,
            truth_path=truth_path,
        )
        ended = sum(s["outcome"] != "TIMEOUT" for s in load_truth(truth_path).sessions)
        deadline = time.monotonic() + 90
        while ask(settings, "outcomes", "--since", "30d")["sessions"] < ended:
            assert time.monotonic() < deadline, "the worker did not catch up"
            time.sleep(1)
        time.sleep(2)  # decisions are published before the summaries, but be generous
    to_us = time.time_ns() // 1000

    same = backtest(settings, live, started_us, to_us)
    assert same.published["decisions"] > 0
    assert same.live_only_in_shadow == []
    assert same.live_only_published == []
    assert same.reproduces_live
    assert same.candidate_only == []
    assert same.candidate["by_policy"] == same.published["by_policy"]
    assert same.events_in_window == same.events

    strict = tmp_path / "strict"
    shutil.copytree(live, strict)
    text = (strict / "governor.yaml").read_text()
    assert "limit_usd: 2.00" in text
    (strict / "governor.yaml").write_text(text.replace("limit_usd: 2.00", "limit_usd: 0.20", 1))
    result = CliRunner().invoke(
        cli,
        [
            "policy",
            "backtest",
            str(strict),
            "--from",
            str(started_us),
            "--to",
            str(to_us),
            "--json",
        ],
        env=settings.to_env(),
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["reproduces_live"]
    candidate, live_run = report["candidate"], report["live_policies"]
    assert candidate["sessions_stopped"] > live_run["sessions_stopped"]
    assert candidate["cost_avoided_usd"] > live_run["cost_avoided_usd"]
    assert candidate["by_policy"]["session-budget"].get("KILL", 0) > live_run["by_policy"].get(
        "session-budget", {}
    ).get("KILL", 0)
    assert report["candidate_only"]
