"""sniffer.tracecontext: table tests per format (spec examples first), precedence in extract,
and hypothesis properties: every format round-trips, garbage never raises."""

from __future__ import annotations

import base64
import hashlib
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sniffer.tracecontext import (
    FORMATS,
    TRACE_HEADER_NAMES,
    TraceContext,
    extract,
    parse_b3,
    parse_b3_single,
    parse_datadog,
    parse_grpc_trace_bin,
    parse_jaeger,
    parse_request_id,
    parse_sw8,
    parse_traceparent,
    parse_tracestate,
    parse_xray,
)

# Examples from the specifications themselves.
W3C_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
W3C_PARENT = "00f067aa0ba902b7"
W3C_VALUE = f"00-{W3C_TRACE}-{W3C_PARENT}-01"
B3_TRACE = "80f198ee56343ba864fe8b2a57d3eff7"
B3_SPAN = "e457b5a2e4d86bd1"
B3_PARENT = "05e3ac9a4f6e3b90"
B3_SINGLE = f"{B3_TRACE}-{B3_SPAN}-1-{B3_PARENT}"
# From the B3 README's multi-header section.
B3M_TRACE = "463ac35c9f6413ad48485a3953bb6124"
B3M_TRACE64 = "48485a3953bb6124"
B3M_SPAN = "a2fb4a1d1a96d312"
XRAY_VALUE = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
# OpenCensus BinaryEncoding.md "Valid example".
OC_EXAMPLE = bytes(
    [0, 0, 75, 249, 47, 53, 119, 179, 77, 166, 163, 206, 146, 157, 0, 14, 71, 54]
    + [1, 52, 240, 103, 170, 11, 169, 2, 183]
    + [2, 1]
)
OC_TRACE = "4bf92f3577b34da6a3ce929d000e4736"
OC_SPAN = "34f067aa0ba902b7"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def sw8_value(
    trace: str = "a4ec6fc8ccab4bb4b682064698cc97e6.74.16218381104550009",
    segment: str = "a4ec6fc8ccab4bb4b682064698cc97e6.74.16218381104550008",
    span: str = "2",
    sample: str = "1",
    rest: tuple[str, ...] = ("checkout", "checkout-7d9f@10.0.0.7", "/api/cart", "cart:8080"),
) -> str:
    return "-".join([sample, b64(trace), b64(segment), span, *(b64(r) for r in rest)])


# --- W3C traceparent ------------------------------------------------------------------------


def test_traceparent_spec_example() -> None:
    ctx = parse_traceparent(W3C_VALUE)
    assert ctx == TraceContext(
        trace_id=W3C_TRACE,
        span_id=W3C_PARENT,
        sampled=True,
        format="w3c",
        flags=1,
        all_formats=("w3c",),
    )
    not_sampled = parse_traceparent(f"00-{W3C_TRACE}-{W3C_PARENT}-00")
    assert not_sampled is not None and not_sampled.sampled is False and not_sampled.flags == 0


@pytest.mark.parametrize(
    ("value", "flags", "sampled"),
    [
        (f"00-{W3C_TRACE}-{W3C_PARENT}-09", 0x09, True),  # mask the flags, don't compare them
        (f"00-{W3C_TRACE}-{W3C_PARENT}-02", 0x02, False),  # level 2 "random" bit alone
        (f" \t00-{W3C_TRACE}-{W3C_PARENT}-01 ", 0x01, True),  # OWS around the value
        (f"cc-{W3C_TRACE}-{W3C_PARENT}-01", 0x01, True),  # future version, exactly 55
        (f"cc-{W3C_TRACE}-{W3C_PARENT}-01-what-the-future-will-be-like", 0x01, True),
        (f"01-{W3C_TRACE}-{W3C_PARENT}-00-", 0x00, False),
        (f"fe-{W3C_TRACE}-{W3C_PARENT}-01-01", 0x01, True),
    ],
)
def test_traceparent_valid(value: str, flags: int, sampled: bool) -> None:
    ctx = parse_traceparent(value)
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id, ctx.flags, ctx.sampled) == (
        W3C_TRACE,
        W3C_PARENT,
        flags,
        sampled,
    )


@pytest.mark.parametrize(
    "value",
    [
        "",
        "00",
        f"ff-{W3C_TRACE}-{W3C_PARENT}-01",  # version ff is forbidden
        f"ff-{W3C_TRACE}-{W3C_PARENT}-01-extra",
        f"00-{'0' * 32}-{W3C_PARENT}-01",  # all-zero trace id
        f"00-{W3C_TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{W3C_TRACE.upper()}-{W3C_PARENT}-01",  # uppercase hex is invalid
        f"00-{W3C_TRACE}-{W3C_PARENT.upper()}-01",
        f"0A-{W3C_TRACE}-{W3C_PARENT}-01",
        f"00-{W3C_TRACE}-{W3C_PARENT}-0A",
        f"00-{W3C_TRACE}-{W3C_PARENT}-01-",  # version 00 allows no suffix
        f"00-{W3C_TRACE}-{W3C_PARENT}-01-extra",
        f"00-{W3C_TRACE}-{W3C_PARENT}-1",
        f"00-{W3C_TRACE[:-1]}-{W3C_PARENT}-01",
        f"00-{W3C_TRACE}-{W3C_PARENT}0-01",
        f"00_{W3C_TRACE}_{W3C_PARENT}_01",
        f"cc-{W3C_TRACE}-{W3C_PARENT}-01.extra",  # future version: 56th char must be "-"
        f"cc-{W3C_TRACE}-{W3C_PARENT}-0",
        f"0-{W3C_TRACE}-{W3C_PARENT}-01",
        f"000-{W3C_TRACE}-{W3C_PARENT}-01",
        f"00-{W3C_TRACE}-{W3C_PARENT}-0g",
        f"00-{W3C_TRACE}-{W3C_PARENT}-01\n",  # a newline is not OWS
    ],
)
def test_traceparent_invalid(value: str) -> None:
    assert parse_traceparent(value) is None


