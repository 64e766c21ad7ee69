"""``governor ingest`` against the real broker and Redis: a real OpenTelemetry SDK export over
OTLP/HTTP (protobuf), a raw OTLP JSON payload (gzip), evaluation log records, a re-sent request,
a malformed one and a partially refused one; the StepEvents are read back from the topic and
folded as the worker folds them."""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from streams.client.governor import Governor
from streams.client.otel import GovernorSpanProcessor
from streams.codec import Codecs
from streams.control import SigningKey, generate_signing_key, session_target
from streams.ingest.steps import event_id
from streams.pipeline.accounting import SessionState, fold, new_state
from streams.pipeline.pricing import load_prices
from streams.publisher import DecisionPublisher, make_decision
from streams.settings import Settings
from tests.conftest import free_port
from tests.kafka_helpers import consume

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def signed(topics: Settings, tmp_path: Path) -> tuple[Settings, SigningKey]:
    """The test's settings with a signing key in their keys folder."""
    settings = topics.replace(keys_dir=tmp_path / "keys")
    return settings, generate_signing_key(settings.control_keys_dir, "k1")


@pytest.fixture
def ingest(signed: tuple[Settings, SigningKey], tmp_path: Path) -> Iterator[str]:
    """A real ``governor ingest`` process on a free port; yields its base URL."""
    with receivers(signed[0], [tmp_path / "port"]) as (url,):
        yield url


@pytest.fixture
def two_ingests(signed: tuple[Settings, SigningKey], tmp_path: Path) -> Iterator[list[str]]:
    """Two ``governor ingest`` processes sharing the broker and Redis; their base URLs."""
    with receivers(signed[0], [tmp_path / "a", tmp_path / "b"]) as urls:
        yield urls


@contextlib.contextmanager
def receivers(settings: Settings, port_files: list[Path]) -> Iterator[list[str]]:
    """``governor ingest`` processes started at once, one per port file; their base URLs."""
    env = {**os.environ, **settings.to_env()}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "ingest", "--port", "0", "--port-file", file],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for file in port_files
    ]
    try:
        deadline = time.monotonic() + 20
        for proc, port_file in zip(procs, port_files, strict=True):
            while not (port_file.exists() and port_file.read_text().strip()):
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                assert time.monotonic() < deadline, "governor ingest did not start in 20 s"
                time.sleep(0.05)
        yield [f"http://127.0.0.1:{file.read_text().strip()}" for file in port_files]
    finally:
        for proc in procs:
            proc.terminate()  # SIGTERM: answers what is in flight, then stops
        try:
            for proc in procs:
                assert proc.wait(15) == 0, "governor ingest did not stop cleanly on SIGTERM"
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(5)


def post(url: str, body: bytes, content_type: str, gzipped: bool = False) -> tuple[int, Any]:
    headers = {"Content-Type": content_type}
    if gzipped:
        body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        if exc.headers.get("Content-Type") == "application/x-protobuf":
            return exc.code, json_format.MessageToDict(status_pb2.Status.FromString(raw))
        return exc.code, json.loads(raw or b"{}")


def sdk_export(url: str) -> str:
    """A toy agent traced with the real SDK and exported with the real OTLP/HTTP exporter."""
    exporter = OTLPSpanExporter(endpoint=f"{url}/v1/traces")
    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": "ts-support-bot", "service.version": "3.2", "governor.tenant": "acme"}
        )
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace_id = toy_agent(provider.get_tracer("toy"))
    assert provider.force_flush(10_000)
    provider.shutdown()
    return trace_id


