"""The PII prefilter and the phone gate: which texts and windows reach Presidio.

Both are necessary conditions of Presidio's recognizers: they may pass text that holds nothing,
never skip text where Presidio would report something (tests/unit/pii/test_windows.py checks
the scanner's findings against Presidio on whole texts).
"""

from __future__ import annotations

import random

import pytest

from streams.pii.phones import phone_regions
from streams.pii.prefilter import TRIGGERS, Prefilter, may_hold_structured, windows

REGIONS = ("US", "GB", "DE", "FR", "IL", "IN", "CA", "BR")
EVERY = frozenset(entity for entity, _ in TRIGGERS)

TEXTS = [
    "call +1 415-555-0123 or jane@example.com",
    "nothing to see here, just words",
    "key sk-ant-abcdefghijklmnopqrstuvwxyz0123 from 10.0.0.1 and ::1",
    "Grüße aus Köln, Zahlung an DE89 3704 0044 0532 0130 00 bitte, SSN 123-45-6789",
    "",
]


@pytest.mark.parametrize("engine", ["hyperscan", "re"])
def test_both_engines_find_the_same_triggers_per_text(engine: str) -> None:
    hits = Prefilter(engine).hits(TEXTS)
    found = [sorted({entity for entity, _, _ in text_hits}) for text_hits in hits]
    assert found == [
        ["EMAIL_ADDRESS", "PHONE_NUMBER"],
        [],
        ["IP_ADDRESS", "PHONE_NUMBER", "SECRET"],
        ["CREDIT_CARD", "IBAN_CODE", "PHONE_NUMBER", "US_SSN"],  # the IBAN's digits
        [],
    ]
    # offsets are characters of the text, also after non-ASCII ones (hyperscan scans bytes)
    text, text_hits = TEXTS[3], hits[3]
    ssn = [(s, e) for entity, s, e in text_hits if entity == "US_SSN"]
    assert [text[s:e] for s, e in ssn] == ["123-45-6789"]


def test_may_hold_structured_is_the_triggers_without_hyperscan() -> None:
    assert [may_hold_structured(t) for t in TEXTS] == [True, False, True, True, False]
    assert not may_hold_structured("Order #338387 at 3 pm")  # six digits: no phone trigger
    assert not may_hold_structured("@app.route('/v1') and a decorator")  # an @ is no e-mail


def test_windows_widen_to_whitespace_and_merge() -> None:
    text = "x " * 40 + "reach me at jane@example.com or +1 415 555 0123 please" + " y" * 40
    hits = Prefilter().hits([text])[0]
    found = windows(text, hits, EVERY)
    assert len(found) == 1  # the two triggers are close: one window
    window = found[0]
    part = text[window.start : window.end]
    assert "jane@example.com" in part
    assert "+1 415 555 0123" in part
    assert window.start == 0 or text[window.start - 1].isspace()
    assert window.end == len(text) or text[window.end].isspace()
    assert window.entities == {"EMAIL_ADDRESS", "PHONE_NUMBER"}
    # only the wanted types make windows
    assert windows(text, hits, frozenset({"CREDIT_CARD"})) == []


def test_a_unknown_engine_is_refused() -> None:
    with pytest.raises(ValueError, match="hyperscan or re"):
        Prefilter("pcre")


def test_iso_dates_and_short_ids_need_no_phone_check() -> None:
    for text in ("shipped on 2025-05-21 via UPS", "ticket SUP-4942", "total 1234.56 USD"):
        assert phone_regions(text, REGIONS) == frozenset(), text
    assert phone_regions("reach me at +44 20 7946 0958", REGIONS) == frozenset(REGIONS)
    assert "US" in phone_regions("call (415) 555-0123 today", REGIONS)
    assert "DE" in phone_regions("Tel. (030) 1234567", REGIONS)


def test_the_phone_gate_never_drops_a_number_presidio_reports() -> None:
    """Random digit runs in the shapes phone numbers take: wherever Presidio's recognizer for
    one region reports a number, the gate names that region."""
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    recognizers = {r: PhoneRecognizer(supported_regions=(r,)) for r in REGIONS}
    rng = random.Random(18)
    checked = reported = 0
    for _ in range(30):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(6, 12)))
        cut = rng.randint(2, 4)
        shapes = (
            f"call {digits} now",
            f"call 0{digits} now",
            f"call ({digits[:cut]}) {digits[cut:]} now",
            f"call 1-{digits} now",
            # next to letters, % and currency signs (no number, unless an extension follows)
            f"ref A{digits[:cut]} {digits[cut:]}kg",
            f"call 0{digits}x12 or {digits}%",
            f"pay €{digits[:cut]}-{digits[cut:]}",
        )
        for text in shapes:
            gate = phone_regions(text, REGIONS)
            for region, recognizer in recognizers.items():
                checked += 1
                if recognizer.analyze(text, ["PHONE_NUMBER"]):
                    reported += 1
                    assert region in gate, (text, region)
    assert reported > 12, f"too few numbers reported ({reported} of {checked}) to test much"
