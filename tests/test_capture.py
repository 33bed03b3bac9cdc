"""Capture sources: pcap flavours, pcapng interfaces, gzip, merging, and bad files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from conftest import MAC, Conv, pcapng_bytes, replay, write_pcap
from sniffer.capture import open_capture
from sniffer.errors import WirespanError
from sniffer.stats import Stats

REQ = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


def conv() -> Conv:
    return Conv().handshake().c(REQ).s(b"HTTP/1.1 204 No Content\r\n\r\n").close()


@pytest.mark.parametrize("nano", [False, True])
@pytest.mark.parametrize("endianness", ["<", ">"])
def test_pcap_flavours_give_the_same_result(tmp: Path, nano: bool, endianness: str) -> None:
    c = conv()
    p = write_pcap(tmp / "x.pcap", c.l2(), nano=nano, endianness=endianness)
    magic = p.read_bytes()[:4]
    want = {(False, "<"): "d4c3b2a1", (False, ">"): "a1b2c3d4",
            (True, "<"): "4d3cb2a1", (True, ">"): "a1b23c4d"}[(nano, endianness)]
    assert magic.hex() == want
    summary, rec = replay(p)
    assert summary.packets == len(c.pkts)
    assert rec.conns[0].client.stream == REQ
    # integer nanoseconds from the file's own resolution (scapy's float time is the input)
    assert abs(summary.first_ts - int(float(c.pkts[0].time) * 1e9)) < 1000


def test_pcap_nanosecond_timestamps_are_exact(tmp: Path) -> None:
    frame = bytes(Ether(**MAC) / IP(src="1.1.1.1", dst="2.2.2.2") / TCP(flags="S"))
    hdr = struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1)
    rec = struct.pack("<IIII", 1_700_000_000, 123_456_789, len(frame), len(frame)) + frame
    p = tmp / "ns.pcap"
    p.write_bytes(hdr + rec)
    summary, _ = replay(p)
    assert summary.first_ts == 1_700_000_000_123_456_789


def test_pcapng_two_interfaces_own_linktype_and_resolution(tmp: Path) -> None:
    c = conv()
    eth = [bytes(Ether(**MAC) / p) for p in c.pkts]
    raw = [bytes(p) for p in c.pkts]
    t0 = 1_700_000_000
    pkts = []
    for i, (e, r) in enumerate(zip(eth, raw)):
        us = (t0 + i) * 1_000_000  # if0: microseconds (tsresol 6)
        ns = (t0 + i) * 1_000_000_000 + 500  # if1: nanoseconds (tsresol 9), 500 ns later
        pkts += [(0, us, e), (1, ns, r)]
    p = tmp / "two.pcapng"
    p.write_bytes(pcapng_bytes([(1, "eth0", 6), (101, "lo", 9)], pkts))
    summary, rec = replay(p)
    d = summary.to_dict()
    assert d["link_types"] == {"ethernet": len(eth), "raw": len(raw)}
    assert d["interfaces"] == {"two.pcapng:eth0": len(eth), "two.pcapng:lo": len(raw)}
    assert d["flows"] == 2  # one per interface
    assert {r.conn.point.interface for r in rec.conns} == {"eth0", "lo"}
    assert summary.first_ts == t0 * 1_000_000_000
    assert summary.last_ts == (t0 + len(eth) - 1) * 1_000_000_000 + 500


def test_pcapng_big_endian_and_power_of_two_resolution(tmp: Path) -> None:
    c = conv()
    frames = [bytes(Ether(**MAC) / p) for p in c.pkts]
    # tsresol 0x80|10: units of 2^-10 s
    pkts = [(0, (1_700_000_000 + i) << 10, f) for i, f in enumerate(frames)]
    p = tmp / "be.pcapng"
    p.write_bytes(pcapng_bytes([(1, "eth0", 0x80 | 10)], pkts, order=">"))
    summary, rec = replay(p)
    assert summary.packets == len(frames)
    assert summary.first_ts == 1_700_000_000 * 1_000_000_000
    assert rec.conns[0].client.stream == REQ


def test_gzip_compressed(tmp: Path) -> None:
    p = write_pcap(tmp / "x.pcap", conv().l2())
    gz = tmp / "x.pcap.gz"
    gz.write_bytes(gzip.compress(p.read_bytes()))
    a, _ = replay(p)
    b, rec = replay(gz)
    assert a.to_dict()["flows"] == b.to_dict()["flows"] == 1
    assert a.packets == b.packets
    assert rec.conns[0].client.stream == REQ


def test_truncated_gzip_counts_and_keeps_what_it_read(tmp: Path) -> None:
    pk = []
    for i in range(50):
        pk += Conv(cli=("10.0.0.1", 20000 + i), t0=1_700_000_000 + i).handshake().c(REQ).l2()
    p = write_pcap(tmp / "x.pcap", pk)
    data = gzip.compress(p.read_bytes())
    gz = tmp / "cut.pcap.gz"
    gz.write_bytes(data[: len(data) * 2 // 3])
    summary, _ = replay(gz)
    assert 0 < summary.packets < len(pk)
    assert summary.stats.get("capture", "truncated_compressed") == 1


def test_files_are_merged_by_timestamp(tmp: Path) -> None:
    a = Conv(step=0.002).handshake().c(REQ)
    b = Conv(cli=("10.0.0.9", 40009), t0=a.pkts[0].time - 0.001, step=0.002).handshake().c(REQ)
    pa = write_pcap(tmp / "a.pcap", a.l2())
    pb = write_pcap(tmp / "b.pcap", b.l2())
    order: list[int] = []
    stats = Stats()
    from sniffer.capture import merge

    caps = [open_capture(str(pa), stats), open_capture(str(pb), stats)]
    for ts, _point, _buf, _wl in merge(caps, stats):
        order.append(ts)
    assert order == sorted(order) and len(order) == len(a.pkts) + len(b.pkts)
    sources = []
    caps = [open_capture(str(pa), stats), open_capture(str(pb), stats)]
    for _ts, point, _buf, _wl in merge(caps, stats):
        sources.append(point.source)
    assert sources[:4] == ["a.pcap", "b.pcap", "a.pcap", "b.pcap"]


def test_truncated_last_record_is_counted(tmp: Path) -> None:
    c = conv()
    p = write_pcap(tmp / "x.pcap", c.l2())
    data = p.read_bytes()
    cut = tmp / "cut.pcap"
    cut.write_bytes(data[:-7])
    summary, rec = replay(cut)
    assert summary.packets == len(c.pkts) - 1
    assert summary.stats.get("capture", "truncated_record") == 1
    assert rec.conns[0].client.stream == REQ


def test_pcapng_truncated_and_corrupt_blocks(tmp: Path) -> None:
    frames = [bytes(Ether(**MAC) / p) for p in conv().pkts]
    data = pcapng_bytes([(1, "eth0", 6)], [(0, i, f) for i, f in enumerate(frames)])
    (tmp / "cut.pcapng").write_bytes(data[:-10])
    summary, _ = replay(tmp / "cut.pcapng")
    assert summary.packets == len(frames) - 1
    assert summary.stats.get("capture", "truncated_record") == 1
    bad = bytearray(data)
    # walk the blocks; give the 3rd packet block an impossible length (not a multiple of 4)
    off, epbs = 0, []
    while off < len(data):
        btype, blen = struct.unpack_from("<II", data, off)
        if btype == 6:
            epbs.append(off)
        off += blen
    struct.pack_into("<I", bad, epbs[2] + 4, 13)
    (tmp / "bad.pcapng").write_bytes(bytes(bad))
    summary, _ = replay(tmp / "bad.pcapng")
    assert summary.packets == 2
    assert summary.stats.get("capture", "corrupt_block") == 1


@pytest.mark.parametrize("content,expect", [
    (b"", "it is empty"),
    (b"hello world, not a capture at all", "looks like text"),
    (b"\x00\x01\x02\x03\x04\x05\x06\x07" * 4, "starts with bytes 00 01 02"),
])
def test_garbage_file_is_a_clear_error(tmp: Path, content: bytes, expect: str) -> None:
    p = tmp / "garbage.pcap"
    p.write_bytes(content)
    with pytest.raises(WirespanError) as ei:
        replay(p)
    msg = str(ei.value)
    assert "not a pcap or pcapng capture" in msg and expect in msg
    assert "tcpdump -w" in msg  # says what to do


def test_missing_file_is_a_clear_error(tmp: Path) -> None:
    with pytest.raises(WirespanError, match="no such file"):
        replay(tmp / "nope.pcap")


def test_pcap_header_cut_short(tmp: Path) -> None:
    p = tmp / "short.pcap"
    p.write_bytes(bytes.fromhex("d4c3b2a1020004"))
    with pytest.raises(WirespanError, match="24-byte pcap header"):
        replay(p)


def test_unknown_link_type_is_counted_not_fatal(tmp: Path) -> None:
    frame = b"\x00" * 40
    hdr = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 147)  # USER0
    rec = struct.pack("<IIII", 1, 0, len(frame), len(frame)) + frame
    p = tmp / "user0.pcap"
    p.write_bytes(hdr + rec * 3)
    summary, _ = replay(p)
    assert summary.packets == 3
    assert summary.to_dict()["skipped"] == {"linktype-147": 3}
    assert summary.to_dict()["link_types"] == {"linktype-147": 3}


def test_count_stops_early(tmp: Path) -> None:
    c = conv()
    summary, _ = replay(write_pcap(tmp / "x.pcap", c.l2()), count=3)
    assert summary.packets == 3
