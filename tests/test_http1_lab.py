"""End-to-end HTTP/1 lab tests: real servers and clients (python3 -m http.server, nginx, curl,
small python3 socket scripts) in throw-away network namespaces, captured with tcpdump,
replayed through wirespan's HTTP/1 parser, and checked against ground truth (what the client
and server themselves saw) and against tshark on the very same capture.

Needs root, iproute2, tcpdump, nginx, curl and tshark; skipped otherwise. Every test builds
its own client and server namespaces (``tests/lab.py``), traffic stays on their veth
(10.99.1.0/24), and the ``lab`` fixture removes processes, namespaces and files afterwards.
Servers listen on port 80 or 8080 so that tshark dissects HTTP without being told.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from lab import Capture, Lab, Proc, sh, wait_for, lab_or_skip
from sniffer.exchange import Exchange, Message
from sniffer.pipeline import Summary, run_replay

CLI_IP, SRV_IP = "10.99.1.1", "10.99.1.2"
RND = random.Random(7)


@pytest.fixture
def lab() -> Iterator[Lab]:
    yield from lab_or_skip("HTTP/1 lab test", "tshark")


# -- lab plumbing ------------------------------------------------------------------------------

def topology(lab: Lab) -> tuple[str, str, str]:
    """Client and server namespaces joined by one veth: (cli, srv, client-side interface)."""
    cli, srv = lab.netns("cli"), lab.netns("srv")
    if_c, _ = lab.veth(cli, srv, (f"{CLI_IP}/24",), (f"{SRV_IP}/24",))
    return cli, srv, if_c


def wait_listening(lab: Lab, ns: str, port: int, proc: Proc) -> None:
    def listening() -> bool:
        assert proc.alive(), f"{proc.name} exited:\n{proc.output()}"
        out = lab.run(ns, "ss", "-Hltn", f"sport = :{port}", check=False).stdout
        return bool(out.strip())

    wait_for(listening, f"{proc.name} listening on :{port} in {ns}")


def python_server(lab: Lab, ns: str, name: str, source: str, port: int, *args: str) -> Proc:
    script = lab.tmp / f"{name}.py"
    script.write_text(source)
    proc = lab.spawn(ns, name, sys.executable, "-u", str(script), SRV_IP, str(port), *args)
    wait_listening(lab, ns, port, proc)
    return proc


def python_client(lab: Lab, ns: str, name: str, source: str, *args: str) -> object:
    """Run a client script to completion in ``ns``; its stdout is one JSON document."""
    script = lab.tmp / f"{name}.py"
    script.write_text(source)
    r = lab.run(ns, sys.executable, str(script), *args, timeout=20, check=False)
    assert r.returncode == 0, f"{name} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return json.loads(r.stdout)


def www(lab: Lab, files: dict[str, bytes]) -> Path:
    root = lab.tmp / "www"
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    for d in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        d.chmod(0o755)
    for p in root.rglob("*"):
        if p.is_file():
            p.chmod(0o644)
    return root


def nginx(lab: Lab, ns: str, files: dict[str, bytes], port: int, locations: str = "",
          extra_servers: str = "") -> Proc:
    """The lab's nginx on ``SRV_IP:port`` only, serving ``files`` plus ``locations``."""
    return lab.nginx(ns, files, port, listen=[f"{SRV_IP}:{port}"], locations=locations,
                     extra_servers=extra_servers)


def curl(lab: Lab, ns: str, *args: str) -> list[list[str]]:
    """curl in ``ns`` (HTTP/1.1 unless the args say otherwise); the --write-out lines, split."""
    r = lab.run(ns, "curl", "--http1.1", "--silent", "--show-error", "--noproxy", "*",
                "--max-time", "10", *args, timeout=30, check=False)
    assert r.returncode == 0, f"curl {args} failed ({r.returncode}): {r.stderr}"
    return [ln.split() for ln in r.stdout.splitlines() if ln.strip()]


def rsp(e: Exchange) -> Message:
    assert e.response is not None, e
    return e.response


