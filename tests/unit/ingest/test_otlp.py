"""OTLP/HTTP decoding and responses: protobuf from the real SDK encoder, JSON, gzip, errors."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind as OtelKind
from opentelemetry.trace import Status, StatusCode

from streams.ingest.mapping import SpanKind
from streams.ingest.otlp import (
    Encoding,
    OtlpError,
    TooLarge,
    UnsupportedMediaType,
    decompress,
    encoding_of,
    logs_of,
    parse_logs,
    parse_traces,
    spans_of,
    status_body,
    traces_response,
)

TRACE_HEX = "5b8efff798038103d269b633813fc60c"


class Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Any) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def sdk_spans() -> list[ReadableSpan]:
    keep = Keep()
    provider = TracerProvider(resource=Resource.create({"governor.tenant": "acme"}))
    provider.add_span_processor(SimpleSpanProcessor(keep))
    tracer = provider.get_tracer("t")
    with (
        tracer.start_as_current_span(
            "invoke_agent", attributes={"gen_ai.operation.name": "invoke_agent"}
        ),
        tracer.start_as_current_span(
            "chat",
            kind=OtelKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.usage.input_tokens": 12,
                "gen_ai.input.messages": json.dumps([{"role": "user", "parts": []}]),
                "tags": ["a", "b"],
            },
        ) as chat,
    ):
        chat.add_event("gen_ai.evaluation.result", {"gen_ai.evaluation.score.value": 0.5})
        chat.set_status(Status(StatusCode.ERROR))
    provider.shutdown()
    return keep.spans


def test_protobuf_from_the_sdk_encoder_round_trips() -> None:
    spans = sdk_spans()
    body = encode_spans(spans).SerializeToString()
    decoded = spans_of(parse_traces(body, Encoding.PROTOBUF))
    by_name = {s.facts.name: s for s in decoded}
    chat, agent = by_name["chat"].facts, by_name["invoke_agent"].facts
    assert chat.trace_id == f"{spans[0].context.trace_id:032x}"
    assert chat.parent_span_id == agent.span_id
    assert agent.parent_span_id == ""
    assert (chat.kind, chat.error, agent.error) == (SpanKind.CLIENT, True, False)
    assert chat.attributes["gen_ai.usage.input_tokens"] == 12
    assert chat.attributes["tags"] == ["a", "b"]
    assert chat.events[0].attributes == {"gen_ai.evaluation.score.value": 0.5}
    assert by_name["chat"].resource["governor.tenant"] == "acme"
    assert chat.end_ns >= chat.start_ns > 0


def json_request(span: dict[str, Any]) -> bytes:
    return json.dumps(
        {"resourceSpans": [{"resource": {"attributes": []}, "scopeSpans": [{"spans": [span]}]}]}
    ).encode()


def test_json_uses_hex_ids_and_ignores_unknown_fields() -> None:
    body = json_request(
        {
            "traceId": TRACE_HEX,
            "spanId": "eee19b7ec3c1b174",
            "parentSpanId": "eee19b7ec3c1b173",
            "name": "chat",
            "kind": 3,
            "startTimeUnixNano": "1760000000000000000",
            "endTimeUnixNano": "1760000000500000000",
            "attributes": [
                {"key": "n", "value": {"intValue": "7"}},
                {"key": "m", "value": {"kvlistValue": {"values": [{"key": "k", "value": {}}]}}},
            ],
            "status": {"code": 2},
            "someFutureField": {"x": 1},
        }
    )
    [span] = spans_of(parse_traces(body, Encoding.JSON))
    facts = span.facts
    assert (facts.trace_id, facts.span_id, facts.parent_span_id) == (
        TRACE_HEX,
        "eee19b7ec3c1b174",
        "eee19b7ec3c1b173",
    )
    assert (facts.kind, facts.error, facts.duration_ms) == (SpanKind.CLIENT, True, 500.0)
    assert facts.attributes == {"n": 7, "m": {"k": None}}


@pytest.mark.parametrize(
    ("body", "encoding", "message"),
    [
        (b"\xff\xfe not protobuf", Encoding.PROTOBUF, "not a protobuf"),
        (b"{not json", Encoding.JSON, "not JSON"),
        (b"[1, 2]", Encoding.JSON, "JSON list"),
        (json_request({"traceId": "zz-not-hex"}), Encoding.JSON, "not a hex id"),
        (b'{"resourceSpans": 7}', Encoding.JSON, "not an OTLP JSON"),
    ],
)
def test_malformed_payloads_say_why(body: bytes, encoding: Encoding, message: str) -> None:
    with pytest.raises(OtlpError, match=message):
        parse_traces(body, encoding)


def test_content_type_and_encoding() -> None:
    assert encoding_of("application/x-protobuf") is Encoding.PROTOBUF
    assert encoding_of("application/json; charset=utf-8") is Encoding.JSON
    with pytest.raises(UnsupportedMediaType, match="text/plain"):
        encoding_of("text/plain")
    data = b"x" * 1000
    assert decompress(gzip.compress(data), "gzip", 2000) == data
    assert decompress(data, None, 2000) == data
    with pytest.raises(TooLarge):
        decompress(gzip.compress(data), "gzip", 999)
    with pytest.raises(OtlpError, match="not valid gzip"):
        decompress(b"plain", "gzip", 2000)
    with pytest.raises(OtlpError, match="truncated"):
        decompress(gzip.compress(data)[:20], "gzip", 2000)
    with pytest.raises(UnsupportedMediaType, match="br"):
        decompress(data, "br", 2000)


def test_partial_success_response_and_status_body() -> None:
    raw = traces_response(2, "span a: no tenant", Encoding.PROTOBUF)
    response = ExportTraceServiceResponse.FromString(raw)
    assert (response.partial_success.rejected_spans, response.partial_success.error_message) == (
        2,
        "span a: no tenant",
    )
    as_json = json.loads(traces_response(1, "x", Encoding.JSON))
    assert as_json == {"partialSuccess": {"rejectedSpans": "1", "errorMessage": "x"}}
    assert json.loads(traces_response(0, "", Encoding.JSON)) == {}
    assert json.loads(status_body("bad", Encoding.JSON)) == {"code": 3, "message": "bad"}


def test_log_records_with_event_name_or_attribute() -> None:
    body = json.dumps(
        {
            "resourceLogs": [
                {
                    "scopeLogs": [
                        {
                            "logRecords": [
                                {
                                    "timeUnixNano": "1760000000000000000",
                                    "eventName": "gen_ai.evaluation.result",
                                    "traceId": TRACE_HEX,
                                    "attributes": [
                                        {"key": "x", "value": {"doubleValue": 0.5}},
                                    ],
                                },
                                {
                                    "observedTimeUnixNano": "1760000000000000001",
                                    "body": {"stringValue": "hi"},
                                    "attributes": [
                                        {"key": "event.name", "value": {"stringValue": "e"}},
                                    ],
                                },
                            ]
                        }
                    ]
                }
            ]
        }
    ).encode()
    first, second = logs_of(parse_logs(body, Encoding.JSON))
    assert (first.event_name, first.trace_id, first.attributes) == (
        "gen_ai.evaluation.result",
        TRACE_HEX,
        {"x": 0.5},
    )
    assert (second.event_name, second.body, second.time_ns, second.index) == (
        "e",
        "hi",
        1760000000000000001,
        1,
    )
    json_format.MessageToDict(parse_logs(body, Encoding.JSON))  # a valid message
