"""Avro single-object encoding for every Governor record, and the dead-letter path.

Framing (Avro spec, "single object encoding"): ``C3 01`` + the writer schema's 8-byte
little-endian CRC-64-AVRO fingerprint + the binary body. A reader finds the writer schema by
fingerprint among every version kept in ``schemas/`` and resolves it into its own reader schema,
so old data stays readable without a schema registry.

A payload that cannot be decoded raises :class:`DecodeError`; :func:`dead_letter` turns it into a
record for the dead-letter topic with Kafka-Connect-style headers, so nothing is dropped. Dead
letters keep no clear-text content unless asked to: a StepEvent that decodes (refused for its
values) is kept with each content segment's text replaced by a marker, and a payload that does
not decode, whose content cannot be told apart, by a short diagnostic of it.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

MAGIC = b"\xc3\x01"
HEADER_LEN = len(MAGIC) + 8
NAMESPACE = "dev.governor"
RECORDS = (
    "StepEvent",
    "Decision",
    "SessionSummary",
    "PiiFinding",
    "Alert",
    "AuditRecord",
    "Incident",
    "PolicyVersion",
)

_SCHEMA_FILE = re.compile(r"^(?P<record>[A-Za-z]+)\.v(?P<version>\d+)\.avsc$")

_CRC64_EMPTY = 0xC15D213AA4D7A795


def _crc64_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_CRC64_EMPTY & -(fp & 1))
        table.append(fp)
    return tuple(table)


_CRC64_TABLE = _crc64_table()


def crc64_avro(data: bytes) -> int:
    """The Rabin CRC-64 fingerprint the Avro spec defines for schemas."""
    fp = _CRC64_EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _CRC64_TABLE[(fp ^ byte) & 0xFF]
    return fp


def schema_fingerprint(parsed_schema: Any) -> bytes:
    """8-byte little-endian fingerprint of a parsed schema's Parsing Canonical Form."""
    canonical = to_parsing_canonical_form(parsed_schema).encode()
    return crc64_avro(canonical).to_bytes(8, "little")


class DecodeError(ValueError):
    """A payload that cannot be decoded into the expected record."""


class NotSingleObjectError(DecodeError):
    """The payload does not start with the single-object marker."""


class UnknownSchemaError(DecodeError):
    """The writer fingerprint matches no known schema version."""


class WrongRecordError(DecodeError):
    """The payload is a valid Governor record, but not the one expected."""


class MalformedBodyError(DecodeError):
    """The body does not parse with the writer schema its fingerprint names."""


@dataclass(frozen=True)
class SchemaVersion:
    record: str
    version: int
    parsed: Any
    fingerprint: bytes
    path: Path


class SchemaSet:
    """Every version of every record schema, indexed by name and by fingerprint."""

    def __init__(self, versions: Iterable[SchemaVersion]) -> None:
        self._by_fingerprint: dict[bytes, SchemaVersion] = {}
        self._by_record: dict[str, dict[int, SchemaVersion]] = {}
        for sv in versions:
            clash = self._by_fingerprint.get(sv.fingerprint)
            if clash is not None:
                raise ValueError(f"{sv.path} has the same fingerprint as {clash.path}")
            self._by_fingerprint[sv.fingerprint] = sv
            self._by_record.setdefault(sv.record, {})[sv.version] = sv

    @classmethod
    def load(cls, *folders: Path) -> SchemaSet:
        """Read ``<Record>.v<N>.avsc`` files from the folders (later folders add versions)."""
        versions = []
        for folder in folders:
            for path in sorted(folder.glob("*.avsc")):
                match = _SCHEMA_FILE.match(path.name)
                if match is None:
                    raise ValueError(f"{path}: schema files are named <Record>.v<N>.avsc")
                with path.open() as fh:
                    raw = json.load(fh)
                if raw.get("name") != match["record"]:
                    raise ValueError(f"{path}: record name {raw.get('name')!r} != file name")
                parsed = fastavro.parse_schema(raw)
                versions.append(
                    SchemaVersion(
                        record=match["record"],
                        version=int(match["version"]),
                        parsed=parsed,
                        fingerprint=schema_fingerprint(parsed),
                        path=path,
                    )
                )
        return cls(versions)

    def records(self) -> list[str]:
        return sorted(self._by_record)

    def versions(self, record: str) -> list[SchemaVersion]:
        return [self._by_record[record][v] for v in sorted(self._by_record.get(record, {}))]

    def get(self, record: str, version: int | None = None) -> SchemaVersion:
        """A record's schema at ``version``, or its current (highest) version."""
        by_version = self._by_record.get(record)
        if not by_version:
            raise KeyError(f"no schema for record {record!r}")
        if version is None:
            version = max(by_version)
        if version not in by_version:
            raise KeyError(f"no schema {record}.v{version}")
        return by_version[version]

    def by_fingerprint(self, fingerprint: bytes) -> SchemaVersion | None:
        return self._by_fingerprint.get(fingerprint)


