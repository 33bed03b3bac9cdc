"""TCP flow table and per-direction reassembly.

Rules of this module
--------------------
* A connection is identified by its 4-tuple *and* its capture point: the same connection seen
  on two interfaces (both ends of a veth pair, a pod's ``eth0`` and the node's bridge) is two
  observations, never merged.
* Sequence numbers are mapped to a 64-bit offset from the direction's first byte (ISN + 1, or
  the first sequence number seen on a mid-stream join), unwrapped against the next expected
  offset, so 2^32 wraparound is invisible above this line (Zeek's relative sequence space).
* Overlap policy: **first copy wins**. Bytes already delivered are never re-delivered or
  replaced; a retransmission that carries different bytes for an already-delivered range is
  counted (``retransmitted_bytes``) and its bytes dropped. Among buffered out-of-order
  segments the one that arrived first keeps its bytes too. This is what most receivers do and
  it makes the output independent of later duplicates.
* A hole in the stream becomes a gap (``StreamConsumer.gap``), after which the consumer
  resynchronises, when any of these holds: the bytes buffered behind the hole exceed
  ``max_buffer_per_direction``; the hole is older than ``hole_timeout_ns`` of capture time;
  the peer has acknowledged bytes beyond the hole for at least ``ack_grace_ns`` (the receiver
  got them, so the capture lost them and no retransmission will come); the total buffered
  bytes of all flows exceed ``max_buffer_total``; or the connection closes.
* Roles: the sender of a SYN is the client, of a SYN-ACK the server. On a mid-stream join
  they are inferred from the ports, then corrected once from the first payload bytes (a request
  line, an HTTP/2 preface or a TLS ClientHello is sent by the client).
* Outbound REDIRECT on ``lo``: the two directions of one connection carry different address
  pairs (``podIP:eph -> 127.0.0.1:4140`` and ``dialledIP:port -> podIP:eph``). A new address
  pair whose packets acknowledge exactly the bytes of a connection whose other direction was
  never seen, and which shares that connection's app endpoint, is paired with it as its
  missing direction, and the address it claims (the one the app dialled) is kept as
  ``Connection.dialled``.
* Bounds: at most ``max_flows`` open connections (beyond, the least recently active eighth is
  evicted, counted ``evicted_cap``); idle connections are closed after ``idle_timeout_ns``;
  closed ones linger ``linger_ns`` so that their last ACKs do not open new flows.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from operator import itemgetter
from typing import Protocol

from ..decode import ACK, FIN, RST, SYN, Segment, tcp_options
from ..stats import Stats

MASK = 0xFFFFFFFF
HALF = 0x80000000
_first = itemgetter(0)

# Ports that say "I am the server" when a capture joins a connection mid-stream.
SERVER_PORTS = frozenset((
    21, 22, 25, 53, 80, 110, 143, 443, 993, 995, 1080, 3000, 3128, 4140, 4143, 4191, 5000,
    5432, 6379, 8000, 8008, 8080, 8081, 8082, 8443, 8888, 9000, 9090, 9901, 15001, 15006,
    50051,
))

_REQUEST_STARTS = (
    b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ",
    b"TRACE ", b"PRI * HTTP/2.0",
)


# (capture point, src address + dst address, sport << 16 | dport): the shape the engine's fast
# path can build from one struct unpack of the packet.
FlowKey = tuple[object, bytes, int]


def flow_key(point: object, src: bytes, sport: int, dst: bytes, dport: int) -> FlowKey:
    return (point, src + dst, sport << 16 | dport)


class StreamConsumer(Protocol):
    """Zeek's three analyzer hooks, per direction of one connection."""

    def data(self, chunk: bytes, ts_ns: int) -> None: ...
    def gap(self, length: int, ts_ns: int) -> None: ...
    def end(self, reason: str, ts_ns: int) -> None: ...


class ConsumerFactory(Protocol):
    def __call__(self, conn: Connection) -> tuple[StreamConsumer, StreamConsumer]: ...


