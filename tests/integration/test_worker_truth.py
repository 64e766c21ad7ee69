"""After a simulated fleet, the worker's tables equal the simulator's ground truth, and feeding
the same events again changes nothing (real broker, Redis, worker process and clients)."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from streams.settings import Settings
from streams.simulator.params import FleetParams
from streams.simulator.run import run_simulation
from streams.simulator.truth import load_truth
from streams.worker import WorkerProcess
from tests.kafka_helpers import consume, produce

REPO = Path(__file__).resolve().parents[2]
COMPARED = (
    "cost_micros",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "steps_by_kind",
    "tool_calls",
    "errors_by_type",
    "retries",
    "unpriced_calls",
    "max_context_tokens",
    "evaluations",
    "category",
    "prompt_version",
    "agent_version",
)


def _sessions(worker: WorkerProcess) -> dict[str, dict[str, Any]]:
    view = worker.get_json("/state/sessions") or {"sessions": []}
    return {s["session_id"]: s for s in view["sessions"]}


def _kills(worker: WorkerProcess, policy: str) -> float:
    with urllib.request.urlopen(worker.url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "governor_decisions"
        for sample in family.samples
        if sample.labels.get("policy") == policy and sample.labels.get("action") == "KILL"
    )


def _settled(worker: WorkerProcess, events: int, timeout_s: float = 90) -> dict[str, Any]:
    """The worker's sessions once it has applied ``events`` events and gone quiet."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        view = worker.get_json("/ingest") or {"by_kind": {}}
        if sum(view["by_kind"].values()) >= events:
            # quiet: two views a tick apart agree (the once-a-second tick closes silent sessions)
            before = _sessions(worker)
            time.sleep(1.5)
            after = _sessions(worker)
            if after == before:
                return after
        time.sleep(0.2)
    raise AssertionError(f"worker did not see {events} events:\n{worker.log_tail()}")


def test_worker_tables_equal_the_ground_truth_and_replays_change_nothing(
    topics: Settings, tmp_path: Path
) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    settings = topics.replace(
        policies_dir=policies,
        keys_dir=tmp_path / "keys",
        finished_retention_s=30 * 86400,  # keep every finished session queryable
        checkpoint_interval_s=0.2,
    )
    truth_path = tmp_path / "truth.jsonl"
    with WorkerProcess(settings, tmp_path / "worker.log") as worker:
        report, _summary = run_simulation(
            settings,
            Console(quiet=True),
            FleetParams(sessions=250, seed=21, concurrency=16),
            rate=0,
            truth_path=truth_path,
        )
        truth = {s["session_id"]: s for s in load_truth(truth_path).sessions}
        delivered = sum(t["events"] for t in truth.values())
        assert report.delivered == delivered
        sessions = _settled(worker, delivered)
        assert set(sessions) == set(truth)
        for session_id, expected in truth.items():
            got = sessions[session_id]
            for name in COMPARED:
                assert got[name] == expected[name], (session_id, name)
            assert got["last_seq"] == expected["events"]
            if expected["outcome"] != "TIMEOUT":
                assert got["status"] == expected["outcome"], session_id
                assert got["end_time_us"] - got["start_time_us"] == expected["duration_us"]
            else:  # abandoned: closed once event time passes the idle timeout, or still open
                assert got["status"] in ("ACTIVE", "TIMEOUT")
            slowest = expected["slowest_step"]
            if slowest is not None:
                assert got["slowest_step"]["seq"] == slowest["seq"]
                assert got["slowest_step"]["duration_us"] == slowest["duration_us"]
        # unthrottled, a session ends before its KILL lands; every breach is still decided
        over_budget = sum(s["cost_micros"] > 2_000_000 for s in truth.values())
        assert over_budget > 0
        assert _kills(worker, "session-budget") == over_budget

        # the same events once more, as a redelivery would bring them
        events_topic = settings.topic("events")
        again = consume(settings.bootstrap, events_topic, delivered)
        produce(
            settings.bootstrap, events_topic, [(m.key() or b"", m.value() or b"") for m in again]
        )
        after = _settled(worker, 2 * delivered)
        assert json.dumps(after, sort_keys=True) == json.dumps(sessions, sort_keys=True)
