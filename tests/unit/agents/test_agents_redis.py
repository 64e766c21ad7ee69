"""The agents' batches against a real (private) Redis that is stopped (SIGSTOP), killed and
restarted empty: each batch is applied whole once Redis is back, counts once, and a Redis that
came back without the read-model is rebuilt before the batch (the rebuild itself, from Kafka, is
the integration test's; here it replays a list)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

import pytest
import redis

from streams.agents.health import AgentHealth, Retrier
from streams.agents.pii import FindingBatch, LedgerWriter, PiiHandler, kill_epoch
from streams.agents.sessions import ReadModelHandler
from streams.codec import Codecs
from streams.control import EPOCH_SLOTS, PII_EPOCH_SLOT
from streams.metrics import worker_metrics
from streams.pii.ledger import DAY_US, PiiLedger
from streams.pii.scanner import PiiScanner
from streams.pipeline.pii import PiiPolicy
from streams.publisher import DecisionPublisher
from streams.query.answers import Answers, Period
from streams.query.drift import DriftDetector, DriftStore
from streams.query.readmodel import SessionReadModel
from streams.query.rebuild import (
    PII_LEDGER,
    READ_MODEL,
    RebuildResult,
    _guarded,
    _Hold,
    is_built,
    marker_key,
)
from streams.redis_client import redis_client
from streams.settings import Settings
from tests.private_redis import PrivateRedis
from tests.summaries import HOUR_US, T0, finding, summary

PREFIX = "t."
PERIOD = Period(T0, T0 + HOUR_US - 1)


def fast(server: PrivateRedis) -> Settings:
    return Settings.from_env(
        {},
        redis_url=server.url,
        topic_prefix=PREFIX,
        redis_timeout_s=0.3,
        retry_backoff_s=0.05,
        retry_backoff_max_s=0.2,
    )


def recoveries(metrics: Any, loop: str) -> float:
    value = metrics.registry.get_sample_value(
        "governor_recoveries_total", {"loop": loop, "fault": "redis"}
    )
    return float(value or 0.0)


class Topic:
    """Stands in for gov.sessions: what a rebuild re-applies."""

    def __init__(self) -> None:
        self.summaries: list[Mapping[str, Any]] = []


def read_model_parts(
    settings: Settings, topic: Topic
) -> tuple[ReadModelHandler, SessionReadModel, AgentHealth]:
    client = redis_client(settings)
    model = SessionReadModel(client, PREFIX)
    detector = DriftDetector(DriftStore(client, PREFIX))
    health = AgentHealth("read-model")

    def ensure() -> RebuildResult | None:
        if is_built(client, PREFIX, READ_MODEL):
            return None

        def build(hold: _Hold) -> RebuildResult:
            model.apply(topic.summaries, settings.quality_threshold)
            detector.add(topic.summaries)
            return RebuildResult(READ_MODEL, "t.sessions", True, len(topic.summaries))

        return _guarded(client, PREFIX, READ_MODEL, "t.sessions", False, build)

    handler = ReadModelHandler(settings, Codecs.load(settings.schemas_dir), model, detector,
                               health, ensure=ensure)  # fmt: skip
    return handler, model, health


def payloads(codecs: Codecs, summaries: Sequence[dict[str, Any]]) -> list[bytes]:
    return [codecs.session_summary.encode(s) for s in summaries]


async def test_a_batch_waits_out_a_stopped_redis_and_is_applied_once(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    settings = fast(private_redis)
    topic = Topic()
    handler, model, health = read_model_parts(settings, topic)
    metrics = worker_metrics()
    retrier = Retrier(health, metrics, settings)
    batch = handler.decode(payloads(handler.codecs, [summary(n) for n in range(20)]))
    topic.summaries.extend(batch.summaries)
    private_redis.stop()
    try:
        task = asyncio.create_task(retrier.run(lambda: asyncio.to_thread(handler.apply, batch)))
        deadline = time.monotonic() + 15
        while recoveries(metrics, "read-model") < 2:
            assert time.monotonic() < deadline, "no retry while Redis was stopped"
            await asyncio.sleep(0.1)
        assert health.state == "retrying"
        assert not task.done()
    finally:
        private_redis.cont()
    await asyncio.wait_for(task, 30)
    assert not health.retrying  # running again
    stats = Answers(model, clock_us=T0 + HOUR_US - 1).stats(PERIOD)
    assert stats["all|sessions"] == 20
    assert stats["all|cost"] == sum(100 * (n + 1) for n in range(20))
    warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(warnings) == 1


async def test_a_redis_restarted_empty_is_rebuilt_before_the_next_batch(
    private_redis: PrivateRedis,
) -> None:
    settings = fast(private_redis)
    topic = Topic()
    handler, model, health = read_model_parts(settings, topic)
    retrier = Retrier(health, worker_metrics(), settings)
    first = handler.decode(payloads(handler.codecs, [summary(n) for n in range(10)]))
    topic.summaries.extend(first.summaries)
    await retrier.run(lambda: asyncio.to_thread(handler.apply, first))
    assert health.rebuilds == 1  # the first batch ever finds no marker
    private_redis.restart()  # killed without saving: everything is gone
    second = handler.decode(payloads(handler.codecs, [summary(n) for n in range(10, 15)]))
    topic.summaries.extend(second.summaries)
    await retrier.run(lambda: asyncio.to_thread(handler.apply, second))
    assert health.rebuilds == 2
    stats = Answers(model, clock_us=T0 + HOUR_US - 1).stats(PERIOD)
    assert stats["all|sessions"] == 15
    assert model.redis.exists(marker_key(PREFIX, READ_MODEL))


class FlakyPublisher:
    """Raises once, then records what it published."""

    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []
        self.failures = 1

    def publish_many(self, decisions: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        if self.failures:
            self.failures -= 1
            raise BufferError("queue full")
        self.published.extend(dict(d) for d in decisions)
        return [dict(d) for d in decisions]


def pii_handler(settings: Settings, client: redis.Redis, publisher: FlakyPublisher) -> PiiHandler:
    audited: list[str] = []
    handler = PiiHandler(
        settings,
        Codecs.load(settings.schemas_dir),
        cast(PiiScanner, None),  # batches are made here, nothing is scanned
        PiiPolicy(version=3, entities=["EMAIL_ADDRESS"]),
        b"k" * 32,
        PiiLedger(client, PREFIX),
        cast(DecisionPublisher, publisher),
        lambda *args: audited.append(args[-1]),
        worker_metrics(),
    )
    handler.audited = audited  # type: ignore[attr-defined]
    return handler


async def test_a_pii_kill_is_published_once_and_counted_once_after_a_failed_publish(
    private_redis: PrivateRedis,
) -> None:
    settings = fast(private_redis)
    publisher = FlakyPublisher()
    handler = pii_handler(settings, private_redis.client(), publisher)
    retrier = Retrier(handler.health, handler.metrics, settings)
    records = [finding(n, "KILL", session_id="s1") for n in range(3)] + [finding(9)]
    batch = FindingBatch(records)

    async def step() -> None:
        await asyncio.to_thread(handler.kill, batch)
        handler.account(batch)

    await retrier.run(step)
    await retrier.run(step)  # the same batch again: nothing more
    assert [d["target"] for d in publisher.published] == ["session:s1"]
    assert publisher.published[0]["epoch"] == records[0]["time_us"] * EPOCH_SLOTS + PII_EPOCH_SLOT
    assert kill_epoch(1) % EPOCH_SLOTS == PII_EPOCH_SLOT == EPOCH_SLOTS - 1
    kills = handler.metrics.registry.get_sample_value(
        "governor_decisions_total", {"action": "KILL", "policy": "pii"}
    )
    assert kills == 1
    assert handler.audited == ["f0", "f1", "f2", "f9"]  # type: ignore[attr-defined]
    later = FindingBatch([finding(4, "KILL", session_id="s1")])
    await retrier.run(lambda: asyncio.to_thread(handler.kill, later))
    assert len(publisher.published) == 1  # a session is killed once


async def test_the_pii_ledger_waits_out_a_stopped_redis_behind_the_agent(
    private_redis: PrivateRedis,
) -> None:
    settings = fast(private_redis)
    client = redis_client(settings)
    ledger = PiiLedger(client, PREFIX)
    client.set(marker_key(PREFIX, PII_LEDGER), "{}")
    health = AgentHealth("pii-scanner")
    metrics = worker_metrics()
    rebuilt: list[int] = []

    def rebuild() -> RebuildResult:
        rebuilt.append(1)
        return RebuildResult(PII_LEDGER, "t.pii", True)

    writer = LedgerWriter(settings, Codecs.load(settings.schemas_dir), ledger, health,
                          max_pending=5, rebuild=rebuild)  # fmt: skip
    retrier = Retrier(health, metrics, settings, part="ledger")
    writer.add([finding(n) for n in range(4)])
    private_redis.stop()
    try:
        flush = asyncio.create_task(writer.flush(retrier))
        deadline = time.monotonic() + 15
        while recoveries(metrics, "pii-scanner") < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert health.retrying == {"ledger"}
        writer.add([finding(4)])  # the agent goes on meanwhile
    finally:
        private_redis.cont()
    await asyncio.wait_for(flush, 30)
    await writer.flush(retrier)  # what came in during the first write
    assert writer.pending == []
    assert health.state == "running"
    assert ledger.counts(T0, T0 + DAY_US).total() == 5
    # more findings than it holds while Redis is away: the oldest go, and gov.pii (where all
    # of them are) rebuilds the ledger before the rest is written
    writer.add([finding(n) for n in range(10, 18)])
    assert writer.overflowed
    assert len(writer.pending) == 5
    await writer.flush(retrier)
    assert rebuilt == [1]
    assert not writer.overflowed
    assert ledger.counts(T0, T0 + DAY_US).total() == 10
