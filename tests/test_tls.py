"""Passive TLS (sniffer/proto/tls.py): hand-built records fed to TlsConnection, split at every
byte boundary; garbage and gaps that must never raise (hypothesis); a scapy-built capture
through the real pipeline; real openssl/curl traffic on loopback captured with tcpdump and
checked against tshark (``lab``); and the public corpus' TLS captures against tshark
(``corpus``)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import CORPUS, Conv, write_pcap
from sniffer.pipeline import run_replay
from sniffer.proto import detect_client
from sniffer.proto.tls import (
    ALERT, APPLICATION_DATA, CCS, F_EARLY, F_GAP, F_HANDSHAKE, F_PARTIAL, HANDSHAKE, SSL2,
    TlsConfig, TlsConnection, TlsSession,
)
from sniffer.stats import Stats

# -- builders ----------------------------------------------------------------------------------

HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")


def u8(n: int) -> bytes:
    return bytes([n])


def u16(n: int) -> bytes:
    return struct.pack(">H", n)


def u24(n: int) -> bytes:
    return struct.pack(">I", n)[1:]


def vec8(b: bytes) -> bytes:
    return u8(len(b)) + b


def vec16(b: bytes) -> bytes:
    return u16(len(b)) + b


def ext(t: int, body: bytes) -> bytes:
    return u16(t) + vec16(body)


def record(ctype: int, body: bytes, ver: int = 0x0303) -> bytes:
    return struct.pack(">BHH", ctype, ver, len(body)) + body


def hs_msg(mtype: int, body: bytes) -> bytes:
    return u8(mtype) + u24(len(body)) + body


def client_hello(sni: str | None = "svc.example.test", alpn: list[str] | None = None,
                 versions: list[int] | None = None, sid: bytes = b"", pad: int = 0,
                 suites: int = 3) -> bytes:
    exts = b""
    if sni is not None:
        name = sni.encode()
        exts += ext(0, vec16(u8(0) + vec16(name)))
    exts += ext(10, vec16(u16(29) + u16(23)))  # supported_groups
    if alpn:
        exts += ext(16, vec16(b"".join(vec8(p.encode()) for p in alpn)))
    if versions:
        exts += ext(43, vec8(b"".join(u16(v) for v in versions)))
    if pad:
        exts += ext(21, b"\0" * pad)
    body = (u16(0x0303) + bytes(range(32)) + vec8(sid)
            + vec16(b"".join(u16(0xC02F + i) for i in range(suites))) + vec8(b"\0")
            + vec16(exts))
    return hs_msg(1, body)


def server_hello(suite: int = 0xC02F, alpn: str | None = None, version: int | None = None,
                 sid: bytes = b"", hrr: bool = False, psk: bool = False) -> bytes:
    exts = b""
    if alpn is not None:
        exts += ext(16, vec16(vec8(alpn.encode())))
    if version is not None:
        exts += ext(43, u16(version))
    if psk:
        exts += ext(41, u16(0))
    rnd = HRR_RANDOM if hrr else bytes(range(100, 132))
    body = u16(0x0303) + rnd + vec8(sid) + u16(suite) + b"\0" + vec16(exts)
    return hs_msg(2, body)


def fake_conn(roles_inferred: bool = False) -> SimpleNamespace:
    return SimpleNamespace(
        id=7, point="lo", roles_inferred=roles_inferred,
        client=SimpleNamespace(src=b"\x7f\0\0\x01", sport=40000),
        server=SimpleNamespace(src=b"\x7f\0\0\x02", sport=443))


class Run:
    """One TlsConnection and what it emitted."""

    def __init__(self, config: TlsConfig | None = None, roles_inferred: bool = False) -> None:
        self.stats = Stats()
        self.out: list[TlsSession] = []
        self.tc = TlsConnection(fake_conn(roles_inferred), self.stats, self.out.append,
                                config=config)

    def side(self, who: str):
        return self.tc.client_side if who == "c" else self.tc.server_side

    def feed(self, events: list[tuple]) -> TlsSession:
        for ev in events:
            who, what = ev[0], ev[1]
            if what == "gap":
                self.side(who).gap(ev[2], ev[3])
            elif what == "end":
                self.side(who).end(ev[2], ev[3])
            else:
                self.side(who).data(what, ev[2])
        return self.finish()

    def finish(self, ts: int = 10**9) -> TlsSession:
        self.tc.client_side.end("fin", ts)
        self.tc.server_side.end("fin", ts)
        assert len(self.out) == 1
        return self.out[0]

    def tls(self) -> dict[str, int]:
        return self.stats.by_stage("tls")


MS = 1_000_000


def tls12_events() -> list[tuple]:
    """A full TLS 1.2 handshake and one request/response, ts in ms."""
    ch = record(HANDSHAKE, client_hello(alpn=["h2", "http/1.1"]), ver=0x0301)
    sh = record(HANDSHAKE, server_hello(alpn="h2")
                + hs_msg(11, b"\0\0\x03abc") + hs_msg(14, b""))
    cke = record(HANDSHAKE, hs_msg(16, b"\x20" + b"k" * 32))
    fin = record(HANDSHAKE, b"\x99" * 40)  # encrypted Finished
    return [
        ("c", ch, 1 * MS),
        ("s", sh, 2 * MS),
        ("c", cke + record(CCS, b"\1") + fin, 3 * MS),
        ("s", record(CCS, b"\1") + fin, 4 * MS),
        ("c", record(APPLICATION_DATA, b"r" * 100), 5 * MS),
        ("c", record(APPLICATION_DATA, b"r" * 50), 5 * MS + 1000),
        ("s", record(APPLICATION_DATA, b"R" * 300), 6 * MS),
    ]


def tls13_events() -> list[tuple]:
    ch = record(HANDSHAKE, client_hello(alpn=["h2"], versions=[0x0304, 0x0303], sid=b"s" * 32),
                ver=0x0301)
    sh = record(HANDSHAKE, server_hello(0x1301, version=0x0304, sid=b"s" * 32))
    return [
        ("c", ch, 1 * MS),
        ("s", sh + record(CCS, b"\1") + record(APPLICATION_DATA, b"E" * 30)
         + record(APPLICATION_DATA, b"C" * 900), 2 * MS),
        ("s", record(APPLICATION_DATA, b"F" * 60), 2 * MS + 10),
        ("c", record(CCS, b"\1") + record(APPLICATION_DATA, b"f" * 53), 3 * MS),
        ("c", record(APPLICATION_DATA, b"q" * 200), 4 * MS),
        ("c", record(APPLICATION_DATA, b"q" * 100), 4 * MS + 200_000),
        ("s", record(APPLICATION_DATA, b"T" * 250), 5 * MS),  # NewSessionTicket: looks like data
        ("s", record(APPLICATION_DATA, b"P" * 1000), 5 * MS + 300_000),
        ("c", record(APPLICATION_DATA, b"q" * 100), 9 * MS),
    ]


# -- unit tests --------------------------------------------------------------------------------

def test_tls12_handshake_and_records() -> None:
    r = Run()
    s = r.feed(tls12_events())
    assert (s.conn_id, s.point, s.client, s.server) == (7, "lo", (b"\x7f\0\0\x01", 40000),
                                                        (b"\x7f\0\0\x02", 443))
    assert s.sni == "svc.example.test"
    assert s.alpn_offered == ("h2", "http/1.1")
    assert s.alpn == "h2"
    assert s.client_version == 0x0303 and s.version == 0x0303 and s.version_name == "TLS 1.2"
    assert s.cipher_suite == 0xC02F and s.cipher_suites_offered == 3
    assert s.handshake_complete and s.handshake_ts == 4 * MS
    assert s.client_hello_ts == 1 * MS and s.server_hello_ts == 2 * MS
    assert s.resumed is False and not s.broken
    c = list(s.from_client.iter_records())
    assert [(t, f & F_HANDSHAKE) for t, _l, _a, _b, f in c] == [
        (HANDSHAKE, F_HANDSHAKE), (HANDSHAKE, F_HANDSHAKE), (CCS, F_HANDSHAKE),
        (HANDSHAKE, F_HANDSHAKE), (APPLICATION_DATA, 0), (APPLICATION_DATA, 0)]
    assert [x[1] for x in c[-2:]] == [100, 50]
    assert s.from_client.handshake_types == [1, 16]
    assert s.from_server.handshake_types == [2, 11, 14]
    assert list(s.from_client.iter_bursts()) == [(5 * MS, 5 * MS + 1000, 2, 150)]
    assert list(s.from_server.iter_bursts()) == [(6 * MS, 6 * MS, 1, 300)]
    assert s.from_client.app_records == 2 and s.from_client.app_bytes == 150
    t = r.tls()
    assert t["connections"] == 1 and t["client_hello"] == 1 and t["sni"] == 1
    assert t["version_1_2"] == 1 and t["handshake_complete"] == 1
    assert t["records"] == 6 + 4 and t["alpn"] == 1


def test_tls13_handshake_rule() -> None:
    r = Run()
    s = r.feed(tls13_events())
    assert s.version == 0x0304 and s.version_name == "TLS 1.3" and s.server_version == 0x0303
    assert s.client_versions == (0x0304, 0x0303)
    assert s.alpn_offered == ("h2",) and s.alpn is None  # EncryptedExtensions: invisible
    assert s.cipher_suite == 0x1301
    assert s.handshake_complete and s.handshake_ts == 3 * MS  # the client's Finished
    assert s.resumed is False
    srv = list(s.from_server.iter_records())
    assert [(t, f) for t, _l, _a, _b, f in srv] == [
        (HANDSHAKE, F_HANDSHAKE), (CCS, F_HANDSHAKE), (APPLICATION_DATA, F_HANDSHAKE),
        (APPLICATION_DATA, F_HANDSHAKE), (APPLICATION_DATA, F_HANDSHAKE),
        (APPLICATION_DATA, 0), (APPLICATION_DATA, 0)]
    cli = list(s.from_client.iter_records())
    assert [(t, f) for t, _l, _a, _b, f in cli] == [
        (HANDSHAKE, F_HANDSHAKE), (CCS, F_HANDSHAKE), (APPLICATION_DATA, F_HANDSHAKE),
        (APPLICATION_DATA, 0), (APPLICATION_DATA, 0), (APPLICATION_DATA, 0)]
    # request burst (two records 0.2 ms apart), the "response" burst, the next request
    assert list(s.from_client.iter_bursts()) == [(4 * MS, 4 * MS + 200_000, 2, 300),
                                                 (9 * MS, 9 * MS, 1, 100)]
    assert list(s.from_server.iter_bursts()) == [(5 * MS, 5 * MS + 300_000, 2, 1250)]
    assert r.tls()["version_1_3"] == 1


def _split_events(events: list[tuple], cut: int, step: int = 1) -> list[tuple]:
    """Each direction's byte stream cut at stream offset ``cut`` into two chunks; the second
    piece carries a later timestamp."""
    out = []
    offs = {"c": 0, "s": 0}
    for who, data, ts in events:
        o = offs[who]
        offs[who] += len(data)
        if o < cut < o + len(data):
            out.append((who, data[: cut - o], ts))
            out.append((who, data[cut - o :], ts + step))
        else:
            out.append((who, data, ts))
    return out


def _summary(s: TlsSession) -> tuple:
    return (s.sni, s.alpn_offered, s.alpn, s.version, s.cipher_suite, s.handshake_complete,
            s.client_versions, s.broken,
            [(t, n, f) for t, n, _a, _b, f in s.from_client.iter_records()],
            [(t, n, f) for t, n, _a, _b, f in s.from_server.iter_records()],
            [(n, b) for _a, _b, n, b in s.from_client.iter_bursts()],
            [(n, b) for _a, _b, n, b in s.from_server.iter_bursts()])


@pytest.mark.parametrize("events", [tls12_events, tls13_events])
def test_split_at_every_byte_boundary(events) -> None:
    evs = events()
    want = _summary(Run().feed(evs))
    total = max(sum(len(d) for w, d, _ in evs if w == x) for x in "cs")
    for cut in range(1, total):
        r = Run()
        s = r.feed(_split_events(evs, cut))
        assert _summary(s) == want, cut
        assert not r.tls().get("internal_error")
        # each record's timestamps are those of the chunks carrying its first and last byte
        for who, d in (("c", s.from_client), ("s", s.from_server)):
            byte_ts = [ts for w, data, ts in _split_events(evs, cut) if w == who
                       for _ in range(len(data))]
            off = 0
            for _t, n, a, b, _f in d.iter_records():
                assert (a, b) == (byte_ts[off], byte_ts[off + 4 + n]), (cut, who, off)
                off += 5 + n


def test_record_spanning_segments_timestamps() -> None:
    r = Run()
    rec = record(APPLICATION_DATA, b"x" * 3000)
    r.tc.client_side.data(rec[:1000], 10)
    r.tc.client_side.data(rec[1000:2000], 20)
    r.tc.client_side.data(rec[2000:] + rec[:3], 30)  # the next record's header starts here
    r.tc.client_side.data(rec[3:], 40)
    s = r.finish()
    assert [(a, b) for _t, _n, a, b, _f in s.from_client.iter_records()] == [(10, 30), (30, 40)]


def test_one_byte_at_a_time() -> None:
    want = _summary(Run().feed(tls12_events()))
    r = Run()
    evs = []
    for who, data, ts in tls12_events():
        evs += [(who, data[i : i + 1], ts) for i in range(len(data))]
    assert _summary(r.feed(evs)) == want


def test_client_hello_across_records_and_segments() -> None:
    ch = client_hello(sni="big.example.test", alpn=["http/1.1"], pad=20000)
    assert len(ch) > 16384
    recs = record(HANDSHAKE, ch[:16000], 0x0301) + record(HANDSHAKE, ch[16000:], 0x0301)
    r = Run()
    for i in range(0, len(recs), 1448):
        r.tc.client_side.data(recs[i : i + 1448], i)
    s = r.finish()
    assert s.sni == "big.example.test" and s.alpn_offered == ("http/1.1",)
    assert s.from_client.records == 2 and s.from_client.handshake_types == [1]


def test_handshake_message_too_large_is_skipped() -> None:
    ch = client_hello(sni="huge.test", pad=40000)
    recs = b"".join(record(HANDSHAKE, ch[i : i + 16384]) for i in range(0, len(ch), 16384))
    r = Run(TlsConfig(max_handshake=32768))
    r.tc.client_side.data(recs, 1)
    r.tc.client_side.data(record(APPLICATION_DATA, b"z" * 10), 2)
    s = r.finish()
    assert s.sni is None and r.tls()["handshake_too_large"] == 1
    assert s.from_client.records == len(range(0, len(ch), 16384)) + 1 and not s.broken


def test_hello_retry_request() -> None:
    ch1 = record(HANDSHAKE, client_hello(versions=[0x0304]), 0x0301)
    ch2 = record(HANDSHAKE, client_hello(sni="second.test", versions=[0x0304]))
    hrr = record(HANDSHAKE, server_hello(0x1302, version=0x0304, hrr=True))
    sh = record(HANDSHAKE, server_hello(0x1302, version=0x0304, psk=True))
    r = Run()
    s = r.feed([("c", ch1, 1), ("s", hrr, 2), ("c", record(CCS, b"\1") + ch2, 3),
                ("s", sh + record(APPLICATION_DATA, b"e" * 99), 4),
                ("c", record(APPLICATION_DATA, b"f" * 40), 5)])
    assert s.hello_retry and s.version == 0x0304 and s.cipher_suite == 0x1302
    assert s.sni == "svc.example.test"  # the first ClientHello's
    assert s.handshake_complete and s.handshake_ts == 5 and s.resumed is True
    assert r.tls()["client_hello"] == 2 and r.tls()["hello_retry"] == 1


def test_tls12_abbreviated_resumption() -> None:
    sid = b"\x42" * 32
    r = Run()
    fin = record(HANDSHAKE, b"\x55" * 40)
    s = r.feed([("c", record(HANDSHAKE, client_hello(sid=sid)), 1),
                ("s", record(HANDSHAKE, server_hello(sid=sid)) + record(CCS, b"\1") + fin, 2),
                ("c", record(CCS, b"\1") + fin, 3)])
    assert s.resumed is True and s.handshake_complete and s.handshake_ts == 3


def test_sslv2_compatible_hello() -> None:
    body = b"\x01\x03\x01" + u16(3) + u16(0) + u16(16) + b"\0\0\x04" + b"c" * 16
    v2 = bytes([0x80 | (len(body) >> 8), len(body) & 0xFF]) + body
    r = Run()
    s = r.feed([("c", v2[:4], 1), ("c", v2[4:], 2),
                ("s", record(HANDSHAKE, server_hello(0x0004), 0x0301), 3)])
    assert s.sslv2_hello and s.sni is None and s.cipher_suite == 4 and not s.broken
    assert [(t, n) for t, n, *_ in s.from_client.iter_records()] == [(SSL2, len(body))]
    assert r.tls()["sslv2_hello"] == 1


def test_server_answers_in_plaintext_is_broken() -> None:
    r = Run()
    s = r.feed([("c", record(HANDSHAKE, client_hello()), 1),
                ("s", b"HTTP/1.1 400 Bad Request\r\n\r\n", 2),
                ("c", record(APPLICATION_DATA, b"x" * 10), 3),
                ("s", b"more", 4)])
    assert s.broken == "bad_record_type" and s.sni == "svc.example.test"
    assert r.tls()["broken_bad_record_type"] == 1
    assert s.from_client.records == 1  # nothing parsed after the break
    assert s.from_server.bytes == 32


def test_bad_version_and_length() -> None:
    r = Run()
    s = r.feed([("c", b"\x16\x05\x01\x00\x10" + b"x" * 16, 1)])
    assert s.broken == "bad_record_version"
    r = Run()
    s = r.feed([("c", b"\x17\x03\x03\xff\xff", 1)])
    assert s.broken == "record_too_long"


def test_gap_inside_record_keeps_framing() -> None:
    r = Run()
    rec = record(APPLICATION_DATA, b"x" * 1000)
    c = r.tc.client_side
    c.data(rec[:100], 1)
    c.gap(500, 2)
    c.data(rec[600:], 3)
    c.data(record(APPLICATION_DATA, b"y" * 10), 4)
    s = r.finish()
    recs = list(s.from_client.iter_records())
    assert [(n, f) for _t, n, _a, _b, f in recs] == [(1000, F_GAP), (10, 0)]
    assert s.from_client.gaps == 1 and s.from_client.gap_bytes == 500
    assert r.tls()["gap_in_record"] == 1


def test_gap_in_cleartext_handshake_stops_hello_parsing() -> None:
    r = Run()
    ch = record(HANDSHAKE, client_hello())
    r.tc.client_side.data(ch[:20], 1)
    r.tc.client_side.gap(10, 2)
    r.tc.client_side.data(ch[30:], 3)
    s = r.finish()
    assert s.sni is None and r.tls()["gap_in_handshake"] == 1 and not s.broken


def test_gap_over_header_resyncs_on_confirmed_record() -> None:
    r = Run()
    c = r.tc.client_side
    c.data(record(APPLICATION_DATA, b"a" * 50), 1)
    rec = record(APPLICATION_DATA, b"b" * 400)
    c.gap(200, 2)  # the rest of a lost record... and more
    # the tail of some record (contains a fake header candidate with wrong chaining)
    c.data(b"\x17\x03\x03\x00\x05" + b"z" * 30, 3)
    c.data(rec[:300], 4)
    c.data(rec[300:] + record(APPLICATION_DATA, b"c" * 20), 5)
    s = r.finish()
    recs = [(n, a, b) for _t, n, a, b, _f in s.from_client.iter_records()]
    assert recs == [(50, 1, 1), (400, 4, 5), (20, 5, 5)]
    assert s.from_client.resyncs == 1 and s.from_client.skipped_bytes == 35
    assert r.tls()["gap_lost_sync"] == 1 and r.tls()["resync"] == 1


def test_resync_never_confirmed() -> None:
    r = Run()
    c = r.tc.client_side
    c.data(record(APPLICATION_DATA, b"a" * 50)[:20], 1)
    c.gap(1000, 2)
    c.data(os.urandom(5000).replace(b"\x17\x03", b"\x00\x00"), 3)
    s = r.finish()
    assert s.from_client.records == 1 and s.from_client.resyncs == 0
    assert [f for *_x, f in s.from_client.iter_records()] == [F_GAP | F_PARTIAL]
    assert s.from_client.skipped_bytes == 5000


def test_truncated_capture() -> None:
    r = Run()
    r.tc.client_side.data(record(APPLICATION_DATA, b"x" * 500)[:200], 5)
    r.tc.client_side.data(b"", 6)
    s = r.finish()
    assert [(n, b, f) for _t, n, _a, b, f in s.from_client.iter_records()] == [(500, 5, F_PARTIAL)]
    assert r.tls()["truncated_record"] == 1


def test_plaintext_alert() -> None:
    r = Run()
    s = r.feed([("c", record(HANDSHAKE, client_hello()), 1),
                ("s", record(ALERT, b"\x02\x28"), 2)])
    assert s.alerts == [("server", 2, 40, 2)] and r.tls()["alert"] == 1


def test_bounds() -> None:
    cfg = TlsConfig(max_records=10, max_bursts=3)
    r = Run(cfg)
    c, sv = r.tc.client_side, r.tc.server_side
    for i in range(50):
        c.data(record(APPLICATION_DATA, b"q" * 10), i * MS)
        sv.data(record(APPLICATION_DATA, b"p" * 10), i * MS + 10)
    s = r.finish()
    assert len(s.from_client.rec_len) == 10 and s.from_client.records == 50
    assert s.from_client.records_dropped == 40
    assert len(s.from_client.burst_records) == 3 and s.from_client.bursts == 50
    assert s.from_client.bursts_dropped == 47
    assert s.from_client.app_bytes == 500


def test_burst_rules() -> None:
    r = Run()
    c, sv = r.tc.client_side, r.tc.server_side
    rec = record(APPLICATION_DATA, b"q" * 10)
    c.data(rec + rec, 0)              # burst 1: two records in one segment
    c.data(rec, 900_000)              # within 1 ms: still burst 1
    c.data(rec, 2_500_000)            # 1.6 ms idle: burst 2
    sv.data(rec, 2_600_000)           # the server speaks
    c.data(rec, 2_700_000)            # burst 3 (a server record in between)
    c.data(record(ALERT, b"\x99\x99"[:2]) + rec, 2_800_000)  # an alert closes a burst too
    s = r.finish()
    assert [n for _a, _b, n, _x in s.from_client.iter_bursts()] == [3, 1, 1, 1]
    assert list(s.from_client.iter_bursts())[0] == (0, 900_000, 3, 30)


def test_early_data_flagged() -> None:
    ch = record(HANDSHAKE, client_hello(versions=[0x0304]), 0x0301)
    r = Run()
    s = r.feed([("c", ch + record(APPLICATION_DATA, b"0" * 80), 1)])
    assert [f for *_x, f in s.from_client.iter_records()] == [F_HANDSHAKE, F_EARLY]


def test_mid_stream_join_resyncs() -> None:
    r = Run(roles_inferred=True)
    rec = record(APPLICATION_DATA, b"m" * 100)
    s = r.feed([("c", record(HANDSHAKE, client_hello()), 1),
                ("s", rec[37:] + rec + rec, 2)])
    assert not s.broken and s.from_server.records == 2 and s.from_server.skipped_bytes == 68


def test_sink_once_and_finish() -> None:
    r = Run()
    r.tc.client_side.end("fin", 1)
    assert r.out == []
    r.tc.server_side.end("rst", 2)
    r.tc.server_side.end("rst", 3)
    r.tc.finish()
    assert len(r.out) == 1 and r.out[0].from_server.end_reason == "rst"


# -- never raises ------------------------------------------------------------------------------

def _valid_stream() -> bytes:
    return b"".join(d for w, d, _ in tls12_events() if w == "c")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.binary(max_size=300),
                          st.integers(min_value=1, max_value=5000),
                          st.sampled_from([b"\x16\x03\x01", b"\x17\x03\x03\x00\x10",
                                           b"\x80\x30\x01\x03\x01", _valid_stream()[:40]])),
                max_size=30),
       st.booleans(), st.booleans())
def test_garbage_never_raises(items, server, inferred) -> None:
    r = Run(roles_inferred=inferred)
    side = r.tc.server_side if server else r.tc.client_side
    other = r.tc.client_side if server else r.tc.server_side
    for i, it in enumerate(items):
        if isinstance(it, int):
            side.gap(it, i)
        else:
            side.data(it, i)
            other.data(it[::-1], i)
    s = r.finish()
    assert not r.tls().get("internal_error")
    d = s.from_server if server else s.from_client
    assert d.records == len(d.rec_len) + d.records_dropped


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_handshakes_never_raise(data) -> None:
    evs = data.draw(st.sampled_from([tls12_events, tls13_events]))()
    out = []
    for who, d, ts in evs:
        b = bytearray(d)
        for _ in range(data.draw(st.integers(0, 3))):
            if b:
                b[data.draw(st.integers(0, len(b) - 1))] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(b)))
        out += [(who, bytes(b[:cut]), ts), (who, bytes(b[cut:]), ts + 1)]
    r = Run()
    r.feed(out)
    assert not r.tls().get("internal_error")


# -- through the pipeline ----------------------------------------------------------------------

class TlsFactory:
    """A dispatcher-like consumer factory for tests: the client's first bytes decide (with the
    dispatcher's own ``detect_client``) whether the connection goes to TlsConnection."""

    def __init__(self) -> None:
        self.stats = Stats()
        self.sessions: list[TlsSession] = []

    def __call__(self, conn):
        return _Pick(self, conn).pair()


