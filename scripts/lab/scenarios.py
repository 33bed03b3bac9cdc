"""The lab's scenarios. Each ``run_<name>(out_dir, n=..., seed=...)`` builds a fresh node, runs
real clients through real proxies for a few seconds, writes ``<pod>-<iface>.pcap`` for every
captured interface plus ``truth.json`` into ``out_dir``, tears the node down (also on failure)
and returns the truth dict.

truth.json (``"version": 1``):

* ``scenario``, ``seed``, ``started_ns``/``ended_ns``, ``pods`` {name: ip}, ``captures``
  [{file, pod, iface}], ``iptables`` {pod: [rules]}.
* ``proxies``: [{name, kind, pod, address (what the client dials, before redirects), listen,
  upstream, direction ("inbound" | null), rewrites_span_id, upstream_keepalive, injects_delay,
  protocol}].
* ``link_delays``: [{from, to, dport, ms, packets, held_ms {min, mean, max}}].
* ``requests``: one per request the client sent: ``id`` (also sent as ``x-lab-id``), method,
  path, protocol ("http/1.1" | "http/2" | "grpc"), ``trace`` {format ("w3c" | "b3" |
  "b3-single" | null), trace_id, span_id, headers {name: value as sent}}, ``client``
  {send_ns, first_byte_ns, done_ns, status, local_port}, ``path_proxies`` [proxy names in
  order], ``injected_delay_ms`` (sleep asked of the delaying proxy), ``link_delay_ms``, and
  ``hops`` [{proxy, address, upstream, injected_delay_ms, span_id_in, span_id_out,
  log {the proxy's own access-log fields, parsed: haproxy Tq/Tw/Tc/Tr/Ta/Th/Ti/TR/Td in ms,
  ts; nginx rt/urt/uct/uht in s, ts ($msec), rid ($request_id)}}], and ``app_log`` (the
  app's own access-log line, nginx apps only).
"""

from __future__ import annotations

import json
import random
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from . import components as C
from .node import Node

HERE = Path(__file__).resolve().parent
APP_PORT = 8080
INGRESS_PORT = 80
FILES = {"index.html": b"<html>wirespan lab</html>\n",
         "api/items.json": b'{"items": [1, 2, 3]}\n',
         "big.bin": bytes(range(256)) * 12}
PATHS = ["/index.html", "/api/items.json", "/big.bin"]
FORMATS = ["w3c", "b3", "b3-single", None]  # None: no trace header
WEIGHTS = [4, 3, 2, 1]


def trace_headers(fmt: str | None, tid: str, sid: str) -> dict[str, str]:
    if fmt == "w3c":
        return {"traceparent": f"00-{tid}-{sid}-01"}
    if fmt == "b3":
        return {"X-B3-TraceId": tid, "X-B3-SpanId": sid, "X-B3-Sampled": "1"}
    if fmt == "b3-single":
        return {"b3": f"{tid}-{sid}-1"}
    return {}


def plan(rng: random.Random, n: int, *, delay_max_ms: int = 0, prefix: str = "r",
         paths: list[str] = PATHS) -> list[dict]:
    reqs = []
    for i in range(n):
        fmt = rng.choices(FORMATS, WEIGHTS)[0]
        tid, sid = f"{rng.getrandbits(128):032x}", f"{rng.getrandbits(64):016x}"
        delay = rng.randint(0, delay_max_ms) if delay_max_ms else 0
        h = trace_headers(fmt, tid, sid)
        rid = f"{prefix}{i:04d}"
        hdrs = {**h, "x-lab-id": rid}
        if delay_max_ms:
            hdrs["x-lab-delay-ms"] = str(delay)
        reqs.append({"id": rid, "method": "GET", "path": rng.choice(paths), "headers": hdrs,
                     "trace": {"format": fmt, "trace_id": tid if fmt else None,
                               "span_id": sid if fmt else None, "headers": h},
                     "injected_delay_ms": delay if delay_max_ms else 0})
    return reqs