def test_traceparent_bytes_and_odd_types() -> None:
    ctx = parse_traceparent(W3C_VALUE.encode())
    assert ctx is not None and ctx.trace_id == W3C_TRACE
    assert parse_traceparent(bytearray(W3C_VALUE.encode())) == ctx
    for odd in (None, 42, 4.2, ["00"], {"a": 1}, object()):
        assert parse_traceparent(odd) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
        ("congo=ucfJifl5GOE,rojo=00f067aa0ba902b7", "congo=ucfJifl5GOE,rojo=00f067aa0ba902b7"),
        ("", ""),  # empty tracestate must be accepted
        (" , ,rojo=1 ,\t", ", ,rojo=1 ,"),  # empty members and OWS are allowed
        ("fw529a3039@dt=ZmFzZQ,tenant@vendor=1", "fw529a3039@dt=ZmFzZQ,tenant@vendor=1"),
        ("k= leading space kept", "k= leading space kept"),
        (",".join(f"k{i}=v" for i in range(32)), ",".join(f"k{i}=v" for i in range(32))),
    ],
)
def test_tracestate_valid(value: str, expected: str) -> None:
    assert parse_tracestate(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "Rojo=1",  # keys are lowercase
        "_rojo=1",  # first key char is a letter or digit
        "rojo",  # no "="
        "rojo=",  # empty value
        "rojo=a=b",
        "rojo=1,rojo=2",  # one entry per key
        "rojo=caf\u00e9",
        "rojo=a\tb",
        ",".join(f"k{i}=v" for i in range(33)),  # at most 32 members
        "k=" + "v" * 600,  # over our 512-character bound
        "k" * 257 + "=v",  # key up to 256 characters
        "k=" + "v" * 257,  # value up to 256 characters
    ],
)
def test_tracestate_invalid(value: str) -> None:
    assert parse_tracestate(value) is None


def test_invalid_tracestate_does_not_spoil_traceparent() -> None:
    ctx = parse_traceparent(W3C_VALUE, "Not Valid!")
    assert ctx is not None and ctx.trace_id == W3C_TRACE and ctx.tracestate == ""
    ctx = parse_traceparent(W3C_VALUE, b"rojo=00f067aa0ba902b7")
    assert ctx is not None and ctx.tracestate == "rojo=00f067aa0ba902b7"


# --- grpc-trace-bin --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        base64.b64encode(OC_EXAMPLE).decode(),
        base64.b64encode(OC_EXAMPLE),
        base64.urlsafe_b64encode(OC_EXAMPLE).decode(),
        base64.b64encode(OC_EXAMPLE).decode().rstrip("="),
        OC_EXAMPLE,  # raw bytes, as an HTTP/2 "-bin" header decoded upstream
        OC_EXAMPLE + bytes([3, 9, 9, 9]),  # unknown field id 3: parsing stops there
    ],
)
def test_grpc_trace_bin_spec_example(value: str | bytes) -> None:
    ctx = parse_grpc_trace_bin(value)
    assert ctx == TraceContext(
        trace_id=OC_TRACE,
        span_id=OC_SPAN,
        sampled=True,
        format="grpc-trace-bin",
        flags=1,
        all_formats=("grpc-trace-bin",),
    )


def test_grpc_trace_bin_options_and_order() -> None:
    trace, span = bytes.fromhex(OC_TRACE), bytes.fromhex(OC_SPAN)
    no_options = parse_grpc_trace_bin(b"\x00\x00" + trace + b"\x01" + span)
    assert no_options is not None and no_options.sampled is None and no_options.flags == 0
    not_sampled = parse_grpc_trace_bin(b"\x00\x00" + trace + b"\x01" + span + b"\x02\x00")
    assert not_sampled is not None and not_sampled.sampled is False
    # Version-0 fields may be serialized in any order within the version.
    reordered = parse_grpc_trace_bin(b"\x00\x02\x01\x01" + span + b"\x00" + trace)
    assert reordered is not None and (reordered.trace_id, reordered.span_id) == (OC_TRACE, OC_SPAN)


@pytest.mark.parametrize(
    "value",
    [
        b"",
        "",
        b"\x00",
        b"\x01" + OC_EXAMPLE[1:],  # only version 0 is defined
        base64.b64encode(b"\x01" + OC_EXAMPLE[1:]),
        OC_EXAMPLE[:-1],  # truncated trace options
        OC_EXAMPLE[:10],  # truncated trace id
        OC_EXAMPLE[:18],  # no span id
        b"\x00\x01" + bytes.fromhex(OC_SPAN),  # no trace id
        b"\x00\x00" + bytes(16) + b"\x01" + bytes.fromhex(OC_SPAN),  # zero trace id
        b"\x00\x00" + bytes.fromhex(OC_TRACE) + b"\x01" + bytes(8),  # zero span id
        b"\x00\x03\x00" + bytes.fromhex(OC_TRACE),  # unknown field first: nothing parsed
        "not base64!",
        "A",  # 1 char mod 4 cannot be base64
        "AAAA====",
        base64.b64encode(OC_EXAMPLE).decode() + "\u00e9",
    ],
)
def test_grpc_trace_bin_invalid(value: str | bytes) -> None:
    assert parse_grpc_trace_bin(value) is None


