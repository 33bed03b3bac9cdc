#!/usr/bin/env python3
"""Compare HTTP/1 parsing approaches on the same reassembled byte streams, in one run.

Usage:
    .venv/bin/python scripts/bench_http1_parsers.py [CAPTURE] [--rounds N] [--limit PACKETS]
                                                    [--max-mb MB] [--parsers a,b,...]

CAPTURE defaults to ../shared/bench/bench.pcap. ``--limit`` reads only the first PACKETS
packets of the capture (0 = all); ``--max-mb`` caps the recorded stream bytes (default 512:
when reached, every recorded connection stops there, as if the capture had ended).

Step 1 (untimed): our replay pipeline (decode + TCP reassembly) runs once with a recording
consumer factory. It keeps both directions of every connection whose client stream starts
with an HTTP/1 request line, by the dispatcher's own test (so h2c prior knowledge, TLS, and
connections with no client bytes -- e.g. wrk's connect probe and its 400 -- are left out),
as one list per connection of ``(is_client, data|gap|end, value, ts)`` in delivery order.

Step 2 (timed): each parser is fed exactly those events, connection by connection, through
the same driver loop (a StreamConsumer-like data/gap/end pair per connection), in
interleaved rounds (round 1: every parser, round 2: every parser, ...). Reported: median
and min wall time, requests and responses seen, messages/s (requests + responses) and the
speed ratio to ours, microseconds per message, and the same over the ``null`` floor (the
driver loop calling no-op consumers). Every parser yields, per message, the method, the
request-target or the status, and the header list as (lowercased str name, str value).

Parsers:
  null       no-op consumers: the cost of the driver loop itself (the floor)
  ours       sniffer.proto.http1.Http1Connection, built as sniffer/proto/__init__.py does,
             its exchanges appended to a list (the "counter" sink)
  httptools  llhttp via httptools.HttpRequestParser / HttpResponseParser, with callbacks
  httptools_lenient  the same with every llhttp leniency flag on (set_dangerous_leniencies)
  h11        h11.Connection used passively: SERVER role on the request stream (a fresh
             Connection per request, seeded with the previous one's trailing_data, because
             a server-role h11 pauses until *it* has sent a response), CLIENT role on the
             response stream (for each response we first send() it a header-only copy of the
             matching request's method into the void, since h11 frames a response by the
             request it sent: HEAD, CONNECT)
  dpkt       dpkt.http.Request / Response on a per-direction buffer: chunks are
             concatenated until the head's blank line is there, then the whole message is
             parsed; dpkt.NeedData (body incomplete) re-parses from scratch on the next chunk.
             The buffering, concatenation and re-parsing are part of the timed cost.

A parser whose package is missing is skipped with a message (h11 and httptools are not
project dependencies: ``.venv/bin/pip install h11 httptools`` to measure them). A parser that
raises on a direction stops parsing that direction of that connection (it has no resync);
its errors are counted and printed, never hidden. After the table, each parser's
per-connection (method, target, status) list is compared with ours. Then an untimed quirk
probe (``--no-quirks`` to skip) feeds each parser tiny synthetic connections with things
real traffic does -- bare LF, obs-fold, a space in the target, no Host, a CRLF before a
request, HTTP/1.2 status lines, a repeated Content-Length, 100 Continue, HEAD, a
close-delimited body, a gap inside a body, a mid-stream join -- and prints ok or what broke.

On the full bench.pcap (21 HTTP/1 connections, 69,847 requests + 69,847 responses) a run of
5 rounds takes about 1.5-2.5 minutes on a 2-vCPU VM, with a peak RSS of about 360 MiB.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import sys
import time
from collections import Counter, deque
from itertools import zip_longest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT = os.path.join(ROOT, "..", "shared", "bench", "bench.pcap")
sys.path.insert(0, ROOT)

DATA, GAP, END = 0, 1, 2
DECIDE_BYTES = 24  # client bytes to decide on, as the dispatcher does (proto.DETECT_BYTES)


# -- step 1: recording ---------------------------------------------------------------------

class ConnMeta:
    __slots__ = ("id", "point", "client", "server", "dialled", "roles_inferred")

    def __init__(self, conn: object) -> None:
        c, s = conn.client, conn.server  # type: ignore[attr-defined]
        self.id = conn.id  # type: ignore[attr-defined]
        self.point = conn.point  # type: ignore[attr-defined]
        self.client = (c.src, c.sport)
        self.server = (s.src, s.sport)
        self.dialled = conn.dialled  # type: ignore[attr-defined]
        self.roles_inferred = conn.roles_inferred  # type: ignore[attr-defined]


class _RecConn:
    """Both directions of one connection; decides keep/drop on the client's first bytes."""

    __slots__ = ("rec", "meta", "events", "state", "head", "ended", "last_ts")

    def __init__(self, rec: Recorder, conn: object) -> None:
        self.rec = rec
        self.meta = ConnMeta(conn)
        self.events: list[tuple[bool, int, object, int]] = []
        self.state = 0  # 0 undecided, 1 keep, -1 drop
        self.head = b""
        self.ended = 0
        self.last_ts = 0

    def add(self, is_client: bool, kind: int, v: object, ts: int) -> None:
        if self.state < 0:
            return
        rec = self.rec
        if rec.full:
            if kind == END:  # keep the end events, so the parsers see how each side ended
                self.events.append((is_client, kind, v, ts))
            return
        self.last_ts = ts
        if self.state == 0 and is_client:
            if kind == DATA:
                self.head += v  # type: ignore[operator]
            if kind != DATA or len(self.head) >= DECIDE_BYTES:
                self._decide()
                if self.state < 0:
                    return
        self.events.append((is_client, kind, v, ts))
        if kind == DATA:
            rec.bytes += len(v)  # type: ignore[arg-type]
            if rec.bytes > rec.cap:
                rec.full = True
        elif kind == END:
            self.ended += 1

    def _decide(self) -> None:
        from sniffer.proto import detect_client  # the dispatcher's test: h2c "PRI *" is not

        if self.head and detect_client(self.head) == "http1":
            self.state = 1
            self.rec.kept.append(self)
        else:
            self.state = -1
            self.rec.bytes -= sum(len(v) for _c, k, v, _t in self.events if k == DATA)
            self.events = []
        self.head = b""


