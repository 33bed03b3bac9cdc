"""SpanRecords -> OTLP/JSON lines: one ``ExportTraceServiceRequest`` per line.

The messages are the OpenTelemetry proto package's own (``opentelemetry-proto``), turned into
JSON by protobuf's ``json_format`` with the two changes the OTLP/JSON encoding makes to the
standard proto3 JSON mapping (OTLP specification, "JSON Protobuf Encoding"): ``traceId``,
``spanId`` and ``parentSpanId`` are lowercase hex instead of base64, and enums are integers.
64-bit integers stay decimal strings, as proto3 JSON writes them. This is what the
Collector's file exporter writes and its ``otlpjsonfile`` receiver reads.

Two encoders give the same text. ``to_json_line(encode(...))`` goes through the proto
messages and ``json_format`` (pure Python even in protobuf's upb build: 150-300 µs a
span); it is kept as the *reference*. ``fast_json_line`` builds the identical line directly from the
SpanRecords by string building (C-accelerated string escaping, cached attribute-key
prefixes): same keys in the same order (proto field-number order, as ``json_format`` walks
``ListFields()``), same value encodings (ids lowercase hex, 64-bit integers as decimal
strings, enums as integers, ``NaN``/``Infinity`` doubles as strings, ``\\uXXXX``-escaped
non-ASCII like ``json.dumps``), and the same omissions (empty strings, zero numbers and
empty repeated fields are left out; set sub-messages such as ``status`` and an empty
``arrayValue`` stay as ``{}``). It raises ``ValueError`` where the proto setters would
(integers outside int64, times outside uint64, ids that are not hex). tests/test_spans.py
checks the two byte for byte on hypothesis-generated spans. ``OtlpJsonWriter`` uses the
fast one (8-13 µs a span, about 20x faster, measured on 20k synthetic spans).
"""

from __future__ import annotations

import base64
import json
import math
import socket
from collections.abc import Iterable
from json.encoder import encode_basestring_ascii as _jstr
from typing import IO, Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from .spans import SpanRecord, by_resource

SCOPE_NAME = "wirespan"


def _any(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, (list, tuple)):
        v = AnyValue()
        v.array_value.values.extend(_any(x) for x in value)
        return v
    return AnyValue(string_value=str(value))


def _kvs(attrs: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=_any(v)) for k, v in attrs.items()]


def encode(spans: Iterable[SpanRecord], resource: dict[str, Any],
           version: str = "") -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    for res, group in by_resource(spans, resource) or [(resource, [])]:
        rs = req.resource_spans.add()
        rs.resource.attributes.extend(_kvs(res))
        ss = rs.scope_spans.add()
        ss.scope.name = SCOPE_NAME
        ss.scope.version = version
        _encode_spans(ss, group)
    return req


def _encode_spans(ss: Any, spans: list[SpanRecord]) -> None:
    for s in spans:
        sp = ss.spans.add()
        sp.trace_id = bytes.fromhex(s.trace_id)
        sp.span_id = bytes.fromhex(s.span_id)
        if s.parent_span_id:
            sp.parent_span_id = bytes.fromhex(s.parent_span_id)
        if s.trace_state:
            sp.trace_state = s.trace_state
        sp.name = s.name
        sp.kind = s.kind  # type: ignore[assignment]
        sp.start_time_unix_nano = s.start_ns
        sp.end_time_unix_nano = max(s.end_ns, s.start_ns)
        sp.attributes.extend(_kvs(s.attributes))
        sp.status.CopyFrom(Status(code=s.status_code, message=s.status_message))  # type: ignore[arg-type]


def _hex_ids(d: Any) -> None:
    for rs in d.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for sp in ss.get("spans", []):
                for k in ("traceId", "spanId", "parentSpanId"):
                    if k in sp:
                        sp[k] = base64.b64decode(sp[k]).hex()


def to_json_line(req: ExportTraceServiceRequest) -> str:
    d = json_format.MessageToDict(req, use_integers_for_enums=True)
    _hex_ids(d)
    return json.dumps(d, separators=(",", ":"))


# ---- fast path: SpanRecords -> the same JSON text, without building proto messages ----

_I64_MIN, _I64_MAX, _U64_MAX = -(1 << 63), (1 << 63) - 1, (1 << 64) - 1
_KEY_PREFIX: dict[str, str] = {}
_KEY_PREFIX_MAX = 4096


