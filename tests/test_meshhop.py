"""Mesh hops through mTLS (``sniffer/meshhop.py``) on the bundled captures of two meshed pods
(``pcaps/mtls*``, made by ``python -m scripts.lab --bundle mtls ...``): each pod's ``lo``
and ``eth0``, haproxy sidecars speaking mTLS to each other with a per-request delay injected
in each (``x-lab-delay-out-ms``, ``x-lab-delay-in-ms``), the proxies' own account of what they
slept in truth.json (``hops[].slept_ms``) and the TLS connection each request used
(``tls_leg``).

The dwell of a proxy is the injected delay plus the proxy's own work (parsing, Lua, TLS
record encryption) and its scheduling: ~0.2–0.3 ms here. The figures are computed once per
capture directory and printed by ``-s`` (the issue note quotes them).

The first request on each TLS connection is held to a looser standard: haproxy's Lua clock
(``core.now()``, the poller's cached date) is stale by the handshake's crypto there, so the
sleep it reports (and actually sleeps) is off by up to ~1.5 ms, and the proxies do the
connection's setup work (key exchange, HTTP/2 settings) while the request waits.
"""

from __future__ import annotations

import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from sniffer.meshhop import MeshHop
from sniffer.pipeline import run_replay

ROOT = Path(__file__).resolve().parent.parent
PCAPS = ROOT / "pcaps"
MS = 1_000_000
ONE_IN_FLIGHT = ["mtls", "mtls-h2", "mtls-grpc", "mtls-tls12"]
ALL = ONE_IN_FLIGHT + ["mtls-concurrent"]
WIRESPAN = str(Path(sys.executable).parent / "wirespan")


@cache
def replayed(name: str, sides: str = "both") -> tuple[dict, list[MeshHop], dict]:
    folder = PCAPS / name
    truth = json.loads((folder / "truth.json").read_text())
    files = sorted(str(p) for p in folder.glob("*.pcap")
                   if sides == "both" or p.name.startswith(sides))
    hops: list[MeshHop] = []
    summary = run_replay(files, on_mesh=hops.append).to_dict()
    return truth, hops, summary


def by_trace(hops: list[MeshHop]) -> dict[str, list[MeshHop]]:
    out: dict[str, list[MeshHop]] = {}
    for h in hops:
        if h.ctx is not None and h.ctx.format != "request-id":
            out.setdefault(h.ctx.trace_id, []).append(h)
    return out


def traced(truth: dict) -> list[dict]:
    return [r for r in truth["requests"] if r["trace"].get("trace_id") and r["client"]
            and r["client"].get("status") in (200, 0, None)]


def slept(r: dict, proxy: str) -> int:
    (h,) = [h for h in r["hops"] if h["proxy"] == proxy]
    return round(h["slept_ms"] * MS)


def firsts(truth: dict) -> set[str]:
    """Ids of the requests that were the first on their TLS connection."""
    seen: set[str] = set()
    out = set()
    for r in truth["requests"]:
        c = (r.get("tls_leg") or {}).get("client")
        if c not in seen:
            seen.add(c)
            out.add(r["id"])
    return out


def pct(values: list[int], q: float) -> int:
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def report(name: str, errs: dict[str, list[int]], extra: str = "") -> None:
    parts = [f"{k} p50 {pct([abs(x) for x in v], 0.5) / MS:.3f} p99 "
             f"{pct([abs(x) for x in v], 0.99) / MS:.3f} max {max(abs(x) for x in v) / MS:.3f}"
             for k, v in errs.items() if v]
    print(f"\n[{name}] {extra} " + "; ".join(parts) + " (ms)")


@pytest.mark.parametrize("name", ALL)
def test_every_request_is_a_mesh_hop_with_three_spans(name: str) -> None:
    truth, hops, summary = replayed(name)
    idx = by_trace(hops)
    reqs = traced(truth)
    assert reqs
    for r in reqs:
        got = idx.get(r["trace"]["trace_id"])
        assert got and len(got) == 1, (name, r["id"])
        h = got[0]
        assert h.up is not None and h.inbound is not None
        assert h.ctx.span_id == r["trace"]["span_id"]
        assert h.down.ex.method == r["method"] and h.up.ex.path == r["path"].split("?")[0]
        assert h.inbound_address == r["dialled"]  # the callee pod's address, as dialled
        if not h.ambiguous:
            # the TLS connection the request used, as both proxies logged it
            assert f"10.88.0.{h.client[0][3]}:{h.client[1]}" == r["tls_leg"]["client"], r["id"]
    # the correlator's one-proxy pairing of the two plaintext ends is gone: only the two
    # sidecars, each measured from its own end of the TLS connection
    addrs = {p["address"]: p for p in summary["proxies"]}
    assert set(addrs) == {"127.0.0.1:4140"} | {r["dialled"] for r in truth["requests"]}
    assert all(p["match_kinds"] == {"tls-timing": p["requests"]} for p in addrs.values())
    assert summary["mesh"].get("no_tls_connection", 0) == 0


