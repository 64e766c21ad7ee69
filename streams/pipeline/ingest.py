"""Decoding a batch of raw event records into StepEvents, with a separate error path."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from streams.codec import Codec, DeadLetter, DecodeError, SourceRecord, dead_letter


@dataclass
class DecodedBatch:
    ok: list[dict[str, Any]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)


def decode_batch(codec: Codec, records: Iterable[SourceRecord]) -> DecodedBatch:
    """Decode every record; those that fail become dead letters carrying the reason."""
    batch = DecodedBatch()
    for record in records:
        try:
            if record.value is None:
                raise DecodeError("empty value (tombstone) on the events topic")
            batch.ok.append(codec.decode(record.value))
        except DecodeError as exc:
            batch.dead.append(dead_letter(record, exc))
    return batch


def count_kinds(events: Iterable[dict[str, Any]]) -> Counter[str]:
    return Counter(str(e["kind"]) for e in events)
