#!/usr/bin/env python3
"""The engine and the protocol parsers alone (no correlation, no spans) on bench.pcap,
against tshark, in one run: what a live capture worker does per packet.

Usage: python scripts/bench_parse.py [CAPTURE] [--rounds N] [--no-tshark]

Each round runs, each in its own child process: ``parse`` (decode, reassembly, detection,
HTTP/1, HTTP/2 + HPACK, TLS, exchanges counted: ``Engine`` + ``Dispatcher`` as the fanout
workers run them, timed from the first record to the last exchange) and tshark (the README's
reference command, wall clock). Medians over interleaved rounds; the ratio is tshark / ours.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT = os.path.join(ROOT, "..", "shared", "bench", "bench.pcap")
TSHARK = ["tshark", "-Y", "http.request or http2.type==1", "-T", "fields", "-e",
          "frame.time_epoch", "-e", "http.request.method", "-e", "http2.header.value"]


def child(path: str) -> dict:
    sys.path.insert(0, ROOT)
    import gc

    from sniffer.capture import merge, open_capture
    from sniffer.pipeline import Engine, ExchangeCounter, TlsCounter, low_gc
    from sniffer.proto import Dispatcher
    from sniffer.stats import Stats

    stats = Stats()
    cap = open_capture(path, stats)
    counter = ExchangeCounter()
    engine = Engine(stats, Dispatcher(counter, stats, TlsCounter()))
    old = low_gc()  # as run_records runs
    t0 = time.perf_counter()
    engine.run(merge([cap], stats))
    engine.finish()
    wall = time.perf_counter() - t0
    gc.set_threshold(*old)
    return {"wall_s": wall, "packets": engine.packets,
            "exchanges": dict(sorted(counter.by_protocol.items()))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("capture", nargs="?", default=DEFAULT)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-tshark", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child)))
        return 0
    cap = os.path.abspath(a.capture)
    ours: list[float] = []
    theirs: list[float] = []
    info: dict = {}
    for _ in range(a.rounds):
        r = subprocess.run([sys.executable, __file__, "--child", cap], capture_output=True,
                           text=True, check=True)
        info = json.loads(r.stdout)
        ours.append(info["wall_s"])
        if not a.no_tshark:
            t0 = time.perf_counter()
            subprocess.run(TSHARK[:1] + ["-r", cap] + TSHARK[1:], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)
            theirs.append(time.perf_counter() - t0)
    wall = statistics.median(ours)
    print(f"capture: {cap}: {info['packets']:,} packets, exchanges {info['exchanges']}; "
          f"median of {a.rounds} interleaved rounds")
    print(f"parse   {wall:8.2f} s  {info['packets'] / wall:>10,.0f} packets/s")
    if theirs:
        ts = statistics.median(theirs)
        print(f"tshark  {ts:8.2f} s  {info['packets'] / ts:>10,.0f} packets/s"
              f"   (tshark / parse = {ts / wall:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
