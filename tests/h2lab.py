"""HTTP/2 and gRPC lab scenarios (for tests/test_http2_lab.py): real peers (nghttpd, nghttp,
h2load, curl, nghttpx, grpcio) in two throw-away network namespaces joined by one veth,
captured with tcpdump on the server namespace's end of the veth, plus the ground truth of what
the clients and servers themselves say they sent and received.

Each ``build_*`` function creates its own :class:`lab.Lab`, runs one scenario for a few
seconds, copies the capture into ``out_dir`` and tears the lab down (also on failure; with
``WIRESPAN_LAB_KEEP=DIR`` the lab also keeps a copy of every capture in DIR). It returns a
:class:`Scenario`.

An independent oracle for the tests lives here as well: :func:`h2_frames` reads the capture
with dpkt (not wirespan), reassembles each direction of each connection (clean veth captures:
it asserts there is no loss or reordering), cuts the byte streams into HTTP/2 frames with the
first- and last-byte packet times of each frame, and decodes header blocks with the ``hpack``
package — or, for a capture that starts mid-connection, with :func:`hpack_scan`, which only
resolves what the capture itself makes resolvable (static table, literals, and dynamic-table
entries inserted after the capture started).

Addresses: 10.77.<n>.1/24 (client) and 10.77.<n>.2/24 (server), or fd00:77:<n>::1/2 — inside
the lab's own namespaces only.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dpkt
import hpack
from hpack.hpack import decode_huffman, decode_integer
from hpack.table import HeaderTable
from lab import Capture, Lab, Proc, missing_requirements, wait_for

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_TOOLS = ("nghttp", "nghttpd", "h2load", "nghttpx", "tshark")
HTTP_PORT = 8080
GRPC_PORT = 50051
GRPC_SERVICE = "wirespan.test.Echo"
FILES = {
    "index.html": b"<html><body>wirespan h2 lab</body></html>\n",
    "a.txt": b"hello from nghttpd\n" * 20,
    "big.bin": bytes(range(256)) * 160,  # 40 KiB: several DATA frames and packets
    "sub/b.json": b'{"wirespan": "h2"}\n',
}

# frame types
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x4, 0x8, 0x20


def missing(*extra: str) -> list[str]:
    out = missing_requirements(*H2_TOOLS, *extra)
    try:
        import grpc  # noqa: F401
    except ImportError:
        out.append("grpcio not installed (pip install -e '.[test]')")
    return out


# -- ground truth ------------------------------------------------------------------------------

@dataclass
class Req:
    """One request as its client sent it and what came back, by the peers' own account."""

    method: str
    path: str
    authority: str
    headers: dict[str, str] = field(default_factory=dict)  # the trace / gRPC headers sent
    status: int | None = None
    grpc_status: int | None = None
    grpc_message: str | None = None
    trace_id: str = ""  # what a trace-context extractor must find in ``headers`` ("" = none)
    stream_id: int | None = None  # when the client reports it (nghttp -v, h2c upgrade)
    messages: int | None = None  # gRPC response messages the client received
    grpc: bool = False


@dataclass
class Scenario:
    name: str
    pcap: Path
    port: int  # server port (tshark: -d tcp.port==PORT,http2)
    client_ip: str
    server_ip: str
    requests: list[Req]
    connections: int  # TCP connections in the capture
    decode_as: str = "http2"  # "http" for the h2c upgrade (tshark follows the 101 itself)
    mid_stream: bool = False
    report: dict = field(default_factory=dict)  # tool-specific numbers (h2load's counters...)
    before: list[Req] = field(default_factory=list)  # mid-stream: calls before the capture

    def tshark_args(self) -> tuple[str, ...]:
        return ("-d", f"tcp.port=={self.port},{self.decode_as}")


def new_trace() -> tuple[str, str]:
    return secrets.token_hex(16), secrets.token_hex(8)


def traceparent(tid: str, sid: str) -> str:
    return f"00-{tid}-{sid}-01"


# -- lab plumbing ------------------------------------------------------------------------------

@contextmanager
def lab_pair(n: int, v6: bool = False) -> Iterator[tuple[Lab, str, str, str, str, str]]:
    """A Lab with client and server namespaces on one veth: (lab, cli, srv, server-side veth,
    client address, server address). Closed (everything stopped and removed) on exit."""
    lab = Lab()
    try:
        cli, srv = lab.netns("cli"), lab.netns("srv")
        if v6:
            c_ip, s_ip = f"fd00:77:{n}::1", f"fd00:77:{n}::2"
            _, if_s = lab.veth(cli, srv, (f"{c_ip}/64",), (f"{s_ip}/64",))
        else:
            c_ip, s_ip = f"10.77.{n}.1", f"10.77.{n}.2"
            _, if_s = lab.veth(cli, srv, (f"{c_ip}/24",), (f"{s_ip}/24",))
        yield lab, cli, srv, if_s, c_ip, s_ip
    finally:
        lab.close()


def wait_listening(lab: Lab, ns: str, port: int, proc: Proc) -> None:
    def listening() -> bool:
        assert proc.alive(), f"{proc.name} exited:\n{proc.output()}"
        out = lab.run(ns, "ss", "-Hltn", f"sport = :{port}", check=False).stdout
        return bool(out.strip())

    wait_for(listening, f"{proc.name} listening on :{port} in {ns}")


