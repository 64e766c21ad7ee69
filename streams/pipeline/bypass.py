"""A step a client let through in breach of a policy (pure): the worker's side of the client
checks (:mod:`streams.client.checks`).

The worker stays the authority: it decides every event as if no client had checked anything.
When its decision refuses a step of a kind a client with checks refuses before the step runs
(the step ran, it was not BLOCKED, and the worker KILLs or PAUSEs for it), the step bypassed the
client's checks: an old policy version, checks switched off, a modified client, or a call whose
actual usage exceeded the estimate it was allowed on. The worker then also audits a
CLIENT_BYPASS record naming the client's reported policy version beside its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from streams.pipeline.accounting import STEP_KINDS
from streams.pipeline.policy import Outcome, PolicySet

#: what the client puts on every event it emits with checks on (the attributes map)
POLICY_VERSION_ATTR = "governor.policy_version"
POLICY_SOURCE_ATTR = "governor.policy_source"
CLIENT_ID_ATTR = "governor.client_id"

#: the actions that refuse a step that has not run yet
REFUSING = ("KILL", "PAUSE")
#: the session-scope kinds a client with checks refuses before the step runs
CLIENT_KINDS = ("budget", "tools", "loop", "max_duration", "unpriced_model", "step_rate")


def policy_label(policies: PolicySet) -> str:
    """``v<N>:<digest>``: how a client names the set it enforced, and the worker its own."""
    return f"v{policies.version}:{policies.digest}"


@dataclass(frozen=True)
class ClientBypass:
    """A step that ran although the client should have refused it: what a CLIENT_BYPASS audit
    record says beside the worker's own decision."""

    policy_id: str
    action: str
    event_id: str
    session_id: str
    #: ``v<N>:<digest>`` the event says its client enforced; None: no client-side checks
    client_policy_version: str | None
    client_policy_source: str | None
    client_id: str | None
    #: ``v<N>:<digest>`` of the worker's set
    worker_policy_version: str
    #: none (no checks), stale (another set), same (a modified client, or an estimate the
    #: actual usage exceeded)
    why: str


def client_bypass(
    policies: PolicySet, event: Mapping[str, Any], outcome: Outcome
) -> ClientBypass | None:
    """The bypass ``outcome`` (decided by the worker on ``event``) reveals, if any: the step ran
    (not BLOCKED), the outcome refuses (KILL or PAUSE) and its policy is of a kind the client
    checks before a step."""
    if event.get("status") == "BLOCKED" or outcome.action not in REFUSING:
        return None
    if event.get("kind") not in STEP_KINDS:
        return None
    policy = next((p for p in policies.policies if p.id == outcome.policy_id), None)
    if policy is None or policy.kind not in CLIENT_KINDS:
        return None
    if policy.kind in ("budget", "step_rate") and policy.scope != "session":
        return None
    attributes = event.get("attributes") or {}
    reported = attributes.get(POLICY_VERSION_ATTR)
    worker = policy_label(policies)
    why = "none" if reported is None else ("same" if reported == worker else "stale")
    return ClientBypass(
        policy_id=outcome.policy_id,
        action=outcome.action,
        event_id=str(event.get("event_id") or ""),
        session_id=str(event.get("session_id") or ""),
        client_policy_version=reported,
        client_policy_source=attributes.get(POLICY_SOURCE_ATTR),
        client_id=attributes.get(CLIENT_ID_ATTR),
        worker_policy_version=worker,
        why=why,
    )


#: the PII hops a client with checks scans before a step of each kind runs
CLIENT_PII_HOPS = {"TOOL_CALL": ("TOOL_ARGUMENTS",), "LLM_CALL": ("CONTEXT", "TOOL_RESULT")}
#: the handlings that refuse a step before it runs
REFUSING_HANDLINGS = ("BLOCK", "KILL")


def pii_bypass(
    event: Mapping[str, Any], handling: str, hop: str, pii_version: int
) -> ClientBypass | None:
    """The bypass a PII finding reveals, if any: its handling refuses the step, the client
    scans that hop of that kind of step before it runs, and the step ran (not BLOCKED)."""
    if handling not in REFUSING_HANDLINGS or event.get("status") == "BLOCKED":
        return None
    if hop not in CLIENT_PII_HOPS.get(str(event.get("kind")), ()):
        return None
    attributes = event.get("attributes") or {}
    reported = attributes.get(POLICY_VERSION_ATTR)
    return ClientBypass(
        policy_id="pii",
        action=handling,
        event_id=str(event.get("event_id") or ""),
        session_id=str(event.get("session_id") or ""),
        client_policy_version=reported,
        client_policy_source=attributes.get(POLICY_SOURCE_ATTR),
        client_id=attributes.get(CLIENT_ID_ATTR),
        worker_policy_version=f"pii:v{pii_version}",
        # the PII rules are one file of the client's set: a client that checked them and let
        # the step through ran other rules, was modified, or its scan found less
        why="none" if reported is None else "checked",
    )


def bypass_details(bypass: ClientBypass) -> dict[str, str]:
    """A CLIENT_BYPASS audit record's details."""
    return {
        "policy_id": bypass.policy_id,
        "action": bypass.action,
        "event_id": bypass.event_id,
        "why": bypass.why,
        "client_policy_version": bypass.client_policy_version or "",
        "client_policy_source": bypass.client_policy_source or "",
        "client_id": bypass.client_id or "",
        "worker_policy_version": bypass.worker_policy_version,
    }