def toy_agent(tracer: Tracer, conversation: str | None = None) -> str:
    """A workflow (without ``conversation``, the trace is the session) running a sub-agent that
    chats with cache reads and writes, embeds, calls a tool and an MCP tool, and gets an
    evaluation; returns the trace id."""
    named = {} if conversation is None else {"gen_ai.conversation.id": conversation}
    with tracer.start_as_current_span(
        "invoke_workflow triage",
        attributes={
            "gen_ai.operation.name": "invoke_workflow",
            "governor.category": "billing",
            **named,
        },
    ) as workflow:
        trace_id = f"{workflow.get_span_context().trace_id:032x}"
        with tracer.start_as_current_span(
            "invoke_agent refunds", attributes={"gen_ai.operation.name": "invoke_agent"}
        ):
            with tracer.start_as_current_span(
                "chat claude-sonnet-4",
                kind=SpanKind.CLIENT,
                attributes={
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "anthropic",
                    "gen_ai.request.model": "claude-sonnet-4",
                    "gen_ai.usage.input_tokens": 10_000,
                    "gen_ai.usage.output_tokens": 500,
                    "gen_ai.usage.cache_read.input_tokens": 6_000,
                    "gen_ai.usage.cache_creation.input_tokens": 2_000,
                    "gen_ai.usage.reasoning.output_tokens": 200,
                },
            ) as chat:
                chat.add_event(
                    "gen_ai.evaluation.result",
                    {"gen_ai.evaluation.name": "relevance", "gen_ai.evaluation.score.value": 0.9},
                )
            with tracer.start_as_current_span(
                "embeddings text-embedding-3-small",
                kind=SpanKind.CLIENT,
                attributes={
                    "gen_ai.operation.name": "embeddings",
                    "gen_ai.request.model": "text-embedding-3-small",
                    "gen_ai.usage.input_tokens": 50_000,
                },
            ):
                pass
            with tracer.start_as_current_span(
                "execute_tool lookup_order",
                attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup"},
            ) as tool:
                tool.set_status(Status(StatusCode.ERROR))
                tool.set_attribute("error.type", "TimeoutError")
            with tracer.start_as_current_span(
                "tools/call refund",
                kind=SpanKind.CLIENT,
                attributes={
                    "mcp.method.name": "tools/call",
                    "gen_ai.tool.name": "refund",
                    "server.address": "payments.mcp",
                    "server.port": 443,
                },
            ):
                pass
    return trace_id


def raw_json(conversation: str, trace: str, start_ns: int) -> bytes:
    """A Go agent's export as raw OTLP JSON: an agent turn in a named conversation."""

    def attr(key: str, value: Any) -> dict[str, Any]:
        kind = "intValue" if isinstance(value, int) else "stringValue"
        return {"key": key, "value": {kind: str(value) if kind == "intValue" else value}}

    spans = [
        {
            "traceId": trace,
            "spanId": "1000000000000001",
            "name": "invoke_agent",
            "kind": 1,
            "startTimeUnixNano": str(start_ns),
            "endTimeUnixNano": str(start_ns + 900_000_000),
            "attributes": [
                attr("gen_ai.operation.name", "invoke_agent"),
                attr("gen_ai.conversation.id", conversation),
            ],
        },
        {
            "traceId": trace,
            "spanId": "1000000000000002",
            "parentSpanId": "1000000000000001",
            "name": "chat gpt-4o-mini",
            "kind": 3,
            "startTimeUnixNano": str(start_ns + 1_000_000),
            "endTimeUnixNano": str(start_ns + 400_000_000),
            "attributes": [
                attr("gen_ai.operation.name", "chat"),
                attr("gen_ai.request.model", "gpt-4o-mini"),
                attr("gen_ai.usage.input_tokens", 2_000),
                attr("gen_ai.usage.output_tokens", 300),
            ],
        },
    ]
    resource = {"attributes": [attr("service.name", "go-agent"), attr("governor.tenant", "acme")]}
    return json.dumps(
        {"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": spans}]}]}
    ).encode()


def evaluation_logs(conversation: str, time_ns: int) -> bytes:
    record = {
        "timeUnixNano": str(time_ns),
        "eventName": "gen_ai.evaluation.result",
        "attributes": [
            {"key": "gen_ai.conversation.id", "value": {"stringValue": conversation}},
            {"key": "gen_ai.evaluation.name", "value": {"stringValue": "faithfulness"}},
            {"key": "gen_ai.evaluation.score.value", "value": {"doubleValue": 0.4}},
        ],
    }
    resource = {"attributes": [{"key": "governor.tenant", "value": {"stringValue": "acme"}}]}
    return json.dumps(
        {"resourceLogs": [{"resource": resource, "scopeLogs": [{"logRecords": [record]}]}]}
    ).encode()


def by_session(settings: Settings, count: int) -> dict[str, list[dict[str, Any]]]:
    codec = Codecs.load(settings.schemas_dir).step_event
    sessions: dict[str, list[dict[str, Any]]] = {}
    for message in consume(settings.bootstrap, settings.topic("events"), count):
        event = codec.decode(message.value() or b"")
        assert message.key() == event["session_id"].encode()
        sessions.setdefault(event["session_id"], []).append(event)
    return sessions


