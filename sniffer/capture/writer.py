"""Save records as pcapng (``wirespan capture -w FILE``): one Interface Description Block per
capture point, with ``if_name`` (and the namespace as ``if_description``) and nanosecond
timestamps (``if_tsresol`` = 9), then one Enhanced Packet Block per packet. What it writes
reads back with ``wirespan replay``, tcpdump, tshark.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from ..errors import WirespanError
from .model import CapturePoint

Record = tuple[int, CapturePoint, bytes, int]

_SHB = 0x0A0D0D0A
_IDB = 0x00000001
_EPB = 0x00000006
_BOM = 0x1A2B3C4D
_IF_NAME, _IF_DESCRIPTION, _IF_TSRESOL = 2, 3, 9


def _option(code: int, value: bytes) -> bytes:
    pad = -len(value) % 4
    return struct.pack("=HH", code, len(value)) + value + b"\0" * pad


def _block(btype: int, body: bytes) -> bytes:
    n = 12 + len(body)
    return struct.pack("=II", btype, n) + body + struct.pack("=I", n)


class PcapngWriter:
    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.f: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed by close()
        except OSError as e:
            raise WirespanError(f"{path}: cannot write the capture: {e.strerror}",
                                "choose a writable path for -w") from None
        self.f.write(_block(_SHB, struct.pack("=IHHq", _BOM, 1, 0, -1)))
        self._ids: dict[int, int] = {}  # id(capture point) -> interface id
        self._points: list[CapturePoint] = []  # kept alive so the ids stay unique
        self.packets = 0

    def _interface(self, point: CapturePoint) -> int:
        opts = _option(_IF_NAME, point.interface.encode())
        if point.namespace:
            opts += _option(_IF_DESCRIPTION, f"netns {point.namespace}".encode())
        opts += _option(_IF_TSRESOL, b"\x09") + _option(0, b"")
        self.f.write(_block(_IDB, struct.pack("=HHI", point.linktype, 0, point.snaplen)
                            + opts))
        i = self._ids[id(point)] = len(self._points)
        self._points.append(point)
        return i

    def write(self, ts: int, point: CapturePoint, frame: bytes, wirelen: int) -> None:
        i = self._ids.get(id(point))
        if i is None:
            i = self._interface(point)
        n = len(frame)
        self.f.write(_block(_EPB, struct.pack("=IIIII", i, ts >> 32, ts & 0xFFFFFFFF, n,
                                              wirelen) + frame + b"\0" * (-n % 4)))
        self.packets += 1

    def tee(self, records: Iterable[Record]) -> Iterator[Record]:
        """Write every record on its way through."""
        write = self.write
        for r in records:
            write(*r)
            yield r

    def close(self) -> None:
        self.f.close()
