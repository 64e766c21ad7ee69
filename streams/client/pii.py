"""PII on the client side: refuse tool calls the policy blocks, and opt-in redaction.

Both run the same detector as the worker (streams.pii.scanner) and read the same
``policies/pii.yaml``. The guard is on by default when the policy has a block rule for tool
arguments; redaction (``Governor(redact=True)``) replaces every entity in content with
``<ENTITY_TYPE>`` through presidio-anonymizer before the event leaves the process.

Presidio is the ``[pii]`` extra (``pip install 'fleet-governor[pii]'``) and takes about a second
(and ~100 MB) to load, so a new client never waits for it on a step that cannot need it: the
detector loads in a background thread when the Governor starts (:meth:`PiiGuard.warm`, once
per process and entity set), and a text the cheap prefilter rules out
(:func:`streams.pii.scanner.may_hold_structured`: no trigger of any entity type, see
:mod:`streams.pii.prefilter`; plain :mod:`re`, no import of presidio or hyperscan) is not
scanned at all; the detector itself hands Presidio only the windows around triggers. A text
that could hold an entity waits for the detector: enforcement is never skipped while it loads.

Without presidio installed, ``pii_guard=True`` and ``redact=True`` refuse to start
(:class:`PiiUnavailable`, naming the extra); by default the client runs without its PII guard,
logs a warning once, and counts each text it could not check (``Governor.stats()
["pii_unchecked"]``). The worker's PII stage still scans every event and applies the policy
(findings, kills) after the fact.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streams.client.errors import GovernorError
from streams.pii.scanner import may_hold_structured
from streams.pipeline.pii import Match, PiiPolicy
from streams.settings import Settings

if TYPE_CHECKING:
    from streams.pii.scanner import PiiScanner

log = logging.getLogger(__name__)

#: what to install for the PII detector
PII_EXTRA = "pip install 'fleet-governor[pii]'"


#: modules the detector's import chain shares with agents' HTTP SDKs
SHARED_IMPORTS = ("httpx",)


class PiiUnavailable(GovernorError):
    """The PII guard or redaction was asked for, and presidio (the ``[pii]`` extra) is not
    installed."""

    def __init__(self, wanted: str) -> None:
        super().__init__(f"{wanted} needs presidio, which is not installed: {PII_EXTRA}")


def presidio_installed() -> bool:
    return (
        importlib.util.find_spec("presidio_analyzer") is not None
        and importlib.util.find_spec("presidio_anonymizer") is not None
    )


#: one detector per entity set in a process (every Governor of a gateway shares it)
_scanners: dict[tuple[str, ...], PiiScanner] = {}
_scanners_lock = threading.Lock()


def shared_scanner(entities: Sequence[str]) -> PiiScanner:
    """The process's detector for ``entities``, loaded on first use (a caller meanwhile waits
    for the load, no more)."""
    key = tuple(entities)
    with _scanners_lock:
        scanner = _scanners.get(key)
        if scanner is None:
            from streams.pii.scanner import PiiScanner

            scanner = _scanners[key] = PiiScanner(key)
        return scanner


@dataclass
class PiiGuard:
    policy: PiiPolicy | None
    guards_tools: bool
    redact: bool
    #: presidio is installed (else nothing is scanned, and ``unchecked`` counts)
    available: bool = True
    #: texts that could hold PII (past the prefilter) left unchecked: presidio is missing
    unchecked: int = 0
    _scanner: Any = None
    _anonymizer: Any = None

    @classmethod
    def build(cls, settings: Settings, enabled: bool | None, redact: bool) -> PiiGuard:
        from streams.policy_files import load_pii_policy

        available = presidio_installed()
        if not available and (enabled or redact):
            raise PiiUnavailable("pii_guard=True" if enabled else "redact=True")
        policy = load_pii_policy(settings.policies_dir) if enabled is not False or redact else None
        guards = (
            bool(policy and policy.blocks_tool_arguments())
            if enabled is None
            else bool(enabled and policy)
        )
        if policy is not None and not available:
            log.warning(
                "presidio is not installed: this client runs without its PII guard (the "
                "worker still scans every event); for it: %s",
                PII_EXTRA,
            )
        return cls(policy=policy, guards_tools=guards, redact=redact, available=available)

    def warm(self) -> threading.Thread | None:
        """Load the detector in a daemon thread, so the first text that needs it waits less
        (none when the guard is off or presidio is missing)."""
        if self.policy is None or not self.available or self._scanner is not None:
            return None
        entities = tuple(self.policy.entities)
        # presidio's import chain imports these; an agent's HTTP SDK (openai, anthropic) may
        # look them up on its own thread while the loader is half-way through them and see a
        # partially initialised module: import them here, on the caller's thread, first
        for shared in SHARED_IMPORTS:
            if importlib.util.find_spec(shared) is not None:
                importlib.import_module(shared)
        thread = threading.Thread(
            target=shared_scanner, args=(entities,), name="pii-detector-load", daemon=True
        )
        thread.start()
        return thread

    def scanner(self) -> Any:
        if self._scanner is None:  # presidio loads in a moment, only when first needed
            assert self.policy is not None
            self._scanner = shared_scanner(self.policy.entities)
        return self._scanner

    def scan(self, text: str) -> list[Match]:
        """The entities in ``text``: none without loading presidio when the prefilter rules
        the text out; none (counted in ``unchecked``) when presidio is not installed."""
        if not may_hold_structured(text):
            return []
        if not self.available:
            self.unchecked += 1
            return []
        matches: list[Match] = self.scanner().scan(text)
        return matches

    def blocked_entities(self, tool: str, arguments: Sequence[str]) -> list[str]:
        """Entity types in ``arguments`` that the policy blocks for ``tool``."""
        if self.policy is None:
            return []
        blocked = []
        for text in arguments:
            for match in self.scan(text):
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
        return sorted({m.entity_type for t in texts for m in self.scan(t) if m.score >= min_score})

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
            matches = self.scan(segment["text"])
            if not matches:
                result.append(segment)
                continue
            found = [RecognizerResult(m.entity_type, m.start, m.end, m.score) for m in matches]
            text = self._anonymizer.anonymize(text=segment["text"], analyzer_results=found).text
            result.append({"role": segment["role"], "text": text})
        return result
