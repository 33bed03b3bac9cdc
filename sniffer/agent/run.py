"""The agent's main loop: discovery → one socket per pod interface → one engine and one
correlator for the node → spans with the pod's resource → exporters; metrics and health on
``listen``.

One process, one thread for the capture (the HTTP server and the exporters have their own):

* ``Discovery`` reports pod network namespaces as they come and go. For each one the agent
  opens an AF_PACKET socket with a TPACKET_V3 ring on every configured interface that exists
  in it (``eth0`` and ``lo`` by default), entering the namespace only to open the socket.
  A namespace that goes away: its sockets are drained and closed, and its open connections
  closed (their finished exchanges flushed, unfinished ones flagged ``capture_closed``).
* Every socket feeds the same ``Engine`` and the same ``Backend`` (counters and correlator),
  so a request from one pod to another on the node is matched end to end, and a sidecar's
  two legs (``eth0`` and ``lo`` of one pod) meet.
* The correlator is advanced by the clock as well as by exchanges (``Backend.tick``), so a hop
  is emitted within a second of its response even when nothing follows it.
* Each span gets the resource of the pod it happened in: the proxy's pod for a proxy span,
  the server's (else the client's) for an exchange span: ``k8s.pod.ip`` and the namespace's
  identity always, pod name, namespace, node and workload when the Kubernetes API is there.
* Bounds: ``limits.max_pods`` namespaces (discovery), ``limits.max_flows`` connections (the
  flow table, node-wide), the correlator's window (5 s, 20,000 legs), the export queue
  (``export.queue_size`` spans; overflow counted and dropped), and per socket a ring of
  ``capture.ring_blocks × ring_block_kib``. A flood of new connections evicts the least
  recently active connections beyond ``max_flows`` (counted as ``evicted_cap``).
* SIGTERM/SIGINT: stop reading, drain the rings, close every connection, finish the
  correlator, flush the exporters within what is left of ``shutdown_grace_s``, exit 0.
"""

from __future__ import annotations

import datetime as _dt
import errno
import ipaddress
import json
import logging
import resource as _rlimit
import select
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from .. import __version__
from ..capture.live import LiveSocket, RingConfig, UnsupportedLinkType
from ..errors import WirespanError
from ..pipeline import HTTP2_NOT_ERRORS, Backend, Engine, low_gc
from ..proto import Dispatcher
from ..proto.tls import TlsConfig
from ..stats import Stats
from ..tcp import TcpConfig
from .config import AgentConfig

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class JsonLog:
    """Structured logs: one JSON object per line on stderr (``ts``, ``level``, ``msg``, and
    the event's own fields)."""

    def __init__(self, level: str = "info", out: Any = None) -> None:
        self.threshold = LEVELS.get(level, 20)
        self.out = out or sys.stderr

    def __call__(self, level: str, msg: str, **fields: Any) -> None:
        if LEVELS.get(level, 20) < self.threshold:
            return
        rec = {"ts": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
               "level": level, "msg": msg, **fields}
        try:
            self.out.write(json.dumps(rec, default=str) + "\n")
            self.out.flush()
        except (OSError, ValueError):  # stderr gone: nothing to tell
            pass


class PodCapture:
    """One pod network namespace being captured."""

    def __init__(self, pod: Any) -> None:
        self.pod = pod
        self.sockets: dict[str, LiveSocket] = {}
        self.missing: set[str] = set()  # configured interfaces it does not have (yet)
        self._resource: dict[str, Any] | None = None
        self._meta_key: object = None
        self.display = pod.label  # "<pod-or-netns>" of the metrics' interface label

    @property
    def ip(self) -> str:
        return self.pod.addresses[0] if self.pod.addresses else ""


