"""Events the producer or the broker refuses are failed, counted and named, never raised into
the agent and never left pending (real broker)."""

from __future__ import annotations

import logging

import pytest

from streams.client.emitter import Emitter
from streams.settings import Settings
from streams.topics import admin_client, create_topics, new_topic
from tests.integration.client.conftest import GovernorFactory


def test_a_five_megabyte_event_fails_without_raising_and_the_session_goes_on(
    topics: Settings, governor: GovernorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    gov = governor(obey=False, pii_guard=False)
    with caplog.at_level(logging.WARNING, logger="governor.client"), gov.session() as s:
        s.llm_call(model="gpt-4o-mini", content=[("USER", "x" * (5 * 1024 * 1024))])
        s.llm_call(model="gpt-4o-mini", input_tokens=1, output_tokens=1)
    assert gov.emitter.flush(30) == 0
    stats = gov.stats()
    assert (stats["emitted"], stats["delivered"], stats["failed"], stats["pending"]) == (4, 3, 1, 0)
    assert any("1,000,000 bytes" in r.getMessage() for r in caplog.records)


def test_an_event_over_the_topics_limit_is_failed_by_the_brokers_report(
    topics: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    tiny = topics.topic("tiny")
    create_topics(admin_client(topics), [new_topic(tiny, 1, 1, {"max.message.bytes": "10000"})])
    emitter = Emitter(topics.bootstrap)
    try:
        with caplog.at_level(logging.WARNING, logger="governor.client"):
            assert emitter.emit(tiny, b"s-1", b"x" * 50_000) is True  # the producer takes it
            assert emitter.flush(30) == 0
            assert emitter.emit(tiny, b"s-1", b"small") is True  # in a batch of its own
            assert emitter.flush(30) == 0
        stats = emitter.stats
        assert (stats.emitted, stats.delivered, stats.failed, stats.pending) == (2, 1, 1, 0)
        [line] = [r.getMessage() for r in caplog.records if "not sent" in r.getMessage()]
        assert "50,003 bytes" in line
        assert "broker's limit" in line
    finally:
        emitter.close(timeout_s=5)