@dataclass(frozen=True, slots=True)
class TcpConfig:
    max_flows: int = 100_000
    max_buffer_per_direction: int = 1 << 20
    max_buffer_total: int = 64 << 20
    hole_timeout_ns: int = 2_000_000_000
    ack_grace_ns: int = 1_000_000
    idle_timeout_ns: int = 300_000_000_000
    linger_ns: int = 10_000_000_000
    sweep_interval_ns: int = 1_000_000_000
    max_seq_jump: int = 1 << 28  # a segment this far ahead of the stream is not believed
    max_tombstones: int = 65536  # forgotten connections whose stragglers are still recognised


def payload_role_hint(chunk: bytes) -> int:
    """+1 if these first bytes are what a client sends, -1 if a server, 0 if unknown."""
    if chunk.startswith(_REQUEST_STARTS):
        return 1
    if chunk.startswith(b"HTTP/1."):
        return -1
    if len(chunk) > 5 and chunk[0] == 0x16 and chunk[1] == 3:  # TLS handshake record
        return 1 if chunk[5] == 1 else -1 if chunk[5] == 2 else 0
    return 0


def _uncovered(ooo: list[tuple[int, bytes, int, int]], off: int, payload: bytes,
               missing: int) -> list[tuple[int, bytes, int]]:
    """The parts of segment ``[off, off + len(payload) + missing)`` not already buffered
    (first copy wins), as ``(offset, payload, missing)`` pieces."""
    end = off + len(payload) + missing
    pieces: list[tuple[int, int]] = []
    pos = off
    for o, p, m, _ts in ooo:  # sorted by offset, non-overlapping
        e = o + len(p) + m
        if e <= pos:
            continue
        if o >= end:
            break
        if o > pos:
            pieces.append((pos, o))
        pos = max(pos, e)
        if pos >= end:
            break
    if pos < end:
        pieces.append((pos, end))
    captured_end = off + len(payload)
    out = []
    for a, b in pieces:
        data = payload[a - off : min(b, captured_end) - off] if a < captured_end else b""
        out.append((a, data, (b - a) - len(data)))
    return out


def _dst_is_server(sport: int, dport: int) -> bool:
    s_known, d_known = sport in SERVER_PORTS, dport in SERVER_PORTS
    if s_known != d_known:
        return d_known
    if (sport < 1024) != (dport < 1024):
        return dport < 1024
    return dport <= sport


