"""The SLO alerting state as one changelog record, so a restart decides as if none happened.

Good/bad counts per minute and hour, the failed tool calls still waiting for their fallback,
the alerts firing (and since when) and the last event-time minute evaluated all go into the
same transaction as the alerts they produced: an alert and the state that produced it are
committed together or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from streams.pipeline.slo import FallbackTracker, SloCounts

#: changelog key of the record (on changelog partition 0: the alerts are fleet-wide)
SLO_STATE_KEY = b"g|slo"
SLO_STATE_PARTITION = 0


@dataclass
class SloState:
    counts: SloCounts = field(default_factory=SloCounts)
    firing: set[str] = field(default_factory=set)
    firing_since: dict[str, int] = field(default_factory=dict)
    evaluated_minute: int = 0
    #: session id -> failed tool awaiting its fallback (the FallbackTracker's pending map)
    pending_fallbacks: dict[str, str] = field(default_factory=dict)


def encode_slo_state(
    counts: SloCounts,
    firing: set[str],
    firing_since: dict[str, int],
    evaluated_minute: int,
    fallbacks: FallbackTracker | None,
) -> bytes:
    return orjson.dumps(
        {
            "minutes": [[slo, t, c[0], c[1]] for (slo, t), c in counts.minutes.items()],
            "hours": [[slo, t, c[0], c[1]] for (slo, t), c in counts.hours.items()],
            "firing": sorted(firing),
            "firing_since": firing_since,
            "evaluated_minute": evaluated_minute,
            "pending": fallbacks.pending if fallbacks is not None else {},
        }
    )


def decode_slo_state(value: bytes) -> SloState:
    data = orjson.loads(value)
    counts = SloCounts(
        minutes={(slo, t): [good, bad] for slo, t, good, bad in data["minutes"]},
        hours={(slo, t): [good, bad] for slo, t, good, bad in data["hours"]},
    )
    return SloState(
        counts=counts,
        firing=set(data["firing"]),
        firing_since={k: int(v) for k, v in data["firing_since"].items()},
        evaluated_minute=int(data["evaluated_minute"]),
        pending_fallbacks={k: str(v) for k, v in data["pending"].items()},
    )