def finish(cap: Capture, conns: int) -> tuple[Summary, list[Exchange]]:
    """Wait for every connection's two FINs, stop tcpdump, replay; exchanges in request order."""
    cap.wait_fins(2 * conns)
    cap.stop()
    exs: list[Exchange] = []
    summary = run_replay([str(cap.path)], on_exchange=exs.append)
    # Emission is in response order per connection; a stable sort keeps pipelined requests
    # (same first packet) in the order they were answered, which is their request order.
    exs.sort(key=lambda e: e.request.first_ts)
    return summary, exs


def assert_clean(summary: Summary, exs: list[Exchange], conns: int) -> None:
    d = summary.to_dict()
    assert d["flows"] == conns and d["gaps"] == 0 and d["gap_bytes"] == 0, d
    assert d["protocols"] == {"http1": conns}, d
    assert d["parse_errors"] == {}, d
    assert d["decode_errors"] == {}, d
    for e in exs:
        # No gap, no_response, no_request, malformed, truncated, reset, capture_end: on these
        # clean captures the only flag there may be is an interim response's.
        assert e.flags <= {"interim_100"}, e
        assert e.response is not None and e.response.complete, e
        assert e.request.complete, e


# -- tshark on the same capture ----------------------------------------------------------------

def tshark(cap: Capture, *args: str) -> list[list[str]]:
    r = sh("tshark", "-n", "-r", str(cap.path), *args, check=False)
    assert r.returncode == 0, f"tshark {args}: {r.stderr}"
    return [ln.split("\t") for ln in r.stdout.splitlines()]


def tshark_requests(cap: Capture) -> list[tuple[str, str]]:
    """(method, uri) of every request tshark dissects, in capture order. Several requests in
    one frame (pipelining) come back comma-joined; the URIs used here contain no comma."""
    out = []
    for methods, uris in tshark(cap, "-Y", "http.request", "-T", "fields",
                                "-e", "http.request.method", "-e", "http.request.uri"):
        out += list(zip(methods.split(","), uris.split(","), strict=True))
    return out


def tshark_statuses(cap: Capture) -> list[int]:
    return [int(c) for (codes,) in tshark(cap, "-Y", "http.response", "-T", "fields",
                                          "-e", "http.response.code") for c in codes.split(",")]


def ns_of(epoch: str) -> int:
    return int(Decimal(epoch) * 10**9)


def tshark_status_line_times(cap: Capture) -> list[tuple[int, int]]:
    """(time of the packet carrying the status line, code) for every final response, in
    capture order. HTTP desegmentation is off, so the response is dissected in the frame that
    starts it rather than the one that completes its body."""
    out = []
    for epoch, codes in tshark(cap, "-o", "http.desegment_headers:FALSE",
                               "-o", "http.desegment_body:FALSE", "-Y", "http.response",
                               "-T", "fields", "-e", "frame.time_epoch",
                               "-e", "http.response.code"):
        out += [(ns_of(epoch), int(c)) for c in codes.split(",")
                if not (100 <= int(c) < 200 and int(c) != 101)]
    return out


def assert_matches_tshark(cap: Capture, exs: list[Exchange]) -> None:
    """wirespan's requests and responses are tshark's, in the same order."""
    assert [(e.method, e.target) for e in exs] == tshark_requests(cap)
    by_resp = sorted(exs, key=lambda e: rsp(e).first_ts)
    want = []
    for e in by_resp:
        want += [int(f[len("interim_"):]) for f in sorted(e.flags) if f.startswith("interim_")]
        want.append(e.status)
    assert want == tshark_statuses(cap)


def assert_timestamps(cap: Capture, exs: list[Exchange]) -> None:
    """Ordering within each exchange, and every response starts at the packet that carried
    its status line (pcap timestamps are microseconds: equal within 1 us)."""
    for e in exs:
        r = e.response
        assert r is not None
        assert (0 < e.request.first_ts <= e.request.last_ts <= r.first_ts <= r.last_ts), (
            e.method, e.target, e.request.first_ts, e.request.last_ts, r.first_ts, r.last_ts)
    by_resp = sorted(exs, key=lambda e: rsp(e).first_ts)
    ours = [(rsp(e).first_ts, e.status) for e in by_resp]
    theirs = tshark_status_line_times(cap)
    assert [s for _, s in ours] == [s for _, s in theirs], (ours, theirs)
    for (t_ours, status), (t_theirs, _) in zip(ours, theirs):
        assert abs(t_ours - t_theirs) <= 1000, (status, t_ours, t_theirs)


