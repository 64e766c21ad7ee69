"""Policy backtesting (shadow mode): what a candidate policy set would have done to history.

The retained events are read back from Kafka (:func:`streams.replay.iter_range`) and fed, in
the order the broker serves them, to two engines in this process: one with the candidate
policies, one with the live ones. Nothing is published — no decision, summary or audit record.
Both engines are the worker's own :class:`~streams.engine.Engine`, and decision ids are
deterministic (policy, target and event-time epoch), so the live engine's ids can be checked
against the decisions the live worker actually published on gov.control: that check is what
makes the candidate's numbers trustworthy.

Engines start empty, so the read starts ``warmup`` before the window (by default at the
beginning of the topic): a session begun before the window and a day's budget spent before it
must be known for the window's decisions to be right. Only decisions triggered by an event
inside the window are reported.

Cost avoided: the cost of the steps a session took after a decision would have stopped it —
KILL stops a session (or every session of an agent or tenant) for good, PAUSE until it expires.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.codec import Codecs, DecodeError
from streams.control import agent_target, decision_id, session_target, tenant_target
from streams.engine import BatchResult, Decided, Engine
from streams.pipeline.policy import PolicySet
from streams.pipeline.pricing import load_prices
from streams.policy_files import load_policy_set
from streams.replay import iter_range
from streams.settings import Settings

#: events between two ticks (closing silent sessions), about a live worker's batch
TICK_EVERY = 2000
#: decisions are published after their trigger: read gov.control this long past the window
CONTROL_SLACK_US = 300_000_000
STOPPING = ("KILL", "PAUSE")

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Stop:
    target: str
    from_us: int
    until_us: int | None


@dataclass
class ShadowRun:
    """What one policy set decided over the window."""

    policies: PolicySet
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)
    stopped_sessions: set[str] = field(default_factory=set)
    cost_avoided_micros: int = 0
    stops: dict[str, Stop] = field(default_factory=dict)

    def by_policy(self) -> dict[str, dict[str, int]]:
        table: dict[str, Counter[str]] = {}
        for d in self.decisions.values():
            table.setdefault(d["policy_id"], Counter())[d["action"]] += 1
        return {policy: dict(actions) for policy, actions in sorted(table.items())}

    def summary(self) -> dict[str, Any]:
        return {
            "policies_version": self.policies.version,
            "policies_digest": self.policies.digest,
            "decisions": len(self.decisions),
            "by_policy": self.by_policy(),
            "sessions_stopped": len(self.stopped_sessions),
            "cost_avoided_usd": self.cost_avoided_micros / 1e6,
        }


def decision_view(decided: Decided) -> dict[str, Any]:
    outcome = decided.outcome
    return {
        "decision_id": decision_id(outcome.policy_id, outcome.target, decided.epoch),
        "policy_id": outcome.policy_id,
        "action": outcome.action,
        "target": outcome.target,
        "tenant_id": decided.tenant_id,
        "issued_at_us": decided.issued_at_us,
        "ttl_s": outcome.ttl_s,
        "trigger_event_id": decided.trigger_event_id,
    }


def targets_of(event: dict[str, Any]) -> tuple[str, str, str]:
    """The control targets an event's session answers to (as the policies name them)."""
    return (
        session_target(event["session_id"]),
        agent_target(event["tenant_id"], event["agent_id"]),
        tenant_target(event["tenant_id"]),
    )


def record(run: ShadowRun, result: BatchResult, in_window: set[str]) -> None:
    """Fold one engine batch into ``run``: the batch's decisions (those triggered inside the
    window) and the cost of steps taken after a stop."""
    for decided in result.decisions:
        if decided.trigger_event_id not in in_window:
            continue
        view = decision_view(decided)
        run.decisions[view["decision_id"]] = view
        if view["action"] in STOPPING and view["target"] not in run.stops:
            until = None
            if view["action"] == "PAUSE" and view["ttl_s"] is not None:
                until = view["issued_at_us"] + int(view["ttl_s"] * 1_000_000)
            run.stops[view["target"]] = Stop(view["target"], view["issued_at_us"], until)
            if view["target"].startswith("session:"):
                run.stopped_sessions.add(view["target"].removeprefix("session:"))


def charge(run: ShadowRun, event: dict[str, Any], cost_micros: int) -> None:
    """Count ``event``'s cost as avoided when a stop of ``run`` was in force at its start."""
    if not run.stops or event["kind"] not in ("LLM_CALL", "TOOL_CALL"):
        return
    when = int(event["start_time_us"])
    for target in targets_of(event):
        stop = run.stops.get(target)
        if (
            stop is not None
            and when > stop.from_us
            and (stop.until_us is None or when < stop.until_us)
        ):
            run.cost_avoided_micros += cost_micros
            run.stopped_sessions.add(str(event["session_id"]))
            return


