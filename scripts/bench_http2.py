#!/usr/bin/env python3
"""HTTP/2 building blocks on bench.pcap: our framing against hyperframe's, our HPACK decoder
against hpack.Decoder, on exactly the same bytes and header blocks, in one run.

Usage: python scripts/bench_http2.py [CAPTURE] [--rounds N]

One untimed replay records the reassembled byte streams of every HTTP/2 connection (both
directions, in delivery order). Then, interleaved over --rounds rounds (median reported):
  frames-ours        sniffer.proto.http2 framing + streams + HPACK (the parser as it runs)
  frames-hyperframe  hyperframe.frame.Frame.parse_frame_header + parse_body per frame
                     (framing only: no streams, no HPACK)
  hpack-ours         sniffer.proto.hpack_decode.Decoder on every header block, in order
  hpack-h2           hpack.Decoder on the same blocks (both start from the preface, so
                     both can decode everything)
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT = os.path.join(ROOT, "..", "shared", "bench", "bench.pcap")
sys.path.insert(0, ROOT)

from sniffer.pipeline import run_replay  # noqa: E402
from sniffer.proto.http2 import PREFACE, Http2Connection  # noqa: E402
from sniffer.stats import Stats  # noqa: E402


class _Rec:
    def __init__(self) -> None:
        self.chunks: list[tuple[bytes, int]] = []

    def data(self, chunk: bytes, ts: int) -> None:
        self.chunks.append((chunk, ts))

    def gap(self, length: int, ts: int) -> None:
        pass

    def end(self, reason: str, ts: int) -> None:
        pass


def record(path: str) -> list[tuple[list, list]]:
    """[(client chunks, server chunks)] of each connection whose client starts with the
    preface; the chunks are interleaved later in timestamp order."""
    conns: list[tuple[_Rec, _Rec]] = []

    def factory(conn):
        pair = (_Rec(), _Rec())
        conns.append(pair)
        return pair

    run_replay([path], factory=factory)
    out = []
    for c, s in conns:
        if c.chunks and c.chunks[0][0].startswith(PREFACE[:14]):
            out.append((c.chunks, s.chunks))
    return out


def ours(conns) -> int:
    n = 0
    for c, s in conns:
        got = [0]

        def count(ex, got=got) -> None:
            got[0] += 1

        h = Http2Connection(None, count, Stats(), "bench", (b"\0" * 4, 1), (b"\0" * 4, 2), 1)
        events = sorted([(ts, 0, ch) for ch, ts in c] + [(ts, 1, ch) for ch, ts in s],
                        key=lambda e: e[0])
        for ts, who, ch in events:
            (h.server_side if who else h.client_side).data(ch, ts)
        h.client_side.end("capture_end", 0)
        h.server_side.end("capture_end", 0)
        n += got[0]
    return n


def hyperframe_frames(conns) -> int:
    from hyperframe.frame import Frame

    n = 0
    for c, s in conns:
        for chunks in (c, s):
            data = b"".join(ch for ch, _ in chunks)
            pos = 24 if data.startswith(PREFACE) else 0
            mv = memoryview(data)
            while pos + 9 <= len(data):
                frame, length = Frame.parse_frame_header(mv[pos:pos + 9])
                if pos + 9 + length > len(data):
                    break
                frame.parse_body(mv[pos + 9:pos + 9 + length])
                pos += 9 + length
                n += 1
    return n


def header_blocks(conns) -> list[list[bytes]]:
    """Per direction, its header blocks in order (single-frame HEADERS, as bench has)."""
    out = []
    for c, s in conns:
        for chunks in (c, s):
            data = b"".join(ch for ch, _ in chunks)
            pos = 24 if data.startswith(PREFACE) else 0
            blocks = []
            while pos + 9 <= len(data):
                length = int.from_bytes(data[pos:pos + 3], "big")
                ftype, flags = data[pos + 3], data[pos + 4]
                payload = data[pos + 9:pos + 9 + length]
                if ftype == 1:
                    p, end = 0, len(payload)
                    if flags & 0x8:
                        end -= payload[0]
                        p = 1
                    if flags & 0x20:
                        p += 5
                    blocks.append(payload[p:end])
                pos += 9 + length
            out.append(blocks)
    return out


def hpack_ours(blocks) -> int:
    from sniffer.proto.hpack_decode import Decoder

    n = 0
    for bl in blocks:
        d = Decoder()
        for b in bl:
            n += len(d.decode(b)[0])
    return n


def hpack_h2(blocks) -> int:
    from hpack import Decoder

    n = 0
    for bl in blocks:
        d = Decoder()
        d.max_allowed_table_size = 1 << 20
        for b in bl:
            n += len(d.decode(b, raw=True))
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("capture", nargs="?", default=DEFAULT)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    gc.set_threshold(100_000, 50, 100)  # as sniffer.pipeline runs (the recording is large)
    conns = record(a.capture)
    blocks = header_blocks(conns)
    print(f"{len(conns)} HTTP/2 connections, {sum(map(len, blocks)):,} header blocks")
    fns = {"frames-ours": (ours, conns), "frames-hyperframe": (hyperframe_frames, conns),
           "hpack-ours": (hpack_ours, blocks), "hpack-h2": (hpack_h2, blocks)}
    times: dict[str, list[float]] = {k: [] for k in fns}
    counts: dict[str, int] = {}
    for _ in range(a.rounds):
        for name, (fn, arg) in fns.items():
            t0 = time.perf_counter()
            counts[name] = fn(arg)
            times[name].append(time.perf_counter() - t0)
    print(f"{'what':<19}{'median s':>9}{'count':>12}  (count: streams / frames / fields)")
    for name in fns:
        print(f"{name:<19}{statistics.median(times[name]):>9.2f}{counts[name]:>12,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
