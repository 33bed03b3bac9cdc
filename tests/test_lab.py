"""End-to-end lab tests: real nginx / curl / a stand-in proxy in throw-away network namespaces,
captured with tcpdump, replayed through wirespan, and checked byte for byte.

Needs root, iproute2, tcpdump, nginx and curl (iptables too for the REDIRECT tests); skipped
otherwise. Every test builds its own namespaces (names carry the pid and a counter) and the
``lab`` fixture removes processes, namespaces and temp files afterwards, also on failure.
Traffic stays between the namespaces a test creates (10.99.x.x, fd00:99::, 127.0.0.1).
"""

from __future__ import annotations

import random
import re
import socket
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, TCP
from scapy.utils import rdpcap

from conftest import Recorded, replay
from lab import Lab, missing_requirements, split_requests, split_responses, lab_or_skip

PAYLOAD = random.Random(1).randbytes(300_000)
SMALL = b"".join(b"wirespan lab line %03d: small body\n" % i for i in range(20))
PORT = 8080


def v4(a: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, a)


def v6(a: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, a)


@pytest.fixture
def lab() -> Iterator[Lab]:
    yield from lab_or_skip("lab test")


def need(*tools: str) -> None:
    missing = missing_requirements(*tools)
    if missing:
        pytest.skip("lab test needs: " + ", ".join(missing))


def wire_pairs(path) -> list[tuple[str, int, str, int, str]]:
    """(src, sport, dst, dport, flags) of every IPv4 TCP packet in a capture, in order."""
    out = []
    for p in rdpcap(str(path)):
        if IP in p and TCP in p:
            out.append((p[IP].src, p[TCP].sport, p[IP].dst, p[TCP].dport, str(p[TCP].flags)))
    return out


# Counters that must stay zero on these clean captures: one SYN-ACK per connection, no port
# reuse, roles known from the handshake, nothing after close, no eviction or overflow.
ANOMALIES = ("synack_conflicts", "port_reuse", "roles_swapped", "after_close", "evicted_idle",
             "evicted_cap", "buffer_overflows", "seq_out_of_window")


def assert_no_anomalies(d: dict) -> None:
    bad = {k: d["tcp"][k] for k in ANOMALIES if d["tcp"].get(k)}
    assert not bad, d["tcp"]


def assert_closed_by_fin(r: Recorded) -> None:
    assert r.conn.close_reason == "fin", r.conn.close_reason
    assert r.client.end_reason == "fin" and r.server.end_reason == "fin"
    assert r.client.gaps == [] and r.server.gaps == []


@pytest.mark.lab
def test_download_reassembled_exactly(lab: Lab) -> None:
    """300 KB of random bytes, 3 times over one keep-alive connection and once over a second,
    captured at both ends of the veth at once: 2 connections x 2 capture points, every body
    byte-exact, the same streams at both points."""
    cli, srv = lab.netns("cli"), lab.netns("srv")
    if_c, if_s = lab.veth(cli, srv, ("10.99.0.1/24",), ("10.99.0.2/24",))
    lab.nginx(srv, {"data.bin": PAYLOAD}, PORT)
    caps = [lab.tcpdump(cli, if_c, "client-side"), lab.tcpdump(srv, if_s, "server-side")]

    url = f"http://10.99.0.2:{PORT}/data.bin"
    outs = [lab.tmp / f"got{i}.bin" for i in range(4)]
    wout = "%{http_code} %{num_connects} %{size_download}\\n"
    lines = lab.curl(cli, "-w", wout, "-o", str(outs[0]), "-o", str(outs[1]), "-o", str(outs[2]),
                     url, url, url)
    # The lab itself: one new connection for three transfers, every body as served.
    assert lines == ["200 1 300000", "200 0 300000", "200 0 300000"], lines
    lines = lab.curl(cli, "-w", wout, "-o", str(outs[3]), url)
    assert lines == ["200 1 300000"], lines
    assert all(p.read_bytes() == PAYLOAD for p in outs)

    for cap in caps:
        cap.wait_fins(4)
        cap.stop()

    summary, rec = replay(*(c.path for c in caps))
    d = summary.to_dict()
    assert d["flows"] == 4, d
    assert d["gaps"] == 0 and d["gap_bytes"] == 0, d
    assert d["link_types"] == {"ethernet": d["packets"]}, d
    assert d["tcp"].get("redirect_pairs", 0) == 0
    assert_no_anomalies(d)
    assert set(d["interfaces"]) == {"client-side.pcap", "server-side.pcap"}, d["interfaces"]
    assert len(rec.conns) == 4

    by_point: dict[str, list[Recorded]] = {}
    for r in rec.conns:
        by_point.setdefault(r.conn.point.source, []).append(r)
    assert sorted(by_point) == ["client-side.pcap", "server-side.pcap"]

    streams = {}
    for source, conns in by_point.items():
        assert len(conns) == 2, source
        conns.sort(key=lambda r: r.conn.first_ts)
        keepalive, single = conns
        for r, n in ((keepalive, 3), (single, 1)):
            c = r.conn
            assert not c.roles_inferred
            assert c.dialled is None
            assert (c.client.src, c.client.dst, c.client.dport) == (v4("10.99.0.1"),
                                                                    v4("10.99.0.2"), PORT)
            assert (c.server.src, c.server.sport) == (v4("10.99.0.2"), PORT)
            assert_closed_by_fin(r)
            reqs = split_requests(r.client.stream)
            assert len(reqs) == n and r.client.stream.count(b"GET ") == n
            assert all(q.startswith(b"GET /data.bin HTTP/1.1\r\n") for q in reqs), reqs
            resps = split_responses(r.server.stream)
            assert [h.split(b"\r\n", 1)[0] for h, _ in resps] == [b"HTTP/1.1 200 OK"] * n
            assert [b for _, b in resps] == [PAYLOAD] * n
            assert r.server.stream.count(PAYLOAD) == n
        assert keepalive.conn.client.sport != single.conn.client.sport
        streams[source] = [(r.conn.client.sport, r.client.stream, r.server.stream)
                           for r in conns]
    # Both ends of the veth saw the very same two conversations.
    assert streams["client-side.pcap"] == streams["server-side.pcap"]


