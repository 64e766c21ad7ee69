"""The PII prefilter: one pass of a compiled multi-pattern engine over a whole batch of texts,
giving the spans that could hold an entity (its *triggers*) and the windows around them that
Presidio then analyses, so that most texts never reach Presidio and the rest reach it only in
part.

A trigger is a necessary condition of one entity type, looser than the Presidio recognizer it
stands for (no look-arounds, no checksum), so whatever that recognizer reports overlaps a
trigger of its type:

* e-mail: a non-space character, ``@``, a domain with a dot;
* phone number: a run of at least seven digits, spaces, dots, dashes and brackets that starts
  and ends with a digit (the rule of the text-wide prefilter before this one, now per span);
* credit card, US SSN, IBAN, IP address, secrets: Presidio's own patterns without their
  look-arounds and validation (Luhn, mod-97, ``ipaddress``), case-insensitive as Presidio's
  patterns are.

The engine is `hyperscan <https://pypi.org/project/hyperscan/>`_ (Intel's multi-pattern DFA,
wheels for Linux x86-64 and aarch64, macOS and Windows): it reports every pattern's matches with
their start (``HS_FLAG_SOM_LEFTMOST``) in one call over the concatenated batch, so the cost per
text is a few hundred nanoseconds of C plus a Python callback per match. Without hyperscan (the
light client install) the same patterns run through :mod:`re`, one ``finditer`` per pattern:
the same texts pass, windows may differ by a few characters.

Nothing here imports Presidio (the client's light install uses :func:`may_hold_structured`).
"""

from __future__ import annotations

import bisect
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

#: (entity type, trigger pattern): ASCII patterns valid for both hyperscan (on UTF-8 bytes)
#: and :mod:`re` (with re.ASCII), matched case-insensitively; none can match a NUL byte, which
#: separates the texts of a batch
TRIGGERS: tuple[tuple[str, str], ...] = (
    ("EMAIL_ADDRESS", r"[^\s@\x00]@[^\s@\x00]+\.[^\s@\x00]"),
    # ends after a digit group only (not after every digit: fewer reports for long numbers)
    ("PHONE_NUMBER", r"\d[\d\s().-]{5,}\d(?:\D|$)"),
    ("CREDIT_CARD", r"\b[13456]\d{3}[- ]?\d{3,4}[- ]?\d{3,4}[- ]?\d{3,5}\b"),
    ("US_SSN", r"\b(?:\d{5}-\d{4}|\d{3}-\d{6}|\d{9}|\d{3}[- .]\d{2}[- .]\d{4})\b"),
    # Presidio's IBAN starts after no letter or digit ((?<![A-Z0-9]), case-insensitive)
    ("IBAN_CODE", r"(?:^|[^a-z0-9])[a-z]{2}\d{2}(?:[ -]?[a-z0-9]{4}){2}"),
    ("IP_ADDRESS", r"\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}"),
    ("IP_ADDRESS", r"::|[0-9a-f]{1,4}(?::[0-9a-f]{1,4}){7}"),
    ("SECRET", r"\bsk-[a-z0-9_-]{20}|\b(?:sk|rk)_(?:live|test)_[a-z0-9]{20}"),
    ("SECRET", r"\b(?:akia|asia)[0-9a-z]{16}|\bgh[pousr]_[a-z0-9]{36}|\bxox[abposr]-[a-z0-9-]{10}"),
    ("SECRET", r"\baiza[0-9a-z_-]{35}|\beyj[a-z0-9_-]{8,}\.eyj|\bbearer\s+[a-z0-9._~+/=-]{24}"),
)
#: characters of context on each side of a trigger, before widening to the next whitespace
MARGIN = 24
#: how far a window widens past its margin looking for whitespace
MAX_WIDEN = 64
_WHITESPACE = re.compile(r"\s")

_ANY = re.compile("|".join(f"(?:{p})" for _, p in TRIGGERS), re.IGNORECASE | re.ASCII)


def may_hold_structured(text: str) -> bool:
    """Whether ``text`` could hold a structured entity (any trigger matches): when not, scanning
    it finds nothing, and presidio need not be loaded for it."""
    return _ANY.search(text) is not None


@dataclass(frozen=True)
class Window:
    """A part of one text for Presidio: ``text[start:end]``, the entity types triggered in it and
    the trigger spans (in the text's offsets) a finding must overlap."""

    start: int
    end: int
    entities: frozenset[str]
    triggers: tuple[tuple[str, int, int], ...]

    def admits(self, entity_type: str, start: int, end: int) -> bool:
        """Whether a finding at ``[start, end)`` overlaps a trigger of its type."""
        return any(e == entity_type and start < te and end > ts for e, ts, te in self.triggers)


Hit = tuple[str, int, int]


