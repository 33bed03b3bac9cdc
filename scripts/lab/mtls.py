"""The mTLS mesh scenarios: two meshed pods as Linkerd builds them, with haproxy sidecars
that speak mTLS to each other.

Topology (pod IPs 10.88.0.10 client, 10.88.0.11 server, inside the lab's namespaces only)::

    client pod                                   server pod
    app (meshclient.py, root)                    app on 127.0.0.1 (nginx :8080,
      │ dials server:PORT                          nghttpd h2c :8081, grpcio :50051)
      │ OUTPUT REDIRECT → :4140  (lo)               ▲ plaintext (lo), l5d-client-id
    outbound haproxy (uid 2102, exempted)        inbound haproxy (uid 2102) :4143
      │ server 0.0.0.0 = SO_ORIGINAL_DST            ▲ TLS, verify required (client cert)
      └── mTLS client:eph → server:PORT ─(eth0)─ PREROUTING REDIRECT PORT → :4143

Both pods get Linkerd proxy-init's full rule set (``components.proxy_init``): every inbound
TCP connection but the admin ports 4190/4191 → 4143, every outbound one → 4140 except the
proxy's uid 2102 and ``-o lo``. The outbound proxy forwards to the address the app dialled
(haproxy's ``dst`` of a REDIRECTed connection is SO_ORIGINAL_DST; ``server 0.0.0.0`` with no
port dials it), with TLS (client certificate, SNI and verifyhost = the server's identity, ALPN
``http/1.1`` or ``h2``); the server pod's PREROUTING REDIRECT takes it to the inbound proxy,
which requires a client certificate from the lab's CA, routes by the original port
(``dst_port``) and speaks plaintext (HTTP/1.1 or h2c) to the app over lo. Each proxy sleeps
the ms of its own request header (``x-lab-delay-out-ms``, ``x-lab-delay-in-ms``; mesh.lua)
and logs its timers and the request's trace headers.

The CA and the keys live in the node's temp dir (removed at teardown); nothing secret is
written to the output dir — checked after every run (``mesh.key_material_in_output``).

Scenarios (``SCENARIOS``): ``mtls`` (HTTP/1.1, 4 keep-alive connections, one request in flight
at a time), ``mtls-h2`` (h2c app, one connection, one stream at a time; h2 over TLS between
the proxies), ``mtls-grpc`` (gRPC unary, one call at a time), ``mtls-tls12`` (as ``mtls``,
TLS 1.2 pinned: handshake and certificates in cleartext), ``mtls-concurrent`` (the three
protocols at once, 8 in flight each). truth.json: see ``finish`` and docs/proxies.md.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

from . import components as C
from . import scenarios as S
from .node import Node, Pod

HERE = Path(__file__).resolve().parent
DELAY_HDR = {"outbound": "x-lab-delay-out-ms", "inbound": "x-lab-delay-in-ms"}
DELAY_MAX = {"outbound": 10, "inbound": 20}
APPS = {
    "http/1.1": {"port": 8080, "h2": False, "app": "nginx", "client": "h1", "prefix": "h",
                 "alpn": "http/1.1"},
    "http/2": {"port": 8081, "h2": True, "app": "nghttpd", "client": "h2", "prefix": "s",
               "alpn": "h2"},
    "grpc": {"port": 50051, "h2": True, "app": "grpcio", "client": "grpc", "prefix": "g",
             "alpn": "h2"},
}
GRPC_PATH = "/wirespan.lab.Echo/Say"
ORIGINAL_DST = ("outbound haproxy 'server 0.0.0.0' (no port): haproxy's dst of a connection "
                "REDIRECTed to it is SO_ORIGINAL_DST (sock_inet_get_dst), so it dials the "
                "address the app dialled; the server pod's PREROUTING REDIRECT takes that to "
                "the inbound proxy on 4143, which routes by dst_port (the original port)")


# -- logs --------------------------------------------------------------------------------------

def mesh_log(proc) -> dict[str, dict]:
    rows = C.parse_kv_log(proc.output())
    for r in rows:
        for k in ("Tq", "Tw", "Tc", "Tr", "Ta", "Th", "Ti", "TR", "Td", "st", "slept_us"):
            r[k] = S._num(r.get(k, ""))
        r["ts"] = float(r["ts"]) if r.get("ts") else None
    return S._by_id(rows)


# -- pods --------------------------------------------------------------------------------------

def _apps(node: Node, srv: Pod, protocols: list[str]) -> dict[str, object]:
    procs: dict[str, object] = {}
    for proto in protocols:
        a = APPS[proto]
        port = a["port"]
        if a["app"] == "nginx":
            procs[proto] = C.nginx(node, srv, "app", port, files=S.FILES, addr="127.0.0.1")
        elif a["app"] == "nghttpd":
            www = node.tmp / "h2www"
            for rel, data in S.FILES.items():
                (www / rel).parent.mkdir(parents=True, exist_ok=True)
                (www / rel).write_bytes(data)
            p = node.spawn(srv.ns, "nghttpd", "nghttpd", "--no-tls", "-a", "127.0.0.1", "-d",
                           str(www), str(port))
            node.wait_listening(srv.ns, port, p)
            procs[proto] = p
        else:
            p = node.spawn(srv.ns, "grpc-server", sys.executable, "-u",
                           str(HERE / "grpcpeers.py"), "server", "127.0.0.1", str(port),
                           ready="ready")
            node.wait_listening(srv.ns, port, p)
            procs[proto] = p
    return procs


def _probe(node: Node, pod: Pod, target: str, sni: str, pki: C.MeshPki, *,
           cert: bool, tls_max: str | None) -> dict:
    args = [sys.executable, str(HERE / "tlsprobe.py"), target, sni, str(pki.ca)]
    if cert:
        args += [str(pki.crt[pod.name]), str(pki.key[pod.name])]
    args += ["--uid", str(C.PROXY_UID)]
    if tls_max:
        args += ["--tls", tls_max]
    r = node.run(pod.ns, *args, check=False, timeout=20)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"ok": False, "error": f"probe failed: {r.stderr[-500:]}"}


def _clients(node: Node, pod: Pod, jobs: list[tuple[str, str, list[dict], dict]]) -> list[dict]:
    """Run the client programs (one per protocol) at the same time; their rows."""
    running = []
    for proto, target, reqs, opts in jobs:
        a = APPS[proto]
        pf = node.tmp / f"plan-{a['client']}.json"
        out = node.tmp / f"client-{a['client']}.jsonl"
        pf.write_text(json.dumps({"target": target, **opts, "requests": [
            {"id": r["id"], "method": r["method"], "path": r["path"], "headers": r["headers"]}
            for r in reqs]}))
        p = node.spawn(pod.ns, f"client-{a['client']}", sys.executable, "-u",
                       str(HERE / "meshclient.py"), a["client"], str(pf), str(out))
        running.append((p, out))
    rows: list[dict] = []
    for p, out in running:
        try:
            rc = p.popen.wait(120)
        except Exception:
            p.stop()
            raise
        if rc != 0:
            raise RuntimeError(f"{p.name} failed ({rc}):\n{p.output()[-3000:]}")
        rows += C.read_jsonl(out)
    return rows


def _keys_in(out: Path, pki: C.MeshPki) -> list[str]:
    """Files under ``out`` holding key material: a PEM private-key marker, or any 48-char
    run of a key file's base64 body (the CA's or a pod's)."""
    needles = [b"PRIVATE KEY"]
    for k in [pki.dir / "ca.key", *pki.key.values()]:
        body = b"".join(ln for ln in k.read_bytes().splitlines() if not ln.startswith(b"-----"))
        needles += [body[i:i + 48] for i in range(0, max(1, len(body) - 48), 48)]
    bad = []
    for f in sorted(out.rglob("*")):
        if f.is_file():
            data = f.read_bytes()
            if any(n and n in data for n in needles):
                bad.append(f.name)
    return bad


