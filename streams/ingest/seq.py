"""Per-session seq numbers for events the receiver derives, idempotent by event id.

The worker applies a session's events in ``seq`` order and skips any seq it has already seen
(that is its at-least-once dedup), so every event needs a seq above the session's last one,
and a re-sent event must get the *same* seq again. A stateless receiver cannot count, so the
numbers come from Redis, atomically, in one round trip per request (a Lua script per session):

- ``<prefix>ingest:seq:<session>``: the session's last seq (kept ``counter_ttl_s``, 8 days:
  longer than ``gov.events`` keeps the events);
- ``<prefix>ingest:ids:<session>``: event id → seq, for ``ids_ttl_s`` (1 hour: an exporter's
  retries come within minutes). An event id seen in that window gets its first seq back.

Any number of receivers share the counters: a span delivered twice, to the same receiver or
another, gets the same event ids (:mod:`streams.ingest.steps`), the same turn
(:class:`TurnLedger`) and so the same seqs, and the worker applies each seq once. Within one
receiver, numbering and producing a request happen under one lock, so a session's events reach
the partition in seq order; two receivers serving the same session at the same instant can
produce out of order, and the worker applies a seq that comes after a higher one as long as it
is within :data:`streams.pipeline.seqs.WINDOW` of it. Redis unavailable: the request fails
with 503, the exporter retries; nothing is produced without a seq. A lost counter (Redis
flushed) restarts sessions at 1: events of sessions the worker still holds are then skipped as
duplicates.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from streams.ingest.otlp import OtlpSpan
from streams.ingest.steps import Draft, PendingEnd, Turn

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


#: KEYS: the conversation's turns; ARGV: ttl, then per turn asked: trace id ("": none), "1" if
#: the request ends that turn, a log record's event id ("" for a trace's turn). A trace seen
#: before gets its number back, a new one the next number; a log record goes to its trace's
#: turn (no trace: the latest), or to the next turn when that one has ended, and keeps it.
_TURNS_SCRIPT = """
local ttl = tonumber(ARGV[1])
local out = {}
for i = 2, #ARGV, 3 do
  local trace, ends, record = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local n
  if record ~= '' then
    n = redis.call('HGET', KEYS[1], 'l:' .. record)
    if not n then
      if trace ~= '' then
        n = redis.call('HGET', KEYS[1], 't:' .. trace)
        if not n then
          n = redis.call('HINCRBY', KEYS[1], '#', 1)
          redis.call('HSET', KEYS[1], 't:' .. trace, n)
        end
      else
        n = redis.call('HGET', KEYS[1], '#') or '1'
      end
      if redis.call('HEXISTS', KEYS[1], 'e:' .. n) == 1 then
        n = redis.call('HINCRBY', KEYS[1], '#', 1)
      end
      redis.call('HSET', KEYS[1], 'l:' .. record, n)
    end
  else
    n = redis.call('HGET', KEYS[1], 't:' .. trace)
    if not n then
      n = redis.call('HINCRBY', KEYS[1], '#', 1)
      redis.call('HSET', KEYS[1], 't:' .. trace, n)
    end
    if ends == '1' then
      redis.call('HSET', KEYS[1], 'e:' .. n, 1)
    end
  end
  out[#out + 1] = tonumber(n)
end
redis.call('EXPIRE', KEYS[1], ttl)
return out
"""


class TurnLedger:
    """Numbers the turns of named conversations in Redis, shared by every receiver.

    ``<prefix>ingest:turns:<conversation>``, a hash kept ``ttl_s`` (8 days, refreshed by each
    request): ``#`` the conversation's last turn, ``t:<trace id>`` each trace's turn, ``e:<n>``
    the turns ended, ``l:<event id>`` each log record's turn. A trace is numbered once, by
    whichever receiver sees it first, so a retried or split trace, at any receiver, lands in
    the same turn (and so the same session and seqs)."""

    def __init__(self, client: aioredis.Redis, key_prefix: str, ttl_s: int = COUNTER_TTL_S):
        self._client = client
        self._prefix = f"{key_prefix}ingest:turns:"
        self._ttl = ttl_s
        self._script = client.register_script(_TURNS_SCRIPT)

    async def number(self, turns: Sequence[Turn], ending: Collection[Turn] = ()) -> dict[Turn, int]:
        """Each turn's number (1, 2, ...), new traces numbered in the order given;
        ``ending``: the turns this request ends."""
        if not turns:
            return {}
        by_conversation: dict[str, list[Turn]] = {}
        for turn in turns:
            by_conversation.setdefault(turn.conversation, []).append(turn)
        groups: list[list[Turn]] = []
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for conversation, group in by_conversation.items():
                    for start in range(0, len(group), _CHUNK):
                        chunk = group[start : start + _CHUNK]
                        groups.append(chunk)
                        args: list[str | int] = [self._ttl]
                        for turn in chunk:
                            args += [turn.trace_id, "1" if turn in ending else "0", turn.record]
                        await self._script(
                            keys=[f"{self._prefix}{conversation}"], args=args, client=pipe
                        )
                results = await pipe.execute()
        except RedisError as exc:
            raise SeqUnavailable(f"Redis could not number the turns: {exc}") from exc
        numbers: dict[Turn, int] = {}
        for chunk, found in zip(groups, results, strict=True):
            numbers.update(zip(chunk, (int(n) for n in found), strict=True))
        return numbers


#: KEYS: a trace's waiting ends; ARGV: ttl, the number of fields to delete, those fields, then
#: (awaited span id, pending end JSON) pairs, appended to the field's newline-joined list
_PENDING_SCRIPT = """
local ttl = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
for i = 3, 2 + n do redis.call('HDEL', KEYS[1], ARGV[i]) end
for i = 3 + n, #ARGV, 2 do
  local old = redis.call('HGET', KEYS[1], ARGV[i])
  redis.call('HSET', KEYS[1], ARGV[i], old and (old .. '\\n' .. ARGV[i + 1]) or ARGV[i + 1])
end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('EXPIRE', KEYS[1], ttl) end
return 1
"""


class PendingEnds:
    """Turn ends waiting for an ancestor span a later request brings (steps.PendingEnd), in
    Redis, shared by every receiver: ``<prefix>ingest:pending:<trace id>``, a hash of awaited
    span id → the ends waiting for it (kept ``ttl_s``, 1 hour: a trace's spans come within
    seconds of each other). A receiver looks up every span id of its request (one round trip)
    and, once the request's events are acknowledged, deletes what it settled and adds what
    waits (a failed request settles nothing: its retry does)."""

    def __init__(self, client: aioredis.Redis, key_prefix: str, ttl_s: int = IDS_TTL_S):
        self._client = client
        self._prefix = f"{key_prefix}ingest:pending:"
        self._ttl = ttl_s
        self._script = client.register_script(_PENDING_SCRIPT)

    async def find(
        self, spans: Sequence[OtlpSpan]
    ) -> tuple[list[PendingEnd], dict[str, list[str]]]:
        """The ends waiting for a span of ``spans``, and those span ids by trace (to settle)."""
        by_trace: dict[str, list[str]] = {}
        for span in spans:
            if span.facts.trace_id and span.facts.span_id:
                by_trace.setdefault(span.facts.trace_id, []).append(span.facts.span_id)
        if not by_trace:
            return [], {}
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for trace, ids in by_trace.items():
                    pipe.hmget(f"{self._prefix}{trace}", ids)
                results = await pipe.execute()
        except RedisError as exc:
            raise SeqUnavailable(f"Redis could not look up waiting turn ends: {exc}") from exc
        found: list[PendingEnd] = []
        consumed: dict[str, list[str]] = {}
        for (trace, ids), values in zip(by_trace.items(), results, strict=True):
            for span_id, value in zip(ids, values, strict=True):
                if value is None:
                    continue
                consumed.setdefault(trace, []).append(span_id)
                found.extend(PendingEnd.from_json(line) for line in value.splitlines() if line)
        return found, consumed

    async def settle(self, consumed: dict[str, list[str]], waiting: Sequence[PendingEnd]) -> None:
        """Delete the settled fields, add the ends that wait (on their awaited span)."""
        added: dict[str, list[PendingEnd]] = {}
        for pending in waiting:
            added.setdefault(pending.trace_id, []).append(pending)
        traces = set(consumed) | set(added)
        if not traces:
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for trace in traces:
                    gone = consumed.get(trace, [])
                    args: list[str | int] = [self._ttl, len(gone), *gone]
                    for pending in added.get(trace, []):
                        args += [pending.awaiting, pending.to_json()]
                    await self._script(keys=[f"{self._prefix}{trace}"], args=args, client=pipe)
                await pipe.execute()
        except RedisError as exc:
            raise SeqUnavailable(f"Redis could not keep waiting turn ends: {exc}") from exc
