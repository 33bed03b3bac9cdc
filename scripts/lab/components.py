"""Real software in the lab's pods: nginx (app and ingress), haproxy (sidecar inbound proxy,
delaying and span-id-rewriting Lua actions, HTTP/1 and h2/gRPC), nghttpx/nghttpd, the
Linkerd-proxy-init style iptables redirect, and NFQUEUE link delay. Each returns the handle
the scenario needs to read the component's own log afterwards."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .node import Node, Pod, Proc

HERE = Path(__file__).resolve().parent
LINKERD_INBOUND_PORT = 4143
LINKERD_OUTBOUND_PORT = 4140
PROXY_UID = 2102  # Linkerd's proxy uid; exempted from outbound redirects


@dataclass
class Proxy:
    """A proxy as recorded in truth.json."""

    name: str
    kind: str  # "haproxy" | "nginx" | "nghttpx"
    pod: str
    address: str  # ip:port the client connects to (before any iptables redirect)
    listen: str  # ip:port the proxy's socket really listens on
    upstream: str
    direction: str | None = None  # "inbound" for a sidecar, None for a standalone proxy
    rewrites_span_id: bool = False
    upstream_keepalive: bool = True
    injects_delay: bool = False
    protocol: str = "http/1.1"
    log: Path | None = None
    proc: Proc | None = field(default=None, repr=False)

    def truth(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("log", "proc")}


_KV = re.compile(r"(\w+)=(\S*)")


def parse_kv_log(text: str) -> list[dict[str, str]]:
    """Lines ``LAB k=v k=v ...`` (both haproxy and nginx log formats here)."""
    out = []
    for ln in text.splitlines():
        i = ln.find("LAB ")
        if i < 0:
            continue
        d = {k: ("" if v in ("-", '""') else v.strip('"')) for k, v in _KV.findall(ln[i + 4:])}
        out.append(d)
    return out


# -- nginx -------------------------------------------------------------------------------------

NGINX_LOG = ("'LAB ts=$msec rid=$request_id ci=$remote_addr:$remote_port "
             "fe=$server_addr:$server_port ua=$upstream_addr rt=$request_time "
             "urt=$upstream_response_time uct=$upstream_connect_time "
             "uht=$upstream_header_time st=$status m=$request_method p=$uri v=$server_protocol "
             "id=$http_x_lab_id tp=$http_traceparent b3=$http_x_b3_spanid b3t=$http_x_b3_traceid "
             "b3s=$http_b3 xrid=$http_x_request_id'")


def nginx(node: Node, pod: Pod, name: str, port: int, *, files: dict[str, bytes] | None = None,
          upstream: str | None = None, keepalive: bool = True) -> Proc:
    """nginx in ``pod`` on 0.0.0.0:``port``: a static app (``files``) or, with ``upstream``,
    an ingress proxying everything there (upstream keep-alive or a new connection per
    request), passing ``X-Request-ID: $request_id`` upstream."""
    d = node.tmp / name
    www = d / "www"
    for rel, data in (files or {}).items():
        p = www / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (d / "tmp").mkdir(parents=True, exist_ok=True)
    www.mkdir(parents=True, exist_ok=True)
    for p in [d, www, *www.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    if upstream:
        ka = "keepalive 8;" if keepalive else ""
        conn = '""' if keepalive else "close"
        body = f"""
    upstream up {{ server {upstream}; {ka} }}
    server {{
        listen {port} reuseport;
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection {conn};
            proxy_set_header Host $host;
            proxy_set_header X-Request-ID $request_id;
        }}
    }}"""
    else:
        body = f"""
    server {{
        listen {port} reuseport;
        root {www};
        location / {{ add_header x-lab-app {name}; }}
    }}"""
    conf = d / "nginx.conf"
    conf.write_text(f"""
daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
    default_type application/octet-stream;
    log_format lab {NGINX_LOG};
    access_log {d}/access.log lab;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    sendfile off;
    gzip off;
    server_tokens off;
    keepalive_timeout 30s;
    keepalive_requests 10000;
    {body}
}}
""")
    proc = node.spawn(pod.ns, name, "nginx", "-p", str(d), "-c", str(conf), "-e",
                      f"{d}/error.log")
    node.wait_listening(pod.ns, port, proc)
    proc.access_log = d / "access.log"  # type: ignore[attr-defined]
    return proc


# -- haproxy -----------------------------------------------------------------------------------

HAPROXY_LOG = ("LAB ts=%Ts.%ms ci=%ci:%cp fe=%fi:%fp be=%si:%sp Tq=%Tq Tw=%Tw Tc=%Tc Tr=%Tr "
               "Ta=%Ta Th=%Th Ti=%Ti TR=%TR Td=%Td st=%ST m=%HM p=%HP v=%HV "
               "id=%[var(txn.labid)] tp=%[var(txn.tp)] b3=%[var(txn.b3)] b3s=%[var(txn.b3s)] "
               "dly=%[var(txn.dly)] slept_us=%[var(txn.slept_us)] os=%[var(txn.orig_span)] "
               "ns=%[var(txn.new_span)]")


def haproxy(node: Node, pod: Pod, name: str, port: int, upstream: str, *, delay: bool = True,
            rewrite: bool = False, h2: bool = False, seed: int = 1, uid: int | None = None,
            bind: str = "0.0.0.0") -> Proc:
    """haproxy in ``pod`` on 0.0.0.0:``port`` → ``upstream``; ``delay``: the Lua action that
    sleeps x-lab-delay-ms; ``rewrite``: the span-id rewriting action; ``h2``: h2c on both
    sides (gRPC); ``uid``: drop to this uid after binding (an outbound sidecar as Linkerd's
    2102, exempted from the redirect); ``upstream="0.0.0.0"``: forward to the destination the
    client dialled (SO_ORIGINAL_DST of the redirected connection). Logs one ``LAB`` line per
    request to its stdout (the proc's log)."""
    d = node.tmp / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "lab.lua").write_text((HERE / "lab.lua").read_text())
    proto = " proto h2" if h2 else ""
    actions = []
    if delay:
        actions.append("http-request lua.lab_delay")
    if rewrite:
        actions.append("http-request lua.lab_rewrite")
        actions.append("http-response set-header x-lab-rewrite %[var(txn.orig_span)]>"
                       "%[var(txn.new_span)] if { var(txn.new_span) -m found }")
    act = "\n    ".join(actions)
    cfg = d / "haproxy.cfg"
    cfg.write_text(f"""
global
    log stdout format raw local0
    nbthread 1
    setenv LAB_SEED {seed}
    lua-load {d}/lab.lua
    {f"uid {uid}" if uid is not None else ""}

defaults
    mode http
    log global
    timeout connect 2s
    timeout client 20s
    timeout server 20s
    option http-keep-alive

frontend {name}
    bind {bind}:{port}{proto}
    log-format "{HAPROXY_LOG}"
    http-request set-var(txn.labid) req.hdr(x-lab-id)
    http-request set-var(txn.tp) req.hdr(traceparent)
    http-request set-var(txn.b3) req.hdr(x-b3-spanid)
    http-request set-var(txn.b3s) req.hdr(b3)
    http-request set-var(txn.dly) req.hdr(x-lab-delay-ms)
    {act}
    default_backend {name}_up

backend {name}_up
    http-reuse {"never" if upstream.startswith("0.0.0.0") else "safe"}
    server up {upstream}{proto}
""")
    proc = node.spawn(pod.ns, name, "haproxy", "-db", "-f", str(cfg))
    node.wait_listening(pod.ns, port, proc)
    return proc


