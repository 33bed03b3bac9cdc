#!/usr/bin/env python3
"""Benchmark replay with protocol detection and HTTP/1 parsing against tshark, in one run.

Usage: python scripts/bench_http1.py [CAPTURE] [--repeat N] [--no-tshark] [--profile]

Modes (each in a child process, interleaved rounds, median wall time):
  read        our reader's bare loop (the floor)
  exchanges   the full replay pipeline: decode, reassembly, detection, HTTP/1 exchanges
  spans       the same, building and encoding OTLP/JSON spans for every exchange (--spans all)
  tshark      `tshark -r FILE -Y 'http.request or http2.type==1' -T fields ...`
Reports packets/s and HTTP/1 exchanges/s, and ratios against tshark. --profile prints the
top functions of one 'exchanges' run (cProfile), to show where the time goes.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT = os.path.join(ROOT, "..", "shared", "bench", "bench.pcap")


def child(mode: str, path: str) -> dict:
    sys.path.insert(0, ROOT)
    from sniffer.capture import open_capture
    from sniffer.pipeline import run_replay
    from sniffer.stats import Stats

    t0 = time.perf_counter()
    if mode == "read":
        n = sum(1 for _ in open_capture(path, Stats()))
        return {"wall_s": time.perf_counter() - t0, "packets": n, "exchanges": 0}
    on_ex = None
    written = 0
    if mode == "spans":
        from exporter.otlp_json import OtlpJsonWriter, default_resource
        from exporter.spans import SpanBuilder

        writer = OtlpJsonWriter(io.StringIO(), default_resource("bench"))
        build = SpanBuilder("all")

        def on_ex(ex: object) -> None:
            s = build(ex)  # type: ignore[arg-type]
            if s is not None:
                writer.add(s)
                if len(writer.pending) == 0:
                    writer.out.seek(0)
                    writer.out.truncate()
    s = run_replay([path], on_exchange=on_ex)
    d = s.to_dict()
    if mode == "spans":
        writer.flush()
        written = writer.written
    return {"wall_s": time.perf_counter() - t0, "packets": d["packets"],
            "exchanges": d["exchanges"].get("http/1.1", 0) + d["exchanges"].get("http/1.0", 0),
            "spans": written}


def run_child(mode: str, path: str) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", mode, path], capture_output=True,
                       text=True, check=True)
    return json.loads(r.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("capture", nargs="?", default=DEFAULT)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-tshark", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(*a.child)))
        return 0
    modes = ("read", "exchanges", "spans")
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for _ in range(a.repeat):
        for m in modes:
            runs[m].append(run_child(m, a.capture))
    res = {m: dict(runs[m][-1], wall_s=statistics.median(r["wall_s"] for r in runs[m]))
           for m in modes}
    if not a.no_tshark:
        t0 = time.perf_counter()
        subprocess.run(["tshark", "-r", a.capture, "-Y", "http.request or http2.type==1",
                        "-T", "fields", "-e", "frame.time_epoch", "-e", "http.request.method",
                        "-e", "http2.header.value"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
        res["tshark"] = {"wall_s": time.perf_counter() - t0, "packets": res["read"]["packets"],
                         "exchanges": 0}
    print(f"capture: {a.capture}; median of {a.repeat} interleaved rounds")
    print(f"{'mode':<11}{'wall s':>8}{'packets/s':>12}{'HTTP/1 ex/s':>13}{'x tshark':>10}")
    for m, r in res.items():
        pps = r["packets"] / r["wall_s"]
        exs = r["exchanges"] / r["wall_s"] if r["exchanges"] else 0
        speed = f"{res['tshark']['wall_s'] / r['wall_s']:.1f}x" if "tshark" in res else "-"
        print(f"{m:<11}{r['wall_s']:>8.2f}{pps:>12,.0f}{exs:>13,.0f}{speed:>10}")
    print(f"HTTP/1 exchanges: {res['exchanges']['exchanges']:,}; "
          f"spans encoded: {res['spans'].get('spans', 0):,}")
    if a.profile:
        import cProfile
        import pstats

        sys.path.insert(0, ROOT)
        from sniffer.pipeline import run_replay

        prof = cProfile.Profile()
        prof.runcall(run_replay, [a.capture])
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)
    return 0


if __name__ == "__main__":
    sys.exit(main())