def _client_h1(node: Node, pod, target: str, reqs: list[dict], connections: int = 2) -> list[dict]:
    pf = node.tmp / "plan.json"
    out = node.tmp / "client.jsonl"
    pf.write_text(json.dumps({"target": target, "connections": connections, "requests": [
        {"id": r["id"], "method": r["method"], "path": r["path"], "headers": r["headers"]}
        for r in reqs]}))
    node.run(pod.ns, sys.executable, str(HERE / "h1client.py"), str(pf), str(out), timeout=60)
    return C.read_jsonl(out)


def _by_id(rows: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in rows if r.get("id")}


def _num(v: str) -> float | int | None:
    if v in ("", None):
        return None
    try:
        return int(v)
    except ValueError:
        try:
            return float(v.split(",")[-1].split(":")[-1].strip())
        except ValueError:
            return None


def _haproxy_log(proc) -> dict[str, dict]:
    rows = C.parse_kv_log(proc.output())
    for r in rows:
        for k in ("Tq", "Tw", "Tc", "Tr", "Ta", "Th", "Ti", "TR", "Td", "st", "slept_us"):
            r[k] = _num(r.get(k, ""))
        r["ts"] = float(r["ts"]) if r.get("ts") else None
    return _by_id(rows)


def _nginx_log(proc) -> dict[str, dict]:
    try:
        text = proc.access_log.read_text()
    except FileNotFoundError:
        text = ""
    rows = C.parse_kv_log(text)
    for r in rows:
        for k in ("rt", "urt", "uct", "uht"):
            r[k] = _num(r.get(k, ""))
        r["st"] = _num(r.get("st", ""))
        r["ts"] = float(r["ts"]) if r.get("ts") else None
    return _by_id(rows)


def _span_out(r: dict, hop_log: dict) -> str | None:
    return hop_log.get("ns") or r["trace"]["span_id"]


class Run:
    """One scenario run: the node, the proxies, and the truth being assembled."""

    def __init__(self, name: str, out_dir: Path, seed: int) -> None:
        self.name, self.out, self.seed = name, Path(out_dir), seed
        self.rng = random.Random(seed)
        self.node = Node()
        self.proxies: list[C.Proxy] = []
        self.iptables: dict[str, list[str]] = {}
        self.links: list[dict] = []
        self.truth: dict = {"version": 1, "scenario": name, "seed": seed}
        self.small = False  # bundle: small bodies only, compact truth.json

    def plan(self, n: int, **kw) -> list[dict]:
        return plan(self.rng, n, paths=PATHS[:2] if self.small else PATHS, **kw)

    def finish(self, reqs: list[dict], client: list[dict], logs: dict[str, dict[str, dict]],
               apps: dict[str, dict] | None = None) -> dict:
        cl = _by_id(client)
        for r in reqs:
            r["client"] = cl.get(r["id"])
            r["protocol"] = r.get("protocol", "http/1.1")
            r["path_proxies"] = [p.name for p in self.proxies]
            r["link_delay_ms"] = sum(lk["ms"] for lk in self.links)
            hops = []
            span = r["trace"]["span_id"]
            for p in self.proxies:
                lg = logs.get(p.name, {}).get(r["id"], {})
                out = (lg.get("ns") or span) if p.rewrites_span_id else span
                hops.append({"proxy": p.name, "address": p.address, "upstream": p.upstream,
                             "injected_delay_ms": r["injected_delay_ms"] if p.injects_delay
                             else 0,
                             "slept_ms": (lg["slept_us"] / 1000 if p.injects_delay and
                                          lg.get("slept_us") is not None else None),
                             "span_id_in": span, "span_id_out": out, "log": lg})
                span = out
            r["hops"] = hops
            if apps is not None:
                r["app_log"] = apps.get(r["id"])
            r.pop("headers", None)
        self.truth.update({
            "pods": {p.name: p.ip for p in self.node.pods.values()},
            "captures": [{"file": f"{p.name}-{i}.pcap", "pod": p.name, "iface": i}
                         for p in self.node.pods.values() for i in p.ifaces],
            "iptables": self.iptables,
            "proxies": [p.truth() for p in self.proxies],
            "link_delays": self.links,
            "requests": reqs,
            "ended_ns": time.time_ns(),
        })
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "truth.json").write_text(
            json.dumps(self.truth, indent=None if self.small else 1,
                       separators=(",", ":") if self.small else None) + "\n")
        return self.truth

    def link_truth(self, proc, src, dst, dport, ms) -> None:
        proc.stop()
        rows = C.read_jsonl(proc.packet_log)
        held = [(r["release_ns"] - r["arrival_ns"]) / 1e6 for r in rows]
        self.links.append({"from": src.name, "to": dst.name, "dport": dport, "ms": ms,
                           "packets": len(rows),
                           "held_ms": {"min": min(held, default=0), "max": max(held, default=0),
                                       "mean": sum(held) / len(held) if held else 0}})


