"""`governor console` in a real headless Chromium (Debian's, driven by Playwright) over a
simulated fleet on the real stack: the overview's figures equal `governor ask --json`, the
JSON twins are that output unchanged, a session's timeline is reached by keyboard and shows its
cost and bottleneck, no page has a console error, and no PII value is ever on a page."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from streams.console.views import count, money, seconds, share
from streams.query.session_records import session_timeline
from streams.settings import Settings
from streams.simulator.params import FleetParams
from streams.simulator.run import run_simulation
from streams.simulator.truth import load_truth
from streams.worker import WorkerProcess
from tests.kafka_helpers import ask, close_silent_sessions

sync_api = pytest.importorskip("playwright.sync_api")

REPO = Path(__file__).resolve().parents[3]
CHROMIUM = shutil.which("chromium")
#: the console's ports in this suite (apart from the workers' and the demo's)
PORTS = range(38400, 38500)
OUTCOMES = ("OK", "ERROR", "TIMEOUT", "KILLED")


def console_port() -> int:
    for port in PORTS:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1}")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def wait_for(predicate: Any, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@contextmanager
def served(settings: Settings, log: Path) -> Iterator[str]:
    """`governor console` as a child process on a port of the console range."""
    port = console_port()
    port_file = log.with_suffix(".port")
    argv = [sys.executable, "-m", "streams.cli", "console", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*argv, "--port-file", str(port_file)],
            env={**os.environ, **settings.to_env()},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: port_file.exists() or proc.poll() is not None, "the console", 30)
        assert proc.poll() is None, log.read_text()
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def figure(page: Any, name: str) -> str:
    text: str = page.locator(f'[data-figure="{name}"]').inner_text()
    return text.strip()


def test_the_console_shows_what_ask_answers_and_never_a_pii_value(
    topics: Settings, tmp_path: Path
) -> None:
    if CHROMIUM is None:
        # CI installs it (ops/local/setup.sh): there a missing browser is a failure, not a skip
        message = "no chromium on PATH: ops/local/setup.sh installs it (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    settings = topics.replace(policies_dir=policies, keys_dir=tmp_path / "keys")
    truth_path = tmp_path / "truth.jsonl"
    shots = Path(os.environ.get("GOVERNOR_CONSOLE_SCREENSHOTS", tmp_path / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    with WorkerProcess(settings, tmp_path / "worker.log"):
        run_simulation(
            settings,
            Console(quiet=True),
            FleetParams(sessions=60, seed=17, concurrency=16),
            rate=0,
            truth_path=truth_path,
        )
        truth = [dict(s) for s in load_truth(truth_path).sessions]
        last = max(s["end_time_us"] or s["last_event_time_us"] for s in truth)
        close_silent_sessions(settings, last + 3_600_000_000)
        wait_for(
            lambda: ask(settings, "outcomes", "--since", "30d")["sessions"] >= len(truth),
            "the read-model to hold the fleet",
        )
        values = {p["value"] for s in truth for p in s["pii"]}
        assert values, "the fleet planted no PII value"
        with_pii = max(truth, key=lambda s: len(s["pii"]))

        errors: list[str] = []
        with served(settings, tmp_path / "console.log") as url:
            # the JSON twins are what `governor ask --json` prints
            assert get_json(f"{url}/api/outcomes?since=30d") == ask(
                settings, "outcomes", "--since", "30d"
            )
            assert get_json(f"{url}/api/cost") == ask(settings, "cost")
            assert get_json(f"{url}/api/top-cost?pct=10&since=30d") == ask(
                settings, "top-cost", "--pct", "10", "--since", "30d"
            )
            assert get_json(f"{url}/api/slo") == ask(settings, "slo")

            with sync_api.sync_playwright() as pw:
                browser = pw.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
                )
                page = browser.new_page()
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(str(e)))

                # the overview: its figures are the answers'
                page.goto(f"{url}/?since=30d&window=30d")
                outcomes = ask(settings, "outcomes", "--since", "30d")
                assert figure(page, "sessions") == count(outcomes["sessions"])
                for status in OUTCOMES:
                    assert figure(page, f"count-{status}") == count(outcomes["counts"][status])
                    assert figure(page, f"share-{status}") == share(outcomes["shares"][status])
                latency = ask(settings, "latency", "--window", "30d")
                assert figure(page, "latency-p50") == seconds(latency["session_ms"]["p50"])
                assert figure(page, "latency-p99") == seconds(latency["session_ms"]["p99"])
                fleet = ask(settings, "cost")["scopes"]["all"]
                assert figure(page, "cost-today") == money(fleet["today"]["cost_usd"])
                assert figure(page, "cost-last-week") == money(
                    fleet["same_day_last_week"]["cost_usd"]
                )
                slo = ask(settings, "slo")
                assert page.locator("#h-slo + table tbody tr").count() == len(slo["slos"])
                page.screenshot(path=str(shots / "overview-light.png"), full_page=True)
                page.emulate_media(color_scheme="dark")
                page.screenshot(path=str(shots / "overview-dark.png"), full_page=True)
                page.emulate_media(color_scheme="light")

                # sessions, then by keyboard only to the first one's timeline
                page.goto(f"{url}/sessions?since=30d&pct=100")
                first = page.locator("a.session").first.inner_text()
                for _ in range(40):
                    page.keyboard.press("Tab")
                    if page.evaluate("document.activeElement.classList.contains('session')"):
                        break
                assert page.evaluate("document.activeElement.textContent") == first
                page.screenshot(path=str(shots / "sessions.png"), full_page=True)
                page.keyboard.press("Enter")
                page.wait_for_url(f"**/sessions/{first}")
                timeline = session_timeline(settings, first)
                assert figure(page, "cost") == money(timeline.totals.cost_micros / 1e6)
                assert figure(page, "outcome") == timeline.header.outcome
                if timeline.totals.slowest is not None:
                    assert page.locator('[data-bottleneck="true"]').count() == 1
                page.screenshot(path=str(shots / "timeline.png"), full_page=True)
                seen = [page.content()]

                # the session with the most PII: its findings are there, its values are not
                page.goto(f"{url}/sessions/{with_pii['session_id']}")
                seen.append(page.content())
                page.screenshot(path=str(shots / "timeline-pii.png"), full_page=True)
                twin = get_json(f"{url}/api/sessions/{with_pii['session_id']}/timeline")
                seen.append(json.dumps(twin))
                assert not [v for v in values for text in seen if v in text]
                assert errors == []  # no page so far logged an error

                # an unknown session is a page that says so
                missing = page.goto(f"{url}/sessions/no-such-session")
                assert missing is not None
                assert missing.status == 404
                assert "no events of session" in page.content()
                browser.close()
    assert errors == [
        "Failed to load resource: the server responded with a status of 404 (Not Found)"
    ]
    print(f"console screenshots: {shots}")
