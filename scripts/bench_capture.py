#!/usr/bin/env python3
"""Live capture throughput and passiveness, measured on a veth in namespaces of our own.

Usage (root): python scripts/bench_capture.py [--pcap FILE] [--rates 50000,100000,...]
                  [--workers 1,2] [--limit N] [--no-latency] [--json OUT]

1. Rate: two namespaces joined by a veth pair; ``tcpreplay`` replays the capture (default
   ../shared/bench/bench.pcap: HTTP/1.1, h2c and gRPC through proxies) into one end at each
   rate in turn, and on the other end either ``wirespan capture --workers W`` (the whole
   pipeline: decode, reassembly, HTTP/1 and HTTP/2 parsing, correlation) or the reference,
   ``tcpdump -w /dev/null``, listens. A run is clean when the kernel dropped nothing
   (``PACKET_STATISTICS``: wirespan's summary, tcpdump's "dropped by kernel") and every
   packet arrived. The result is the highest clean rate of each, as the rate tcpreplay
   actually achieved.
   The replayed frames carry bench.pcap's loopback addresses and zero MACs: the receiving
   namespace's stack drops them (they are not for it), and nothing leaves the namespaces.
2. Latency: ``wrk`` in one namespace against nginx in the other, p50/p99 with nothing
   capturing, then with ``wirespan capture`` on the server's veth, alternated over rounds.
   Passive capture should make no difference beyond the noise between rounds.

The machine is shared and noisy: rates are reported next to tcpdump's, measured in the same
run, and latencies with and without capture in alternating rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_PCAP = ROOT.parent / "shared" / "bench" / "bench.pcap"
WIRESPAN = str(Path(sys.executable).parent / "wirespan")
TAG = f"wsb{os.getpid() % 100000}"
SRC, DST = f"{TAG}-src", f"{TAG}-dst"
IF_SRC, IF_DST = f"{TAG}s", f"{TAG}d"
SRC_IP, DST_IP = "10.97.0.1", "10.97.0.2"  # exist only inside the two namespaces


def sh(*cmd: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True,
                          timeout=timeout)


def ns(name: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", name, *cmd]


def setup() -> None:
    sh("ip", "netns", "add", SRC)
    sh("ip", "netns", "add", DST)
    sh("ip", "link", "add", IF_SRC, "netns", SRC, "type", "veth", "peer", "name", IF_DST,
       "netns", DST)
    for n, i, a in ((SRC, IF_SRC, SRC_IP), (DST, IF_DST, DST_IP)):
        sh("ip", "-n", n, "addr", "add", f"{a}/24", "dev", i)
        sh("ip", "-n", n, "link", "set", i, "up")
        sh("ip", "-n", n, "link", "set", "lo", "up")


def teardown() -> None:
    for n in (SRC, DST):
        pids = sh("ip", "netns", "pids", n, check=False).stdout.split()
        for p in pids:
            try:
                os.kill(int(p), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        sh("ip", "netns", "del", n, check=False)


def rx_packets() -> int:
    r = sh("ip", "-n", DST, "-s", "-j", "link", "show", IF_DST)
    return int(json.loads(r.stdout)[0]["stats64"]["rx"]["packets"])


LOOP = 1  # --loop: the capture replayed this many times per run (sustained, not a burst)


def replay(pcap: str, pps: int, limit: int) -> dict:
    rx0 = rx_packets()
    cmd = ["tcpreplay", "-i", IF_SRC, f"--pps={pps}", "--preload-pcap"]
    if LOOP > 1:
        cmd.append(f"--loop={LOOP}")
    if limit:
        cmd.append(f"--limit={limit}")
    r = subprocess.run(ns(SRC, *cmd, pcap), capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"tcpreplay failed: {r.stderr.strip() or r.stdout.strip()}")
    out = r.stdout
    sent = int(re.search(r"Actual: (\d+) packets", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"Rated: [\d.]+ Bps, [\d.]+ Mbps, ([\d.]+) pps", out)
    # what reached the receiving veth (the veth itself drops when the receive backlog is
    # full, before any packet socket sees the packet: not the capture's loss)
    return {"sent": sent, "received": rx_packets() - rx0,
            "achieved_pps": float(m.group(1)) if m else 0.0}


def wait_line(path: Path, text: str, proc: subprocess.Popen, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise SystemExit(f"listener exited: {path.read_text(errors='replace')}")
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {text!r} in {path}")


def run_wirespan(tmp: Path, pcap: str, pps: int, limit: int, workers: int) -> dict:
    err = tmp / "ws.err"
    out = tmp / "ws.out"
    with open(out, "wb") as o, open(err, "wb") as e:
        p = subprocess.Popen(ns(DST, WIRESPAN, "capture", "-i", IF_DST, "--json", "--no-status",
                                "--workers", str(workers)), stdout=o, stderr=e,
                             start_new_session=True)
    wait_line(err, "listening on", p)
    t0 = time.perf_counter()
    rep = replay(pcap, pps, limit)
    time.sleep(0.5)
    os.kill(p.pid, signal.SIGTERM)
    p.wait(300)
    wall = time.perf_counter() - t0
    d = json.loads(out.read_text().splitlines()[-1])
    return {**rep, "captured": d["packets"], "drops": d["kernel_drops"],
            "exchanges": sum(d["exchanges"].values()), "wall_s": round(wall, 2),
            "worker_packets": d.get("worker_packets")}


def run_tcpdump(tmp: Path, pcap: str, pps: int, limit: int) -> dict:
    err = tmp / "td.err"
    with open(err, "wb") as e:
        p = subprocess.Popen(ns(DST, "tcpdump", "-i", IF_DST, "-n", "-s", "0", "-w",
                                "/dev/null", "tcp"), stdout=subprocess.DEVNULL, stderr=e,
                             start_new_session=True)
    wait_line(err, "listening on", p)
    rep = replay(pcap, pps, limit)
    time.sleep(0.5)
    os.kill(p.pid, signal.SIGINT)
    p.wait(60)
    text = err.read_text(errors="replace")
    got = int(re.search(r"(\d+) packets captured", text).group(1))  # type: ignore[union-attr]
    drops = int(re.search(r"(\d+) packets dropped by kernel", text).group(1))  # type: ignore[union-attr]
    return {**rep, "captured": got, "drops": drops}


def clean(r: dict) -> bool:
    # (the veth also receives a few non-TCP packets of its own, e.g. IPv6 router
    # solicitations, which the TCP filter rightly keeps out)
    return r["drops"] == 0 and r["captured"] + 20 >= r["received"]


def rate_sweep(tmp: Path, pcap: str, rates: list[int], limit: int,
               workers: list[int]) -> dict:
    res: dict[str, list[dict]] = {}
    for pps in rates:
        row = {"tcpdump": run_tcpdump(tmp, pcap, pps, limit)}
        for w in workers:
            row[f"wirespan-{w}"] = run_wirespan(tmp, pcap, pps, limit, w)
        for k, v in row.items():
            res.setdefault(k, []).append({"pps": pps, **v, "clean": clean(v)})
            flag = "ok " if clean(v) else "DROP"
            print(f"  {pps:>8,} pps  {k:<12} {flag} achieved {v['achieved_pps']:>10,.0f} pps, "
                  f"captured {v['captured']:,}/{v['received']:,} received "
                  f"({v['sent']:,} sent), drops {v['drops']:,}"
                  + (f", exchanges {v['exchanges']:,}" if "exchanges" in v else ""),
                  flush=True)
    best = {}
    for k, runs in res.items():
        ok = [r["achieved_pps"] for r in runs if r["clean"]]
        best[k] = max(ok) if ok else 0.0
    return {"runs": res, "best_clean_pps": best}


# -- latency ------------------------------------------------------------------------------------

NGINX_CONF = """daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid;
error_log {d}/error.log warn; events {{ worker_connections 256; }}
http {{ access_log off; client_body_temp_path {d}/b; proxy_temp_path {d}/p;
  fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;
  server {{ listen {ip}:8080; location / {{ return 200 "hello\\n"; }} }} }}
