"""`governor audit verify` on a real audit topic: intact, edited, removed, reordered, truncated.

A Kafka log cannot be edited in place, so each case writes a copy of a genuine chain with one
change, as a restored or migrated topic could carry it, and verifies that copy.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from typer.testing import CliRunner

from streams.audit import AuditChains, verify_audit_topic
from streams.cli import app
from streams.codec import Codecs
from streams.settings import Settings
from tests.kafka_helpers import produce

Tamper = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


def write_chain(settings: Settings, tamper: Tamper) -> list[dict[str, Any]]:
    chains = AuditChains()
    records = [
        chains.append(
            "acme", "DECISION", 1000 + i, f"session:s{i}", f"KILL #{i}", {"decision_id": f"d{i}"}
        )
        for i in range(6)
    ]
    codec = Codecs.load(settings.schemas_dir).audit_record
    written = tamper(records)
    produce(
        settings.bootstrap,
        settings.topic("audit"),
        [(r["tenant_id"].encode(), codec.encode(r)) for r in written],
    )
    head = chains.heads["acme"]
    produce(
        settings.bootstrap,
        settings.topic("audit.heads"),
        [(b"acme", json.dumps({"chain_seq": head.chain_seq, "hash": head.hash}).encode())],
    )
    return records


def edit(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [*records[:3], {**records[3], "summary": "ALLOW #3"}, *records[4:]]


@pytest.mark.parametrize(
    ("tamper", "seq", "words"),
    [
        (edit, 4, "hash does not match"),
        (lambda r: [*r[:2], *r[3:]], 4, "expected chain_seq 3, found 4"),
        (lambda r: [r[0], r[2], r[1], *r[3:]], 3, "expected chain_seq 2, found 3"),
        (lambda r: r[:4], 5, "truncated"),
    ],
    ids=["edited", "removed", "reordered", "truncated"],
)
def test_tampering_is_named(topics: Settings, tamper: Tamper, seq: int, words: str) -> None:
    write_chain(topics, tamper)
    result = verify_audit_topic(topics)
    assert result.breaks, "the tampering went unnoticed"
    first = result.breaks[0]
    assert (first.tenant_id, first.chain_seq) == ("acme", seq)
    assert words in first.problem


def test_an_intact_chain_passes_on_the_command_line(topics: Settings) -> None:
    write_chain(topics, lambda r: r)
    assert verify_audit_topic(topics).breaks == []
    runner = CliRunner()
    result = runner.invoke(app, ["audit", "verify", "--json"], env=topics.to_env())
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["intact"] is True


def test_a_record_that_is_not_avro_is_named_and_fails_the_verification(topics: Settings) -> None:
    """A foreign record in gov.audit (here JSON a misconfigured producer wrote) is a failure
    the command names by partition, offset and reason, exiting 1 without a traceback."""
    write_chain(topics, lambda r: r)
    produce(topics.bootstrap, topics.topic("audit"), [(b"acme", b'{"kind": "[DECISION]"}')])
    result = verify_audit_topic(topics)
    [problem] = result.breaks
    assert (problem.tenant_id, problem.chain_seq, problem.offset) == ("acme", None, 6)
    assert problem.partition is not None
    assert "not an AuditRecord" in problem.problem
    runner = CliRunner()
    as_json = runner.invoke(app, ["audit", "verify", "--json"], env=topics.to_env())
    assert as_json.exit_code == 1, as_json.output
    assert as_json.exception is None or isinstance(as_json.exception, SystemExit)
    [named] = json.loads(as_json.output)["breaks"]
    assert (named["partition"], named["offset"]) == (problem.partition, 6)
    text = runner.invoke(app, ["audit", "verify"], env=topics.to_env())
    assert text.exit_code == 1, text.output
    assert isinstance(text.exception, SystemExit)
    assert f"partition {problem.partition}, offset 6" in text.output
    assert "not an Avro single-object payload" in text.output
    assert "BROKEN" in text.output
