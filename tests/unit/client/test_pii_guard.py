"""The client's PII guard: which tool arguments it blocks, and opt-in redaction."""

from __future__ import annotations

from pathlib import Path

from streams.client.pii import PiiGuard
from streams.policy_files import DEFAULT_PII_POLICY, load_pii_policy
from streams.settings import Settings

REPO = Path(__file__).resolve().parents[3]


def test_the_shipped_policy_turns_the_guard_on_and_blocks_cards_in_arguments() -> None:
    guard = PiiGuard.build(Settings.from_env({}, policies_dir=REPO / "policies"), None, False)
    assert guard.guards_tools
    assert guard.blocked_entities("pay", ['{"card": "4111 1111 1111 1111"}']) == ["CREDIT_CARD"]
    assert guard.blocked_entities("pay", ['{"email": "a@example.com"}']) == []


def test_without_block_rules_the_guard_stays_off(tmp_path: Path) -> None:
    guard = PiiGuard.build(Settings.from_env({}, policies_dir=tmp_path), None, False)
    assert guard.policy == DEFAULT_PII_POLICY
    assert not guard.guards_tools


def test_redaction_replaces_entities_before_they_leave() -> None:
    guard = PiiGuard(load_pii_policy(REPO / "policies"), guards_tools=False, redact=True)
    [segment] = guard.redacted(
        [{"role": "USER", "text": "mail jane@example.com, card 4111 1111 1111 1111"}]
    )
    assert segment == {"role": "USER", "text": "mail <EMAIL_ADDRESS>, card <CREDIT_CARD>"}
    untouched = {"role": "USER", "text": "nothing to see"}
    assert guard.redacted([untouched]) == [untouched]
