"""Prometheus metrics (DESIGN.md "Metrics contract") and the agent's HTTP endpoints.

:class:`Metrics` holds every metric of the contract in its own ``CollectorRegistry`` (never
the process-global one, so tests and several instances do not clash), exposed through one
custom collector: the names are exactly the contract's (``wirespan_packets_total``, …),
with no ``_created`` series beside them.

The pipeline keeps cumulative counts of its own (packets per interface, kernel drops,
exchanges by protocol, ``sniffer.stats.Stats``), so counters are fed with
:meth:`Metrics.set_total` — the latest cumulative value — and advance by the difference. A
value lower than the last one (a pod's interface replaced, a socket reopened, a stage
restarted) is a fresh start: the counter advances by the new value, so what Prometheus sees
stays monotonic.

**Cardinality is bounded.** Each metric keeps at most ``max_label_sets`` (default 2,000)
distinct label sets. Past that, a new label set is folded into the one overflow set in which
every label is ``"other"`` (``interface="other"``; ``proxy="other", namespace="other",
pod="other"``), and the fold is counted in ``wirespan_metric_label_sets_folded_total{metric}``
(and :meth:`Metrics.folded`). :meth:`Metrics.remove_interface` and :meth:`Metrics.remove_pod`
forget the label sets of a pod that went away, so a node with pod churn does not grow
forever and the freed room is used again.

:class:`HealthServer` serves ``/metrics``, ``/healthz`` and ``/readyz`` from a
``ThreadingHTTPServer`` in a daemon thread.
"""

from __future__ import annotations

import bisect
import errno
import gzip
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.metrics_core import (
    CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric)
from prometheus_client.utils import floatToGoString

from sniffer.errors import WirespanError

