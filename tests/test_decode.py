"""Link, IP, tunnel and TCP decoding, on packets built by scapy and written to pcaps."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import GRE, IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether, Loopback
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from conftest import MAC, Conv, replay, write_pcap
from sniffer.decode import Decoder
from sniffer.stats import Stats

REQ = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def conv(v6: bool = False) -> Conv:
    if v6:
        return Conv(cli=("fd00::1", 40000), srv=("fd00::2", 8080)).handshake().c(REQ).s(RESP).close()
    return Conv().handshake().c(REQ).s(RESP).close()


def check(tmp: Path, pkts: list, linktype: int | None = None, name: str = "x.pcap",
          expect_link: str | None = None):
    summary, rec = replay(write_pcap(tmp / name, pkts, linktype=linktype))
    d = summary.to_dict()
    assert d["flows"] == 1, d
    [r] = rec.conns
    assert r.client.stream == REQ and r.server.stream == RESP
    assert d["decode_errors"] == {}
    if expect_link:
        assert d["link_types"] == {expect_link: len(pkts)}
    return summary, r


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("kind", ["ethernet", "vlan", "qinq", "sll", "sll2", "raw", "null",
                                  "loop"])
def test_link_types(tmp: Path, kind: str, v6: bool) -> None:
    c = conv(v6)
    et = 0x86DD if v6 else 0x0800
    e = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    fns = {
        "ethernet": (lambda p: Ether(**e) / p, None, "ethernet"),
        "vlan": (lambda p: Ether(**e) / Dot1Q(vlan=42) / p, None, "ethernet"),
        "qinq": (lambda p: Ether(**e) / Dot1AD(vlan=7) / Dot1Q(vlan=42) / p, None, "ethernet"),
        "sll": (lambda p: CookedLinux(pkttype=0, lladdrtype=1, proto=et) / p, 113, "linux-sll"),
        "sll2": (lambda p: CookedLinuxV2(proto=et, ifindex=3) / p, 276, "linux-sll2"),
        "raw": (lambda p: p, 101, "raw"),
        "null": (lambda p: Loopback(type=(24 if v6 else 2)) / p, 0, "null"),
        "loop": (lambda p: p, 108, "loop"),
    }
    fn, lt, name = fns[kind]
    pkts = c.l2(fn)
    if kind == "loop":  # network-order family: write the 4-byte header by hand
        pkts = [Raw(struct.pack(">I", 24 if v6 else 2) + bytes(p)) for p in c.pkts]
        for f, p in zip(pkts, c.pkts):
            f.time = p.time
    summary, r = check(tmp, pkts, lt, expect_link=name)
    if kind == "sll2":  # -i any: the interface index is the capture point
        assert r.conn.point.interface == "ifindex3"
        assert summary.to_dict()["interfaces"] == {"x.pcap:ifindex3": len(pkts)}


def test_ipv4_options(tmp: Path) -> None:
    c = conv()
    for p in c.pkts:
        p[IP].options = [b"\x94\x04\x00\x00"]  # router alert
    check(tmp, c.l2(lambda p: Ether(**MAC) / p))


def test_ipv6_extension_headers(tmp: Path) -> None:
    c = conv(v6=True)

    def fn(p):
        ip6 = p[IPv6]
        tcp = ip6.payload
        return Ether(**MAC) / IPv6(src=ip6.src, dst=ip6.dst) / IPv6ExtHdrHopByHop() / \
            IPv6ExtHdrDestOpt() / tcp

    check(tmp, c.l2(fn))


def test_ipv4_fragments_reassembled(tmp: Path) -> None:
    big = bytes(range(256)) * 12
    c = Conv().handshake().c(REQ).s(big).close()
    pkts = []
    for p in c.pkts:
        parts = fragment(p, fragsize=600) if len(p) > 700 else [p]
        for f in reversed(parts):  # out of order, too
            f.time = p.time
            pkts.append(Ether(**MAC) / f)
            pkts[-1].time = p.time
    summary, rec = replay(write_pcap(tmp / "f.pcap", pkts))
    assert rec.conns[0].server.stream == big
    assert summary.stats.get("decode", "ip_datagrams_reassembled") == 1
    assert summary.stats.get("decode", "ip_fragments") > 1


def test_ipv6_fragments_reassembled(tmp: Path) -> None:
    big = b"6" * 3000
    c = Conv(cli=("fd00::1", 40000), srv=("fd00::2", 80)).handshake().c(REQ).s(big).close()
    pkts = []
    for p in c.pkts:
        if len(p) > 1200:
            ip6 = p[IPv6]
            inner = bytes(ip6.payload)
            ident = 0x1234
            for off in range(0, len(inner), 1232):
                chunk = inner[off : off + 1232]
                more = 1 if off + 1232 < len(inner) else 0
                f = Ether(**MAC) / IPv6(src=ip6.src, dst=ip6.dst) / IPv6ExtHdrFragment(
                    nh=6, offset=off // 8, m=more, id=ident) / Raw(chunk)
                f.time = p.time
                pkts.append(f)
        else:
            f = Ether(**MAC) / p
            f.time = p.time
            pkts.append(f)
    summary, rec = replay(write_pcap(tmp / "f6.pcap", pkts))
    assert rec.conns[0].server.stream == big
    assert summary.stats.get("decode", "ip_datagrams_reassembled") == 1


def test_snap_length_cut_is_counted_and_becomes_a_gap(tmp: Path) -> None:
    body = b"B" * 1000
    c = Conv().handshake().c(REQ).s(body).s(b"tail").close()
    summary, rec = replay(write_pcap(tmp / "snap.pcap", c.l2(), snaplen=200, cut=True))
    r = rec.conns[0]
    d = summary.to_dict()
    assert d["decode_errors"].get("snapped_packets") == 1
    # the first 200 - 54 header bytes are delivered, the rest of that segment is a gap
    assert r.server.gaps == [1000 - (200 - 54)]
    assert r.server.stream == b"B" * (200 - 54) + b"tail"


@pytest.mark.parametrize("tunnel", ["vxlan", "gre", "ipip", "6in4"])
def test_tunnels_are_decapsulated(tmp: Path, tunnel: str) -> None:
    v6_inner = tunnel == "6in4"
    c = conv(v6_inner)
    outer = IP(src="192.0.2.1", dst="192.0.2.2")
    fns = {
        "vxlan": lambda p: Ether(**MAC) / outer / UDP(sport=5555, dport=4789) / VXLAN(vni=9) /
        Ether(**MAC) / p,
        "gre": lambda p: Ether(**MAC) / outer / GRE(proto=0x0800) / p,
        "ipip": lambda p: Ether(**MAC) / IP(src="192.0.2.1", dst="192.0.2.2", proto=4) / p,
        "6in4": lambda p: Ether(**MAC) / IP(src="192.0.2.1", dst="192.0.2.2", proto=41) / p,
    }
    check(tmp, c.l2(fns[tunnel]))


def test_non_tcp_is_skipped_and_counted(tmp: Path) -> None:
    pkts = [Ether(**MAC) / IP() / UDP(dport=53) / b"q", Ether(**MAC, type=0x0806) / (b"\x00" * 28)]
    for i, p in enumerate(pkts):
        p.time = 1_700_000_000 + i
    summary, _ = replay(write_pcap(tmp / "u.pcap", pkts))
    assert summary.to_dict()["skipped"] == {"udp": 1, "arp": 1}
    assert summary.to_dict()["flows"] == 0


@pytest.mark.parametrize("frame,reason", [
    (b"\x02" * 10, "truncated_link"),
    (bytes(Ether(**MAC, type=0x0800)) + b"\x45\x00", "truncated_ip"),
    (bytes(Ether(**MAC) / IP(ihl=3)), "bad_ip_header"),
    (bytes(Ether(**MAC) / IP(proto=6) / (b"\x00" * 8)), "truncated_tcp"),
    (bytes(Ether(**MAC) / IP() / TCP(dataofs=2)), "bad_tcp_header"),
])
def test_malformed_packets_are_counted(frame: bytes, reason: str) -> None:
    stats = Stats()
    assert Decoder(stats).decode(0, 1, frame, len(frame)) is None
    assert stats.by_stage("decode") == {reason: 1}


E = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
PREFIXES = [bytes(Ether(**E) / IP(src="1.1.1.1", dst="2.2.2.2", proto=47)),
            bytes(Ether(**E) / IP(src="1.1.1.1", dst="2.2.2.2") / UDP(dport=4789)),
            bytes(Ether(**E) / IPv6(src="::1", dst="::2", nh=0)),
            bytes(Ether(**E, type=0x8847))]


@settings(max_examples=300, deadline=None)
@given(lt=st.sampled_from([0, 1, 101, 108, 113, 127, 228, 229, 239, 276, 104, 105]),
       data=st.binary(max_size=200))
def test_garbage_never_raises(lt: int, data: bytes) -> None:
    stats = Stats()
    dec = Decoder(stats)
    dec.decode(0, lt, data, len(data))
    # behind valid outer headers, so the fuzz reaches tunnels and extension headers too
    for p in PREFIXES:
        dec.decode(0, 1, p + data, 200)
