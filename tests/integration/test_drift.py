"""Drift on a real worker: a prompt change that raises the tool-call rate by 30 % is reported in
the prompt layer within a few hundred sessions; the same fleets without the change (three
seeds) raise no drift alert at all. All fleets run side by side through one worker, each under
its own tenant names, so they share nothing but the broker."""

from __future__ import annotations

import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import redis
from confluent_kafka import Producer

from streams.codec import Codecs
from streams.pipeline.pricing import load_prices
from streams.query.readmodel import SessionReadModel
from streams.settings import Settings
from streams.simulator.offline import simulate_offline
from streams.simulator.params import FleetParams
from streams.simulator.plan import plan_fleet
from streams.topics import read_partitions
from streams.worker import WorkerProcess
from tests.kafka_helpers import ask

REPO = Path(__file__).resolve().parents[2]
END_US = 1_795_000_000_000_000
SESSIONS = 3000


def fleet_events(params: FleetParams, tag: str) -> list[dict[str, Any]]:
    """The fleet's events, its tenants and sessions renamed ``<tag>-...`` to keep it apart."""
    prices = load_prices(REPO / "policies" / "prices.yaml")
    events, _truth = simulate_offline(plan_fleet(params), prices, concurrency=16)
    for event in events:
        event["tenant_id"] = f"{tag}-{event['tenant_id']}"
        event["session_id"] = f"{tag}-{event['session_id']}"
        event["event_id"] = f"{tag}-{event['event_id']}"
    return events


def produce(settings: Settings, events: list[dict[str, Any]]) -> None:
    codecs = Codecs.load(settings.schemas_dir)
    producer = Producer({"bootstrap.servers": settings.bootstrap, "linger.ms": 20})
    for event in sorted(events, key=lambda e: (e["start_time_us"], e["seq"])):
        producer.produce(
            settings.topic("events"), codecs.step_event.encode(event), event["session_id"].encode()
        )
        producer.poll(0)
    assert producer.flush(30) == 0


def drift_alerts(settings: Settings) -> list[dict[str, Any]]:
    codecs = Codecs.load(settings.schemas_dir)
    topic = settings.topic("alerts")
    records = read_partitions(settings, topic, [0, 1, 2])
    alerts = [
        codecs.alert.decode(value)
        for partition in records.values()
        for _, _, value in partition
        if value is not None
    ]
    return [a for a in alerts if a["kind"] == "DRIFT"]


def test_a_prompt_change_is_drift_in_the_prompt_layer_and_no_change_is_quiet(
    topics: Settings, tmp_path: Path
) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    settings = topics.replace(policies_dir=policies, keys_dir=tmp_path / "keys")
    base = FleetParams(sessions=SESSIONS, seed=11, end_us=END_US, concurrency=16)
    # the change of the issue: 30 % more tool calls per turn, nothing else
    changed = base.replace(changed_tool_error_rate=base.tool_error_rate)
    fleets = [(changed, "chg")]
    quiet_tags = []
    # two quiet fleets, one of them the changed fleet's own seed (the same sessions but for the
    # change): neither may alert
    for seed in (11, 12):
        quiet = base.replace(
            seed=seed,
            prompt_after=base.prompt_before,
            changed_tool_call_factor=1.0,
            changed_tool_error_rate=base.tool_error_rate,
        )
        quiet_tags.append(f"q{seed}")
        fleets.append((quiet, f"q{seed}"))

    # the fleets are planned two at a time (each is its own seeded plan: the same events as one
    # after the other) while the worker starts; it reads them once they are produced
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        planned = [pool.submit(fleet_events, params, tag) for params, tag in fleets]
        with WorkerProcess(settings, tmp_path / "worker.log") as worker:
            events = [event for future in planned for event in future.result()]
            sessions = len({e["session_id"] for e in events})
            ending = sorted({e["session_id"] for e in events if e["kind"] == "SESSION_END"})
            ended = len(ending)
            produce(settings, events)
            deadline = time.monotonic() + 180
            # light polls first (`ask outcomes` over 12,000 sessions is no light poll, and it
            # shares Redis with the read-model it waits for): the worker's count of events ...
            while sum((worker.get_json("/ingest") or {}).get("by_kind", {}).values()) < len(events):
                assert time.monotonic() < deadline, worker.log_tail()
                time.sleep(0.5)
            # ... and the read-model's summary of each ended session (written in one script
            # with the session's counts)
            model = SessionReadModel(
                redis.Redis.from_url(settings.redis_url), settings.redis_key_prefix
            )
            keys = [model.summary_key(sid) for sid in ending]
            while (held := model.redis.exists(*keys)) < ended:
                assert time.monotonic() < deadline, f"read-model holds {held}/{ended} sessions"
                time.sleep(0.5)
            while (seen := ask(settings, "outcomes", "--since", "30d")["sessions"]) < ended:
                assert time.monotonic() < deadline, f"read-model stuck at {seen}/{ended} sessions"
                time.sleep(2)
            time.sleep(2)  # the alerts of the last batch
            alerts = drift_alerts(settings)

    assert sessions == 3 * SESSIONS
    scopes = {(a["tenant_id"], a["agent_id"]) for a in alerts}
    assert scopes == {("chg-acme", "support-bot")}, [a["summary"] for a in alerts]
    (alert,) = alerts  # published once, however many looks followed
    assert alert["state"] == "FIRING"
    assert alert["layer"] == "prompt"
    assert "prompt p7 -> p8" in alert["summary"]
    assert "tool calls per LLM call" in alert["labels"]["metrics"]
    assert alert["values"]["sessions_after"] <= 400

    report = ask(settings, "drift", "--agent", "support-bot", "--tenant", "chg-acme")
    (scope,) = report["scopes"]
    assert scope["kind"] == "version change"
    assert scope["layers"] == ["prompt"]
    rate = next(r for r in scope["rows"] if r["metric"] == "tool calls per LLM call")
    assert rate["shifted"]
    assert 1.15 < rate["after"] / rate["before"] < 1.45
    assert rate["p_adjusted"] < 0.01
    assert all(r["p_adjusted"] >= r["p_value"] for r in scope["rows"])

    for tag in quiet_tags:
        (quiet_scope,) = ask(
            settings, "drift", "--agent", "support-bot", "--tenant", f"{tag}-acme"
        )["scopes"]
        assert quiet_scope["kind"] == "no version change"
        assert quiet_scope["shifted"] == []
