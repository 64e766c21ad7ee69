from __future__ import annotations

import pytest

from streams.times import format_instant, parse_instant

NOW = 1_795_000_000_000_000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        ("2h", NOW - 7_200_000_000),
        ("7d", NOW - 7 * 86_400_000_000),
        ("1795000000", NOW),
        ("1795000000000", NOW),
        ("1795000000000000", NOW),
        ("2026-11-25", 1_795_564_800_000_000),
        ("2026-11-25T01:00:00Z", 1_795_568_400_000_000),
        ("2026-11-25T02:00:00+01:00", 1_795_568_400_000_000),
    ],
)
def test_parse_instant(text: str, expected: int) -> None:
    assert parse_instant(text, NOW) == expected


def test_a_bad_instant_says_what_is_accepted() -> None:
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_instant("yesterday-ish", NOW)


def test_format_round_trips_to_the_millisecond() -> None:
    assert parse_instant(format_instant(NOW).replace(" ", "T") + "Z", NOW) == NOW
