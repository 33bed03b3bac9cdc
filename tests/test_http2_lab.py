"""End-to-end HTTP/2 and gRPC lab tests: real peers in network namespaces (tests/h2lab.py),
one capture per scenario (built once per module), checked three ways:

* ORACLE tests (``test_oracle_*``): tshark on the capture agrees with the ground truth the
  peers reported (nghttp -v, h2load's counters, curl's --write-out, the grpcio client's and
  server's own records), and with h2lab's independent frame reader (dpkt + hpack). These
  validate the scenarios themselves.
* WIRESPAN tests (``test_wirespan_*``): ``run_replay`` on the capture yields one
  ``protocol == "http/2"`` exchange per request, with method, :path, authority, status,
  grpc-status/message, trace context, headers and first/last-byte timestamps equal to what the
  capture holds.

tshark needs to be told the port is HTTP/2 (``-d tcp.port==8080,http2``; for the h2c upgrade
``-d tcp.port==8080,http``, and it follows the 101 itself; gRPC: ``-d tcp.port==50051,http2``).

Needs root, iproute2, tcpdump, tshark, nghttp2 tools (nghttp, nghttpd, h2load, nghttpx), curl
and grpcio; skipped otherwise. ``WIRESPAN_LAB_KEEP=DIR`` keeps a copy of each capture.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import h2lab
import pytest
from h2lab import DATA, HEADERS, H2Capture, Req, Scenario, Stream, bin_value
from lab import sh

pytestmark = pytest.mark.lab

FULL = ["nghttp", "h2load", "curl_h2", "curl_upgrade", "grpc"]  # captured from the SYN
ALL = [*FULL, "grpc_mid"]


def _scenario_fixture(builder: Callable[[Path], Scenario], name: str) -> Any:
    @pytest.fixture(scope="module", name=name)
    def fx(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
        missing = h2lab.missing()
        if missing:
            pytest.skip("HTTP/2 lab test needs: " + ", ".join(missing))
        return builder(tmp_path_factory.mktemp(name))
    return fx


nghttp = _scenario_fixture(h2lab.build_nghttp, "nghttp")
h2load = _scenario_fixture(h2lab.build_h2load, "h2load")
curl_h2 = _scenario_fixture(h2lab.build_curl_prior_knowledge, "curl_h2")
curl_upgrade = _scenario_fixture(h2lab.build_curl_upgrade, "curl_upgrade")
grpc = _scenario_fixture(h2lab.build_grpc, "grpc")
grpc_mid = _scenario_fixture(h2lab.build_grpc_mid_stream, "grpc_mid")


def scen(request: pytest.FixtureRequest, name: str) -> Scenario:
    return request.getfixturevalue(name)


# -- tshark ------------------------------------------------------------------------------------

def ns_of(epoch: str) -> int:
    return int(Decimal(epoch) * 10**9)


def _walk(node: Any, key: str) -> Any:
    """Every value of ``key`` anywhere below ``node`` (tshark JSON parsed into pair lists,
    because tshark repeats keys within one object)."""
    if isinstance(node, list):
        for item in node:
            if isinstance(item, tuple):
                k, v = item
                if k == key:
                    yield v
                yield from _walk(v, key)
            else:
                yield from _walk(item, key)


def _first(node: Any, key: str, default: Any = None) -> Any:
    return next(iter(_walk(node, key)), default)


@cache
def tshark_frames(pcap: str, port: int, decode_as: str) -> list[dict]:
    """One dict per HTTP/2 frame tshark dissects: packet time, side, type, stream id,
    END_STREAM, header fields (name, value) in block order."""
    r = sh("tshark", "-n", "-r", pcap, "-d", f"tcp.port=={port},{decode_as}", "-Y", "http2",
           "-T", "json", "-J", "frame tcp http2", check=False, timeout=120)
    assert r.returncode == 0, r.stderr
    out = []
    for pkt in json.loads(r.stdout, object_pairs_hook=list):
        ts = ns_of(_first(pkt, "frame.time_epoch"))
        side = "s" if int(_first(pkt, "tcp.srcport")) == port else "c"
        cport = int(_first(pkt, "tcp.dstport" if side == "s" else "tcp.srcport"))
        for st in _walk(pkt, "http2.stream"):
            typ = _first(st, "http2.type")
            if typ is None:  # the connection preface ("Magic")
                out.append({"ts": ts, "side": side, "cport": cport, "type": "magic"})
                continue
            hdrs = [(_first(h, "http2.header.name"), _first(h, "http2.header.value", ""))
                    for h in _walk(st, "http2.header")]
            out.append({"ts": ts, "side": side, "cport": cport, "type": int(typ),
                        "stream": int(_first(st, "http2.streamid")),
                        "end_stream": _first(st, "http2.flags.end_stream") == "1",
                        "headers": hdrs})
    return out


def tshark_of(sc: Scenario) -> list[dict]:
    return tshark_frames(str(sc.pcap), sc.port, sc.decode_as)


def tshark_streams(sc: Scenario) -> dict[tuple[int, int], dict[str, list]]:
    """(client port, stream id) -> {"c": [header lists], "s": [header lists]}."""
    out: dict[tuple[int, int], dict[str, list]] = {}
    for f in tshark_of(sc):
        if f["type"] == HEADERS:
            out.setdefault((f["cport"], f["stream"]), {"c": [], "s": []})[f["side"]].append(
                f["headers"])
    return out


def hget(blocks: list[list[tuple[str, str]]], name: str) -> str | None:
    for b in blocks:
        for k, v in b:
            if k == name:
                return v
    return None


@cache
def _oracle(pcap: str, port: int, mid: bool) -> H2Capture:
    return h2lab.h2_frames(Path(pcap), port, mid)


def oracle(sc: Scenario) -> H2Capture:
    return _oracle(str(sc.pcap), sc.port, sc.mid_stream)


def truth_key(r: Req) -> tuple:
    return (r.method, r.path, r.authority, r.status, r.grpc_status, r.grpc_message or None,
            r.trace_id)


def trace_of_headers(sent: dict[str, str]) -> str:
    """The trace id our ground truth expects from the trace headers a request carried."""
    from sniffer.tracecontext import extract
    ctx = extract([(k, bin_value(v) if k.endswith("-bin") else v) for k, v in sent.items()])
    return ctx.trace_id if ctx else ""


# -- ORACLE tests: the scenarios are what they claim -------------------------------------------

@pytest.mark.parametrize("name", FULL)
def test_oracle_tshark_agrees_with_ground_truth(request: pytest.FixtureRequest, name: str) -> None:
    """Every request the peers report is in tshark's dissection exactly once, with its
    method, :path, :authority, trace headers, :status and grpc-status / grpc-message."""
    sc = scen(request, name)
    streams = tshark_streams(sc)
    got = []
    for (cport, sid), b in sorted(streams.items()):
        if sid % 2 == 0 or (not b["c"] and not (sc.decode_as == "http" and sid == 1)):
            continue
        if sc.decode_as == "http" and sid == 1:  # the upgraded HTTP/1.1 request
            st = oracle(sc).streams[next(c for c in oracle(sc).streams if c[1] == 1)]
            assert st.h1_request is not None
            _, _, h1, method, target = st.h1_request
            req = {**dict(h1), ":method": method, ":path": target, ":authority": dict(h1)["host"]}
        else:
            req = dict(b["c"][0])
        gs = hget(b["s"], "grpc-status")
        sent = {k: v for k, v in req.items()
                if k in ("traceparent", "b3", "x-request-id", "grpc-trace-bin")}
        got.append((req[":method"], req[":path"], req[":authority"], int(hget(b["s"], ":status")),
                    None if gs is None else int(gs), hget(b["s"], "grpc-message") or None,
                    sent))
    want = [(*truth_key(r)[:6], {k: v for k, v in r.headers.items()
                                 if k in ("traceparent", "b3", "x-request-id")})
            for r in sc.requests]
    # grpc-trace-bin goes out as true binary here: compare it by bytes, separately.
    norm = [(*g[:6], {k: v for k, v in g[6].items() if k != "grpc-trace-bin"}) for g in got]
    key = lambda t: json.dumps(t, sort_keys=True, default=str)
    assert sorted(map(key, norm)) == sorted(map(key, want))
    assert len(got) == len(sc.requests)
    if sc.requests[0].grpc:
        # tshark shows no value for a true-binary field: its presence, and the bytes from
        # h2lab's reader (which agrees with tshark on every field name, test below)
        assert sum("grpc-trace-bin" in g[6] for g in got) == sum(
            "grpc-trace-bin" in r.headers for r in sc.requests)
        bins = Counter(bin_value(s.header("c", "grpc-trace-bin") or "")
                       for s in oracle(sc).requests() if s.header("c", "grpc-trace-bin"))
        assert bins == Counter(bin_value(r.headers["grpc-trace-bin"]) for r in sc.requests
                               if "grpc-trace-bin" in r.headers)
        assert sum(bins.values()) > 0
    # the trace ids the ground truth expects follow from the headers sent
    for r in sc.requests:
        assert trace_of_headers(r.headers) == r.trace_id, r


@pytest.mark.parametrize("name", ALL)
def test_oracle_frame_reader_agrees_with_tshark(request: pytest.FixtureRequest, name: str) -> None:
    """h2lab's frame reader (used for the timestamp checks below) finds the frames tshark
    finds, in the packets tshark puts them in (a frame is dissected in the packet holding its
    last byte), with the same header fields wherever tshark could decode them."""
    sc = scen(request, name)
    cap = oracle(sc)
    mine = Counter((f.last_ts, f.side, f.conn[1], f.type, f.stream, bool(f.flags & 1)
                    if f.type in (DATA, HEADERS) else False) for f in cap.frames)
    theirs = Counter((f["ts"], f["side"], f["cport"], f["type"], f["stream"],
                      f["end_stream"] if f["type"] in (DATA, HEADERS) else False)
                     for f in tshark_of(sc) if f["type"] != "magic")
    assert mine == theirs
    hdr_mine = Counter((f.last_ts, f.conn[1], f.stream, tuple(
        (k or "<unknown>", v) for k, v in f.fields or [])) for f in cap.frames if f.type == HEADERS)
    hdr_theirs = Counter((f["ts"], f["cport"], f["stream"], tuple(f["headers"]))
                         for f in tshark_of(sc) if f["type"] == HEADERS)
    if sc.mid_stream or sc.requests[0].grpc:
        # tshark prints unresolvable fields' values and binary values its own way: names only
        hdr_mine = Counter((a, b, c, tuple(k for k, _ in h)) for (a, b, c, h), n in
                           hdr_mine.items() for _ in range(n))
        hdr_theirs = Counter((a, b, c, tuple(k for k, _ in h)) for (a, b, c, h), n in
                             hdr_theirs.items() for _ in range(n))
    assert hdr_mine == hdr_theirs
    magic = {f["cport"] for f in tshark_of(sc) if f["type"] == "magic"}
    assert magic == {c[1] for c, p in cap.preface.items() if p}


@pytest.mark.parametrize("name", ["nghttp", "h2load"])
def test_oracle_concurrent_streams(request: pytest.FixtureRequest, name: str) -> None:
    """The multiplexing scenarios really multiplex: many streams open at once per
    connection, responses interleaved with requests."""
    sc = scen(request, name)
    cap = oracle(sc)
    for conn in {s.conn for s in cap.requests()}:
        ss = [s for s in cap.requests() if s.conn == conn]
        events = sorted([(s.req_first_ts, 1) for s in ss] + [(s.resp_last_ts, -1) for s in ss])
        peak = cur = 0
        for _, d in events:
            cur += d
            peak = max(peak, cur)
        assert peak >= 4, (conn, peak)
    assert len({s.conn for s in cap.requests()}) == sc.connections


def test_oracle_nghttp_stream_ids(nghttp: Scenario) -> None:
    """The stream ids nghttp -v says it used carry the requests it says it sent."""
    streams = tshark_streams(nghttp)
    for r in nghttp.requests:
        [(cport, sid)] = [k for k in streams if k[1] == r.stream_id]
        assert dict(streams[(cport, sid)]["c"][0])[":path"] == r.path
        assert int(hget(streams[(cport, sid)]["s"], ":status")) == r.status
    assert {r.path: r.status for r in nghttp.requests} == {
        "/a.txt": 200, "/big.bin": 200, "/sub/b.json": 200, "/missing.txt": 404}


def test_oracle_h2load_counters(h2load: Scenario) -> None:
    """h2load's own counters: 300 done over 2 connections, 200 2xx and 100 4xx — and tshark
    counts the same responses by status class and per connection."""
    rep = h2load.report
    assert (rep["total"], rep["done"], rep["2xx"], rep["4xx"]) == (300, 300, 200, 100), rep
    codes = Counter()
    per_conn = Counter()
    for (cport, sid), b in tshark_streams(h2load).items():
        if b["s"]:
            codes[int(hget(b["s"], ":status")) // 100] += 1
            per_conn[cport] += 1
    assert codes == {2: rep["2xx"], 4: rep["4xx"]}
    assert sorted(per_conn.values()) == [150, 150]


def test_oracle_curl_upgrade_101(curl_upgrade: Scenario) -> None:
    """The upgrade capture really holds the HTTP/1.1 request with Upgrade: h2c, the 101, then
    the client preface and HTTP/2 frames; stream 1's response is HTTP/2."""
    r = sh("tshark", "-n", "-r", str(curl_upgrade.pcap), *curl_upgrade.tshark_args(), "-Y",
           "http", "-T", "fields", "-e", "http.request.method", "-e", "http.response.code",
           "-e", "http.upgrade", check=False)
    assert r.returncode == 0, r.stderr
    rows = [ln.split("\t") for ln in r.stdout.splitlines()]
    assert rows == [["GET", "", "h2c"], ["", "101", "h2c"]], rows
    cap = oracle(curl_upgrade)
    [(conn, (t101, line))] = cap.upgrade.items()
    assert line == "HTTP/1.1 101 Switching Protocols"
    assert cap.preface[conn]
    s1 = cap.streams[(conn, 1)]
    assert s1.h1_request is not None and s1.h1_request[3:] == ("GET", "/a.txt")
    assert s1.pseudo("s", ":status") == "200" and t101 <= s1.resp_first_ts
    assert dict(s1.h1_request[2])["upgrade"] == "h2c"
    kinds = Counter((f["side"], f["type"]) for f in tshark_of(curl_upgrade))
    assert kinds[("c", "magic")] == 1 and kinds[("c", HEADERS)] == 2 and kinds[("s", HEADERS)] == 3