@pytest.mark.parametrize("name", ONE_IN_FLIGHT)
def test_one_in_flight_dwell_matches_each_sidecars_sleep(name: str) -> None:
    """One request in flight: every hop resolved without ambiguity; each sidecar's request
    dwell within 1 ms of what it slept for 99% of requests and within 3 ms for all (the first
    request on each connection: within 3 ms, see the module's doc)."""
    truth, hops, _ = replayed(name)
    idx = by_trace(hops)
    first = firsts(truth)
    errs: dict[str, list[int]] = {"outbound": [], "inbound": [], "first on connection": []}
    for r in traced(truth):
        (h,) = idx[r["trace"]["trace_id"]]
        assert not h.ambiguous, r["id"]
        e_out = h.outbound.request_ns - slept(r, "outbound")
        e_in = h.inbound.request_ns - slept(r, "inbound")
        if r["id"] in first:
            errs["first on connection"] += [e_out, e_in]
        else:
            errs["outbound"].append(e_out)
            errs["inbound"].append(e_in)
    report(name, errs)
    for side in ("outbound", "inbound"):
        e = errs[side]
        assert sum(abs(x) <= MS for x in e) >= 0.99 * len(e) - 0.5, (name, side, sorted(e))
        assert max(abs(x) for x in e) <= 3 * MS, (name, side, sorted(e))
        assert min(e) >= -MS // 2, (name, side, min(e))  # never shorter than the sleep
    assert max(abs(x) for x in errs["first on connection"]) <= 3 * MS


@pytest.mark.parametrize("name", ALL)
def test_truth_is_inside_the_bounds(name: str) -> None:
    """Under concurrency (several requests in flight on shared, multiplexed TLS connections)
    the records cannot always be told apart: an ambiguous hop carries bounds. A sidecar's
    dwell is at least what it slept, so the upper bound must reach the sleep (strictly:
    0.5 ms of clock slack; 2 ms on a connection's first request, whose sleep haproxy
    measures on a stale clock). The lower bound may exceed the sleep by the time the proxy
    queued the request besides sleeping (up to 5 ms with 24 requests in flight on 2 cores)."""
    truth, hops, _ = replayed(name)
    idx = by_trace(hops)
    first = firsts(truth)
    n = resolved = 0
    over: list[int] = []
    for r in traced(truth):
        (h,) = idx[r["trace"]["trace_id"]]
        n += 1
        resolved += not h.ambiguous
        slack = 2 * MS if r["id"] in first else MS // 2
        for dw, proxy in ((h.outbound, "outbound"), (h.inbound, "inbound")):
            t = slept(r, proxy)
            assert dw.request_min_ns <= dw.request_ns <= dw.request_max_ns
            assert dw.request_max_ns >= t - slack, (name, r["id"], proxy, t, dw)
            assert dw.request_min_ns <= t + 5 * MS, (name, r["id"], proxy, t, dw)
            over.append(dw.request_min_ns - t)
    print(f"\n[{name}] {resolved}/{n} resolved without ambiguity; lower bound - sleep: "
          f"p50 {pct(over, 0.5) / MS:.2f} max {max(over) / MS:.2f} ms")
    if name in ONE_IN_FLIGHT:
        assert resolved == n
    else:
        assert resolved < n  # concurrent: ambiguity exists and is said


