"""Streaming reader for pcapng (https://www.ietf.org/archive/id/draft-ietf-opsawg-pcapng).

Blocks understood: Section Header (byte order per section; interfaces reset at each new
section), Interface Description (link type, snap length, ``if_name``, ``if_tsresol``,
``if_tsoffset``), Enhanced Packet, Simple Packet and the obsolete Packet block. Every other
block type is skipped by its length. Each interface becomes its own ``CapturePoint`` with its
own link type and timestamp resolution.

Bad input: a block whose length is impossible is counted as ``corrupt_block`` and ends the
file; a block cut by the end of the file is counted as ``truncated_record``; a packet naming
an interface that was never described is counted as ``unknown_interface`` and skipped.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

from ..errors import CaptureFormatError
from ..stats import Stats
from ._io import read_chunk
from .model import CapturePoint
from .pcap import CHUNK, MAX_RECORD, Record

SHB = 0x0A0D0D0A
IDB = 1
PB = 2  # obsolete Packet Block
SPB = 3
EPB = 6

OPT_END = 0
IF_NAME = 2
IF_TSRESOL = 9
IF_TSOFFSET = 14


def is_pcapng_magic(head: bytes) -> bool:
    return len(head) >= 4 and head[:4] == b"\x0a\x0d\x0d\x0a"


class _Iface:
    __slots__ = ("point", "mult", "div", "offset_ns")

    def __init__(self, point: CapturePoint, units_per_s: int, offset_s: int) -> None:
        self.point = point
        # ts_ns = ts * mult // div, kept in integers (no floats anywhere near time).
        if 1_000_000_000 % units_per_s == 0:
            self.mult, self.div = 1_000_000_000 // units_per_s, 1
        else:
            self.mult, self.div = 1_000_000_000, units_per_s
        self.offset_ns = offset_s * 1_000_000_000


class PcapngReader:
    def __init__(self, f: BinaryIO, source: str, stats: Stats) -> None:
        self._f = f
        self.source = source
        self.stats = stats
        self.points: list[CapturePoint] = []
        self._ifaces: list[_Iface] = []
        self._order = "<"
        self._section = 0
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"\x0a\x0d\x0d\x0a":
            raise CaptureFormatError(f"{source}: not a pcapng file")
        bom = head[8:12]
        if bom == b"\x4d\x3c\x2b\x1a":
            self._order = "<"
        elif bom == b"\x1a\x2b\x3c\x4d":
            self._order = ">"
        else:
            raise CaptureFormatError(
                f"{source}: pcapng section header has a bad byte-order magic {bom.hex()}",
                "the file is damaged; try `tshark -r` on it to see how much is readable",
            )
        self._pending = head

    def _parse_options(self, body: bytes, off: int) -> dict[int, bytes]:
        opts: dict[int, bytes] = {}
        o = self._order
        while off + 4 <= len(body):
            code, length = struct.unpack_from(o + "HH", body, off)
            if code == OPT_END:
                break
            opts.setdefault(code, body[off + 4 : off + 4 + length])
            off += 4 + ((length + 3) & ~3)
        return opts

    def _add_interface(self, body: bytes) -> None:
        o = self._order
        linktype, _res, snaplen = struct.unpack_from(o + "HHI", body, 0)
        opts = self._parse_options(body, 8)
        idx = len(self._ifaces)
        name = opts.get(IF_NAME, b"").split(b"\0", 1)[0].decode("utf-8", "replace")
        if not name:
            name = f"if{idx}" if not self._section else f"s{self._section}if{idx}"
        units = 1_000_000
        r = opts.get(IF_TSRESOL)
        if r:
            v = r[0]
            units = (2 ** (v & 0x7F)) if v & 0x80 else 10 ** (v & 0x7F)
            if units <= 0 or units > 10**18:
                self.stats.add("capture", "bad_tsresol")
                units = 1_000_000
        offset = 0
        t = opts.get(IF_TSOFFSET)
        if t and len(t) == 8:
            offset = struct.unpack(o + "q", t)[0]
        point = CapturePoint(source=self.source, interface=name, linktype=linktype,
                             snaplen=snaplen)
        self.points.append(point)
        self._ifaces.append(_Iface(point, units, offset))

    def _read(self, n: int) -> bytes:
        return read_chunk(self._f, n, self.stats)

    def __iter__(self) -> Iterator[Record]:
        f = self._f
        stats = self.stats
        buf = self._pending + self._read(CHUNK)
        pos = 0
        end = len(buf)
        while True:
            if end - pos < 12:
                more = self._read(CHUNK)
                if not more:
                    if end - pos:
                        stats.add("capture", "truncated_record")
                    return
                buf = buf[pos:] + more
                pos, end = 0, len(buf)
                continue
            btype = struct.unpack_from(self._order + "I", buf, pos)[0]
            if btype == SHB:
                bom = buf[pos + 8 : pos + 12]
                if bom == b"\x4d\x3c\x2b\x1a":
                    self._order = "<"
                elif bom == b"\x1a\x2b\x3c\x4d":
                    self._order = ">"
                else:
                    stats.add("capture", "corrupt_block")
                    return
            blen = struct.unpack_from(self._order + "I", buf, pos + 4)[0]
            if blen < 12 or blen % 4 or blen > MAX_RECORD:
                stats.add("capture", "corrupt_block")
                return
            if end - pos < blen:
                more = self._read(max(CHUNK, blen))
                if not more:
                    stats.add("capture", "truncated_record")
                    return
                buf = buf[pos:] + more
                pos, end = 0, len(buf)
                continue
            body = buf[pos + 8 : pos + blen - 4]
            pos += blen
            if btype == EPB:
                if len(body) < 20:
                    stats.add("capture", "corrupt_block")
                    continue
                ifid, hi, lo, caplen, wirelen = struct.unpack_from(self._order + "IIIII", body, 0)
                rec = self._packet(ifid, (hi << 32) | lo, body, 20, caplen, wirelen)
                if rec is not None:
                    yield rec
            elif btype == SPB:
                if len(body) < 4 or not self._ifaces:
                    stats.add("capture", "unknown_interface")
                    continue
                wirelen = struct.unpack_from(self._order + "I", body, 0)[0]
                snap = self._ifaces[0].point.snaplen or wirelen
                caplen = min(wirelen, snap, len(body) - 4)
                # An SPB carries no timestamp: it gets the last one seen in this file, and
                # is counted so the summary says some times are approximate.
                stats.add("capture", "simple_packet_no_timestamp")
                rec = self._packet(0, None, body, 4, caplen, wirelen)
                if rec is not None:
                    yield rec
            elif btype == PB:
                if len(body) < 20:
                    stats.add("capture", "corrupt_block")
                    continue
                ifid, _drops, hi, lo, caplen, wirelen = struct.unpack_from(
                    self._order + "HHIIII", body, 0)
                rec = self._packet(ifid, (hi << 32) | lo, body, 20, caplen, wirelen)
                if rec is not None:
                    yield rec
            elif btype == IDB:
                if len(body) < 8:
                    stats.add("capture", "corrupt_block")
                    continue
                self._add_interface(body)
            elif btype == SHB:
                # A new section: interface ids start again from 0.
                self._section += 1
                self._ifaces = []

    _last_ts = 0

    def _packet(self, ifid: int, ts: int | None, body: bytes, off: int, caplen: int,
                wirelen: int) -> Record | None:
        if ifid >= len(self._ifaces):
            self.stats.add("capture", "unknown_interface")
            return None
        if off + caplen > len(body):
            self.stats.add("capture", "corrupt_block")
            return None
        iface = self._ifaces[ifid]
        if ts is None:
            ts_ns = self._last_ts
        else:
            ts_ns = ts * iface.mult // iface.div + iface.offset_ns
            self._last_ts = ts_ns
        return (ts_ns, iface.point, body[off : off + caplen], wirelen)