def folded(events: list[dict[str, Any]]) -> tuple[SessionState, int]:
    """The session as the worker folds it, and how many events it skipped as duplicates."""
    prices = load_prices(REPO / "policies" / "prices.yaml")
    state = new_state(events[0])
    skipped = sum(fold(state, event, prices) is None for event in events)
    return state, skipped


def test_sdk_and_raw_otlp_exports_become_sessions_with_costs(topics: Settings, ingest: str) -> None:
    trace_id = sdk_export(ingest)
    now = time.time_ns()
    conversation = f"conv-{uuid.uuid4().hex[:8]}"
    go_trace = uuid.uuid4().hex
    body = raw_json(conversation, go_trace, now)
    assert post(f"{ingest}/v1/traces", body, "application/json", gzipped=True) == (200, {})
    logs = evaluation_logs(conversation, now + 950_000_000)
    assert post(f"{ingest}/v1/logs", logs, "application/json") == (200, {})
    # the exporter's retry of the same request: same events, same ids, same seqs
    assert post(f"{ingest}/v1/traces", body, "application/json") == (200, {})

    # workflow: START; agent: START; chat, evaluation, embeddings, tool, MCP; workflow: END
    # go agent's turn: START, chat, END (twice: the retry); the evaluation log after the turn
    sessions = by_session(topics, 8 + 3 * 2 + 1)
    assert set(sessions) == {trace_id, conversation, f"{conversation}#2"}

    workflow = sorted(sessions[trace_id], key=lambda e: e["seq"])
    assert [e["seq"] for e in workflow] == list(range(1, 9))
    assert [e["kind"] for e in workflow][-1] == "SESSION_END"
    assert sorted(e["kind"] for e in workflow) == sorted(
        ["SESSION_START"] * 2
        + ["LLM_CALL", "EVALUATION", "LLM_CALL", "TOOL_CALL", "TOOL_CALL", "SESSION_END"]
    )
    assert {(e["tenant_id"], e["agent_id"], e["agent_version"]) for e in workflow} == {
        ("acme", "ts-support-bot", "3.2")
    }
    state, skipped = folded(workflow)
    assert skipped == 0
    # claude-sonnet-4: 2,000 fresh input x $3 + 2,000 cache writes x $3.75 + 6,000 cache reads
    # x $0.30 + 500 out x $15 (per 1M; reads and writes are part of input_tokens) = 22,800
    # micro-USD; embeddings: 50,000 x $0.02 = 1,000 micro-USD
    assert state.cost_micros == 22_800 + 1_000
    assert state.unpriced_calls == 0
    assert (state.input_tokens, state.cache_read_input_tokens) == (60_000, 6_000)
    assert state.reasoning_output_tokens == 200
    assert (state.status, state.category) == ("OK", "billing")
    assert state.evaluations == {"relevance": 0.9}
    chat = next(e for e in workflow if e.get("model") == "claude-sonnet-4")
    assert chat["cache_write_input_tokens"] == 2_000
    mcp = next(e for e in workflow if e.get("tool_name") == "refund")
    assert mcp["attributes"]["mcp.server"] == "payments.mcp:443"
    failed = next(e for e in workflow if e.get("tool_name") == "lookup")
    assert (failed["status"], failed["error_type"]) == ("ERROR", "TimeoutError")

    turn = sessions[conversation]
    # the retried request is the same three events with the same seqs: the worker skips them
    assert [(e["kind"], e["seq"]) for e in turn] == [
        ("SESSION_START", 1),
        ("LLM_CALL", 2),
        ("SESSION_END", 3),
    ] * 2
    chat_id = event_id(go_trace, "1000000000000002", "step")
    assert turn[1]["event_id"] == turn[4]["event_id"] == chat_id
    state, skipped = folded(turn)
    assert skipped == 3
    # gpt-4o-mini: 2,000 x $0.15 + 300 x $0.60 per 1M = 480 micro-USD
    assert (state.cost_micros, state.llm_calls) == (480, 1)
    assert state.status == "OK", "the turn ends at its root agent span"
    # the evaluation came after the turn's end: the conversation's next turn, as in the
    # in-process processor (the worker takes no events for a session after its end)
    (late,) = sessions[f"{conversation}#2"]
    assert (late["kind"], late["seq"], late["evaluation_score"]) == ("EVALUATION", 1, 0.4)


