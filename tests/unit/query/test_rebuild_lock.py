"""The rebuild's lock and marker on a real (private) Redis, without Kafka: one process rebuilds,
the marker is only set by a rebuild Redis did not lose half-way, and the agents' check is one
EXISTS."""

from __future__ import annotations

import pytest
import redis

from streams.query import rebuild
from streams.query.rebuild import (
    READ_MODEL,
    RebuildInterrupted,
    RebuildResult,
    _guarded,
    _Hold,
    is_built,
    lock_key,
    marker,
    marker_key,
)

PREFIX = "t."


def result(records: int = 3) -> RebuildResult:
    return RebuildResult(READ_MODEL, "t.sessions", True, records, records, seconds=0.1)


def test_a_rebuild_sets_the_marker_and_drops_its_lock(client: redis.Redis) -> None:
    assert not is_built(client, PREFIX, READ_MODEL)
    seen: list[bytes | str | None] = []

    def build(hold: _Hold) -> RebuildResult:
        seen.append(client.get(lock_key(PREFIX, READ_MODEL)))
        return result()

    assert _guarded(client, PREFIX, READ_MODEL, "t.sessions", False, build) == result()
    assert seen[0] is not None  # held while building
    assert is_built(client, PREFIX, READ_MODEL)
    assert client.get(lock_key(PREFIX, READ_MODEL)) is None
    done = marker(client, PREFIX, READ_MODEL)
    assert done is not None
    assert done["records"] == 3


def test_a_lock_held_elsewhere_means_another_process_rebuilds(client: redis.Redis) -> None:
    client.set(lock_key(PREFIX, READ_MODEL), "someone-else", px=60_000)

    def build(hold: _Hold) -> RebuildResult:
        raise AssertionError("must not build")

    skipped = _guarded(client, PREFIX, READ_MODEL, "t.sessions", False, build)
    assert not skipped.rebuilt
    assert not is_built(client, PREFIX, READ_MODEL)
    # on demand (the CLI) it rebuilds anyway: idempotent, so two at once are harmless
    forced = _guarded(client, PREFIX, READ_MODEL, "t.sessions", True, lambda _: result())
    assert forced.rebuilt
    assert is_built(client, PREFIX, READ_MODEL)


def test_a_flush_during_the_rebuild_starts_it_over(client: redis.Redis) -> None:
    calls = []

    def build(hold: _Hold) -> RebuildResult:
        calls.append(1)
        if len(calls) == 1:
            client.flushall()  # Redis restarted empty half-way: the lock is gone too
        return result(len(calls))

    done = _guarded(client, PREFIX, READ_MODEL, "t.sessions", False, build)
    assert len(calls) == 2
    assert done.records == 2
    assert is_built(client, PREFIX, READ_MODEL)


def test_a_lock_lost_while_held_is_noticed(client: redis.Redis) -> None:
    calls = []

    def build(hold: _Hold) -> RebuildResult:
        calls.append(1)
        hold._at = 0.0  # due to be extended
        hold()
        assert client.pttl(lock_key(PREFIX, READ_MODEL)) > 50_000
        client.delete(lock_key(PREFIX, READ_MODEL))
        hold._at = 0.0
        hold()  # raises: the lock is not ours any more
        return result()

    with pytest.raises(RebuildInterrupted):
        _guarded(client, PREFIX, READ_MODEL, "t.sessions", True, build)
    assert len(calls) == rebuild.MAX_RESTARTS
    assert not is_built(client, PREFIX, READ_MODEL)


def test_a_failed_rebuild_releases_its_lock(client: redis.Redis) -> None:
    def build(hold: _Hold) -> RebuildResult:
        raise redis.ConnectionError("gone")

    with pytest.raises(redis.ConnectionError):
        _guarded(client, PREFIX, READ_MODEL, "t.sessions", False, build)
    assert client.get(lock_key(PREFIX, READ_MODEL)) is None
    assert client.get(marker_key(PREFIX, READ_MODEL)) is None
