"""The proxy correlator on exchanges built by hand (the lab tests prove it on real proxies):
evidence order, nesting, chains, several capture points, connect time, bounds."""

from __future__ import annotations

import json
from ipaddress import ip_address

import pytest

from conftest import ROOT, Conv, write_pcap
from exporter.spans import proxy_span
from sniffer.cli import main
from sniffer.correlate import Correlator, Hop
from sniffer.exchange import Exchange, Message
from sniffer.pipeline import run_replay

MS = 1_000_000
T = 1_700_000_000 * 1_000_000_000
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def ep(s: str) -> tuple[bytes, int]:
    host, port = s.rsplit(":", 1)
    return ip_address(host).packed, int(port)


def tp(span: str = "00f067aa0ba902b7", trace: str = TRACE) -> tuple[str, str]:
    return ("traceparent", f"00-{trace}-{span}-01")


def ex(client: str, server: str, req: tuple[float, float], resp: tuple[float, float],
       headers: list | None = None, point: str = "eth0", path: str = "/api/1",
       method: str = "GET", status: int = 200, syn: float = 0, synack: float = 0,
       stream: int = 0) -> Exchange:
    e = Exchange(1, point, ep(client), ep(server), "http/1.1", method=method, target=path,
                 authority="svc", status=status, stream_id=stream)
    e.request = Message(first_ts=T + int(req[0] * MS), last_ts=T + int(req[1] * MS),
                        headers=list(headers or []), complete=True)
    e.response = Message(first_ts=T + int(resp[0] * MS), last_ts=T + int(resp[1] * MS),
                         complete=True)
    if syn:
        e.syn_ts, e.synack_ts = T + int(syn * MS), T + int(synack * MS)
    return e


def correlate(*exs: Exchange, **kw) -> tuple[list[Hop], list[Exchange]]:
    hops: list[Hop] = []
    rest: list[Exchange] = []
    c = Correlator(on_hop=hops.append, on_exchange=lambda e, ctx: rest.append(e), **kw)
    for e in sorted(exs, key=lambda e: e.response.last_ts):
        c.add(e)
    c.finish()
    return hops, rest


def test_trace_context_hop_and_its_dwell() -> None:
    d = ex("10.0.0.1:40000", "10.0.0.2:80", (0, 0.1), (12, 12.5), [tp()])
    u = ex("10.0.0.2:50000", "10.0.0.3:8080", (2, 2.1), (10, 10.4), [tp("1111111111111111")])
    (hop,), rest = correlate(d, u)
    assert rest == []
    assert hop.match == "trace-context" and not hop.ambiguous
    assert hop.request_dwell_ns == 2 * MS and hop.response_dwell_ns == 2 * MS
    assert hop.upstream_duration_ns == int(8.4 * MS) and hop.upstream_connect_ns == 0
    assert hop.proxy_address == "10.0.0.2:80" and hop.upstream_address == "10.0.0.3:8080"
    assert hop.span_id_rewritten and hop.direction == ""
    span = proxy_span(hop)
    assert (span.trace_id, span.parent_span_id, span.kind) == (TRACE, "00f067aa0ba902b7", 2)
    assert span.attributes["wirespan.proxy.request_dwell_ns"] == 2 * MS
    assert span.attributes["wirespan.match"] == "trace-context"
    assert span.name == "GET /api/{id}" and span.start_ns == d.request.first_ts
    assert span.end_ns == d.response.last_ts


def test_not_nested_or_other_path_is_no_hop() -> None:
    d = ex("10.0.0.1:40000", "10.0.0.2:80", (0, 0), (5, 5), [tp()])
    late = ex("10.0.0.2:50000", "10.0.0.3:80", (1, 1), (6, 6), [tp()])  # answers after D
    other = ex("10.0.0.2:50001", "10.0.0.3:80", (1, 1), (4, 4), [tp()], path="/other")
    hops, rest = correlate(d, late, other)
    assert hops == [] and len(rest) == 3


def test_chain_matches_hop_by_hop() -> None:
    """client -> ingress -> sidecar -> app: the app leg is nested in the first leg too, but
    only the direct child is its upstream."""
    l1 = ex("10.0.0.1:40000", "10.0.0.2:80", (0, 0), (20, 20), [tp()])
    l2 = ex("10.0.0.2:50000", "10.0.0.3:8080", (2, 2), (18, 18), [tp()])
    l3 = ex("127.0.0.1:60000", "127.0.0.1:8080", (5, 5), (15, 15), [tp()], point="lo")
    hops, rest = correlate(l1, l2, l3)
    assert rest == []
    by = {h.proxy_address: h for h in hops}
    assert by["10.0.0.2:80"].up.ex is l2 and by["10.0.0.3:8080"].up.ex is l3
    assert by["10.0.0.3:8080"].direction == "inbound"
    assert by["10.0.0.2:80"].request_dwell_ns == 2 * MS
    assert by["10.0.0.3:8080"].request_dwell_ns == 3 * MS


