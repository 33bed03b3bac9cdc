"""Replay in two processes: a child reads, reassembles and parses; this one correlates and
writes (``wirespan replay --jobs 2``).

Layout::

    child:  files → decode → TCP → parsers ──(exchanges and TLS sessions, in order)──┐
                                                                                   ▼ pipe
    this process:                 counters → correlator → mesh hops → spans / exporters

The two halves cost about the same on a busy capture, so on two CPUs the replay takes
about as long as the slower half instead of the sum. What crosses the pipe is exactly what
the in-process pipeline hands from the parsers to the ``Backend`` -- every finished exchange
and every ended TLS session, in the order the parsers produced them -- so the hops, spans
and counters are the same as in one process, with one difference: the correlating process
sees a TLS session only once its connection has ended (as with ``capture --workers``), so
a mesh hop waits for that or for 30 s of capture time instead of 1 s
(``sniffer.meshhop``). Exchanges travel as plain tuples (``sniffer.exchange.pack``), in
batches; capture points are sent once and interned, so identity comparisons hold.

Errors in the child (an unreadable file half-way) come back as the same ``WirespanError``;
if the child dies, the replay fails saying so. Ctrl-C stops both.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from .capture import merge
from .errors import WirespanError
from .exchange import Exchange, pack, unpack
from .stats import Stats

BATCH = 1024  # exchanges and sessions per message
MIN_AUTO_BYTES = 32 << 20  # --jobs auto: two processes for inputs at least this big


def auto_jobs(paths: list[str]) -> int:
    """The default: 2 on a machine with several CPUs for regular files of at least
    ``MIN_AUTO_BYTES`` together (below that, starting a process costs more than it saves),
    else 1. Standard input is always read in one process."""
    if (os.cpu_count() or 1) < 2 or any(p == "-" or not os.path.isfile(p) for p in paths):
        return 1
    return 2 if sum(os.path.getsize(p) for p in paths) >= MIN_AUTO_BYTES else 1


def _child(paths: list[str], count: int, tcp_config: Any, conn: Connection,
           progress: bool) -> None:  # pragma: no cover - runs in the child process
    # (coverage of forked children is not collected; tests/test_replay_jobs.py runs all of it)
    from .pipeline import Engine, low_gc, open_all
    from .proto import Dispatcher
    from .proto.tls import TlsConfig

    stats = Stats()
    items: list[Any] = []
    point_ids: dict[int, int] = {}
    new_points: list[tuple[int, Any]] = []  # (the captures hold every point: ids stay theirs)

    def pid(point: Any) -> int:
        n = point_ids.get(id(point))
        if n is None:
            n = point_ids[id(point)] = len(point_ids)
            new_points.append((n, point))
        return n

    def send() -> None:
        conn.send_bytes(pickle.dumps(("x", new_points, items), pickle.HIGHEST_PROTOCOL))
        new_points.clear()
        items.clear()

    def on_exchange(ex: Exchange) -> None:
        p = ex.point
        items.append(pack(ex, -1 if p is None else pid(p)))
        if len(items) >= BATCH:
            send()

    def on_tls(s: Any) -> None:
        p = s.point
        s.point = -1 if p is None else pid(p)
        items.append(s)
        if len(items) >= BATCH:
            send()

    try:
        caps = open_all(paths, stats)
        total = sum(c.size for c in caps)

        def cb(packets: int, _nbytes: int) -> None:
            if items:
                send()  # (what is pending goes first: the progress follows the work)
            conn.send_bytes(pickle.dumps(("g", packets, sum(c.position() for c in caps),
                                          total)))

        engine = Engine(stats, Dispatcher(on_exchange, stats, on_tls,
                                          tls_config=TlsConfig(rolling=True)), tcp_config)
        old = low_gc()
        try:
            engine.run(merge(caps, stats), count=count, progress=cb if progress else None)
            engine.finish()
        finally:
            import gc

            gc.set_threshold(*old)
        if items or new_points:
            send()
        points = [p for c in caps for p in c.points]
        for c in caps:
            c.close()
        conn.send_bytes(pickle.dumps(("done", {
            "packets": engine.packets, "bytes": engine.bytes,
            "tcp_packets": engine.tcp_packets, "first_ts": engine.first_ts,
            "last_ts": engine.last_ts, "counts": dict(stats.counts), "points": points})))
    except KeyboardInterrupt:
        pass
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it
        if isinstance(e, WirespanError):
            err = ("error", True, e.message, e.hint)
        else:
            err = ("error", False, f"{type(e).__name__}: {e}", None)
        try:
            conn.send_bytes(pickle.dumps(err))
        except OSError:
            pass
    finally:
        conn.close()


def run_two_process(paths: list[str], back: Any, stats: Stats, *, count: int = 0,
                    tcp_config: Any = None,
                    progress: Callable[[int, int, int], None] | None = None) -> dict[str, Any]:
    """Parse ``paths`` in a child process and feed ``back`` (a ``pipeline.Backend``) here,
    in the parsers' order. Returns the engine's counters and the capture points; the child's
    counters are added to ``stats``. The caller finishes ``back``."""
    ctx = mp.get_context("fork")
    here, there = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(paths, count, tcp_config, there,
                                            progress is not None),
                       name="wirespan-parse", daemon=True)
    proc.start()
    there.close()
    points: dict[int, Any] = {-1: None}
    exchange, tls = back.exchange, back.tls
    loads = pickle.loads
    result: dict[str, Any] | None = None
    try:
        while True:
            try:
                msg = loads(here.recv_bytes())
            except EOFError:
                break
            kind = msg[0]
            if kind == "x":
                for n, p in msg[1]:
                    points[n] = p
                for it in msg[2]:
                    if type(it) is tuple:
                        exchange(unpack(it, points[it[1]]))
                    else:
                        it.point = points[it.point]
                        tls(it)
            elif kind == "g":
                if progress is not None:
                    progress(msg[1], msg[2], msg[3])
            elif kind == "done":
                result = msg[1]
                break
            elif kind == "error":
                if msg[1]:
                    raise WirespanError(msg[2], msg[3])
                raise WirespanError(f"the parsing process failed: {msg[2]}",
                                    "retry with --jobs 1, and report it")
    finally:
        here.close()
        proc.join(timeout=5 if result is not None else 0.5)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=1)
    if result is None:
        raise WirespanError(f"the parsing process exited without finishing "
                            f"(exit code {proc.exitcode}); retry with --jobs 1")
    for k, v in result.pop("counts").items():
        stats.counts[k] += v
    return result


__all__ = ["auto_jobs", "run_two_process", "MIN_AUTO_BYTES"]
