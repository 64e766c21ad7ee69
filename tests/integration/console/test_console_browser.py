"""`governor console` in a real headless Chromium (Debian's, driven by Playwright) over a
simulated fleet on the real stack: every page loads with no console error, its figures equal
what `governor ... --json` prints for the same fleet, its JSON twin is that output unchanged,
a session's timeline is reached by keyboard, the two mutations (a rollback after its
confirmation, an incident opened from a session) go through, and no PII value is ever on a
page. One fleet, one worker, one console and one browser for the module; screenshots of every
page go to $GOVERNOR_CONSOLE_SCREENSHOTS (else the module's tmp dir), printed at the end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from streams.cli import app as cli
from streams.console.views import count, money, seconds, share
from streams.query.session_records import session_timeline
from streams.settings import Settings
from streams.simulator.params import FleetParams
from streams.simulator.run import run_simulation
from streams.simulator.truth import load_truth
from streams.topics import ensure_topics
from streams.worker import WorkerProcess
from tests.conftest import isolated_settings
from tests.kafka_helpers import ask, close_silent_sessions
from tests.private_redis import free_low_port

sync_api = pytest.importorskip("playwright.sync_api")

REPO = Path(__file__).resolve().parents[3]
CHROMIUM = shutil.which("chromium")
OUTCOMES = ("OK", "ERROR", "TIMEOUT", "KILLED")
NOT_FOUND = "Failed to load resource: the server responded with a status of 404 (Not Found)"


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def wait_for(predicate: Any, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def cli_json(settings: Settings, *args: str) -> Any:
    """What ``governor <args> --json`` prints."""
    result = CliRunner().invoke(cli, [*args, "--json"], env=settings.to_env())
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@contextmanager
def served(settings: Settings, log: Path) -> Iterator[str]:
    """`governor console` as a child process on a port of the console range."""
    port = free_low_port()
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


@dataclass
class Fleet:
    settings: Settings
    url: str
    page: Any
    shots: Path
    #: every PII value the simulator planted (none may be on a page)
    values: set[str]
    #: the session with the most planted PII
    pii_session: str
    #: console and page errors, as they happen
    errors: list[str]
    #: every page's HTML (and JSON twins) seen, for the PII check
    seen: list[str] = field(default_factory=list)
    #: `governor ask ... --json` answers, asked once each (the fleet is done moving)
    answers: dict[tuple[str, ...], Any] = field(default_factory=dict)

    def ask(self, *args: str) -> Any:
        if args not in self.answers:
            self.answers[args] = ask(self.settings, *args)
        return self.answers[args]

    def visit(self, path: str, shot: str | None = None) -> None:
        response = self.page.goto(f"{self.url}{path}")
        assert response is not None
        assert response.status == 200, (path, self.page.content())
        self.seen.append(self.page.content())
        if shot:
            self.shot(shot)

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def fleet(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """60 simulated sessions accounted by a worker, `governor console` over them, and one
    headless Chromium page."""
    if CHROMIUM is None:
        # CI installs it (ops/local/setup.sh): there a missing browser is a failure, not a skip
        message = "no chromium on PATH: ops/local/setup.sh installs it (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    folder = tmp_path_factory.mktemp("console")
    policies = folder / "policies"
    shutil.copytree(REPO / "policies", policies)
    settings = isolated_settings(stack_settings, folder).replace(
        policies_dir=policies, keys_dir=folder / "keys"
    )
    ensure_topics(settings)
    truth_path = folder / "truth.jsonl"
    shots = Path(os.environ.get("GOVERNOR_CONSOLE_SCREENSHOTS", folder / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    with WorkerProcess(settings, folder / "worker.log"):
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
        with_pii = max(truth, key=lambda s: len(s["pii"]))["session_id"]
        with (
            served(settings, folder / "console.log") as url,
            sync_api.sync_playwright() as pw,
        ):
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
            )
            page = browser.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            yield Fleet(settings, url, page, shots, values, with_pii, errors)
            browser.close()
    print(f"console screenshots: {shots}")


def test_the_json_twins_are_what_ask_prints(fleet: Fleet) -> None:
    s, url = fleet.settings, fleet.url
    assert get_json(f"{url}/api/outcomes?since=30d") == fleet.ask("outcomes", "--since", "30d")
    assert get_json(f"{url}/api/cost") == fleet.ask("cost")
    assert get_json(f"{url}/api/top-cost?pct=10&since=30d") == fleet.ask(
        "top-cost", "--pct", "10", "--since", "30d"
    )
    assert get_json(f"{url}/api/slo") == ask(s, "slo")
    assert get_json(f"{url}/api/pii?since=30d") == fleet.ask("pii", "--since", "30d")
    history = cli_json(s, "policy", "history")
    fleet.answers[("policy", "history")] = history
    assert get_json(f"{url}/api/policies")["versions"] == history["versions"]


def test_the_overview_shows_the_answers_the_health_and_the_live_feed(fleet: Fleet) -> None:
    page = fleet.page
    fleet.visit("/?since=30d&window=30d")
    outcomes = fleet.ask("outcomes", "--since", "30d")
    assert figure(page, "sessions") == count(outcomes["sessions"])
    for status in OUTCOMES:
        assert figure(page, f"count-{status}") == count(outcomes["counts"][status])
        assert figure(page, f"share-{status}") == share(outcomes["shares"][status])
    latency = fleet.ask("latency", "--window", "30d")
    assert figure(page, "latency-p50") == seconds(latency["session_ms"]["p50"])
    assert figure(page, "latency-p99") == seconds(latency["session_ms"]["p99"])
    fleet_cost = fleet.ask("cost")["scopes"]["all"]
    assert figure(page, "cost-today") == money(fleet_cost["today"]["cost_usd"])
    assert figure(page, "cost-last-week") == money(fleet_cost["same_day_last_week"]["cost_usd"])
    assert page.locator("#h-slo + table tbody tr").count() == len(fleet.ask("slo")["slos"])
    # the live feed (polled by the script), the worker's health and the 7-day chart
    page.wait_for_selector("#feed[data-loaded]", timeout=15_000)
    assert int(page.locator("#feed").get_attribute("data-loaded")) > 0  # the fleet was governed
    assert figure(page, "health-status") == get_json(f"{fleet.url}/api/health")["status"]
    # sessions open now: what the worker holds as ACTIVE, on the page and in the twin
    held = get_json(f"http://{fleet.settings.web_host}:{fleet.settings.web_port}/state/sessions")
    now = get_json(f"{fleet.url}/api/sessions-now")
    assert (now["answered"], now["workers"], now["error"]) == (True, 1, None)
    assert now["open"] == sum(1 for s in held["sessions"] if s["status"] == "ACTIVE")
    # what the console reads: the open ones only, ids and tenants (no summaries under the lock)
    only_open = get_json(
        f"http://{fleet.settings.web_host}:{fleet.settings.web_port}/state/sessions?open=1"
    )["sessions"]
    assert sorted((r["session_id"], r["tenant_id"]) for r in only_open) == sorted(
        (s["session_id"], s["tenant_id"]) for s in held["sessions"] if s["status"] == "ACTIVE"
    )
    assert figure(page, "sessions-open") == count(now["open"])
    assert page.locator("img.chart").evaluate("i => i.complete && i.naturalWidth > 0")
    fleet.shot("overview-light")
    page.emulate_media(color_scheme="dark")
    fleet.shot("overview-dark")
    page.emulate_media(color_scheme="light")


def test_sessions_are_filtered_over_the_period_and_reached_by_keyboard(fleet: Fleet) -> None:
    s, page, url = fleet.settings, fleet.page, fleet.url
    # the filters run over every session of the period (not a top-k of it)
    everyone = fleet.ask("top-cost", "--pct", "100", "--since", "30d")["top"]
    tenant, cheap = everyone[-1]["tenant_id"], everyone[-1]["cost_usd"]  # the cheapest's
    found = get_json(f"{url}/api/sessions?since=30d&tenant={tenant}&max_cost={cheap}")
    assert [r["session_id"] for r in found["sessions"]] == [
        r["session_id"] for r in everyone if r["tenant_id"] == tenant and r["cost_usd"] <= cheap
    ]
    fleet.visit("/sessions?since=30d&limit=100")
    first = page.locator("a.session").first.inner_text()
    for _ in range(60):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('session')"):
            break
    assert page.evaluate("document.activeElement.textContent") == first
    fleet.shot("sessions")
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/sessions/{first}")
    timeline = session_timeline(s, first)
    assert figure(page, "cost") == money(timeline.totals.cost_micros / 1e6)
    assert figure(page, "outcome") == timeline.header.outcome
    if timeline.totals.slowest is not None:
        assert page.locator('[data-bottleneck="true"]').count() == 1
    fleet.seen.append(page.content())
    fleet.shot("timeline")


def test_a_timeline_with_pii_shows_findings_not_values_and_leads_to_their_lineage(
    fleet: Fleet,
) -> None:
    page, url = fleet.page, fleet.url
    fleet.visit(f"/sessions/{fleet.pii_session}", "timeline-pii")
    fleet.seen.append(json.dumps(get_json(f"{url}/api/sessions/{fleet.pii_session}/timeline")))
    page.locator("a.fingerprint").first.click()
    page.wait_for_url("**/pii?fingerprint=*")
    fingerprint = page.url.split("fingerprint=", 1)[1]
    lineage = fleet.ask("pii", "--fingerprint", fingerprint)
    assert lineage["hops"]
    assert page.locator("tr[data-hop]").count() == len(lineage["hops"])
    fleet.seen.append(page.content())
    fleet.shot("pii-lineage")
    # an unknown session is a page that says so
    missing = page.goto(f"{url}/sessions/no-such-session")
    assert missing is not None
    assert missing.status == 404
    assert "no events of session" in page.content()
    fleet.errors.remove(NOT_FOUND)


def test_a_session_tree_is_reached_from_its_timeline_and_is_ask_tree(fleet: Fleet) -> None:
    page, session = fleet.page, fleet.pii_session
    fleet.visit(f"/sessions/{session}")
    page.click('a[data-link="tree"]')
    page.wait_for_url(f"**/sessions/{session}/tree")
    fleet.seen.append(page.content())
    fleet.shot("tree")
    tree = fleet.ask("tree", session, "--since", "7d")
    assert get_json(f"{fleet.url}/api/sessions/{session}/tree?since=7d") == tree
    assert figure(page, "tree-sessions") == count(tree["tree"]["sessions"])
    assert figure(page, "tree-cost") == money(tree["tree"]["cost_usd"])
    rows = page.locator("tr[data-member]")
    assert [rows.nth(i).get_attribute("data-member") for i in range(rows.count())] == [
        m["session_id"] for m in tree["members"]
    ]


def test_the_cost_page_is_the_cost_answers(fleet: Fleet) -> None:
    page = fleet.page
    fleet.visit("/cost?since=30d&pct=10", "cost")
    cost = fleet.ask("cost")["scopes"]
    top = fleet.ask("top-cost", "--pct", "10", "--since", "30d")
    assert get_json(f"{fleet.url}/api/cost-page?since=30d&pct=10")["top_cost"] == top
    assert figure(page, "day-cost-6") == money(cost["all"]["today"]["cost_usd"])
    for scope, rows in cost.items():
        today, week = rows.get("today", {}), rows.get("last_7_days", {})
        assert figure(page, f"scope-today-{scope}") == money(today.get("cost_usd"))
        assert figure(page, f"scope-week-{scope}") == money(week.get("cost_usd"))
    for n, row in enumerate(top["top"]):
        assert figure(page, f"top-cost-{n}") == money(row["cost_usd"])


def test_the_pii_page_is_the_pii_answer(fleet: Fleet) -> None:
    fleet.visit("/pii?since=30d", "pii")
    pii = fleet.ask("pii", "--since", "30d")
    assert figure(fleet.page, "pii-total") == count(pii["total"])
    for entity, n in pii["by_entity"].items():
        assert figure(fleet.page, f"by_entity-{entity}") == count(n)


def test_the_drift_page_is_the_drift_report(fleet: Fleet) -> None:
    fleet.visit("/drift", "drift")
    agents = fleet.page.locator('select[name="agent"] option').all_inner_texts()
    if not agents:
        assert "No agent has drift samples" in fleet.page.content()
        return
    drift = fleet.ask("drift", "--agent", agents[0])
    assert get_json(f"{fleet.url}/api/drift?agent={agents[0]}") == drift
    for scope in drift["scopes"]:
        assert figure(fleet.page, f"drift-change-{scope['scope']}") == scope["change"]
        shifted = sum(1 for row in scope["rows"] if row["shifted"])
        assert figure(fleet.page, f"drift-shifted-{scope['scope']}") == str(shifted)


def test_the_policies_page_and_a_confirmed_rollback(fleet: Fleet) -> None:
    page = fleet.page
    fleet.visit("/policies", "policies")
    history = fleet.answers.get(("policy", "history")) or cli_json(
        fleet.settings, "policy", "history"
    )
    in_force = history["in_force"]
    assert figure(page, "policy-in-force") == f"v{in_force['version']} ({in_force['digest']})"
    # the confirmation step, then the rollback through the worker (to what is in force)
    fleet.visit(f"/policies/rollback?to_version={in_force['version']}")
    page.fill('input[name="reason"]', "console test")
    page.check('input[name="confirm"]')
    fleet.shot("rollback-confirm")
    page.click("form.mutation button")
    assert "already in force" in figure(page, "rollback-result")


def test_an_incident_opened_from_a_session_page(fleet: Fleet) -> None:
    s, page = fleet.settings, fleet.page
    fleet.visit(f"/sessions/{fleet.pii_session}")
    page.fill('input[name="title"]', "console test: PII sent to a tool")
    page.select_option('select[name="layer"]', "tool")
    # loopback and no tokens: none is needed, but a typed one goes as the header (console.js),
    # which the worker's port requires, and not in the body
    page.fill('input[name="token"]', "typed-token")
    with page.expect_request(lambda r: r.method == "POST") as sent:
        page.click("form.mutation button")
    assert sent.value.headers.get("authorization") == "Bearer typed-token"
    assert "typed-token" not in (sent.value.post_data or "")
    assert "title=console+test" in (sent.value.post_data or "")
    page.wait_for_url("**/incidents/*?opened=1")
    incident_id, title = figure(page, "incident-id"), figure(page, "incident-title")
    fleet.shot("incident")
    fleet.visit("/incidents", "incidents")
    listed = cli_json(s, "incident", "list", "--all")
    [shown] = [i for i in listed["incidents"] if i["incident_id"] == incident_id]
    assert shown["affected_sessions"] == [fleet.pii_session]
    assert title == shown["title"] == "console test: PII sent to a tool"
    assert get_json(f"{fleet.url}/api/incidents") == listed
    assert figure(page, "incidents-listed") == str(len(listed["incidents"]))


def test_no_page_logged_an_error_nor_held_a_pii_value(fleet: Fleet) -> None:
    assert fleet.seen
    assert not [v for v in fleet.values for text in fleet.seen if v in text]
    assert fleet.errors == []