class _RecSide:
    __slots__ = ("c", "is_client")

    def __init__(self, c: _RecConn, is_client: bool) -> None:
        self.c = c
        self.is_client = is_client

    def data(self, chunk: bytes, ts: int) -> None:
        self.c.add(self.is_client, DATA, chunk, ts)

    def gap(self, length: int, ts: int) -> None:
        self.c.add(self.is_client, GAP, length, ts)

    def end(self, reason: str, ts: int) -> None:
        self.c.add(self.is_client, END, reason, ts)


class Recorder:
    """The consumer factory for ``run_replay``: records the HTTP/1 connections' streams."""

    def __init__(self, cap_bytes: int) -> None:
        self.cap = cap_bytes
        self.bytes = 0
        self.full = False
        self.kept: list[_RecConn] = []
        self.all: list[_RecConn] = []

    def __call__(self, conn: object) -> tuple[_RecSide, _RecSide]:
        c = _RecConn(self, conn)
        self.all.append(c)
        return _RecSide(c, True), _RecSide(c, False)

    def finish(self) -> list[tuple[ConnMeta, list]]:
        for c in self.all:  # never sent client bytes, or too few to decide: decide now
            if c.state == 0 and c.head:
                c._decide()
        out = []
        for c in self.kept:
            if c.ended < 2:  # cut by the memory cap: end it like the capture's end would
                done = {ic for ic, k, _v, _t in c.events if k == END}
                for ic in (True, False):
                    if ic not in done:
                        c.events.append((ic, END, "capture_end", c.last_ts))
            out.append((c.meta, c.events))
        self.all = []
        return out


def record(path: str, limit: int, cap_bytes: int) -> tuple[list, dict]:
    from sniffer.pipeline import run_replay

    rec = Recorder(cap_bytes)
    t0 = time.perf_counter()
    summary = run_replay([path], count=limit, factory=rec)
    conns = rec.finish()
    info = {"wall_s": time.perf_counter() - t0, "packets": summary.packets,
            "cut_by_cap": rec.full, "connections": len(conns)}
    cnt = Counter()
    for _m, evs in conns:
        for ic, k, v, _t in evs:
            side = "c" if ic else "s"
            cnt[side + "_events"] += 1
            if k == DATA:
                cnt[side + "_bytes"] += len(v)
                cnt[side + "_chunks"] += 1
            elif k == GAP:
                cnt["gaps"] += 1
                cnt["gap_bytes"] += v
            else:
                cnt["end_" + v] += 1
    info.update(cnt)
    return conns, info


