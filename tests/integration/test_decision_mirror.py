"""The Redis copy of the latest decision per target: newest epoch wins, a planted entry with an
epoch no real decision can have is overwritten, and an emptied Redis gets it back from Kafka."""

from __future__ import annotations

import time
from pathlib import Path

from streams.codec import Codecs
from streams.control import EPOCH_SLOTS, decision_redis_key, generate_signing_key
from streams.publisher import DecisionPublisher, make_decision, now_us
from streams.query.rebuild import DECISIONS, marker_key
from streams.redis_client import redis_client
from streams.settings import Settings


def kill(target: str, epoch: int) -> dict[str, object]:
    return make_decision(
        target=target,
        tenant_id="acme",
        action="KILL",
        policy_id="budget",
        epoch=epoch,
        issued_at_us=epoch // EPOCH_SLOTS,
        reason="test",
    )


def mirrored_epoch(settings: Settings, target: str) -> int | None:
    raw = redis_client(settings).hget(
        decision_redis_key(settings.redis_key_prefix, target), "payload"
    )
    if not isinstance(raw, bytes):
        return None
    return int(Codecs.load(settings.schemas_dir).decision.decode(raw)["epoch"])


def test_newest_epoch_wins_and_a_planted_absurd_epoch_cannot_hide_a_decision(
    topics: Settings, tmp_path: Path
) -> None:
    client = redis_client(topics)
    key = generate_signing_key(tmp_path / "keys", "k1")
    publisher = DecisionPublisher(topics, key)
    try:
        epoch = now_us() * EPOCH_SLOTS
        publisher.publish(kill("session:a", epoch), wait=True)
        publisher.publish(kill("session:a", epoch - EPOCH_SLOTS), wait=True)  # older: ignored
        assert mirrored_epoch(topics, "session:a") == epoch

        planted = decision_redis_key(topics.redis_key_prefix, "session:b")
        client.hset(planted, mapping={"epoch": str(10**30), "payload": b"forged"})
        publisher.publish(kill("session:b", epoch), wait=True)
        assert mirrored_epoch(topics, "session:b") == epoch
    finally:
        publisher.close()


def test_an_emptied_redis_gets_the_latest_decisions_back_from_the_control_topic(
    topics: Settings, tmp_path: Path
) -> None:
    client = redis_client(topics)
    key = generate_signing_key(tmp_path / "keys", "k1")
    first = DecisionPublisher(topics, key)
    epoch = now_us() * EPOCH_SLOTS
    try:
        for n in range(5):
            first.publish(kill(f"session:{n}", epoch + n))
        first.publish(kill("session:0", epoch + 100), wait=True)
    finally:
        first.close()
    prefix = topics.redis_key_prefix
    for n in range(5):
        client.delete(decision_redis_key(prefix, f"session:{n}"))
    client.delete(marker_key(prefix, DECISIONS))

    second = DecisionPublisher(topics, key)  # a worker starting against the emptied Redis
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not client.exists(marker_key(prefix, DECISIONS)):
            time.sleep(0.1)
        assert second.mirror.rebuilds == 1
        assert mirrored_epoch(topics, "session:0") == epoch + 100
        assert [mirrored_epoch(topics, f"session:{n}") for n in range(1, 5)] == [
            epoch + n for n in range(1, 5)
        ]
    finally:
        second.close()