class _Buf:
    def __init__(self, pick: _Pick, is_client: bool) -> None:
        self.pick, self.is_client, self.events, self.first = pick, is_client, [], b""

    def data(self, chunk, ts):
        if self.pick.target is not None:
            return self.pick.target[not self.is_client].data(chunk, ts)
        self.events.append(("data", chunk, ts))
        if self.is_client:
            self.first += chunk[:8]
        self.pick.decide()

    def gap(self, n, ts):
        if self.pick.target is not None:
            return self.pick.target[not self.is_client].gap(n, ts)
        self.events.append(("gap", n, ts))

    def end(self, reason, ts):
        if self.pick.target is not None:
            return self.pick.target[not self.is_client].end(reason, ts)
        self.events.append(("end", reason, ts))
        self.pick.decide(force=True)


class _Null:
    def data(self, *a): pass
    def gap(self, *a): pass
    def end(self, *a): pass


class _Pick:
    def __init__(self, f: TlsFactory, conn) -> None:
        self.f, self.conn, self.target = f, conn, None
        self.c, self.s = _Buf(self, True), _Buf(self, False)

    def pair(self):
        return self.c, self.s

    def decide(self, force: bool = False) -> None:
        if self.target is not None:
            return
        if len(self.c.first) < 6 and not force:
            return
        if self.c.first and detect_client(self.c.first) == "tls":
            t = TlsConnection(self.conn, self.f.stats, self.f.sessions.append)
            self.target = (t.client_side, t.server_side)
        else:
            self.target = (_Null(), _Null())
        for i, buf in enumerate((self.c, self.s)):
            for kind, v, ts in buf.events:
                getattr(self.target[i], kind)(v, ts)
            buf.events = []


