"""Passive HTTP/1.x: both directions of one connection, bytes and timestamps in, exchanges out.

Rules of this module
--------------------
* Sans-IO: ``Http1Connection`` is fed by the TCP layer through two ``StreamConsumer``s
  (``client_side``, ``server_side``) and hands finished ``Exchange``s to a sink. Nothing here
  reads sockets or clocks: every time comes from the packet that carried the bytes.
* Framing follows RFC 9112 §6.3 as an observer of both directions: responses are matched to
  requests in order (pipelining), a response's body depends on the request method (HEAD,
  CONNECT) and its status (1xx, 204, 304), then Transfer-Encoding (chunked last: chunked,
  else close-delimited), then Content-Length, else close-delimited (responses) or empty
  (requests). 1xx responses other than 101 are interim and do not consume the request.
  ``101 Switching Protocols`` hands the rest of the connection to the next protocol's parser
  when ``on_upgrade`` offers one (h2c), else turns it opaque; after a 2xx answer to
  ``CONNECT`` plaintext HTTP in the tunnel is parsed, anything else is opaque.
* Bodies are counted and skipped, never stored. Header blocks are bounded
  (``MAX_HEAD_BYTES``, ``MAX_HEADERS``): larger is an anomaly and a resync.
* Gaps: inside a Content-Length or chunk body the gap is counted against the body and
  parsing continues in step; anywhere else the message in progress is flagged ``gap`` and
  the direction resynchronises at the next plausible message start (a request line, or a
  status line), counting the bytes it skipped.
* Anomalies are counted in ``Stats`` under stage ``http1`` with a reason (Zeek "weird"
  style) and never raise out of this module.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable

from ..exchange import Exchange, Headers, Message
from ..stats import Stats

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 256
MAX_CHUNK_LINE = 1024
MAX_PENDING = 100  # pipelined requests awaiting responses (Zeek's max_pending_requests)

_END_OF_HEAD = re.compile(rb"\r?\n\r?\n")
# Lenient, as tshark and Zeek are: any method token, a target that may contain spaces, and
# a version that may be odd ("HTTP/1.") or missing (HTTP/0.9 style, taken as 1.0).
_REQUEST_LINE = re.compile(
    rb"([!-~]{1,24}) +(.*?)(?: +HTTP/([0-9]\.?[0-9]?))? *\r?\n", re.DOTALL)
# The version word of another protocol that borrows HTTP's request line (SIP, RTSP, ...).
_FOREIGN_VERSION = re.compile(rb" (?!HTTP/)[A-Z][A-Z0-9-]{1,9}/[0-9]\.[0-9]$")
GENERIC_REQUEST = re.compile(rb"[A-Z][A-Z0-9_-]{2,23} (?:/|\*|https?://)")
# Any HTTP/d.d version on a status line: servers (and evasion tests) send 1.2, 2.0 and even
# 1.01 or 1.10 here, and clients accept it; the exchange keeps the request's version. The
# parts may be split by any run of SP/HTAB (RFC 9112 §4 lets a recipient parse on
# whitespace-delimited words), and a bare CR counts as SP (RFC 9112 §2.2), so
# "HTTP/1.1 200\rTransfer-Encoding: chunked" is a 200 whose reason phrase is the rest.
_STATUS_LINE = re.compile(
    rb"HTTP/([0-9]{1,3}\.[0-9]{1,3})[ \t]+([0-9]{3})(?:[ \t\r][^\n]*)?\r?\n")
_REQUEST_START = re.compile(
    rb"(?:GET|POST|PUT|HEAD|DELETE|OPTIONS|PATCH|CONNECT|TRACE|PROPFIND|REPORT|MKCOL|"
    rb"PROPPATCH|COPY|MOVE|LOCK|UNLOCK|SEARCH|PURGE) [!-~]+ HTTP/1\.[01]\r?\n")
_RESPONSE_START = re.compile(rb"HTTP/[0-9]{1,3}\.[0-9]{1,3}[ \t]+[0-9]{3}[ \t\r\n]")
METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ",
           b"CONNECT ", b"TRACE ", b"PROPFIND ", b"REPORT ", b"MKCOL ", b"PROPPATCH ",
           b"COPY ", b"MOVE ", b"LOCK ", b"UNLOCK ", b"SEARCH ", b"PURGE ")

# direction states
(HEAD, BODY, CHUNK_SIZE, CHUNK_DATA, CHUNK_CRLF, TRAILERS, CLOSE, OPAQUE, RESYNC, TUNNEL,
 UPGRADED) = range(11)


def _end_of_head(data: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    """``_END_OF_HEAD.search(data, pos)`` as (start, end), with two ``find``s: the first LF
    followed by LF or CRLF ends the head, and a CR before that LF belongs to the match."""
    i = data.find(b"\n\r\n", pos)
    j = data.find(b"\n\n", pos, i + 1) if i >= 0 else data.find(b"\n\n", pos)
    if j >= 0:
        i, end = j, j + 2
    elif i >= 0:
        end = i + 3
    else:
        return None
    return (i - 1 if i > pos and data[i - 1] == 13 else i), end


def looks_like_request(first: bytes) -> bool:
    return first.startswith(METHODS) or GENERIC_REQUEST.match(first) is not None


def looks_like_response(first: bytes) -> bool:
    return first.startswith((b"HTTP/1.0 ", b"HTTP/1.1 "))


# header line -> its (name, value): most lines repeat byte for byte from message to message
# ("Server: nginx", "Content-Type: application/json", "Host: …"), so a repeat costs one dict
# lookup instead of partition/strip/lower, and every message shares one tuple (and its two
# strings) instead of holding its own: about a third less memory per HTTP/1 exchange held in
# the correlator's window. Bounded: cleared when full; long lines are not kept.
_LINES: dict[str, tuple[str, str]] = {}
_LINES_MAX = 4096
_LINE_MAX_LEN = 200


def parse_headers(lines: list[str], stats: Stats) -> Headers:
    """Header field lines (already latin-1 text, CR stripped) -> [(lowercased name, value)],
    obs-fold continuation lines joined to the previous value (RFC 9112 §5.2)."""
    out: Headers = []
    append = out.append
    known = _LINES
    for raw in lines:
        hv = known.get(raw)
        if hv is not None and len(out) < MAX_HEADERS:
            append(hv)
            continue
        name, colon, value = raw.partition(":")
        if colon and name and name[0] not in " \t" and len(out) < MAX_HEADERS:
            hv = (name.strip().lower(), value.strip())
            if len(raw) <= _LINE_MAX_LEN:
                if len(known) >= _LINES_MAX:
                    known.clear()
                known[raw] = hv
            append(hv)
            continue
        if not colon or not name or name[0] in " \t":
            if raw[:1] in (" ", "\t") and out:
                n, v = out[-1]
                out[-1] = (n, v + " " + raw.strip())
                stats.add("http1", "obs_fold")
            elif raw:
                stats.add("http1", "bad_header_line")
            continue
        if len(out) >= MAX_HEADERS:
            stats.add("http1", "too_many_headers")
            break
        out.append((name.strip().lower(), value.strip()))
    return out


def body_framing(is_request: bool, method: str, status: int,
                 headers: Headers) -> tuple[str, int]:
    """RFC 9112 §6.3: ("none"|"length"|"chunked"|"close"|"tunnel", length)."""
    if not is_request:
        if method == "HEAD" or 100 <= status < 200 or status in (204, 304):
            return ("tunnel", 0) if status == 101 else ("none", 0)
        if method == "CONNECT" and 200 <= status < 300:
            return "tunnel", 0
    te = cl = None
    for name, value in headers:
        if name == "transfer-encoding":
            te = value if te is None else te + "," + value
        elif name == "content-length":  # repeated fields: all values must agree
            cl = value if cl is None else cl + "," + value
    if te is not None:
        last = te.rsplit(",", 1)[-1].strip().lower()
        if last == "chunked":
            return "chunked", 0
        return ("close", 0) if not is_request else ("bad", 0)
    if cl is not None:
        # 1*DIGIT, leading zeros allowed ("0050" is 50); any other value is an error
        if "," not in cl:  # (one value: the set below, without building it)
            v = cl.strip()
            v = (v.lstrip("0") or "0") if v else ""
            if v.isascii() and v.isdigit() and len(v) < 19:
                n = int(v)
                return ("length", n) if n else ("none", 0)
            return "bad", 0
        values = {(v.lstrip("0") or "0") if v else "" for v in map(str.strip, cl.split(","))}
        if len(values) == 1:
            v = values.pop()
            if v.isascii() and v.isdigit() and len(v) < 19:
                n = int(v)
                return ("length", n) if n else ("none", 0)
        return "bad", 0
    return ("none", 0) if is_request else ("close", 0)


class _Side:
    """One direction's parser state; ``is_request`` for client -> server."""

    __slots__ = ("conn", "is_request", "state", "buf", "remaining", "msg", "ex", "tail",
                 "skipped", "first_ts", "target")

    def __init__(self, conn: Http1Connection, is_request: bool) -> None:
        self.conn = conn
        self.is_request = is_request
        self.state = HEAD
        self.buf = bytearray()
        self.remaining = 0
        self.msg: Message | None = None
        self.ex: Exchange | None = None
        self.tail = b""
        self.skipped = 0
        self.first_ts = 0
        self.target: object = None  # after an upgrade: the next protocol's consumer

    # -- StreamConsumer ----------------------------------------------------------------------
    def data(self, chunk: bytes, ts: int) -> None:
        try:
            self._data(chunk, ts)
        except Exception:  # noqa: BLE001 - a parser bug must not stop the pipeline
            self.conn.stats.add("http1", "internal_error")
            self.state = OPAQUE

    def gap(self, length: int, ts: int) -> None:
        try:
            self._gap(length, ts)
        except Exception:  # noqa: BLE001 - a parser bug must not stop the pipeline
            self.conn.stats.add("http1", "internal_error")
            self.state = OPAQUE

    def _gap(self, length: int, ts: int) -> None:
        st = self.state
        c = self.conn
        if st == UPGRADED:
            self.target.gap(length, ts)  # type: ignore[attr-defined]
            return
        if self.msg is not None:
            self._flag("gap")
        if st == BODY:
            self.msg.body_bytes += min(length, self.remaining)  # type: ignore[union-attr]
            self.remaining -= length
            if self.remaining >= 0:
                if self.remaining == 0:
                    self._message_done(ts)
                return
            c.stats.add("http1", "gap_lost_sync")
        elif st == CHUNK_DATA and length <= self.remaining:
            self.remaining -= length
            self.msg.body_bytes += length  # type: ignore[union-attr]
            if not self.remaining:
                self.state = CHUNK_CRLF
                self.remaining = 2
            return
        elif st in (CLOSE, OPAQUE):
            if self.msg is not None:
                self.msg.body_bytes += length
            return
        elif st == HEAD and not self.buf and self.msg is None:
            pass  # between messages: nothing lost but the bytes themselves
        else:
            c.stats.add("http1", "gap_in_head")
        self._abandon(ts)
        self.state = RESYNC
        self.buf.clear()
        self.tail = b""

    def end(self, reason: str, ts: int) -> None:
        try:
            if self.state == UPGRADED:
                self.target.end(reason, ts)  # type: ignore[attr-defined]
            self.conn.side_ended(self, reason, ts)
        except Exception:  # noqa: BLE001 - a parser bug must not stop the pipeline
            self.conn.stats.add("http1", "internal_error")

    # -- parsing -----------------------------------------------------------------------------
    def _data(self, chunk: bytes, ts: int) -> None:
        pos = 0
        n = len(chunk)
        while pos < n:
            st = self.state
            if st == HEAD:
                buf = self.buf
                if not buf:
                    while pos < n and chunk[pos] in (13, 10):  # empty lines between messages
                        pos += 1
                    if pos == n:
                        return
                    self.first_ts = ts
                    if type(chunk) is bytes:
                        # nothing held back: look for the head's end in the chunk itself
                        m = _end_of_head(chunk, pos)
                        if m is not None:
                            if m[0] - pos > MAX_HEAD_BYTES:
                                self.conn.stats.add("http1", "head_too_large")
                                self._to_resync(b"")
                                pos = m[1]
                                continue
                            head = chunk[pos:m[0]]
                            pos = m[1]
                            self._head(head, ts)
                            continue
                prev = len(buf)
                buf += chunk[pos:] if pos else chunk
                m = _end_of_head(buf, max(0, prev - 3))
                if m is None:
                    if len(buf) > MAX_HEAD_BYTES:
                        self.conn.stats.add("http1", "head_too_large")
                        self._to_resync(b"")
                    return
                pos += m[1] - prev
                if m[0] > MAX_HEAD_BYTES:  # skip it whole, then look for the next one
                    self.conn.stats.add("http1", "head_too_large")
                    self._to_resync(b"")
                    continue
                head = bytes(buf[: m[0]])
                buf.clear()
                self._head(head, ts)
            elif st == BODY:
                take = min(self.remaining, n - pos)
                self.remaining -= take
                self.msg.body_bytes += take  # type: ignore[union-attr]
                pos += take
                if not self.remaining:
                    self._message_done(ts)
            elif st == CHUNK_DATA:
                take = min(self.remaining, n - pos)
                self.remaining -= take
                self.msg.body_bytes += take  # type: ignore[union-attr]
                pos += take
                if not self.remaining:
                    self.state = CHUNK_CRLF
                    self.remaining = 2
            elif st == CHUNK_CRLF:
                # the CRLF after chunk data; tolerate a bare LF
                b = chunk[pos]
                if b == 13 and self.remaining == 2:
                    self.remaining = 1
                    pos += 1
                elif b == 10:
                    pos += 1
                    self.state = CHUNK_SIZE
                else:
                    self.conn.stats.add("http1", "bad_chunk_crlf")
                    self.state = CHUNK_SIZE
            elif st == CHUNK_SIZE or st == TRAILERS:
                nl = chunk.find(b"\n", pos)
                if nl < 0:
                    self.buf += chunk[pos:]
                    if len(self.buf) > (MAX_CHUNK_LINE if st == CHUNK_SIZE else MAX_HEAD_BYTES):
                        self.conn.stats.add("http1", "bad_chunk_size")
                        self._to_resync(b"")
                    return
                self.buf += chunk[pos:nl]
                pos = nl + 1
                line = bytes(self.buf).rstrip(b"\r")
                self.buf.clear()
                if st == CHUNK_SIZE:
                    self._chunk_size(line, ts)
                elif line:
                    self.msg.trailers += parse_headers(  # type: ignore[union-attr]
                        [line.decode("latin-1")], self.conn.stats)
                else:
                    self._message_done(ts)
            elif st == TUNNEL:
                # after CONNECT 2xx: plaintext HTTP through the tunnel is parsed, else opaque
                c = self.conn
                first = bytes(self.buf) + chunk[pos : pos + 24]
                if self.is_request and len(first) < 24 and not looks_like_request(first) \
                        and any(m.startswith(first) for m in METHODS):
                    self.buf += chunk[pos:]  # "GE": a method split over segments, or not
                    return
                if self.is_request and looks_like_request(first):
                    c.stats.add("http1", "tunnel_http")
                    c.client_side.state = c.server_side.state = HEAD
                    if self.buf:  # replay the bytes held back while deciding
                        chunk, pos = bytes(self.buf) + chunk[pos:], 0
                        n = len(chunk)
                        self.buf.clear()
                else:
                    self.buf.clear()
                    if self.is_request:
                        c.go_opaque("connect")
                    else:
                        c.opaque_bytes += n - pos
                        return
            elif st == UPGRADED:
                self.target.data(chunk[pos:] if pos else chunk, ts)  # type: ignore[attr-defined]
                return
            elif st == CLOSE or st == OPAQUE:
                if self.msg is not None:
                    self.msg.body_bytes += n - pos
                    self.msg.last_ts = ts
                else:
                    self.conn.opaque_bytes += n - pos
                return
            else:  # RESYNC
                data = self.tail + (chunk[pos:] if pos else chunk)
                pat = _REQUEST_START if self.is_request else _RESPONSE_START
                m = pat.search(data)
                if m is None:
                    keep = min(len(data), 40)  # a start split across chunks
                    self.skipped += len(data) - keep
                    self.tail = data[-keep:] if keep else b""
                    return
                self.skipped += m.start()
                self.conn.stats.add("http1", "resync")
                self.conn.stats.add("http1", "resync_skipped_bytes", self.skipped)
                self.skipped = 0
                self.tail = b""
                self.state = HEAD
                chunk, pos = data[m.start() :], 0
                n = len(chunk)

    def _to_resync(self, rest: bytes) -> None:
        """A parse error: the message in progress is handed over flagged ``malformed``."""
        self._abandon(0, "malformed")
        self.buf.clear()
        self.state = RESYNC
        self.tail = rest

    def _flag(self, flag: str) -> None:
        if self.ex is not None:
            self.ex.flags.add(flag)

    def _abandon(self, ts: int, why: str = "gap") -> None:
        """The message in progress cannot be completed: hand over what we have."""
        if self.ex is not None and self.msg is not None:
            self.ex.flags.add(why)
            if self.is_request:
                self.msg.last_ts = self.msg.last_ts or ts
            else:
                self.conn.response_done(self.ex)
        self.msg = None
        self.ex = None

    def _head(self, head: bytes, ts: int) -> None:
        c = self.conn
        # (the same lines as head.decode("latin-1").replace("\r\n", "\n").split("\n"): no
        # CRLF pair straddles the first LF)
        nl = head.find(b"\n")
        if nl < 0:
            first = head.rstrip(b"\r")
            lines: list[str] = []
        else:
            first = head[:nl].rstrip(b"\r")
            lines = head[nl + 1:].decode("latin-1").replace("\r\n", "\n").split("\n")
        if self.is_request:
            parts = first.split(b" ")
            if (len(parts) == 3 and (parts[2] == b"HTTP/1.1" or parts[2] == b"HTTP/1.0")
                    and parts[1] and len(parts[0]) <= 24 and parts[0].isalpha()):
                # "METHOD SP target SP HTTP/1.x", the commonest: what _REQUEST_LINE matches
                # in it, without the regex (its lazy target backtracks over every byte)
                method = parts[0].decode("latin-1")
                target = parts[1]
                version = parts[2][5:]
            else:
                m = _REQUEST_LINE.match(first + b"\n")
                if m is None:
                    c.stats.add("http1", "bad_request_line")
                    self._to_resync(b"")
                    return
                method = m.group(1).decode("latin-1")
                target = m.group(2)
                version = m.group(3) or b""
            if first == b"PRI * HTTP/2.0":
                # the HTTP/2 preface (after CONNECT, or an h2c upgrade whose 101 we missed)
                c.stats.add("http1", "h2_preface")
                c.go_opaque("h2_preface")
                return
            if not version:
                if _FOREIGN_VERSION.search(first):
                    # "OPTIONS sip:x@y SIP/2.0": not HTTP at all; nothing here is ours
                    c.stats.add("http1", "foreign_protocol")
                    c.go_opaque("foreign_protocol")
                    return
                last = first.rsplit(b" ", 1)[-1]
                if (last == b"HTTP" or last.startswith(b"HTTP/")) and first.count(b" ") >= 2:
                    # a version was meant and botched ("T / HTTP"): cruft, not a request
                    c.stats.add("http1", "bad_request_line")
                    self._to_resync(b"")
                    return
            if version != b"1.1" and version != b"1.0":
                c.stats.add("http1", "odd_request_version")
            msg = Message(self.first_ts, ts, parse_headers(lines, c.stats))
            ex = c.new_exchange("http/1.1" if version == b"1.1" else "http/1.0", method,
                                target.decode("latin-1") or "/", msg)
            self.ex, self.msg = ex, msg
            kind, length = body_framing(True, method, 0, msg.headers)
        else:
            if (first[:9] in (b"HTTP/1.1 ", b"HTTP/1.0 ") and len(first) >= 12
                    and first[9:12].isdigit()
                    and (len(first) == 12 or first[12] in b" \t\r")):
                # "HTTP/1.x ddd[ reason]": what _STATUS_LINE matches in it, without the regex
                status = int(first[9:12])
                version = first[5:8]
            else:
                m = _STATUS_LINE.match(first + b"\n")
                if m is None:
                    c.stats.add("http1", "bad_status_line")
                    self._to_resync(b"")
                    return
                status = int(m.group(2))
                version = m.group(1)
            msg = Message(self.first_ts, ts, parse_headers(lines, c.stats))
            ex = c.match_response(status, msg, "http/1.0" if version == b"1.0" else "http/1.1")
            self.ex, self.msg = ex, msg
            kind, length = body_framing(False, ex.method, status, msg.headers)
            if 100 <= status < 200 and status != 101:
                # interim: does not answer the request; the final response follows
                self.msg, self.ex = None, None
                self.state = HEAD
                return
        if kind == "length":
            self.state, self.remaining = BODY, length
        elif kind == "chunked":
            self.state = CHUNK_SIZE
        elif kind == "close":
            self.state = CLOSE
        elif kind == "tunnel":
            if ex.status == 101 and c.upgrade(ex):
                return  # the upgraded protocol's parser owns the exchange now
            self._message_done(ts)
            if ex.status == 101:
                c.go_opaque("upgrade")
            else:
                c.client_side.state = c.server_side.state = TUNNEL
            return
        elif kind == "bad":
            c.stats.add("http1", "bad_framing")
            self._message_done(ts)
            c.go_opaque("bad_framing")
            return
        else:
            self._message_done(ts)

    def _chunk_size(self, line: bytes, ts: int) -> None:
        size = line.split(b";", 1)[0].strip()
        try:
            n = int(size, 16) if size else -1
        except ValueError:
            n = -1
        if n < 0 or len(size) > 15:
            self.conn.stats.add("http1", "bad_chunk_size")
            self._to_resync(b"")
            return
        if n == 0:
            self.state = TRAILERS
        else:
            self.state, self.remaining = CHUNK_DATA, n

    def _message_done(self, ts: int) -> None:
        msg, ex = self.msg, self.ex
        self.state = HEAD
        self.msg = self.ex = None
        if msg is None or ex is None:
            return
        msg.last_ts = ts
        msg.complete = True
        if not self.is_request:
            self.conn.response_done(ex)