def test_caller_side_only_still_gets_the_outbound_dwell() -> None:
    """The callee on another node: only the caller pod's lo and eth0 are captured. The
    outbound sidecar's dwell comes from L1 and the TLS records alone."""
    truth, hops, summary = replayed("mtls", "client")
    idx = by_trace(hops)
    errs: dict[str, list[int]] = {"outbound": []}
    for r in traced(truth):
        (h,) = idx[r["trace"]["trace_id"]]
        assert h.up is None and h.inbound is None
        errs["outbound"].append(h.outbound.request_ns - slept(r, "outbound"))
    report("mtls caller side only", errs)
    assert sum(abs(x) <= MS for x in errs["outbound"]) / len(errs["outbound"]) >= 0.95
    assert [p["address"] for p in summary["proxies"]] == ["127.0.0.1:4140"]


def test_callee_side_only_makes_no_proxy_span() -> None:
    _truth, hops, summary = replayed("mtls", "server")
    assert hops == [] and summary["proxies"] == []


def test_spans_out_network_in_with_parents_and_attributes(tmp_path: Path) -> None:
    out = tmp_path / "spans.jsonl"
    r = subprocess.run([WIRESPAN, "replay", "-o", str(out), "--json",
                        *sorted(str(p) for p in (PCAPS / "mtls-concurrent").glob("*.pcap"))],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    truth = json.loads((PCAPS / "mtls-concurrent" / "truth.json").read_text())
    spans = {}
    for line in out.read_text().splitlines():
        for rs in json.loads(line)["resourceSpans"]:
            for sp in rs["scopeSpans"][0]["spans"]:
                sp["a"] = {a["key"]: next(iter(a["value"].values())) for a in sp["attributes"]}
                spans.setdefault(sp["traceId"], []).append(sp)
    for req in traced(truth):
        got = spans[req["trace"]["trace_id"]]
        roles = sorted((s["a"]["wirespan.span.role"], s["a"].get("wirespan.proxy.direction", ""))
                       for s in got)
        assert roles == [("network", ""), ("proxy", "inbound"), ("proxy", "outbound")], roles
        out_s = next(s for s in got if s["a"].get("wirespan.proxy.direction") == "outbound")
        net = next(s for s in got if s["a"]["wirespan.span.role"] == "network")
        in_s = next(s for s in got if s["a"].get("wirespan.proxy.direction") == "inbound")
        assert out_s["parentSpanId"] == req["trace"]["span_id"]
        assert net["parentSpanId"] == out_s["spanId"] and in_s["parentSpanId"] == net["spanId"]
        for s in (out_s, net, in_s):
            assert s["a"]["wirespan.match"] == "tls-timing"
            assert s["a"]["tls.server.name"] == truth["mesh"]["tls"]["sni"]["server"] \
                if isinstance(truth["mesh"]["tls"].get("sni"), dict) else True
        if out_s["a"].get("wirespan.match.ambiguous"):
            for s in (out_s, in_s):
                lo = int(s["a"]["wirespan.proxy.request_dwell_min_ns"])
                hi = int(s["a"]["wirespan.proxy.request_dwell_max_ns"])
                assert lo <= int(s["a"]["wirespan.proxy.request_dwell_ns"]) <= hi
        assert in_s["a"]["wirespan.proxy.address"] == req["dialled"]
        assert int(out_s["startTimeUnixNano"]) <= int(net["startTimeUnixNano"]) \
            <= int(in_s["startTimeUnixNano"])


# -- live: wirespan capture on both meshed pods while the lab runs ------------------------------

@pytest.mark.lab
@pytest.mark.parametrize("scenario,workers", [("mtls", 1), ("mtls-grpc", 2)])
def test_live_capture_of_the_meshed_pods(scenario: str, workers: int, tmp_path: Path,
                                         monkeypatch) -> None:
    """``wirespan capture --netns client --netns server -i eth0 -i lo`` during the scenario
    (one process, and two fanout workers: each pod's ``lo``, where the outbound REDIRECT
    gives one connection two address pairs, is whole in one worker): a mesh hop (outbound,
    network, inbound spans) for every traced request."""
    import os
    import signal

    from scripts.lab import node as lab_node
    from scripts.lab.scenarios import SCENARIOS, missing

    gone = missing(scenario)
    if gone:
        pytest.skip(f"cannot run the lab here: {', '.join(gone)}")
    spans = tmp_path / "live.jsonl"
    out = tmp_path / "live.json"
    err = tmp_path / "live.err"
    state: dict = {}
    orig = lab_node.Node.capture_all
    orig_stop = lab_node.Node.stop_captures

    def capture_all(self, out_dir):
        r = orig(self, out_dir)
        ns = [a for p in self.pods.values() for a in ("--netns", p.ns)]
        with open(out, "wb") as o, open(err, "wb") as e:
            state["p"] = subprocess.Popen(
                [WIRESPAN, "capture", "--json", "-o", str(spans), "--workers", str(workers),
                 "-i", "eth0", "-i", "lo", *ns], stdout=o, stderr=e, start_new_session=True)
        deadline = __import__("time").monotonic() + 15
        while "listening on" not in err.read_text() and state["p"].poll() is None:
            assert __import__("time").monotonic() < deadline, err.read_text()
            __import__("time").sleep(0.05)
        assert state["p"].poll() is None, err.read_text()
        return r

    def stop_captures(self):
        orig_stop(self)
        p = state.get("p")
        if p is not None and p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
            state["rc"] = p.wait(60)

    monkeypatch.setattr(lab_node.Node, "capture_all", capture_all)
    monkeypatch.setattr(lab_node.Node, "stop_captures", stop_captures)
    try:
        truth = SCENARIOS[scenario](tmp_path / "lab", n=40)
    finally:
        p = state.get("p")
        if p is not None and p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert state.get("rc") == 0, err.read_text()[-2000:]
    summary = json.loads(out.read_text().splitlines()[-1])
    assert summary["kernel_drops"] == 0
    assert summary["mesh"]["hops"] >= len(traced(truth)), summary["mesh"]
    got: dict[str, dict[str, dict]] = {}
    for line in spans.read_text().splitlines():
        for rs in json.loads(line)["resourceSpans"]:
            for sp in rs["scopeSpans"][0]["spans"]:
                a = {x["key"]: next(iter(x["value"].values())) for x in sp["attributes"]}
                role = a.get("wirespan.proxy.direction") or a["wirespan.span.role"]
                got.setdefault(sp["traceId"], {})[role] = {**sp, "a": a}
    first = firsts(truth)
    errs: list[int] = []
    for r in traced(truth):
        g = got.get(r["trace"]["trace_id"], {})
        assert set(g) >= {"outbound", "network", "inbound"}, (r["id"], sorted(g))
        assert g["outbound"]["parentSpanId"] == r["trace"]["span_id"]
        if r["id"] in first:
            continue
        for side in ("outbound", "inbound"):
            errs.append(int(g[side]["a"]["wirespan.proxy.request_dwell_ns"]) - slept(r, side))
    report(f"{scenario} live", {"dwell - slept": errs})
    # (live, the lab's proxies share 2 cores with the capture and the test: some requests
    # are scheduled late, by up to ~2 ms measured; the captures above hold the 99% figure)
    assert sum(abs(x) <= MS for x in errs) >= 0.85 * len(errs), sorted(errs)
    assert max(abs(x) for x in errs) <= 5 * MS


def test_hops_are_resolved_while_the_tls_connections_are_still_open(monkeypatch) -> None:
    """The TLS parser hands sessions over as their connections start and fills them in
    place: a hop is resolved ``settle_ns`` (1 s; here 100 ms, the bundle is short) of
    capture time after it ended, long before its connection closes -- what a node agent on
    long-lived sidecar connections needs."""
    import functools

    import sniffer.pipeline as pl
    from sniffer.capture import merge
    from sniffer.meshhop import MeshMatcher

    monkeypatch.setattr(pl, "MeshMatcher", functools.partial(MeshMatcher,
                                                             settle_ns=100_000_000))
    from sniffer.pipeline import open_all, run_records
    from sniffer.stats import Stats

    folder = PCAPS / "mtls"
    stats = Stats()
    caps = open_all(sorted(str(p) for p in folder.glob("*.pcap")), stats)
    hops: list[MeshHop] = []
    at_end: list[int] = []
    last = [0]

    def records():
        for r in merge(caps, stats):
            last[0] = r[0]
            yield r
        at_end.append(len(hops))  # before finish(): before any connection is closed

    try:
        run_records(records(), lambda: [p for c in caps for p in c.points], files=[],
                    stats=stats, on_mesh=hops.append)
    finally:
        for c in caps:
            c.close()
    # (the correlator settles a leg for 200 ms before it pairs it, then the mesh matcher waits)
    early = [h for h in hops if h.down.resp_last_max < last[0] - 350_000_000]
    assert len(early) >= 10
    assert at_end[0] >= len(early), (at_end, len(early), len(hops))