def test_one_leg_at_two_capture_points_uses_the_proxy_side_times() -> None:
    """The downstream leg seen at the client's interface and at the proxy's: its request
    reached the proxy last, its response left the proxy first."""
    d_client = ex("10.0.0.1:40000", "10.0.0.2:80", (0, 0), (10.3, 10.3), [tp()], point="c0")
    d_proxy = ex("10.0.0.1:40000", "10.0.0.2:80", (0.3, 0.3), (10, 10), [tp()], point="p0")
    u = ex("10.0.0.2:50000", "10.0.0.3:80", (1.3, 1.3), (8, 8), [tp()], point="p0")
    (hop,), rest = correlate(d_client, d_proxy, u)
    assert rest == [] and len(hop.down.obs) == 2
    assert hop.request_dwell_ns == 1 * MS and hop.response_dwell_ns == 2 * MS
    assert "wirespan.capture.interfaces" in proxy_span(hop).attributes


def test_connect_time_of_a_new_upstream_connection_is_not_dwell() -> None:
    d = ex("10.0.0.1:40000", "10.0.0.2:80", (0, 0), (20, 20), [tp()])
    u = ex("10.0.0.2:50000", "10.0.0.3:80", (6, 6), (15, 15), [tp()], syn=1, synack=5)
    (hop,), _ = correlate(d, u)
    assert hop.upstream_connect_ns == 4 * MS and hop.request_dwell_ns == 2 * MS
    # a kept-alive connection opened before the request: nothing to subtract
    u2 = ex("10.0.0.2:50000", "10.0.0.3:80", (6, 6), (15, 15), [tp()], syn=-100, synack=-99)
    (hop,), _ = correlate(d, u2)
    assert hop.upstream_connect_ns == 0 and hop.request_dwell_ns == 6 * MS


def test_request_id_then_timing() -> None:
    rid = [("x-request-id", "f47ac10b-58cc-4372-a567-0e02b2c3d479")]
    d = ex("10.0.0.1:40000", "10.0.0.2:80", (0, 0), (9, 9), rid)
    u = ex("10.0.0.2:50000", "10.0.0.3:80", (1, 1), (8, 8), rid)
    (hop,), _ = correlate(d, u)
    assert hop.match == "request-id"
    d = ex("10.0.0.1:40000", "10.0.0.2:80", (0, 0), (9, 9))
    u = ex("10.0.0.2:50000", "10.0.0.3:80", (1, 1), (8, 8))
    (hop,), _ = correlate(d, u)
    assert hop.match == "timing"
    assert proxy_span(hop).attributes["wirespan.trace.synthetic"] is True


def test_timing_needs_exactly_one_candidate() -> None:
    d = ex("10.0.0.1:40000", "10.0.0.2:80", (0, 0), (9, 9))
    u1 = ex("10.0.0.2:50000", "10.0.0.3:80", (1, 1), (5, 5))
    u2 = ex("10.0.0.2:50001", "10.0.0.4:80", (2, 2), (6, 6))
    hops, rest = correlate(d, u1, u2)
    assert hops == [] and len(rest) == 3


def test_concurrent_requests_with_distinct_traces_never_cross() -> None:
    exs = []
    for i in range(50):
        trace = f"{i + 1:032x}"
        t0 = i * 0.5
        exs.append(ex(f"10.0.0.1:{40000 + i}", "10.0.0.2:80", (t0, t0), (t0 + 30, t0 + 30),
                      [tp(trace=trace)]))
        exs.append(ex(f"10.0.0.2:{50000 + i}", "10.0.0.3:80", (t0 + 1, t0 + 1),
                      (t0 + 29 - i * 0.1, t0 + 29 - i * 0.1), [tp(trace=trace)]))
    hops, rest = correlate(*exs)
    assert len(hops) == 50 and rest == []
    for h in hops:
        assert h.down.ctx.trace_id == h.up.ctx.trace_id and not h.ambiguous


def test_shared_trace_id_is_marked_ambiguous() -> None:
    exs = []
    for i in range(4):
        exs.append(ex(f"10.0.0.1:{40000 + i}", "10.0.0.2:80", (i, i), (20 + i, 20 + i), [tp()]))
        exs.append(ex(f"10.0.0.2:{50000 + i}", "10.0.0.3:80", (i + 0.5, i + 0.5),
                      (19 + i, 19 + i), [tp()]))
    hops, _ = correlate(*exs)
    assert len(hops) == 4 and any(h.ambiguous for h in hops)
    assert len({id(h.up) for h in hops}) == 4  # each upstream leg used once


