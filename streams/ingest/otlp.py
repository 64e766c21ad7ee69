"""OTLP/HTTP payloads: decode export requests, encode responses (pure, no I/O).

Follows the OTLP/HTTP specification (opentelemetry-proto 1.x): a POST body is an
``ExportTraceServiceRequest`` or ``ExportLogsServiceRequest`` in binary protobuf
(``application/x-protobuf``) or in OTLP's JSON mapping (``application/json``: lowerCamelCase
keys, trace and span ids as hex strings, not base64), optionally ``Content-Encoding: gzip``.
Unknown fields are ignored, as the spec asks of receivers. The response is the matching
``Export*ServiceResponse`` in the request's encoding, with ``partial_success`` when some items
were refused; a payload that is not such a request gets :class:`OtlpError` (HTTP 400, a
``google.rpc.Status`` body naming the reason).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from streams.ingest.mapping import SpanEvent, SpanFacts, SpanKind

#: the gRPC code OTLP/HTTP puts in a 400's Status body
INVALID_ARGUMENT = 3
#: biggest decompressed body accepted: a gzip bomb must not take the process down
DEFAULT_MAX_BODY_BYTES = 16_000_000


class Encoding(StrEnum):
    PROTOBUF = "application/x-protobuf"
    JSON = "application/json"


class OtlpError(ValueError):
    """A payload that is not a valid OTLP export request (HTTP 400 with this reason)."""


class UnsupportedMediaType(OtlpError):
    """Neither protobuf nor JSON, or an unknown content encoding (HTTP 415)."""


class TooLarge(OtlpError):
    """The (decompressed) body exceeds the receiver's limit (HTTP 413)."""


def encoding_of(content_type: str | None) -> Encoding:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    for encoding in Encoding:
        if media == encoding.value:
            return encoding
    raise UnsupportedMediaType(
        f"Content-Type {content_type or '(none)'!r} is not OTLP: send application/x-protobuf "
        "or application/json"
    )


