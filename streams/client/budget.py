"""Hard caps with zero overshoot: atomic pre-flight reservations in Redis (Lua).

Each capped target (``session:``/``agent:``/``tenant:<id>``) is one Redis hash with
``cap_micros``, ``spent_micros``, ``reserved_micros`` and one ``r:<reservation id>`` field per
open reservation. A reservation succeeds only if every capped target has room for it; it is
later settled with the actual cost or released. Targets without a cap are not tracked here.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

import redis

RESERVE = """
for i, key in ipairs(KEYS) do
  local cap = redis.call('HGET', key, 'cap_micros')
  if cap then
    local used = tonumber(redis.call('HGET', key, 'spent_micros') or '0')
               + tonumber(redis.call('HGET', key, 'reserved_micros') or '0')
    local room = tonumber(cap) - used
    if room < tonumber(ARGV[2]) then return {0, i, room} end
  end
end
for _, key in ipairs(KEYS) do
  if redis.call('HEXISTS', key, 'cap_micros') == 1 then
    redis.call('HINCRBY', key, 'reserved_micros', ARGV[2])
    redis.call('HSET', key, 'r:' .. ARGV[1], ARGV[2])
  end
end
return {1, 0, 0}
"""

SETTLE = """
for _, key in ipairs(KEYS) do
  local held = redis.call('HGET', key, 'r:' .. ARGV[1])
  if held then
    redis.call('HINCRBY', key, 'reserved_micros', -tonumber(held))
    redis.call('HDEL', key, 'r:' .. ARGV[1])
    redis.call('HINCRBY', key, 'spent_micros', ARGV[2])
  end
end
return 1
"""


def budget_key(key_prefix: str, target: str) -> str:
    return f"{key_prefix}budget:{target}"


class Budgets:
    def __init__(self, client: redis.Redis, key_prefix: str) -> None:
        self._redis = client
        self._prefix = key_prefix
        self._reserve = client.register_script(RESERVE)
        self._settle = client.register_script(SETTLE)

    def set_cap(self, target: str, cap_micros: int) -> None:
        self._redis.hset(budget_key(self._prefix, target), "cap_micros", cap_micros)

    def ledger(self, target: str) -> dict[str, int]:
        raw = self._redis.hgetall(budget_key(self._prefix, target))
        return {_text(k): int(v) for k, v in raw.items()}

    def reserve(self, targets: Sequence[str], amount_micros: int) -> Reservation:
        """Reserve on every capped target at once, or raise :class:`BudgetExhausted`."""
        from streams.client.errors import BudgetExhausted

        reservation = Reservation(self, list(targets), str(uuid.uuid4()), amount_micros)
        keys = [budget_key(self._prefix, t) for t in targets]
        ok, index, room = self._reserve(keys=keys, args=[reservation.reservation_id, amount_micros])
        if not ok:
            raise BudgetExhausted(targets[int(index) - 1], int(room))
        return reservation

    def settle(self, reservation: Reservation, actual_micros: int) -> None:
        keys = [budget_key(self._prefix, t) for t in reservation.targets]
        self._settle(keys=keys, args=[reservation.reservation_id, actual_micros])


@dataclass
class Reservation:
    budgets: Budgets = field(repr=False)
    targets: list[str]
    reservation_id: str
    amount_micros: int
    closed: bool = False

    def settle(self, actual_cost_usd: float) -> None:
        """Replace the estimate by the actual cost (once)."""
        if not self.closed:
            self.closed = True
            self.budgets.settle(self, round(actual_cost_usd * 1_000_000))

    def release(self) -> None:
        """Give the whole estimate back: the call did not happen."""
        if not self.closed:
            self.closed = True
            self.budgets.settle(self, 0)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
