"""OTLP transports to a collector: OTLP/HTTP (protobuf body) and OTLP/gRPC.

Both send an ``ExportTraceServiceRequest``, and both are plugged into ``sink.Exporter``
(queue, batching, retries). The body is ``otlp_proto.encode_bytes()``: the exact bytes of
``otlp_json.encode(...).SerializeToString()`` (tested equal), written without building
message objects — ~13 µs instead of ~36 µs a span here, which matters because the sender
thread shares the GIL with packet capture.

Why not ``opentelemetry-exporter-otlp-proto-http``/``-grpc``: their ``OTLPSpanExporter``
takes the SDK's ``ReadableSpan`` objects and builds its own protobuf from them. Using them
would mean pulling in ``opentelemetry-sdk`` (and ``requests``), making an SDK span object
per SpanRecord (resource, instrumentation scope, span context, status objects — more work
than encoding the span itself), only to have it encoded into the very message
``encode()`` already makes. Their ``export()`` also retries inline with ``sleep`` and owns
its own backoff and timeout policy, which has to sit behind our non-blocking queue anyway,
and the transport pieces underneath (``_export(serialized_data)``) are private API that
changes between releases. What we take from OpenTelemetry is what carries the contract:
the ``opentelemetry-proto`` messages and service definition. For gRPC, the installed
opentelemetry-proto does ship ``trace_service_pb2_grpc.TraceServiceStub``, but its
serializer takes a message object; to send the pre-encoded bytes, the transport makes the
same unary call on a ``grpcio`` channel itself, with the method path taken from the
``TraceService`` service descriptor (``/opentelemetry.proto.collector.trace.v1.TraceService/
Export``) and the response decoded by ``ExportTraceServiceResponse``. The tests' receiver is
the generated ``TraceServiceServicer``. The HTTP side is a keep-alive ``http.client``
connection (``_http.HttpPoster``): one POST per batch needs no more.

Semantics per the OTLP specification: POST ``{endpoint}/v1/traces`` with
``Content-Type: application/x-protobuf`` (an endpoint already ending in ``/v1/traces`` is
used as is); 429/502/503/504 are retried, honouring ``Retry-After``; other statuses drop the
batch. gRPC ``UNAVAILABLE``, ``RESOURCE_EXHAUSTED``, ``CANCELLED``, ``DEADLINE_EXCEEDED``,
``ABORTED``, ``OUT_OF_RANGE`` and ``DATA_LOSS`` are retried (the server's ``RetryInfo``
delay is not read: that needs ``googleapis-common-protos``; backoff applies instead). A
response's ``partial_success.rejected_spans`` is counted as dropped (``rejected``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from ._http import HttpPoster, split_url
from .otlp_proto import encode_bytes
from .sink import ExportError, RetryableError
from .spans import SpanRecord

HTTP_DEFAULT_PORT, GRPC_DEFAULT_PORT = 4318, 4317
PROTOCOLS = ("http/protobuf", "grpc")


def _rejected(data: bytes) -> int:
    if not data:
        return 0
    try:
        return int(ExportTraceServiceResponse.FromString(data).partial_success.rejected_spans)
    except Exception:  # noqa: BLE001 - a 2xx with an unreadable body still delivered the spans
        return 0


def http_traces_url(endpoint: str) -> str:
    scheme, host, port, base = split_url(endpoint, HTTP_DEFAULT_PORT)
    if not base.endswith("/v1/traces"):
        base += "/v1/traces"
    h = f"[{host}]" if ":" in host else host
    return f"{scheme}://{h}:{port}{base}"


class OtlpHttpTransport:
    def __init__(self, endpoint: str, resource: dict[str, Any], version: str = "",
                 timeout: float = 10.0, headers: dict[str, str] | None = None,
                 compress: bool = False) -> None:
        self.url = http_traces_url(endpoint)
        self.resource, self.version = resource, version
        self.poster = HttpPoster(self.url, "application/x-protobuf", timeout, headers, compress)

    def send(self, spans: Sequence[SpanRecord]) -> int:
        body = encode_bytes(spans, self.resource, self.version)
        return _rejected(self.poster.post(body))

    def close(self) -> None:
        self.poster.close()


def grpc_target(endpoint: str) -> tuple[str, bool]:
    """``http://host[:port]``, ``https://…`` or ``host[:port]`` -> ("host:port", secure)."""
    scheme, host, port, _ = split_url(endpoint, GRPC_DEFAULT_PORT)
    h = f"[{host}]" if ":" in host else host
    return f"{h}:{port}", scheme == "https"


class OtlpGrpcTransport:
    def __init__(self, endpoint: str, resource: dict[str, Any], version: str = "",
                 timeout: float = 10.0, metadata: dict[str, str] | None = None) -> None:
        import grpc

        self._grpc = grpc
        self.target, secure = grpc_target(endpoint)
        self.channel = (grpc.secure_channel(self.target, grpc.ssl_channel_credentials())
                        if secure else grpc.insecure_channel(self.target))
        method = (trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"]
                  .methods_by_name["Export"])
        self.export = self.channel.unary_unary(
            f"/{method.containing_service.full_name}/{method.name}",
            request_serializer=None,  # bytes, already encoded
            response_deserializer=ExportTraceServiceResponse.FromString)
        self.resource, self.version, self.timeout = resource, version, timeout
        self.metadata = tuple((metadata or {}).items()) or None
        c = grpc.StatusCode
        self.retryable = {c.UNAVAILABLE, c.RESOURCE_EXHAUSTED, c.CANCELLED,
                          c.DEADLINE_EXCEEDED, c.ABORTED, c.OUT_OF_RANGE, c.DATA_LOSS}

    def send(self, spans: Sequence[SpanRecord]) -> int:
        req = encode_bytes(spans, self.resource, self.version)
        try:
            resp = self.export(req, timeout=self.timeout, metadata=self.metadata)
        except self._grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            msg = f"gRPC Export to {self.target}: {getattr(code, 'name', code)} " \
                  f"{e.details() if hasattr(e, 'details') else e}"
            if code in self.retryable:
                raise RetryableError(msg) from None
            raise ExportError(msg) from None
        return int(resp.partial_success.rejected_spans)

    def close(self) -> None:
        self.channel.close()


__all__ = ["GRPC_DEFAULT_PORT", "HTTP_DEFAULT_PORT", "OtlpGrpcTransport", "OtlpHttpTransport",
           "PROTOCOLS", "grpc_target", "http_traces_url"]
