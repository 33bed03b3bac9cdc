"""Passive HTTP/2 and our HPACK decoder, checked against independent encoders: the h2
project's ``hpack.Encoder`` and ``hyperframe`` build every header block and frame here, and
the connection is fed whole, byte by byte and at other split points."""

from __future__ import annotations

import base64

import pytest
from hpack import Encoder
from hyperframe.frame import (ContinuationFrame, DataFrame, GoAwayFrame, HeadersFrame,
                              PingFrame, PushPromiseFrame, RstStreamFrame, SettingsFrame,
                              WindowUpdateFrame)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Conv, write_pcap
from sniffer.exchange import Exchange
from sniffer.pipeline import run_replay
from sniffer.proto.hpack_decode import Decoder, HpackError
from sniffer.proto.http2 import PREFACE, Http2Connection, find_frame_start
from sniffer.stats import Stats
from sniffer.tracecontext import extract

C, S = "c", "s"
TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def req_headers(path: str = "/", method: str = "GET", extra: list | None = None,
                authority: str = "svc:8080") -> list:
    return [(":method", method), (":scheme", "http"), (":authority", authority),
            (":path", path), *(extra or [])]


class Peer:
    """One endpoint's encoder and frame writer."""

    def __init__(self) -> None:
        self.enc = Encoder()

    def headers(self, sid: int, headers: list, end_stream: bool = False, **kw) -> bytes:
        f = HeadersFrame(sid, data=self.enc.encode(headers), **kw)
        f.flags.add("END_HEADERS")
        if end_stream:
            f.flags.add("END_STREAM")
        return f.serialize()

    def block(self, headers: list) -> bytes:
        return self.enc.encode(headers)


def data(sid: int, payload: bytes, end_stream: bool = False, **kw) -> bytes:
    f = DataFrame(sid, data=payload, **kw)
    if "pad_length" in kw:
        f.flags.add("PADDED")
    if end_stream:
        f.flags.add("END_STREAM")
    return f.serialize()


def settings_frame(**values: int) -> bytes:
    return SettingsFrame(0, settings={getattr(SettingsFrame, k): v
                                      for k, v in values.items()}).serialize()


def run(script: list[tuple[str, bytes]], split: int | None = None, mid_stream: bool = False,
        end: str = "fin", upgraded: Exchange | None = None
        ) -> tuple[list[Exchange], Stats, Http2Connection]:
    """Feed (direction, bytes) items at timestamps (i+1)*1000, optionally cut in pieces."""
    out: list[Exchange] = []
    stats = Stats()
    h = Http2Connection(None, out.append, stats, "pt", (b"\x01" * 4, 40000), (b"\x02" * 4, 80),
                        1, mid_stream=mid_stream, upgraded=upgraded)
    for i, (who, raw) in enumerate(script):
        side = h.client_side if who == C else h.server_side
        step = split or len(raw) or 1
        for k in range(0, len(raw), step):
            side.data(raw[k:k + step], (i + 1) * 1000)
    t = (len(script) + 1) * 1000
    h.client_side.end(end, t)
    h.server_side.end(end, t)
    return out, stats, h


def simple_script() -> list[tuple[str, bytes]]:
    c, s = Peer(), Peer()
    return [
        (C, PREFACE + settings_frame(HEADER_TABLE_SIZE=4096)),
        (S, settings_frame(MAX_CONCURRENT_STREAMS=100)),
        (C, c.headers(1, req_headers("/a", extra=[("traceparent", TP)]), end_stream=True)),
        (C, c.headers(3, req_headers("/b", "POST", [("content-type", "application/json")]))),
        (C, data(3, b'{"x": 1}', end_stream=True)),
        (S, s.headers(3, [(":status", "201"), ("content-type", "application/json")])),
        (S, s.headers(1, [(":status", "200"), ("content-length", "5")])),
        (S, data(1, b"hello", end_stream=True)),
        (S, data(3, b"created", end_stream=True)),
    ]


# -- HPACK ---------------------------------------------------------------------------------------

_name = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20)
_value = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
_fields = st.lists(st.tuples(_name, _value), max_size=12)