# --- B3 --------------------------------------------------------------------------------------


def test_b3_multi_spec_example() -> None:
    ctx = parse_b3(
        {
            "x-b3-traceid": B3_TRACE,
            "x-b3-spanid": B3_SPAN,
            "x-b3-parentspanid": B3_PARENT,
            "x-b3-sampled": "1",
        }
    )
    assert ctx == TraceContext(
        trace_id=B3_TRACE,
        span_id=B3_SPAN,
        parent_span_id=B3_PARENT,
        sampled=True,
        format="b3",
        flags=1,
        all_formats=("b3",),
    )


@pytest.mark.parametrize(
    ("extra", "trace", "sampled", "debug", "parent"),
    [
        ({}, B3M_TRACE, None, False, ""),
        ({"x-b3-sampled": "0"}, B3M_TRACE, False, False, ""),
        ({"x-b3-sampled": "true"}, B3M_TRACE, True, False, ""),
        ({"x-b3-sampled": "False"}, B3M_TRACE, False, False, ""),
        ({"x-b3-flags": "1"}, B3M_TRACE, True, True, ""),
        ({"x-b3-flags": "1", "x-b3-sampled": "0"}, B3M_TRACE, True, True, ""),
        ({"x-b3-flags": "0"}, B3M_TRACE, None, False, ""),
        ({"x-b3-parentspanid": "0020000000000001"}, B3M_TRACE, None, False, "0020000000000001"),
        ({"x-b3-parentspanid": "0" * 16}, B3M_TRACE, None, False, ""),
        ({"x-b3-traceid": B3M_TRACE64}, "0" * 16 + B3M_TRACE64, None, False, ""),
        ({"x-b3-traceid": B3M_TRACE64.encode()}, "0" * 16 + B3M_TRACE64, None, False, ""),
    ],
)
def test_b3_multi_valid(
    extra: dict[str, str | bytes], trace: str, sampled: bool | None, debug: bool, parent: str
) -> None:
    headers: dict[str, str | bytes] = {
        "x-b3-traceid": B3M_TRACE,
        "x-b3-spanid": B3M_SPAN,
    }
    headers.update(extra)
    ctx = parse_b3(headers)
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id, ctx.sampled, ctx.debug, ctx.parent_span_id) == (
        trace,
        B3M_SPAN,
        sampled,
        debug,
        parent,
    )


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-b3-traceid": B3M_TRACE},  # span id is required
        {"x-b3-spanid": B3M_SPAN},
        {"x-b3-traceid": "463AC35C9F6413AD48485A3953BB6124", "x-b3-spanid": B3M_SPAN},
        {"x-b3-traceid": "463ac35c9f6413ad4", "x-b3-spanid": B3M_SPAN},  # 17 chars
        {"x-b3-traceid": "0" * 32, "x-b3-spanid": B3M_SPAN},
        {"x-b3-traceid": "0" * 16, "x-b3-spanid": B3M_SPAN},
        {"x-b3-traceid": B3M_TRACE64, "x-b3-spanid": "0" * 16},
        {"x-b3-traceid": B3M_TRACE64, "x-b3-spanid": "a2fb4a1d1a96d31"},
        {"x-b3-traceid": B3M_TRACE64, "x-b3-spanid": B3M_SPAN, "x-b3-sampled": "yes"},
        {"x-b3-traceid": B3M_TRACE64, "x-b3-spanid": B3M_SPAN, "x-b3-sampled": "d"},
        {"x-b3-traceid": B3M_TRACE64, "x-b3-spanid": B3M_SPAN, "x-b3-parentspanid": "xyz"},
    ],
)
def test_b3_multi_invalid(headers: dict[str, str]) -> None:
    assert parse_b3(headers) is None


def test_b3_multi_not_a_mapping() -> None:
    assert parse_b3([("x-b3-traceid", B3_TRACE)]) is None  # type: ignore[arg-type]
    assert parse_b3("x-b3-traceid") is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "trace", "sampled", "debug", "parent"),
    [
        (B3_SINGLE, B3_TRACE, True, False, B3_PARENT),
        (f"{B3_TRACE}-{B3_SPAN}", B3_TRACE, None, False, ""),
        (f"{B3_TRACE}-{B3_SPAN}-1", B3_TRACE, True, False, ""),
        (f"{B3_TRACE}-{B3_SPAN}-0", B3_TRACE, False, False, ""),
        (f"{B3_TRACE}-{B3_SPAN}-d", B3_TRACE, True, True, ""),
        (f"{B3_TRACE}-{B3_SPAN}-d-{B3_PARENT}", B3_TRACE, True, True, B3_PARENT),
        (f"a3ce929d0e0e4736-{B3_SPAN}-1", "0000000000000000a3ce929d0e0e4736", True, False, ""),
    ],
)
def test_b3_single_valid(
    value: str, trace: str, sampled: bool | None, debug: bool, parent: str
) -> None:
    ctx = parse_b3_single(value)
    assert ctx is not None and ctx.format == "b3-single"
    assert (ctx.trace_id, ctx.span_id, ctx.sampled, ctx.debug, ctx.parent_span_id) == (
        trace,
        B3_SPAN,
        sampled,
        debug,
        parent,
    )


