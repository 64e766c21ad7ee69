"""The emitter never raises into the agent and never leaves a refused event pending."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaError, Message

from streams.client.emitter import Emitter

FIVE_MB = 5 * 1024 * 1024


@pytest.fixture
def emitter() -> Iterator[Emitter]:
    made = Emitter("127.0.0.1:1")  # nothing listens: every outcome here is the client's own
    yield made
    made.close(timeout_s=0)


def test_an_oversized_event_is_failed_with_its_size_and_the_limit_not_raised(
    emitter: Emitter, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="governor.client"):
        assert emitter.emit("gov.events", b"s-1", b"x" * FIVE_MB) is False
    assert (emitter.stats.emitted, emitter.stats.failed, emitter.stats.pending) == (1, 1, 0)
    [line] = [r.getMessage() for r in caplog.records if "not sent" in r.getMessage()]
    assert f"{FIVE_MB + 3:,} bytes" in line
    assert "1,000,000 bytes" in line
    assert emitter.emit("gov.events", b"s-1", b"small") is True
    assert emitter.stats.pending == 1  # queued: the broker is away


def test_the_broker_refusing_an_event_as_too_large_fails_it_by_name(
    emitter: Emitter, caplog: pytest.LogCaptureFixture
) -> None:
    emitter.stats.emitted += 1  # as emit() counts it before the report comes back
    refused = Message(topic="gov.events", key=b"s-1", value=b"x" * 2000)
    with caplog.at_level(logging.WARNING, logger="governor.client"):
        emitter._on_delivery(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), refused)
    assert (emitter.stats.failed, emitter.stats.pending) == (1, 0)
    [line] = [r.getMessage() for r in caplog.records if "not sent" in r.getMessage()]
    assert "2,003 bytes" in line
    assert "broker's limit" in line
    emitter.stats.emitted += 1
    emitter._on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT), refused)
    assert (emitter.stats.failed, emitter.stats.pending) == (2, 0)