# -- the scenario ------------------------------------------------------------------------------

def mtls(run: S.Run, *, n: int, protocols: tuple[str, ...] = ("http/1.1",),
         concurrency: int = 1, connections: int = 4, tls_max: str | None = None,
         reuse: str = "never", ssl_reuse: bool = False, h1_over_h2: bool = False,
         delay_max: dict[str, int] | None = None,
         hook: Callable[[dict], None] | None = None) -> dict:
    node = run.node
    delay_max = {**DELAY_MAX, **(delay_max or {})}
    cli = node.pod("client", capture_lo=True)
    srv = node.pod("server", capture_lo=True)
    pki = C.mesh_pki(node, [cli.name, srv.name])
    apps = _apps(node, srv, list(protocols))
    app_ports = {APPS[p]["port"]: APPS[p]["h2"] for p in protocols}
    hin = C.haproxy_mesh(node, srv, "inbound", pki, direction="inbound",
                         delay_header=DELAY_HDR["inbound"], apps=app_ports, tls_max=tls_max,
                         seed=run.seed)
    hout = C.haproxy_mesh(node, cli, "outbound", pki, direction="outbound",
                          delay_header=DELAY_HDR["outbound"], peer=srv.name, tls_max=tls_max,
                          reuse=reuse, ssl_reuse=ssl_reuse, h1_over_h2=h1_over_h2,
                          seed=run.seed)
    for pod in (cli, srv):
        run.iptables[pod.name] = C.proxy_init(node, pod)
    live = {pod.name: C.iptables_nat(node, pod) for pod in (cli, srv)}
    ups = [f"{srv.ip}:{APPS[p]['port']}" for p in protocols]
    proto_name = protocols[0] if len(protocols) == 1 else "mixed"
    run.proxies += [
        C.Proxy("outbound", "haproxy", cli.name, f"127.0.0.1:{C.LINKERD_OUTBOUND_PORT}",
                f"0.0.0.0:{C.LINKERD_OUTBOUND_PORT}", ",".join(ups), direction="outbound",
                upstream_keepalive=True, injects_delay=True, protocol=proto_name),
        C.Proxy("inbound", "haproxy", srv.name, ",".join(ups),
                f"{srv.ip}:{C.LINKERD_INBOUND_PORT}",
                ",".join(f"127.0.0.1:{APPS[p]['port']}" for p in protocols),
                direction="inbound", injects_delay=True, protocol=proto_name)]

    # the plan: per protocol a share of n, trace headers as plan() draws them, then each
    # proxy's delay from a generator of its own (the plan stays what plan() makes)
    drng = random.Random(run.seed * 7919 + 1)
    jobs, reqs = [], []
    share = [n // len(protocols) + (1 if i < n % len(protocols) else 0)
             for i in range(len(protocols))]
    for proto, k in zip(protocols, share):
        a = APPS[proto]
        rs = S.plan(run.rng, k, prefix=a["prefix"],
                    paths=S.PATHS[:2] if run.small else S.PATHS)
        for r in rs:
            r["protocol"] = proto
            if proto == "grpc":
                r.update(method="POST", path=GRPC_PATH)
            r["app_port"] = a["port"]
            r["dialled"] = f"{srv.ip}:{a['port']}"
            r["delays_ms"] = {}
            for side in ("outbound", "inbound"):
                d = drng.randint(0, delay_max[side]) if delay_max[side] else 0
                r["delays_ms"][side] = d
                r["headers"][DELAY_HDR[side]] = str(d)
            r["injected_delay_ms"] = sum(r["delays_ms"].values())
        opts = {"concurrency": concurrency, "connections": connections if proto ==
                "http/1.1" else 1, "gap_s": 0.002, "warmup": 1}
        jobs.append((proto, f"{srv.ip}:{a['port']}", rs, opts))
        reqs += rs

    node.capture_all(run.out)
    client = _clients(node, cli, jobs)
    node.stop_captures()

    # after the capture: is a client certificate really required? (uid 2102: not redirected)
    first = APPS[protocols[0]]["port"]
    probes = {
        "with_client_cert": _probe(node, cli, f"{srv.ip}:{first}", pki.identity[srv.name], pki,
                                   cert=True, tls_max=tls_max),
        "without_client_cert": _probe(node, cli, f"{srv.ip}:{first}", pki.identity[srv.name],
                                      pki, cert=False, tls_max=tls_max),
    }
    logs = {"outbound": mesh_log(hout), "inbound": mesh_log(hin)}
    app_logs = S._nginx_log(apps["http/1.1"]) if "http/1.1" in apps else {}
    if hook is not None:
        hook({"node": node, "pods": {cli.name: cli, srv.name: srv}, "pki": pki,
              "out": run.out, "procs": {"outbound": hout, "inbound": hin, **apps},
              "tls_max": tls_max})
    run.truth["mesh"] = {
        "inbound_port": C.LINKERD_INBOUND_PORT, "outbound_port": C.LINKERD_OUTBOUND_PORT,
        "proxy_uid": C.PROXY_UID, "skip_inbound_ports": list(C.LINKERD_SKIP_INBOUND),
        "protocols": list(protocols), "concurrency": concurrency,
        "connections": {p: (connections if p == "http/1.1" else 1) if concurrency == 1 else
                        (concurrency if p == "http/1.1" else 1) for p in protocols},
        "outbound_http_reuse": reuse,
        "apps": {p: {"port": APPS[p]["port"], "listen": f"127.0.0.1:{APPS[p]['port']}",
                     "server": APPS[p]["app"], "h2c": APPS[p]["h2"]} for p in protocols},
        "delay_headers": DELAY_HDR, "delay_max_ms": delay_max,
        "original_destination": ORIGINAL_DST,
        "tls": {"versions": [f"TLS {tls_max}"] if tls_max else ["TLS 1.3"],
                "max_version": tls_max or "1.3",
                "alpn": {p: "h2" if h1_over_h2 else APPS[p]["alpn"] for p in protocols},
                "h1_over_h2": h1_over_h2,
                "inbound_alpn_offered": ["h2", "http/1.1"],
                "session_resumption": ssl_reuse,
                "sni": pki.identity[srv.name], "client_cert_required": True,
                "identities": dict(pki.identity), **pki.truth()},
        "probes": probes,
        "iptables_nat": live,
        "key_dir": "the node's temp dir (removed at teardown), never the output dir",
    }
    tr = finish(run, reqs, client, logs, app_logs)
    run.truth["mesh"]["key_material_in_output"] = False
    _write(run)
    bad = _keys_in(run.out, pki)  # the captures and truth.json, as written
    if bad:
        run.truth["mesh"]["key_material_in_output"] = True
        _write(run)
        raise RuntimeError(f"key material in the output dir: {bad}")
    return tr


