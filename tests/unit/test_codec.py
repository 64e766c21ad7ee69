"""The Avro codec: framing, fingerprints, schema evolution, frozen fixtures, error path."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.codec import (
    DLQ_EXCEPTION_CLASS,
    DLQ_EXCEPTION_MESSAGE,
    DLQ_OFFSET,
    DLQ_PARTITION,
    DLQ_REDACTED,
    DLQ_TOPIC,
    MAGIC,
    RECORDS,
    Codec,
    Codecs,
    DecodeError,
    MalformedBodyError,
    NotSingleObjectError,
    SchemaSet,
    SourceRecord,
    UnknownSchemaError,
    WrongRecordError,
    crc64_avro,
    dead_letter,
    redaction_marker,
)
from streams.settings import Settings
from tests.fixtures.avro_fixtures import fixture_paths, from_json
from tests.strategies import from_schema

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = SchemaSet.load(REPO / "schemas")
#: the shipped schemas and a test-only StepEvent.v3 (v2 plus a "locale" field)
WITH_V3 = SchemaSet.load(REPO / "schemas", REPO / "tests" / "fixtures" / "schemas")
CODECS = Codecs(SCHEMAS)


def step_event(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": "5f0c6a2e-8f7e-4d1c-9a57-1b2f3c4d5e6f",
        "seq": 3,
        "session_id": "s-1",
        "tenant_id": "acme",
        "agent_id": "support-bot",
        "kind": "LLM_CALL",
        "start_time_us": 1_764_000_000_000_000,
        "duration_us": 812_000,
        "status": "OK",
        "model": "gpt-4o-mini",
        "input_tokens": 1200,
        "output_tokens": 90,
        "content": [{"role": "USER", "text": "where is my order?"}],
    }
    event.update(changes)
    return event


def test_crc64_matches_the_avro_reference_value() -> None:
    # SchemaNormalization.parsingFingerprint64 of the schema "null" in the Java implementation
    assert crc64_avro(b'"null"') == 7195948357588979594


def test_fingerprint_agrees_with_fastavro_and_is_little_endian_in_the_frame() -> None:
    for record in RECORDS:
        sv = SCHEMAS.get(record)
        canonical = fastavro.schema.to_parsing_canonical_form(sv.parsed)
        expected = crc64_avro(canonical.encode()).to_bytes(8, "little")
        assert sv.fingerprint == expected
        assert fastavro.schema.fingerprint(canonical, "CRC-64-AVRO") == expected.hex()
    payload = CODECS.step_event.encode(step_event())
    assert payload[:2] == MAGIC
    assert payload[2:10] == SCHEMAS.get("StepEvent").fingerprint


def test_every_record_has_a_v1_schema_in_the_house_rules() -> None:
    assert set(SCHEMAS.records()) == set(RECORDS)
    for record in RECORDS:
        sv = SCHEMAS.get(record, 1)
        raw = json.loads(sv.path.read_text())
        assert raw["namespace"] == "dev.governor"
        for field in raw["fields"]:
            if isinstance(field["type"], list) and "null" in field["type"]:
                assert field["type"][0] == "null", field
                assert field.get("default", "x") is None, field
            if isinstance(field["type"], dict) and field["type"]["type"] == "enum":
                assert field["type"]["symbols"][0] == "UNKNOWN"
                assert field["type"]["default"] == "UNKNOWN"


@pytest.mark.parametrize("record", RECORDS)
@given(data=st.data())
def test_random_valid_records_round_trip(record: str, data: st.DataObject) -> None:
    codec = Codec(SCHEMAS, record)
    value = data.draw(from_schema(codec.schema.parsed))
    assert codec.decode(codec.encode(value)) == value


def test_a_newer_reader_reads_older_data_with_the_new_fields_defaulted() -> None:
    v1, v3 = Codec(WITH_V3, "StepEvent", 1), Codec(WITH_V3, "StepEvent", 3)
    decoded = v3.decode(v1.encode(step_event()))
    assert decoded["locale"] is None
    assert decoded["cache_write_input_tokens"] is None
    new = ("locale", "cache_write_input_tokens")
    assert {k: v for k, v in decoded.items() if k not in new} == v1.decode(v1.encode(step_event()))


def test_an_older_reader_reads_newer_data_ignoring_the_new_fields() -> None:
    v1, v3 = Codec(WITH_V3, "StepEvent", 1), Codec(WITH_V3, "StepEvent", 3)
    decoded = v1.decode(v3.encode(step_event(locale="de-CH", cache_write_input_tokens=300)))
    assert "locale" not in decoded
    assert "cache_write_input_tokens" not in decoded
    assert decoded == v1.decode(v1.encode(step_event()))


def test_the_current_reader_is_the_highest_version() -> None:
    assert Codec(WITH_V3, "StepEvent").schema.version == 3
    assert Codec(SCHEMAS, "StepEvent").schema.version == 2


def test_a_step_event_without_the_cache_write_count_encodes_with_the_default() -> None:
    """Emitters that do not know the v2 field (older clients' dicts) still encode."""
    decoded = CODECS.step_event.decode(CODECS.step_event.encode(step_event()))
    assert decoded["cache_write_input_tokens"] is None


@pytest.mark.parametrize(
    ("record", "version"),
    [(sv.record, sv.version) for r in RECORDS for sv in SCHEMAS.versions(r)],
)
def test_frozen_fixture_of_every_schema_version_decodes_with_the_current_reader(
    record: str, version: int
) -> None:
    binary, readable = fixture_paths(record, version)
    assert binary.exists(), f"missing {binary}: run python -m tests.fixtures.avro_fixtures"
    written = from_json(json.loads(readable.read_text()))
    decoded = Codec(SCHEMAS, record).decode(binary.read_bytes())
    # fields added since that version take their defaults; the old fields keep their values
    assert {k: decoded[k] for k in written if k in decoded} == {
        k: v for k, v in written.items() if k in decoded
    }


def test_not_single_object_payload_is_refused() -> None:
    with pytest.raises(NotSingleObjectError, match="not an Avro single-object"):
        CODECS.step_event.decode(b'{"json": "is not avro"}')
    with pytest.raises(NotSingleObjectError):
        CODECS.step_event.decode(b"")


def test_unknown_fingerprint_is_refused() -> None:
    payload = CODECS.step_event.encode(step_event())
    with pytest.raises(UnknownSchemaError, match="unknown writer schema"):
        CODECS.step_event.decode(MAGIC + b"\x00" * 8 + payload[10:])


def test_another_record_is_refused_by_name() -> None:
    payload = CODECS.step_event.encode(step_event())
    with pytest.raises(WrongRecordError, match=r"StepEvent\.v2, expected Decision"):
        CODECS.decision.decode(payload)


def test_truncated_or_padded_body_is_refused() -> None:
    payload = CODECS.step_event.encode(step_event())
    with pytest.raises(MalformedBodyError):
        CODECS.step_event.decode(payload[:-5])
    with pytest.raises(MalformedBodyError, match="trailing bytes"):
        CODECS.step_event.decode(payload + b"\x00\x01")


def test_dead_letter_keeps_the_bytes_and_says_where_and_why() -> None:
    source = SourceRecord(
        topic="gov.events",
        partition=4,
        offset=1234,
        key=b"s-9",
        value=b"garbage",
        headers=(("traceparent", b"00-abc"),),
        timestamp_ms=1_764_000_000_000,
    )
    try:
        CODECS.step_event.decode(source.value or b"")
    except NotSingleObjectError as exc:
        letter = dead_letter(source, exc, keep_raw=True)
    headers = dict(letter.headers)
    assert letter.key == b"s-9"
    assert letter.value == b"garbage"
    assert DLQ_REDACTED not in headers
    assert letter.headers[0] == ("traceparent", b"00-abc")
    assert headers[DLQ_TOPIC] == b"gov.events"
    assert headers[DLQ_PARTITION] == b"4"
    assert headers[DLQ_OFFSET] == b"1234"
    assert headers[DLQ_EXCEPTION_CLASS] == b"streams.codec.NotSingleObjectError"
    assert b"not an Avro single-object" in headers[DLQ_EXCEPTION_MESSAGE]


SECRET_MAIL = "jane.doe@example.com"


def _source(value: bytes) -> SourceRecord:
    return SourceRecord(topic="gov.events", partition=1, offset=7, key=b"s-1", value=value)


def test_a_dead_stepevent_keeps_everything_but_its_content_text() -> None:
    event = step_event(
        content=[
            {"role": "USER", "text": f"mail me at {SECRET_MAIL}"},
            {"role": "ASSISTANT", "text": "done"},
        ],
        duration_us=-5,  # decodes, but no step takes negative time: refused when validated
    )
    letter = dead_letter(
        _source(CODECS.step_event.encode(event)),
        ValueError("duration_us < 0"),
        "VALIDATE",
        codec=CODECS.step_event,
    )
    assert letter.value is not None
    assert SECRET_MAIL.encode() not in letter.value
    assert dict(letter.headers)[DLQ_REDACTED] == b"content"
    kept = CODECS.step_event.decode(letter.value)
    assert kept["content"] == [
        {"role": "USER", "text": redaction_marker(f"mail me at {SECRET_MAIL}")},
        {"role": "ASSISTANT", "text": redaction_marker("done")},
    ]
    assert kept["content"][1]["text"].startswith("[redacted: 4 chars, sha256:")
    original = CODECS.step_event.decode(CODECS.step_event.encode(event))
    assert {k: v for k, v in kept.items() if k != "content"} == {
        k: v for k, v in original.items() if k != "content"
    }


def test_a_dead_payload_that_does_not_decode_becomes_a_diagnostic_by_default() -> None:
    payload = CODECS.step_event.encode(step_event(content=[{"role": "USER", "text": SECRET_MAIL}]))
    for value in (b"card 4111 1111 1111 1111 and " + SECRET_MAIL.encode(), payload[:-3]):
        try:
            CODECS.step_event.decode(value)
        except DecodeError as exc:
            error = exc
        for codec in (None, CODECS.step_event):
            letter = dead_letter(_source(value), error, codec=codec)
            assert letter.value is not None
            assert SECRET_MAIL.encode() not in letter.value
            assert dict(letter.headers)[DLQ_REDACTED] == b"payload"
            assert json.loads(letter.value) == {
                "redacted": "payload",
                "length": len(value),
                "head_hex": value[:16].hex(),
                "sha256": hashlib.sha256(value).hexdigest(),
            }
            assert letter.key == b"s-1"
            assert dict(letter.headers)[DLQ_OFFSET] == b"7"
    # without the codec even a decodable StepEvent is not kept in clear
    whole = dead_letter(_source(payload), ValueError("late"))
    assert dict(whole.headers)[DLQ_REDACTED] == b"payload"
    raw = dead_letter(_source(payload), ValueError("late"), codec=CODECS.step_event, keep_raw=True)
    assert raw.value == payload


def test_keeping_raw_dead_letters_is_a_setting_off_by_default() -> None:
    assert Settings.from_env({}).dlq_keep_raw is False
    for word, on in (("1", True), ("yes", True), ("TRUE", True), ("0", False), ("no", False)):
        assert Settings.from_env({"GOVERNOR_DLQ_KEEP_RAW": word}).dlq_keep_raw is on
    on_ = Settings.from_env({}, dlq_keep_raw=True)
    assert Settings.from_env(on_.to_env()).dlq_keep_raw is True
    with pytest.raises(ValueError, match="GOVERNOR_DLQ_KEEP_RAW='maybe'"):
        Settings.from_env({"GOVERNOR_DLQ_KEEP_RAW": "maybe"})


def test_schema_files_must_be_named_after_their_record(tmp_path: Path) -> None:
    (tmp_path / "Wrong.v1.avsc").write_text(
        json.dumps({"type": "record", "name": "Other", "fields": []})
    )
    with pytest.raises(ValueError, match="record name 'Other' != file name"):
        SchemaSet.load(tmp_path)