OTHER = "other"
DEFAULT_MAX_LABEL_SETS = 2000
# Proxy dwell: tens of microseconds (a sidecar forwarding a small request) to seconds (a
# proxy queueing or retrying); roughly ×2–2.5 a step.
DWELL_BUCKETS: tuple[float, ...] = (
    50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3,
    250e-3, 500e-3, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    kind: str  # "counter" | "gauge" | "histogram"
    labels: tuple[str, ...]
    doc: str


FOLDED = "wirespan_metric_label_sets_folded_total"
SPECS: tuple[MetricSpec, ...] = (
    MetricSpec("wirespan_packets_total", "counter", ("interface",),
               "Packets captured, by interface (in the agent: '<pod-or-netns>/<ifname>')."),
    MetricSpec("wirespan_kernel_drops_total", "counter", ("interface",),
               "Packets the kernel dropped before capture (PACKET_STATISTICS), by interface."),
    MetricSpec("wirespan_flows_active", "gauge", (), "TCP connections tracked now."),
    MetricSpec("wirespan_exchanges_total", "counter", ("protocol",),
               "Request/response exchanges seen, by protocol (http/1.1, http/1.0, http/2)."),
    MetricSpec("wirespan_parse_errors_total", "counter", ("protocol", "reason"),
               "Malformed or unparseable input, by protocol and reason."),
    MetricSpec("wirespan_reassembly_gaps_total", "counter", (),
               "Holes in reassembled TCP streams (bytes never captured)."),
    MetricSpec("wirespan_proxy_request_dwell_seconds", "histogram", ("proxy", "namespace", "pod"),
               "Time a request spent inside a proxy (downstream arrival to upstream send)."),
    MetricSpec("wirespan_proxy_response_dwell_seconds", "histogram",
               ("proxy", "namespace", "pod"),
               "Time a response spent inside a proxy (upstream arrival to downstream send)."),
    MetricSpec("wirespan_spans_exported_total", "counter", (), "Spans accepted by the exporters."),
    MetricSpec("wirespan_spans_dropped_total", "counter", ("reason",),
               "Spans not exported, by reason."),
    MetricSpec("wirespan_pods_captured", "gauge", (), "Pod network namespaces captured now."),
    MetricSpec("wirespan_pod_events_total", "counter", ("event",),
               "Pod namespaces added or removed."),
    MetricSpec("wirespan_kubernetes_api_up", "gauge", (),
               "1 when the Kubernetes API watch is healthy, else 0."),
    MetricSpec(FOLDED, "counter", ("metric",),
               "Label sets folded into the 'other' label set by the cardinality bound."),
)
_BY_NAME = {s.name: s for s in SPECS}
Labels = Mapping[str, Any] | Sequence[Any] | str | None


class _Hist:
    __slots__ = ("counts", "sum")

    def __init__(self, n: int) -> None:
        self.counts = [0] * (n + 1)  # per bucket, the last one is +Inf (not cumulative)
        self.sum = 0.0


class _Family:
    __slots__ = ("spec", "series", "last", "folded_last", "folded", "other")

    def __init__(self, spec: MetricSpec) -> None:
        self.spec = spec
        self.series: dict[tuple[str, ...], Any] = {}  # label values → float or _Hist
        self.last: dict[tuple[str, ...], float] = {}  # set_total baselines of kept label sets
        # baselines (counters) or values (gauges) of folded label sets, least recent first
        self.folded_last: dict[tuple[str, ...], float] = {}
        self.folded = 0
        self.other = (OTHER,) * len(spec.labels)


class Metrics:
    """Every contract metric, in :attr:`registry` (a private ``CollectorRegistry``).

    Thread-safe: the pipeline updates while :class:`HealthServer` threads scrape.
    ``max_label_sets`` bounds each metric's label sets (see the module docstring).
    """

    def __init__(self, *, max_label_sets: int = DEFAULT_MAX_LABEL_SETS,
                 buckets: Sequence[float] = DWELL_BUCKETS) -> None:
        if max_label_sets < 1:
            raise ValueError("max_label_sets must be at least 1")
        b = sorted(float(x) for x in buckets)
        if not b or b[0] <= 0 or len(set(b)) != len(b) or b[-1] == float("inf"):
            raise ValueError("buckets must be distinct positive finite bounds")
        self.max_label_sets = max_label_sets
        self.buckets: tuple[float, ...] = tuple(b)
        self._les = [floatToGoString(x) for x in b] + ["+Inf"]
        self._lock = threading.Lock()
        self._fam = {s.name: _Family(s) for s in SPECS}
        self._req = self._fam["wirespan_proxy_request_dwell_seconds"]
        self._resp = self._fam["wirespan_proxy_response_dwell_seconds"]
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Collector(self))

    # -- updates --------------------------------------------------------------------------

    def set_total(self, name: str, labels: Labels, value: float) -> None:
        """Counter ``name`` for ``labels`` has counted ``value`` in all (a cumulative count
        kept by the caller): advance the exposed counter by the increase. A value below the
        last one is a fresh start (the source was replaced): advance by ``value``."""
        if value < 0 or value != value:
            raise ValueError(f"{name}: a cumulative count cannot be {value}")
        fam = self._family(name, "counter")
        key = _key(fam.spec, labels)
        with self._lock:
            slot, folded = self._slot(fam, key)
            base = fam.folded_last if folded else fam.last
            prev = base.pop(key, None) if folded else base.get(key)
            base[key] = value
            if folded:
                self._trim(fam)
            fam.series[slot] += value if prev is None or value < prev else value - prev

    def inc(self, name: str, labels: Labels = None, n: float = 1) -> None:
        """Counter ``name`` for ``labels`` advances by ``n`` (for events counted here, such
        as ``wirespan_pod_events_total{event="added"}``)."""
        if n < 0 or n != n:
            raise ValueError(f"{name}: a counter cannot advance by {n}")
        fam = self._family(name, "counter")
        key = _key(fam.spec, labels)
        with self._lock:
            slot, folded = self._slot(fam, key)
            if folded:
                fam.folded_last.pop(key, None)
                fam.folded_last[key] = 0.0
                self._trim(fam)
            fam.series[slot] += n

    def set_gauge(self, name: str, labels: Labels, value: float) -> None:
        """Gauge ``name`` for ``labels`` is ``value`` now (the ``"other"`` label set of a
        gauge is the sum of the label sets folded into it)."""
        fam = self._family(name, "gauge")
        key = _key(fam.spec, labels)
        with self._lock:
            slot, folded = self._slot(fam, key)
            if folded:
                fam.folded_last.pop(key, None)
                fam.folded_last[key] = float(value)
                self._trim(fam)
                fam.series[slot] = sum(fam.folded_last.values())
            else:
                fam.series[slot] = float(value)

    def observe(self, name: str, labels: Labels, seconds: float) -> None:
        """One observation of histogram ``name``; a negative one counts as 0."""
        fam = self._family(name, "histogram")
        key = _key(fam.spec, labels)
        with self._lock:
            self._observe(fam, key, seconds)

    def observe_hop(self, proxy: str, namespace: str, pod: str,
                    request_dwell_ns: int, response_dwell_ns: int) -> None:
        """A matched proxy hop (``sniffer.correlate.Hop``): its request and response dwell
        (ns) into the dwell histograms, labelled by the proxy's address and its pod (``""``
        where unknown). A negative dwell (timestamp noise) is observed as 0."""
        key = (str(proxy), namespace or "", pod or "")
        with self._lock:
            self._observe(self._req, key, request_dwell_ns / 1e9)
            self._observe(self._resp, key, response_dwell_ns / 1e9)

    # -- forgetting ------------------------------------------------------------------------

    def remove(self, name: str, labels: Labels) -> bool:
        """Forget one label set of ``name`` (its series disappears from /metrics; what was
        folded into ``"other"`` stays there). True if it was known."""
        fam = self._fam.get(name)
        if fam is None:
            raise ValueError(f"unknown metric {name!r}")
        key = _key(fam.spec, labels)
        with self._lock:
            return self._drop(fam, lambda k: k == key)

    def remove_interface(self, label: str) -> bool:
        """Forget ``interface=label`` in the packet and kernel-drop counters (a pod's
        interface that went away); a label ending in ``/`` (``"web-1/"``) forgets every
        interface of that pod or namespace. True if anything was known."""
        if label.endswith("/"):
            def match(k: tuple[str, ...]) -> bool:
                return k[0].startswith(label)
        else:
            def match(k: tuple[str, ...]) -> bool:
                return k[0] == label
        with self._lock:
            found = False
            for name in ("wirespan_packets_total", "wirespan_kernel_drops_total"):
                found |= self._drop(self._fam[name], match)
            return found

    def remove_pod(self, namespace: str, pod: str) -> bool:
        """Forget the dwell histograms of a pod that went away (every proxy address)."""
        with self._lock:
            found = False
            for name in ("wirespan_proxy_request_dwell_seconds",
                         "wirespan_proxy_response_dwell_seconds"):
                found |= self._drop(self._fam[name],
                                    lambda k: k[1] == namespace and k[2] == pod)
            return found

    def folded(self, name: str) -> int:
        """How many label sets of ``name`` were folded into ``"other"``."""
        return self._fam[name].folded

    def label_sets(self, name: str) -> int:
        """How many label sets ``name`` exposes now (``"other"`` included)."""
        with self._lock:
            return len(self._fam[name].series)

    # -- exposition --------------------------------------------------------------------

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The registry in the format the ``Accept`` header asks for (Prometheus text 0.0.4
        by default, OpenMetrics on request): (body, content type)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def text(self) -> str:
        """The Prometheus text exposition (for tests and debugging)."""
        return self.exposition()[0].decode()

    # -- internals -----------------------------------------------------------------------

    def _family(self, name: str, kind: str) -> _Family:
        fam = self._fam.get(name)
        if fam is None:
            raise ValueError(f"unknown metric {name!r}")
        if fam.spec.kind != kind:
            raise ValueError(f"{name} is a {fam.spec.kind}, not a {kind}")
        return fam

    def _observe(self, fam: _Family, key: tuple[str, ...], seconds: float) -> None:
        """Lock held."""
        v = seconds if seconds > 0.0 else 0.0
        h = fam.series.get(key)
        if h is None:
            slot, folded = self._slot(fam, key)
            if folded:
                fam.folded_last.pop(key, None)
                fam.folded_last[key] = 0.0
                self._trim(fam)
            h = fam.series[slot]
        h.counts[bisect.bisect_left(self.buckets, v)] += 1  # first bound >= v: le is <=
        h.sum += v

    def _new(self, fam: _Family) -> Any:
        return _Hist(len(self.buckets)) if fam.spec.kind == "histogram" else 0.0

    def _slot(self, fam: _Family, key: tuple[str, ...]) -> tuple[tuple[str, ...], bool]:
        """The label set an update of ``key`` goes to, and whether it was folded. Lock held."""
        series = fam.series
        if key in series:
            return key, False
        kept = len(series) - (fam.other in series)
        if key == fam.other or kept < self.max_label_sets:
            series[key] = self._new(fam)
            # a label set folded before and kept now: its count so far stays in "other",
            # its baseline moves here so that it does not count twice
            prev = fam.folded_last.pop(key, None)
            if prev is not None and fam.spec.kind == "counter":
                fam.last[key] = prev
            elif prev is not None and fam.spec.kind == "gauge" and fam.other in series:
                series[fam.other] = sum(fam.folded_last.values())
            return key, False
        if key not in fam.folded_last:
            fam.folded += 1
            self._note_fold(fam)
        if fam.other not in series:
            series[fam.other] = self._new(fam)
        return fam.other, True

    def _note_fold(self, fam: _Family) -> None:
        if fam.spec.name == FOLDED:
            return
        f = self._fam[FOLDED]
        slot, _ = self._slot(f, (fam.spec.name,))
        f.series[slot] += 1

    def _trim(self, fam: _Family) -> None:
        """Bound the memory of folded label sets (least recently updated go first)."""
        limit = 4 * self.max_label_sets
        while len(fam.folded_last) > limit:
            del fam.folded_last[next(iter(fam.folded_last))]

    def _drop(self, fam: _Family, match: Callable[[tuple[str, ...]], bool]) -> bool:
        found = False
        for d in (fam.series, fam.last, fam.folded_last):
            for k in [k for k in d if k != fam.other and match(k)]:
                del d[k]
                found = True
        if fam.spec.kind == "gauge" and fam.spec.labels and fam.other in fam.series:
            fam.series[fam.other] = sum(fam.folded_last.values())
        return found

    def _snapshot(self) -> list[tuple[MetricSpec, list[tuple[tuple[str, ...], Any]]]]:
        with self._lock:
            out = []
            for fam in self._fam.values():
                rows: list[tuple[tuple[str, ...], Any]] = []
                for k, v in fam.series.items():
                    if isinstance(v, _Hist):
                        v = (list(v.counts), v.sum)
                    rows.append((k, v))
                if not fam.spec.labels and not rows:
                    rows.append(((), (([0] * (len(self.buckets) + 1)), 0.0)
                                 if fam.spec.kind == "histogram" else 0.0))
                out.append((fam.spec, rows))
            return out


