"""The gateway's own decisions from the policies: offered tools, redaction, hops."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from streams.gateway.guard import denied_tool, hops_of, redactions, redacts
from streams.gateway.protocol import Segment
from streams.pipeline.pii import PiiPolicy
from streams.pipeline.policy import PolicySet
from streams.policy_files import parse_model_file, parse_policy_file

POLICIES = """version: 1
policies:
  - id: no-drops
    kind: tools
    deny: ["drop_*"]
    action: kill
  - id: globex-only
    kind: tools
    allow: ["search"]
    match: {tenants: [globex]}
    action: pause
"""
PII = """version: 1
entities: [EMAIL_ADDRESS, SECRET]
default: log
rules:
  - entities: [EMAIL_ADDRESS]
    hops: [CONTEXT]
    handling: redact
"""


@dataclass(frozen=True)
class Match:
    entity_type: str
    start: int
    end: int
    score: float = 0.9


def scan(text: str) -> list[Match]:
    at = text.find("a@b.io")
    return [] if at < 0 else [Match("EMAIL_ADDRESS", at, at + 6)]


def test_offered_tools_are_denied_by_the_agents_tool_policies() -> None:
    policies = PolicySet.build([parse_policy_file(Path("p.yaml"), POLICIES)])
    denial = denied_tool(policies, "acme", "bot", "drop_table")
    assert denial is not None
    assert (denial.policy_id, denial.action) == ("no-drops", "KILL")
    assert denied_tool(policies, "acme", "bot", "lookup") is None
    globex = denied_tool(policies, "globex", "bot", "lookup")
    assert globex is not None
    assert (globex.policy_id, globex.action) == ("globex-only", "PAUSE")


def test_redaction_follows_the_handling_at_each_hop() -> None:
    policy = parse_model_file(Path("pii.yaml"), PII, PiiPolicy)
    assert redacts(policy)
    segments = [
        Segment("USER", "mail a@b.io now", ("messages", 0, "content")),
        Segment("TOOL_RESULT", "a@b.io", ("messages", 1, "content"), "crm"),  # not CONTEXT
        Segment("SYSTEM", "nothing here", ("system",)),
    ]
    changed = redactions(policy, segments, scan)
    assert [(c.segment.path, c.text, c.entities) for c in changed] == [
        (("messages", 0, "content"), "mail <EMAIL_ADDRESS> now", ("EMAIL_ADDRESS",))
    ]


def test_hops_name_where_a_blocked_entity_was_found() -> None:
    segments = [
        Segment("USER", "hi", ()),
        Segment("TOOL_RESULT", "key sk", (), "vault"),
    ]
    found = {"key sk": ["SECRET"]}
    assert hops_of(segments, ["SECRET"], lambda t: found.get(t, [])) == ["TOOL_RESULT"]
