"""The PII ledger on a real (private) Redis: each finding counts once, however often it is
recorded (a redelivered event, a retried batch, a rebuild from gov.pii)."""

from __future__ import annotations

import redis

from streams.pii.ledger import DAY_US, PiiLedger
from tests.summaries import T0, finding


def test_a_finding_counts_once_however_often_it_is_recorded(client: redis.Redis) -> None:
    ledger = PiiLedger(client, "t.")
    batch = [finding(n) for n in range(5)]
    assert ledger.record(batch) == 5
    assert ledger.record(batch) == 0
    assert ledger.record([*batch[2:], finding(5)]) == 1
    counts = ledger.counts(T0, T0 + DAY_US)
    assert counts.total() == 6
    assert [hop["finding_id"] for hop in ledger.lineage("fp0")] == ["f0", "f2", "f4"]
