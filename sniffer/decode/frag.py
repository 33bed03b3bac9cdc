"""IPv4 and IPv6 fragment reassembly, bounded.

Fragments are held per datagram key ``(version, src, dst, id, proto)`` until the datagram is
complete (the last fragment seen and no holes), then the reassembled L4 bytes are returned.
Overlapping fragments: the first copy of a byte wins (the policy of most end hosts since
RFC 5722 made overlaps illegal for IPv6; we keep, not drop, to see as much as we can).

Bounds: at most ``max_datagrams`` in flight (the oldest is dropped, counted
``frag_evicted``), at most 65,535 bytes each (larger is ``frag_oversize``), and a datagram
older than ``timeout_ns`` of capture time is dropped (``frag_timeout``), as a host would.
"""

from __future__ import annotations

from ..stats import Stats

FragKey = tuple[int, bytes, bytes, int, int]


class _Datagram:
    __slots__ = ("parts", "total", "first_ts")

    def __init__(self, ts: int) -> None:
        self.parts: list[tuple[int, bytes]] = []
        self.total = -1  # known once the last fragment (MF=0) arrives
        self.first_ts = ts


class FragmentReassembler:
    def __init__(self, stats: Stats, max_datagrams: int = 1024,
                 timeout_ns: int = 30_000_000_000) -> None:
        self.stats = stats
        self.max_datagrams = max_datagrams
        self.timeout_ns = timeout_ns
        self._pending: dict[FragKey, _Datagram] = {}

    def add(self, key: FragKey, offset: int, more: bool, data: bytes, ts: int) -> bytes | None:
        """Add one fragment; return the whole L4 payload when the datagram completes."""
        stats = self.stats
        stats.add("decode", "ip_fragments")
        pending = self._pending
        dg = pending.get(key)
        if dg is None:
            if len(pending) >= self.max_datagrams:
                self._expire(ts)
                if len(pending) >= self.max_datagrams:
                    del pending[next(iter(pending))]
                    stats.add("decode", "frag_evicted")
            dg = pending[key] = _Datagram(ts)
        end = offset + len(data)
        if end > 65535:
            stats.add("decode", "frag_oversize")
            del pending[key]
            return None
        if not more:
            dg.total = end
        if len(dg.parts) >= 4096:  # a flood of tiny or duplicate fragments
            stats.add("decode", "frag_oversize")
            del pending[key]
            return None
        dg.parts.append((offset, data))
        if dg.total < 0:
            return None
        have = 0
        for off, part in sorted(dg.parts, key=lambda p: p[0]):
            if off > have:
                return None  # a hole remains
            have = max(have, off + len(part))
        if have < dg.total:
            return None
        out = bytearray(max(have, dg.total))
        # Later arrivals are written first so the first copy of each byte wins on overlap.
        for off, part in reversed(dg.parts):
            out[off : off + len(part)] = part
        del out[dg.total :]
        del pending[key]
        stats.add("decode", "ip_datagrams_reassembled")
        return bytes(out)

    def _expire(self, now: int) -> None:
        limit = now - self.timeout_ns
        stale = [k for k, d in self._pending.items() if d.first_ts < limit]
        for k in stale:
            del self._pending[k]
        if stale:
            self.stats.add("decode", "frag_timeout", len(stale))

    def close(self) -> None:
        if self._pending:
            self.stats.add("decode", "frag_incomplete", len(self._pending))
            self._pending.clear()