def test_oracle_grpc(grpc: Scenario) -> None:
    """gRPC on the wire: content-type application/grpc and a grpc-timeout on every request,
    grpc-status in every response, Count's messages as the client counted them."""
    streams = tshark_streams(grpc)
    assert len(streams) == len(grpc.requests) == grpc.report["server_calls"]
    for b in streams.values():
        req = dict(b["c"][0])
        assert req["content-type"] == "application/grpc" and req["te"] == "trailers"
        assert req["grpc-timeout"][:-1].isdigit() and req["grpc-timeout"][-1] in "HMSmun"
        assert hget(b["s"], "grpc-status") is not None
    assert Counter(r.grpc_status for r in grpc.requests) == {0: 22, 5: 3}
    assert {r.grpc_message for r in grpc.requests if r.grpc_status} == {
        "no greeting named bob", "no greeting named ghost0", "no greeting named ghost1"}
    counts = sorted(r.messages for r in grpc.requests if r.path.endswith("/Count"))
    assert counts == [3, 4, 5, 5, 6]
    # gRPC length-prefixed messages, as tshark's grpc dissector counts them, per stream
    r = sh("tshark", "-n", "-r", str(grpc.pcap), *grpc.tshark_args(), "-Y",
           f"grpc && tcp.srcport == {grpc.port}", "-T", "fields", "-e", "http2.streamid",
           "-e", "grpc.message_length", check=False)
    assert r.returncode == 0, r.stderr
    per_stream = Counter()
    for ln in r.stdout.splitlines():
        sids, lens = ln.split("\t")
        # one packet may carry several frames/messages; count the messages on DATA streams
        per_stream[sids] += len(lens.split(","))
    assert sum(per_stream.values()) == sum(r.messages or 0 for r in grpc.requests)