def test_malformed_payloads_get_400_and_refused_spans_are_named(
    topics: Settings, ingest: str
) -> None:
    code, status = post(f"{ingest}/v1/traces", b"{not json", "application/json")
    assert code == 400
    assert status["code"] == 3
    assert "not JSON" in status["message"]
    code, status = post(f"{ingest}/v1/traces", b"\x0a\xff\xff", "application/x-protobuf")
    assert (code, status["code"]) == (400, 3)
    assert "not a protobuf ExportTraceServiceRequest" in status["message"]
    code, status = post(f"{ingest}/v1/traces", b"hello", "text/plain")
    assert (code, "application/x-protobuf" in status["message"]) == (415, True)

    now = time.time_ns()
    good = json.loads(raw_json("conv-partial", uuid.uuid4().hex, now))
    orphan = json.loads(raw_json("conv-orphan", uuid.uuid4().hex, now))
    orphan["resourceSpans"][0]["resource"] = {"attributes": []}  # no governor.tenant
    mixed = {"resourceSpans": good["resourceSpans"] + orphan["resourceSpans"]}
    code, response = post(f"{ingest}/v1/traces", json.dumps(mixed).encode(), "application/json")
    assert code == 200
    partial = response["partialSuccess"]
    assert partial["rejectedSpans"] == "2"
    assert "span 1000000000000001 (invoke_agent): no tenant" in partial["errorMessage"]
    assert "governor.tenant" in partial["errorMessage"]
    sessions = by_session(topics, 3)
    assert set(sessions) == {"conv-partial"}
    with urllib.request.urlopen(f"{ingest}/metrics", timeout=5) as metrics:
        text = metrics.read().decode()
    assert 'governor_ingest_refused_total{reason="no_tenant",signal="traces"} 2.0' in text
    assert 'governor_ingest_requests_total{code="400",signal="traces"} 2.0' in text
    assert (
        'governor_ingest_conversation_fallbacks_total{signal="traces",source="parent_span"} 1.0'
        in text
    )


def verified(published: dict[str, Any], keys: dict[str, str]) -> dict[str, Any]:
    """What a non-Python agent does: verify the signature over the signed bytes with a trusted
    key, then act on the fields of those bytes."""
    payload = base64.b64decode(published["signed_payload"])
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(keys[published["key_id"]]))
    key.verify(base64.b64decode(published["signature"]), payload)  # raises if forged
    fields: dict[str, Any] = json.loads(payload)
    return fields


def test_signed_decisions_over_http_snapshot_and_stream(
    signed: tuple[Settings, SigningKey], ingest: str
) -> None:
    settings, key = signed
    host, port = ingest.removeprefix("http://").split(":")
    stream = http.client.HTTPConnection(host, int(port), timeout=15)
    stream.request("GET", "/control/tenants/acme/stream")
    response = stream.getresponse()
    assert (response.status, response.headers["Content-Type"]) == (200, "text/event-stream")
    assert response.readline().startswith(b": governor decisions of tenant acme")
    response.readline()

    publisher = DecisionPublisher(settings, key)
    try:
        for tenant, session in (("other", "conv-x"), ("acme", "conv-k")):
            publisher.publish(
                make_decision(
                    target=session_target(session),
                    action="KILL",
                    epoch=1,
                    tenant_id=tenant,
                    policy_id="budget",
                    reason="over budget",
                    issued_at_us=time.time_ns() // 1000,
                ),
                wait=True,
            )
    finally:
        publisher.close()

    lines = [response.readline().decode().rstrip("\n") for _ in range(3)]
    stream.close()
    assert lines[0] == "event: decision"
    with urllib.request.urlopen(f"{ingest}/control/keys", timeout=5) as answer:
        keys = json.loads(answer.read())["keys"]
    assert keys == {"k1": key.public_b64()}
    streamed = verified(json.loads(lines[2].removeprefix("data: ")), keys)
    # only the tenant's own decisions, first the one for conv-k
    assert (streamed["target"], streamed["action"], streamed["tenant_id"]) == (
        "session:conv-k",
        "KILL",
        "acme",
    )
    assert lines[1] == f"id: {streamed['decision_id']}"

    url = f"{ingest}/control/sessions/conv-k?tenant=acme&agent=bot"
    with urllib.request.urlopen(url, timeout=5) as answer:
        snapshot = json.loads(answer.read())
    assert snapshot["targets"] == ["session:conv-k", "agent:acme/bot", "tenant:acme"]
    assert verified(snapshot["in_force"], keys)["decision_id"] == streamed["decision_id"]
    # a forged payload does not verify
    forged = dict(snapshot["in_force"])
    forged["signed_payload"] = base64.b64encode(
        base64.b64decode(forged["signed_payload"]).replace(b"KILL", b"WARN")
    ).decode()
    with pytest.raises(InvalidSignature):
        verified(forged, keys)


