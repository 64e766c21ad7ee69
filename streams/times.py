"""Instants on the command line: ``--from``/``--to``/``--since`` for replay, backtest, drift
and incidents all go through :func:`parse_instant`, so every command reads time the same way."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from streams.pipeline.policy import duration_s


def now_us() -> int:
    return time.time_ns() // 1000


def parse_instant(text: str, now: int | None = None) -> int:
    """An instant in microseconds since the epoch.

    Accepts ``now``; a duration ago (``90s``, ``15m``, ``2h``, ``7d``); ISO-8601 (``2026-11-25``,
    ``2026-11-25T10:00``, with ``Z`` or an offset; no offset means UTC); or a number of seconds,
    milliseconds or microseconds since the epoch (told apart by magnitude).
    """
    raw = text.strip()
    current = now_us() if now is None else now
    if raw == "now":
        return current
    if raw.isdigit():
        value = int(raw)
        if value < 10**11:  # seconds until the year 5138
            return value * 1_000_000
        if value < 10**14:
            return value * 1000
        return value
    try:
        return current - round(duration_s(raw) * 1_000_000)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use now, a duration ago (2h, 7d), ISO-8601 "
            "(2026-11-25T10:00Z) or epoch seconds/ms/us"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return round(parsed.timestamp() * 1_000_000)


def format_instant(time_us: int) -> str:
    """UTC, to the millisecond: how every table prints an instant."""
    return datetime.fromtimestamp(time_us / 1_000_000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
