"""`governor audit verify` on a real audit topic: intact, edited, removed, reordered, truncated,
rewritten consistently without the key, rolled back behind an anchor.

A Kafka log cannot be edited in place, so each case writes a copy of a genuine chain with one
change, as a restored or migrated topic could carry it, and verifies that copy. The genuine
chain is signed as the worker signs it (its key in the test's keys folder, every 2nd record and
the head); the forger has only the public key.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streams.audit import (
    AuditChains,
    AuditRecord,
    ChainHead,
    SignedHead,
    due_for_signature,
    sign_head,
    sign_record,
    verify_audit_topic,
)
from streams.cli import app
from streams.codec import Codecs
from streams.control import ensure_signing_key
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.kafka_helpers import produce

Tamper = Callable[[list[AuditRecord]], list[AuditRecord]]
EVERY = 2


def genuine_chain(settings: Settings) -> tuple[list[AuditRecord], list[SignedHead]]:
    """Six records of tenant acme as the worker writes them, and the signed head it recorded
    after each one."""
    key = ensure_signing_key(settings.control_keys_dir)
    chains = AuditChains()
    records: list[AuditRecord] = []
    heads: list[SignedHead] = []
    for i in range(6):
        record = chains.append(
            "acme", "DECISION", 1000 + i, f"session:s{i}", f"KILL #{i}", {"decision_id": f"d{i}"}
        )
        records.append(sign_record(record, key) if due_for_signature(i + 1, EVERY) else record)
        heads.append(sign_head("acme", chains.heads["acme"], key, 2000 + i, EVERY))
    return records, heads


def write_trail(settings: Settings, records: list[AuditRecord], head: bytes) -> None:
    codec = Codecs.load(settings.schemas_dir).audit_record
    produce(
        settings.bootstrap,
        settings.topic("audit"),
        [(r["tenant_id"].encode(), codec.encode(r)) for r in records],
    )
    produce(settings.bootstrap, settings.topic("audit.heads"), [(b"acme", head)])


def write_chain(settings: Settings, tamper: Tamper) -> list[AuditRecord]:
    records, heads = genuine_chain(settings)
    write_trail(settings, tamper(records), heads[-1].to_json())
    return records


def forge(records: list[AuditRecord], at: int, summary: str) -> list[AuditRecord]:
    """Record ``at`` (index) changed and every later one re-linked, consistently; the forger
    keeps the signatures it cannot renew."""
    prev = records[at - 1]
    chains = AuditChains({"acme": ChainHead(prev["chain_seq"], prev["hash"])})
    forged = list(records[:at])
    for record in records[at:]:
        again = chains.append(
            "acme",
            record["kind"],
            record["time_us"],
            record["subject"],
            summary if record is records[at] else record["summary"],
            record["details"],
            record_id=record["record_id"],
        )
        again["key_id"], again["signature"] = record["key_id"], record["signature"]
        forged.append(again)
    return forged


def edit(records: list[AuditRecord]) -> list[AuditRecord]:
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


def test_a_consistent_rewrite_without_the_key_is_named(topics: Settings) -> None:
    """Record #3 changed, #4..#6 re-linked and the head rewritten to match: every link and
    hash holds, only the signatures (the forger has no private key) give it away."""
    records, _ = genuine_chain(topics)
    forged = forge(records, 2, "ALLOW #2")
    last = forged[-1]
    unsigned_head = json.dumps({"chain_seq": last["chain_seq"], "hash": last["hash"]}).encode()
    write_trail(topics, forged, unsigned_head)
    result = verify_audit_topic(topics)
    named = [(b.tenant_id, b.chain_seq, b.offset, b.problem) for b in result.breaks]
    assert named == [
        ("acme", 4, 3, "record signature does not verify with key " + repr(records[1]["key_id"])),
        ("acme", 6, 5, "record signature does not verify with key " + repr(records[1]["key_id"])),
        (
            "acme",
            6,
            None,
            "unsigned head: it carries no signature (not written by a worker with the key)",
        ),
    ]
    text = CliRunner().invoke(app, ["audit", "verify"], env=topics.to_env())
    assert text.exit_code == 1, text.output
    assert "acme #4 (offset 3): record signature does not verify" in text.output
    assert "acme #6 (end of chain): unsigned head" in text.output


def test_an_anchor_kept_outside_kafka_reveals_a_rollback_the_chain_cannot(
    topics: Settings, tmp_path: Path
) -> None:
    """The trail cut back to #4 with the worker's own signed head of #4 put back: every
    signature is genuine, so only the anchor taken at #6 shows what is gone."""
    records, heads = genuine_chain(topics)
    write_trail(topics, records, heads[-1].to_json())
    runner = CliRunner()
    env = topics.to_env()
    anchored = runner.invoke(app, ["audit", "anchor", "--tenant", "acme", "--json"], env=env)
    assert anchored.exit_code == 0, anchored.output
    anchor = json.loads(anchored.output)
    assert (anchor["tenant_id"], anchor["chain_seq"]) == ("acme", 6)
    assert anchor["hash"] == records[-1]["hash"]
    assert anchor["signature"]
    assert anchor["key_id"] == records[1]["key_id"]
    keep = tmp_path / "anchor.json"
    keep.write_text(anchored.output)
    ok = runner.invoke(app, ["audit", "verify", "--anchor", str(keep)], env=env)
    assert ok.exit_code == 0, ok.output
    assert "1 anchors" in ok.output

    rolled_back = topics.replace(topic_prefix=topics.topic_prefix + "copy.")
    ensure_topics(rolled_back)
    write_trail(rolled_back, records[:4], heads[3].to_json())
    assert verify_audit_topic(rolled_back).breaks == [], "without the anchor it passes"
    env = rolled_back.to_env()
    broken = runner.invoke(app, ["audit", "verify", "--anchor", str(keep), "--json"], env=env)
    assert broken.exit_code == 1, broken.output
    [problem] = json.loads(broken.output)["breaks"]
    assert (problem["tenant_id"], problem["chain_seq"]) == ("acme", 6)
    assert "the anchored record is gone: the chain ends at #4" in problem["problem"]
    # a forged anchor is refused for its signature, whatever the trail holds
    forged = json.dumps({**anchor, "chain_seq": 4, "hash": records[3]["hash"]})
    refused = runner.invoke(app, ["audit", "verify", "--anchor", forged], env=env)
    assert refused.exit_code == 1, refused.output
    assert "the anchor: head signature does not verify" in refused.output
