"""OTLP spans/s through ``governor ingest`` into the events topic, next to native client events/s.

    python -m bench.ingest [--spans 100000] [--batch 512] [--connections 4] [--gzip]

Uses the stack of GOVERNOR_BOOTSTRAP / GOVERNOR_REDIS_URL (starting the local one if it is not
running), on fresh topics. In one run:

1. **OTLP**: starts a real ``governor ingest`` process (``--port 0``) and posts protobuf
   ``ExportTraceServiceRequest`` bodies of ``--batch`` spans (the SDK's default batch size is
   512) over ``--connections`` keep-alive HTTP connections. Sessions are 1 ``invoke_agent``
   span + 5 ``chat`` + 4 ``execute_tool`` spans (10 spans, 11 events: the agent span gives
   SESSION_START and SESSION_END). A request is answered only after Kafka acknowledged all its
   events, so spans/s is spans into the topic. The topic's record count is checked.
2. **Native**: the Python client (``Governor``, ``obey=False``) emits the same sessions
   (START, 5 LLM calls, 4 tool calls, END) and flushes; events/s until the broker has them all.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from bench.common import bench_stack
from streams.client.governor import Governor
from streams.kafka_config import client_config
from streams.settings import Settings

SPANS_PER_SESSION = 10
EVENTS_PER_SESSION = 11
REPO = Path(__file__).resolve().parents[1]


def _kv(key: str, value: str | int) -> KeyValue:
    pair = KeyValue(key=key)
    if isinstance(value, int):
        pair.value.int_value = value
    else:
        pair.value.string_value = value
    return pair


def build_requests(sessions: int, batch: int, compress: bool) -> list[tuple[bytes, int]]:
    """(body, spans) of every request: whole sessions, about ``batch`` spans each."""
    bodies: list[tuple[bytes, int]] = []
    per_request = max(1, batch // SPANS_PER_SESSION)
    now = time.time_ns()
    for first in range(0, sessions, per_request):
        request = ExportTraceServiceRequest()
        resource_spans = request.resource_spans.add()
        resource_spans.resource.attributes.extend(
            [_kv("service.name", "bench-agent"), _kv("governor.tenant", "bench")]
        )
        spans = resource_spans.scope_spans.add().spans
        count = 0
        for _ in range(first, min(sessions, first + per_request)):
            trace = uuid.uuid4().bytes
            agent_id = os.urandom(8)
            agent = Span(
                trace_id=trace,
                span_id=agent_id,
                name="invoke_agent",
                start_time_unix_nano=now,
                end_time_unix_nano=now + 60_000_000,
            )
            agent.attributes.append(_kv("gen_ai.operation.name", "invoke_agent"))
            for step in range(SPANS_PER_SESSION - 1):
                child = Span(
                    trace_id=trace,
                    span_id=os.urandom(8),
                    parent_span_id=agent_id,
                    start_time_unix_nano=now + (step + 1) * 1_000_000,
                    end_time_unix_nano=now + (step + 1) * 1_000_000 + 500_000,
                )
                if step % 2 == 0:
                    child.name = "chat gpt-4o-mini"
                    child.attributes.extend(
                        [
                            _kv("gen_ai.operation.name", "chat"),
                            _kv("gen_ai.request.model", "gpt-4o-mini"),
                            _kv("gen_ai.usage.input_tokens", 900),
                            _kv("gen_ai.usage.output_tokens", 120),
                        ]
                    )
                else:
                    child.name = "execute_tool lookup"
                    child.attributes.extend(
                        [_kv("gen_ai.operation.name", "execute_tool"), _kv("gen_ai.tool.name", "x")]
                    )
                spans.append(child)
            spans.append(agent)
            count += SPANS_PER_SESSION
        body = request.SerializeToString()
        bodies.append((gzip.compress(body) if compress else body, count))
    return bodies


def start_ingest(settings: Settings, port_file: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "ingest", "--port", "0", "--port-file", port_file],
        env={**os.environ, **settings.to_env()},
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )


def wait_port(proc: subprocess.Popen[bytes], port_file: Path) -> int:
    deadline = time.monotonic() + 30
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("governor ingest did not start")
        time.sleep(0.05)
    return int(port_file.read_text())


def post_all(port: int, bodies: list[tuple[bytes, int]], connections: int, compress: bool) -> float:
    """Post every body over ``connections`` keep-alive connections; seconds taken."""
    headers = {"Content-Type": "application/x-protobuf"}
    if compress:
        headers["Content-Encoding"] = "gzip"
    failures: list[str] = []

    def sender(share: list[tuple[bytes, int]]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for body, _spans in share:
            conn.request("POST", "/v1/traces", body, headers)
            response = conn.getresponse()
            payload = response.read()
            rejected = ExportTraceServiceResponse.FromString(payload).partial_success
            if response.status != 200 or rejected.rejected_spans:
                failures.append(f"{response.status} {payload[:200]!r}")
        conn.close()

    threads = [
        threading.Thread(target=sender, args=(bodies[i::connections],)) for i in range(connections)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if failures:
        raise SystemExit(f"{len(failures)} requests failed, first: {failures[0]}")
    return seconds


def topic_records(settings: Settings) -> int:
    consumer = Consumer({**client_config(settings), "group.id": "bench-count"})
    topic = settings.topic("events")
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        total = 0
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


def native(settings: Settings, sessions: int) -> float:
    """Seconds for the Python client to emit ``sessions`` sessions and have them acknowledged."""
    gov = Governor("bench", "native-agent", settings=settings, obey=False, pii_guard=False)
    try:
        started = time.perf_counter()
        for _ in range(sessions):
            session = gov.session()
            session.start()
            for step in range(SPANS_PER_SESSION - 1):
                if step % 2 == 0:
                    session.llm_call(
                        model="gpt-4o-mini", input_tokens=900, output_tokens=120, obey=False
                    )
                else:
                    session.tool_call(name="x", obey=False)
            session.finish()
        assert gov.emitter.flush(120) == 0, "native events still pending after 120 s"
        return time.perf_counter() - started
    finally:
        gov.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=512, help="spans per OTLP request")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--gzip", action="store_true", help="gzip every request body")
    args = parser.parse_args()
    sessions = max(1, args.spans // SPANS_PER_SESSION)
    spans = sessions * SPANS_PER_SESSION
    with bench_stack() as settings, tempfile.TemporaryDirectory() as folder:
        bodies = build_requests(sessions, args.batch, args.gzip)
        proc = start_ingest(settings, Path(folder) / "port")
        try:
            port = wait_port(proc, Path(folder) / "port")
            # warm-up: connections, the Lua script, the producer's metadata
            post_all(port, bodies[:1], 1, args.gzip)
            seconds = post_all(port, bodies[1:], args.connections, args.gzip)
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        timed_spans = spans - bodies[0][1]
        in_topic = topic_records(settings)
        expected = sessions * EVENTS_PER_SESSION
        if in_topic != expected:
            raise SystemExit(f"events topic holds {in_topic:,} records, expected {expected:,}")
        native_seconds = native(settings, sessions)
    otlp_spans_s = timed_spans / seconds
    otlp_events_s = otlp_spans_s * EVENTS_PER_SESSION / SPANS_PER_SESSION
    native_events_s = sessions * EVENTS_PER_SESSION / native_seconds
    print(
        f"OTLP through governor ingest: {timed_spans:,} spans in {seconds:.2f}s = "
        f"{otlp_spans_s:,.0f} spans/s ({otlp_events_s:,.0f} events/s into "
        f"{settings.topic('events')}; {len(bodies) - 1} requests of ~{args.batch} spans, "
        f"{args.connections} connections{', gzip' if args.gzip else ''})"
    )
    print(
        f"native client: {sessions * EVENTS_PER_SESSION:,} events in {native_seconds:.2f}s = "
        f"{native_events_s:,.0f} events/s"
    )
    print(f"ratio OTLP events/s / native events/s: {otlp_events_s / native_events_s:.2f}")


if __name__ == "__main__":
    main()
