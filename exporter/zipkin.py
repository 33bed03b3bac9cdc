"""SpanRecords -> Zipkin v2 JSON: a file writer and an HTTP transport (POST /api/v2/spans).

Zipkin's ``POST /api/v2/spans`` takes a JSON *array* of spans (``ListOfSpans`` in
zipkin2-api.yaml), so that is the unit here: the file format (``--format zipkin-json``)
is one JSON array per line, one line per batch — each line can be posted to a Zipkin
server as it is (``curl --data-binary @<(sed -n 1p spans.json) …``), and the file reads
with any JSON-lines tool. The HTTP transport posts the same array.

Field mapping follows the OpenTelemetry specification's "OpenTelemetry to Zipkin
Transformation":

- ``traceId``, ``id``, ``parentId``: lowercase hex (``parentId`` only when there is one);
- ``name``: the span name; ``kind``: ``CLIENT``/``SERVER``/``PRODUCER``/``CONSUMER``,
  omitted for INTERNAL and UNSPECIFIED;
- ``timestamp``: start in µs since the epoch; ``duration``: µs, at least 1 (Zipkin treats
  0 as "unknown" and rounds sub-µs durations up);
- ``localEndpoint.serviceName``: the resource's ``service.name``;
- ``remoteEndpoint``: ``ipv4``/``ipv6`` and ``port`` from ``network.peer.address``/
  ``network.peer.port``; for CLIENT spans also ``serviceName`` from ``peer.service``, else
  ``server.address`` when it is a name (not an IP literal);
- ``tags``: every attribute (the resource's other than ``service.name`` first, the span's
  overriding them) as a string: bools ``true``/``false``, numbers in decimal, arrays as a
  JSON array; ``otel.scope.name``/``otel.scope.version``; status OK →
  ``otel.status_code = "OK"``; status ERROR → ``otel.status_code = "ERROR"`` and ``error``
  = the status message (empty string when there is none).
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Iterable, Sequence
from typing import IO, Any

from ._http import HttpPoster, split_url
from .otlp_json import SCOPE_NAME, OtlpJsonWriter
from .spans import STATUS_ERROR, STATUS_OK, SpanRecord

ZIPKIN_DEFAULT_PORT = 9411
KINDS = {2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def _tag_json(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_tag_json(x) for x in v]
    if isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def tag_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float, str)):
        return str(v)
    if isinstance(v, (list, tuple)):
        return json.dumps(_tag_json(v), separators=(",", ":"), ensure_ascii=False)
    return str(v)


def _endpoint_ip(addr: Any, ep: dict[str, Any]) -> bool:
    try:
        ip = ipaddress.ip_address(str(addr))
    except ValueError:
        return False
    ep["ipv4" if ip.version == 4 else "ipv6"] = str(ip)
    return True


def to_zipkin(s: SpanRecord, resource: dict[str, Any], version: str = "") -> dict[str, Any]:
    a = s.attributes
    z: dict[str, Any] = {"traceId": s.trace_id.lower(), "id": s.span_id.lower()}
    if s.parent_span_id:
        z["parentId"] = s.parent_span_id.lower()
    z["name"] = s.name
    kind = KINDS.get(s.kind)
    if kind:
        z["kind"] = kind
    z["timestamp"] = s.start_ns // 1000
    z["duration"] = max(1, (max(s.end_ns, s.start_ns) - s.start_ns + 500) // 1000)
    z["localEndpoint"] = {"serviceName": str(resource.get("service.name", "wirespan"))}
    remote: dict[str, Any] = {}
    if s.kind == 3:
        peer = a.get("peer.service") or a.get("server.address")
        if peer and not _endpoint_ip(peer, {}):
            remote["serviceName"] = str(peer)
    if "network.peer.address" in a:
        _endpoint_ip(a["network.peer.address"], remote)
    port = a.get("network.peer.port")
    if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536:
        remote["port"] = port
    if remote:
        z["remoteEndpoint"] = remote
    tags = {k: tag_value(v) for k, v in resource.items() if k != "service.name"}
    tags.update((k, tag_value(v)) for k, v in a.items())
    tags["otel.scope.name"] = SCOPE_NAME
    if version:
        tags["otel.scope.version"] = version
    if s.status_code == STATUS_ERROR:
        tags["otel.status_code"] = "ERROR"
        tags["error"] = s.status_message
    elif s.status_code == STATUS_OK:
        tags["otel.status_code"] = "OK"
    z["tags"] = tags
    return z


def zipkin_json(spans: Iterable[SpanRecord], resource: dict[str, Any], version: str = "") -> str:
    """One JSON array: the body ``POST /api/v2/spans`` takes, and one line of the file."""
    return json.dumps([to_zipkin(s, s.resource if s.resource is not None else resource, version)
                       for s in spans],
                      separators=(",", ":"), ensure_ascii=False)


class ZipkinJsonWriter(OtlpJsonWriter):
    """Writes spans as Zipkin v2 JSON, one array of ``batch`` spans per line."""

    @staticmethod
    def encode_line(spans: list[SpanRecord], resource: dict[str, Any], version: str) -> str:
        return zipkin_json(spans, resource, version)


def zipkin_spans_url(endpoint: str) -> str:
    scheme, host, port, base = split_url(endpoint, ZIPKIN_DEFAULT_PORT)
    if not base.endswith("/api/v2/spans"):
        base += "/api/v2/spans"
    h = f"[{host}]" if ":" in host else host
    return f"{scheme}://{h}:{port}{base}"


class ZipkinHttpTransport:
    def __init__(self, endpoint: str, resource: dict[str, Any], version: str = "",
                 timeout: float = 10.0, headers: dict[str, str] | None = None) -> None:
        self.url = zipkin_spans_url(endpoint)
        self.resource, self.version = resource, version
        self.poster = HttpPoster(self.url, "application/json", timeout, headers)

    def send(self, spans: Sequence[SpanRecord]) -> int:
        self.poster.post(zipkin_json(spans, self.resource, self.version).encode("utf-8"))
        return 0

    def close(self) -> None:
        self.poster.close()


__all__ = ["ZipkinHttpTransport", "ZipkinJsonWriter", "tag_value", "to_zipkin", "zipkin_json",
           "zipkin_spans_url"]