def _steps(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    fields = ("kind", "operation", "model", "tool_name", "input_tokens", "output_tokens")
    more = ("cache_read_input_tokens", "reasoning_output_tokens", "status", "error_type")
    steps = [e for e in events if e["kind"] in ("LLM_CALL", "TOOL_CALL", "EVALUATION")]
    return sorted(tuple(str(e.get(f)) for f in (*fields, *more, "evaluation_score")) for e in steps)


def test_the_in_process_processor_and_the_receiver_map_alike(
    signed: tuple[Settings, SigningKey], ingest: str
) -> None:
    """One mapping: the same toy agent through GovernorSpanProcessor and through OTLP ingest
    gives the same steps (the session lifecycle differs, see streams/ingest/steps.py)."""
    settings = signed[0]
    gov = Governor("acme", "ts-support-bot", "3.2", settings=settings, obey=False)
    provider = TracerProvider()
    processor = GovernorSpanProcessor(gov)
    provider.add_span_processor(processor)
    try:
        toy_agent(provider.get_tracer("toy"), conversation="in-process")
        assert processor.force_flush()
    finally:
        provider.shutdown()
        gov.close()
    exporter = OTLPSpanExporter(endpoint=f"{ingest}/v1/traces")
    otlp = TracerProvider(resource=Resource.create({"governor.tenant": "acme"}))
    otlp.add_span_processor(BatchSpanProcessor(exporter))
    toy_agent(otlp.get_tracer("toy"), conversation="over-otlp")
    assert otlp.force_flush(10_000)
    otlp.shutdown()

    # in process: START, 4 steps, the evaluation, END (the sub-agent shares the session and
    # its end does not end it); over OTLP: START twice (workflow, sub-agent), the same 5, and
    # the END of the turn at the workflow (its root agent span), not at the sub-agent
    sessions = by_session(settings, 7 + 8)
    assert processor.problems == {}
    assert _steps(sessions["in-process"]) == _steps(sessions["over-otlp"])
    assert len(_steps(sessions["over-otlp"])) == 5
    assert [e["kind"] for e in sessions["in-process"]][-1] == "SESSION_END"
    over_otlp = sorted(sessions["over-otlp"], key=lambda e: e["seq"])
    assert [e["kind"] for e in over_otlp].count("SESSION_END") == 1
    assert over_otlp[-1]["kind"] == "SESSION_END"


def chat_turn(tracer: Tracer, conversation: str, input_tokens: int) -> None:
    """One turn of a chat: an agent span (the turn's root) around one chat span."""
    with (
        tracer.start_as_current_span(
            "invoke_agent support",
            attributes={
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.conversation.id": conversation,
            },
        ),
        tracer.start_as_current_span(
            "chat gpt-4o-mini",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.usage.input_tokens": input_tokens,
                "gen_ai.usage.output_tokens": 100,
            },
        ),
    ):
        pass


def otlp_json(spans: list[dict[str, Any]]) -> bytes:
    resource = {"attributes": [{"key": "governor.tenant", "value": {"stringValue": "acme"}}]}
    return json.dumps(
        {"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": spans}]}]}
    ).encode()


def json_span(
    trace: str, span_id: int, start_ns: int, attrs: dict[str, Any], parent: int | None = None
) -> dict[str, Any]:
    def value(v: Any) -> dict[str, Any]:
        return {"intValue": str(v)} if isinstance(v, int) else {"stringValue": v}

    return {
        "traceId": trace,
        "spanId": f"{span_id:016x}",
        **({"parentSpanId": f"{parent:016x}"} if parent is not None else {}),
        "name": str(attrs.get("gen_ai.operation.name", "GET /chat")),
        "kind": 1,
        "startTimeUnixNano": str(start_ns),
        "endTimeUnixNano": str(start_ns + 1_000_000),
        "attributes": [{"key": k, "value": value(v)} for k, v in attrs.items()],
    }


