"""The tamper-evident audit trail: one SHA-256 hash chain per tenant (pure, no I/O).

Each AuditRecord carries ``prev_hash`` (the previous record's ``hash``, 64 zeros for the first)
and ``hash`` = SHA-256 over ``prev_hash`` and the canonical JSON of the record without ``hash``.
Editing, removing, reordering or truncating records breaks the chain at a nameable place.

A hash chain alone has no secret: whoever can write the topics can rewrite a chain and its
recorded heads consistently. So the worker signs, with its Ed25519 key (the control key, or a
separate audit key when ``GOVERNOR_AUDIT_KEYS_DIR`` is set), every head it writes to
gov.audit.heads and every ``audit_sign_every``-th record; the verifier checks them with the
public keys, and names an unsigned or wrongly signed head or record. A signed head taken out of
Kafka (``governor audit anchor``) later proves the trail still holds that record unchanged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypedDict

from streams.codec import DecodeError
from streams.control import DropReason, KeyRing, SigningKey

GENESIS = "0" * 64
AUDIT_NAMESPACE = uuid.UUID("0b6a7c52-3a3d-5b1e-8f7e-3f4e2a9c1d77")


class AuditRecord(TypedDict):
    """One record of gov.audit (schemas/AuditRecord.v2.avsc)."""

    tenant_id: str
    chain_seq: int
    record_id: str
    kind: str
    time_us: int
    actor: str
    subject: str
    summary: str
    details: dict[str, str]
    prev_hash: str
    hash: str
    #: the signing key's id and the signature; empty on all but every N-th record (and on v1)
    key_id: str
    signature: bytes


#: fields the hash does not cover: the hash itself, and the signature added after it
UNHASHED = frozenset({"hash", "key_id", "signature"})


def record_hash(record: Mapping[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k not in UNHASHED}
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
    ) -> AuditRecord:
        head = self.heads.get(tenant_id, ChainHead())
        record: AuditRecord = {
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
            "hash": "",
            "key_id": "",
            "signature": b"",
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


# --- signatures ------------------------------------------------------------------------------


def _canonical(fields: Mapping[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def record_signing_payload(tenant_id: str, chain_seq: int, record_hash_: str, key_id: str) -> bytes:
    """What a record's signature covers: its place and its hash (which covers its content and,
    through ``prev_hash``, every record before it)."""
    return _canonical(
        {
            "what": "governor.audit.record",
            "tenant_id": tenant_id,
            "chain_seq": chain_seq,
            "hash": record_hash_,
            "key_id": key_id,
        }
    )


def due_for_signature(chain_seq: int, every: int) -> bool:
    """Whether the record at ``chain_seq`` is one of the signed ones (every ``every``-th)."""
    return every > 0 and chain_seq % every == 0


def sign_record(record: AuditRecord, key: SigningKey) -> AuditRecord:
    """A copy of ``record`` carrying ``key``'s signature (the hash is unchanged)."""
    signed = record.copy()
    signed["key_id"] = key.key_id
    payload = record_signing_payload(
        record["tenant_id"], record["chain_seq"], record["hash"], key.key_id
    )
    signed["signature"] = key.private_key.sign(payload)
    return signed


