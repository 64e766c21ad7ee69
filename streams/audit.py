"""The tamper-evident audit trail: one SHA-256 hash chain per tenant (pure, no I/O).

Each AuditRecord carries ``prev_hash`` (the previous record's ``hash``, 64 zeros for the first)
and ``hash`` = SHA-256 over ``prev_hash`` and the canonical JSON of the record without ``hash``.
Editing, removing, reordering or truncating records breaks the chain at a nameable place.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from streams.codec import DecodeError

GENESIS = "0" * 64
AUDIT_NAMESPACE = uuid.UUID("0b6a7c52-3a3d-5b1e-8f7e-3f4e2a9c1d77")


def record_hash(record: Mapping[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256((record["prev_hash"] + canonical).encode()).hexdigest()


@dataclass(frozen=True)
class ChainHead:
    chain_seq: int = 0
    hash: str = GENESIS


class AuditChains:
    """The head of every tenant's chain; ``append`` links a new record to it."""

    def __init__(self, heads: Mapping[str, ChainHead] | None = None) -> None:
        self.heads: dict[str, ChainHead] = dict(heads or {})

    def append(
        self,
        tenant_id: str,
        kind: str,
        time_us: int,
        subject: str,
        summary: str,
        details: Mapping[str, str],
        actor: str = "governor-worker",
        record_id: str | None = None,
    ) -> dict[str, Any]:
        head = self.heads.get(tenant_id, ChainHead())
        record: dict[str, Any] = {
            "tenant_id": tenant_id,
            "chain_seq": head.chain_seq + 1,
            "record_id": record_id
            or str(uuid.uuid5(AUDIT_NAMESPACE, f"{tenant_id}|{kind}|{subject}|{time_us}")),
            "kind": kind,
            "time_us": time_us,
            "actor": actor,
            "subject": subject,
            "summary": summary,
            "details": dict(details),
            "prev_hash": head.hash,
        }
        record["hash"] = record_hash(record)
        self.heads[tenant_id] = ChainHead(record["chain_seq"], record["hash"])
        return record


@dataclass(frozen=True)
class ChainBreak:
    tenant_id: str
    #: None for a record that is not an AuditRecord at all (its place in a chain is unknown)
    chain_seq: int | None
    offset: int | None
    problem: str
    partition: int | None = None


def verify_chain(
    records: Iterable[tuple[int | None, Mapping[str, Any]]],
    expected_heads: Mapping[str, ChainHead] | None = None,
) -> list[ChainBreak]:
    """Check (offset, record) pairs of the audit topic in log order; every break is named.

    ``expected_heads`` (the worker's record of each chain's last link) also reveals a chain cut
    short at its end, which the links alone cannot show.
    """
    heads: dict[str, ChainHead] = {}
    breaks: list[ChainBreak] = []
    for offset, record in records:
        tenant = record["tenant_id"]
        head = heads.get(tenant, ChainHead())
        seq = record["chain_seq"]
        problem = None
        if seq != head.chain_seq + 1:
            what = "missing" if seq > head.chain_seq + 1 else "out of order or repeated"
            problem = f"expected chain_seq {head.chain_seq + 1}, found {seq} ({what} records)"
        elif record["prev_hash"] != head.hash:
            problem = "prev_hash does not match the record before it (changed or removed)"
        if problem is not None:
            breaks.append(ChainBreak(tenant, seq, offset, problem))
        if record_hash(record) != record["hash"]:
            breaks.append(ChainBreak(tenant, seq, offset, "hash does not match the content"))
        heads[tenant] = ChainHead(seq, record["hash"])
    for tenant, expected in sorted((expected_heads or {}).items()):
        seen = heads.get(tenant, ChainHead())
        if seen.chain_seq < expected.chain_seq:
            breaks.append(
                ChainBreak(
                    tenant,
                    seen.chain_seq + 1,
                    None,
                    f"truncated: the chain ends at {seen.chain_seq}, its head "
                    f"is {expected.chain_seq}",
                )
            )
        elif seen.chain_seq == expected.chain_seq and seen.hash != expected.hash:
            breaks.append(
                ChainBreak(
                    tenant, seen.chain_seq, None, "the last record differs from the recorded head"
                )
            )
    return breaks


@dataclass(frozen=True)
class AuditVerification:
    records: int
    tenants: int
    breaks: list[ChainBreak]

    def as_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "tenants": self.tenants,
            "intact": not self.breaks,
            "breaks": [b.__dict__ for b in self.breaks],
        }


Row = tuple[int, bytes | None, bytes | None]


def _tenant_of(key: bytes | None) -> str:
    """The tenant a record's key names (gov.audit is keyed by tenant id), for naming a break."""
    return "?" if key is None else key.decode(errors="replace")


def decode_audit_rows(
    decode: Callable[[bytes], Mapping[str, Any]], partition: int, rows: Iterable[Row]
) -> tuple[list[tuple[int | None, Mapping[str, Any]]], list[ChainBreak]]:
    """(offset, record) of every decodable row of one partition of gov.audit, and a break
    naming each row that is not an AuditRecord: a foreign or corrupt record in the trail is a
    verification failure, never a crash of the verifier."""
    records: list[tuple[int | None, Mapping[str, Any]]] = []
    breaks: list[ChainBreak] = []
    for offset, key, value in rows:
        if value is None:
            continue
        try:
            records.append((offset, decode(value)))
        except DecodeError as exc:
            breaks.append(
                ChainBreak(_tenant_of(key), None, offset, f"not an AuditRecord: {exc}", partition)
            )
    return records, breaks


def decode_heads(rows: Iterable[Row]) -> tuple[dict[str, ChainHead], list[ChainBreak]]:
    """The recorded head of each chain (gov.audit.heads, JSON), and a break per bad one."""
    heads: dict[str, ChainHead] = {}
    breaks: list[ChainBreak] = []
    for offset, key, value in rows:
        if key is None or value is None:
            continue
        try:
            data = json.loads(value)
            heads[key.decode()] = ChainHead(int(data["chain_seq"]), str(data["hash"]))
        except (ValueError, KeyError, TypeError) as exc:
            problem = f"the recorded head is not a chain head: {type(exc).__name__}: {exc}"
            breaks.append(ChainBreak(_tenant_of(key), None, offset, problem, 0))
    return heads, breaks


def verify_audit_topic(settings: Any) -> AuditVerification:
    """Read gov.audit and gov.audit.heads from the broker and verify every tenant's chain."""
    from streams.codec import Codecs
    from streams.topics import admin_client, read_partitions

    codec = Codecs.load(settings.schemas_dir).audit_record
    topic = settings.topic("audit")
    partitions = sorted(
        admin_client(settings).list_topics(topic, timeout=10).topics[topic].partitions
    )
    records: list[tuple[int | None, Mapping[str, Any]]] = []
    unreadable: list[ChainBreak] = []
    for partition, rows in sorted(read_partitions(settings, topic, partitions).items()):
        decoded, bad = decode_audit_rows(codec.decode, partition, rows)
        records.extend(decoded)
        unreadable.extend(bad)
    heads, bad_heads = decode_heads(
        read_partitions(settings, settings.topic("audit.heads"), [0])[0]
    )
    tenants = {r["tenant_id"] for _, r in records} | set(heads)
    breaks = [*unreadable, *bad_heads, *verify_chain(records, heads)]
    return AuditVerification(len(records) + len(unreadable), len(tenants), breaks)