def _guard(fn: Callable[..., dict]) -> Callable[..., dict]:
    """Tear the node down on every exit path, including SIGTERM/SIGHUP while running."""
    def wrapped(out_dir: Path, **kw) -> dict:
        name = fn.__name__.removeprefix("run_")
        run = Run(name, out_dir, kw.pop("seed", None) or SEEDS.get(name, 1))
        run.small = kw.pop("small", False)
        old = {}

        def on_signal(sig, frame):
            run.node.close()
            raise SystemExit(128 + sig)
        for s in (signal.SIGTERM, signal.SIGHUP):
            try:
                old[s] = signal.signal(s, on_signal)
            except ValueError:  # not the main thread
                pass
        try:
            run.truth["started_ns"] = time.time_ns()
            return fn(run, **kw)
        finally:
            run.node.close()
            for s, h in old.items():
                signal.signal(s, h)
    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


@_guard
def run_sidecar(run: Run, n: int = 120, delay_max_ms: int = 20) -> dict:
    """client → server pod: iptables REDIRECT :8080 → haproxy :4143 (Lua sleep of
    x-lab-delay-ms, 0–20 ms per request) → nginx app on podIP:8080 over lo. Span ids passed
    through. Captures: client eth0, server eth0 and lo."""
    node = run.node
    cli = node.pod("client")
    srv = node.pod("server", capture_lo=True)
    app = C.nginx(node, srv, "app", APP_PORT, files=FILES)
    hp = C.haproxy(node, srv, "sidecar", C.LINKERD_INBOUND_PORT, f"{srv.ip}:{APP_PORT}",
                   delay=True, seed=run.seed)
    run.iptables[srv.name] = C.sidecar_redirect(node, srv, APP_PORT)
    run.proxies.append(C.Proxy("sidecar", "haproxy", srv.name, f"{srv.ip}:{APP_PORT}",
                               f"{srv.ip}:{C.LINKERD_INBOUND_PORT}", f"{srv.ip}:{APP_PORT}",
                               direction="inbound", injects_delay=True))
    reqs = run.plan(n, delay_max_ms=delay_max_ms)
    node.capture_all(run.out)
    client = _client_h1(node, cli, f"{srv.ip}:{APP_PORT}", reqs)
    node.stop_captures()
    return run.finish(reqs, client, {"sidecar": _haproxy_log(hp)}, _nginx_log(app))


@_guard
def run_ingress(run: Run, n: int = 120, keepalive: bool = True, link_ms: float = 0) -> dict:
    """client → nginx ingress pod (:80, proxy_pass, upstream keep-alive or not, X-Request-ID)
    → app pod (nginx :8080). ``link_ms``: NFQUEUE delay on the ingress → app link (held on the
    bridge, between the two pods' captures). Captures: every pod's eth0."""
    node = run.node
    cli = node.pod("client")
    ing = node.pod("ingress")
    appp = node.pod("app")
    app = C.nginx(node, appp, "app", APP_PORT, files=FILES)
    ngx = C.nginx(node, ing, "ingress", INGRESS_PORT, upstream=f"{appp.ip}:{APP_PORT}",
                  keepalive=keepalive)
    run.proxies.append(C.Proxy("ingress", "nginx", ing.name, f"{ing.ip}:{INGRESS_PORT}",
                               f"{ing.ip}:{INGRESS_PORT}", f"{appp.ip}:{APP_PORT}",
                               upstream_keepalive=keepalive))
    nfq = C.link_delay(node, ing, appp, APP_PORT, link_ms) if link_ms else None
    reqs = run.plan(n)
    node.capture_all(run.out)
    client = _client_h1(node, cli, f"{ing.ip}:{INGRESS_PORT}", reqs)
    node.stop_captures()
    if nfq:
        run.link_truth(nfq, ing, appp, APP_PORT, link_ms)
    run.truth["variant"] = {"keepalive": keepalive, "link_ms": link_ms}
    return run.finish(reqs, client, {"ingress": _nginx_log(ngx)}, _nginx_log(app))