def test_oracle_grpc_mid_stream(grpc_mid: Scenario) -> None:
    """The mid-stream capture starts on an established connection (no SYN, no preface, no
    SETTINGS from before), holds exactly the calls made after tcpdump started, and some of
    their header fields are references to entries the capture never saw — tshark shows them
    as <unknown>, and h2lab's scanner agrees with tshark on which."""
    sc = grpc_mid
    cap = oracle(sc)
    frames = tshark_of(sc)
    assert not [f for f in frames if f["type"] == "magic"]
    syn = sh("tcpdump", "-nn", "-r", str(sc.pcap), "tcp[tcpflags] & tcp-syn != 0", check=False)
    assert syn.stdout.strip() == ""
    assert cap.preface and not any(cap.preface.values())
    reqs = sorted(cap.requests(), key=lambda s: s.id)
    assert len(reqs) == len(sc.requests) == 6 and len(sc.before) == 3
    assert reqs[0].id == 2 * len(sc.before) + 1  # the stream ids continue the earlier calls
    for s, r in zip(reqs, sc.requests):  # sequential calls: stream order is call order
        path = s.pseudo("c", ":path")
        assert path in (None, r.path), (s.id, path, r)
        assert s.pseudo("c", ":method") == "POST"  # static table entry
        tp = s.header("c", "traceparent")
        if tp is not None and "traceparent" in r.headers:
            assert tp == r.headers["traceparent"]
    paths = [s.pseudo("c", ":path") for s in reqs]
    # Count and Fail are first called after the capture started: their :path is a literal
    # (and Count's second call references the entry the first one inserted, in the capture).
    assert paths[1] == paths[4] == "/wirespan.test.Echo/Count"
    assert paths[3] == "/wirespan.test.Echo/Fail"
    # Say's :path was inserted before: unresolvable, so some calls really are partial.
    assert paths[0] is None and all(s.unresolved() for s in reqs)


