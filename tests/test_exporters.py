"""Exporters against real receivers started here on 127.0.0.1: an OTLP/HTTP server and a
gRPC TraceService (opentelemetry-proto's service definition on grpcio) decoding what they
get, a Zipkin receiver checking each posted body against the Zipkin v2 span schema; ones
that answer 503/429 (or UNAVAILABLE) a few times, and one that is down."""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse)

from conftest import ROOT
from exporter.otlp_json import encode
from exporter.otlp_proto import encode_bytes
from test_spans import _attrs, _spans, _text
from exporter.otlp import OtlpGrpcTransport, OtlpHttpTransport, grpc_target, http_traces_url
from exporter.otlp_json import default_resource
from exporter.sink import Exporter, parse_retry_after
from exporter.spans import STATUS_ERROR, SpanRecord
from exporter.zipkin import ZipkinHttpTransport, to_zipkin, zipkin_json, zipkin_spans_url

SAMPLE = ROOT / "pcaps" / "sample-http1.pcap"
RESOURCE = default_resource("test-svc")
FAST = dict(batch_delay=0.05, backoff_base=0.01, backoff_max=0.05)


def span(i: int, **kw: Any) -> SpanRecord:
    base = dict(trace_id=f"{i + 1:032x}", span_id=f"{i + 1:016x}",
                parent_span_id=f"{i + 7:016x}", name=f"GET /x/{{id}}", kind=3,
                start_ns=1_700_000_000_000_000_000 + i * 1000,
                end_ns=1_700_000_000_000_000_000 + i * 1000 + 2_500_000, status_code=0,
                attributes={"http.request.method": "GET", "http.response.status_code": 200,
                            "network.peer.address": "10.0.0.2", "network.peer.port": 8080,
                            "server.address": "api", "wirespan.proxy.span_id_rewritten": False,
                            "wirespan.exchange.flags": ["gap", "reset"]})
    base.update(kw)
    return SpanRecord(**base)  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- receivers ----

class HttpReceiver:
    """OTLP/HTTP (``/v1/traces``, protobuf) or Zipkin (``/api/v2/spans``, JSON) receiver.

    ``failures`` is a list of (status, headers) answered before it starts accepting."""

    def __init__(self, kind: str = "otlp", failures: list[tuple[int, dict]] | None = None,
                 reply: bytes = b"") -> None:
        self.kind, self.failures, self.reply = kind, list(failures or []), reply
        self.requests: list[Any] = []  # decoded bodies accepted
        self.attempts: list[float] = []  # monotonic time of every POST
        self.errors: list[str] = []
        self.lock = threading.Lock()
        rec = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with rec.lock:
                    rec.attempts.append(time.monotonic())
                    fail = rec.failures.pop(0) if rec.failures else None
                if fail is not None:
                    self.send_response(fail[0])
                    for k, v in fail[1].items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                try:
                    rec.accept(self.path, self.headers, body)
                except Exception as e:  # noqa: BLE001 - record, answer 400
                    rec.errors.append(repr(e))
                    self.send_response(400)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", self.headers["Content-Type"])
                self.send_header("Content-Length", str(len(rec.reply)))
                self.end_headers()
                self.wfile.write(rec.reply)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def accept(self, path: str, headers: Any, body: bytes) -> None:
        if headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.kind == "otlp":
            assert path == "/v1/traces", path
            assert headers["Content-Type"] == "application/x-protobuf"
            req = ExportTraceServiceRequest.FromString(body)
            with self.lock:
                self.requests.append(req)
        else:
            assert path == "/api/v2/spans", path
            assert headers["Content-Type"] == "application/json"
            doc = json.loads(body)
            jsonschema.validate(doc, ZIPKIN_LIST_OF_SPANS)
            with self.lock:
                self.requests.append(doc)

    def spans(self) -> list[Any]:
        with self.lock:
            if self.kind == "otlp":
                return [s for r in self.requests for rs in r.resource_spans
                        for ss in rs.scope_spans for s in ss.spans]
            return [s for doc in self.requests for s in doc]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class GrpcReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, failures: list[grpc.StatusCode] | None = None) -> None:
        self.failures = list(failures or [])
        self.requests: list[ExportTraceServiceRequest] = []
        self.attempts = 0
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def Export(self, request: ExportTraceServiceRequest, context: Any  # noqa: N802
               ) -> ExportTraceServiceResponse:
        with self.lock:
            self.attempts += 1
            fail = self.failures.pop(0) if self.failures else None
        if fail is not None:
            context.abort(fail, "try later")
        with self.lock:
            self.requests.append(request)
        return ExportTraceServiceResponse()

    def spans(self) -> list[Any]:
        with self.lock:
            return [s for r in self.requests for rs in r.resource_spans
                    for ss in rs.scope_spans for s in ss.spans]

    def close(self) -> None:
        self.server.stop(0)