def test_turns_and_one_session_served_by_two_receivers_at_once(
    signed: tuple[Settings, SigningKey], two_ingests: list[str]
) -> None:
    """Turns: a real SDK's two turns of one conversation, each exported to another receiver,
    are two sessions ended at their root agent span, the second under the first. At once: one
    session's spans sent concurrently to both receivers (and some re-sent to the other one) are
    each counted once, whatever order the receivers produce them in."""
    settings = signed[0]
    conversation = f"chat-{uuid.uuid4().hex[:8]}"
    for url, tokens in zip(two_ingests, (1_000, 3_000), strict=True):
        provider = TracerProvider(resource=Resource.create({"governor.tenant": "acme"}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(f"{url}/v1/traces")))
        chat_turn(provider.get_tracer("chat"), conversation, tokens)
        assert provider.force_flush(10_000)
        provider.shutdown()

    # one long session in one trace: 40 requests of 5 chat spans over both receivers at once,
    # 8 of them re-sent to the other receiver (a retry elsewhere), then the root agent span
    busy, trace, now = f"busy-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex, time.time_ns()
    agent = {"gen_ai.operation.name": "invoke_agent", "gen_ai.conversation.id": busy}
    requests = [
        otlp_json(
            [
                json_span(
                    trace,
                    100 + 5 * r + i,
                    now + (5 * r + i) * 1_000_000,
                    {
                        "gen_ai.operation.name": "chat",
                        "gen_ai.request.model": "gpt-4o-mini",
                        "gen_ai.usage.input_tokens": 1_000 + 10 * (5 * r + i),
                        "gen_ai.usage.output_tokens": 50,
                        "gen_ai.conversation.id": busy,
                    },
                    parent=1,
                )
                for i in range(5)
            ]
        )
        for r in range(40)
    ]
    sends = [(two_ingests[r % 2], body) for r, body in enumerate(requests)]
    sends += [(two_ingests[(r + 1) % 2], requests[r]) for r in range(0, 40, 5)]
    # four requests in flight at once: a seq can come late by at most the worker's window (63),
    # and more requests in flight on a loaded machine made a few come later than that
    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda s: post(f"{s[0]}/v1/traces", s[1], "application/json"), sends))
    assert codes == [(200, {})] * len(sends)
    root = otlp_json([json_span(trace, 1, now - 1_000_000, agent)])
    assert post(f"{two_ingests[0]}/v1/traces", root, "application/json") == (200, {})

    # a turn whose root agent span sits under an HTTP server span that comes in a later
    # request, to the other receiver: the turn's end waits in Redis and comes with it
    served, served_trace = f"served-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    named = {"gen_ai.operation.name": "invoke_agent", "gen_ai.conversation.id": served}
    chat = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini"}
    split = [json_span(served_trace, 2, now, named, 3), json_span(served_trace, 4, now, chat, 2)]
    assert post(f"{two_ingests[0]}/v1/traces", otlp_json(split), "application/json")[0] == 200
    http_span = otlp_json([json_span(served_trace, 3, now - 1, {})])
    assert post(f"{two_ingests[1]}/v1/traces", http_span, "application/json") == (200, {})

    sessions = by_session(settings, 2 * 3 + 200 + 40 + 2 + 3)
    assert set(sessions) == {conversation, f"{conversation}#2", busy, served}
    assert [e["kind"] for e in sorted(sessions[served], key=lambda e: e["seq"])] == [
        "SESSION_START",
        "LLM_CALL",
        "SESSION_END",
    ]
    # gpt-4o-mini: $0.15 in, $0.60 out per 1M tokens
    for session, cost, parent in (
        (conversation, 1_000 * 0.15 + 60, None),
        (f"{conversation}#2", 3_000 * 0.15 + 60, conversation),
    ):
        events = sessions[session]
        assert [e["kind"] for e in sorted(events, key=lambda e: e["seq"])] == [
            "SESSION_START",
            "LLM_CALL",
            "SESSION_END",
        ]
        state, skipped = folded(events)
        assert (state.status, state.cost_micros, state.parent_session_id) == ("OK", cost, parent)
        assert skipped == 0

    # the worker's fold in the partition's order against a recomputation in seq order
    arrived = sessions[busy]
    seen: set[int] = set()
    late = 0  # first deliveries after a higher seq: the worker used to drop them as duplicates
    for event in arrived:
        late += event["seq"] not in seen and bool(seen) and event["seq"] < max(seen)
        seen.add(event["seq"])
    unique = sorted({e["seq"]: e for e in arrived}.values(), key=lambda e: e["seq"])
    assert len(unique) == 200 + 2
    state, skipped = folded(arrived)
    truth, _ = folded(unique)
    assert skipped == 40, f"the 40 re-sent events, and only those ({late} came late)"
    assert (state.llm_calls, state.events, state.missing_events) == (200, 202, 0)
    assert (
        state.cost_micros
        == truth.cost_micros
        == sum(round((1_000 + 10 * n) * 0.15 + 50 * 0.6) for n in range(200))
    )
    assert (state.input_tokens, state.status) == (truth.input_tokens, "OK")


