"""Publishing decisions: sign, send on the control topic, mirror the latest to Redis.

The worker's enforcement uses it; so do operators (``governor control``) and tests. It has its own
producer (linger 0) so a decision never queues behind bulk traffic.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson
import redis
from confluent_kafka import KafkaException, Producer

from streams.client.reservations import RELEASE, RESERVATION_TTL_S, Closure
from streams.codec import Codec, Codecs
from streams.control import EPOCH_SLOTS, SigningKey, decision_id, decision_redis_key
from streams.kafka_config import client_config
from streams.processor.faults import Backoff, describe, fatal
from streams.query.rebuild import DECISIONS, latest_decisions, marker_key
from streams.redis_client import redis_client
from streams.settings import Settings

if TYPE_CHECKING:
    from streams.pipeline.scope import Decided


#: a decision for a target without a window lasts this long unless resumed, counted from the
#: wall clock when it is issued (a backfilled session's kill must not arrive expired)
DEFAULT_DECISION_TTL_S = 24 * 3600.0

log = logging.getLogger("governor.publisher")

#: a late or replayed older decision must not replace a newer one in the read-model, but an
#: entry whose epoch no real decision can have yet (ARGV[3]: the largest epoch of the present)
#: was planted and must not hide one. Epochs are compared as decimal strings: they exceed
#: 2^53, where Lua's numbers stop being exact.
MIRROR_IF_NEWER = """
local current = redis.call('HGET', KEYS[1], 'epoch')
local function greater(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
if current and not greater(current, ARGV[3]) and not greater(ARGV[1], current) then
  return 0
end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'payload', ARGV[2])
return 1
"""

#: how far ahead of the wall clock a decision's epoch may legitimately be (event time skew)
EPOCH_HORIZON_S = 86400.0
MIRROR_IDLE_S = 1.0
#: closed sessions whose reservations wait for Redis to be released, at most
MAX_PENDING_RELEASES = 100_000
#: how often the mirror checks that Redis still holds it (one EXISTS)
MARKER_CHECK_S = 2.0


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


class DecisionMirror:
    """The latest decision per target, copied to Redis on a thread of its own, best effort.

    Enforcement never waits on Redis: decisions are on Kafka before they are queued here. While
    Redis is away the newest entry per target waits (newest epoch wins, so the queue is bounded
    by the number of targets) and is written when Redis answers again.
    """

    def __init__(
        self,
        settings: Settings,
        codec: Codec,
        on_state: Callable[[bool], None] | None = None,
    ) -> None:
        self.settings = settings
        self.codec = codec
        self._marker = marker_key(settings.redis_key_prefix, DECISIONS)
        self._checked_marker_at = 0.0
        self.rebuilds = 0
        self._redis = redis_client(settings)
        self._script = self._redis.register_script(MIRROR_IF_NEWER)
        self._pending: dict[str, tuple[int, bytes]] = {}
        #: the worker's side of the clients' fleet-budget reservations (streams.client
        #: .reservations), written with the decisions: (hash key, field) -> the worker's spend,
        #: newest wins ...
        self._spend: dict[tuple[str, str], int] = {}
        #: ... and the closed sessions whose reservations and open-session places to clear
        #: (bounded: past the bound the oldest are dropped, and lapse instead)
        self._closures: dict[str, Closure] = {}
        self.releases_dropped = 0
        self.released = 0
        self._release_script = self._redis.register_script(RELEASE)
        self._cond = threading.Condition()
        self._stopping = False
        self._on_state = on_state
        self.redis_ok = True
        self.last_error = ""
        #: monotonic time the thread last came round (liveness)
        self.last_loop_monotonic = time.monotonic()
        self.written = 0
        self._backoff = Backoff(settings.retry_backoff_s, settings.retry_backoff_max_s)
        self._thread = threading.Thread(target=self._run, name="governor-mirror", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return len(self._pending) + len(self._spend) + len(self._closures)

    def put_reservations(
        self, spend: Mapping[tuple[str, str], int], closures: Sequence[Closure]
    ) -> None:
        """Queue the worker's spend per budget hash and hour, and what closed sessions
        leave to clear (best effort, as the decisions)."""
        if not spend and not closures:
            return
        with self._cond:
            self._spend.update(spend)
            self._closures.update((c.session_id, c) for c in closures)
            while len(self._closures) > MAX_PENDING_RELEASES:
                del self._closures[next(iter(self._closures))]
                self.releases_dropped += 1
            self._cond.notify()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def put(self, target: str, epoch: int, payload: bytes) -> None:
        with self._cond:
            current = self._pending.get(target)
            if current is None or epoch > current[0]:
                self._pending[target] = (epoch, payload)
            self._cond.notify()

    def flush(self) -> bool:
        """Write what is pending now, on the caller's thread; False when Redis did not take it."""
        return self._write_pending()

    def ping(self) -> bool:
        try:
            return bool(self._redis.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=5)
        self._redis.close()

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    if not self.pending and not self._stopping:
                        self._cond.wait(MIRROR_IDLE_S)
                    if self._stopping:
                        return
                self.last_loop_monotonic = time.monotonic()
                ok = self._write_pending() if self.pending else True
                if ok and time.monotonic() - self._checked_marker_at >= MARKER_CHECK_S:
                    ok = self._ensure_built()
                if not ok:
                    self._sleep(self._backoff.next_delay())
                else:
                    self._backoff.reset()
        except BaseException as exc:  # a dead mirror thread must not go unnoticed
            fatal("decision mirror", exc)

    def _sleep(self, seconds: float) -> None:
        with self._cond:
            if not self._stopping:
                self._cond.wait(seconds)
        self.last_loop_monotonic = time.monotonic()

    def _ensure_built(self) -> bool:
        """Redis answers and holds the mirror; when it came back empty (restarted without its
        data, flushed) the newest decision per target is rebuilt from the control topic, so a
        restarted agent still finds its kill."""
        try:
            built = bool(self._redis.exists(self._marker))
        except redis.RedisError as exc:
            self._set_state(False, describe(exc))
            return False
        self._set_state(True, "")
        self._checked_marker_at = time.monotonic()
        if built:
            return True
        log.warning(
            "the decision mirror's marker is not in Redis (a first start, or Redis came back "
            "empty): rebuilding it from %s",
            self.settings.topic("control"),
        )
        try:
            latest = latest_decisions(self.settings, self.codec, on_chunk=self._beat)
        except (KafkaException, TimeoutError) as exc:
            log.warning("decision mirror rebuild: Kafka failed (%s); retrying", describe(exc))
            self._checked_marker_at = 0.0
            return False
        with self._cond:
            for target, (epoch, payload) in latest.items():
                current = self._pending.get(target)
                if current is None or epoch > current[0]:
                    self._pending[target] = (epoch, payload)
        if not self._write_pending():
            self._checked_marker_at = 0.0
            return False
        try:
            self._redis.set(self._marker, orjson.dumps({"at": time.time(), "targets": len(latest)}))
        except redis.RedisError as exc:
            self._set_state(False, describe(exc))
            self._checked_marker_at = 0.0
            return False
        self.rebuilds += 1
        log.warning("decision mirror rebuilt: %d targets", len(latest))
        return True

    def _beat(self) -> None:
        self.last_loop_monotonic = time.monotonic()

    def _write_pending(self) -> bool:
        with self._cond:
            batch = dict(self._pending)
            spend, closures = dict(self._spend), list(self._closures.values())
        if not batch and not spend and not closures:
            return True
        horizon = str((time.time_ns() // 1000 + int(EPOCH_HORIZON_S * 1e6)) * EPOCH_SLOTS)
        prefix = self.settings.redis_key_prefix
        try:
            pipe = self._redis.pipeline(transaction=False)
            for target, (epoch, payload) in batch.items():
                key = decision_redis_key(prefix, target)
                self._script(keys=[key], args=[str(epoch), payload, horizon], client=pipe)
            for (key, name), micros in spend.items():
                pipe.hset(key, name, micros)
                pipe.expire(key, RESERVATION_TTL_S)
            releasing = [c for c in closures if c.budget_keys]
            for closure in releasing:
                keys = list(closure.budget_keys)
                self._release_script(keys=keys, args=[closure.field_prefix], client=pipe)
            for closure in closures:
                for key in closure.active_keys:
                    pipe.zrem(key, closure.session_id)
            answers = pipe.execute()
        except redis.RedisError as exc:
            self._set_state(False, describe(exc))
            return False
        with self._cond:
            for target, entry in batch.items():
                if self._pending.get(target) == entry:
                    del self._pending[target]
            for spend_key, micros in spend.items():
                if self._spend.get(spend_key) == micros:
                    del self._spend[spend_key]
            for closure in closures:
                if self._closures.get(closure.session_id) is closure:
                    del self._closures[closure.session_id]
        start = len(batch) + 2 * len(spend)
        self.released += sum(int(n) for n in answers[start : start + len(releasing)])
        self.written += len(batch)
        self._set_state(True, "")
        return True

    def _set_state(self, ok: bool, error: str) -> None:
        if ok != self.redis_ok:
            if ok:
                log.warning("Redis answers again: the decision mirror catches up")
            else:
                log.warning(
                    "Redis unreachable (%s): decisions go on through Kafka, the Redis mirror "
                    "waits (%d pending)",
                    error,
                    len(self._pending),
                )
        self.redis_ok, self.last_error = ok, error
        if self._on_state is not None:
            self._on_state(ok)


class DecisionPublisher:
    """Signs decisions and sends them on the control topic at once; Redis gets a copy later."""

    def __init__(
        self,
        settings: Settings,
        key: SigningKey,
        codecs: Codecs | None = None,
        on_redis_state: Callable[[bool], None] | None = None,
    ) -> None:
        self.settings = settings
        self.key = key
        self.codecs = codecs or Codecs.load(settings.schemas_dir)
        self.topic = settings.topic("control")
        self._producer = Producer(
            {
                **client_config(settings),
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 0,
                "log_level": 3,
            }
        )
        self.mirror = DecisionMirror(settings, self.codecs.decision, on_redis_state)

    def publish(self, decision: Mapping[str, Any], wait: bool = False) -> dict[str, Any]:
        """Sign and send ``decision``; the latest per target also goes to Redis."""
        [signed] = self.publish_many([decision], wait=wait)
        return signed

    def publish_many(
        self, decisions: Sequence[Mapping[str, Any]], wait: bool = False
    ) -> list[dict[str, Any]]:
        """Sign and send every decision; ``wait`` also waits for Kafka's acknowledgement and
        tries the Redis copy on this thread (operators and tests want it in place at once)."""
        if not decisions:
            return []
        signed_all = []
        for decision in decisions:
            signed = self.key.sign(decision)
            payload = self.codecs.decision.encode(signed)
            while True:
                try:
                    self._producer.produce(self.topic, payload, signed["target"].encode())
                    break
                except BufferError:
                    self._producer.poll(0.05)
            self.mirror.put(signed["target"], signed["epoch"], payload)
            signed_all.append(signed)
        self._producer.poll(0)
        if wait:
            self.flush()
            self.mirror.flush()
        return signed_all

    def redis_ping(self) -> bool:
        return self.mirror.ping()

    def flush(self, timeout_s: float = 10.0) -> None:
        if self._producer.flush(timeout_s):
            raise TimeoutError(f"decisions not acknowledged within {timeout_s}s")

    def close(self) -> None:
        self.flush()
        self.mirror.flush()
        self.mirror.close()


def now_us() -> int:
    return time.time_ns() // 1000


def decision_expiry(issued_at_us: int, ttl_s: float | None, wall_us: int) -> int:
    """When a decision stops being in force: its time (or a day) from the wall clock at issue.

    Not from the event time that caused it: a backfilled or late session's events may be days
    old, and a kill that arrives already expired is dropped by the client.
    """
    ttl = ttl_s if ttl_s is not None else DEFAULT_DECISION_TTL_S
    return max(wall_us, issued_at_us) + int(ttl * 1_000_000)


def publish_decided(publisher: DecisionPublisher, batch: list[Decided]) -> list[dict[str, Any]]:
    """Sign and publish decisions at once (both stages): expiry from the wall clock now."""
    wall_us = time.time_ns() // 1000
    decisions = []
    for decided in batch:
        outcome = decided.outcome
        decisions.append(
            make_decision(
                target=outcome.target,
                tenant_id=decided.tenant_id,
                action=outcome.action,
                policy_id=outcome.policy_id,
                policy_version=decided.policy_version,
                epoch=decided.epoch,
                issued_at_us=decided.issued_at_us,
                expires_at_us=decision_expiry(decided.issued_at_us, outcome.ttl_s, wall_us),
                reason=outcome.reason,
                parameters=outcome.parameters,
                trigger_event_id=decided.trigger_event_id,
            )
        )
    return publisher.publish_many(decisions)
