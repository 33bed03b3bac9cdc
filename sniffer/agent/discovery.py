"""Pod network namespaces on this node, and events as they come, change and go.

A pod network namespace is identified by the inode of its netns file (``st_ino`` of
``/var/run/netns/NAME`` or ``/proc/PID/ns/net``; ``st_dev`` is that of nsfs, the same for
every namespace of the kernel). Two sources:

* **named** namespaces: files in the netns directories (``/var/run/netns``, ``/run/netns``)
  that are bind mounts of a namespace -- what ``ip netns add`` and CNI runtimes make for pod
  sandboxes. A file there that is not (yet) a mount is "pending": ``ip netns add`` creates
  the file first and bind-mounts the namespace onto it a moment later.
* **unnamed** namespaces: ``readlink /proc/PID/ns/net`` gives ``net:[INODE]`` for every
  process. Deduplicated by inode; a named handle on the same namespace wins.

The host's own namespace (that of PID 1 under ``proc``; kthreadd's if PID 1 cannot be read)
is left out unless ``include_host``. Interfaces and addresses are read *inside* each
namespace with pyroute2: the calling thread enters the namespace with ``setns``, creates an
``IPRoute`` there (its netlink socket stays bound to that namespace), and goes back -- no
helper process per namespace (``IPRoute(netns=...)`` forks one for every socket it opens).

``scan()`` is one snapshot. ``Discovery`` keeps one up to date and reports events: inotify
on the netns directories (and on the nearest existing parent of one that does not exist
yet), a netlink subscription (link and address groups) in every reported namespace so that
``eth0`` appearing or getting its address is reported at once, and a full rescan every
``rescan_interval_s`` for namespaces that only processes hold and anything the others missed.
``fileno()`` is an epoll descriptor that becomes readable whenever ``poll(0)`` has work to do
(including a due rescan, through a timerfd), so the agent can ``select()`` on it.

Nothing here raises for the node's churn: processes that exit mid-scan, namespaces removed
between listing and opening, permission errors are skipped and counted (``stats``).

Use a ``Discovery`` from one thread, and not from inside a running asyncio event loop in that
thread (pyroute2's synchronous ``IPRoute`` runs its own loop).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import ipaddress
import logging
import os
import select
import socket
import stat
import struct
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from ..errors import WirespanError

log = logging.getLogger("wirespan.agent.discovery")

DEFAULT_NETNS_DIRS = ("/var/run/netns", "/run/netns")

CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3), Linux >= 4.11

# inotify (include/uapi/linux/inotify.h)
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_WATCH_MASK = (IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF
               | IN_MOVE_SELF | IN_ONLYDIR)
_IN_EVENT = struct.Struct("=iIII")  # wd, mask, cookie, len; then len bytes of name

# netlink route multicast groups (the legacy bitmask form of bind())
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
NETLINK_ROUTE = 0
IFF_UP = 0x1
IFF_LOOPBACK = 0x8

CLOCK_MONOTONIC = 1
TFD_NONBLOCK = os.O_NONBLOCK
TFD_CLOEXEC = os.O_CLOEXEC

MAX_PIDS = 8  # pids kept per namespace (a sample; any one of them opens it)
_PENDING_FIRST_S = 0.005  # first recheck of a netns file that is not mounted yet
_PENDING_MAX_S = 0.5  # backoff ceiling
_PENDING_GIVE_UP_S = 30.0  # then only rescans look at it
_DEBOUNCE_S = 0.02  # netlink notifications come in bursts (link up, address, DAD...)


# -- the model ---------------------------------------------------------------------------------

@dataclass
class PodNetns:
    """One network namespace on the node.

    ``interfaces`` maps every interface that exists in the namespace (``lo`` included, up or
    not) to its addresses as strings (no prefix length), in kernel order; ``up`` names those
    that are administratively up. ``addresses`` are the namespace's addresses that can be a
    pod IP -- not loopback (127/8, ::1, or on a loopback device) and not link-local --
    IPv4 first, ``eth0``'s first within a family.
    """

    inode: int
    dev: int
    path: str  # opens it: /var/run/netns/NAME, or /proc/PID/ns/net
    name: str  # the netns name, or pid-<PID>
    named: bool = False
    pids: tuple[int, ...] = ()  # a sample of the processes in it (lowest first)
    interfaces: dict[str, list[str]] = field(default_factory=dict)
    up: frozenset[str] = frozenset()
    addresses: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """What to call it in metrics and logs: the netns name, else ``pid-<PID>``."""
        return self.name

    @property
    def pid(self) -> int | None:
        return self.pids[0] if self.pids else None

    def _state(self) -> tuple:
        return (self.name, self.interfaces, self.up, self.addresses)


class Event(NamedTuple):
    kind: Literal["added", "removed", "changed"]
    pod: PodNetns


@dataclass
class _Candidate:
    inode: int
    dev: int
    path: str
    name: str
    named: bool
    pids: list[int] = field(default_factory=list)

    def sort_key(self) -> tuple:
        return (not self.named, self.name if self.named else "", self.pids[:1])


# -- libc ------------------------------------------------------------------------------------------

_libc: ctypes.CDLL | None = None


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        lib.setns.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.inotify_init1.argtypes = [ctypes.c_int]
        lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int,
                                        ctypes.POINTER(_Itimerspec), ctypes.c_void_p]
        _libc = lib
    return _libc


def _check(rc: int) -> int:
    if rc < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return rc


def _setns(fd: int) -> None:
    _check(_lib().setns(fd, CLONE_NEWNET))


class StuckInNamespace(RuntimeError):
    """setns back to the agent's own namespace failed: this thread cannot go on."""


