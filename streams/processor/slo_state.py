"""The SLO alerting state as one changelog record, so a restart decides as if none happened.

Good/bad counts per minute and hour, the alerts firing (and since when) and the last event-time
minute evaluated go into the same transaction as the alerts they produced: an alert and the
state that produced it are committed together or not at all. The scope stage keeps it, on the
scope partition of the fleet chain (the alerts are fleet-wide).
"""

from __future__ import annotations

import orjson

from streams.pipeline.slo import SloAlerting, SloCounts

#: the session stage's record of an older version (on its changelog partition 0): skipped
SLO_STATE_KEY = b"g|slo"


def encode_slo_state(alerting: SloAlerting) -> bytes:
    counts = alerting.counts
    return orjson.dumps(
        {
            "minutes": [[slo, t, c[0], c[1]] for (slo, t), c in counts.minutes.items()],
            "hours": [[slo, t, c[0], c[1]] for (slo, t), c in counts.hours.items()],
            "firing": sorted(alerting.firing),
            "firing_since": alerting.firing_since,
            "evaluated_minute": alerting.evaluated_minute,
        }
    )


def decode_slo_state(value: bytes) -> SloAlerting:
    data = orjson.loads(value)
    counts = SloCounts(
        minutes={(slo, t): [good, bad] for slo, t, good, bad in data["minutes"]},
        hours={(slo, t): [good, bad] for slo, t, good, bad in data["hours"]},
    )
    return SloAlerting(
        counts=counts,
        firing=set(data["firing"]),
        firing_since={k: int(v) for k, v in data["firing_since"].items()},
        evaluated_minute=int(data["evaluated_minute"]),
    )