def run_ingress_nokeepalive(out_dir: Path, n: int = 80, seed: int = 0,
                            link_ms: float = 5, small: bool = False) -> dict:
    """The ingress without upstream keep-alive (one upstream connection per request) and a
    ``link_ms`` NFQUEUE delay on the ingress → app link."""
    tr = run_ingress(out_dir, n=n, keepalive=False, link_ms=link_ms,
                     seed=seed or SEEDS["ingress-nokeepalive"], small=small)
    tr["scenario"] = "ingress-nokeepalive"
    (Path(out_dir) / "truth.json").write_text(
        json.dumps(tr, indent=None if small else 1, separators=(",", ":") if small else None)
        + "\n")
    return tr


@_guard
def run_chain(run: Run, n: int = 120, delay_max_ms: int = 20) -> dict:
    """client → nginx ingress (keep-alive) → sidecar pod (REDIRECT :8080 → haproxy :4143 that
    REWRITES the span id of traceparent / X-B3-SpanId / b3, and sleeps x-lab-delay-ms) → app
    (nginx on podIP:8080 over lo). The ingress passes headers through."""
    node = run.node
    cli = node.pod("client")
    ing = node.pod("ingress")
    srv = node.pod("server", capture_lo=True)
    app = C.nginx(node, srv, "app", APP_PORT, files=FILES)
    hp = C.haproxy(node, srv, "sidecar", C.LINKERD_INBOUND_PORT, f"{srv.ip}:{APP_PORT}",
                   delay=True, rewrite=True, seed=run.seed)
    run.iptables[srv.name] = C.sidecar_redirect(node, srv, APP_PORT)
    ngx = C.nginx(node, ing, "ingress", INGRESS_PORT, upstream=f"{srv.ip}:{APP_PORT}")
    run.proxies += [
        C.Proxy("ingress", "nginx", ing.name, f"{ing.ip}:{INGRESS_PORT}",
                f"{ing.ip}:{INGRESS_PORT}", f"{srv.ip}:{APP_PORT}"),
        C.Proxy("sidecar", "haproxy", srv.name, f"{srv.ip}:{APP_PORT}",
                f"{srv.ip}:{C.LINKERD_INBOUND_PORT}", f"{srv.ip}:{APP_PORT}",
                direction="inbound", rewrites_span_id=True, injects_delay=True)]
    reqs = run.plan(n, delay_max_ms=delay_max_ms)
    node.capture_all(run.out)
    client = _client_h1(node, cli, f"{ing.ip}:{INGRESS_PORT}", reqs)
    node.stop_captures()
    return run.finish(reqs, client, {"ingress": _nginx_log(ngx), "sidecar": _haproxy_log(hp)},
                      _nginx_log(app))


def _client_py(node: Node, pod, script: str, target: str, reqs: list[dict],
               *args: str) -> list[dict]:
    pf = node.tmp / "plan.json"
    out = node.tmp / "client.jsonl"
    pf.write_text(json.dumps({"target": target, "requests": [
        {"id": r["id"], "method": r["method"], "path": r["path"], "headers": r["headers"]}
        for r in reqs]}))
    node.run(pod.ns, sys.executable, str(HERE / script), *args, str(pf), str(out), timeout=60)
    return C.read_jsonl(out)


NGHTTPX_LOG = ("LAB ts=$time_iso8601 ci=$remote_addr:$remote_port st=$status m=$method "
               "p=$path v=$protocol rt=$request_time be=$backend_host:$backend_port "
               "id=$http_x_lab_id tp=$http_traceparent b3=$http_x_b3_spanid b3s=$http_b3")


