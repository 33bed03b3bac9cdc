"""Live capture over several worker processes joined by ``PACKET_FANOUT``.

Layout (``wirespan capture --workers N``)::

    kernel ── PACKET_FANOUT (hash) ──▶ worker 1: ring → decode → TCP → parsers ─┐ exchanges
                                  └──▶ worker N: ring → decode → TCP → parsers ─┤ (pipes)
                                                                               ▼
                           main process: reorder by time → correlator → spans / exporters

* The main process opens every socket of every worker (so a bad interface, filter or
  missing privilege is one clear error before anything starts), then forks the workers; each
  keeps its own sockets and closes the others'. Every interface has its own fanout group
  (the kernel's hash is symmetric, so both directions of a connection reach one worker) --
  except ``lo``: behind an outbound REDIRECT (a sidecar) the two directions of one
  connection carry different address pairs there (``podIP:eph → 127.0.0.1:4140`` and
  ``dialledIP:port → podIP:eph``), which no packet hash can pair, so each namespace's ``lo``
  is captured whole by one worker (round robin over the namespaces).
* A worker runs the same ``Engine`` and ``Dispatcher`` as replay, and sends its finished
  exchanges and TLS sessions to the main process in batches, each with a *watermark*: the
  time before which the worker has consumed every packet the kernel captured
  (``LiveCapture.on_batch``).
* The main process holds exchanges in a heap and hands them to the one ``Backend``
  (counters, correlator) in the order of their last timestamp, once every worker's watermark
  has passed it. The two legs of a proxy hop are different connections, so usually in
  different workers: this is where they meet, in the order one process would have seen them.
* Stop (``stop()``, SIGINT/SIGTERM in the CLI, ``duration``): each worker is told with
  SIGTERM, drains its ring, closes its flows (flushing what they hold) and sends the rest and
  its counters; the main process waits for all of them, then finishes the correlator.
"""

from __future__ import annotations

import heapq
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from ..errors import WirespanError
from ..exchange import unpack
from ..stats import Stats
from .live import LiveCapture, RingConfig
from .model import CapturePoint

# a worker sends a batch at least this often while it has exchanges (seconds)
FLUSH_INTERVAL = 0.05
MAX_BATCH = 512


class WorkerFailed(WirespanError):
    pass


