"""The hash chain: appending links records; verifying names every kind of tampering."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streams.audit import (
    GENESIS,
    AuditChains,
    decode_audit_rows,
    decode_heads,
    record_hash,
    verify_chain,
)
from streams.codec import Codecs
from tests.unit.test_codec import step_event

REPO = Path(__file__).resolve().parents[2]


def chain(n: int = 5) -> list[dict[str, Any]]:
    chains = AuditChains()
    return [
        chains.append(
            "acme" if i % 2 else "globex",
            "DECISION",
            1_000 + i,
            f"session:s{i}",
            f"KILL #{i}",
            {"policy_id": "p"},
        )
        for i in range(n)
    ]


def test_records_link_per_tenant() -> None:
    records = chain()
    acme = [r for r in records if r["tenant_id"] == "acme"]
    assert [r["chain_seq"] for r in acme] == [1, 2]
    assert acme[0]["prev_hash"] == GENESIS
    assert acme[1]["prev_hash"] == acme[0]["hash"]
    assert all(record_hash(r) == r["hash"] for r in records)
    assert verify_chain(enumerate(records)) == []


def test_an_edit_is_named() -> None:
    records = chain()
    records[2] = {**records[2], "summary": "ALLOW"}
    [problem] = verify_chain(enumerate(records))
    assert (problem.tenant_id, problem.chain_seq, problem.offset) == ("globex", 2, 2)
    assert "hash does not match" in problem.problem


def test_a_removal_and_a_reordering_are_named() -> None:
    records = chain(7)
    removed = [r for i, r in enumerate(records) if i != 2]
    [problem] = verify_chain(enumerate(removed))
    assert (problem.tenant_id, problem.chain_seq) == ("globex", 3)
    assert "missing" in problem.problem
    swapped = [records[0], records[1], records[4], records[3], records[2], *records[5:]]
    problems = verify_chain(enumerate(swapped))
    assert problems
    assert problems[0].tenant_id == "globex"


def test_a_truncated_end_is_named_against_the_heads() -> None:
    chains = AuditChains()
    records = [chains.append("acme", "DECISION", i, "t", "s", {}) for i in range(4)]
    assert verify_chain(enumerate(records), chains.heads) == []
    [problem] = verify_chain(enumerate(records[:2]), chains.heads)
    assert (problem.tenant_id, problem.chain_seq) == ("acme", 3)
    assert "truncated" in problem.problem


def test_a_record_that_is_not_an_audit_record_is_named_not_a_crash() -> None:
    codecs = Codecs.load(REPO / "schemas")
    good = chain(3)
    rows = [
        (0, b"acme", codecs.audit_record.encode(good[0])),
        (1, b"acme", b'{"not": "avro"}'),
        (2, b"globex", None),  # a tombstone is no record
        (3, b"globex", codecs.step_event.encode(step_event())),  # Avro, but another record
    ]
    records, breaks = decode_audit_rows(codecs.audit_record.decode, 4, rows)
    assert [offset for offset, _ in records] == [0]
    assert [(b.tenant_id, b.chain_seq, b.partition, b.offset) for b in breaks] == [
        ("acme", None, 4, 1),
        ("globex", None, 4, 3),
    ]
    assert "not an AuditRecord: not an Avro single-object payload" in breaks[0].problem
    assert "StepEvent.v1, expected AuditRecord" in breaks[1].problem


def test_a_head_that_is_not_json_is_named() -> None:
    heads, breaks = decode_heads(
        [(0, b"acme", b'{"chain_seq": 2, "hash": "ab"}'), (1, b"globex", b"\x00garbage")]
    )
    assert heads["acme"].chain_seq == 2
    [problem] = breaks
    assert (problem.tenant_id, problem.offset) == ("globex", 1)
    assert "not a chain head" in problem.problem