_HEX16, _HEX32 = "^[0-9a-f]{16}$", "^[0-9a-f]{16}([0-9a-f]{16})?$"
_ENDPOINT = {"type": "object", "additionalProperties": False, "properties": {
    "serviceName": {"type": "string"}, "ipv4": {"type": "string", "format": "ipv4"},
    "ipv6": {"type": "string", "format": "ipv6"},
    "port": {"type": "integer", "minimum": 1, "maximum": 65535}}}
# Zipkin v2 Span (zipkin2-api.yaml, definitions Span/Endpoint/Annotation/Tags) as JSON Schema
ZIPKIN_SPAN = {
    "type": "object", "required": ["traceId", "id"], "additionalProperties": False,
    "properties": {
        "traceId": {"type": "string", "pattern": _HEX32},
        "id": {"type": "string", "pattern": _HEX16},
        "parentId": {"type": "string", "pattern": _HEX16},
        "name": {"type": "string"},
        "kind": {"enum": ["CLIENT", "SERVER", "PRODUCER", "CONSUMER"]},
        "timestamp": {"type": "integer", "minimum": 1},
        "duration": {"type": "integer", "minimum": 1},
        "debug": {"type": "boolean"}, "shared": {"type": "boolean"},
        "localEndpoint": _ENDPOINT, "remoteEndpoint": _ENDPOINT,
        "annotations": {"type": "array", "items": {
            "type": "object", "required": ["timestamp", "value"],
            "properties": {"timestamp": {"type": "integer"}, "value": {"type": "string"}}}},
        "tags": {"type": "object", "additionalProperties": {"type": "string"}},
    }}
ZIPKIN_LIST_OF_SPANS = {"type": "array", "items": ZIPKIN_SPAN}


@pytest.fixture
def otlp_http() -> Any:
    r = HttpReceiver("otlp")
    yield r
    r.close()


# ---- the fast protobuf encoder gives exactly SerializeToString()'s bytes ----

@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spans=st.lists(_spans, max_size=4), resource=_attrs,
       version=st.one_of(st.just(""), _text))
def test_fast_protobuf_equals_serialize_to_string(spans: list[SpanRecord], resource: dict,
                                                  version: str) -> None:
    ref = encode(spans, resource, version)
    fast = encode_bytes(spans, resource, version)
    assert fast == ref.SerializeToString()
    back = ExportTraceServiceRequest.FromString(fast)
    assert back.SerializeToString() == fast
    assert len(back.resource_spans[0].scope_spans[0].spans) == len(spans)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spans=st.lists(_spans, min_size=1, max_size=6), pods=st.lists(_attrs, min_size=1,
       max_size=3), resource=_attrs, picks=st.lists(st.integers(0, 3), min_size=6, max_size=6))
