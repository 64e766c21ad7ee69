"""Topic creation and description against the real broker."""

from __future__ import annotations

from streams.settings import Settings
from streams.topics import admin_client, describe_topics, ensure_topics, topic_specs


def test_ensure_topics_is_idempotent_and_the_broker_reports_the_specs(
    settings: Settings,
) -> None:
    names = [spec.name(settings) for spec in topic_specs(settings)]
    assert sorted(ensure_topics(settings)) == sorted(names)
    assert ensure_topics(settings) == []
    infos = {i.name: i for i in describe_topics(admin_client(settings), names)}
    for spec in topic_specs(settings):
        info = infos[spec.name(settings)]
        assert info.exists
        assert info.partitions == spec.partitions
        assert info.replication == 1
        assert info.retention_ms == str(spec.retention_ms)
        assert info.cleanup_policy == spec.cleanup_policy


def test_missing_topics_are_reported_as_missing(settings: Settings) -> None:
    [info] = describe_topics(admin_client(settings), [settings.topic("events")])
    assert not info.exists