def assert_response_last_ts(cap: Capture, exs: list[Exchange], port: int,
                            check: list[Exchange] | None = None) -> None:
    """Each response's last_ts is the last packet with server payload on its connection
    before the next response there starts (for a body framed by length or chunking, the
    packet with the body's last byte, or the packet where the next one starts if they share
    it). tshark gives the server's data packets. ``check``:
    the exchanges to check (default all)."""
    data = [(int(cport), ns_of(t)) for cport, t in tshark(
        cap, "-Y", f"tcp.srcport == {port} && tcp.len > 0", "-T", "fields",
        "-e", "tcp.dstport", "-e", "frame.time_epoch")]
    for e in exs if check is None else check:
        r = e.response
        assert r is not None
        later = [rsp(x).first_ts for x in exs
                 if x.client == e.client and rsp(x).first_ts > r.first_ts]
        until = min(later, default=1 << 80)
        last = max(t for p, t in data if p == e.client[1] and t < until)
        # Pipelined responses may share a packet: this one's end, the next one's status line.
        coalesced = r.last_ts == until
        assert abs(r.last_ts - last) <= 1000 or coalesced, (e.method, e.target, r.last_ts, last)


# -- 1. python3 -m http.server: HTTP/1.0 responses -----------------------------------------------

HTTP_SERVER_FILES = {
    "index.txt": b"wirespan http.server lab\n" * 5,
    "big.bin": RND.randbytes(150_000),
    "sub/q.bin": RND.randbytes(4321),
    "empty.txt": b"",
}


@pytest.mark.lab
def test_python_http_server_http10_responses(lab: Lab) -> None:
    """curl fetches from ``python3 -m http.server`` (one connection per fetch, HTTP/1.0
    responses that close after a Content-Length body): methods, paths, statuses as curl saw
    them, bodies the size of the files, and the same request/response list as tshark."""
    cli, srv, if_c = topology(lab)
    root = www(lab, HTTP_SERVER_FILES)
    proc = lab.spawn(srv, "http.server", sys.executable, "-m", "http.server", "80",
                     "--bind", SRV_IP, "--directory", str(root))
    wait_listening(lab, srv, 80, proc)
    cap = lab.tcpdump(cli, if_c, "http-server")

    base = f"http://{SRV_IP}"
    fetches = [("/index.txt", ()), ("/big.bin", ()), ("/sub/q.bin?x=1&y=2", ()),
               ("/empty.txt", ()), ("/nope.txt", ()), ("/sub", ()),
               ("/index.txt", ("--http1.0",)), ("/big.bin", ("-I",))]
    wout = "%{method} %{http_code} %{size_download} %{num_connects} %{http_version}\\n"
    seen = []
    for path, opts in fetches:  # one curl each: opts such as --http1.0 apply to that fetch
        [line] = curl(lab, cli, *opts, "-o", "/dev/null", "-w", wout, base + path)
        seen.append(line)
    # The lab: a new connection per fetch; the server answers HTTP/1.0.
    assert [ln[0] for ln in seen] == ["GET"] * 7 + ["HEAD"], seen
    assert [ln[1] for ln in seen] == ["200", "200", "200", "200", "404", "301", "200", "200"]
    assert all(ln[3] == "1" and ln[4] == "1" for ln in seen), seen  # curl says "1" for 1.0

    summary, exs = finish(cap, len(fetches))
    assert_clean(summary, exs, len(fetches))
    assert [(e.method, e.target, e.status) for e in exs] == [
        (ln[0], path, int(ln[1])) for ln, (path, _) in zip(seen, fetches)]
    assert [e.path for e in exs][:3] == ["/index.txt", "/big.bin", "/sub/q.bin"]
    assert [e.protocol for e in exs] == ["http/1.1"] * 6 + ["http/1.0", "http/1.1"]
    assert all(e.authority == SRV_IP for e in exs)
    assert len({e.conn_id for e in exs}) == len(fetches)
    # Bodies: the files' sizes; the error and redirect pages as curl counted them; HEAD none.
    body = [rsp(e).body_bytes for e in exs]
    assert body == [int(ln[2]) for ln in seen[:7]] + [0]
    assert body[:4] == [len(HTTP_SERVER_FILES[f]) for f in
                        ("index.txt", "big.bin", "sub/q.bin", "empty.txt")]
    assert body[6] == len(HTTP_SERVER_FILES["index.txt"])
    for e in exs:
        assert (rsp(e).header("server") or "").startswith("SimpleHTTP")
    assert rsp(exs[5]).header("location") == "/sub/"
    assert rsp(exs[7]).header("content-length") == "150000"
    assert [v for (v,) in tshark(cap, "-Y", "http.response", "-T", "fields",
                                 "-e", "http.response.version")] == ["HTTP/1.0"] * len(exs)
    assert_matches_tshark(cap, exs)
    assert_timestamps(cap, exs)
    assert_response_last_ts(cap, exs, 80)