def windows(text: str, hits: Iterable[Hit], wanted: frozenset[str]) -> list[Window]:
    """The windows of ``text`` around its trigger ``hits`` (entity, start, end) of the ``wanted``
    types: each trigger widened by :data:`MARGIN` and then to whitespace (or the text's end), so
    Presidio's word boundaries and look-arounds see what they would in the whole text;
    overlapping windows are merged."""
    spans = sorted((s, e, entity) for entity, s, e in hits if entity in wanted)
    merged: list[Window] = []
    n = len(text)
    for s, e, entity in spans:
        start, end = _widen_left(text, max(0, s - MARGIN)), _widen_right(text, min(n, e + MARGIN))
        last = merged[-1] if merged else None
        if last is not None and start <= last.end:
            merged[-1] = Window(
                last.start,
                max(last.end, end),
                last.entities | {entity},
                (*last.triggers, (entity, s, e)),
            )
        else:
            merged.append(Window(start, end, frozenset((entity,)), ((entity, s, e),)))
    return merged


def _widen_left(text: str, start: int) -> int:
    if start == 0:
        return 0
    low = max(0, start - MAX_WIDEN)
    for i in range(start - 1, low - 1, -1):
        if text[i].isspace():
            return i + 1
    return low


def _widen_right(text: str, end: int) -> int:
    found = _WHITESPACE.search(text, end, min(len(text), end + MAX_WIDEN))
    return found.start() if found else min(len(text), end + MAX_WIDEN)


class Prefilter:
    """``hits(texts)``: the trigger spans of every text of a batch, in one pass."""

    def __init__(self, engine: str | None = None) -> None:
        """``engine``: "hyperscan", "re", or None for hyperscan when installed."""
        self.engine = engine or ("hyperscan" if _hyperscan_installed() else "re")
        if self.engine == "hyperscan":
            self._hits: Callable[[Sequence[str]], list[list[Hit]]] = _HyperscanEngine().hits
        elif self.engine == "re":
            self._hits = _ReEngine().hits
        else:
            raise ValueError(f"unknown prefilter engine {engine!r} (hyperscan or re)")

    def hits(self, texts: Sequence[str]) -> list[list[Hit]]:
        return self._hits(texts)


def _hyperscan_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("hyperscan") is not None


class _ReEngine:
    def __init__(self) -> None:
        self._patterns = [
            (entity, re.compile(pattern, re.IGNORECASE | re.ASCII)) for entity, pattern in TRIGGERS
        ]

    def hits(self, texts: Sequence[str]) -> list[list[Hit]]:
        result: list[list[Hit]] = []
        for text in texts:
            if _ANY.search(text) is None:
                result.append([])
                continue
            result.append(
                [
                    (entity, m.start(), m.end())
                    for entity, pattern in self._patterns
                    for m in pattern.finditer(text)
                ]
            )
        return result


class _HyperscanEngine:
    def __init__(self) -> None:
        import hyperscan

        self._entities = [entity for entity, _ in TRIGGERS]
        flags = hyperscan.HS_FLAG_CASELESS | hyperscan.HS_FLAG_SOM_LEFTMOST
        self._db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        self._db.compile(
            expressions=[p.encode() for _, p in TRIGGERS],
            ids=list(range(len(TRIGGERS))),
            elements=len(TRIGGERS),
            flags=[flags] * len(TRIGGERS),
        )
        # hyperscan releases the GIL while it scans: each thread needs scratch space of its own
        self._local = threading.local()

    def _scratch(self) -> Any:
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            import hyperscan

            scratch = self._local.scratch = hyperscan.Scratch(self._db)
        return scratch

    def hits(self, texts: Sequence[str]) -> list[list[Hit]]:
        encoded = [t.encode("utf-8", "surrogatepass") for t in texts]
        starts: list[int] = []
        at = 0
        for data in encoded:
            starts.append(at)
            at += len(data) + 1
        raw: list[tuple[int, int, int]] = []

        def on_match(pattern: int, start: int, end: int, _flags: int, _ctx: Any) -> None:
            raw.append((pattern, start, end))

        self._db.scan(b"\x00".join(encoded), match_event_handler=on_match, scratch=self._scratch())
        result: list[list[Hit]] = [[] for _ in texts]
        entities = self._entities
        for pattern, start, end in raw:
            index = bisect.bisect_right(starts, start) - 1
            base = starts[index]
            result[index].append((entities[pattern], start - base, end - base))
        for index, found in enumerate(result):
            if found and not texts[index].isascii():
                result[index] = _char_offsets(encoded[index], found)
        return result


def _char_offsets(data: bytes, hits: list[Hit]) -> list[Hit]:
    """Byte offsets of a non-ASCII text's hits as character offsets."""

    def chars(offset: int) -> int:
        try:
            return len(data[:offset].decode("utf-8", "surrogatepass"))
        except UnicodeDecodeError:  # the offset falls inside a character
            return len(data[:offset].decode("utf-8", "ignore"))

    return [(entity, chars(s), chars(e)) for entity, s, e in hits]
