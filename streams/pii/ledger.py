"""The PII ledger: counts and lineage of findings in Redis, without any value.

Per day: a hash of counts by (entity, hop, handling, destination), and per fingerprint a sorted
set of the hops it went through (by event time). Each finding is applied once (its id is
remembered for the day of its event time, in the same Lua call), so a redelivered event, a
retried batch or a rebuild over findings already applied counts nothing twice. Everything here
can be rebuilt from gov.pii (:mod:`streams.query.rebuild`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

DAY_US = 86_400_000_000

APPLY = """
-- KEYS: seen set, counts hash, lineage zset; ARGV: finding id, count field, score, member, ttl
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
for _, key in ipairs(KEYS) do redis.call('EXPIRE', key, ARGV[5]) end
return 1
"""


def count_field(finding: Mapping[str, Any]) -> str:
    return "|".join(
        (finding["entity_type"], finding["hop"], finding["handling"], finding["destination"] or "")
    )


@dataclass(frozen=True)
class PiiCounts:
    """Findings in a period by entity, hop, handling and destination."""

    by_key: Counter[tuple[str, str, str, str]]

    def total(self) -> int:
        return sum(self.by_key.values())

    def by(self, index: int) -> Counter[str]:
        result: Counter[str] = Counter()
        for key, n in self.by_key.items():
            result[key[index]] += n
        return result

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total(),
            "by_entity": dict(self.by(0)),
            "by_hop": dict(self.by(1)),
            "by_handling": dict(self.by(2)),
            "by_destination": dict(self.by(3)),
            "rows": [
                {"entity_type": e, "hop": h, "handling": a, "destination": d, "count": n}
                for (e, h, a, d), n in sorted(self.by_key.items(), key=lambda kv: -kv[1])
            ],
        }


class PiiLedger:
    def __init__(self, client: redis.Redis, key_prefix: str, days: int = 35) -> None:
        self._redis = client
        self._prefix = key_prefix
        self._ttl_s = days * 86_400
        self._apply = client.register_script(APPLY)

    @property
    def client(self) -> redis.Redis:
        return self._redis

    def _day(self, time_us: int) -> int:
        return time_us // DAY_US

    def record(self, findings: Iterable[Mapping[str, Any]]) -> int:
        """Apply findings (once each); returns how many were new."""
        pipe = self._redis.pipeline(transaction=False)
        n = 0
        for f in findings:
            day = self._day(f["time_us"])
            member = json.dumps(
                {
                    "finding_id": f["finding_id"],
                    "time_us": f["time_us"],
                    "session_id": f["session_id"],
                    "tenant_id": f["tenant_id"],
                    "agent_id": f["agent_id"],
                    "entity_type": f["entity_type"],
                    "hop": f["hop"],
                    "tool_name": f["tool_name"],
                    "destination": f["destination"],
                    "handling": f["handling"],
                    "seq": f["seq"],
                },
                sort_keys=True,
            )
            self._apply(
                keys=[
                    f"{self._prefix}pii:seen:{day}",
                    f"{self._prefix}pii:counts:{day}",
                    f"{self._prefix}pii:fp:{f['fingerprint']}",
                ],
                args=[f["finding_id"], count_field(f), f["time_us"], member, self._ttl_s],
                client=pipe,
            )
            n += 1
        return sum(int(x) for x in pipe.execute()) if n else 0

    def counts(self, since_us: int, until_us: int) -> PiiCounts:
        total: Counter[tuple[str, str, str, str]] = Counter()
        for day in range(self._day(since_us), self._day(until_us) + 1):
            for field, value in self._redis.hgetall(f"{self._prefix}pii:counts:{day}").items():
                name = field.decode() if isinstance(field, bytes) else field
                entity, hop, handling, destination = name.split("|")
                total[(entity, hop, handling, destination)] += int(value)
        return PiiCounts(total)

    def lineage(self, fingerprint: str) -> list[dict[str, Any]]:
        """Every hop one value went through, across sessions, in event-time order."""
        members = self._redis.zrange(f"{self._prefix}pii:fp:{fingerprint}", 0, -1)
        return [json.loads(m) for m in members if isinstance(m, str | bytes)]
