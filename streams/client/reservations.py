"""Fleet-wide budgets in the client: Redis reservations derived from the policies themselves.

For every agent- or tenant-scoped ``budget`` policy that applies to a step, the client reserves
the step's estimated cost before it runs and settles the actual cost after, atomically in Redis
(one Lua call for all of them), so concurrent sessions of an agent, in any number of processes,
overshoot its budget by at most what estimates under-state. The cap is the policy's
``limit_usd``; nothing is set by hand.

One Redis hash per (policy, target): ``h:<hour start µs>`` the spend clients settled in each
hour (the policy's window is counted in whole hours, the newest one partial), ``w:<hour>`` the
worker's own spend of the scope in that hour, and ``r:<session>|<id>`` each open reservation as
``<micros>:<created µs>``. An hour counts the larger of the two spends: the worker's covers
every client, with checks or not, up to what it has read; the clients' covers what it has not
read yet. The worker writes ``w:`` after each commit of its scope stage
(:mod:`streams.processor.reconcile`) and, when it closes a session (ended, or idle past the
timeout), releases the reservations that session left open (a client that died mid-step). A
reservation older than ``STALE_US`` no longer counts either and is removed by the next
reservation; hours that left the window are removed too. When Redis does not answer, the step
runs (counted: the worker, the authority, still enforces the budget after the fact), unless a
policy says ``on_unavailable: deny``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from streams.pipeline.aggregates import scope_of
from streams.pipeline.policy import (
    BudgetPolicy,
    ConcurrencyPolicy,
    PolicySet,
    duration_s,
    usd_micros,
)

HOUR_US = 3_600_000_000
#: a budget's hash outlives any policy window (400 days; the RESERVE script sets the same)
RESERVATION_TTL_S = 34_560_000
#: a reservation this old is a leak (its client died mid-step): released by the next reserve
STALE_US = 300_000_000

#: KEYS: one hash per budget. ARGV: id, amount, now µs, stale µs, then per key: cap, first hour
RESERVE = """
local id, amount, now, stale = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
for i, key in ipairs(KEYS) do
  local cap = tonumber(ARGV[3 + 2 * i])
  local first = tonumber(ARGV[4 + 2 * i])
  local held, settled, worker = 0, {}, {}
  local fields = redis.call('HGETALL', key)
  for j = 1, #fields, 2 do
    local name, value = fields[j], fields[j + 1]
    local kind = string.sub(name, 1, 2)
    if kind == 'h:' or kind == 'w:' then
      local hour = string.sub(name, 3)
      if tonumber(hour) < first then
        redis.call('HDEL', key, name)
      elseif kind == 'h:' then
        settled[hour] = tonumber(value)
      else
        worker[hour] = tonumber(value)
      end
    elseif kind == 'r:' then
      local sep = string.find(value, ':')
      local micros = tonumber(string.sub(value, 1, sep - 1))
      local created = tonumber(string.sub(value, sep + 1))
      if now - created > stale then
        redis.call('HDEL', key, name)
      else
        held = held + micros
      end
    end
  end
  local used = held
  for hour, micros in pairs(settled) do
    used = used + math.max(micros, worker[hour] or 0)
  end
  for hour, micros in pairs(worker) do
    if settled[hour] == nil then used = used + micros end
  end
  if used + amount > cap then return {0, i, cap - used} end
end
for _, key in ipairs(KEYS) do
  redis.call('HSET', key, 'r:' .. id, amount .. ':' .. now)
  redis.call('EXPIRE', key, 34560000)  -- 400 days: past any policy window
end
return {1, 0, 0}
"""

#: KEYS: the hashes of a session's budgets. ARGV: ``r:<session>|``. Returns the number of
#: reservations released
RELEASE = """
local released = 0
for _, key in ipairs(KEYS) do
  for _, name in ipairs(redis.call('HKEYS', key)) do
    -- the prefix, then exactly one uuid4 hex: another session's id may start with this one
    if #name == #ARGV[1] + 32 and string.sub(name, 1, #ARGV[1]) == ARGV[1] then
      released = released + redis.call('HDEL', key, name)
    end
  end
end
return released
"""

#: KEYS: the hashes reserved on. ARGV: id, actual µUSD, the hour it is spent in
SETTLE = """
for _, key in ipairs(KEYS) do
  if redis.call('HDEL', key, 'r:' .. ARGV[1]) == 1 and tonumber(ARGV[2]) > 0 then
    redis.call('HINCRBY', key, 'h:' .. ARGV[3], ARGV[2])
  end