# -- step 2: the parsers ---------------------------------------------------------------------
# Each factory takes a ConnMeta and returns (client consumer, server consumer, result), where
# result is summarised afterwards by the parser's ``summary`` function into
# (list of (method, target, status) per request/response pair, requests, responses, errors).

class _Null:
    __slots__ = ()

    def data(self, chunk: bytes, ts: int) -> None:
        pass

    def gap(self, length: int, ts: int) -> None:
        pass

    def end(self, reason: str, ts: int) -> None:
        pass


def make_null(meta: ConnMeta):
    n = _Null()
    return n, n, None


def summary_null(res):
    return [], 0, 0, Counter()


# ours ------------------------------------------------------------------------------------

def setup_ours():
    from sniffer.proto.http1 import Http1Connection
    from sniffer.stats import Stats

    stats = Stats()

    def make(meta: ConnMeta):
        exs: list = []
        h = Http1Connection(None, exs.append, stats, meta.point, meta.client, meta.server,
                            meta.id, meta.dialled)
        if meta.roles_inferred:
            h.start_mid_stream()
        return h.client_side, h.server_side, (exs, stats)

    return make


def summary_ours(res):
    exs, stats = res
    triples = [(ex.method, ex.target, ex.status) for ex in exs]
    errs = Counter({f"anomaly:{k}": v for (s, k), v in stats.counts.items() if s == "http1"})
    return (triples, sum(1 for ex in exs if ex.method), sum(1 for ex in exs if ex.status),
            errs)


class _Result:
    """What the foreign parsers' adapters collect."""

    __slots__ = ("requests", "responses", "errors")

    def __init__(self) -> None:
        # requests: (method, target, headers, first_ts or None, last_ts or None)
        self.requests: list[list] = []
        # responses: (status, headers, first_ts or None, last_ts or None)
        self.responses: list[list] = []
        self.errors: list[str] = []


def summary_foreign(res: _Result):
    triples = [(q[0] if q else "", q[1] if q else "", r[0] if r else 0)
               for q, r in zip_longest(res.requests, res.responses)]
    return triples, len(res.requests), len(res.responses), Counter(res.errors)


# httptools -----------------------------------------------------------------------------------

def setup_httptools(lenient: bool = False):
    import httptools

    Error = httptools.HttpParserError
    Upgrade = httptools.HttpParserUpgrade

    class Side:
        __slots__ = ("res", "p", "ts", "url", "hdrs", "msg", "dead", "is_request")

        def __init__(self, res: _Result, is_request: bool) -> None:
            self.res = res
            self.is_request = is_request
            self.ts = 0
            self.url = b""
            self.hdrs: list = []
            self.msg: list | None = None
            self.dead = False
            self.p = (httptools.HttpRequestParser(self) if is_request
                      else httptools.HttpResponseParser(self))
            if lenient:
                self.p.set_dangerous_leniencies(
                    lenient_headers=True, lenient_chunked_length=True,
                    lenient_keep_alive=True, lenient_transfer_encoding=True,
                    lenient_version=True, lenient_data_after_close=True,
                    lenient_optional_lf_after_cr=True, lenient_optional_cr_before_lf=True,
                    lenient_optional_crlf_after_chunk=True,
                    lenient_spaces_after_chunk_size=True)

        # llhttp callbacks (no on_body: httptools then skips the body in C)
        def on_message_begin(self) -> None:
            self.url = b""
            self.hdrs = []
            self.msg = [None, None, None, self.ts, None]

        def on_url(self, url: bytes) -> None:
            self.url += url  # may come in pieces when the request line spans chunks

        def on_header(self, name: bytes, value: bytes) -> None:
            self.hdrs.append((name.decode("latin-1").lower(), value.decode("latin-1")))

        def on_headers_complete(self) -> None:
            m = self.msg
            if self.is_request:
                m[0] = self.p.get_method().decode("latin-1")
                m[1] = self.url.decode("latin-1")
                m[2] = self.hdrs
                self.res.requests.append(m)
            else:
                status = self.p.get_status_code()
                if 100 <= status < 200 and status != 101:
                    self.msg = None  # interim: llhttp treats it as a message of its own
                    return
                self.res.responses.append([status, self.hdrs, m[3], None])

        def on_message_complete(self) -> None:
            m = self.msg
            if m is not None:
                if self.is_request:
                    m[4] = self.ts
                else:
                    self.res.responses[-1][3] = self.ts

        # StreamConsumer
        def data(self, chunk: bytes, ts: int) -> None:
            if self.dead:
                return
            self.ts = ts
            try:
                self.p.feed_data(chunk)
            except Upgrade:
                self.res.errors.append("upgrade/CONNECT: parser stops")
                self.dead = True
            except Error as e:
                self.res.errors.append(f"{type(e).__name__}: {e}")
                self.dead = True

        def gap(self, length: int, ts: int) -> None:
            if not self.dead:
                self.res.errors.append("gap: no way to skip bytes, direction stops")
                self.dead = True

        def end(self, reason: str, ts: int) -> None:
            # httptools exposes no llhttp_finish(): a close-delimited body never completes
            pass

    def make(meta: ConnMeta):
        res = _Result()
        return Side(res, True), Side(res, False), res

    return make


