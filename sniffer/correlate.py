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

    __slots__ = ("obs", "ex", "ctx", "end", "used_as_upstream", "in_hop", "ident", "same",
                 "entries", "done", "settled", "req_first_min", "req_first_max",
                 "resp_first_min", "resp_first_max", "resp_last_min", "resp_last_max", "level")

    def __init__(self, ex: Exchange, ctx: TraceContext | None) -> None:
        self.obs: list[Exchange] = [ex]
        self.ex = ex  # the first observation (``obs[0]``)
        self.ctx = ctx
        self.used_as_upstream = self.in_hop = self.done = False
        self.settled = False  # matched (or not) as a downstream leg
        # where the correlator holds it: its key in ``same_leg`` and that list, and its
        # lists in ``index`` (held here so that matching and eviction need no look-ups)
        self.ident: tuple | None = None
        self.same: list[Leg] | None = None
        self.entries: tuple[_Keyed, ...] = ()
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


class _Keyed:
    """The legs under one index key (``kind`` is its first item: ``t`` trace id, ``r``
    request id, ``m`` method and path alone), sorted by request start (``starts``: each
    one's ``req_first_min`` when it was added), and ``stale``: how many of them have left
    the window since the lists were last compacted."""

    __slots__ = ("key", "kind", "starts", "legs", "stale")

    def __init__(self, key: tuple, t: int, leg: Leg) -> None:
        self.key = key
        self.kind: str = key[0]
        self.starts = [t]
        self.legs = [leg]
        self.stale = 0


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
_PATHS: dict[str, str] = {}  # request-target -> its path (Exchange.path), memoised


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


_LOOPBACK6 = b"\x00" * 15 + b"\x01"


def _is_loopback(addr: bytes) -> bool:
    return addr[0] == 0x7F if len(addr) == 4 else addr == _LOOPBACK6


def _direction(d: Exchange, u: Exchange) -> str:
    if _is_loopback(d.server[0]) or d.client[0] == d.server[0] or d.dialled is not None:
        return "outbound"  # the caller is the app in the proxy's own pod
    if _is_loopback(u.server[0]) or u.client[0] == u.server[0]:
        return "inbound"  # the proxy hands the request to the app in its pod
    return ""


def _request_first_ts(ex: Exchange) -> int:
    return ex.request.first_ts