@dataclass(frozen=True)
class SignedHead:
    """A chain's head as gov.audit.heads records it (JSON), signed by the worker; kept outside
    Kafka it is an anchor (``governor audit anchor``)."""

    tenant_id: str
    chain_seq: int
    hash: str
    #: when the worker signed it (wall clock, µs)
    time_us: int = 0
    #: how often the chain's records are signed (0: none), so the verifier knows which must be
    sign_every: int = 0
    key_id: str = ""
    #: base64 Ed25519 signature over :meth:`payload`; empty: unsigned (written before heads
    #: were signed, or by someone without the key)
    signature: str = ""

    def payload(self) -> bytes:
        fields = asdict(self)
        del fields["signature"]
        return _canonical({"what": "governor.audit.head", **fields})

    @property
    def head(self) -> ChainHead:
        return ChainHead(self.chain_seq, self.hash)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_mapping(cls, tenant_id: str, data: Mapping[str, Any]) -> SignedHead:
        """Raises ValueError, KeyError or TypeError for anything that is not a chain head."""
        if not isinstance(data, Mapping):
            raise TypeError(f"expected a JSON object, found {type(data).__name__}")
        tenant = str(data.get("tenant_id", tenant_id))
        if tenant != tenant_id:
            raise ValueError(f"the head names tenant {tenant!r}, its key {tenant_id!r}")
        return cls(
            tenant,
            int(data["chain_seq"]),
            str(data["hash"]),
            int(data.get("time_us", 0)),
            int(data.get("sign_every", 0)),
            str(data.get("key_id", "")),
            str(data.get("signature", "")),
        )


def sign_head(
    tenant_id: str, head: ChainHead, key: SigningKey, time_us: int, sign_every: int
) -> SignedHead:
    unsigned = SignedHead(tenant_id, head.chain_seq, head.hash, time_us, sign_every, key.key_id)
    signature = base64.b64encode(key.private_key.sign(unsigned.payload())).decode()
    return SignedHead(**{**asdict(unsigned), "signature": signature})


def signature_problem(
    keyring: KeyRing, key_id: str | None, signature: bytes | None, payload: bytes
) -> str | None:
    """Why ``signature`` is not a trusted key's signature of ``payload``, or None when it is."""
    reason = keyring.verify_payload(key_id, signature, payload)
    if reason is None:
        return None
    if reason is DropReason.UNSIGNED:
        return "unsigned"
    if reason is DropReason.UNKNOWN_KEY:
        return f"signed with key {key_id!r}, which is not among the trusted public keys"
    return f"signature does not verify with key {key_id!r}"


def head_problem(keyring: KeyRing, head: SignedHead) -> str | None:
    try:
        signature = base64.b64decode(head.signature, validate=True)
    except (binascii.Error, ValueError):
        return f"signature is not base64 (key {head.key_id!r})"
    problem = signature_problem(keyring, head.key_id, signature, head.payload())
    if problem == "unsigned":
        return "unsigned head: it carries no signature (not written by a worker with the key)"
    return None if problem is None else f"head {problem}"


def verify_heads(heads: Mapping[str, SignedHead], keyring: KeyRing) -> list[ChainBreak]:
    """A break for every recorded head that is unsigned or not signed by a trusted key."""
    breaks = []
    for tenant, head in sorted(heads.items()):
        problem = head_problem(keyring, head)
        if problem is not None:
            breaks.append(ChainBreak(tenant, head.chain_seq, None, problem))
    return breaks


def audit_signing_key(settings: Any, control_key: SigningKey) -> SigningKey:
    """The key that signs the trail: the separate audit key when ``audit_keys_dir`` is set
    (made there on first use), else the worker's control key."""
    from streams.control import ensure_signing_key

    folder: Path | None = settings.audit_keys_dir
    return control_key if folder is None else ensure_signing_key(folder)


def audit_keyring(settings: Any) -> KeyRing:
    """The public keys the verifier trusts: GOVERNOR_CONTROL_PUBLIC_KEYS or the keys folder's
    ``*.pub``, and the audit keys folder's when one is set."""
    from streams.ingest.control_http import public_keys

    keys = dict(public_keys(settings))
    folder: Path | None = settings.audit_keys_dir
    if folder is not None:
        keys.update({p.stem: p.read_text().strip() for p in sorted(folder.glob("*.pub"))})
    return KeyRing.from_b64(keys)


