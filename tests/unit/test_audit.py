"""The hash chain: appending links records; verifying names every kind of tampering."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from streams.audit import (
    GENESIS,
    AnchorError,
    AuditChains,
    AuditRecord,
    ChainHead,
    SignedHead,
    decode_audit_rows,
    decode_heads,
    parse_anchors,
    record_hash,
    sign_head,
    sign_record,
    verify_anchor,
    verify_chain,
    verify_heads,
)
from streams.codec import Codec, Codecs, SchemaSet
from streams.control import KeyRing, SigningKey
from tests.unit.test_codec import step_event

REPO = Path(__file__).resolve().parents[2]


def chain(n: int = 5) -> list[AuditRecord]:
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
    assert "StepEvent.v2, expected AuditRecord" in breaks[1].problem


def test_a_head_that_is_not_json_is_named() -> None:
    heads, breaks = decode_heads(
        [(0, b"acme", b'{"chain_seq": 2, "hash": "ab"}'), (1, b"globex", b"\x00garbage")]
    )
    assert heads["acme"].chain_seq == 2
    [problem] = breaks
    assert (problem.tenant_id, problem.offset) == ("globex", 1)
    assert "not a chain head" in problem.problem


# --- signatures ------------------------------------------------------------------------------

KEY = SigningKey("w1", Ed25519PrivateKey.generate())
RING = KeyRing.from_b64({"w1": KEY.public_b64()})
EVERY = 2


def signed_chain(n: int = 6) -> tuple[list[AuditRecord], SignedHead]:
    """One tenant's chain as the worker writes it: every EVERY-th record and the head signed."""
    chains = AuditChains()
    records = []
    for i in range(n):
        record = chains.append("acme", "DECISION", 1_000 + i, f"session:s{i}", f"KILL #{i}", {})
        records.append(sign_record(record, KEY) if record["chain_seq"] % EVERY == 0 else record)
    return records, sign_head("acme", chains.heads["acme"], KEY, 5_000, EVERY)


def rewrite(records: list[AuditRecord], at: int, summary: str) -> list[AuditRecord]:
    """What an attacker without the key can do: change record ``at`` (index) and re-link every
    record after it (new hashes), keeping the signatures it cannot renew."""
    forged = AuditChains({"acme": _head_before(records, at)})
    out = list(records[:at])
    for record in records[at:]:
        summary_ = summary if record is records[at] else record["summary"]
        again = forged.append(
            "acme",
            record["kind"],
            record["time_us"],
            record["subject"],
            summary_,
            record["details"],
            record_id=record["record_id"],
        )
        again["key_id"], again["signature"] = record["key_id"], record["signature"]
        out.append(again)
    return out


def _head_before(records: list[AuditRecord], at: int) -> ChainHead:
    return ChainHead(at, records[at - 1]["hash"]) if at else ChainHead()


def test_a_signed_chain_and_head_verify() -> None:
    records, head = signed_chain()
    assert [bool(r["signature"]) for r in records] == [False, True] * 3
    assert all(record_hash(r) == r["hash"] for r in records), "the signature is not hashed"
    assert verify_chain(enumerate(records), {"acme": head.head}, RING, EVERY) == []
    assert verify_heads({"acme": head}, RING) == []


def test_a_consistent_rewrite_without_the_key_is_named() -> None:
    records, _ = signed_chain()
    forged = rewrite(records, 2, "ALLOW #2")
    # the links and hashes are consistent: without signatures the rewrite passes
    forged_head = ChainHead(6, forged[-1]["hash"])
    assert verify_chain(enumerate(forged), {"acme": forged_head}) == []
    problems = verify_chain(enumerate(forged), {"acme": forged_head}, RING, EVERY)
    assert [(p.chain_seq, p.offset) for p in problems] == [(4, 3), (6, 5)]
    assert "record signature does not verify with key 'w1'" in problems[0].problem
    # a head written for the forged chain without the key: unsigned, or with a foreign key
    unsigned = SignedHead("acme", 6, forged_head.hash, 5_000, EVERY)
    [problem] = verify_heads({"acme": unsigned}, RING)
    assert (problem.tenant_id, problem.chain_seq) == ("acme", 6)
    assert "unsigned head" in problem.problem
    other = SigningKey("w1", Ed25519PrivateKey.generate())
    [problem] = verify_heads({"acme": sign_head("acme", forged_head, other, 5_000, EVERY)}, RING)
    assert "head signature does not verify with key 'w1'" in problem.problem
    stranger = SigningKey("x9", Ed25519PrivateKey.generate())
    [problem] = verify_heads({"acme": sign_head("acme", forged_head, stranger, 1, EVERY)}, RING)
    assert "key 'x9', which is not among the trusted public keys" in problem.problem


