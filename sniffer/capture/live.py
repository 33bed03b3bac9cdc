"""Live capture from AF_PACKET sockets with a TPACKET_V3 memory-mapped receive ring.

One ``LiveSocket`` per interface: ``SOCK_RAW`` bound to the interface with ``ETH_P_ALL`` (so
outgoing packets are seen too), a classic BPF filter compiled by libpcap (through ctypes,
no tcpdump at run time) attached with ``SO_ATTACH_FILTER`` before any packet is delivered,
and a ring of blocks the kernel fills and hands over (``TP_STATUS_USER``); we walk each
block's packets with ``struct.unpack_from`` on a memoryview of the mapping and give the block
back (``TP_STATUS_KERNEL``). No syscall per packet: one ``select`` per batch of blocks.

``LiveCapture`` multiplexes several sockets in one thread and yields the same records the
file readers do: ``(ts_ns, capture_point, frame_bytes, wire_len)``.

Kernel layouts (include/uapi/linux/if_packet.h):

* ``tpacket_req3``: block_size, block_nr, frame_size, frame_nr, retire_blk_tov (ms),
  sizeof_priv, feature_req_word -- seven u32.
* ``tpacket_block_desc``: version u32, offset_to_priv u32, then ``tpacket_hdr_v1``:
  block_status u32 (@8), num_pkts u32 (@12), offset_to_first_pkt u32 (@16), blk_len u32,
  seq_num u64, ts_first, ts_last.
* ``tpacket3_hdr``: next_offset, sec, nsec, snaplen, len, status (u32 each), mac u16,
  net u16, rxhash u32, vlan_tci u32, vlan_tpid u16, padding -- 48 bytes; the packet's
  ``sockaddr_ll`` follows at TPACKET_ALIGN(48) = 48: family u16, protocol be16,
  ifindex i32, hatype u16, pkttype u8 (@48+10), halen u8, addr[8].
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import select
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..errors import UsageError, WirespanError
from .model import CapturePoint

Record = tuple[int, CapturePoint, bytes, int]

SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_FANOUT = 18
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_FLAG_UNIQUEID = 0x2000  # (Linux 4.14) the kernel picks an unused group id
PACKET_FANOUT_FLAG_DEFRAG = 0x8000  # reassemble IP fragments before hashing
PACKET_MR_PROMISC = 1
TPACKET_V3 = 2
SO_ATTACH_FILTER = 26
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6
CLONE_NEWNET = 0x40000000

ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
ARPHRD_NONE = 0xFFFE
# What the socket delivers for a device type -> LINKTYPE_*.
LINKTYPE_FOR_ARPHRD = {ARPHRD_ETHER: 1, ARPHRD_LOOPBACK: 1, ARPHRD_NONE: 101}

_BLOCK_HDR = struct.Struct("=III")  # block_status, num_pkts, offset_to_first_pkt (@8)
_PKT_HDR = struct.Struct("=IIIIIIHHII")  # next, sec, nsec, snaplen, len, status, mac, net,
#                                          rxhash, vlan_tci
_PKTTYPE_OFF = 48 + 10
_VLAN_TPID_OFF = 36


@dataclass
class RingConfig:
    block_size: int = 1 << 20  # bytes; a multiple of the page size, larger than snaplen
    block_count: int = 32
    frame_size: int = 2048  # only a unit of the ring's accounting with TPACKET_V3
    timeout_ms: int = 10  # a partly filled block is handed over after this long

    def validate(self, snaplen: int) -> None:
        page = mmap.PAGESIZE
        if self.block_size <= 0 or self.block_size % page:
            raise UsageError(f"ring block size {self.block_size} is not a multiple of the "
                             f"page size ({page})")
        if self.block_size < snaplen + 256:
            raise UsageError(f"ring block size {self.block_size} is smaller than the snap "
                             f"length {snaplen}", "use a larger block or a smaller --snaplen")
        if self.block_count < 2:
            raise UsageError("the ring needs at least 2 blocks")
        if self.timeout_ms < 1:
            raise UsageError("the ring block timeout must be at least 1 ms")


class UnsupportedLinkType(WirespanError):
    """The interface delivers frames we cannot decode (not Ethernet, loopback or raw IP)."""


# -- classic BPF from tcpdump syntax, compiled by libpcap --------------------------------------

class _BpfInsn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint32)]


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_BpfInsn))]


_libpcap: ctypes.CDLL | None = None


def _pcap() -> ctypes.CDLL:
    global _libpcap
    if _libpcap is not None:
        return _libpcap
    names = [n for n in (ctypes.util.find_library("pcap"),) if n]
    names += ["libpcap.so.0.8", "libpcap.so.1", "libpcap.so"]
    lib = None
    for n in names:
        try:
            lib = ctypes.CDLL(n)
            break
        except OSError:
            continue
    if lib is None:
        raise WirespanError("libpcap not found: it compiles the -f filter",
                            "install it (Debian: apt-get install libpcap0.8)")
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.pcap_compile.restype = ctypes.c_int
    lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_BpfProgram), ctypes.c_char_p,
                                 ctypes.c_int, ctypes.c_uint32]
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_geterr.argtypes = [ctypes.c_void_p]
    lib.pcap_freecode.restype = None
    lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
    lib.pcap_close.restype = None
    lib.pcap_close.argtypes = [ctypes.c_void_p]
    _libpcap = lib
    return lib


Insn = tuple[int, int, int, int]  # classic BPF: code, jt, jf, k


def compile_filter(expr: str, linktype: int = 1, snaplen: int = 262144) -> list[Insn]:
    """tcpdump filter syntax -> classic BPF instructions ``(code, jt, jf, k)``."""
    lib = _pcap()
    handle = lib.pcap_open_dead(linktype, snaplen)
    if not handle:
        raise WirespanError("libpcap could not open a handle to compile the filter")
    prog = _BpfProgram()
    try:
        if lib.pcap_compile(handle, ctypes.byref(prog), expr.encode(), 1, 0xFFFFFFFF) != 0:
            err = (lib.pcap_geterr(handle) or b"").decode(errors="replace")
            raise UsageError(f"bad filter {expr!r}: {err}",
                             "use tcpdump filter syntax, e.g. -f 'tcp port 8080'")
        insns = [(prog.bf_insns[i].code, prog.bf_insns[i].jt, prog.bf_insns[i].jf,
                  prog.bf_insns[i].k) for i in range(prog.bf_len)]
        lib.pcap_freecode(ctypes.byref(prog))
    finally:
        lib.pcap_close(handle)
    return insns


def attach_filter(sock: socket.socket, insns: list[Insn]) -> None:
    buf = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *i) for i in insns))
    fprog = struct.pack("HP", len(insns), ctypes.addressof(buf))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


# -- network namespaces ------------------------------------------------------------------------

def _setns(fd: int) -> None:
    from pyroute2 import netns  # (imported only when a namespace is used: ~0.1 s)

    netns.setns(fd, flags=0)


def ns_label(ns: str) -> str:
    """How a namespace is named in capture points and summaries: its name under
    /var/run/netns, ``pid-PID`` for ``/proc/PID/ns/net``, else the file's name."""
    if "/" not in ns:
        return ns
    parts = [p for p in ns.split("/") if p]
    if len(parts) >= 4 and parts[-3] == "ns" and parts[-4].isdigit():
        return f"pid-{parts[-4]}"
    return parts[-1] if parts else ns