"""


def wrk_latency(seconds: int, conns: int) -> dict:
    r = sh(*ns(SRC, "wrk", "-t", "2", "-c", str(conns), "-d", f"{seconds}s", "--latency",
               f"http://{DST_IP}:8080/"), timeout=seconds + 60)
    pct = {p: _to_us(v, u) for p, v, u in
           re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", r.stdout, re.M)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", r.stdout).group(1))  # type: ignore[union-attr]
    return {"p50_us": pct.get("50"), "p99_us": pct.get("99"), "rps": rps}


def _to_us(v: str, unit: str) -> float:
    return float(v) * {"us": 1, "ms": 1000, "s": 1_000_000}[unit]


def latency(tmp: Path, rounds: int, seconds: int, conns: int, workers: int) -> dict:
    d = tmp / "nginx"
    d.mkdir()
    (d / "nginx.conf").write_text(NGINX_CONF.format(d=d, ip=DST_IP))
    ng = subprocess.Popen(ns(DST, "nginx", "-p", str(d), "-c", str(d / "nginx.conf"), "-e",
                             str(d / "error.log")), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(0.5)
    out: dict[str, list[dict]] = {"without": [], "with": []}
    try:
        wrk_latency(2, conns)  # warm up
        for _ in range(rounds):
            out["without"].append(wrk_latency(seconds, conns))
            err = tmp / "lat.err"
            with open(err, "wb") as e:
                p = subprocess.Popen(ns(DST, WIRESPAN, "capture", "-i", IF_DST, "--no-status",
                                        "--json", "--workers", str(workers)),
                                     stdout=subprocess.DEVNULL, stderr=e,
                                     start_new_session=True)
            wait_line(err, "listening on", p)
            out["with"].append(wrk_latency(seconds, conns))
            os.kill(p.pid, signal.SIGTERM)
            p.wait(120)
    finally:
        ng.terminate()
        ng.wait(10)

    def med(k: str, f: str) -> float:
        return statistics.median(r[f] for r in out[k] if r[f] is not None)

    summary = {k: {f: med(k, f) for f in ("p50_us", "p99_us", "rps")} for k in out}
    return {"rounds": out, "median": summary}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pcap", default=str(DEFAULT_PCAP))
    ap.add_argument("--rates", default="25000,50000,100000,150000,200000,300000",
                    help="packets per second to try, comma-separated (default: %(default)s)")
    ap.add_argument("--workers", default="1,2", help="worker counts (default: %(default)s)")
    ap.add_argument("--limit", type=int, default=0,
                    help="packets replayed per run (default: the whole file)")
    ap.add_argument("--loop", type=int, default=1,
                    help="replay the capture this many times per run: runs much longer than "
                         "the rings (32 MiB per worker and interface) hold measure the "
                         "sustained rate, not the burst a ring absorbs (default: 1)")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--latency-rounds", type=int, default=3)
    ap.add_argument("--latency-seconds", type=int, default=5)
    ap.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_capture: needs root (network namespaces, AF_PACKET)", file=sys.stderr)
        return 2
    for tool in ("tcpreplay", "tcpdump", "ip") + (() if a.no_latency else ("wrk", "nginx")):
        if not shutil.which(tool):
            print(f"bench_capture: {tool} not found (scripts/setup installs it)",
                  file=sys.stderr)
            return 2
    if not os.path.exists(a.pcap):
        print(f"bench_capture: {a.pcap}: no such file", file=sys.stderr)
        return 2
    global LOOP
    LOOP = max(1, a.loop)
    rates = [int(x) for x in a.rates.split(",")]
    workers = [int(x) for x in a.workers.split(",")]
    result: dict = {"pcap": a.pcap, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="wsbench-") as t:
        tmp = Path(t)
        try:
            setup()
            print(f"rate sweep on a veth ({a.limit or 'all'} packets per run, replayed "
                  f"{LOOP}x):", flush=True)
            result["rate"] = rate_sweep(tmp, a.pcap, rates, a.limit, workers)
            if not a.no_latency:
                print("latency (wrk -c 16, median of rounds):", flush=True)
                result["latency"] = latency(tmp, a.latency_rounds, a.latency_seconds, 16,
                                            max(workers))
        finally:
            teardown()
    best = result["rate"]["best_clean_pps"]
    print("\nhighest rate with no kernel drop and every packet captured:")
    for k, v in best.items():
        ratio = f"  ({v / best['tcpdump']:.2f}x tcpdump)" if best.get("tcpdump") else ""
        print(f"  {k:<12} {v:>10,.0f} pps{ratio}")
    if "latency" in result:
        m = result["latency"]["median"]
        for k in ("without", "with"):
            print(f"  wrk {k:<8} capture: p50 {m[k]['p50_us']:.0f} µs, p99 "
                  f"{m[k]['p99_us']:.0f} µs, {m[k]['rps']:,.0f} req/s")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
