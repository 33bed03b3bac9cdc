"""The one loop: source -> decode -> TCP flows -> (stream consumers).

``run_replay`` drives captures through the engine and returns a ``Summary``; the live
capture and the agent feed the same ``Engine`` from their own sources.
"""

from __future__ import annotations

import gc
import time
from itertools import islice
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .capture import Capture, CapturePoint, Record, linktype_name, merge, open_capture
from .decode import ETH_IP4_TCP, Decoder
from .errors import WirespanError
from .correlate import Correlator, Hop, Leg, ProxyStats
from .meshhop import MeshHop, MeshMatcher, ProxyDwell
from .exchange import Exchange
from .proto import Dispatcher
from .proto.tls import TlsConfig, TlsSession
from .tracecontext import TraceContext
from .stats import Stats
from .tcp import FlowTable, TcpConfig
from .tcp.flows import NO_FLOW
from .tcp.flows import ConsumerFactory

ProgressFn = Callable[[int, int], None]  # (packets so far, raw bytes read so far)

# http2 counters that describe traffic, not problems (the rest are parse errors)
HTTP2_NOT_ERRORS = frozenset((
    "connections", "streams", "mid_stream_joins", "h2c_upgrades", "goaway", "rst_stream",
    "push_promise", "resync", "resync_skipped_bytes", "roles_swapped", "orphan_continuation",
    "frames_after_reset",
))


class Engine:
    """Decode + reassembly for one stream of records. Sans-IO: records in, consumer calls out."""

    def __init__(self, stats: Stats | None = None, factory: ConsumerFactory | None = None,
                 tcp_config: TcpConfig | None = None) -> None:
        self.stats = stats or Stats()
        self.decoder = Decoder(self.stats)
        self.flows = FlowTable(self.stats, factory, tcp_config)
        self.packets = 0
        self.bytes = 0
        self.tcp_packets = 0
        self.first_ts: int | None = None
        self.last_ts: int | None = None

    def run(self, records: Iterable[Record], count: int = 0,
            progress: ProgressFn | None = None) -> None:
        """Feed records until exhausted or ``count`` packets; ``progress`` every 65,536.

        The loop inlines the commonest packet of all (Ethernet, IPv4 without options, TCP
        without SYN/FIN/RST, next in sequence on an established direction) straight into its
        consumer; every other packet takes ``Decoder.decode`` and ``FlowTable.feed``, which
        implement the same rules in full. Measured: this is ~25% of the per-packet cost.
        """
        decode = self.decoder.decode
        flows = self.flows
        feed = flows.feed
        lookup = flows.lookup
        ack_beyond = flows.ack_beyond
        max_jump = flows.config.max_seq_jump
        start = packets = self.packets
        nbytes = self.bytes
        slow = slow_tcp = 0  # packets (and TCP packets) that took the general path
        no_flow = NO_FLOW
        lo = self.first_ts if self.first_ts is not None else 1 << 80
        hi = self.last_ts if self.last_ts is not None else -1
        mark = packets + 1  # housekeeping (progress, lo): the first packet, then every 1,024
        next_sweep = flows.next_sweep
        if count:
            records = islice(records, count)
        try:
            for packets, (ts, point, buf, wirelen) in enumerate(records, start + 1):
                nbytes += wirelen
                point.packets += 1
                if ts > hi:
                    hi = ts
                elif ts < lo:  # (lo starts as the first packet's time: see housekeeping)
                    lo = ts
                if ts >= next_sweep:  # idle flows and stale holes, every second of capture
                    flows.sweep(ts)
                    next_sweep = flows.next_sweep
                if packets >= mark:
                    mark = (packets + 1024) & ~1023
                    if ts < lo:
                        lo = ts
                    if progress is not None and not packets & 0xFFFF:
                        progress(packets, nbytes)
                lt = point.linktype
                if lt == 1:
                    n = len(buf)
                    if n >= 54:
                        l2l3, tot, fragproto, addrs, ports, seq, ack, offflags = ETH_IP4_TCP(buf)
                        # Ethernet+IPv4 without options, TCP, not a fragment, no SYN/FIN/RST
                        if (l2l3 >> 8 == 0x080045 and fragproto & 0x3FFF00FF == 6
                                and not offflags & 0x07):
                            h = lookup((point, addrs, ports), no_flow)
                            end = 14 + tot
                            pstart = 34 + ((offflags >> 12) << 2)
                            if h.fast and 54 <= pstart <= end <= n:
                                if pstart < end:
                                    if seq == h.nseq:
                                        h.consumer.data(buf[pstart:end], ts)
                                        h.next += end - pstart
                                        h.nseq = (seq + end - pstart) & 0xFFFFFFFF
                                    else:
                                        h.segment(ts, seq, offflags & 0xFF, buf[pstart:end], 0)
                                if offflags & 0x10 and ack != h.peer.nseq:
                                    # ACK beyond what we saw: evidence of bytes the capture missed
                                    p = h.peer
                                    d = ((ack - p.nseq + 0x80000000) & 0xFFFFFFFF) - 0x80000000
                                    if d > 0 and p.seen and d <= max_jump:
                                        ack_beyond(p, d, ts)
                                continue
                elif lt == 276 and len(buf) >= 8:  # -i any (SLL2): a capture point per ifindex
                    point = point.sub(int.from_bytes(buf[4:8], "big"))
                    point.packets += 1
                slow += 1
                seg = decode(ts, lt, buf, wirelen)
                if seg is not None:
                    slow_tcp += 1
                    feed(ts, point, seg)
                    next_sweep = flows.next_sweep  # feed may have swept
        finally:
            self.tcp_packets += packets - start - slow + slow_tcp
            self.packets, self.bytes = packets, nbytes
            if hi >= 0:
                self.first_ts, self.last_ts = lo, hi

    def finish(self) -> None:
        end = self.last_ts or 0
        self.flows.close_all(end)
        self.decoder.close()


