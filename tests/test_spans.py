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


# ---- the fast OTLP/JSON encoder gives exactly the json_format reference's text ----

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from exporter.otlp_json import encode, fast_json_line, to_json_line  # noqa: E402
from exporter.spans import SpanRecord  # noqa: E402

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)  # valid UTF-8
_int64 = st.one_of(st.integers(-(1 << 63), (1 << 63) - 1),
                   st.sampled_from([0, -1, 1, -(1 << 63), (1 << 63) - 1, 1 << 53, -(1 << 53) - 1]))
_float = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([0.0, -0.0, 1.0, 1e100, 5e-324, float("nan"), float("inf"),
                                    float("-inf"), 0.1]))
_scalar = st.one_of(_text, st.booleans(), _int64, _float)
_value = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=4)
                      | st.tuples(inner, inner), max_leaves=8)
_attrs = st.dictionaries(st.one_of(_text, st.sampled_from(["", "http.request.method",
                                                           "server.port", "é"])),
                         _value, max_size=8)
_u64 = st.one_of(st.integers(0, (1 << 64) - 1), st.sampled_from([0, 1, (1 << 64) - 1]))
_hexid = lambda n: st.one_of(st.binary(min_size=n, max_size=n).map(bytes.hex),  # noqa: E731
                             st.binary(min_size=n, max_size=n).map(lambda b: b.hex().upper()),
                             st.just(""))
_spans = st.builds(
    SpanRecord, trace_id=_hexid(16), span_id=_hexid(8), parent_span_id=_hexid(8), name=_text,
    kind=st.integers(0, 5), start_ns=_u64, end_ns=_u64, status_code=st.integers(0, 2),
    status_message=_text, attributes=_attrs, trace_state=_text)


def _b64_ids(line: str) -> str:
    """OTLP/JSON hex ids -> the base64 that proto3 JSON (json_format.Parse) expects."""
    d = json.loads(line)
    for rs in d["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for sp in ss.get("spans", []):
                for k in ("traceId", "spanId", "parentSpanId"):
                    if k in sp:
                        sp[k] = base64.b64encode(bytes.fromhex(sp[k])).decode()
    return json.dumps(d)


def _nan_safe(o: object) -> object:  # NaN != NaN: compare parsed objects on their repr
    return json.dumps(o, sort_keys=False)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spans=st.lists(_spans, max_size=4), resource=_attrs,
       version=st.one_of(st.just(""), _text))
def test_fast_otlp_json_equals_json_format(spans: list[SpanRecord], resource: dict,
                                           version: str) -> None:
    ref = to_json_line(encode(spans, resource, version))
    fast = fast_json_line(spans, resource, version)
    assert fast == ref  # the exact line: keys, order, escapes, number formats
    assert _nan_safe(json.loads(fast)) == _nan_safe(json.loads(ref))
    req = json_format.Parse(_b64_ids(fast), ExportTraceServiceRequest())
    assert to_json_line(req) == ref  # parses to the same message (NaN != NaN, so by its text)
    assert len(req.resource_spans[0].scope_spans[0].spans) == len(spans)


def test_fast_otlp_json_rejects_what_the_proto_rejects() -> None:
    import pytest

    base = dict(trace_id="ab" * 16, span_id="cd" * 8, parent_span_id="", name="n", kind=3,
                start_ns=1, end_ns=2, status_code=0)
    for bad in (dict(attributes={"x": 1 << 63}), dict(attributes={"x": [-(1 << 63) - 1]}),
                dict(start_ns=-1), dict(end_ns=1 << 64), dict(trace_id="zz")):
        s = SpanRecord(**{**base, **bad})  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            encode([s], {})
        with pytest.raises(ValueError):
            fast_json_line([s], {})


def test_otlp_json_writer_uses_the_fast_path_on_real_spans() -> None:
    _, lines = spans_of(str(SAMPLE), "--spans", "all")
    for line in lines:
        req = json_format.Parse(_b64_ids(line), ExportTraceServiceRequest())
        assert to_json_line(req) == line  # reference encoding of what we parsed = our line
