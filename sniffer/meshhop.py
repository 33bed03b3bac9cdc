"""Mesh hops: a request from one meshed pod to another through two sidecars whose link is
mTLS, measured from the two plaintext legs and the TLS records between them.

What is on the wire (``../shared/DESIGN.md``, "mTLS legs")::

    caller pod A                                              callee pod B
    app ──L1 (A's lo)──▶ outbound sidecar ══T (TLS, eth0)══▶ inbound sidecar ──L2 (B's lo)──▶ app

* ``L1``: the app's request as the outbound sidecar received it, on A's ``lo`` after the
  outbound REDIRECT: its server is the sidecar (``127.0.0.1:4140``) and it remembers the
  address the app dialled (``Exchange.dialled``, ``B:port``).
* ``T``: the TLS connection the outbound sidecar opened to ``B:port`` (Linkerd dials the
  original destination; B's inbound REDIRECT hands it to its sidecar), seen at A's eth0 and
  at B's eth0: one ``TlsSession`` per capture point, records in both directions with the
  times of their first and last bytes, nothing decrypted.
* ``L2``: the request as the inbound sidecar handed it to the app, on B's ``lo``: loopback
  to loopback, the same trace id, method and path as L1, nested inside L1 in time.

The plain correlator pairs L1 with L2 by trace context, as if one proxy sat between them;
``MeshMatcher.offer_hop`` recognises that pairing (the downstream leg was redirected to a
non-loopback destination, the upstream leg runs loopback to loopback: they cannot be one
proxy's two legs) and takes it over. Then, with ``a`` the time at A's eth0 and ``b`` at B's:

* request records: application-data records client → server on a TLS connection from
  L1's client address to L1's dialled address with ``a ≥ L1.request.first`` (the outbound
  sidecar cannot forward what it has not received) and ``b ≤ L2.request.first`` (the inbound
  sidecar cannot hand on what has not arrived). The request's first record is one of them;
  with one request in the window it is the earliest.
* response records: server → client with ``b ≥ L2.response.first`` and
  ``a ≤ L1.response.first``; the response's first record is the earliest.
* outbound dwell: request ``a(req) − L1.request.first − connect``, response
  ``L1.response.first − a(resp)``; inbound dwell: request ``L2.request.first − b(req) −
  connect``, response ``b(resp) − L2.response.first``; the network: ``b(req) − a(req)`` and
  ``a(resp) − b(resp)``. ``connect`` is a connection's setup when the sidecar opened it for
  this request: for the outbound sidecar, from the TLS connection's SYN (else ClientHello) to
  its first request record (TCP and TLS handshakes: network round trips and the peers' key
  exchange); for the inbound, L2's TCP handshake (and for the first HTTP/2 stream on a
  connection, from its SYN to its request: the preface and settings) when it dialled the app
  after the request record arrived.
* The same record at A and at B is the same position in the direction's record sequence
  (both captures saw the same TCP stream); with one capture point only, ``a = b``.
* **Ambiguity.** A single candidate record is certain. Several are told apart only when no
  other request between the same two pods has a window that overlaps this one; with one
  (concurrent requests: several in flight on one multiplexed connection, or on several
  connections at once) they cannot be told apart by timing. The hop then says so
  (``ambiguous``) and carries bounds: the dwell for the earliest and for the latest
  candidate record; the estimate is the earliest. The truth is always inside the bounds,
  because the true first record is always among the candidates.
* **Caller side only** (the callee on another node, only A visible): an L1 that is in no hop
  and was redirected to a non-loopback destination with TLS connections to it gets the
  outbound dwell alone: request records in ``[L1.request.first, L1.response.first]``,
  response records from the earliest request record to ``L1.response.first``.
* Streaming and bounded: in one process the parser hands each TLS session over when its
  connection starts (``open_tls``) and fills it in place, with a rolling window of its
  latest records, so a pending hop is resolved ``settle_ns`` (1 s) of capture time after it
  ended, on long-lived connections too. Where only ended sessions arrive (fanout workers
  send a session when its connection ends), a hop waits ``hold_ns`` (30 s). Also at
  ``finish()``, or when more than ``max_pending`` wait (the oldest first). One that finds no
  TLS connection is handed back as plain exchanges. Ended TLS sessions are kept for
  ``hold_ns`` after their end, at most ``max_sessions``.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .correlate import Hop, Leg
from .exchange import Exchange
from .proto.tls import APPLICATION_DATA, F_HANDSHAKE, TlsSession
from .stats import Stats
from .tracecontext import TraceContext

HOLD_NS = 30_000_000_000
SETTLE_NS = 1_000_000_000
MAX_PENDING = 20_000
MAX_SESSIONS = 20_000


def _loop(addr: bytes) -> bool:
    return len(addr) == 4 and addr[0] == 127 or addr == b"\0" * 15 + b"\1"


def _ep(ep: tuple[bytes, int]) -> str:
    ip = ipaddress.ip_address(ep[0])
    return f"[{ip}]:{ep[1]}" if ip.version == 6 else f"{ip}:{ep[1]}"


@dataclass(slots=True)
class Dwell:
    """One sidecar's dwell: the estimate and, when ambiguous, the bounds (ns)."""

    request_ns: int
    response_ns: int
    request_min_ns: int
    request_max_ns: int
    response_min_ns: int
    response_max_ns: int
    connect_ns: int = 0