def test_spans_with_their_own_resource_are_grouped(spans: list[SpanRecord], pods: list[dict],
                                                   resource: dict, picks: list[int]) -> None:
    """The agent gives each span its pod's resource: one ResourceSpans per resource, in order
    of first appearance, in all three encoders, and each span under its own resource."""
    from exporter.otlp_json import fast_json_line, to_json_line

    for s, k in zip(spans, picks):
        s.resource = pods[k] if k < len(pods) else None
    ref = encode(spans, resource, "1")
    assert encode_bytes(spans, resource, "1") == ref.SerializeToString()
    assert fast_json_line(spans, resource, "1") == to_json_line(ref)
    want: list[int] = []
    for s in spans:
        r = id(s.resource if s.resource is not None else resource)
        if r not in want:
            want.append(r)
    assert len(ref.resource_spans) == len(want)
    got = [(sp.span_id.hex(), tuple(sorted(kv.key for kv in rs.resource.attributes)))
           for rs in ref.resource_spans for sp in rs.scope_spans[0].spans]
    assert sorted(got) == sorted((s.span_id.lower(), tuple(sorted(
        s.resource if s.resource is not None else resource))) for s in spans)
    z = json.loads(zipkin_json(spans, resource))
    assert len(z) == len(spans)


def test_fast_protobuf_rejects_what_the_proto_rejects() -> None:
    for bad in (dict(attributes={"x": 1 << 63}), dict(start_ns=-1), dict(end_ns=1 << 64),
                dict(trace_id="zz")):
        with pytest.raises(ValueError):
            encode([span(0, **bad)], {})
        with pytest.raises(ValueError):
            encode_bytes([span(0, **bad)], {})


# ---- OTLP/HTTP ----

def test_otlp_http_delivers_every_span_in_batches(otlp_http: HttpReceiver) -> None:
    e = Exporter(OtlpHttpTransport(otlp_http.url, RESOURCE, "9.9"), batch_size=100, **FAST)
    for i in range(1000):
        e.add(span(i))
    e.close(5)
    got = otlp_http.spans()
    assert len(got) == 1000 and e.spans_exported == 1000 and not e.spans_dropped
    assert sorted(s.span_id.hex() for s in got) == sorted(f"{i + 1:016x}" for i in range(1000))
    assert all(len(r.resource_spans[0].scope_spans[0].spans) <= 100 for r in otlp_http.requests)
    r0 = otlp_http.requests[0].resource_spans[0]
    assert {kv.key: kv.value.string_value for kv in r0.resource.attributes}["service.name"] \
        == "test-svc"
    assert r0.scope_spans[0].scope.version == "9.9"
    s = got[0]
    assert s.kind == 3 and s.start_time_unix_nano > 0 and s.parent_span_id
    assert e.stats["export_errors"] == 0


def test_otlp_http_gzip(otlp_http: HttpReceiver) -> None:
    e = Exporter(OtlpHttpTransport(otlp_http.url, RESOURCE, compress=True), **FAST)
    for i in range(20):
        e.add(span(i))
    e.close(5)
    assert len(otlp_http.spans()) == 20 and e.spans_exported == 20


def test_otlp_http_retries_503_and_429_then_succeeds() -> None:
    r = HttpReceiver("otlp", failures=[(503, {}), (429, {"Retry-After": "0"}), (503, {}),
                                       (429, {})])
    try:
        e = Exporter(OtlpHttpTransport(r.url, RESOURCE), batch_size=50, **FAST)
        for i in range(200):
            e.add(span(i))
        e.close(5)
        assert len(r.spans()) == 200 and e.spans_exported == 200  # nothing lost
        assert e.export_errors == 4 and not e.spans_dropped
    finally:
        r.close()


def test_retry_after_is_honoured() -> None:
    r = HttpReceiver("otlp", failures=[(429, {"Retry-After": "1"})])
    try:
        e = Exporter(OtlpHttpTransport(r.url, RESOURCE), **FAST)
        e.add(span(0))
        assert e.flush(5)
        e.close(1)
        assert len(r.attempts) == 2 and r.attempts[1] - r.attempts[0] >= 0.95
        assert e.spans_exported == 1
    finally:
        r.close()
    assert parse_retry_after("2.5") == 2.5 and parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert parse_retry_after("soon") is None