def docroot(lab: Lab) -> Path:
    root = lab.tmp / "www"
    for rel, data in FILES.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def nghttpd(lab: Lab, ns: str, port: int = HTTP_PORT, address: str | None = None) -> Proc:
    """nghttpd, cleartext (prior knowledge only: it does not answer ``Upgrade: h2c``)."""
    root = docroot(lab)
    args = ["nghttpd", "--no-tls", "-d", str(root)]
    if address:
        args.append(f"--address={address}")
    proc = lab.spawn(ns, f"nghttpd-{port}", *args, str(port))
    wait_listening(lab, ns, port, proc)
    return proc


def nghttpx(lab: Lab, ns: str, host: str, port: int = HTTP_PORT) -> Proc:
    """nghttpx with a cleartext frontend on ``host:port`` (h2c with prior knowledge, and the
    ``Upgrade: h2c`` dance for HTTP/1.1 clients), proxying over h2 to an nghttpd on the
    namespace's loopback, port 8081 (not on the captured veth)."""
    loop = "::1" if ":" in host else "127.0.0.1"  # getaddrinfo: only families in use
    nghttpd(lab, ns, 8081, address=loop)
    x = lab.spawn(ns, "nghttpx", "nghttpx", "--conf=/dev/null",
                  f"--frontend={host},{port};no-tls",
                  f"--backend={loop},8081;;proto=h2", "--workers=1", "--no-ocsp",
                  f"--pid-file={lab.tmp}/nghttpx.pid", "--errorlog-file=/dev/stderr",
                  "--accesslog-file=/dev/null")
    wait_listening(lab, ns, port, x)
    return x


def finish(cap: Capture, conns: int, out_dir: Path, name: str) -> Path:
    cap.wait_fins(2 * conns)
    cap.stop()
    out = out_dir / f"{name}.pcap"
    shutil.copy(cap.path, out)
    return out