@dataclass
class Summary:
    files: list[str]
    packets: int
    bytes: int
    tcp_packets: int
    first_ts: int | None
    last_ts: int | None
    elapsed_s: float
    link_types: dict[str, int]
    interfaces: dict[str, int]
    stats: Stats
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        if self.first_ts is None or self.last_ts is None:
            return 0.0
        return (self.last_ts - self.first_ts) / 1e9

    @property
    def packets_per_s(self) -> float:
        return self.packets / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        st = self.stats
        tcp = st.by_stage("tcp")
        return {
            "files": self.files,
            "packets": self.packets,
            "bytes": self.bytes,
            "tcp_packets": self.tcp_packets,
            "flows": tcp.get("connections", 0),
            "gaps": tcp.get("gaps", 0),
            "gap_bytes": tcp.get("gap_bytes", 0),
            "link_types": self.link_types,
            "interfaces": self.interfaces,
            "capture": {
                "first_ts_ns": self.first_ts,
                "last_ts_ns": self.last_ts,
                "duration_s": round(self.duration_s, 6),
            },
            "decode_errors": st.by_stage("decode"),
            "capture_errors": st.by_stage("capture"),
            "skipped": st.by_stage("skipped"),
            "tcp": tcp,
            "elapsed_s": round(self.elapsed_s, 3),
            "packets_per_s": round(self.packets_per_s, 1),
            **self.extra,
        }


def open_all(paths: list[str], stats: Stats) -> list[Capture]:
    """Open every file first, so a bad one is reported before any work is done."""
    caps: list[Capture] = []
    try:
        for p in paths:
            caps.append(open_capture(p, stats))
    except WirespanError:
        for c in caps:
            c.close()
        raise
    return caps