@pytest.mark.parametrize(
    "value",
    [
        "0",  # sampling-only forms carry no ids
        "1",
        "d",
        "",
        B3_TRACE,
        f"{B3_TRACE}-{B3_SPAN}-true",  # only 1, 0, d in the single header
        f"{B3_TRACE}-{B3_SPAN}-2",
        f"{B3_TRACE}-{B3_SPAN}-1-",
        f"{B3_TRACE}-{B3_SPAN}-{B3_PARENT}",  # a parent needs the sampling state first
        f"{B3_TRACE}-{B3_SPAN}-1-{B3_PARENT}-1",
        f"{B3_TRACE.upper()}-{B3_SPAN}-1",
        f"{'0' * 32}-{B3_SPAN}-1",
        f"{B3_TRACE}-{'0' * 16}-1",
        f"{B3_TRACE}-{B3_SPAN}-1-05e3ac9a4f6e3b9",
    ],
)
def test_b3_single_invalid(value: str) -> None:
    assert parse_b3_single(value) is None


# --- Jaeger ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "trace", "span", "parent", "sampled", "debug"),
    [
        (f"{W3C_TRACE}:{W3C_PARENT}:0:1", W3C_TRACE, W3C_PARENT, "", True, False),
        (f"{W3C_TRACE}%3A{W3C_PARENT}%3A0%3A1", W3C_TRACE, W3C_PARENT, "", True, False),
        (f"{W3C_TRACE}%3a{W3C_PARENT}%3a0%3a0", W3C_TRACE, W3C_PARENT, "", False, False),
        ("abc:def:0:3", "0" * 29 + "abc", "0" * 13 + "def", "", True, True),
        ("ABC:DEF:1:1", "0" * 29 + "abc", "0" * 13 + "def", "0" * 15 + "1", True, False),
        ("a3ce929d0e0e4736:b7ad6b7169203331:b7ad6b7169203330:01", "0" * 16 + "a3ce929d0e0e4736",
         "b7ad6b7169203331", "b7ad6b7169203330", True, False),
        ("1:1:0:2", "0" * 31 + "1", "0" * 15 + "1", "", False, True),
    ],
)
def test_jaeger_valid(
    value: str, trace: str, span: str, parent: str, sampled: bool, debug: bool
) -> None:
    ctx = parse_jaeger(value)
    assert ctx is not None and ctx.format == "jaeger"
    assert (ctx.trace_id, ctx.span_id, ctx.parent_span_id, ctx.sampled, ctx.debug) == (
        trace,
        span,
        parent,
        sampled,
        debug,
    )


@pytest.mark.parametrize(
    "value",
    [
        "",
        f"{W3C_TRACE}:{W3C_PARENT}:0",
        f"{W3C_TRACE}:{W3C_PARENT}:0:1:1",
        f"0:{W3C_PARENT}:0:1",  # zero trace id
        f"{W3C_TRACE}:0:0:1",  # zero span id
        f"{W3C_TRACE}0:{W3C_PARENT}:0:1",  # 33 digits
        f"{W3C_TRACE}:{W3C_PARENT}0:0:1",  # 17 digits
        f"{W3C_TRACE}:{W3C_PARENT}:0:100",  # flags are one byte
        f"{W3C_TRACE}:{W3C_PARENT}::1",
        f"{W3C_TRACE}%3B{W3C_PARENT}%3B0%3B1",
        f"{W3C_TRACE}:{W3C_PARENT}:0:g",
        f"-{W3C_TRACE}:{W3C_PARENT}:0:1",
    ],
)
def test_jaeger_invalid(value: str) -> None:
    assert parse_jaeger(value) is None


# --- SkyWalking sw8 --------------------------------------------------------------------------


def test_sw8_valid_and_derivation() -> None:
    trace = "a4ec6fc8ccab4bb4b682064698cc97e6.74.16218381104550009"
    segment = "a4ec6fc8ccab4bb4b682064698cc97e6.74.16218381104550008"
    ctx = parse_sw8(sw8_value(trace=trace, segment=segment, span="2"))
    assert ctx is not None
    assert ctx.format == "sw8" and ctx.sampled is True and ctx.flags == 1
    assert ctx.trace_id == hashlib.sha256(trace.encode()).hexdigest()[:32]
    assert ctx.span_id == hashlib.sha256(f"{segment}#2".encode()).hexdigest()[:16]
    # Deterministic, and the span id depends on both the segment and the span id.
    assert parse_sw8(sw8_value(trace=trace, segment=segment, span="02")) == ctx
    other_span = parse_sw8(sw8_value(trace=trace, segment=segment, span="3"))
    assert other_span is not None
    assert other_span.trace_id == ctx.trace_id and other_span.span_id != ctx.span_id
    not_sampled = parse_sw8(sw8_value(sample="0"))
    assert not_sampled is not None and not_sampled.sampled is False


@pytest.mark.parametrize(
    "value",
    [
        "",
        sw8_value(sample="2"),
        sw8_value(span="-1"),  # negative: also breaks the field count
        sw8_value(span="x"),
        sw8_value(trace=""),  # required fields are non-empty
        sw8_value(rest=("a", "b", "c", "")),
        sw8_value().rsplit("-", 1)[0],  # 7 fields
        sw8_value() + "-" + b64("extra"),  # 9 fields
        sw8_value().replace("=", ""),  # unpadded base64 is not standard
        "1-!!!!-" + "-".join([b64("s"), "0", b64("a"), b64("b"), b64("c"), b64("d")]),
        "1-" + base64.b64encode(b"\xff\xfe").decode() + "-" + b64("s") + "-0-"
        + "-".join(b64(x) for x in "abcd"),  # not UTF-8
    ],
)
def test_sw8_invalid(value: str) -> None:
    assert parse_sw8(value) is None