@contextmanager
def _entered(fd: int, home: int) -> Iterator[None]:
    """The calling thread inside the namespace ``fd``, then back in ``home``."""
    _setns(fd)
    try:
        yield
    finally:
        try:
            _setns(home)
        except OSError as e:  # pragma: no cover - would leave this thread in a pod's netns
            raise StuckInNamespace(f"cannot return to the agent's network namespace: {e}") from e


def _nsfs_dev() -> int | None:
    try:
        return os.stat("/proc/self/ns/net").st_dev
    except OSError:
        return None


def _parse_link(link: str) -> int | None:
    if link.startswith("net:[") and link.endswith("]"):
        try:
            return int(link[5:-1])
        except ValueError:
            return None
    return None


def _host_inode(proc: str) -> int | None:
    """The host's namespace: PID 1's; kthreadd's (kernel threads live in the initial
    namespace) when PID 1 cannot be read; this process's as the last resort."""
    try:
        return _parse_link(os.readlink(f"{proc}/1/ns/net"))
    except OSError:
        pass
    try:
        with open(f"{proc}/2/comm") as f:
            if f.read().strip() == "kthreadd":
                return _parse_link(os.readlink(f"{proc}/2/ns/net"))
    except OSError:
        pass
    try:
        return _parse_link(os.readlink("/proc/self/ns/net"))
    except OSError:
        return None


# -- enumeration -----------------------------------------------------------------------------

def _unique_dirs(dirs: Iterable[str]) -> list[str]:
    """The netns dirs that exist, the first spelling of each directory (/var/run -> /run)."""
    out, seen = [], set()
    for d in dirs:
        try:
            st = os.stat(d)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        out.append(d)
    return out


