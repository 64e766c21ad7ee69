"""Publishing decisions: sign, send on the control topic, mirror the latest to Redis.

The worker's enforcement uses it; so do operators (``governor control``) and tests. It has its own
producer (linger 0) so a decision never queues behind bulk traffic.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from confluent_kafka import Producer

from streams.codec import Codecs
from streams.control import SigningKey, decision_id, decision_redis_key
from streams.settings import Settings

#: a late or replayed older decision must not replace a newer one in the read-model
MIRROR_IF_NEWER = """
local current = redis.call('HGET', KEYS[1], 'epoch')
if current and tonumber(current) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'payload', ARGV[2])
return 1
"""


def make_decision(
    *,
    target: str,
    tenant_id: str,
    action: str,
    policy_id: str,
    epoch: int,
    issued_at_us: int,
    reason: str = "",
    policy_version: int = 0,
    expires_at_us: int | None = None,
    parameters: Mapping[str, str] | None = None,
    trigger_event_id: str | None = None,
) -> dict[str, Any]:
    """An unsigned Decision with its deterministic id."""
    return {
        "decision_id": decision_id(policy_id, target, epoch),
        "target": target,
        "tenant_id": tenant_id,
        "action": action,
        "reason": reason,
        "policy_id": policy_id,
        "policy_version": policy_version,
        "epoch": epoch,
        "issued_at_us": issued_at_us,
        "expires_at_us": expires_at_us,
        "parameters": dict(parameters or {}),
        "trigger_event_id": trigger_event_id,
        "key_id": "",
        "signature": b"",
    }


class DecisionPublisher:
    def __init__(self, settings: Settings, key: SigningKey, codecs: Codecs | None = None) -> None:
        self.settings = settings
        self.key = key
        self.codecs = codecs or Codecs.load(settings.schemas_dir)
        self.topic = settings.topic("control")
        self._producer = Producer(
            {
                "bootstrap.servers": settings.bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 0,
                "log_level": 3,
            }
        )
        self._redis = redis.Redis.from_url(settings.redis_url)
        self._mirror = self._redis.register_script(MIRROR_IF_NEWER)

    def publish(self, decision: Mapping[str, Any], wait: bool = False) -> dict[str, Any]:
        """Sign and send ``decision``; the latest per target also goes to Redis."""
        [signed] = self.publish_many([decision], wait=wait)
        return signed

    def publish_many(
        self, decisions: Sequence[Mapping[str, Any]], wait: bool = False
    ) -> list[dict[str, Any]]:
        """Sign and send every decision at once; one Redis round trip mirrors them all."""
        if not decisions:
            return []
        signed_all = []
        pipe = self._redis.pipeline(transaction=False)
        for decision in decisions:
            signed = self.key.sign(decision)
            payload = self.codecs.decision.encode(signed)
            self._producer.produce(self.topic, payload, signed["target"].encode())
            key = decision_redis_key(self.settings.redis_key_prefix, signed["target"])
            self._mirror(keys=[key], args=[signed["epoch"], payload], client=pipe)
            signed_all.append(signed)
        self._producer.poll(0)
        pipe.execute()
        if wait:
            self.flush()
        return signed_all

    def redis_ping(self) -> bool:
        return bool(self._redis.ping())

    def flush(self, timeout_s: float = 10.0) -> None:
        if self._producer.flush(timeout_s):
            raise TimeoutError(f"decisions not acknowledged within {timeout_s}s")

    def close(self) -> None:
        self.flush()
        self._redis.close()


def now_us() -> int:
    return time.time_ns() // 1000
