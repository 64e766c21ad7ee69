"""Ground truth of a simulation, computed from the events actually emitted (not from the plan).

A KILL can stop a session anywhere, so the truth is folded from the StepEvents the client
produced, exactly as a consumer of ``gov.events`` sees them. The plan only adds what events do
not carry: which PII values were planted (so each occurrence can be located) and whether the
session was planned as a budget breaker.

Definitions (a worker that agrees with these agrees with the truth; cost, outcome, retry and
activity end live in :mod:`streams.pipeline.session_facts`, shared with the incident timeline):

- cost: over LLM and tool calls, the reported ``cost_micros`` when present, else the LLM call
  priced with :meth:`PriceTable.price_micros`; an LLM call whose model has no price is counted
  in ``unpriced_calls`` and adds 0; a tool call without a reported cost adds 0.
- outcome: the SESSION_END status (OK, ERROR, KILLED); TIMEOUT when there is no SESSION_END.
- retry: a call right after a failed call (no call in between) of the same kind and the same
  model (LLM) or the same ``tool_call_id`` (tool).
- failed call: an LLM or tool call whose status is neither OK nor UNKNOWN, as the worker's fold
  has it; a tool call the client's PII guard refused (BLOCKED, error type ``PiiBlocked``) is one,
  and counts in ``tool_calls`` like any tool call (and in ``blocked_tool_calls``).
- failure step: the last failed call.
- ``errors_by_type``: failed calls by error type (their status when they have none) and ERROR
  events by error type (UNKNOWN without one).
- ``last_event_time_us``: the latest ``start_time_us + duration_us`` of the session's events
  (SESSION_END counts at its ``start_time_us``: the client stamps it with the session's end and
  gives it the whole session as duration).
- ``duration_us``: end - start, or last event time - start when there is no SESSION_END.
- ``steps_by_kind``: events by kind (``session.output`` is an EVALUATION named ``output``).
- pii: one entry per planted value per content segment it appears in; ``hop`` is CONTEXT for
  USER and SYSTEM segments, else the segment role (TOOL_ARGUMENTS, TOOL_RESULT, OUTPUT).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from streams.pipeline.pricing import PriceTable
from streams.pipeline.session_facts import (
    CALL_KINDS,
    Event,
    activity_end_us,
    call_cost_micros,
    call_name,
    is_retry,
    slowest_call,
)
from streams.pipeline.session_facts import (  # re-exported: the driver and the CLI read these here
    OUTCOMES as OUTCOMES,
)
from streams.pipeline.session_facts import (
    session_outcome as session_outcome,
)
from streams.simulator.catalog import DENIED_TOOLS
from streams.simulator.params import FleetParams
from streams.simulator.pii import PiiValue
from streams.simulator.plan import BLOCKED

#: call statuses that are not a failure (the worker's fold: streams.pipeline.accounting)
NOT_FAILED = ("OK", "UNKNOWN")

HOP_OF_ROLE = {
    "USER": "CONTEXT",
    "SYSTEM": "CONTEXT",
    "TOOL_ARGUMENTS": "TOOL_ARGUMENTS",
    "TOOL_RESULT": "TOOL_RESULT",
    "OUTPUT": "OUTPUT",
    "ASSISTANT": "ASSISTANT",
}


def session_truth(
    events: Sequence[Event],
    prices: PriceTable,
    *,
    planted: Iterable[PiiValue] = (),
    budget_breaker: bool = False,
) -> dict[str, Any]:
    """The truth of one session from its events (any order; they are sorted by ``seq``)."""
    if not events:
        raise ValueError("a session without events has no truth")
    ordered = sorted(events, key=lambda e: int(e["seq"]))
    first = ordered[0]
    starts = [e for e in ordered if e["kind"] == "SESSION_START"]
    ends = [e for e in ordered if e["kind"] == "SESSION_END"]
    start_us = int((starts[0] if starts else first)["start_time_us"])
    end_us = int(ends[-1]["start_time_us"]) if ends else None
    last_us = max(activity_end_us(e) for e in ordered)

    calls = [e for e in ordered if e["kind"] in CALL_KINDS]
    llm = [e for e in calls if e["kind"] == "LLM_CALL"]
    cost = unpriced = 0
    cost_by_model: Counter[str] = Counter()
    tokens_by_model: dict[str, Counter[str]] = {}
    for call in calls:
        micros = call_cost_micros(call, prices)
        if micros is None:
            unpriced += 1
            micros = 0
        cost += micros
        if call["kind"] == "LLM_CALL":
            model = str(call.get("model"))
            cost_by_model[model] += micros
            tokens = tokens_by_model.setdefault(model, Counter())
            for name in ("input_tokens", "output_tokens", "cache_read_input_tokens"):
                tokens[name] += int(call.get(name) or 0)

    failures = [c for c in calls if _failed(c)]
    failure = failures[-1] if failures else None
    slowest = slowest_call(calls)
    tools = [str(c.get("tool_name")) for c in calls if c["kind"] == "TOOL_CALL"]
    return {
        "session_id": first["session_id"],
        "tenant_id": first["tenant_id"],
        "agent_id": first["agent_id"],
        "agent_version": first.get("agent_version"),
        "category": first.get("category"),
        "prompt_version": first.get("prompt_version"),
        "model_version": first.get("model_version"),
        "tool_schema_version": first.get("tool_schema_version"),
        "start_time_us": start_us,
        "end_time_us": end_us,
        "last_event_time_us": last_us,
        "duration_us": (end_us if end_us is not None else last_us) - start_us,
        "outcome": session_outcome(ordered),
        "error_type": ends[-1].get("error_type") if ends else None,
        "failure_step_kind": failure["kind"] if failure else None,
        "failure_tool": failure.get("tool_name") if failure else None,
        "cost_micros": cost,
        "unpriced_calls": unpriced,
        "input_tokens": sum(int(c.get("input_tokens") or 0) for c in llm),
        "output_tokens": sum(int(c.get("output_tokens") or 0) for c in llm),
        "cache_read_input_tokens": sum(int(c.get("cache_read_input_tokens") or 0) for c in llm),
        "steps_by_kind": dict(Counter(str(e["kind"]) for e in ordered)),
        "tool_calls": dict(Counter(tools)),
        "blocked_tool_calls": sum(
            c["kind"] == "TOOL_CALL" and c.get("status") == BLOCKED for c in calls
        ),
        "errors_by_type": _errors_by_type(ordered),
        "retries": sum(is_retry(previous, call) for previous, call in pairwise(calls)),
        "llm_calls": len(llm),
        "max_context_tokens": max((int(c.get("input_tokens") or 0) for c in llm), default=0),
        "tokens_by_model": {m: dict(t) for m, t in tokens_by_model.items()},
        "cost_by_model": dict(cost_by_model),
        "evaluations": {
            str(e["evaluation_name"]): float(e["evaluation_score"])
            for e in ordered
            if e["kind"] == "EVALUATION" and e.get("evaluation_score") is not None
        },
        "slowest_step": None
        if slowest is None
        else {
            "seq": int(slowest["seq"]),
            "kind": slowest["kind"],
            "name": call_name(slowest),
            "duration_us": int(slowest.get("duration_us") or 0),
        },
        "budget_breaker": budget_breaker,
        "denied_tools": sorted({t for t in tools if t in DENIED_TOOLS}),
        "events": len(ordered),
        "pii": _pii_occurrences(ordered, planted),
    }


def _failed(call: Event) -> bool:
    return str(call.get("status") or "OK") not in NOT_FAILED


def _errors_by_type(events: Sequence[Event]) -> dict[str, int]:
    errors: Counter[str] = Counter()
    for event in events:
        if event["kind"] in CALL_KINDS and _failed(event):
            errors[str(event.get("error_type") or event["status"])] += 1
        elif event["kind"] == "ERROR":
            errors[str(event.get("error_type") or "UNKNOWN")] += 1
    return dict(errors)


def _pii_occurrences(events: Sequence[Event], planted: Iterable[PiiValue]) -> list[dict[str, Any]]:
    values = list(planted)
    found = []
    for event in events:
        for segment in event.get("content") or ():
            for value in values:
                if value.value in segment["text"]:
                    role = str(segment["role"])
                    found.append(
                        {
                            "value": value.value,
                            "entity_type": value.entity_type,
                            "hop": HOP_OF_ROLE.get(role, role),
                            "tool_name": event.get("tool_name"),
                            "seq": int(event["seq"]),
                            "event_id": event["event_id"],
                        }
                    )
    return found


# --- summaries and files -------------------------------------------------------------------


@dataclass(frozen=True)
class TruthSummary:
    """What a run amounted to, for the CLI's table and quick checks."""

    sessions: int = 0
    by_outcome: Mapping[str, int] = field(default_factory=dict)
    events: int = 0
    cost_micros: int = 0
    unpriced_calls: int = 0
    llm_calls: int = 0
    tool_calls: int = 0
    #: tool calls the client's PII guard refused (among ``tool_calls``)
    blocked_tool_calls: int = 0
    retries: int = 0
    #: distinct PII values present in the events, and their occurrences
    pii_values: int = 0
    pii_occurrences: int = 0
    budget_breakers: int = 0
    denied_tool_sessions: int = 0

    @classmethod
    def of(cls, sessions: Iterable[Mapping[str, Any]]) -> TruthSummary:
        tally = _Tally()
        for session in sessions:
            tally.add(session)
        return tally.summary()


