"""HTTP/2 in the public corpus against tshark: every header block tshark decodes must decode
to the same ``:method``, ``:path``, ``:authority``, ``:status`` and trace headers in ours.

The oracle is tshark's JSON (``-T json``; duplicate keys kept) for HEADERS and PUSH_PROMISE
frames, with the ``-d tcp.port==P,http2`` options that ``INDEX.tsv`` records for files on
ports tshark does not associate with HTTP/2. A block is matched to our exchange by
connection (client and server address and port) and stream id. Blocks tshark decodes only
partly (it gives up on a mid-stream join) are checked for the fields it has; blocks it
cannot decode at all are not an oracle, and ours may well decode them.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import pytest

from conftest import CORPUS, have
from sniffer.pipeline import run_replay

pytestmark = pytest.mark.corpus

TRACE_HEADERS = ("traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid",
                 "uber-trace-id", "grpc-trace-bin", "x-request-id", "sw8")
PSEUDO = (":method", ":path", ":authority", ":status")


def _index() -> dict[str, str]:
    path = CORPUS / "INDEX.tsv"
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines()[1:]:
        cols = line.split("\t")
        if len(cols) >= 6 and re.search(r"http2_headers=[1-9]", cols[3]):
            out[cols[0]] = cols[5]
    return out


INDEX = _index()
FILES = sorted(INDEX)


def _pairs(pairs: list) -> list:
    return pairs  # keep duplicate keys, in order


def _all(obj: list, key: str) -> list:
    return [v for k, v in obj if k == key] if isinstance(obj, list) else []


def _one(obj: list, key: str) -> str | None:
    vals = _all(obj, key)
    return vals[0] if vals else None


@cache
def tshark_blocks(rel: str) -> list[dict]:
    """[(client, server, stream id, {name: value})] for each header block tshark decoded."""
    decode_as = re.findall(r"-d (tcp\.port==\d+,http2)", INDEX[rel])
    cmd = ["tshark", "-n", "-r", str(CORPUS / rel), "-Y", "http2.type==1 or http2.type==5",
           "-T", "json", "-J", "ip ipv6 tcp http2"]
    for d in decode_as:
        cmd += ["-d", d]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    packets = json.loads(r.stdout or "[]", object_pairs_hook=_pairs)
    out = []
    for pkt in packets:
        layers = _one(_one(pkt, "_source"), "layers")
        ip = _one(layers, "ip") or _one(layers, "ipv6")
        tcp = _one(layers, "tcp")
        if ip is None or tcp is None:
            continue
        v = "ip" if _one(layers, "ip") else "ipv6"
        src = (_one(ip, f"{v}.src"), int(_one(tcp, "tcp.srcport")))
        dst = (_one(ip, f"{v}.dst"), int(_one(tcp, "tcp.dstport")))
        for h2 in _all(layers, "http2"):
            for stream in _all(h2, "http2.stream"):
                ftype = _one(stream, "http2.type")
                if ftype not in ("1", "5"):
                    continue
                fields: dict[str, str] = {}
                for h in _all(stream, "http2.header"):
                    name = _one(h, "http2.header.name")
                    if name is not None and name not in fields:
                        fields[name] = _one(h, "http2.header.value") or ""
                sid = int(_one(stream, "http2.streamid") or 0)
                if ftype == "5":
                    sid = int(_one(stream, "http2.push_promise.promised_stream_id") or 0)
                if fields:
                    out.append({"src": src, "dst": dst, "sid": sid, "fields": fields,
                                "push": ftype == "5"})
    return out


@cache
def all_blocks() -> dict[str, list[dict]]:
    with ThreadPoolExecutor(max_workers=4) as ex:
        return dict(zip(FILES, ex.map(tshark_blocks, FILES)))


def _ep(e: tuple[bytes, int]) -> tuple[str, int]:
    return str(ipaddress.ip_address(e[0])), e[1]


def test_corpus_has_http2_files() -> None:
    if not CORPUS.is_dir():
        pytest.skip(f"{CORPUS} not present: the shared corpus is laid beside the checkout")
    assert len(FILES) >= 30


@pytest.mark.skipif(not have("tshark"), reason="tshark not installed (scripts/setup installs it)")
@pytest.mark.parametrize("rel", FILES)
def test_header_blocks_match_tshark(rel: str) -> None:
    blocks = all_blocks()[rel]
    exs: list = []
    run_replay([str(CORPUS / rel)], on_exchange=exs.append)
    ours = {}
    for ex in exs:
        if ex.protocol == "http/2":
            key = (_ep(ex.client), _ep(ex.server), ex.stream_id)
            ours.setdefault(key, []).append(ex)
    assert blocks, f"{rel}: tshark decoded no header block (INDEX.tsv says it has some)"
    checked = 0
    for b in blocks:
        f = b["fields"]
        is_request = ":method" in f or b["push"]
        cands = ours.get((b["src"], b["dst"], b["sid"]) if is_request or b["push"]
                         else (b["dst"], b["src"], b["sid"]))
        if b["push"]:
            cands = ours.get((b["dst"], b["src"], b["sid"]))
        where = f"{rel}: {b['src']} -> {b['dst']} stream {b['sid']} {f}"
        assert cands, f"no exchange of ours for tshark's block: {where}"
        ex = cands[0]
        if is_request:
            assert ex.method == f.get(":method", ex.method), where
            assert ex.target == f.get(":path", ex.target), where
            if ":authority" in f:
                assert ex.authority == f[":authority"], where
            headers = ex.request.headers
        elif ":status" in f:
            status = int(f[":status"])
            if "reset" in ex.flags and ex.response is None:
                pass  # the response crossed the client's RST_STREAM: late frames are ignored
            elif 100 <= status < 200:
                assert f"interim_{status}" in ex.flags, where
            else:
                assert ex.status == status, where
            headers = ex.response.headers if ex.response is not None else []
        else:  # trailers
            headers = (ex.response.trailers if ex.response is not None else []) + \
                ex.request.trailers
            if "grpc-status" in f:
                assert ex.grpc_status == int(f["grpc-status"]), where
        got = dict(headers)
        for name in TRACE_HEADERS:
            if name in f:
                assert got.get(name) == f[name], f"{name}: {where}"
        checked += 1
    assert checked == len(blocks)
