"""Real software in the lab's pods: nginx (app and ingress), haproxy (sidecar inbound proxy,
delaying and span-id-rewriting Lua actions, HTTP/1 and h2/gRPC), nghttpx/nghttpd, the
Linkerd-proxy-init style iptables redirect, and NFQUEUE link delay. Each returns the handle
the scenario needs to read the component's own log afterwards."""

from __future__ import annotations

import json
import os
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
          upstream: str | None = None, keepalive: bool = True, addr: str | None = None) -> Proc:
    """nginx in ``pod`` on 0.0.0.0:``port`` (``addr``:``port`` if given, e.g. 127.0.0.1 for
    an app only its sidecar reaches): a static app (``files``) or, with ``upstream``,
    an ingress proxying everything there (upstream keep-alive or a new connection per
    request), passing ``X-Request-ID: $request_id`` upstream."""
    listen = f"{addr}:{port}" if addr else str(port)
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
        listen {listen} reuseport;
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
        listen {listen} reuseport;
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


# -- mTLS mesh (scripts/lab/mtls.py) -----------------------------------------------------------

MESH_DOMAIN = "lab.serviceaccount.identity.linkerd.cluster.local"  # Linkerd-style identities
LINKERD_SKIP_INBOUND = (4190, 4191)  # the proxy's own admin/tap ports, never redirected


@dataclass
class MeshPki:
    """A CA made for one run and one certificate per pod's proxy. Everything lives under the
    node's temp dir (removed at teardown), never in an output dir. ``pem[pod]`` is cert + key
    (haproxy's ``crt``), owned by the proxy uid, mode 0600, as a proxy owns its identity."""

    dir: Path
    ca: Path
    crt: dict[str, Path] = field(default_factory=dict)
    key: dict[str, Path] = field(default_factory=dict)
    pem: dict[str, Path] = field(default_factory=dict)
    identity: dict[str, str] = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # public facts only: subjects, SANs, fingerprints

    def truth(self) -> dict:
        return self.info


def _openssl(*args: str) -> str:
    r = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30)
    if r.returncode:
        raise RuntimeError(f"openssl {' '.join(args)}: {r.stderr}")
    return r.stdout


def _cert_info(crt: Path) -> dict:
    out = _openssl("x509", "-in", str(crt), "-noout", "-subject", "-issuer", "-serial",
                   "-fingerprint", "-sha256", "-ext", "subjectAltName,extendedKeyUsage")
    info: dict = {"san": [], "eku": []}
    lines = out.splitlines()
    for i, ln in enumerate(lines):
        if ln.startswith("subject="):
            info["subject"] = ln.split("=", 1)[1].strip()
        elif ln.startswith("issuer="):
            info["issuer"] = ln.split("=", 1)[1].strip()
        elif ln.startswith("serial="):
            info["serial"] = ln.split("=", 1)[1].strip()
        elif "Fingerprint=" in ln:
            info["sha256"] = ln.split("=", 1)[1].strip().replace(":", "").lower()
        elif "Subject Alternative Name" in ln and i + 1 < len(lines):
            info["san"] = [s.strip() for s in lines[i + 1].split(",")]
        elif "Extended Key Usage" in ln and i + 1 < len(lines):
            info["eku"] = [s.strip() for s in lines[i + 1].split(",")]
    return info


def mesh_pki(node: Node, pods: list[str], *, uid: int = PROXY_UID) -> MeshPki:
    """openssl: an EC P-256 CA (``CN=wirespan-lab-ca <node tag>``), and for each pod a key
    and a certificate it signs: ``CN=<identity>``, SAN ``DNS:<pod>, DNS:<identity>`` (identity
    ``<pod>.lab.serviceaccount.identity.linkerd.cluster.local``, as Linkerd names a workload),
    EKU serverAuth + clientAuth (each proxy is a TLS server inbound and a client outbound)."""
    d = node.tmp / "pki"
    d.mkdir(mode=0o711)
    ca_key, ca = d / "ca.key", d / "ca.crt"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(ca_key), "-out", str(ca), "-days", "2", "-sha256",
             "-subj", f"/CN=wirespan-lab-ca {node.tag}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    ca_key.chmod(0o600)
    ca.chmod(0o644)
    pki = MeshPki(d, ca)
    pki.info = {"ca": _cert_info(ca), "certs": {}}
    for pod in pods:
        ident = f"{pod}.{MESH_DOMAIN}"
        key, csr, crt, pem, ext = (d / f"{pod}.key", d / f"{pod}.csr", d / f"{pod}.crt",
                                   d / f"{pod}.pem", d / f"{pod}.ext")
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={ident}")
        ext.write_text(f"subjectAltName=DNS:{pod},DNS:{ident}\n"
                       "basicConstraints=critical,CA:FALSE\n"
                       "keyUsage=critical,digitalSignature\n"
                       "extendedKeyUsage=serverAuth,clientAuth\n")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
                 "-CAcreateserial", "-days", "2", "-sha256", "-extfile", str(ext),
                 "-out", str(crt))
        pem.write_bytes(crt.read_bytes() + key.read_bytes())
        for p in (key, pem):
            p.chmod(0o600)
            os.chown(p, uid, uid)
        crt.chmod(0o644)
        pki.crt[pod], pki.key[pod], pki.pem[pod], pki.identity[pod] = crt, key, pem, ident
        pki.info["certs"][pod] = {"identity": ident, **_cert_info(crt)}
    return pki