class Agent:
    def __init__(self, cfg: AgentConfig, *, log: Callable[..., None] | None = None,
                 output: str | None = None) -> None:
        self.cfg = cfg
        self.log = log or JsonLog(cfg.log_level)
        self.output = output if output is not None else (cfg.export.output or None)
        self._stop = False
        self.pods: dict[int, PodCapture] = {}  # by namespace inode
        self.by_point: dict[object, PodCapture] = {}
        self.by_ip: dict[str, PodCapture] = {}
        self.events = {"added": 0, "removed": 0, "changed": 0}
        self.started = time.monotonic()
        self.last_tick = time.monotonic()
        self.discovered = False
        self.hops = 0
        self.spans = 0

    def stop(self, *_: Any) -> None:
        self._stop = True

    # -- setup ----------------------------------------------------------------------------------
    def _raise_nofile(self) -> None:
        soft, hard = _rlimit.getrlimit(_rlimit.RLIMIT_NOFILE)
        if soft < hard:
            try:
                _rlimit.setrlimit(_rlimit.RLIMIT_NOFILE, (hard, hard))
            except (ValueError, OSError):
                pass

    def _resource_base(self) -> dict[str, Any]:
        from exporter.otlp_json import default_resource

        r = default_resource(self.cfg.service_name)
        if self.cfg.node_name:
            r["k8s.node.name"] = self.cfg.node_name
        return r

    def run(self) -> int:
        from exporter.metrics import HealthServer, Metrics
        from exporter.outputs import SpanOutputs
        from exporter.spans import SpanBuilder

        from .discovery import Discovery
        from .k8s import PodCache

        cfg = self.cfg
        logging.getLogger("pyroute2").setLevel(logging.WARNING)
        self._raise_nofile()
        self.metrics = metrics = Metrics()
        self.outputs = SpanOutputs.open(
            output=self.output, fmt="otlp-json", otlp_endpoint=cfg.export.otlp_endpoint or None,
            otlp_protocol=cfg.export.otlp_protocol, service_name=cfg.service_name,
            version=__version__, max_queue=cfg.export.queue_size)
        self.base = self._resource_base()
        self.build = SpanBuilder(cfg.export.spans, False)
        self.ring = RingConfig(block_size=cfg.capture.ring_block_kib * 1024,
                               block_count=cfg.capture.ring_blocks,
                               timeout_ms=cfg.capture.ring_timeout_ms)
        self.health = HealthServer(cfg.listen, metrics, healthy=self._healthy,
                                   ready=self._ready).start()
        k = cfg.kubernetes
        self.k8s = PodCache(cfg.node_name, api_url=k.api_url, token_file=k.token_file,
                            ca_file=k.ca_file, enabled=k.enabled, on_log=self._k8s_log)
        if not self.k8s.enabled:
            self.log("info", "kubernetes metadata off: spans carry pod IPs and namespace "
                     "identity only", reason=self.k8s.disabled_reason)
        self.stats = stats = Stats()
        self.back = Backend(stats, on_hop=self._on_hop, on_unmatched=self._on_unmatched,
                            on_mesh=self._on_mesh)
        self.engine = Engine(stats, Dispatcher(self.back.exchange, stats, self.back.tls,
                                               open_tls=self.back.mesh.open_tls,
                                               tls_config=TlsConfig(rolling=True)),
                             TcpConfig(max_flows=cfg.limits.max_flows))
        self.discovery = Discovery(cfg.discovery.netns_dirs, cfg.discovery.proc,
                                   cfg.discovery.include_host, cfg.discovery.rescan_interval_s,
                                   cfg.limits.max_pods)
        self.log("info", "wirespan agent started", version=__version__,
                 listen=f"{cfg.listen} (port {self.health.port})", config=cfg.to_dict())
        old = {s: signal.signal(s, self.stop) for s in (signal.SIGTERM, signal.SIGINT)}
        t_stop = None
        old_gc = low_gc()
        try:
            self._loop()
            t_stop = time.monotonic()
            self._shutdown(t_stop)
        finally:
            import gc

            gc.set_threshold(*old_gc)
            for s, h in old.items():
                signal.signal(s, h)
            for pc in list(self.pods.values()):
                for sock in pc.sockets.values():
                    sock.close()
            self.discovery.close()
            self.k8s.close()
            self.health.close()
        return 0

    def _k8s_log(self, level: str, message: str) -> None:
        self.log(level, message, component="kubernetes")

    # -- the loop -------------------------------------------------------------------------------
    def _loop(self) -> None:
        disc = self.discovery
        engine = self.engine
        next_tick = 0.0
        first = True
        while not self._stop:
            socks = [s for pc in self.pods.values() for s in pc.sockets.values()]
            try:
                ready, _, _ = select.select([disc, *socks], [], [], 0 if first else 0.2)
            except InterruptedError:  # pragma: no cover - PEP 475
                continue
            if first or disc in ready:
                first = False
                for ev in disc.poll(0):
                    self._on_event(ev.kind, ev.pod)
                if not self.discovered:
                    self.discovered = True
                    self.log("info", "discovery pass complete", pods=len(self.pods))
            batch: list[Any] = []
            for s in ready:
                if s is not disc:
                    s.drain(batch)
            if batch:
                batch.sort(key=lambda r: r[0])
                engine.run(batch)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + 1.0
                self._tick()

    def _tick(self) -> None:
        self.last_tick = time.monotonic()
        retire = (self.cfg.capture.ring_timeout_ms + 20) * 1_000_000
        self.back.tick(time.time_ns() - retire - self.back.corr.settle_ns)
        for pc in self.pods.values():  # configured interfaces that appeared later (CNI)
            if pc.missing:
                self._open_missing(pc)
        try:
            self._update_metrics()
        except Exception as e:  # noqa: BLE001 - metrics must never stop the capture
            self.log("warning", "metrics update failed", error=repr(e))

    # -- pods -----------------------------------------------------------------------------------
    def _on_event(self, kind: str, pod: Any) -> None:
        self.events[kind] = self.events.get(kind, 0) + 1
        self.metrics.inc("wirespan_pod_events_total", {"event": kind})
        if kind == "added":
            pc = PodCapture(pod)
            self.pods[pod.inode] = pc
            pc.missing = set(self.cfg.capture.interfaces)
            self._open_missing(pc)
            self._index(pc)
            self.log("info", "pod namespace added", netns=pod.label, path=pod.path,
                     addresses=pod.addresses, interfaces=sorted(pc.sockets))
        elif kind == "changed":
            pc = self.pods.get(pod.inode)
            if pc is None:
                return
            self._unindex(pc)
            pc.pod = pod
            pc._resource = None
            pc.missing |= {i for i in self.cfg.capture.interfaces if i not in pc.sockets}
            self._open_missing(pc)
            self._index(pc)
        elif kind == "removed":
            pc = self.pods.pop(pod.inode, None)
            if pc is not None:
                self._close_pod(pc)
                self.log("info", "pod namespace removed", netns=pod.label)

    def _index(self, pc: PodCapture) -> None:
        for a in pc.pod.addresses:
            self.by_ip[a] = pc

    def _unindex(self, pc: PodCapture) -> None:
        for a in list(self.by_ip):
            if self.by_ip[a] is pc:
                del self.by_ip[a]

    def _open_missing(self, pc: PodCapture) -> None:
        cfg = self.cfg.capture
        for name in sorted(pc.missing):
            if name not in pc.pod.interfaces:
                continue  # not there (yet): a "changed" event or the next tick tries again
            try:
                sock = LiveSocket(name, cfg.filter, snaplen=cfg.snaplen, ring=self.ring,
                                  namespace=pc.pod.path)
            except UnsupportedLinkType:
                pc.missing.discard(name)
                continue
            except WirespanError as e:
                # e.g. the namespace went away between discovery and now
                self.log("warning", "cannot capture on pod interface", netns=pc.pod.label,
                         interface=name, error=e.message)
                pc.missing.discard(name)
                continue
            # the capture point says which pod: "<netns>/<if>" in summaries and spans
            sock.point.namespace = pc.pod.label
            pc.sockets[name] = sock
            pc.missing.discard(name)
            self.by_point[sock.point] = pc

    def _close_pod(self, pc: PodCapture) -> None:
        batch: list[Any] = []
        for s in pc.sockets.values():
            s.drain(batch)
        if batch:
            batch.sort(key=lambda r: r[0])
            self.engine.run(batch)
        points = {s.point for s in pc.sockets.values()}
        flows = self.engine.flows
        now = time.time_ns()
        for conn in flows.connections_open():
            if conn.point in points:
                flows.close(conn, "capture_closed", now)
        self._unindex(pc)
        for name, s in pc.sockets.items():
            try:
                s.read_stats()
            except OSError:
                pass
            self.metrics.remove_interface(f"{pc.display}/{name}")
            s.close()
        pc.sockets.clear()

    # -- spans ----------------------------------------------------------------------------------
    def _pod_resource(self, pc: PodCapture) -> dict[str, Any]:
        meta = self.k8s.by_ip(pc.ip) if pc.ip else None
        key = (meta.uid if meta is not None else None, pc.ip)
        if pc._resource is not None and pc._meta_key == key:
            return pc._resource
        r = dict(self.base)
        if pc.ip:
            r["k8s.pod.ip"] = pc.ip
        r["wirespan.netns.name"] = pc.pod.label
        r["wirespan.netns.inode"] = pc.pod.inode
        if meta is not None:
            r.update(meta.attributes())
            if pc.display != meta.name:  # the metrics' interface labels follow the name
                self.metrics.remove_interface(f"{pc.display}/")
                pc.display = meta.name
        pc._resource, pc._meta_key = r, key
        return r

    def _pod_of(self, exchanges: list[Any], prefer_ip: str) -> PodCapture | None:
        """The pod an observation belongs to: the one with ``prefer_ip`` (the proxy's, the
        server's) if it is on this node, else the first pod whose interfaces saw it."""
        first = None
        for ex in exchanges:
            pc = self.by_point.get(ex.point)
            if pc is None:
                continue
            if prefer_ip and prefer_ip in pc.pod.addresses:
                return pc
            first = first or pc
        return (self.by_ip.get(prefer_ip) if prefer_ip else None) or first

    def _emit(self, span: Any, pc: PodCapture | None) -> None:
        if pc is not None:
            span.resource = self._pod_resource(pc)
        self.outputs.add(span)
        self.spans += 1

    def _on_hop(self, hop: Any) -> None:
        self.hops += 1
        ip = hop.proxy_address.rpartition(":")[0].strip("[]")
        pc = self._pod_of(hop.down.obs + hop.up.obs, ip)
        span = self.build.hop(hop)
        self._emit(span, pc)
        meta = self.k8s.by_ip(pc.ip) if pc is not None and pc.ip else None
        self.metrics.observe_hop(hop.proxy_address, meta.namespace if meta else "",
                                 meta.name if meta else (pc.pod.label if pc else ""),
                                 hop.request_dwell_ns, hop.response_dwell_ns)

    def _on_mesh(self, mh: Any) -> None:
        """A call between two meshed pods over mTLS: the outbound sidecar's and the network's
        spans belong to the caller's pod, the inbound sidecar's to the callee's."""
        self.hops += 1
        caller = self._pod_of(mh.down.obs, str(ipaddress.ip_address(mh.client[0])))
        callee = self.by_ip.get(str(ipaddress.ip_address(mh.server[0])))
        if callee is None and mh.up is not None:
            callee = self._pod_of(mh.up.obs, "")
        spans = self.build.mesh(mh)
        for i, span in enumerate(spans):
            self._emit(span, caller if i < 2 else callee)
        for pc, addr, dw in ((caller, mh.outbound_address, mh.outbound),
                             (callee, mh.inbound_address, mh.inbound)):
            if dw is None:
                continue
            meta = self.k8s.by_ip(pc.ip) if pc is not None and pc.ip else None
            self.metrics.observe_hop(addr, meta.namespace if meta else "",
                                     meta.name if meta else (pc.pod.label if pc else ""),
                                     dw.request_ns, dw.response_ns)

    def _on_unmatched(self, ex: Any, ctx: Any) -> None:
        span = self.build.exchange(ex, ctx)
        if span is None:
            return
        pc = self._pod_of([ex], str(ipaddress.ip_address(ex.server[0])))
        self._emit(span, pc)

    # -- metrics and health ---------------------------------------------------------------------
    def _update_metrics(self) -> None:
        m = self.metrics
        for pc in self.pods.values():
            if pc._resource is None and pc.ip:
                self._pod_resource(pc)  # (learns the pod's name for the labels)
            for name, s in pc.sockets.items():
                label = f"{pc.display}/{name}"
                try:
                    s.read_stats()
                except OSError:
                    pass
                m.set_total("wirespan_packets_total", {"interface": label}, s.point.packets)
                m.set_total("wirespan_kernel_drops_total", {"interface": label},
                            s.kernel_drops)
        flows = self.engine.flows
        m.set_gauge("wirespan_flows_active", None, flows.active)
        for proto, n in self.back.exchange.by_protocol.items():
            m.set_total("wirespan_exchanges_total", {"protocol": proto}, n)
        st = self.stats
        for stage in ("http1", "http2", "tls"):
            for reason, n in st.by_stage(stage).items():
                if stage == "http1" and reason.startswith("opaque_"):
                    continue
                if stage == "http2" and reason in HTTP2_NOT_ERRORS:
                    continue
                m.set_total("wirespan_parse_errors_total",
                            {"protocol": stage, "reason": reason}, n)
        m.set_total("wirespan_reassembly_gaps_total", None, st.get("tcp", "gaps") + flows.gaps)
        summ = self.outputs.summary()
        m.set_total("wirespan_spans_exported_total", None,
                    summ.get("spans_exported", summ.get("spans_written", 0)))
        for reason, n in summ.get("spans_dropped", {}).items():
            m.set_total("wirespan_spans_dropped_total", {"reason": reason}, n)
        m.set_gauge("wirespan_pods_captured", None, len(self.pods))
        m.set_gauge("wirespan_kubernetes_api_up", None, 1 if self.k8s.api_up else 0)

    def _healthy(self) -> tuple[bool, str]:
        age = time.monotonic() - self.last_tick
        if age > 10:
            return False, f"main loop has not ticked for {age:.0f} s"
        return True, "ok"

    def _ready(self) -> tuple[bool, str]:
        if not self.discovered:
            return False, "first discovery pass not complete"
        for url, e in self.outputs.exporters:
            if e.export_errors and not e.spans_exported and e.last_error:
                return False, f"exporter {url} failing: {e.last_error}"
        return True, "ok"

    # -- shutdown -------------------------------------------------------------------------------
    def _shutdown(self, t_stop: float) -> None:
        self.log("info", "stopping: draining the rings and flushing spans")
        time.sleep(2 * self.ring.timeout_ms / 1000)
        batch: list[Any] = []
        for pc in self.pods.values():
            for s in pc.sockets.values():
                s.drain(batch)
        if batch:
            batch.sort(key=lambda r: r[0])
            self.engine.run(batch)
        self.engine.finish()
        self.back.finish()
        try:
            self._update_metrics()
        except Exception:  # noqa: BLE001
            pass
        left = max(0.5, self.cfg.shutdown_grace_s - (time.monotonic() - t_stop) - 0.5)
        self.outputs.close(min(left, self.cfg.export.timeout_s))
        summ = self.outputs.summary()
        self.log("info", "stopped", pods=len(self.pods), packets=self.engine.packets,
                 exchanges=sum(self.back.exchange.by_protocol.values()), hops=self.hops,
                 spans=self.spans, **summ,
                 kernel_drops=sum(s.kernel_drops for pc in self.pods.values()
                                  for s in pc.sockets.values()))
        for msg in self.outputs.warnings():
            self.log("warning", msg)


def main(cfg: AgentConfig, output: str | None = None) -> int:
    try:
        return Agent(cfg, output=output).run()
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise WirespanError(f"address already in use: {cfg.listen}",
                                "set listen: in the config or WIRESPAN_LISTEN") from None
        raise


__all__ = ["Agent", "JsonLog", "main"]
