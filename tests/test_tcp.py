"""TCP reassembly edge cases, each written into a real pcap by scapy and replayed."""

from __future__ import annotations

from pathlib import Path

import pytest
from scapy.layers.l2 import Ether

from conftest import Conv, replay, write_pcap
from sniffer.tcp import TcpConfig

REQ = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def run(tmp: Path, conv: Conv | list, name: str = "t.pcap", **kw):
    pkts = conv.l2() if isinstance(conv, Conv) else conv
    return replay(write_pcap(tmp / name, pkts), **kw)


def test_in_order_with_handshake_and_fin(tmp: Path) -> None:
    c = Conv().handshake().c(REQ).s(RESP).close()
    summary, rec = run(tmp, c)
    assert summary.to_dict()["flows"] == 1
    [r] = rec.conns
    assert not r.conn.roles_inferred
    assert r.client.stream == REQ and r.server.stream == RESP
    assert r.client.end_reason == "fin" and r.server.end_reason == "fin"
    assert r.conn.close_reason == "fin"
    # each chunk carries the timestamp of the packet that carried it
    assert r.client.events[0][2] == int(round(c.pkts[3].time * 1e9, -3))
    assert summary.to_dict()["gaps"] == 0


def test_out_of_order_is_buffered_and_delivered_in_order(tmp: Path) -> None:
    c = Conv().handshake()
    c.c(b"BBBB", at=4).c(b"CCCC", at=8).c(b"AAAA", at=0)
    c.off["c"] = 12
    c.s(b"ok").close()
    summary, rec = run(tmp, c)
    [r] = rec.conns
    assert r.client.stream == b"AAAABBBBCCCC"
    # each chunk keeps the timestamp of the packet that carried it: the late first segment
    # is delivered first with its own (latest) time, the buffered ones with theirs
    t = {bytes(p["TCP"].payload): int(round(float(p.time) * 1e6)) * 1000
         for p in c.pkts[3:6]}
    data = [(e[1], e[2]) for e in r.client.events if e[0] == "data"]
    assert data == [(b"AAAA", t[b"AAAA"]), (b"BBBB", t[b"BBBB"]), (b"CCCC", t[b"CCCC"])]
    assert t[b"AAAA"] > t[b"CCCC"] > t[b"BBBB"]
    assert summary.stats.get("tcp", "ooo_segments") == 2
    assert summary.to_dict()["gaps"] == 0


def test_retransmission_with_different_bytes_first_copy_wins(tmp: Path) -> None:
    c = Conv().handshake().c(b"original")
    c.c(b"DIFFERENT", at=0)  # retransmits offset 0.. with other bytes and one more
    c.off["c"] = 9
    c.s(b"ok").close()
    summary, rec = run(tmp, c)
    [r] = rec.conns
    assert r.client.stream == b"originalT"
    assert summary.stats.get("tcp", "retransmitted_bytes") == 8


def test_overlapping_buffered_segments_first_wins(tmp: Path) -> None:
    c = Conv().handshake()
    c.c(b"xxxxCCCC", at=4)   # arrives first: offsets 4..12
    c.c(b"yyBBBBBB", at=2)   # overlaps it: offsets 2..10, its bytes 4..10 lose
    c.c(b"AA", at=0)
    c.off["c"] = 12
    c.s(b"ok").close()
    _, rec = run(tmp, c)
    assert rec.conns[0].client.stream == b"AAyyxxxxCCCC"


def test_sequence_wraparound(tmp: Path) -> None:
    c = Conv(isn_c=0xFFFFFFF0, isn_s=0xFFFFFFFE).handshake()
    data = bytes(range(40))
    c.c(data[:20]).c(data[30:], at=30).c(data[20:30], at=20)
    c.off["c"] = 40
    c.s(b"x" * 10).close()
    summary, rec = run(tmp, c)
    [r] = rec.conns
    assert r.client.stream == data
    assert r.server.stream == b"x" * 10
    assert summary.to_dict()["gaps"] == 0 and r.client.end_reason == "fin"


def test_mid_stream_join_infers_roles_from_payload(tmp: Path) -> None:
    # No handshake, and the server's response is the first packet seen: ports say
    # 40000 -> 8080 but the first payload is what decides.
    c = Conv(cli=("10.0.0.1", 9999), srv=("10.0.0.2", 12345))
    c.s(b"HTTP/1.1 200 OK\r\n\r\n")
    c.c(REQ)
    c.close()
    _, rec = run(tmp, c)
    [r] = rec.conns
    assert r.conn.roles_inferred
    assert r.conn.client.sport == 9999  # the client is the side that sent the request
    assert r.client.stream == REQ