def proxy_init(node: Node, pod: Pod, *, inbound_port: int = LINKERD_INBOUND_PORT,
               outbound_port: int = LINKERD_OUTBOUND_PORT, uid: int = PROXY_UID,
               skip_inbound: tuple[int, ...] = LINKERD_SKIP_INBOUND) -> list[str]:
    """Linkerd proxy-init's full rule set (its chain names) in ``pod``: every inbound TCP
    connection (but the proxy's admin ports) is REDIRECTed to ``inbound_port`` in PREROUTING;
    every outbound one to ``outbound_port`` in OUTPUT, except the proxy's own (``uid``) and
    anything leaving through ``lo``. Returns the rules as ``iptables`` argument strings."""
    rules = [
        ["-t", "nat", "-N", "PROXY_INIT_REDIRECT"],
        ["-t", "nat", "-A", "PROXY_INIT_REDIRECT", "-p", "tcp", "-m", "multiport", "--dports",
         ",".join(map(str, skip_inbound)), "-j", "RETURN"],
        ["-t", "nat", "-A", "PROXY_INIT_REDIRECT", "-p", "tcp", "-j", "REDIRECT",
         "--to-ports", str(inbound_port)],
        ["-t", "nat", "-A", "PREROUTING", "-j", "PROXY_INIT_REDIRECT"],
        ["-t", "nat", "-N", "PROXY_INIT_OUTPUT"],
        ["-t", "nat", "-A", "PROXY_INIT_OUTPUT", "-m", "owner", "--uid-owner", str(uid),
         "-j", "RETURN"],
        ["-t", "nat", "-A", "PROXY_INIT_OUTPUT", "-o", "lo", "-j", "RETURN"],
        ["-t", "nat", "-A", "PROXY_INIT_OUTPUT", "-p", "tcp", "-j", "REDIRECT", "--to-ports",
         str(outbound_port)],
        ["-t", "nat", "-A", "OUTPUT", "-j", "PROXY_INIT_OUTPUT"],
    ]
    for r in rules:
        node.run(pod.ns, "iptables", *r)
    return [" ".join(r) for r in rules]


def iptables_nat(node: Node, pod: Pod) -> list[str]:
    """``iptables -t nat -S`` in ``pod``: the rules really in place."""
    return node.run(pod.ns, "iptables", "-t", "nat", "-S").stdout.splitlines()


MESH_LOG = ("LAB ts=%Ts.%ms ci=%ci:%cp fe=%fi:%fp bc=%bi:%bp be=%si:%sp b=%b "
            "Tq=%Tq Tw=%Tw Tc=%Tc Tr=%Tr Ta=%Ta Th=%Th Ti=%Ti TR=%TR Td=%Td st=%ST m=%HM "
            "p=%HP v=%HV id=%[var(txn.labid)] tp=%[var(txn.tp)] b3t=%[var(txn.b3t)] "
            "b3=%[var(txn.b3)] b3s=%[var(txn.b3s)] dly=%[var(txn.dly)] "
            "slept_us=%[var(txn.slept_us)] cid=%[var(txn.cid)] fsslv=%sslv fsslc=%sslc "
            "falpn=%[var(txn.falpn)] fsni=%[var(txn.fsni)] bsslv=%[ssl_bc_protocol] "
            "balpn=%[ssl_bc_alpn]")
TLS_VERSIONS = {"1.2": "TLSv1.2", "1.3": "TLSv1.3"}


