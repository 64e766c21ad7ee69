"""Fleet-wide budgets in the client: Redis reservations derived from the policies themselves.

For every agent- or tenant-scoped ``budget`` policy that applies to a step, the client reserves
the step's estimated cost before it runs and settles the actual cost after, atomically in Redis
(one Lua call for all of them), so concurrent sessions of an agent, in any number of processes,
overshoot its budget by at most what estimates under-state. The cap is the policy's
``limit_usd``; nothing is set by hand.

One Redis hash per (policy, target): ``h:<hour start µs>`` the settled spend of each hour (the
policy's window is counted in whole hours, the newest one partial), ``r:<id>`` each open
reservation as ``<micros>:<created µs>``. A reservation older than ``STALE_US`` (a client that
died mid-step) no longer counts and is removed by the next reservation; hours that left the
window are removed too. When Redis does not answer, the step runs (counted: the worker, the
authority, still enforces the budget after the fact), unless a policy says
``on_unavailable: deny``.

The worker does not read these hashes yet: its own accounting stays the authority, and spend of
clients without checks is not in them (issue 13, item 3: reconciliation by the worker is left).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from streams.pipeline.aggregates import scope_of
from streams.pipeline.policy import BudgetPolicy, PolicySet, duration_s, usd_micros

HOUR_US = 3_600_000_000
#: a reservation this old is a leak (its client died mid-step): released by the next reserve
STALE_US = 300_000_000

#: KEYS: one hash per budget. ARGV: id, amount, now µs, stale µs, then per key: cap, first hour
RESERVE = """
local id, amount, now, stale = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
for i, key in ipairs(KEYS) do
  local cap = tonumber(ARGV[3 + 2 * i])
  local first = tonumber(ARGV[4 + 2 * i])
  local used = 0
  local fields = redis.call('HGETALL', key)
  for j = 1, #fields, 2 do
    local name, value = fields[j], fields[j + 1]
    local kind = string.sub(name, 1, 2)
    if kind == 'h:' then
      if tonumber(string.sub(name, 3)) < first then
        redis.call('HDEL', key, name)
      else
        used = used + tonumber(value)
      end
    elseif kind == 'r:' then
      local sep = string.find(value, ':')
      local held = tonumber(string.sub(value, 1, sep - 1))
      local created = tonumber(string.sub(value, sep + 1))
      if now - created > stale then
        redis.call('HDEL', key, name)
      else
        used = used + held
      end
    end
  end
  if used + amount > cap then return {0, i, cap - used} end
end
for _, key in ipairs(KEYS) do
  redis.call('HSET', key, 'r:' .. id, amount .. ':' .. now)
  redis.call('EXPIRE', key, 34560000)  -- 400 days: past any policy window
end
return {1, 0, 0}
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
        if isinstance(policy, BudgetPolicy) and policy.scope != "session":
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

    def reserve(self, budgets: Sequence[Budget], amount_micros: int, now_us: int) -> Held | None:
        """Hold ``amount_micros`` on every budget at once; :class:`NoRoom` when one has no
        room; None when Redis does not answer (counted: the step runs)."""
        if not budgets:
            return None
        held = Held([reservation_key(self.key_prefix, b) for b in budgets], uuid.uuid4().hex, 0)
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
