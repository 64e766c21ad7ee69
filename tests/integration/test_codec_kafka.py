"""StepEvents written through the codec come back from the real broker intact."""

from __future__ import annotations

from streams.codec import Codecs
from streams.demo import demo_sessions
from streams.settings import Settings
from tests.kafka_helpers import consume, produce


def test_events_round_trip_through_kafka_with_keys_and_per_session_order(
    topics: Settings,
) -> None:
    codecs = Codecs.load(topics.schemas_dir)
    events = list(demo_sessions(40, seed=11))
    topic = topics.topic("events")
    produce(
        topics.bootstrap,
        topic,
        [(e["session_id"].encode(), codecs.step_event.encode(e)) for e in events],
    )
    messages = consume(topics.bootstrap, topic, len(events))
    decoded = [codecs.step_event.decode(m.value() or b"") for m in messages]
    assert all(
        (m.key() or b"").decode() == d["session_id"] for m, d in zip(messages, decoded, strict=True)
    )
    by_id = {d["event_id"]: d for d in decoded}
    assert all({k: by_id[e["event_id"]][k] for k in e} == e for e in events)
    seqs: dict[str, list[int]] = {}
    for d in decoded:  # one partition per session key: per-session order survives
        seqs.setdefault(d["session_id"], []).append(d["seq"])
    assert all(s == list(range(1, len(s) + 1)) for s in seqs.values())