# -- WIRESPAN tests: what the lead's HTTP/2 parser must produce --------------------------------

@cache
def _replay(pcap: str) -> tuple[dict, list]:
    from sniffer.pipeline import run_replay
    exs: list = []
    summary = run_replay([pcap], on_exchange=exs.append)
    return summary.to_dict(), exs


def replay(sc: Scenario) -> tuple[dict, list]:
    d, exs = _replay(str(sc.pcap))
    return d, [e for e in exs if e.protocol == "http/2"]


def _s(v: Any) -> Any:
    return v.decode("latin-1") if isinstance(v, (bytes, bytearray, memoryview)) else v


def norm_headers(h: list) -> list[tuple[str, Any]]:
    """Header list with text values as str; -bin values as their bytes."""
    out = []
    for k, v in h:
        k = _s(k)
        out.append((k, bin_value(v) if k.endswith("-bin") else _s(v)))
    return out


def ex_key(e: Any) -> tuple:
    from sniffer.tracecontext import extract
    ctx = extract([(_s(k), v) for k, v in e.request.headers])
    return (e.method, e.target, e.authority, e.status, e.grpc_status, e.grpc_message or None,
            ctx.trace_id if ctx else "")


def stream_of(cap: H2Capture, e: Any) -> Stream:
    port = e.client[1]
    matches = [s for (c, sid), s in cap.streams.items() if c[1] == port and sid == e.stream_id]
    assert len(matches) == 1, (port, e.stream_id)
    return matches[0]


