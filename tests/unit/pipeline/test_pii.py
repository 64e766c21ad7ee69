"""PII handling: fingerprints follow a value across spellings, never reveal it; rules decide."""

from __future__ import annotations

from pathlib import Path

import yaml

from streams.pipeline.pii import Match, PiiPolicy, findings, fingerprint, redact

REPO = Path(__file__).resolve().parents[3]
KEY = b"k" * 32
POLICY = PiiPolicy.model_validate(yaml.safe_load((REPO / "policies" / "pii.yaml").read_text()))


def test_fingerprints_match_across_spellings_and_depend_on_the_key() -> None:
    a = fingerprint(KEY, "CREDIT_CARD", "4111 1111 1111 1111")
    assert a == fingerprint(KEY, "CREDIT_CARD", "4111-1111-1111-1111")
    assert fingerprint(KEY, "EMAIL_ADDRESS", "Jane@Example.com ") == fingerprint(
        KEY, "EMAIL_ADDRESS", "jane@example.com"
    )
    assert a != fingerprint(b"other-key" * 4, "CREDIT_CARD", "4111 1111 1111 1111")
    assert "4111" not in a


def test_the_first_covering_rule_decides() -> None:
    assert POLICY.handling("CREDIT_CARD", "TOOL_ARGUMENTS", "pay") == "BLOCK"
    assert POLICY.handling("CREDIT_CARD", "OUTPUT", None) == "REDACT"
    assert POLICY.handling("CREDIT_CARD", "CONTEXT", None) == "LOG"
    assert POLICY.handling("SECRET", "TOOL_RESULT", "fetch") == "KILL"
    assert POLICY.handling("IP_ADDRESS", "CONTEXT", None) == "ALLOW"
    assert POLICY.blocks_tool_arguments()


def test_findings_carry_hop_tool_handling_and_no_value() -> None:
    event = {
        "event_id": "e1",
        "session_id": "s1",
        "tenant_id": "acme",
        "agent_id": "bot",
        "seq": 4,
        "start_time_us": 1,
        "tool_name": "charge_card",
        "content": [
            {"role": "TOOL_ARGUMENTS", "text": '{"card": "4111 1111 1111 1111"}'},
            {"role": "TOOL_RESULT", "text": "mailed jane@example.com"},
        ],
    }
    matches = [
        (0, [Match("CREDIT_CARD", 10, 29, 1.0, "CreditCardRecognizer")]),
        (
            1,
            [
                Match("EMAIL_ADDRESS", 7, 23, 1.0, "EmailRecognizer"),
                Match("PHONE_NUMBER", 0, 3, 0.1, "PhoneRecognizer"),
            ],
        ),
    ]
    records = findings(event, matches, POLICY, KEY, "k1")
    assert [
        (r["entity_type"], r["hop"], r["tool_name"], r["destination"], r["handling"])
        for r in records
    ] == [
        ("CREDIT_CARD", "TOOL_ARGUMENTS", "charge_card", "tool:charge_card", "BLOCK"),
        ("EMAIL_ADDRESS", "TOOL_RESULT", "charge_card", "model", "LOG"),
    ]
    assert records[0]["fingerprint"] == fingerprint(KEY, "CREDIT_CARD", "4111 1111 1111 1111")
    assert "4111" not in repr(records)
    assert "jane" not in repr(records)
    assert records == findings(event, matches, POLICY, KEY, "k1")  # ids are deterministic


def test_redaction_replaces_every_match() -> None:
    text = "card 4111 1111 1111 1111 mail jane@example.com"
    out = redact(text, [Match("CREDIT_CARD", 5, 24, 1, ""), Match("EMAIL_ADDRESS", 30, 46, 1, "")])
    assert out == "card <CREDIT_CARD> mail <EMAIL_ADDRESS>"