# --- Datadog ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "trace", "span", "sampled"),
    [
        (
            {"x-datadog-trace-id": "1234567890123456789", "x-datadog-parent-id": "987654321",
             "x-datadog-sampling-priority": "1"},
            f"{1234567890123456789:032x}",
            f"{987654321:016x}",
            True,
        ),
        (
            {"x-datadog-trace-id": "18446744073709551615", "x-datadog-parent-id": "1",
             "x-datadog-sampling-priority": "-1"},
            "0" * 16 + "f" * 16,
            "0000000000000001",
            False,
        ),
        (
            {"x-datadog-trace-id": "1", "x-datadog-parent-id": "2",
             "x-datadog-sampling-priority": "2",
             "x-datadog-tags": "_dd.p.dm=-4,_dd.p.tid=640cfd8d00000000"},
            "640cfd8d000000000000000000000001",
            "0000000000000002",
            True,
        ),
        (  # an invalid tid is dropped, the lower 64 bits still stand
            {"x-datadog-trace-id": "1", "x-datadog-tags": "_dd.p.tid=640CFD8D00000000"},
            "0" * 31 + "1",
            "",
            None,
        ),
        ({"x-datadog-trace-id": "7", "x-datadog-parent-id": "0",
          "x-datadog-sampling-priority": "0"}, "0" * 31 + "7", "", False),
        ({"x-datadog-trace-id": b"7"}, "0" * 31 + "7", "", None),
    ],
)
def test_datadog_valid(
    headers: dict[str, str | bytes], trace: str, span: str, sampled: bool | None
) -> None:
    ctx = parse_datadog(headers)
    assert ctx is not None and ctx.format == "datadog"
    assert (ctx.trace_id, ctx.span_id, ctx.sampled) == (trace, span, sampled)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-datadog-parent-id": "1"},
        {"x-datadog-trace-id": "0"},
        {"x-datadog-trace-id": "18446744073709551616"},  # 2**64
        {"x-datadog-trace-id": "-1"},
        {"x-datadog-trace-id": "0x1f"},
        {"x-datadog-trace-id": "1_000"},  # int() would take it
        {"x-datadog-trace-id": "\u0661\u0662"},  # Arabic-Indic digits: int() would take them
        {"x-datadog-trace-id": "12", "x-datadog-parent-id": "abc"},
        {"x-datadog-trace-id": "12", "x-datadog-sampling-priority": "high"},
    ],
)
def test_datadog_invalid(headers: dict[str, str]) -> None:
    assert parse_datadog(headers) is None


# --- AWS X-Ray -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "span", "sampled"),
    [
        (XRAY_VALUE, "53995c3f42cd8ad8", True),
        ("Root=1-5759e988-bd862e3fe1be46a994272793", "", None),
        (
            "Sampled=0;Parent=53995c3f42cd8ad8;Root=1-5759e988-bd862e3fe1be46a994272793",
            "53995c3f42cd8ad8",
            False,
        ),
        ("Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=?", "", None),
        (
            "Self=1-67891234-12456789abcdef012345678;Root=1-5759e988-bd862e3fe1be46a994272793;"
            "Parent=53995c3f42cd8ad8;Sampled=1;Lineage=a87bd80c:1|68fd508a:5",
            "53995c3f42cd8ad8",
            True,
        ),
        ("Root=1-5759E988-BD862E3FE1BE46A994272793; Parent=53995C3F42CD8AD8; Sampled=1;",
         "53995c3f42cd8ad8", True),
    ],
)
def test_xray_valid(value: str, span: str, sampled: bool | None) -> None:
    ctx = parse_xray(value)
    assert ctx is not None and ctx.format == "xray"
    assert (ctx.trace_id, ctx.span_id, ctx.sampled) == (
        "5759e988bd862e3fe1be46a994272793",
        span,
        sampled,
    )


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Parent=53995c3f42cd8ad8;Sampled=1",  # Root is required
        "Root=2-5759e988-bd862e3fe1be46a994272793",
        "Root=1-5759e98-bd862e3fe1be46a994272793",
        "Root=1-5759e988-bd862e3fe1be46a99427279",
        "Root=1-00000000-000000000000000000000000",
        "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad",
        "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=0000000000000000",
        "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=yes",
        "root=1-5759e988-bd862e3fe1be46a994272793",
    ],
)
def test_xray_invalid(value: str) -> None:
    assert parse_xray(value) is None


# --- x-request-id ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "trace"),
    [
        ("e5b4ce6a-0c25-4a5f-9e3d-7b6a1c2d3e4f", "e5b4ce6a0c254a5f9e3d7b6a1c2d3e4f"),  # Envoy
        ("E5B4CE6A-0C25-4A5F-9E3D-7B6A1C2D3E4F", "e5b4ce6a0c254a5f9e3d7b6a1c2d3e4f"),
        ("7f0e5d1b6a2c4e8f9a0b1c2d3e4f5a6b", "7f0e5d1b6a2c4e8f9a0b1c2d3e4f5a6b"),  # nginx
        ("req-42", hashlib.sha256(b"req-42").hexdigest()[:32]),
        ("  spaced id ", hashlib.sha256(b"spaced id").hexdigest()[:32]),
        (str(uuid.UUID(int=0)), hashlib.sha256(str(uuid.UUID(int=0)).encode()).hexdigest()[:32]),
        ("x" * 200, hashlib.sha256(b"x" * 200).hexdigest()[:32]),
    ],
)
def test_request_id_valid(value: str, trace: str) -> None:
    ctx = parse_request_id(value)
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id, ctx.format, ctx.sampled) == (trace, "", "request-id", None)
    assert ctx.request_id == value.strip()


