"""Exchange -> span, per the design's span contract (pure: no I/O).

Exchange spans (``wirespan.span.role = "exchange"``, kind CLIENT) are built for exchanges
that carry a trace context (``--spans traced``, the default), or for every exchange
(``--spans all``: one without a trace header gets a trace id derived from the observation
and ``wirespan.trace.synthetic = true``). Proxy spans come with the correlator (issue 5).

Ids are deterministic: the span id is the first 8 bytes of SHA-256 over the observation
(capture point, endpoints, request time, method, target), so replaying the same capture
twice gives the same ids. Names follow the semantic conventions, which forbid the raw path:
``"{METHOD} {template}"``, where identifier-like path segments become ``{id}``.
Never exported: bodies, any header value except trace context, and query strings unless
``keep_query``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, field
from collections.abc import Iterable
from typing import Any

from sniffer.correlate import Hop
from sniffer.exchange import Exchange
from sniffer.tracecontext import TraceContext, extract

KIND_SERVER, KIND_CLIENT = 2, 3
# gRPC status codes (grpc/doc/statuscodes.md), as rpc.status_code writes them
GRPC_CODES = dict(enumerate((
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED")))
STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2

_ID_SEGMENT = re.compile(
    r"^(?:[0-9]+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{16,}|[0-9A-Za-z_-]{20,})$")


def url_template(path: str) -> str:
    """``/users/42/orders/9f8e…`` -> ``/users/{id}/orders/{id}``."""
    return "/".join("{id}" if s and _ID_SEGMENT.match(s) else s for s in path.split("/")) or "/"


def split_authority(authority: str) -> tuple[str, str]:
    """``host:port``, ``[v6]:port`` or ``host`` -> (host, port or "")."""
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else ""
    if authority.count(":") == 1:
        host, port = authority.split(":")
        return host, port
    return authority, ""


def _ip(addr: bytes) -> str:
    return str(ipaddress.ip_address(addr))


@dataclass(slots=True)
class SpanRecord:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    status_code: int
    status_message: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    trace_state: str = ""
    # the resource this span belongs to, when not the writer's own (the agent: the pod's)
    resource: dict[str, Any] | None = None


def by_resource(spans: Iterable[SpanRecord], default: dict[str, Any]
                ) -> list[tuple[dict[str, Any], list[SpanRecord]]]:
    """Spans grouped by their resource (``span.resource``, else ``default``), in order of
    first appearance: one OTLP ResourceSpans each."""
    groups: dict[int, tuple[dict[str, Any], list[SpanRecord]]] = {}
    for s in spans:
        r = s.resource if s.resource is not None else default
        g = groups.get(id(r))
        if g is None:
            g = groups[id(r)] = (r, [])
        g[1].append(s)
    return list(groups.values())


def _digest(*parts: object) -> bytes:
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\0")
    return h.digest()


def _http_attrs(ex: Exchange, ctx: TraceContext | None, keep_query: bool,
                attrs: dict[str, Any]) -> tuple[str, int, str, int]:
    """The HTTP / RPC semantic-convention attributes of one exchange, into ``attrs``;
    returns (span name, status code, status message, end of the response)."""
    point = getattr(ex.point, "name", str(ex.point))
    path = ex.path
    template = url_template(path)
    host, port = split_authority(ex.authority)
    attrs.update({
        "http.request.method": ex.method or "_OTHER",
        "url.path": path,
        "url.scheme": ex.scheme or "http",
        "url.template": template,
        "server.address": host or _ip(ex.server[0]),
        "server.port": int(port) if port.isdigit() else ex.server[1],
        "client.address": _ip(ex.client[0]),
        "network.peer.address": _ip(ex.server[0]),
        "network.peer.port": ex.server[1],
        "network.protocol.version": ex.protocol.split("/", 1)[-1],
        "wirespan.capture.interface": point,
    })
    name = f"{ex.method or 'HTTP'} {template}"
    status, message = STATUS_UNSET, ""
    if ex.is_grpc and ex.stream_id:
        # gRPC: the RPC conventions; the path is /package.Service/Method
        rpc = path[1:] if path.startswith("/") else path
        attrs["rpc.system.name"] = "grpc"
        attrs["rpc.method"] = rpc
        name = rpc or name
        if ex.grpc_status is not None:
            attrs["rpc.status_code"] = GRPC_CODES.get(ex.grpc_status, str(ex.grpc_status))
            if ex.grpc_status != 0:
                status = STATUS_ERROR
                message = ex.grpc_message
        timeout = ex.request.header("grpc-timeout")
        if timeout:
            attrs["rpc.grpc.request.metadata.grpc-timeout"] = [timeout]
    if "partial_headers" in ex.flags:
        attrs["wirespan.http2.partial_headers"] = True
    if keep_query and "?" in ex.target:
        attrs["url.query"] = ex.target.split("?", 1)[1]
    if ex.dialled is not None:
        attrs["wirespan.upstream.address"] = f"{_ip(ex.dialled[0])}:{ex.dialled[1]}"
    if ctx is not None and ctx.request_id:
        attrs["http.request.header.x-request-id"] = [ctx.request_id]
    l5d = ex.request.header("l5d-client-id")
    if l5d:
        attrs["l5d.client_id"] = l5d
    end = ex.request.last_ts
    if ex.response is not None:
        attrs["http.response.status_code"] = ex.status
        end = max(end, ex.response.last_ts)
        if ex.status >= 500:
            status = STATUS_ERROR
    bad = ex.flags & {"reset", "gap", "no_response", "truncated", "malformed"}
    if bad:
        status = STATUS_ERROR
        message = ",".join(sorted(bad)) + (f": {message}" if message else "")
    if ex.flags:
        attrs["wirespan.exchange.flags"] = sorted(ex.flags)
    return name, status, message, end


def _ident(ex: Exchange) -> tuple:
    point = getattr(ex.point, "name", str(ex.point))
    ident: tuple = (point, ex.client, ex.server, ex.request.first_ts, ex.method, ex.target)
    if ex.stream_id:  # several HTTP/2 requests often share one packet, hence one timestamp
        ident += (ex.stream_id,)
    return ident


def _trace(ctx: TraceContext | None, digest: bytes, attrs: dict[str, Any]) -> tuple[str, str]:
    """(trace id, parent span id): the headers', or one derived from the observation."""
    if ctx is not None:
        attrs["wirespan.trace.format"] = ctx.format
        return ctx.trace_id, ctx.span_id
    attrs["wirespan.trace.synthetic"] = True
    return digest[8:24].hex(), ""