def new_engine(settings: Settings, policies: PolicySet, prices_dir: Path) -> Engine:
    return Engine(
        load_prices(prices_dir / "prices.yaml"),
        policies,
        idle_timeout_s=settings.session_idle_timeout_s,
        finished_retention_s=settings.finished_retention_s,
        hourly_retention_s=settings.hourly_retention_s,
        daily_retention_s=settings.daily_retention_s,
    )


@dataclass(frozen=True)
class BacktestReport:
    from_us: int
    to_us: int
    read_from_us: int
    events: int
    events_in_window: int
    undecodable: int
    candidate: dict[str, Any]
    live_policies: dict[str, Any]
    published: dict[str, Any]
    #: decision ids of the live policies' shadow run vs those the live worker published
    live_only_in_shadow: list[str]
    live_only_published: list[str]
    candidate_only: list[str]
    elapsed_s: float

    @property
    def reproduces_live(self) -> bool:
        return not self.live_only_in_shadow and not self.live_only_published

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["reproduces_live"] = self.reproduces_live
        return out


def published_decisions(
    settings: Settings, codecs: Codecs, from_us: int, to_us: int, triggers: set[str]
) -> dict[str, dict[str, Any]]:
    """Decisions the live worker put on gov.control for events of the window."""
    found: dict[str, dict[str, Any]] = {}
    for rec in iter_range(settings, settings.topic("control"), from_us, to_us + CONTROL_SLACK_US):
        if rec.value is None:
            continue
        try:
            decision = codecs.decision.decode(rec.value)
        except DecodeError:
            continue
        if decision.get("trigger_event_id") in triggers:
            found[decision["decision_id"]] = decision
    return found


def backtest(
    settings: Settings,
    candidate_dir: Path,
    from_us: int,
    to_us: int,
    *,
    read_from_us: int = 0,
    live_dir: Path | None = None,
    progress: Progress | None = None,
) -> BacktestReport:
    """Run ``candidate_dir``'s policies and the live ones over the events of ``[from_us,
    to_us]`` (Kafka record time), the engines warmed up from ``read_from_us``."""
    started = time.perf_counter()
    codecs = Codecs.load(settings.schemas_dir)
    live_dir = live_dir or settings.policies_dir
    candidate = ShadowRun(load_policy_set(candidate_dir))
    live = ShadowRun(load_policy_set(live_dir))
    prices_dir = candidate_dir if (candidate_dir / "prices.yaml").exists() else live_dir
    engines = [
        (candidate, new_engine(settings, candidate.policies, prices_dir)),
        (live, new_engine(settings, live.policies, live_dir)),
    ]
    decode = codecs.step_event.decode
    counts = Counter[str]()
    in_window: set[str] = set()
    from_ms, to_ms = from_us // 1000, to_us // 1000

    def decoded() -> Iterator[tuple[int, int, dict[str, Any]]]:
        topic = settings.events_topic or settings.topic("events")
        for rec in iter_range(settings, topic, read_from_us, to_us, progress=progress):
            if rec.value is None:
                continue
            try:
                event = decode(rec.value)
            except DecodeError:
                counts["undecodable"] += 1
                continue
            yield rec.partition, rec.timestamp_ms, event

    for partition, timestamp_ms, event in decoded():
        counts["events"] += 1
        if from_ms <= timestamp_ms <= to_ms and event.get("event_id"):
            in_window.add(event["event_id"])
            counts["in_window"] += 1
        for run, engine in engines:
            # one event at a time, so the cost of each applied step is known to ``charge``
            result = engine.process(partition, [event])
            record(run, result, in_window)
            for _state, delta in result.deltas:
                charge(run, event, delta.cost_micros)
            if counts["events"] % TICK_EVERY == 0:
                for p in list(engine.partitions):
                    record(run, engine.tick(p), in_window)
    published = published_decisions(settings, codecs, from_us, to_us, in_window)
    shadow_live = set(live.decisions)
    published_ids = set(published)
    by_policy: dict[str, Counter[str]] = {}
    for d in published.values():
        by_policy.setdefault(d["policy_id"], Counter())[d["action"]] += 1
    return BacktestReport(
        from_us=from_us,
        to_us=to_us,
        read_from_us=read_from_us,
        events=counts["events"],
        events_in_window=counts["in_window"],
        undecodable=counts["undecodable"],
        candidate=candidate.summary(),
        live_policies=live.summary(),
        published={
            "decisions": len(published),
            "by_policy": {p: dict(a) for p, a in sorted(by_policy.items())},
            "sessions_stopped": len(
                {
                    d["target"].removeprefix("session:")
                    for d in published.values()
                    if d["action"] == "KILL" and d["target"].startswith("session:")
                }
            ),
        },
        live_only_in_shadow=sorted(shadow_live - published_ids),
        live_only_published=sorted(published_ids - shadow_live),
        candidate_only=sorted(set(candidate.decisions) - shadow_live),
        elapsed_s=time.perf_counter() - started,
    )