_REQ_FIRST_MIN = attrgetter("req_first_min")
_RESP_FIRST_MAX = attrgetter("resp_first_max")
_KINDS = {"t": "trace-context", "r": "request-id", "m": "timing"}
_EVICTED_FULL = ("correlate", "evicted_window_full")  # a Stats key
_AMBIGUOUS = ("correlate", "ambiguous")  # a Stats key
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
    requests — and never hide each other. That is: ``u`` is hidden iff some candidate ``v``
    at another level has ``v.req_first_min <= u.req_first_min`` and
    ``v.resp_first_max >= u.resp_first_max``."""
    n = len(cands)
    if n == 1:
        u = cands[0]
        return ([], 1) if u.used_as_upstream else ([u], 0)
    levels = [u.level or _level(u) for u in cands]
    if levels.count(levels[0]) == n:
        # (fast path, the commonest: one level, so nothing is hidden)
        free = [u for u in cands if not u.used_as_upstream]
        return free, n - len(free)
    if n == 2:
        # (fast path: two candidates at different levels; the rule above, written out)
        a, b = cands
        free, taken = [], 0
        if not (b.req_first_min <= a.req_first_min and b.resp_first_max >= a.resp_first_max):
            if a.used_as_upstream:
                taken += 1
            else:
                free.append(a)
        if not (a.req_first_min <= b.req_first_min and a.resp_first_max >= b.resp_first_max):
            if b.used_as_upstream:
                taken += 1
            else:
                free.append(b)
        return free, taken
    groups: dict[tuple, list[Leg]] = {}
    for u, level in zip(cands, levels):
        groups.setdefault(level, []).append(u)
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
    for u, level in zip(cands, levels):
        hidden = False
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
    ctx)`` for each leg that is in no hop, once it leaves the window.

    ``add`` runs for every exchange and, in steady state, also matches one settled leg and
    evicts one old one, so the per-exchange path is written for speed: the small helpers of
    the rules are inlined into ``add``, ``_match`` and ``_evict``, with fast paths for the
    common shapes (no other leg in a key's time range, one candidate, one level of
    candidates, an index list that only the evicted leg is left in). Each fast path gives
    exactly what the general code below it gives."""

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
        self.index: dict[tuple, _Keyed] = {}  # key -> its legs, sorted by request start
        self.same_leg: dict[tuple, list[Leg]] = {}  # Leg.ident -> the most recent such legs
        self.hops = 0
        self._ctx_memo: dict[int, tuple[list, TraceContext | None]] = {}
        self.edges: set[tuple] = set()  # (proxy endpoint, upstream endpoint) of hops seen

    # -- input -----------------------------------------------------------------------------
    def __call__(self, ex: Exchange) -> None:
        self.add(ex)

    def add(self, ex: Exchange) -> None:
        method = ex.method
        resp = ex.response
        if not method or resp is None:
            # a response alone, or a request never answered: no hop can be measured
            self._out(ex, extract(ex.request.headers) if method else None)
            return
        req = ex.request
        target = ex.target
        ident = (ex.client, ex.server, ex.stream_id, method, target)
        legs = self.same_leg.get(ident)
        if legs:
            rq, rl, point = req.first_ts, resp.last_ts, ex.point
            for leg in reversed(legs[-8:]):
                # (the other observations of a leg arrive within moments of each other, so
                # the most recent legs with this identity are the only ones worth a look)
                if (rq <= leg.resp_last_max and leg.req_first_min <= rl and not leg.done
                        and all(o.point is not point for o in leg.obs)):
                    leg.add(ex)  # the same leg at another capture point
                    self.stats.add("correlate", "observations_merged")
                    self._advance(leg.end)
                    return
        headers = req.headers
        ctx_memo = self._ctx_memo
        memo = ctx_memo.get(id(headers))
        if memo is not None and memo[0] is headers:
            ctx = memo[1]  # HTTP/2 repeats share one decoded header list: parse it once
        else:
            ctx = extract(headers)
            if len(ctx_memo) >= 256:
                ctx_memo.clear()
            ctx_memo[id(headers)] = (headers, ctx)
        path = _PATHS.get(target)
        if path is None:
            path = ex.path
            if len(_PATHS) >= 4096:
                _PATHS.clear()
            _PATHS[target] = path
        # the index keys, in the order _match tries them
        if ctx is None:
            # a leg without a trace id is a timing candidate: it may be the upstream of an
            # untraced request whose proxy added a request id (nginx's $request_id, Envoy)
            keys: tuple[tuple, ...] = (("m", method, path),)
        elif ctx.format == "request-id":
            rid = ctx.request_id
            keys = ((("r", rid, method, path), ("m", method, path)) if rid
                    else (("m", method, path),))
        elif ctx.request_id:
            keys = (("t", ctx.trace_id, method, path), ("r", ctx.request_id, method, path))
        else:
            keys = (("t", ctx.trace_id, method, path),)
        leg = Leg(ex, ctx)
        leg.ident = ident
        if legs is None:
            legs = self.same_leg[ident] = [leg]
        else:
            legs.append(leg)
            if len(legs) > 16:
                del legs[:-8]  # only the most recent are ever looked at
        leg.same = legs
        t = req.first_ts
        index = self.index
        entries = []
        for key in keys:
            entry = index.get(key)
            if entry is None:
                entry = index[key] = _Keyed(key, t, leg)
            else:
                starts = entry.starts
                if starts[-1] <= t:  # (in time order, the commonest: bisect's answer)
                    starts.append(t)
                    entry.legs.append(leg)
                else:
                    i = bisect.bisect_right(starts, t)
                    starts.insert(i, t)
                    entry.legs.insert(i, leg)
            entries.append(entry)
        leg.entries = tuple(entries)
        self.pending.append(leg)
        self.window.append(leg)
        self._advance(resp.last_ts)  # (leg.end)

    def advance(self, ts: int) -> None:
        """Capture time has reached ``ts`` even if no exchange says so (live sources):
        legs that have settled are matched and handed on."""
        self._advance(ts)

    def _advance(self, ts: int) -> None:
        now = self.now
        if ts > now:
            self.now = now = ts
        pending = self.pending
        if pending:
            settle = now - self.settle_ns
            match = self._match
            while pending and pending[0].end < settle:
                match(pending.popleft())
        horizon = now - self.window_ns
        window = self.window
        max_legs = self.max_legs
        while window and (window[0].end < horizon or len(window) > max_legs):
            leg = window[0]
            if not leg.settled:
                # full before the oldest leg settled: match it now rather than lose it
                self.stats.add("correlate", "matched_early")
                while pending and not leg.settled:
                    self._match(pending.popleft())
            if leg.end >= horizon:
                self.stats.counts[_EVICTED_FULL] += 1  # (stats.add, in one step)
            self._evict(window.popleft())

    def finish(self) -> None:
        while self.pending:
            self._match(self.pending.popleft())
        while self.window:
            self._evict(self.window.popleft())
        self._compact()

    # -- matching ----------------------------------------------------------------------------
    def _match(self, d: Leg) -> None:
        """Match ``d`` as a downstream leg: for each of its keys in turn, the candidates
        under it (nested in ``d`` in time, still held, not on its connection, leaving the
        host it reached; at most MAX_CANDIDATES), the direct ones, and the hop if any."""
        d.settled = True
        ctx = d.ctx
        d_req, d_resp = d.req_first_min, d.resp_first_max
        d_server = None
        for entry in d.entries:  # (d is held: these are the live lists of its keys)
            k = entry.kind
            if k == "m" and ctx is not None:
                continue  # (a request-id leg's timing key makes it a candidate, no more)
            starts, legs = entry.starts, entry.legs
            lo = bisect.bisect_left(starts, d_req)
            hi = bisect.bisect_right(starts, d_resp, lo)
            if hi - lo < 2 and (hi == lo or legs[lo] is d):
                continue  # (fast path, the commonest: no leg but d itself in the range)
            if d_server is None:
                dx = d.ex
                d_client, d_server = dx.client, dx.server
                d_ip = d_server[0]
                d_in_pod = d_client[0] == d_ip
                d_loop = _is_loopback(d_ip)
                edges = self.edges
            cands: list[Leg] = []
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
                    # REDIRECT: the caller dialled podIP:8080 and the proxy hands the request
                    # to the app at that same address, from inside the pod (over lo)
                    if ux.client[0] != u_server[0] or d_in_pod:
                        continue
                elif (u_server, d_server) in edges:
                    # the candidate's server is known to forward to this leg's server: this
                    # leg is downstream of it, not the other way round (concurrent requests
                    # that share one trace id would otherwise pair up backwards)
                    continue
                u_ip = ux.client[0]
                if not (u_ip == d_ip or d_loop or _is_loopback(u_ip)):
                    continue  # the upstream leg must leave the host the downstream leg reached
                cands.append(u)
                if len(cands) >= MAX_CANDIDATES:
                    break
            n = len(cands)
            if n == 1:
                # (_direct() of one candidate, inlined)
                u = cands[0]
                if u.used_as_upstream:
                    continue
                direct, taken = cands, 0
            elif n:
                direct, taken = _direct(cands)
                if not direct:
                    continue
            else:
                continue
            if k == "m" and (len(direct) != 1 or taken):
                self.stats.add("correlate", "timing_ambiguous")
                continue
            # the key is shared by other requests in flight (a reused trace id): the pairing
            # rests on timing, and says so
            ambiguous = taken > 0 and k != "m"
            if len(direct) > 1:
                # retries share an id but run one after another; concurrent requests that
                # reuse one id overlap: then the one forwarded soonest is taken, and said so
                overlapping = any(a.req_first_min < b.resp_first_max
                                  and b.req_first_min < a.resp_first_max
                                  for i, a in enumerate(direct) for b in direct[i + 1:])
                if overlapping:
                    # (greedy: under heavy reuse of one id a leg may find its upstream taken
                    # by an earlier one and stay unmatched)
                    ambiguous = True
                    u = min(direct, key=_REQ_FIRST_MIN)
                else:
                    u = max(direct, key=_RESP_FIRST_MAX)
            else:
                u = direct[0]
            self._hop(d, u, _KINDS[k], ambiguous, len(direct) - 1 if not ambiguous else 0)
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
        near = obs[0] if len(obs) == 1 else min(obs, key=_request_first_ts)
        syn, synack = near.syn_ts, near.synack_ts
        if syn and synack and syn >= d.req_first_min and synack >= syn:
            connect = synack - syn  # the proxy dialled after the request: network time
        d_server, u_server = dx.server, ux.server
        u_dialled = ux.dialled or u_server
        ctx, u_ctx = d.ctx, u.ctx
        hop = Hop(  # (positional, in field order: down, up, match, ambiguous, the dwell
            # times, start, end, proxy_address, upstream_address, direction,
            # span_id_rewritten, retries)
            d, u, kind, ambiguous,
            u_req - d_req - connect,  # request_dwell_ns
            d_resp - u_resp,  # response_dwell_ns
            u.resp_last_max - u_req,  # upstream_duration_ns
            connect,  # upstream_connect_ns
            d_req, max(d.resp_last_min, d_resp),  # start_ns, end_ns
            _EP_TEXT.get(d_server) or _ep(d_server), _EP_TEXT.get(u_dialled) or _ep(u_dialled),
            _direction(dx, ux),
            bool(ctx and u_ctx and ctx.span_id != u_ctx.span_id),
            retries,
        )
        self.hops += 1
        edges = self.edges
        if len(edges) < 65536:
            edges.add((d_server, u_server))
        counts = self.stats.counts
        counts[_MATCH_KEYS[kind]] += 1
        if ambiguous:
            counts[_AMBIGUOUS] += 1  # (stats.add, in one step)
        if self.on_hop is not None:
            self.on_hop(hop)

    def _evict(self, leg: Leg) -> None:
        leg.done = True
        lst = leg.same
        if lst is not None and lst[-1] is leg:  # the newest with this identity
            # (the list is the one same_leg holds: one with an older newest leg is dropped
            # only once every leg in it has left, in arrival order)
            del self.same_leg[leg.ident]  # type: ignore[arg-type]
        # index entries are dropped lazily: done legs are skipped by _match, and the lists
        # are compacted once half of a list has left
        for entry in leg.entries:
            n = len(entry.legs)
            if n == 1:
                # (fast path: this leg alone, so the compaction would drop the key)
                del self.index[entry.key]
                continue
            stale = entry.stale + 1
            if stale * 2 >= n:  # half of this list is gone: filter it (amortised)
                self._compact_entry(entry)
            else:
                entry.stale = stale
        leg.same, leg.entries = None, ()  # (no reference cycles: refcounting frees it)
        if not leg.in_hop and self.on_exchange is not None:
            self.on_exchange(leg.obs[0], leg.ctx)  # one exchange, however many points saw it

    def _compact_entry(self, entry: _Keyed) -> None:
        entry.stale = 0
        legs = entry.legs
        keep = [v for v in legs if not v.done]
        if not keep:
            del self.index[entry.key]
        elif len(keep) < len(legs):
            entry.starts = [t for t, v in zip(entry.starts, legs) if not v.done]
            entry.legs = keep

    def _compact(self) -> None:
        for entry in list(self.index.values()):
            if entry.stale:
                self._compact_entry(entry)

    def _out(self, ex: Exchange, ctx: TraceContext | None) -> None:
        if self.on_exchange is not None:
            self.on_exchange(ex, ctx)