class Http1Connection:
    """Both directions of one TCP connection speaking HTTP/1.x."""

    def __init__(self, conn: object, emit: Callable[[Exchange], None], stats: Stats,
                 point: object, client: tuple[bytes, int], server: tuple[bytes, int],
                 conn_id: int, dialled: tuple[bytes, int] | None = None) -> None:
        self.emit = emit
        self.stats = stats
        self.point = point
        self.client = client
        self.server = server
        self.conn_id = conn_id
        self.dialled = dialled
        self.client_side = _Side(self, True)
        self.server_side = _Side(self, False)
        self.pending: deque[Exchange] = deque()  # requests awaiting a response head
        self.opaque = ""
        self.opaque_bytes = 0
        self._ended: set[bool] = set()
        # Called with the exchange of a ``101 Switching Protocols``; returns the (client,
        # server) consumers of the protocol the connection switched to (which then owns the
        # exchange), or None: the rest of the connection is opaque.
        self.on_upgrade: Callable[[Exchange], tuple[object, object] | None] | None = None

    def upgrade(self, ex: Exchange) -> bool:
        """Hand the rest of both directions to the upgraded protocol's parser, if it takes
        them (and the exchange: for h2c, the request is stream 1 of the new connection)."""
        if self.on_upgrade is None:
            return False
        targets = self.on_upgrade(ex)
        if targets is None:
            return False
        for side, target in zip((self.client_side, self.server_side), targets):
            side.state = UPGRADED
            side.target = target
            side.buf.clear()
            side.msg = side.ex = None
        return True

    def start_mid_stream(self) -> None:
        """A capture that joined mid-connection: find the first message start first."""
        self.client_side.state = RESYNC
        self.server_side.state = RESYNC

    def new_exchange(self, protocol: str, method: str, target: str, msg: Message) -> Exchange:
        ex = Exchange(self.conn_id, self.point, self.client, self.server, protocol, method,
                      target, "", "", 0, msg, None, None, self.dialled)
        host = msg.header("host")
        if host is not None:
            ex.authority = host
        elif target.startswith(("http://", "https://")):
            ex.authority = target.split("/", 3)[2]
        if len(self.pending) >= MAX_PENDING:
            self.stats.add("http1", "excessive_pipelining")
            old = self.pending.popleft()
            old.flags.add("no_response")
            self.emit(old)
        self.pending.append(ex)
        return ex

    def match_response(self, status: int, msg: Message, protocol: str) -> Exchange:
        if self.pending:
            ex = self.pending[0]
            if not (100 <= status < 200 and status != 101):
                self.pending.popleft()
        else:
            # a response with no request seen: mid-stream join, or the request was lost
            self.stats.add("http1", "response_without_request")
            ex = Exchange(self.conn_id, self.point, self.client, self.server, protocol,
                          dialled=self.dialled)
            ex.flags.add("no_request")
            if 100 <= status < 200 and status != 101:
                return ex
        if 100 <= status < 200 and status != 101:
            ex.flags.add(f"interim_{status}")
            return ex
        ex.status = status
        ex.response = msg
        return ex

    def response_done(self, ex: Exchange) -> None:
        """The response is finished, or can't be (the caller has flagged why)."""
        self.emit(ex)

    def go_opaque(self, why: str) -> None:
        self.opaque = why
        self.stats.add("http1", f"opaque_{why}")
        for side in (self.client_side, self.server_side):
            side.state = OPAQUE
            side.buf.clear()

    def side_ended(self, side: _Side, reason: str, ts: int) -> None:
        if side.is_request in self._ended:
            return
        self._ended.add(side.is_request)
        flag = {"fin": "", "rst": "reset", "capture_end": "capture_end"}.get(reason, reason)
        if side.msg is not None and side.ex is not None:
            if side.state == CLOSE and reason == "fin":
                # a close-delimited body ends at the FIN; its last byte came before it
                side._message_done(side.msg.last_ts or ts)
            else:
                side.ex.flags.add(flag or "truncated")  # ended before its framing did
                side.msg.last_ts = side.msg.last_ts or ts
                if not side.is_request:
                    side.msg, ex = None, side.ex
                    side.ex = None
                    self.response_done(ex)
        if len(self._ended) == 2:
            while self.pending:
                ex = self.pending.popleft()
                ex.flags.add("no_response")
                if flag:
                    ex.flags.add(flag)
                self.emit(ex)