def test_retries_are_bounded_and_permanent_errors_not_retried() -> None:
    r = HttpReceiver("otlp", failures=[(503, {})] * 50)
    try:
        e = Exporter(OtlpHttpTransport(r.url, RESOURCE), max_retries=2,
                     **{**FAST, "batch_delay": 5})  # one batch, sent by close()
        for i in range(5):
            e.add(span(i))
        e.close(5)
        assert len(r.attempts) == 3 and e.export_errors == 3
        assert e.spans_dropped == {"retries_exhausted": 5} and e.spans_exported == 0
    finally:
        r.close()
    r = HttpReceiver("otlp", failures=[(400, {})])
    try:
        e = Exporter(OtlpHttpTransport(r.url, RESOURCE), **FAST)
        e.add(span(0))
        e.close(5)
        assert len(r.attempts) == 1 and e.spans_dropped == {"rejected": 1}
    finally:
        r.close()


def test_partial_success_counts_rejected_spans() -> None:
    resp = ExportTraceServiceResponse()
    resp.partial_success.rejected_spans = 2
    r = HttpReceiver("otlp", reply=resp.SerializeToString())
    try:
        e = Exporter(OtlpHttpTransport(r.url, RESOURCE), **FAST)
        for i in range(10):
            e.add(span(i))
        e.close(5)
        assert e.spans_exported == 8 and e.spans_dropped == {"rejected": 2}
    finally:
        r.close()


def test_receiver_down_queue_bounded_overflow_counted_close_prompt() -> None:
    port = free_port()  # nothing listens there: connection refused, retried
    e = Exporter(OtlpHttpTransport(f"http://127.0.0.1:{port}", RESOURCE), max_queue=100,
                 batch_size=10, **FAST)
    t = time.monotonic()
    for i in range(5000):
        e.add(span(i))
    added = time.monotonic() - t
    e.close(0.5)
    took = time.monotonic() - t
    assert added < 0.5 and took < 2.5, (added, took)
    d = e.stats["spans_dropped"]
    assert d["queue_full"] >= 4890 and e.spans_exported == 0
    assert sum(d.values()) == 5000  # every span accounted for
    assert e.export_errors >= 1 and "127.0.0.1" in e.last_error


def test_flush_has_a_deadline_and_stats_report_counters() -> None:
    e = Exporter(OtlpHttpTransport(f"http://127.0.0.1:{free_port()}", RESOURCE),
                 batch_delay=0.01, backoff_base=0.5, backoff_max=1, max_retries=50)
    e.add(span(0))
    t = time.monotonic()
    assert e.flush(0.3) is False and time.monotonic() - t < 1.0
    e.close(0.2)
    st = e.stats
    assert set(st) >= {"spans_exported", "spans_dropped", "export_errors"}
    assert st["spans_exported"] == 0 and sum(st["spans_dropped"].values()) == 1
    e.add(span(1))  # after close: dropped, counted, no error
    assert sum(e.stats["spans_dropped"].values()) == 2


def test_add_never_blocks_on_a_hung_receiver() -> None:
    hole = socket.socket()  # accepts connections in the backlog, never answers
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)
    try:
        url = f"http://127.0.0.1:{hole.getsockname()[1]}"
        e = Exporter(OtlpHttpTransport(url, RESOURCE, timeout=0.5), max_queue=1000,
                     batch_size=10, **FAST)
        t = time.monotonic()
        for i in range(20_000):
            e.add(span(i))
        assert time.monotonic() - t < 1.0
        e.close(0.3)
        assert time.monotonic() - t < 3.0
        assert e.spans_dropped["queue_full"] >= 20_000 - 1000 - 10 and e.spans_exported == 0
        assert sum(e.spans_dropped.values()) == 20_000
    finally:
        hole.close()


