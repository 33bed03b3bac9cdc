"""Passive HTTP/2 (RFC 9113): both directions of one connection, bytes in, exchanges out.

Rules of this module
--------------------
* Sans-IO, like ``http1``: ``Http2Connection`` exposes ``client_side`` and ``server_side``
  stream consumers and hands each finished stream to a sink as an ``Exchange``
  (``protocol = "http/2"``, ``stream_id``; pseudo-headers become method / target /
  authority / status, the other fields stay in ``headers``; trailers in ``trailers``).
* Framing is our own: the 9-byte frame header is read from the reassembled stream; DATA
  payloads are counted and skipped (never copied, never stored); other frames are buffered
  up to ``MAX_FRAME_BUFFER`` (more is a frame-size bomb: the connection is marked broken).
  Measured against ``hyperframe`` on bench.pcap (scripts/bench_http2.py, docs/http2.md).
* HPACK: one ``hpack_decode.Decoder`` per direction, fed every header block in order
  (HEADERS + CONTINUATION, PUSH_PROMISE), honouring SETTINGS_HEADER_TABLE_SIZE from the
  decoding peer and the encoder's table size updates.
* Timestamps: a message's ``first_ts`` is that of the packet carrying the first byte of its
  first HEADERS frame, ``last_ts`` that of the last byte of the frame that carried
  END_STREAM (or of the last frame seen, when it never ended).
* Streams: a client HEADERS opens an exchange; a server HEADERS with ``:status`` 1xx is
  interim, the next is the response, a later one the trailers. END_STREAM from the server,
  RST_STREAM from either side, or the connection's end hands the exchange over. PUSH_PROMISE
  opens an exchange for the promised stream (flag ``pushed``). At most ``MAX_STREAMS`` open
  per connection (the oldest is handed over, flagged ``evicted``).
* gRPC (``content-type: application/grpc*``): ``grpc-status`` / ``grpc-message`` from the
  trailers or a Trailers-Only response.
* Mid-stream joins (no preface seen): each direction searches for a frame boundary — a chain
  of plausible frame headers — and decodes from there with a decoder that knows the dynamic
  table is incomplete. Fields it cannot resolve are left out and the exchange is flagged
  ``partial_headers``. A reassembly gap does the same: the direction's HPACK table may have
  missed insertions, so it restarts as a mid-stream join, and the streams open in that
  direction are flagged ``gap``.
* Bad input (a protocol violation that loses framing, an HPACK error, a bomb): the
  connection is marked broken, counted under ``http2`` with the reason, its open streams are
  handed over flagged ``malformed``, and the rest of its bytes are ignored.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from urllib.parse import unquote

from ..exchange import Exchange, Headers, Message
from ..stats import Stats
from .hpack_decode import Decoder, HpackError

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM, ACK_FLAG, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
PAD_PENDING = 0x100  # (ours, beside a DATA frame's flags: its pad length byte is still to come)

MAX_FRAME_BUFFER = 1 << 20  # a non-DATA frame larger than this is a bomb
MAX_HEADER_BLOCK = 256 * 1024  # HEADERS + CONTINUATION of one block
MAX_STREAMS = 1024  # open streams per connection
MAX_HEADERS = 256  # regular fields kept per message
MAX_SEARCH = 64 * 1024  # bytes buffered while a candidate frame boundary is checked
MAX_SEARCH_TOTAL = 1 << 20  # bytes skipped looking for a boundary before giving up
SEARCH_FRAMES = 3  # consecutive plausible frame headers that prove a boundary

# a frame header: length (high byte, low 16 bits), type, flags, R + stream id
_FRAME_HEADER = struct.Struct(">BHBBL").unpack_from

_STREAMS = ("http2", "streams")  # a Stats key

# side states
PREFACE_WAIT, FRAMES, SEARCH, BROKEN = range(4)

# (flags allowed, stream id: 1 must be non-zero, 0 must be zero, -1 either, fixed length or -1)
_FRAME_RULES = {
    DATA: (0x09, 1, -1), HEADERS: (0x2D, 1, -1), PRIORITY: (0x00, 1, 5),
    RST_STREAM: (0x00, 1, 4), SETTINGS: (0x01, 0, -1), PUSH_PROMISE: (0x0C, 1, -1),
    PING: (0x01, 0, 8), GOAWAY: (0x00, 0, -1), WINDOW_UPDATE: (0x00, -1, 4),
    CONTINUATION: (0x04, 1, -1),
}


def plausible_header(data: bytes, pos: int, max_len: int = 1 << 20) -> int:
    """The frame length if ``data[pos:pos+9]`` reads as a frame header a peer could send, else -1."""
    length = int.from_bytes(data[pos:pos + 3], "big")
    ftype, flags = data[pos + 3], data[pos + 4]
    sid = int.from_bytes(data[pos + 5:pos + 9], "big")
    rule = _FRAME_RULES.get(ftype)
    if rule is None or sid & 0x80000000 or length > max_len or flags & ~rule[0]:
        return -1
    if (rule[1] == 1 and not sid) or (rule[1] == 0 and sid) or (rule[2] >= 0 and length != rule[2]):
        return -1
    if ftype == SETTINGS and (length % 6 or (flags & ACK_FLAG and length)):
        return -1
    if ftype == GOAWAY and length < 8:
        return -1
    return length


def find_frame_start(data: bytes, start: int = 0, need: int = SEARCH_FRAMES) -> tuple[int, bool]:
    """Where framing can resume in ``data``: the first offset from ``start`` at which ``need``
    plausible frame headers follow each other, or fewer that end exactly at the end of
    ``data`` -> (offset, True). (offset, False): the chain from there is plausible so far but
    runs past the end: wait for more bytes. (-1, False): no candidate."""
    n = len(data)
    for off in range(start, n - 8):
        pos, frames = off, 0
        while pos + 9 <= n:
            length = plausible_header(data, pos)
            if length < 0:
                break
            frames += 1
            pos += 9 + length
            if frames >= need:
                return off, True
        else:
            if frames and pos == n:
                return off, True
            if frames and pos - off <= MAX_SEARCH:
                return off, False
    return -1, False


def _status(value: str | None) -> int:
    if value is not None and len(value) == 3 and value.isdigit():
        return int(value)
    return 0


class _Stream:
    __slots__ = ("ex", "req_done", "interim")

    def __init__(self, ex: Exchange) -> None:
        self.ex = ex
        self.req_done = False
        self.interim = 0


class _Side:
    """One direction: framing and the HPACK decoder of the blocks it carries."""

    __slots__ = ("conn", "is_client", "state", "buf", "buf_ts", "skip", "skip_sid",
                 "skip_flags", "decoder", "block", "block_sid", "block_kind", "block_flags",
                 "block_ts", "block_promised", "max_frame", "searched", "ended", "memo")

    def __init__(self, conn: Http2Connection, is_client: bool, state: int,
                 mid_stream: bool) -> None:
        self.conn = conn
        self.is_client = is_client
        self.state = state
        self.buf = b""
        self.buf_ts = 0
        self.skip = 0  # bytes of a DATA payload still to come
        self.skip_sid = 0
        self.skip_flags = 0
        self.decoder = Decoder(mid_stream)
        self.block: bytearray | None = None
        self.block_sid = self.block_kind = self.block_flags = self.block_ts = 0
        self.block_promised = 0
        self.max_frame = MAX_FRAME_BUFFER
        self.searched = 0
        self.ended = False
        self.memo: dict[int, tuple] = {}

    # -- StreamConsumer ------------------------------------------------------------------------
    def data(self, chunk: bytes, ts: int) -> None:
        if self.state == BROKEN:
            return
        try:
            self._data(chunk, ts)
        except Exception:  # noqa: BLE001 - a parser bug must not stop the pipeline
            self.conn.broken("internal_error")

    def gap(self, length: int, ts: int) -> None:
        if self.state == BROKEN:
            return
        try:
            self._gap(length, ts)
        except Exception:  # noqa: BLE001
            self.conn.broken("internal_error")

    def end(self, reason: str, ts: int) -> None:
        try:
            if self.state == SEARCH and self.buf:
                # a candidate boundary whose chain ran past the last byte: nothing more is
                # coming to contradict it, so decode from there
                off, _ = find_frame_start(self.buf)
                if off >= 0:
                    data, self.buf = self.buf[off:], b""
                    self.conn.stats.add("http2", "resync")
                    self.state = FRAMES
                    self._data(data, self.buf_ts)
            self.conn.side_ended(self, reason, ts)
        except Exception:  # noqa: BLE001
            self.conn.stats.add("http2", "internal_error")

    # -- framing -------------------------------------------------------------------------------
    def _gap(self, length: int, ts: int) -> None:
        c = self.conn
        if self.skip:
            if length <= self.skip:  # inside a DATA payload: nothing but body bytes lost
                self.skip -= length
                c.stream_flag(self.skip_sid, "gap")
                if not self.skip:
                    c.data_frame(self, self.skip_sid, self.skip_flags, 0, ts)
                return
        c.stats.add("http2", "gap_resync")
        c.flag_open(self.is_client, "gap")
        self.skip = 0
        self.buf = b""
        self.block = None
        self.searched = 0
        # insertions into the dynamic table may be among the lost bytes
        limit = self.decoder.limit
        self.decoder = Decoder(mid_stream=True)
        self.decoder.limit = limit
        self.state = SEARCH

    def _data(self, chunk: bytes, ts: int) -> None:
        if self.skip:
            n = len(chunk)
            if self.skip_flags & PAD_PENDING and n:
                # the pad length byte of a PADDED DATA frame cut right after its header
                self.skip_flags &= ~PAD_PENDING
                self.conn.data_bytes(self, self.skip_sid, -(chunk[0] + 1), ts)
            if n < self.skip:
                self.skip -= n
                return
            sid, flags = self.skip_sid, self.skip_flags
            chunk = chunk[self.skip:]
            self.skip = 0
            self.conn.data_frame(self, sid, flags, 0, ts)
            if not chunk or self.state == BROKEN:
                return
        old = len(self.buf)
        if old:
            data = self.buf + chunk
            old_ts = self.buf_ts
        else:
            data = chunk
            old_ts = ts
        n = len(data)
        pos = 0
        st = self.state
        if st == PREFACE_WAIT:
            if n < 24:
                if not PREFACE.startswith(data):
                    self._no_preface()
                    return self._data_again(data, ts)
                self.buf, self.buf_ts = data, old_ts
                return
            if not data.startswith(PREFACE):
                self._no_preface()
                return self._data_again(data, ts)
            pos = 24
            self.state = st = FRAMES
        elif st == SEARCH:
            off, found = find_frame_start(data)
            if not found:
                # keep a plausible start (or the last bytes, which may begin one) for later
                keep = off if off >= 0 else max(0, n - 8)
                self.searched += keep
                self.buf, self.buf_ts = data[keep:], ts
                if self.searched > MAX_SEARCH_TOTAL:
                    self.conn.broken("no_frame_boundary")
                return
            self.conn.stats.add("http2", "resync")
            self.conn.stats.add("http2", "resync_skipped_bytes", self.searched + off)
            pos = off
            self.state = st = FRAMES
        conn = self.conn
        max_frame = self.max_frame
        streams = conn.streams
        unpack = _FRAME_HEADER
        while n - pos >= 9:
            hi, lo, ftype, flags, sid = unpack(data, pos)
            length = hi << 16 | lo
            end = pos + 9 + length
            if ftype == DATA:
                sid &= 0x7FFFFFFF
                pad = 0
                if flags & PADDED and length and pos + 9 < n:
                    pad = data[pos + 9] + 1
                if end <= n:
                    # (Http2Connection.data_frame, inlined: one DATA frame, whole)
                    st = streams.get(sid)
                    if st is not None:
                        ex = st.ex
                        msg = ex.request if self.is_client else ex.response
                        if msg is not None:
                            msg.body_bytes += length - pad
                            msg.last_ts = ts
                            if flags & END_STREAM:
                                msg.complete = True
                                if self.is_client:
                                    st.req_done = True
                                else:
                                    conn._hand_over(sid)
                    pos = end
                    continue
                # the payload runs past this chunk: count it now, skip the rest as it comes
                if flags & PADDED and pos + 9 == n:
                    flags |= PAD_PENDING
                self.skip, self.skip_sid, self.skip_flags = end - n, sid, flags
                conn.data_bytes(self, sid, length - pad, ts)
                self.buf = b""
                return
            if length > max_frame:
                conn.broken("frame_too_large")
                return
            if end > n:
                break
            sid &= 0x7FFFFFFF
            fts = ts if pos >= old else old_ts
            if (ftype == HEADERS and flags & END_HEADERS and not flags & (PADDED | PRIORITY_FLAG)
                    and self.block is None):
                # (_frame's commonest case: a whole header block in one plain HEADERS frame)
                self._block(HEADERS, flags, sid, data[pos + 9:end], fts, ts, 0)
            else:
                self._frame(ftype, flags, sid, data[pos + 9:end], fts, ts)
            if self.state != FRAMES:
                return
            pos = end
        if pos < n:
            self.buf = data[pos:]
            self.buf_ts = ts if pos >= old else old_ts
        else:
            self.buf = b""

    def _no_preface(self) -> None:
        self.conn.stats.add("http2", "bad_preface")
        self.state = SEARCH
        self.buf = b""

    def _data_again(self, data: bytes, ts: int) -> None:
        self._data(data, ts)

    def _frame(self, ftype: int, flags: int, sid: int, payload: bytes, fts: int,
               ts: int) -> None:
        conn = self.conn
        if self.block is not None and ftype != CONTINUATION:
            conn.stats.add("http2", "frame_inside_header_block")
            conn.broken("protocol_error")
            return
        if ftype == HEADERS or ftype == PUSH_PROMISE:
            p, end = 0, len(payload)
            if flags & PADDED:
                if not payload:
                    conn.broken("bad_padding")
                    return
                end -= payload[0]
                p = 1
            promised = 0
            if ftype == HEADERS:
                if flags & PRIORITY_FLAG:
                    p += 5
            else:
                if end - p < 4:
                    conn.broken("bad_push_promise")
                    return
                promised = int.from_bytes(payload[p:p + 4], "big") & 0x7FFFFFFF
                p += 4
            if end < p:
                conn.broken("bad_padding")
                return
            frag = payload[p:end]
            if flags & END_HEADERS:
                self._block(ftype, flags, sid, frag, fts, ts, promised)
            else:
                self.block = bytearray(frag)
                self.block_sid, self.block_kind, self.block_flags = sid, ftype, flags
                self.block_ts, self.block_promised = fts, promised
        elif ftype == CONTINUATION:
            block = self.block
            if block is None or sid != self.block_sid:
                if block is None and self.decoder.tail_unknown:
                    conn.stats.add("http2", "orphan_continuation")  # a join mid-block
                    return
                conn.broken("protocol_error")
                return
            block += payload
            if len(block) > MAX_HEADER_BLOCK:
                conn.broken("header_block_too_large")
                return
            if flags & END_HEADERS:
                self.block = None
                self._block(self.block_kind, self.block_flags, sid, bytes(block),
                            self.block_ts, ts, self.block_promised)
        elif ftype == RST_STREAM:
            conn.reset(sid, int.from_bytes(payload[:4], "big"), ts)
        elif ftype == SETTINGS:
            if not flags & ACK_FLAG:
                conn.settings(self, payload)
        elif ftype == GOAWAY:
            conn.stats.add("http2", "goaway")
        # PRIORITY, PING, WINDOW_UPDATE and unknown types (RFC 9113 §5.5): nothing to keep

    def _block(self, kind: int, flags: int, sid: int, block: bytes, fts: int, ts: int,
               promised: int) -> None:
        try:
            fields, partial = self.decoder.decode(block)
        except HpackError:
            self.conn.broken("hpack_error")
            return
        memo = self.memo.get(id(fields))
        if memo is None:
            pseudo: dict[str, str] = {}
            regular: Headers = []
            grpc = False
            for name, value in fields:
                if name is None or value is None:
                    partial = True
                elif name[:1] == ":":
                    pseudo[name] = value
                elif len(regular) < MAX_HEADERS:
                    if value[:1] == "\x00" and name[-4:] == "-bin":
                        # gRPC "true binary" metadata (a NUL, then raw bytes): store it as the
                        # base64 every other peer sends, so -bin values read the same
                        value = base64.b64encode(value[1:].encode("latin-1")).decode()
                        value = value.rstrip("=")
                    if name == "grpc-status" or name == "grpc-message":
                        grpc = True
                    regular.append((name, value))
            if len(self.memo) >= 256:
                self.memo.clear()
            memo = self.memo[id(fields)] = (fields, pseudo, regular, partial, grpc)
        else:
            partial = partial or memo[3]
        self.conn.headers(self, kind, flags, sid, memo[1], memo[2], partial, fts, ts, promised,
                          memo[4])


class Http2Connection:
    """Both directions of one TCP connection speaking HTTP/2 (prior knowledge, an upgrade, or
    joined mid-stream)."""

    def __init__(self, conn: object, emit: Callable[[Exchange], None], stats: Stats,
                 point: object, client: tuple[bytes, int], server: tuple[bytes, int],
                 conn_id: int, dialled: tuple[bytes, int] | None = None, *,
                 mid_stream: bool = False, upgraded: Exchange | None = None) -> None:
        self.emit = emit
        self.stats = stats
        self.point = point
        self.client = client
        self.server = server
        self.conn_id = conn_id
        self.dialled = dialled
        self.mid_stream = mid_stream
        self.streams: dict[int, _Stream] = {}
        self.reset_ids: dict[int, None] = {}  # recently reset streams, oldest first
        self.is_broken = False
        self.swappable = mid_stream
        self.counts = stats.counts
        self.client_side = _Side(self, True, SEARCH if mid_stream else PREFACE_WAIT, mid_stream)
        self.server_side = _Side(self, False, SEARCH if mid_stream else FRAMES, mid_stream)
        stats.add("http2", "connections")
        if mid_stream:
            stats.add("http2", "mid_stream_joins")
        if upgraded is not None:
            self._adopt_upgrade(upgraded)

    # -- h2c upgrade (RFC 7540 §3.2): the HTTP/1.1 request is stream 1 ---------------------------
    def _adopt_upgrade(self, ex: Exchange) -> None:
        self.stats.add("http2", "h2c_upgrades")
        settings = ex.request.header("http2-settings")
        if settings:
            try:
                raw = base64.urlsafe_b64decode(settings + "=" * (-len(settings) % 4))
                self.settings(self.client_side, raw)
            except (ValueError, TypeError):
                self.stats.add("http2", "bad_http2_settings")
        ex.protocol = "http/2"
        ex.stream_id = 1
        ex.status = 0
        ex.response = None
        ex.flags.add("h2c_upgrade")
        ex.request.headers = [(k, v) for k, v in ex.request.headers
                              if k not in ("upgrade", "http2-settings", "connection")]
        st = _Stream(ex)
        st.req_done = ex.request.complete
        self.streams[1] = st

    # -- frames from the sides -----------------------------------------------------------------
    def settings(self, side: _Side, payload: bytes) -> None:
        """SETTINGS sent by ``side``'s endpoint govern what the *other* direction sends."""
        other = self.server_side if side.is_client else self.client_side
        for i in range(0, len(payload) - 5, 6):
            ident = int.from_bytes(payload[i:i + 2], "big")
            value = int.from_bytes(payload[i + 2:i + 6], "big")
            if ident == 1:  # SETTINGS_HEADER_TABLE_SIZE
                other.decoder.set_limit(value)
            elif ident == 5:  # SETTINGS_MAX_FRAME_SIZE
                other.max_frame = min(max(value, 16384), MAX_FRAME_BUFFER)

    def _exchange(self, sid: int, request: Message | None = None,
                  pseudo: dict[str, str] | None = None) -> Exchange:
        """One object built in one call (this runs for every stream)."""
        if pseudo is None:
            return Exchange(self.conn_id, self.point, self.client, self.server, "http/2",
                            dialled=self.dialled, stream_id=sid)
        get = pseudo.get
        return Exchange(self.conn_id, self.point, self.client, self.server, "http/2",
                        method=get(":method", ""), target=get(":path", ""),
                        authority=get(":authority", ""), scheme=get(":scheme", ""),
                        request=request, dialled=self.dialled,  # type: ignore[arg-type]
                        stream_id=sid)

    def _open(self, sid: int, ex: Exchange) -> _Stream:
        streams = self.streams
        if len(streams) >= MAX_STREAMS:
            old = next(iter(streams))
            self.stats.add("http2", "streams_evicted")
            self._hand_over(old, "evicted")
        st = streams[sid] = _Stream(ex)
        self.counts[_STREAMS] += 1  # (self.stats.add("http2", "streams"), in one step)
        return st

    def headers(self, side: _Side, kind: int, flags: int, sid: int, pseudo: dict[str, str],
                regular: Headers, partial: bool, fts: int, ts: int, promised: int,
                grpc: bool = True) -> None:
        """One decoded header block of stream ``sid`` from ``side``; ``grpc``: whether
        ``regular`` may hold grpc-status / grpc-message (False: it holds neither)."""
        if self.swappable:
            self.swappable = False
            if side.is_client and ":status" in pseudo and ":method" not in pseudo:
                self._swap_roles()
        if kind == PUSH_PROMISE:
            if promised in self.streams:
                self.stats.add("http2", "push_promise_reuses_stream")
                return
            ex = self._exchange(promised, Message(fts, ts, regular, None, 0, True), pseudo)
            ex.flags.add("pushed")
            if partial:
                ex.flags.add("partial_headers")
            st = self._open(promised, ex)
            st.req_done = True
            self.stats.add("http2", "push_promise")
            return
        st = self.streams.get(sid)
        if st is None and sid in self.reset_ids:
            self.stats.add("http2", "frames_after_reset")
            return
        if side.is_client:
            if st is None:
                get = pseudo.get
                req = Message(fts, ts, regular)
                ex = Exchange(self.conn_id, self.point, self.client, self.server, "http/2",
                              get(":method", ""), get(":path", ""), get(":authority", ""),
                              get(":scheme", ""), 0, req, None, None, self.dialled, sid)
                if not ex.authority:  # a client may send Host instead (RFC 9113 §8.3.1)
                    ex.authority = req.header("host") or ""
                if partial:
                    ex.flags.add("partial_headers")
                st = self._open(sid, ex)
            else:
                ex = st.ex
                ex.request.trailers = regular
                ex.request.last_ts = ts
                if partial:
                    ex.flags.add("partial_headers")
            if flags & END_STREAM:
                st.req_done = True
                ex.request.last_ts = ts
                ex.request.complete = True
            return
        if st is None:
            # the request was before the capture started (or lost): keep the response
            ex = self._exchange(sid)
            ex.flags.add("no_request")
            st = self._open(sid, ex)
        ex = st.ex
        if partial:
            ex.flags.add("partial_headers")
        status = _status(pseudo.get(":status"))
        resp = ex.response
        if resp is None:
            if 100 <= status < 200:
                ex.flags.add(f"interim_{status}")
                return
            ex.status = status
            ex.response = resp = Message(fts, ts, regular)
        else:
            resp.trailers = regular
            resp.last_ts = ts
        if grpc:
            for name, value in regular:
                if name == "grpc-status":
                    ex.grpc_status = int(value) if value.isdigit() else -1
                elif name == "grpc-message":
                    ex.grpc_message = unquote(value)
        if flags & END_STREAM:
            resp.complete = True
            self._hand_over(sid)

    def _swap_roles(self) -> None:
        """A mid-stream join guessed the roles wrong (the 'client' sent a :status)."""
        self.stats.add("http2", "roles_swapped")
        self.client, self.server = self.server, self.client
        self.client_side.is_client, self.server_side.is_client = False, True
        self.client_side, self.server_side = self.server_side, self.client_side

    def data_frame(self, side: _Side, sid: int, flags: int, nbytes: int, ts: int) -> None:
        st = self.streams.get(sid)
        if st is None:
            return
        ex = st.ex
        msg = ex.request if side.is_client else ex.response
        if msg is None:
            return  # DATA before the response HEADERS: a protocol error we tolerate
        msg.body_bytes += nbytes
        msg.last_ts = ts
        if flags & END_STREAM:
            msg.complete = True
            if side.is_client:
                st.req_done = True
            else:
                self._hand_over(sid)

    def data_bytes(self, side: _Side, sid: int, nbytes: int, ts: int) -> None:
        """The start of a DATA frame whose payload continues in later chunks."""
        st = self.streams.get(sid)
        if st is not None:
            msg = st.ex.request if side.is_client else st.ex.response
            if msg is not None:
                msg.body_bytes += nbytes
                msg.last_ts = ts

    def reset(self, sid: int, code: int, ts: int) -> None:
        self.stats.add("http2", "rst_stream")
        st = self.streams.get(sid)
        if st is not None:
            m = st.ex.response or st.ex.request
            m.last_ts = max(m.last_ts, ts)
            self._hand_over(sid, "reset")
            # frames the peer sent before it saw the reset may still arrive: not a new stream
            self.reset_ids[sid] = None
            if len(self.reset_ids) > 64:
                del self.reset_ids[next(iter(self.reset_ids))]

    def stream_flag(self, sid: int, flag: str) -> None:
        st = self.streams.get(sid)
        if st is not None:
            st.ex.flags.add(flag)

    def flag_open(self, client_dir: bool, flag: str) -> None:
        for st in self.streams.values():
            if not client_dir or not st.req_done:
                st.ex.flags.add(flag)

    def _hand_over(self, sid: int, flag: str = "") -> None:
        st = self.streams.pop(sid, None)
        if st is None:
            return
        if flag:
            st.ex.flags.add(flag)
        self.emit(st.ex)

    def broken(self, why: str) -> None:
        if self.is_broken:
            return
        self.is_broken = True
        self.stats.add("http2", f"broken_{why}")
        for side in (self.client_side, self.server_side):
            side.state = BROKEN
            side.buf = b""
            side.block = None
            side.skip = 0
        for sid in list(self.streams):
            self._hand_over(sid, "malformed")

    def side_ended(self, side: _Side, reason: str, ts: int) -> None:
        if side.ended:
            return
        side.ended = True
        if not (self.client_side.ended and self.server_side.ended):
            return
        flag = {"fin": "truncated", "rst": "reset", "capture_end": "capture_end"}.get(reason,
                                                                                        reason)
        for sid in list(self.streams):
            st = self.streams[sid]
            if st.ex.response is None:
                st.ex.flags.add("no_response")
            self._hand_over(sid, flag)
