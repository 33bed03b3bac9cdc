"""Spans out: OTLP/JSON lines that an independent parser accepts, with ids and times taken
from the headers and packets, deterministic, and without sensitive data."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from conftest import ROOT, Conv, write_pcap
from exporter.spans import url_template
from sniffer.exchange import Exchange
from sniffer.pipeline import run_replay

SAMPLE = ROOT / "pcaps" / "sample-http1.pcap"


def spans_of(*args: str) -> tuple[list[dict], list[str]]:
    r = subprocess.run([sys.executable, "-m", "sniffer", "replay", "-o", "-", *args],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    spans = [sp for line in lines for rs in json.loads(line)["resourceSpans"]
             for ss in rs["scopeSpans"] for sp in ss["spans"]]
    return spans, lines


def attrs(span: dict) -> dict:
    out = {}
    for kv in span["attributes"]:
        (kind, v), = kv["value"].items()
        out[kv["key"]] = int(v) if kind == "intValue" else v
    return out


def test_every_line_parses_as_export_trace_service_request() -> None:
    spans, lines = spans_of(str(SAMPLE))
    assert lines and spans
    for line in lines:
        req = json_format.Parse(line, ExportTraceServiceRequest())  # the proto's own parser
        assert req.resource_spans[0].scope_spans[0].spans
    for sp in spans:
        assert len(sp["traceId"]) == 32 and int(sp["traceId"], 16)
        assert len(sp["spanId"]) == 16
        assert isinstance(sp["kind"], int) and sp["kind"] == 3  # CLIENT, as an integer
        assert sp["startTimeUnixNano"].isdigit()  # 64-bit ints as decimal strings


def test_ids_and_times_match_headers_and_packets() -> None:
    spans, _ = spans_of(str(SAMPLE))
    exs: list[Exchange] = []
    run_replay([str(SAMPLE)], on_exchange=exs.append)
    by_start = {e.request.first_ts: e for e in exs}
    w3c = [s for s in spans if attrs(s)["wirespan.trace.format"] == "w3c"]
    assert {(s["traceId"], s["parentSpanId"]) for s in w3c} >= {
        ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")}
    b3 = [s for s in spans if attrs(s)["wirespan.trace.format"] in ("b3", "b3-single")]
    assert len(b3) == 3
    for s in spans:
        e = by_start[int(s["startTimeUnixNano"])]
        if attrs(s)["wirespan.trace.format"] != "request-id":  # ids are in the headers
            sent = " ".join(v.lower() for _k, v in e.request.headers)
            assert s["traceId"].lstrip("0") in sent and s["parentSpanId"] in sent
        assert int(s["endTimeUnixNano"]) == e.response.last_ts
        a = attrs(s)
        assert a["http.request.method"] == e.method and a["url.path"] == e.path
        assert a["http.response.status_code"] == e.status
        assert s["name"] == f"{e.method} {a['url.template']}"
    assert len(spans) == 8


def test_output_is_deterministic() -> None:
    _, a = spans_of(str(SAMPLE), "--spans", "all")
    _, b = spans_of(str(SAMPLE), "--spans", "all")
    assert a == b


def test_sensitive_headers_and_query_never_exported(tmp: Path) -> None:
    secret = "s3cr3t-token-value"
    req = (f"GET /users/12345/profile?token={secret} HTTP/1.1\r\nHost: api:8080\r\n"
           f"Authorization: Bearer {secret}\r\nCookie: sid={secret}\r\n"
           "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n")
    resp = f"HTTP/1.1 500 Oops\r\nSet-Cookie: sid={secret}\r\nContent-Length: 6\r\n\r\n{secret[:6]}"
    p = write_pcap(tmp / "s.pcap", Conv().handshake().c(req.encode()).s(resp.encode())
                   .close().l2())
    spans, lines = spans_of(str(p))
    assert secret not in "".join(lines)
    [s] = spans
    a = attrs(s)
    assert a["url.template"] == "/users/{id}/profile" and s["name"] == "GET /users/{id}/profile"
    assert a["server.address"] == "api" and a["server.port"] == 8080
    assert s["status"]["code"] == 2  # ERROR for a 5xx
    _, kept = spans_of(str(p), "--keep-query")
    assert "url.query" in kept[0]


def test_spans_all_gives_synthetic_traces(tmp: Path) -> None:
    req = b"GET /plain HTTP/1.1\r\nHost: h\r\n\r\n"
    p = write_pcap(tmp / "p.pcap", Conv().handshake().c(req).s(
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").close().l2())
    none, _ = spans_of(str(p))
    assert none == []  # --spans traced: no trace context, no span
    [s], _ = spans_of(str(p), "--spans", "all")
    assert attrs(s)["wirespan.trace.synthetic"] is True and "parentSpanId" not in s


def test_summary_counts_spans_written(tmp: Path) -> None:
    out = tmp / "spans.jsonl"
    r = subprocess.run([sys.executable, "-m", "sniffer", "replay", "--json", "-o", str(out),
                        str(SAMPLE)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0
    assert json.loads(r.stdout)["spans_written"] == 8
    assert len(out.read_text().splitlines()) == 1


def test_url_template() -> None:
    assert url_template("/") == "/"
    assert url_template("/api/v1/users/42") == "/api/v1/users/{id}"
    assert url_template("/o/123e4567-e89b-12d3-a456-426614174000/x") == "/o/{id}/x"
    assert url_template("/blob/deadbeefdeadbeef00") == "/blob/{id}"
    assert url_template("/static/app.js") == "/static/app.js"


def test_hex_ids_round_trip_base64_view() -> None:
    """json_format.Parse reads traceId as base64, so check the hex we wrote ourselves too."""
    spans, _ = spans_of(str(SAMPLE))
    for sp in spans:
        assert bytes.fromhex(sp["traceId"]).hex() == sp["traceId"]
        assert base64.b64decode(sp["traceId"] + "=" * (-len(sp["traceId"]) % 4))
