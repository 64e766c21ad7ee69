"""A decision's expiry counts from the wall clock when it is issued, not from event time."""

from __future__ import annotations

from streams.agents.accounting import DEFAULT_DECISION_TTL_S, decision_expiry

NOW_US = 1_800_000_000_000_000
DAY_US = 86_400_000_000


def test_a_kill_for_a_week_old_session_is_in_force_a_day_from_now() -> None:
    week_ago = NOW_US - 7 * DAY_US
    assert decision_expiry(week_ago, None, NOW_US) == NOW_US + DEFAULT_DECISION_TTL_S * 10**6


def test_a_windowed_decision_lasts_its_window_from_now() -> None:
    assert decision_expiry(NOW_US - DAY_US, 60.0, NOW_US) == NOW_US + 60_000_000


def test_an_event_time_ahead_of_the_clock_is_the_start() -> None:
    ahead = NOW_US + 5_000_000
    assert decision_expiry(ahead, 60.0, NOW_US) == ahead + 60_000_000
