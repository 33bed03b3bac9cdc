"""The lab's node: a 'node' network namespace holding a Linux bridge, and pods (one network
namespace each) attached to it by a veth whose pod end is called ``eth0``. Pod addresses are
10.88.0.<n>/24 and exist only inside these namespaces. Processes run in their own session so
that teardown signals exactly their process group; ``Node.close()`` stops every process,
removes every namespace (and with it every veth, bridge and iptables rule inside them) and the
temporary directory. It is idempotent and also runs from signal handlers (see ``run.py``).

Self-contained on purpose (no import from tests/): the CLI must work from a plain checkout and
the tests import it as ``scripts.lab``.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SBIN = os.pathsep.join(("/usr/local/sbin", "/usr/sbin", "/sbin"))
ENV = {**os.environ, "PATH": os.environ.get("PATH", "") + os.pathsep + SBIN}
for _k in ("http_proxy", "https_proxy", "all_proxy", "grpc_proxy", "HTTP_PROXY", "HTTPS_PROXY",
           "ALL_PROXY", "GRPC_PROXY", "no_proxy", "NO_PROXY"):
    ENV.pop(_k, None)

SUBNET = "10.88.0"
_counter = itertools.count(1)
_QUIET_V6 = ("net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")


def which(tool: str) -> str | None:
    return shutil.which(tool, path=ENV["PATH"])


def sh(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), env=ENV, check=check, capture_output=True, text=True,
                          timeout=timeout)


def wait_for(pred: Callable[[], bool], what: str, timeout: float = 10.0,
             step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


class Proc:
    def __init__(self, name: str, popen: subprocess.Popen, log: Path) -> None:
        self.name, self.popen, self.log = name, popen, log

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def _killpg(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
        if self.alive():
            self._killpg(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._killpg(signal.SIGKILL)
                self.popen.wait(5)
        self._killpg(signal.SIGKILL)  # leftovers (nginx workers...)


@dataclass
class Capture:
    proc: Proc
    path: Path
    pod: str
    iface: str
    stats: str = ""

    def stop(self) -> None:
        self.proc.stop(signal.SIGINT, timeout=10)
        self.stats = self.proc.output()
        m = re.search(r"(\d+) packets dropped by kernel", self.stats)
        if m is None or m.group(1) != "0":
            raise RuntimeError(f"tcpdump on {self.pod}/{self.iface}: {self.stats}")


@dataclass
class Pod:
    name: str
    ns: str
    ip: str
    ifaces: list[str] = field(default_factory=lambda: ["eth0"])


class Node:
    """Namespaces, processes and a temp dir; ``close()`` removes them all."""

    def __init__(self) -> None:
        self.tag = f"{os.getpid() % 100000}{next(_counter)}"
        self.namespaces: list[str] = []
        self.procs: list[Proc] = []
        self.captures: list[Capture] = []
        self.pods: dict[str, Pod] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix=f"wirespan-lab-{self.tag}-"))
        self.tmp.chmod(0o755)
        self._closed = False
        self._next_ip = itertools.count(10)
        self.bridge = "br0"
        try:
            self.node_ns = self._netns("node")
            sh("ip", "-n", self.node_ns, "link", "add", self.bridge, "type", "bridge")
            sh("ip", "-n", self.node_ns, "link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise

    def _netns(self, role: str) -> str:
        name = f"wsl-{self.tag}-{role}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "netns", "exec", name, "sysctl", "-qw", *_QUIET_V6, check=False)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def pod(self, name: str, capture_lo: bool = False) -> Pod:
        ns = self._netns(name)
        ip = f"{SUBNET}.{next(self._next_ip)}"
        host_if = f"v{self.tag}{len(self.pods)}"[:15]
        sh("ip", "link", "add", host_if, "netns", self.node_ns, "type", "veth", "peer", "name",
           "eth0", "netns", ns)
        sh("ip", "-n", self.node_ns, "link", "set", host_if, "master", self.bridge)
        sh("ip", "-n", self.node_ns, "link", "set", host_if, "up")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        for ifc in ("eth0", "lo"):
            # wire-sized segments in the captures (no GSO/GRO super-packets)
            sh("ip", "-n", ns, "link", "set", "dev", ifc, "gso_max_size", "1500", check=False)
            if which("ethtool"):
                sh("ip", "netns", "exec", ns, "ethtool", "-K", ifc, "gro", "off", "tso", "off",
                   "gso", "off", check=False)
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        p = Pod(name, ns, ip, ["eth0", "lo"] if capture_lo else ["eth0"])
        self.pods[name] = p
        return p

    def run(self, ns: str, *cmd: str, timeout: float = 30,
            check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", ns, *cmd, timeout=timeout, check=check)

    def spawn(self, ns: str, name: str, *cmd: str, ready: str | None = None,
              timeout: float = 10) -> Proc:
        log = self.tmp / f"{name}.log"
        with open(log, "wb") as f:
            p = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], env=ENV, stdout=f,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
        proc = Proc(name, p, log)
        self.procs.append(proc)
        if ready is not None:
            wait_for(lambda: ready in proc.output() or not proc.alive(), f"{name}: {ready!r}",
                     timeout)
            if not proc.alive():
                raise RuntimeError(f"{name} exited:\n{proc.output()}")
        return proc

    def wait_listening(self, ns: str, port: int, proc: Proc, timeout: float = 10) -> None:
        def ok() -> bool:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited:\n{proc.output()}")
            return bool(self.run(ns, "ss", "-Hltn", f"sport = :{port}", check=False)
                        .stdout.strip())
        wait_for(ok, f"{proc.name} listening on :{port}", timeout)

    def capture_all(self, out_dir: Path) -> list[Capture]:
        """One tcpdump per interface and pod: ``<pod>-<iface>.pcap`` in ``out_dir``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        for pod in self.pods.values():
            for ifc in pod.ifaces:
                path = out_dir / f"{pod.name}-{ifc}.pcap"
                proc = self.spawn(pod.ns, f"tcpdump-{pod.name}-{ifc}", "tcpdump", "-i", ifc,
                                  "-nn", "-s", "65535", "-U", "--immediate-mode", "-B", "8192",
                                  "-Z", "root", "-w", str(path), "tcp",
                                  ready="listening on")
                self.captures.append(Capture(proc, path, pod.name, ifc))
        time.sleep(0.2)
        return self.captures

    def stop_captures(self) -> None:
        time.sleep(0.3)  # last ACKs after FINs
        errs = []
        for c in self.captures:
            try:
                c.stop()
            except RuntimeError as e:
                errs.append(str(e))
        self.captures = []
        if errs:
            raise RuntimeError("; ".join(errs))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for proc in reversed(self.procs):
            try:
                proc.stop(timeout=3)
            except Exception:  # keep tearing down
                pass
        for ns in reversed(self.namespaces):
            r = sh("ip", "netns", "pids", ns, check=False)
            for pid in r.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
