"""`ask pii`: what PII entered agent context, how it was handled, where it went."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from streams.pii.ledger import PiiLedger
from streams.pipeline.policy import duration_s
from streams.redis_client import redis_client
from streams.settings import Settings


def pii_answer(
    settings: Settings, since: str = "7d", fingerprint: str | None = None
) -> dict[str, Any]:
    client = redis_client(settings)
    try:
        ledger = PiiLedger(client, settings.redis_key_prefix, settings.pii_ledger_days)
        if fingerprint:
            hops = ledger.lineage(fingerprint)
            for hop in hops:
                hop["time"] = _utc(hop["time_us"])
            return {"fingerprint": fingerprint, "hops": hops}
        until_us = time.time_ns() // 1000
        since_us = until_us - int(duration_s(since) * 1_000_000)
        return {"since": since, **ledger.counts(since_us, until_us).as_dict()}
    finally:
        client.close()


def _utc(time_us: int) -> str:
    return datetime.fromtimestamp(time_us / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%S")
