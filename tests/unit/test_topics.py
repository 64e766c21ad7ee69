from __future__ import annotations

import pytest

from streams.settings import Settings
from streams.topics import FOREVER, replication_for, topic_specs

DESIGN_TOPICS = {"events", "control", "sessions", "pii", "alerts", "audit", "events.dlq"}


def test_every_topic_of_the_design_is_declared_with_the_prefix() -> None:
    s = Settings.from_env({}, topic_prefix="x.")
    specs = {spec.suffix: spec for spec in topic_specs(s)}
    assert set(specs) >= DESIGN_TOPICS
    assert all(spec.name(s).startswith("x.") for spec in specs.values())


def test_events_follow_settings_and_audit_is_kept_forever() -> None:
    s = Settings.from_env({}, event_partitions=12, events_retention_ms=3_600_000)
    specs = {spec.suffix: spec for spec in topic_specs(s)}
    assert specs["events"].partitions == 12
    assert specs["events"].retention_ms == 3_600_000
    assert specs["audit"].retention_ms == FOREVER
    assert specs["incidents"].cleanup_policy == "compact"
    assert specs["policies"].cleanup_policy == "compact"
    assert specs["policies"].retention_ms == FOREVER


@pytest.mark.parametrize(
    ("setting", "brokers", "expected"),
    [(0, 1, (1, 1)), (0, 3, (3, 2)), (0, 5, (3, 2)), (2, 3, (2, 1)), (3, 3, (3, 2))],
)
def test_replication_defaults_to_what_the_cluster_holds(
    setting: int, brokers: int, expected: tuple[int, int]
) -> None:
    assert replication_for(Settings.from_env({}, replication_factor=setting), brokers) == expected


def test_replication_beyond_the_cluster_is_refused() -> None:
    with pytest.raises(ValueError, match="needs 3 brokers, the cluster has 1"):
        replication_for(Settings.from_env({}, replication_factor=3), 1)
