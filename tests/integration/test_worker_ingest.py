"""The worker decodes good events and dead-letters bad ones with their reason (real broker)."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from streams.codec import (
    DLQ_EXCEPTION_CLASS,
    DLQ_EXCEPTION_MESSAGE,
    DLQ_OFFSET,
    DLQ_PARTITION,
    DLQ_REDACTED,
    DLQ_TOPIC,
    Codecs,
)
from streams.demo import demo_sessions
from streams.settings import Settings
from streams.worker import WorkerProcess
from tests.kafka_helpers import consume, headers_of, produce


def _wait_for(worker: WorkerProcess, total: int, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        view = worker.get_json("/ingest") or {"by_kind": {}, "dead_letters": 0}
        if sum(view["by_kind"].values()) + view["dead_letters"] >= total:
            return view
        time.sleep(0.2)
    raise AssertionError(f"worker saw {view} of {total} records:\n{worker.log_tail()}")


def _metrics_text(worker: WorkerProcess) -> str:
    with urllib.request.urlopen(worker.url + "/metrics", timeout=5) as response:
        return bytes(response.read()).decode()


def test_corrupt_payloads_land_in_the_dlq_with_reason_and_good_ones_decode(
    topics: Settings,
) -> None:
    codecs = Codecs.load(topics.schemas_dir)
    good = list(demo_sessions(5, seed=2))
    corrupt = [
        (b"bad-1", b"not avro"),
        (b"bad-2", codecs.decision.encode(_decision())),  # valid Avro, wrong record
        (b"bad-3", codecs.step_event.encode(good[0])[:-3]),  # truncated body
    ]
    events_topic = topics.topic("events")
    records = [(str(e["session_id"]).encode(), codecs.step_event.encode(e)) for e in good]
    produce(topics.bootstrap, events_topic, records[:3] + corrupt + records[3:])

    with WorkerProcess(topics, topics.state_dir / "worker.log") as worker:
        view = _wait_for(worker, len(good) + len(corrupt))
        metrics = _metrics_text(worker)

    assert view["dead_letters"] == 3
    assert sum(view["by_kind"].values()) == len(good)
    assert view["by_kind"]["SESSION_START"] == 5

    letters = {m.key(): m for m in consume(topics.bootstrap, topics.topic("events.dlq"), 3)}
    assert set(letters) == {b"bad-1", b"bad-2", b"bad-3"}
    for key, value in corrupt:
        headers = headers_of(letters[key])
        # the bytes are not kept (they may hold PII), a diagnostic that identifies them is
        diagnostic = json.loads(letters[key].value() or b"")
        assert headers[DLQ_REDACTED] == b"payload"
        assert diagnostic["length"] == len(value)
        assert diagnostic["sha256"] == hashlib.sha256(value).hexdigest()
        assert headers[DLQ_TOPIC] == events_topic.encode()
        assert int(headers[DLQ_PARTITION]) >= 0
        assert int(headers[DLQ_OFFSET]) >= 0
        assert headers[DLQ_EXCEPTION_CLASS].startswith(b"streams.codec.")
        assert headers[DLQ_EXCEPTION_MESSAGE]
    assert headers_of(letters[b"bad-2"])[DLQ_EXCEPTION_CLASS].endswith(b"WrongRecordError")

    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    assert sum(s.value for s in families["governor_dlq_records"].samples) == 3
    events_by_kind = {
        s.labels["kind"]: s.value
        for s in families["governor_events"].samples
        if s.name == "governor_events_total"
    }
    assert events_by_kind["SESSION_END"] == 5


def _decision() -> dict[str, object]:
    return {
        "decision_id": "d-1",
        "target": "session:s-1",
        "tenant_id": "acme",
        "action": "KILL",
        "epoch": 1,
        "issued_at_us": 1,
        "signature": b"",
    }