def test_mid_stream_join_port_heuristic(tmp: Path) -> None:
    c = Conv(cli=("10.0.0.1", 51000), srv=("10.0.0.2", 8080))
    c.c(b"\x00\x01binary").s(b"\x02reply")
    _, rec = run(tmp, c)
    [r] = rec.conns
    assert r.conn.roles_inferred and r.conn.server.sport == 8080
    assert r.client.stream == b"\x00\x01binary" and r.server.stream == b"\x02reply"
    assert r.client.end_reason == "capture_end"


def test_rst_closes_and_delivers_buffered(tmp: Path) -> None:
    c = Conv().handshake().c(b"abc")
    c.c(b"ghi", at=6)  # hole at 3..6
    c.pkt("s", "RA")
    _, rec = run(tmp, c)
    [r] = rec.conns
    assert r.client.events[:1] == [("data", b"abc", r.client.events[0][2])]
    assert r.client.gaps == [3]
    assert r.client.stream == b"abcghi"
    assert r.client.end_reason == "rst" and r.conn.close_reason == "rst"


def test_loss_gap_acked_by_peer_becomes_gap_then_resync(tmp: Path) -> None:
    """The capture missed a segment the server received (its ACK covers it)."""
    c = Conv(step=0.01).handshake()
    c.c(b"part1")
    c.off["c"] += 5  # "part2" was sent but never captured
    c.pkt("s", "A")  # server acks all 15 bytes
    c.c(b"part3")
    c.s(b"done")
    _, rec = run(tmp, c)
    r = rec.conns[0]
    assert r.client.gaps == [5]
    assert r.client.stream == b"part1part3"
    kinds = [e[0] for e in r.client.events]
    assert kinds[:3] == ["data", "gap", "data"]


def test_hole_timeout_without_evidence(tmp: Path) -> None:
    c = Conv(step=0.5).handshake().c(b"one")
    c.c(b"three", at=6)  # offsets 3..6 never arrive, nothing acks them
    c.c(b"four", at=11)
    c.c(b"five", at=15)  # 0.5 s apart: the 2 s default hole timeout passes here
    c.c(b"six", at=19)
    c.c(b"seven", at=22)
    _, rec = run(tmp, c)
    r = rec.conns[0]
    assert r.client.gaps == [3]
    assert r.client.stream == b"onethreefourfivesixseven"


def test_buffer_cap_forces_gap(tmp: Path) -> None:
    c = Conv().handshake().c(b"a")
    for i in range(10):
        c.c(b"z" * 100, at=2 + i * 100)  # hole at offset 1
    cfg = TcpConfig(max_buffer_per_direction=500)
    summary, rec = run(tmp, c, tcp_config=cfg)
    r = rec.conns[0]
    assert r.client.gaps == [1]
    assert r.client.stream == b"a" + b"z" * 1000
    assert summary.stats.get("tcp", "buffer_overflows") == 1


def test_ipv6_connection(tmp: Path) -> None:
    c = Conv(cli=("fd00::1", 40000), srv=("fd00::2", 80)).handshake().c(REQ).s(RESP).close()
    _, rec = run(tmp, c)
    [r] = rec.conns
    assert len(r.conn.client.src) == 16
    assert r.client.stream == REQ and r.server.stream == RESP


def test_port_reuse_is_a_new_connection(tmp: Path) -> None:
    a = Conv().handshake().c(b"first").close()
    b = Conv(isn_c=777777, isn_s=888888, t0=a.t + 1).handshake().c(b"second").close()
    summary, rec = run(tmp, a.l2() + b.l2())
    assert summary.to_dict()["flows"] == 2
    assert [r.client.stream for r in rec.conns] == [b"first", b"second"]


def test_final_acks_do_not_open_new_flows(tmp: Path) -> None:
    c = Conv().handshake().c(REQ).s(RESP).close()
    c.pkt("c", "A")  # a late duplicate ACK after the close
    summary, _ = run(tmp, c)
    assert summary.to_dict()["flows"] == 1


def test_same_connection_on_two_capture_points_stays_two(tmp: Path) -> None:
    """One connection captured at both ends of a veth pair = two files, two observations."""
    c = Conv().handshake().c(REQ).s(RESP).close()
    p1 = write_pcap(tmp / "veth0.pcap", c.l2())
    later = [Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / p for p in c.pkts]
    for f, p in zip(later, c.pkts):
        f.time = p.time + 0.000002
    p2 = write_pcap(tmp / "veth1.pcap", later)
    summary, rec = replay(p1, p2)
    assert summary.to_dict()["flows"] == 2
    assert {r.conn.point.source for r in rec.conns} == {"veth0.pcap", "veth1.pcap"}
    assert all(r.client.stream == REQ for r in rec.conns)