def test_stripping_the_signatures_is_named() -> None:
    records, _ = signed_chain()
    stripped = [
        {**r, "key_id": "", "signature": b""} if i >= 2 else r for i, r in enumerate(records)
    ]
    problems = verify_chain(enumerate(stripped), None, RING, EVERY)
    assert [p.chain_seq for p in problems] == [4, 6]
    assert "unsigned record: every 2th record is signed (since #2)" in problems[0].problem


def test_a_head_cannot_be_moved_to_another_tenant_or_seq() -> None:
    _, head = signed_chain()
    moved = SignedHead(**{**head.__dict__, "chain_seq": 5})
    [problem] = verify_heads({"acme": moved}, RING)
    assert "does not verify" in problem.problem
    with pytest.raises(ValueError, match="names tenant 'acme'"):
        SignedHead.from_mapping("globex", json.loads(head.to_json()))
    garbled = SignedHead(**{**head.__dict__, "signature": "not base64!"})
    [problem] = verify_heads({"acme": garbled}, RING)
    assert "not base64" in problem.problem


def test_an_anchor_proves_the_record_it_names() -> None:
    records, head = signed_chain()
    [anchor] = parse_anchors(head.to_json().decode())
    assert anchor == head
    assert parse_anchors(json.dumps([json.loads(head.to_json())])) == [head]
    assert verify_anchor(enumerate(records), anchor, RING) == []
    # the chain rewritten from #3 on, heads and all: the anchor names #6
    forged = rewrite(records, 2, "ALLOW #2")
    [problem] = verify_anchor(enumerate(forged), anchor, RING)
    assert (problem.tenant_id, problem.chain_seq, problem.offset) == ("acme", 6, 5)
    assert "differs from the anchor signed by 'w1'" in problem.problem
    [problem] = verify_anchor(enumerate(records[:4]), anchor, RING)
    assert "the anchored record is gone: the chain ends at #4" in problem.problem
    forged_anchor = SignedHead(**{**head.__dict__, "hash": forged[-1]["hash"]})
    [problem] = verify_anchor(enumerate(forged), forged_anchor, RING)
    assert "the anchor: head signature does not verify" in problem.problem


def test_text_that_is_not_an_anchor_says_what_is_expected() -> None:
    with pytest.raises(AnchorError, match="an anchor is JSON"):
        parse_anchors("acme 6 abc")
    with pytest.raises(AnchorError, match="governor audit anchor --json"):
        parse_anchors('{"tenant_id": "acme"}')


def test_v1_records_still_verify_and_signed_v2_records_round_trip() -> None:
    schemas = SchemaSet.load(REPO / "schemas")
    v1 = Codec(schemas, "AuditRecord", 1)
    current = Codecs(schemas).audit_record
    assert current.schema.version == 2
    plain = chain(3)
    old = [current.decode(v1.encode(r)) for r in plain]
    # (fastavro gives a bytes field's default as "", which is as empty)
    assert [bool(r["signature"]) for r in old] == [False] * 3
    assert verify_chain(enumerate(old), None, RING, EVERY) == []
    records, _ = signed_chain(4)
    decoded = [current.decode(current.encode(r)) for r in records]
    assert verify_chain(enumerate(decoded), None, RING, EVERY) == []
    assert base64.b64encode(decoded[1]["signature"]) == base64.b64encode(records[1]["signature"])
