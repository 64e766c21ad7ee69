"""Per-session seq numbers in a real (private) Redis: monotonic, idempotent by event id."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from streams.ingest.seq import SeqLedger, SeqUnavailable
from streams.ingest.steps import Draft
from tests.private_redis import PrivateRedis


def draft(session: str, eid: str, start_us: int, kind: str = "LLM_CALL") -> Draft:
    return Draft(session, eid, {"kind": kind, "start_time_us": start_us})


async def test_seqs_continue_per_session_and_a_resent_event_gets_its_first_seq(
    private_redis: PrivateRedis,
) -> None:
    client = aioredis.Redis(port=private_redis.port)
    ledger = SeqLedger(client, "gov.")
    try:
        first = await ledger.assign(
            [draft("s1", "e2", 20), draft("s1", "e1", 10), draft("s2", "x1", 5)]
        )
        assert [(d.event_id, seq) for d, seq in first] == [("e1", 1), ("e2", 2), ("x1", 1)]
        # a retry with one new event: the known ones keep their seqs, the new one continues
        again = await ledger.assign(
            [draft("s1", "e1", 10), draft("s1", "e3", 30, "SESSION_END"), draft("s1", "e2", 20)]
        )
        assert [(d.event_id, seq) for d, seq in again] == [("e1", 1), ("e2", 2), ("e3", 3)]
        assert await ledger.assign([]) == []
        # more events of one session than one script call takes
        many = await ledger.assign([draft("s3", f"m{i:05}", i) for i in range(2500)])
        assert [seq for _, seq in many] == list(range(1, 2501))
        assert await client.ttl("gov.ingest:seq:s1") > 86400
        assert 0 < await client.ttl("gov.ingest:ids:s1") <= 3600
    finally:
        await client.aclose()


async def test_redis_away_is_an_error_not_a_guess(private_redis: PrivateRedis) -> None:
    client = aioredis.Redis(port=private_redis.port, socket_timeout=0.5, socket_connect_timeout=0.5)
    ledger = SeqLedger(client, "gov.")
    private_redis.kill()
    try:
        with pytest.raises(SeqUnavailable, match="Redis could not number"):
            await ledger.assign([draft("s1", "e1", 1)])
    finally:
        await client.aclose()
