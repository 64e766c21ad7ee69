"""What one session's StepEvents say, by a single definition (pure, no I/O).

The simulator's ground truth (:mod:`streams.simulator.truth`) and the incident timeline
(:mod:`streams.query.timeline`) both read sessions through these functions, so a timeline's totals
agree with the truth by construction rather than by two implementations kept in step.

- cost: the reported ``cost_micros`` when present, else an LLM call priced with
  :meth:`PriceTable.price_micros` (None: nobody can price it); a tool call without a reported
  cost costs 0.
- outcome: the last SESSION_END's status (OK, ERROR, KILLED); TIMEOUT without a SESSION_END.
- retry: a call right after a failed call of the same kind and the same model (LLM) or the same
  ``tool_call_id`` (tool).
- activity end: ``start_time_us + duration_us``, except SESSION_END, which the client stamps with
  the session's end as its start and the whole session as its duration: it ends at its start.
- slowest call: the LLM or tool call with the longest duration (the first of equals).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from streams.pipeline.pricing import PriceTable

Event = Mapping[str, Any]

OUTCOMES = ("OK", "ERROR", "TIMEOUT", "KILLED")
CALL_KINDS = ("LLM_CALL", "TOOL_CALL")


def session_outcome(events: Iterable[Event]) -> str:
    ends = [e for e in events if e["kind"] == "SESSION_END"]
    if not ends:
        return "TIMEOUT"
    status = str(ends[-1]["status"])
    return status if status in OUTCOMES else "ERROR"


def is_retry(previous: Event | None, call: Event) -> bool:
    """Whether ``call`` repeats ``previous`` (the call before it) after it failed."""
    if previous is None or previous.get("status") == "OK" or previous["kind"] != call["kind"]:
        return False
    if call["kind"] == "TOOL_CALL":
        return call.get("tool_call_id") is not None and (
            previous.get("tool_call_id") == call.get("tool_call_id")
        )
    return previous.get("model") == call.get("model")


def call_cost_micros(event: Event, prices: PriceTable) -> int | None:
    """What one LLM or tool call cost; None when it is an LLM call nobody can price."""
    if event.get("cost_micros") is not None:
        return int(event["cost_micros"])
    if event["kind"] != "LLM_CALL":
        return 0
    return prices.price_micros(
        event.get("model"),
        event.get("input_tokens"),
        event.get("output_tokens"),
        event.get("cache_read_input_tokens"),
        event.get("cache_write_input_tokens"),
    )


def activity_end_us(event: Event) -> int:
    """When the step ended (a SESSION_END ends at its start: see the module doc)."""
    start = int(event["start_time_us"])
    return start if event["kind"] == "SESSION_END" else start + int(event.get("duration_us") or 0)


def slowest_call(calls: Sequence[Event]) -> Event | None:
    """The call with the longest duration, the first of equals; None without calls."""
    return max(calls, key=lambda c: int(c.get("duration_us") or 0), default=None)


def call_name(event: Event) -> str | None:
    """What a call called: the tool of a tool call, the model of an LLM call."""
    name = event.get("tool_name") or event.get("model")
    return None if name is None else str(name)