class ExchangeCounter:
    """The default exchange sink for now: counts exchanges by protocol and by flag, and hands
    each exchange on to ``then`` (span building, tests) if given."""

    def __init__(self, then: Callable[[Exchange], None] | None = None) -> None:
        self.by_protocol: dict[str, int] = {}
        self.flags: dict[str, int] = {}
        self.grpc_calls = 0
        self.then = then

    def __call__(self, ex: Exchange) -> None:
        self.by_protocol[ex.protocol] = self.by_protocol.get(ex.protocol, 0) + 1
        if ex.stream_id and ex.is_grpc:
            self.grpc_calls += 1
        for f in ex.flags:
            self.flags[f] = self.flags.get(f, 0) + 1
        if self.then is not None:
            self.then(ex)


class TlsCounter:
    """Counts finished TLS sessions (and hands them on)."""

    def __init__(self, then: Callable[[TlsSession], None] | None = None) -> None:
        self.sessions = self.with_sni = self.complete = 0
        self.versions: dict[str, int] = {}
        self.then = then

    def __call__(self, session: TlsSession) -> None:
        self.sessions += 1
        self.with_sni += bool(session.sni)
        self.complete += bool(session.handshake_complete)
        v = session.version_name if session.version else "unknown"
        self.versions[v] = self.versions.get(v, 0) + 1
        if self.then is not None:
            self.then(session)


def run_replay(paths: list[str], *, count: int = 0, factory: ConsumerFactory | None = None,
               tcp_config: TcpConfig | None = None,
               progress: Callable[[int, int, int], None] | None = None,
               on_exchange: Callable[[Exchange], None] | None = None,
               on_hop: Callable[[Hop], None] | None = None,
               on_unmatched: Callable[[Exchange, TraceContext | None], None] | None = None,
               on_tls: Callable[[TlsSession], None] | None = None,
               on_mesh: Callable[[MeshHop], None] | None = None, jobs: int = 1) -> Summary:
    """Replay capture files through the engine. ``progress(packets, done, total)`` in raw bytes.

    By default every connection goes through protocol detection and the parsers; each
    finished exchange is counted, passed to ``on_exchange`` (as the parser made it), and fed
    to the proxy correlator, which calls ``on_hop`` for each matched proxy hop and
    ``on_unmatched(exchange, trace context)`` for each exchange that is in no hop. Each TLS
    connection's ``TlsSession`` goes to ``on_tls``. A ``factory`` replaces all of that with
    the caller's own stream consumers. ``jobs=2`` parses in a child process while this one
    correlates (``sniffer.replay_jobs``; not with a ``factory``).
    """
    stats = Stats()
    caps = open_all(paths, stats)
    if jobs >= 2 and factory is None:
        for c in caps:  # (opened to report a bad file before any work; the child reopens)
            c.close()
        return _replay_two_process(paths, stats, count=count, tcp_config=tcp_config,
                                   progress=progress, on_exchange=on_exchange, on_hop=on_hop,
                                   on_unmatched=on_unmatched, on_tls=on_tls, on_mesh=on_mesh)
    total = sum(c.size for c in caps)
    cb: ProgressFn | None = None
    if progress is not None:
        def cb(packets: int, _nbytes: int) -> None:
            progress(packets, sum(c.position() for c in caps), total)
    try:
        return run_records(merge(caps, stats), lambda: [p for c in caps for p in c.points],
                           files=paths, stats=stats, count=count, factory=factory,
                           tcp_config=tcp_config, progress=cb, on_exchange=on_exchange,
                           on_hop=on_hop, on_unmatched=on_unmatched, on_tls=on_tls,
                           on_mesh=on_mesh)
    finally:
        for c in caps:
            c.close()