@pytest.mark.parametrize(
    "value", ["", "   ", "x" * 201, "caf\u00e9", "a\x00b", b"\xff\xfe", "a\nb"]
)
def test_request_id_invalid(value: str | bytes) -> None:
    assert parse_request_id(value) is None


# --- extract ---------------------------------------------------------------------------------


def test_extract_precedence_keeps_request_id_and_lists_formats() -> None:
    ctx = extract(
        [
            ("x-request-id", "e5b4ce6a-0c25-4a5f-9e3d-7b6a1c2d3e4f"),
            ("b3", B3_SINGLE),
            ("traceparent", W3C_VALUE),
            ("tracestate", "rojo=00f067aa0ba902b7"),
        ]
    )
    assert ctx is not None
    assert (ctx.format, ctx.trace_id, ctx.span_id) == ("w3c", W3C_TRACE, W3C_PARENT)
    assert ctx.request_id == "e5b4ce6a-0c25-4a5f-9e3d-7b6a1c2d3e4f"
    assert ctx.tracestate == "rojo=00f067aa0ba902b7"
    assert ctx.all_formats == ("w3c", "b3-single", "request-id")


def _all_formats_headers() -> list[tuple[str, str]]:
    oc = base64.b64encode(OC_EXAMPLE).decode()
    return [
        ("X-Request-Id", "req-1"),
        ("X-Amzn-Trace-Id", XRAY_VALUE),
        ("X-Datadog-Trace-Id", "42"),
        ("X-Datadog-Parent-Id", "43"),
        ("sw8", sw8_value()),
        ("Uber-Trace-Id", f"{W3C_TRACE}:{W3C_PARENT}:0:1"),
        ("B3", B3_SINGLE),
        ("X-B3-TraceId", B3M_TRACE),
        ("X-B3-SpanId", B3M_SPAN),
        ("Grpc-Trace-Bin", oc),
        ("Traceparent", W3C_VALUE),
    ]


def test_extract_full_precedence_order() -> None:
    headers = _all_formats_headers()
    expected = list(FORMATS)
    while headers:
        ctx = extract(headers)
        assert ctx is not None
        assert ctx.all_formats == tuple(expected)
        assert ctx.format == expected[0]
        assert ctx.request_id == "req-1"
        # Drop the winner's headers: the next format in precedence order must win.
        winner = expected.pop(0)
        names = {
            "w3c": {"traceparent"},
            "grpc-trace-bin": {"grpc-trace-bin"},
            "b3": {"x-b3-traceid", "x-b3-spanid"},
            "b3-single": {"b3"},
            "jaeger": {"uber-trace-id"},
            "sw8": {"sw8"},
            "datadog": {"x-datadog-trace-id", "x-datadog-parent-id"},
            "xray": {"x-amzn-trace-id"},
            "request-id": {"x-request-id"},
        }[winner]
        headers = [(n, v) for n, v in headers if n.lower() not in names]
    assert extract(headers) is None


def test_extract_invalid_winner_falls_through() -> None:
    ctx = extract([("traceparent", f"ff-{W3C_TRACE}-{W3C_PARENT}-01"), ("b3", B3_SINGLE)])
    assert ctx is not None and ctx.format == "b3-single" and ctx.all_formats == ("b3-single",)
    assert ctx.request_id == ""


def test_extract_names_case_insensitive_and_bytes() -> None:
    expected = extract([("traceparent", W3C_VALUE)])
    assert expected is not None
    names: tuple[str | bytes | bytearray, ...] = (
        "TRACEPARENT",
        "TraceParent",
        b"traceparent",
        b"TraceParent",
        bytearray(b"TRACEPARENT"),
    )
    for name in names:
        assert extract([(name, W3C_VALUE)]) == expected
        assert extract([(name, W3C_VALUE.encode())]) == expected
    assert extract({"TraceParent": W3C_VALUE}) == expected  # a mapping works too


def test_extract_first_occurrence_wins_and_tracestate_is_combined() -> None:
    other = f"00-{'1' * 32}-{'2' * 16}-00"
    ctx = extract(
        [
            ("traceparent", W3C_VALUE),
            ("tracestate", "rojo=00f067aa0ba902b7"),
            ("TRACEPARENT", other),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("x-request-id", "first"),
            ("x-request-id", "second"),
        ]
    )
    assert ctx is not None
    assert ctx.trace_id == W3C_TRACE
    assert ctx.tracestate == "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    assert ctx.request_id == "first"
    # An invalid first occurrence is not replaced by a later valid one.
    assert extract([("traceparent", "junk"), ("traceparent", W3C_VALUE)]) is None


def test_extract_nothing_to_find() -> None:
    assert extract([]) is None
    assert extract([("content-type", "text/plain"), ("host", "a")]) is None
    assert extract([("x-b3-sampled", "1"), ("b3", "1")]) is None  # sampling only, no ids
    assert extract([("tracestate", "rojo=1")]) is None
    assert extract([("x-request-id", "x" * 201)]) is None


def test_extract_survives_malformed_input() -> None:
    weird = [None, 5, ("a",), ("a", "b", "c"), (1, 2), "xy", (None, W3C_VALUE)]
    ctx = extract([*weird, ("traceparent", W3C_VALUE)])  # type: ignore[list-item]
    assert ctx is not None and ctx.trace_id == W3C_TRACE
    assert extract(None) is None  # type: ignore[arg-type]
    assert extract(42) is None  # type: ignore[arg-type]

    def exploding() -> object:
        yield ("traceparent", W3C_VALUE)
        raise RuntimeError("boom")

    assert extract(exploding()) is None  # type: ignore[arg-type]


