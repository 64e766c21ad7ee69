"""Which windows could hold a phone number Presidio would report: a cheap necessary condition.

Presidio's phone recognizer runs python-phonenumbers' matcher once per region (eight of them) at
leniency VALID, which parses every candidate and checks it against the region's metadata; at a
few hundred microseconds per window it was the bulk of the scanner's cost, since agents' texts
are full of dates, ids and timestamps. This module asks the same question far more cheaply,
and only ever answers "no" where the matcher would find nothing:

* the matcher's candidates are the matches of its own pattern (``phonenumbers.
  phonenumbermatcher._PATTERN``, used here as is); a number it reports is that candidate, a
  part of it cut at punctuation, or what remains after parsing strips an international,
  country or national prefix, so its digits are a run of consecutive digit groups of a
  candidate;
* a number is VALID only if its national significant number matches one of the number-type
  patterns (fixed line, mobile, toll free, ...) of a region sharing its country code;
* a number written in national format without its national prefix is VALID only where the
  region's format for it does not require one (the matcher's
  ``_is_national_prefix_present_if_required``, whose phonenumbers helpers are used here);
* so a window needs Presidio's phone check only if a run of consecutive digit groups of a
  candidate fullmatches ``(country code | national prefix) (some type pattern)`` of one of
  the recognizer's regions, or a type pattern alone where the prefix is not required, or starts
  with an international prefix, or the candidate has a ``+``: anything else (most dates,
  amounts, ids and timestamps) is no phone for any of the regions.

The patterns come from the installed phonenumbers metadata, so they follow its updates.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

#: the longest number the matcher can parse (phonenumbers' _MAX_LENGTH_FOR_NSN + a prefix)
MAX_DIGITS = 20
#: international prefixes of the recognizer's regions (00, 011, 01x), with digits after them
#: digit runs whose regions are remembered (the memo is emptied when full)
SEEN_SIZE = 200_000
_IDD = re.compile(r"(?:00|011|01[2-9])\d{3,}")
_GROUPS = re.compile(r"\d+")
_TYPES = (
    "fixed_line",
    "mobile",
    "toll_free",
    "premium_rate",
    "shared_cost",
    "personal_number",
    "voip",
    "pager",
    "uan",
    "voicemail",
)


@dataclass(frozen=True)
class _Region:
    """One region of the recognizer as patterns: ``prefixed`` (a country code or the national
    prefix, then a number-type pattern of a region sharing its country code) and ``bare`` (a
    number-type pattern alone: VALID only where the format for it does not require the national
    prefix, which ``formats`` (the country code's main region) decide)."""

    name: str
    prefixed: re.Pattern[str]
    bare: re.Pattern[str]
    formats: Any
    #: the lengths a number can have, bare and prefixed (None: any, the prefix is a pattern)
    bare_lengths: frozenset[int]
    prefixed_lengths: frozenset[int] | None
    #: a national prefix that is a pattern (BR: carrier codes), its transform rule, and the
    #: country code: the number is what phonenumbers makes of it (the rest, or the transform)
    prefix_pattern: re.Pattern[str] | None = None
    transform: str | None = None
    country_code: str = ""

    def stripped(self, digits: str) -> list[str]:
        """What parsing could leave of ``digits`` after a pattern prefix (none without one)."""
        if self.prefix_pattern is None:
            return []
        numbers = []
        for rest in (digits, digits[len(self.country_code) :]):
            if rest is not digits and not digits.startswith(self.country_code):
                continue
            match = self.prefix_pattern.match(rest)
            if match is None:
                continue
            numbers.append(rest[match.end() :])
            if self.transform and match.lastindex:
                numbers.append(match.expand(self.transform))
        return numbers


@dataclass(frozen=True)
class _Patterns:
    regions: tuple[_Region, ...]
    #: no number of any region is shorter
    min_digits: int
    #: digit runs already decided, and their regions
    seen: dict[str, frozenset[str]] = field(default_factory=dict)


@cache
def _patterns(regions: tuple[str, ...]) -> _Patterns:
    from phonenumbers import COUNTRY_CODE_TO_REGION_CODE, PhoneMetadata

    built = []
    for region in regions:
        metadata = PhoneMetadata.metadata_for_region(region)
        if metadata is None:
            continue
        cc = metadata.country_code
        types = []
        lengths: set[int] = set()
        shared = COUNTRY_CODE_TO_REGION_CODE.get(cc or 0, (region,))
        for other_region in shared:
            other: Any = PhoneMetadata.metadata_for_region(other_region)
            if other is None:
                continue
            for name in _TYPES:
                desc = getattr(other, name, None)
                if desc is not None and desc.national_number_pattern:
                    types.append(f"(?:{desc.national_number_pattern})")
                    # a type without lengths of its own has the general ones (phonenumbers)
                    lengths.update(desc.possible_length or other.general_desc.possible_length)
        lengths.discard(-1)
        number = f"(?:{'|'.join(types)})"
        prefix = metadata.national_prefix_for_parsing or metadata.national_prefix or ""
        starts = f"{cc}(?:{prefix})?|{prefix}" if prefix else f"{cc}"
        cc_len = len(str(cc))
        if prefix and not prefix.isdigit():
            prefixed_lengths: frozenset[int] | None = None  # a pattern (BR's carrier codes)
        else:
            extras = {cc_len, cc_len + len(prefix), len(prefix)} if prefix else {cc_len}
            prefixed_lengths = frozenset(n + e for n in lengths for e in extras)
        main = PhoneMetadata.metadata_for_region(shared[0]) if shared else None
        pattern_prefix = prefixed_lengths is None
        built.append(
            _Region(
                region,
                re.compile(f"(?:{starts}){number}"),
                re.compile(number),
                main or metadata,
                frozenset(lengths),
                prefixed_lengths,
                re.compile(prefix) if pattern_prefix else None,
                metadata.national_prefix_transform_rule if pattern_prefix else None,
                str(cc),
            )
        )
    return _Patterns(tuple(built), min((min(r.bare_lengths) for r in built), default=2))


def _prefix_optional(metadata: Any, number: str) -> bool:
    """Whether ``number`` written without its national prefix passes the matcher's VALID check
    (``_is_national_prefix_present_if_required`` in phonenumbers, whose helpers these are)."""
    from phonenumbers.phonenumberutil import (
        _choose_formatting_pattern_for_number,
        _formatting_rule_has_first_group_only,
    )

    rule = _choose_formatting_pattern_for_number(metadata.number_format, number)
    return bool(
        rule is None
        or not rule.national_prefix_formatting_rule
        or rule.national_prefix_optional_when_formatting
        or _formatting_rule_has_first_group_only(rule.national_prefix_formatting_rule)
    )


def _regions_of(digits: str, patterns: _Patterns) -> frozenset[str]:
    """The regions whose matcher could accept ``digits`` as a number (remembered: years,
    months, days and short counts come again and again)."""
    known = patterns.seen.get(digits)
    if known is None:
        if len(patterns.seen) >= SEEN_SIZE:
            patterns.seen.clear()
        known = patterns.seen[digits] = frozenset(_regions_uncached(digits, patterns))
    return known


def _regions_uncached(digits: str, patterns: _Patterns) -> set[str]:
    if _IDD.match(digits):
        return {r.name for r in patterns.regions}
    length = len(digits)
    found: set[str] = set()
    if length < patterns.min_digits:
        return found
    for region in patterns.regions:
        lengths = region.prefixed_lengths
        prefixed = (lengths is None or length in lengths) and region.prefixed.fullmatch(digits)
        if (
            prefixed
            or any(region.bare.fullmatch(n) for n in region.stripped(digits))
            or (
                length in region.bare_lengths
                and region.bare.fullmatch(digits)
                and _prefix_optional(region.formats, digits)
            )
        ):
            found.add(region.name)
    return found


def _candidate_pattern() -> re.Pattern[str]:
    from phonenumbers.phonenumbermatcher import _PATTERN  # the matcher's own candidates

    pattern: re.Pattern[str] = _PATTERN
    return pattern


def phone_regions(
    text: str, regions: Sequence[str], spans: Sequence[tuple[int, int]] | None = None
) -> frozenset[str]:
    """The regions among ``regions`` whose matcher (Presidio's phone recognizer, leniency VALID)
    could report a number in ``text`` (overlapping one of ``spans``, when given: a number lies
    inside the candidate it came from): empty only where none can."""
    return phone_check(text, regions, spans)[0]


def phone_check(
    text: str, regions: Sequence[str], spans: Sequence[tuple[int, int]] | None = None
) -> tuple[frozenset[str], tuple[int, int] | None]:
    """:func:`phone_regions`, and the extent of the matcher's candidates that could hold a
    number (from the first one's start to the last one's end; None when none can)."""
    from phonenumbers import normalize_digits_only

    patterns = _patterns(tuple(regions))
    every = frozenset(r.name for r in patterns.regions)
    found: set[str] = set()
    first = last = -1
    for candidate in _candidate_pattern().finditer(text):
        if spans is not None and not any(
            candidate.start() < end and candidate.end() > start for start, end in spans
        ):
            continue
        raw = candidate.group()
        if len(raw) < patterns.min_digits:
            continue  # too few characters for enough digits
        if "+" in raw or "\uff0b" in raw:
            found = set(every)  # international format: any country's numbers
            first = candidate.start() if first < 0 else first
            last = candidate.end()
            continue
        base = candidate.start()
        spots = [(base + g.start(), base + g.end(), g.group()) for g in _GROUPS.finditer(raw)]
        for i, (start, _, _) in enumerate(spots):
            # the matcher drops a number right after a Latin letter, % or currency sign
            if start > 0 and _blocks(text[start - 1]):
                continue
            digits = ""
            for _, end, group in spots[i:]:
                digits += group if group.isascii() else normalize_digits_only(group)
                if len(digits) > MAX_DIGITS:
                    break
                # ... and right before one (but a letter may start an extension: x, ext, int)
                if len(digits) < 2 or (
                    end < len(text) and _blocks(text[end]) and text[end].lower() not in _EXT
                ):
                    continue
                accepted = _regions_of(digits, patterns)
                if accepted:
                    found |= accepted
                    first = candidate.start() if first < 0 else first
                    last = candidate.end()
    return frozenset(found), ((first, last) if first >= 0 else None)


#: letters that can start an extension right after a number (ext, x, int, anexo, доб)
_EXT = frozenset("exaiд\uff45\uff58\uff49")


def _blocks(char: str) -> bool:
    """A character next to which the matcher (leniency VALID) reports no number: a Latin
    letter, % or a currency sign (phonenumbers' own checks)."""
    if char.isascii():
        return char.isalpha() or char in "%$"
    from phonenumbers import PhoneNumberMatcher

    return bool(
        PhoneNumberMatcher._is_latin_letter(char)
        or PhoneNumberMatcher._is_invalid_punctuation_symbol(char)
    )


def clear_memo() -> None:
    """Forget the digit runs already decided (benchmarks start from a known state)."""
    _patterns.cache_clear()