@dataclass(slots=True, eq=False)
class MeshHop:
    down: Leg  # L1: the caller app -> its outbound sidecar (caller's lo)
    up: Leg | None  # L2: the callee's inbound sidecar -> its app (callee's lo), or unseen
    client: tuple[bytes, int]  # the TLS connection that carried the request (the earliest
    server: tuple[bytes, int]  # candidate's), as seen on the wire
    sni: str | None
    alpn: str | None
    tls_version: str
    ambiguous: bool
    candidates: int  # request records that fitted the window
    connections: int  # TLS connections they were on
    outbound: Dwell
    inbound: Dwell | None
    # when the request's first record and the response's first record were seen at the
    # caller's and the callee's side (a, b); the response burst's end at each side
    req_a: int
    req_b: int
    resp_a: int
    resp_b: int
    resp_end_a: int
    resp_end_b: int
    points: list[str] = field(default_factory=list)  # capture points of the TLS connection

    @property
    def ctx(self) -> TraceContext | None:
        return self.down.ctx

    @property
    def outbound_address(self) -> str:
        return _ep(self.down.ex.server)

    @property
    def inbound_address(self) -> str:
        return _ep(self.server)

    @property
    def network_request_ns(self) -> int:
        return self.req_b - self.req_a

    @property
    def network_response_ns(self) -> int:
        return self.resp_a - self.resp_b


class ProxyDwell:
    """What the proxies summary needs of one sidecar's part of a mesh hop."""

    __slots__ = ("proxy_address", "match", "request_dwell_ns", "response_dwell_ns")

    def __init__(self, address: str, request_ns: int, response_ns: int) -> None:
        self.proxy_address = address
        self.match = "tls-timing"
        self.request_dwell_ns = request_ns
        self.response_dwell_ns = response_ns


class _Records:
    """The application-data records of one direction of one TLS connection, at both ends
    (a: the caller's side, b: the callee's), by position in the direction's sequence."""

    __slots__ = ("a", "b", "a_last")

    def __init__(self, a: list[int], b: list[int], a_last: list[int]) -> None:
        self.a, self.b, self.a_last = a, b, a_last


# TLS 1.3 Finished record length (encrypted): 4-byte header + verify_data (the suite's hash)
# + 1 content-type byte + 16-byte AEAD tag
_FINISHED_LEN = {0x1301: 53, 0x1302: 69, 0x1303: 53, 0x1304: 53, 0x1305: 53}


def _flight(s: TlsSession) -> range:
    """Positions of the client's application-data-typed records that are still its TLS 1.3
    handshake flight. With a client certificate the flight is Certificate,
    CertificateVerify, Finished -- all typed application data, like a request, and the
    parser knows only the first for the handshake's. The flight ends with the Finished,
    whose length the cipher suite gives; it goes out in one write (same timestamp)."""
    if s.version != 0x0304:
        return range(0)
    fin = _FINISHED_LEN.get(s.cipher_suite or 0)
    d = s.from_client
    types, lens, firsts, flags = d.rec_type, d.rec_len, d.rec_first_ts, d.rec_flags
    k = -1
    for i in range(min(len(types), 64)):  # (the handshake is at the start)
        if types[i] == APPLICATION_DATA and flags[i] & F_HANDSHAKE:
            k = i
    if k < 0 or fin is None or lens[k] == fin:
        return range(0)
    for j in range(k + 1, min(k + 4, len(types))):
        if types[j] != APPLICATION_DATA or firsts[j] - firsts[k] > 1_000_000:
            break
        if lens[j] == fin:
            return range(k + 1, j + 1)
    return range(0)