end
return 1
"""


@dataclass(frozen=True)
class Budget:
    """One fleet-wide budget a step is reserved against."""

    policy_id: str
    target: str
    cap_micros: int
    window_s: float
    #: the policy's on_unavailable: allow (run, counted) or deny (refuse) when Redis is down
    on_unavailable: str = "allow"


def fleet_budgets(policies: PolicySet, tenant_id: str, agent_id: str) -> tuple[Budget, ...]:
    """The agent- and tenant-scoped budget policies that apply to (tenant, agent)."""
    found = []
    for policy in policies.applicable(tenant_id, agent_id).get("budget", ()):
        # session trees span agents and processes: the scope stage alone can count them
        if isinstance(policy, BudgetPolicy) and policy.scope in ("agent", "tenant"):
            found.append(
                Budget(
                    policy.id,
                    scope_of(policy.scope, tenant_id, agent_id),
                    usd_micros(policy.limit_usd),
                    duration_s(policy.window),
                    policy.on_unavailable,
                )
            )
    return tuple(found)


def reservation_key(key_prefix: str, budget: Budget) -> str:
    return f"{key_prefix}reserve:{budget.policy_id}:{budget.target}"


def reservation_id(session_id: str, unique: str) -> str:
    """``<session>|<unique>``: the worker releases a closed session's reservations by prefix."""
    return f"{session_id}|{unique}"


