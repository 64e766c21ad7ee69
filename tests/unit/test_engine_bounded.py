"""Bounded state: after many days of sessions the engine holds about what one day needs.

20 k sessions over ten days of event time run through the pure Engine, ticked and checkpointed
as the worker does. Every structure of PartitionState must hold no more at the end than after
four days (once every retention window is full), whatever the number of sessions seen, and a
changelog kept from the checkpoint records (latest value per key, tombstones delete) must hold
exactly the live state: whatever was pruned was tombstoned.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from streams.engine import Engine, PartitionState, checkpoint_records, restore_record
from streams.pipeline.aggregates import DAY_US, HOUR_US
from streams.pipeline.policy import PolicyFile, PolicySet
from streams.pipeline.pricing import load_prices

PRICES = load_prices(Path(__file__).resolve().parents[2] / "policies" / "prices.yaml")
T0 = 1_767_225_600_000_000
S = 1_000_000
DAYS = 10
PER_DAY = 1500
PARTITIONS = 2
STRUCTURES = ("sessions", "closed", "enforced", "buckets", "histograms", "rates", "active")
POLICIES = [
    {"id": "deny", "kind": "tools", "deny": ["shell_exec"], "action": "kill"},
    {"id": "session-budget", "kind": "budget", "scope": "session", "limit_usd": 0.05},
    {
        "id": "agent-hourly",
        "kind": "budget",
        "scope": "agent",
        "window": "1h",
        "limit_usd": 0.8,
        "action": "throttle",
    },
    {
        "id": "search-down",
        "kind": "degradation",
        "tool": "search_*",
        "max_failures": 5,
        "window": "5m",
        "action": "pause",
        "resume_after": "10m",
    },
]


def fleet(seed: int = 5) -> list[dict[str, Any]]:
    """PER_DAY sessions a day of four agents, merged in event-time order; each day has an
    hour of search failures, 1 % of sessions call a denied tool, 3 % never end."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    for n in range(DAYS * PER_DAY):
        start = T0 + rng.randrange(DAYS * DAY_US - HOUR_US)
        outage = (start - T0) % DAY_US // HOUR_US == 10
        common = {
            "session_id": f"s{n}",
            "tenant_id": f"t{n % 2}",
            "agent_id": f"a{n % 4 // 2}",
        }
        steps: list[tuple[str, dict[str, Any]]] = [("SESSION_START", {})]
        for turn in range(rng.randint(1, 3)):
            steps.append(
                (
                    "LLM_CALL",
                    {
                        "model": "gpt-4o" if turn else "gpt-4o-mini",
                        "input_tokens": rng.randint(500, 5000),
                        "output_tokens": rng.randint(50, 500),
                        "duration_us": rng.randint(S // 2, 3 * S),
                    },
                )
            )
            tool = "shell_exec" if rng.random() < 0.01 else rng.choice(("search_kb", "lookup"))
            failed = rng.random() < (0.8 if outage and tool == "search_kb" else 0.05)
            steps.append(
                (
                    "TOOL_CALL",
                    {
                        "tool_name": tool,
                        "tool_call_id": f"c{n}-{turn}",
                        "status": "ERROR" if failed else "OK",
                        "duration_us": rng.randint(10_000, S),
                    },
                )
            )
        if rng.random() >= 0.03:
            steps.append(("SESSION_END", {}))
        t = start
        for seq, (kind, fields) in enumerate(steps, start=1):
            events.append(
                {
                    **common,
                    "event_id": f"s{n}/{seq}",
                    "seq": seq,
                    "kind": kind,
                    "start_time_us": t,
                    "duration_us": 0,
                    "status": "OK",
                    **fields,
                }
            )
            t += fields.get("duration_us", 0) + rng.randint(S, 20 * S)
    events.sort(key=lambda e: (e["start_time_us"], e["seq"]))
    return events


def counts(engine: Engine) -> dict[str, int]:
    return {
        name: sum(len(getattr(p, name)) for p in engine.partitions.values()) for name in STRUCTURES
    }


def test_state_stays_at_a_days_worth_and_pruned_keys_are_tombstoned() -> None:
    engine = Engine(
        PRICES,
        PolicySet.build([PolicyFile.model_validate({"version": 1, "policies": POLICIES})]),
        hourly_retention_s=86400.0,
        daily_retention_s=2 * 86400.0,
    )
    for partition in range(PARTITIONS):
        engine.assign(PartitionState(partition))
    #: the changelog after compaction: latest value per (partition, key)
    changelog: dict[tuple[int, bytes], bytes] = {}
    tombstoned: set[str] = set()
    targets: set[str] = set()
    by_day: dict[int, dict[str, int]] = {}
    batch: dict[int, list[dict[str, Any]]] = {p: [] for p in range(PARTITIONS)}
    events = fleet()
    for n, event in enumerate(events, start=1):
        batch[int(event["session_id"][1:]) % PARTITIONS].append(event)
        if n % 100 and n < len(events):
            continue
        for partition, pending in batch.items():
            result = engine.process(partition, pending)
            assert not result.rejected
            targets.update(d.outcome.target.split(":")[0] for d in result.decisions)
            pending.clear()
        for partition, part in engine.partitions.items():
            engine.tick(partition)
            for key, value in checkpoint_records(part):
                if value is None:
                    changelog.pop((partition, key), None)
                    tombstoned.add(key.decode()[0])
                else:
                    changelog[(partition, key)] = value
        by_day[(engine.watermark_us - T0) // DAY_US] = counts(engine)

    assert targets == {"session", "agent"}  # decisions of both lifetimes were made and pruned
    assert tombstoned >= {"s", "c", "e", "b", "h", "r"}
    settled, last = by_day[4], counts(engine)
    for name in STRUCTURES:
        # 10 days hold 2.5 times the sessions of 4; the state may not follow them
        assert last[name] <= settled[name] * 1.25 + 10, (name, settled[name], last[name])
    # a guard lives a day after its session's hour of retention: about a day of sessions
    assert last["closed"] <= PER_DAY * 25 / 24 * 1.2
    assert last["sessions"] <= PER_DAY / 24 * 3

    # a restore from the compacted changelog is the live state: nothing pruned was left there
    restored = {p: PartitionState(p) for p in range(PARTITIONS)}
    for (partition, key), value in changelog.items():
        restore_record(restored[partition], key, value)
    for partition, part in engine.partitions.items():
        for name in STRUCTURES:
            assert set(getattr(restored[partition], name)) == set(getattr(part, name)), name
    # one key per entry, but one a| (open sessions per scope) and one w| (watermark) per
    # partition
    live = sum(n for name, n in last.items() if name != "active") + 2 * PARTITIONS
    assert len(changelog) == live