# -- 2. nginx keep-alive with pipelining ---------------------------------------------------------

PIPELINE_CLIENT = r"""
import json, re, socket, sys
host, port, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
s = socket.create_connection((host, port), timeout=10)
s.sendall(b"".join(b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: pipeline\r\n\r\n"
                   % (p.encode(), host.encode(), port) for p in paths))
buf = b""
def more():
    global buf
    d = s.recv(65536)
    if not d:
        raise SystemExit("server closed early: %r" % buf[:200])
    buf += d
out = []
while len(out) < len(paths):
    while b"\r\n\r\n" not in buf:
        more()
    head, buf = buf.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    n = int(re.search(rb"(?im)^content-length:\s*(\d+)\r?$", head).group(1))
    while len(buf) < n:
        more()
    out.append([status, n])
    buf = buf[n:]
assert buf == b"", buf
s.close()
print(json.dumps(out))
"""

PIPE_FILES = {"one.bin": RND.randbytes(20_000), "two.txt": b"second pipelined body\n" * 30}


@pytest.mark.lab
def test_nginx_pipelined_requests(lab: Lab) -> None:
    """Three requests in one ``sendall`` to nginx (keep-alive): three exchanges on one
    connection, answered in order, with the statuses and body sizes the client read."""
    cli, srv, if_c = topology(lab)
    nginx(lab, srv, PIPE_FILES, 8080)
    cap = lab.tcpdump(cli, if_c, "pipeline")

    paths = ["/one.bin", "/missing.txt", "/two.txt"]
    got = python_client(lab, cli, "pipeline", PIPELINE_CLIENT, SRV_IP, "8080", *paths)
    assert got == [[200, 20_000], [404, got[1][1]], [200, len(PIPE_FILES["two.txt"])]], got

    summary, exs = finish(cap, 1)
    assert_clean(summary, exs, 1)
    assert [(e.method, e.target, e.status) for e in exs] == [
        ("GET", p, s) for p, (s, _) in zip(paths, got)]
    assert [rsp(e).body_bytes for e in exs] == [n for _, n in got]
    assert len({e.conn_id for e in exs}) == 1
    assert all(e.authority == f"{SRV_IP}:8080" and e.protocol == "http/1.1" for e in exs)
    # Really pipelined: all three requests arrived in one packet, before any response.
    assert tshark(cap, "-Y", "http.request", "-T", "fields", "-e", "http.request.method",
                  "-e", "http.request.uri") == [["GET,GET,GET", ",".join(paths)]]
    assert len({e.request.first_ts for e in exs}) == 1
    assert exs[2].request.last_ts < rsp(exs[0]).first_ts
    # Responses in order, each starting no earlier than the previous one ended.
    for a, b in zip(exs, exs[1:]):
        assert rsp(a).last_ts <= rsp(b).first_ts
    assert_matches_tshark(cap, exs)
    assert_timestamps(cap, exs)
    assert_response_last_ts(cap, exs, 8080)


# -- 3. chunked responses with trailers, and a close-delimited one -------------------------------

