"""The PII stage's lag (governor_pii_lag, governor_pii_delay_seconds) and its batch scan."""

from __future__ import annotations

from typing import Any

from streams.agents.pii import LagTracker, pii_lag, scan_events
from streams.metrics import worker_metrics
from streams.pii.scanner import PiiScanner

NOW_US = 1_764_000_000_000_000


def _gauges(metrics_text: str, name: str) -> dict[str, float]:
    values = {}
    for line in metrics_text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            values[key] = float(value)
    return values


def test_lag_is_the_end_against_the_next_offset_to_scan() -> None:
    lag = pii_lag({0: 100, 1: 50}, {0: 100, 1: 80, 2: 10}, NOW_US - 30_000_000, NOW_US)
    # partition 2 was never scanned since it was assigned: its position is not known here
    assert lag.behind == {0: 0, 1: 30}
    assert lag.delay_s == 30.0
    caught_up = pii_lag({0: 100}, {0: 100}, NOW_US - 900_000_000, NOW_US)
    assert caught_up.behind == {0: 0}
    assert caught_up.delay_s == 0.0


def test_the_tracker_follows_batches_and_drops_revoked_partitions() -> None:
    tracker = LagTracker()
    tracker.scanned([(0, 41, NOW_US - 5_000_000), (1, 7, None), (0, 40, NOW_US - 9_000_000)])
    assert tracker.next_offsets == {0: 42, 1: 8}
    assert tracker.newest_scanned_us == NOW_US - 5_000_000
    metrics, shown = worker_metrics(), set[int]()
    tracker.publish(pii_lag(tracker.next_offsets, {0: 50, 1: 8}, NOW_US - 5_000_000, NOW_US),
                    metrics, shown)  # fmt: skip
    text = metrics.exposition().decode()
    assert _gauges(text, "governor_pii_lag{") == {
        'governor_pii_lag{partition="0"}': 8.0,
        'governor_pii_lag{partition="1"}': 0.0,
    }
    assert _gauges(text, "governor_pii_delay_seconds") == {"governor_pii_delay_seconds": 5.0}
    # partition 0 revoked (another worker has it now): its series goes, its position too
    tracker.publish(pii_lag(tracker.next_offsets, {1: 8}, None, NOW_US), metrics, shown)
    text = metrics.exposition().decode()
    assert _gauges(text, "governor_pii_lag{") == {'governor_pii_lag{partition="1"}': 0.0}
    assert 0 not in tracker.next_offsets
    assert _gauges(text, "governor_pii_delay_seconds") == {"governor_pii_delay_seconds": 0.0}


def test_a_batch_is_scanned_in_one_pass_and_matches_go_to_their_segments() -> None:
    events: list[dict[str, Any]] = [
        {"content": [{"role": "USER", "text": "mail jane@example.com"}]},
        {"content": [{"role": "UNKNOWN", "text": "jane@example.com"}]},  # no hop: not scanned
        {"content": []},
        {
            "content": [
                {"role": "TOOL_ARGUMENTS", "text": '{"q": "weather"}'},
                {"role": "TOOL_RESULT", "text": "card 4111 1111 1111 1111, mail bob@example.org"},
            ]
        },
    ]
    scanner = PiiScanner()
    found = scan_events(events, scanner)
    assert [[(i, [m.entity_type for m in ms]) for i, ms in f] for f in found] == [
        [(0, ["EMAIL_ADDRESS"])],
        [],
        [],
        [(1, ["CREDIT_CARD", "EMAIL_ADDRESS"])],
    ]
    assert scanner.stats.texts == 3