def verify_chain(
    records: Iterable[tuple[int | None, Mapping[str, Any]]],
    expected_heads: Mapping[str, ChainHead] | None = None,
    keyring: KeyRing | None = None,
    sign_every: Mapping[str, int] | int = 0,
) -> list[ChainBreak]:
    """Check (offset, record) pairs of the audit topic in log order; every break is named.

    ``expected_heads`` (the worker's record of each chain's last link) also reveals a chain cut
    short at its end, which the links alone cannot show. With a ``keyring``, every record's
    signature is checked, and once a chain has a signed record, each later record due for one
    (every ``sign_every``-th, per tenant or for all) must carry a valid one.
    """
    heads: dict[str, ChainHead] = {}
    breaks: list[ChainBreak] = []
    signed_since: dict[str, int] = {}
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
        if keyring is not None:
            every = sign_every if isinstance(sign_every, int) else sign_every.get(tenant, 0)
            signature = record.get("signature") or b""
            if signature:
                payload = record_signing_payload(tenant, seq, record["hash"], record["key_id"])
                bad = signature_problem(keyring, record.get("key_id"), signature, payload)
                if bad is not None:
                    breaks.append(ChainBreak(tenant, seq, offset, f"record {bad}"))
                signed_since.setdefault(tenant, seq)
            elif tenant in signed_since and due_for_signature(seq, every):
                breaks.append(
                    ChainBreak(
                        tenant,
                        seq,
                        offset,
                        f"unsigned record: every {every}th record is signed "
                        f"(since #{signed_since[tenant]}); its signature was removed",
                    )
                )
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
    #: ids of the public keys the signatures were checked with
    keys: tuple[str, ...] = ()
    anchors: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "tenants": self.tenants,
            "intact": not self.breaks,
            "keys": list(self.keys),
            "anchors": self.anchors,
            "breaks": [b.__dict__ for b in self.breaks],
        }


def verify_anchor(
    records: Iterable[tuple[int | None, Mapping[str, Any]]],
    anchor: SignedHead,
    keyring: KeyRing,
) -> list[ChainBreak]:
    """Whether the trail still holds the record ``anchor`` names, with the same hash, and the
    anchor carries a trusted signature; the break is named otherwise."""
    tenant, seq = anchor.tenant_id, anchor.chain_seq
    problem = head_problem(keyring, anchor)
    if problem is not None:
        return [ChainBreak(tenant, seq, None, f"the anchor: {problem}")]
    last = 0
    for offset, record in records:
        if record["tenant_id"] != tenant:
            continue
        last = max(last, record["chain_seq"])
        if record["chain_seq"] == seq:
            if record["hash"] == anchor.hash:
                return []
            return [
                ChainBreak(
                    tenant,
                    seq,
                    offset,
                    f"differs from the anchor signed by {anchor.key_id!r}: hash "
                    f"{record['hash'][:16]}..., the anchor's {anchor.hash[:16]}... "
                    "(the chain was rewritten up to here)",
                )
            ]
    return [
        ChainBreak(
            tenant,
            seq,
            None,
            f"the anchored record is gone: the chain ends at #{last} (truncated or replaced)",
        )
    ]


class AnchorError(ValueError):
    """Text that is not an anchor (or a list of them)."""


