"""``governor gateway``: what it says when it cannot start, and its refusals' shape."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from streams.cli import app
from streams.gateway.server import _paused, _retry_after

REPO = Path(__file__).resolve().parents[3]


def test_a_missing_file_or_provider_key_is_named_with_the_fix(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["gateway", "--config", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 1
    assert "does not exist" in missing.output
    shutil.copy(REPO / "policies" / "gateway.yaml", tmp_path / "gateway.yaml")
    env = {"OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": ""}
    no_key = runner.invoke(app, ["gateway", "--config", str(tmp_path / "gateway.yaml")], env=env)
    assert no_key.exit_code == 1
    assert "export OPENAI_API_KEY" in no_key.output
    (tmp_path / "gateway.yaml").write_text("version: 1\nupstreams: {}\nroutes: []\n")
    bad = runner.invoke(app, ["gateway", "--config", str(tmp_path / "gateway.yaml")])
    assert bad.exit_code == 1
    assert "gateway.yaml:2: upstreams" in bad.output


def test_a_pause_asks_to_retry_when_it_expires() -> None:
    now = 1_000_000_000
    decision = {
        "policy_id": "p",
        "reason": "r",
        "decision_id": "d",
        "expires_at_us": now + 2_500_000,
    }
    refusal = _paused(decision, now)
    assert (refusal.status, refusal.retry_after_s, refusal.action) == (429, 3, "PAUSE")
    assert _paused({**decision, "expires_at_us": None}, now).retry_after_s == 5


def test_an_upstreams_retry_after_is_bounded() -> None:
    assert [_retry_after(v) for v in (None, "2", "x", "-1", "1e9", "inf")] == [
        0.0,
        2.0,
        0.0,
        0.0,
        10.0,
        0.0,
    ]