def exchange_span(ex: Exchange, ctx: TraceContext | None, keep_query: bool = False
                  ) -> SpanRecord:
    d = _digest(*_ident(ex))
    attrs: dict[str, Any] = {"wirespan.span.role": "exchange"}
    trace_id, parent = _trace(ctx, d, attrs)
    name, status, message, end = _http_attrs(ex, ctx, keep_query, attrs)
    return SpanRecord(trace_id=trace_id, span_id=d[:8].hex(), parent_span_id=parent,
                      name=name, kind=KIND_CLIENT,
                      start_ns=ex.request.first_ts, end_ns=end, status_code=status,
                      status_message=message, attributes=attrs,
                      trace_state=ctx.tracestate if ctx is not None else "")


def proxy_span(hop: Hop, keep_query: bool = False) -> SpanRecord:
    """A matched hop -> a SERVER span for the proxy: trace and parent from the downstream
    leg's headers, times at the proxy, the dwell attributes of the contract."""
    dx, ux = hop.down.ex, hop.up.ex
    d = _digest("proxy", *_ident(dx), *_ident(ux))
    ctx = hop.down.ctx
    attrs: dict[str, Any] = {"wirespan.span.role": "proxy"}
    trace_id, parent = _trace(ctx, d, attrs)
    name, status, message, _end = _http_attrs(dx, ctx, keep_query, attrs)
    attrs.update({
        "wirespan.proxy.request_dwell_ns": hop.request_dwell_ns,
        "wirespan.proxy.response_dwell_ns": hop.response_dwell_ns,
        "wirespan.proxy.upstream_duration_ns": hop.upstream_duration_ns,
        "wirespan.proxy.upstream_connect_ns": hop.upstream_connect_ns,
        "wirespan.proxy.address": hop.proxy_address,
        "wirespan.upstream.address": hop.upstream_address,
        "wirespan.match": hop.match,
        "wirespan.proxy.span_id_rewritten": hop.span_id_rewritten,
    })
    if hop.direction:
        attrs["wirespan.proxy.direction"] = hop.direction
    if hop.ambiguous:
        attrs["wirespan.match.ambiguous"] = True
    if hop.retries:
        attrs["wirespan.proxy.retries"] = hop.retries
    if ux.status and ux.status != dx.status:
        attrs["wirespan.upstream.status_code"] = ux.status
    if len(hop.down.obs) > 1 or len(hop.up.obs) > 1:
        attrs["wirespan.capture.interfaces"] = sorted(
            {getattr(o.point, "name", str(o.point)) for o in hop.down.obs + hop.up.obs})
    return SpanRecord(trace_id=trace_id, span_id=d[:8].hex(), parent_span_id=parent,
                      name=name, kind=KIND_SERVER, start_ns=hop.start_ns, end_ns=hop.end_ns,
                      status_code=status, status_message=message, attributes=attrs,
                      trace_state=ctx.tracestate if ctx is not None else "")


