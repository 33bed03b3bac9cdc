"""Protocol detection and the parsers behind it.

``Dispatcher`` is the TCP flow table's consumer factory. Each connection starts with a
detector per direction that buffers the first bytes (Zeek's PIA, mitmproxy's NextLayer),
decides from them — never from port numbers — what the connection speaks, then replays the
buffer into the chosen parser and steps aside (the TCP halves deliver straight to the parser
from then on):

* a request line from the client (or a status line from the server on a mid-stream join):
  HTTP/1.x, parsed by ``http1.Http1Connection``;
* the HTTP/2 connection preface: ``http2``, parsed by ``http2.Http2Connection`` (also after
  an HTTP/1.1 ``Upgrade: h2c``, and on a mid-stream join where a chain of plausible HTTP/2
  frame headers is found);
* a TLS handshake record (or an SSLv2-compatible hello): ``tls``, framed by
  ``tls.TlsConnection`` (records, ClientHello SNI/ALPN, handshake end; never decrypted);
* anything else: ``other``, whose bytes are counted and dropped.
"""

from __future__ import annotations

from collections.abc import Callable

from ..exchange import Exchange
from ..stats import Stats
from ..tcp import Connection
from .http1 import METHODS, Http1Connection, looks_like_request, looks_like_response
from .http2 import Http2Connection, find_frame_start
from .tls import TlsConfig, TlsConnection, TlsSession

__all__ = ["Dispatcher"]

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DETECT_BYTES = 24  # enough for the longest method + SP, and the h2 preface's first line


def detect_client(first: bytes) -> str | None:
    """What a client's first bytes say; None while they could still be a prefix of one."""
    if first.startswith(b"PRI * HTTP/2.0"):
        return "http2"
    if first.startswith(H2_PREFACE[: len(first)]):
        return None  # "PRI * HT…" so far: wait for the rest of the preface's first line
    if looks_like_request(first):
        return "http1"
    if len(first) >= 6 and first[0] == 0x16 and first[1] == 3 and first[5] == 1:
        return "tls"
    if len(first) >= 5 and first[0] & 0x80 and first[2] == 1 and first[3] == 3:
        return "tls"  # an SSLv2-compatible ClientHello (the TLS parser counts and skips it)
    if len(first) < DETECT_BYTES and any(m.startswith(first) for m in METHODS):
        return None
    return "other"


class _Detect:
    __slots__ = ("d", "conn", "is_client", "chunks", "size", "gaps", "ended")

    def __init__(self, d: _ConnDetect, conn: Connection, is_client: bool) -> None:
        self.d = d
        self.conn = conn
        self.is_client = is_client
        self.chunks: list[tuple[str, object, int]] = []
        self.size = 0
        self.ended = False

    def data(self, chunk: bytes, ts: int) -> None:
        self.chunks.append(("data", chunk, ts))
        self.size += len(chunk)
        self.d.decide()

    def gap(self, length: int, ts: int) -> None:
        self.chunks.append(("gap", length, ts))
        self.d.decide()

    def end(self, reason: str, ts: int) -> None:
        self.chunks.append(("end", reason, ts))
        self.ended = True
        self.d.decide(force=True)

    def first(self) -> bytes:
        out = b""
        for kind, v, _ts in self.chunks:
            if kind != "data":
                break
            out += v  # type: ignore[operator]
            if len(out) >= DETECT_BYTES:
                break
        return out


