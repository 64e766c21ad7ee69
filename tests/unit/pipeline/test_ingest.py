from __future__ import annotations

from pathlib import Path

from streams.codec import DLQ_EXCEPTION_CLASS, DLQ_OFFSET, Codecs, SourceRecord
from streams.demo import demo_sessions
from streams.pipeline.ingest import count_kinds, decode_batch

CODECS = Codecs.load(Path(__file__).resolve().parents[3] / "schemas")


def _record(offset: int, value: bytes | None) -> SourceRecord:
    return SourceRecord("gov.events", 0, offset, b"k", value)


def test_good_records_decode_and_bad_ones_become_dead_letters_in_order() -> None:
    events = list(demo_sessions(3))
    records = [_record(n, CODECS.step_event.encode(e)) for n, e in enumerate(events)]
    records.insert(2, _record(100, b"\xc3\x01short"))
    records.append(_record(101, None))
    batch = decode_batch(CODECS.step_event, records)
    assert [{k: d[k] for k in e} for d, e in zip(batch.ok, events, strict=True)] == events
    assert [dict(d.headers)[DLQ_OFFSET] for d in batch.dead] == [b"100", b"101"]
    assert dict(batch.dead[1].headers)[DLQ_EXCEPTION_CLASS].endswith(b"DecodeError")


def test_count_kinds() -> None:
    events = list(demo_sessions(10))
    counts = count_kinds(events)
    assert counts["SESSION_START"] == counts["SESSION_END"] == 10
    assert sum(counts.values()) == len(events)


def test_demo_sessions_are_seeded_and_gap_free() -> None:
    first, again = list(demo_sessions(20, seed=3)), list(demo_sessions(20, seed=3))
    assert first == again
    by_session: dict[str, list[int]] = {}
    for event in first:
        by_session.setdefault(event["session_id"], []).append(event["seq"])
    assert all(seqs == list(range(1, len(seqs) + 1)) for seqs in by_session.values())