def _key_prefix(key: str) -> str:
    """``,{"key":KEY,"value":`` (with its separating comma: see _kvs_into)."""
    p = _KEY_PREFIX.get(key)
    if p is None:
        p = (',{"key":' + _jstr(key) + ',"value":') if key else ',{"value":'
        if len(_KEY_PREFIX) >= _KEY_PREFIX_MAX:
            _KEY_PREFIX.clear()
        _KEY_PREFIX[key] = p
    return p


def _fast_any(v: Any) -> str:
    t = type(v)
    if t is str:
        return '{"stringValue":' + _jstr(v) + "}"
    if t is bool:
        return '{"boolValue":true}' if v else '{"boolValue":false}'
    if t is int:
        if not _I64_MIN <= v <= _I64_MAX:
            raise ValueError(f"integer attribute out of int64 range: {v}")
        return '{"intValue":"' + str(v) + '"}'
    if t is float:
        return '{"doubleValue":' + _fast_double(v) + "}"
    # subclasses and everything else, in the same order of tests as _any()
    if isinstance(v, bool):
        return _fast_any(bool(v))
    if isinstance(v, int):
        return _fast_any(int(v))
    if isinstance(v, float):
        return _fast_any(float(v))
    if isinstance(v, (list, tuple)):
        if not v:
            return '{"arrayValue":{}}'
        return '{"arrayValue":{"values":[' + ",".join(_fast_any(x) for x in v) + "]}}"
    return '{"stringValue":' + _jstr(str(v)) + "}"


def _fast_double(v: float) -> str:
    if math.isinf(v):
        return '"-Infinity"' if v < 0 else '"Infinity"'
    if math.isnan(v):
        return '"NaN"'
    return float.__repr__(v)


# The line is built as one flat list of pieces joined once at the end (fast_json_line):
# nested joins and ``+`` of long strings would copy each span's text several times over.
# Attribute pieces start with their separating comma; whoever starts a list of them drops
# the first one's.

# Encoded ``,{"key":…,"value":{…}}`` pieces of attribute (key, value) pairs that repeat
# from span to span: method, scheme, addresses, ports, status codes, capture point, proxy
# and upstream addresses, match kind… (most of a span's attributes). Only ``str`` values and
# small ``int`` ones (ports, status codes, counts; not the nanosecond durations, which rarely
# repeat) go in, as exact types, so no lookup can hit an equal value of another type (``True``
# is ``1``). Emptied when it reaches _KV_MAX entries (varied paths just make it miss more).
_KV: dict[tuple[str, Any], str] = {}
_KV_MAX = 8192
_SMALL_INT = 1 << 16


def _kv_miss(k: str, v: Any) -> str:
    """The piece of (k, v), a ``str`` or small ``int`` value, computed and remembered."""
    p = _KEY_PREFIX.get(k) or _key_prefix(k)
    f = f'{p}{{"stringValue":{_jstr(v)}}}}}' if type(v) is str else f'{p}{{"intValue":"{v}"}}}}'
    if len(_KV) >= _KV_MAX:
        _KV.clear()
    _KV[(k, v)] = f
    return f


def _kvs_into(attrs: dict[str, Any], out: list[str]) -> None:
    """Appends ``,{"key":…,"value":…}`` to ``out`` for each attribute. (f-strings rather than
    ``+``: one string built instead of one per ``+``; ``{v}`` of an exact int is ``str(v)``.)"""
    append = out.append
    kvs = _KV
    prefixes = _KEY_PREFIX
    for k, v in attrs.items():
        t = type(v)
        if t is str or (t is int and 0 <= v < _SMALL_INT):
            append(kvs.get((k, v)) or _kv_miss(k, v))
            continue
        p = prefixes.get(k) or _key_prefix(k)
        if t is int and _I64_MIN <= v <= _I64_MAX:
            append(f'{p}{{"intValue":"{v}"}}}}')
        elif t is bool:
            append(p + ('{"boolValue":true}}' if v else '{"boolValue":false}}'))
        else:
            append(p + _fast_any(v) + "}")


def _fast_kvs(attrs: dict[str, Any]) -> str:
    out: list[str] = []
    _kvs_into(attrs, out)
    if out:
        out[0] = out[0][1:]
    return "".join(out)


_LOWER_HEX = "0123456789abcdef"


def _hex(s: str) -> str:
    """An id as lowercase hex, as ``bytes.fromhex(s).hex()`` has it (ValueError if not hex).
    Ids nearly always are already: lowercase hex digits, an even number of them."""
    if type(s) is str and not len(s) & 1 and not s.strip(_LOWER_HEX):
        return s  # (strip() leaves nothing only when every character is a hex digit)
    return bytes.fromhex(s).hex()