# h11 -----------------------------------------------------------------------------------------

def setup_h11():
    import h11

    NEED_DATA, PAUSED = h11.NEED_DATA, h11.PAUSED
    Request, Response, EndOfMessage = h11.Request, h11.Response, h11.EndOfMessage
    Informational, Closed = h11.InformationalResponse, h11.ConnectionClosed
    IDLE, DONE = h11.IDLE, h11.DONE
    SERVER, CLIENT = h11.SERVER, h11.CLIENT
    ProtocolError = h11.ProtocolError

    class Pair:
        __slots__ = ("res", "req", "resp", "todo", "req_dead", "resp_dead", "client",
                     "server", "cur")

        def __init__(self) -> None:
            self.res = _Result()
            self.req = h11.Connection(SERVER)
            self.resp = h11.Connection(CLIENT)
            self.todo: deque[bytes] = deque()  # methods of requests not yet shown to resp
            self.req_dead = self.resp_dead = False
            self.cur: list | None = None
            self.client = ReqSide(self)
            self.server = RespSide(self)

        def pull_req(self, ts: int) -> None:
            conn = self.req
            res = self.res
            try:
                while True:
                    ev = conn.next_event()
                    if ev is NEED_DATA:
                        break
                    t = type(ev)
                    if t is Request:
                        hdrs = [(n.decode("latin-1"), v.decode("latin-1"))
                                for n, v in ev.headers]
                        # h11 reports a head once it is whole: first-byte time unknown
                        self.cur = [ev.method.decode("latin-1"), ev.target.decode("latin-1"),
                                    hdrs, None, None]
                        res.requests.append(self.cur)
                        self.todo.append(ev.method)
                        if self.todo and not self.resp_dead:
                            self.pull_resp(ts)
                    elif t is EndOfMessage:
                        if self.cur is not None:
                            self.cur[4] = ts
                        # a SERVER-role Connection waits for our response before the next
                        # request: start a fresh one on the bytes it had not processed
                        data, closed = conn.trailing_data
                        conn = self.req = h11.Connection(SERVER)
                        if data:
                            conn.receive_data(bytes(data))
                        if closed:
                            conn.receive_data(b"")
                    elif t is Closed or ev is PAUSED:
                        break
            except ProtocolError as e:
                res.errors.append(f"request {type(e).__name__}: {e}")
                self.req_dead = True

        def pull_resp(self, ts: int) -> None:
            conn = self.resp
            res = self.res
            try:
                while True:
                    if conn.our_state is IDLE:
                        if not self.todo:
                            return  # wait for the request this response answers
                        conn.send(Request(method=self.todo.popleft(), target="/",
                                          headers=[("Host", "x")]))
                        conn.send(EndOfMessage())
                    ev = conn.next_event()
                    if ev is NEED_DATA:
                        return
                    t = type(ev)
                    if t is Response:
                        hdrs = [(n.decode("latin-1"), v.decode("latin-1"))
                                for n, v in ev.headers]
                        res.responses.append([ev.status_code, hdrs, None, None])
                    elif t is EndOfMessage:
                        if res.responses:
                            res.responses[-1][3] = ts
                        if conn.our_state is DONE and conn.their_state is DONE:
                            conn.start_next_cycle()
                        else:  # MUST_CLOSE (HTTP/1.0, Connection: close): a fresh one
                            data, closed = conn.trailing_data
                            conn = self.resp = h11.Connection(CLIENT)
                            if data:
                                conn.receive_data(bytes(data))
                            if closed:
                                conn.receive_data(b"")
                    elif t is Informational:
                        if ev.status_code == 101:
                            res.errors.append("101 upgrade: h11 pauses, direction stops")
                            self.resp_dead = True
                            return
                    elif ev is PAUSED:
                        res.errors.append("response PAUSED (CONNECT/upgrade)")
                        self.resp_dead = True
                        return
                    elif t is Closed:
                        return
            except ProtocolError as e:
                res.errors.append(f"response {type(e).__name__}: {e}")
                self.resp_dead = True

    class ReqSide:
        __slots__ = ("p",)

        def __init__(self, p: Pair) -> None:
            self.p = p

        def data(self, chunk: bytes, ts: int) -> None:
            p = self.p
            if p.req_dead:
                return
            try:
                p.req.receive_data(chunk)
            except ProtocolError as e:
                p.res.errors.append(f"request {type(e).__name__}: {e}")
                p.req_dead = True
                return
            p.pull_req(ts)

        def gap(self, length: int, ts: int) -> None:
            p = self.p
            if not p.req_dead:
                p.res.errors.append("gap: no way to skip bytes, direction stops")
                p.req_dead = True

        def end(self, reason: str, ts: int) -> None:
            p = self.p
            if reason == "fin" and not p.req_dead:
                p.req.receive_data(b"")
                p.pull_req(ts)

    class RespSide:
        __slots__ = ("p",)

        def __init__(self, p: Pair) -> None:
            self.p = p

        def data(self, chunk: bytes, ts: int) -> None:
            p = self.p
            if p.resp_dead:
                return
            try:
                p.resp.receive_data(chunk)
            except ProtocolError as e:
                p.res.errors.append(f"response {type(e).__name__}: {e}")
                p.resp_dead = True
                return
            p.pull_resp(ts)

        def gap(self, length: int, ts: int) -> None:
            p = self.p
            if not p.resp_dead:
                p.res.errors.append("gap: no way to skip bytes, direction stops")
                p.resp_dead = True

        def end(self, reason: str, ts: int) -> None:
            p = self.p
            if reason == "fin" and not p.resp_dead:
                p.resp.receive_data(b"")
                p.pull_resp(ts)

    def make(meta: ConnMeta):
        p = Pair()
        return p.client, p.server, p.res

    return make