def _app_records(d: Any, i0: int, i1: int, skip: range = range(0)
                 ) -> tuple[list[int], list[int]]:
    """First- and last-byte times of the application-data records outside the handshake
    among the kept records ``i0:i1`` (leaving out the positions in ``skip``)."""
    types, flags, firsts, lasts = d.rec_type, d.rec_flags, d.rec_first_ts, d.rec_last_ts
    first, last = [], []
    for i in range(i0, min(i1, len(types))):
        if types[i] != APPLICATION_DATA or flags[i] & F_HANDSHAKE or i in skip:
            continue
        first.append(firsts[i])
        last.append(lasts[i])
    return first, last


def _span(d: Any, lo: int, hi: int) -> tuple[int, int]:
    """The kept records whose first byte is in ``[lo, hi]`` (times ascend)."""
    ts = d.rec_first_ts
    return bisect.bisect_left(ts, lo), bisect.bisect_right(ts, hi)


def _same(a: Any, b: Any) -> bool:
    """Both ends kept the same records (same count, same lengths, none dropped apart)."""
    return (len(a.rec_len) == len(b.rec_len) and a.records_dropped == b.records_dropped
            and a.rec_len == b.rec_len)


def _burst_end(first: list[int], last: list[int], i: int, gap: int = 1_000_000) -> int:
    """The last byte of the burst of records that starts with record ``i``."""
    end = last[i]
    for j in range(i + 1, len(first)):
        if first[j] - end > gap:
            break
        end = max(end, last[j])
    return end


def _ended(s: TlsSession) -> int:
    """When the connection ended at this capture point (far future while it is open)."""
    a, b = s.from_client.end_ts, s.from_server.end_ts
    return max(a, b) if a and b else 1 << 62


class _Conn:
    """One TLS connection: its observations (one per capture point), caller side first."""

    __slots__ = ("obs", "up", "down", "up_b_last", "down_b_last", "start", "end")

    def __init__(self, obs: list[TlsSession], lo: int, hi: int) -> None:
        """Only the records that started in ``[lo, hi]`` at the caller's side (and the same
        positions at the callee's) are looked at."""
        # the caller's side saw the ClientHello first
        obs.sort(key=lambda s: (s.client_hello_ts or s.from_client.end_ts or 0))
        self.obs = obs
        a, b = obs[0], obs[-1]
        same_up = _same(a.from_client, b.from_client)
        same_down = _same(a.from_server, b.from_server)
        i0, i1 = _span(a.from_client, lo, hi)
        ua, ua_last = _app_records(a.from_client, i0, i1, _flight(a))
        ub = (_app_records(b.from_client, i0, i1, _flight(b))[0] if same_up else ua)
        if len(ub) != len(ua):  # the two ends did not see the same records: one side only
            ub = ua
        j0, j1 = _span(a.from_server, lo, hi)
        da, da_last = _app_records(a.from_server, j0, j1)
        db, db_last = _app_records(b.from_server, j0, j1) if same_down else (da, da_last)
        if len(db) != len(da):
            db, db_last = da, da_last
        self.up = _Records(ua, ub, ua_last)
        self.down = _Records(da, db, da_last)
        self.down_b_last = db_last
        self.start = min((s.client_hello_ts or s.from_client.end_ts) for s in obs)
        self.end = max(_ended(s) for s in obs)

    @property
    def session(self) -> TlsSession:
        return self.obs[0]

    def connect_ns(self, after: int, a: int) -> int:
        """For a request record sent at ``a`` (caller's side) of a request the outbound
        sidecar received at ``after``: the time this connection's setup took, if the
        sidecar opened it for the request (its SYN, else its ClientHello, after ``after``):
        from the SYN to the first request record (the TCP and TLS handshakes, and the
        key exchange's work at both peers), else 0."""
        s = self.obs[0]
        start = s.syn_ts or s.client_hello_ts
        if not start or start < after or not self.up.a:
            return 0
        return max(0, min(a, self.up.a[0]) - start)


