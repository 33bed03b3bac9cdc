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

from sniffer.capture.model import CapturePoint
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


# ---- memos for the span hot path (every exchange and hop of a replay comes through here) ----
# A node sees few distinct addresses, connections, authorities, paths and capture points, and
# each costs far more to format than to look up: ipaddress objects (~1 µs an address), the
# endpoints' tuple reprs for the span-id digest, url_template's regex per segment. Each memo
# is a plain dict emptied when it reaches _MEMO_MAX entries, so memory stays bounded however
# varied the traffic (it then only costs the odd miss). Only exact built-in types are
# memoised (``type(x) is bytes``…), and a hit counts only for exact types too: an equal value
# of another type (``True`` for ``1``, a memoryview for bytes) must still get its own text,
# or its own error.
_MEMO_MAX = 4096
_IP_TEXT: dict[bytes, str] = {}  # address bytes -> text
_EPS_REPR: dict[tuple[tuple[bytes, int], tuple[bytes, int]], str] = {}  # (client, server)
_PATH_TEMPLATE: dict[str, tuple[str, str]] = {}  # target -> (path, url_template(path))
_AUTHORITY: dict[str, tuple[str, int | None]] = {}
_VERSION: dict[str, str] = {}  # protocol -> network.protocol.version


def _ip(addr: bytes) -> str:
    if type(addr) is not bytes:
        return str(ipaddress.ip_address(addr))
    s = _IP_TEXT.get(addr)
    if s is None:
        s = str(ipaddress.ip_address(addr))
        if len(_IP_TEXT) >= _MEMO_MAX:
            _IP_TEXT.clear()
        _IP_TEXT[addr] = s
    return s


def _is_ep(ep: object) -> bool:
    """An endpoint of exact types: a (bytes, int) tuple."""
    return type(ep) is tuple and len(ep) == 2 and type(ep[0]) is bytes \
        and type(ep[1]) is int  # type: ignore[index]


def _eps_repr(client: tuple[bytes, int], server: tuple[bytes, int]) -> str:
    """``f"{client!r}\\0{server!r}"``, memoised by connection (the endpoints' reprs are
    most of the cost of a span id's digest text)."""
    try:
        s = _EPS_REPR.get((client, server))
    except TypeError:  # unhashable: no memo
        s = None
    # a hit is equal to a key of exact types: checking the types of the parts suffices
    if s is not None and type(client) is tuple and type(server) is tuple \
            and type(client[1]) is int and type(server[1]) is int \
            and type(client[0]) is bytes and type(server[0]) is bytes:
        return s
    s = f"{client!r}\0{server!r}"
    if _is_ep(client) and _is_ep(server):
        if len(_EPS_REPR) >= _MEMO_MAX:
            _EPS_REPR.clear()
        _EPS_REPR[(client, server)] = s
    return s


def _path_template(ex: Exchange) -> tuple[str, str]:
    """(``ex.path``, its ``url_template``), memoised by target: an Exchange's path is made
    from its target alone."""
    target = ex.target
    if type(target) is not str or type(ex) is not Exchange:
        path = ex.path
        return path, url_template(path)
    r = _PATH_TEMPLATE.get(target)
    if r is None:
        path = ex.path
        r = path, url_template(path)
        if len(_PATH_TEMPLATE) >= _MEMO_MAX:
            _PATH_TEMPLATE.clear()
        _PATH_TEMPLATE[target] = r
    return r


def _authority(authority: str) -> tuple[str, int | None]:
    """(host, the port as an int when it is all digits, else None), memoised."""
    if type(authority) is not str:
        host, port = split_authority(authority)
        return host, int(port) if port.isdigit() else None
    r = _AUTHORITY.get(authority)
    if r is None:
        host, port = split_authority(authority)
        r = host, int(port) if port.isdigit() else None  # int() may raise: then not kept
        if len(_AUTHORITY) >= _MEMO_MAX:
            _AUTHORITY.clear()
        _AUTHORITY[authority] = r
    return r


def _version(protocol: str) -> str:
    """``network.protocol.version`` of ``http/1.1`` etc., memoised."""
    if type(protocol) is not str:
        return protocol.split("/", 1)[-1]
    v = _VERSION.get(protocol)
    if v is None:
        v = protocol.split("/", 1)[-1]
        if len(_VERSION) >= _MEMO_MAX:
            _VERSION.clear()
        _VERSION[protocol] = v
    return v


# CapturePoint.name is a property, rebuilt from (source, namespace, interface) at each call,
# and a point's fields may still change after it is made (the agent sets its pod points'
# namespace): the memo, keyed by the point (compared by identity), keeps the three fields it
# was built from and is used only while they are still the same objects.
_POINT_NAME: dict[CapturePoint, tuple[str, str, str, str]] = {}


def _point_name(point: object) -> str:
    """A capture point's ``name`` (``str()`` of anything without one)."""
    if type(point) is CapturePoint:
        m = _POINT_NAME.get(point)
        if m is not None and m[0] is point.source and m[1] is point.namespace \
                and m[2] is point.interface:
            return m[3]
        name = point.name
        if len(_POINT_NAME) >= _MEMO_MAX:
            _POINT_NAME.clear()
        _POINT_NAME[point] = (point.source, point.namespace, point.interface, name)
        return name
    try:
        return point.name  # type: ignore[attr-defined]
    except AttributeError:
        return str(point)


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
    """SHA-256 over ``repr(part) + "\0"`` for each part."""
    return _digest_text("".join([repr(p) + "\0" for p in parts]))