@_guard
def run_h2(run: Run, n: int = 60) -> dict:
    """h2c prior knowledge: a Python ``h2`` client (one connection, its own trace headers per
    stream) → nghttpx (:3000, h2 backend) in a proxy pod → nghttpd (:8080) in an app pod.
    nghttpx's access log (with $request_time) goes to truth."""
    node = run.node
    cli, px, appp = node.pod("client"), node.pod("proxy"), node.pod("app")
    www = node.tmp / "h2www"
    for rel, data in FILES.items():
        (www / rel).parent.mkdir(parents=True, exist_ok=True)
        (www / rel).write_bytes(data)
    d = node.spawn(appp.ns, "nghttpd", "nghttpd", "--no-tls", "-a", appp.ip, "-d", str(www),
                   str(APP_PORT))
    node.wait_listening(appp.ns, APP_PORT, d)
    log = node.tmp / "nghttpx-access.log"
    x = node.spawn(px.ns, "nghttpx", "nghttpx", "--conf=/dev/null", "--workers=1",
                   "--frontend=0.0.0.0,3000;no-tls", f"--backend={appp.ip},{APP_PORT};;proto=h2",
                   f"--accesslog-file={log}", f"--accesslog-format={NGHTTPX_LOG}",
                   "--no-ocsp", "--errorlog-file=/dev/stderr")
    node.wait_listening(px.ns, 3000, x)
    run.proxies.append(C.Proxy("nghttpx", "nghttpx", px.name, f"{px.ip}:3000", f"{px.ip}:3000",
                               f"{appp.ip}:{APP_PORT}", protocol="http/2"))
    reqs = run.plan(n)
    for r in reqs:
        r["protocol"] = "http/2"
    node.capture_all(run.out)
    client = _client_py(node, cli, "h2client.py", f"{px.ip}:3000", reqs)
    node.stop_captures()
    x.stop()
    rows = C.parse_kv_log(log.read_text() if log.exists() else "")
    for r in rows:
        r["rt"] = _num(r.get("rt", ""))
        r["st"] = _num(r.get("st", ""))
    return run.finish(reqs, client, {"nghttpx": _by_id(rows)})


@_guard
def run_grpc(run: Run, n: int = 60, delay_max_ms: int = 10) -> dict:
    """grpcio client → haproxy (``mode http``, h2c frontend, ``proto h2`` backend, Lua sleep of
    the ``x-lab-delay-ms`` metadata) in a proxy pod → grpcio server (:50051) in an app pod.
    Unary /wirespan.lab.Echo/Say, trace headers as metadata."""
    node = run.node
    cli, px, appp = node.pod("client"), node.pod("proxy"), node.pod("app")
    g = node.spawn(appp.ns, "grpc-server", sys.executable, "-u", str(HERE / "grpcpeers.py"),
                   "server", appp.ip, "50051", ready="ready")
    node.wait_listening(appp.ns, 50051, g)
    hp = C.haproxy(node, px, "grpcproxy", 50051, f"{appp.ip}:50051", delay=True, h2=True,
                   seed=run.seed)
    run.proxies.append(C.Proxy("grpcproxy", "haproxy", px.name, f"{px.ip}:50051",
                               f"{px.ip}:50051", f"{appp.ip}:50051", injects_delay=True,
                               protocol="grpc"))
    reqs = run.plan(n, delay_max_ms=delay_max_ms)
    for r in reqs:
        r.update(protocol="grpc", method="POST", path="/wirespan.lab.Echo/Say")
    node.capture_all(run.out)
    client = _client_py(node, cli, "grpcpeers.py", f"{px.ip}:50051", reqs, "client")
    node.stop_captures()
    return run.finish(reqs, client, {"grpcproxy": _haproxy_log(hp)})