CHUNKED_SERVER = r"""
import json, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
host, port, spec = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        if self.path == "/close":
            # No Content-Length, no Transfer-Encoding: the body ends when the server closes.
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Connection", "close")
            self.end_headers()
            for i in range(3):
                self.wfile.write(b"close-delimited body part %d\n" % i * 40)
                time.sleep(0.01)
            return
        sizes = spec[self.path]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Trailer", "X-Chunks, X-Total")
        self.end_headers()
        for i, n in enumerate(sizes):
            data = bytes([97 + i % 26]) * n
            line = b"%x;ext=%d\r\n" % (n, i) if i % 2 else b"%x\r\n" % n
            if i == 1:  # a size line alone in its packet, the data in the next
                self.wfile.write(line)
                time.sleep(0.005)
                self.wfile.write(data + b"\r\n")
            else:
                self.wfile.write(line + data + b"\r\n")
            time.sleep(0.002)
        self.wfile.write(b"0\r\nX-Chunks: %d\r\nX-Total: %d\r\n\r\n" % (len(sizes), sum(sizes)))

srv = HTTPServer((host, port), H)
print("ready", flush=True)
srv.serve_forever()
"""

CHUNKS = {"/chunked/big": [1, 100, 4000, 17, 70_000, 5], "/chunked/small": [3, 4]}
CLOSE_BODY_LEN = sum(len(b"close-delimited body part %d\n" % i) * 40 for i in range(3))


@pytest.mark.lab
def test_chunked_responses_with_trailers(lab: Lab) -> None:
    """A Python HTTP/1.1 server streams chunked bodies (extensions, a size line alone in a
    packet, a 70 KB chunk over many segments, trailers) and then a close-delimited body, all
    on one keep-alive connection: body_bytes are the sums of the chunk sizes (and the bytes up
    to the FIN), the trailers are parsed."""
    cli, srv, if_c = topology(lab)
    python_server(lab, srv, "chunked-server", CHUNKED_SERVER, 80, json.dumps(CHUNKS))
    cap = lab.tcpdump(cli, if_c, "chunked")

    base = f"http://{SRV_IP}"
    wout = "%{http_code} %{size_download} %{num_connects}\\n"
    seen = curl(lab, cli, "-w", wout, "-o", "/dev/null", base + "/chunked/big",
                "-o", "/dev/null", base + "/chunked/small", "-o", "/dev/null", base + "/close")
    sums = [sum(CHUNKS["/chunked/big"]), sum(CHUNKS["/chunked/small"])]
    assert seen == [["200", str(sums[0]), "1"], ["200", str(sums[1]), "0"],
                    ["200", str(CLOSE_BODY_LEN), "0"]], seen

    summary, exs = finish(cap, 1)
    assert_clean(summary, exs, 1)
    assert [(e.method, e.target, e.status) for e in exs] == [
        ("GET", "/chunked/big", 200), ("GET", "/chunked/small", 200), ("GET", "/close", 200)]
    assert len({e.conn_id for e in exs}) == 1
    big, small, close = (e.response for e in exs)
    assert big is not None and small is not None and close is not None
    assert [big.body_bytes, small.body_bytes, close.body_bytes] == [*sums, CLOSE_BODY_LEN]
    assert big.header("transfer-encoding") == "chunked"
    assert big.trailers == [("x-chunks", "6"), ("x-total", str(sums[0]))]
    assert small.trailers == [("x-chunks", "2"), ("x-total", str(sums[1]))]
    assert close.trailers == [] and close.header("transfer-encoding") is None
    assert close.header("content-length") is None
    assert all(e.flags == set() for e in exs)
    assert_matches_tshark(cap, exs)
    assert_timestamps(cap, exs)
    # The chunked bodies end at the packet with the last chunk and trailers (the close-
    # delimited one is test_close_delimited_body_last_ts_is_last_data_packet).
    assert_response_last_ts(cap, exs, 80, check=exs[:2])


CLOSE_BODY = b"".join(b"close-delimited line %04d\n" % i for i in range(200))
CLOSE_SERVER = r"""
import socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.listen(4)
c, _ = s.accept()
buf = b""
while b"\r\n\r\n" not in buf:
    buf += c.recv(65536)
body = b"".join(b"close-delimited line %04d\n" % i for i in range(200))
c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
time.sleep(0.01)
c.sendall(body)
time.sleep(0.02)  # the FIN comes well after the last data packet
c.close()
time.sleep(1)
"""