def test_trace_header_names() -> None:
    assert all(name == name.lower() for name in TRACE_HEADER_NAMES)
    for name, _ in _all_formats_headers():
        assert name.lower() in TRACE_HEADER_NAMES
    assert {"tracestate", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags",
            "x-datadog-sampling-priority", "x-datadog-tags"} <= TRACE_HEADER_NAMES


def test_context_is_frozen_and_slotted() -> None:
    ctx = parse_traceparent(W3C_VALUE)
    assert ctx is not None
    with pytest.raises(AttributeError):
        ctx.trace_id = "x"  # type: ignore[misc]
    assert not hasattr(ctx, "__dict__")


# --- properties: round trips -----------------------------------------------------------------

trace128 = st.integers(1, 2**128 - 1)
id64 = st.integers(1, 2**64 - 1)
flag_byte = st.integers(0, 255)


@given(trace128, id64, flag_byte, st.sampled_from(["00", "01", "7f", "fe"]))
def test_roundtrip_w3c(trace: int, span: int, flags: int, version: str) -> None:
    value = f"{version}-{trace:032x}-{span:016x}-{flags:02x}"
    if version != "00":
        value += "-future"
    ctx = parse_traceparent(value)
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id, ctx.flags) == (f"{trace:032x}", f"{span:016x}", flags)
    assert ctx.sampled == bool(flags & 1)


@given(trace128, id64, st.one_of(st.none(), flag_byte), st.booleans(), st.booleans())
def test_roundtrip_grpc_trace_bin(
    trace: int, span: int, options: int | None, urlsafe: bool, raw: bool
) -> None:
    data = b"\x00\x00" + trace.to_bytes(16, "big") + b"\x01" + span.to_bytes(8, "big")
    if options is not None:
        data += bytes([2, options])
    value: str | bytes = data
    if not raw:
        value = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(data).decode()
    ctx = parse_grpc_trace_bin(value)
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id) == (f"{trace:032x}", f"{span:016x}")
    assert ctx.sampled == (None if options is None else bool(options & 1))


@given(st.one_of(trace128, id64), id64, st.one_of(st.none(), id64),
       st.sampled_from([None, "1", "0", "true", "false"]), st.booleans())
def test_roundtrip_b3_multi(
    trace: int, span: int, parent: int | None, sampled: str | None, debug: bool
) -> None:
    width = 32 if trace >= 2**64 else 16
    headers = {"x-b3-traceid": f"{trace:0{width}x}", "x-b3-spanid": f"{span:016x}"}
    if parent is not None:
        headers["x-b3-parentspanid"] = f"{parent:016x}"
    if sampled is not None:
        headers["x-b3-sampled"] = sampled
    if debug:
        headers["x-b3-flags"] = "1"
    ctx = parse_b3(headers)
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id) == (f"{trace:032x}", f"{span:016x}")
    assert ctx.parent_span_id == ("" if parent is None else f"{parent:016x}")
    assert ctx.debug == debug
    expected = None if sampled is None else sampled in ("1", "true")
    assert ctx.sampled == (True if debug else expected)


@given(st.one_of(trace128, id64), id64, st.sampled_from([None, "1", "0", "d"]),
       st.one_of(st.none(), id64))
def test_roundtrip_b3_single(
    trace: int, span: int, state: str | None, parent: int | None
) -> None:
    width = 32 if trace >= 2**64 else 16
    parts = [f"{trace:0{width}x}", f"{span:016x}"]
    if state is not None:
        parts.append(state)
        if parent is not None:
            parts.append(f"{parent:016x}")
    ctx = parse_b3_single("-".join(parts))
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id) == (f"{trace:032x}", f"{span:016x}")
    assert ctx.debug == (state == "d")
    assert ctx.sampled == {None: None, "1": True, "0": False, "d": True}[state]
    if state is not None and parent is not None:
        assert ctx.parent_span_id == f"{parent:016x}"


@given(trace128, id64, st.integers(0, 2**64 - 1), st.integers(0, 3), st.booleans(),
       st.booleans())
def test_roundtrip_jaeger(
    trace: int, span: int, parent: int, flags: int, encoded: bool, padded: bool
) -> None:
    ids = (f"{trace:032x}", f"{span:016x}", f"{parent:016x}") if padded else (
        f"{trace:x}", f"{span:x}", f"{parent:x}")
    sep = "%3A" if encoded else ":"
    ctx = parse_jaeger(sep.join([*ids, f"{flags:x}"]))
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id) == (f"{trace:032x}", f"{span:016x}")
    assert ctx.parent_span_id == ("" if parent == 0 else f"{parent:016x}")
    assert (ctx.sampled, ctx.debug) == (bool(flags & 1), bool(flags & 2))


sw8_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1,
                   max_size=40)


@given(sw8_text, sw8_text, st.integers(0, 10**9), st.sampled_from("01"),
       st.tuples(sw8_text, sw8_text, sw8_text, sw8_text))
def test_roundtrip_sw8(
    trace: str, segment: str, span: int, sample: str, rest: tuple[str, str, str, str]
) -> None:
    ctx = parse_sw8(sw8_value(trace=trace, segment=segment, span=str(span), sample=sample,
                              rest=rest))
    assert ctx is not None
    assert ctx.trace_id == hashlib.sha256(trace.encode()).hexdigest()[:32]
    assert ctx.span_id == hashlib.sha256(f"{segment}#{span}".encode()).hexdigest()[:16]
    assert ctx.sampled == (sample == "1")