def parse_anchors(text: str) -> list[SignedHead]:
    """The anchors of ``governor audit anchor --json``: one object or a list of them."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise AnchorError(f"an anchor is JSON, this is not: {exc}") from exc
    items = data if isinstance(data, list) else [data]
    anchors = []
    for item in items:
        try:
            anchors.append(SignedHead.from_mapping(str(item["tenant_id"]), item))
        except (ValueError, KeyError, TypeError) as exc:
            raise AnchorError(
                f"not an anchor ({type(exc).__name__}: {exc}); expected the JSON that "
                "`governor audit anchor --json` prints"
            ) from exc
    return anchors


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


def decode_heads(rows: Iterable[Row]) -> tuple[dict[str, SignedHead], list[ChainBreak]]:
    """The recorded head of each chain (gov.audit.heads, JSON), and a break per bad one."""
    heads: dict[str, SignedHead] = {}
    breaks: list[ChainBreak] = []
    for offset, key, value in rows:
        if key is None or value is None:
            continue
        try:
            tenant = key.decode()
            heads[tenant] = SignedHead.from_mapping(tenant, json.loads(value))
        except (ValueError, KeyError, TypeError) as exc:
            problem = f"the recorded head is not a chain head: {type(exc).__name__}: {exc}"
            breaks.append(ChainBreak(_tenant_of(key), None, offset, problem, 0))
    return heads, breaks


class NoTrustedKeys(RuntimeError):
    """Nothing to check the signatures with."""


@dataclass(frozen=True)
class AuditTrail:
    """gov.audit and gov.audit.heads as read from the broker."""

    records: list[tuple[int | None, Mapping[str, Any]]]
    unreadable: list[ChainBreak]
    heads: dict[str, SignedHead]
    bad_heads: list[ChainBreak]


def read_audit_trail(settings: Any) -> AuditTrail:
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
    return AuditTrail(records, unreadable, heads, bad_heads)


def verify_trail(
    trail: AuditTrail, keyring: KeyRing, sign_every: int, anchors: Iterable[SignedHead] = ()
) -> AuditVerification:
    """Every chain, its signatures and its recorded head, and every anchor given."""
    anchors = list(anchors)
    # which records must be signed: what each head (signed) says, else the setting
    every = {t: (h.sign_every or sign_every) for t, h in trail.heads.items()}
    every.update({t: sign_every for _, r in trail.records if (t := r["tenant_id"]) not in every})
    breaks = [
        *trail.unreadable,
        *trail.bad_heads,
        *verify_chain(trail.records, {t: h.head for t, h in trail.heads.items()}, keyring, every),
        *verify_heads(trail.heads, keyring),
    ]
    for anchor in anchors:
        breaks.extend(verify_anchor(trail.records, anchor, keyring))
    tenants = {r["tenant_id"] for _, r in trail.records} | set(trail.heads)
    return AuditVerification(
        len(trail.records) + len(trail.unreadable),
        len(tenants),
        breaks,
        tuple(keyring.key_ids()),
        len(anchors),
    )


def trusted_keyring(settings: Any) -> KeyRing:
    keyring = audit_keyring(settings)
    if not len(keyring):
        raise NoTrustedKeys(
            f"no public key to check the audit signatures with: put the worker's *.pub in "
            f"{settings.control_keys_dir} (or GOVERNOR_AUDIT_KEYS_DIR), or set "
            "GOVERNOR_CONTROL_PUBLIC_KEYS=kid:base64 (GET /control/keys on the worker lists them)"
        )
    return keyring


def verify_audit_topic(
    settings: Any, keyring: KeyRing | None = None, anchors: Iterable[SignedHead] = ()
) -> AuditVerification:
    """Read gov.audit and gov.audit.heads from the broker and verify every tenant's chain,
    the signatures (with ``keyring``, by default the trusted keys of ``settings``) and
    every anchor."""
    keyring = keyring if keyring is not None else trusted_keyring(settings)
    return verify_trail(read_audit_trail(settings), keyring, settings.audit_sign_every, anchors)


def current_anchors(
    settings: Any, tenant: str | None = None, keyring: KeyRing | None = None
) -> list[SignedHead]:
    """The signed head of each chain (or of ``tenant``'s), once verified with the trail: what
    ``governor audit anchor`` prints to keep outside Kafka. Raises :class:`AnchorError`
    when there is none, or the chain to anchor is broken (an anchor vouches for it)."""
    keyring = keyring if keyring is not None else trusted_keyring(settings)
    trail = read_audit_trail(settings)
    heads = {t: h for t, h in trail.heads.items() if tenant is None or t == tenant}
    if not heads:
        raise AnchorError(
            f"no recorded head for tenant {tenant!r}" if tenant else "gov.audit.heads is empty"
        )
    result = verify_trail(trail, keyring, settings.audit_sign_every)
    broken = sorted({b.tenant_id for b in result.breaks} & set(heads))
    if broken:
        raise AnchorError(
            f"refusing to anchor a broken chain ({', '.join(broken)}): "
            "`governor audit verify` names the breaks"
        )
    return [heads[t] for t in sorted(heads)]
