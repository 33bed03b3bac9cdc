"""Proxy lab tests: real proxies (haproxy, nginx, nghttpx) between real clients and apps in a
node made of network namespaces (scripts/lab), captured on every pod interface, with ground
truth (trace headers sent, delays injected, the proxies' own access-log timers) in truth.json.
Each scenario runs once per module.

* ORACLE tests (``test_oracle_*``) check the lab itself with tshark and the proxies' logs: every
  leg of every request is in the captures with the trace id the client sent, the span id
  passed through or rewritten as truth says, the injected delay shows in haproxy's own timers
  and between the two legs on the wire, nginx's log agrees with the app's, and the NFQUEUE link
  delay sits between the ingress's SYN/data and the app's receipt.
* WIRESPAN tests (``test_wirespan_*``) run ``wirespan replay --spans proxy -o OUT --json`` on
  all of a scenario's captures and check the proxy spans and the summary against the truth
  (the correlator contract in DESIGN.md "Proxies and dwell time" / "Span contract").

Needs root, tcpdump, tshark, nginx, haproxy, nghttpx/nghttpd, iptables and grpcio; skipped
otherwise with the reason. ``WIRESPAN_LAB_KEEP=DIR`` keeps each scenario's output in DIR.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from scripts.lab import scenarios as S  # noqa: E402
from scripts.lab.node import ENV  # noqa: E402

pytestmark = pytest.mark.lab

HTTP1 = ["sidecar", "ingress", "ingress-nokeepalive", "chain", "mesh"]
ALL = [*HTTP1, "h2", "grpc"]
N = {"sidecar": 120, "ingress": 100, "ingress-nokeepalive": 60, "chain": 100, "h2": 60,
     "grpc": 60, "mesh": 100}
MS = 1_000_000
TRACE_HDRS = ("traceparent", "x-b3-traceid", "x-b3-spanid", "b3")
H2_PORTS = {"h2": (3000, 8080), "grpc": (50051,)}


# -- running the scenarios ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def lab_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keep = os.environ.get("WIRESPAN_LAB_KEEP")
    return Path(keep) if keep else tmp_path_factory.mktemp("proxylab")


_cache: dict[str, dict] = {}


def scenario(name: str, out: Path) -> dict:
    if name not in _cache:
        why = S.missing(name)
        if name in ("h2", "grpc"):
            try:
                import grpc  # noqa: F401
                import h2  # noqa: F401
            except ImportError as e:
                why.append(f"{e.name} (pip install -e '.[test]')")
        if shutil.which("tshark", path=ENV["PATH"]) is None:
            why.append("tshark (apt-get install tshark)")
        if why:
            pytest.skip(f"proxy lab scenario {name} needs: " + "; ".join(why))
        d = out / name
        truth = S.SCENARIOS[name](d, n=N[name])
        truth["dir"] = d
        _cache[name] = truth
    return _cache[name]


@pytest.fixture(params=ALL)
def any_scen(request: pytest.FixtureRequest, lab_out: Path) -> dict:
    return scenario(request.param, lab_out)


@pytest.fixture(params=HTTP1)
def h1_scen(request: pytest.FixtureRequest, lab_out: Path) -> dict:
    return scenario(request.param, lab_out)


def pcaps(truth: dict) -> list[Path]:
    return [truth["dir"] / c["file"] for c in truth["captures"]]


def traced(truth: dict) -> list[dict]:
    return [r for r in truth["requests"] if r["trace"]["format"]]


# -- tshark oracle -----------------------------------------------------------------------------

AGG = "\x1e"


def tshark(pcap: Path, fields: list[str], yfilter: str, decode: tuple[str, ...] = ()) -> list[
        list[str]]:
    """One row per matching packet: each field's occurrences joined with AGG (JSON output, so
    values holding CR LF, like http.request.line, survive)."""
    args = ["tshark", "-n", "-r", str(pcap), *decode, "-Y", yfilter, "-T", "json"]
    for f in fields:
        args += ["-e", f]
    r = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=60, check=True)
    rows = []
    for pkt in json.loads(r.stdout or "[]"):
        lay = pkt["_source"]["layers"]
        rows.append([AGG.join(lay.get(f, [])) for f in fields])
    return rows


_requests_cache: dict[Path, list[dict]] = {}


def wire_requests(pcap: Path, h2_ports: tuple[int, ...] = ()) -> list[dict]:
    """Requests on the wire in one capture, by tshark: time (s), src, dst ("ip:port"), lower-
    case headers (x-lab-id, trace headers...)."""
    if pcap in _requests_cache:
        return _requests_cache[pcap]
    out = []
    base = ["frame.time_epoch", "ip.src", "tcp.srcport", "ip.dst", "tcp.dstport"]
    if not h2_ports:
        for row in tshark(pcap, [*base, "http.request.line"], "http.request"):
            hdrs = {}
            for line in row[5].split(AGG):
                k, _, v = line.partition(":")
                hdrs[k.strip().lower()] = v.strip()
            out.append({"t": float(row[0]), "src": f"{row[1]}:{row[2]}",
                        "dst": f"{row[3]}:{row[4]}", "headers": hdrs})
    else:
        decode = tuple(x for p in h2_ports for x in ("-d", f"tcp.port=={p},http2"))
        for row in tshark(pcap, [*base, "http2.header.name", "http2.header.value"],
                          "http2.type == 1", decode):
            names, values = row[5].split(AGG), row[6].split(AGG)
            blocks: list[dict[str, str]] = []
            prev_pseudo = False
            for k, v in zip(names, values):
                pseudo = k.startswith(":")
                if pseudo and (not blocks or not prev_pseudo):
                    blocks.append({})
                blocks[-1][k.lower()] = v
                prev_pseudo = pseudo
            for b in blocks:
                if ":method" in b:
                    out.append({"t": float(row[0]), "src": f"{row[1]}:{row[2]}",
                                "dst": f"{row[3]}:{row[4]}", "headers": b})
    _requests_cache[pcap] = out
    return out


def legs(truth: dict) -> dict[str, list[tuple[str, dict]]]:
    """x-lab-id -> [(capture file, wire request)] over all the scenario's captures."""
    ports = H2_PORTS.get(truth["scenario"], ())
    by: dict[str, list[tuple[str, dict]]] = {}
    for p in pcaps(truth):
        for w in wire_requests(p, ports):
            by.setdefault(w["headers"].get("x-lab-id", ""), []).append((p.name, w))
    return by


