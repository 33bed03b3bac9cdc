#!/usr/bin/env python3
"""The whole pipeline on bench.pcap against tshark, in one run: wall time and peak RSS.

Usage: python scripts/bench_pipeline.py [CAPTURE] [--rounds N] [--no-tshark] [--one-process]

Each mode is a separate process, timed by wall clock with its peak memory (the child's
peak RSS, or its process tree's sampled PSS sum when larger), interleaved over --rounds rounds;
the median is reported, with ratios to tshark:
  summary     wirespan replay --json (decode, reassembly, HTTP/1, HTTP/2, TLS, correlation)
  spans       wirespan replay --spans all -o FILE (every exchange and hop becomes a span)
  proxy       wirespan replay -o FILE (default: proxy spans + traced exchanges)
  *-j1        the same with --jobs 1 (--one-process): everything in one process; the
              default (auto) parses bench.pcap in a second process on a machine with 2+ CPUs
  tshark      tshark -r FILE -Y 'http.request or http2.type==1' -T fields
              -e frame.time_epoch -e http.request.method -e http2.header.value
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT = os.path.join(ROOT, "..", "shared", "bench", "bench.pcap")
WIRESPAN = [sys.executable, "-m", "sniffer"]


def _tree_rss_kb(pid: int) -> int:
    """Memory of ``pid`` and all its descendants (``--jobs 2`` has a parsing child, forked:
    the pages they share are counted once, as the proportional set size does)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return total


def run_child(cmd: list[str]) -> tuple[float, int, str]:
    """(wall s, peak memory in MB, its stdout). The peak is the larger of the child's own
    peak RSS (os.wait4 gives that child's rusage, not its children's) and the proportional
    set size of its process tree sampled every 20 ms (with --jobs 2: both processes)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], _tree_rss_kb(p.pid))

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    chunks = []
    assert p.stdout is not None
    for chunk in iter(lambda: p.stdout.read(1 << 16), b""):
        chunks.append(chunk)
    _, _status, ru = os.wait4(p.pid, 0)
    done.set()
    th.join()
    p.returncode = 0
    return (time.perf_counter() - t0, max(ru.ru_maxrss, peak[0]) // 1024,
            b"".join(chunks).decode(errors="replace"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("capture", nargs="?", default=DEFAULT)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-tshark", action="store_true")
    ap.add_argument("--one-process", action="store_true",
                    help="also run each mode with --jobs 1 (the default is auto: 2 processes "
                         "for this file on a machine with several CPUs)")
    a = ap.parse_args()
    cap = os.path.abspath(a.capture)
    tmp = tempfile.mkdtemp(prefix="wirespan-bench-")
    modes = {
        "summary": WIRESPAN + ["replay", "--json", "--no-progress", cap],
        "spans": WIRESPAN + ["replay", "--json", "--no-progress", "--spans", "all", "-o",
                             os.path.join(tmp, "all.jsonl"), cap],
        "proxy": WIRESPAN + ["replay", "--json", "--no-progress", "-o",
                             os.path.join(tmp, "traced.jsonl"), cap],
    }
    if a.one_process:
        for m in list(modes):
            modes[m + "-j1"] = modes[m][:4] + ["--jobs", "1"] + modes[m][4:]
    if not a.no_tshark:
        modes["tshark"] = ["tshark", "-r", cap, "-Y", "http.request or http2.type==1", "-T",
                           "fields", "-e", "frame.time_epoch", "-e", "http.request.method",
                           "-e", "http2.header.value"]
    res: dict[str, list[tuple[float, int]]] = {m: [] for m in modes}
    info: dict[str, dict] = {}
    for _ in range(a.rounds):
        for m, cmd in modes.items():
            wall, rss, out = run_child(cmd)
            res[m].append((wall, rss))
            if m != "tshark":
                info[m] = json.loads(out.strip().splitlines()[-1])
    packets = info["summary"]["packets"]
    ts = statistics.median(w for w, _ in res["tshark"]) if "tshark" in res else None
    print(f"capture: {cap}: {packets:,} packets; median of {a.rounds} interleaved rounds")
    print(f"{'mode':<11}{'wall s':>8}{'packets/s':>12}{'peak MB':>9}{'x tshark':>10}"
          f"{'spans':>10}")
    for m in modes:
        wall = statistics.median(w for w, _ in res[m])
        rss = max(r for _, r in res[m])
        spans = info.get(m, {}).get("spans_written", "")
        speed = f"{ts / wall:.1f}x" if ts else "-"
        print(f"{m:<11}{wall:>8.2f}{packets / wall:>12,.0f}{rss:>9}{speed:>10}"
              f"{spans if spans == '' else format(spans, ','):>10}")
    ex = info["summary"]["exchanges"]
    print(f"exchanges: {ex}; grpc calls {info['summary']['grpc_calls']:,}; proxies: "
          + ", ".join(f"{p['address']} {p['requests']:,}" for p in info["summary"]["proxies"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