TLS_FIELDS = ("cid", "fsslv", "fsslc", "falpn", "fsni", "bsslv", "balpn")


def _clean(d: dict | None) -> dict | None:
    """A parsed log line without the fields the proxy logged as '-'."""
    return None if d is None else {k: v for k, v in d.items() if v not in ("", None)}


def finish(run: S.Run, reqs: list[dict], client: list[dict], logs: dict[str, dict[str, dict]],
           apps: dict[str, dict]) -> dict:
    """Per request: id, method, path, protocol, app_port, dialled, trace {format, trace_id,
    span_id, headers}, delays_ms {outbound, inbound} (asked of each proxy), injected_delay_ms
    (their sum), client {send_ns, first_byte_ns, done_ns, status, conn, local_port,
    stream_id, grpc_status}, path_proxies, link_delay_ms, tls_leg {client, server, agree}
    (the mTLS connection on eth0 the request travelled on: the outbound's backend source and
    server address; ``agree``: the inbound logged the same pair as its client and frontend
    address), hops [{proxy, pod, direction, address, upstream, delay_header,
    injected_delay_ms, slept_ms, span_id_in, span_id_out, log}], app_log (nginx app only).
    Log fields the proxy logged as '-' are left out. Per TLS connection (``mesh.
    tls_connections``): client, server, version, cipher, alpn, sni, client_identity (the
    caller's certificate CN, as the inbound saw it), requests (ids, in send order)."""
    cl = S._by_id(client)
    by_name = {p.name: p for p in run.proxies}
    conns: dict[tuple, dict] = {}
    for r in sorted(reqs, key=lambda r: (cl.get(r["id"]) or {}).get("send_ns") or 0):
        r["client"] = cl.get(r["id"])
        r["path_proxies"] = [p.name for p in run.proxies]
        r["link_delay_ms"] = 0
        span = r["trace"]["span_id"]
        hops = []
        for name in ("outbound", "inbound"):
            p = by_name[name]
            lg = _clean(logs.get(name, {}).get(r["id"], {}))
            hops.append({
                "proxy": name, "pod": p.pod, "direction": p.direction,
                "address": f"127.0.0.1:{C.LINKERD_OUTBOUND_PORT}" if name == "outbound"
                else r["dialled"],
                "upstream": r["dialled"] if name == "outbound"
                else f"127.0.0.1:{r['app_port']}",
                "delay_header": DELAY_HDR[name], "injected_delay_ms": r["delays_ms"][name],
                "slept_ms": lg["slept_us"] / 1000 if lg.get("slept_us") is not None else None,
                "span_id_in": span, "span_id_out": span, "log": lg})
        r["hops"] = hops
        o, i = hops[0]["log"], hops[1]["log"]
        leg = (o.get("bc") or i.get("ci"), o.get("be") or i.get("fe"))
        r["tls_leg"] = {"client": leg[0], "server": leg[1],
                        "agree": (o.get("bc"), o.get("be")) == (i.get("ci"), i.get("fe"))}
        if leg[0]:
            c = conns.setdefault(leg, {
                "client": leg[0], "server": leg[1], "version": i.get("fsslv") or o.get("bsslv"),
                "cipher": i.get("fsslc"), "alpn": i.get("falpn") or o.get("balpn"),
                "sni": i.get("fsni"), "client_identity": i.get("cid"), "requests": []})
            c["requests"].append(r["id"])
        for lg in (o, i):
            for k in TLS_FIELDS:
                lg.pop(k, None)
        if r["protocol"] == "http/1.1":
            r["app_log"] = _clean(apps.get(r["id"]))
        r.pop("headers", None)
    reqs.sort(key=lambda r: (r["client"] or {}).get("send_ns") or 0)
    run.truth["mesh"]["tls_connections"] = list(conns.values())
    run.truth.update({
        "pods": {p.name: p.ip for p in run.node.pods.values()},
        "captures": [{"file": f"{p.name}-{i}.pcap", "pod": p.name, "iface": i}
                     for p in run.node.pods.values() for i in p.ifaces],
        "iptables": run.iptables,
        "proxies": [{**p.truth(), "port": int(p.listen.rsplit(":", 1)[1]),
                     "delay_header": DELAY_HDR[p.name], "uid": C.PROXY_UID,
                     "tls": "client (upstream leg)" if p.name == "outbound"
                     else "server (downstream leg), client certificate required"}
                    for p in run.proxies],
        "link_delays": [],
        "requests": reqs,
        "ended_ns": time.time_ns(),
    })
    return run.truth