class Half:
    """One direction of a connection: the bytes sent by ``src`` to ``dst``."""

    __slots__ = (
        "conn", "peer", "table", "src", "sport", "dst", "dport", "seen", "isn", "base", "nseq",
        "next", "ooo", "ooo_bytes", "hole_ts", "hole_next", "acked", "fin_off", "ended",
        "consumer", "first_ts", "options", "fast",
    )

    def __init__(self, conn: Connection, table: FlowTable, src: bytes, sport: int, dst: bytes,
                 dport: int) -> None:
        self.conn = conn
        self.table = table
        self.peer: Half = self  # set by Connection
        self.src, self.sport, self.dst, self.dport = src, sport, dst, dport
        self.seen = False
        self.isn: int | None = None
        self.base = 0  # raw sequence number of stream offset 0
        self.nseq = 0  # raw sequence number of the next expected byte
        self.next = 0  # stream offset of the next expected byte
        self.ooo: list[tuple[int, bytes, int, int]] | None = None  # (offset, payload, missing, ts)
        self.ooo_bytes = 0
        self.hole_ts = 0
        self.hole_next = -1
        self.acked = 0  # highest offset the peer acknowledged
        self.fin_off = -1
        self.ended = False
        self.consumer: StreamConsumer | None = None
        self.first_ts = 0
        # True while the next in-order segment may take FlowTable.feed's fast path: seen, a
        # consumer, nothing buffered, no FIN yet, connection open. Kept by _refresh().
        self.fast = False
        self.options: dict[str, int] = {}

    def _refresh(self) -> None:
        self.fast = (self.seen and self.ooo is None and self.fin_off < 0
                     and self.consumer is not None and not self.conn.closed)

    # -- input -------------------------------------------------------------------------------
    def start(self, seq: int, flags: int, ts: int) -> None:
        """First packet in this direction: fix offset 0 of the stream."""
        self.seen = True
        self.first_ts = ts
        if flags & SYN:
            self.isn = seq
            seq = (seq + 1) & MASK
        self.base = self.nseq = seq

    def segment(self, ts: int, seq: int, flags: int, payload: bytes, missing: int) -> None:
        if flags & SYN:
            seq = (seq + 1) & MASK
        length = len(payload) + missing
        d = ((seq - self.nseq + HALF) & MASK) - HALF
        if flags & FIN and self.fin_off < 0:
            self.fin_off = self.next + d + length
        if length:
            if d == 0:  # the next bytes
                if self.consumer is None:
                    self._open(payload)
                c = self.consumer
                if c is not None:
                    if payload:
                        c.data(payload, ts)
                    if missing:
                        self._gap(missing, ts)
                elif missing:
                    self._gap(missing, ts)
                self.next += length
                self.nseq = (self.nseq + length) & MASK
                if self.ooo is not None:
                    self._drain()
            elif d < 0:
                self._old(d, payload, missing, ts)
            elif d > self.table.config.max_seq_jump:
                self.table.seq_out_of_window += 1
                return
            else:
                self._buffer(self.next + d, payload, missing, ts)
        if self.ooo is not None:
            self._check_hole(ts)
        if self.fin_off >= 0 and not self.ended and self.next >= self.fin_off:
            self._end("fin", ts)
        self._refresh()

    def _old(self, d: int, payload: bytes, missing: int, ts: int) -> None:
        """A segment that starts before the next expected byte: retransmission or overlap."""
        length = len(payload) + missing
        cut = -d
        t = self.table
        if cut >= length:
            t.retransmitted_bytes += length
            return
        t.retransmitted_bytes += cut
        if self.ooo is None:
            self._deliver(payload, missing, cut, ts)
            self.next += length - cut
            self.nseq = (self.base + self.next) & MASK
        else:
            self._buffer(self.next, payload[cut:], missing - max(0, cut - len(payload)), ts)

    def _buffer(self, off: int, payload: bytes, missing: int, ts: int) -> None:
        t = self.table
        t.ooo_segments += 1
        if self.ooo is None:
            self.ooo = []
            if self.hole_next != self.next:
                self.hole_ts, self.hole_next = ts, self.next
        for piece in _uncovered(self.ooo, off, payload, missing):
            bisect.insort(self.ooo, (*piece, ts), key=_first)
            n = len(piece[1])
            self.ooo_bytes += n
            t.buffered += n
        self._drain()
        if self.ooo is not None and (self.ooo_bytes > t.config.max_buffer_per_direction
                                     or t.buffered > t.config.max_buffer_total):
            t.buffer_overflows += 1
            self.skip_hole(ts)

    def _drain(self) -> None:
        ooo = self.ooo
        if ooo is None:
            return
        t = self.table
        while ooo and ooo[0][0] <= self.next:
            off, payload, missing, ts = ooo.pop(0)
            n = len(payload)
            self.ooo_bytes -= n
            t.buffered -= n
            length = n + missing
            cut = self.next - off
            if cut >= length:
                t.retransmitted_bytes += length
                continue
            t.retransmitted_bytes += cut
            self._deliver(payload, missing, cut, ts)
            self.next += length - cut
        self.nseq = (self.base + self.next) & MASK
        if not ooo:
            self.ooo = None

    def _deliver(self, payload: bytes, missing: int, cut: int, ts: int) -> None:
        """Deliver ``payload`` (then ``missing`` unseen bytes) from offset ``cut`` on."""
        if self.consumer is None:
            self._open(payload[cut:])
        n = len(payload)
        if cut < n:
            c = self.consumer
            if c is not None:
                c.data(payload[cut:] if cut else payload, ts)
            lost = missing
        else:
            lost = missing - (cut - n)
        if lost > 0:
            self._gap(lost, ts)

    def _gap(self, length: int, ts: int) -> None:
        t = self.table
        t.gaps += 1
        t.gap_bytes += length
        if self.consumer is None:
            self._open(b"")
        c = self.consumer
        if c is not None:
            c.gap(length, ts)

    def note_ack(self, off: int, ts: int) -> None:
        """The peer acknowledged stream offset ``off`` (beyond ``next``): evidence of loss."""
        if off > self.acked:
            self.acked = off
        if self.hole_next != self.next:
            self.hole_ts, self.hole_next = ts, self.next
        self._check_hole(ts)

    def _check_hole(self, ts: int) -> None:
        cfg = self.table.config
        age = ts - self.hole_ts
        if age >= cfg.hole_timeout_ns:
            self.skip_hole(ts)
        elif self.acked > self.next and age >= cfg.ack_grace_ns:
            ooo = self.ooo
            if ooo is None or ooo[0][0] > self.acked:
                self._skip_to(self.acked, ts)
            else:
                self.skip_hole(ts)

    def skip_hole(self, ts: int) -> None:
        """Give up on the first hole: report it as a gap and deliver what follows it."""
        if self.ooo:
            self._skip_to(self.ooo[0][0], ts)
        elif self.acked > self.next:
            self._skip_to(self.acked, ts)

    def _skip_to(self, off: int, ts: int) -> None:
        if off > self.next:
            self._gap(off - self.next, ts)
            self.next = off
        self._drain()
        self.nseq = (self.base + self.next) & MASK
        if self.ooo is not None or self.acked > self.next:
            self.hole_ts, self.hole_next = ts, self.next
        self._refresh()

    def flush(self, ts: int) -> None:
        """Deliver everything buffered, across holes (the connection is going away)."""
        while self.ooo:
            self.skip_hole(ts)

    def _open(self, first: bytes) -> None:
        self.conn.open_consumers(self, first)

    def _end(self, reason: str, ts: int) -> None:
        self.ended = True
        c = self.consumer
        if c is not None:
            c.end(reason, ts)
        if self.peer.ended:
            self.table.close(self.conn, reason, ts)