def _digest_text(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def _ident_text(ex: Exchange, point: str) -> str:
    """What ``_digest(*_ident(ex))`` hashes (``point``: the name of ``ex.point``), built at
    once: each part's repr then a NUL (one sha256 update over the whole text gives the
    digest of an update per part)."""
    text = (f"{point!r}\0{_eps_repr(ex.client, ex.server)}\0"
            f"{ex.request.first_ts!r}\0{ex.method!r}\0{ex.target!r}\0")
    if ex.stream_id:
        text += f"{ex.stream_id!r}\0"
    return text


_BAD_FLAGS = frozenset(("reset", "gap", "no_response", "truncated", "malformed"))


def _http_attrs(ex: Exchange, ctx: TraceContext | None, keep_query: bool,
                attrs: dict[str, Any], point: str | None = None
                ) -> tuple[str, int, str, int]:
    """The HTTP / RPC semantic-convention attributes of one exchange, into ``attrs``;
    returns (span name, status code, status message, end of the response). ``point``: the
    name of ``ex.point``, when the caller has it already."""
    if point is None:
        point = _point_name(ex.point)
    path, template = _path_template(ex)
    host, port = _authority(ex.authority)
    server = ex.server
    method = ex.method
    peer = _ip(server[0])
    attrs.update({
        "http.request.method": method or "_OTHER",
        "url.path": path,
        "url.scheme": ex.scheme or "http",
        "url.template": template,
        "server.address": host or peer,
        "server.port": server[1] if port is None else port,
        "client.address": _ip(ex.client[0]),
        "network.peer.address": peer,
        "network.peer.port": server[1],
        "network.protocol.version": _version(ex.protocol),
        "wirespan.capture.interface": point,
    })
    name = f"{method or 'HTTP'} {template}"
    status, message = STATUS_UNSET, ""
    request = ex.request
    if ex.stream_id and ex.is_grpc:
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
        timeout = request.header("grpc-timeout")
        if timeout:
            attrs["rpc.grpc.request.metadata.grpc-timeout"] = [timeout]
    flags = ex.flags
    if flags and "partial_headers" in flags:
        attrs["wirespan.http2.partial_headers"] = True
    if keep_query and "?" in ex.target:
        attrs["url.query"] = ex.target.split("?", 1)[1]
    if ex.dialled is not None:
        attrs["wirespan.upstream.address"] = f"{_ip(ex.dialled[0])}:{ex.dialled[1]}"
    if ctx is not None and ctx.request_id:
        attrs["http.request.header.x-request-id"] = [ctx.request_id]
    l5d = request.header("l5d-client-id")
    if l5d:
        attrs["l5d.client_id"] = l5d
    end = request.last_ts
    if ex.response is not None:
        attrs["http.response.status_code"] = ex.status
        end = max(end, ex.response.last_ts)
        if ex.status >= 500:
            status = STATUS_ERROR
    if flags:
        bad = flags & _BAD_FLAGS
        if bad:
            status = STATUS_ERROR
            message = ",".join(sorted(bad)) + (f": {message}" if message else "")
        attrs["wirespan.exchange.flags"] = sorted(flags)
    return name, status, message, end


def _ident(ex: Exchange) -> tuple:
    """What a span id is derived from (see _ident_text)."""
    ident: tuple = (_point_name(ex.point), ex.client, ex.server, ex.request.first_ts,
                    ex.method, ex.target)
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
    point = _point_name(ex.point)
    d = _digest_text(_ident_text(ex, point))  # = _digest(*_ident(ex))
    attrs: dict[str, Any] = {"wirespan.span.role": "exchange"}
    trace_id, parent = _trace(ctx, d, attrs)
    name, status, message, end = _http_attrs(ex, ctx, keep_query, attrs, point)
    # (positional: this runs for every span, and keywords cost more; SpanRecord's order)
    return SpanRecord(trace_id, d[:8].hex(), parent, name, KIND_CLIENT, ex.request.first_ts,
                      end, status, message, attrs,
                      ctx.tracestate if ctx is not None else "")


def proxy_span(hop: Hop, keep_query: bool = False) -> SpanRecord:
    """A matched hop -> a SERVER span for the proxy: trace and parent from the downstream
    leg's headers, times at the proxy, the dwell attributes of the contract."""
    dx, ux = hop.down.ex, hop.up.ex
    dpoint = _point_name(dx.point)
    # = _digest("proxy", *_ident(dx), *_ident(ux))
    d = _digest_text("'proxy'\0" + _ident_text(dx, dpoint)
                     + _ident_text(ux, _point_name(ux.point)))
    ctx = hop.down.ctx
    attrs: dict[str, Any] = {"wirespan.span.role": "proxy"}
    trace_id, parent = _trace(ctx, d, attrs)
    name, status, message, _end = _http_attrs(dx, ctx, keep_query, attrs, dpoint)
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
            {_point_name(o.point) for o in hop.down.obs + hop.up.obs})
    # (positional, as in exchange_span)
    return SpanRecord(trace_id, d[:8].hex(), parent, name, KIND_SERVER, hop.start_ns,
                      hop.end_ns, status, message, attrs,
                      ctx.tracestate if ctx is not None else "")


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
