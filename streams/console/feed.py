"""The overview's live feed: the latest decisions on gov.control (I/O at this edge)."""

from __future__ import annotations

import time
from typing import Any

from streams.codec import Codecs, DecodeError
from streams.replay import iter_range
from streams.settings import Settings


def latest_decisions(settings: Settings, minutes: int = 15, limit: int = 20) -> dict[str, Any]:
    """The ``limit`` latest decisions produced in the last ``minutes`` (Kafka record time),
    newest first, as the worker published them (records that do not decode are counted)."""
    if minutes < 1 or limit < 1:
        raise ValueError("minutes and limit must be at least 1")
    codec = Codecs.load(settings.schemas_dir).decision
    now_us = time.time_ns() // 1000
    found: list[tuple[int, dict[str, Any]]] = []
    undecodable = 0
    topic = settings.topic("control")
    for record in iter_range(settings, topic, now_us - minutes * 60_000_000, now_us):
        if record.value is None:
            continue
        try:
            decision = codec.decode(record.value)
        except DecodeError:
            undecodable += 1
            continue
        found.append((record.timestamp_ms, decision))
    found.sort(key=lambda kv: (-kv[1]["issued_at_us"], -kv[0]))
    return {
        "topic": topic,
        "minutes": minutes,
        "seen": len(found),
        "undecodable": undecodable,
        "decisions": [
            {
                "decision_id": d["decision_id"],
                "issued_at_us": d["issued_at_us"],
                "tenant_id": d["tenant_id"],
                "target": d["target"],
                "action": d["action"],
                "reason": d["reason"],
                "policy_id": d["policy_id"],
                "policy_version": d["policy_version"],
            }
            for _ts, d in found[:limit]
        ],
    }
