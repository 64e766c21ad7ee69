"""`governor incident ...` on a real broker: the record's life from open to close, as the CLI
shows it and as the compacted gov.incidents holds it."""

from __future__ import annotations

import json
import re
from typing import Any

from typer.testing import CliRunner, Result

from streams.cli import app
from streams.codec import Codecs
from streams.settings import Settings
from streams.times import now_us
from streams.topics import admin_client, describe_topics
from tests.kafka_helpers import consume

HOUR_US = 3600 * 1_000_000


def cli(settings: Settings, *args: str, **env: str) -> Result:
    return CliRunner().invoke(app, ["incident", *args], env={**settings.to_env(), **env})


def ok(settings: Settings, *args: str, **env: str) -> str:
    result = cli(settings, *args, **env)
    assert result.exit_code == 0, result.output
    return result.output


def as_json(settings: Settings, *args: str) -> Any:
    return json.loads(ok(settings, *args, "--json"))


def test_an_incident_from_open_to_close_as_the_cli_and_the_topic_show_it(
    topics: Settings,
) -> None:
    s = topics
    before = now_us()
    opened = ok(
        s, "open", "--title", "support-bot refunds twice", "--from", "2h", "--layer", "prompt",
        "--severity", "sev2", "--tenant", "acme", "--agent", "support-bot",
        "--session", "s-1", "--by", "alice",
    )  # fmt: skip
    match = re.search(r"opened (INC-\d{8}-[0-9a-f]{4}): support-bot refunds twice", opened)
    assert match, opened
    incident_id = match[1]
    ok(s, "note", incident_id, "p8 prompt loops on refund tool", "--by", "bob")
    ok(s, "note", incident_id, "rolled policies back to v1", "--action", "--by", "bob")
    ok(
        s, "note", incident_id, "refund 3 orders created by session s-1", "--downstream",
        "--session", "s-1", "--session", "s-2", "--by", "carol",
    )  # fmt: skip
    assert incident_id in ok(s, "list")
    assert [i["incident_id"] for i in as_json(s, "list")["incidents"]] == [incident_id]
    ok(s, "close", incident_id, "--resolution", "prompt p7 restored", "--by", "alice")

    shown = as_json(s, "show", incident_id)
    assert shown["status"] == "CLOSED"
    assert (shown["title"], shown["severity"], shown["suspected_layer"]) == (
        "support-bot refunds twice",
        "SEV2",
        "PROMPT",
    )
    assert (shown["opened_by"], shown["closed_by"]) == ("alice", "alice")
    assert shown["resolution"] == "prompt p7 restored"
    assert (shown["tenants"], shown["agents"]) == (["acme"], ["support-bot"])
    assert shown["affected_sessions"] == ["s-1", "s-2"]
    assert abs(shown["from_us"] - (shown["opened_at_us"] - 2 * HOUR_US)) < 1_000_000
    assert shown["to_us"] == shown["closed_at_us"] >= shown["opened_at_us"] >= before
    assert [(e["kind"], e["author"], e["text"]) for e in shown["entries"]] == [
        ("STATUS", "alice", "opened"),
        ("NOTE", "bob", "p8 prompt loops on refund tool"),
        ("ACTION", "bob", "rolled policies back to v1"),
        ("DOWNSTREAM", "carol", "refund 3 orders created by session s-1"),
        ("STATUS", "alice", "closed: prompt p7 restored"),
    ]
    assert shown["entries"][3]["sessions"] == ["s-1", "s-2"]

    assert as_json(s, "list")["incidents"] == [], "a closed incident is not listed by default"
    assert as_json(s, "list", "--all")["incidents"] == [shown]
    readable = ok(s, "show", incident_id)
    for words in ("refund 3 orders created by session s-1", "DOWNSTREAM", "closed", "s-2"):
        assert words in readable, readable
    assert incident_id in ok(s, "list", "--all")

    # the topic, read back without the code under test: one record per change, compacted
    codec = Codecs.load(s.schemas_dir).incident
    records = [
        (m.key(), codec.decode(m.value() or b""))
        for m in consume(s.bootstrap, s.topic("incidents"), 5)
    ]
    assert {key for key, _ in records} == {incident_id.encode()}
    assert [len(r["entries"]) for _, r in records] == [1, 2, 3, 4, 5]
    assert records[-1][1] == shown, "the last record is the state the CLI shows"
    [info] = describe_topics(admin_client(s), [s.topic("incidents")])
    assert info.cleanup_policy == "compact"


def test_each_incident_keeps_its_own_latest_state_and_user_is_the_default_author(
    topics: Settings,
) -> None:
    s = topics
    ok(s, "open", "--title", "search tool down", "--layer", "tool", "--id", "INC-a", USER="dana")
    ok(s, "open", "--title", "model drift", "--layer", "model", "--id", "INC-b", USER="dana")
    ok(s, "note", "INC-a", "vendor status page red", USER="erin")
    ok(s, "close", "INC-b", "--resolution", "pinned the model version", "--to", "now")
    by_id = {i["incident_id"]: i for i in as_json(s, "list", "--all")["incidents"]}
    assert (by_id["INC-a"]["status"], by_id["INC-b"]["status"]) == ("OPEN", "CLOSED")
    assert by_id["INC-a"]["opened_by"] == "dana"
    assert [e["author"] for e in by_id["INC-a"]["entries"]] == ["dana", "erin"]
    assert by_id["INC-a"]["to_us"] is None, "ongoing"
    assert [i["incident_id"] for i in as_json(s, "list")["incidents"]] == ["INC-a"]

    codec = Codecs.load(s.schemas_dir).incident
    latest: dict[bytes, dict[str, Any]] = {}
    for m in consume(s.bootstrap, s.topic("incidents"), 4):
        latest[m.key() or b""] = codec.decode(m.value() or b"")
    assert latest[b"INC-a"] == by_id["INC-a"]
    assert latest[b"INC-b"] == by_id["INC-b"]


def test_refused_changes_say_why_in_one_line_and_exit_1(topics: Settings) -> None:
    s = topics
    ok(s, "open", "--title", "t", "--id", "INC-x")
    ok(s, "close", "INC-x", "--resolution", "done", "--by", "alice")
    cases = [
        (("close", "INC-x", "--resolution", "again"), "incident INC-x is already closed"),
        (("note", "INC-nope", "hello"), "no incident INC-nope in gov.incidents"),
        (("open", "--title", "t", "--id", "INC-x"), "incident INC-x already exists"),
        (("open", "--title", "t", "--layer", "database"), "layer 'database': choose one of"),
        (("open", "--title", "t", "--from", "yesterday-ish"), "'yesterday-ish' is not a time"),
        (("note", "INC-x", "n", "--action", "--downstream"), "either --action or --downstream"),
    ]
    for args, words in cases:
        result = cli(s, *args)
        assert result.exit_code == 1, (args, result.output)
        assert words in result.output, (args, result.output)
        assert "Traceback" not in result.output
    assert [i["incident_id"] for i in as_json(s, "list", "--all")["incidents"]] == ["INC-x"]