def run_ok(lab: Lab, ns: str, *cmd: str, timeout: float = 30) -> str:
    r = lab.run(ns, *cmd, timeout=timeout, check=False)
    assert r.returncode == 0, (
        f"{cmd[0]} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r.stdout


# -- a. nghttp: one connection, many concurrent streams ----------------------------------------

_SEND_HEADERS = re.compile(r"send HEADERS frame <length=\d+, flags=0x[0-9a-f]+, stream_id=(\d+)>")
_RECV_STATUS = re.compile(r"recv \(stream_id=(\d+)\) :status: (\d+)")
_HEADER_LINE = re.compile(r"^ {10}([:!-~][!-~]*?): (.*)$")


def parse_nghttp_verbose(out: str) -> tuple[dict[int, list[tuple[str, str]]], dict[int, int]]:
    """nghttp -v: (stream id -> header fields it sent, stream id -> :status it received)."""
    sent: dict[int, list[tuple[str, str]]] = {}
    cur: int | None = None
    for line in out.splitlines():
        m = _SEND_HEADERS.search(line)
        if m:
            cur = int(m.group(1))
            sent[cur] = []
            continue
        if line.startswith("["):
            cur = None
            continue
        m = _HEADER_LINE.match(line)
        if cur is not None and m:
            sent[cur].append((m.group(1), m.group(2)))
    status = {int(s): int(c) for s, c in _RECV_STATUS.findall(out)}
    return sent, status


def build_nghttp(out_dir: Path) -> Scenario:
    """nghttpd (cleartext) and ``nghttp`` with prior knowledge: 4 paths x ``-m 4`` = 16
    streams sent at once on one connection, with traceparent and x-request-id headers."""
    with lab_pair(1) as (lab, cli, srv, if_s, c_ip, s_ip):
        nghttpd(lab, srv)
        cap = lab.tcpdump(srv, if_s, "nghttp")
        tid, sid = new_trace()
        rid = str(uuid.uuid4())
        paths = ["/a.txt", "/big.bin", "/sub/b.json", "/missing.txt"]
        out = run_ok(lab, cli, "nghttp", "-v", "-n", "-m", "4", "-t", "10",
                     "-H", f"traceparent: {traceparent(tid, sid)}", "-H", f"x-request-id: {rid}",
                     *(f"http://{s_ip}:{HTTP_PORT}{p}" for p in paths))
        pcap = finish(cap, 1, out_dir, "nghttp")
    sent, status = parse_nghttp_verbose(out)
    reqs = []
    for st, hdrs in sorted(sent.items()):
        h = dict(hdrs)
        reqs.append(Req(h[":method"], h[":path"], h[":authority"],
                        {k: v for k, v in hdrs if k in ("traceparent", "x-request-id")},
                        status=status.get(st), trace_id=tid, stream_id=st))
    assert len(reqs) == 16 and all(r.status for r in reqs), (sent, status)
    return Scenario("nghttp", pcap, HTTP_PORT, c_ip, s_ip, reqs, 1)


# -- b. h2load: two connections, 16 concurrent streams each ------------------------------------

def parse_h2load(out: str) -> dict[str, int]:
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    s = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    assert m and s, out
    keys = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
    return {**dict(zip(keys, map(int, m.groups()))),
            **dict(zip(("2xx", "3xx", "4xx", "5xx"), map(int, s.groups())))}


def build_h2load(out_dir: Path, n: int = 300, clients: int = 2, streams: int = 16) -> Scenario:
    """h2load against nghttpd: ``-n 300 -c 2 -m 16`` over three paths (one a 404), h2c with
    prior knowledge. Ground truth is h2load's own counters; h2load sends the URIs round-robin
    per client, so each client's share is split evenly over them."""
    with lab_pair(2) as (lab, cli, srv, if_s, c_ip, s_ip):
        nghttpd(lab, srv)
        cap = lab.tcpdump(srv, if_s, "h2load")
        tid, sid = new_trace()
        paths = ["/a.txt", "/index.html", "/nope.txt"]
        out = run_ok(lab, cli, "h2load", "-n", str(n), "-c", str(clients), "-m", str(streams),
                     "-H", f"traceparent: {traceparent(tid, sid)}",
                     *(f"http://{s_ip}:{HTTP_PORT}{p}" for p in paths), timeout=60)
        pcap = finish(cap, clients, out_dir, "h2load")
    rep = parse_h2load(out)
    assert rep["done"] == n and rep["errored"] == 0 and rep["timeout"] == 0, out
    per_client = n // clients
    assert per_client % len(paths) == 0
    reqs = []
    for _ in range(clients):
        for i in range(per_client):
            p = paths[i % len(paths)]
            reqs.append(Req("GET", p, f"{s_ip}:{HTTP_PORT}", {"traceparent": traceparent(tid, sid)},
                            status=404 if p == "/nope.txt" else 200, trace_id=tid))
    assert rep["2xx"] == sum(r.status == 200 for r in reqs), (rep, out)
    assert rep["4xx"] == sum(r.status == 404 for r in reqs), (rep, out)
    return Scenario("h2load", pcap, HTTP_PORT, c_ip, s_ip, reqs, clients, report=rep)


# -- c. curl: prior knowledge (IPv6), and the h2c upgrade through nghttpx ----------------------

CURL_WOUT = "%{http_code} %{num_connects} %{http_version} %{url_effective}\\n"


def curl_lines(lab: Lab, ns: str, *args: str) -> list[list[str]]:
    out = run_ok(lab, ns, "curl", "--silent", "--show-error", "--noproxy", "*",
                 "--max-time", "10", *args)
    return [ln.split() for ln in out.splitlines() if ln.strip()]


def build_curl_prior_knowledge(out_dir: Path) -> Scenario:
    """``curl --http2-prior-knowledge`` over IPv6 to nghttpd: four transfers, each with its
    own trace header (traceparent twice, b3 single header, x-request-id), one HEAD.

    One curl (so one connection) per transfer: curl 7.88.1 (Debian 12) fails every transfer
    after the first on a reused prior-knowledge connection ("Error in the HTTP2 framing
    layer", with ``--next``, several URLs, or ``-Z``), against nghttpd and nghttpx alike,
    before sending anything. Several streams on one curl connection: see the upgrade
    scenario, where reuse works."""
    with lab_pair(3, v6=True) as (lab, cli, srv, if_s, c_ip, s_ip):
        nghttpd(lab, srv)
        cap = lab.tcpdump(srv, if_s, "curl-h2")
        base = f"http://[{s_ip}]:{HTTP_PORT}"
        t1, s1 = new_trace()
        t2, s2 = new_trace()
        t3, s3 = new_trace()
        rid = str(uuid.uuid4())
        plan: list[tuple[str, str, dict[str, str], str]] = [
            ("GET", "/a.txt", {"traceparent": traceparent(t1, s1)}, t1),
            ("GET", "/sub/b.json?q=1&r=two", {"traceparent": traceparent(t2, s2)}, t2),
            ("HEAD", "/big.bin", {"b3": f"{t3}-{s3}-1"}, t3),
            ("GET", "/nothing-here", {"x-request-id": rid}, rid.replace("-", "")),
        ]
        lines = []
        for method, path, hdrs, _ in plan:
            args = ["--http2-prior-knowledge", "-o", "/dev/null", "-w", CURL_WOUT]
            args += ["-I"] if method == "HEAD" else []
            for k, v in hdrs.items():
                args += ["-H", f"{k}: {v}"]
            lines += curl_lines(lab, cli, *args, base + path)
        pcap = finish(cap, len(plan), out_dir, "curl-h2")
    assert [ln[1] for ln in lines] == ["1"] * len(plan), lines
    assert all(ln[2] == "2" for ln in lines), lines
    reqs = [Req(m, p, f"[{s_ip}]:{HTTP_PORT}", h, status=int(ln[0]), trace_id=t, stream_id=1)
            for (m, p, h, t), ln in zip(plan, lines)]
    return Scenario("curl-h2", pcap, HTTP_PORT, c_ip, s_ip, reqs, len(plan))


def build_curl_upgrade(out_dir: Path) -> Scenario:
    """``curl --http2`` (HTTP/1.1 request with ``Upgrade: h2c``, answered ``101 Switching
    Protocols`` and then HTTP/2; stream 1 is the upgraded request) against nghttpx with a
    cleartext frontend (nghttpd itself does not do the upgrade: it answers an HTTP/1.1
    request with its SETTINGS frame), which proxies to nghttpd on the server namespace's
    loopback (only the frontend is on the captured veth). Two more transfers on the same
    connection become streams 3 and 5."""
    with lab_pair(4) as (lab, cli, srv, if_s, c_ip, s_ip):
        nghttpx(lab, srv, s_ip)
        cap = lab.tcpdump(srv, if_s, "curl-upgrade")
        base = f"http://{s_ip}:{HTTP_PORT}"
        t1, s1 = new_trace()
        t2, s2 = new_trace()
        plan = [("GET", "/a.txt", {"traceparent": traceparent(t1, s1)}, t1),
                ("GET", "/sub/b.json", {"traceparent": traceparent(t2, s2)}, t2),
                ("GET", "/gone.txt", {"traceparent": traceparent(t2, s2)}, t2)]
        args: list[str] = []
        for i, (_, path, hdrs, _) in enumerate(plan):
            if i:
                args.append("--next")
            args += ["--http2", "-o", "/dev/null", "-w", CURL_WOUT]
            for k, v in hdrs.items():
                args += ["-H", f"{k}: {v}"]
            args.append(base + path)
        lines = curl_lines(lab, cli, *args)
        pcap = finish(cap, 1, out_dir, "curl-upgrade")
    assert [ln[1] for ln in lines] == ["1", "0", "0"], lines
    assert all(ln[2] == "2" for ln in lines), lines
    reqs = [Req(m, p, f"{s_ip}:{HTTP_PORT}", h, status=int(ln[0]), trace_id=t, stream_id=1 + 2 * i)
            for i, ((m, p, h, t), ln) in enumerate(zip(plan, lines))]
    return Scenario("curl-upgrade", pcap, HTTP_PORT, c_ip, s_ip, reqs, 1, decode_as="http")


# -- d. gRPC with grpcio (plaintext h2c) --------------------------------------------------------

GRPC_COMMON = r"""
import base64, json, os, secrets, sys, threading, time
for k in ("http_proxy", "https_proxy", "all_proxy", "grpc_proxy", "HTTP_PROXY", "HTTPS_PROXY",
          "ALL_PROXY", "GRPC_PROXY", "no_grpc_proxy", "no_proxy", "NO_PROXY"):
    os.environ.pop(k, None)
import grpc
SERVICE = "wirespan.test.Echo"
OPTS = [("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)]
"""

GRPC_SERVER = GRPC_COMMON + r"""
from concurrent import futures
host, port, log_path, true_binary = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
lock = threading.Lock()
log = open(log_path, "a")

def record(method, ctx):
    md = {}
    for k, v in ctx.invocation_metadata():
        md[k] = base64.b64encode(v).decode() if isinstance(v, bytes) else v
    with lock:
        log.write(json.dumps({"method": method, "md": md,
                              "deadline": ctx.time_remaining() is not None}) + "\n")
        log.flush()

def say(req, ctx):
    record("Say", ctx)
    return b"echo:" + req

def count(req, ctx):
    record("Count", ctx)
    for i in range(int(req)):
        yield b"item %d" % i

def fail(req, ctx):
    record("Fail", ctx)
    ctx.abort(grpc.StatusCode.NOT_FOUND, "no greeting named " + req.decode())

handler = grpc.method_handlers_generic_handler(SERVICE, {
    "Say": grpc.unary_unary_rpc_method_handler(say),
    "Count": grpc.unary_stream_rpc_method_handler(count),
    "Fail": grpc.unary_unary_rpc_method_handler(fail),
})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), handlers=[handler],
                     options=OPTS + [("grpc.http2.true_binary", int(true_binary))])
server.add_insecure_port(f"{host}:{port}")
server.start()
print("ready", flush=True)
server.wait_for_termination()
"""

# The client: a JSON plan on argv (phases of calls); between phases it writes a marker file
# and waits for a go file (mid-stream scenario). Prints one JSON list of call records.
GRPC_CLIENT = GRPC_COMMON + r"""
from concurrent.futures import ThreadPoolExecutor
target, plan, workdir = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
ch = grpc.insecure_channel(target, options=OPTS)
grpc.channel_ready_future(ch).result(timeout=10)
stubs = {"Say": ch.unary_unary(f"/{SERVICE}/Say"),
         "Count": ch.unary_stream(f"/{SERVICE}/Count"),
         "Fail": ch.unary_unary(f"/{SERVICE}/Fail")}

def bin_ctx(tid, sid):
    # OpenCensus binary format: version 0, field 0 trace id, field 1 span id, field 2 options.
    return b"\x00\x00" + bytes.fromhex(tid) + b"\x01" + bytes.fromhex(sid) + b"\x02\x01"

def call(spec):
    method, arg, trace = spec["method"], spec["arg"], spec["trace"]
    md, want = [], ""
    sent = {}
    if trace in ("w3c", "both"):
        tid, sid = secrets.token_hex(16), secrets.token_hex(8)
        v = f"00-{tid}-{sid}-01"
        md.append(("traceparent", v)); sent["traceparent"] = v
        want = tid
    if trace in ("bin", "both"):
        tid, sid = secrets.token_hex(16), secrets.token_hex(8)
        b = bin_ctx(tid, sid)
        md.append(("grpc-trace-bin", b)); sent["grpc-trace-bin"] = base64.b64encode(b).decode()
        want = want or tid
    if spec.get("rid"):
        rid = spec["rid"]
        md.append(("x-request-id", rid)); sent["x-request-id"] = rid
    rec = {"method": method, "path": f"/{SERVICE}/{method}", "sent": sent, "trace_id": want,
           "arg": arg}
    stub = stubs[method]
    if method == "Count":
        it = stub(arg.encode(), timeout=10, metadata=md)
        try:
            msgs = list(it)
        except grpc.RpcError:
            msgs = None
        rec.update(code=it.code().value[0], details=it.details() or "",
                   messages=None if msgs is None else len(msgs))
    else:
        f = stub.future(arg.encode(), timeout=10, metadata=md)
        exc = f.exception()
        rec.update(code=f.code().value[0], details=f.details() or "",
                   messages=0 if exc is not None else 1)
    rec["t"] = time.time()
    return rec

out = []
with ThreadPoolExecutor(max_workers=8) as pool:
    for i, phase in enumerate(plan):
        if i:
            open(os.path.join(workdir, f"phase{i}.done"), "w").close()
            go = os.path.join(workdir, f"phase{i}.go")
            deadline = time.time() + 30
            while not os.path.exists(go):
                if time.time() > deadline:
                    raise SystemExit("no go signal")
                time.sleep(0.02)
        for group in phase:  # a group runs concurrently, groups one after the other
            res = list(pool.map(call, group))
            for r in res:
                r["phase"] = i
            out += res
ch.close()
print(json.dumps(out))
"""


def grpc_plan_main() -> list[list[list[dict]]]:
    """One phase: sequential calls, then bursts of concurrent ones on the same channel."""
    def c(method: str, arg: str, trace: str, rid: str = "") -> dict:
        return {"method": method, "arg": arg, "trace": trace, "rid": rid}
    return [[
        [c("Say", "first", "w3c", str(uuid.uuid4()))],
        [c("Say", "second", "bin")],
        [c("Count", "5", "both")],
        [c("Fail", "bob", "w3c")],
        [c("Say", f"burst{i}", ("w3c", "bin", "both")[i % 3]) for i in range(10)],
        [c("Count", str(3 + i), "w3c") for i in range(4)]
        + [c("Fail", f"ghost{i}", "bin") for i in range(2)]
        + [c("Say", f"mixed{i}", "w3c") for i in range(4)],
        [c("Say", "last", "none")],
    ]]


def grpc_plan_mid() -> list[list[list[dict]]]:
    """Two phases on one channel: the first before tcpdump starts, the second while it runs.
    The second uses Count and Fail for the first time (their :path goes out as a literal),
    and Say again (its :path and :authority are references into entries made before)."""
    def c(method: str, arg: str, trace: str) -> dict:
        return {"method": method, "arg": arg, "trace": trace, "rid": ""}
    return [
        [[c("Say", "warm0", "w3c")], [c("Say", "warm1", "w3c")], [c("Say", "warm2", "bin")]],
        [[c("Say", "after0", "w3c")], [c("Count", "4", "w3c")], [c("Say", "after1", "bin")],
         [c("Fail", "late", "w3c")], [c("Count", "2", "w3c")], [c("Say", "after2", "w3c")]],
    ]


def grpc_reqs(calls: list[dict], authority: str) -> list[Req]:
    return [Req("POST", r["path"], authority, dict(r["sent"]), status=200,
                grpc_status=r["code"], grpc_message=r["details"] or None, trace_id=r["trace_id"],
                messages=r["messages"], grpc=True) for r in calls]


def _grpc_server(lab: Lab, srv: str, s_ip: str, true_binary: bool = True) -> tuple[Proc, Path]:
    """grpcio server; ``true_binary``: whether it lets clients send -bin metadata raw (the
    grpcio default, SETTINGS 0xfe03 = 1) or makes them use base64."""
    script = lab.tmp / "grpc_server.py"
    script.write_text(GRPC_SERVER)
    log = lab.tmp / "grpc_server.jsonl"
    proc = lab.spawn(srv, "grpc-server", sys.executable, "-u", str(script), s_ip,
                     str(GRPC_PORT), str(log), str(int(true_binary)))
    wait_for(lambda: "ready" in proc.output() or not proc.alive(), "grpc server")
    wait_listening(lab, srv, GRPC_PORT, proc)
    return proc, log


def _server_log(log: Path) -> list[dict]:
    return [json.loads(ln) for ln in log.read_text().splitlines() if ln.strip()]


def build_grpc(out_dir: Path) -> Scenario:
    """grpcio server and client (insecure channel: h2c with prior knowledge), one channel:
    unary Say, server-streaming Count, Fail (NOT_FOUND with a message); traceparent and/or
    grpc-trace-bin metadata, a deadline on every call (grpc-timeout), sequential calls and
    bursts of concurrent ones. grpcio peers send -bin metadata as "true binary" (a NUL byte
    and the raw bytes, not base64): see :func:`bin_value`."""
    with lab_pair(5) as (lab, cli, srv, if_s, c_ip, s_ip):
        _, log = _grpc_server(lab, srv, s_ip)
        cap = lab.tcpdump(srv, if_s, "grpc")
        script = lab.tmp / "grpc_client.py"
        script.write_text(GRPC_CLIENT)
        plan = grpc_plan_main()
        out = run_ok(lab, cli, sys.executable, str(script), f"{s_ip}:{GRPC_PORT}",
                     json.dumps(plan), str(lab.tmp))
        pcap = finish(cap, 1, out_dir, "grpc")
        server_seen = _server_log(log)
    calls = json.loads(out)
    n = sum(len(g) for ph in plan for g in ph)
    assert len(calls) == n == len(server_seen), (len(calls), n, len(server_seen))
    # The server saw every call, with the metadata the client sent and a deadline.
    assert sorted(s["method"] for s in server_seen) == sorted(c["method"] for c in calls)
    # (grpcio does not hand grpc-trace-bin to server handlers: that one is checked on the
    # wire by the tests, with tshark.)
    for c in calls:
        for k, v in c["sent"].items():
            if k != "grpc-trace-bin":
                assert any(s["md"].get(k) == v for s in server_seen), (k, v)
    assert all(s["deadline"] for s in server_seen)
    reqs = grpc_reqs(calls, f"{s_ip}:{GRPC_PORT}")
    for r in reqs:
        want_code = 5 if r.path.endswith("/Fail") else 0
        assert r.grpc_status == want_code, r
    return Scenario("grpc", pcap, GRPC_PORT, c_ip, s_ip, reqs, 1,
                    report={"server_calls": len(server_seen)})


# -- e. mid-stream: the connection was set up and used before tcpdump started ------------------

def build_grpc_mid_stream(out_dir: Path) -> Scenario:
    """The grpcio client of (d) makes calls, tcpdump starts, then the client makes more calls
    on the same channel (same TCP connection): the capture has no SYN, no preface, no
    SETTINGS exchange and misses the HPACK insertions the first calls made. This server
    turns true-binary metadata off, so grpc-trace-bin goes out as base64 here."""
    with lab_pair(6) as (lab, cli, srv, if_s, c_ip, s_ip):
        _, log = _grpc_server(lab, srv, s_ip, true_binary=False)
        script = lab.tmp / "grpc_client.py"
        script.write_text(GRPC_CLIENT)
        plan = grpc_plan_mid()
        client = lab.spawn(cli, "grpc-client", sys.executable, str(script),
                           f"{s_ip}:{GRPC_PORT}", json.dumps(plan), str(lab.tmp))
        done = lab.tmp / "phase1.done"
        wait_for(lambda: done.exists() or not client.alive(), "first phase of calls", 20)
        assert client.alive(), client.output()
        time.sleep(0.3)  # let the first phase's last frames (and acks) go by
        cap = lab.tcpdump(srv, if_s, "grpc-mid")
        (lab.tmp / "phase1.go").touch()
        wait_for(lambda: not client.alive(), "grpc client to finish", 20)
        assert client.popen.returncode == 0, client.output()
        pcap = finish(cap, 1, out_dir, "grpc-mid")
        server_seen = _server_log(log)
        out = client.output()
    calls = json.loads(out.strip().splitlines()[-1])
    assert len(calls) == len(server_seen) == sum(len(g) for ph in plan for g in ph)
    before = [c for c in calls if c["phase"] == 0]
    after = [c for c in calls if c["phase"] == 1]
    auth = f"{s_ip}:{GRPC_PORT}"
    return Scenario("grpc-mid", pcap, GRPC_PORT, c_ip, s_ip, grpc_reqs(after, auth), 1,
                    mid_stream=True, before=grpc_reqs(before, auth))


BUILDERS = {
    "nghttp": build_nghttp,
    "h2load": build_h2load,
    "curl-h2": build_curl_prior_knowledge,
    "curl-upgrade": build_curl_upgrade,
    "grpc": build_grpc,
    "grpc-mid": build_grpc_mid_stream,
}


# -- the oracle: HTTP/2 frames straight from the capture ---------------------------------------

@dataclass
class Frame:
    conn: tuple[str, int]  # the client's (address, port)
    side: str  # "c" (client to server) or "s"
    type: int
    flags: int
    stream: int
    payload: bytes
    first_ts: int  # ns: the packet carrying the frame's first byte
    last_ts: int  # ns: the packet carrying its last byte
    fields: list[tuple[str | None, str | None]] | None = None  # decoded header block
    unresolved: int = 0  # hpack_scan: fields it could not resolve


@dataclass
class Stream:
    conn: tuple[str, int]
    id: int
    frames: list[Frame] = field(default_factory=list)
    h1_request: tuple[int, int, list[tuple[str, str]], str, str] | None = None  # upgrade

    def side(self, s: str) -> list[Frame]:
        return [f for f in self.frames if f.side == s]

    def blocks(self, s: str) -> list[Frame]:
        return [f for f in self.side(s) if f.type == HEADERS]

    @property
    def req_first_ts(self) -> int:
        if self.h1_request:
            return self.h1_request[0]
        return self.blocks("c")[0].first_ts

    @property
    def req_last_ts(self) -> int:
        if self.h1_request:
            return self.h1_request[1]
        return self._end("c").last_ts

    @property
    def resp_first_ts(self) -> int:
        return self.blocks("s")[0].first_ts

    @property
    def resp_last_ts(self) -> int:
        return self._end("s").last_ts

    def _end(self, s: str) -> Frame:
        return next(f for f in self.side(s) if f.flags & END_STREAM and f.type in (DATA, HEADERS))

    def pseudo(self, s: str, name: str) -> str | None:
        for b in self.blocks(s):
            for k, v in b.fields or []:
                if k == name:
                    return v
        return None

    def regular(self, s: str, block: int = 0) -> list[tuple[str | None, str | None]]:
        bl = self.blocks(s)
        if len(bl) <= block:
            return []
        return [(k, v) for k, v in bl[block].fields or [] if not (k or "").startswith(":")]

    def header(self, s: str, name: str) -> str | None:
        for b in self.blocks(s):
            for k, v in b.fields or []:
                if k == name:
                    return v
        return None

    def unresolved(self) -> int:
        return sum(b.unresolved for b in self.frames if b.type == HEADERS)


def _addr(ip: object) -> tuple[str, str]:
    if isinstance(ip, dpkt.ip.IP):
        return socket.inet_ntop(socket.AF_INET, ip.src), socket.inet_ntop(socket.AF_INET, ip.dst)
    return socket.inet_ntop(socket.AF_INET6, ip.src), socket.inet_ntop(socket.AF_INET6, ip.dst)


Segments = dict[tuple[tuple[str, int], str], list[tuple[int, int, bytes]]]


def _segments(pcap: Path, port: int) -> Segments:
    """(client, side) -> [(seq, ts_ns, payload)] in capture order."""
    out: dict = {}
    with open(pcap, "rb") as f:
        magic = f.read(4)
        f.seek(0)
        assert magic in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4"), "tcpdump writes µs pcap"
        for ts, buf in dpkt.pcap.Reader(f):
            t = round(ts * 1e6) * 1000  # µs in the file: exact in a double
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
                continue
            if not isinstance(ip.data, dpkt.tcp.TCP):
                continue
            tcp = ip.data
            src, dst = _addr(ip)
            if tcp.dport == port:
                key = ((src, tcp.sport), "c")
            elif tcp.sport == port:
                key = ((dst, tcp.dport), "s")
            else:
                continue
            lst = out.setdefault(key, [])
            if tcp.flags & dpkt.tcp.TH_SYN:
                lst.append((tcp.seq + 1, t, b""))
            elif tcp.data:
                lst.append((tcp.seq, t, bytes(tcp.data)))
            elif not lst:
                lst.append((tcp.seq, t, b""))  # mid-stream: the first pure ACK sets the start
    return out


def packet_times(pcap: Path) -> set[int]:
    """The timestamp (ns) of every packet in the capture."""
    with open(pcap, "rb") as f:
        return {round(ts * 1e6) * 1000 for ts, _ in dpkt.pcap.Reader(f)}


def _stream_bytes(segs: list[tuple[int, int, bytes]]) -> tuple[bytes, list[tuple[int, int]]]:
    """Contiguous bytes of one direction and [(offset, ts)] of each packet's first byte."""
    data = bytearray()
    marks: list[tuple[int, int]] = []
    nxt = None
    for seq, t, payload in segs:
        if nxt is None:
            nxt = seq
        if not payload:
            continue
        if seq != nxt:
            d = (seq - nxt) & 0xFFFFFFFF
            if d > 0x7FFFFFFF:  # a retransmission of bytes we have: must be identical
                back = (nxt - seq) & 0xFFFFFFFF
                assert back >= len(payload), "partial retransmission in a lab capture"
                continue
            if not marks:
                nxt = seq  # mid-stream: data before any ack we saw
            else:
                raise AssertionError(f"hole of {d} bytes in a lab capture")
        marks.append((len(data), t))
        data += payload
        nxt = (seq + len(payload)) & 0xFFFFFFFF
    return bytes(data), marks


def _ts_at(marks: list[tuple[int, int]], off: int) -> int:
    lo, hi = 0, len(marks) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if marks[mid][0] <= off:
            lo = mid
        else:
            hi = mid - 1
    return marks[lo][1]


def _h1_head(data: bytes) -> tuple[bytes, int] | None:
    end = data.find(b"\r\n\r\n")
    return (data[:end], end + 4) if end >= 0 else None


@dataclass
class H2Capture:
    frames: list[Frame]
    streams: dict[tuple[tuple[str, int], int], Stream]
    preface: dict[tuple[str, int], bool]
    upgrade: dict[tuple[str, int], tuple[int, str]]  # client -> (101 packet ts, status line)

    def requests(self) -> list[Stream]:
        """Streams the client opened (request HEADERS, or the h2c upgrade's stream 1)."""
        return [s for s in self.streams.values() if s.id % 2 == 1
                and (s.blocks("c") or s.h1_request)]


def h2_frames(pcap: Path, port: int, mid_stream: bool = False) -> H2Capture:
    segs = _segments(pcap, port)
    frames: list[Frame] = []
    preface: dict = {}
    upgrade: dict = {}
    h1: dict = {}
    for (conn, side), lst in sorted(segs.items()):
        data, marks = _stream_bytes(lst)
        if not data:
            continue
        pos = 0
        mine: list[Frame] = []
        if side == "c":
            if data.startswith((b"GET ", b"POST ", b"HEAD ")):
                head, n = _h1_head(data)
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                hdrs = [(k.strip().lower(), v.strip()) for k, v in
                        (ln.split(":", 1) for ln in lines[1:])]
                h1[conn] = (_ts_at(marks, 0), _ts_at(marks, n - 1), hdrs, method, target)
                pos = n
            preface[conn] = data[pos:pos + len(PREFACE)] == PREFACE
            if preface[conn]:
                pos += len(PREFACE)
        elif data.startswith(b"HTTP/1.1 "):
            head, n = _h1_head(data)
            upgrade[conn] = (_ts_at(marks, 0), head.split(b"\r\n")[0].decode())
            pos = n
        while pos + 9 <= len(data):
            ln = int.from_bytes(data[pos:pos + 3], "big")
            typ, flg = data[pos + 3], data[pos + 4]
            sid = int.from_bytes(data[pos + 5:pos + 9], "big") & 0x7FFFFFFF
            if pos + 9 + ln > len(data):
                break
            mine.append(Frame(conn, side, typ, flg, sid, data[pos + 9:pos + 9 + ln],
                              _ts_at(marks, pos), _ts_at(marks, pos + 9 + ln - 1)))
            pos += 9 + ln
        assert pos == len(data), f"{len(data) - pos} bytes left over in {conn} {side}"
        _decode_blocks(mine, mid_stream)
        frames += mine
    frames.sort(key=lambda f: (f.first_ts, f.side))  # stable: byte order per side
    streams: dict = {}
    for f in frames:
        if f.stream:
            streams.setdefault((f.conn, f.stream), Stream(f.conn, f.stream)).frames.append(f)
    for conn, req in h1.items():
        s = streams.setdefault((conn, 1), Stream(conn, 1))
        s.h1_request = req
    return H2Capture(frames, streams, preface, upgrade)


def _block(f: Frame) -> bytes:
    p = f.payload
    pad = 0
    if f.flags & PADDED:
        pad, p = p[0], p[1:]
    if f.type == HEADERS and f.flags & PRIORITY_FLAG:
        p = p[5:]
    return p[:len(p) - pad] if pad else p


def _decode_blocks(frames: list[Frame], mid_stream: bool) -> None:
    """Decode each HEADERS(+CONTINUATION) block of one direction, frames in byte order."""
    dec = hpack.Decoder()
    dec.max_allowed_table_size = 1 << 16
    known: list[tuple[str | None, str | None]] = []
    head: Frame | None = None
    blk = b""
    for f in frames:
        if f.type == HEADERS:
            head, blk = f, _block(f)
        elif f.type == PUSH_PROMISE:
            raise AssertionError("PUSH_PROMISE in a lab capture")
        elif f.type == CONTINUATION:
            assert head is not None
            blk += f.payload
        else:
            continue
        if not f.flags & END_HEADERS:
            continue
        assert head is not None
        if mid_stream:
            head.fields, head.unresolved = hpack_scan(blk, known)
        else:
            # raw: gRPC "true binary" metadata values are not text
            head.fields = [(k.decode("latin-1"), v.decode("latin-1"))
                           for k, v in dec.decode(blk, raw=True)]
        head, blk = None, b""


_STATIC = [(k.decode(), v.decode()) for k, v in HeaderTable.STATIC_TABLE]


def _hstr(b: bytes, i: int) -> tuple[str, int]:
    huff = b[i] & 0x80
    n, k = decode_integer(b[i:], 7)
    i += k
    raw = b[i:i + n]
    return (decode_huffman(raw) if huff else raw).decode("latin-1"), i + n


def hpack_scan(block: bytes, known: list[tuple[str | None, str | None]]
               ) -> tuple[list[tuple[str | None, str | None]], int]:
    """Decode a header block of a connection seen from the middle: ``known`` holds the
    dynamic-table entries inserted since the capture started, newest first (updated here).
    Fields that reference older entries come back as ``None`` parts; returns the fields and
    how many parts could not be resolved. (Eviction is not modelled: the scenarios insert
    far less than a 4096-byte table holds after capture start.)"""
    out: list[tuple[str | None, str | None]] = []
    bad = 0
    i = 0

    def look(idx: int) -> tuple[str | None, str | None]:
        if 1 <= idx <= len(_STATIC):
            return _STATIC[idx - 1]
        k = idx - len(_STATIC) - 1
        return known[k] if 0 <= k < len(known) else (None, None)

    while i < len(block):
        b = block[i]
        if b & 0x80:
            idx, n = decode_integer(block[i:], 7)
            i += n
            name, value = look(idx)
            out.append((name, value))
            bad += (name is None) + (value is None)
            continue
        if b & 0xE0 == 0x20:  # dynamic table size update
            size, n = decode_integer(block[i:], 5)
            i += n
            if size == 0:
                known.clear()
            continue
        prefix = 6 if b & 0x40 else 4
        idx, n = decode_integer(block[i:], prefix)
        i += n
        if idx:
            name = look(idx)[0]
        else:
            name, i = _hstr(block, i)
        value, i = _hstr(block, i)
        out.append((name, value))
        bad += name is None
        if b & 0x40:
            known.insert(0, (name, value))
    return out, bad


def bin_value(v: str | bytes) -> bytes:
    """The bytes of a gRPC ``-bin`` header value as it appears on the wire (or as a parser
    might hand it over): base64 text (padding optional), or grpc-core's "true binary" form
    (a NUL byte, then the raw bytes; sent when the peer's SETTINGS carry 0xfe03 = 1), or the
    raw bytes with that prefix already removed (they start with the format's version 0)."""
    if isinstance(v, str):
        v = v.encode("latin-1")
    if v[:1] == b"\0":
        return v[1:] if v[1:2] == b"\0" else v  # true binary; else already-raw
    return base64.b64decode(v + b"=" * (-len(v) % 4))