def span_on_wire(h: dict[str, str]) -> tuple[str | None, str | None]:
    if "traceparent" in h:
        _, tid, sid, _ = h["traceparent"].split("-")
        return tid, sid
    if "x-b3-spanid" in h:
        return h.get("x-b3-traceid"), h["x-b3-spanid"]
    if "b3" in h:
        tid, sid = h["b3"].split("-")[:2]
        return tid, sid
    return None, None


# -- ORACLE tests ------------------------------------------------------------------------------

def test_oracle_every_request_answered_and_logged(any_scen: dict) -> None:
    t = any_scen
    assert len(t["requests"]) == N[t["scenario"]]
    for r in t["requests"]:
        assert r["client"] and r["client"]["status"] == 200, r["id"]
        assert r["client"].get("grpc_status", 0) == 0, r["id"]
        for h in r["hops"]:
            assert h["log"], f"{r['id']}: no access-log line from {h['proxy']}"
            assert h["log"]["id"] == r["id"]
            assert str(h["log"]["st"]) == "200"


def test_oracle_every_leg_on_the_wire_with_its_trace(any_scen: dict) -> None:
    """Each request is on the wire once per leg per capture that sees that leg, and carries the
    trace id the client sent on every leg; the span id is the client's up to a rewriting proxy
    and the rewritten one (from that proxy's log) after it."""
    t = any_scen
    by = legs(t)
    # legs per request: client→first proxy, one per proxy→upstream; each seen in 2 captures
    # (both pods' eth0) or 1 (the sidecar's lo)
    counts = Counter(len(by.get(r["id"], [])) for r in t["requests"])
    assert len(counts) == 1, f"requests seen a different number of times: {counts}"
    for r in t["requests"]:
        seen = by[r["id"]]
        sent_tid, sent_sid = r["trace"]["trace_id"], r["trace"]["span_id"]
        final = r["hops"][-1]["span_id_out"] if r["hops"] else sent_sid
        sids = set()
        for fname, w in seen:
            tid, sid = span_on_wire(w["headers"])
            assert tid == sent_tid, (r["id"], fname, w["headers"])
            sids.add(sid)
        assert sids == ({sent_sid, final} if sent_tid else {None}), (r["id"], sids)