def _u64(v: int) -> int:
    if type(v) is not int:
        v = int(v)
    if not 0 <= v <= _U64_MAX:
        raise ValueError(f"time out of uint64 range: {v}")
    return v


def _span_into(s: SpanRecord, out: list[str]) -> None:
    """Appends ``,{…span…}`` to ``out`` (with its separating comma, like attributes)."""
    # the fields before the attributes, each with a comma first (the span's first one is
    # dropped below); they are short: one f-string, where each ``+`` would build a string
    tid = _hex(s.trace_id)
    sid = _hex(s.span_id)
    pid = _hex(s.parent_span_id) if s.parent_span_id else ""
    kind = s.kind
    start = _u64(s.start_ns)
    end = _u64(max(s.end_ns, s.start_ns))
    f_tid = f',"traceId":"{tid}"' if tid else ""
    f_sid = f',"spanId":"{sid}"' if sid else ""
    f_state = f',"traceState":{_jstr(s.trace_state)}' if s.trace_state else ""
    f_pid = f',"parentSpanId":"{pid}"' if pid else ""
    f_name = f',"name":{_jstr(s.name)}' if s.name else ""
    f_kind = f',"kind":{kind if type(kind) is int else int(kind)}' if kind else ""
    f_start = f',"startTimeUnixNano":"{start}"' if start else ""
    f_end = f',"endTimeUnixNano":"{end}"' if end else ""
    head = f"{f_tid}{f_sid}{f_state}{f_pid}{f_name}{f_kind}{f_start}{f_end}"
    code, message = s.status_code, s.status_message
    if not message and not code:
        status = '"status":{}}'
    else:
        f_msg = f',"message":{_jstr(message)}' if message else ""
        f_code = f',"code":{code if type(code) is int else int(code)}' if code else ""
        status = f'"status":{{{(f_msg + f_code)[1:]}}}}}'
    sep = "," if head else ""
    if s.attributes:
        out.append(f',{{{head[1:]}{sep}"attributes":[')
        i = len(out)
        _kvs_into(s.attributes, out)
        out[i] = out[i][1:]
        out.append("]," + status)
    else:
        out.append(f',{{{head[1:]}{sep}{status}')


def _fast_span(s: SpanRecord) -> str:
    out: list[str] = []
    _span_into(s, out)
    out[0] = out[0][1:]
    return "".join(out)


def fast_json_line(spans: Iterable[SpanRecord], resource: dict[str, Any],
                   version: str = "") -> str:
    """``to_json_line(encode(spans, resource, version))``, built directly (see module doc)."""
    scope = '{"name":' + _jstr(SCOPE_NAME) + (
        (',"version":' + _jstr(version)) if version else "") + "}"
    groups = by_resource(spans, resource) or [(resource, [])]
    out = ['{"resourceSpans":[']
    append = out.append
    for n, (r, group) in enumerate(groups):
        res = ('{"attributes":[' + _fast_kvs(r) + "]}") if r else "{}"
        append((',{"resource":' if n else '{"resource":') + res + ',"scopeSpans":[{"scope":'
               + scope)
        if group:
            append(',"spans":[')
            first = len(out)
            for s in group:
                _span_into(s, out)
            out[first] = out[first][1:]
            append("]")
        append("}]}")
    append("]}")
    return "".join(out)


def default_resource(service_name: str) -> dict[str, Any]:
    return {"service.name": service_name, "host.name": socket.gethostname()}


class OtlpJsonWriter:
    """Writes spans as OTLP/JSON lines, ``batch`` spans per line (``encode_line`` makes one
    line of a batch; other line formats subclass it)."""

    @staticmethod
    def encode_line(spans: list[SpanRecord], resource: dict[str, Any], version: str) -> str:
        return fast_json_line(spans, resource, version)

    def __init__(self, out: IO[str], resource: dict[str, Any], batch: int = 256,
                 version: str = "") -> None:
        self.out = out
        self.resource = resource
        self.batch = batch
        self.version = version
        self.pending: list[SpanRecord] = []
        self.written = 0

    def add(self, span: SpanRecord) -> None:
        self.pending.append(span)
        if len(self.pending) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.out.write(self.encode_line(self.pending, self.resource, self.version))
            self.out.write("\n")
            self.written += len(self.pending)
            self.pending = []
        self.out.flush()


__all__ = ["OtlpJsonWriter", "Span", "default_resource", "encode", "fast_json_line",
           "to_json_line"]