def _write(run: S.Run) -> None:
    run.out.mkdir(parents=True, exist_ok=True)
    (run.out / "truth.json").write_text(
        json.dumps(run.truth, indent=None if run.small else 1,
                   separators=(",", ":") if run.small else None) + "\n")


# -- registration ------------------------------------------------------------------------------

def _scenario(name: str, doc: str, defaults: dict, n: int) -> Callable[..., dict]:
    def fn(run: S.Run, n: int = n, hook: Callable[[dict], None] | None = None,
           **kw) -> dict:
        return mtls(run, n=n, hook=hook, **{**defaults, **kw})
    fn.__name__ = f"run_{name}"  # S._guard names the run (and picks its seed) from this
    fn.__doc__ = doc
    return S._guard(fn)


DOCS = {
    "mtls": """mTLS between haproxy sidecars of two meshed pods, HTTP/1.1, one in flight

    Linkerd proxy-init REDIRECT :4140 / :4143 (uid 2102 and lo exempted), client certificates
    from a per-run CA, 4 keep-alive connections; each proxy sleeps its own header's ms.
    Captures: both pods' eth0 (TLS) and lo (plaintext).""",
    "mtls-h2": """as mtls with an h2c app and client; h2 over TLS (ALPN h2) between proxies

    nghttpd app; one client connection, one stream at a time.""",
    "mtls-grpc": """as mtls with gRPC (grpcio unary, one call at a time); h2 over TLS

    /wirespan.lab.Echo/Say on a grpcio server on 127.0.0.1:50051.""",
    "mtls-tls12": """as mtls with TLS 1.2 pinned: handshake and certificates in cleartext""",
    "mtls-concurrent": """the mtls mesh with HTTP/1.1, h2c and gRPC at once, 8 in flight each

    8 HTTP/1 connections, 8 h2 streams on one connection, 8 gRPC calls on one channel, after
    one request of each alone (warm-up); the outbound proxy carries HTTP/1.1 as h2 too (as
    Linkerd does), shares upstream TLS connections between app connections (http-reuse
    always) and resumes TLS sessions: requests multiplexed on few TLS connections.""",
}
SCENARIOS: dict[str, Callable[..., dict]] = {
    "mtls": _scenario("mtls", DOCS["mtls"], {"protocols": ("http/1.1",)}, 120),
    "mtls-h2": _scenario("mtls-h2", DOCS["mtls-h2"], {"protocols": ("http/2",)}, 120),
    "mtls-grpc": _scenario("mtls-grpc", DOCS["mtls-grpc"], {"protocols": ("grpc",)}, 120),
    "mtls-tls12": _scenario("mtls-tls12", DOCS["mtls-tls12"],
                            {"protocols": ("http/1.1",), "tls_max": "1.2"}, 60),
    "mtls-concurrent": _scenario("mtls-concurrent", DOCS["mtls-concurrent"],
                                 {"protocols": ("http/1.1", "http/2", "grpc"),
                                  "concurrency": 8, "reuse": "always", "ssl_reuse": True,
                                  "h1_over_h2": True},
                                 150),
}
SEEDS = {"mtls": 11, "mtls-h2": 12, "mtls-grpc": 13, "mtls-tls12": 14, "mtls-concurrent": 15}
TOOLS = {k: ("haproxy", "nginx", "nghttpd", "tcpdump", "iptables", "openssl")
         for k in SCENARIOS}
