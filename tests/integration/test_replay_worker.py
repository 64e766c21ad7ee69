"""A fresh worker on a replay reproduces the live worker: the same session summaries and the
same decision ids, on its own topics (real broker, Redis, two worker processes)."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console

from streams.codec import Codecs
from streams.control import EPOCH_SLOTS
from streams.replay import ReplaySpec, replay
from streams.settings import Settings
from streams.simulator.params import FleetParams
from streams.simulator.run import run_simulation
from streams.simulator.truth import load_truth
from streams.topics import read_partitions
from streams.worker import WorkerProcess
from tests.conftest import free_port
from tests.integration.test_answers import end_of
from tests.kafka_helpers import ask, close_silent_sessions

REPO = Path(__file__).resolve().parents[2]


def latest_summaries(settings: Settings, codecs: Codecs) -> dict[str, dict[str, Any]]:
    """The last SessionSummary of every session on the worker's sessions topic."""
    topic = settings.topic("sessions")
    latest: dict[str, dict[str, Any]] = {}
    for rows in read_partitions(settings, topic, list(range(settings.event_partitions))).values():
        for _offset, _key, value in rows:
            summary = codecs.session_summary.decode(value or b"")
            latest[summary["session_id"]] = summary
    return latest


def decisions(settings: Settings, codecs: Codecs) -> dict[str, dict[str, Any]]:
    """Every decision on the worker's control topic, by id."""
    found = read_partitions(settings, settings.topic("control"), [0, 1, 2])
    return {
        d["decision_id"]: d
        for rows in found.values()
        for _offset, _key, value in rows
        for d in [codecs.decision.decode(value or b"")]
    }


#: the workers checkpoint (commit their outputs) this often ...
CHECKPOINT_S = 0.2
#: ... and their output has settled when two reads this far apart agree (five checkpoints)
SETTLE_S = 1.0


def settle(read: Callable[[], dict[str, Any]], done: Callable[[dict[str, Any]], bool]) -> Any:
    """What ``read`` returns once ``done`` holds and two reads SETTLE_S apart agree."""
    deadline = time.monotonic() + 120
    previous = None
    while time.monotonic() < deadline:
        current = read()
        if done(current) and current == previous:
            return current
        previous = current
        time.sleep(SETTLE_S)
    raise AssertionError("the worker's output did not settle within 120 s")


def describe(decision: dict[str, Any]) -> str:
    epoch = decision["epoch"]
    return (
        f"{decision['policy_id']} {decision['action']} {decision['target']} at event time "
        f"{epoch // EPOCH_SLOTS} (outcome {epoch % EPOCH_SLOTS}), "
        f"trigger {decision['trigger_event_id']}"
    )


def test_a_fresh_worker_on_a_replay_reproduces_summaries_and_decisions(
    topics: Settings, tmp_path: Path
) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    # a step rate the fleet reaches: dozens of THROTTLEs beside the kills and warnings
    rules = policies / "governor.yaml"
    rules.write_text(rules.read_text().replace("max_steps: 120", "max_steps: 6"))
    live = topics.replace(
        policies_dir=policies, keys_dir=tmp_path / "keys", checkpoint_interval_s=CHECKPOINT_S
    )
    codecs = Codecs.load(live.schemas_dir)
    truth_path = tmp_path / "truth.jsonl"
    from_us = time.time_ns() // 1000 - 1_000_000

    with WorkerProcess(live, tmp_path / "live.log"):
        run_simulation(
            live,
            Console(quiet=True),
            FleetParams(sessions=300, seed=31, concurrency=16),
            rate=0,
            truth_path=truth_path,
        )
        truth = {s["session_id"]: s for s in load_truth(truth_path).sessions}
        close_silent_sessions(live, max(end_of(s) for s in truth.values()) + 3_600_000_000)
        live_sessions = settle(
            lambda: latest_summaries(live, codecs), lambda got: set(truth) <= set(got)
        )
        live_decisions = settle(lambda: decisions(live, codecs), lambda got: True)
        outcomes = partial(ask, live, "outcomes", "--since", "30d")
        live_outcomes = settle(outcomes, lambda got: got["sessions"] == len(live_sessions))
    to_us = time.time_ns() // 1000

    report = replay(live, ReplaySpec(from_us, to_us, to_topic=live.topic("replay.run")))
    assert report.copied == report.scanned == sum(t["events"] for t in truth.values()) + 3

    replayed = live.replace(
        events_topic=report.to_topic,
        topic_prefix=report.to_topic + ".",
        app_id=live.app_id + "-replay",
        web_port=free_port(),
    )
    with WorkerProcess(replayed, tmp_path / "replay.log"):
        replay_sessions = settle(
            lambda: latest_summaries(replayed, codecs),
            lambda got: set(live_sessions) <= set(got),
        )
        replay_decisions = settle(lambda: decisions(replayed, codecs), lambda got: True)
        # its read-model has its own Redis keys: the same answer, the live one left alone
        replay_outcomes = settle(
            partial(ask, replayed, "outcomes", "--since", "30d"),
            lambda got: got["sessions"] == len(live_sessions),
        )
    assert replay_outcomes == live_outcomes
    assert outcomes() == live_outcomes
    # and it wrote nothing to the live control topic
    assert decisions(live, codecs) == live_decisions

    # the fleet had something to decide: budget breakers and denied tools are killed (at rate
    # 0 most sessions end before their KILL lands; the decisions are what is compared)
    kills = [d for d in live_decisions.values() if d["action"] == "KILL"]
    assert kills
    assert any(d["policy_id"] == "session-step-rate" for d in live_decisions.values())

    # the same sessions with the same totals
    assert set(replay_sessions) == set(live_sessions)
    differing = {
        sid: sorted(k for k in live_sessions[sid] if live_sessions[sid][k] != got[k])
        for sid, got in replay_sessions.items()
        if got != live_sessions[sid]
    }
    assert not differing, differing

    # the same decisions: ids are deterministic (policy, target, event-time epoch)
    only_live = sorted(
        describe(live_decisions[i]) for i in set(live_decisions) - set(replay_decisions)
    )
    only_replay = sorted(
        describe(replay_decisions[i]) for i in set(replay_decisions) - set(live_decisions)
    )
    assert (only_live, only_replay) == ([], []), (len(live_decisions), len(replay_decisions))
    by_policy = Counter(f"{d['policy_id']}/{d['action']}" for d in live_decisions.values())
    print(
        f"{len(live_sessions)} sessions, {len(live_decisions)} decisions "
        f"({dict(sorted(by_policy.items()))}) reproduced from {report.copied} replayed events"
    )
