"""`governor incident timeline` on a simulated fleet (real broker, Redis and worker): a killed,
a normal and a timed-out session each add up to their ground truth, the kill shows when the
client acted on it, no PII value is ever printed, and the session rebuilt from a copy of its
events (a replay topic) is the same timeline step for step."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from typer.testing import CliRunner

from streams.cli import app as cli
from streams.query.readmodel import SessionReadModel
from streams.query.session_records import session_timeline
from streams.query.timeline import Timeline
from streams.replay import ReplaySpec, replay
from streams.settings import Settings
from streams.simulator.params import FleetParams
from streams.simulator.run import run_simulation
from streams.simulator.truth import load_truth
from streams.worker import WorkerProcess
from tests.kafka_helpers import close_silent_sessions

REPO = Path(__file__).resolve().parents[2]
#: what the pattern scanner finds (PERSON needs the spaCy model, which the worker may lack)
STRUCTURED = {"EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "US_SSN"}
#: the truth names a value in an ASSISTANT segment by its role; the scanner calls it OUTPUT
SCANNER_HOP = {"ASSISTANT": "OUTPUT"}


def cli_output(settings: Settings, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["incident", "timeline", *args], env=settings.to_env())
    return result.exit_code, result.output


def pii_of(truth: dict[str, Any]) -> set[tuple[str, str, int]]:
    return {
        (p["entity_type"], SCANNER_HOP.get(p["hop"], p["hop"]), p["seq"])
        for p in truth["pii"]
        if p["entity_type"] in STRUCTURED
    }


def found_pii(timeline: Timeline) -> set[tuple[str, str, int]]:
    return {(r.entity_type, r.hop, r.seq) for r in timeline.pii() if r.entity_type in STRUCTURED}


def assert_equals_truth(timeline: Timeline, truth: dict[str, Any]) -> None:
    header, totals = timeline.header, timeline.totals
    sid = truth["session_id"]
    assert header.outcome == truth["outcome"], sid
    assert (header.start_us, header.end_us, header.duration_us) == (
        truth["start_time_us"],
        truth["end_time_us"],
        truth["duration_us"],
    ), sid
    assert totals.steps_by_kind == truth["steps_by_kind"], sid
    assert (totals.cost_micros, totals.unpriced_calls) == (
        truth["cost_micros"],
        truth["unpriced_calls"],
    ), sid
    assert (totals.input_tokens, totals.output_tokens) == (
        truth["input_tokens"],
        truth["output_tokens"],
    ), sid
    assert totals.retries == truth["retries"], sid
    slowest = truth["slowest_step"]
    assert totals.slowest is not None, sid
    assert (totals.slowest.seq, totals.slowest.duration_us) == (
        slowest["seq"],
        slowest["duration_us"],
    ), sid
    # every value the truth planted in a text the scanner reads was found at its hop and step
    assert pii_of(truth) <= found_pii(timeline), sid


def wait_for(predicate: Any, what: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_timelines_add_up_to_the_truth_and_survive_a_replay(
    topics: Settings, tmp_path: Path
) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    settings = topics.replace(policies_dir=policies, keys_dir=tmp_path / "keys")
    truth_path = tmp_path / "truth.jsonl"
    produced_from_us = time.time_ns() // 1000
    with WorkerProcess(settings, tmp_path / "worker.log"):
        run_simulation(
            settings,
            Console(quiet=True),
            # more runaway sessions than by default, and paced: unthrottled, a session ends
            # before its KILL reaches the client (see test_worker_truth)
            FleetParams(sessions=150, seed=31, concurrency=16, budget_breaker_fraction=0.03),
            rate=200,
            truth_path=truth_path,
        )
        truth = [dict(s) for s in load_truth(truth_path).sessions]
        last = max(s["end_time_us"] or s["last_event_time_us"] for s in truth)
        close_silent_sessions(settings, last + 3_600_000_000)

        assert any(s["outcome"] == "KILLED" for s in truth), "no session was killed"

        def with_calls(outcome: str) -> list[dict[str, Any]]:
            found = [s for s in truth if s["outcome"] == outcome and s["slowest_step"]]
            return sorted(found, key=lambda s: (-len(pii_of(s)), -s["events"], s["session_id"]))

        killed, ok, timed_out = (
            with_calls("KILLED")[0],
            with_calls("OK")[0],
            with_calls("TIMEOUT")[0],
        )
        chosen = [killed, ok, timed_out]
        rm = SessionReadModel(redis.Redis.from_url(settings.redis_url), settings.redis_key_prefix)
        wait_for(
            lambda: all(rm.redis.exists(rm.summary_key(s["session_id"])) for s in chosen),
            "the read-model to hold the chosen sessions",
        )
        wait_for(
            lambda: pii_of(killed) <= found_pii(session_timeline(settings, killed["session_id"])),
            "the killed session's PII findings",
        )

        started = time.monotonic()
        timelines = {s["session_id"]: session_timeline(settings, s["session_id"]) for s in chosen}
        elapsed = (time.monotonic() - started) / len(chosen)
        for session in chosen:
            assert_equals_truth(timelines[session["session_id"]], session)

    # the kill: a decision in force, and the client acting on it no earlier than its issue
    live = timelines[killed["session_id"]]
    kills = [d for d in live.decisions() if d.action == "KILL" and d.acted]
    assert kills, [(d.action, d.policy_id, d.acted) for d in live.decisions()]
    for kill in kills:
        assert kill.acted_at_us is not None
        assert kill.acted_at_us >= kill.time_us
        assert kill.acted_seq == live.steps()[-1].seq  # reported on the SESSION_END
    assert [a.action for a in live.acted() if a.action == "KILL"] == ["KILL"]

    # printed and as JSON: the kill is there, no PII value is
    values = {p["value"] for s in chosen for p in s["pii"]}
    for session in chosen:
        for extra in ((), ("--json",)):
            code, output = cli_output(settings, "--session", session["session_id"], *extra)
            assert code == 0, output
            assert not [v for v in values if v in output], session["session_id"]
    code, output = cli_output(settings, "--session", killed["session_id"])
    assert "decision KILL" in output
    assert "acted KILL" in output
    assert "bottleneck:" in output
    code, as_json = cli_output(settings, "--session", killed["session_id"], "--json")
    assert json.loads(as_json)["totals"]["cost_micros"] == killed["cost_micros"]
    code, output = cli_output(settings, "--session", "no-such-session")
    assert code == 1
    assert "no events of session 'no-such-session'" in output

    # without the read-model's window the whole topic is read, to the same timeline
    rm.redis.delete(rm.summary_key(ok["session_id"]))
    whole = session_timeline(settings, ok["session_id"])
    earlier = timelines[ok["session_id"]]
    # alerts go on meanwhile (the fleet's, not the session's): the session's own rows match
    assert (whole.header, whole.steps(), whole.decisions(), whole.pii(), whole.totals) == (
        earlier.header, earlier.steps(), earlier.decisions(), earlier.pii(), earlier.totals
    )  # fmt: skip

    # rebuilt from a copy of the session's events: the same timeline, step for step
    # (governor replay --session: Kafka record time, when the simulation produced it)
    copy = replay(
        settings, ReplaySpec(produced_from_us, time.time_ns() // 1000, killed["session_id"])
    )
    assert copy.copied == killed["events"]
    replay_topic = copy.to_topic
    replayed = session_timeline(settings, killed["session_id"], events_topic=replay_topic)
    assert replayed.steps() == live.steps()
    # alerts went on after the timelines above (the worker resolved some): compare at one moment
    assert replayed == session_timeline(settings, killed["session_id"])
    code, output = cli_output(
        settings, "--session", killed["session_id"], "--events-topic", replay_topic
    )
    assert code == 0, output
    code, output = cli_output(
        settings, "--session", ok["session_id"], "--events-topic", replay_topic
    )
    assert code == 1
    assert replay_topic in output
    print(f"timeline of one session from the read-model's window: {elapsed:.2f}s")