# dpkt ----------------------------------------------------------------------------------------

def setup_dpkt():
    import dpkt
    import dpkt.http

    NeedData, UnpackError = dpkt.NeedData, dpkt.UnpackError
    Req, Resp = dpkt.http.Request, dpkt.http.Response

    def headers_of(d) -> list:
        out = []
        for k, v in d.items():  # dpkt folds repeated names into a list
            if type(v) is list:
                out.extend((k, x) for x in v)
            else:
                out.append((k, v))
        return out

    class Side:
        __slots__ = ("res", "is_request", "buf", "head_ok", "first_ts", "dead")

        def __init__(self, res: _Result, is_request: bool) -> None:
            self.res = res
            self.is_request = is_request
            self.buf = b""
            self.head_ok = False  # the buffered message's head is known to be complete
            self.first_ts = 0
            self.dead = False

        def data(self, chunk: bytes, ts: int) -> None:
            if self.dead:
                return
            old = self.buf
            if old:
                buf = old + chunk
                start = len(old) - 3 if len(old) > 3 else 0
            else:
                buf, start = chunk, 0
                self.first_ts = ts
            res = self.res
            while buf:
                if not self.head_ok:
                    # dpkt would "parse" a truncated head: wait for its blank line first
                    if buf.find(b"\r\n\r\n", start) < 0 and buf.find(b"\n\n", start) < 0:
                        break
                    self.head_ok = True
                try:
                    m = Req(buf) if self.is_request else Resp(buf)
                except NeedData:
                    break  # body incomplete: parse it all again with the next chunk
                except UnpackError as e:
                    res.errors.append(f"{'request' if self.is_request else 'response'} "
                                      f"UnpackError: {str(e)[:60]}")
                    self.dead = True
                    buf = b""
                    break
                except (ValueError, IndexError, TypeError) as e:  # int() of a bad/repeated CL
                    res.errors.append(f"{type(e).__name__}: {str(e)[:60]}")
                    self.dead = True
                    buf = b""
                    break
                if self.is_request:
                    res.requests.append([m.method, m.uri, headers_of(m.headers), self.first_ts,
                                         ts])
                else:
                    status = int(m.status)
                    if not (100 <= status < 200 and status != 101):
                        res.responses.append([status, headers_of(m.headers), self.first_ts,
                                              ts])
                buf = m.data
                self.head_ok = False
                start = 0
                self.first_ts = ts
            self.buf = buf

        def gap(self, length: int, ts: int) -> None:
            if not self.dead:
                self.res.errors.append("gap: no way to skip bytes, direction stops")
                self.dead = True

        def end(self, reason: str, ts: int) -> None:
            # a message cut by the end of the stream: dpkt raises NeedData *after* filling in
            # the start line and headers, so unpack into a bare object to keep its head
            if self.dead or not self.buf or not self.head_ok:
                return
            m = (Req if self.is_request else Resp).__new__(Req if self.is_request else Resp)
            try:
                m.unpack(self.buf)
            except NeedData:
                pass
            except (UnpackError, ValueError, IndexError, TypeError):
                return
            if self.is_request:
                self.res.requests.append([m.method, m.uri, headers_of(m.headers or {}),
                                          self.first_ts, None])
            else:
                status = int(m.status)
                if not (100 <= status < 200 and status != 101):
                    self.res.responses.append([status, headers_of(m.headers or {}),
                                               self.first_ts, None])

    def make(meta: ConnMeta):
        res = _Result()
        return Side(res, True), Side(res, False), res

    return make