def test_pipeline_scapy_capture(tmp_path: Path) -> None:
    ch = record(HANDSHAKE, client_hello(sni="pipe.test", alpn=["h2"]), 0x0301)
    sh = record(HANDSHAKE, server_hello(alpn="h2"))
    big = record(APPLICATION_DATA, b"B" * 4000)
    conv = Conv(cli=("10.0.0.1", 40001), srv=("10.0.0.2", 443)).handshake()
    conv.c(ch[:50]).c(ch[50:]).s(sh).c(record(CCS, b"\1") + record(HANDSHAKE, b"f" * 40))
    conv.s(record(CCS, b"\1") + record(HANDSHAKE, b"g" * 40))
    conv.c(big[:1400]).c(big[1400:2800]).c(big[2800:]).s(record(APPLICATION_DATA, b"r" * 99))
    conv.close()
    path = write_pcap(tmp_path / "tls.pcap", conv.l2())
    f = TlsFactory()
    run_replay([str(path)], factory=f)
    assert len(f.sessions) == 1
    s = f.sessions[0]
    assert s.sni == "pipe.test" and s.alpn == "h2" and s.handshake_complete
    assert s.client == (socket.inet_aton("10.0.0.1"), 40001)
    assert s.server == (socket.inet_aton("10.0.0.2"), 443)
    recs = list(s.from_client.iter_records())
    t, n, a, b, _f = recs[-1]
    assert (t, n) == (APPLICATION_DATA, 4000) and b - a == 2 * MS  # three packets, 1 ms apart
    assert recs[0][3] - recs[0][2] == MS  # the ClientHello spanned two packets
    # the default dispatcher detects it from the first bytes and reports it in the summary
    sessions: list = []
    d = run_replay([str(path)], on_tls=sessions.append).to_dict()
    assert d["protocols"] == {"tls": 1} and d["tls_connections"] == 1
    assert d["tls"]["sni"] == 1 and d["tls"]["handshakes_complete"] == 1
    assert [x.sni for x in sessions] == ["pipe.test"]


