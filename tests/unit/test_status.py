"""``governor status``: the worker's /healthz and /readyz answers as a table of checks, and the
command against a real HTTP server standing in for the worker's web port (no Kafka needed)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from streams.cli import HealthRow, app, health_rows, health_summary, health_view
from streams.settings import Settings
from streams.worker import get_json_status
from tests.conftest import free_port

HEALTHZ_OK = {
    "status": "ok",
    "checks": [
        {"name": "accounting loop", "ok": True, "detail": "came round 0.1 s ago"},
        {"name": "lag monitor", "ok": True, "detail": "measured 2.0 s ago"},
    ],
}
READYZ_DEGRADED = {
    "status": "degraded",
    "checks": [
        {"name": "assigned", "ok": True, "detail": "partitions [0, 1, 2]"},
        {"name": "lag", "ok": False, "detail": "250000 events behind (bound 100000)"},
    ],
    "lag": {"total": 250000},
}


def test_an_ok_view_and_a_degraded_one() -> None:
    healthz = health_view((200, HEALTHZ_OK))
    readyz = health_view((503, READYZ_DEGRADED))
    assert healthz is not None
    assert readyz is not None
    assert healthz["ok"]
    assert not readyz["ok"]
    assert readyz["http_status"] == 503
    assert readyz["answer"] == READYZ_DEGRADED
    assert health_rows({"healthz": healthz, "readyz": readyz}) == [
        HealthRow("healthz", "accounting loop", True, "came round 0.1 s ago"),
        HealthRow("healthz", "lag monitor", True, "measured 2.0 s ago"),
        HealthRow("readyz", "assigned", True, "partitions [0, 1, 2]"),
        HealthRow("readyz", "lag", False, "250000 events behind (bound 100000)"),
    ]
    assert (
        health_summary({"healthz": healthz, "readyz": readyz})
        == "/healthz ok (HTTP 200), /readyz degraded (HTTP 503)"
    )


def test_a_check_readyz_repeats_from_healthz_is_shown_once() -> None:
    loop = {"name": "loop:accounting", "ok": True, "detail": "running, came round 0.1s ago"}
    again = {**loop, "detail": "running, came round 0.2s ago"}
    lag = {"name": "lag", "ok": True, "detail": "0 events behind (bound 100000)"}
    views = {
        "healthz": health_view((200, {"status": "ok", "checks": [loop]})),
        "readyz": health_view((200, {"status": "ok", "checks": [again, lag]})),
    }
    assert health_rows(views) == [
        HealthRow("healthz", "loop:accounting", True, "running, came round 0.1s ago"),
        HealthRow("readyz", "lag", True, "0 events behind (bound 100000)"),
    ]


def test_nothing_answering_is_no_view_and_no_rows() -> None:
    assert health_view(None) is None
    assert health_rows({"healthz": None, "readyz": None}) == []
    assert health_summary({"healthz": None}) == "/healthz no answer"


@pytest.mark.parametrize(
    ("reply", "detail"),
    [
        # a worker from before the views: its web server knows no /healthz
        ((404, {"error": "Not Found"}), "Not Found"),
        ((500, "oops"), "HTTP 500 without checks"),
        # 200 but not "ok", and no checks: still not ok
        ((200, {"status": "starting"}), "HTTP 200 without checks"),
    ],
)
def test_an_answer_without_checks_is_one_failing_check(reply: tuple[int, Any], detail: str) -> None:
    view = health_view(reply)
    assert view is not None
    assert not view["ok"]
    assert health_rows({"healthz": view}) == [HealthRow("healthz", "answer", False, detail)]


def test_a_status_the_view_did_not_mean_is_not_ok() -> None:
    # "ok" in the body with a 503, or checks that are not booleans: trust neither
    view = health_view((503, {"status": "ok", "checks": [{"name": "x", "ok": "yes"}]}))
    assert view is not None
    assert not view["ok"]
    assert view["checks"] == [{"name": "x", "ok": False, "detail": ""}]


class _FakeWorker(BaseHTTPRequestHandler):
    """The worker's two views as they answer: ``status``, ``checks`` of name, ok and detail,
    HTTP 200 when ok and 503 when degraded."""

    answers: dict[str, tuple[int, bytes]] = {
        "/healthz": (200, json.dumps(HEALTHZ_OK).encode()),
        "/readyz": (503, json.dumps(READYZ_DEGRADED).encode()),
    }

    def do_GET(self) -> None:
        status, body = self.answers.get(self.path, (404, b"Not Found"))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def worker_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeWorker)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _env(tmp_path: Path, port: int) -> dict[str, str]:
    # a bootstrap nothing listens on: the group of a local stack left running stays out of it
    bootstrap = f"127.0.0.1:{free_port()}"
    return Settings(state_dir=tmp_path / "state", web_port=port, bootstrap=bootstrap).to_env()


def test_get_json_status_returns_error_statuses_with_their_answer(worker_port: int) -> None:
    url = f"http://127.0.0.1:{worker_port}"
    assert get_json_status(f"{url}/healthz") == (200, HEALTHZ_OK)
    assert get_json_status(f"{url}/readyz") == (503, READYZ_DEGRADED)
    assert get_json_status(f"{url}/nothing") == (404, {"error": "Not Found"})
    assert get_json_status(f"http://127.0.0.1:{free_port()}/healthz") is None


def test_status_shows_the_checks(tmp_path: Path, worker_port: int) -> None:
    result = CliRunner().invoke(app, ["status"], env=_env(tmp_path, worker_port))
    assert result.exit_code == 0, result.output
    out = result.output
    assert "/healthz ok (HTTP 200), /readyz degraded (HTTP 503)" in out
    assert "partitions [0, 1, 2]" in out  # not eaten as console markup
    lag_line = next(line for line in out.splitlines() if "events behind" in line)
    assert "FAIL" in lag_line
    assert "not running" not in out


def test_status_json_has_the_stack_and_both_whole_answers(tmp_path: Path, worker_port: int) -> None:
    result = CliRunner().invoke(app, ["status", "--json"], env=_env(tmp_path, worker_port))
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert {s["service"] for s in report["stack"]} >= {"redis"}
    assert not any(s["running"] for s in report["stack"])
    worker = report["worker"]
    assert worker["running"] is True
    assert worker["url"] == f"http://127.0.0.1:{worker_port}"
    assert worker["healthz"]["ok"] is True
    assert worker["readyz"]["http_status"] == 503
    assert worker["readyz"]["answer"] == READYZ_DEGRADED


def test_status_without_a_worker(tmp_path: Path) -> None:
    env = _env(tmp_path, free_port())
    result = CliRunner().invoke(app, ["status"], env=env)
    assert result.exit_code == 0, result.output
    assert "worker: not running" in result.output
    report = json.loads(CliRunner().invoke(app, ["status", "--json"], env=env).output)
    assert report["worker"]["running"] is False
    assert report["worker"]["healthz"] is None