PARSERS = {
    "null": (lambda: make_null, summary_null, None),
    "ours": (setup_ours, summary_ours, None),
    "httptools": (setup_httptools, summary_foreign, "httptools"),
    "httptools_lenient": (lambda: setup_httptools(True), summary_foreign, "httptools"),
    "h11": (setup_h11, summary_foreign, "h11"),
    "dpkt": (setup_dpkt, summary_foreign, "dpkt"),
}

LACKS = {
    "ours": "(reference) first/last-byte chunk times, gaps skipped in bodies + resync, "
            "lenient, mid-stream join, bounded heads; pure Python per byte-run",
    "httptools": "no gap handling or resync (an error kills the parser for the direction); "
                 "no HEAD/CONNECT hint for response framing; no finish() for close-"
                 "delimited bodies; strict unless set_dangerous_leniencies(); C speed, "
                 "Python per callback",
    "httptools_lenient": "httptools with every set_dangerous_leniencies() flag on: "
                         "accepts more, still no gaps/resync/HEAD hint",
    "h11": "strict (raises on what we tolerate), no gaps/resync/mid-stream join; must be "
           "sent each request to frame responses; a new server-role Connection per request; "
           "no first-byte times; heaviest per-message Python",
    "dpkt": "whole message in one buffer (concat + re-parse on NeedData), no gaps/resync, no "
            "HEAD/1xx-aware framing for requests, close-delimited body = whatever is "
            "buffered, merged duplicate headers, no first-byte times of its own",
}


def available(names: list[str]) -> dict:
    out = {}
    for name in names:
        setup, summ, pkg = PARSERS[name]
        try:
            make = setup()
        except ImportError as e:
            print(f"SKIP {name}: package {pkg!r} is not installed ({e}); "
                  f"`.venv/bin/pip install {pkg}` to include it", file=sys.stderr)
            continue
        out[name] = (make, summ)
    return out


def run_once(make, conns: list) -> tuple[float, list]:
    results = []
    append = results.append
    t0 = time.perf_counter()
    for meta, events in conns:
        c, s, res = make(meta)
        for is_client, kind, v, ts in events:
            side = c if is_client else s
            if kind == DATA:
                side.data(v, ts)
            elif kind == GAP:
                side.gap(v, ts)
            else:
                side.end(v, ts)
        append(res)
    return time.perf_counter() - t0, results


def compare(name: str, ref: list, got: list, show: int = 3) -> str:
    bad_conns = bad_items = 0
    examples = []
    for ci, (a, b) in enumerate(zip(ref, got)):
        if a == b:
            continue
        bad_conns += 1
        for i, (x, y) in enumerate(zip_longest(a, b)):
            if x != y:
                bad_items += 1
                if len(examples) < show:
                    examples.append(f"    conn #{ci} item {i}: ours={x} {name}={y}")
    if not bad_conns:
        return f"  {name}: same (method, target, status) list as ours on every connection"
    return "\n".join([f"  {name}: MISMATCH on {bad_conns} connection(s), {bad_items} item(s)"]
                     + examples)


# -- untimed: what each parser does with real-world quirks --------------------------------------

class _FakeMeta:
    def __init__(self, roles_inferred: bool = False) -> None:
        self.id = 0
        self.point = None
        self.client = (b"\x7f\x00\x00\x01", 40000)
        self.server = (b"\x7f\x00\x00\x02", 80)
        self.dialled = None
        self.roles_inferred = roles_inferred


