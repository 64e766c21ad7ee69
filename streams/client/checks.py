"""The client's verdict before a step (pure, no I/O): the worker's own session-scope logic.

The client keeps its session's :class:`~streams.pipeline.accounting.SessionState` folded by the
worker's :func:`~streams.pipeline.accounting.fold` from the events it emits, priced with the
shipped price table. Before a step it folds the step *as it would be* (the tool with its
arguments; the LLM call with its input tokens and the requested maximum of output tokens) into a
projection of that state (:func:`scratch`) and asks the worker's
:func:`~streams.pipeline.policy.decide_session` what it would decide. Nothing is
re-implemented, so the verdict is the worker's on the same inputs
(``tests/unit/client/test_checks_equivalence.py`` checks it against the worker's path).

A session-scope outcome becomes a verdict by its action: KILL and PAUSE refuse the step (the
session must not take it), THROTTLE waits the policy's delay first, WARN lets it run and is
reported. The kinds evaluated are the ones that need no fleet-wide state: session budgets,
tools, loops, maximum duration, unpriced models and session step rates. PII: the client's guard
(``streams.client.pii``) scans with the worker's detector and :func:`pii_refusal` applies the
worker's rules per segment; :func:`client_bypass` is the worker's side (issue 13, item 5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from streams.pipeline.accounting import (
    STEP_KINDS,
    SessionState,
    count_step_minute,
    fold,
    steps_in_window,
)
from streams.pipeline.bypass import REFUSING, policy_label
from streams.pipeline.pii import HOP_OF_ROLE, PiiPolicy
from streams.pipeline.policy import Facts, Outcome, PolicySet, decide_session
from streams.pipeline.pricing import PriceTable

#: the SessionState fields that decide_session reads, or that fold reads to compute them (cost,
#: loop run, duration, step minutes): a projection onto these decides exactly like the whole
_DECIDING = (
    "status",
    "start_time_us",
    "end_time_us",
    "first_event_us",
    "last_event_us",
    "last_seq",
    "events",
    "cost_micros",
    "repeat_key",
    "repeat_count",
)


@dataclass(frozen=True)
class ClientPolicies:
    """The set a client enforces: the worker's accepted bundle (policies, prices, PII rules)."""

    policies: PolicySet
    prices: PriceTable
    pii: PiiPolicy | None
    #: the bundle's digest over every file; "" for a set built in code
    bundle_digest: str = ""
    #: where it came from: ``gov.policies``, ``cache`` (last good on disk) or ``local`` (the
    #: policies folder, unsigned: before any worker published one)
    source: str = "local"

    @property
    def version(self) -> int:
        return self.policies.version

    @property
    def label(self) -> str:
        """``v<version>:<policy digest>``, what the client reports on its events."""
        return policy_label(self.policies)


@dataclass(frozen=True)
class Verdict:
    """What the policies ask of the next step."""

    #: the outcome that refuses the step (KILL or PAUSE), if any
    refused: Outcome | None = None
    #: THROTTLE outcomes: wait the longest delay, then run
    throttles: tuple[Outcome, ...] = ()
    #: WARN outcomes: run, and report
    warnings: tuple[Outcome, ...] = ()

    @property
    def delay_s(self) -> float:
        delays = [float(o.parameters.get("delay_ms", "0")) for o in self.throttles]
        return max(delays, default=0.0) / 1000


ALLOW = Verdict()


def observe(
    state: SessionState, event: Mapping[str, Any], prices: PriceTable, policy_version: int = 0
) -> None:
    """Apply an emitted event to the client's state as the worker will: fold, then count the
    step in its minute (the worker's aggregation does that before it decides)."""
    delta = fold(state, dict(event), prices, policy_version)
    if delta is not None and delta.kind in STEP_KINDS:
        count_step_minute(state, delta.event_time_us)


def scratch(state: SessionState, into: SessionState | None = None) -> SessionState:
    """A projection of ``state`` onto what deciding its session-scope policies needs: folding a
    step into it changes nothing of ``state`` and gives the same outcomes as the whole state
    (cheaper than a copy: the hot path runs this before every step).

    ``into``, an earlier projection of the same session, is reset and reused: what fold left in
    its other fields (counters by tool and model) is never read by the decision."""
    trial = into or SessionState(state.session_id, state.tenant_id, state.agent_id)
    for name in _DECIDING:
        setattr(trial, name, getattr(state, name))
    trial.step_minutes = dict(state.step_minutes)
    return trial


def _zero(*_args: Any) -> int:
    return 0


