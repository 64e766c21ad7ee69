"""Synthetic PII that looks real to a scanner and is unique per run, so it works as a canary.

Every value a :class:`PiiFactory` makes is new within that factory (emails carry a random token,
numbers random digits, names are re-drawn on a clash), so a test can grep for one value and know
exactly where the simulator put it. Values are built to pass the usual validators: phone numbers
are valid US numbers, card numbers pass the Luhn check, SSNs avoid the ranges never issued (and
the few numbers voided after they were published).

:func:`client_refuses` says, without a scanner, which planted values make the client's PII guard
refuse a tool call, so a plan knows which of its tool calls never run.
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streams.pipeline.pii import PiiPolicy

EMAIL_ADDRESS = "EMAIL_ADDRESS"
PHONE_NUMBER = "PHONE_NUMBER"
CREDIT_CARD = "CREDIT_CARD"
US_SSN = "US_SSN"
PERSON = "PERSON"
ENTITY_TYPES = (EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD, US_SSN, PERSON)
#: the score the client's scanner gives a value of each type as PiiFactory makes them, standing
#: in a tool call's JSON arguments (presidio's patterns, measured against the real guard by
#: tests/unit/simulator/test_client_guard.py); no PERSON: the client scans without a spaCy
#: model, so it never finds a name
CLIENT_SCORES = {EMAIL_ADDRESS: 1.0, PHONE_NUMBER: 0.4, CREDIT_CARD: 1.0, US_SSN: 0.5}

FIRST_NAMES = (
    "Maria",
    "James",
    "Aisha",
    "Robert",
    "Mei",
    "David",
    "Priya",
    "Michael",
    "Sofia",
    "William",
    "Fatima",
    "Daniel",
    "Elena",
    "Thomas",
    "Yuki",
    "Joseph",
    "Amara",
    "Charles",
    "Ingrid",
    "Christopher",
    "Lucia",
    "Matthew",
    "Hannah",
    "Anthony",
    "Olivia",
    "Mark",
    "Chloe",
    "Steven",
    "Grace",
    "Andrew",
    "Nadia",
    "Joshua",
    "Emily",
    "Kevin",
    "Zara",
    "Brian",
    "Laura",
    "George",
    "Rachel",
    "Edward",
    "Naomi",
    "Ronald",
    "Julia",
    "Timothy",
    "Sarah",
    "Jason",
    "Leila",
    "Ryan",
    "Victoria",
    "Jacob",
    "Camila",
    "Gary",
    "Abigail",
    "Nicholas",
    "Ruth",
    "Eric",
    "Diana",
    "Jonathan",
    "Helen",
    "Stephen",
    "Alice",
    "Larry",
    "Irene",
    "Frank",
)
LAST_NAMES = (
    "Garcia",
    "Johnson",
    "Okafor",
    "Smith",
    "Chen",
    "Williams",
    "Patel",
    "Brown",
    "Rossi",
    "Jones",
    "Haddad",
    "Miller",
    "Petrova",
    "Davis",
    "Tanaka",
    "Wilson",
    "Mensah",
    "Anderson",
    "Larsen",
    "Taylor",
    "Moreno",
    "Thomas",
    "Fischer",
    "Jackson",
    "Nguyen",
    "White",
    "Dubois",
    "Harris",
    "Kowalski",
    "Martin",
    "Rahman",
    "Thompson",
    "Schmidt",
    "Robinson",
    "Ali",
    "Clark",
    "Silva",
    "Lewis",
    "Cohen",
    "Walker",
    "Ivanova",
    "Hall",
    "Kim",
    "Young",
    "Novak",
    "King",
    "Mendes",
    "Wright",
    "Ozturk",
    "Scott",
    "Bakker",
    "Green",
    "Lindqvist",
    "Baker",
    "Hughes",
    "Adams",
    "Murphy",
    "Nelson",
    "Carter",
    "Mitchell",
    "Romero",
    "Perez",
    "Roberts",
    "Turner",
)
#: real US area codes (an invented one would fail phone-number validation)
AREA_CODES = (
    "201",
    "202",
    "206",
    "212",
    "213",
    "214",
    "303",
    "305",
    "312",
    "313",
    "404",
    "408",
    "415",
    "503",
    "512",
    "602",
    "617",
    "646",
    "702",
    "713",
    "718",
    "773",
    "801",
    "818",
    "858",
    "919",
)
#: reserved for documentation (RFC 2606), but with real TLDs so address validators accept them
EMAIL_DOMAINS = ("example.com", "example.org", "example.net")
CARD_PREFIXES = ("4", "51", "52", "53", "54", "55")
#: well-formed SSNs voided after they were published (in advertisements, on a wallet insert):
#: scanners reject them as fakes (presidio's UsSsnRecognizer does)
VOIDED_SSNS = ("123456789", "078051120")
_TOKEN_ALPHABET = string.ascii_lowercase + string.digits
_NAME_TRIES = 50


@dataclass(frozen=True)
class PiiValue:
    """One synthetic PII value and the entity type a scanner should report for it."""

    value: str
    entity_type: str


def luhn_valid(number: str) -> bool:
    """The Luhn check over the digits of ``number`` (separators ignored)."""
    digits = [int(c) for c in number if c.isdigit()]
    if len(digits) < 2:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def luhn_check_digit(partial: str) -> str:
    """The digit that makes ``partial`` + digit pass :func:`luhn_valid`."""
    for digit in "0123456789":
        if luhn_valid(partial + digit):
            return digit
    raise AssertionError("unreachable: one of ten digits always completes a Luhn number")


def ssn_valid(ssn: str) -> bool:
    """Looks issued: area not 000, 666 or 9xx; group not 00; serial not 0000; not one digit;
    not one of :data:`VOIDED_SSNS`."""
    digits = "".join(c for c in ssn if c.isdigit())
    if len(digits) != 9 or len(set(digits)) == 1 or digits in VOIDED_SSNS:
        return False
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def client_refuses(
    policy: PiiPolicy | None, tool: str, planted: Iterable[PiiValue]
) -> tuple[str, ...]:
    """The entity types for which the client's PII guard refuses a call of ``tool`` whose
    arguments hold ``planted`` (sorted, as :class:`~streams.client.ToolBlocked` names them);
    empty when the call may run.

    The guard (:class:`streams.client.pii.PiiGuard`) is on when ``policy`` has a block rule for
    tool arguments; it scans the arguments for ``policy.entities`` and refuses the call for every
    match that scores at least ``policy.min_score`` and has handling BLOCK at (entity,
    TOOL_ARGUMENTS, ``tool``). This decides the same without the scanner, taking the scanner to
    find each planted value as its own type with its :data:`CLIENT_SCORES` score: true of what
    :class:`PiiFactory` makes. (The scanner also reads a few five-digit ids as phone numbers,
    so a policy that blocks PHONE_NUMBER in tool arguments would refuse calls this lets run.)
    """
    if policy is None or not policy.blocks_tool_arguments():
        return ()
    refused = {
        value.entity_type
        for value in planted
        if value.entity_type in policy.entities
        and CLIENT_SCORES.get(value.entity_type, 0.0) >= policy.min_score
        and policy.handling(value.entity_type, "TOOL_ARGUMENTS", tool) == "BLOCK"
    }
    return tuple(sorted(refused))


class PiiFactory:
    """Makes PII values, none of them twice (deterministic for a given ``rng``)."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._made: set[str] = set()

    def make(self, entity_type: str) -> PiiValue:
        makers = {
            EMAIL_ADDRESS: self._email,
            PHONE_NUMBER: self._phone,
            CREDIT_CARD: self._card,
            US_SSN: self._ssn,
            PERSON: self._person,
        }
        while True:
            value = makers[entity_type]()
            if value not in self._made:
                self._made.add(value)
                return PiiValue(value, entity_type)

    def _email(self) -> str:
        rng = self._rng
        token = "".join(rng.choice(_TOKEN_ALPHABET) for _ in range(6))
        first, last = rng.choice(FIRST_NAMES).lower(), rng.choice(LAST_NAMES).lower()
        return f"{first}.{last}.{token}@{rng.choice(EMAIL_DOMAINS)}"

    def _phone(self) -> str:
        rng = self._rng
        area = rng.choice(AREA_CODES)
        # exchange: 2-9 first, never N11 (service codes) nor 555 (mostly fictional)
        while True:
            exchange = f"{rng.randint(2, 9)}{rng.randint(0, 9)}{rng.randint(0, 9)}"
            if exchange[1:] != "11" and exchange != "555":
                break
        line = f"{rng.randint(0, 9999):04d}"
        style = rng.randrange(3)
        if style == 0:
            return f"({area}) {exchange}-{line}"
        if style == 1:
            return f"{area}-{exchange}-{line}"
        return f"+1 {area} {exchange} {line}"

    def _card(self) -> str:
        rng = self._rng
        prefix = rng.choice(CARD_PREFIXES)
        body = prefix + "".join(str(rng.randint(0, 9)) for _ in range(15 - len(prefix)))
        number = body + luhn_check_digit(body)
        separator = rng.choice(("", " ", "-"))
        return separator.join(number[i : i + 4] for i in range(0, 16, 4))

    def _ssn(self) -> str:
        rng = self._rng
        while True:
            area = rng.randint(1, 899)
            if area == 666:
                continue
            ssn = f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"
            if ssn_valid(ssn):
                return ssn

    def _person(self) -> str:
        rng = self._rng
        for attempt in range(3 * _NAME_TRIES):
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            # the plain name space is small; after clashes widen it with middle initials
            initials = attempt // _NAME_TRIES
            middle = "".join(f"{rng.choice(string.ascii_uppercase)}. " for _ in range(initials))
            name = f"{first} {middle}{last}"
            if name not in self._made:
                return name
        return f"{first} {rng.choice(string.ascii_uppercase)}. {middle}{last}"
