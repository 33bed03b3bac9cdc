"""Exchanges: one request and its response on one connection, as the parsers saw them.

An ``Exchange`` is the unit everything after the parsers works on (trace context,
correlation, spans). Times are integer nanoseconds of the packets that carried the first and
last byte of each message. It is a plain mutable object while the parser fills it and is
handed on once complete (or once the connection ends without completing it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

Headers = list[tuple[str, str]]  # lowercased name, value; in message order, bounded


@dataclass(slots=True, eq=False)
class Message:
    first_ts: int = 0
    last_ts: int = 0
    headers: Headers = field(default_factory=list)
    trailers: Headers = field(default_factory=list)
    body_bytes: int = 0
    complete: bool = False

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lowercase)."""
        for k, v in self.headers:
            if k == name:
                return v
        return None


@dataclass(slots=True, eq=False)
class Exchange:
    conn_id: int
    point: object  # CapturePoint
    client: tuple[bytes, int]
    server: tuple[bytes, int]
    protocol: str  # "http/1.1", "http/1.0", "http/2"
    method: str = ""
    target: str = ""  # request-target as sent (origin-form path + query, or absolute-form)
    authority: str = ""
    scheme: str = ""  # HTTP/2 :scheme (HTTP/1: empty, the connection says http)
    status: int = 0
    request: Message = field(default_factory=Message)
    response: Message | None = None
    flags: set[str] = field(default_factory=set)  # gap, reset, capture_end, no_response, …
    dialled: tuple[bytes, int] | None = None
    # HTTP/2: the stream; pseudo-headers are the fields above, never in ``headers``
    stream_id: int = 0
    # gRPC (content-type application/grpc*): grpc-status from trailers or Trailers-Only
    grpc_status: int | None = None
    grpc_message: str = ""
    # the connection's SYN and SYN-ACK times, when the capture saw its handshake (else 0)
    syn_ts: int = 0
    synack_ts: int = 0

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
