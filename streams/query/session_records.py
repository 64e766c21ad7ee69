"""Finding one session's records in Kafka, for its incident timeline.

``gov.events`` can hold weeks of a fleet; one session is a few dozen records of it. When the
read-model knows the session (``rm:session:<id>``: its start and end, event time), every
partition is read from Kafka's time index at ``start - 10 min`` and stops ``10 min`` past the
end; otherwise (an unfinished session, or one older than the read-model's TTL) the whole topic is
read, with progress in the log. Records are matched on the key (the session id), so only the
session's own events are decoded.

Two clocks: Kafka indexes the record timestamp (when the client produced it), the session's
times are event time. A client produces a step just after it happened, so seeking by
``start - 10 min`` never skips the session's events; but a fleet replayed or simulated into
Kafka later than it ran has timestamps far past its event times, so a partition is only
considered past the window when both its record timestamp and its event time are (checked on the
last record of each fetched batch: one decode per batch, not per record).

Decisions, findings and alerts are small topics, but the worker produces them when it processes
an event, which may be long after the event happened (a lagging worker is what incidents are
made of), so none of them is cut off by time at the end: gov.pii is read from ``start - 10 min``
to its end (matched on the key), gov.control (matched on the three targets) and gov.alerts whole,
because a decision or an alert in force during the session may have been issued long before.

Not :func:`streams.replay.iter_range` (it landed after this): it bounds both ends by Kafka
record time, which would cut off a session produced long after it happened (a simulated or
backfilled fleet) and the findings and decisions of a lagging worker. :func:`scan_topic` stops
each partition on its own, matches keys before decoding anything, and serves the four scans of a
timeline with one consumer (a timeline takes ~0.4 s on the dev stack).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from streams.codec import Codec, Codecs, DecodeError
from streams.kafka_config import client_config
from streams.pipeline.pricing import load_prices
from streams.query.readmodel import SessionReadModel
from streams.query.timeline import Timeline, build_timeline, session_targets
from streams.redis_client import redis_client
from streams.settings import Settings

log = logging.getLogger("governor.timeline")

#: how far before its start and after its end a session's records are looked for
MARGIN_US = 10 * 60 * 1_000_000
BATCH = 10_000
POLL_S = 0.05  # consume() waits this long for a full batch: short, or every scan idles
TIMEOUT_S = 10.0
PROGRESS_EVERY_S = 2.0

#: (Kafka timestamp in ms, value) -> whether the partition has gone past what is wanted
PastWindow = Callable[[int, bytes | None], bool]


class SessionNotFound(LookupError):
    def __init__(self, session_id: str, topic: str) -> None:
        super().__init__(f"no events of session {session_id!r} on {topic}")
        self.session_id = session_id
        self.topic = topic


class TopicNotFound(LookupError):
    def __init__(self, topic: str) -> None:
        super().__init__(f"topic {topic!r} does not exist")
        self.topic = topic


@dataclass(frozen=True)
class Window:
    """Event-time bounds of a session, as the read-model recorded them."""

    start_us: int
    end_us: int


def session_timeline(
    settings: Settings, session_id: str, *, events_topic: str | None = None
) -> Timeline:
    """The timeline of ``session_id`` from ``events_topic`` (default the topic the worker reads:
    ``GOVERNOR_EVENTS_TOPIC`` or the events topic; a replay topic such as ``gov.replay.<id>``
    rebuilds it from the copy) and the control, PII and alert topics of ``settings``. Raises
    :class:`SessionNotFound` when no event of it is there."""
    topic = events_topic or settings.events_source_topic
    codecs = Codecs.load(settings.schemas_dir)
    with closing(reader(settings)) as consumer:
        events = read_session_events(settings, consumer, topic, session_id, codecs.step_event)
        if not events:
            raise SessionNotFound(session_id, topic)
        first = events[0]
        start_us = min(int(e["start_time_us"]) for e in events)
        targets = {
            t.encode() for t in session_targets(session_id, first["tenant_id"], first["agent_id"])
        }
        decisions = scan_topic(consumer, settings.topic("control"), keys=targets)
        findings = scan_topic(
            consumer,
            settings.topic("pii"),
            since_us=start_us - MARGIN_US,
            keys={session_id.encode()},
        )
        alerts = scan_topic(consumer, settings.topic("alerts"))
    prices = load_prices(settings.policies_dir / "prices.yaml")
    return build_timeline(
        events,
        _decoded(decisions, codecs.decision),
        _decoded(findings, codecs.pii_finding),
        _decoded(alerts, codecs.alert),
        prices,
    )


def read_session_events(
    settings: Settings, consumer: Consumer, topic: str, session_id: str, codec: Codec
) -> list[dict[str, Any]]:
    """The session's StepEvents on ``topic``, bounded by the read-model's window when it has
    one (and the whole topic when that finds nothing: the window is a hint, not the truth)."""
    window = read_model_window(settings, session_id)
    key = {session_id.encode()}
    if window is not None:
        until_us = window.end_us + MARGIN_US
        past = _past_event_time(codec, until_us)
        found = scan_topic(
            consumer, topic, since_us=window.start_us - MARGIN_US, keys=key, past=past
        )
        if found:
            return _decoded(found, codec)
        log.warning(
            "session %s: nothing on %s within its read-model window; reading the whole topic",
            session_id,
            topic,
        )
    else:
        log.info("session %s is not in the read-model: reading the whole of %s", session_id, topic)
    return _decoded(scan_topic(consumer, topic, keys=key, progress=_log_progress(topic)), codec)


def read_model_window(settings: Settings, session_id: str) -> Window | None:
    """Start and end of the session from ``rm:session:<id>``; None when Redis does not know
    it (not finished yet, expired) or cannot be reached."""
    client = redis_client(settings)
    try:
        model = SessionReadModel(client, settings.redis_key_prefix)
        raw = client.get(model.summary_key(session_id))
    except redis.RedisError as exc:
        log.warning("cannot read the session read-model (%s): reading whole topics", exc)
        return None
    finally:
        client.close()
    if raw is None:
        return None
    summary = json.loads(raw)
    return Window(int(summary["start_time_us"]), int(summary["end_time_us"]))


def _past_event_time(codec: Codec, until_us: int) -> PastWindow:
    def past(timestamp_ms: int, value: bytes | None) -> bool:
        if timestamp_ms * 1000 <= until_us:
            return False
        try:
            return int(codec.decode(value or b"")["start_time_us"]) > until_us
        except DecodeError:
            return False  # a dead letter tells no time: read on

    return past


def _log_progress(topic: str) -> Callable[[int, int], None]:
    def progress(done: int, total: int) -> None:
        log.info("reading %s: %s of %s records", topic, f"{done:,}", f"{total:,}")

    return progress


def _decoded(values: list[bytes | None], codec: Codec) -> list[dict[str, Any]]:
    records = []
    for value in values:
        try:
            records.append(codec.decode(value or b""))
        except DecodeError as exc:
            log.warning("skipping an undecodable %s: %s", codec.record, exc)
    return records


# --- a bounded reader --------------------------------------------------------------------------


def reader(settings: Settings) -> Consumer:
    """A consumer for :func:`scan_topic` (one serves every scan of a timeline)."""
    return Consumer(
        {
            **client_config(settings),
            # never joins or commits: the id only because the client insists on one
            "group.id": f"governor-timeline-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 50,
            # asking for one topic's metadata must not create it (and the cluster may hold
            # thousands of partitions: asking for all of them costs ~0.1 s a scan)
            "allow.auto.create.topics": False,
            "log_level": 3,
        }
    )


def scan_topic(
    consumer: Consumer,
    topic: str,
    *,
    since_us: int | None = None,
    keys: Collection[bytes] | None = None,
    past: PastWindow | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[bytes | None]:
    """Values of the committed records of ``topic`` whose key is one of ``keys`` (every record
    when None), each partition in offset order: from the first record whose Kafka timestamp is
    at or after ``since_us`` (the beginning when None) to the partition's end as of the call,
    or until ``past`` says the last record of a fetched batch is beyond what is wanted.

    ``consumer`` comes from :func:`reader`: it joins no group and commits nothing, and is left
    with nothing assigned. ``progress(done, total)`` is called every few seconds. Raises
    :class:`TopicNotFound`.
    """
    try:
        spans = _start(consumer, topic, since_us)
        return list(_matching(consumer, topic, spans, keys, past, progress))
    finally:
        consumer.unassign()


def _start(consumer: Consumer, topic: str, since_us: int | None) -> dict[int, tuple[int, int]]:
    """Assign each partition at its first offset to read; returns the offsets ``[first, end)``
    of each partition with anything to read."""
    found = consumer.list_topics(topic, timeout=TIMEOUT_S).topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise TopicNotFound(topic)
    partitions = sorted(found.partitions)
    firsts: dict[int, int] = {}
    if since_us is not None:
        since_ms = -(-since_us // 1000)
        lookups = consumer.offsets_for_times(
            [TopicPartition(topic, p, since_ms) for p in partitions], timeout=TIMEOUT_S
        )
        for tp in lookups:
            if tp.error is not None:
                raise KafkaException(tp.error)
            firsts[tp.partition] = tp.offset  # -1: no record that late
    spans: dict[int, tuple[int, int]] = {}
    for p in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=TIMEOUT_S)
        first = firsts.get(p, low)
        first = high if first < 0 else max(first, low)
        if first < high:
            spans[p] = (first, high)
    if spans:
        assignment = [TopicPartition(topic, p, first) for p, (first, _) in spans.items()]
        consumer.assign(assignment)
        consumer.resume(assignment)  # a scan before may have paused these partitions
    return spans


def _matching(
    consumer: Consumer,
    topic: str,
    spans: dict[int, tuple[int, int]],
    keys: Collection[bytes] | None,
    past: PastWindow | None,
    progress: Callable[[int, int], None] | None,
) -> Iterator[bytes | None]:
    ends = {p: end for p, (_, end) in spans.items()}
    total = sum(end - first for first, end in spans.values())  # markers count too: a bound
    done = 0
    reported = time.monotonic()
    while ends:
        last: dict[int, Message] = {}
        for msg in consumer.consume(num_messages=BATCH, timeout=POLL_S):
            partition = msg.partition() or 0
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(error)
                _retire(consumer, topic, ends, partition)  # read all that is committed
                continue
            end = ends.get(partition)
            offset = msg.offset() or 0
            if end is None or offset >= end:
                _retire(consumer, topic, ends, partition)
                continue
            done += 1
            if keys is None or msg.key() in keys:
                yield msg.value()
            last[partition] = msg
        for partition, msg in last.items():
            at_end = (msg.offset() or 0) >= ends.get(partition, 0) - 1
            if at_end or (past is not None and past(msg.timestamp()[1], msg.value())):
                _retire(consumer, topic, ends, partition)
        if progress is not None and time.monotonic() - reported >= PROGRESS_EVERY_S:
            reported = time.monotonic()
            progress(done, total)


def _retire(consumer: Consumer, topic: str, ends: dict[int, int], partition: int) -> None:
    if ends.pop(partition, None) is not None:
        # paused: what the broker already sent past the end is not fetched any more
        consumer.pause([TopicPartition(topic, partition)])
