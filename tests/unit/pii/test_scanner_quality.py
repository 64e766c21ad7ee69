"""Detection quality on a labelled corpus: recall floors per entity, precision reported.

The corpus is generated: synthetic values (the simulator's factory) in realistic sentences, and
tricky negatives that look numeric or structured but are not PII (order numbers, dates, version
strings, UUIDs, amounts). Roughly one text in ten holds PII, as in a real fleet.
"""

from __future__ import annotations

from collections import Counter

import pytest

from streams.pii.corpus import corpus
from streams.pii.scanner import PiiScanner

RECALL_FLOORS = {"EMAIL_ADDRESS": 0.95, "CREDIT_CARD": 0.95, "US_SSN": 0.95, "PHONE_NUMBER": 0.95}


@pytest.fixture(scope="module")
def scanner() -> PiiScanner:
    return PiiScanner()


def test_recall_floors_and_precision(scanner: PiiScanner) -> None:
    found: Counter[str] = Counter()
    expected: Counter[str] = Counter()
    reported: Counter[str] = Counter()
    correct: Counter[str] = Counter()
    for text, labels in corpus():
        matches = [m for m in scanner.scan(text) if m.score >= 0.3]
        spans = {(m.entity_type, text[m.start : m.end]) for m in matches}
        for entity, value in labels:
            expected[entity] += 1
            found[entity] += any(e == entity and value in s for e, s in spans)
        for match in matches:
            reported[match.entity_type] += 1
            span = text[match.start : match.end]
            correct[match.entity_type] += any(
                e == match.entity_type and (v in span or span in v) for e, v in labels
            )
    lines = []
    for entity in sorted(set(expected) | set(reported)):
        recall = found[entity] / expected[entity] if expected[entity] else float("nan")
        precision = correct[entity] / reported[entity] if reported[entity] else float("nan")
        lines.append(
            f"{entity:<14} recall {recall:.3f} ({found[entity]}/{expected[entity]})  "
            f"precision {precision:.3f} ({correct[entity]}/{reported[entity]})"
        )
    print("\n" + "\n".join(lines))
    print(f"prefilter skip rate {scanner.stats.skip_rate:.1%}")
    for entity, floor in RECALL_FLOORS.items():
        assert expected[entity] >= 20, entity
        assert found[entity] / expected[entity] >= floor, "\n".join(lines)


def test_secrets_are_found_and_negatives_are_skipped_cheaply(scanner: PiiScanner) -> None:
    text = "use key sk-ant-abcdefghijklmnopqrstuvwxyz0123 and token ghp_" + "a1B2" * 9
    assert [m.entity_type for m in scanner.scan(text)] == ["SECRET", "SECRET"]
    before = scanner.stats.skipped
    scanner.scan("The weather is lovely today, thanks for asking!")
    assert scanner.stats.skipped == before + 1