TCPDUMP_DLT = {"LINUX_SLL2": "linux-sll2", "LINUX_SLL": "linux-sll"}


@pytest.mark.lab
def test_any_interface_sll2_capture(lab: Lab) -> None:
    """``tcpdump -i any`` in the server namespace, one fetch over IPv4 and one over IPv6:
    Linux cooked v2 (``-y LINUX_SLL2``; plain ``-i any`` where tcpdump lacks it) and, side by
    side, cooked v1 (``-y LINUX_SLL``). Streams reassembled from both; under v2 each
    connection is on the capture point of the veth's ifindex."""
    cli, srv = lab.netns("cli"), lab.netns("srv")
    _, if_s = lab.veth(cli, srv, ("10.99.0.1/24", "fd00:99::1/64"),
                       ("10.99.0.2/24", "fd00:99::2/64"))
    lab.nginx(srv, {"small.txt": SMALL}, PORT)
    r = lab.run(srv, "tcpdump", "-i", "any", "-L", check=False)
    dlts = set(re.findall(r"^\s+(\w+) \(", r.stdout + r.stderr, re.M))
    caps = [lab.tcpdump(srv, "any", "any-v2",
                        extra=("-y", "LINUX_SLL2") if "LINUX_SLL2" in dlts else ())]
    if "LINUX_SLL" in dlts and "LINUX_SLL2" in dlts:
        caps.append(lab.tcpdump(srv, "any", "any-v1", extra=("-y", "LINUX_SLL")))

    wout = "%{http_code} %{num_connects}\\n"
    assert lab.curl(cli, "-w", wout, "-o", "/dev/null", f"http://10.99.0.2:{PORT}/small.txt") \
        == ["200 1"]
    assert lab.curl(cli, "-g", "-w", wout, "-o", "/dev/null",
                    f"http://[fd00:99::2]:{PORT}/small.txt") == ["200 1"]
    for cap in caps:
        cap.wait_fins(4)
        cap.stop()

    seen = []
    for cap in caps:
        # The link type tcpdump says it wrote, in wirespan's names.
        m = re.search(r"link-type (\w+)", cap.stats)
        assert m and m.group(1) in TCPDUMP_DLT, cap.stats
        lt = TCPDUMP_DLT[m.group(1)]
        seen.append(lt)
        summary, rec = replay(cap.path)
        d = summary.to_dict()
        assert d["link_types"] == {lt: d["packets"]}, d
        assert d["flows"] == 2 and d["gaps"] == 0, d
        assert d["packets"] == d["tcp_packets"] > 0, d
        assert d["decode_errors"] == {} and d["skipped"] == {}, d
        assert d["tcp"].get("redirect_pairs", 0) == 0
        assert_no_anomalies(d)
        assert len(rec.conns) == 2
        # v2 carries the ifindex: both connections belong to the server veth's capture point.
        # v1 does not: one capture point for the whole file.
        want_if = f"ifindex{lab.ifindex(srv, if_s)}" if lt == "linux-sll2" else ""
        assert [r.conn.point.interface for r in rec.conns] == [want_if, want_if]
        assert all(r.conn.point.source == cap.path.name for r in rec.conns)

        rec.conns.sort(key=lambda r: r.conn.first_ts)
        for r, (cli_a, srv_a) in zip(rec.conns, ((v4("10.99.0.1"), v4("10.99.0.2")),
                                                 (v6("fd00:99::1"), v6("fd00:99::2")))):
            c = r.conn
            assert not c.roles_inferred
            assert (c.client.src, c.client.dst, c.client.dport) == (cli_a, srv_a, PORT)
            assert_closed_by_fin(r)
            [req] = split_requests(r.client.stream)
            assert req.startswith(b"GET /small.txt HTTP/1.1\r\n"), req
            [(head, body)] = split_responses(r.server.stream)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == SMALL
            assert r.server.stream.endswith(SMALL)
    if "LINUX_SLL2" in dlts:
        assert seen[0] == "linux-sll2"