class _Collector:
    """Builds the metric families from a snapshot taken under the lock."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def describe(self) -> Iterable[Metric]:
        return [_empty(s) for s in SPECS]

    def collect(self) -> Iterable[Metric]:
        les = self.m._les
        for spec, rows in self.m._snapshot():
            fam = _empty(spec)
            for key, v in sorted(rows, key=lambda r: r[0]):
                if spec.kind == "histogram":
                    counts, total = v
                    acc, buckets = 0, []
                    for le, c in zip(les, counts):
                        acc += c
                        buckets.append((le, acc))
                    fam.add_metric(list(key), buckets, total)  # type: ignore[attr-defined]
                else:
                    fam.add_metric(list(key), v)  # type: ignore[attr-defined]
            yield fam


def _empty(spec: MetricSpec) -> Metric:
    cls = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
           "histogram": HistogramMetricFamily}[spec.kind]
    return cls(spec.name, spec.doc, labels=list(spec.labels))  # type: ignore[no-any-return]


def _key(spec: MetricSpec, labels: Labels) -> tuple[str, ...]:
    names = spec.labels
    if labels is None:
        vals: tuple[Any, ...] = ()
    elif isinstance(labels, str):
        vals = (labels,)
    elif isinstance(labels, Mapping):
        if set(labels) != set(names):
            raise ValueError(f"{spec.name} takes labels {list(names)}, not {sorted(labels)}")
        vals = tuple(labels[n] for n in names)
    else:
        vals = tuple(labels)
    if len(vals) != len(names):
        raise ValueError(f"{spec.name} takes labels {list(names)}, got {len(vals)} values")
    return tuple("" if v is None else str(v) for v in vals)


# -- HTTP ------------------------------------------------------------------------------

Check = Callable[[], tuple[bool, str]]


def _always_ok() -> tuple[bool, str]:
    return True, "ok"


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` → (host, port); ``ValueError`` otherwise. Port 0
    asks the kernel for a free port (tests)."""
    if listen.startswith("["):
        host, sep, port = listen[1:].partition("]:")
    else:
        host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen address must be HOST:PORT, not {listen!r}")
    return host, int(port)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # close() must not wait for idle keep-alive connections
    owner: HealthServer

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            try:  # [::] takes IPv4 too
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            except OSError:
                pass
        # HTTPServer.server_bind would resolve the host's FQDN (a DNS lookup): not needed
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 30  # an idle keep-alive connection is closed after this long
    server_version = "wirespan"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802
        self._serve(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        headers: list[tuple[str, str]] = []
        if path == "/metrics" and owner.metrics is not None:
            try:
                data, ctype = owner.metrics.exposition(self.headers.get("Accept"))
                status = 200
                if gzip_accepted(self.headers.get("Accept-Encoding", "")):
                    data = gzip.compress(data)
                    headers.append(("Content-Encoding", "gzip"))
            except Exception as e:  # noqa: BLE001 (a scrape must not kill the server)
                status, data, ctype = 500, f"error: {e}\n".encode(), "text/plain; charset=utf-8"
        elif path in ("/healthz", "/readyz"):
            check = owner.healthy if path == "/healthz" else owner.ready
            try:
                ok, reason = check()
            except Exception as e:  # noqa: BLE001
                ok, reason = False, f"check failed: {type(e).__name__}: {e}"
            status = 200 if ok else 503
            text = "ok" if ok else (str(reason).strip() or "not ok")
            data, ctype = (text + "\n").encode(), "text/plain; charset=utf-8"
        else:
            status, data, ctype = 404, b"not found\n", "text/plain; charset=utf-8"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log = self.server.owner.log
        if log is not None:
            try:
                log(f"{self.address_string()} {format % args}")
            except Exception:  # noqa: BLE001,S110 (a logging callback must not break serving)
                pass


class HealthServer:
    """``GET /metrics`` (the registry of ``metrics``), ``/healthz`` and ``/readyz`` (200
    ``ok`` or 503 with the reason returned by ``healthy()``/``ready()``), 404 otherwise.

    Requests are not logged unless ``log`` is given (it gets one line per request). Listen on
    port 0 to get a free port (:attr:`port`).
    """

    def __init__(self, listen: str = "0.0.0.0:9102", metrics: Metrics | None = None,
                 healthy: Check | None = None, ready: Check | None = None, *,
                 log: Callable[[str], None] | None = None) -> None:
        self.listen = listen
        self.metrics = metrics
        self.healthy: Check = healthy or _always_ok
        self.ready: Check = ready or _always_ok
        self.log = log
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> HealthServer:
        """Bind and serve in a daemon thread. ``WirespanError`` (with the fix) when the
        address cannot be used."""
        if self._server is not None:
            return self
        hint = "set listen: in the config or WIRESPAN_LISTEN"
        try:
            host, port = split_listen(self.listen)
        except ValueError as e:
            raise WirespanError(str(e), hint) from None
        cls = _Server6 if ":" in host else _Server
        try:
            server = cls((host, port), _Handler)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise WirespanError(f"address already in use: {self.listen}", hint) from None
            if e.errno in (errno.EACCES, errno.EPERM):
                raise WirespanError(f"cannot listen on {self.listen}: permission denied",
                                    "use a port above 1023, or " + hint) from None
            raise WirespanError(f"cannot listen on {self.listen}: {e.strerror or e}",
                                hint) from None
        server.owner = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="wirespan-http", daemon=True)
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        """The bound port (the kernel's choice when listening on port 0)."""
        if self._server is None:
            raise RuntimeError("HealthServer is not started")
        return int(self._server.server_address[1])

    def close(self) -> None:
        """Stop serving and release the port (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["DWELL_BUCKETS", "HealthServer", "MetricSpec", "Metrics", "OTHER", "SPECS",
           "split_listen"]