def test_outbound_sidecar_on_lo() -> None:
    d = ex("10.0.0.5:40000", "127.0.0.1:4140", (0, 0), (9, 9), [tp()], point="lo")
    u = ex("10.0.0.5:50000", "10.0.0.9:8080", (1, 1), (8, 8), [tp()], point="eth0")
    (hop,), _ = correlate(d, u)
    assert hop.direction == "outbound"


def test_window_is_bounded() -> None:
    c = Correlator(max_legs=100, window_ns=10**18)
    for i in range(1000):
        c.add(ex(f"10.0.0.1:{1000 + i}", "10.0.0.2:80", (i, i), (i + 0.5, i + 0.5),
                 [tp(trace=f"{i + 1:032x}")]))
        assert len(c.window) <= 101
    c.finish()
    assert not c.window and not c.index and not c.same_leg


def test_replay_writes_proxy_spans_and_the_proxies_table(tmp_path, capsys) -> None:
    """Two real-looking legs in one pcap through the CLI: one proxy span, the table."""
    hdr = b"traceparent: 00-" + TRACE.encode() + b"-00f067aa0ba902b7-01\r\n"
    down = Conv(cli=("10.0.0.1", 40000), srv=("10.0.0.2", 80), step=0.001).handshake()
    down.c(b"GET /x HTTP/1.1\r\nHost: svc\r\n" + hdr + b"\r\n")
    up = Conv(cli=("10.0.0.2", 50000), srv=("10.0.0.3", 8080), t0=down.t, step=0.001)
    up.handshake()
    up.c(b"GET /x HTTP/1.1\r\nHost: svc\r\n" + hdr + b"\r\n")
    up.s(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    down.t = up.t
    down.s(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    up.close()
    down.close()
    pcap = write_pcap(tmp_path / "legs.pcap", sorted(down.l2() + up.l2(), key=lambda p: p.time))
    out = tmp_path / "spans.jsonl"
    assert main(["replay", "--json", "-o", str(out), str(pcap)]) == 0
    summary = json.loads(capsys.readouterr().out)
    (proxy,) = summary["proxies"]
    assert proxy["address"] == "10.0.0.2:80" and proxy["requests"] == 1
    assert proxy["match_kinds"] == {"trace-context": 1}
    spans = [s for line in out.read_text().splitlines()
             for rs in json.loads(line)["resourceSpans"] for ss in rs["scopeSpans"]
             for s in ss["spans"]]
    (span,) = spans  # the hop's two legs are in the proxy span, not exchange spans
    attrs = {a["key"]: a["value"] for a in span["attributes"]}
    assert attrs["wirespan.span.role"] == {"stringValue": "proxy"}
    assert span["traceId"] == TRACE and span["parentSpanId"] == "00f067aa0ba902b7"
    # the proxy dialled after the request came in: SYN -> SYN-ACK (one 1 ms step) is network
    assert int(attrs["wirespan.proxy.upstream_connect_ns"]["intValue"]) == 1 * MS


# -- the bundled lab captures (pcaps/*/, made by scripts/lab; no root needed) -----------------

# (the mTLS mesh captures, whose proxies talk TLS to each other, have tests of their own:
# tests/test_meshhop.py)
BUNDLED = sorted(p.name for p in (ROOT / "pcaps").iterdir() if (p / "truth.json").exists()
                 and '"mesh"' not in (p / "truth.json").read_text())


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_lab_captures_match_their_truth(name: str, tmp_path) -> None:
    """Every proxy the truth names is found with one hop per request; every traced request's
    proxy span at each proxy carries the client's trace id and the span id that reached it;
    haproxy's request dwell is within 3 ms of the delay it slept."""
    folder = ROOT / "pcaps" / name
    truth = json.loads((folder / "truth.json").read_text())
    hops: list[Hop] = []
    summary = run_replay(sorted(str(p) for p in folder.glob("*.pcap")), on_hop=hops.append)
    found = {p["address"]: p for p in summary.to_dict()["proxies"]}
    reqs = truth["requests"]
    for proxy in truth["proxies"]:
        assert proxy["address"] in found, (proxy, found)
        assert found[proxy["address"]]["requests"] == len(reqs), (proxy, found)
    by_trace = {}
    for h in hops:
        if h.down.ctx is not None and h.down.ctx.format != "request-id":
            by_trace.setdefault((h.down.ctx.trace_id, h.proxy_address), []).append(h)
    for r in reqs:
        tr = r["trace"]
        if not tr.get("trace_id"):
            continue
        for hop in r["hops"]:
            (h,) = by_trace[(tr["trace_id"], hop["address"])]
            assert h.down.ctx.span_id == hop["span_id_in"], (name, r["id"], hop)
            assert h.span_id_rewritten == (hop["span_id_in"] != hop["span_id_out"])
            if hop.get("slept_ms") is not None:
                assert abs(h.request_dwell_ns - hop["slept_ms"] * MS) <= 3 * MS, (r["id"], hop)