def first_hour_us(now_us: int, window_s: float) -> int:
    """The oldest hour bucket inside a window ending now (the window in whole hours)."""
    hours = max(1, int(-(-window_s // 3600)))
    return now_us - now_us % HOUR_US - (hours - 1) * HOUR_US


class NoRoom(Exception):
    """A reservation was refused: ``budget`` has ``room_micros`` left."""

    def __init__(self, budget: Budget, room_micros: int) -> None:
        super().__init__(
            f"{budget.target} budget {budget.policy_id!r} has {room_micros / 1e6:.6f} USD left"
        )
        self.budget = budget
        self.room_micros = room_micros


@dataclass
class Held:
    """An open reservation on some budgets (settle it once)."""

    keys: list[str]
    reservation_id: str
    amount_micros: int
    closed: bool = False


@dataclass
class FleetReservations:
    """The client's side of the reservations (thread-safe: Redis does the atomicity)."""

    client: redis.Redis
    key_prefix: str
    counts: dict[str, int] = field(
        default_factory=lambda: {"reserved": 0, "refused": 0, "unavailable": 0}
    )
    _scripts: dict[str, Any] = field(default_factory=dict)

    def _script(self, name: str, text: str) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self.client.register_script(text)
        return script

    def reserve(
        self, budgets: Sequence[Budget], amount_micros: int, now_us: int, session_id: str = ""
    ) -> Held | None:
        """Hold ``amount_micros`` on every budget at once for a step of ``session_id``;
        :class:`NoRoom` when one has no room; None when Redis does not answer (counted: the
        step runs)."""
        if not budgets:
            return None
        keys = [reservation_key(self.key_prefix, b) for b in budgets]
        held = Held(keys, reservation_id(session_id, uuid.uuid4().hex), 0)
        held.amount_micros = max(0, amount_micros)
        args: list[Any] = [held.reservation_id, held.amount_micros, now_us, STALE_US]
        for budget in budgets:
            args += [budget.cap_micros, first_hour_us(now_us, budget.window_s)]
        try:
            ok, index, room = self._script("reserve", RESERVE)(keys=held.keys, args=args)
        except redis.RedisError:
            self.counts["unavailable"] += 1
            return None
        if not ok:
            self.counts["refused"] += 1
            raise NoRoom(budgets[int(index) - 1], int(room))
        self.counts["reserved"] += 1
        return held

    def admit(self, caps: Sequence[Cap], session_id: str, now_us: int, stale_us: int) -> bool:
        """Count ``session_id`` among the open sessions of every cap (again: refreshes it);
        :class:`Full` when one has no room; False when Redis does not answer (counted). A
        session not heard of for ``stale_us`` (its client died) no longer counts."""
        if not caps:
            return True
        keys = [active_key(self.key_prefix, c) for c in caps]
        args: list[Any] = [session_id, now_us, now_us - stale_us, *(c.max_active for c in caps)]
        try:
            ok, index, open_sessions = self._script("admit", ADMIT)(keys=keys, args=args)
        except redis.RedisError:
            self.counts["unavailable"] += 1
            return False
        if not ok:
            self.counts["refused"] += 1
            raise Full(caps[int(index) - 1], int(open_sessions))
        return True

    def leave(self, caps: Sequence[Cap], session_id: str) -> None:
        """The session ended: one fewer open (best effort; the worker removes it too)."""
        if not caps:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for cap in caps:
                pipe.zrem(active_key(self.key_prefix, cap), session_id)
            pipe.execute()
        except redis.RedisError:
            self.counts["unavailable"] += 1

    def settle(self, held: Held | None, actual_micros: int, now_us: int) -> None:
        """Replace the estimate by the actual cost (0: the step did not happen)."""
        if held is None or held.closed:
            return
        held.closed = True
        hour = now_us - now_us % HOUR_US
        try:
            self._script("settle", SETTLE)(
                keys=held.keys, args=[held.reservation_id, max(0, actual_micros), hour]
            )
        except redis.RedisError:
            # the reservation lapses after STALE_US; the spend is the worker's to count
            self.counts["unavailable"] += 1


# --- concurrency caps: the open sessions of an agent or tenant -------------------------------

#: KEYS: one sorted set per cap (session id -> last heard µs). ARGV: session, now µs, stale
#: before µs, then per key its max_active. Returns {1, 0, 0} admitted, {0, i, open} refused
ADMIT = """
local session, now, stale = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', stale)
  if not redis.call('ZSCORE', key, session) then
    local open = redis.call('ZCARD', key)
    if open >= tonumber(ARGV[3 + i]) then return {0, i, open} end
  end
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, session)
  redis.call('EXPIRE', key, 34560000)
end
return {1, 0, 0}
"""


@dataclass(frozen=True)
class Cap:
    """One concurrency policy a new session is admitted against."""

    policy_id: str
    target: str
    max_active: int
    #: the policy's action: kill refuses the session, throttle and pause hold it back until a
    #: slot frees (at most the pause timeout), warn admits it over the cap
    action: str
    delay_s: float
    on_unavailable: str = "allow"


def concurrency_caps(policies: PolicySet, tenant_id: str, agent_id: str) -> tuple[Cap, ...]:
    """The concurrency policies that apply to (tenant, agent)."""
    return tuple(
        Cap(
            policy.id,
            scope_of(policy.scope, tenant_id, agent_id),
            policy.max_active,
            policy.action,
            policy.throttle_delay_ms / 1000,
            policy.on_unavailable,
        )
        for policy in policies.applicable(tenant_id, agent_id).get("concurrency", ())
        if isinstance(policy, ConcurrencyPolicy)
    )


def active_key(key_prefix: str, cap: Cap) -> str:
    return f"{key_prefix}active:{cap.policy_id}:{cap.target}"


class Full(Exception):
    """A session was not admitted: ``cap`` has ``open`` sessions already."""

    def __init__(self, cap: Cap, open_sessions: int) -> None:
        super().__init__(
            f"{open_sessions} open sessions of {cap.target} reach {cap.policy_id!r}'s "
            f"max_active {cap.max_active}"
        )
        self.cap = cap
        self.open_sessions = open_sessions


# --- the worker's side: its own spend, and the reservations of closed sessions ---------------


def worker_spend_fields(
    policies: PolicySet,
    key_prefix: str,
    spent: Iterable[tuple[str, str, int]],
    spend_of: Callable[[str, str, int], int],
) -> dict[tuple[str, str], int]:
    """``(hash key, "w:<hour>") -> micros`` for the hours whose spend changed: ``spent`` lists
    (tenant, agent, hour start µs); ``spend_of(tenant, scope, hour)`` is the worker's spend of
    a scope of the tenant (``streams.pipeline.aggregates.scope_of``) in that hour."""
    fields: dict[tuple[str, str], int] = {}
    for tenant, agent, hour in spent:
        for budget in fleet_budgets(policies, tenant, agent):
            key = reservation_key(key_prefix, budget)
            fields[(key, f"w:{hour}")] = spend_of(tenant, budget.target, hour)
    return fields


@dataclass(frozen=True)
class Closure:
    """What the worker clears when it closes a session: its open reservations (fields with
    ``field_prefix`` in ``budget_keys``) and its place among the open sessions (``active_keys``)."""

    session_id: str
    field_prefix: str
    budget_keys: tuple[str, ...]
    active_keys: tuple[str, ...]


def session_closure(
    policies: PolicySet, key_prefix: str, tenant: str, agent: str, session_id: str
) -> Closure | None:
    """What closing ``session_id`` clears; None when no fleet budget or cap applies."""
    budgets = fleet_budgets(policies, tenant, agent)
    caps = concurrency_caps(policies, tenant, agent)
    if not budgets and not caps:
        return None
    return Closure(
        session_id,
        "r:" + reservation_id(session_id, ""),
        tuple(reservation_key(key_prefix, b) for b in budgets),
        tuple(active_key(key_prefix, c) for c in caps),
    )
