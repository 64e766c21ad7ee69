"""Per-session seq numbers for events the receiver derives, idempotent by event id.

The worker applies a session's events in ``seq`` order and skips any seq it has already seen
(that is its at-least-once dedup), so every event needs a seq above the session's last one,
and a re-sent event must get the *same* seq again. A stateless receiver cannot count, so the
numbers come from Redis, atomically, in one round trip per request (a Lua script per session):

- ``<prefix>ingest:seq:<session>``: the session's last seq (kept ``counter_ttl_s``, 8 days:
  longer than ``gov.events`` keeps the events);
- ``<prefix>ingest:ids:<session>``: event id → seq, for ``ids_ttl_s`` (1 hour: an exporter's
  retries come within minutes). An event id seen in that window gets its first seq back.

Any number of receivers share the counters. Within one receiver, numbering and producing a
request happen under one lock, so a session's events reach the partition in seq order; two
receivers serving the same session at the same instant can still produce out of order, and the
worker then takes the later-numbered one first and counts the other as a duplicate (send a
session's spans through one receiver — one SDK exporter does — or a Collector with
``loadbalancing`` by trace id). Redis unavailable: the request fails with 503, the exporter
retries; nothing is produced without a seq. A lost counter (Redis flushed) restarts sessions
at 1: events of sessions the worker still holds are then skipped as duplicates.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from streams.ingest.steps import Draft

COUNTER_TTL_S = 8 * 86400
IDS_TTL_S = 3600

#: KEYS: counter, ids; ARGV: counter ttl, ids ttl, event ids. Known ids get their seq back,
#: the others the next seqs in order, with one INCRBY for all of them.
_SCRIPT = """
local counter_ttl = tonumber(ARGV[1])
local ids_ttl = tonumber(ARGV[2])
local ids = {}
for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
local known = redis.call('HMGET', KEYS[2], unpack(ids))
local missing = 0
for i = 1, #ids do
  if not known[i] then missing = missing + 1 end
end
local out = {}
local seq = 0
if missing > 0 then
  seq = redis.call('INCRBY', KEYS[1], missing) - missing
end
local new = {}
for i = 1, #ids do
  if known[i] then
    out[i] = tonumber(known[i])
  else
    seq = seq + 1
    out[i] = seq
    new[#new + 1] = ids[i]
    new[#new + 1] = seq
  end
end
if missing > 0 then
  redis.call('HSET', KEYS[2], unpack(new))
end
redis.call('EXPIRE', KEYS[1], counter_ttl)
redis.call('EXPIRE', KEYS[2], ids_ttl)
return out
"""
#: event ids per script call (Lua's unpack has a stack limit of a few thousand values)
_CHUNK = 1000


class SeqUnavailable(RuntimeError):
    """Redis did not number the events (the request fails with 503 and is retried)."""


def ordered(drafts: Sequence[Draft]) -> list[Draft]:
    """One draft per event id, each session's in event-time order (its SESSION_END last)."""
    unique = {d.event_id: d for d in drafts}
    return sorted(
        unique.values(),
        key=lambda d: (
            d.session_id,
            d.event["kind"] == "SESSION_END",
            d.event["start_time_us"],
            d.event["kind"] != "SESSION_START",
            d.event_id,
        ),
    )


class SeqLedger:
    """Numbers drafts per session in Redis (see the module doc)."""

    def __init__(
        self,
        client: aioredis.Redis,
        key_prefix: str,
        counter_ttl_s: int = COUNTER_TTL_S,
        ids_ttl_s: int = IDS_TTL_S,
    ) -> None:
        self._client = client
        self._prefix = f"{key_prefix}ingest:"
        self._ttls = (counter_ttl_s, ids_ttl_s)
        self._script = client.register_script(_SCRIPT)

    async def assign(self, drafts: Sequence[Draft]) -> list[tuple[Draft, int]]:
        """(draft, seq) for each distinct event of ``drafts``, in the order to produce them."""
        events = ordered(drafts)
        if not events:
            return []
        sessions: dict[str, list[Draft]] = {}
        for draft in events:
            sessions.setdefault(draft.session_id, []).append(draft)
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                chunks: list[list[Draft]] = []
                for session_id, group in sessions.items():
                    keys = [f"{self._prefix}seq:{session_id}", f"{self._prefix}ids:{session_id}"]
                    for start in range(0, len(group), _CHUNK):
                        chunk = group[start : start + _CHUNK]
                        chunks.append(chunk)
                        await self._script(
                            keys=keys, args=[*self._ttls, *(d.event_id for d in chunk)], client=pipe
                        )
                results = await pipe.execute()
        except RedisError as exc:
            raise SeqUnavailable(f"Redis could not number the events: {exc}") from exc
        numbered: list[tuple[Draft, int]] = []
        for chunk, seqs in zip(chunks, results, strict=True):
            numbered.extend(zip(chunk, (int(s) for s in seqs), strict=True))
        return numbered