def _dwell_attrs(attrs: dict[str, Any], dw: Any, ambiguous: bool) -> None:
    attrs["wirespan.proxy.request_dwell_ns"] = dw.request_ns
    attrs["wirespan.proxy.response_dwell_ns"] = dw.response_ns
    attrs["wirespan.proxy.upstream_connect_ns"] = dw.connect_ns
    if ambiguous:
        attrs["wirespan.proxy.request_dwell_min_ns"] = dw.request_min_ns
        attrs["wirespan.proxy.request_dwell_max_ns"] = dw.request_max_ns
        attrs["wirespan.proxy.response_dwell_min_ns"] = dw.response_min_ns
        attrs["wirespan.proxy.response_dwell_max_ns"] = dw.response_max_ns


def mesh_spans(mh: Any, keep_query: bool = False) -> list[SpanRecord]:
    """A mesh hop (``sniffer.meshhop.MeshHop``) -> the outbound sidecar's span (parent: the
    span id the caller sent), the network's between the sidecars (parent: the outbound
    span), and the inbound sidecar's (parent: the network span), when the callee was seen.
    Times at each sidecar come from its plaintext leg and the TLS records at its end."""
    dx = mh.down.ex
    ctx = mh.down.ctx
    d_out = _digest("mesh-out", *_ident(dx))
    attrs: dict[str, Any] = {"wirespan.span.role": "proxy"}
    trace_id, parent = _trace(ctx, d_out, attrs)
    name, status, message, _end = _http_attrs(dx, ctx, keep_query, attrs)
    tls_attrs: dict[str, Any] = {}
    if mh.sni:
        tls_attrs["tls.server.name"] = mh.sni
    if mh.alpn:
        tls_attrs["tls.next_protocol"] = mh.alpn
    if mh.tls_version:
        tls_attrs["tls.protocol.version"] = mh.tls_version.removeprefix("TLS ")
    common = {"wirespan.match": "tls-timing", **tls_attrs}
    if mh.ambiguous:
        common["wirespan.match.ambiguous"] = True
    attrs.update(common)
    _dwell_attrs(attrs, mh.outbound, mh.ambiguous)
    attrs.update({
        "wirespan.proxy.address": mh.outbound_address,
        "wirespan.upstream.address": mh.inbound_address,
        "wirespan.proxy.direction": "outbound",
        "wirespan.proxy.upstream_duration_ns": mh.resp_end_a - mh.req_a,
    })
    out = [SpanRecord(trace_id=trace_id, span_id=d_out[:8].hex(), parent_span_id=parent,
                      name=name, kind=KIND_SERVER, start_ns=mh.down.req_first_max,
                      end_ns=max(mh.down.resp_last_min, mh.down.req_first_max),
                      status_code=status,
                      status_message=message, attributes=attrs,
                      trace_state=ctx.tracestate if ctx is not None else "")]
    if mh.up is None:
        return out
    ux = mh.up.ex
    d_net = _digest("mesh-net", *_ident(dx), *_ident(ux))
    host, port = mh.inbound_address.rsplit(":", 1)
    net = {"wirespan.span.role": "network", **common,
           "server.address": host.strip("[]"), "server.port": int(port),
           "client.address": _ip(mh.client[0]), "client.port": mh.client[1],
           "wirespan.network.request_ns": mh.network_request_ns,
           "wirespan.network.response_ns": mh.network_response_ns}
    if mh.points:
        net["wirespan.capture.interfaces"] = sorted(set(mh.points))
    out.append(SpanRecord(trace_id=trace_id, span_id=d_net[:8].hex(),
                          parent_span_id=d_out[:8].hex(), name=f"TLS {mh.inbound_address}",
                          kind=KIND_CLIENT, start_ns=mh.req_a,
                          end_ns=max(mh.resp_end_a, mh.req_a), status_code=STATUS_UNSET,
                          attributes=net,
                          trace_state=ctx.tracestate if ctx is not None else ""))
    d_in = _digest("mesh-in", *_ident(ux))
    uctx = mh.up.ctx
    ia: dict[str, Any] = {"wirespan.span.role": "proxy"}
    if ctx is not None:
        ia["wirespan.trace.format"] = ctx.format
    else:
        ia["wirespan.trace.synthetic"] = True
    iname, istatus, imsg, _ = _http_attrs(ux, uctx, keep_query, ia)
    ia.update(common)
    _dwell_attrs(ia, mh.inbound, mh.ambiguous)
    ia.update({
        "wirespan.proxy.address": mh.inbound_address,
        "wirespan.upstream.address": _ep_text(ux.dialled or ux.server),
        "wirespan.proxy.direction": "inbound",
        "wirespan.proxy.upstream_duration_ns": mh.up.resp_last_max - mh.up.req_first_min,
        "wirespan.proxy.span_id_rewritten": bool(ctx and uctx and ctx.span_id != uctx.span_id),
    })
    out.append(SpanRecord(trace_id=trace_id, span_id=d_in[:8].hex(),
                          parent_span_id=d_net[:8].hex(), name=iname, kind=KIND_SERVER,
                          start_ns=mh.req_b, end_ns=max(mh.resp_end_b, mh.req_b),
                          status_code=istatus, status_message=imsg, attributes=ia,
                          trace_state=ctx.tracestate if ctx is not None else ""))
    return out


def _ep_text(ep: tuple[bytes, int]) -> str:
    ip = ipaddress.ip_address(ep[0])
    return f"[{ip}]:{ep[1]}" if ip.version == 6 else f"{ip}:{ep[1]}"


class SpanBuilder:
    """Decides which exchanges and hops become spans (``mode``: traced | all | proxy)."""

    def __init__(self, mode: str = "traced", keep_query: bool = False) -> None:
        self.mode = mode
        self.keep_query = keep_query

    def exchange(self, ex: Exchange, ctx: TraceContext | None) -> SpanRecord | None:
        """An exchange in no hop (``ctx``: its trace context, already extracted)."""
        if self.mode == "proxy" or not ex.method:
            return None  # a response alone is no span
        if ctx is None and self.mode != "all":
            return None
        return exchange_span(ex, ctx, self.keep_query)

    def hop(self, hop: Hop) -> SpanRecord:
        return proxy_span(hop, self.keep_query)

    def mesh(self, mh: Any) -> list[SpanRecord]:
        return mesh_spans(mh, self.keep_query)

    def __call__(self, ex: Exchange) -> SpanRecord | None:
        """An exchange on its own, without correlation."""
        return self.exchange(ex, extract(ex.request.headers) if ex.method else None)
