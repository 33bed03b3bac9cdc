"""Helpers for the namespace lab tests (tests/test_lab.py): throw-away network namespaces,
veth pairs, nginx, a tiny TCP "proxy", tcpdump captures, and a teardown that removes all of
it even when a test fails.

Everything runs inside namespaces that a ``Lab`` creates, with names unique to this process
(pid + counter); nothing touches the host's interfaces, routes or firewall. Processes are
started in their own session so that teardown can signal exactly their process group.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# nginx / ip / tcpdump / iptables often live in /usr/sbin, which may not be on a user PATH.
SBIN = os.pathsep.join(("/usr/local/sbin", "/usr/sbin", "/sbin"))
ENV = {**os.environ, "PATH": os.environ.get("PATH", "") + os.pathsep + SBIN}
for _k in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
    ENV.pop(_k, None)

BASE_TOOLS = ("ip", "tcpdump", "nginx", "curl")
_counter = itertools.count(1)

# Quiet, predictable IPv6 in a new namespace: no router solicitations, no autoconf, no DAD.
# "default" must be set before interfaces appear in the namespace.
_QUIET_V6 = (
    "net.ipv6.conf.default.router_solicitations=0",
    "net.ipv6.conf.default.accept_ra=0",
    "net.ipv6.conf.default.autoconf=0",
    "net.ipv6.conf.default.accept_dad=0",
    "net.ipv6.conf.default.dad_transmits=0",
)

# A minimal HTTP/1.1 server standing in for a mesh proxy: answers every request with "hello"
# and closes. Prints "ready" once listening.
PROXY_PY = r"""
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = c.recv(65536)
        if not d:
            break
        buf += d
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
    c.close()