def sidecar_redirect(node: Node, pod: Pod, app_port: int,
                     proxy_port: int = LINKERD_INBOUND_PORT) -> list[str]:
    """Linkerd proxy-init's inbound rules (its chain names): everything arriving for
    ``app_port`` goes to the proxy. Outbound is not redirected here (no outbound proxy),
    but the proxy-uid and lo exemptions proxy-init puts first are installed for fidelity."""
    rules = [
        ["-t", "nat", "-N", "PROXY_INIT_REDIRECT"],
        ["-t", "nat", "-A", "PROXY_INIT_REDIRECT", "-p", "tcp", "--dport", str(app_port),
         "-j", "REDIRECT", "--to-ports", str(proxy_port)],
        ["-t", "nat", "-A", "PREROUTING", "-j", "PROXY_INIT_REDIRECT"],
        ["-t", "nat", "-N", "PROXY_INIT_OUTPUT"],
        ["-t", "nat", "-A", "PROXY_INIT_OUTPUT", "-m", "owner", "--uid-owner", str(PROXY_UID),
         "-j", "RETURN"],
        ["-t", "nat", "-A", "PROXY_INIT_OUTPUT", "-o", "lo", "-j", "RETURN"],
        ["-t", "nat", "-A", "OUTPUT", "-j", "PROXY_INIT_OUTPUT"],
    ]
    for r in rules:
        node.run(pod.ns, "iptables", *r)
    return [" ".join(r) for r in rules]


def sidecar_outbound_redirect(node: Node, pod: Pod, dport: int,
                              proxy_port: int = LINKERD_OUTBOUND_PORT) -> list[str]:
    """Linkerd proxy-init's outbound rules: what the pod's processes send to ``dport``
    (Linkerd: every TCP port) goes to the outbound proxy on :4140 over lo — except the
    proxy's own traffic (uid 2102) and traffic already on lo."""
    rules = [
        ["-t", "nat", "-N", "PROXY_INIT_OUTPUT"],
        ["-t", "nat", "-A", "PROXY_INIT_OUTPUT", "-m", "owner", "--uid-owner", str(PROXY_UID),
         "-j", "RETURN"],
        ["-t", "nat", "-A", "PROXY_INIT_OUTPUT", "-o", "lo", "-j", "RETURN"],
        ["-t", "nat", "-A", "PROXY_INIT_OUTPUT", "-p", "tcp", "--dport", str(dport), "-j",
         "REDIRECT", "--to-ports", str(proxy_port)],
        ["-t", "nat", "-A", "OUTPUT", "-j", "PROXY_INIT_OUTPUT"],
    ]
    for r in rules:
        node.run(pod.ns, "iptables", *r)
    return [" ".join(r) for r in rules]


# -- link delay with NFQUEUE -------------------------------------------------------------------

def link_delay(node: Node, src: Pod, dst: Pod, dport: int, ms: float, queue: int = 0) -> Proc:
    """Hold every packet from ``src`` to ``dst``:``dport`` for ``ms`` on the bridge, in the node
    namespace (bridged traffic through iptables FORWARD via br_netfilter, this netns only), so
    the delay lies *between* the two pods' captures: src's eth0 shows the SYN / data leaving on
    time and dst's eth0 shows them arriving ``ms`` later."""
    if not Path("/proc/sys/net/bridge").exists():  # br_netfilter not loaded (nor built in)
        subprocess.run(["modprobe", "br_netfilter"], check=False, capture_output=True)
    node.run(node.node_ns, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")
    log = node.tmp / f"nfq-{queue}.jsonl"
    proc = node.spawn(node.node_ns, f"nfqdelay-{queue}", sys.executable, "-u",
                      str(HERE / "nfqdelay.py"), str(queue), str(ms), str(log), ready="ready")
    node.run(node.node_ns, "iptables", "-A", "FORWARD", "-s", src.ip, "-d", dst.ip, "-p", "tcp",
             "--dport", str(dport), "-j", "NFQUEUE", "--queue-num", str(queue))
    proc.packet_log = log  # type: ignore[attr-defined]
    return proc


def read_jsonl(p: Path) -> list[dict]:
    try:
        return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()]
    except FileNotFoundError:
        return []