@given(id64, st.integers(0, 2**64 - 1), st.one_of(st.none(), st.integers(0, 2**64 - 1)),
       st.one_of(st.none(), st.integers(-1, 2)))
def test_roundtrip_datadog(low: int, parent: int, high: int | None, priority: int | None) -> None:
    headers = {"x-datadog-trace-id": str(low), "x-datadog-parent-id": str(parent)}
    if high is not None:
        headers["x-datadog-tags"] = f"_dd.p.dm=-0,_dd.p.tid={high:016x}"
    if priority is not None:
        headers["x-datadog-sampling-priority"] = str(priority)
    ctx = parse_datadog(headers)
    assert ctx is not None
    assert ctx.trace_id == f"{high or 0:016x}{low:016x}"
    assert ctx.span_id == ("" if parent == 0 else f"{parent:016x}")
    assert ctx.sampled == (None if priority is None else priority > 0)


@given(st.integers(0, 2**32 - 1), st.integers(1, 2**96 - 1), st.one_of(st.none(), id64),
       st.sampled_from([None, "0", "1", "?"]), st.permutations(range(3)))
def test_roundtrip_xray(
    epoch: int, unique: int, parent: int | None, sampled: str | None, order: list[int]
) -> None:
    fields = [f"Root=1-{epoch:08x}-{unique:024x}",
              f"Parent={parent:016x}" if parent is not None else "",
              f"Sampled={sampled}" if sampled is not None else ""]
    ctx = parse_xray(";".join(fields[i] for i in order))
    assert ctx is not None
    assert ctx.trace_id == f"{epoch:08x}{unique:024x}"
    assert ctx.span_id == ("" if parent is None else f"{parent:016x}")
    assert ctx.sampled == {None: None, "?": None, "0": False, "1": True}[sampled]


@given(trace128, st.booleans())
def test_roundtrip_request_id_uuid(trace: int, upper: bool) -> None:
    value = str(uuid.UUID(int=trace))
    ctx = parse_request_id(value.upper() if upper else value)
    assert ctx is not None and ctx.trace_id == f"{trace:032x}"


@given(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=200))
def test_request_id_always_gives_a_valid_trace_id(value: str) -> None:
    ctx = parse_request_id(value)
    assert ctx is not None and ctx.request_id == value
    assert len(ctx.trace_id) == 32 and ctx.trace_id != "0" * 32
    assert int(ctx.trace_id, 16) >= 0 and ctx.trace_id == ctx.trace_id.lower()


# --- properties: garbage never raises --------------------------------------------------------

VALUE_PARSERS = [
    parse_traceparent,
    parse_tracestate,
    parse_grpc_trace_bin,
    parse_b3_single,
    parse_jaeger,
    parse_sw8,
    parse_xray,
    parse_request_id,
]
MAPPING_PARSERS = [parse_b3, parse_datadog]
VALID_VALUES = [
    W3C_VALUE,
    f"cc-{W3C_TRACE}-{W3C_PARENT}-01-x",
    "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
    base64.b64encode(OC_EXAMPLE).decode(),
    B3_SINGLE,
    f"{W3C_TRACE}:{W3C_PARENT}:0:1",
    sw8_value(),
    XRAY_VALUE,
    "e5b4ce6a-0c25-4a5f-9e3d-7b6a1c2d3e4f",
]


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A valid value of some format with a few characters replaced, inserted or deleted."""
    text = list(draw(st.sampled_from(VALID_VALUES)))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["set", "insert", "delete"]))
        char = draw(st.characters())
        if op == "insert" or pos == len(text):
            text.insert(pos, char)
        elif op == "set":
            text[pos] = char
        else:
            del text[pos]
    return "".join(text)


garbage = st.one_of(st.text(), st.binary(), mutated(), st.sampled_from(VALID_VALUES))
_names = sorted(TRACE_HEADER_NAMES)
header_name = st.one_of(
    st.sampled_from(_names),
    st.sampled_from(_names).map(str.upper),
    st.sampled_from(_names).map(str.encode),
    st.text(max_size=20),
    st.binary(max_size=20),
)


@given(st.one_of(st.text(), st.binary(), mutated()))
def test_value_parsers_never_raise(value: str | bytes) -> None:
    for parse in VALUE_PARSERS:
        result = parse(value)
        assert result is None or isinstance(result, (TraceContext, str))
        if isinstance(result, TraceContext):
            assert len(result.trace_id) == 32 and result.trace_id != "0" * 32
            assert result.span_id == "" or len(result.span_id) == 16
            assert result.span_id != "0" * 16
            assert result.format in FORMATS


@given(st.dictionaries(st.sampled_from(_names), garbage, max_size=8))
def test_mapping_parsers_never_raise(headers: dict[str, str | bytes]) -> None:
    for parse in MAPPING_PARSERS:
        result = parse(headers)
        assert result is None or isinstance(result, TraceContext)


@given(st.lists(st.tuples(header_name, garbage), max_size=12))
def test_extract_never_raises(headers: list[tuple[str | bytes, str | bytes]]) -> None:
    ctx = extract(headers)
    if ctx is not None:
        assert ctx.format == ctx.all_formats[0]
        assert set(ctx.all_formats) <= set(FORMATS)
        assert len(ctx.trace_id) == 32 and ctx.trace_id == ctx.trace_id.lower()