def outcomes_if_run(
    policies: PolicySet,
    prices: PriceTable,
    state: SessionState,
    step: Mapping[str, Any],
    trial: SessionState | None = None,
) -> list[Outcome]:
    """The session-scope outcomes the worker would decide if ``step`` (a StepEvent as it would
    be emitted after running) were applied to ``state``: its own fold and decide_session.
    ``trial``: a projection to reuse (see :func:`scratch`)."""
    if not policies.policies or state.ended:
        return []
    if not policies.applicable(state.tenant_id, state.agent_id):
        return []
    trial = scratch(state, trial)
    delta = fold(trial, dict(step), prices, policies.version)
    if delta is None:
        return []
    now = delta.event_time_us
    if delta.kind in STEP_KINDS:
        count_step_minute(trial, now)

    def steps(scope: str, scope_id: str, window_s: float) -> int:
        if scope != "session" or scope_id != trial.session_id:
            return 0
        return steps_in_window(trial, now, window_s)

    facts = Facts(spend=_zero, active=_zero, steps=steps, tool_failures=_zero)
    return decide_session(policies, trial, delta, facts)


def verdict_of(outcomes: Sequence[Outcome]) -> Verdict:
    """Refuse on the first KILL (else PAUSE), throttle on THROTTLE, warn on WARN."""
    if not outcomes:
        return ALLOW
    refusing = [o for o in outcomes if o.action in REFUSING]
    refused = next((o for o in refusing if o.action == "KILL"), refusing[0] if refusing else None)
    return Verdict(
        refused=refused,
        throttles=tuple(o for o in outcomes if o.action == "THROTTLE"),
        warnings=tuple(o for o in outcomes if o.action == "WARN"),
    )


def verdict(
    client: ClientPolicies,
    state: SessionState,
    step: Mapping[str, Any],
    trial: SessionState | None = None,
) -> Verdict:
    """The verdict on ``step`` for the session in ``state`` under ``client``'s set."""
    return verdict_of(outcomes_if_run(client.policies, client.prices, state, step, trial))


def cost_micros(client: ClientPolicies, step: Mapping[str, Any]) -> int:
    """A step's cost as the worker counts it: the reported cost, else priced from its tokens
    with the shipped table (0 for an unpriced model: flagged by its own policy)."""
    reported = step.get("cost_micros")
    if reported is not None:
        return int(reported)
    if step.get("kind") != "LLM_CALL":
        return 0
    priced = client.prices.price_micros(
        step.get("model"),
        step.get("input_tokens"),
        step.get("output_tokens"),
        step.get("cache_read_input_tokens"),
        step.get("cache_write_input_tokens"),
    )
    return priced or 0


def estimated_input_tokens(texts: Sequence[str]) -> int:
    """A conservative token estimate of prompt texts when the caller gives none: a token is
    about four characters of English; rounding up and one per text keeps it an over-estimate
    for short texts."""
    return sum(len(t) // 3 + 1 for t in texts)


#: the content roles a step sends where it goes, by step kind: what the PII rules check first
INPUT_ROLES = {"TOOL_CALL": ("TOOL_ARGUMENTS",), "LLM_CALL": ("SYSTEM", "USER", "TOOL_RESULT")}


def pii_refusal(
    policy: PiiPolicy | None,
    kind: str,
    tool: str | None,
    found_by_role: Sequence[tuple[str, Sequence[str]]],
) -> list[str]:
    """Entity types found in a step's input (``(role, entity types)`` per content segment)
    whose handling stops the step before it runs: BLOCK, and KILL (the worker kills the session
    for it anyway). Each segment's hop and tool are the worker's (``pipeline.pii.findings``)."""
    if policy is None:
        return []
    refused: set[str] = set()
    for role, entities in found_by_role:
        hop = HOP_OF_ROLE.get(role)
        if hop is None or role not in INPUT_ROLES.get(kind, ()):
            continue
        segment_tool = tool if hop in ("TOOL_ARGUMENTS", "TOOL_RESULT") else None
        refused.update(
            e for e in entities if policy.handling(e, hop, segment_tool) in ("BLOCK", "KILL")
        )
    return sorted(refused)


def pii_may_refuse(policy: PiiPolicy | None, kind: str) -> bool:
    """Whether any finding in a ``kind`` step's input can refuse it: only then is it scanned."""
    if policy is None:
        return False
    if policy.default in ("block", "kill"):
        return True
    hops = {HOP_OF_ROLE[r] for r in INPUT_ROLES.get(kind, ())}
    return any(r.handling in ("block", "kill") and hops & set(r.hops) for r in policy.rules)