@given(st.lists(_fields, min_size=1, max_size=8), st.booleans())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_hpack_round_trips_against_the_h2_encoder(blocks: list, huffman: bool) -> None:
    enc, dec = Encoder(), Decoder()
    for fields in blocks:
        raw = enc.encode(fields, huffman=huffman)
        got, partial = dec.decode(raw)
        assert not partial
        assert list(got) == fields


def test_hpack_table_size_update_and_eviction() -> None:
    enc, dec = Encoder(), Decoder()
    enc.header_table_size = 100  # forces a size update at the start of the next block
    fields = [("x-long-name", "v" * 40), ("x-other", "w" * 40), ("x-third", "z" * 40)]
    for _ in range(3):
        got, _ = dec.decode(enc.encode(fields))
        assert list(got) == fields
    assert dec.max_size == 100 and dec.size <= 100


def test_hpack_mid_stream_join_resolves_what_it_saw() -> None:
    enc = Encoder()
    first = [("x-old", "before-the-join"), ("x-shared", "1")]
    enc.encode(first)  # the observer missed this block (and its insertions)
    dec = Decoder(mid_stream=True)
    later = [("x-new", "after"), (":path", "/p")]
    got, partial = dec.decode(enc.encode(later))
    assert list(got) == later and not partial  # literals and the static table decode
    got, partial = dec.decode(enc.encode(later + first))
    # x-new is indexed from an entry inserted after the join: resolved; x-old is not
    assert got[0] == ("x-new", "after") and got[1] == (":path", "/p")
    assert partial and (None, None) in got


def test_hpack_garbage_raises_only_hpack_error() -> None:
    for raw in (b"\x80", b"\xff\xff\xff\xff\xff\xff\x7f", b"\x40\x85abc", b"\x7e",
                b"\x82\x20", b"\x40\x7f\xff\xff\xff\x7f"):
        with pytest.raises(HpackError):
            Decoder().decode(raw)


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_hpack_fuzz_never_raises_anything_else(raw: bytes) -> None:
    for mid in (False, True):
        try:
            Decoder(mid_stream=mid).decode(raw)
        except HpackError:
            pass


# -- connection ----------------------------------------------------------------------------------

@pytest.mark.parametrize("split", [None, 1, 2, 7, 9, 10])
def test_streams_become_exchanges(split: int | None) -> None:
    out, stats, _ = run(simple_script(), split=split)
    by = {e.stream_id: e for e in out}
    assert sorted(by) == [1, 3]
    a, b = by[1], by[3]
    assert (a.protocol, a.method, a.target, a.authority, a.scheme, a.status) == (
        "http/2", "GET", "/a", "svc:8080", "http", 200)
    assert extract(a.request.headers).trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert (a.request.first_ts, a.request.last_ts) == (3000, 3000)
    assert (a.response.first_ts, a.response.last_ts) == (7000, 8000)
    assert a.response.body_bytes == 5 and a.response.complete and not a.flags
    assert (b.method, b.status, b.request.body_bytes, b.response.body_bytes) == (
        "POST", 201, 8, 7)
    assert (b.request.first_ts, b.request.last_ts) == (4000, 5000)
    assert (b.response.first_ts, b.response.last_ts) == (6000, 9000)
    assert ("content-type", "application/json") in b.request.headers
    assert not any(k.startswith(":") for k, _ in b.request.headers)
    assert stats.get("http2", "streams") == 2
    assert [e.stream_id for e in out] == [1, 3]  # in the order their responses ended