def _worker_main(index: int, live: LiveCapture, others: list[LiveCapture], conn: Connection,
                 tcp_config: Any) -> None:  # pragma: no cover - runs in the child process
    # (coverage of forked children is not collected; the fanout tests exercise all of this)
    from ..exchange import pack
    from ..pipeline import Engine, low_gc
    from ..proto import Dispatcher

    for o in others:
        o.close()
    signal.signal(signal.SIGTERM, lambda *_: live.stop())
    signal.signal(signal.SIGINT, lambda *_: live.stop())
    stats = Stats()
    pending: list[Any] = []
    tls: list[Any] = []
    sent = [time.monotonic(), 0]

    def strip(obj: Any) -> Any:
        obj.point = obj.point.name if obj.point is not None else None  # interned in main
        return obj

    def flush(watermark: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and len(pending) < MAX_BATCH and now - sent[0] < FLUSH_INTERVAL:
            return
        if not pending and not tls and watermark - sent[1] < 50_000_000 and not force:
            return
        # (exchanges as plain tuples: pickling them is ~3x cheaper for both processes, and
        # the main process's unpickling is what limits fanout)
        conn.send(("x", [pack(e, None if e.point is None else e.point.name) for e in pending],
                   [strip(t) for t in tls], watermark))
        pending.clear()
        tls.clear()
        sent[:] = [now, watermark]

    engine = Engine(stats, Dispatcher(pending.append, stats, tls.append), tcp_config)

    def status(lc: LiveCapture) -> None:
        conn.send(("s", {"packets": engine.packets, "flows": engine.flows.connections,
                         "drops": lc.drops, "active": engine.flows.active,
                         "points": {p.name: p.packets for p in lc.points},
                         "kernel_drops": {s.point.name: s.kernel_drops for s in lc.sockets}}))

    live.on_batch = flush
    live.on_tick = status
    conn.send(("p", [(p.name, p) for p in live.points]))
    old = low_gc()
    try:
        engine.run(live)
        engine.finish()
    finally:
        import gc

        gc.set_threshold(*old)
    flush(1 << 62, force=True)
    conn.send(("done", {
        "packets": engine.packets, "bytes": engine.bytes, "tcp_packets": engine.tcp_packets,
        "first_ts": engine.first_ts, "last_ts": engine.last_ts, "counts": dict(stats.counts),
        "points": {p.name: p.packets for p in live.points},
        "kernel": live.kernel_stats(),
    }))
    live.close()
    conn.close()


class FanoutCapture:
    """``workers`` processes capturing ``interfaces`` (``(namespace, name)`` pairs) through
    one fanout group per interface. ``run(on_exchange, on_tls)`` blocks until stopped."""

    def __init__(self, interfaces: list[tuple[str, str]], bpf: str = "tcp", *, workers: int = 2,
                 snaplen: int = 262144, promisc: bool = False, ring: RingConfig | None = None,
                 duration: float = 0.0) -> None:
        if workers < 2:
            raise ValueError("FanoutCapture needs at least 2 workers; use LiveCapture for 1")
        self.workers = workers
        self.duration = duration
        self._procs: list[Any] = []
        self._conns: list[Connection] = []
        self.groups: dict[tuple[str, str], int] = {}
        self.lives: list[LiveCapture] = []
        from .live import expand_any

        ifaces = expand_any(interfaces)
        spaces = list(dict.fromkeys(ns for ns, _ in ifaces))
        lo = {(ns, n): spaces.index(ns) % workers for ns, n in ifaces if n == "lo"}
        try:
            for w in range(workers):
                self.lives.append(LiveCapture(
                    interfaces, bpf, snaplen=snaplen, promisc=promisc, ring=ring,
                    fanout=self.groups, no_fanout=set(lo),
                    exclude={x for x, owner in lo.items() if owner != w}))
        except BaseException:
            self.close()
            raise
        # (a worker left with nothing to capture -- only `lo`s, fewer namespaces than
        # workers -- is not started)
        idle = [x for x in self.lives if not x.sockets]
        self.lives = [x for x in self.lives if x.sockets] or self.lives[:1]
        for x in idle:
            x.close()
        self.workers = len(self.lives)
        self.points: dict[str, CapturePoint] = {}  # by name: one object per interface
        for live in self.lives:
            for p in live.points:
                if p.name not in self.points:
                    self.points[p.name] = CapturePoint(p.source, p.interface, p.linktype,
                                                       p.namespace, p.snaplen)
        self.skipped = self.lives[0].skipped
        self._stop = False
        self.status: list[dict[str, int]] = [{} for _ in range(self.workers)]
        self.results: list[dict[str, Any] | None] = [None] * self.workers
        self.failed: list[str] = []

    def stop(self) -> None:
        self._stop = True

    @property
    def packets(self) -> int:
        return sum(s.get("packets", 0) for s in self.status)

    @property
    def drops(self) -> int:
        return sum(s.get("drops", 0) for s in self.status)

    @property
    def flows(self) -> int:
        return sum(s.get("flows", 0) for s in self.status)

    def start(self, tcp_config: Any = None) -> None:
        """Fork the workers (before the caller starts any thread: exporters come after)."""
        ctx = mp.get_context("fork")
        for i, live in enumerate(self.lives):
            parent, child = ctx.Pipe(duplex=False)
            others = [x for j, x in enumerate(self.lives) if j != i]
            p = ctx.Process(target=_worker_main, args=(i, live, others, child, tcp_config),
                            name=f"wirespan-worker-{i + 1}", daemon=True)
            p.start()
            child.close()
            self._procs.append(p)
            self._conns.append(parent)
        for live in self.lives:  # the workers hold their own copies now
            live.close()

    def run(self, on_exchange: Callable[[Any], None], on_tls: Callable[[Any], None],
            on_tick: Callable[[FanoutCapture], None] | None = None,
            extra_fds: dict[int, Callable[[], None]] | None = None) -> None:
        """Feed ``on_exchange`` in time order until every worker has finished (after
        ``stop()`` or the duration). ``extra_fds`` are other file descriptors to serve
        meanwhile (a ``-w`` tee socket): ``{fd: callback}``."""
        if not self._procs:
            self.start()
        conns = self._conns
        watermark = [0] * self.workers
        open_ = {c: i for i, c in enumerate(conns)}
        heap: list[tuple[int, int, Any]] = []
        seq = 0
        points = self.points
        deadline = time.monotonic() + self.duration if self.duration > 0 else None
        signalled = False
        last_tick = time.monotonic()
        extra = extra_fds or {}

        def point(name: str | None) -> CapturePoint | None:
            if name is None:
                return None
            p = points.get(name)
            if p is None:  # (an interface only some worker saw, e.g. an SLL2 sub-point)
                p = points[name] = CapturePoint("live", name, 1)
            return p

        def intern(obj: Any) -> Any:
            obj.point = point(obj.point)
            return obj

        while open_:
            now = time.monotonic()
            if not signalled and (self._stop or (deadline is not None and now >= deadline)):
                signalled = True
                for p in self._procs:
                    if p.is_alive():
                        os.kill(p.pid, signal.SIGTERM)
            waitables: list[Any] = [*open_, *extra]
            try:
                ready = wait(waitables, timeout=0.2)
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
            for c in ready:
                if isinstance(c, int):
                    extra[c]()
                    continue
                i = open_[c]  # type: ignore[index]
                try:
                    msg = c.recv()  # type: ignore[union-attr]
                except (EOFError, OSError):
                    self.failed.append(f"worker {i + 1} exited without finishing")
                    watermark[i] = 1 << 62
                    del open_[c]  # type: ignore[arg-type]
                    continue
                kind = msg[0]
                if kind == "x":
                    for t in msg[1]:
                        ex = unpack(t, point(t[1]))
                        rs = ex.response
                        key = max(ex.request.last_ts, rs.last_ts if rs is not None else 0)
                        seq += 1
                        heapq.heappush(heap, (key, seq, ex))
                    for t in msg[2]:
                        on_tls(intern(t))
                    watermark[i] = max(watermark[i], msg[3])
                elif kind == "s":
                    self.status[i] = msg[1]
                elif kind == "p":
                    for name, p in msg[1]:
                        if name not in points:
                            points[name] = CapturePoint(p.source, p.interface, p.linktype,
                                                        p.namespace, p.snaplen)
                elif kind == "done":
                    self.results[i] = msg[1]
                    self.status[i] = {"packets": msg[1]["packets"], "flows": 0,
                                      "drops": sum(v["drops"] for v in msg[1]["kernel"].values())}
                    watermark[i] = 1 << 62
                    del open_[c]  # type: ignore[arg-type]
            low = min(watermark)
            while heap and heap[0][0] <= low:
                on_exchange(heapq.heappop(heap)[2])
            if on_tick is not None and now - last_tick >= 1.0:
                last_tick = now
                on_tick(self)
        while heap:
            on_exchange(heapq.heappop(heap)[2])
        for c in conns:
            c.close()
        for p in self._procs:
            p.join(timeout=5)
            if p.is_alive():  # pragma: no cover - a wedged worker
                p.kill()
                p.join(timeout=1)
        for r in self.results:
            if r is not None:
                for name, n in r["points"].items():
                    if name in points:
                        points[name].packets += n

    def merged(self, stats: Stats) -> dict[str, Any]:
        """The workers' engine counters added up (and their Stats added to ``stats``)."""
        out: dict[str, Any] = {"packets": 0, "bytes": 0, "tcp_packets": 0, "first_ts": None,
                               "last_ts": None, "kernel": {}, "per_worker": []}
        for r in self.results:
            out["per_worker"].append(r["packets"] if r is not None else None)
            if r is None:
                continue
            for k in ("packets", "bytes", "tcp_packets"):
                out[k] += r[k]
            if r["first_ts"] is not None:
                out["first_ts"] = (r["first_ts"] if out["first_ts"] is None
                                   else min(out["first_ts"], r["first_ts"]))
                out["last_ts"] = (r["last_ts"] if out["last_ts"] is None
                                  else max(out["last_ts"], r["last_ts"]))
            for (stage, reason), n in r["counts"].items():
                stats.add(stage, reason, n)
            for name, ks in r["kernel"].items():
                acc = out["kernel"].setdefault(name, {})
                for k, v in ks.items():
                    acc[k] = acc.get(k, 0) + v
        return out

    def close(self) -> None:
        for live in self.lives:
            live.close()
        for p in self._procs:
            if p.is_alive():
                p.kill()
