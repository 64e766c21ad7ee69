"""Two workers of one deployment, each on a free web port (``GOVERNOR_WEB_PORT=0``), join the
accounting group: the group lists both with their own port, they split the partitions of the
events topic, both answer /healthz, ``governor status`` shows them, and ``governor ask latency``
adds up the step latency each holds for its partitions (real broker)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from typer.testing import CliRunner

from streams.cli import app
from streams.control import ensure_signing_key
from streams.demo import demo_sessions
from streams.settings import Settings
from streams.worker import WorkerProcess, get_json_status
from streams.workers import WorkerGroup, describe_worker_group, group_workers
from tests.integration.test_drift import produce


def _split(settings: Settings, ports: set[int], timeout_s: float = 30) -> WorkerGroup:
    """The group once both workers hold a share and every partition is held once: joining
    the second worker rebalances the group, so its first description may show one member."""
    deadline = time.monotonic() + timeout_s
    group = describe_worker_group(settings)
    while time.monotonic() < deadline:
        group = describe_worker_group(settings)
        held = [p for m in group.members for p in m.partitions]
        if (
            group.state == "stable"
            and {m.port for m in group.members} == ports
            and all(m.partitions for m in group.members)
            and sorted(held) == list(range(settings.event_partitions))
        ):
            return group
        time.sleep(0.2)
    raise AssertionError(f"the group did not settle with both workers: {group}")


def test_two_workers_on_free_ports_share_the_group(topics: Settings, tmp_path: Path) -> None:
    # one deployment: one signing key for both (made before they start, so neither makes its
    # own), a state folder each as on two hosts
    keys = tmp_path / "keys"
    ensure_signing_key(keys)
    base = topics.replace(web_port=0, keys_dir=keys)
    processes = [
        WorkerProcess(base.replace(state_dir=tmp_path / name), tmp_path / f"{name}.log")
        for name in ("worker-a", "worker-b")
    ]
    try:
        # side by side: two starts one after the other would double the test's time
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(lambda w: w.start(), processes))
        ports = {w.settings.web_port for w in processes}
        assert len(ports) == 2
        assert 0 not in ports
        for w in processes:
            assert f"worker web on {w.url}" in w.log_file.read_text()

        group = _split(topics, ports)
        assert group.group_id == f"{topics.app_id}-accounting"
        assert group.topic_partitions == topics.event_partitions
        assert group.unassigned == ()
        members = group_workers(topics)
        assert {m.url for m in members} == {w.url for w in processes}
        for member in members:
            assert member.url is not None
            reply = get_json_status(member.url + "/healthz")
            assert reply is not None, f"{member.url} does not answer"
            assert reply[0] == 200, reply

        result = CliRunner().invoke(app, ["status", "--json"], env=topics.to_env())
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)["workers"]
        assert report["error"] is None
        assert {m["port"] for m in report["members"]} == ports
        assert all(m["healthz"]["ok"] for m in report["members"])

        # step latency: each worker has its partitions' steps, the CLI adds up the group's
        events = list(demo_sessions(30))
        steps = sum(e["kind"] in ("LLM_CALL", "TOOL_CALL") for e in events)
        produce(topics, events)

        def ingested() -> int:
            return sum(
                sum((w.get_json("/ingest") or {}).get("by_kind", {}).values()) for w in processes
            )

        deadline = time.monotonic() + 30
        while ingested() < len(events):
            assert time.monotonic() < deadline, f"{ingested()} of {len(events)} events read"
            time.sleep(0.3)
        alone = [
            sum(
                k["steps"]
                for k in w.get_json("/ask/latency?window=3650d")["step_ms_by_kind"].values()
            )
            for w in processes
        ]
        assert all(alone), alone  # the demo's sessions land on every partition
        assert sum(alone) == steps, (alone, steps)
        first = processes[0].settings
        result = CliRunner().invoke(
            app, ["ask", "latency", "--window", "3650d", "--json"], env=first.to_env()
        )
        assert result.exit_code == 0, result.output
        answer = json.loads(result.output)
        assert answer["workers"] == 2
        assert answer["partitions"] == list(range(topics.event_partitions))
        assert sum(k["steps"] for k in answer["step_ms_by_kind"].values()) == steps
    finally:  # side by side too
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(lambda w: w.stop(), processes))