"""


def which(tool: str) -> str | None:
    return shutil.which(tool, path=ENV["PATH"])


def missing_requirements(*extra: str) -> list[str]:
    """What stops the lab from running here: not root, or tools missing."""
    out = []
    if os.geteuid() != 0:
        out.append("not root (network namespaces and packet capture need root)")
    out += [f"{t} not installed" for t in (*BASE_TOOLS, *extra) if which(t) is None]
    return out


def sh(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), env=ENV, check=check, capture_output=True, text=True,
                          timeout=timeout)


def wait_for(pred: Callable[[], bool], what: str, timeout: float = 10.0,
             step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


class Proc:
    def __init__(self, name: str, popen: subprocess.Popen, log: Path) -> None:
        self.name, self.popen, self.log = name, popen, log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)  # its own session: pgid == pid
        except ProcessLookupError:
            pass

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
        if self.alive():
            self.signal_group(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.popen.wait(5)
        else:
            self.signal_group(signal.SIGKILL)  # children left behind (e.g. nginx workers)


class Capture:
    """A running tcpdump writing a classic pcap file."""

    def __init__(self, proc: Proc, path: Path) -> None:
        self.proc, self.path = proc, path
        self.stats = ""

    def stop(self) -> None:
        """SIGINT (tcpdump flushes and prints its counters), then check nothing was dropped."""
        self.proc.stop(signal.SIGINT, timeout=10)
        self.stats = self.proc.output()
        m = re.search(r"(\d+) packets dropped by kernel", self.stats)
        assert m is not None, f"tcpdump did not report its counters:\n{self.stats}"
        assert m.group(1) == "0", f"tcpdump dropped packets:\n{self.stats}"

    def count(self, bpf: str) -> int:
        """Packets in the file so far that match ``bpf`` (reads a file still being written)."""
        r = sh("tcpdump", "-nn", "-r", str(self.path), bpf, check=False)
        return len([ln for ln in r.stdout.splitlines() if ln.strip()])

    def wait_fins(self, n: int, timeout: float = 10.0) -> None:
        """Wait until ``n`` FIN segments are in the file (every connection fully closed), so
        stopping tcpdump cannot cut off the end of a conversation."""
        wait_for(lambda: self.count(FIN_FILTER) >= n, f"{n} FINs in {self.path.name}", timeout)
        time.sleep(0.2)  # the last ACK follows its FIN by microseconds

    def dump(self) -> str:
        return sh("tcpdump", "-nn", "-r", str(self.path), check=False).stdout


FIN_FILTER = "(ip and tcp[tcpflags] & tcp-fin != 0) or (ip6 and ip6[6] == 6 and ip6[53] & 1 != 0)"


class Lab:
    """Namespaces, processes and a temp dir; ``close()`` removes them all."""

    def __init__(self) -> None:
        self.tag = f"{os.getpid()}-{next(_counter)}"
        self.namespaces: list[str] = []
        self.procs: list[Proc] = []
        self.tmp = Path(tempfile.mkdtemp(prefix=f"wirespan-lab-{self.tag}-"))
        # nginx workers run as an unprivileged user and must read the docroot.
        self.tmp.chmod(0o755)
        self._ifn = itertools.count(1)

    # -- topology ------------------------------------------------------------------------------
    def netns(self, role: str) -> str:
        name = f"wsl-{self.tag}-{role}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "netns", "exec", name, "sysctl", "-qw", *_QUIET_V6, check=False)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def ifname(self, prefix: str) -> str:
        """An interface name (<= 15 chars) unique to this lab."""
        return f"{prefix}{os.getpid() % 100000}{next(self._ifn)}"[:15]

    def veth(self, ns_a: str, ns_b: str, addrs_a: tuple[str, ...] = (),
             addrs_b: tuple[str, ...] = ()) -> tuple[str, str]:
        """A veth pair between two namespaces (or within one), addressed and up, with
        offloads limited so captures show wire-sized segments."""
        a, b = self.ifname("wa"), self.ifname("wb")
        sh("ip", "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b,
           "netns", ns_b)
        for ns, ifc, addrs in ((ns_a, a, addrs_a), (ns_b, b, addrs_b)):
            for addr in addrs:
                sh("ip", "-n", ns, "addr", "add", addr, "dev", ifc,
                   *(("nodad",) if ":" in addr else ()))
            sh("ip", "-n", ns, "link", "set", "dev", ifc, "gso_max_size", "1500", check=False)
            sh("ip", "-n", ns, "link", "set", ifc, "up")
        return a, b

    def ifindex(self, ns: str, ifc: str) -> int:
        out = sh("ip", "-n", ns, "-o", "link", "show", "dev", ifc).stdout
        return int(out.split(":", 1)[0])

    def run(self, ns: str, *cmd: str, timeout: float = 30,
            check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", ns, *cmd, timeout=timeout, check=check)

    # -- processes -----------------------------------------------------------------------------
    def spawn(self, ns: str, name: str, *cmd: str) -> Proc:
        log = self.tmp / f"{name}.log"
        with open(log, "wb") as f:
            # "ip netns exec" execs the command, so the pid is the program's own.
            p = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], env=ENV, stdout=f,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
        proc = Proc(name, p, log)
        self.procs.append(proc)
        return proc

    def tcpdump(self, ns: str, iface: str, name: str, bpf: str = "tcp",
                extra: tuple[str, ...] = ()) -> Capture:
        path = self.tmp / f"{name}.pcap"
        # -Z root: write as root into our temp dir; -U and --immediate-mode: every packet is
        # handed over and written at once, so what is on the wire is in the file when we stop.
        # The kernel ring has buffer / snaplen slots: with -s 0 (256 KiB slots) an 8 MiB
        # buffer holds only ~32 packets and a fast download overruns it. Segments here are
        # wire-sized (gso_max_size), so 64 KiB slots lose nothing; Capture.stop() checks that
        # the kernel dropped nothing, and a truncated packet would show as a gap.
        proc = self.spawn(ns, f"tcpdump-{name}", "tcpdump", "-i", iface, *extra, "-nn",
                          "-s", "65535", "-U", "--immediate-mode", "-B", "65536", "-Z", "root",
                          "-w", str(path), bpf)
        wait_for(lambda: "listening on" in proc.output() or not proc.alive(),
                 f"tcpdump on {iface} in {ns}")
        assert proc.alive(), f"tcpdump exited:\n{proc.output()}"
        return Capture(proc, path)

    def nginx(self, ns: str, files: dict[str, bytes], port: int = 8080,
              listen: list[str] | None = None, locations: str = "",
              extra_servers: str = "") -> Proc:
        """nginx with a private config serving ``files`` (path -> bytes) on ``port`` (v4 + v6,
        or the given ``listen`` addresses), plus ``locations`` and ``extra_servers``."""
        listen = listen or [str(port), f"[::]:{port}"]
        www = self.tmp / "www"
        for rel, data in files.items():
            p = www / rel.lstrip("/")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        for d in (self.tmp / "logs", self.tmp / "ngtmp"):
            d.mkdir(exist_ok=True)
        for dirpath, dirnames, filenames in os.walk(www):
            os.chmod(dirpath, 0o755)
            for fn in filenames:
                os.chmod(os.path.join(dirpath, fn), 0o644)
        t = self.tmp
        conf = t / "nginx.conf"
        conf.write_text(f"""