@_guard
def run_mesh(run: Run, n: int = 100, delay_max_ms: int = 20) -> dict:
    """Two sidecars, Linkerd-style: the client program in the client pod dials
    server:8080, iptables OUTPUT redirects it to the client pod's outbound haproxy on :4140
    (over lo; the proxy runs as uid 2102, exempted, and forwards to the dialled address) →
    server pod: PREROUTING REDIRECT :8080 → inbound haproxy :4143 (Lua sleep of
    x-lab-delay-ms) → app on podIP:8080 over lo. Captures: both pods' eth0 and lo."""
    node = run.node
    cli = node.pod("client", capture_lo=True)
    srv = node.pod("server", capture_lo=True)
    app = C.nginx(node, srv, "app", APP_PORT, files=FILES)
    hin = C.haproxy(node, srv, "inbound", C.LINKERD_INBOUND_PORT, f"{srv.ip}:{APP_PORT}",
                    delay=True, seed=run.seed)
    run.iptables[srv.name] = C.sidecar_redirect(node, srv, APP_PORT)
    hout = C.haproxy(node, cli, "outbound", C.LINKERD_OUTBOUND_PORT, "0.0.0.0", delay=False,
                     seed=run.seed, uid=C.PROXY_UID)
    run.iptables[cli.name] = C.sidecar_outbound_redirect(node, cli, APP_PORT)
    run.proxies += [
        # as seen on the client pod's lo: app → 127.0.0.1:4140; upstream = what it dialled
        C.Proxy("outbound", "haproxy", cli.name, f"127.0.0.1:{C.LINKERD_OUTBOUND_PORT}",
                f"0.0.0.0:{C.LINKERD_OUTBOUND_PORT}", f"{srv.ip}:{APP_PORT}",
                direction="outbound"),
        C.Proxy("inbound", "haproxy", srv.name, f"{srv.ip}:{APP_PORT}",
                f"{srv.ip}:{C.LINKERD_INBOUND_PORT}", f"{srv.ip}:{APP_PORT}",
                direction="inbound", injects_delay=True)]
    run.truth["dialled"] = f"{srv.ip}:{APP_PORT}"
    reqs = run.plan(n, delay_max_ms=delay_max_ms)
    node.capture_all(run.out)
    client = _client_h1(node, cli, f"{srv.ip}:{APP_PORT}", reqs)
    node.stop_captures()
    return run.finish(reqs, client, {"outbound": _haproxy_log(hout), "inbound": _haproxy_log(hin)},
                      _nginx_log(app))


SCENARIOS: dict[str, Callable[..., dict]] = {
    "sidecar": run_sidecar,
    "ingress": run_ingress,
    "ingress-nokeepalive": run_ingress_nokeepalive,
    "chain": run_chain,
    "h2": run_h2,
    "grpc": run_grpc,
    "mesh": run_mesh,
}
# distinct seeds: no two scenarios send the same trace ids
SEEDS = {"sidecar": 1, "ingress": 3, "ingress-nokeepalive": 2, "chain": 4, "h2": 5, "grpc": 6,
         "mesh": 7}
TOOLS = {"sidecar": ("haproxy", "nginx", "tcpdump", "iptables"),
         "ingress": ("nginx", "tcpdump"),
         "ingress-nokeepalive": ("nginx", "tcpdump", "iptables"),
         "chain": ("haproxy", "nginx", "tcpdump", "iptables"),
         "h2": ("nghttpx", "nghttpd", "tcpdump"),
         "grpc": ("haproxy", "tcpdump"),
         "mesh": ("haproxy", "nginx", "tcpdump", "iptables")}


def missing(*names: str) -> list[str]:
    """Why these scenarios cannot run here ([] = they can)."""
    import os
    from .node import which
    out = [] if os.geteuid() == 0 else ["root (network namespaces, capture, iptables)"]
    tools = {"ip", "ss"} | {t for n in (names or SCENARIOS) for t in TOOLS.get(n, ())}
    out += [f"{t} (apt-get install {t})" for t in sorted(tools) if which(t) is None]
    return out


# the mTLS mesh scenarios live in mtls.py (which builds on Run/_guard/plan above)
from . import mtls as _mtls  # noqa: E402

SCENARIOS.update(_mtls.SCENARIOS)
SEEDS.update(_mtls.SEEDS)
TOOLS.update(_mtls.TOOLS)