# -- real peers on loopback (lab) --------------------------------------------------------------

def _tools(*names: str) -> list[str]:
    return [n for n in names if shutil.which(n) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tshark_fields(path: Path, *fields: str, display: str = "", port: int = 0,
                  ports: tuple[int, ...] = ()) -> list[list[str]]:
    """tshark's fields, every occurrence joined by "|"; ``port(s)`` decoded as TLS."""
    cmd = ["tshark", "-r", str(path), "-T", "fields", "-E", "occurrence=a",
           "-E", "aggregator=|"]
    for p in (port, *ports) if port else ports:
        cmd += ["-d", f"tcp.port=={p},tls"]
    if display:
        cmd += ["-Y", display]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    return [line.split("\t") for line in out.splitlines()]


def tshark_records(path: Path, port: int) -> dict[tuple[int, int], tuple[list[int], Counter]]:
    """Per (sender port, receiver port): the length of every TLS record in stream order, and
    how many records of each content type (TLS 1.3's application-data records are ``tls.record.opaque_type``
    in tshark, listed apart from ``content_type``, hence a count rather than a sequence)."""
    out: dict[tuple[int, int], tuple[list[int], Counter]] = {}
    for sport, dport, types, opaque, lens in tshark_fields(
            path, "tcp.srcport", "tcp.dstport", "tls.record.content_type",
            "tls.record.opaque_type", "tls.record.length", display="tls.record", port=port):
        lengths, counts = out.setdefault((int(sport), int(dport)), ([], Counter()))
        lengths.extend(int(x) for x in lens.split("|") if x)
        counts.update(int(x) for x in (types + "|" + opaque).split("|") if x)
    return out


@pytest.mark.lab
def test_real_openssl_and_curl_against_tshark(tmp_path: Path) -> None:
    missing = _tools("openssl", "tcpdump", "tshark", "curl")
    if missing or os.geteuid() != 0:
        pytest.skip("needs root and " + ", ".join(missing or ["root"]))
    key, crt = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(crt),
                    "-days", "2", "-subj", "/CN=mesh.test"], check=True, capture_output=True,
                   timeout=20)
    port = _free_port()
    pcap = tmp_path / "tls.pcap"
    # --immediate-mode: without it this kernel's ring hands tcpdump nothing on lo
    dump = subprocess.Popen(["tcpdump", "-i", "lo", "-nn", "-s", "0", "-U", "--immediate-mode",
                             "-B", "65536", "-Z", "root", "-w", str(pcap), f"tcp port {port}"],
                            stderr=subprocess.PIPE, text=True)
    srv = None
    try:
        deadline = time.monotonic() + 10
        line = ""
        while "listening on" not in line and time.monotonic() < deadline:
            line = dump.stderr.readline()
            if not line and dump.poll() is not None:
                pytest.skip("tcpdump failed to start")
        srv = subprocess.Popen(["openssl", "s_server", "-accept", f"127.0.0.1:{port}",
                                "-cert", str(crt), "-key", str(key), "-www",
                                "-alpn", "http/1.1"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        line = ""
        while "ACCEPT" not in line:  # s_server prints ACCEPT once it listens
            line = srv.stdout.readline()
            assert line or srv.poll() is None, "openssl s_server did not start"
        for tls in ("--tls-max", "--tlsv1.3"):
            args = ["curl", "-sk", "--http1.1", "-o", "/dev/null", "--max-time", "10",
                    "--resolve", f"mesh.test:{port}:127.0.0.1", f"https://mesh.test:{port}/"]
            args += ["--tls-max", "1.2"] if tls == "--tls-max" else ["--tlsv1.3"]
            subprocess.run(args, check=True, timeout=15)
    finally:
        if srv is not None:
            srv.terminate()
            srv.wait(5)
        time.sleep(0.2)
        dump.send_signal(signal.SIGINT)
        dump.wait(10)
    f = TlsFactory()
    run_replay([str(pcap)], factory=f)
    # the probe connect above is not TLS; the two curl connections are
    sessions = sorted(f.sessions, key=lambda s: s.client_hello_ts)
    assert len(sessions) == 2, f.stats.by_stage("tls")
    s12, s13 = sessions
    assert s12.version == 0x0303 and s13.version == 0x0304
    for s in sessions:
        assert s.sni == "mesh.test" and s.alpn_offered == ("http/1.1",)
        assert s.handshake_complete and not s.broken and s.cipher_suite
        assert s.from_client.bursts >= 1 and s.from_server.bursts >= 1
    assert s12.alpn == "http/1.1" and s13.alpn is None
    # against tshark on the same file
    names = {r[0] for r in tshark_fields(pcap, "tls.handshake.extensions_server_name",
                                         display="tls.handshake.type == 1")}
    assert names == {"mesh.test"}
    recs = tshark_records(pcap, port)
    assert len(recs) == 4
    # every record boundary lies on a packet of its sender; packets are µs in a pcap
    frames: dict[int, set[int]] = {}
    for t, sport in tshark_fields(pcap, "frame.time_epoch", "tcp.srcport",
                                  display="tcp.len > 0"):
        frames.setdefault(int(sport), set()).add(int(Decimal(t) * 10**9))
    for s in sessions:
        for info, p in ((s.from_client, s.client[1]), (s.from_server, port)):
            for _t, _n, a, b, _f in info.iter_records():
                assert a in frames[p] and b in frames[p] and a <= b
    # the handshake-end rules, on real peers
    srv12 = list(s12.from_server.iter_records())
    assert s12.handshake_ts == max(b for t, _n, _a, b, _f in srv12 if t == HANDSHAKE)
    cli13 = [r for r in s13.from_client.iter_records() if r[0] == APPLICATION_DATA]
    assert cli13[0][4] & F_HANDSHAKE and s13.handshake_ts == cli13[0][3]
    assert not any(r[4] & F_HANDSHAKE for r in cli13[1:])
    for s in sessions:
        for info, key in ((s.from_client, (s.client[1], port)),
                          (s.from_server, (port, s.client[1]))):
            lengths, counts = recs[key]
            assert list(info.rec_len) == lengths, key
            assert Counter(info.rec_type) == counts, key
            assert info.records == len(lengths) and not info.records_dropped
    assert f.stats.get("tls", "internal_error") == 0


# -- the public corpus (corpus) ----------------------------------------------------------------

CORPUS_TLS = [
    "suricata-verify/http-connect__http-connect-tls.pcap", "suricata-verify/bug-2430.pcap",
    "suricata-verify/bug-2769.pcap", "suricata-verify/filestore-5408.pcap",
    "zeek/http__connect-with-header.pcap", "zeek/spicy__gap-recovery.pcap",
    "arkime/arkime_synthetic.pcap", "arkime/https-connect.pcap", "ndpi/http_connect.pcap",
    "ndpi/KakaoTalk_chat.pcap", "ndpi/ookla.pcap", "ndpi/6in4tunnel.pcap",
    "packetbeat/http_10_connection_close.pcap", "packetbeat/http_basicauth.pcap",
]


@pytest.mark.corpus
@pytest.mark.parametrize("name", CORPUS_TLS)
def test_corpus_tls_against_tshark(name: str) -> None:
    """No exception on any TLS capture of the corpus; the SNIs we find are tshark's; and the
    record framing of each direction is tshark's."""
    path = CORPUS / name
    if not path.exists() or shutil.which("tshark") is None:
        pytest.skip("corpus or tshark missing")
    f = TlsFactory()
    run_replay([str(path)], factory=f)
    assert f.stats.get("tls", "internal_error") == 0
    # one tshark pass; it finds TLS by port: tell it about the servers we found (8080, ...)
    ports = tuple(sorted({s.server[1] for s in f.sessions} - {443}))
    rows = tshark_fields(
        path, "tcp.stream", "http.request.method", "tls.handshake.type",
        "tls.handshake.extensions_server_name", "ip.src", "ipv6.src", "tcp.srcport",
        "tcp.dstport", "tls.record.length", ports=ports,
        display='tcp && (tls.record || http.request.method == "CONNECT")')
    # HTTP CONNECT tunnels start in plaintext HTTP: not "tls" to the detector, not ours
    tunnels = {r[0] for r in rows if "CONNECT" in r[1].split("|")}
    theirs: set[str] = set()
    theirs_len: dict[tuple[str, int, int], list[int]] = {}
    for stream, _m, htypes, names, ip4, ip6, sport, dport, lens in rows:
        if stream in tunnels or "|" in sport + dport:
            continue  # a tunnel, or TCP in TCP (an ICMP error quoting a header)
        if "1" in htypes.split("|"):
            theirs.update(n for n in names.split("|") if n)
        src = (ip6 or ip4).split("|")[-1]  # the innermost header of an IP tunnel
        theirs_len.setdefault((src, int(sport), int(dport)), []).extend(
            int(x) for x in lens.split("|") if x)
    assert {s.sni for s in f.sessions if s.sni} == theirs
    # record framing per direction, where tshark framed that direction (it gives up on some
    # odd TCP streams we reassemble); F_PARTIAL records, cut off by the end of the capture,
    # are not records to tshark
    compared = 0
    for s in f.sessions:
        for info, (addr, port), peer_port in ((s.from_client, s.client, s.server[1]),
                                              (s.from_server, s.server, s.client[1])):
            fam = socket.AF_INET if len(addr) == 4 else socket.AF_INET6
            want = theirs_len.get((socket.inet_ntop(fam, addr), port, peer_port))
            if want:
                got = [n for _t, n, _a, _b, fl in info.iter_records() if not fl & F_PARTIAL]
                assert got == want
                compared += 1
    assert compared or not f.sessions
