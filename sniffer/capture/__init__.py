"""Capture sources: the only place that reads files or sockets.

``open_capture(path)`` sniffs the format from the first bytes (pcap, pcapng, either one
gzip-compressed; ``-`` is standard input) and returns a reader whose iteration yields
``(ts_ns, capture_point, frame, wire_len)``. ``merge`` interleaves several readers by
timestamp, lazily, so several files (one per interface or per pod) replay as one capture.
"""

from __future__ import annotations

import heapq
import io
import os
import sys
import zlib
from collections.abc import Iterable, Iterator
from operator import itemgetter
from typing import BinaryIO

from ..errors import CaptureFormatError, WirespanError
from ..stats import Stats
from ._gzip import GzipStream
from .model import CapturePoint, linktype_name
from .pcap import PcapReader, Record, is_pcap_magic
from .pcapng import PcapngReader, is_pcapng_magic

__all__ = ["Capture", "CapturePoint", "Record", "linktype_name", "merge", "open_capture"]


class Capture:
    """One opened capture file: its reader, capture points, and progress in raw bytes."""

    def __init__(self, path: str, raw: BinaryIO, reader: PcapReader | PcapngReader,
                 size: int, compressed: bool) -> None:
        self.path = path
        self._raw = raw
        self.reader = reader
        self.size = size
        self.compressed = compressed

    @property
    def points(self) -> list[CapturePoint]:
        return self.reader.points

    def position(self) -> int:
        try:
            return self._raw.tell()
        except (OSError, ValueError):
            return 0

    def __iter__(self) -> Iterator[Record]:
        return iter(self.reader)

    def close(self) -> None:
        self._raw.close()


def _describe_magic(head: bytes) -> str:
    if not head:
        return "it is empty"
    shown = head[:8].hex(" ")
    if head[:1] in (b"{", b"[", b"<") or head[:4].isascii() and head[:4].isalnum():
        return f"it starts with {head[:16]!r}, which looks like text"
    return f"it starts with bytes {shown}"


def open_capture(path: str, stats: Stats) -> Capture:
    """Open a pcap/pcapng (optionally .gz) file; raise ``WirespanError`` with a fix otherwise."""
    label = "stdin" if path == "-" else os.path.basename(path)
    try:
        if path == "-":
            raw: BinaryIO = sys.stdin.buffer
            size = 0
        else:
            raw = open(path, "rb")  # noqa: SIM115 - closed by Capture.close
            size = os.fstat(raw.fileno()).st_size
    except FileNotFoundError:
        raise WirespanError(f"{path}: no such file", "check the path") from None
    except IsADirectoryError:
        raise WirespanError(f"{path}: is a directory", "pass capture files, e.g. dir/*.pcap") from None
    except PermissionError:
        raise WirespanError(f"{path}: permission denied", "run with access to the file") from None
    except OSError as e:
        raise WirespanError(f"{path}: cannot open: {e.strerror}") from None

    stream: BinaryIO = raw
    if path == "-":
        stream = io.BufferedReader(raw)  # type: ignore[arg-type]
    head = stream.peek(4)[:4] if hasattr(stream, "peek") else b""
    compressed = head[:2] == b"\x1f\x8b"
    if compressed:
        stream = GzipStream(stream)  # type: ignore[assignment]
    try:
        head = stream.peek(16)[:16]  # type: ignore[attr-defined]
        if is_pcap_magic(head):
            reader: PcapReader | PcapngReader = PcapReader(stream, label, stats)
        elif is_pcapng_magic(head):
            reader = PcapngReader(stream, label, stats)
        else:
            raise CaptureFormatError(
                f"{path}: not a pcap or pcapng capture ({_describe_magic(head)})",
                "wirespan reads pcap and pcapng files, optionally gzip-compressed; "
                "write one with `tcpdump -w FILE`",
            )
    except (OSError, EOFError, zlib.error) as e:
        raw.close()
        raise WirespanError(f"{path}: cannot read: {e}", "the file is damaged") from None
    except WirespanError:
        raw.close()
        raise
    return Capture(path, raw, reader, size, compressed)


def merge(captures: Iterable[Capture], stats: Stats) -> Iterator[Record]:
    """All records of all captures, in timestamp order across files (stable within one)."""
    its = [iter(c) for c in captures]
    if len(its) == 1:
        return its[0]
    return heapq.merge(*its, key=itemgetter(0))
