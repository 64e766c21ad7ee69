"""Lag arithmetic and the snapshot the readiness view reads (the broker side is in
tests/integration/test_lag_monitor.py)."""

from __future__ import annotations

from dataclasses import replace

from streams.metrics import worker_metrics
from streams.processor.lag import LagMonitor, LagSnapshot, PartitionLag, partition_lag
from streams.settings import Settings


def test_lag_counts_from_the_commit_or_the_log_start() -> None:
    assert partition_lag(0, committed=7, low=0, end=10).lag == 3
    assert partition_lag(0, committed=10, low=0, end=10).lag == 0
    # never committed: the whole log, from the low watermark (retention may have moved it)
    assert partition_lag(0, committed=None, low=4, end=10).lag == 6
    assert partition_lag(0, committed=None, low=0, end=0).lag == 0
    # a commit below the log start resumes at the start (auto.offset.reset=earliest)
    assert partition_lag(0, committed=2, low=4, end=10).lag == 6
    # a commit past the last stable offset (an open transaction on the topic) is no negative lag
    assert partition_lag(0, committed=12, low=0, end=10).lag == 0


def _snapshot() -> LagSnapshot:
    parts = (
        PartitionLag(0, 5, 0, 5, 0),
        PartitionLag(1, None, 0, 3, 3),
        PartitionLag(2, 1, 0, 10, 9),
    )
    return LagSnapshot("gov.events", "governor-accounting", parts, measured_at=1000.0)


def test_snapshot_totals_and_subsets() -> None:
    snapshot = _snapshot()
    assert snapshot.ok
    assert snapshot.lags == {0: 0, 1: 3, 2: 9}
    assert snapshot.total == 12
    assert snapshot.lag_of([1, 2]) == 12
    assert snapshot.lag_of([0, 7]) == 0
    assert snapshot.age_s(now=1004.5) == 4.5


def test_a_failed_attempt_keeps_the_last_numbers_and_is_not_ok() -> None:
    snapshot = replace(_snapshot(), error="no answer from 127.0.0.1:1 within 5 s", failed_at=1010.0)
    assert not snapshot.ok
    assert snapshot.measured
    assert snapshot.total == 12
    never = LagSnapshot("gov.events", "governor-accounting")
    assert not never.ok
    assert not never.measured
    assert never.age_s(now=5.0) is None
    assert never.total == 0


def test_snapshot_as_json() -> None:
    answer = _snapshot().as_dict()
    assert answer["total"] == 12
    assert answer["lags"] == {"0": 0, "1": 3, "2": 9}
    assert answer["partitions"][1] == {
        "partition": 1,
        "committed": None,
        "low": 0,
        "end": 3,
        "lag": 3,
    }
    assert answer["error"] is None
    assert LagSnapshot("t", "g").as_dict()["measured_at"] is None


def test_the_monitor_measures_the_accounting_group_on_the_source_topic() -> None:
    s = Settings(app_id="gw", topic_prefix="x.", events_topic="x.replay.42")
    monitor = LagMonitor(s, worker_metrics())
    assert (monitor.topic, monitor.group) == ("x.replay.42", "gw-accounting")
    assert monitor.snapshot.error is None
    assert not monitor.snapshot.ok
    assert not monitor.alive
    assert monitor.last_ok_monotonic == 0.0
