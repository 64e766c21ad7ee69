"""A worker killed mid-stream (SIGKILL, no goodbye) and restarted ends with the same totals:
state, outputs and offsets move together in one transaction, and seq makes replays no-ops."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

from confluent_kafka import Producer

from streams.codec import Codecs
from streams.pipeline.pricing import load_prices
from streams.settings import Settings
from streams.simulator.offline import simulate_offline
from streams.simulator.params import FleetParams
from streams.simulator.plan import plan_fleet
from streams.worker import WorkerProcess

REPO = Path(__file__).resolve().parents[2]
COMPARED = (
    "cost_micros",
    "input_tokens",
    "output_tokens",
    "steps_by_kind",
    "tool_calls",
    "errors_by_type",
    "retries",
    "unpriced_calls",
    "max_context_tokens",
)


def test_a_killed_worker_restarts_to_the_same_totals(topics: Settings, tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    settings = topics.replace(
        policies_dir=policies,
        keys_dir=tmp_path / "keys",
        finished_retention_s=30 * 86400,
        checkpoint_interval_s=0.3,
    )
    prices = load_prices(policies / "prices.yaml")
    # ~7000 events: the first worker is killed with half of its backlog of ~3400 processed
    events, truths = simulate_offline(plan_fleet(FleetParams(sessions=600, seed=5)), prices)
    events.sort(key=lambda e: (e["start_time_us"], e["seq"]))
    codecs = Codecs.load(settings.schemas_dir)
    producer = Producer({"bootstrap.servers": settings.bootstrap, "linger.ms": 20})

    def send(batch: list[dict[str, object]]) -> None:
        for event in batch:
            producer.produce(
                settings.topic("events"),
                codecs.step_event.encode(event),
                str(event["session_id"]).encode(),
            )
        producer.flush(30)

    half = len(events) // 2
    send(events[:half])
    first = WorkerProcess(settings, tmp_path / "worker-1.log").start()
    deadline = time.monotonic() + 60
    while (first.get_json("/ingest") or {}).get("processed", 0) < half // 2:
        assert time.monotonic() < deadline, first.log_tail()
        time.sleep(0.05)
    assert first.proc is not None
    first.proc.send_signal(signal.SIGKILL)  # mid-stream, between checkpoints
    first.proc.wait()
    send(events[half:])

    with WorkerProcess(settings, tmp_path / "worker-2.log") as second:
        deadline = time.monotonic() + 90
        sessions: dict[str, dict[str, object]] = {}
        while time.monotonic() < deadline:
            view = second.get_json("/state/sessions") or {"sessions": []}
            sessions = {s["session_id"]: s for s in view["sessions"]}
            if len(sessions) == len(truths) and all(
                sessions[t["session_id"]]["last_seq"] == t["events"] for t in truths
            ):
                break
            time.sleep(0.2)
        assert "restored" in (tmp_path / "worker-2.log").read_text()
    for truth in truths:
        got = sessions[truth["session_id"]]
        for name in COMPARED:
            assert got[name] == truth[name], (truth["session_id"], name)
