"""Scale-out operability without Kafka: a worker's identity in the group (client id), a group
member as ``governor status`` sees it, the workers' table and report, and web port 0."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from streams import workers
from streams.cli import (
    MemberHealth,
    WorkerRow,
    app,
    group_report,
    group_summary,
    health_view,
    partition_ranges,
    view_state,
    worker_rows,
)
from streams.processor.lag import accounting_group
from streams.settings import Settings
from streams.worker import WorkerProcess, read_port_file, resolve_web_port, write_port_file
from streams.workers import (
    WorkerGroup,
    WorkerMember,
    member_of,
    parse_client_id,
    web_url,
    worker_client_id,
)
from tests.conftest import free_port

# --- identity --------------------------------------------------------------------------------


def test_the_client_id_names_the_app_and_the_web_address() -> None:
    settings = Settings(app_id="gov-prod", web_host="10.0.0.7", web_port=6071)
    assert worker_client_id(settings) == "gov-prod-worker@10.0.0.7:6071"
    assert parse_client_id(worker_client_id(settings)) == ("10.0.0.7", 6071)
    # the group status lists is the one the accounting loop joins and the lag is measured of
    assert accounting_group(settings) == "gov-prod-accounting"


def test_an_ipv6_host_and_an_app_id_with_an_at_sign_round_trip() -> None:
    # the address is after the last "@", the port after the last ":"
    settings = Settings(app_id="team@gov", web_host="::1", web_port=6066)
    assert parse_client_id(worker_client_id(settings)) == ("::1", 6066)
    assert web_url("::1", 6066) == "http://[::1]:6066"
    assert web_url("127.0.0.1", 6066) == "http://127.0.0.1:6066"


@pytest.mark.parametrize(
    "client_id",
    ["rdkafka", "governor-worker", "governor-worker@host", "x@host:", "x@host:http", "x@:"],
)
def test_a_client_id_without_a_web_address_is_no_worker(client_id: str) -> None:
    assert parse_client_id(client_id) is None


# --- a group member --------------------------------------------------------------------------


def test_a_member_holds_the_events_partitions_of_its_assignment_in_order() -> None:
    member = member_of(
        "m-1",
        "governor-worker@127.0.0.1:7001",
        "/127.0.0.1",
        [("gov.events", 4), ("gov.events", 1), ("gov.other", 0)],
        "gov.events",
    )
    assert member == WorkerMember(
        "m-1", "governor-worker@127.0.0.1:7001", "127.0.0.1", "127.0.0.1", 7001, (1, 4)
    )
    assert member.url == "http://127.0.0.1:7001"


@pytest.mark.parametrize("bound", ["0.0.0.0", "::"])
def test_a_worker_bound_to_every_interface_is_reached_where_the_broker_sees_it(
    bound: str,
) -> None:
    member = member_of("m", f"governor-worker@{bound}:7001", "/10.1.2.3", [], "gov.events")
    assert member.url == "http://10.1.2.3:7001"


def test_a_member_that_is_no_worker_has_no_url() -> None:
    member = member_of("m", "rdkafka", "/10.1.2.3", [("gov.events", 0)], "gov.events")
    assert (member.host, member.port, member.url) == (None, None, None)
    assert member.partitions == (0,)


def _member(port: int | None, partitions: tuple[int, ...], host: str = "127.0.0.1") -> WorkerMember:
    client_id = f"governor-worker@{host}:{port}" if port is not None else "rdkafka"
    return WorkerMember(f"member-{port}", client_id, host, host if port else None, port, partitions)


def _group(
    *members: WorkerMember, partitions: int | None = 6, state: str = "stable"
) -> WorkerGroup:
    return WorkerGroup("governor-accounting", state, "gov.events", partitions, members)


def test_unassigned_partitions() -> None:
    assert _group(_member(1, (0, 1, 2)), _member(2, (3, 5))).unassigned == (4,)
    assert _group().unassigned == tuple(range(6))
    assert _group(partitions=None).unassigned == ()


# --- the renderer ----------------------------------------------------------------------------

HEALTHZ_OK = {"status": "ok", "checks": [{"name": "loop:accounting", "ok": True, "detail": "x"}]}
READYZ_DEGRADED = {
    "status": "degraded",
    "checks": [
        {"name": "partitions", "ok": False, "detail": "0 assigned and restored"},
        {"name": "lag", "ok": True, "detail": "0 events behind"},
        {"name": "redis", "ok": False, "detail": "refused"},
    ],
}


def test_view_states() -> None:
    assert view_state(None) == "no answer"
    assert view_state(health_view((200, HEALTHZ_OK))) == "ok"
    assert view_state(health_view((503, READYZ_DEGRADED))) == "degraded: partitions, redis"
    # an error page becomes one failing check named "answer"
    assert view_state(health_view((404, {"error": "Not Found"}))) == "degraded: answer"


@pytest.mark.parametrize(
    ("partitions", "shown"),
    [((), "-"), ((3,), "3"), ((0, 1, 2), "0-2"), ((5, 0, 1, 2, 7, 8), "0-2, 5, 7-8")],
)
def test_partition_ranges(partitions: tuple[int, ...], shown: str) -> None:
    assert partition_ranges(partitions) == shown


def test_worker_rows() -> None:
    ok, degraded = health_view((200, HEALTHZ_OK)), health_view((503, READYZ_DEGRADED))
    rows = worker_rows(
        [
            MemberHealth(_member(7001, (0, 1, 2)), ok, ok),
            MemberHealth(_member(7002, ()), ok, degraded),
            MemberHealth(_member(7003, (3,)), None, None),
            MemberHealth(_member(None, (4, 5), host="10.0.0.9"), None, None),
        ]
    )
    assert rows == [
        WorkerRow("127.0.0.1:7001", "0-2", "ok", "ok", True),
        WorkerRow("127.0.0.1:7002", "-", "ok", "degraded: partitions, redis", False),
        WorkerRow("127.0.0.1:7003", "3", "no answer", "no answer", False),
        WorkerRow("rdkafka (no web address, from 10.0.0.9)", "4-5", "-", "-", False),
    ]


def test_group_summaries() -> None:
    assert group_summary(_group()) == "no workers in the group governor-accounting"
    assert (
        group_summary(_group(_member(1, (0, 1, 2)), _member(2, (3, 4, 5))))
        == "group governor-accounting: 2 workers, stable; gov.events has 6 partitions"
    )
    # mid-rebalance: partitions nobody holds yet
    assert group_summary(_group(_member(1, (0, 1)), state="preparing rebalancing")) == (
        "group governor-accounting: 1 worker, preparing rebalancing; "
        "gov.events has 6 partitions, unassigned: 2-5"
    )
    # more workers than partitions: the rest wait for one to leave
    assert group_summary(_group(_member(1, (0, 1)), _member(2, ()), partitions=2)) == (
        "group governor-accounting: 2 workers, stable; gov.events has 2 partitions, "
        "1 worker without partitions"
    )
    assert group_summary(_group(_member(1, ()), partitions=None)).endswith(
        "gov.events does not exist"
    )


def test_group_report_is_json_with_both_whole_answers() -> None:
    healthz = health_view((200, HEALTHZ_OK))
    member = _member(7001, (0, 1))
    report = group_report(
        "governor-accounting", _group(member), [MemberHealth(member, healthz, None)]
    )
    assert json.loads(json.dumps(report)) == report
    assert report["state"] == "stable"
    assert report["unassigned"] == [2, 3, 4, 5]
    (shown,) = report["members"]
    assert shown["url"] == "http://127.0.0.1:7001"
    assert shown["partitions"] == [0, 1]
    assert shown["healthz"]["answer"] == HEALTHZ_OK
    assert shown["readyz"] is None
    failed = group_report("governor-accounting", None, [], error="nothing listens")
    assert failed["error"] == "nothing listens"
    assert failed["members"] == []


# --- web port 0 ------------------------------------------------------------------------------


def test_port_zero_becomes_a_free_port_and_a_given_port_stays() -> None:
    given = Settings(web_port=6066)
    assert resolve_web_port(given) is given
    chosen = resolve_web_port(Settings(web_port=0)).web_port
    assert chosen > 0
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", chosen))  # free: the probe socket is closed


def test_port_zero_on_a_host_that_is_not_ours_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match=r"GOVERNOR_WEB_HOST=192\.0\.2\.1"):
        resolve_web_port(Settings(web_host="192.0.2.1", web_port=0))


def test_the_port_file(tmp_path: Path) -> None:
    path = tmp_path / "worker.log.port"
    assert read_port_file(path) is None
    write_port_file(path, 41234)
    assert read_port_file(path) == 41234
    assert not list(tmp_path.glob("*.tmp"))


def test_a_worker_process_has_no_url_before_it_chose_its_port(tmp_path: Path) -> None:
    process = WorkerProcess(Settings(web_port=0), tmp_path / "worker.log")
    with pytest.raises(RuntimeError, match="has not chosen its web port"):
        _ = process.url
    assert WorkerProcess(Settings(web_port=7001), tmp_path / "w.log").url.endswith(":7001")


# --- governor status, the group stubbed, real HTTP servers as the workers ---------------------


class _Worker(BaseHTTPRequestHandler):
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
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Worker)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _env(tmp_path: Path) -> dict[str, str]:
    # nothing listens on the bootstrap or the web port: only the stubbed group answers
    return Settings(
        state_dir=tmp_path / "state",
        bootstrap=f"127.0.0.1:{free_port()}",
        web_port=free_port(),
    ).to_env()


def test_status_lists_every_worker_of_the_group(
    tmp_path: Path, worker_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    silent = free_port()
    group = _group(_member(worker_port, (0, 1, 2)), _member(silent, (3, 4, 5)))
    monkeypatch.setattr(workers, "describe_worker_group", lambda s, timeout_s=5.0: group)
    env = _env(tmp_path)

    result = CliRunner().invoke(app, ["status"], env=env)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "group governor-accounting: 2 workers, stable; gov.events has 6 partitions" in out
    answering = next(line for line in out.splitlines() if f"127.0.0.1:{worker_port}" in line)
    assert "0-2" in answering
    assert "degraded: partitions, redis" in answering
    silent_line = next(line for line in out.splitlines() if f"127.0.0.1:{silent}" in line)
    assert "no answer" in silent_line
    # this shell's own port has no worker, but the group has: not "not running"
    assert "worker: not running" not in out
    assert "(GOVERNOR_WEB_PORT): nothing answers" in out

    report = json.loads(CliRunner().invoke(app, ["status", "--json"], env=env).output)
    members = report["workers"]["members"]
    assert [m["port"] for m in members] == [worker_port, silent]
    assert members[0]["healthz"]["ok"] is True
    assert members[0]["readyz"]["http_status"] == 503
    assert members[1]["healthz"] is None
    assert report["worker"]["running"] is False


def test_status_with_no_worker_in_the_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers, "describe_worker_group", lambda s, timeout_s=5.0: _group())
    result = CliRunner().invoke(app, ["status"], env=_env(tmp_path))
    assert result.exit_code == 0, result.output
    assert "no workers in the group governor-accounting" in result.output
    assert "worker: not running" in result.output


def test_status_when_kafka_does_not_answer(tmp_path: Path) -> None:
    env = _env(tmp_path)
    result = CliRunner().invoke(app, ["status"], env=env)
    assert result.exit_code == 0, result.output
    assert "workers of group governor-accounting: unknown (nothing listens on" in result.output
    report = json.loads(CliRunner().invoke(app, ["status", "--json"], env=env).output)
    assert report["workers"]["error"].startswith("nothing listens on the Kafka bootstrap")
    assert report["workers"]["members"] == []
