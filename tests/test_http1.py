"""Passive HTTP/1.x: framing as an observer of both directions, fed whole, byte by byte, and
at every split point (h11's tr() idea), plus the bundled real capture."""

from __future__ import annotations

import pytest

from conftest import ROOT
from sniffer.exchange import Exchange
from sniffer.pipeline import run_replay
from sniffer.proto.http1 import Http1Connection, body_framing
from sniffer.stats import Stats

C, S = "c", "s"


def run(script: list[tuple[str, bytes]], split: int | None = None, end: str = "fin",
        gaps: dict[int, int] | None = None) -> tuple[list[Exchange], Stats]:
    """Feed ``script`` (direction, bytes) items; item i is at timestamp (i+1)*1000. ``split``
    cuts every item into pieces of that size (same timestamp)."""
    out: list[Exchange] = []
    stats = Stats()
    h = Http1Connection(None, out.append, stats, "pt", (b"\x01" * 4, 1000),
                        (b"\x02" * 4, 80), 1)
    for i, (who, data) in enumerate(script):
        side = h.client_side if who == C else h.server_side
        ts = (i + 1) * 1000
        if gaps and i in gaps:
            side.gap(gaps[i], ts)
            continue
        step = split or len(data) or 1
        for k in range(0, len(data), step):
            side.data(data[k : k + step], ts)
    t = (len(script) + 1) * 1000
    h.client_side.end(end, t)
    h.server_side.end(end, t)
    return out, stats


def every_split(script: list[tuple[str, bytes]], **kw: object) -> list[Exchange]:
    whole, _ = run(script, **kw)  # type: ignore[arg-type]
    for split in (1, 2, 3, 7):
        other, _ = run(script, split=split, **kw)  # type: ignore[arg-type]
        assert summary(other) == summary(whole), split
    return whole


def summary(exs: list[Exchange]) -> list[tuple]:
    return [(e.method, e.target, e.status, e.request.first_ts, e.request.last_ts,
             e.response.first_ts if e.response else None,
             e.response.last_ts if e.response else None,
             e.response.body_bytes if e.response else None, sorted(e.flags)) for e in exs]


GET = b"GET /a?x=1 HTTP/1.1\r\nHost: example\r\nTraceparent: 00-x\r\n\r\n"
OK5 = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def test_keep_alive_exchanges_with_timestamps() -> None:
    exs = every_split([(C, GET), (S, OK5), (C, GET.replace(b"/a", b"/b")), (S, OK5)])
    assert summary(exs) == [
        ("GET", "/a?x=1", 200, 1000, 1000, 2000, 2000, 5, []),
        ("GET", "/b?x=1", 200, 3000, 3000, 4000, 4000, 5, []),
    ]
    e = exs[0]
    assert e.authority == "example" and e.path == "/a" and e.protocol == "http/1.1"
    assert e.request.header("traceparent") == "00-x"


def test_body_split_over_packets_last_byte_time() -> None:
    exs = every_split([(C, GET), (S, OK5[:-3]), (S, OK5[-3:])])
    assert summary(exs)[0][5:8] == (2000, 3000, 5)


def test_pipelining_in_order() -> None:
    g2 = GET.replace(b"/a", b"/second")
    exs = every_split([(C, GET + g2), (S, OK5 + OK5.replace(b"200 OK", b"404 No"))])
    assert [(e.target, e.status) for e in exs] == [("/a?x=1", 200), ("/second?x=1", 404)]


def test_chunked_with_extensions_and_trailers() -> None:
    resp = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\ngrpc-status: 0\r\n\r\n")
    exs = every_split([(C, GET), (S, resp), (C, GET), (S, OK5)])
    assert [e.response.body_bytes for e in exs] == [9, 5]
    assert exs[0].response.trailers == [("grpc-status", "0")]


