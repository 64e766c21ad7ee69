"""The ACLs of `governor topics acls`: derived from the topic list, least privilege per role."""

from __future__ import annotations

import json

from confluent_kafka.admin import AclOperation, ResourcePatternType, ResourceType
from typer.testing import CliRunner

from streams.cli import app
from streams.kafka_acls import (
    Acl,
    acl_bindings,
    acls_from_dicts,
    kafka_acls_command,
    principal,
    role_acls,
)
from streams.settings import Settings
from streams.topics import topic_specs


def allowed(acls: list[Acl], who: str, topic: str) -> set[str]:
    """Operations ``who`` has on ``topic`` (literal or by prefix)."""
    ops: set[str] = set()
    for acl in acls:
        if acl.principal != who or acl.resource != "topic":
            continue
        if acl.name == topic or (acl.pattern == "prefixed" and topic.startswith(acl.name)):
            ops.update(acl.operations)
    return ops


def test_the_agent_writes_events_reads_control_and_policies_only() -> None:
    settings = Settings(topic_prefix="acme.")
    acls = role_acls(settings, agent="bot")
    agent = "User:bot"
    assert allowed(acls, agent, "acme.events") == {"Write", "Describe"}
    assert allowed(acls, agent, "acme.control") == {"Read", "Describe"}
    assert allowed(acls, agent, "acme.policies") == {"Read", "Describe"}
    for spec in topic_specs(settings):
        if spec.suffix not in ("events", "control", "policies"):
            assert allowed(acls, agent, spec.name(settings)) == set(), spec.suffix
    assert not any(a.principal == agent and a.resource == "transactional-id" for a in acls)


def test_every_topic_is_covered_for_the_worker_and_the_reader() -> None:
    settings = Settings()
    acls = role_acls(settings)
    for spec in topic_specs(settings):
        name = spec.name(settings)
        assert {"Read", "Write", "Create"} <= allowed(acls, "User:worker", name)
        assert allowed(acls, "User:reader", name) == {"Read", "Describe"}
    # the stages' own topics, replays and Faust's topics
    for name in ("gov.governor-state", "gov.replay.x1", "governor-__assignor-__leader"):
        assert "Write" in allowed(acls, "User:worker", name)
    assert not any(op == "Write" for a in acls if a.role == "reader" for op in a.operations)


def test_kafka_acls_lines_and_bindings_say_the_same() -> None:
    acls = role_acls(Settings())
    line = kafka_acls_command(acls[0], "b:9093")
    assert line == (
        "kafka-acls.sh --bootstrap-server b:9093 --command-config admin.properties --add "
        "--allow-principal User:agent --operation Write --operation Describe --topic gov.events"
    )
    prefixed = next(a for a in acls if a.resource == "transactional-id")
    assert kafka_acls_command(prefixed, "b").endswith(
        "--transactional-id governor- --resource-pattern-type prefixed"
    )
    cluster = next(a for a in acls if a.resource == "cluster")
    assert "--cluster" in kafka_acls_command(cluster, "b")
    bindings = acl_bindings(acls)
    assert len(bindings) == sum(len(a.operations) for a in acls)
    first = bindings[0]
    assert (first.restype, first.name, first.principal) == (
        ResourceType.TOPIC, "gov.events", "User:agent",
    )  # fmt: skip
    assert first.operation == AclOperation.WRITE
    assert first.resource_pattern_type == ResourcePatternType.LITERAL
    ops = {b.operation for b in bindings}
    assert AclOperation.DESCRIBE_CONFIGS in ops


def test_principals() -> None:
    assert principal("alice") == "User:alice"
    assert principal("User:CN=agent,O=acme") == "User:CN=agent,O=acme"


def test_the_cli_prints_the_same_acls_as_json_and_as_commands() -> None:
    result = CliRunner().invoke(
        app, ["topics", "acls", "--agent", "bot", "--json"], env={"GOVERNOR_TOPIC_PREFIX": "x."}
    )
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    acls = acls_from_dicts(answer["acls"])
    assert acls == role_acls(Settings(topic_prefix="x."), agent="bot")
    assert len(answer["commands"]) == len(acls)
    table = CliRunner().invoke(app, ["topics", "acls"], env={"GOVERNOR_TOPIC_PREFIX": "x."})
    assert table.exit_code == 0, table.output
    assert "kafka-acls.sh --bootstrap-server" in table.output
    assert "x.events" in table.output