@pytest.mark.lab
def test_close_delimited_body_last_ts_is_last_data_packet(lab: Lab) -> None:
    """docs/http1.md and sniffer/exchange.py: ``last_ts`` is the time of the packet that
    carried the message's last byte. For a close-delimited body that is the server's last data
    packet, not the FIN the server sends afterwards (here 20 ms later)."""
    cli, srv, if_c = topology(lab)
    proc = python_server(lab, srv, "close-server", CLOSE_SERVER, 80)
    cap = lab.tcpdump(cli, if_c, "close")
    seen = curl(lab, cli, "-w", "%{http_code} %{size_download}\\n", "-o", "/dev/null",
                f"http://{SRV_IP}/close")
    assert seen == [["200", str(len(CLOSE_BODY))]], (seen, proc.output())

    summary, exs = finish(cap, 1)
    assert_clean(summary, exs, 1)
    [e] = exs
    assert e.response is not None and e.response.body_bytes == len(CLOSE_BODY)
    data_times = [ns_of(t) for (t,) in tshark(cap, "-Y", "tcp.srcport == 80 && tcp.len > 0",
                                              "-T", "fields", "-e", "frame.time_epoch")]
    [(fin_time,)] = tshark(cap, "-Y", "tcp.srcport == 80 && tcp.flags.fin == 1", "-T",
                           "fields", "-e", "frame.time_epoch")
    assert ns_of(fin_time) - data_times[-1] >= 5_000_000  # the lab: FIN well after the data
    assert abs(e.response.first_ts - data_times[0]) <= 1000
    assert abs(e.response.last_ts - data_times[-1]) <= 1000, (
        f"response.last_ts={e.response.last_ts} last data packet={data_times[-1]} "
        f"FIN={ns_of(fin_time)}")


# -- 4. HEAD, 304, 204, 100-continue on one keep-alive connection --------------------------------

PAGE = b"<html><body>" + b"wirespan static page " * 150 + b"</body></html>\n"
UPLOAD = RND.randbytes(5000)


@pytest.mark.lab
def test_bodiless_responses_and_100_continue_keep_alive(lab: Lab) -> None:
    """One curl, one keep-alive connection to nginx: HEAD (200 with a Content-Length and no
    body), a conditional GET answered 304, a 204, a 5000-byte POST with ``Expect:
    100-continue`` (nginx answers 100, reads the body, then the final response), and a plain
    GET after all of them to show the framing stayed in step."""
    cli, srv, if_c = topology(lab)
    locations = """
        if_modified_since before;
        location = /empty { return 204; }
        location = /upload { proxy_pass http://127.0.0.1:8081/stored; }
    """
    upstream = """
    server {
        listen 127.0.0.1:8081;
        location = /stored { return 201 "stored $content_length bytes\\n"; }
    }
    """
    nginx(lab, srv, {"page.html": PAGE}, 8080, locations, upstream)
    upload = lab.tmp / "upload.bin"
    upload.write_bytes(UPLOAD)
    page_file = lab.tmp / "www" / "page.html"
    cap = lab.tcpdump(cli, if_c, "bodiless")

    base = f"http://{SRV_IP}:8080"
    w = ("-w", "%{method} %{http_code} %{size_download} %{num_connects}\\n", "-o", "/dev/null")
    seen = curl(lab, cli, *w, "-I", base + "/page.html",
                "--next", *w, "-z", str(page_file), base + "/page.html",
                "--next", *w, base + "/empty",
                "--next", *w, "-H", "Expect: 100-continue", "--data-binary", f"@{upload}",
                base + "/upload",
                "--next", *w, base + "/page.html")
    stored = b"stored 5000 bytes\n"
    assert seen == [["HEAD", "200", "0", "1"], ["GET", "304", "0", "0"],
                    ["GET", "204", "0", "0"], ["POST", "201", str(len(stored)), "0"],
                    ["GET", "200", str(len(PAGE)), "0"]], seen

    summary, exs = finish(cap, 1)
    assert_clean(summary, exs, 1)
    assert [(e.method, e.target, e.status) for e in exs] == [
        ("HEAD", "/page.html", 200), ("GET", "/page.html", 304), ("GET", "/empty", 204),
        ("POST", "/upload", 201), ("GET", "/page.html", 200)]
    assert len({e.conn_id for e in exs}) == 1
    head, cond, empty, post, get = exs
    assert [rsp(e).body_bytes for e in exs] == [
        0, 0, 0, len(stored), len(PAGE)]
    assert rsp(head).header("content-length") == str(len(PAGE))
    assert cond.request.header("if-modified-since") is not None
    assert post.request.header("expect") == "100-continue"
    assert post.request.body_bytes == len(UPLOAD)
    assert [sorted(e.flags) for e in exs] == [[], [], [], ["interim_100"], []]
    # nginx sent the 100 before the body, the body went out before the final response.
    assert post.request.first_ts < post.request.last_ts <= rsp(post).first_ts
    assert 100 in tshark_statuses(cap)
    assert_matches_tshark(cap, exs)
    assert_timestamps(cap, exs)


