from __future__ import annotations

from pathlib import Path

import pytest

from streams.settings import Settings


def test_defaults_point_at_the_local_stack() -> None:
    s = Settings.from_env({})
    assert s.bootstrap == "127.0.0.1:19092"
    assert (s.redis_host, s.redis_port) == ("127.0.0.1", 16379)
    assert s.topic("events") == "gov.events"


def test_environment_overrides_and_types() -> None:
    s = Settings.from_env(
        {
            "GOVERNOR_BOOTSTRAP": "kafka-a:9092,kafka-b:9092",
            "GOVERNOR_WEB_PORT": "7001",
            "GOVERNOR_STATE_DIR": "/tmp/gov-state",
            "GOVERNOR_TOPIC_PREFIX": "prod.",
            "GOVERNOR_START_TIMEOUT_S": "2.5",
        }
    )
    assert s.bootstrap == "kafka-a:9092,kafka-b:9092"
    assert s.web_port == 7001
    assert s.state_dir == Path("/tmp/gov-state")
    assert s.topic("control") == "prod.control"
    assert s.start_timeout_s == 2.5


def test_keyword_overrides_win_over_environment() -> None:
    s = Settings.from_env({"GOVERNOR_WEB_PORT": "7001"}, web_port=7002)
    assert s.web_port == 7002


def test_a_bad_number_names_the_variable() -> None:
    with pytest.raises(ValueError, match="GOVERNOR_WEB_PORT='http'"):
        Settings.from_env({"GOVERNOR_WEB_PORT": "http"})


def test_settings_are_frozen_and_round_trip_through_the_environment() -> None:
    s = Settings.from_env({}, web_port=7003, state_dir=Path("/tmp/x"))
    with pytest.raises(AttributeError):
        s.web_port = 1  # type: ignore[misc]
    assert Settings.from_env(s.to_env()) == s


def test_local_kafka_ports_per_node() -> None:
    s = Settings.from_env({}, kafka_port=30000)
    assert [s.kafka_ports(n) for n in (1, 2, 3)] == [(30000, 30001), (30010, 30011), (30020, 30021)]