def _is_netns(path: str, st: Counter) -> bool | None:
    """True for a network namespace, False for another kind (a mount namespace bound there),
    None (counted) when it cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        st["vanished"] += 1
        return None
    except PermissionError:
        st["permission_denied"] += 1
        return None
    except OSError:
        st["open_errors"] += 1
        return None
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError as e:
        return e.errno in (errno.ENOTTY, errno.EINVAL)  # kernel < 4.11: trust st_dev
    finally:
        os.close(fd)


def _enumerate(netns_dirs: Iterable[str], proc: str, include_host: bool, st: Counter,
               verified: set[int] | None = None,
               ) -> tuple[dict[int, _Candidate], list[str]]:
    """Every namespace on the node -> (candidates by inode, netns files not mounted yet)."""
    nsfs = _nsfs_dev()
    cands: dict[int, _Candidate] = {}
    unmounted: list[str] = []
    host = None if include_host else _host_inode(proc)
    for d in _unique_dirs(netns_dirs):
        try:
            names = sorted(os.listdir(d))
        except OSError:
            st["dir_errors"] += 1
            continue
        for name in names:
            path = os.path.join(d, name)
            try:
                s = os.stat(path)
            except FileNotFoundError:
                st["vanished"] += 1
                continue
            except PermissionError:
                st["permission_denied"] += 1
                continue
            except OSError:
                st["open_errors"] += 1
                continue
            if not stat.S_ISREG(s.st_mode):
                continue
            if nsfs is not None and s.st_dev != nsfs:
                unmounted.append(path)  # created, not bind-mounted (yet)
                continue
            if s.st_ino == host or s.st_ino in cands:
                continue
            if verified is None or s.st_ino not in verified:
                kind = _is_netns(path, st)
                if not kind:
                    if kind is False:
                        st["not_netns"] += 1
                    continue
            cands[s.st_ino] = _Candidate(s.st_ino, s.st_dev, path, name, True)
    try:
        entries = os.listdir(proc)
    except OSError:
        st["proc_errors"] += 1
        entries = []
    pids = sorted(int(e) for e in entries if e.isdigit())
    for pid in pids:
        try:
            link = os.readlink(f"{proc}/{pid}/ns/net")
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited since the listing: the normal churn of a node
        except PermissionError:
            st["permission_denied"] += 1
            continue
        except OSError:
            st["proc_errors"] += 1
            continue
        ino = _parse_link(link)
        if ino is None:
            st["bad_ns_links"] += 1
            continue
        if ino == host:
            continue
        c = cands.get(ino)
        if c is None:
            c = cands[ino] = _Candidate(ino, nsfs or 0, f"{proc}/{pid}/ns/net", f"pid-{pid}",
                                        False)
        if len(c.pids) < MAX_PIDS:
            c.pids.append(pid)
    return cands, unmounted


def _open_candidate(c: _Candidate, proc: str, st: Counter) -> int | None:
    """An fd on the candidate's namespace (checked to be that inode), or None, counted. For
    an unnamed one, the first of its pids that still opens it becomes its path and name."""
    paths = [c.path] if c.named or not c.pids else [f"{proc}/{p}/ns/net" for p in c.pids]
    why = "vanished"
    for i, path in enumerate(paths):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except (FileNotFoundError, ProcessLookupError):
            continue
        except PermissionError:
            why = "permission_denied"
            continue
        except OSError:
            why = "open_errors"
            continue
        try:
            s = os.fstat(fd)
        except OSError:
            os.close(fd)
            continue
        if s.st_ino != c.inode:  # the pid was reused, or the name now holds another one
            os.close(fd)
            continue
        if not c.named and c.pids:
            del c.pids[:i]  # those before it have exited
            c.path, c.name = path, f"pid-{c.pids[0]}"
        c.dev = s.st_dev
        return fd
    st[why] += 1
    return None


# -- lookups inside a namespace ----------------------------------------------------------------

def _subscription() -> socket.socket:
    s = socket.socket(socket.AF_NETLINK,
                      socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                      NETLINK_ROUTE)
    try:
        s.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
    except BaseException:
        s.close()
        raise
    return s


def _read_links(ipr) -> tuple[dict[str, list[str]], frozenset[str], list[str]]:
    from pyroute2.netlink.exceptions import NetlinkDumpInterrupted

    for attempt in range(3):
        try:
            links = list(ipr.get_links())
            addrs = list(ipr.get_addr())
            break
        except NetlinkDumpInterrupted:
            if attempt == 2:
                raise
    names: dict[int, str] = {}
    loopback: set[int] = set()
    up: set[str] = set()
    interfaces: dict[str, list[str]] = {}
    for msg in sorted(links, key=lambda m: m["index"]):
        name = msg.get("IFLA_IFNAME")
        if not name:
            continue
        names[msg["index"]] = name
        interfaces[name] = []
        if msg["flags"] & IFF_UP:
            up.add(name)
        if msg["flags"] & IFF_LOOPBACK:
            loopback.add(msg["index"])
    pod: list[tuple[int, bool, int, int, str]] = []
    for i, msg in enumerate(addrs):
        idx = msg["index"]
        name = names.get(idx)
        addr = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
        if name is None or not addr:
            continue
        interfaces[name].append(addr)
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            continue
        if idx in loopback or ip.is_loopback or ip.is_link_local:
            continue
        pod.append((ip.version, name != "eth0", idx, i, addr))
    return interfaces, frozenset(up), [p[-1] for p in sorted(pod)]


def _lookup(fd: int, home: int, subscribe: bool,
            ) -> tuple[dict[str, list[str]], frozenset[str], list[str], socket.socket | None]:
    """Interfaces and addresses of the namespace ``fd``; with ``subscribe``, also a netlink
    socket in it that becomes readable when a link or an address changes (opened before the
    dump, so no change falls between the two)."""
    from pyroute2 import IPRoute

    sub = None
    with _entered(fd, home):
        try:
            if subscribe:
                sub = _subscription()
            ipr = IPRoute()  # its netlink socket is created here, in the namespace
        except BaseException:
            if sub is not None:
                sub.close()
            raise
    try:
        with ipr:
            return (*_read_links(ipr), sub)
    except BaseException:
        if sub is not None:
            sub.close()
        raise


class _Home:
    """The calling thread's own namespace, to come back to; opened on first use (a scan with
    nothing to look up does not need it)."""

    def __init__(self) -> None:
        self._fd = -1

    def fd(self) -> int:
        if self._fd < 0:
            try:
                self._fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise WirespanError(f"cannot open this thread's network namespace "
                                    f"(/proc/thread-self/ns/net): {e.strerror}",
                                    "the agent needs /proc mounted (Linux >= 3.17)") from None
        return self._fd

    def __enter__(self) -> _Home:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _build(c: _Candidate, proc: str, home: _Home, st: Counter, subscribe: bool = False,
           ) -> tuple[PodNetns | None, socket.socket | None]:
    fd = _open_candidate(c, proc, st)
    if fd is None:
        return None, None
    try:
        st["lookups"] += 1
        interfaces, up, addresses, sub = _lookup(fd, home.fd(), subscribe)
    except PermissionError:
        st["permission_denied"] += 1
        return None, None
    except OSError as e:
        st["vanished" if e.errno in (errno.ENOENT, errno.ESRCH, errno.EINVAL)
           else "lookup_errors"] += 1
        return None, None
    except StuckInNamespace:
        raise
    except Exception as e:  # pyroute2 decode or netlink errors: count, never stop the agent
        log.debug("lookup in %s failed: %r", c.path, e)
        st["lookup_errors"] += 1
        return None, None
    finally:
        os.close(fd)
    pod = PodNetns(c.inode, c.dev, c.path, c.name, c.named, tuple(c.pids), interfaces, up,
                   addresses)
    return pod, sub


def scan(netns_dirs: Iterable[str] = DEFAULT_NETNS_DIRS, proc: str = "/proc",
         include_host: bool = False, *, stats: dict[str, int] | None = None,
         ) -> dict[int, PodNetns]:
    """Every network namespace on the node, by inode, with interfaces and addresses.

    Whatever cannot be read (a process that exits, a namespace deleted between listing and
    opening, no permission) is skipped and counted in ``stats`` (added to, if given)."""
    st: Counter = Counter()
    out: dict[int, PodNetns] = {}
    t0 = time.perf_counter()
    cands, unmounted = _enumerate(netns_dirs, proc, include_host, st)
    st["not_mounted"] += len(unmounted)
    with _Home() as home:
        for c in sorted(cands.values(), key=_Candidate.sort_key):
            pod, _ = _build(c, proc, home, st)
            if pod is not None:
                out[pod.inode] = pod
    if stats is not None:
        for k, v in st.items():
            stats[k] = stats.get(k, 0) + v
        stats["last_scan_ms"] = round((time.perf_counter() - t0) * 1000)
    return out


# -- the watcher -------------------------------------------------------------------------------

class Discovery:
    """Namespaces as events. ``poll(timeout)`` returns the events since the last call (waiting
    up to ``timeout`` seconds for the first); the first call reports everything present as
    ``added``. Call it when ``fileno()`` is readable -- it also becomes readable when a
    rescan is due -- or at least every ``rescan_interval_s``.

    At most ``max_pods`` namespaces are reported (``None``: no limit); the others are skipped
    until a reported one goes away (named ones first, then by pid), counted in
    ``stats["skipped_max_pods"]`` and logged once. With ``watch_links`` every reported
    namespace holds a netlink socket subscribed to link and address changes (one fd each);
    without it changes are found by the rescans.
    """

    def __init__(self, netns_dirs: Iterable[str] = DEFAULT_NETNS_DIRS, proc: str = "/proc",
                 include_host: bool = False, rescan_interval_s: float = 5.0,
                 max_pods: int | None = 512, *, watch_links: bool = True) -> None:
        self.netns_dirs = tuple(netns_dirs)
        self.proc = proc
        self.include_host = include_host
        self.rescan_interval_s = max(0.05, float(rescan_interval_s))
        self.max_pods = max_pods
        self.watch_links = watch_links
        self._st: Counter = Counter()
        self._known: dict[int, PodNetns] = {}
        self._cands: dict[int, _Candidate] = {}
        self._subs: dict[int, socket.socket] = {}  # inode -> netlink subscription
        self._sub_fds: dict[int, int] = {}  # fd -> inode
        self._dirty: dict[int, float] = {}  # inode -> when to look again
        self._pending: dict[str, list[float]] = {}  # unmounted file -> [first, next, delay]
        self._given_up: set[str] = set()
        self._skipped: set[int] = set()
        self._limit_logged = False
        self._started = False
        self._enumerate_due = False
        self._next_full = 0.0
        self._closed = False
        self._ep = select.epoll()
        self._ino = -1
        self._tfd = -1
        try:
            try:
                self._ino = _check(_lib().inotify_init1(IN_NONBLOCK | IN_CLOEXEC))
            except OSError as e:
                raise WirespanError(f"cannot watch the netns directories: inotify_init1: "
                                    f"{e.strerror}", "raise fs.inotify.max_user_instances"
                                    if e.errno == errno.EMFILE else None) from None
            self._tfd = _check(_lib().timerfd_create(CLOCK_MONOTONIC,
                                                     TFD_NONBLOCK | TFD_CLOEXEC))
            self._ep.register(self._ino, select.EPOLLIN)
            self._ep.register(self._tfd, select.EPOLLIN)
        except BaseException:
            self.close()
            raise
        self._wd_dirs: dict[int, set[str]] = {}  # wd -> netns dirs it watches
        self._wd_parents: dict[int, set[tuple[str, str]]] = {}  # wd -> (dir, next component)
        self._arm(0.0)  # the initial scan is due at once

    # -- public ---------------------------------------------------------------------------

    def fileno(self) -> int:
        return self._ep.fileno()

    @property
    def pods(self) -> dict[int, PodNetns]:
        """The namespaces reported so far (added and not removed), by inode."""
        return dict(self._known)

    @property
    def stats(self) -> dict[str, int]:
        out = dict(self._st)
        out.update(pods=len(self._known), skipped_max_pods=len(self._skipped),
                   not_mounted=len(self._pending) + len(self._given_up),
                   watched_dirs=sum(len(v) for v in self._wd_dirs.values()),
                   link_subscriptions=len(self._subs))
        return out

    def poll(self, timeout: float = 0.0) -> list[Event]:
        if self._closed:
            raise ValueError("poll() on a closed Discovery")
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            events = self._work()
            now = time.monotonic()
            if events or now >= deadline:
                return events
            wait = max(0.0, min(deadline, self._next_due()) - now)
            try:
                self._ep.poll(wait)
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for s in self._subs.values():
            s.close()
        self._subs.clear()
        self._sub_fds.clear()
        for fd in (self._ino, self._tfd):
            if fd >= 0:
                os.close(fd)
        self._ino = self._tfd = -1
        self._ep.close()

    def __enter__(self) -> Discovery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- scheduling -----------------------------------------------------------------------

    def _next_due(self) -> float:
        due = self._next_full
        if self._enumerate_due:
            return 0.0
        for first_next_delay in self._pending.values():
            due = min(due, first_next_delay[1])
        for t in self._dirty.values():
            due = min(due, t)
        return due

    def _arm(self, at: float) -> None:
        """The timerfd fires at monotonic time ``at`` (now if it is past)."""
        delta = max(at - time.monotonic(), 0.0)
        ns = max(int(delta * 1e9), 1)  # 0 would disarm
        spec = _Itimerspec()
        spec.it_value.tv_sec, spec.it_value.tv_nsec = divmod(ns, 1_000_000_000)
        _check(_lib().timerfd_settime(self._tfd, 0, ctypes.byref(spec), None))

    # -- the work of one poll -------------------------------------------------------------

    def _work(self) -> list[Event]:
        for fd, _ in self._ep.poll(0):
            if fd == self._ino:
                self._read_inotify()
            elif fd == self._tfd:
                try:
                    os.read(self._tfd, 8)
                except BlockingIOError:
                    pass
            elif fd in self._sub_fds:
                self._drain_subscription(fd)
        now = time.monotonic()
        self._check_pending(now)
        events: list[Event] = []
        if not self._started or now >= self._next_full:
            self._started = True
            self._st["full_scans"] += 1
            self._setup_watches()  # a dir that appeared, a watch that was lost
            events = self._rescan(full=True)
            self._next_full = time.monotonic() + self.rescan_interval_s
        elif self._enumerate_due:
            self._st["quick_scans"] += 1
            events = self._rescan(full=False)
        elif any(t <= now for t in self._dirty.values()):
            events = self._relookup(now)
        self._arm(self._next_due())
        return events

    def _rescan(self, full: bool) -> list[Event]:
        self._enumerate_due = False
        t0 = time.perf_counter()
        cands, unmounted = _enumerate(self.netns_dirs, self.proc, self.include_host,
                                      self._st, verified=set(self._known))
        self._cands = cands
        now = time.monotonic()
        for path in unmounted:
            if path not in self._pending and path not in self._given_up:
                self._pending[path] = [now, now + _PENDING_FIRST_S, _PENDING_FIRST_S]
        unm = set(unmounted)
        for path in list(self._pending):
            if path not in unm:
                del self._pending[path]
        self._given_up &= unm

        events: list[Event] = []
        for ino in [i for i in self._known if i not in cands]:
            pod = self._known.pop(ino)
            self._forget(ino)
            events.append(Event("removed", pod))
        for ino in [i for i in self._dirty if i not in self._known]:
            del self._dirty[ino]
        with _Home() as home:
            # known ones: follow a new name (named <-> unnamed, another pid)
            for ino, pod in list(self._known.items()):
                c = cands[ino]
                if not c.named and not pod.named and pod.pids and pod.pids[0] in c.pids:
                    # still known by the same pid: keep its label stable
                    c.path, c.name = pod.path, pod.name
                    c.pids.remove(pod.pids[0])
                    c.pids.insert(0, pod.pids[0])
                pod.pids = tuple(c.pids)
                if (c.name, c.path, c.named) != (pod.name, pod.path, pod.named):
                    renamed = c.name != pod.name
                    pod.name, pod.path, pod.named = c.name, c.path, c.named
                    if renamed:
                        events.append(Event("changed", pod))
            again = [i for i in self._known
                     if (full and (not self.watch_links or i not in self._subs))
                     or i in self._dirty]
            for ino in again:
                self._dirty.pop(ino, None)
                ev = self._refresh(ino, home)
                if ev is not None:
                    events.append(ev)
            events.extend(self._add_new(cands, home))
        self._st["last_scan_ms"] = round((time.perf_counter() - t0) * 1000)
        self._count(events)
        return events

    def _add_new(self, cands: dict[int, _Candidate], home: _Home) -> list[Event]:
        new = sorted((c for i, c in cands.items() if i not in self._known),
                     key=_Candidate.sort_key)
        events = []
        skipped: set[int] = set()
        for c in new:
            if self.max_pods is not None and len(self._known) >= self.max_pods:
                skipped.add(c.inode)
                continue
            pod, sub = _build(c, self.proc, home, self._st, self.watch_links)
            if pod is None:
                continue
            self._known[pod.inode] = pod
            if sub is not None:
                self._subs[pod.inode] = sub
                self._sub_fds[sub.fileno()] = pod.inode
                self._ep.register(sub.fileno(), select.EPOLLIN)
            elif self.watch_links:
                self._st["link_subscription_errors"] += 1
            events.append(Event("added", pod))
        if skipped - self._skipped:
            self._st["skipped_max_pods_total"] += len(skipped - self._skipped)
            if not self._limit_logged:
                self._limit_logged = True
                log.warning("more network namespaces than max_pods=%d: %d not captured "
                            "(raise limits.max_pods to capture them)", self.max_pods,
                            len(skipped))
        self._skipped = skipped
        return events

    def _refresh(self, ino: int, home: _Home) -> Event | None:
        """Look at a known namespace again; ("changed", pod) if it is not as it was."""
        pod = self._known[ino]
        c = self._cands.get(ino) or _Candidate(ino, pod.dev, pod.path, pod.name, pod.named,
                                               list(pod.pids))
        fresh, sub = _build(c, self.proc, home, self._st, False)
        if sub is not None:  # pragma: no cover - not asked for
            sub.close()
        if fresh is None:
            return None  # gone or unreadable: the next enumeration decides
        same = fresh._state() == pod._state()
        pod.name, pod.path, pod.pids = fresh.name, fresh.path, fresh.pids
        pod.interfaces, pod.up, pod.addresses = fresh.interfaces, fresh.up, fresh.addresses
        return None if same else Event("changed", pod)

    def _relookup(self, now: float) -> list[Event]:
        due = [i for i, t in self._dirty.items() if t <= now]
        events = []
        with _Home() as home:
            for ino in due:
                del self._dirty[ino]
                if ino in self._known:
                    ev = self._refresh(ino, home)
                    if ev is not None:
                        events.append(ev)
        self._count(events)
        return events

    def _count(self, events: list[Event]) -> None:
        for e in events:
            self._st[f"events_{e.kind}"] += 1

    def _forget(self, ino: int) -> None:
        self._dirty.pop(ino, None)
        sub = self._subs.pop(ino, None)
        if sub is not None:
            fd = sub.fileno()
            self._sub_fds.pop(fd, None)
            try:
                self._ep.unregister(fd)
            except OSError:  # pragma: no cover
                pass
            sub.close()

    def _drain_subscription(self, fd: int) -> None:
        ino = self._sub_fds[fd]
        sub = self._subs[ino]
        while True:
            try:
                if not sub.recv(65536):
                    break
                self._st["netlink_notifications"] += 1
            except BlockingIOError:
                break
            except OSError as e:  # ENOBUFS: notifications were lost; look again anyway
                self._st["netlink_overflows" if e.errno == errno.ENOBUFS
                         else "netlink_errors"] += 1
                break
        self._dirty.setdefault(ino, time.monotonic() + _DEBOUNCE_S)

    # -- pending netns files (created, not mounted yet) -----------------------------------

    def _check_pending(self, now: float) -> None:
        nsfs = _nsfs_dev()
        for path, rec in list(self._pending.items()):
            first, nxt, delay = rec
            if now < nxt:
                continue
            try:
                s = os.stat(path)
            except OSError:
                del self._pending[path]
                continue
            if nsfs is None or s.st_dev == nsfs:
                del self._pending[path]
                self._enumerate_due = True
            elif now - first > _PENDING_GIVE_UP_S:
                del self._pending[path]
                self._given_up.add(path)
            else:
                delay = min(delay * 2, _PENDING_MAX_S)
                rec[1], rec[2] = now + delay, delay

    # -- inotify --------------------------------------------------------------------------

    def _setup_watches(self) -> None:
        """Watch every netns dir that exists, and for one that does not, its nearest existing
        parent (for the component that leads to it). Idempotent; drops watches no longer
        needed (a parent once its child exists)."""
        lib = _lib()
        want_dirs: dict[int, set[str]] = {}
        want_parents: dict[int, set[tuple[str, str]]] = {}
        for d in self.netns_dirs:
            path = os.path.abspath(d)
            child = ""
            while True:
                wd = lib.inotify_add_watch(self._ino, os.fsencode(path), _WATCH_MASK)
                if wd >= 0:
                    if child:
                        want_parents.setdefault(wd, set()).add((d, child))
                    else:
                        want_dirs.setdefault(wd, set()).add(d)
                    break
                err = ctypes.get_errno()
                if err not in (errno.ENOENT, errno.ENOTDIR) or path == "/":
                    self._st["watch_errors"] += 1
                    break
                path, child = os.path.dirname(path), os.path.basename(path)
        new_dirs = {wd for wd in want_dirs if wd not in self._wd_dirs}
        for wd in (set(self._wd_dirs) | set(self._wd_parents)) - set(want_dirs) - set(
                want_parents):
            lib.inotify_rm_watch(self._ino, wd)
        self._wd_dirs, self._wd_parents = want_dirs, want_parents
        if new_dirs and self._started:
            self._enumerate_due = True  # files made before the watch was in place

    def _read_inotify(self) -> None:
        try:
            buf = os.read(self._ino, 65536)
        except BlockingIOError:
            return
        off, resetup = 0, False
        while off + _IN_EVENT.size <= len(buf):
            wd, mask, _cookie, n = _IN_EVENT.unpack_from(buf, off)
            name = buf[off + _IN_EVENT.size:off + _IN_EVENT.size + n].rstrip(b"\0").decode(
                errors="surrogateescape")
            off += _IN_EVENT.size + n
            self._st["inotify_events"] += 1
            if mask & IN_Q_OVERFLOW:
                self._st["inotify_overflows"] += 1
                self._enumerate_due = True
                resetup = True
                continue
            if mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
                if wd not in self._wd_dirs and wd not in self._wd_parents:
                    continue  # a watch we removed ourselves
                resetup = True  # the dir went away: watch its parent
                self._enumerate_due = True
                continue
            if wd in self._wd_dirs:
                self._enumerate_due = True
            elif any(child == name for _, child in self._wd_parents.get(wd, ())):
                resetup = True
        if resetup:
            self._setup_watches()
