"""The client's PII guard: which tool arguments it blocks, and opt-in redaction."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.client import Governor, ToolBlocked
from streams.client.pii import PiiGuard
from streams.control import KeyRing
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


class Capturing(Governor):
    """The real Governor and Session; emitted events are kept here instead of produced."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.events: list[dict[str, Any]] = []
        super().__init__(*args, **kwargs)

    def emit(self, event: dict[str, Any]) -> None:
        self.events.append(event)


@pytest.fixture
def gov() -> Iterator[Capturing]:
    settings = Settings.from_env(
        {},
        bootstrap="127.0.0.1:1",
        redis_url="redis://127.0.0.1:1/0",
        policies_dir=REPO / "policies",
    )
    made = Capturing("acme", "payments-bot", settings=settings, public_keys=KeyRing({}), obey=False)
    yield made
    made.close(timeout_s=0)


CARD = {"card": "4111 1111 1111 1111"}


def test_tool_call_arguments_pass_the_guard_and_a_block_is_raised_not_recorded_as_run(
    gov: Capturing,
) -> None:
    s = gov.session("s-1")
    s.start()
    with pytest.raises(ToolBlocked) as refused:
        s.tool_call(name="charge_card", args=CARD, result={"charged": True}, duration_ms=5)
    assert refused.value.entity_types == ["CREDIT_CARD"]
    blocked = gov.events[-1]
    assert (blocked["kind"], blocked["status"], blocked["error_type"]) == (
        "TOOL_CALL",
        "BLOCKED",
        "PiiBlocked",
    )
    assert blocked["tool_name"] == "charge_card"
    assert [c["role"] for c in blocked["content"]] == ["TOOL_ARGUMENTS"]  # it never ran
    assert not [e for e in gov.events if e["kind"] == "TOOL_CALL" and e["status"] == "OK"]
    ok = s.tool_call(name="lookup_order", args={"order": 7}, result={"status": "shipped"})
    assert ok["status"] == "OK"


def test_guard_tool_refuses_before_an_adapter_runs_the_tool(gov: Capturing) -> None:
    s = gov.session("s-2")
    s.start()
    s.guard_tool(name="lookup_order", args={"order": 7})
    assert len(gov.events) == 1
    with pytest.raises(ToolBlocked):
        s.guard_tool(name="charge_card", args=CARD, call_id="c-1")
    assert gov.events[-1]["status"] == "BLOCKED"
    assert gov.events[-1]["tool_call_id"] == "c-1"
    with pytest.raises(ToolBlocked), s.tool(name="charge_card", args=CARD):
        pytest.fail("the tool ran")  # pragma: no cover