def test_continuation_padding_priority_and_trailers() -> None:
    c, s = Peer(), Peer()
    block = c.block(req_headers("/long", extra=[(f"x-h{i}", "v" * 30) for i in range(20)]))
    h = HeadersFrame(1, data=block[:50], pad_length=7)
    for f in ("PADDED", "PRIORITY", "END_STREAM"):
        h.flags.add(f)
    h.depends_on, h.stream_weight = 0, 16
    c1 = ContinuationFrame(1, data=block[50:200]).serialize()
    c2 = ContinuationFrame(1, data=block[200:])
    c2.flags.add("END_HEADERS")
    trailers = HeadersFrame(1, data=s.block([("grpc-status", "0"), ("x-t", "1")]))
    trailers.flags.add("END_HEADERS")
    trailers.flags.add("END_STREAM")
    script = [(C, PREFACE + h.serialize()), (C, c1), (C, c2.serialize()),
              (S, s.headers(1, [(":status", "200")])),
              (S, data(1, b"x" * 10, pad_length=5)), (S, trailers.serialize())]
    for split in (None, 3):
        (ex,), stats, _ = run(script, split=split)
        assert ex.target == "/long" and len(ex.request.headers) == 20
        assert ex.request.first_ts == 1000 and ex.request.last_ts == 3000
        assert ex.response.body_bytes == 10
        assert ex.response.trailers == [("grpc-status", "0"), ("x-t", "1")]
        assert ex.response.last_ts == 6000 and not ex.flags


