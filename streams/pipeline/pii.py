"""PII handling without ever keeping the value (pure, no I/O).

A finding carries the entity type, the hop (where the text was: model context, a tool's
arguments, a tool's result, the final output), the handling the policy chose and a keyed
fingerprint (HMAC-SHA256 of the normalised value), so one value can be followed across hops and
sessions while the value itself is stored nowhere.
"""

from __future__ import annotations

import fnmatch
import hmac
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator

from streams.pipeline.policy import FILE_MODEL_CONFIG, Version

HOPS = ("CONTEXT", "TOOL_ARGUMENTS", "TOOL_RESULT", "OUTPUT")
HANDLINGS = ("ALLOW", "LOG", "REDACT", "BLOCK", "KILL")
#: where a content segment sits, as a hop; model output (ASSISTANT) leaves the model like OUTPUT
HOP_OF_ROLE = {
    "SYSTEM": "CONTEXT",
    "USER": "CONTEXT",
    "TOOL_ARGUMENTS": "TOOL_ARGUMENTS",
    "TOOL_RESULT": "TOOL_RESULT",
    "ASSISTANT": "OUTPUT",
    "OUTPUT": "OUTPUT",
}
FINDING_NAMESPACE = uuid.UUID("5d0e7f3c-94a1-5c2b-b3e6-0f4a8d2c1b90")
_NON_DIGITS = re.compile(r"\D")

Handling = Literal["allow", "log", "redact", "block", "kill"]
Hop = Literal["CONTEXT", "TOOL_ARGUMENTS", "TOOL_RESULT", "OUTPUT"]


def normalise(entity_type: str, value: str) -> str:
    """The form two spellings of one value share (so their fingerprints match)."""
    if entity_type in ("PHONE_NUMBER", "CREDIT_CARD", "US_SSN"):
        return _NON_DIGITS.sub("", value)
    if entity_type == "IBAN_CODE":
        return value.replace(" ", "").upper()
    return value.strip().lower()


def fingerprint(key: bytes, entity_type: str, value: str) -> str:
    digest = hmac.new(key, f"{entity_type}\0{normalise(entity_type, value)}".encode(), "sha256")
    return digest.hexdigest()


def entity_types() -> tuple[str, ...]:
    """The entity types the scanner has recognizers for.

    The scanner finds nothing for any other name, without an error: a policy naming one would
    protect nothing, so the files are checked against these.
    """
    from streams.pii.scanner import NAMED, STRUCTURED  # the scanner imports this module

    return (*STRUCTURED, *NAMED)


class PiiRule(BaseModel):
    model_config = FILE_MODEL_CONFIG
    entities: list[str] = ["*"]
    hops: list[Hop] = ["CONTEXT", "TOOL_ARGUMENTS", "TOOL_RESULT", "OUTPUT"]
    tools: list[str] = ["*"]
    handling: Handling

    @field_validator("entities")
    @classmethod
    def _globs_match_entities(cls, globs: list[str]) -> list[str]:
        known = entity_types()
        dead = [g for g in globs if not any(fnmatch.fnmatchcase(e, g) for e in known)]
        if dead:
            raise ValueError(f"{', '.join(dead)} match no entity type (known: {', '.join(known)})")
        return globs

    def covers(self, entity_type: str, hop: str, tool: str | None) -> bool:
        return (
            any(fnmatch.fnmatchcase(entity_type, g) for g in self.entities)
            and hop in self.hops
            and (tool is None or any(fnmatch.fnmatchcase(tool, g) for g in self.tools))
        )


class PiiPolicy(BaseModel):
    """``policies/pii.yaml``: the first rule that covers a finding decides its handling."""

    model_config = FILE_MODEL_CONFIG
    version: Version
    entities: list[str]
    default: Handling = "log"
    #: presidio scores a phone number without context words 0.4; below this a match is noise
    min_score: Annotated[float, Field(ge=0, le=1)] = 0.3
    rules: list[PiiRule] = []

    @field_validator("entities")
    @classmethod
    def _known_entities(cls, entities: list[str]) -> list[str]:
        known = entity_types()
        unknown = [e for e in entities if e not in known]
        if unknown:
            raise ValueError(
                f"unknown entity types {', '.join(unknown)} (known: {', '.join(known)})"
            )
        return entities

    def handling(self, entity_type: str, hop: str, tool: str | None) -> str:
        for rule in self.rules:
            if rule.covers(entity_type, hop, tool):
                return rule.handling.upper()
        return self.default.upper()

    def blocks_tool_arguments(self) -> bool:
        """Whether the client must check tool arguments itself before a call runs."""
        return any(r.handling == "block" and "TOOL_ARGUMENTS" in r.hops for r in self.rules)


@dataclass(frozen=True)
class Match:
    """What a scanner found in one text: never leaves the scanning process with the value."""

    entity_type: str
    start: int
    end: int
    score: float
    recognizer: str


def findings(
    event: dict[str, Any],
    matches_by_segment: Iterable[tuple[int, list[Match]]],
    policy: PiiPolicy,
    key: bytes,
    key_id: str,
) -> list[dict[str, Any]]:
    """PiiFinding records for the matches in an event's content segments."""
    records = []
    content = event.get("content") or []
    tool = event.get("tool_name")
    for index, matches in matches_by_segment:
        segment = content[index]
        hop = HOP_OF_ROLE.get(segment["role"])
        if hop is None:
            continue
        segment_tool = tool if hop in ("TOOL_ARGUMENTS", "TOOL_RESULT") else None
        for match in matches:
            if match.score < policy.min_score:
                continue
            value = segment["text"][match.start : match.end]
            print_ = fingerprint(key, match.entity_type, value)
            records.append(
                {
                    "finding_id": str(
                        uuid.uuid5(FINDING_NAMESPACE, f"{event['event_id']}|{index}|{match.start}")
                    ),
                    "event_id": event["event_id"],
                    "session_id": event["session_id"],
                    "tenant_id": event["tenant_id"],
                    "agent_id": event["agent_id"],
                    "seq": event["seq"],
                    "time_us": event["start_time_us"],
                    "entity_type": match.entity_type,
                    "hop": hop,
                    "tool_name": segment_tool,
                    "destination": _destination(hop, segment_tool),
                    "handling": policy.handling(match.entity_type, hop, segment_tool),
                    "start": match.start,
                    "end": match.end,
                    "score": match.score,
                    "fingerprint": print_,
                    "key_id": key_id,
                    "recognizer": match.recognizer,
                }
            )
    return records


def _destination(hop: str, tool: str | None) -> str:
    if hop == "TOOL_ARGUMENTS":
        return f"tool:{tool}"
    if hop == "TOOL_RESULT":
        return "model"  # a tool's result is fed back to the model
    if hop == "OUTPUT":
        return "user"
    return "model"


def redact(text: str, matches: Iterable[Match]) -> str:
    """``text`` with every match replaced by ``<ENTITY_TYPE>`` (right to left keeps offsets)."""
    for match in sorted(matches, key=lambda m: m.start, reverse=True):
        text = f"{text[: match.start]}<{match.entity_type}>{text[match.end :]}"
    return text