# -- 5. WebSocket upgrade ------------------------------------------------------------------------

WS_COMMON = r"""
import base64, hashlib, json, os, re, socket, struct, sys

def send_frame(sock, opcode, payload, mask, key=None):
    n = len(payload)
    head = bytes([0x80 | opcode])
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    else:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    if mask:
        key = key or os.urandom(4)
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        head += key
    sock.sendall(head + payload)

def recv_exact(sock, buf, n):
    while len(buf) < n:
        d = sock.recv(65536)
        if not d:
            raise SystemExit("eof")
        buf += d
    return buf[:n], buf[n:]

def recv_frame(sock, buf):
    h, buf = recv_exact(sock, buf, 2)
    opcode, masked, n = h[0] & 0x0F, h[1] & 0x80, h[1] & 0x7F
    if n == 126:
        x, buf = recv_exact(sock, buf, 2)
        n = struct.unpack("!H", x)[0]
    key = b""
    if masked:
        key, buf = recv_exact(sock, buf, 4)
    payload, buf = recv_exact(sock, buf, n)
    if masked:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return opcode, payload, buf
"""

WS_SERVER = WS_COMMON + r"""
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.listen(4)
c, _ = s.accept()
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
buf = b""
while b"\r\n\r\n" not in buf:
    buf += c.recv(65536)
head, buf = buf.split(b"\r\n\r\n", 1)
key = re.search(rb"(?im)^sec-websocket-key:\s*(\S+)\r?$", head).group(1)
acc = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Accept: " + acc + b"\r\n\r\n")
while True:
    op, payload, buf = recv_frame(c, buf)
    if op == 8:
        send_frame(c, 8, payload, False)
        break
    send_frame(c, op, payload, False)  # echoed as is: HTTP-looking text server -> client
    send_frame(c, 2, bytes(range(256)) * 2, False)
c.close()
"""

WS_CLIENT = WS_COMMON + r"""
host, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((host, port), timeout=10)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
key = base64.b64encode(os.urandom(16))
s.sendall(b"GET /chat?room=1 HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
          b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
          % (host.encode(), key))
buf = b""
while b"\r\n\r\n" not in buf:
    buf += s.recv(65536)
head, buf = buf.split(b"\r\n\r\n", 1)
status = int(head.split(b" ", 2)[1])
got = []
for text in json.loads(sys.argv[3]):
    # an all-zero masking key (legal) leaves the text readable on the wire
    send_frame(s, 1, text.encode(), True, key=b"\0\0\0\0")
    for _ in range(2):
        op, payload, buf = recv_frame(s, buf)
        got.append([op, len(payload)])
send_frame(s, 8, struct.pack("!H", 1000), True)
op, payload, buf = recv_frame(s, buf)
got.append([op, len(payload)])
s.close()
print(json.dumps({"status": status, "frames": got}))
"""