class _Pending:
    __slots__ = ("down", "up", "key", "end", "req_lo", "req_hi", "resp_lo", "resp_hi")

    def __init__(self, down: Leg, up: Leg | None) -> None:
        self.down, self.up = down, up
        dx = down.ex
        assert dx.dialled is not None
        self.key = (dx.client[0], dx.dialled)
        self.end = down.resp_last_max
        self.req_lo = down.req_first_max  # the outbound sidecar received it (last obs)
        self.resp_hi = down.resp_first_min  # and answered (first obs)
        if up is not None:
            self.req_hi = up.req_first_min  # the inbound sidecar handed it on
            self.resp_lo = up.resp_first_max  # and got the app's answer
        else:
            self.req_hi = self.resp_hi
            self.resp_lo = self.req_lo


class MeshMatcher:
    """Mesh hops from plaintext legs (handed over by the correlator) and TLS sessions."""

    def __init__(self, on_mesh: Callable[[MeshHop], None] | None = None,
                 on_exchange: Callable[[Exchange, TraceContext | None], None] | None = None,
                 stats: Stats | None = None, hold_ns: int = HOLD_NS,
                 max_pending: int = MAX_PENDING, max_sessions: int = MAX_SESSIONS,
                 settle_ns: int = SETTLE_NS) -> None:
        self.on_mesh = on_mesh
        self.on_exchange = on_exchange
        self.stats = stats or Stats()
        self.hold_ns = hold_ns
        self.max_pending = max_pending
        self.max_sessions = max_sessions
        self.settle_ns = settle_ns
        self.live_sessions = False  # open_tls() is called: records are read as they come
        self._known: set[int] = set()
        self._holds = 0
        self.pending: deque[_Pending] = deque()
        self.sessions: dict[tuple, list[TlsSession]] = {}  # (client ip, server) -> ended
        self.n_sessions = 0
        self.session_order: deque[tuple[int, tuple, TlsSession]] = deque()
        self.windows: dict[tuple, deque[_Pending]] = {}  # recent windows, for ambiguity
        self.now = 0
        self.hops = 0

    # -- input ------------------------------------------------------------------------------
    def offer_hop(self, hop: Hop) -> bool:
        """The correlator's hop, if it is really the two plaintext ends of a mesh hop."""
        dx, ux = hop.down.ex, hop.up.ex
        if dx.dialled is None or _loop(dx.dialled[0]):
            return False
        # U runs inside one pod (loopback to loopback, or the pod's address to itself) and
        # not in D's pod: it cannot be the connection the outbound sidecar dialled
        inside = (_loop(ux.client[0]) and _loop(ux.server[0])) or ux.client[0] == ux.server[0]
        if not inside or ux.client[0] == dx.client[0]:
            return False
        self._hold(_Pending(hop.down, hop.up))
        self.stats.add("mesh", "pairs")
        return True

    def offer_unmatched(self, ex: Exchange, leg: Leg | None) -> bool:
        """An exchange in no hop: a caller's leg to its outbound sidecar whose upstream may
        be a TLS connection (the callee unseen). ``leg``: its correlator leg."""
        if (leg is None or ex.dialled is None or _loop(ex.dialled[0]) or ex.response is None
                or not ex.method):
            return False
        self._hold(_Pending(leg, None))
        self.stats.add("mesh", "caller_only_candidates")
        return True

    def open_tls(self, s: TlsSession) -> None:
        """A TLS connection has begun (its session fills in place as records arrive): with
        this, a pending hop is resolved ``settle_ns`` after it ended, whether or not the
        connection has, and long-lived connections between sidecars work."""
        self.live_sessions = True
        self._index(s)

    def _index(self, s: TlsSession) -> None:
        if id(s) not in self._known:
            self._known.add(id(s))
            self.sessions.setdefault((s.client[0], s.server), []).append(s)

    def add_tls(self, s: TlsSession) -> None:
        """A TLS connection has ended (its session is complete)."""
        key = (s.client[0], s.server)
        self._index(s)
        end = max(s.from_client.end_ts, s.from_server.end_ts)
        self.session_order.append((end, key, s))
        self.n_sessions += 1
        while self.n_sessions > self.max_sessions:
            self._drop_session()
        self.advance(end)

    def _drop_session(self) -> None:
        _, key, s = self.session_order.popleft()
        lst = self.sessions.get(key)
        if lst is not None:
            try:
                lst.remove(s)
            except ValueError:
                pass
            if not lst:
                del self.sessions[key]
        self._known.discard(id(s))
        self.n_sessions -= 1

    def _hold(self, p: _Pending) -> None:
        self.pending.append(p)
        w = self.windows.setdefault(p.key, deque())
        w.append(p)
        self._holds += 1
        if not self._holds & 1023:  # windows of keys no longer in use
            old = self.now - 2 * self.hold_ns
            for k in list(self.windows):
                dq = self.windows[k]
                while dq and dq[0].end < old:
                    dq.popleft()
                if not dq:
                    del self.windows[k]
        while len(self.pending) > self.max_pending:
            self.stats.add("mesh", "resolved_early")
            self._resolve(self.pending.popleft())
        self.advance(p.end)

    def advance(self, ts: int) -> None:
        if ts > self.now:
            self.now = ts
        horizon = self.now - self.hold_ns
        ready = self.now - (self.settle_ns if self.live_sessions else self.hold_ns)
        pending = self.pending
        while pending and pending[0].end < ready:
            self._resolve(pending.popleft())
        order = self.session_order
        while order and order[0][0] < horizon - self.hold_ns:
            self._drop_session()

    def finish(self) -> None:
        while self.pending:
            self._resolve(self.pending.popleft())

    # -- matching ---------------------------------------------------------------------------
    def _overlaps(self, p: _Pending) -> bool:
        w = self.windows.get(p.key)
        if not w:
            return False
        while w and w[0].end < p.req_lo - 5_000_000_000:  # forget old windows
            w.popleft()
        for q in reversed(w):  # (newest first: neighbours in time come first)
            if q.end < p.req_lo - 1_000_000_000:
                break
            if q is p:
                continue
            if (q.req_lo < p.req_hi and p.req_lo < q.req_hi) or (
                    q.resp_lo < p.resp_hi and p.resp_lo < q.resp_hi):
                return True
        return False

    def _conns(self, key: tuple, lo: int, hi: int) -> list[_Conn]:
        """The TLS connections of ``key`` alive in ``[lo, hi]``, each with its
        observations, records limited to that window."""
        groups: dict[tuple, list[TlsSession]] = {}
        for s in self.sessions.get(key, ()):
            start = s.client_hello_ts or s.from_client.end_ts
            if start <= hi and _ended(s) >= lo:
                groups.setdefault((s.client, s.server), []).append(s)
        out = []
        for g in groups.values():
            # the same 4-tuple may be reused over time: observations overlap in time
            g.sort(key=lambda s: s.client_hello_ts or s.from_client.end_ts)
            cur: list[TlsSession] = []
            for s in g:
                if cur and (s.client_hello_ts or 0) > max(_ended(o) for o in cur):
                    out.append(_Conn(cur, lo, hi))
                    cur = []
                cur.append(s)
            if cur:
                out.append(_Conn(cur, lo, hi))
        return out

    def _resolve(self, p: _Pending) -> None:
        # (a second of slack each side: the callee's clock side of a record is later)
        conns = self._conns(p.key, p.req_lo - 1_000_000_000, p.resp_hi + 1_000_000_000)
        req: list[tuple[int, int, _Conn]] = []  # (a, b, conn)
        for c in conns:
            up = c.up
            for a, b in zip(up.a, up.b):
                if a >= p.req_lo and b <= p.req_hi:
                    req.append((a, b, c))
        if not req:
            self._unresolved(p)
            return
        # the outbound dwell each candidate would mean (its connection's setup taken out)
        req.sort(key=lambda r: (r[0] - r[2].connect_ns(p.req_lo, r[0]), r[1]))
        a_req, b_req, conn = req[0]
        lo_resp = p.resp_lo if p.up is not None else a_req
        resp: list[tuple[int, int, int, int, _Conn, int]] = []  # b, a, a_end, b_end, conn, i
        for c in conns:
            dn = c.down
            for i, (a, b) in enumerate(zip(dn.a, dn.b)):
                if b >= lo_resp and a <= p.resp_hi:
                    resp.append((b, a, _burst_end(dn.a, dn.a_last, i),
                                 _burst_end(dn.b, c.down_b_last, i), c, i))
        if not resp:
            self._unresolved(p)
            return
        resp.sort(key=lambda r: (r[0], r[1]))
        if p.up is not None:
            # the earliest record after the app answered the inbound sidecar
            b_resp, a_resp, a_end, b_end = resp[0][:4]
        else:
            # callee unseen: the window opens at the request, and server -> client records
            # in it may be the server's own (session tickets, HTTP/2 settings and window
            # updates); the response is what the outbound sidecar answered right after:
            # the burst that ends last before it answered
            last = max(resp, key=lambda r: r[1])
            c, i = last[4], last[5]
            dn = c.down
            while i > 0 and dn.a[i] - dn.a_last[i - 1] <= 1_000_000 and dn.a[i - 1] >= lo_resp:
                i -= 1
            b_resp, a_resp = dn.b[i], dn.a[i]
            a_end, b_end = _burst_end(dn.a, dn.a_last, i), _burst_end(dn.b, c.down_b_last, i)
        ambiguous = (len(req) > 1 or len(resp) > 1) and self._overlaps(p)
        n_conns = len({id(r[2]) for r in req})
        d = p.down
        out_connect = conn.connect_ns(p.req_lo, a_req)
        out_vals = [r[0] - r[2].connect_ns(p.req_lo, r[0]) - p.req_lo for r in req]
        ra_first, ra_last = min(r[1] for r in resp), max(r[1] for r in resp)
        outbound = Dwell(
            request_ns=a_req - p.req_lo - out_connect,
            response_ns=p.resp_hi - a_resp,
            request_min_ns=min(out_vals), request_max_ns=max(out_vals),
            response_min_ns=p.resp_hi - ra_last, response_max_ns=p.resp_hi - ra_first,
            connect_ns=out_connect)
        inbound = None
        if p.up is not None:
            u = p.up
            near = min(u.obs, key=lambda o: o.request.first_ts)
            in_connect = 0
            if near.syn_ts and near.synack_ts and b_req <= near.syn_ts <= p.req_hi:
                # dialled after the request arrived: the TCP handshake is network time; an
                # HTTP/2 connection's first stream also waits for the preface and settings,
                # so there it is the SYN to the request's first byte
                in_connect = (p.req_hi - near.syn_ts if near.stream_id == 1
                              else max(0, near.synack_ts - near.syn_ts))
            b_vals = [r[1] for r in req]
            rb_vals = [r[0] for r in resp]
            inbound = Dwell(
                request_ns=p.req_hi - b_req - in_connect,
                response_ns=b_resp - p.resp_lo,
                request_min_ns=p.req_hi - max(b_vals) - in_connect,
                request_max_ns=p.req_hi - min(b_vals) - in_connect,
                response_min_ns=min(rb_vals) - p.resp_lo,
                response_max_ns=max(rb_vals) - p.resp_lo,
                connect_ns=in_connect)
        s = conn.session
        hop = MeshHop(
            down=d, up=p.up, client=s.client, server=s.server, sni=s.sni,
            alpn=s.alpn or (s.alpn_offered[0] if s.alpn_offered and len(s.alpn_offered) == 1
                            else None),
            tls_version=s.version_name if s.version else "", ambiguous=ambiguous,
            candidates=len(req), connections=n_conns, outbound=outbound, inbound=inbound,
            req_a=a_req, req_b=b_req, resp_a=a_resp, resp_b=b_resp, resp_end_a=a_end,
            resp_end_b=b_end,
            points=[getattr(o.point, "name", str(o.point)) for o in conn.obs])
        self.hops += 1
        self.stats.add("mesh", "hops" if p.up is not None else "caller_only_hops")
        if ambiguous:
            self.stats.add("mesh", "ambiguous")
        if self.on_mesh is not None:
            self.on_mesh(hop)

    def _unresolved(self, p: _Pending) -> None:
        self.stats.add("mesh", "no_tls_connection")
        if self.on_exchange is not None:
            self.on_exchange(p.down.obs[0], p.down.ctx)
            if p.up is not None:
                self.on_exchange(p.up.obs[0], p.up.ctx)


__all__ = ["Dwell", "MeshHop", "MeshMatcher", "ProxyDwell"]