def test_oracle_rewrite_is_recorded(lab_out: Path) -> None:
    t = scenario("chain", lab_out)
    sc = [p for p in t["proxies"] if p["rewrites_span_id"]]
    assert [p["name"] for p in sc] == ["sidecar"]
    for r in traced(t):
        ing, side = r["hops"]
        assert ing["span_id_out"] == r["trace"]["span_id"]  # nginx passes it through
        assert side["log"]["os"] == r["trace"]["span_id"]
        assert side["span_id_out"] == side["log"]["ns"] != r["trace"]["span_id"]
        assert len(side["span_id_out"]) == 16
        # the app received the rewritten id
        tid, sid = span_on_wire({k: v for k, v in (("traceparent", r["app_log"]["tp"]),
                                                    ("x-b3-spanid", r["app_log"]["b3"]),
                                                    ("x-b3-traceid", r["app_log"]["b3t"]),
                                                    ("b3", r["app_log"]["b3s"])) if v})
        assert sid == side["span_id_out"]


def _gaps_ms(t: dict, proxy: str) -> list[tuple[dict, float]]:
    """(request, ms between the request arriving at ``proxy`` and leaving it) from the wire:
    the downstream leg in the proxy pod's eth0 capture, the upstream leg in the capture where
    the proxy is the source (lo for the sidecar)."""
    p = next(x for x in t["proxies"] if x["name"] == proxy)
    by = legs(t)
    own = {f"{p['pod']}-eth0.pcap", f"{p['pod']}-lo.pcap"}
    out = []
    for r in t["requests"]:
        mine = [(f, w) for f, w in by[r["id"]] if f in own]
        down = [w for f, w in mine if w["dst"] == p["address"] and f.endswith("eth0.pcap")
                and w["src"].split(":")[0] != p["address"].split(":")[0]]
        up = [w for f, w in mine if w["dst"] == p["upstream"] and
              w["src"].split(":")[0] == p["address"].split(":")[0]]
        assert len(down) == 1 and len(up) == 1, (r["id"], mine)
        out.append((r, (up[0]["t"] - down[0]["t"]) * 1000))
    return out


@pytest.mark.parametrize("name,proxy", [("sidecar", "sidecar"), ("chain", "sidecar"),
                                        ("grpc", "grpcproxy"), ("mesh", "inbound")])