def test_redirect_halves_on_lo_are_paired(tmp: Path) -> None:
    """Outbound REDIRECT: app->proxy is podIP:eph -> 127.0.0.1:4140, the replies claim to come
    from the address the app dialled. One connection, dialled address kept."""
    app = ("10.1.0.5", 43210)
    c = Conv(cli=app, srv=("127.0.0.1", 4140))
    dialled = ("10.96.0.10", 80)
    c.pkt("c", "S")
    back = Conv(cli=app, srv=dialled, isn_c=c.isn["c"], isn_s=c.isn["s"], t0=c.t)
    c.pkts.append(back.pkt("s", "SA"))
    c.t = back.t
    c.pkt("c", "A")
    c.c(REQ)
    back.off["c"] = c.off["c"]
    back.t = c.t
    c.pkts.append(back.s(RESP).pkts[-1])
    back.off["s"] = len(RESP)
    c.off["s"] = len(RESP)
    summary, rec = run(tmp, c)
    assert summary.to_dict()["flows"] == 1
    [r] = rec.conns
    assert r.conn.dialled == (bytes([10, 96, 0, 10]), 80)
    assert r.client.stream == REQ and r.server.stream == RESP
    assert summary.stats.get("tcp", "redirect_pairs") == 1


def test_unrelated_reverse_traffic_is_not_paired(tmp: Path) -> None:
    app = ("10.1.0.5", 43210)
    c = Conv(cli=app, srv=("127.0.0.1", 4140))
    c.pkt("c", "S")
    stranger = Conv(cli=app, srv=("10.96.0.10", 80), isn_c=5, isn_s=6, t0=c.t)
    c.pkts.append(stranger.pkt("s", "SA"))  # acks isn 5+1, not ours
    summary, _ = run(tmp, c)
    assert summary.to_dict()["flows"] == 2
    assert summary.stats.get("tcp", "redirect_pairs") == 0


def test_idle_flows_are_evicted(tmp: Path) -> None:
    a = Conv().handshake().c(b"x")
    b = Conv(cli=("10.0.0.3", 40001), t0=a.t + 10).handshake().c(b"y")
    cfg = TcpConfig(idle_timeout_ns=5_000_000_000)
    summary, rec = run(tmp, a.l2() + b.l2(), tcp_config=cfg)
    assert summary.stats.get("tcp", "evicted_idle") == 1
    assert rec.conns[0].client.end_reason == "idle"


def test_flow_cap_evicts_and_counts(tmp: Path) -> None:
    pkts = []
    t = 0.0
    for i in range(40):
        cv = Conv(cli=("10.0.0.1", 30000 + i), t0=1_700_000_000 + t).handshake().c(b"q")
        t = cv.t - 1_700_000_000
        pkts += cv.l2()
    summary, rec = run(tmp, pkts, tcp_config=TcpConfig(max_flows=16))
    assert summary.to_dict()["flows"] == 40
    assert summary.stats.get("tcp", "evicted_cap") >= 24
    assert all(r.client.stream == b"q" for r in rec.conns)


@pytest.mark.parametrize("missing", [0, 1])
def test_syn_retransmission_is_not_a_new_connection(tmp: Path, missing: int) -> None:
    c = Conv()
    c.pkt("c", "S")
    c.pkt("c", "S")
    c.pkt("s", "SA")
    c.pkt("c", "A")
    c.c(REQ).s(RESP)
    summary, rec = run(tmp, c)
    assert summary.to_dict()["flows"] == 1
    assert rec.conns[0].client.stream == REQ


def test_sparse_but_active_flow_is_not_idle(tmp: Path) -> None:
    """Data every 200 s on an established flow (the engine's fast path) for 1,000 s, with a
    300 s idle timeout: never idle. (A sweep driven by packet counts once missed this.)"""
    c = Conv(step=200.0).handshake()
    for i in range(5):
        c.c(b"ping%d" % i)
    late = Conv(cli=("10.0.0.7", 41000), t0=c.t + 1).handshake()  # its SYN makes a sweep run
    summary, rec = run(tmp, c.l2() + late.l2())
    assert summary.stats.get("tcp", "evicted_idle") == 0
    assert summary.to_dict()["flows"] == 2
    assert rec.conns[0].client.stream == b"ping0ping1ping2ping3ping4"