class Codec:
    """Encodes and decodes one kind of record with a fixed writer/reader schema version."""

    def __init__(self, schemas: SchemaSet, record: str, version: int | None = None) -> None:
        self.schemas = schemas
        self.record = record
        self.schema = schemas.get(record, version)
        self._prefix = MAGIC + self.schema.fingerprint

    def encode(self, value: Mapping[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(self._prefix)
        fastavro.schemaless_writer(buf, self.schema.parsed, value)
        return buf.getvalue()

    def decode(self, data: bytes) -> dict[str, Any]:
        """Decode ``data`` written with any known version into this codec's schema."""
        if len(data) < HEADER_LEN or data[:2] != MAGIC:
            raise NotSingleObjectError(
                f"not an Avro single-object payload (starts {data[:2].hex() or 'empty'}, "
                f"{len(data)} bytes)"
            )
        fingerprint = data[2:HEADER_LEN]
        writer = self.schemas.by_fingerprint(fingerprint)
        if writer is None:
            raise UnknownSchemaError(f"unknown writer schema fingerprint {fingerprint.hex()}")
        if writer.record != self.record:
            raise WrongRecordError(
                f"payload is {writer.record}.v{writer.version}, expected {self.record}"
            )
        reader = None if writer is self.schema else self.schema.parsed
        buf = io.BytesIO(data)
        buf.seek(HEADER_LEN)
        try:
            value = fastavro.schemaless_reader(buf, writer.parsed, reader)
        except Exception as exc:  # fastavro raises many kinds on bad bytes
            raise MalformedBodyError(
                f"{self.record}.v{writer.version} body does not parse: {type(exc).__name__}: {exc}"
            ) from exc
        if buf.tell() != len(data):
            raise MalformedBodyError(
                f"{self.record}.v{writer.version} body has {len(data) - buf.tell()} trailing bytes"
            )
        if not isinstance(value, dict):
            raise MalformedBodyError(f"{self.record} body is not a record")
        return value


class Codecs:
    """The current-version codec of every Governor record, loaded from one schema folder."""

    def __init__(self, schemas: SchemaSet) -> None:
        self.schemas = schemas
        self.step_event = Codec(schemas, "StepEvent")
        self.decision = Codec(schemas, "Decision")
        self.session_summary = Codec(schemas, "SessionSummary")
        self.pii_finding = Codec(schemas, "PiiFinding")
        self.alert = Codec(schemas, "Alert")
        self.audit_record = Codec(schemas, "AuditRecord")
        self.incident = Codec(schemas, "Incident")
        self.policy_version = Codec(schemas, "PolicyVersion")

    @classmethod
    def load(cls, schemas_dir: Path) -> Codecs:
        return cls(SchemaSet.load(schemas_dir))


# --- dead letters -------------------------------------------------------------------------

#: Header names as Kafka Connect writes them (errors.deadletterqueue.context.headers.enable)
DLQ_TOPIC = "__connect.errors.topic"
DLQ_PARTITION = "__connect.errors.partition"
DLQ_OFFSET = "__connect.errors.offset"
DLQ_EXCEPTION_CLASS = "__connect.errors.exception.class.name"
DLQ_EXCEPTION_MESSAGE = "__connect.errors.exception.message"
DLQ_STAGE = "__connect.errors.stage"
DLQ_TIMESTAMP = "__connect.errors.timestamp"
#: what a dead letter no longer holds in clear: ``content`` (the StepEvent's segment texts are
#: markers) or ``payload`` (the value is a diagnostic of the original bytes)
DLQ_REDACTED = "governor.redacted"
_DLQ_MESSAGE_LIMIT = 1000
#: leading bytes of an undecodable payload shown in its diagnostic (framing, not content)
_DIAGNOSTIC_HEAD = 16


@dataclass(frozen=True)
class SourceRecord:
    """Where an undecodable payload came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_ms: int | None = None


def header_pairs(raw: Any) -> tuple[tuple[str, bytes], ...]:
    """A Kafka client's headers (a list of pairs or a dict, str or bytes values) as bytes."""
    pairs = raw.items() if isinstance(raw, dict) else (raw or ())
    return tuple((k, v.encode() if isinstance(v, str) else (v or b"")) for k, v in pairs)


@dataclass(frozen=True)
class DeadLetter:
    """What goes to the dead-letter topic: the original key, the value (redacted unless kept
    raw), the original headers and the reason."""

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


def redaction_marker(text: str) -> str:
    """What stands for a redacted text: its length and a short digest, enough to tell two
    texts apart or match one a user reports, not to recover it."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return f"[redacted: {len(text)} chars, sha256:{digest}\u2026]"


def payload_diagnostic(value: bytes) -> bytes:
    """A payload that does not decode, described without its content (JSON)."""
    return json.dumps(
        {
            "redacted": "payload",
            "length": len(value),
            "head_hex": value[:_DIAGNOSTIC_HEAD].hex(),
            "sha256": hashlib.sha256(value).hexdigest(),
        },
        separators=(",", ":"),
    ).encode()


def redacted_step_event(codec: Codec, value: bytes) -> bytes | None:
    """The StepEvent in ``value`` re-encoded with each content segment's text replaced by
    :func:`redaction_marker` (roles kept); None when it does not decode as ``codec``'s record."""
    try:
        event = codec.decode(value)
    except DecodeError:
        return None
    event["content"] = [
        {**segment, "text": redaction_marker(segment["text"])}
        for segment in event.get("content") or []
    ]
    try:
        return codec.encode(event)
    except Exception:  # fastavro raises several kinds; a diagnostic replaces it then
        return None


def _dead_value(
    value: bytes | None, codec: Codec | None, keep_raw: bool
) -> tuple[bytes | None, str | None]:
    """(value to write, what was redacted) for a dead letter's original ``value``."""
    if value is None or keep_raw:
        return value, None
    if codec is not None:
        redacted = redacted_step_event(codec, value)
        if redacted is not None:
            return redacted, "content"
    return payload_diagnostic(value), "payload"


def dead_letter(
    source: SourceRecord,
    error: BaseException,
    stage: str = "DECODE",
    *,
    codec: Codec | None = None,
    keep_raw: bool = False,
) -> DeadLetter:
    """Build the dead-letter record for ``source``; the original headers are kept first.

    The value keeps no clear-text content: with ``codec`` (the StepEvent codec) a payload that
    decodes is re-encoded with its content redacted; any other payload becomes a diagnostic
    (length, first bytes, SHA-256). The header ``governor.redacted`` says which. ``keep_raw``
    (``GOVERNOR_DLQ_KEEP_RAW``) keeps the original bytes instead.
    """
    error_class = f"{type(error).__module__}.{type(error).__qualname__}"
    reason = [
        (DLQ_TOPIC, source.topic.encode()),
        (DLQ_PARTITION, str(source.partition).encode()),
        (DLQ_OFFSET, str(source.offset).encode()),
        (DLQ_STAGE, stage.encode()),
        (DLQ_EXCEPTION_CLASS, error_class.encode()),
        (DLQ_EXCEPTION_MESSAGE, str(error)[:_DLQ_MESSAGE_LIMIT].encode()),
    ]
    if source.timestamp_ms is not None:
        reason.append((DLQ_TIMESTAMP, str(source.timestamp_ms).encode()))
    value, redacted = _dead_value(source.value, codec, keep_raw)
    if redacted is not None:
        reason.append((DLQ_REDACTED, redacted.encode()))
    return DeadLetter(key=source.key, value=value, headers=(*source.headers, *reason))
