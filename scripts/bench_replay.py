#!/usr/bin/env python3
"""Benchmark the replay engine against the bare read loop and tshark, in one run.

Usage: python scripts/bench_replay.py [CAPTURE] [--repeat N] [--no-tshark] [--json]

Each mode runs in its own child process (so peak RSS is per mode), N times; the median wall
time is reported with packets/s and the ratio to the bare read loop, measured in the same go:
  read     our pcap/pcapng reader, iterating records only (the floor)
  decode   + link/IP/TCP decoding of every packet
  reassemble  + TCP flow table and reassembly, bytes delivered to a consumer that counts them
  tshark   `tshark -r FILE -Y 'http.request or http2.type==1' -T fields ...` (the README's
           reference command), for an outside yardstick
RSS is sampled every 65,536 packets in the reassemble mode to show it does not grow with the
length of the file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT = os.path.join(ROOT, "..", "shared", "bench", "bench.pcap")


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class _Counter:
    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def data(self, chunk: bytes, ts: int) -> None:
        self.n += len(chunk)

    def gap(self, length: int, ts: int) -> None:
        pass

    def end(self, reason: str, ts: int) -> None:
        pass


def child(mode: str, path: str) -> dict:
    sys.path.insert(0, ROOT)
    from sniffer.capture import merge, open_capture
    from sniffer.decode import Decoder
    from sniffer.pipeline import Engine
    from sniffer.stats import Stats

    stats = Stats()
    cap = open_capture(path, stats)
    t0 = time.perf_counter()
    out: dict = {"mode": mode}
    if mode == "read":
        n = 0
        for _rec in merge([cap], stats):
            n += 1
    elif mode == "decode":
        dec = Decoder(stats).decode
        n = 0
        for ts, point, buf, wl in merge([cap], stats):
            n += 1
            dec(ts, point.linktype, buf, wl)
    else:
        counters: list[_Counter] = []

        def factory(conn: object) -> tuple[_Counter, _Counter]:
            a, b = _Counter(), _Counter()
            counters.extend((a, b))
            return a, b

        eng = Engine(stats, factory)
        samples: list[int] = []
        eng.run(merge([cap], stats), progress=lambda p, b: samples.append(_rss_kb()))
        eng.finish()
        n = eng.packets
        out["rss_samples_kb"] = samples
        out["delivered_bytes"] = sum(c.n for c in counters)
        out["flows"] = stats.get("tcp", "connections")
    out["wall_s"] = time.perf_counter() - t0
    out["packets"] = n
    return out


def run_child(mode: str, path: str) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", mode, path], capture_output=True,
                       text=True, check=True)
    res = json.loads(r.stdout)
    res["maxrss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return res


def run_tshark(path: str) -> float:
    cmd = ["tshark", "-r", path, "-Y", "http.request or http2.type==1", "-T", "fields",
           "-e", "frame.time_epoch", "-e", "http.request.method", "-e", "http2.header.value"]
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("capture", nargs="?", default=DEFAULT)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-tshark", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(*a.child)))
        return 0
    if not os.path.exists(a.capture):
        print(f"bench_replay: {a.capture}: not found", file=sys.stderr)
        return 1
    modes = ("read", "decode", "reassemble")
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    ratios: dict[str, list[float]] = {m: [] for m in modes}
    # Rounds interleave the modes, and each round's ratios are taken within the round, so
    # drift in machine speed (shared, noisy VMs) cancels out of the ratios.
    for _ in range(a.repeat):
        rnd = {m: run_child(m, a.capture) for m in modes}
        for m in modes:
            runs[m].append(rnd[m])
            ratios[m].append(rnd["read"]["wall_s"] / rnd[m]["wall_s"])
    results: dict[str, dict] = {}
    for mode in modes:
        wall = statistics.median(r["wall_s"] for r in runs[mode])
        res = dict(runs[mode][-1])
        res["wall_s"] = wall
        res["packets_per_s"] = res["packets"] / wall
        res["ratio_to_read"] = statistics.median(ratios[mode])
        results[mode] = res
    # Peak RSS per mode: one more run each, measured with /usr/bin/time-like wait4.
    for mode in results:
        proc = subprocess.Popen([sys.executable, __file__, "--child", mode, a.capture],
                                stdout=subprocess.DEVNULL)
        _pid, _st, ru = os.wait4(proc.pid, 0)
        results[mode]["maxrss_mb"] = ru.ru_maxrss / 1024
    if not a.no_tshark and shutil.which("tshark"):
        t = run_tshark(a.capture)
        results["tshark"] = {"wall_s": t, "packets": results["read"]["packets"],
                             "packets_per_s": results["read"]["packets"] / t}
    if "tshark" in results:  # one run, so its ratio is against the median read
        results["tshark"]["ratio_to_read"] = (results["tshark"]["packets_per_s"]
                                              / results["read"]["packets_per_s"])
    if a.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"capture: {a.capture} ({results['read']['packets']:,} packets), "
          f"median of {a.repeat} interleaved rounds; vs read = median of per-round ratios")
    print(f"{'mode':<12}{'wall s':>9}{'packets/s':>12}{'vs read':>9}{'peak RSS MB':>13}")
    for mode, r in results.items():
        rss = f"{r['maxrss_mb']:.0f}" if "maxrss_mb" in r else "-"
        print(f"{mode:<12}{r['wall_s']:>9.2f}{r['packets_per_s']:>12,.0f}"
              f"{r['ratio_to_read']:>8.0%}{rss:>13}")
    samples = results["reassemble"].get("rss_samples_kb", [])
    if samples:
        q = [samples[int(len(samples) * f) - 1] for f in (0.25, 0.5, 0.75, 1.0)]
        print("reassemble RSS at 25/50/75/100% of the file (MB): "
              + " / ".join(f"{x / 1024:.0f}" for x in q))
    return 0


if __name__ == "__main__":
    sys.exit(main())
