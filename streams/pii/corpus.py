"""A labelled corpus for PII detection: synthetic values in realistic sentences, and tricky
negatives that look numeric or structured but are not PII (order numbers, dates, version
strings, UUIDs, amounts). About one text in ten holds PII, as in a real fleet."""

from __future__ import annotations

import random
import uuid

from streams.simulator.pii import PiiFactory

LABELLED_ENTITIES = ("CREDIT_CARD", "EMAIL_ADDRESS", "PHONE_NUMBER", "US_SSN")
TEMPLATES = (
    "Please update the account, my contact is {v}.",
    "Customer wrote: reach me at {v} after 5pm",
    "lookup_user(query='{v}')",
    '{{"customer": {{"id": 4411, "value": "{v}"}}}}',
    "Refund issued; reference {v} noted by the agent.",
)
NEGATIVES = (
    "Order #{n} shipped on 2025-{m:02d}-{d:02d} via carrier 7",
    "Upgraded the SDK from v{a}.{b}.{c} to v{a}.{b}.{c2}",
    "Trace id {u} completed in 123 ms",
    "Invoice total: $1,{n3}.{c2}{c} for 3 items",
    "Ticket {n} was merged into {n2} on 2024/{m}/{d}",
    "Build 2025.{m}.{d}-rc{c} passed 412 of 415 tests",
)


def corpus(
    seed: int = 42, texts: int = 1500, pii_share: float = 0.1
) -> list[tuple[str, list[tuple[str, str]]]]:
    rng = random.Random(seed)
    factory = PiiFactory(rng)
    items: list[tuple[str, list[tuple[str, str]]]] = []
    for _ in range(texts):
        if rng.random() < pii_share:
            entity = rng.choice(LABELLED_ENTITIES)
            value = factory.make(entity)
            items.append((rng.choice(TEMPLATES).format(v=value.value), [(entity, value.value)]))
        else:
            text = rng.choice(NEGATIVES).format(
                n=rng.randint(10_000, 99_999_999),
                n2=rng.randint(1000, 9999),
                n3=rng.randint(100, 999),
                m=rng.randint(1, 12),
                d=rng.randint(1, 28),
                a=rng.randint(0, 9),
                b=rng.randint(0, 30),
                c=rng.randint(0, 9),
                c2=rng.randint(10, 99),
                u=uuid.UUID(int=rng.getrandbits(128)),
            )
            items.append((text, []))
    return items
