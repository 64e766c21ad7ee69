"""An injected error burst fires the fast burn-rate alert on gov.alerts and resolves after it
(real broker, worker; event time)."""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from streams.codec import Codecs
from streams.settings import Settings
from streams.topics import read_partitions
from streams.worker import WorkerProcess

REPO = Path(__file__).resolve().parents[2]
MINUTE_US = 60_000_000


def sessions(start_us: int, minutes: int, failing: range) -> list[dict[str, Any]]:
    """20 two-event sessions a minute; in the ``failing`` minutes every one ends in ERROR."""
    events = []
    for minute in range(minutes):
        for n in range(20):
            sid = str(uuid.uuid4())
            t = start_us + minute * MINUTE_US + n * 2_000_000
            base = {"session_id": sid, "tenant_id": "acme", "agent_id": "bot"}
            events.append(
                {
                    **base,
                    "event_id": f"{sid}-1",
                    "seq": 1,
                    "kind": "SESSION_START",
                    "start_time_us": t,
                    "status": "OK",
                }
            )
            bad = minute in failing
            events.append(
                {
                    **base,
                    "event_id": f"{sid}-2",
                    "seq": 2,
                    "kind": "SESSION_END",
                    "start_time_us": t + 1_000_000,
                    "status": "ERROR" if bad else "OK",
                    "error_type": "ProviderOverloaded" if bad else None,
                }
            )
    return events


def test_an_error_burst_fires_the_fast_burn_alert_and_it_resolves(
    topics: Settings, tmp_path: Path
) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    settings = topics.replace(policies_dir=policies, keys_dir=tmp_path / "keys", event_partitions=3)
    start = (time.time_ns() // 1000) - 4 * 3600 * 1_000_000
    start -= start % (60 * MINUTE_US)
    codecs = Codecs.load(settings.schemas_dir)
    producer = Producer({"bootstrap.servers": settings.bootstrap, "linger.ms": 10})
    for event in sessions(start, 180, failing=range(90, 105)):
        producer.produce(
            settings.topic("events"), codecs.step_event.encode(event), event["session_id"].encode()
        )
    producer.flush(30)
    fast: list[dict[str, Any]] = []
    with WorkerProcess(settings, tmp_path / "worker.log") as worker:
        deadline = time.monotonic() + 60
        while len(fast) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
            rows = read_partitions(settings, settings.topic("alerts"), [0, 1, 2])
            alerts = [codecs.alert.decode(v) for p in sorted(rows) for _o, _k, v in rows[p] if v]
            fast = [a for a in alerts if a["alert_id"] == "slo:availability:fast"]
        # the alerts are committed before the worker has read the fleet's last minutes: wait
        # for every session's verdict to be counted
        slo: dict[str, Any] = {}
        while time.monotonic() < deadline:
            slo = {row["name"]: row for row in worker.get_json("/ask/slo")["slos"]}
            if slo["availability"]["events"] >= 180 * 20:
                break
            time.sleep(0.5)
    assert [a["state"] for a in fast] == ["FIRING", "RESOLVED"]
    fired, resolved = (a["event_time_us"] for a in fast)
    burst_start, burst_end = start + 90 * MINUTE_US, start + 105 * MINUTE_US
    assert burst_start < fired <= burst_end, "fires during the burst"
    assert burst_end < resolved <= burst_end + 6 * MINUTE_US, "resolves within a short window"
    assert fast[0]["severity"] == "PAGE"
    # 15 of 180 minutes failed: the availability SLI over the window shows it
    assert slo["availability"]["events"] == 180 * 20
    assert abs(slo["availability"]["sli"] - 165 / 180) < 1e-9
    assert slo["availability"]["budget_remaining"] < 0
    assert fast[0]["runbook_url"].endswith("GovernorAvailabilityBudgetBurn.md")
