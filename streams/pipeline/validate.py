"""Validation at ingest: a StepEvent that decodes but carries impossible values (pure, no I/O).

A bad record is refused before anything is folded, counted or mirrored: it can never change
totals, windows, the watermark, metrics or the read-model. The caller dead-letters it with the
reason (stage ``validate``) and goes on. Bounds are generous on purpose: they refuse what no
real agent produces (a negative cost, a billion-token call, a step of a month, a start time in
the year 9999) and keep integer sums of micro-USD and microseconds far from 64-bit overflow.

Stateless checks are here; the two that need a session's state (an event after its session
ended, an event id reused with another seq) are made by the engine with :class:`Rejection`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from streams.settings import Settings

#: per step. The largest legitimate ones are those of a resumed session, which continues
#: from the wall clock in milliseconds (about 1.8e12 now, see ``Governor.session(resume=)``);
#: a thousand times that is a bug
MAX_SEQ = 10**15
MAX_TOKENS = 1_000_000_000
#: one million USD in one step
MAX_COST_MICROS = 1_000_000_000_000
#: a step (or, on SESSION_END, a session) of more than 31 days
MAX_DURATION_US = 31 * 86_400 * 1_000_000
MAX_ID_CHARS = 512
TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_write_input_tokens",
    "reasoning_output_tokens",
)
ID_FIELDS = ("event_id", "session_id", "tenant_id", "agent_id")


@dataclass(frozen=True)
class Rejection:
    """Why a record was refused: ``reason`` is a short code (a metric label, a bounded set),
    ``detail`` says which field and value, for the dead letter's message."""

    reason: str
    detail: str


@dataclass(frozen=True)
class IngestBounds:
    """How far an event's start time may stray from its broker record time."""

    max_future_skew_us: int
    max_past_skew_us: int

    @classmethod
    def from_seconds(cls, future_s: float, past_s: float) -> IngestBounds:
        return cls(int(future_s * 1_000_000), int(past_s * 1_000_000))

    @classmethod
    def of(cls, settings: Settings) -> IngestBounds:
        """The bounds a worker is configured with (every reader of gov.events uses them)."""
        return cls.from_seconds(settings.max_event_future_skew_s, settings.max_event_past_skew_s)


def validate_event(
    event: Mapping[str, Any],
    key: bytes | None,
    record_time_us: int | None,
    bounds: IngestBounds,
) -> Rejection | None:
    """The first impossible thing about ``event`` (keyed ``key``, appended at
    ``record_time_us`` or None when the broker gave no time), or None when it is acceptable."""
    for name in ID_FIELDS:
        value = event.get(name)
        if not value:
            return Rejection("missing_id", f"{name} is empty")
        if len(value) > MAX_ID_CHARS:
            return Rejection("id_too_long", f"{name} has {len(value)} characters")
    if key is None:
        return Rejection("null_key", "the record has no key (the key must be the session id)")
    if key != event["session_id"].encode():
        return Rejection(
            "key_mismatch",
            f"record key {key[:80]!r} is not the session id {event['session_id'][:80]!r}",
        )
    if event.get("kind") in (None, "UNKNOWN"):
        return Rejection("unknown_kind", "kind is UNKNOWN (a symbol this reader does not know)")
    if event.get("status") in (None, "UNKNOWN"):
        return Rejection("unknown_status", "status is UNKNOWN (a symbol this reader does not know)")
    seq = event["seq"]
    if seq <= 0:
        return Rejection("seq_out_of_range", f"seq {seq} is not positive")
    if seq > MAX_SEQ:
        return Rejection("seq_out_of_range", f"seq {seq} exceeds {MAX_SEQ}")
    rejection = _time(event["start_time_us"], record_time_us, bounds)
    if rejection is not None:
        return rejection
    duration = event.get("duration_us") or 0
    if not 0 <= duration <= MAX_DURATION_US:
        return Rejection("duration_out_of_range", f"duration_us {duration} outside 0..31 days")
    for name in TOKEN_FIELDS:
        tokens = event.get(name)
        if tokens is not None and not 0 <= tokens <= MAX_TOKENS:
            return Rejection("tokens_out_of_range", f"{name} {tokens} outside 0..{MAX_TOKENS}")
    cost = event.get("cost_micros")
    if cost is not None and not 0 <= cost <= MAX_COST_MICROS:
        return Rejection("cost_out_of_range", f"cost_micros {cost} outside 0..{MAX_COST_MICROS}")
    score = event.get("evaluation_score")
    if score is not None and not math.isfinite(score):
        return Rejection("score_not_finite", f"evaluation_score is {score}")
    return None


def _time(start_us: int, record_time_us: int | None, bounds: IngestBounds) -> Rejection | None:
    if start_us <= 0:
        return Rejection("time_out_of_range", f"start_time_us {start_us} is not after 1970")
    if record_time_us is None or record_time_us <= 0:
        return None
    if start_us > record_time_us + bounds.max_future_skew_us:
        ahead_s = (start_us - record_time_us) / 1e6
        return Rejection(
            "time_in_future",
            f"start_time_us is {ahead_s:.0f}s after the record time "
            f"(allowed {bounds.max_future_skew_us / 1e6:.0f}s)",
        )
    if start_us < record_time_us - bounds.max_past_skew_us:
        behind_s = (record_time_us - start_us) / 1e6
        return Rejection(
            "time_too_old",
            f"start_time_us is {behind_s:.0f}s before the record time "
            f"(allowed {bounds.max_past_skew_us / 1e6:.0f}s)",
        )
    return None