BAD_FLAGS = {"partial_headers", "gap", "no_response", "no_request", "reset", "malformed",
             "truncated", "capture_end"}


@pytest.mark.parametrize("name", FULL)
def test_wirespan_exchanges_match_ground_truth(request: pytest.FixtureRequest,
                                               name: str) -> None:
    """Every request the peers report appears exactly once as an HTTP/2 exchange, with the
    right method, :path, :authority, :status, grpc-status/message and trace id; counts in the
    summary agree."""
    sc = scen(request, name)
    d, exs = replay(sc)
    assert d["exchanges"].get("http/2", 0) == len(sc.requests), d["exchanges"]
    assert Counter(map(ex_key, exs)) == Counter(map(truth_key, sc.requests))
    assert len(exs) == len(sc.requests)
    grpc_calls = sum(r.grpc for r in sc.requests)
    assert d["grpc_calls"] == grpc_calls
    assert all(e.is_grpc == (grpc_calls > 0) for e in exs)
    assert len({(e.client, e.stream_id) for e in exs}) == len(exs)
    assert len({e.conn_id for e in exs}) == sc.connections
    for e in exs:
        assert not (e.flags & BAD_FLAGS), (e.stream_id, e.flags)


@pytest.mark.parametrize("name", FULL)
def test_wirespan_exchanges_match_capture(request: pytest.FixtureRequest, name: str) -> None:
    """Each exchange is its stream in the capture: pseudo-headers, regular request and
    response headers (in order, no pseudo-headers), trailers, and the four timestamps: the
    first byte of the first HEADERS frame and the last byte of the END_STREAM frame, each
    the time of a real packet."""
    sc = scen(request, name)
    cap = oracle(sc)
    _, exs = replay(sc)
    assert exs, "no http/2 exchanges"
    packet_ts = h2lab.packet_times(sc.pcap)
    for e in exs:
        s = stream_of(cap, e)
        where = (e.client, e.stream_id)
        q, r = e.request, e.response
        assert r is not None, where
        if s.h1_request:  # h2c upgrade: stream 1's request is the HTTP/1.1 one
            ts0, ts1, h1, method, target = s.h1_request
            assert (e.method, e.target) == (method, target), where
            sent = dict(norm_headers(q.headers))
            for k in ("traceparent", "host"):
                assert sent.get(k) == dict(h1)[k], (where, k)
            assert (q.first_ts, q.last_ts) == (ts0, ts1), where
            assert r.first_ts in (s.resp_first_ts, cap.upgrade[s.conn][0]), where
        else:
            assert e.method == s.pseudo("c", ":method"), where
            assert e.target == s.pseudo("c", ":path"), where
            assert e.authority == s.pseudo("c", ":authority"), where
            assert norm_headers(q.headers) == norm_headers(s.regular("c")), where
            assert (q.first_ts, q.last_ts) == (s.req_first_ts, s.req_last_ts), where
            assert r.first_ts == s.resp_first_ts, where
        assert e.status == int(s.pseudo("s", ":status")), where
        assert norm_headers(r.headers) == norm_headers(s.regular("s", 0)), where
        if len(s.blocks("s")) > 1:  # a trailer block (gRPC: grpc-status, grpc-message)
            assert norm_headers(r.trailers) == norm_headers(s.regular("s", 1)), where
        gs = s.header("s", "grpc-status")
        assert e.grpc_status == (None if gs is None else int(gs)), where
        assert r.last_ts == s.resp_last_ts, where
        assert {q.first_ts, q.last_ts, r.first_ts, r.last_ts} <= packet_ts, where
        assert q.first_ts <= q.last_ts <= r.last_ts, where
        assert q.first_ts <= r.first_ts <= r.last_ts, where
        assert q.complete and r.complete, where


