"""PII on the client side: refuse tool calls the policy blocks, and opt-in redaction.

Both run the same detector as the worker (streams.pii.scanner) and read the same
``policies/pii.yaml``. The guard is on by default when the policy has a block rule for tool
arguments; redaction (``Governor(redact=True)``) replaces every entity in content with
``<ENTITY_TYPE>`` through presidio-anonymizer before the event leaves the process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from streams.pipeline.pii import PiiPolicy
from streams.settings import Settings


@dataclass
class PiiGuard:
    policy: PiiPolicy | None
    guards_tools: bool
    redact: bool
    _scanner: Any = None
    _anonymizer: Any = None

    @classmethod
    def build(cls, settings: Settings, enabled: bool | None, redact: bool) -> PiiGuard:
        from streams.policy_files import load_pii_policy

        policy = load_pii_policy(settings.policies_dir) if enabled is not False or redact else None
        guards = (
            bool(policy and policy.blocks_tool_arguments())
            if enabled is None
            else bool(enabled and policy)
        )
        return cls(policy=policy, guards_tools=guards, redact=redact)

    def scanner(self) -> Any:
        if self._scanner is None:  # presidio loads in a moment, only when first needed
            from streams.pii.scanner import PiiScanner

            assert self.policy is not None
            self._scanner = PiiScanner(self.policy.entities)
        return self._scanner

    def blocked_entities(self, tool: str, arguments: Sequence[str]) -> list[str]:
        """Entity types in ``arguments`` that the policy blocks for ``tool``."""
        if self.policy is None:
            return []
        blocked = []
        for text in arguments:
            for match in self.scanner().scan(text):
                if match.score < self.policy.min_score:
                    continue
                if self.policy.handling(match.entity_type, "TOOL_ARGUMENTS", tool) == "BLOCK":
                    blocked.append(match.entity_type)
        return sorted(set(blocked))

    def use_policy(self, policy: PiiPolicy) -> None:
        """Put the worker's PII rules (from the client's policy set) in force; the guard is
        on for them (client checks refuse what they block or kill)."""
        if self.policy is not None and policy.entities != self.policy.entities:
            self._scanner = None
        self.policy = policy

    def found(self, texts: Sequence[str]) -> list[str]:
        """Entity types found in ``texts`` at or above the policy's minimum score."""
        if self.policy is None:
            return []
        min_score = self.policy.min_score
        return sorted(
            {m.entity_type for t in texts for m in self.scanner().scan(t) if m.score >= min_score}
        )

    def refused(self, tool: str, content: Sequence[Mapping[str, str]]) -> list[str]:
        """Entity types the policy blocks in the TOOL_ARGUMENTS segments of a tool call's
        ``content``; none while the guard is off. Every way of recording a tool call asks this
        before the call is recorded as run, so the ledger's BLOCK is what the agent saw."""
        if not self.guards_tools:
            return []
        arguments = [c["text"] for c in content if c["role"] == "TOOL_ARGUMENTS"]
        return self.blocked_entities(tool, arguments) if arguments else []

    def redacted(self, content: list[dict[str, str]]) -> list[dict[str, str]]:
        from presidio_analyzer import RecognizerResult
        from presidio_anonymizer import AnonymizerEngine

        if self._anonymizer is None:
            self._anonymizer = AnonymizerEngine()  # type: ignore[no-untyped-call]
        result = []
        for segment in content:
            matches = self.scanner().scan(segment["text"])
            if not matches:
                result.append(segment)
                continue
            found = [RecognizerResult(m.entity_type, m.start, m.end, m.score) for m in matches]
            text = self._anonymizer.anonymize(text=segment["text"], analyzer_results=found).text
            result.append({"role": segment["role"], "text": text})
        return result