def test_endpoint_urls() -> None:
    assert http_traces_url("http://h:4318") == "http://h:4318/v1/traces"
    assert http_traces_url("http://h") == "http://h:4318/v1/traces"
    assert http_traces_url("http://h:1/otlp/v1/traces") == "http://h:1/otlp/v1/traces"
    assert grpc_target("http://h") == ("h:4317", False)
    assert grpc_target("https://h:99") == ("h:99", True)
    assert grpc_target("h:5") == ("h:5", False)
    assert zipkin_spans_url("http://z") == "http://z:9411/api/v2/spans"


# ---- OTLP/gRPC ----

def test_grpc_delivers_and_retries_unavailable_and_resource_exhausted() -> None:
    c = grpc.StatusCode
    r = GrpcReceiver([c.UNAVAILABLE, c.RESOURCE_EXHAUSTED, c.UNAVAILABLE])
    try:
        e = Exporter(OtlpGrpcTransport(f"http://127.0.0.1:{r.port}", RESOURCE, timeout=5),
                     batch_size=100, **{**FAST, "batch_delay": 5})
        for i in range(300):
            e.add(span(i))
        e.close(10)
        got = r.spans()
        assert len(got) == 300 and e.spans_exported == 300 and not e.spans_dropped
        assert e.export_errors == 3 and r.attempts == 6
        assert {s.span_id.hex() for s in got} == {f"{i + 1:016x}" for i in range(300)}
    finally:
        r.close()


def test_grpc_permanent_error_not_retried() -> None:
    r = GrpcReceiver([grpc.StatusCode.INVALID_ARGUMENT])
    try:
        e = Exporter(OtlpGrpcTransport(f"127.0.0.1:{r.port}", RESOURCE, timeout=5), **FAST)
        e.add(span(0))
        e.close(5)
        assert r.attempts == 1 and e.spans_dropped == {"rejected": 1}
    finally:
        r.close()


# ---- Zipkin ----

def test_zipkin_mapping_and_schema() -> None:
    err = span(1, kind=2, status_code=STATUS_ERROR, status_message="reset", parent_span_id="",
               end_ns=1_700_000_000_000_001_000 + 400,
               attributes={"network.peer.address": "fd00::2", "network.peer.port": 443,
                           "http.response.status_code": 503, "x.f": 1.5, "x.b": True,
                           "x.l": ["a", 1, False]})
    doc = json.loads(zipkin_json([span(0), err], RESOURCE, "1.0"))
    jsonschema.validate(doc, ZIPKIN_LIST_OF_SPANS)
    a, b = doc
    assert a["traceId"] == f"{1:032x}" and a["id"] == f"{1:016x}" and a["parentId"]
    assert a["kind"] == "CLIENT" and a["timestamp"] == 1_700_000_000_000_000
    assert a["duration"] == 2500 and a["localEndpoint"] == {"serviceName": "test-svc"}
    assert a["remoteEndpoint"] == {"serviceName": "api", "ipv4": "10.0.0.2", "port": 8080}
    assert a["tags"]["http.response.status_code"] == "200"
    assert a["tags"]["wirespan.proxy.span_id_rewritten"] == "false"
    assert a["tags"]["wirespan.exchange.flags"] == '["gap","reset"]'
    assert a["tags"]["otel.scope.name"] == "wirespan" and "error" not in a["tags"]
    assert a["tags"]["host.name"] == RESOURCE["host.name"]
    assert "parentId" not in b and b["kind"] == "SERVER" and b["duration"] == 1
    assert b["remoteEndpoint"] == {"ipv6": "fd00::2", "port": 443}
    assert b["tags"]["error"] == "reset" and b["tags"]["otel.status_code"] == "ERROR"
    assert b["tags"]["x.f"] == "1.5" and b["tags"]["x.b"] == "true"
    assert b["tags"]["x.l"] == '["a",1,false]'
    assert "kind" not in to_zipkin(span(2, kind=1), RESOURCE)  # INTERNAL: no kind


