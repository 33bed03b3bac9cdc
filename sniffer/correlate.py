"""Proxy hops from exchanges: the downstream and upstream legs of one request through an L7
proxy matched, and the time the request and its response spent inside the proxy.

Rules of this module (``../shared/DESIGN.md``, "Proxies and dwell time")
-------------------------------------------------------------------------
* A **leg** is one request/response on one connection. The same leg seen at several capture
  points (both ends of a veth, a pod's eth0 and the node bridge) is *one* leg with several
  observations: same client and server endpoints, stream, method and target, and
  overlapping in time.
* A **hop** is a downstream leg D (the proxy is its server) and an upstream leg U (the proxy
  is its client) of the same request, matched by the strongest evidence available:
  1. ``trace-context``: the same trace id, method and path, and U nested in D in time
     (U's request starts after D's, U's response starts before D's). Span ids need not match
     (a proxy that traces writes a new one: ``wirespan.proxy.span_id_rewritten``);
  2. ``request-id``: the same ``x-request-id``, method, path and nesting;
  3. ``timing``: neither leg carries either, same method and path, nested, and exactly one
     candidate.
  Of several nested candidates only the outermost are direct (in a chain
  client → ingress → sidecar → app, the app leg is nested in the ingress's downstream leg
  too); of several direct ones (retries) the one whose response started last is the one
  the proxy forwarded. A leg is the upstream of at most one hop. When one trace id is
  reused by concurrent requests, the candidate forwarded soonest wins and the hop says
  ``wirespan.match.ambiguous`` (greedy, so a few such legs may find theirs taken).
* Times at the proxy: of a leg's observations, the proxy received D's request last and sent
  D's response first, sent U's request first and received U's response last; taking those
  keeps network time between capture points out of the dwell:
  ``request_dwell = U.req.first − D.req.first − upstream_connect``,
  ``response_dwell = D.resp.first − U.resp.first``,
  ``upstream_duration = U.resp.last − U.req.first``, and ``upstream_connect`` = SYN-ACK −
  SYN of U's connection when the proxy opened it after D's request arrived, else 0.
* Streaming and bounded: a finished leg waits ``settle_ns`` of capture time (for its other
  observations) before it is matched as a downstream leg; legs stay available as upstream
  candidates for ``window_ns`` and at most ``max_legs`` are held (the oldest go first,
  counted). A leg that ends up in no hop is handed on as a plain exchange.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter

from .exchange import Exchange
from .stats import Stats
from .tracecontext import TraceContext, extract

SETTLE_NS = 200_000_000
WINDOW_NS = 5_000_000_000
MAX_LEGS = 20_000  # ~4 KB each with their exchanges
MAX_CANDIDATES = 64  # nested candidates examined per downstream leg


class Leg:
    """One request/response on one connection, with every observation of it."""

    __slots__ = ("obs", "ex", "ctx", "end", "used_as_upstream", "in_hop", "keys", "done",
                 "settled", "req_first_min", "req_first_max", "resp_first_min",
                 "resp_first_max", "resp_last_min", "resp_last_max", "level")

    def __init__(self, ex: Exchange, ctx: TraceContext | None) -> None:
        self.obs: list[Exchange] = [ex]
        self.ex = ex  # the first observation (``obs[0]``)
        self.ctx = ctx
        self.used_as_upstream = False
        self.in_hop = False
        self.done = False
        self.settled = False  # matched (or not) as a downstream leg
        self.keys: list[tuple] = []
        self.level: tuple | None = None  # _level(), once asked
        # (_times(ex, first=True), inlined: this runs for every exchange)
        resp = ex.response
        self.req_first_min = self.req_first_max = ex.request.first_ts
        if resp:
            self.resp_first_min = self.resp_first_max = resp.first_ts
            self.resp_last_min = self.resp_last_max = self.end = resp.last_ts
        else:
            self.resp_first_min = self.resp_first_max = 0
            self.resp_last_min = self.resp_last_max = self.end = ex.request.last_ts

    def _times(self, ex: Exchange, first: bool = False) -> None:
        rq, rs = ex.request.first_ts, ex.response.first_ts if ex.response else 0
        rl = ex.response.last_ts if ex.response else ex.request.last_ts
        if first:
            self.req_first_min = self.req_first_max = rq
            self.resp_first_min = self.resp_first_max = rs
            self.resp_last_min = self.resp_last_max = rl
            self.end = rl
            return
        self.req_first_min = min(self.req_first_min, rq)
        self.req_first_max = max(self.req_first_max, rq)
        self.resp_first_min = min(self.resp_first_min, rs)
        self.resp_first_max = max(self.resp_first_max, rs)
        self.resp_last_min = min(self.resp_last_min, rl)
        self.resp_last_max = max(self.resp_last_max, rl)
        self.end = max(self.end, rl)

    def add(self, ex: Exchange) -> None:
        self.obs.append(ex)
        self._times(ex)


@dataclass(slots=True)
class Hop:
    """A matched proxy hop, with the observations used for its times."""

    down: Leg
    up: Leg
    match: str
    ambiguous: bool
    request_dwell_ns: int
    response_dwell_ns: int
    upstream_duration_ns: int
    upstream_connect_ns: int
    start_ns: int
    end_ns: int
    proxy_address: str
    upstream_address: str
    direction: str  # "inbound", "outbound" or "" (a standalone proxy)
    span_id_rewritten: bool
    retries: int = 0
    extra: dict = field(default_factory=dict)


_EP_TEXT: dict[tuple[bytes, int], str] = {}


def _ip(addr: bytes) -> str:
    return str(ipaddress.ip_address(addr))


def _ep(ep: tuple[bytes, int]) -> str:
    """``ip:port`` of an endpoint (memoised: a node has few proxy and upstream endpoints)."""
    s = _EP_TEXT.get(ep)
    if s is None:
        if len(_EP_TEXT) > 4096:
            _EP_TEXT.clear()
        s = _EP_TEXT[ep] = f"{_ip(ep[0])}:{ep[1]}"
    return s


def _is_loopback(addr: bytes) -> bool:
    return addr[:1] == b"\x7f" if len(addr) == 4 else addr == b"\x00" * 15 + b"\x01"


def _direction(d: Exchange, u: Exchange) -> str:
    if _is_loopback(d.server[0]) or d.client[0] == d.server[0] or d.dialled is not None:
        return "outbound"  # the caller is the app in the proxy's own pod
    if _is_loopback(u.server[0]) or u.client[0] == u.server[0]:
        return "inbound"  # the proxy hands the request to the app in its pod
    return ""


_REQ_FIRST_MIN = attrgetter("req_first_min")
_RESP_FIRST_MAX = attrgetter("resp_first_max")
_KINDS = {"t": "trace-context", "r": "request-id", "m": "timing"}
_EVICTED_FULL = ("correlate", "evicted_window_full")  # a Stats key
_MATCH_KEYS = {kind: ("correlate", f"match_{kind}") for kind in _KINDS.values()}  # Stats keys


def _level(leg: Leg) -> tuple:
    """Which step of a chain a leg can be: its server, and whether it runs inside one pod
    (a sidecar's leg to its app reuses the address the caller dialled)."""
    lv = leg.level
    if lv is None:
        ex = leg.ex
        lv = leg.level = (ex.server, ex.client[0] == ex.server[0])
    return lv


def _direct(cands: list[Leg]) -> tuple[list[Leg], int]:
    """The candidates that are direct children of the downstream leg -> (the free ones, how
    many are already another leg's upstream). A candidate nested in time inside a candidate
    to another server is further down a chain (its parent's upstream), not ours; candidates
    to the same server (at the same level, see ``_level``) are siblings — concurrent
    requests — and never hide each other."""
    if len(cands) == 1:
        u = cands[0]
        return ([], 1) if u.used_as_upstream else ([u], 0)
    groups: dict[tuple, list[Leg]] = {}
    for u in cands:
        groups.setdefault(_level(u), []).append(u)
    # per server: request starts (sorted) and the running max of response starts
    spans = {}
    for srv, g in groups.items():
        g.sort(key=_REQ_FIRST_MIN)
        starts = [v.req_first_min for v in g]
        reach, best = [], -1
        for v in g:
            r = v.resp_first_max
            if r > best:
                best = r
            reach.append(best)
        spans[srv] = (starts, reach)
    free, taken = [], 0
    for u in cands:
        hidden = False
        level = _level(u)
        for srv, (starts, reach) in spans.items():
            if srv == level:
                continue
            i = bisect.bisect_right(starts, u.req_first_min)
            if i and reach[i - 1] >= u.resp_first_max:
                hidden = True
                break
        if hidden:
            continue
        if u.used_as_upstream:
            taken += 1
        else:
            free.append(u)
    return free, taken


class ProxyStats:
    """Per proxy address: requests, match kinds, dwell samples (bounded reservoir)."""

    MAX_SAMPLES = 100_000

    def __init__(self) -> None:
        self.by_proxy: dict[str, dict] = {}

    def add(self, hop: Hop) -> None:
        p = self.by_proxy.get(hop.proxy_address)
        if p is None:
            p = self.by_proxy[hop.proxy_address] = {"requests": 0, "match_kinds": {},
                                                    "req": [], "resp": []}
        p["requests"] += 1
        p["match_kinds"][hop.match] = p["match_kinds"].get(hop.match, 0) + 1
        if len(p["req"]) < self.MAX_SAMPLES:
            p["req"].append(hop.request_dwell_ns)
            p["resp"].append(hop.response_dwell_ns)

    @staticmethod
    def _pct(values: list[int]) -> dict[str, int]:
        if not values:
            return {}
        v = sorted(values)
        n = len(v)

        def q(p: float) -> int:
            return v[min(n - 1, max(0, int(round(p * n + 0.5)) - 1))]  # nearest rank

        return {"p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "max": v[-1]}

    def summary(self) -> list[dict]:
        out = []
        for addr, p in sorted(self.by_proxy.items(), key=lambda kv: -kv[1]["requests"]):
            out.append({"address": addr, "requests": p["requests"],
                        "match_kinds": dict(sorted(p["match_kinds"].items())),
                        "request_dwell_ns": self._pct(p["req"]),
                        "response_dwell_ns": self._pct(p["resp"])})
        return out


class Correlator:
    """Exchanges in (from any number of connections and capture points), hops and unmatched
    exchanges out. ``on_hop(hop)`` for each hop as soon as it is matched; ``on_exchange(ex,
    ctx)`` for each leg that is in no hop, once it leaves the window."""

    def __init__(self, on_hop: Callable[[Hop], None] | None = None,
                 on_exchange: Callable[[Exchange, TraceContext | None], None] | None = None,
                 stats: Stats | None = None, settle_ns: int = SETTLE_NS,
                 window_ns: int = WINDOW_NS, max_legs: int = MAX_LEGS) -> None:
        self.on_hop = on_hop
        self.on_exchange = on_exchange
        self.stats = stats or Stats()
        self.settle_ns = settle_ns
        self.window_ns = window_ns
        self.max_legs = max_legs
        self.now = 0
        self.pending: deque[Leg] = deque()  # finished, not yet matched as a downstream leg
        self.window: deque[Leg] = deque()  # candidates, in arrival order
        self.index: dict[tuple, tuple[list[int], list[Leg]]] = {}  # key -> sorted by req start
        self.same_leg: dict[tuple, list[Leg]] = {}
        self.hops = 0
        self._stale: dict[tuple, int] = {}  # index key -> evicted legs still in its lists
        self._ctx_memo: dict[int, tuple[list, TraceContext | None]] = {}
        self.edges: set[tuple] = set()  # (proxy endpoint, upstream endpoint) of hops seen

    # -- input -----------------------------------------------------------------------------
    def __call__(self, ex: Exchange) -> None:
        self.add(ex)

    def add(self, ex: Exchange) -> None:
        if not ex.method or ex.response is None:
            # a response alone, or a request never answered: no hop can be measured
            self._out(ex, extract(ex.request.headers) if ex.method else None)
            return
        ident = (ex.client, ex.server, ex.stream_id, ex.method, ex.target)
        legs = self.same_leg.get(ident)
        if legs:
            rq, rl, point = ex.request.first_ts, ex.response.last_ts, ex.point
            for leg in reversed(legs[-8:]):
                # (the other observations of a leg arrive within moments of each other, so
                # the most recent legs with this identity are the only ones worth a look)
                if (rq <= leg.resp_last_max and leg.req_first_min <= rl and not leg.done
                        and all(o.point is not point for o in leg.obs)):
                    leg.add(ex)  # the same leg at another capture point
                    self.stats.add("correlate", "observations_merged")
                    self._advance(leg.end)
                    return
        headers = ex.request.headers
        memo = self._ctx_memo.get(id(headers))
        if memo is not None and memo[0] is headers:
            ctx = memo[1]  # HTTP/2 repeats share one decoded header list: parse it once
        else:
            ctx = extract(headers)
            if len(self._ctx_memo) >= 256:
                self._ctx_memo.clear()
            self._ctx_memo[id(headers)] = (headers, ctx)
        leg = Leg(ex, ctx)
        if legs is None:
            self.same_leg[ident] = [leg]
        else:
            legs.append(leg)
            if len(legs) > 16:
                del legs[:-8]  # only the most recent are ever looked at
        leg.keys.append(("s", ident))
        path = ex.path
        index = self._index
        if ctx is None:
            # a leg without a trace id is a timing candidate: it may be the upstream of an
            # untraced request whose proxy added a request id (nginx's $request_id, Envoy)
            index(leg, ("m", ex.method, path))
        else:
            timing = ctx.format == "request-id"
            if not timing:
                index(leg, ("t", ctx.trace_id, ex.method, path))
            if ctx.request_id:
                index(leg, ("r", ctx.request_id, ex.method, path))
            if timing:
                index(leg, ("m", ex.method, path))
        self.pending.append(leg)
        self.window.append(leg)
        self._advance(leg.end)

    def _index(self, leg: Leg, key: tuple) -> None:
        entry = self.index.get(key)
        if entry is None:
            entry = self.index[key] = ([], [])
        starts, legs = entry
        t = leg.req_first_min
        if not starts or starts[-1] <= t:  # (in time order, the commonest: bisect's answer)
            starts.append(t)
            legs.append(leg)
        else:
            i = bisect.bisect_right(starts, t)
            starts.insert(i, t)
            legs.insert(i, leg)
        leg.keys.append(key)

    def advance(self, ts: int) -> None:
        """Capture time has reached ``ts`` even if no exchange says so (live sources):
        legs that have settled are matched and handed on."""
        self._advance(ts)

    def _advance(self, ts: int) -> None:
        if ts > self.now:
            self.now = ts
        now = self.now
        settle = now - self.settle_ns
        pending = self.pending
        while pending and pending[0].end < settle:
            self._match(pending.popleft())
        horizon = now - self.window_ns
        window = self.window
        max_legs = self.max_legs
        evict = self._evict
        while window and (window[0].end < horizon or len(window) > max_legs):
            leg = window[0]
            if not leg.settled:
                # full before the oldest leg settled: match it now rather than lose it
                self.stats.add("correlate", "matched_early")
                while pending and not leg.settled:
                    self._match(pending.popleft())
            if leg.end >= horizon:
                self.stats.counts[_EVICTED_FULL] += 1  # (stats.add, in one step)
            evict(window.popleft())

    def finish(self) -> None:
        while self.pending:
            self._match(self.pending.popleft())
        while self.window:
            self._evict(self.window.popleft())
        self._compact()

    # -- matching ----------------------------------------------------------------------------
    def _candidates(self, d: Leg, key: tuple) -> list[Leg]:
        entry = self.index.get(key)
        if entry is None:
            return []
        starts, legs = entry
        d_req, d_resp = d.req_first_min, d.resp_first_max
        lo = bisect.bisect_left(starts, d_req)
        hi = bisect.bisect_right(starts, d_resp, lo)
        dx = d.ex
        d_client, d_server = dx.client, dx.server
        d_ip = d_server[0]
        d_in_pod = dx.client[0] == d_ip
        d_loop = _is_loopback(d_ip)
        edges = self.edges
        out: list[Leg] = []
        for u in legs[lo:min(hi, lo + MAX_CANDIDATES * 4)]:
            if (u is d or u.done
                    or u.resp_first_min > d_resp or u.req_first_max < d_req):
                continue
            ux = u.ex
            if ux.client == d_client:
                continue  # not on the caller's own connection
            u_server = ux.server
            if u_server == d_server:
                # a proxy does not forward to itself, except a sidecar behind an inbound
                # REDIRECT: the caller dialled podIP:8080 and the proxy hands the request to
                # the app at that same address, from inside the pod (over lo)
                if ux.client[0] != u_server[0] or d_in_pod:
                    continue
            elif (u_server, d_server) in edges:
                # the candidate's server is known to forward to this leg's server: this leg
                # is downstream of it, not the other way round (concurrent requests that
                # share one trace id would otherwise pair up backwards)
                continue
            u_ip = ux.client[0]
            if not (u_ip == d_ip or d_loop or _is_loopback(u_ip)):
                continue  # the upstream leg must leave the host the downstream leg reached
            out.append(u)
            if len(out) >= MAX_CANDIDATES:
                break
        return out

    def _match(self, d: Leg) -> None:
        d.settled = True
        ctx = d.ctx
        for key in d.keys:
            k = key[0]
            if not (k == "t" or k == "r" or (k == "m" and ctx is None)):
                continue
            kind = _KINDS[k]
            cands = self._candidates(d, key)
            if not cands:
                continue
            direct, taken = _direct(cands)
            if not direct:
                continue
            if kind == "timing" and (len(direct) != 1 or taken):
                self.stats.add("correlate", "timing_ambiguous" if direct else "no_match")
                continue
            # the key is shared by other requests in flight (a reused trace id): the pairing
            # rests on timing, and says so
            ambiguous = taken > 0 and kind != "timing"
            if len(direct) > 1:
                # retries share an id but run one after another; concurrent requests that
                # reuse one id overlap: then the one forwarded soonest is taken, and said so
                overlapping = any(a.req_first_min < b.resp_first_max
                                  and b.req_first_min < a.resp_first_max
                                  for i, a in enumerate(direct) for b in direct[i + 1:])
                if overlapping:
                    # (greedy: under heavy reuse of one id a leg may find its upstream taken
                    # by an earlier one and stay unmatched; counted as no_match)
                    ambiguous = True
                    u = min(direct, key=_REQ_FIRST_MIN)
                else:
                    u = max(direct, key=_RESP_FIRST_MAX)
            else:
                u = direct[0]
            self._hop(d, u, kind, ambiguous, len(direct) - 1 if not ambiguous else 0)
            return

    def _hop(self, d: Leg, u: Leg, kind: str, ambiguous: bool, retries: int) -> None:
        u.used_as_upstream = True
        d.in_hop = u.in_hop = True
        dx, ux = d.ex, u.ex
        d_req = d.req_first_max  # the proxy received it last
        d_resp = d.resp_first_min  # and sent its response first
        u_req = u.req_first_min
        u_resp = u.resp_first_max
        connect = 0
        # the handshake as the proxy saw it: from the observation of U nearest the proxy
        # (the one that saw its request first), not one across a delayed link
        obs = u.obs
        near = obs[0] if len(obs) == 1 else min(obs, key=lambda o: o.request.first_ts)
        syn, synack = near.syn_ts, near.synack_ts
        if syn and synack and syn >= d.req_first_min and synack >= syn:
            connect = synack - syn  # the proxy dialled after the request: network time
        hop = Hop(  # (positional, in field order: down, up, match, ambiguous, the dwell
            # times, start, end, proxy_address, upstream_address, direction,
            # span_id_rewritten, retries)
            d, u, kind, ambiguous,
            u_req - d_req - connect,  # request_dwell_ns
            d_resp - u_resp,  # response_dwell_ns
            u.resp_last_max - u_req,  # upstream_duration_ns
            connect,  # upstream_connect_ns
            d_req, max(d.resp_last_min, d_resp),  # start_ns, end_ns
            _ep(dx.server), _ep(ux.dialled or ux.server),
            _direction(dx, ux),
            bool(d.ctx and u.ctx and d.ctx.span_id != u.ctx.span_id),
            retries,
        )
        self.hops += 1
        if len(self.edges) < 65536:
            self.edges.add((dx.server, ux.server))
        self.stats.counts[_MATCH_KEYS.get(kind) or ("correlate", f"match_{kind}")] += 1
        if ambiguous:
            self.stats.add("correlate", "ambiguous")
        if self.on_hop is not None:
            self.on_hop(hop)

    def _evict(self, leg: Leg) -> None:
        leg.done = True
        same, index, stale = self.same_leg, self.index, self._stale
        for key in leg.keys:
            if key[0] == "s":
                lst = same.get(key[1])
                if lst is not None and lst[-1] is leg:  # the newest with this identity
                    del same[key[1]]
                continue  # (never an index key)
            # index entries are dropped lazily: done legs are skipped by _candidates, and
            # the lists are compacted once half of a list has left
            entry = index.get(key)
            if entry is None:
                continue
            n = stale.get(key, 0) + 1
            if n * 2 >= len(entry[1]):  # half of this list is gone: filter it (amortised)
                self._compact_key(key, entry)
            else:
                stale[key] = n
        if not leg.in_hop:
            self._out(leg.obs[0], leg.ctx)  # one exchange, however many points saw it

    def _compact_key(self, key: tuple, entry: tuple[list[int], list[Leg]]) -> None:
        self._stale.pop(key, None)
        starts, legs = entry
        keep = [i for i, v in enumerate(legs) if not v.done]
        if not keep:
            del self.index[key]
        elif len(keep) < len(legs):
            self.index[key] = ([starts[i] for i in keep], [legs[i] for i in keep])

    def _compact(self) -> None:
        for key in list(self._stale):
            entry = self.index.get(key)
            if entry is not None:
                self._compact_key(key, entry)
        self._stale.clear()

    def _out(self, ex: Exchange, ctx: TraceContext | None) -> None:
        if self.on_exchange is not None:
            self.on_exchange(ex, ctx)
