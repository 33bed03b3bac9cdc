"""Property tests: whatever the segmentation, order and duplication of a stream's segments,
the reassembler delivers exactly the original bytes, once, in order - across 2^32 too."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import Rec, Recorder
from sniffer.decode import ACK, FIN, PSH, SYN
from sniffer.stats import Stats
from sniffer.tcp import FlowTable, TcpConfig

A, B = b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02"
MASK = 0xFFFFFFFF


def seg(src: bytes, sport: int, dst: bytes, dport: int, seq: int, ack: int, flags: int,
        payload: bytes = b"") -> tuple:
    return (src, sport, dst, dport, seq & MASK, ack & MASK, flags, payload, 0, b"")


@st.composite
def scenario(draw: st.DrawFn) -> tuple[bytes, int, list[tuple[int, bytes]]]:
    data = draw(st.binary(min_size=1, max_size=3000))
    isn = draw(st.one_of(st.integers(0, MASK), st.integers(MASK - 3000, MASK)))
    cuts = sorted(set(draw(st.lists(st.integers(1, len(data)), max_size=30))) | {len(data)})
    pieces, start = [], 0
    for c in cuts:
        pieces.append((start, data[start:c]))
        start = c
    # overlapping re-sends of random ranges (same bytes: a real retransmission)
    for _ in range(draw(st.integers(0, 5))):
        a = draw(st.integers(0, len(data) - 1))
        b = draw(st.integers(a + 1, len(data)))
        pieces.append((a, data[a:b]))
    order = draw(st.permutations(pieces))
    return data, isn, list(order)


def run(data: bytes, isn: int, pieces: list[tuple[int, bytes]], handshake: bool,
        step: int = 1000) -> tuple[Rec, FlowTable]:
    rec = Recorder()
    table = FlowTable(Stats(), rec, TcpConfig())
    ts = 1_000_000_000
    if handshake:
        table.feed(ts, "p", seg(A, 1000, B, 80, isn, 0, SYN))
        table.feed(ts + 1, "p", seg(B, 80, A, 1000, 7, isn + 1, SYN | ACK))
    for off, chunk in pieces:
        ts += step
        table.feed(ts, "p", seg(A, 1000, B, 80, isn + 1 + off, 8, PSH | ACK, chunk))
    ts += step
    table.feed(ts, "p", seg(A, 1000, B, 80, isn + 1 + len(data), 8, FIN | ACK))
    table.close_all(ts + 1)
    [r] = rec.conns
    # roles may be inferred from the payload on a mid-stream join: take A's direction
    return (r.client if r.conn.client.src == A else r.server), table


@settings(max_examples=300, deadline=None)
@given(scenario())
def test_any_order_and_duplication_reassembles_exactly(sc) -> None:
    data, isn, pieces = sc
    rec, _ = run(data, isn, pieces, handshake=True)
    assert rec.gaps == []
    assert rec.stream == data
    assert rec.end_reason == "fin"


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=2000), st.integers(0, MASK), st.data())
def test_in_order_any_split_mid_stream(data: bytes, isn: int, d: st.DataObject) -> None:
    """A mid-stream join (no SYN) with the first segment seen first: exact, whatever the cuts."""
    cuts = sorted(set(d.draw(st.lists(st.integers(1, len(data)), max_size=20))) | {len(data)})
    pieces, start = [], 0
    for c in cuts:
        pieces.append((start, data[start:c]))
        start = c
    rec, _ = run(data, isn, pieces, handshake=False)
    assert rec.stream == data and rec.gaps == []


@settings(max_examples=150, deadline=None)
@given(scenario(), st.data())
def test_lost_pieces_become_gaps_that_add_up(sc, d: st.DataObject) -> None:
    """Drop some pieces: delivered bytes + gap bytes = the stream length, and every delivered
    byte is the original byte at its offset."""
    data, isn, pieces = sc
    keep = [p for p in pieces if d.draw(st.booleans()) or p[0] == 0]
    rec, _ = run(data, isn, keep, handshake=True)
    pos = 0
    for kind, v, _ts in rec.events:
        if kind == "data":
            assert v == data[pos : pos + len(v)]
            pos += len(v)
        elif kind == "gap":
            pos += v
    covered = set()
    for off, chunk in keep:
        covered.update(range(off, off + len(chunk)))
    # everything up to the last byte we kept is accounted for, data or gap
    assert pos == (max(covered) + 1 if covered else 0)
