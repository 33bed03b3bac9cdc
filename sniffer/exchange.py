"""Exchanges: one request and its response on one connection, as the parsers saw them.

An ``Exchange`` is the unit everything after the parsers works on (trace context,
correlation, spans). Times are integer nanoseconds of the packets that carried the first and
last byte of each message. It is a plain mutable object while the parser fills it and is
handed on once complete (or once the connection ends without completing it).

Both classes are plain classes with ``__slots__`` (one is built per message, hundreds of
thousands per second): the constructors take the fields in the order listed, positionally
or by name, with the defaults shown; ``repr`` lists the fields, equality is identity, and
they pickle (the capture workers send exchanges to the main process).
"""

from __future__ import annotations

Headers = list[tuple[str, str]]  # lowercased name, value; in message order, bounded


class Message:
    """One request or response: the times of its first and last byte, headers, trailers."""

    __slots__ = ("first_ts", "last_ts", "headers", "trailers", "body_bytes", "complete")
    __match_args__ = __slots__

    def __init__(self, first_ts: int = 0, last_ts: int = 0, headers: Headers | None = None,
                 trailers: Headers | None = None, body_bytes: int = 0,
                 complete: bool = False) -> None:
        self.first_ts = first_ts
        self.last_ts = last_ts
        self.headers: Headers = [] if headers is None else headers
        self.trailers: Headers = [] if trailers is None else trailers
        self.body_bytes = body_bytes
        self.complete = complete

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lowercase)."""
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def __repr__(self) -> str:
        return _repr(self)

    def __getstate__(self) -> list:
        return [getattr(self, n) for n in self.__slots__]

    def __setstate__(self, state: list) -> None:
        for n, v in zip(self.__slots__, state):
            setattr(self, n, v)


class Exchange:
    """One request and its response (an HTTP/1 message pair, or one HTTP/2 stream).

    Fields, in constructor order: ``conn_id``, ``point`` (the CapturePoint), ``client``,
    ``server`` (``(address bytes, port)``), ``protocol`` (``"http/1.1"``, ``"http/1.0"``,
    ``"http/2"``), ``method``, ``target`` (the request-target as sent: origin-form path +
    query, or absolute-form), ``authority``, ``scheme`` (HTTP/2 ``:scheme``; HTTP/1: empty,
    the connection says http), ``status``, ``request`` (a ``Message``), ``response``
    (``Message`` or None), ``flags`` (gap, reset, capture_end, no_response, …), ``dialled``,
    ``stream_id`` (HTTP/2: the stream; pseudo-headers are the fields above, never in
    ``headers``), ``grpc_status`` / ``grpc_message`` (gRPC, content-type application/grpc*:
    grpc-status from trailers or Trailers-Only), ``syn_ts`` / ``synack_ts`` (the connection's
    SYN and SYN-ACK times, when the capture saw its handshake, else 0).
    """

    __slots__ = ("conn_id", "point", "client", "server", "protocol", "method", "target",
                 "authority", "scheme", "status", "request", "response", "flags", "dialled",
                 "stream_id", "grpc_status", "grpc_message", "syn_ts", "synack_ts")
    __match_args__ = __slots__

    def __init__(self, conn_id: int, point: object, client: tuple[bytes, int],
                 server: tuple[bytes, int], protocol: str, method: str = "", target: str = "",
                 authority: str = "", scheme: str = "", status: int = 0,
                 request: Message | None = None, response: Message | None = None,
                 flags: set[str] | None = None, dialled: tuple[bytes, int] | None = None,
                 stream_id: int = 0, grpc_status: int | None = None, grpc_message: str = "",
                 syn_ts: int = 0, synack_ts: int = 0) -> None:
        self.conn_id = conn_id
        self.point = point
        self.client = client
        self.server = server
        self.protocol = protocol
        self.method = method
        self.target = target
        self.authority = authority
        self.scheme = scheme
        self.status = status
        self.request: Message = Message() if request is None else request
        self.response = response
        self.flags: set[str] = set() if flags is None else flags
        self.dialled = dialled
        self.stream_id = stream_id
        self.grpc_status = grpc_status
        self.grpc_message = grpc_message
        self.syn_ts = syn_ts
        self.synack_ts = synack_ts

    @property
    def is_grpc(self) -> bool:
        ct = self.request.header("content-type") or ""
        return ct.startswith("application/grpc")

    @property
    def path(self) -> str:
        t = self.target
        if t.startswith(("http://", "https://")):
            slash = t.find("/", t.find("//") + 2)
            t = t[slash:] if slash >= 0 else "/"
        q = t.find("?")
        return t if q < 0 else t[:q]

    def __repr__(self) -> str:
        return _repr(self)

    def __getstate__(self) -> list:
        return [getattr(self, n) for n in self.__slots__]

    def __setstate__(self, state: list) -> None:
        for n, v in zip(self.__slots__, state):
            setattr(self, n, v)


def _repr(obj: object) -> str:
    fields = ", ".join(f"{n}={getattr(obj, n)!r}" for n in obj.__slots__)  # type: ignore[attr-defined]
    return f"{type(obj).__qualname__}({fields})"


def pack(ex: Exchange, point: object) -> tuple:
    """``ex`` as a tuple of plain values (``point``: what stands for its capture point), for
    sending to another process: pickling plain tuples runs in C, where ``__setstate__`` runs
    a Python loop per object (measured on bench.pcap: 3x less time to dump and load).
    ``unpack`` rebuilds it."""
    rq, rs = ex.request, ex.response
    return (ex.conn_id, point, ex.client, ex.server, ex.protocol, ex.method, ex.target,
            ex.authority, ex.scheme, ex.status,
            (rq.first_ts, rq.last_ts, rq.headers, rq.trailers, rq.body_bytes, rq.complete),
            None if rs is None else (rs.first_ts, rs.last_ts, rs.headers, rs.trailers,
                                     rs.body_bytes, rs.complete),
            ex.flags or None, ex.dialled, ex.stream_id, ex.grpc_status, ex.grpc_message,
            ex.syn_ts, ex.synack_ts)


# (name, value) -> the one tuple this process keeps for it. Unpickling makes new strings for
# every batch; most header fields repeat from message to message, and sharing them keeps the
# exchanges held in the correlator's window about a third smaller. Bounded: cleared when full.
_FIELDS: dict[tuple[str, str], tuple[str, str]] = {}
_FIELDS_MAX = 8192


_LISTS: dict[int, tuple[Headers, Headers]] = {}  # id(unpickled list) -> (it, ours)


def _shared(headers: Headers) -> Headers:
    # one list unpickled for several messages (HTTP/2 repeats share their decoded header
    # list, and pickle keeps that within a batch) stays one list here
    hit = _LISTS.get(id(headers))
    if hit is not None and hit[0] is headers:
        return hit[1]
    known = _FIELDS
    if len(known) >= _FIELDS_MAX:
        known.clear()
    get = known.setdefault
    out = [get(h, h) for h in headers]
    if len(_LISTS) >= 256:
        _LISTS.clear()
    _LISTS[id(headers)] = (headers, out)
    return out


def unpack(t: tuple, point: object) -> Exchange:
    """The exchange ``pack`` made, with ``point`` as its capture point."""
    rq, rs = t[10], t[11]
    return Exchange(t[0], point, t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9],
                    Message(rq[0], rq[1], _shared(rq[2]), rq[3], rq[4], rq[5]),
                    None if rs is None else Message(rs[0], rs[1], _shared(rs[2]), rs[3],
                                                    rs[4], rs[5]),
                    t[12], t[13], t[14], t[15], t[16], t[17], t[18])
