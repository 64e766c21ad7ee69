"""The Faust agents' fault rule, without a broker: transient faults are retried with backoff and
counted, logged once per outage; anything else ends the process; nothing escapes silently."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import NoReturn

import pytest
import redis
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, UnsupportedVersionError
from confluent_kafka import KafkaError, KafkaException

from streams.agents.health import AgentHealth, Retrier, fault_of, guarded
from streams.metrics import WorkerMetrics, worker_metrics
from streams.processor.faults import Fault
from streams.query.rebuild import RebuildInterrupted, SourceUnavailable
from streams.settings import Settings

SETTINGS = Settings.from_env({}, retry_backoff_s=0.5, retry_backoff_max_s=2.0)


class Fatal(Exception):
    """What the tests' on_fatal raises instead of ending the process."""


def on_fatal(component: str, exc: BaseException) -> NoReturn:
    raise Fatal(component) from exc


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (redis.ConnectionError("refused"), (Fault.TRANSIENT, "redis")),
        (redis.TimeoutError("timed out"), (Fault.TRANSIENT, "redis")),
        (redis.exceptions.BusyLoadingError("LOADING"), (Fault.TRANSIENT, "redis")),
        (redis.exceptions.NoScriptError("NOSCRIPT"), (Fault.TRANSIENT, "redis")),
        (redis.ResponseError("OOM command not allowed"), (Fault.TRANSIENT, "redis")),
        (redis.exceptions.ReadOnlyError("READONLY replica"), (Fault.TRANSIENT, "redis")),
        (redis.ResponseError("WRONGTYPE Operation"), (Fault.FATAL, "redis")),
        (redis.ResponseError("value is NaN or Infinity"), (Fault.FATAL, "redis")),
        (RebuildInterrupted("lost"), (Fault.TRANSIENT, "redis")),
        (KafkaException(KafkaError(KafkaError._TRANSPORT)), (Fault.TRANSIENT, "kafka")),
        (KafkaException(KafkaError(KafkaError._FENCED)), (Fault.FATAL, "kafka")),
        (SourceUnavailable("no answer"), (Fault.TRANSIENT, "kafka")),
        (KafkaTimeoutError(), (Fault.TRANSIENT, "kafka")),
        (KafkaConnectionError(), (Fault.TRANSIENT, "kafka")),
        (UnsupportedVersionError(), (Fault.FATAL, "kafka")),
        (BufferError("queue full"), (Fault.TRANSIENT, "kafka")),
        (KeyError("session_id"), (Fault.FATAL, "redis")),
        (ValueError("bug"), (Fault.FATAL, "redis")),
    ],
)
def test_faults_are_classed(exc: BaseException, expected: tuple[Fault, str]) -> None:
    assert fault_of(exc)[0] is expected[0]
    if expected[0] is Fault.TRANSIENT:
        assert fault_of(exc)[1] == expected[1]


def recoveries(metrics: WorkerMetrics, loop: str, fault: str) -> float:
    value = metrics.registry.get_sample_value(
        "governor_recoveries_total", {"loop": loop, "fault": fault}
    )
    return value or 0.0


def flaky(failures: list[BaseException]) -> Callable[[], Awaitable[str]]:
    async def step() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    return step


async def test_a_transient_fault_is_retried_with_backoff_until_the_step_succeeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = worker_metrics()
    health = AgentHealth("read-model")
    sleeps: list[float] = []
    states: list[str] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        states.append(health.state)

    retrier = Retrier(health, metrics, SETTINGS, on_fatal=on_fatal, sleep=sleep)
    failures: list[BaseException] = [
        redis.ConnectionError("refused"),
        redis.TimeoutError("timed out"),
        redis.ConnectionError("refused"),
        KafkaException(KafkaError(KafkaError._TRANSPORT)),
    ]
    with caplog.at_level(logging.WARNING, logger="governor.agents"):
        assert await retrier.run(flaky(failures)) == "done"
    assert sleeps == [0.5, 1.0, 2.0, 2.0]
    assert states == ["retrying"] * 4
    assert health.state == "running"
    assert health.faults == 4
    assert recoveries(metrics, "read-model", "redis") == 3
    assert recoveries(metrics, "read-model", "kafka") == 1
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unavailable" in m for m in messages) == 1  # once per outage, not per retry
    assert sum("recovered" in m for m in messages) == 1
    # the next outage starts from the first delay again
    sleeps.clear()
    assert await retrier.run(flaky([redis.ConnectionError("refused")])) == "done"
    assert sleeps == [0.5]


async def test_any_other_fault_ends_the_process() -> None:
    health = AgentHealth("pii-scanner")
    retrier = Retrier(health, worker_metrics(), SETTINGS, on_fatal=on_fatal)
    with pytest.raises(Fatal, match="agent pii-scanner") as info:
        await retrier.run(flaky([redis.ConnectionError("x"), KeyError("finding_id")]))
    assert isinstance(info.value.__cause__, KeyError)


async def test_nothing_escapes_an_agent_body_but_its_cancellation() -> None:
    health = AgentHealth("read-model")

    async def buggy() -> None:
        raise RuntimeError("bug")

    with pytest.raises(Fatal):
        await guarded(health, buggy, on_fatal=on_fatal)

    async def cancelled() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await guarded(health, cancelled, on_fatal=on_fatal)


def test_an_idle_agent_is_not_stalled_a_stuck_one_is() -> None:
    health = AgentHealth("read-model")
    now = health.last_progress_monotonic + 100
    assert health.idle_s(now) == 0.0
    assert not health.stalled(30, now)
    health.busy = True
    assert health.idle_s(now) == pytest.approx(100)
    assert health.stalled(30, now)
    health.retrying.add("ledger")
    assert health.as_dict(now)["state"] == "retrying"
    assert health.as_dict(now)["retrying"] == ["ledger"]