def test_zipkin_http_exporter_with_retries() -> None:
    r = HttpReceiver("zipkin", failures=[(503, {}), (429, {"Retry-After": "0"})])
    try:
        e = Exporter(ZipkinHttpTransport(r.url, RESOURCE), batch_size=64, **FAST)
        for i in range(150):
            e.add(span(i, status_code=STATUS_ERROR if i % 3 else 0))
        e.close(5)
        assert not r.errors, r.errors  # every body passed the schema
        got = r.spans()
        assert len(got) == 150 and e.spans_exported == 150 and e.export_errors == 2
        assert all(isinstance(v, str) for s in got for v in s["tags"].values())
    finally:
        r.close()


# ---- end to end through the CLI ----

def replay(*args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "sniffer", "replay", str(SAMPLE), "--spans",
                        "all", "--json", *args], capture_output=True, text=True, cwd=ROOT,
                       timeout=timeout)
    return p, time.monotonic() - t


def file_span_ids(tmp_path: Any) -> set[str]:
    out = tmp_path / "spans.jsonl"
    p, _ = replay("-o", str(out))
    assert p.returncode == 0, p.stderr
    return {sp["spanId"] for line in out.read_text().splitlines()
            for rs in json.loads(line)["resourceSpans"] for ss in rs["scopeSpans"]
            for sp in ss["spans"]}


def test_replay_otlp_http_endpoint_delivers_every_span(otlp_http: HttpReceiver,
                                                       tmp_path: Any) -> None:
    want = file_span_ids(tmp_path)
    p, _ = replay("--otlp-endpoint", otlp_http.url)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["spans_exported"] == len(want) > 0 and summary["spans_dropped"] == {}
    assert {s.span_id.hex() for s in otlp_http.spans()} == want


def test_replay_grpc_and_zipkin_endpoints(tmp_path: Any) -> None:
    want = file_span_ids(tmp_path)
    g, z = GrpcReceiver([grpc.StatusCode.UNAVAILABLE]), HttpReceiver("zipkin")
    try:
        p, _ = replay("--otlp-endpoint", f"http://127.0.0.1:{g.port}", "--otlp-protocol",
                      "grpc", "--zipkin-endpoint", z.url, "-o", str(tmp_path / "z.json"),
                      "--format", "zipkin-json")
        assert p.returncode == 0, p.stderr
        s = json.loads(p.stdout)
        assert s["spans_exported"] == 2 * len(want) and s["spans_written"] == len(want)
        assert {sp.span_id.hex() for sp in g.spans()} == want
        assert {sp["id"] for sp in z.spans()} == want and not z.errors
        lines = (tmp_path / "z.json").read_text().splitlines()
        for line in lines:  # the file: one Zipkin span array per line, as POSTed
            jsonschema.validate(json.loads(line), ZIPKIN_LIST_OF_SPANS)
        assert {sp["id"] for line in lines for sp in json.loads(line)} == want
    finally:
        g.close()
        z.close()


def test_replay_with_endpoint_down_finishes_promptly() -> None:
    p, took = replay("--otlp-endpoint", f"http://127.0.0.1:{free_port()}",
                     "--export-timeout", "0.5", "--export-queue", "3")
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["spans_exported"] == 0 and s["spans_dropped"]["queue_full"] >= 1
    assert sum(s["spans_dropped"].values()) == 8 and s["export_errors"] >= 1
    assert "not exported" in p.stderr and took < 10


def test_replay_bad_endpoint_is_a_usage_error() -> None:
    p, _ = replay("--otlp-endpoint", "ftp://x")
    assert p.returncode == 2 and "http://" in p.stderr