class Backend:
    """Everything after the parsers, for one capture: exchange and TLS counters, the proxy
    correlator, the mesh-hop matcher and the callbacks. In-process it sits right behind the
    engine; with fanout workers (``sniffer.capture.fanout``) the workers run engines and the
    one ``Backend`` in the main process is fed their exchanges, so both legs of a hop meet
    whatever worker parsed them.

    The correlator pairs the two plaintext ends of a request through two meshed sidecars
    (caller's lo, callee's lo) as if they were one proxy's legs; ``MeshMatcher`` takes those
    pairs over and measures both sidecars from the TLS records between them
    (``sniffer.meshhop``), and the hops it does not take go on to ``on_hop``."""

    def __init__(self, stats: Stats, *,
                 on_exchange: Callable[[Exchange], None] | None = None,
                 on_hop: Callable[[Hop], None] | None = None,
                 on_unmatched: Callable[[Exchange, TraceContext | None], None] | None = None,
                 on_tls: Callable[[TlsSession], None] | None = None,
                 on_mesh: Callable[[MeshHop], None] | None = None) -> None:
        self.stats = stats
        self.proxies = ProxyStats()
        self.mesh = mesh = MeshMatcher(on_mesh=self._mesh_hop, on_exchange=on_unmatched,
                                       stats=stats)
        self._on_hop, self._on_mesh, self._on_unmatched = on_hop, on_mesh, on_unmatched
        self.corr = corr = Correlator(on_hop=self._hop, on_exchange=self._unmatched,
                                      stats=stats)

        def then(ex: Exchange) -> None:
            if on_exchange is not None:
                on_exchange(ex)
            corr.add(ex)

        def tls(session: TlsSession) -> None:
            mesh.add_tls(session)
            if on_tls is not None:
                on_tls(session)

        self.exchange = ExchangeCounter(then)  # call it with each finished exchange
        self.tls = TlsCounter(tls)  # ... and with each finished TLS session

    def _hop(self, hop: Hop) -> None:
        if self.mesh.offer_hop(hop):
            return
        self.proxies.add(hop)
        if self._on_hop is not None:
            self._on_hop(hop)

    def _unmatched(self, ex: Exchange, ctx: TraceContext | None) -> None:
        if ex.dialled is not None and self.mesh.offer_unmatched(ex, Leg(ex, ctx)):
            return
        if self._on_unmatched is not None:
            self._on_unmatched(ex, ctx)

    def _mesh_hop(self, mh: MeshHop) -> None:
        self.proxies.add(ProxyDwell(mh.outbound_address, mh.outbound.request_ns,
                                    mh.outbound.response_ns))
        if mh.inbound is not None:
            self.proxies.add(ProxyDwell(mh.inbound_address, mh.inbound.request_ns,
                                        mh.inbound.response_ns))
        if self._on_mesh is not None:
            self._on_mesh(mh)

    def tick(self, now_ns: int) -> None:
        """Live sources: capture time has reached ``now_ns`` even if no exchange says so
        (legs that have settled are matched and handed on without waiting for traffic)."""
        self.corr.advance(now_ns)
        self.mesh.advance(now_ns)

    def finish(self) -> None:
        self.corr.finish()
        self.mesh.finish()

    def extra(self) -> dict[str, Any]:
        stats, counter, tls = self.stats, self.exchange, self.tls
        return {
            "exchanges": dict(sorted(counter.by_protocol.items())),
            "exchange_flags": dict(sorted(counter.flags.items())),
            "grpc_calls": counter.grpc_calls,
            "tls_connections": tls.sessions,
            "tls": {"sni": tls.with_sni, "handshakes_complete": tls.complete,
                    "versions": dict(sorted(tls.versions.items()))},
            "proxies": self.proxies.summary(),
            "correlation": stats.by_stage("correlate"),
            "mesh": stats.by_stage("mesh"),
            "protocols": stats.by_stage("protocols"),
            "parse_errors": {
                **{f"http1:{k}": v for k, v in stats.by_stage("http1").items()
                   if not k.startswith("opaque_")},
                **{f"http2:{k}": v for k, v in stats.by_stage("http2").items()
                   if k not in HTTP2_NOT_ERRORS},
            },
            "http2": stats.by_stage("http2"),
        }