_OK2 = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
_GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
# (name, client chunks, server chunks (an int = a gap of that many bytes), expected triples,
#  roles inferred)
QUIRKS = [
    ("baseline", [_GET], [_OK2], [("GET", "/", 200)], False),
    ("bare LF line ends", [b"GET / HTTP/1.1\nHost: a\n\n"],
     [b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok"], [("GET", "/", 200)], False),
    ("obs-fold header", [b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n"], [_OK2],
     [("GET", "/", 200)], False),
    ("space in target", [b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"], [_OK2],
     [("GET", "/a b", 200)], False),
    ("1.1 without Host", [b"GET / HTTP/1.1\r\n\r\n"], [_OK2], [("GET", "/", 200)], False),
    ("CRLF before request", [b"\r\n" + _GET], [_OK2], [("GET", "/", 200)], False),
    ("space before colon", [b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"], [_OK2],
     [("GET", "/", 200)], False),
    ("status without reason", [_GET], [b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok"],
     [("GET", "/", 200)], False),
    ("HTTP/1.2 status line", [_GET], [b"HTTP/1.2 200 OK\r\nContent-Length: 2\r\n\r\nok"],
     [("GET", "/", 200)], False),
    ("Content-Length twice", [_GET],
     [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok"],
     [("GET", "/", 200)], False),
    ("100 Continue first", [b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"],
     [b"HTTP/1.1 100 Continue\r\n\r\n" + _OK2], [("POST", "/", 200)], False),
    ("HEAD then GET", [b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", _GET],
     [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", b"HTTP/1.1 204 No Content\r\n\r\n"],
     [("HEAD", "/", 200), ("GET", "/", 204)], False),
    ("close-delimited + FIN", [b"GET / HTTP/1.0\r\n\r\n"],
     [b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nbody", b" more"],
     [("GET", "/", 200)], False),
    ("gap in a body", [_GET, _GET],
     [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab", 8, _OK2],
     [("GET", "/", 200), ("GET", "/", 200)], False),
    ("mid-stream join", [b"dy-of-an-earlier-post" + _GET],
     [b"tail of a response\r\n" + _OK2], [("GET", "/", 200)], True),
]


def quirks(parsers: dict) -> None:
    names = [n for n in parsers if n != "null"]
    print("\nquirk probe (untimed; ok = the expected (method, target, status) list, no error):")
    print(f"  {'quirk':<22}" + "".join(f"{n:<26}" for n in names))
    for qname, cl, sv, want, inferred in QUIRKS:
        row = []
        for n in names:
            make, summary = parsers[n]
            events = [(True, DATA, c, i) for i, c in enumerate(cl)]
            # each response after its request, as on the wire
            for i, x in enumerate(sv):
                events.insert(min(2 * i + 1, len(events)),
                              (False, GAP, x, 100 + i) if isinstance(x, int)
                              else (False, DATA, x, 100 + i))
            events += [(True, END, "fin", 200), (False, END, "fin", 200)]
            try:
                _dt, res = run_once(make, [(_FakeMeta(inferred), events)])
                triples, _nq, _nr, errs = summary(res[0])
            except Exception as e:  # noqa: BLE001 - reported, not hidden
                row.append(f"RAISED {type(e).__name__}")
                continue
            errs = Counter({k: v for k, v in errs.items()
                            if not k.startswith("anomaly:")})  # ours counts, doesn't fail
            if triples == want and not errs:
                row.append("ok")
            else:
                got = ",".join(f"{(m or '-')[:6]}:{st or '-'}" for m, _t, st in triples)
                got = got or "nothing"
                err = (" !" + next(iter(errs)).split(":")[0].split()[-1]) if errs else ""
                row.append(f"{got}{err}")
        print(f"  {qname:<22}" + "".join(f"{c[:25]:<26}" for c in row))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("capture", nargs="?", default=DEFAULT)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--limit", type=int, default=0,
                    help="read only the first N packets of the capture (default 0: all)")
    ap.add_argument("--max-mb", type=float, default=512,
                    help="cap on recorded stream bytes, MiB (default 512)")
    ap.add_argument("--parsers", default=",".join(PARSERS),
                    help=f"comma-separated subset of {','.join(PARSERS)}")
    ap.add_argument("--no-quirks", action="store_true",
                    help="skip the untimed probe of quirks (leniency, gaps, HEAD, resync)")
    a = ap.parse_args()
    names = [n.strip() for n in a.parsers.split(",") if n.strip()]
    unknown = [n for n in names if n not in PARSERS]
    if unknown:
        ap.error(f"unknown parser(s): {', '.join(unknown)}")
    if "ours" not in names:
        names.insert(0, "ours")  # the reference for ratios and the comparison

    parsers = available(names)
    print(f"capture: {a.capture}" + (f" (first {a.limit:,} packets)" if a.limit else ""))
    conns, info = record(a.capture, a.limit, int(a.max_mb * (1 << 20)))
    print(f"recorded in {info['wall_s']:.2f} s from {info['packets']:,} packets: "
          f"{info['connections']} HTTP/1 connections; client {info.get('c_chunks', 0):,} "
          f"chunks / {info.get('c_bytes', 0):,} B, server {info.get('s_chunks', 0):,} chunks / "
          f"{info.get('s_bytes', 0):,} B; gaps {info.get('gaps', 0)} "
          f"({info.get('gap_bytes', 0):,} B); ends "
          + ", ".join(f"{k[4:]} {v}" for k, v in sorted(info.items()) if k.startswith("end_"))
          + ("; CUT BY --max-mb" if info["cut_by_cap"] else ""))
    if not conns:
        print("no HTTP/1 connections recorded")
        return 1
    rss_rec = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gc.collect()
    gc.freeze()  # the recorded events are long-lived: keep them out of the collector's walks

    times: dict[str, list[float]] = {n: [] for n in parsers}
    summ: dict[str, dict] = {}
    for r in range(a.rounds):
        for name, (make, summary) in parsers.items():
            gc.collect()
            dt, results = run_once(make, conns)
            times[name].append(dt)
            if r == a.rounds - 1:  # the counts and lists, untimed, from the last round
                per_conn = [summary(res) for res in results]
                errs: Counter = Counter()
                for p in per_conn:
                    errs.update(p[3])
                summ[name] = {"triples": [p[0] for p in per_conn],
                              "requests": sum(p[1] for p in per_conn),
                              "responses": sum(p[2] for p in per_conn), "errors": errs}
                del per_conn
            del results
        print(f"round {r + 1}/{a.rounds}: "
              + "  ".join(f"{n} {t[-1]:.3f}s" for n, t in times.items()), flush=True)

    ours_med = statistics.median(times["ours"])
    null_med = statistics.median(times["null"]) if "null" in times else 0.0
    ref_msgs = summ["ours"]["requests"] + summ["ours"]["responses"]
    print(f"\n{a.rounds} interleaved rounds on the same {info['connections']} connections; "
          f"messages = requests + responses; ratio = ours median / parser median (>1: faster "
          f"than ours); us/msg over null = (median - null median) / ours' message count")
    hdr = (f"{'parser':<18}{'median s':>9}{'min s':>8}{'requests':>10}{'responses':>10}"
           f"{'msgs/s':>11}{'x ours':>8}{'us/msg':>8}{'>null':>7}{'errors':>8}")
    print(hdr)
    print("-" * len(hdr))
    for name, t in times.items():
        med, mn = statistics.median(t), min(t)
        s = summ[name]
        msgs = s["requests"] + s["responses"]
        rate = msgs / med if msgs else 0.0
        per = med / ref_msgs * 1e6
        over = (med - null_med) / ref_msgs * 1e6
        ratio = f"{ours_med / med:>7.2f}x" if name != "null" else f"{'-':>8}"
        print(f"{name:<18}{med:>9.3f}{mn:>8.3f}{s['requests']:>10,}{s['responses']:>10,}"
              f"{rate:>11,.0f}{ratio}{per:>8.2f}{over:>7.2f}"
              f"{sum(s['errors'].values()):>8}")

    print("\ncounts and agreement with ours:")
    ref = summ["ours"]
    for name, s in summ.items():
        if name in ("null", "ours"):
            continue
        if (s["requests"], s["responses"]) != (ref["requests"], ref["responses"]):
            print(f"  {name}: COUNT MISMATCH: {s['requests']:,} requests / "
                  f"{s['responses']:,} responses vs ours {ref['requests']:,} / "
                  f"{ref['responses']:,}")
        print(compare(name, ref["triples"], s["triples"]))
    for name, s in summ.items():
        if s["errors"]:
            print(f"  {name} errors/anomalies: "
                  + "; ".join(f"{k} x{v}" for k, v in s["errors"].most_common(6)))

    if not a.no_quirks:
        quirks(parsers)

    print("\nwhat each would lack for our needs:")
    for name in times:
        if name in LACKS:
            print(f"  {name:<18}{LACKS[name]}")
    print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB "
          f"(after recording: {rss_rec:,.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