WS_TEXTS = ["hello over websocket", "GET /inside HTTP/1.1\r\nHost: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]


@pytest.mark.lab
def test_websocket_upgrade_goes_opaque(lab: Lab) -> None:
    """A WebSocket handshake (101) followed by masked and unmasked frames both ways, two of
    them carrying a whole HTTP request / response in clear (zero masking key, echoed back):
    one exchange, then the connection is opaque (counted once), nothing after the 101 parsed
    as HTTP."""
    cli, srv, if_c = topology(lab)
    python_server(lab, srv, "ws-server", WS_SERVER, 8080)
    cap = lab.tcpdump(cli, if_c, "websocket")
    got = python_client(lab, cli, "ws-client", WS_CLIENT, SRV_IP, "8080", json.dumps(WS_TEXTS))
    frames = [f for t in WS_TEXTS for f in ([1, len(t)], [2, 512])] + [[8, 2]]
    assert got == {"status": 101, "frames": frames}, got

    summary, exs = finish(cap, 1)
    assert_clean(summary, exs, 1)
    # The HTTP-looking frame payloads are on the wire in clear, both ways.
    raw = cap.path.read_bytes()
    assert all(raw.count(t.encode()) == 2 for t in WS_TEXTS[1:])
    [e] = exs
    assert (e.method, e.target, e.path, e.status) == ("GET", "/chat?room=1", "/chat", 101)
    assert e.request.header("upgrade") == "websocket"
    assert rsp(e).header("upgrade") == "websocket"
    assert rsp(e).body_bytes == 0 and e.flags == set()
    assert summary.stats.get("http1", "opaque_upgrade") == 1
    assert summary.to_dict()["exchanges"] == {"http/1.1": 1}
    # tshark agrees, and did see the frames after the handshake as WebSocket.
    assert tshark_requests(cap) == [("GET", "/chat?room=1")]
    assert tshark_statuses(cap) == [101]
    opcodes = [int(op) for (ops,) in tshark(cap, "-Y", "websocket", "-T", "fields",
                                            "-e", "websocket.opcode") for op in ops.split(",")]
    assert sorted(opcodes) == sorted([1, 1, 2] * len(WS_TEXTS) + [8, 8]), opcodes
    assert_timestamps(cap, exs)


# -- 6. timestamps on real packets ---------------------------------------------------------------

TS_FILES = {"big.bin": RND.randbytes(250_000), "small.txt": b"small\n" * 10}


@pytest.mark.lab
def test_timestamps_on_real_packets(lab: Lab) -> None:
    """Two keep-alive connections to nginx, a 250 KB body over many segments among small
    ones: in every exchange request.first_ts <= request.last_ts <= response.first_ts <=
    response.last_ts; each response starts at the packet with its status line (tshark, within
    1 us); each request starts at the packet with its request line; a body's last byte is in
    the last server data packet before the next response."""
    cli, srv, if_c = topology(lab)
    nginx(lab, srv, TS_FILES, 8080)
    cap = lab.tcpdump(cli, if_c, "timestamps")
    base = f"http://{SRV_IP}:8080"
    wout = ("-w", "%{http_code} %{size_download}\\n")
    a = curl(lab, cli, *wout, "-o", "/dev/null", base + "/small.txt", "-o", "/dev/null",
             base + "/big.bin", "-o", "/dev/null", base + "/missing", "-o", "/dev/null",
             base + "/small.txt")
    b = curl(lab, cli, *wout, "-o", "/dev/null", base + "/big.bin")
    assert [x[0] for x in a + b] == ["200", "200", "404", "200", "200"]

    summary, exs = finish(cap, 2)
    assert_clean(summary, exs, 2)
    assert [(e.target, e.status) for e in exs] == [
        ("/small.txt", 200), ("/big.bin", 200), ("/missing", 404), ("/small.txt", 200),
        ("/big.bin", 200)]
    assert [rsp(e).body_bytes for e in exs] == [int(x[1]) for x in a + b]
    assert_timestamps(cap, exs)

    # Requests: first_ts is the packet with the request line (tshark, desegmentation off).
    req_times = [ns_of(t) for (t,) in tshark(cap, "-o", "http.desegment_headers:FALSE",
                                             "-Y", "http.request", "-T", "fields",
                                             "-e", "frame.time_epoch")]
    assert len(req_times) == len(exs)
    for e, t in zip(exs, req_times):
        assert abs(e.request.first_ts - t) <= 1000 and e.request.last_ts == e.request.first_ts
    # Responses: last_ts is the last server data packet of the response's body.
    assert_response_last_ts(cap, exs, 8080)
    big = exs[1].response
    assert big is not None and big.last_ts - big.first_ts > 0
