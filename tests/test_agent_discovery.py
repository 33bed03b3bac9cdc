"""Pod discovery for the node agent (sniffer/agent/discovery.py).

Lab tests (root): real network namespaces made here with ``ip netns add`` (named
``wsdisc-<pid>-<n>``), veth pairs created directly inside them (never on the host) with
addresses in 10.77.x.x/24 and fd77::/64, an unnamed namespace held by ``unshare --net sleep``,
and bind mounts of namespaces into tmp dirs for tests that must not see the rest of the node.
Everything is removed by the fixture, also when a test fails. Other namespaces on the machine
(other people's tests) may come and go meanwhile: the tests only look at their own.

Unit tests (no root): empty or missing dirs, and a fake /proc whose processes "exited"
between the listing and the opening (dangling ns links), with non-numeric entries.
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sniffer.agent.discovery import Discovery, Event, PodNetns, scan

NETNS_DIR = "/var/run/netns"


def sh(*args: str) -> None:
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(args)}: {r.stderr}"


def _lab_missing() -> str | None:
    if os.geteuid() != 0:
        return "root"
    if not (shutil.which("ip") and shutil.which("unshare") and shutil.which("mount")):
        return "iproute2 and util-linux"
    return None


class NsLab:
    """Namespaces, processes and bind mounts made by one test; ``close()`` undoes them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.names: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.mounts: list[Path] = []
        self._n = 0

    def name(self) -> str:
        self._n += 1
        return f"wsdisc-{os.getpid()}-{self._n}"

    def netns(self, name: str | None = None) -> str:
        name = name or self.name()
        self.names.append(name)
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def veth(self, ns_a: str, ns_b: str, addrs_a: tuple[str, ...] = (),
             addrs_b: tuple[str, ...] = ()) -> None:
        """eth0 in ns_a <-> eth0 in ns_b, both ends created inside their namespaces."""
        sh("ip", "link", "add", "eth0", "netns", ns_a, "type", "veth", "peer", "name", "eth0",
           "netns", ns_b)
        for ns, addrs in ((ns_a, addrs_a), (ns_b, addrs_b)):
            for a in addrs:
                sh("ip", "-n", ns, "addr", "add", a, "dev", "eth0",
                   *(("nodad",) if ":" in a else ()))
            sh("ip", "-n", ns, "link", "set", "eth0", "up")

    def unnamed(self) -> int:
        """A process in a fresh network namespace of its own; its pid once it is there."""
        own = os.readlink("/proc/self/ns/net")
        p = subprocess.Popen(["unshare", "--net", "sleep", "60"], start_new_session=True)
        self.procs.append(p)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                if os.readlink(f"/proc/{p.pid}/ns/net") != own:
                    return p.pid
            except OSError:
                pass
            time.sleep(0.005)
        raise AssertionError("unshare --net did not get its namespace")

    def bind(self, ns: str, target: Path) -> Path:
        """A handle on namespace ``ns`` at ``target`` (a file bind-mounted like ip netns)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
        self.mounts.append(target)
        sh("mount", "--bind", f"{NETNS_DIR}/{ns}", str(target))
        return target

    def unbind(self, target: Path) -> None:
        sh("umount", str(target))
        self.mounts.remove(target)
        target.unlink()

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
            p.wait()
        for m in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(m)], capture_output=True)
        for n in self.names:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


@pytest.fixture
def nslab(tmp_path: Path) -> Iterator[NsLab]:
    missing = _lab_missing()
    if missing:
        pytest.skip(f"discovery lab test needs {missing}")
    lab = NsLab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


def by_name(pods: dict[int, PodNetns] | list[PodNetns]) -> dict[str, PodNetns]:
    vals = pods.values() if isinstance(pods, dict) else pods
    return {p.name: p for p in vals}


def wait_event(d: Discovery, kind: str, name: str, within: float,
               seen: list[Event] | None = None,
               until: Callable[[PodNetns], bool] = lambda pod: True,
               ) -> tuple[PodNetns, float]:
    """Wait (selecting on ``d.fileno()``, then ``poll(0)``) for a ``kind`` event about the
    namespace ``name`` (one that satisfies ``until``); the pod and how long it took."""
    t0 = time.monotonic()
    deadline = t0 + within
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no {kind} event for {name} within {within}s (stats {d.stats})"
        r, _, _ = select.select([d], [], [], left)
        for e in d.poll(0) if r else ():
            if seen is not None:
                seen.append(e)
            if e.kind == kind and e.pod.name == name and until(e.pod):
                return e.pod, time.monotonic() - t0


def empty_proc(tmp: Path) -> str:
    p = tmp / "proc"
    p.mkdir(exist_ok=True)
    return str(p)


# -- lab: scan -----------------------------------------------------------------------------------

@pytest.mark.lab
def test_scan_finds_namespaces_with_interfaces_and_addresses(nslab: NsLab) -> None:
    a, b = nslab.netns(), nslab.netns()
    nslab.veth(a, b, ("10.77.1.1/24", "fd77:1::1/64"), ("10.77.1.2/24",))
    stats: dict[str, int] = {}
    pods = scan(stats=stats)
    named = by_name(pods)
    assert a in named and b in named
    pa, pb = named[a], named[b]
    for name, pod in ((a, pa), (b, pb)):
        st = os.stat(f"{NETNS_DIR}/{name}")
        assert (pod.inode, pod.dev) == (st.st_ino, st.st_dev)
        assert pods[st.st_ino] is pod
        assert pod.named and pod.label == name and os.path.basename(pod.path) == name
        assert os.stat(pod.path).st_ino == pod.inode
        assert set(pod.interfaces) == {"lo", "eth0"}
        assert pod.interfaces["lo"] == ["127.0.0.1", "::1"]
        assert {"lo", "eth0"} <= pod.up
    assert pa.interfaces["eth0"][:1] == ["10.77.1.1"]
    assert "fd77:1::1" in pa.interfaces["eth0"]
    assert any(x.startswith("fe80:") for x in pa.interfaces["eth0"])  # kept per interface...
    assert pa.addresses == ["10.77.1.1", "fd77:1::1"]  # ...but not a pod address; v4 first
    assert pb.addresses == ["10.77.1.2"]
    # the host's namespace (this test runs in it) is left out unless asked for
    host = os.stat("/proc/self/ns/net").st_ino
    assert host not in pods
    assert host in scan(include_host=True)
    assert stats["lookups"] >= 2 and "last_scan_ms" in stats


@pytest.mark.lab
def test_unnamed_namespace_found_via_proc_and_deduplicated_against_named(
        nslab: NsLab) -> None:
    pid = nslab.unnamed()
    ino = os.stat(f"/proc/{pid}/ns/net").st_ino
    pod = scan()[ino]
    assert not pod.named
    assert pod.name == pod.label == f"pid-{pid}"
    assert pod.pids == (pid,) and pod.pid == pid
    assert pod.path == f"/proc/{pid}/ns/net"
    assert pod.interfaces == {"lo": []} and pod.addresses == []  # lo is down: no 127.0.0.1

    name = nslab.name()
    nslab.names.append(name)
    sh("ip", "netns", "attach", name, str(pid))  # a named handle on the process's netns
    pods = scan()
    pod = pods[ino]
    assert pod.named and pod.name == name and pod.path.endswith(f"/{name}")
    assert pid in pod.pids  # the processes in it are still known
    assert [p for p in pods.values() if p.inode == ino] == [pod]
    assert f"pid-{pid}" not in by_name(pods)


# -- lab: events ---------------------------------------------------------------------------------

@pytest.mark.lab
def test_inotify_reports_added_and_removed_promptly(nslab: NsLab) -> None:
    rescan = 30.0
    with Discovery(rescan_interval_s=rescan) as d:
        first = d.poll(0)
        assert all(e.kind == "added" for e in first)
        assert d.stats["full_scans"] == 1
        name = nslab.name()
        nslab.names.append(name)
        t0 = time.monotonic()
        sh("ip", "netns", "add", name)  # creates the file, then bind-mounts onto it
        pod, _ = wait_event(d, "added", name, within=2.0)
        added_after = time.monotonic() - t0
        assert pod.named and pod.inode == os.stat(f"{NETNS_DIR}/{name}").st_ino
        assert pod.interfaces == {"lo": []}
        assert d.pods[pod.inode] is pod

        t0 = time.monotonic()
        sh("ip", "netns", "del", name)
        gone, _ = wait_event(d, "removed", name, within=2.0)
        removed_after = time.monotonic() - t0
        assert gone.inode == pod.inode and pod.inode not in d.pods
        # only inotify can have done it: no rescan ran after the first
        assert d.stats["full_scans"] == 1
        assert d.stats["inotify_events"] >= 2
        assert max(added_after, removed_after) < rescan / 20


@pytest.mark.lab
def test_dir_created_later_and_file_mounted_after_create(nslab: NsLab) -> None:
    """A netns dir that does not exist at start is watched once it appears (through its
    parents), and a file created there is reported once a namespace is mounted onto it."""
    src = nslab.netns()
    ns_dir = nslab.tmp / "later" / "deeper" / "netns"
    with Discovery(netns_dirs=(str(ns_dir),), proc=empty_proc(nslab.tmp),
                   rescan_interval_s=30) as d:
        assert d.poll(0) == []
        (nslab.tmp / "later").mkdir()
        (nslab.tmp / "later" / "deeper").mkdir()
        ns_dir.mkdir()
        handle = ns_dir / "pod-a"
        handle.touch()  # like `ip netns add`: the file first...
        assert d.poll(0.1) == []
        assert d.stats["not_mounted"] == 1
        t0 = time.monotonic()
        nslab.bind(src, handle)  # ...then the mount, which inotify does not see
        pod, _ = wait_event(d, "added", "pod-a", within=2.0)
        assert time.monotonic() - t0 < 1.0
        assert pod.inode == os.stat(f"{NETNS_DIR}/{src}").st_ino
        assert pod.path == str(handle)
        assert d.stats["full_scans"] == 1 and d.stats["not_mounted"] == 0
        nslab.unbind(handle)
        wait_event(d, "removed", "pod-a", within=2.0)
        # the dir itself goes away and comes back: watched again
        ns_dir.rmdir()
        assert d.poll(0.05) == []
        ns_dir.mkdir()
        nslab.bind(src, ns_dir / "pod-b")
        wait_event(d, "added", "pod-b", within=2.0)
        assert d.stats["full_scans"] == 1


@pytest.mark.lab
def test_address_change_reported_by_netlink_subscription(nslab: NsLab) -> None:
    a, b = nslab.netns(), nslab.netns()
    nslab.veth(a, b)
    with Discovery(rescan_interval_s=30) as d:
        assert by_name([e.pod for e in d.poll(0)])[a].addresses == []
        sh("ip", "-n", a, "addr", "add", "10.77.3.1/24", "dev", "eth0")
        # (IPv6 link-local addresses may show up first, as changes of their own)
        pod, took = wait_event(d, "changed", a, within=2.0,
                               until=lambda p: "10.77.3.1" in p.addresses)
        assert pod.addresses == ["10.77.3.1"]
        assert "10.77.3.1" in pod.interfaces["eth0"]
        assert d.stats["full_scans"] == 1 and d.stats["netlink_notifications"] >= 1
        assert took < 1.0
        sh("ip", "-n", a, "link", "set", "eth0", "down")
        pod, _ = wait_event(d, "changed", a, within=2.0, until=lambda p: "eth0" not in p.up)
        assert "eth0" in pod.interfaces


@pytest.mark.lab
def test_address_change_reported_on_rescan(nslab: NsLab) -> None:
    a, b = nslab.netns(), nslab.netns()
    nslab.veth(a, b, ("10.77.4.1/24",))
    with Discovery(rescan_interval_s=0.3, watch_links=False) as d:
        assert by_name([e.pod for e in d.poll(0)])[a].addresses == ["10.77.4.1"]
        assert d.stats["link_subscriptions"] == 0
        scans = d.stats["full_scans"]
        sh("ip", "-n", a, "addr", "add", "10.77.4.7/24", "dev", "eth0")
        pod, _ = wait_event(d, "changed", a, within=3.0,
                            until=lambda p: "10.77.4.7" in p.addresses)
        assert pod.addresses == ["10.77.4.1", "10.77.4.7"]
        assert d.stats["full_scans"] > scans
        assert "netlink_notifications" not in d.stats


@pytest.mark.lab
def test_max_pods_honoured_counted_and_logged_once(nslab: NsLab,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    ns_dir = nslab.tmp / "netns"
    handles = {}
    for h in ("p1", "p2", "p3"):
        handles[h] = nslab.bind(nslab.netns(), ns_dir / h)
    caplog.set_level(logging.WARNING, logger="wirespan.agent.discovery")
    with Discovery(netns_dirs=(str(ns_dir),), proc=empty_proc(nslab.tmp),
                   rescan_interval_s=0.1, max_pods=2) as d:
        first = d.poll(0)
        assert sorted(e.pod.name for e in first) == ["p1", "p2"]
        assert {e.kind for e in first} == {"added"}
        assert d.stats["skipped_max_pods"] == 1
        assert d.poll(0.35) == []  # rescans: still two, and no more warnings
        assert d.stats["full_scans"] >= 3
        assert d.stats["skipped_max_pods"] == 1 and d.stats["skipped_max_pods_total"] == 1
        warnings = [r for r in caplog.records if "max_pods" in r.getMessage()]
        assert len(warnings) == 1
        nslab.unbind(handles["p1"])  # a slot frees up: the skipped one comes in
        seen: list[Event] = []
        wait_event(d, "added", "p3", within=2.0, seen=seen)
        assert ("removed", "p1") in [(e.kind, e.pod.name) for e in seen]
        assert sorted(p.name for p in d.pods.values()) == ["p2", "p3"]
        assert d.stats["skipped_max_pods"] == 0
    assert len(scan(netns_dirs=(str(ns_dir),), proc=empty_proc(nslab.tmp))) == 2


# -- unit: no root needed ------------------------------------------------------------------------

def test_nothing_to_find_is_an_empty_result(tmp_path: Path) -> None:
    (tmp_path / "netns").mkdir()
    stats: dict[str, int] = {}
    assert scan(netns_dirs=(str(tmp_path / "netns"), str(tmp_path / "missing")),
                proc=str(tmp_path / "no-proc"), stats=stats) == {}
    assert stats["proc_errors"] == 1
    d = Discovery(netns_dirs=(str(tmp_path / "netns"),), proc=str(tmp_path / "no-proc"),
                  rescan_interval_s=0.05)
    try:
        assert isinstance(d.fileno(), int)
        assert d.poll(0.12) == []
        assert d.stats["pods"] == 0 and d.stats["full_scans"] >= 2
        # a plain file in a netns dir is not a namespace (not mounted): noticed, not reported
        (tmp_path / "netns" / "stray").touch()
        r, _, _ = select.select([d], [], [], 1.0)
        assert r  # inotify woke it
        assert d.poll(0.02) == []
        assert d.stats["not_mounted"] == 1 and d.stats["inotify_events"] >= 1
    finally:
        d.close()
    with pytest.raises(ValueError):
        d.poll(0)


def test_vanished_processes_and_junk_in_proc_are_skipped_and_counted(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    for pid, link in (("1", "net:[1111]"),  # the host: excluded, never opened
                      ("4242", "net:[4026599999]"),  # exited between readlink and open
                      ("4243", "net:[4026599999]"),  # the same namespace, exited too
                      ("88", "garbage")):  # not a namespace link
        (proc / pid / "ns").mkdir(parents=True)
        os.symlink(link, proc / pid / "ns" / "net")
    (proc / "77").mkdir()  # a process that is gone before its ns/ is read
    (proc / "self").symlink_to("4242")
    (proc / "stat").write_text("cpu 0\n")
    (proc / "sys").mkdir()
    (tmp_path / "netns").mkdir()
    (tmp_path / "netns" / "half-made").touch()  # created, not mounted
    (tmp_path / "netns" / "subdir").mkdir()
    stats: dict[str, int] = {}
    assert scan(netns_dirs=(str(tmp_path / "netns"),), proc=str(proc), stats=stats) == {}
    assert stats["vanished"] == 1
    assert stats["bad_ns_links"] == 1
    assert stats["not_mounted"] == 1
    assert stats.get("lookups", 0) == 0
    with Discovery(netns_dirs=(str(tmp_path / "netns"),), proc=str(proc),
                   rescan_interval_s=0.05) as d:
        assert d.poll(0.12) == []
        assert d.stats["vanished"] >= 2 and d.stats["pods"] == 0