class _Tally:
    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.totals: Counter[str] = Counter()
        self.pii: set[str] = set()

    def add(self, s: Mapping[str, Any]) -> None:
        self.outcomes[str(s["outcome"])] += 1
        self.totals.update(
            sessions=1,
            events=int(s["events"]),
            cost_micros=int(s["cost_micros"]),
            unpriced_calls=int(s["unpriced_calls"]),
            llm_calls=int(s["llm_calls"]),
            tool_calls=sum(s["tool_calls"].values()),
            blocked_tool_calls=int(s.get("blocked_tool_calls", 0)),
            retries=int(s["retries"]),
            pii_occurrences=len(s["pii"]),
            budget_breakers=int(bool(s["budget_breaker"])),
            denied_tool_sessions=int(bool(s["denied_tools"])),
        )
        self.pii.update(p["value"] for p in s["pii"])

    def summary(self) -> TruthSummary:
        return TruthSummary(
            by_outcome={o: self.outcomes[o] for o in OUTCOMES},
            pii_values=len(self.pii),
            **{name: self.totals[name] for name in _TOTALS},
        )


_TOTALS = (
    "sessions",
    "events",
    "cost_micros",
    "unpriced_calls",
    "llm_calls",
    "tool_calls",
    "blocked_tool_calls",
    "retries",
    "pii_occurrences",
    "budget_breakers",
    "denied_tool_sessions",
)