daemon off;
master_process on;
worker_processes 1;
pid {t}/nginx.pid;
error_log {t}/logs/error.log warn;
events {{ worker_connections 64; }}
http {{
    default_type application/octet-stream;
    access_log {t}/logs/access.log;
    client_body_temp_path {t}/ngtmp/body;
    proxy_temp_path {t}/ngtmp/proxy;
    fastcgi_temp_path {t}/ngtmp/fastcgi;
    uwsgi_temp_path {t}/ngtmp/uwsgi;
    scgi_temp_path {t}/ngtmp/scgi;
    sendfile off;
    gzip off;
    server_tokens off;
    keepalive_timeout 30s;
    keepalive_requests 100;
    server {{
        {" ".join(f"listen {a};" for a in listen)}
        root {www};
        {locations}
    }}
    {extra_servers}
}}
""")
        proc = self.spawn(ns, "nginx", "nginx", "-p", str(t), "-c", str(conf), "-e",
                          f"{t}/logs/error.log")

        def listening() -> bool:
            assert proc.alive(), f"nginx exited:\n{proc.output()}"
            out = self.run(ns, "ss", "-Hltn", f"sport = :{port}", check=False).stdout
            return len(out.strip().splitlines()) >= len(listen)

        wait_for(listening, f"nginx listening on :{port} in {ns}")
        return proc

    def proxy(self, ns: str, host: str, port: int) -> Proc:
        script = self.tmp / "proxy.py"
        script.write_text(PROXY_PY)
        proc = self.spawn(ns, f"proxy-{port}", sys.executable, "-u", str(script), host, str(port))
        wait_for(lambda: "ready" in proc.output() or not proc.alive(), f"proxy on :{port}")
        assert proc.alive(), f"proxy exited:\n{proc.output()}"
        return proc

    def curl(self, ns: str, *args: str) -> list[str]:
        """curl in ``ns``; returns the lines of its --write-out."""
        r = self.run(ns, "curl", "--http1.1", "--silent", "--show-error", "--noproxy", "*",
                     "--max-time", "10", *args, timeout=30, check=False)
        assert r.returncode == 0, f"curl {args} failed ({r.returncode}): {r.stderr}"
        return r.stdout.splitlines()

    # -- teardown ------------------------------------------------------------------------------
    def close(self) -> None:
        errors = []
        for proc in reversed(self.procs):
            try:
                proc.stop()
            except Exception as e:  # keep tearing down
                errors.append(f"{proc.name}: {e!r}")
        keep = os.environ.get("WIRESPAN_LAB_KEEP")  # a folder to copy the captures into
        if keep:
            os.makedirs(keep, exist_ok=True)
            for p in self.tmp.glob("*.pcap"):
                shutil.copy(p, os.path.join(keep, f"{self.tag}-{p.name}"))
        for ns in reversed(self.namespaces):
            # Anything else still running inside our own namespaces.
            r = sh("ip", "netns", "pids", ns, check=False)
            for pid in r.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            r = sh("ip", "netns", "del", ns, check=False)
            if r.returncode:
                errors.append(f"ip netns del {ns}: {r.stderr.strip()}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        if errors:
            raise RuntimeError("lab teardown: " + "; ".join(errors))


# -- HTTP/1.1 parsing of reassembled streams -----------------------------------------------------

def split_requests(stream: bytes) -> list[bytes]:
    """Request heads of a client stream (requests without bodies)."""
    heads = stream.split(b"\r\n\r\n")
    assert heads[-1] == b"", f"trailing bytes after the last request: {heads[-1][:80]!r}"
    return [h + b"\r\n\r\n" for h in heads[:-1]]


def split_responses(stream: bytes) -> list[tuple[bytes, bytes]]:
    """(head, body) of each response in a server stream, framed by Content-Length."""
    out = []
    pos = 0
    while pos < len(stream):
        end = stream.index(b"\r\n\r\n", pos)
        head = stream[pos:end + 4]
        m = re.search(rb"(?im)^content-length:\s*(\d+)\r$", head)
        assert head.startswith(b"HTTP/1.1 ") and m, f"not an HTTP/1.1 response head: {head!r}"
        n = int(m.group(1))
        body = stream[end + 4:end + 4 + n]
        assert len(body) == n, f"short body: {len(body)} of {n}"
        out.append((head, body))
        pos = end + 4 + n
    return out


def lab_or_skip(what: str, *extra_tools: str):
    """A fixture body: a ``Lab`` torn down afterwards, or a skip naming what is missing
    (not root, or tools not installed). Use as ``yield from lab_or_skip("...")``."""
    import pytest

    missing = missing_requirements(*extra_tools)
    if missing:
        pytest.skip(f"{what} needs: " + ", ".join(missing))
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()
