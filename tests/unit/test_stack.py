"""Pure parts of the local stack: broker configuration and pid-file bookkeeping."""

from __future__ import annotations

import os
from pathlib import Path

from streams import stack
from streams.settings import Settings


def _props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def test_single_node_runs_broker_and_controller_on_loopback(tmp_path: Path) -> None:
    s = Settings.from_env({}, kafka_port=40000)
    props = _props(stack.kafka_properties(s, 1, 1, tmp_path))
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:40000,CONTROLLER://127.0.0.1:40001"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:40001"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["log.dirs"] == str(tmp_path)


def test_three_nodes_share_one_quorum_with_distinct_ports(tmp_path: Path) -> None:
    s = Settings.from_env({}, kafka_port=40000)
    nodes = [_props(stack.kafka_properties(s, n, 3, tmp_path / str(n))) for n in (1, 2, 3)]
    voters = {p["controller.quorum.voters"] for p in nodes}
    assert voters == {"1@127.0.0.1:40001,2@127.0.0.1:40011,3@127.0.0.1:40021"}
    assert len({p["listeners"] for p in nodes}) == 3
    assert {p["node.id"] for p in nodes} == {"1", "2", "3"}
    assert all(p["min.insync.replicas"] == "2" for p in nodes)
    assert stack.bootstrap_servers(s, 3) == "127.0.0.1:40000,127.0.0.1:40010,127.0.0.1:40020"


def test_missing_and_stale_pid_files_mean_not_running(tmp_path: Path) -> None:
    s = Settings.from_env({}, state_dir=tmp_path)
    service = stack.redis_service(s)
    assert stack.live_pid(service) is None
    service.pid_file.parent.mkdir(parents=True)
    service.pid_file.write_text("999999999 5\n")  # no such process
    assert stack.live_pid(service) is None
    service.pid_file.write_text(f"{os.getpid()} 1\n")  # alive, but a reused pid
    assert stack.live_pid(service) is None
    service.pid_file.write_text(f"{os.getpid()}\n")  # a pid file of another tool
    assert stack.live_pid(service) is None
    service.pid_file.write_text("not a pid\n")
    assert stack.live_pid(service) is None


def test_status_of_a_stack_never_started(tmp_path: Path) -> None:
    s = Settings.from_env({}, state_dir=tmp_path)
    assert [st.running for st in stack.status(s)] == [False, False]
    assert stack.down(s) == []


def test_log_tail_shows_the_end_of_a_log(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {n}\n" for n in range(100)))
    assert stack.log_tail(log, 3) == "line 97\nline 98\nline 99"
    assert "no log" in stack.log_tail(tmp_path / "missing.log")