def haproxy_mesh(node: Node, pod: Pod, name: str, pki: MeshPki, *, direction: str,
                 delay_header: str, peer: str | None = None,
                 apps: dict[int, bool] | None = None, tls_max: str | None = None,
                 reuse: str = "never", ssl_reuse: bool = False, h1_over_h2: bool = False,
                 seed: int = 1, uid: int = PROXY_UID) -> Proc:
    """A Linkerd-like sidecar made of haproxy (``mode http``, running as ``uid`` so the
    pod's OUTPUT redirect exempts it), with the Lua action of mesh.lua sleeping the ms of
    ``delay_header``, logging one ``LAB`` line per request (MESH_LOG) to its stdout.

    ``direction="outbound"``: ``0.0.0.0:4140`` in plaintext (HTTP/1.1, or h2c detected from
    its preface); the upstream is the address the app dialled — ``server 0.0.0.0`` (no port):
    haproxy's ``dst`` of a connection REDIRECTed to it is its SO_ORIGINAL_DST (haproxy asks
    the socket for it, sock_inet_get_dst) — with mTLS: ``ssl verify required``, the CA, this
    pod's certificate as client certificate, SNI and verifyhost = ``peer``'s identity, ALPN
    ``http/1.1`` for HTTP/1 requests and ``h2`` for HTTP/2 ones (gRPC included).

    ``direction="inbound"``: ``0.0.0.0:4143`` with TLS (this pod's certificate, ``verify
    required`` against the CA: no client certificate, no connection; ALPN h2,http/1.1),
    ``l5d-client-id`` set to the caller's identity (its certificate's CN), then in plaintext
    over lo to the app on ``127.0.0.1:<original port>`` (``apps`` {port: speaks h2c}),
    chosen by ``dst_port`` — the port the caller dialled, again SO_ORIGINAL_DST.

    ``tls_max="1.2"`` pins TLS 1.2 (handshake and certificates in cleartext on the wire).
    ``reuse``: the outbound's ``http-reuse`` (``never``: one upstream TLS connection per app
    connection; ``always``: shared). ``ssl_reuse``: let the outbound resume TLS sessions
    (then only a connection's first handshake carries certificates); off by default
    (``no-ssl-reuse``): every connection is a full handshake with the client certificate.
    ``h1_over_h2``: HTTP/1.1 requests go to the peer as h2 too (ALPN h2), as Linkerd's
    proxies upgrade HTTP/1 between them, so they share (multiplexed) TLS connections."""
    d = node.tmp / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "mesh.lua").write_text((HERE / "mesh.lua").read_text())
    pem, ca = pki.pem[pod.name], pki.ca
    vmax = f" ssl-max-ver {TLS_VERSIONS[tls_max]}" if tls_max else ""
    common = f"""
    log-format "{MESH_LOG}"
    http-request set-var(txn.labid) req.hdr(x-lab-id)
    http-request set-var(txn.tp) req.hdr(traceparent)
    http-request set-var(txn.b3t) req.hdr(x-b3-traceid)
    http-request set-var(txn.b3) req.hdr(x-b3-spanid)
    http-request set-var(txn.b3s) req.hdr(b3)
    http-request lua.lab_delay_hdr {delay_header}"""
    if direction == "outbound":
        assert peer is not None
        ident = pki.identity[peer]
        tls = (f"ssl verify required ca-file {ca} crt {pem} sni str({ident}) "
               f"verifyhost {ident}{vmax}{'' if ssl_reuse else ' no-ssl-reuse'}")
        body = f"""
frontend outbound
    bind 0.0.0.0:{LINKERD_OUTBOUND_PORT}
    {common}
    use_backend mesh_h2 if {{ req.ver 2.0 }}
    default_backend mesh_h1

backend mesh_h1
    http-reuse {reuse}
    server peer 0.0.0.0 {tls} alpn {"h2" if h1_over_h2 else "http/1.1"}

backend mesh_h2
    http-reuse {reuse}
    server peer 0.0.0.0 {tls} alpn h2
"""
        port = LINKERD_OUTBOUND_PORT
    elif direction == "inbound":
        bind_tls = f"ssl crt {pem} ca-file {ca} verify required alpn h2,http/1.1{vmax}"
        apps = apps or {}
        routes = "\n    ".join(f"use_backend app_{p} if {{ dst_port {p} }}" for p in apps)
        backends = "\n".join(f"""
backend app_{p}
    http-reuse safe
    server app 127.0.0.1:{p}{" proto h2" if h2 else ""}
""" for p, h2 in apps.items())
        body = f"""
frontend inbound
    bind 0.0.0.0:{LINKERD_INBOUND_PORT} {bind_tls}
    http-request set-var(txn.cid) ssl_c_s_dn(CN)
    http-request set-var(txn.falpn) ssl_fc_alpn
    http-request set-var(txn.fsni) ssl_fc_sni
    http-request set-header l5d-client-id %[var(txn.cid)]
    {common}
    {routes}
{backends}"""
        port = LINKERD_INBOUND_PORT
    else:
        raise ValueError(direction)
    cfg = d / "haproxy.cfg"
    cfg.write_text(f"""
global
    log stdout format raw local0
    nbthread 1
    setenv LAB_SEED {seed}
    lua-load {d}/mesh.lua
    uid {uid}
    gid {uid}

defaults
    mode http
    log global
    timeout connect 2s
    timeout client 20s
    timeout server 20s
    option http-keep-alive
{body}""")
    proc = node.spawn(pod.ns, name, "haproxy", "-db", "-f", str(cfg))
    node.wait_listening(pod.ns, port, proc)
    proc.config = cfg  # type: ignore[attr-defined]
    return proc