def test_oracle_injected_delay_in_haproxy_timers_and_on_the_wire(lab_out: Path, name: str,
                                                                 proxy: str) -> None:
    """The Lua action's sleep as executed (``slept_ms``, its own µs clock) is the asked
    x-lab-delay-ms plus haproxy's timer overshoot (about 1 ms); haproxy's %TR (the rules, the
    sleep included) agrees with it to its ms resolution; and on the wire the upstream leg
    leaves the proxy slept_ms (+ a fraction of a ms of haproxy's work) after the downstream
    leg arrived."""
    t = scenario(name, lab_out)
    over, diffs_log, diffs_wire = [], [], []
    for r, gap in _gaps_ms(t, proxy):
        hop = next(h for h in r["hops"] if h["proxy"] == proxy)
        inj, slept = hop["injected_delay_ms"], hop["slept_ms"]
        assert hop["log"]["dly"] == str(inj)
        assert slept is not None and slept >= inj - 1  # ms timer ticks: up to 1 ms early
        over.append(slept - inj)
        diffs_log.append(hop["log"]["TR"] - slept)
        diffs_wire.append(gap - slept)
    q99 = int(len(over) * 0.99) - 1
    assert sorted(over)[len(over) // 2] <= 2.0, sorted(over)
    # haproxy timers are whole ms (truncated at both ends)
    assert min(diffs_log) >= -1.5 and sorted(diffs_log)[q99] <= 2, sorted(diffs_log)
    # on a loaded machine (2 cores shared) haproxy sometimes runs late: a few ms more for
    # a few requests; the bulk is within a fraction of a ms
    q90 = int(len(over) * 0.9) - 1
    assert min(diffs_wire) >= -0.05 and sorted(diffs_wire)[q90] <= 1.0, sorted(diffs_wire)


@pytest.mark.parametrize("name", ["ingress", "ingress-nokeepalive", "chain"])
def test_oracle_nginx_log_agrees_with_app_and_wire(lab_out: Path, name: str) -> None:
    t = scenario(name, lab_out)
    gaps = dict((r["id"], g) for r, g in _gaps_ms(t, "ingress"))
    no_ka = not t["proxies"][0]["upstream_keepalive"]
    link = t["link_delays"][0]["held_ms"]["max"] if no_ka and t["link_delays"] else 0
    late = []
    for r in t["requests"]:
        lg = r["hops"][0]["log"]
        # $request_time and $upstream_response_time are whole ms from different clocks
        assert lg["rt"] + 0.0015 >= lg["urt"] >= lg["uct"] >= 0
        assert lg["ua"] == r["hops"][0]["upstream"]
        # nginx's $request_id went upstream as X-Request-ID, and the app logged it
        assert r["app_log"]["xrid"] == lg["rid"] and len(lg["rid"]) == 32
        # the time nginx held the request before sending it upstream (wire) is within its
        # own ($request_time - $upstream_response_time) (+ the handshake on a new upstream
        # connection), allowing for its ms resolution. On a loaded machine a request can wait
        # in the socket before nginx reads it (the wire sees it, nginx's clock does not):
        # tolerated for a few requests.
        if gaps[r["id"]] > (lg["rt"] - lg["urt"] + lg["uct"]) * 1000 + 2 + link:
            late.append((r["id"], round(gaps[r["id"]], 2), lg["rt"], lg["urt"]))
    assert len(late) <= 0.10 * len(t["requests"]), late


def _syns(pcap: Path, dst: str) -> dict[int, tuple[float, float | None]]:
    """client port -> (SYN time, SYN-ACK time) for connections to ``dst``."""
    ip, port = dst.split(":")
    syn = {int(p): float(ts) for ts, p in tshark(
        pcap, ["frame.time_epoch", "tcp.srcport"],
        f"ip.dst=={ip} && tcp.dstport=={port} && tcp.flags.syn==1 && tcp.flags.ack==0")}
    sa = {int(p): float(ts) for ts, p in tshark(
        pcap, ["frame.time_epoch", "tcp.dstport"],
        f"ip.src=={ip} && tcp.srcport=={port} && tcp.flags.syn==1 && tcp.flags.ack==1")}
    return {p: (ts, sa.get(p)) for p, ts in syn.items()}


def test_oracle_link_delay_between_the_captures(lab_out: Path) -> None:
    """ingress-nokeepalive: every upstream connection's SYN leaves the ingress (its eth0
    capture) and reaches the app (the app's eth0 capture) link_ms later; the request too. The
    handshake as the ingress sees it takes ≥ link_ms, and nginx's $upstream_connect_time
    says so as well; nginx never reuses an upstream connection."""
    t = scenario("ingress-nokeepalive", lab_out)
    (lk,) = t["link_delays"]
    ms = lk["ms"]
    assert lk["packets"] > 0 and lk["held_ms"]["min"] >= ms
    app = t["proxies"][0]["upstream"]
    at_ing = _syns(t["dir"] / "ingress-eth0.pcap", app)
    at_app = _syns(t["dir"] / "app-eth0.pcap", app)
    assert len(at_ing) == len(t["requests"]) == len(at_app)
    for port, (syn, synack) in at_ing.items():
        assert (at_app[port][0] - syn) * 1000 >= ms - 0.05
        assert (synack - syn) * 1000 >= ms - 0.05
    by = legs(t)
    for r in t["requests"]:
        ing = [w for f, w in by[r["id"]] if f == "ingress-eth0.pcap" and w["dst"] == app]
        apw = [w for f, w in by[r["id"]] if f == "app-eth0.pcap"]
        assert len(ing) == len(apw) == 1
        assert (apw[0]["t"] - ing[0]["t"]) * 1000 >= ms - 0.05
        assert r["hops"][0]["log"]["uct"] * 1000 >= ms - 1  # nginx: ms resolution


def test_oracle_sidecar_redirect_and_capture_layout(lab_out: Path) -> None:
    t = scenario("sidecar", lab_out)
    assert any("REDIRECT --to-ports 4143" in r for r in t["iptables"]["server"])
    assert sorted(c["file"] for c in t["captures"]) == [
        "client-eth0.pcap", "server-eth0.pcap", "server-lo.pcap"]
    (p,) = t["proxies"]
    assert p["direction"] == "inbound" and p["address"].endswith(":8080")
    assert p["listen"].endswith(":4143")
    by = legs(t)
    for r in t["requests"]:
        files = sorted(f for f, _ in by[r["id"]])
        assert files == ["client-eth0.pcap", "server-eth0.pcap", "server-lo.pcap"]
        # the eth0 capture sees the client's destination before the redirect
        assert all(w["dst"] == p["address"] for _, w in by[r["id"]])


# -- WIRESPAN tests ----------------------------------------------------------------------------

_replays: dict[str, dict] = {}


def replay(truth: dict) -> dict:
    name = truth["scenario"]
    if name not in _replays:
        out = truth["dir"] / "wirespan.jsonl"
        exe = Path(sys.executable).parent / "wirespan"
        cmd = ([str(exe)] if exe.exists() else [sys.executable, "-m", "sniffer"]) + [
            "replay", "--spans", "proxy", "-o", str(out), "--json", *map(str, pcaps(truth))]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
        spans = []
        if out.exists():
            for ln in out.read_text().splitlines():
                if not ln.strip():
                    continue
                for rs in json.loads(ln).get("resourceSpans", []):
                    for ss in rs.get("scopeSpans", []):
                        for sp in ss.get("spans", []):
                            sp["attrs"] = {a["key"]: _value(a["value"])
                                           for a in sp.get("attributes", [])}
                            spans.append(sp)
        try:
            summary = json.loads(r.stdout)
        except ValueError:
            summary = None
        _replays[name] = {"rc": r.returncode, "stderr": r.stderr, "summary": summary,
                          "spans": [s for s in spans
                                    if s["attrs"].get("wirespan.span.role") == "proxy"],
                          "all_spans": spans}
    return _replays[name]


def _value(v: dict) -> Any:
    if "stringValue" in v:
        return v["stringValue"]
    if "intValue" in v:
        return int(v["intValue"])
    if "boolValue" in v:
        return v["boolValue"]
    if "doubleValue" in v:
        return v["doubleValue"]
    return v


def spans_at(rp: dict, address: str) -> list[dict]:
    return [s for s in rp["spans"] if s["attrs"].get("wirespan.proxy.address") == address]


def match_hop(rp: dict, r: dict, hop: dict) -> list[dict]:
    return [s for s in spans_at(rp, hop["address"])
            if s.get("traceId") == r["trace"]["trace_id"]
            and s.get("parentSpanId") == hop["span_id_in"]]


def _assert_ran(rp: dict) -> None:
    assert rp["rc"] == 0, f"wirespan replay failed ({rp['rc']}):\n{rp['stderr'][-3000:]}"
    assert rp["summary"] is not None, "no --json summary on stdout"


def test_wirespan_summary_lists_each_proxy(any_scen: dict) -> None:
    rp = replay(any_scen)
    _assert_ran(rp)
    found = {p["address"]: p for p in rp["summary"].get("proxies", [])}
    for p in any_scen["proxies"]:
        assert p["address"] in found, (p["address"], list(found))
        s = found[p["address"]]
        assert s["requests"] == len(any_scen["requests"]), s
        assert sum(s["match_kinds"].values()) == s["requests"]
        assert s["match_kinds"].get("trace-context", 0) >= 0.99 * len(traced(any_scen))
        for k in ("request_dwell_ns", "response_dwell_ns"):
            q = s[k]
            assert 0 <= q["p50"] <= q["p90"] <= q["p99"] <= q["max"], q


def test_wirespan_one_span_per_request_per_proxy(any_scen: dict) -> None:
    """Every leg is in two captures (both pods' eth0): still exactly one span per hop."""
    rp = replay(any_scen)
    _assert_ran(rp)
    for p in any_scen["proxies"]:
        assert len(spans_at(rp, p["address"])) == len(any_scen["requests"]), p["address"]
    assert len(rp["spans"]) == len(any_scen["requests"]) * len(any_scen["proxies"])
    assert len(rp["all_spans"]) == len(rp["spans"]), "--spans proxy wrote non-proxy spans"


def test_wirespan_trace_context_match(any_scen: dict) -> None:
    """≥ 99% of traced requests get, at each proxy, a span with the client's trace id and the
    span id that arrived at that proxy as parent, matched by trace context; no false match:
    a proxy span with a known trace id has exactly the parent truth says."""
    t = any_scen
    rp = replay(t)
    _assert_ran(rp)
    tr = traced(t)
    by_tid = {r["trace"]["trace_id"]: r for r in tr}
    for p_i, p in enumerate(t["proxies"]):
        ok = 0
        for r in tr:
            hop = r["hops"][p_i]
            m = match_hop(rp, r, hop)
            assert len(m) <= 1, (r["id"], m)
            if m:
                ok += 1
                a = m[0]["attrs"]
                assert a["wirespan.match"] == "trace-context"
                assert a["wirespan.proxy.span_id_rewritten"] is p["rewrites_span_id"]
                assert a.get("wirespan.trace.format") == r["trace"]["format"]
        assert ok >= 0.99 * len(tr), f"{p['name']}: {ok}/{len(tr)} traced requests matched"
        for s in spans_at(rp, p["address"]):
            r = by_tid.get(s.get("traceId"))
            if r is None:
                continue
            assert s.get("parentSpanId") == r["hops"][p_i]["span_id_in"], (r["id"], s)
            assert s["attrs"]["http.request.method"] == r["method"]
    # untraced requests are matched by timing or request id, never given a client's trace id
    known = set(by_tid)
    untraced = [s for s in rp["spans"] if s["attrs"].get("wirespan.match") != "trace-context"]
    assert not [s for s in untraced if s.get("traceId") in known]


def test_wirespan_span_attributes(any_scen: dict) -> None:
    t = any_scen
    rp = replay(t)
    _assert_ran(rp)
    for p in t["proxies"]:
        ss = spans_at(rp, p["address"])
        assert ss
        for s in ss:
            a = s["attrs"]
            assert s["kind"] == 2  # SERVER
            assert a["wirespan.upstream.address"] == p["upstream"]
            assert a.get("wirespan.proxy.direction") == p["direction"]
            for k in ("request_dwell_ns", "response_dwell_ns", "upstream_duration_ns",
                      "upstream_connect_ns"):
                assert isinstance(a[f"wirespan.proxy.{k}"], int) and a[f"wirespan.proxy.{k}"] >= 0
            assert int(s["endTimeUnixNano"]) >= int(s["startTimeUnixNano"])


def _span_for(rp: dict, t: dict, r: dict, p_i: int) -> dict:
    hop = r["hops"][p_i]
    m = match_hop(rp, r, hop)
    assert len(m) == 1, (r["id"], hop["proxy"], len(m))
    return m[0]["attrs"]


@pytest.mark.parametrize("name,proxy", [("sidecar", "sidecar"), ("chain", "sidecar"),
                                        ("grpc", "grpcproxy"), ("mesh", "inbound")])
def test_wirespan_haproxy_dwell_is_the_injected_delay(lab_out: Path, name: str,
                                                      proxy: str) -> None:
    """|request_dwell − injected| ≤ 1 ms for 99% of requests, ≤ 3 ms for all, where
    "injected" is the sleep as haproxy's Lua executed it (``slept_ms``: the asked
    x-lab-delay-ms ± haproxy's ms timer ticks, typically +1.1 ms). Exception: a request the
    proxy verifiably held longer than that (tshark's downstream → upstream gap on the wire
    exceeds slept + 1 ms: haproxy descheduled on a loaded machine) is judged against the wire
    gap instead; at most 25% of requests may be such."""
    t = scenario(name, lab_out)
    rp = replay(t)
    _assert_ran(rp)
    p_i = [p["name"] for p in t["proxies"]].index(proxy)
    gaps = {r["id"]: g for r, g in _gaps_ms(t, proxy)}
    diffs, late = [], []
    for r in traced(t):
        a = _span_for(rp, t, r, p_i)
        hop = r["hops"][p_i]
        dwell = a["wirespan.proxy.request_dwell_ns"]
        ref = hop["slept_ms"]
        if gaps[r["id"]] > ref + 1:  # haproxy ran late (loaded machine): the wire is truth
            late.append(r["id"])
            ref = gaps[r["id"]]
        diffs.append(abs(dwell - ref * MS))
        assert diffs[-1] <= 3 * MS, (r["id"], dwell, ref, hop)
    diffs.sort()
    assert diffs[int(len(diffs) * 0.99) - 1] <= 1 * MS, diffs[-5:]
    # Every request's dwell is checked above (against the sleep, or the wire where haproxy
    # held it longer); this only says the lab still mostly measures its injected delay.
    # Seen in CI on 2 cores: up to 7.5% of requests held > 1 ms beyond the sleep.
    assert len(late) <= 0.25 * len(diffs), f"lab too noisy to judge: {late}"


@pytest.mark.parametrize("name", ["ingress", "ingress-nokeepalive", "chain"])
def test_wirespan_nginx_dwell_agrees_with_its_log(lab_out: Path, name: str) -> None:
    """request + response dwell = nginx's $request_time − $upstream_response_time ± 2 ms (the
    log has ms resolution; on a new connection per request plus the part of nginx's
    $upstream_connect_time that is not the SYN -> SYN-ACK on the wire) for ≥ 90% of requests, and request dwell + upstream connect = the
    downstream → upstream gap tshark sees in the ingress's capture ± 1 ms for all; the NFQUEUE
    link delay never shows up as dwell: it is in upstream_connect_ns on a new connection per
    request, and 0 on a reused one."""
    t = scenario(name, lab_out)
    rp = replay(t)
    _assert_ran(rp)
    link = t["link_delays"][0]["ms"] if t["link_delays"] else 0
    new_conn = not t["proxies"][0]["upstream_keepalive"]
    gaps = {r["id"]: g for r, g in _gaps_ms(t, "ingress")}
    late: list = []
    connects = []
    for r in traced(t):
        a = _span_for(rp, t, r, 0)
        lg = r["hops"][0]["log"]
        dwell = a["wirespan.proxy.request_dwell_ns"] + a["wirespan.proxy.response_dwell_ns"]
        # the wire (tshark, the ingress's own capture): request dwell + handshake = the gap
        # between the downstream request arriving and the upstream request leaving
        assert abs(a["wirespan.proxy.request_dwell_ns"] + a["wirespan.proxy.upstream_connect_ns"]
                   - gaps[r["id"]] * MS) <= 1 * MS, (r["id"], a, gaps[r["id"]])
        # nginx's own account, whole ms from a cached clock (and blind to time a request
        # waits in the socket before nginx reads it, on a loaded machine): 90%
        # (rt − urt can come out −1 ms: two whole-ms values; nginx holds a request ≥ 0)
        expect = max(0.0, lg["rt"] - lg["urt"]) * 1e9
        if new_conn and lg.get("uct") is not None:
            # nginx counts its whole connect ($upstream_connect_time, inside urt) as upstream
            # time; wirespan counts only SYN -> SYN-ACK as network and the rest (the worker
            # noticing the handshake and writing the request) as dwell, per the design
            expect += max(0.0, lg["uct"] * 1e9 - a["wirespan.proxy.upstream_connect_ns"])
        if abs(dwell - expect) > 2 * MS:
            late.append((r["id"], dwell, lg["rt"], lg["urt"], lg.get("uct")))
        if new_conn:  # the link delay (in the handshake and the request) is not dwell
            assert a["wirespan.proxy.request_dwell_ns"] <= (gaps[r["id"]] - link + 1) * MS, (
                r["id"], a)
        connects.append(a["wirespan.proxy.upstream_connect_ns"])
    # (the wire check above holds for every request; nginx's whole-ms log, blind to waits in
    # its event loop, disagreed by 2-7 ms on up to 3 of 53 no-keep-alive requests in CI)
    assert len(late) <= 0.10 * len(traced(t)), late
    if new_conn:
        assert min(connects) >= link * MS - 50_000, sorted(connects)[:5]
        assert max(connects) <= (t["link_delays"][0]["held_ms"]["max"] + 3) * MS
    else:
        assert sorted(connects)[len(connects) // 2] == 0  # mostly reused connections


def test_wirespan_connect_time_is_the_handshake(lab_out: Path) -> None:
    """ingress-nokeepalive: upstream_connect_ns = SYN → SYN-ACK of the upstream connection as
    the ingress's own capture shows it (± 0.2 ms)."""
    t = scenario("ingress-nokeepalive", lab_out)
    rp = replay(t)
    _assert_ran(rp)
    hs = _syns(t["dir"] / "ingress-eth0.pcap", t["proxies"][0]["upstream"])
    handshakes = sorted((synack - syn) * 1e9 for syn, synack in hs.values())
    got = sorted(_span_for(rp, t, r, 0)["wirespan.proxy.upstream_connect_ns"]
                 for r in traced(t))
    # same multiset, up to which request used which connection
    for g in got:
        assert min(abs(g - h) for h in handshakes) <= 200_000, g


def test_wirespan_chain_matches_hop_by_hop(lab_out: Path) -> None:
    """chain: two proxy spans per traced request, same trace id: the ingress's parent is the
    client's span id; the sidecar's parent is the span id the ingress passed on (the client's,
    nginx does not rewrite) and it is flagged span_id_rewritten; the sidecar's is inbound."""
    t = scenario("chain", lab_out)
    rp = replay(t)
    _assert_ran(rp)
    ok = 0
    for r in traced(t):
        ing = match_hop(rp, r, r["hops"][0])
        side = match_hop(rp, r, r["hops"][1])
        if len(ing) == 1 and len(side) == 1:
            ok += 1
            assert ing[0]["attrs"]["wirespan.proxy.span_id_rewritten"] is False
            assert "wirespan.proxy.direction" not in ing[0]["attrs"]
            assert side[0]["attrs"]["wirespan.proxy.span_id_rewritten"] is True
            assert side[0]["attrs"]["wirespan.proxy.direction"] == "inbound"
            # nested in time: the sidecar's span lies within the ingress's
            assert int(ing[0]["startTimeUnixNano"]) < int(side[0]["startTimeUnixNano"])
            assert int(side[0]["endTimeUnixNano"]) <= int(ing[0]["endTimeUnixNano"])
    assert ok >= 0.99 * len(traced(t)), f"{ok}/{len(traced(t))}"


def test_wirespan_replay_is_deterministic(lab_out: Path) -> None:
    t = scenario("sidecar", lab_out)
    rp = replay(t)
    _assert_ran(rp)
    out2 = t["dir"] / "wirespan-again.jsonl"
    exe = Path(sys.executable).parent / "wirespan"
    cmd = ([str(exe)] if exe.exists() else [sys.executable, "-m", "sniffer"]) + [
        "replay", "--spans", "proxy", "-o", str(out2), "--json", *map(str, pcaps(t))]
    subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO, check=True)
    assert out2.read_text() == (t["dir"] / "wirespan.jsonl").read_text()


def test_oracle_teardown_left_nothing(lab_out: Path) -> None:
    scenario("sidecar", lab_out)
    r = subprocess.run(["ip", "netns", "list"], env=ENV, capture_output=True, text=True)
    assert not [ln for ln in r.stdout.splitlines() if ln.startswith(f"wsl-{os.getpid() % 100000}")]


def test_oracle_mesh_outbound_redirect_on_lo(lab_out: Path) -> None:
    """mesh: on the client pod's lo the app's request goes podIP:eph → 127.0.0.1:4140 (after
    the OUTPUT REDIRECT) and the answer comes back from the dialled server:8080; the outbound
    haproxy (uid 2102, exempted) forwards to the dialled address, which it logs as its
    frontend address (SO_ORIGINAL_DST)."""
    t = scenario("mesh", lab_out)
    out, inb = t["proxies"]
    assert (out["direction"], inb["direction"]) == ("outbound", "inbound")
    assert any("--uid-owner 2102 -j RETURN" in r for r in t["iptables"]["client"])
    by = legs(t)
    cip = t["pods"]["client"]
    for r in t["requests"]:
        lo = [w for f, w in by[r["id"]] if f == "client-lo.pcap"]
        assert len(lo) == 1 and lo[0]["dst"] == out["address"] and lo[0]["src"].startswith(cip)
        assert r["hops"][0]["log"]["fe"] == t["dialled"] == r["hops"][0]["log"]["be"]
    replies = tshark(t["dir"] / "client-lo.pcap", ["ip.src", "tcp.srcport"],
                     "tcp.flags.syn==1 && tcp.flags.ack==1")
    assert replies and all(f"{a}:{b}" == t["dialled"] for a, b in replies)


def test_wirespan_mesh_outbound_and_inbound(lab_out: Path) -> None:
    """mesh: per traced request an outbound span (proxy address 127.0.0.1:4140 on the client
    pod's lo, upstream = the dialled server:8080, direction outbound) and an inbound span
    (server:8080, direction inbound), same trace id and parent (no rewriting), the inbound
    nested in the outbound."""
    t = scenario("mesh", lab_out)
    rp = replay(t)
    _assert_ran(rp)
    ok = 0
    for r in traced(t):
        o = match_hop(rp, r, r["hops"][0])
        i = match_hop(rp, r, r["hops"][1])
        if len(o) == 1 and len(i) == 1:
            ok += 1
            assert o[0]["attrs"]["wirespan.proxy.direction"] == "outbound"
            assert o[0]["attrs"]["wirespan.upstream.address"] == t["dialled"]
            assert i[0]["attrs"]["wirespan.proxy.direction"] == "inbound"
            assert int(o[0]["startTimeUnixNano"]) < int(i[0]["startTimeUnixNano"])
            assert int(i[0]["endTimeUnixNano"]) <= int(o[0]["endTimeUnixNano"])
    assert ok >= 0.99 * len(traced(t)), f"{ok}/{len(traced(t))}"
