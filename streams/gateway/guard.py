"""What the gateway decides from the policies itself (pure: the scanner is passed in).

Everything else (decisions in force, session budgets, fleet reservations, the PII block on the
model's input, tool calls) is the Python client's own checks (:mod:`streams.client.checks`),
run by the gateway's :class:`~streams.client.Governor`. Here: which offered tools a tool policy
denies, the PII ``redact`` rules applied to the request before it is forwarded, and the hops a
blocked entity was found on (for the error the client sees).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from streams.gateway.protocol import Segment
from streams.pipeline.pii import HOP_OF_ROLE, PiiPolicy
from streams.pipeline.policy import PolicySet


class Found(Protocol):
    """A detector's match (``streams.pii.scanner.Match``)."""

    @property
    def entity_type(self) -> str: ...
    @property
    def start(self) -> int: ...
    @property
    def end(self) -> int: ...
    @property
    def score(self) -> float: ...


Scan = Callable[[str], Sequence[Found]]


@dataclass(frozen=True)
class ToolDenial:
    tool: str
    policy_id: str
    action: str
    reason: str


def denied_tool(policies: PolicySet, tenant: str, agent: str, tool: str) -> ToolDenial | None:
    """The first tool policy of this agent that does not permit ``tool`` (by name)."""
    for policy in policies.applicable(tenant, agent).get("tools", ()):
        if not policy.permits(tool):
            reason = f"tool {tool!r} is not allowed"
            return ToolDenial(tool, policy.id, policy.action.upper(), reason)
    return None


def _hop(segment: Segment) -> str | None:
    return HOP_OF_ROLE.get(segment.role)


def _tool_of(segment: Segment, hop: str) -> str | None:
    return segment.tool if hop in ("TOOL_ARGUMENTS", "TOOL_RESULT") else None


def redacts(policy: PiiPolicy | None) -> bool:
    """Whether any rule (or the default) redacts: only then is the request scanned for it."""
    if policy is None:
        return False
    return policy.default == "redact" or any(r.handling == "redact" for r in policy.rules)


@dataclass(frozen=True)
class Redaction:
    segment: Segment
    text: str
    entities: tuple[str, ...]


def redactions(policy: PiiPolicy, segments: Sequence[Segment], scan: Scan) -> list[Redaction]:
    """The segments whose findings the policy redacts at their hop, with the text to forward:
    each such entity replaced by ``<ENTITY_TYPE>``."""
    changed = []
    for segment in segments:
        hop = _hop(segment)
        if hop is None:
            continue
        tool = _tool_of(segment, hop)
        spans = [
            m
            for m in scan(segment.text)
            if m.score >= policy.min_score and policy.handling(m.entity_type, hop, tool) == "REDACT"
        ]
        if not spans:
            continue
        text = segment.text
        for match in sorted(spans, key=lambda m: m.start, reverse=True):
            text = f"{text[: match.start]}<{match.entity_type}>{text[match.end :]}"
        changed.append(Redaction(segment, text, tuple(sorted({m.entity_type for m in spans}))))
    return changed


def hops_of(
    segments: Sequence[Segment], entities: Sequence[str], found: Callable[[str], Sequence[str]]
) -> list[str]:
    """The hops (CONTEXT, TOOL_RESULT, ...) of the segments holding any of ``entities``."""
    wanted = set(entities)
    hops: set[str] = set()
    for segment in segments:
        hop = _hop(segment)
        if hop is not None and wanted & set(found(segment.text)):
            hops.add(hop)
    return sorted(hops)


def as_content(segments: Sequence[Segment]) -> list[tuple[str, str]]:
    return [(s.role, s.text) for s in segments]


def attributes(values: dict[str, Any]) -> dict[str, str]:
    """Step attributes are strings."""
    return {k: str(v) for k, v in values.items() if v is not None}
