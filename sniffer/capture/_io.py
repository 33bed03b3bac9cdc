"""Chunk reads that turn an I/O or decompression failure into a counted end of file."""

from __future__ import annotations

import gzip
import zlib
from typing import BinaryIO

from ..stats import Stats


def read_chunk(f: BinaryIO, n: int, stats: Stats) -> bytes:
    try:
        data = f.read(n)
        if not data and getattr(f, "truncated", False):
            f.truncated = False  # type: ignore[attr-defined]
            stats.add("capture", "truncated_compressed")
        return data
    except EOFError:  # gzip stream cut short
        stats.add("capture", "truncated_compressed")
    except (OSError, gzip.BadGzipFile, zlib.error):
        stats.add("capture", "read_error")
    return b""
