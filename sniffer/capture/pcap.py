"""Streaming reader for classic pcap files.

Handles the microsecond (a1b2c3d4) and nanosecond (a1b23c4d) magics in both byte orders,
and the old Kuznetzov "modified" format (a1b2cd34, 24-byte record headers). Records are
parsed out of large reads (``CHUNK``) with precompiled structs; the file is never held in
memory whole. Records are yielded as ``(ts_ns, capture_point, frame_bytes, wire_len)``.

A record that runs past the end of the file is counted as ``truncated_record`` and ends the
file; an impossible record length (``> MAX_RECORD``) is counted as ``corrupt_record`` and
ends the file too (a classic pcap has no sync marker to resume from).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

from ..errors import CaptureFormatError
from ..stats import Stats
from ._io import read_chunk
from .model import CapturePoint

CHUNK = 1 << 20
MAX_RECORD = 1 << 28

_MAGICS = {
    # magic as read little-endian -> (byte order, ns-resolution, record header length)
    0xA1B2C3D4: ("<", False, 16),
    0xD4C3B2A1: (">", False, 16),
    0xA1B23C4D: ("<", True, 16),
    0x4D3CB2A1: (">", True, 16),
    0xA1B2CD34: ("<", False, 24),
    0x34CDB2A1: (">", False, 24),
}

Record = tuple[int, CapturePoint, bytes, int]


def is_pcap_magic(head: bytes) -> bool:
    return len(head) >= 4 and struct.unpack("<I", head[:4])[0] in _MAGICS


class PcapReader:
    """Iterate the records of one classic pcap stream."""

    def __init__(self, f: BinaryIO, source: str, stats: Stats) -> None:
        self._f = f
        self.stats = stats
        hdr = f.read(24)
        if len(hdr) < 24:
            raise CaptureFormatError(
                f"{source}: file ends inside the 24-byte pcap header ({len(hdr)} bytes)",
                "the capture was cut off before any packet; re-capture it",
            )
        order, ns, self._rec_len = _MAGICS[struct.unpack("<I", hdr[:4])[0]]
        major, minor, _tz, _sig, snaplen, linktype = struct.unpack(order + "HHiIII", hdr[4:24])
        if major != 2:
            raise CaptureFormatError(
                f"{source}: pcap version {major}.{minor} is not supported",
                "wirespan reads pcap 2.x and pcapng",
            )
        # The low 16 bits are the link type; the FCS bits above (pcap "LinkType" field) are ignored.
        self.point = CapturePoint(source=source, interface="", linktype=linktype & 0xFFFF,
                                  snaplen=snaplen)
        self.points = [self.point]
        self._order = order
        self._mult = 1 if ns else 1000

    def _read(self, n: int) -> bytes:
        return read_chunk(self._f, n, self.stats)

    def __iter__(self) -> Iterator[Record]:
        f = self._f
        rec = struct.Struct(self._order + "IIII")
        unpack_from = rec.unpack_from
        rec_len = self._rec_len
        mult = self._mult
        point = self.point
        stats = self.stats
        buf = self._read(CHUNK)
        pos = 0
        end = len(buf)
        while True:
            if end - pos < rec_len:
                more = self._read(CHUNK)
                if not more:
                    if end - pos:
                        stats.add("capture", "truncated_record")
                    return
                buf = buf[pos:] + more
                pos = 0
                end = len(buf)
                continue
            sec, frac, caplen, wirelen = unpack_from(buf, pos)
            if caplen > MAX_RECORD:
                stats.add("capture", "corrupt_record")
                return
            start = pos + rec_len
            stop = start + caplen
            if stop > end:
                more = self._read(max(CHUNK, caplen + rec_len))
                if not more:
                    stats.add("capture", "truncated_record")
                    return
                buf = buf[pos:] + more
                pos = 0
                end = len(buf)
                continue
            pos = stop
            yield (sec * 1_000_000_000 + frac * mult, point, buf[start:stop], wirelen)