class TruthWriter:
    """Folds sessions into truth as they finish; writes JSON Lines when given a path.

    The first line is ``{"type": "params", ...}`` (the fleet parameters and the price table
    version), then one ``{"type": "session", ...}`` per session, in the order they finished.
    """

    def __init__(self, path: Path | None, params: FleetParams, prices: PriceTable) -> None:
        self.path = path
        self.prices = prices
        self._tally = _Tally()
        self._file: TextIO | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("w", encoding="utf-8")
            header = {"type": "params", **params.to_json(), "prices_version": prices.version}
            self._file.write(json.dumps(header) + "\n")

    def add(
        self,
        events: Sequence[Event],
        *,
        planted: Iterable[PiiValue] = (),
        budget_breaker: bool = False,
    ) -> dict[str, Any]:
        truth = session_truth(events, self.prices, planted=planted, budget_breaker=budget_breaker)
        self._tally.add(truth)
        if self._file is not None:
            self._file.write(json.dumps({"type": "session", **truth}) + "\n")
        return truth

    @property
    def summary(self) -> TruthSummary:
        return self._tally.summary()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> TruthWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True)
class Truth:
    """A ground-truth file, read back."""

    params: Mapping[str, Any]
    sessions: Sequence[Mapping[str, Any]]

    @property
    def summary(self) -> TruthSummary:
        return TruthSummary.of(self.sessions)

    def by_id(self) -> dict[str, Mapping[str, Any]]:
        return {str(s["session_id"]): s for s in self.sessions}

    @property
    def fleet_params(self) -> FleetParams:
        return FleetParams.from_json(self.params)


def load_truth(path: Path | str) -> Truth:
    params: dict[str, Any] = {}
    sessions = []
    with Path(path).open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            kind = record.pop("type", None)
            if kind == "params":
                params = record
            elif kind == "session":
                sessions.append(record)
            else:
                raise ValueError(f"{path}:{number}: unknown record type {kind!r}")
    return Truth(params, sessions)
