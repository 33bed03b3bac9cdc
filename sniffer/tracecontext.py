"""Trace context headers -> one :class:`TraceContext`: pure functions, no I/O.

Rules of this module (read before changing it):

1. **Never raise, on any input.** Header values come off the wire from peers we do not
   control. Every public function returns ``None`` (or, for :func:`parse_tracestate`, drops
   the value) when its input is not valid, whatever the type or content of that input:
   ``str``, ``bytes``/``bytearray``/``memoryview``, or anything else. :func:`extract` is the
   stage boundary and has a last-resort guard as well.
2. **Invalid means absent.** Each parser is strict per its specification (W3C Trace Context
   level 1/2, openzipkin/b3-propagation, Jaeger ``uber-trace-id``, SkyWalking ``sw8`` v3,
   the OpenCensus binary format behind ``grpc-trace-bin``, Datadog, AWS X-Ray); a value that
   breaks the rules is ignored as a whole, never half-used. All-zero ids are invalid in every
   format. Bytes are read as Latin-1 (so decoding cannot fail) and then checked against the
   format's ASCII grammar; optional whitespace (space, tab) around a value is ignored, as
   RFC 9110 says for field values. Numbers are matched with ``[0-9]`` before ``int()``,
   because ``int()`` also accepts ``"1_0"``, ``" 1 "`` and non-ASCII digits.
3. **One id shape.** ``trace_id`` is 32 lowercase hex, 64-bit ids (B3, Jaeger, Datadog)
   left-padded with zeros as OpenTelemetry does; ``span_id`` is 16 lowercase hex, or ``""``
   when the format carries none (``x-request-id``; Datadog without a parent id; X-Ray without
   ``Parent``). ``span_id`` is always the *caller's* span, the id a receiver would use as its
   parent (W3C ``parent-id``, B3 ``SpanId``, ...). ``flags`` is the W3C trace-flags byte: the
   header's own byte for ``w3c`` and ``grpc-trace-bin`` (the OpenCensus trace options byte has
   the same bit 0), otherwise ``0x01`` when sampled and ``0x00`` when not.
4. **Precedence** in :func:`extract`, first valid wins: ``traceparent`` (with
   ``tracestate``), ``grpc-trace-bin``, B3 multi-headers, ``b3`` single header,
   ``uber-trace-id``, ``sw8``, Datadog, X-Ray, ``x-request-id``. The first three are
   Linkerd's own order (its proxy reads them in that order and propagates only the winner);
   the rest is ours: open standards before vendor formats, and ``x-request-id`` last because
   it is only a correlation id. Every format that parsed is listed in ``all_formats`` and a
   valid ``x-request-id`` is always copied into ``request_id``, whoever wins.
5. **Repeated headers: the first occurrence wins**, even when it is invalid and a later one
   is not. Linkerd's proxy reads trace headers with ``HeaderMap::get`` (the first value) and
   the B3 spec says "the first value wins". The exception is ``tracestate``: its fields are
   joined with ``,`` in order, as the W3C spec requires (RFC 9110 field order). The W3C test
   suite expects two ``traceparent`` fields to restart the trace; we keep the first because
   that is what the proxies we observe read and propagate.

Formats without a native 128-bit trace id or 64-bit span id are mapped deterministically,
so that both legs of a proxy hop yield the same ids:

* ``sw8``: ``trace_id`` = first 16 bytes of SHA-256 of the decoded trace-id string;
  ``span_id`` = first 8 bytes of SHA-256 of ``<decoded parent segment id>#<parent span id>``
  (the span id as a decimal without leading zeros).
* ``x-request-id``: a UUID (``8-4-4-4-12`` hex, any case) or a bare 32-hex value (nginx
  ``$request_id``) is used as the trace id, lowercased; anything else (and the nil UUID)
  becomes the first 16 bytes of SHA-256 of the value (ASCII, after trimming whitespace).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, TypeAlias

__all__ = [
    "FORMATS",
    "TRACE_HEADER_NAMES",
    "TraceContext",
    "extract",
    "parse_b3",
    "parse_b3_single",
    "parse_datadog",
    "parse_grpc_trace_bin",
    "parse_jaeger",
    "parse_request_id",
    "parse_sw8",
    "parse_traceparent",
    "parse_tracestate",
    "parse_xray",
]

HeaderValue: TypeAlias = str | bytes
HeaderPairs: TypeAlias = Iterable[tuple[str | bytes, str | bytes]] | Mapping[str, str | bytes]

#: ``wirespan.trace.format`` values produced here, in precedence order.
FORMATS: Final[tuple[str, ...]] = (
    "w3c",
    "grpc-trace-bin",
    "b3",
    "b3-single",
    "jaeger",
    "sw8",
    "datadog",
    "xray",
    "request-id",
)

#: Every (lowercased) header name this module reads; the HTTP parsers keep these.
TRACE_HEADER_NAMES: Final[frozenset[str]] = frozenset(
    {
        "traceparent",
        "tracestate",
        "grpc-trace-bin",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
        "x-b3-flags",
        "b3",
        "uber-trace-id",
        "sw8",
        "x-datadog-trace-id",
        "x-datadog-parent-id",
        "x-datadog-sampling-priority",
        "x-datadog-tags",
        "x-amzn-trace-id",
        "x-request-id",
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceContext:
    """A trace context read from one message's headers. Don't subclass."""

    trace_id: str
    """32 lowercase hex, never all zeros."""
    span_id: str
    """16 lowercase hex (the caller's span, never all zeros), or ``""`` if the format has none."""
    parent_span_id: str = ""
    """The caller's parent, when the format carries it (B3, Jaeger)."""
    sampled: bool | None
    """The caller's sampling decision; ``None`` when deferred or not carried."""
    format: str
    """One of :data:`FORMATS`: the format that produced the ids."""
    tracestate: str = ""
    """W3C ``tracestate`` (all fields joined), or ``""`` when absent or invalid."""
    flags: int = 0
    """W3C trace-flags byte (see the module docstring for other formats)."""
    request_id: str = ""
    """The ``x-request-id`` value whenever a valid one is present, whoever wins."""
    debug: bool = False
    """B3 debug (``X-B3-Flags: 1`` or sampling state ``d``) or Jaeger flag 0x02."""
    all_formats: tuple[str, ...] = ()
    """Every format that parsed validly in the message, in precedence order."""


_OWS: Final = " \t"
_ZERO16: Final = "0" * 16
_ZERO32: Final = "0" * 32
_BYTES_TYPES: Final = (bytes, bytearray, memoryview)

_HEX16: Final = re.compile(r"[0-9a-f]{16}")
_B3_TRACE: Final = re.compile(r"[0-9a-f]{32}|[0-9a-f]{16}")
_DECIMAL_U64: Final = re.compile(r"[0-9]{1,20}")
_SIGNED_INT: Final = re.compile(r"-?[0-9]{1,10}")
_U64_LIMIT: Final = 1 << 64


def _text(value: object) -> str | None:
    """A header value as ``str`` without surrounding OWS; ``None`` for unsupported types."""
    if isinstance(value, str):
        return value.strip(_OWS)
    if isinstance(value, _BYTES_TYPES):
        return bytes(value).decode("latin-1").strip(_OWS)
    return None


def _span16(text: str) -> str | None:
    """Exactly 16 lowercase hex, not all zeros."""
    if _HEX16.fullmatch(text) is None or text == _ZERO16:
        return None
    return text


def _sampled_flags(sampled: bool | None) -> int:
    return 1 if sampled else 0


# --- W3C Trace Context (traceparent, tracestate) -------------------------------------------

# version "-" trace-id "-" parent-id "-" trace-flags, HEXDIGLC only: uppercase is invalid.
_TRACEPARENT: Final = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_TRACEPARENT_LEN: Final = 55
# Level 2 key grammar (a superset of level 1's simple-key and tenant@system keys).
_TS_KEY: Final = re.compile(r"[a-z0-9][a-z0-9_\-*/@]{0,255}")
# value = 0*255(chr) nblk-chr; chr = %x20 / nblk-chr; nblk-chr excludes "," and "=".
_TS_VALUE: Final = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
_TS_MAX_CHARS: Final = 512
_TS_MAX_MEMBERS: Final = 32


def parse_tracestate(value: HeaderValue) -> str | None:
    """Validate a W3C ``tracestate`` value; return it (trimmed) or ``None`` if invalid.

    Valid: at most 512 characters (the spec's propagation floor, which we use as our
    bound), at most 32 list members, each ``key=value`` per the level 2 ABNF, no key twice.
    Empty and whitespace-only members are allowed, and so is an empty value (-> ``""``).
    """
    text = _text(value)
    if text is None or len(text) > _TS_MAX_CHARS:
        return None
    seen: set[str] = set()
    for raw_member in text.split(","):
        member = raw_member.strip(_OWS)
        if not member:
            continue
        key, eq, val = member.partition("=")
        if not eq or _TS_KEY.fullmatch(key) is None or _TS_VALUE.fullmatch(val) is None:
            return None
        if key in seen:
            return None
        seen.add(key)
        if len(seen) > _TS_MAX_MEMBERS:
            return None
    return text


def parse_traceparent(
    value: HeaderValue, tracestate: HeaderValue | None = None
) -> TraceContext | None:
    """Parse a W3C ``traceparent`` value, with its ``tracestate`` if given.

    Version ``ff`` is invalid. Version ``00`` must be exactly 55 characters. A higher version
    is parsed for forward compatibility: its first 55 characters are read as version 00, and
    anything longer must continue with ``-`` at the 56th character. Trace and parent ids must
    not be all zeros. An invalid ``tracestate`` is dropped (``""``), never fatal.
    """
    text = _text(value)
    if text is None or len(text) < _TRACEPARENT_LEN:
        return None
    match = _TRACEPARENT.match(text)
    if match is None:
        return None
    version, trace_id, span_id, flags_hex = match.groups()
    if version == "ff":
        return None
    if version == "00":
        if len(text) != _TRACEPARENT_LEN:
            return None
    elif len(text) > _TRACEPARENT_LEN and text[_TRACEPARENT_LEN] != "-":
        return None
    if trace_id == _ZERO32 or span_id == _ZERO16:
        return None
    flags = int(flags_hex, 16)
    state = parse_tracestate(tracestate) if tracestate is not None else None
    return TraceContext(
        trace_id=trace_id,
        span_id=span_id,
        sampled=bool(flags & 0x01),
        format="w3c",
        tracestate=state or "",
        flags=flags,
        all_formats=("w3c",),
    )


# --- grpc-trace-bin (OpenCensus binary format) ---------------------------------------------

_B64_BODY: Final = re.compile(r"[A-Za-z0-9+/_-]*")
_URLSAFE_TO_STD: Final = str.maketrans("-_", "+/")
# field id -> value length, trace context version 0: trace id, span id, trace options.
_OC_FIELD_LEN: Final = {0: 16, 1: 8, 2: 1}


def _b64decode_lenient(text: str) -> bytes | None:
    """Standard or URL-safe base64, padding optional. ``None`` if not base64."""
    body = text.rstrip("=")
    if _B64_BODY.fullmatch(body) is None or len(body) % 4 == 1:
        return None
    padded = body.translate(_URLSAFE_TO_STD) + "=" * (-len(body) % 4)
    try:
        return base64.b64decode(padded, validate=True)
    except ValueError:  # binascii.Error is a ValueError
        return None


def parse_grpc_trace_bin(value: HeaderValue) -> TraceContext | None:
    """Parse ``grpc-trace-bin``: base64 text, or the raw binary form as ``bytes``.

    ``bytes`` starting with the version byte 0x00 are taken as the decoded binary form (base64
    text never starts with a NUL); other ``bytes`` and ``str`` are base64 (standard or URL-safe,
    padding optional). Binary format version 0: fields ``<id><value>``, id 0 = trace id (16
    bytes), 1 = span id (8 bytes), 2 = trace options (1 byte, bit 0 sampled). Parsing stops at
    the first unknown field id (the spec's forward-compatibility rule); a truncated known field
    is invalid. Trace id and span id are required and must not be all zeros. Without a trace
    options field the decision is deferred (``sampled`` is ``None``).
    """
    data: bytes | None
    if isinstance(value, _BYTES_TYPES):
        raw = bytes(value)
        data = raw if raw[:1] == b"\x00" else _b64decode_lenient(raw.decode("latin-1").strip(_OWS))
    elif isinstance(value, str):
        data = _b64decode_lenient(value.strip(_OWS))
    else:
        return None
    if not data or data[0] != 0:
        return None
    fields: dict[int, bytes] = {}
    pos, size = 1, len(data)
    while pos < size:
        field_id = data[pos]
        length = _OC_FIELD_LEN.get(field_id)
        if length is None:
            break
        end = pos + 1 + length
        if end > size:
            return None
        # Version-0 fields may come in any order; a repeated field: the last one counts.
        fields[field_id] = data[pos + 1 : end]
        pos = end
    trace = fields.get(0)
    span = fields.get(1)
    if trace is None or span is None or not any(trace) or not any(span):
        return None
    options = fields.get(2)
    flags = options[0] if options is not None else 0
    return TraceContext(
        trace_id=trace.hex(),
        span_id=span.hex(),
        sampled=bool(flags & 0x01) if options is not None else None,
        format="grpc-trace-bin",
        flags=flags,
        all_formats=("grpc-trace-bin",),
    )


# --- B3 (openzipkin/b3-propagation) --------------------------------------------------------

# X-B3-Sampled is "1"/"0"; older clients sent "true"/"false" and the spec asks to accept them.
_B3_MULTI_SAMPLED: Final = {"1": True, "0": False, "true": True, "false": False}


def _b3_trace_id(text: str) -> str | None:
    """16 or 32 lowercase hex, padded to 32, not all zeros."""
    if _B3_TRACE.fullmatch(text) is None:
        return None
    trace_id = text.rjust(32, "0")
    return None if trace_id == _ZERO32 else trace_id


def _b3_parent(text: str) -> str | None:
    """Optional parent: ``""`` when empty or all zeros (a root span), else 16 lowercase hex."""
    if not text or text == _ZERO16:
        return ""
    return _span16(text)


def parse_b3(headers: Mapping[str, HeaderValue]) -> TraceContext | None:
    """Parse B3 multi-headers from a mapping of *lowercased* header name -> value.

    ``x-b3-traceid`` (16 or 32 lowercase hex) and ``x-b3-spanid`` (16) are required;
    ``x-b3-parentspanid`` is optional; ``x-b3-sampled`` is ``1``/``0`` (or ``true``/``false``,
    any case), absent = deferred, anything else invalidates the context (as Brave does);
    ``x-b3-flags: 1`` is debug, which implies sampled; other flag values are ignored.
    """
    if not isinstance(headers, Mapping):
        return None
    trace_text = _text(headers.get("x-b3-traceid"))
    span_text = _text(headers.get("x-b3-spanid"))
    if trace_text is None or span_text is None:
        return None
    trace_id = _b3_trace_id(trace_text)
    span_id = _span16(span_text)
    if trace_id is None or span_id is None:
        return None
    parent_text = _text(headers.get("x-b3-parentspanid"))
    parent = "" if parent_text is None else _b3_parent(parent_text)
    if parent is None:
        return None
    sampled_text = _text(headers.get("x-b3-sampled"))
    sampled: bool | None = None
    if sampled_text is not None:
        sampled = _B3_MULTI_SAMPLED.get(sampled_text.lower())
        if sampled is None:
            return None
    debug = _text(headers.get("x-b3-flags")) == "1"
    if debug:
        sampled = True
    return TraceContext(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent,
        sampled=sampled,
        format="b3",
        flags=_sampled_flags(sampled),
        debug=debug,
        all_formats=("b3",),
    )


def parse_b3_single(value: HeaderValue) -> TraceContext | None:
    """Parse the ``b3`` single header: ``{trace}-{span}[-{sampling}[-{parent}]]``.

    Sampling state is ``1``, ``0`` or ``d`` (debug, implies sampled); ``true``/``false`` are not
    allowed here. The sampling-only forms (``b3: 0``, ``1``, ``d``) carry no trace id and give
    ``None``: a context without ids is of no use for correlation.
    """
    text = _text(value)
    if text is None:
        return None
    parts = text.split("-")
    if not 2 <= len(parts) <= 4:
        return None
    trace_id = _b3_trace_id(parts[0])
    span_id = _span16(parts[1])
    if trace_id is None or span_id is None:
        return None
    sampled: bool | None = None
    debug = False
    if len(parts) >= 3:
        state = parts[2]
        if state == "1":
            sampled = True
        elif state == "0":
            sampled = False
        elif state == "d":
            sampled = debug = True
        else:
            return None
    parent = ""
    if len(parts) == 4:
        # Present means required: an empty parent field is malformed, all zeros means root.
        parent_or_none = _b3_parent(parts[3]) if parts[3] else None
        if parent_or_none is None:
            return None
        parent = parent_or_none
    return TraceContext(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent,
        sampled=sampled,
        format="b3-single",
        flags=_sampled_flags(sampled),
        debug=debug,
        all_formats=("b3-single",),
    )


# --- Jaeger (uber-trace-id) ----------------------------------------------------------------

# {trace-id}:{span-id}:{parent-span-id}:{flags}; ids may omit leading zeros; parent may be 0.
_JAEGER: Final = re.compile(
    r"([0-9a-fA-F]{1,32}):([0-9a-fA-F]{1,16}):([0-9a-fA-F]{1,16}):([0-9a-fA-F]{1,2})"
)


def parse_jaeger(value: HeaderValue) -> TraceContext | None:
    """Parse Jaeger ``uber-trace-id``: ``{trace}:{span}:{parent}:{flags}``.

    Hex ids up to 32/16 digits, leading zeros optional (padded here), either case (lowercased);
    ``:`` may be URL-encoded as ``%3A``. Parent ``0`` means none. Flags are one byte in hex:
    0x01 sampled, 0x02 debug.
    """
    text = _text(value)
    if text is None:
        return None
    if "%" in text:
        text = text.replace("%3A", ":").replace("%3a", ":")
    match = _JAEGER.fullmatch(text)
    if match is None:
        return None
    trace_id = match[1].lower().rjust(32, "0")
    span_id = match[2].lower().rjust(16, "0")
    parent = match[3].lower().rjust(16, "0")
    if trace_id == _ZERO32 or span_id == _ZERO16:
        return None
    flags = int(match[4], 16)
    sampled = bool(flags & 0x01)
    return TraceContext(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id="" if parent == _ZERO16 else parent,
        sampled=sampled,
        format="jaeger",
        flags=_sampled_flags(sampled),
        debug=bool(flags & 0x02),
        all_formats=("jaeger",),
    )


# --- SkyWalking sw8 (cross-process propagation headers protocol v3) -------------------------

_SW8_SPAN: Final = re.compile(r"[0-9]{1,10}")


def _b64_utf8(text: str) -> bytes | None:
    """Strict standard base64 (padded) of a non-empty UTF-8 string; the decoded bytes."""
    try:
        raw = base64.b64decode(text, validate=True)
        raw.decode("utf-8")
    except ValueError:  # binascii.Error, UnicodeDecodeError, non-ASCII str: all ValueError
        return None
    return raw or None


def parse_sw8(value: HeaderValue) -> TraceContext | None:
    """Parse SkyWalking ``sw8``: eight ``-``-separated fields.

    ``{sample}-{trace id}-{parent segment id}-{parent span id}-{parent service}-
    {parent instance}-{parent endpoint}-{target address}``: sample is ``0``/``1``, the span
    id a non-negative integer, every other field non-empty standard base64 of a UTF-8 string.
    Ids are derived as the module docstring says (SHA-256, deterministic).
    """
    text = _text(value)
    if text is None:
        return None
    parts = text.split("-")
    if len(parts) != 8:
        return None
    sample, trace_b64, segment_b64, span_text = parts[0], parts[1], parts[2], parts[3]
    if sample not in ("0", "1") or _SW8_SPAN.fullmatch(span_text) is None:
        return None
    trace_raw = _b64_utf8(trace_b64)
    segment_raw = _b64_utf8(segment_b64)
    if trace_raw is None or segment_raw is None:
        return None
    if any(_b64_utf8(part) is None for part in parts[4:]):
        return None
    trace_id = hashlib.sha256(trace_raw).digest()[:16].hex()
    span_key = segment_raw + b"#" + str(int(span_text)).encode("ascii")
    span_id = hashlib.sha256(span_key).digest()[:8].hex()
    sampled = sample == "1"
    return TraceContext(
        trace_id=trace_id,
        span_id=span_id,
        sampled=sampled,
        format="sw8",
        flags=_sampled_flags(sampled),
        all_formats=("sw8",),
    )


# --- Datadog -------------------------------------------------------------------------------


def _decimal_u64(text: str) -> int | None:
    if _DECIMAL_U64.fullmatch(text) is None:
        return None
    number = int(text)
    return number if number < _U64_LIMIT else None


def _dd_high_bits(tags: str) -> str:
    """The ``_dd.p.tid`` tag (16 lowercase hex, upper 64 bits of the trace id), or zeros."""
    for item in tags.split(","):
        key, eq, val = item.partition("=")
        if eq and key.strip(_OWS) == "_dd.p.tid":
            val = val.strip(_OWS)
            # An invalid tid is dropped, as the tracers do; the lower 64 bits still stand.
            return val if _HEX16.fullmatch(val) else _ZERO16
    return _ZERO16


def parse_datadog(headers: Mapping[str, HeaderValue]) -> TraceContext | None:
    """Parse Datadog headers from a mapping of *lowercased* header name -> value.

    ``x-datadog-trace-id``: decimal uint64, not 0 (required; the lower 64 bits);
    ``x-datadog-tags`` ``_dd.p.tid=<16 hex>``: the upper 64 bits of a 128-bit id;
    ``x-datadog-parent-id``: decimal uint64 (absent or 0 -> ``span_id`` ``""``, as synthetic
    and RUM-started traces send); ``x-datadog-sampling-priority``: integer, > 0 sampled.
    A malformed parent id or priority invalidates the context.
    """
    if not isinstance(headers, Mapping):
        return None
    trace_text = _text(headers.get("x-datadog-trace-id"))
    if trace_text is None:
        return None
    low = _decimal_u64(trace_text)
    if not low:  # None or 0
        return None
    tags = _text(headers.get("x-datadog-tags"))
    high = _dd_high_bits(tags) if tags else _ZERO16
    span_id = ""
    parent_text = _text(headers.get("x-datadog-parent-id"))
    if parent_text is not None:
        parent = _decimal_u64(parent_text)
        if parent is None:
            return None
        span_id = f"{parent:016x}" if parent else ""
    sampled: bool | None = None
    priority_text = _text(headers.get("x-datadog-sampling-priority"))
    if priority_text is not None:
        if _SIGNED_INT.fullmatch(priority_text) is None:
            return None
        sampled = int(priority_text) > 0
    return TraceContext(
        trace_id=f"{high}{low:016x}",
        span_id=span_id,
        sampled=sampled,
        format="datadog",
        flags=_sampled_flags(sampled),
        all_formats=("datadog",),
    )


# --- AWS X-Ray (X-Amzn-Trace-Id) -----------------------------------------------------------

_XRAY_ROOT: Final = re.compile(r"1-([0-9a-fA-F]{8})-([0-9a-fA-F]{24})")
_XRAY_PARENT: Final = re.compile(r"[0-9a-fA-F]{16}")
_XRAY_SAMPLED: Final = {"1": True, "0": False, "?": None}


def parse_xray(value: HeaderValue) -> TraceContext | None:
    """Parse AWS X-Ray ``X-Amzn-Trace-Id``: ``Root=1-{8 hex}-{24 hex};Parent=..;Sampled=..``.

    Fields are ``;``-separated, in any order; ``Root`` is required (version 1, epoch seconds,
    96-bit id -> ``trace_id`` is the 8 + 24 hex digits); ``Parent`` (16 hex) and ``Sampled``
    (``1``, ``0``, ``?`` = undecided) are optional; ``Self``, ``Lineage`` and unknown fields
    are ignored. Hex of either case is accepted and lowercased. A repeated field: first wins.
    """
    text = _text(value)
    if text is None:
        return None
    trace_id: str | None = None
    span_id: str | None = None
    sampled: bool | None = None
    sampled_seen = False
    for field in text.split(";"):
        key, eq, val = field.strip(_OWS).partition("=")
        if not eq:
            continue
        val = val.strip(_OWS)
        if key == "Root" and trace_id is None:
            root = _XRAY_ROOT.fullmatch(val)
            if root is None:
                return None
            trace_id = (root[1] + root[2]).lower()
        elif key == "Parent" and span_id is None:
            if _XRAY_PARENT.fullmatch(val) is None:
                return None
            span_id = val.lower()
        elif key == "Sampled" and not sampled_seen:
            if val not in _XRAY_SAMPLED:
                return None
            sampled, sampled_seen = _XRAY_SAMPLED[val], True
    if trace_id is None or trace_id == _ZERO32 or span_id == _ZERO16:
        return None
    return TraceContext(
        trace_id=trace_id,
        span_id=span_id or "",
        sampled=sampled,
        format="xray",
        flags=_sampled_flags(sampled),
        all_formats=("xray",),
    )


# --- x-request-id --------------------------------------------------------------------------

_REQUEST_ID: Final = re.compile(r"[\x20-\x7e]{1,200}")
_UUID: Final = re.compile(
    r"([0-9a-fA-F]{8})-([0-9a-fA-F]{4})-([0-9a-fA-F]{4})-([0-9a-fA-F]{4})-([0-9a-fA-F]{12})"
)
_HEX32_ANY_CASE: Final = re.compile(r"[0-9a-fA-F]{32}")


def parse_request_id(value: HeaderValue) -> TraceContext | None:
    """Parse ``x-request-id``: 1 to 200 printable ASCII characters (after trimming OWS).

    ``trace_id`` is derived as the module docstring says; ``span_id`` is ``""``, ``sampled``
    ``None``, ``request_id`` the value itself.
    """
    text = _text(value)
    if text is None or _REQUEST_ID.fullmatch(text) is None:
        return None
    uuid = _UUID.fullmatch(text)
    if uuid is not None:
        trace_id = "".join(uuid.groups()).lower()
    elif _HEX32_ANY_CASE.fullmatch(text) is not None:
        trace_id = text.lower()
    else:
        trace_id = _ZERO32
    if trace_id == _ZERO32:
        trace_id = hashlib.sha256(text.encode("ascii")).digest()[:16].hex()
    return TraceContext(
        trace_id=trace_id,
        span_id="",
        sampled=None,
        format="request-id",
        request_id=text,
        all_formats=("request-id",),
    )


# --- extract: one message's headers -> the winning context ---------------------------------


_TRACE_HEADER_NAMES_BYTES: Final[dict[bytes, str]] = {
    name.encode("ascii"): name for name in TRACE_HEADER_NAMES
}


def extract(headers: HeaderPairs) -> TraceContext | None:
    """The trace context of one HTTP message, or ``None`` if it carries no valid one.

    ``headers`` is an iterable of ``(name, value)`` pairs (``str`` or ``bytes``; names in any
    case) or a mapping. Precedence, first-occurrence rule, ``request_id`` and ``all_formats``:
    see the module docstring. One pass over the headers keeps only the names in
    :data:`TRACE_HEADER_NAMES`, so a message without trace headers costs one set lookup per
    header.
    """
    try:
        return _extract(headers)
    except Exception:  # noqa: BLE001 - stage boundary: untrusted input must never raise
        return None


# Memos of _extract (bounded: cleared when full). Names: an exact ``str`` header name -> its
# lowercased form if that is a trace header name, else None. Results: the trace headers found
# in a message, when all their values are exact ``str`` -> the context they give (a pure
# function of them; contexts are immutable, so one can serve every message that carries the
# same headers, as the legs of one request through proxies do).
_NAME_MEMO: dict[str, str | None] = {}
_RESULT_MEMO: dict[tuple, TraceContext | None] = {}
_MEMO_MAX = 4096
_MISSING: Final = object()


def _name_key(name: str) -> str | None:
    """An exact ``str`` header name -> its lowercased form if that is a trace header name,
    else None (memoised in ``_NAME_MEMO``)."""
    key: str | None = name.lower()
    if key not in TRACE_HEADER_NAMES:
        key = None
    if len(_NAME_MEMO) >= _MEMO_MAX:
        _NAME_MEMO.clear()
    _NAME_MEMO[name] = key
    return key


class _NotPlain(Exception):
    """A header list that ``_extract_plain`` leaves to the general loop."""


def _extract_plain(headers: list) -> TraceContext | None:
    """``_extract`` of a list of ``(str, str)`` pairs, the parsers' header lists: the same
    rules, in a loop that keeps the first trace header in two locals (most messages carry
    one, and no ``tracestate``: those are memoised on that one ``(name, value)`` pair).
    Raises ``_NotPlain`` for anything else (an item that is not a pair, a name or value that
    is not an exact ``str``), which the general loop then reads from the start."""
    name_get = _NAME_MEMO.get
    key0 = value0 = None  # the first trace header other than tracestate
    found: dict[str, Any] | None = None  # all of them, from the second one on
    states: list[str] | None = None
    try:
        for name, value in headers:
            if type(name) is not str:
                raise _NotPlain
            key = name_get(name, _MISSING)
            if key is None:
                continue
            if key is _MISSING:
                key = _name_key(name)
                if key is None:
                    continue
            if type(value) is not str:
                raise _NotPlain
            if key == "tracestate":
                state = value.strip(_OWS)  # (_text() of a str)
                if states is None:
                    states = [state]
                else:
                    states.append(state)
            elif key0 is None:
                key0, value0 = key, value
            elif found is None:
                if key != key0:
                    found = {key0: value0, key: value}
            elif key not in found:
                found[key] = value
    except (TypeError, ValueError):  # an item that does not unpack to two
        raise _NotPlain from None
    if key0 is None:
        return None
    memo_key: tuple
    if found is None and states is None:
        memo_key = (key0, value0)  # (never equal to a key of (name, value) pairs below)
    else:
        if found is None:
            found = {key0: value0}
        memo_key = (*found.items(), *(states or ()))
    hit = _RESULT_MEMO.get(memo_key, _MISSING)
    if hit is not _MISSING:
        return hit  # type: ignore[return-value]
    ctx = _parse_found(found if found is not None else {key0: value0}, states or [])
    if len(_RESULT_MEMO) >= _MEMO_MAX:
        _RESULT_MEMO.clear()
    _RESULT_MEMO[memo_key] = ctx
    return ctx


def _extract(headers: HeaderPairs) -> TraceContext | None:
    if type(headers) is list:  # (the parsers' header lists: never a Mapping)
        try:
            return _extract_plain(headers)
        except _NotPlain:
            pass
        pairs: Iterable[Any] = headers
    else:
        pairs = headers.items() if isinstance(headers, Mapping) else headers
    found: dict[str, Any] = {}
    states: list[str] = []
    names = TRACE_HEADER_NAMES
    byte_names = _TRACE_HEADER_NAMES_BYTES
    name_memo = _NAME_MEMO
    for item in pairs:
        try:
            name, value = item
        except (TypeError, ValueError):
            continue
        if type(name) is str:
            key = name_memo.get(name, _MISSING)
            if key is _MISSING:
                key = _name_key(name)
            if key is None:
                continue
        elif isinstance(name, str):
            key = name.lower()
            if key not in names:
                continue
        elif isinstance(name, _BYTES_TYPES):
            # bytes.lower() folds ASCII only, which is all header names need.
            key_or_none = byte_names.get(bytes(name).lower())
            if key_or_none is None:
                continue
            key = key_or_none
        else:
            continue
        if key == "tracestate":
            state = _text(value)
            if state is not None:
                states.append(state)
        elif key not in found:
            found[key] = value
    if not found:
        return None
    memo_key: tuple | None = None
    for v in found.values():
        if type(v) is not str:
            break
    else:
        memo_key = (*found.items(), *states)
        hit = _RESULT_MEMO.get(memo_key, _MISSING)
        if hit is not _MISSING:
            return hit  # type: ignore[return-value]
    ctx = _parse_found(found, states)
    if memo_key is not None:
        if len(_RESULT_MEMO) >= _MEMO_MAX:
            _RESULT_MEMO.clear()
        _RESULT_MEMO[memo_key] = ctx
    return ctx


def _parse_found(found: dict[str, Any], states: list[str]) -> TraceContext | None:
    """The winning context of the trace headers one message carries (``found``: the first
    value of each, by lowercased name; ``states``: every ``tracestate``, trimmed)."""
    candidates: list[TraceContext | None] = []
    if "traceparent" in found:
        state_value = ",".join(states) if states else None
        candidates.append(parse_traceparent(found["traceparent"], state_value))
    if "grpc-trace-bin" in found:
        candidates.append(parse_grpc_trace_bin(found["grpc-trace-bin"]))
    if "x-b3-traceid" in found:
        candidates.append(parse_b3(found))
    if "b3" in found:
        candidates.append(parse_b3_single(found["b3"]))
    if "uber-trace-id" in found:
        candidates.append(parse_jaeger(found["uber-trace-id"]))
    if "sw8" in found:
        candidates.append(parse_sw8(found["sw8"]))
    if "x-datadog-trace-id" in found:
        candidates.append(parse_datadog(found))
    if "x-amzn-trace-id" in found:
        candidates.append(parse_xray(found["x-amzn-trace-id"]))
    request = parse_request_id(found["x-request-id"]) if "x-request-id" in found else None
    candidates.append(request)

    valid = [ctx for ctx in candidates if ctx is not None]
    if not valid:
        return None
    winner = valid[0]
    if len(valid) == 1:
        return winner  # (each parser already fills request_id and all_formats for itself)
    return replace(
        winner,
        request_id=request.request_id if request is not None else "",
        all_formats=tuple(ctx.format for ctx in valid),
    )
