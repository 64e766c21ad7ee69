"""Per-session seq numbers in a real (private) Redis: monotonic, idempotent by event id."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from streams.ingest.mapping import SpanFacts
from streams.ingest.otlp import OtlpSpan
from streams.ingest.seq import PendingEnds, SeqLedger, SeqUnavailable, TurnLedger
from streams.ingest.steps import Draft, PendingEnd, Turn
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


async def test_turns_are_numbered_once_per_trace_by_any_receiver(
    private_redis: PrivateRedis,
) -> None:
    one, other = (aioredis.Redis(port=private_redis.port) for _ in range(2))
    a, b = TurnLedger(one, "gov."), TurnLedger(other, "gov.")
    try:
        # a log record before any turn: the first
        assert await a.number([Turn("c", "", "r0")]) == {Turn("c", "", "r0"): 1}
        first = await a.number([Turn("c", "t1"), Turn("c", "t2"), Turn("d", "t1")])
        assert first == {Turn("c", "t1"): 1, Turn("c", "t2"): 2, Turn("d", "t1"): 1}
        # another receiver, a retried and a new trace: the known keep their number
        again = await b.number([Turn("c", "t2"), Turn("c", "t3")])
        assert again == {Turn("c", "t2"): 2, Turn("c", "t3"): 3}
        assert await a.number([]) == {}
        assert await one.ttl("gov.ingest:turns:c") > 86400
        # a log record goes to its trace's turn, or the latest, while it is open ...
        early = [Turn("c", "t3", "r1"), Turn("c", "", "r2")]
        assert await b.number(early) == dict.fromkeys(early, 3)
        # ... and to the next turn once that one has ended; a retried record keeps its turn
        assert await a.number([Turn("c", "t3")], ending={Turn("c", "t3")}) == {Turn("c", "t3"): 3}
        late = [Turn("c", "t3", "r3"), Turn("c", "", "r4"), Turn("c", "", "r1")]
        assert await b.number(late) == {late[0]: 4, late[1]: 4, late[2]: 3}
        assert await a.number([Turn("c", "t9")]) == {Turn("c", "t9"): 5}
    finally:
        await one.aclose()
        await other.aclose()


async def test_waiting_ends_are_found_by_any_receiver_and_settled_once(
    private_redis: PrivateRedis,
) -> None:
    client = aioredis.Redis(port=private_redis.port)
    ends = PendingEnds(client, "gov.")
    trace = "ab" * 16

    def pending(awaiting: str, n: int) -> PendingEnd:
        event = {
            "kind": "SESSION_END",
            "event_id": f"end{n}",
            "start_time_us": 1_760_000_000_000_123,
        }
        return PendingEnd(trace, awaiting, Draft("c", f"end{n}", event, "span", Turn("c", trace)))

    def spans(*ids: str) -> list[OtlpSpan]:
        return [OtlpSpan(SpanFacts({}, 1, 2, trace_id=trace, span_id=i), {}) for i in ids]

    try:
        assert await ends.find(spans("p1")) == ([], {})
        await ends.settle({}, [pending("p1", 1), pending("p1", 2), pending("p2", 3)])
        found, consumed = await ends.find(spans("p1", "x"))
        assert found == [pending("p1", 1), pending("p1", 2)]  # big ints survive the trip
        assert consumed == {trace: ["p1"]}
        await ends.settle(consumed, [pending("p9", 1)])
        assert await ends.find(spans("p1")) == ([], {})
        assert (await ends.find(spans("p9", "p2")))[0] == [pending("p9", 1), pending("p2", 3)]
        assert 0 < await client.ttl(f"gov.ingest:pending:{trace}") <= 3600
    finally:
        await client.aclose()


async def test_redis_away_is_an_error_not_a_guess(private_redis: PrivateRedis) -> None:
    client = aioredis.Redis(port=private_redis.port, socket_timeout=0.5, socket_connect_timeout=0.5)
    ledger = SeqLedger(client, "gov.")
    private_redis.kill()
    try:
        with pytest.raises(SeqUnavailable, match="Redis could not number"):
            await ledger.assign([draft("s1", "e1", 1)])
        with pytest.raises(SeqUnavailable, match="Redis could not number the turns"):
            await TurnLedger(client, "gov.").number([Turn("c", "t1")])
    finally:
        await client.aclose()