#: the Collector built by ops/otel-collector/build.sh (`make test` builds it once, first)
COLLECTOR = Path(
    os.environ.get("GOVERNOR_OTELCOL", REPO / ".governor" / "otelcol" / "otelcol-governor")
)


def collector_config(listen: int, tmp_path: Path) -> Path:
    """ops/otel-collector/governor.yaml as shipped, on a private port and with short waits."""
    config = yaml.safe_load((REPO / "ops" / "otel-collector" / "governor.yaml").read_text())
    config["receivers"]["otlp"]["protocols"] = {"http": {"endpoint": f"127.0.0.1:{listen}"}}
    config["processors"]["groupbytrace"]["wait_duration"] = "1s"
    config["processors"]["batch"]["timeout"] = "200ms"
    config["service"]["telemetry"] = {"metrics": {"level": "none"}}
    path = tmp_path / "collector.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.skipif(
    not COLLECTOR.exists(),
    reason=f"no Collector at {COLLECTOR}: build it once with ops/otel-collector/build.sh "
    "(make test tries, and keeps its output in .governor/otelcol-build.log)",
)
def test_an_opentelemetry_collector_forwards_to_governor_ingest(
    signed: tuple[Settings, SigningKey], ingest: str, tmp_path: Path
) -> None:
    """A real SDK exports to a real OpenTelemetry Collector running the shipped config
    (groupbytrace, the tenant set by the resource processor, otlphttp with gzip), which
    forwards to ``governor ingest``: the same session and cost as a direct export."""
    listen = free_port()
    env = {**os.environ, "GOVERNOR_INGEST_URL": ingest}
    log_file = (tmp_path / "collector.log").open("wb")
    proc = subprocess.Popen(
        [str(COLLECTOR), "--config", str(collector_config(listen, tmp_path))],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, (tmp_path / "collector.log").read_text()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", listen), 1):
                break
            assert time.monotonic() < deadline, "the Collector did not listen in 15 s"
            time.sleep(0.1)
        collector = f"http://127.0.0.1:{listen}"
        provider = TracerProvider(resource=Resource.create({"service.name": "ts-support-bot"}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(f"{collector}/v1/traces")))
        trace_id = toy_agent(provider.get_tracer("toy"))
        assert provider.force_flush(10_000)
        provider.shutdown()
        conversation = f"conv-{uuid.uuid4().hex[:8]}"
        logs = evaluation_logs(conversation, time.time_ns())
        assert post(f"{collector}/v1/logs", logs, "application/json")[0] == 200

        sessions = by_session(signed[0], 8 + 1)
    finally:
        proc.terminate()
        proc.wait(10)
        log_file.close()
    assert set(sessions) == {trace_id, conversation}
    state, skipped = folded(sorted(sessions[trace_id], key=lambda e: e["seq"]))
    assert (skipped, state.status, state.cost_micros) == (0, "OK", 22_800 + 1_000)
    assert {e["tenant_id"] for e in sessions[trace_id]} == {"acme"}
    (evaluation,) = sessions[conversation]
    assert (evaluation["evaluation_name"], evaluation["evaluation_score"]) == ("faithfulness", 0.4)