def test_grpc_trailers_only_and_status() -> None:
    c, s = Peer(), Peer()
    grpc = [("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "5S")]
    script = [
        (C, PREFACE + c.headers(1, req_headers("/pkg.Echo/Say", "POST", grpc))),
        (C, data(1, b"\x00\x00\x00\x00\x02hi", end_stream=True)),
        (S, s.headers(1, [(":status", "200"), ("content-type", "application/grpc"),
                          ("grpc-status", "5"), ("grpc-message", "no%20such%20thing")],
                      end_stream=True)),
    ]
    (ex,), _, _ = run(script)
    assert ex.is_grpc and ex.grpc_status == 5 and ex.grpc_message == "no such thing"


def test_interim_response_reset_and_push_promise() -> None:
    c, s = Peer(), Peer()
    pp = PushPromiseFrame(1, promised_stream_id=2, data=s.block(req_headers("/style.css")))
    pp.flags.add("END_HEADERS")
    script = [
        (C, PREFACE + c.headers(1, req_headers("/"), end_stream=True)),
        (C, c.headers(3, req_headers("/slow"), end_stream=True)),
        (S, s.headers(1, [(":status", "103"), ("link", "</style.css>")])),
        (S, pp.serialize()),
        (S, s.headers(1, [(":status", "200")]) + data(1, b"page", end_stream=True)),
        (C, RstStreamFrame(3, error_code=8).serialize()),
        (S, s.headers(2, [(":status", "200")]) + data(2, b"css", end_stream=True)),
        (S, GoAwayFrame(0, last_stream_id=3).serialize()),
    ]
    out, stats, _ = run(script, split=4)
    by = {e.stream_id: e for e in out}
    assert by[1].status == 200 and "interim_103" in by[1].flags
    assert "reset" in by[3].flags and by[3].response is None
    assert by[2].target == "/style.css" and "pushed" in by[2].flags and by[2].status == 200
    assert stats.get("http2", "push_promise") == 1 and stats.get("http2", "goaway") == 1


def test_many_interleaved_streams() -> None:
    c, s = Peer(), Peer()
    script: list = [(C, PREFACE)]
    for sid in range(1, 400, 2):
        script.append((C, c.headers(sid, req_headers(f"/i/{sid}"), end_stream=True)))
    for sid in reversed(range(1, 400, 2)):
        script.append((S, s.headers(sid, [(":status", "200")]) + data(sid, b"ok")))
    for sid in range(1, 400, 2):
        script.append((S, data(sid, b"", end_stream=True)))
    out, _, h = run(script)
    assert len(out) == 200 and not h.streams
    assert all(e.target == f"/i/{e.stream_id}" and e.status == 200 and not e.flags
               for e in out)


def test_connection_end_flags_open_streams() -> None:
    c = Peer()
    script = [(C, PREFACE + c.headers(1, req_headers("/never"), end_stream=True))]
    (ex,), _, _ = run(script, end="rst")
    assert {"no_response", "reset"} <= ex.flags


def test_settings_header_table_size_reaches_the_other_direction() -> None:
    c, s = Peer(), Peer()
    script = [(C, PREFACE + settings_frame(HEADER_TABLE_SIZE=256, MAX_FRAME_SIZE=32768)),
              (S, s.headers(1, [(":status", "200")]))]
    _, _, h = run(script)
    assert h.server_side.decoder.limit == 256 and h.server_side.max_frame == 32768


# -- bad input -----------------------------------------------------------------------------------

def test_frame_size_bomb_breaks_the_connection_only() -> None:
    bomb = (5 << 20).to_bytes(3, "big") + bytes([1, 4]) + (1).to_bytes(4, "big")
    script = [(C, PREFACE + bomb + b"\x00" * 100)]
    out, stats, h = run(script)
    assert stats.get("http2", "broken_frame_too_large") == 1 and h.is_broken and not out


def test_continuation_bomb_and_hpack_garbage() -> None:
    c = Peer()
    h = HeadersFrame(1, data=c.block(req_headers("/")))
    script = [(C, PREFACE + h.serialize())]
    script += [(C, ContinuationFrame(1, data=b"\x00" * 16000).serialize())] * 20
    _, stats, _ = run(script)
    assert stats.get("http2", "broken_header_block_too_large") == 1
    bad = HeadersFrame(1, data=b"\xff\xff\xff\xff\xff\xff\x7f")
    bad.flags.add("END_HEADERS")
    _, stats, _ = run([(C, PREFACE + bad.serialize())])
    assert stats.get("http2", "broken_hpack_error") == 1


@given(st.lists(st.tuples(st.sampled_from([C, S]), st.binary(max_size=80)), max_size=12),
       st.booleans())
@settings(max_examples=200, deadline=None)
def test_garbage_never_raises(script: list, mid: bool) -> None:
    run([(C, PREFACE)] + script, mid_stream=mid)
    run(script, mid_stream=mid)


# -- mid-stream joins ----------------------------------------------------------------------------

def test_find_frame_start_skips_a_cut_frame() -> None:
    s = Peer()
    frames = s.headers(5, [(":status", "200")]) + data(5, b"x" * 40) + data(5, b"", True)
    cut = data(3, b"y" * 300)[150:]  # the tail of a DATA payload the capture joined in
    assert find_frame_start(cut + frames) == (len(cut), True)
    assert find_frame_start(b"\x00\x00") == (-1, False)


@pytest.mark.parametrize("split", [None, 5])
def test_mid_stream_join_decodes_what_the_table_allows(split: int | None) -> None:
    c, s = Peer(), Peer()
    old = [("x-session", "s-123"), ("user-agent", "grpc-python/1.0")]
    before = [(C, PREFACE + c.headers(1, req_headers("/x", extra=old), end_stream=True)),
              (S, s.headers(1, [(":status", "200"), ("server", "srv")], end_stream=True)),
              (C, c.headers(3, req_headers("/y", extra=old)))]  # its END_STREAM is later
    after = [
        (C, data(3, b"z" * 20)[7:]),  # join inside a DATA frame
        (C, data(3, b"", end_stream=True)),
        (C, c.headers(5, req_headers("/z", extra=[("traceparent", TP)] + old, authority="b:9"),
                      True)),
        (S, s.headers(3, [(":status", "200"), ("server", "srv")], end_stream=True)),
        (S, s.headers(5, [(":status", "404")], end_stream=True)),
        (C, c.headers(7, req_headers("/z", extra=[("traceparent", TP)], authority="b:9"), True)),
        (S, s.headers(7, [(":status", "200")], end_stream=True)),
    ]
    run(before)  # (the encoders' state now includes the part the observer missed)
    out, stats, _ = run(after, split=split, mid_stream=True)
    by = {e.stream_id: e for e in out}
    assert sorted(by) == [3, 5, 7]
    assert "no_request" in by[3].flags and by[3].status == 200
    z = by[5]
    assert (z.method, z.target, z.authority, z.status) == ("GET", "/z", "b:9", 404)
    assert extract(z.request.headers).trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert "partial_headers" in z.flags  # x-session / user-agent were indexed before the join
    assert ("x-session", "s-123") not in z.request.headers
    # stream 7 repeats only what was inserted after the join: fully resolved
    assert by[7].target == "/z" and "partial_headers" not in by[7].flags
    assert extract(by[7].request.headers).span_id == "00f067aa0ba902b7"
    assert stats.get("http2", "resync") == 2


def test_mid_stream_join_through_the_pipeline(tmp_path) -> None:
    """No handshake, no preface: detection finds the frame chain, roles from the ports."""
    c, s = Peer(), Peer()
    c.block(req_headers("/warm", extra=[("x-a", "1")]))  # missed by the capture
    conv = Conv(cli=("10.0.0.1", 41000), srv=("10.0.0.2", 50051))
    conv.c(c.headers(9, req_headers("/pkg.Svc/M", "POST",
                                    [("content-type", "application/grpc"),
                                     ("traceparent", TP)])))
    conv.c(data(9, b"\x00\x00\x00\x00\x01a", end_stream=True) + PingFrame(0).serialize())
    conv.s(s.headers(9, [(":status", "200"), ("content-type", "application/grpc")]))
    conv.s(data(9, b"\x00\x00\x00\x00\x01b") + WindowUpdateFrame(0, window_increment=5)
           .serialize())
    conv.s(s.headers(9, [("grpc-status", "0")], end_stream=True))
    path = write_pcap(tmp_path / "mid.pcap", conv.l2())
    out: list = []
    summary = run_replay([str(path)], on_exchange=out.append)
    d = summary.to_dict()
    assert d["exchanges"] == {"http/2": 1} and d["grpc_calls"] == 1
    (ex,) = out
    assert (ex.method, ex.target, ex.grpc_status, ex.stream_id) == ("POST", "/pkg.Svc/M", 0, 9)
    assert d["http2"]["mid_stream_joins"] == 1


def test_h2c_upgrade_through_the_pipeline(tmp_path) -> None:
    s = Peer()
    settings_b64 = base64.urlsafe_b64encode(
        settings_frame(HEADER_TABLE_SIZE=1024)[9:]).decode().rstrip("=")
    conv = Conv().handshake()
    conv.c(b"GET /up HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade, HTTP2-Settings\r\n"
           b"Upgrade: h2c\r\nHTTP2-Settings: " + settings_b64.encode() +
           b"\r\ntraceparent: " + TP.encode() + b"\r\n\r\n")
    conv.s(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
           + settings_frame(MAX_CONCURRENT_STREAMS=10))
    conv.c(PREFACE + settings_frame())
    conv.s(s.headers(1, [(":status", "200"), ("content-length", "2")]) +
           data(1, b"ok", end_stream=True))
    c2 = Peer()
    conv.c(c2.headers(3, req_headers("/second"), end_stream=True))
    conv.s(s.headers(3, [(":status", "204")], end_stream=True))
    conv.close()
    path = write_pcap(tmp_path / "up.pcap", conv.l2())
    out: list = []
    d = run_replay([str(path)], on_exchange=out.append).to_dict()
    assert d["exchanges"] == {"http/2": 2}, d
    by = {e.stream_id: e for e in out}
    up = by[1]
    assert (up.method, up.target, up.status, up.response.body_bytes) == ("GET", "/up", 200, 2)
    assert "h2c_upgrade" in up.flags and extract(up.request.headers).format == "w3c"
    assert by[3].status == 204 and by[3].target == "/second"


@given(st.binary(max_size=60), st.binary(max_size=12))
@settings(max_examples=300, deadline=None)
def test_byte_huffman_decoder_equals_hpacks(data: bytes, garbage: bytes) -> None:
    """Our byte-at-a-time Huffman table against the h2 project's nibble machine: the same
    output for every encoded string, the same verdict on arbitrary bytes."""
    from hpack.huffman import HuffmanEncoder
    from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
    from hpack.huffman_table import decode_huffman

    from sniffer.proto.hpack_decode import huffman_decode

    encoded = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode(data)
    assert huffman_decode(encoded) == data
    try:
        theirs: bytes | None = decode_huffman(garbage)
    except Exception:  # noqa: BLE001 - hpack's HPACKDecodingError
        theirs = None
    try:
        ours: bytes | None = huffman_decode(garbage)
    except HpackError:
        ours = None
    assert ours == theirs