def _replay_two_process(paths: list[str], stats: Stats, *, count: int, tcp_config: Any,
                        progress: Callable[[int, int, int], None] | None,
                        **callbacks: Any) -> Summary:
    from .replay_jobs import run_two_process

    back = Backend(stats, **callbacks)
    t0 = time.perf_counter()
    old_gc = low_gc()
    try:
        r = run_two_process(paths, back, stats, count=count, tcp_config=tcp_config,
                            progress=progress)
        back.finish()
    finally:
        gc.set_threshold(*old_gc)
    elapsed = time.perf_counter() - t0
    link_types, interfaces = interface_counts(r["points"])
    return Summary(files=paths, packets=r["packets"], bytes=r["bytes"],
                   tcp_packets=r["tcp_packets"], first_ts=r["first_ts"],
                   last_ts=r["last_ts"], elapsed_s=elapsed, link_types=link_types,
                   interfaces=interfaces, stats=stats, extra={**back.extra(), "jobs": 2})


def interface_counts(points: Iterable[CapturePoint]) -> tuple[dict[str, int], dict[str, int]]:
    """Packets by link type name and by capture point name (an ``-i any`` capture lists the
    interfaces inside it)."""
    link_types: dict[str, int] = {}
    interfaces: dict[str, int] = {}
    for p in points:
        if p.packets:
            name = linktype_name(p.linktype)
            link_types[name] = link_types.get(name, 0) + p.packets
            subs = p.subs()
            for q in subs or [p]:
                if q.packets:
                    interfaces[q.name] = interfaces.get(q.name, 0) + q.packets
    return link_types, interfaces


def low_gc() -> tuple[int, int, int]:
    """Raise the cyclic GC's thresholds for a run; returns the old ones to restore.

    Tens of thousands of exchanges live in the correlator's window at once, none of them in
    reference cycles that need the collector: with the default thresholds the cyclic GC
    rescans them all every few thousand allocations (measured: up to half the run time)."""
    old = gc.get_threshold()
    gc.set_threshold(100_000, 50, 100)
    return old  # type: ignore[return-value]


def run_records(records: Iterable[Record], points: Callable[[], list[CapturePoint]], *,
                files: list[str], stats: Stats | None = None, count: int = 0,
                factory: ConsumerFactory | None = None, tcp_config: TcpConfig | None = None,
                progress: ProgressFn | None = None,
                on_exchange: Callable[[Exchange], None] | None = None,
                on_hop: Callable[[Hop], None] | None = None,
                on_unmatched: Callable[[Exchange, TraceContext | None], None] | None = None,
                on_tls: Callable[[TlsSession], None] | None = None,
                on_engine: Callable[[Engine], None] | None = None,
                on_mesh: Callable[[MeshHop], None] | None = None) -> Summary:
    """The shared path of replay and live capture: ``records`` (from files or sockets)
    through the engine, the parsers and the correlator, to a ``Summary``. ``points()`` lists
    the capture points once the records are exhausted; ``on_engine`` is given the engine
    before the first record (a live status line reads its counters)."""
    stats = stats if stats is not None else Stats()
    back = Backend(stats, on_exchange=on_exchange, on_hop=on_hop, on_unmatched=on_unmatched,
                   on_tls=on_tls, on_mesh=on_mesh)
    if factory is None:
        factory = Dispatcher(back.exchange, stats, back.tls, open_tls=back.mesh.open_tls,
                             tls_config=TlsConfig(rolling=True))
    engine = Engine(stats, factory, tcp_config)
    if on_engine is not None:
        on_engine(engine)
    t0 = time.perf_counter()
    old_gc = low_gc()
    try:
        engine.run(records, count=count, progress=progress)
        engine.finish()
        back.finish()
    finally:
        gc.set_threshold(*old_gc)
    elapsed = time.perf_counter() - t0
    link_types, interfaces = interface_counts(points())
    return Summary(files=files, packets=engine.packets, bytes=engine.bytes,
                   tcp_packets=engine.tcp_packets, first_ts=engine.first_ts,
                   last_ts=engine.last_ts, elapsed_s=elapsed, link_types=link_types,
                   interfaces=interfaces, stats=stats, extra=back.extra())