class _ConnDetect:
    def __init__(self, dispatcher: Dispatcher, conn: Connection) -> None:
        self.dispatcher = dispatcher
        self.conn = conn
        self.client = _Detect(self, conn, True)
        self.server = _Detect(self, conn, False)
        self.decided = ""

    def decide(self, force: bool = False) -> None:
        if self.decided:
            return
        c_first, s_first = self.client.first(), self.server.first()
        total = self.client.size + self.server.size
        verdict = detect_client(c_first) if c_first else None
        if verdict is None and s_first and looks_like_response(s_first):
            verdict = "http1"  # the server spoke first: a join mid-connection
        if verdict in (None, "other") and self.conn.roles_inferred:
            # a mid-stream join may start inside a body: look further before giving up
            if total < 2048 and not force:
                return
            verdict = "http1" if self._finds_http() else self._finds_h2()
        if verdict is None:
            if total < 4096 and not force:
                return
            verdict = "other"
        self._commit(verdict)

    def _finds_http(self) -> bool:
        from .http1 import _REQUEST_START, _RESPONSE_START

        c = b"".join(v for k, v, _ in self.client.chunks if k == "data")  # type: ignore[misc]
        s = b"".join(v for k, v, _ in self.server.chunks if k == "data")  # type: ignore[misc]
        return bool(_REQUEST_START.search(c) or _RESPONSE_START.search(s))

    def _finds_h2(self) -> str:
        """A mid-stream join into HTTP/2: both directions (or the only one seen) read as a
        chain of plausible frame headers from some offset."""
        found = 0
        for det in (self.client, self.server):
            data = b"".join(v for k, v, _ in det.chunks if k == "data")  # type: ignore[misc]
            if not data:
                continue
            off, ok = find_frame_start(data)
            if off < 0:
                return "other"
            found += ok  # (a chain still running past the data is no contradiction)
        return "http2" if found else "other"

    def _commit(self, verdict: str) -> None:
        self.decided = verdict
        d = self.dispatcher.for_connection(self.conn)
        d.stats.add("protocols", verdict)
        conn = self.conn
        if verdict == "http1":
            cl, sv = conn.client, conn.server
            h = Http1Connection(conn, d.emit, d.stats, conn.point, (cl.src, cl.sport),
                                (sv.src, sv.sport), conn.id, conn.dialled)
            if conn.roles_inferred:
                h.start_mid_stream()
            h.on_upgrade = lambda ex, conn=conn: d.upgrade(conn, ex)
            targets = (h.client_side, h.server_side)
        elif verdict == "http2":
            cl, sv = conn.client, conn.server
            h2 = Http2Connection(conn, d.emit, d.stats, conn.point, (cl.src, cl.sport),
                                 (sv.src, sv.sport), conn.id, conn.dialled,
                                 mid_stream=conn.roles_inferred and not self._preface())
            targets = (h2.client_side, h2.server_side)
        elif verdict == "tls":
            t = TlsConnection(conn, d.stats, d.emit_tls, config=d.tls_config)
            if d.open_tls is not None:
                d.open_tls(t.session)
            targets = (t.client_side, t.server_side)
        else:
            sink = _Opaque(d.stats, verdict)
            targets = (sink, sink)
        for det, target, half in ((self.client, targets[0], conn.client),
                                  (self.server, targets[1], conn.server)):
            half.consumer = target  # type: ignore[assignment]
            for kind, v, ts in det.chunks:
                getattr(target, kind)(v, ts)
            det.chunks = []


    def _preface(self) -> bool:
        return self.client.first().startswith(b"PRI * HTTP/2.0")


class _Opaque:
    """Bytes of a connection we do not parse: counted, dropped."""

    __slots__ = ("stats", "what", "bytes")

    def __init__(self, stats: Stats, what: str) -> None:
        self.stats = stats
        self.what = what

    def data(self, chunk: bytes, ts: int) -> None:
        pass

    def gap(self, length: int, ts: int) -> None:
        pass

    def end(self, reason: str, ts: int) -> None:
        pass


class Dispatcher:
    """The flow table's consumer factory: detection, then the protocol's parser."""

    def __init__(self, emit: Callable[[Exchange], None], stats: Stats,
                 emit_tls: Callable[[TlsSession], None] | None = None, *,
                 open_tls: Callable[[TlsSession], None] | None = None,
                 tls_config: TlsConfig | None = None) -> None:
        """``emit_tls`` gets each TLS session when its connection has ended; ``open_tls``, if
        given, gets it as soon as the connection is known to be TLS (it fills in place:
        the mesh-hop matcher reads records of connections that are still open)."""
        self.emit = emit
        self.stats = stats
        self.emit_tls = emit_tls or (lambda session: None)
        self.open_tls = open_tls
        self.tls_config = tls_config

    def for_connection(self, conn: Connection) -> Dispatcher:
        """A view whose ``emit`` stamps each exchange with its connection's handshake times
        (the correlator needs them for a proxy's upstream connect time)."""
        view = Dispatcher.__new__(Dispatcher)
        view.stats = self.stats
        view.emit_tls = self.emit_tls
        view.open_tls = self.open_tls
        view.tls_config = self.tls_config
        emit = self.emit

        def stamped(ex: Exchange) -> None:
            ex.syn_ts, ex.synack_ts = conn.syn_ts, conn.synack_ts
            emit(ex)

        view.emit = stamped
        return view

    def upgrade(self, conn: Connection, ex: Exchange) -> tuple[object, object] | None:
        """An HTTP/1.1 ``101 Switching Protocols``: h2c continues as HTTP/2 (stream 1 is the
        upgraded request); anything else (WebSocket, …) stays opaque."""
        resp = ex.response
        up = (resp.header("upgrade") if resp is not None else None) or ""
        if up.strip().lower() != "h2c":
            return None
        self.stats.add("protocols", "http2_upgrade")
        h2 = Http2Connection(conn, self.emit, self.stats, conn.point, ex.client, ex.server,
                             conn.id, conn.dialled, upgraded=ex)
        return h2.client_side, h2.server_side

    def __call__(self, conn: Connection) -> tuple[_Detect, _Detect]:
        d = _ConnDetect(self, conn)
        return d.client, d.server
