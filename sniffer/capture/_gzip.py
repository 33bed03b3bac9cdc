"""A streaming gzip reader that keeps everything decompressed before a truncation.

``gzip.GzipFile.read`` raises ``EOFError`` for a stream cut short and drops the bytes it had
decompressed in that call; a capture still being written or copied half-way is common, so
this reader returns those bytes and then reports the truncation (``truncated`` is set).
Concatenated gzip members are read one after another, as ``gunzip`` does.
"""

from __future__ import annotations

import zlib
from typing import BinaryIO

RAW_CHUNK = 1 << 16


class GzipStream:
    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._z = zlib.decompressobj(31)
        self._buf = bytearray()
        self._eof = False
        self.truncated = False

    def _fill(self, want: int) -> None:
        while len(self._buf) < want and not self._eof:
            data = self._raw.read(RAW_CHUNK)
            if not data:
                self._eof = True
                if not self._z.eof and (self._z.unconsumed_tail or self._started):
                    self.truncated = True
                break
            self._started = True
            while data:
                try:
                    self._buf += self._z.decompress(data)
                except zlib.error:
                    self.truncated = True
                    self._eof = True
                    return
                if self._z.eof:  # next member, if any
                    data = self._z.unused_data
                    self._z = zlib.decompressobj(31)
                    self._started = bool(data)
                else:
                    data = b""

    _started = False

    def peek(self, n: int = 1) -> bytes:
        self._fill(n)
        return bytes(self._buf[:n])

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = 1 << 62
        self._fill(n)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def tell(self) -> int:
        return self._raw.tell()

    def close(self) -> None:
        self._raw.close()
