"""SpanRecords -> OTLP/JSON lines: one ``ExportTraceServiceRequest`` per line.

The messages are the OpenTelemetry proto package's own (``opentelemetry-proto``), turned into
JSON by protobuf's ``json_format`` with the two changes the OTLP/JSON encoding makes to the
standard proto3 JSON mapping (OTLP specification, "JSON Protobuf Encoding"): ``traceId``,
``spanId`` and ``parentSpanId`` are lowercase hex instead of base64, and enums are integers.
64-bit integers stay decimal strings, as proto3 JSON writes them. This is what the
Collector's file exporter writes and its ``otlpjsonfile`` receiver reads.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterable
from typing import IO, Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from .spans import SpanRecord

SCOPE_NAME = "wirespan"


def _any(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, (list, tuple)):
        v = AnyValue()
        v.array_value.values.extend(_any(x) for x in value)
        return v
    return AnyValue(string_value=str(value))


def _kvs(attrs: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=_any(v)) for k, v in attrs.items()]


def encode(spans: Iterable[SpanRecord], resource: dict[str, Any],
           version: str = "") -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend(_kvs(resource))
    ss = rs.scope_spans.add()
    ss.scope.name = SCOPE_NAME
    ss.scope.version = version
    for s in spans:
        sp = ss.spans.add()
        sp.trace_id = bytes.fromhex(s.trace_id)
        sp.span_id = bytes.fromhex(s.span_id)
        if s.parent_span_id:
            sp.parent_span_id = bytes.fromhex(s.parent_span_id)
        if s.trace_state:
            sp.trace_state = s.trace_state
        sp.name = s.name
        sp.kind = s.kind  # type: ignore[assignment]
        sp.start_time_unix_nano = s.start_ns
        sp.end_time_unix_nano = max(s.end_ns, s.start_ns)
        sp.attributes.extend(_kvs(s.attributes))
        sp.status.CopyFrom(Status(code=s.status_code, message=s.status_message))  # type: ignore[arg-type]
    return req


def _hex_ids(d: Any) -> None:
    for rs in d.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for sp in ss.get("spans", []):
                for k in ("traceId", "spanId", "parentSpanId"):
                    if k in sp:
                        sp[k] = base64.b64decode(sp[k]).hex()


def to_json_line(req: ExportTraceServiceRequest) -> str:
    d = json_format.MessageToDict(req, use_integers_for_enums=True)
    _hex_ids(d)
    return json.dumps(d, separators=(",", ":"))


def default_resource(service_name: str) -> dict[str, Any]:
    return {"service.name": service_name, "host.name": socket.gethostname()}


class OtlpJsonWriter:
    """Writes spans as OTLP/JSON lines, ``batch`` spans per line. The only file writer here."""

    def __init__(self, out: IO[str], resource: dict[str, Any], batch: int = 256,
                 version: str = "") -> None:
        self.out = out
        self.resource = resource
        self.batch = batch
        self.version = version
        self.pending: list[SpanRecord] = []
        self.written = 0

    def add(self, span: SpanRecord) -> None:
        self.pending.append(span)
        if len(self.pending) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.out.write(to_json_line(encode(self.pending, self.resource, self.version)))
            self.out.write("\n")
            self.written += len(self.pending)
            self.pending = []
        self.out.flush()


__all__ = ["OtlpJsonWriter", "Span", "default_resource", "encode", "to_json_line"]