def in_netns(name: str, fn: Callable[[], object]) -> object:
    """Run ``fn`` inside the network namespace /var/run/netns/NAME (or a path), then return to
    the original one. Sockets created inside keep capturing there."""
    path = name if "/" in name else f"/var/run/netns/{name}"
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UsageError(f"no network namespace {name!r} ({path} does not exist)",
                         "list them with `ip netns list`") from None
    except PermissionError:
        raise WirespanError(f"cannot open network namespace {path}: permission denied",
                            "run as root") from None
    except OSError as e:
        raise WirespanError(f"cannot open network namespace {path}: {e.strerror}") from None
    orig = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            _setns(target)
        except OSError as e:
            raise WirespanError(f"cannot enter network namespace {name!r}: {e.strerror}",
                                "entering a namespace needs CAP_SYS_ADMIN (run as root)") from None
        try:
            return fn()
        finally:
            _setns(orig)
    finally:
        os.close(target)
        os.close(orig)


# -- one socket ----------------------------------------------------------------------------------

class LiveSocket:
    """An AF_PACKET socket with a TPACKET_V3 ring, bound to one interface."""

    def __init__(self, interface: str, bpf: str = "tcp", *, snaplen: int = 262144,
                 promisc: bool = False, ring: RingConfig | None = None,
                 namespace: str = "", fanout: int | None = None) -> None:
        """``fanout``: join this PACKET_FANOUT group (hash mode, so both directions of a
        flow go to the same member); ``-1`` asks the kernel for a new, unused group id
        (``fanout_id`` says which, for the other members to join; 0 is a valid id)."""
        self.interface = interface
        self.fanout_id = fanout
        self.namespace = namespace
        self.snaplen = snaplen
        self.ring = ring or RingConfig()
        self.ring.validate(snaplen)
        self.kernel_packets = 0  # PACKET_STATISTICS, accumulated (reading resets them)
        self.kernel_drops = 0
        self.kernel_freezes = 0
        self.outgoing_lo_skipped = 0
        self._map: mmap.mmap | None = None
        self._view: memoryview | None = None
        self._block = 0
        if namespace:
            in_netns(namespace, lambda: self._open(bpf, promisc))
        else:
            self._open(bpf, promisc)
        self.point = CapturePoint("live", interface, self.linktype, ns_label(namespace),
                                  snaplen)

    def _open(self, bpf: str, promisc: bool) -> None:
        iface = self.interface
        try:
            self.ifindex = socket.if_nametoindex(iface)
        except OSError:
            where = f" in network namespace {self.namespace!r}" if self.namespace else ""
            raise UsageError(f"no such interface {iface!r}{where}",
                             "list interfaces with `ip link`") from None
        try:
            # Protocol 0: nothing is delivered until the filter and ring are in place.
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError:
            raise WirespanError("live capture needs CAP_NET_RAW: run as root or grant the "
                                "capability (setcap cap_net_raw+ep)") from None
        self.sock = s
        try:
            s.bind((iface, 0))
            hatype = s.getsockname()[3]
            lt = LINKTYPE_FOR_ARPHRD.get(hatype)
            if lt is None:
                raise UnsupportedLinkType(f"{iface}: unsupported link type (ARPHRD {hatype})",
                                    "wirespan captures Ethernet, loopback and raw-IP "
                                    "interfaces")
            self.linktype = lt
            self.loopback = hatype == ARPHRD_LOOPBACK
            insns = compile_filter(bpf, lt, self.snaplen)
            # Nothing may reach the ring before the real filter (and, with fanout, the group)
            # are in place: a filter that drops everything until then.
            attach_filter(s, [(0x06, 0, 0, 0)])  # BPF_RET|BPF_K 0
            s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            r = self.ring
            frames = r.block_size // r.frame_size * r.block_count
            s.setsockopt(SOL_PACKET, PACKET_RX_RING, struct.pack(
                "=7I", r.block_size, r.block_count, r.frame_size, frames, r.timeout_ms, 0, 0))
            self._map = mmap.mmap(s.fileno(), r.block_size * r.block_count, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
            self._view = memoryview(self._map)
            if promisc:
                mreq = struct.pack("=iHH8s", self.ifindex, PACKET_MR_PROMISC, 0, b"")
                s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            s.bind((iface, ETH_P_ALL))
            if self.fanout_id is not None:
                self._join_fanout(s)
            attach_filter(s, insns)  # from here on packets arrive
            self.read_stats()  # anything counted before the filter was in place
            self.kernel_packets = self.kernel_drops = self.kernel_freezes = 0
        except OSError as e:
            self.close()
            if e.errno in (errno.EPERM, errno.EACCES):
                raise WirespanError("live capture needs CAP_NET_RAW: run as root or grant "
                                    "the capability (setcap cap_net_raw+ep)") from None
            raise WirespanError(f"{iface}: cannot set up the capture socket: "
                                f"{e.strerror}") from None
        except BaseException:
            self.close()
            raise

    def _join_fanout(self, s: socket.socket) -> None:
        mode = PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG
        if self.fanout_id is not None and self.fanout_id >= 0:
            s.setsockopt(SOL_PACKET, PACKET_FANOUT, struct.pack("=I", self.fanout_id | mode << 16))
            return
        # the first member: a group id nobody else on this interface uses
        s.setsockopt(SOL_PACKET, PACKET_FANOUT,
                     struct.pack("=I", (mode | PACKET_FANOUT_FLAG_UNIQUEID) << 16))
        self.fanout_id = struct.unpack("=I", s.getsockopt(SOL_PACKET, PACKET_FANOUT, 4))[0] \
            & 0xFFFF

    def fileno(self) -> int:
        return self.sock.fileno()

    def read_stats(self) -> None:
        """Add the kernel's counters since the last read (the read resets them)."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
        packets, drops, freezes = struct.unpack("=III", raw)
        self.kernel_packets += packets
        self.kernel_drops += drops
        self.kernel_freezes += freezes

    def drain(self, out: list[Record]) -> int:
        """Append the packets of every block the kernel has handed over; give them back."""
        view = self._view
        if view is None:
            return 0
        bsize = self.ring.block_size
        nblocks = self.ring.block_count
        point = self.point
        lo = self.loopback
        unpack_blk = _BLOCK_HDR.unpack_from
        unpack_pkt = _PKT_HDR.unpack_from
        n = 0
        while True:
            base = self._block * bsize
            status, npkts, off = unpack_blk(view, base + 8)
            if not status & TP_STATUS_USER:
                return n
            p = base + off
            for _ in range(npkts):
                (nxt, sec, nsec, snap, wlen, pstatus, mac, _net, _hash,
                 tci) = unpack_pkt(view, p)
                if lo and view[p + _PKTTYPE_OFF] == PACKET_OUTGOING:
                    self.outgoing_lo_skipped += 1  # the same packet comes back as incoming
                else:
                    frame = bytes(view[p + mac:p + mac + snap])
                    if pstatus & TP_STATUS_VLAN_VALID and point.linktype == 1 and snap >= 12:
                        # the NIC took the 802.1Q tag off: put it back where it was
                        tpid = (struct.unpack_from("=H", view, p + _VLAN_TPID_OFF)[0]
                                if pstatus & TP_STATUS_VLAN_TPID_VALID else 0) or 0x8100
                        frame = frame[:12] + struct.pack("!HH", tpid, tci & 0xFFFF) + frame[12:]
                        wlen += 4
                    out.append((sec * 1_000_000_000 + nsec, point, frame, wlen))
                    n += 1
                p += nxt
            struct.pack_into("=I", view, base + 8, TP_STATUS_KERNEL)
            self._block = (self._block + 1) % nblocks

    def close(self) -> None:
        if self._view is not None:
            self._view.release()
            self._view = None
        if self._map is not None:
            self._map.close()
            self._map = None
        s = getattr(self, "sock", None)
        if s is not None:
            s.close()


def expand_any(interfaces: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``any`` stands for every interface of its namespace, each with its own socket (and
    capture point), so a packet is attributed to the interface it crossed."""
    out: list[tuple[str, str]] = []
    for ns, name in interfaces:
        if name != "any":
            out.append((ns, name))
            continue
        names = in_netns(ns, socket.if_nameindex) if ns else socket.if_nameindex()
        for _, n in sorted(names):  # type: ignore[call-overload]
            if (ns, n) not in out:
                out.append((ns, n))
    seen: set[tuple[str, str]] = set()
    return [x for x in out if not (x in seen or seen.add(x))]  # type: ignore[func-returns-value]


# -- several sockets, one thread -----------------------------------------------------------------

class LiveCapture:
    """Open sockets on ``interfaces`` (``(namespace, name)`` pairs) and yield their records.

    Iteration ends when ``stop()`` is called (e.g. from a signal handler), after
    ``duration`` seconds, or when the consumer stops pulling (``--count``). Before it ends it
    waits one block timeout and drains again, so no packet already in the ring is lost.
    """

    def __init__(self, interfaces: list[tuple[str, str]], bpf: str = "tcp", *,
                 snaplen: int = 262144, promisc: bool = False,
                 ring: RingConfig | None = None, duration: float = 0.0,
                 on_tick: Callable[[LiveCapture], None] | None = None,
                 fanout: dict[tuple[str, str], int] | None = None,
                 on_batch: Callable[[int], None] | None = None,
                 no_fanout: set[tuple[str, str]] | None = None,
                 exclude: set[tuple[str, str]] | None = None) -> None:
        """``fanout``: join each interface's PACKET_FANOUT group, ``{(ns, name): id}``; an
        interface missing from the dict gets a new group, whose id is put in the dict (pass
        the same dict to the other members); those in ``no_fanout`` are opened on their own,
        those in ``exclude`` not at all (another member captures them).
        ``on_batch(watermark_ns)`` is called each time
        every packet the kernel had handed over has been consumed: no packet older than
        ``watermark_ns`` is still to come from these sockets."""
        self.sockets: list[LiveSocket] = []
        self.on_tick = on_tick  # called about once a second (a status line)
        self.on_batch = on_batch
        self.skipped: list[tuple[str, str]] = []
        self.duration = duration
        self._stop = False
        try:
            named = set(interfaces)
            for ns, name in expand_any(interfaces):
                if exclude and (ns, name) in exclude:
                    continue
                try:
                    gid = (None if fanout is None or (ns, name) in (no_fanout or ())
                           else fanout.get((ns, name), -1))
                    sock = LiveSocket(name, bpf, snaplen=snaplen, promisc=promisc, ring=ring,
                                      namespace=ns, fanout=gid)
                    self.sockets.append(sock)
                    if fanout is not None and sock.fanout_id is not None:
                        fanout[(ns, name)] = sock.fanout_id
                except UnsupportedLinkType:
                    if (ns, name) in named:
                        raise
                    self.skipped.append((ns, name))  # `any`: e.g. an ipip tunnel device
        except BaseException:
            self.close()
            raise
        self._stats_at = 0.0

    @property
    def points(self) -> list[CapturePoint]:
        return [s.point for s in self.sockets]

    def stop(self) -> None:
        self._stop = True

    def _drain_all(self, socks: list[LiveSocket]) -> list[Record]:
        batch: list[Record] = []
        for s in socks:
            s.drain(batch)
        if len(socks) > 1:
            batch.sort(key=lambda r: r[0])  # interleave interfaces by kernel time
        return batch

    @property
    def _retire_ns(self) -> int:
        return (max((s.ring.timeout_ms for s in self.sockets), default=10) + 20) * 1_000_000

    def __iter__(self) -> Iterator[Record]:
        socks = self.sockets
        deadline = time.monotonic() + self.duration if self.duration > 0 else None
        timeout = max(0.05, 2 * max((s.ring.timeout_ms for s in socks), default=10) / 1000)
        while not self._stop:
            wait = 0.2
            now = time.monotonic()
            if deadline is not None:
                if now >= deadline:
                    break
                wait = min(wait, deadline - now)
            if now - self._stats_at >= 1.0:
                self._stats_at = now
                for s in socks:
                    s.read_stats()
                if self.on_tick is not None:
                    self.on_tick(self)
            before = time.time_ns()
            try:
                ready, _, _ = select.select(socks, [], [], wait)
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
            if ready:
                yield from self._drain_all(ready)
            if self.on_batch is not None:
                # every block retired before the select has been read: packets older than a
                # block timeout (and a margin for the kernel) are all in
                self.on_batch(before - self._retire_ns)
        # the last partly filled blocks are handed over at most one block timeout from now
        time.sleep(timeout)
        yield from self._drain_all(socks)
        for s in socks:
            s.read_stats()

    @property
    def drops(self) -> int:
        return sum(s.kernel_drops for s in self.sockets)

    def kernel_stats(self) -> dict[str, dict[str, int]]:
        out = {}
        for s in self.sockets:
            try:
                s.read_stats()
            except OSError:
                pass
            out[s.point.name] = {"packets": s.kernel_packets, "drops": s.kernel_drops,
                                 "freeze_queue": s.kernel_freezes}
            if s.loopback:  # counted by the kernel, skipped here: they come back as incoming
                out[s.point.name]["loopback_outgoing_skipped"] = s.outgoing_lo_skipped
        return out

    def close(self) -> None:
        for s in self.sockets:
            s.close()