@pytest.mark.lab
def test_outbound_redirect_on_lo_pairs_halves(lab: Lab) -> None:
    """An app in a pod dials a service IP; iptables OUTPUT REDIRECT (as Linkerd's proxy-init
    sets up) sends it to a local proxy on :4140. On ``lo`` the two directions carry different
    address pairs, app -> 127.0.0.1:4140 and serviceIP:80 -> app, which wirespan must pair into
    one connection that remembers the dialled address."""
    need("iptables")
    pod = lab.netns("pod")
    # A veth with both ends in the pod gives the service IP a route (the kernel routes before
    # the nat OUTPUT hook rewrites the destination); nothing ever leaves over it.
    if_p, _ = lab.veth(pod, pod, ("10.99.9.2/24",))
    lab.run(pod, "ip", "route", "add", "10.99.200.0/24", "dev", if_p)
    lab.run(pod, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "10.99.200.10",
            "--dport", "80", "-j", "REDIRECT", "--to-ports", "4140")
    lab.proxy(pod, "0.0.0.0", 4140)
    cap = lab.tcpdump(pod, "lo", "lo")

    lines = lab.curl(pod, "-w", "\\n%{http_code}", "http://10.99.200.10/hello")
    assert lines == ["hello", "200"], lines
    cap.wait_fins(2)
    cap.stop()

    # What the kernel really puts on lo (checked independently of wirespan).
    pkts = wire_pairs(cap.path)
    assert pkts, cap.dump()
    eph = pkts[0][1]
    app_to_proxy = ("10.99.9.2", eph, "127.0.0.1", 4140)
    proxy_to_app = ("10.99.200.10", 80, "10.99.9.2", eph)
    assert {p[:4] for p in pkts} == {app_to_proxy, proxy_to_app}, cap.dump()
    assert pkts[0] == (*app_to_proxy, "S") and pkts[1] == (*proxy_to_app, "SA"), cap.dump()

    summary, rec = replay(cap.path)
    d = summary.to_dict()
    assert d["flows"] == 1, d
    assert d["gaps"] == 0, d
    assert summary.stats.get("tcp", "redirect_pairs") == 1
    assert_no_anomalies(d)
    [r] = rec.conns
    c = r.conn
    assert not c.roles_inferred
    assert c.dialled == (v4("10.99.200.10"), 80)
    assert (c.client.src, c.client.sport, c.client.dst, c.client.dport) == (
        v4("10.99.9.2"), eph, v4("127.0.0.1"), 4140)
    assert r.client.stream.startswith(b"GET /hello HTTP/1.1\r\n")
    assert b"\r\nHost: 10.99.200.10\r\n" in r.client.stream
    assert r.server.stream == (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close"
                               b"\r\n\r\nhello")
    assert_closed_by_fin(r)


@pytest.mark.lab
def test_inbound_redirect_on_eth0_is_consistent(lab: Lab) -> None:
    """Inbound REDIRECT (PREROUTING :8080 -> proxy :4143) seen on the pod's veth: the capture
    sees packets before the nat hook and replies after un-NAT, so both directions carry the
    same address pair: one ordinary connection, nothing paired."""
    need("iptables")
    node, pod = lab.netns("node"), lab.netns("pod")
    _, if_pod = lab.veth(node, pod, ("10.99.9.1/24",), ("10.99.9.2/24",))
    lab.run(pod, "iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "8080",
            "-j", "REDIRECT", "--to-ports", "4143")
    lab.proxy(pod, "0.0.0.0", 4143)
    cap = lab.tcpdump(pod, if_pod, "eth0")

    lines = lab.curl(node, "-w", "\\n%{http_code}", "http://10.99.9.2:8080/in")
    assert lines == ["hello", "200"], lines
    cap.wait_fins(2)
    cap.stop()

    pkts = wire_pairs(cap.path)
    assert pkts, cap.dump()
    eph = pkts[0][1]
    assert {p[:4] for p in pkts} == {("10.99.9.1", eph, "10.99.9.2", 8080),
                                     ("10.99.9.2", 8080, "10.99.9.1", eph)}, cap.dump()

    summary, rec = replay(cap.path)
    d = summary.to_dict()
    assert d["flows"] == 1 and d["gaps"] == 0, d
    assert summary.stats.get("tcp", "redirect_pairs") == 0
    assert_no_anomalies(d)
    [r] = rec.conns
    c = r.conn
    assert not c.roles_inferred
    assert c.dialled is None
    assert (c.client.src, c.client.sport, c.client.dst, c.client.dport) == (
        v4("10.99.9.1"), eph, v4("10.99.9.2"), 8080)
    assert r.client.stream.startswith(b"GET /in HTTP/1.1\r\n")
    assert r.server.stream.endswith(b"\r\n\r\nhello")
    assert_closed_by_fin(r)