@pytest.mark.parametrize("method,status,head", [
    ("HEAD", 200, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"),
    ("GET", 204, b"HTTP/1.1 204 No Content\r\nContent-Length: 100\r\n\r\n"),
    ("GET", 304, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n"),
])
def test_responses_without_body(method: str, status: int, head: bytes) -> None:
    req = GET.replace(b"GET", method.encode())
    exs = every_split([(C, req), (S, head), (C, GET), (S, OK5)])
    assert [(e.method, e.status) for e in exs] == [(method, status), ("GET", 200)]
    assert exs[0].response.body_bytes == 0


def test_100_continue_then_final() -> None:
    post = b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    exs = every_split([(C, post), (S, b"HTTP/1.1 100 Continue\r\n\r\n"), (C, b"data"),
                       (S, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")])
    [e] = exs
    assert e.status == 201 and e.request.body_bytes == 4
    assert "interim_100" in e.flags
    assert (e.request.last_ts, e.response.first_ts) == (3000, 4000)


def test_close_delimited_body_ends_at_fin() -> None:
    exs = every_split([(C, GET), (S, b"HTTP/1.0 200 OK\r\n\r\nabc"), (S, b"defg")])
    [e] = exs
    assert e.response.body_bytes == 7 and e.response.complete and e.flags == set()


def test_close_delimited_cut_by_reset_is_flagged() -> None:
    exs, _ = run([(C, GET), (S, b"HTTP/1.0 200 OK\r\n\r\nabc")], end="rst")
    assert exs[0].flags == {"reset"}


def test_request_without_response_at_capture_end() -> None:
    exs, _ = run([(C, GET)], end="capture_end")
    assert exs[0].flags == {"no_response", "capture_end"} and exs[0].response is None


def test_upgrade_websocket_goes_opaque() -> None:
    up = b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    exs, stats = run([(C, up), (S, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket"
                                  b"\r\n\r\n\x81\x05hello"), (C, b"\x81\x85masked")])
    assert [(e.status, e.response.complete) for e in exs] == [(101, True)]
    assert stats.get("http1", "opaque_upgrade") == 1


def test_connect_tunnel_goes_opaque() -> None:
    conn = b"CONNECT example:443 HTTP/1.1\r\nHost: example:443\r\n\r\n"
    exs, stats = run([(C, conn), (S, b"HTTP/1.1 200 Connection established\r\n\r\n"),
                      (C, b"\x16\x03\x01\x00\x05hello")])
    assert [(e.method, e.authority, e.status) for e in exs] == [("CONNECT", "example:443", 200)]
    assert stats.get("http1", "opaque_connect") == 1


def test_gap_inside_content_length_body_keeps_sync() -> None:
    body = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
    exs, stats = run([(C, GET), (S, body + b"abc"), (S, b""), (S, b"ij"), (C, GET), (S, OK5)],
                     gaps={2: 5})
    assert [(e.status, sorted(e.flags)) for e in exs] == [(200, ["gap"]), (200, [])]
    assert exs[0].response.body_bytes == 10
    assert stats.by_stage("http1") == {}


def test_gap_in_request_head_resyncs_at_next_request() -> None:
    exs, stats = run([(C, GET[:10]), (C, b""), (C, b"garbage" + GET), (S, OK5)], gaps={1: 20})
    assert [e.target for e in exs if e.method] == ["/a?x=1"]
    assert stats.get("http1", "resync") == 1


def test_hostile_head_is_bounded() -> None:
    exs, stats = run([(C, b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 70000 + b"\r\n\r\n")])
    assert stats.get("http1", "head_too_large") == 1


def test_garbage_is_counted_never_raises() -> None:
    exs, stats = run([(C, b"\x00\xff" * 100), (S, b"HTTP/9 xyz\r\n\r\n")])
    assert stats.get("http1", "internal_error") == 0


@pytest.mark.parametrize("req,status,headers,want", [
    (True, 0, [], ("none", 0)),
    (True, 0, [("content-length", "12")], ("length", 12)),
    (True, 0, [("content-length", "12, 12")], ("length", 12)),
    (True, 0, [("content-length", "12, 13")], ("bad", 0)),
    (True, 0, [("transfer-encoding", "gzip, chunked"), ("content-length", "3")], ("chunked", 0)),
    (True, 0, [("transfer-encoding", "gzip")], ("bad", 0)),
    (False, 200, [], ("close", 0)),
    (False, 200, [("transfer-encoding", "gzip")], ("close", 0)),
    (False, 101, [], ("tunnel", 0)),
    (False, 204, [("content-length", "5")], ("none", 0)),
])
def test_body_framing_rfc9112(req: bool, status: int, headers: list, want: tuple) -> None:
    assert body_framing(req, "GET", status, headers) == want


def test_bundled_capture_exchanges() -> None:
    """pcaps/sample-http1.pcap: curl -> nginx, made by scripts/make_sample_pcap.sh."""
    exs: list[Exchange] = []
    s = run_replay([str(ROOT / "pcaps" / "sample-http1.pcap")], on_exchange=exs.append)
    got = sorted((e.method, e.path, e.status) for e in exs)
    assert got == sorted([
        ("GET", "/api/user.json", 200), ("GET", "/static/big.txt", 200),
        ("GET", "/missing", 404), ("POST", "/api/orders", 201), ("GET", "/healthz", 204),
        ("GET", "/api/user.json", 200), ("GET", "/static/big.txt", 200),
        ("HEAD", "/static/big.txt", 200),
    ])
    assert all(not e.flags for e in exs)
    big = [e for e in exs if e.path == "/static/big.txt" and e.method == "GET"]
    assert all(e.response.body_bytes == 19860 for e in big)
    assert all(e.request.first_ts <= e.request.last_ts < e.response.first_ts
               <= e.response.last_ts for e in exs)
    assert s.to_dict()["exchanges"] == {"http/1.1": 8}


def test_many_bad_messages_in_one_chunk_do_not_recurse() -> None:
    junk = b"GET /x HTTP/1.1\r\n\x00bad\r\n\r\n" * 5000
    exs, stats = run([(C, junk)])
    assert stats.get("http1", "internal_error") == 0


def test_plain_http_through_a_connect_tunnel_is_parsed() -> None:
    conn = b"CONNECT origin:80 HTTP/1.1\r\nHost: origin:80\r\n\r\n"
    exs, stats = run([(C, conn), (S, b"HTTP/1.1 200 Connection established\r\n\r\n"),
                      (C, GET), (S, OK5)])
    assert [(e.method, e.status) for e in exs] == [("CONNECT", 200), ("GET", 200)]
    assert stats.get("http1", "tunnel_http") == 1


def test_lenient_status_line_versions() -> None:
    exs, _ = run([(C, GET), (S, b"HTTP/1.2 200 ok\r\nContent-Length: 0\r\n\r\n")])
    assert [(e.status, e.protocol) for e in exs] == [(200, "http/1.1")]


def test_obs_fold_and_bad_header_lines() -> None:
    req = (b"GET / HTTP/1.1\r\nHost: h\r\nX-Long: part one\r\n  part two\r\nno colon here\r\n"
           b"Content-Length: 0\r\n\r\n")
    exs, stats = run([(C, req), (S, OK5)])
    assert exs[0].request.header("x-long") == "part one part two"
    assert stats.get("http1", "obs_fold") == 1 and stats.get("http1", "bad_header_line") == 1


def test_detection_from_first_bytes() -> None:
    from sniffer.proto import detect_client

    assert detect_client(b"GET / HTTP/1.1\r\n") == "http1"
    assert detect_client(b"CCM_POST / HTTP/1.1\r\n") == "http1"  # any method token
    assert detect_client(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") == "http2"
    assert detect_client(b"PRI * HT") is None  # still could be the preface: wait
    assert detect_client(b"GE") is None
    assert detect_client(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03") == "tls"
    assert detect_client(b"SSH-2.0-OpenSSH_9.2\r\n") == "other"


def test_lenient_request_lines() -> None:
    exs, stats = run([(C, b"CCM_POST /x HTTP/1.\r\nHost: h\r\n\r\n"), (S, OK5),
                      (C, b"GET /with spaces HTTP/1.1\r\nHost: h\r\n\r\n"), (S, OK5)])
    assert [(e.method, e.target, e.protocol) for e in exs] == [
        ("CCM_POST", "/x", "http/1.0"), ("GET", "/with spaces", "http/1.1")]
    assert stats.get("http1", "odd_request_version") == 1


def test_close_delimited_last_ts_is_the_last_data_not_the_fin() -> None:
    out: list[Exchange] = []
    h = Http1Connection(None, out.append, Stats(), "pt", (b"\x01" * 4, 1), (b"\x02" * 4, 80), 1)
    h.client_side.data(GET, 1000)
    h.server_side.data(b"HTTP/1.0 200 OK\r\n\r\nab", 2000)
    h.server_side.data(b"cd", 3000)
    h.server_side.end("fin", 9000)
    h.client_side.end("fin", 9000)
    assert out[0].response.last_ts == 3000 and out[0].response.complete


# -- fixes found by the corpus differential test (tests/test_corpus_http1.py) ------------------

@pytest.mark.parametrize("line,status", [
    (b"HTTP/1.01 200 ok", 200),            # http-evader-051: clients accept odd versions
    (b"HTTP/1.10 200 ok", 200),            # http-evader-366
    (b"HTTP/1.1  200 ok", 200),            # http-evader-371: a run of SP (RFC 9112 section 4)
    (b"HTTP/1.1\t 200 ok", 200),           # http-evader-372
    (b"HTTP/1.1 200\rX-Not-A-Header: 1", 200),  # http-evader-382: a bare CR is SP
    (b"HTTP/1.1 2000 ok", None),           # not 3DIGIT: no status line
    (b"HTTP/1.1 2xx ok", None),
    (b"HTTP/1.1 200\x00 ok", None),
])
def test_status_line_leniency(line: bytes, status: int | None) -> None:
    exs = every_split([(C, GET), (S, line + b"\r\nContent-Length: 2\r\n\r\nok")])
    assert [e.status for e in exs if e.status] == ([status] if status else [])


def test_bare_cr_in_status_line_hides_a_header() -> None:
    # http-evader-381: with the CR read as SP, Transfer-Encoding is part of the reason phrase
    resp = b"HTTP/1.1 200\rTransfer-Encoding:chunked\r\nContent-Length: 4\r\n\r\nabcd"
    exs = every_split([(C, GET), (S, resp)])
    assert [(e.status, e.response.body_bytes, e.response.complete) for e in exs] == [
        (200, 4, True)]


def test_differing_content_length_headers_are_a_framing_error() -> None:
    # suricata-verify http-multiple-cl: two fields, 11 and 93 - not "take the first"
    req = (b"POST /which HTTP/1.1\r\nContent-Length: 11\r\nContent-Length: 93\r\n\r\n"
           b"bar=1&foo=2" + GET)
    exs, stats = run([(C, req), (S, OK5)])
    assert [e.target for e in exs] == ["/which"]
    assert stats.get("http1", "bad_framing") == 1
    assert body_framing(True, "GET", 0, [("content-length", "3"), ("content-length", "3")]) \
        == ("length", 3)


def test_content_length_leading_zeros() -> None:
    # zeek http/261 variant 08: "0000...0050" is 50
    assert body_framing(True, "POST", 0, [("content-length", "0" * 30 + "50")]) == ("length", 50)
    assert body_framing(True, "POST", 0, [("content-length", "012, 12")]) == ("length", 12)
    assert body_framing(True, "POST", 0, [("content-length", "")]) == ("bad", 0)
    assert body_framing(True, "POST", 0, [("content-length", "\u00b2")]) == ("bad", 0)
    post = b"POST / HTTP/1.1\r\nContent-Length: 00050\r\n\r\n" + b"X" * 50 + GET
    exs = every_split([(C, post)])
    assert [(e.method, e.request.body_bytes) for e in exs] == [("POST", 50), ("GET", 0)]


def test_request_split_inside_a_connect_tunnel() -> None:
    # suricata-verify http-connect-fragmented: "GE" then "T / HTTP/1.1..."
    conn = b"CONNECT origin:80 HTTP/1.1\r\nHost: origin:80\r\n\r\n"
    exs, stats = run([(C, conn), (S, b"HTTP/1.1 200 Connection established\r\n\r\n"),
                      (C, GET[:2]), (C, GET[2:]), (S, OK5)])
    assert [(e.method, e.target, e.status) for e in exs] == [
        ("CONNECT", "origin:80", 200), ("GET", "/a?x=1", 200)]
    assert stats.get("http1", "tunnel_http") == 1


def test_http2_preface_is_not_an_http1_request() -> None:
    # suricata-verify http2-errorcode: h2 through a CONNECT tunnel
    conn = b"CONNECT origin:80 HTTP/1.1\r\nHost: origin:80\r\n\r\n"
    exs, stats = run([(C, conn), (S, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
                      (C, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")])
    assert [e.method for e in exs] == ["CONNECT"]
    assert stats.get("http1", "opaque_h2_preface") == 1


def test_sip_is_not_http() -> None:
    # arkime_synthetic: SIP over TCP shares HTTP's request-line shape
    exs, stats = run([(C, b"OPTIONS sip:probe@edge.test SIP/2.0\r\nVia: x\r\n\r\n"),
                      (S, b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n")])
    assert exs == []
    assert stats.get("http1", "opaque_foreign_protocol") == 1


def test_botched_version_is_cruft_not_a_request() -> None:
    # zeek http-11-request-then-cruft: "T / HTTP" lines; the server's 400 has no request
    cruft = b"T / HTTP\n\n"
    exs, stats = run([(C, GET), (S, OK5), (C, cruft * 4),
                      (S, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")])
    assert [(e.method, e.status) for e in exs] == [("GET", 200), ("", 400)]
    assert stats.get("http1", "bad_request_line") >= 1
    # two words only: the target may look like a version (zeek http/methods)
    exs, _ = run([(C, b"OPTIONS HTTP/1.1\r\n\r\n"), (S, OK5)])
    assert [(e.method, e.target) for e in exs] == [("OPTIONS", "HTTP/1.1")]