def decompress(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    """The body without its ``Content-Encoding`` (gzip, deflate or none), at most ``max_bytes``."""
    coding = (content_encoding or "identity").strip().lower()
    if coding in ("", "identity"):
        data = body
    elif coding in ("gzip", "deflate"):
        wbits = 16 + zlib.MAX_WBITS if coding == "gzip" else zlib.MAX_WBITS
        inflater = zlib.decompressobj(wbits)
        try:
            data = inflater.decompress(body, max_bytes + 1)
        except zlib.error as exc:
            raise OtlpError(f"body is not valid {coding}: {exc}") from exc
        if not inflater.eof and len(data) <= max_bytes:
            raise OtlpError(f"{coding} body is truncated")
    else:
        raise UnsupportedMediaType(
            f"Content-Encoding {content_encoding!r} is not supported: send gzip or none"
        )
    if len(data) > max_bytes:
        raise TooLarge(f"body exceeds {max_bytes:,} bytes (decompressed)")
    return data


def gzip_body(data: bytes) -> bytes:
    """``data`` gzip-compressed (for clients and tests)."""
    return gzip.compress(data)


# --- JSON: hex ids to the base64 protobuf's JSON mapping expects ---------------------------

_ID_FIELDS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


def _hex_ids(node: Any, where: str) -> None:
    """Rewrite OTLP JSON's hex ids in place as base64 (protobuf's JSON mapping of bytes)."""
    if isinstance(node, list):
        for index, item in enumerate(node):
            _hex_ids(item, f"{where}[{index}]")
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in _ID_FIELDS and isinstance(value, str):
            try:
                raw = bytes.fromhex(value)
            except ValueError:
                raise OtlpError(f"{where}.{key} {value[:40]!r} is not a hex id") from None
            node[key] = base64.b64encode(raw).decode()
        elif isinstance(value, list | dict):
            _hex_ids(value, f"{where}.{key}")


def _parse(message: Message, data: bytes, encoding: Encoding, what: str) -> None:
    if encoding is Encoding.PROTOBUF:
        try:
            message.ParseFromString(data)
        except (DecodeError, RuntimeError, ValueError) as exc:
            raise OtlpError(f"body is not a protobuf {what}: {exc}") from exc
        return
    try:
        tree = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise OtlpError(f"body is not JSON: {exc}") from exc
    if not isinstance(tree, dict):
        raise OtlpError(f"body is JSON {type(tree).__name__}, not an {what} object")
    _hex_ids(tree, "$")
    try:
        json_format.ParseDict(tree, message, ignore_unknown_fields=True)
    except (json_format.ParseError, binascii.Error, ValueError, TypeError) as exc:
        raise OtlpError(f"body is not an OTLP JSON {what}: {exc}") from exc


def parse_traces(data: bytes, encoding: Encoding) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    _parse(request, data, encoding, "ExportTraceServiceRequest")
    return request


def parse_logs(data: bytes, encoding: Encoding) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    _parse(request, data, encoding, "ExportLogsServiceRequest")
    return request


# --- protobuf → plain data -----------------------------------------------------------------


def any_value(value: AnyValue) -> Any:
    """An OTLP ``AnyValue`` as a Python value (bytes as hex)."""
    which = value.WhichOneof("value")
    if which == "string_value":
        return value.string_value
    if which == "bool_value":
        return value.bool_value
    if which == "int_value":
        return value.int_value
    if which == "double_value":
        return value.double_value
    if which == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return attributes(value.kvlist_value.values)
    if which == "bytes_value":
        return value.bytes_value.hex()
    return None


def attributes(pairs: Any) -> dict[str, Any]:
    """Repeated ``KeyValue`` as a dict (a repeated key: the last one wins)."""
    out: dict[str, Any] = {}
    pair: KeyValue
    for pair in pairs:
        out[pair.key] = any_value(pair.value)
    return out


#: SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK: the span's parent is in another process
_PARENT_IS_REMOTE = 0x200
_SPAN_KINDS = {
    Span.SPAN_KIND_UNSPECIFIED: SpanKind.UNSPECIFIED,
    Span.SPAN_KIND_INTERNAL: SpanKind.INTERNAL,
    Span.SPAN_KIND_SERVER: SpanKind.SERVER,
    Span.SPAN_KIND_CLIENT: SpanKind.CLIENT,
    Span.SPAN_KIND_PRODUCER: SpanKind.PRODUCER,
    Span.SPAN_KIND_CONSUMER: SpanKind.CONSUMER,
}


@dataclass(frozen=True)
class OtlpSpan:
    """One span of an export request with the resource that produced it."""

    facts: SpanFacts
    resource: Mapping[str, Any]


@dataclass(frozen=True)
class OtlpLog:
    """One log record of an export request with its resource."""

    time_ns: int
    trace_id: str
    span_id: str
    event_name: str
    attributes: Mapping[str, Any]
    body: Any
    resource: Mapping[str, Any]
    #: place in the request, for a partial-success message
    index: int


def spans_of(request: ExportTraceServiceRequest) -> list[OtlpSpan]:
    out: list[OtlpSpan] = []
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                facts = SpanFacts(
                    attributes=attributes(span.attributes),
                    start_ns=span.start_time_unix_nano,
                    end_ns=span.end_time_unix_nano or span.start_time_unix_nano,
                    error=span.status.code == Status.STATUS_CODE_ERROR,
                    events=tuple(
                        SpanEvent(e.name, e.time_unix_nano, attributes(e.attributes))
                        for e in span.events
                    ),
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex(),
                    kind=_SPAN_KINDS.get(span.kind, SpanKind.UNSPECIFIED),
                    name=span.name,
                    parent_remote=bool(span.flags & _PARENT_IS_REMOTE),
                )
                out.append(OtlpSpan(facts, resource))
    return out


def logs_of(request: ExportLogsServiceRequest) -> list[OtlpLog]:
    out: list[OtlpLog] = []
    for resource_logs in request.resource_logs:
        resource = attributes(resource_logs.resource.attributes)
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                attrs = attributes(record.attributes)
                # event_name is OTLP >= 1.5; older senders put it in the event.name attribute
                name = record.event_name or str(attrs.get("event.name") or "")
                out.append(
                    OtlpLog(
                        time_ns=record.time_unix_nano or record.observed_time_unix_nano,
                        trace_id=record.trace_id.hex(),
                        span_id=record.span_id.hex(),
                        event_name=name,
                        attributes=attrs,
                        body=any_value(record.body) if record.HasField("body") else None,
                        resource=resource,
                        index=len(out),
                    )
                )
    return out


# --- responses -----------------------------------------------------------------------------


def _encode(message: Message, encoding: Encoding) -> bytes:
    if encoding is Encoding.PROTOBUF:
        return message.SerializeToString()
    return json_format.MessageToJson(message, indent=None).encode()


def traces_response(rejected: int, message: str, encoding: Encoding) -> bytes:
    response = ExportTraceServiceResponse()
    if rejected or message:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = message
    return _encode(response, encoding)


def logs_response(rejected: int, message: str, encoding: Encoding) -> bytes:
    response = ExportLogsServiceResponse()
    if rejected or message:
        response.partial_success.rejected_log_records = rejected
        response.partial_success.error_message = message
    return _encode(response, encoding)


def status_body(message: str, encoding: Encoding, code: int = INVALID_ARGUMENT) -> bytes:
    """The ``google.rpc.Status`` body of an error response."""
    return _encode(status_pb2.Status(code=code, message=message), encoding)