class _NoFlow:
    """What ``FlowTable.lookup`` returns for an unknown key: never on the fast path."""

    __slots__ = ()
    fast = False


NO_FLOW = _NoFlow()


class Connection:
    """One TCP connection as observed at one capture point."""

    __slots__ = (
        "id", "point", "client", "server", "first_ts", "last_ts", "roles_inferred", "dialled",
        "closed", "close_reason", "close_ts", "syn_ts", "synack_ts", "consumers_open", "orphan",
        "keys", "activity",
    )

    def __init__(self, cid: int, point: object, table: FlowTable, seg: Segment, ts: int) -> None:
        src, sport, dst, dport, _seq, _ack, flags = seg[:7]
        self.id = cid
        self.point = point
        a = Half(self, table, src, sport, dst, dport)
        b = Half(self, table, dst, dport, src, sport)
        a.peer, b.peer = b, a
        if flags & SYN:
            sender_is_client = not flags & ACK
            self.roles_inferred = False
        else:
            sender_is_client = _dst_is_server(sport, dport)
            self.roles_inferred = True
        self.client, self.server = (a, b) if sender_is_client else (b, a)
        self.first_ts = self.last_ts = ts
        self.dialled: tuple[bytes, int] | None = None
        self.closed = False
        self.close_reason = ""
        self.close_ts = 0
        self.syn_ts = ts if flags & SYN and not flags & ACK else 0
        self.synack_ts = ts if flags & SYN and flags & ACK else 0
        self.consumers_open = False
        self.orphan = True  # one direction not yet seen
        self.keys: list[FlowKey] = []  # flow-table keys to forget
        # Bytes delivered in both directions at the last sweep: the fast path does not touch
        # last_ts, so the sweep moves last_ts forward for connections whose bytes moved.
        self.activity = 0

    def open_consumers(self, first_sender: Half, first: bytes) -> None:
        """Create both consumers at the first delivery, after a last look at the roles."""
        if self.consumers_open:
            return
        self.consumers_open = True
        t = first_sender.table
        if self.roles_inferred and first:
            hint = payload_role_hint(first)
            if hint and (hint > 0) != (first_sender is self.client):
                self.client, self.server = self.server, self.client
                t.roles_swapped += 1
        if t.factory is not None:
            self.client.consumer, self.server.consumer = t.factory(self)
        self.client._refresh()
        self.server._refresh()

    @property
    def key(self) -> tuple[bytes, int, bytes, int]:
        c = self.client
        return (c.src, c.sport, c.dst, c.dport)