def test_wirespan_trace_context(grpc: Scenario, nghttp: Scenario, curl_h2: Scenario) -> None:
    """Trace context from HTTP/2 request headers: traceparent (w3c), grpc-trace-bin (true
    binary on the wire here), b3 single header, x-request-id — each with its format."""
    from sniffer.tracecontext import extract
    seen = Counter()
    for sc in (grpc, nghttp, curl_h2):
        _, exs = replay(sc)
        assert exs, sc.name
        for e in exs:
            ctx = extract([(_s(k), v) for k, v in e.request.headers])
            bin_ = [v for k, v in e.request.headers if _s(k) == "grpc-trace-bin"]
            names = {_s(k) for k, _ in e.request.headers}
            if not names & {"traceparent", "grpc-trace-bin", "b3", "x-b3-traceid",
                            "x-request-id"}:
                assert ctx is None, (sc.name, e.target)  # the calls sent without one
                seen["none"] += 1
                continue
            assert ctx is not None, (
                sc.name, e.target, e.request.headers,
                "grpcio sends grpc-trace-bin as 'true binary' (SETTINGS 0xfe03): a NUL byte, "
                "then the raw bytes (which start with the format's own version byte 0); "
                f"extract() needs it without that NUL (or base64): {bin_!r}" if bin_ else "")
            seen[ctx.format] += 1
    assert {"w3c", "grpc-trace-bin", "b3-single", "request-id"} <= set(seen), seen