class FlowTable:
    """All connections of one pipeline. Not thread-safe: one table per worker."""

    def __init__(self, stats: Stats, factory: ConsumerFactory | None = None,
                 config: TcpConfig | None = None) -> None:
        self.stats = stats
        self.factory = factory
        self.config = config or TcpConfig()
        self._flows: dict[FlowKey, Half] = {}
        self._open: dict[Connection, None] = {}
        self._closed: list[Connection] = []
        self._by_src: dict[tuple[object, bytes, int], Connection] = {}
        self._by_dst: dict[tuple[object, bytes, int], Connection] = {}
        self._tombs: dict[FlowKey, tuple[int, int]] = {}  # forgotten flows: (first seq, span)
        self.next_sweep = 0
        self.last_sweep = 0
        self.lookup = self._flows.get  # FlowKey -> the direction it belongs to
        self._ids = 0
        # hot-path counters, folded into Stats by close_all()/snapshot()
        self.connections = 0
        self.gaps = 0
        self.gap_bytes = 0
        self.retransmitted_bytes = 0
        self.ooo_segments = 0
        self.buffered = 0
        self.buffer_overflows = 0
        self.seq_out_of_window = 0
        self.roles_swapped = 0
        self.redirect_pairs = 0
        self.after_close = 0
        self.evicted_idle = 0
        self.evicted_cap = 0
        self.port_reuse = 0
        self.synack_conflicts = 0

    @property
    def active(self) -> int:
        return len(self._open)

    def connections_open(self) -> list[Connection]:
        return list(self._open)

    # -- the per-packet entry point ------------------------------------------------------------
    def feed(self, ts: int, point: object, seg: Segment) -> None:
        src, sport, dst, dport, seq, ack, flags, payload, missing, opts = seg
        h = self._flows.get((point, src + dst, sport << 16 | dport))
        if h is not None and h.fast and not flags & 0x07:
            # Fast path: an established direction, nothing buffered, no SYN/FIN/RST.
            if payload:
                if seq == h.nseq and not missing:
                    h.consumer.data(payload, ts)  # type: ignore[union-attr]
                    n = len(payload)
                    h.next += n
                    h.nseq = (seq + n) & MASK
                else:
                    h.segment(ts, seq, flags, payload, missing)
            if flags & ACK:
                p = h.peer
                d = ((ack - p.nseq + HALF) & MASK) - HALF
                if d > 0 and p.seen and d <= self.config.max_seq_jump:
                    self.ack_beyond(p, d, ts)
            return
        if h is None:
            if not flags & SYN and self._tombs and self._in_tomb(point, seg):
                self.after_close += 1
                return
            h = self._new(ts, point, seg)
        elif flags & SYN and self._starts_new(h, seq, ack if flags & ACK else None):
            if not h.conn.closed:
                self.port_reuse += 1
                self.close(h.conn, "reused", ts)
            h = self._new(ts, point, seg)
        conn = h.conn
        if conn.closed:
            conn.last_ts = ts
            if payload:
                self.after_close += 1
            return
        conn.last_ts = ts
        if not h.seen:
            h.start(seq, flags, ts)
            if conn.orphan and h.peer.seen:
                self._unorphan(conn)
            if opts:
                h.options = tcp_options(opts)
        if flags & SYN and flags & ACK and not conn.synack_ts:
            conn.synack_ts = ts
        h.segment(ts, seq, flags, payload, missing)
        if flags & RST:
            self.close(conn, "rst", ts)
            return
        if flags & ACK:
            p = h.peer
            if p.seen:
                d = ((ack - p.nseq + HALF) & MASK) - HALF
                if d > 0 and d <= self.config.max_seq_jump:
                    self.ack_beyond(p, d, ts)
        if ts >= self.next_sweep:
            self.sweep(ts)

    @staticmethod
    def ack_beyond(p: Half, d: int, ts: int) -> None:
        """The peer of ``p`` acknowledged ``d`` bytes beyond what ``p`` has delivered."""
        off = p.next + d
        if p.fin_off >= 0 and off > p.fin_off:
            off = p.fin_off  # the FIN takes a sequence number but is not data
        if off > p.next:
            p.note_ack(off, ts)

    def _starts_new(self, h: Half, seq: int, ack: int | None) -> bool:
        """A SYN on a known address pair: a new connection, or a copy/late arrival of ours?"""
        if h.seen and h.isn is None and (seq + 1) & MASK == h.base:
            h.isn = seq  # our own SYN, captured after later packets of the connection
            return False
        if h.conn.closed:
            return h.isn != seq  # a new connection, unless a copy of the SYN that opened this
        if not h.seen or h.isn == seq:
            return False  # the first packet this way, or a retransmitted SYN
        p = h.peer
        if ack is not None and p.isn is not None and ack == (p.isn + 1) & MASK:
            self.synack_conflicts += 1  # a second SYN-ACK for the same SYN: first one stands
            return False
        return True

    def _in_tomb(self, point: object, seg: Segment) -> bool:
        """Is this a straggler of a connection already closed and forgotten? Captures that
        are not in time order (merged files, duplicated loopback packets) deliver such."""
        src, sport, dst, dport, seq = seg[:5]
        span = self._tombs.get(flow_key(point, src, sport, dst, dport))
        return span is not None and ((seq - span[0]) & MASK) <= span[1]

    def _new(self, ts: int, point: object, seg: Segment) -> Half:
        src, sport, dst, dport, seq, ack, flags = seg[:7]
        half = self._pair_redirect(ts, point, seg)
        if half is not None:
            return half
        if len(self._open) >= self.config.max_flows:
            self._evict_for_cap(ts)
        self._ids += 1
        conn = Connection(self._ids, point, self, seg, ts)
        self.connections += 1
        fwd = conn.client if conn.client.src == src and conn.client.sport == sport else conn.server
        k1, k2 = flow_key(point, src, sport, dst, dport), flow_key(point, dst, dport, src, sport)
        self._flows[k1] = fwd
        self._flows[k2] = fwd.peer
        conn.keys += (k1, k2)
        self._open[conn] = None
        self._by_src[(point, src, sport)] = conn
        self._by_dst[(point, dst, dport)] = conn
        return fwd

    def _pair_redirect(self, ts: int, point: object, seg: Segment) -> Half | None:
        """The missing direction of a REDIRECTed connection, under another address pair."""
        src, sport, dst, dport, seq, ack, flags = seg[:7]
        if not flags & ACK:
            return None
        # Case 1: we saw app -> proxy (src X); this packet comes back to X from the dialled address.
        cand = self._by_src.get((point, dst, dport))
        if cand is not None and cand.orphan and not cand.closed:
            seen = cand.client if cand.client.seen else cand.server
            if seen.src == dst and seen.sport == dport and self._acks(seen, ack):
                return self._adopt(cand, seen.peer, point, seg, dialled=(src, sport))
        # Case 2: we saw dialled -> X first; this packet is X -> proxy.
        cand = self._by_dst.get((point, src, sport))
        if cand is not None and cand.orphan and not cand.closed:
            seen = cand.client if cand.client.seen else cand.server
            if seen.dst == src and seen.dport == sport and self._acks(seen, ack):
                return self._adopt(cand, seen.peer, point, seg, dialled=(seen.src, seen.sport))
        return None

    @staticmethod
    def _acks(seen: Half, ack: int) -> bool:
        """Does ``ack`` fall within the bytes ``seen`` has sent (its ISN+1 .. next)?"""
        lo = seen.isn if seen.isn is not None else seen.base
        span = ((seen.nseq - lo) & MASK) + 1
        return ((ack - lo) & MASK) <= span and seen.seen

    def _adopt(self, conn: Connection, half: Half, point: object, seg: Segment,
               dialled: tuple[bytes, int]) -> Half:
        src, sport, dst, dport = seg[:4]
        self.redirect_pairs += 1
        conn.dialled = dialled
        key = flow_key(point, src, sport, dst, dport)
        self._flows[key] = half
        conn.keys.append(key)
        # The peer direction keeps its own key; this half now answers to the new pair too.
        return half

    def _unorphan(self, conn: Connection) -> None:
        conn.orphan = False
        c = conn.client
        for index, key in ((self._by_src, (conn.point, c.src, c.sport)),
                           (self._by_dst, (conn.point, c.dst, c.dport)),
                           (self._by_src, (conn.point, c.dst, c.dport)),
                           (self._by_dst, (conn.point, c.src, c.sport))):
            if index.get(key) is conn:
                del index[key]

    # -- closing -------------------------------------------------------------------------------
    def close(self, conn: Connection, reason: str, ts: int) -> None:
        if conn.closed:
            return
        conn.closed = True
        conn.close_reason = reason
        conn.close_ts = ts
        conn.client.fast = conn.server.fast = False
        for h in (conn.client, conn.server):
            h.flush(ts)
            if h.acked > h.next:
                h.skip_hole(ts)
            if not h.ended:
                h.ended = True
                if h.consumer is not None:
                    h.consumer.end(reason, ts)
        self._open.pop(conn, None)
        if conn.orphan:
            self._unorphan(conn)
        self._closed.append(conn)

    def _forget(self, conn: Connection) -> None:
        flows = self._flows
        tombs = self._tombs
        for key in conn.keys:
            h = flows.get(key)
            if h is not None and h.conn is conn:
                del flows[key]
                if h.seen:  # remember its sequence span: SYN .. FIN inclusive
                    lo = (h.base - 1) & MASK
                    tombs[key] = (lo, ((h.nseq - lo) & MASK) + 1)
        while len(tombs) > self.config.max_tombstones:
            del tombs[next(iter(tombs))]

    def sweep(self, ts: int) -> None:
        """Idle eviction, stale holes, and forgetting closed connections; every sweep interval."""
        cfg = self.config
        self.next_sweep = ts + cfg.sweep_interval_ns
        last_sweep, self.last_sweep = self.last_sweep, ts
        idle_before = ts - cfg.idle_timeout_ns
        idle = []
        for conn in self._open:
            c, s = conn.client, conn.server
            act = c.next + s.next
            if act != conn.activity:
                # bytes moved since the last sweep: active at least as late as that sweep
                conn.activity = act
                if last_sweep > conn.last_ts:
                    conn.last_ts = last_sweep
            if conn.last_ts < idle_before:
                idle.append(conn)
                continue
            for h in (c, s):
                if h.ooo is not None or h.acked > h.next:
                    h._check_hole(ts)
        for conn in idle:
            self.evicted_idle += 1
            self.close(conn, "idle", ts)
        linger_before = ts - cfg.linger_ns
        keep = []
        for conn in self._closed:
            if conn.last_ts < linger_before:
                self._forget(conn)
            else:
                keep.append(conn)
        self._closed = keep

    def _evict_for_cap(self, ts: int) -> None:
        victims = sorted(self._open, key=lambda c: c.last_ts)[: max(1, len(self._open) // 8)]
        for conn in victims:
            self.evicted_cap += 1
            self.close(conn, "evicted", ts)
        self.sweep(ts)

    def close_all(self, ts: int, reason: str = "capture_end") -> None:
        for conn in list(self._open):
            self.close(conn, reason, ts)
        for conn in self._closed:
            self._forget(conn)
        self._closed = []
        self.snapshot()

    def snapshot(self) -> None:
        """Fold the hot-path counters into ``stats`` (stage ``tcp``) and reset them."""
        st = self.stats
        for name in ("connections", "gaps", "gap_bytes", "retransmitted_bytes", "ooo_segments",
                     "buffer_overflows", "seq_out_of_window", "roles_swapped", "redirect_pairs",
                     "after_close", "evicted_idle", "evicted_cap", "port_reuse",
                     "synack_conflicts"):
            v = getattr(self, name)
            if v:
                st.add("tcp", name, v)
                setattr(self, name, 0)