def test_wirespan_grpc_mid_stream(grpc_mid: Scenario) -> None:
    """A capture that starts on a used connection: every call made after tcpdump started
    yields one exchange on its stream; method and :path are right wherever the capture holds
    them as literals, static-table entries or entries inserted after it started; trace ids
    and grpc-status likewise; an exchange whose header blocks reference entries the capture
    never saw carries "partial_headers"."""
    sc = grpc_mid
    cap = oracle(sc)
    d, exs = replay(sc)
    streams = sorted(cap.requests(), key=lambda s: s.id)
    assert d["exchanges"].get("http/2", 0) == len(sc.requests) == len(streams), d["exchanges"]
    assert sorted(e.stream_id for e in exs) == [s.id for s in streams]
    # (no grpc_calls count here: content-type was indexed before the capture started, so
    # whether a call is gRPC may be unknowable; where it is visible it must be used)
    from sniffer.tracecontext import extract
    by_id = {e.stream_id: e for e in exs}
    for s, want in zip(streams, sc.requests):
        e = by_id[s.id]
        where = s.id
        assert e.method == "POST", where
        path = s.pseudo("c", ":path")
        if path is not None:
            assert e.target == path == want.path, where
        tp = s.header("c", "traceparent")
        if tp is not None:
            ctx = extract([(_s(k), v) for k, v in e.request.headers])
            assert ctx is not None and ctx.trace_id == want.trace_id, where
        gs = s.header("s", "grpc-status")
        if gs is not None:
            assert e.grpc_status == int(gs) == want.grpc_status, where
        st = s.pseudo("s", ":status")
        if st is not None:
            assert e.status == int(st), where
        ct = s.header("c", "content-type")
        if ct is not None and ct.startswith("application/grpc"):
            assert e.is_grpc, where
        if s.unresolved():
            assert "partial_headers" in e.flags, (where, e.flags)
        q, r = e.request, e.response
        assert r is not None, where
        assert (q.first_ts, q.last_ts) == (s.req_first_ts, s.req_last_ts), where
        assert (r.first_ts, r.last_ts) == (s.resp_first_ts, s.resp_last_ts), where
        assert q.first_ts <= q.last_ts <= r.last_ts and q.first_ts <= r.first_ts, where
