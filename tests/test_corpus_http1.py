"""Differential test of the HTTP/1 parser against tshark on every public corpus capture.

For each file, the HTTP/1 messages wirespan reports must be the ones tshark decodes from the
same file (`tshark -Y "tcp and (http.request or http.response)"`), except for the files in
KNOWN, each with the exact counts on both sides and the reason the two differ.

The comparison, per file: two multisets, keyed by connection (its port pair, sorted, so a
mid-stream join with inferred roles still lines up):

* requests: (ports, method, target). tshark's ``http.request.uri`` stops at the first space
  of the request line; we keep a target with spaces whole (as Zeek does), so only our
  target's first space-separated word is compared.
* responses: (ports, status), one per response head we parsed, counted when tshark would
  show it: the message completed, broke (``malformed``), or the connection closed with a FIN
  in its body (``truncated``) - but not when bytes were missing (``gap``) or the capture
  ended first (tshark then waits for the rest of the body and never shows the response).
  Interim 1xx responses count from their ``interim_<code>`` flag (a set: two 100s are one).

HTTP/2 is out of scope: tshark's ``http2`` frames do not match the filter, and our
exchanges with protocol ``http/2`` are ignored - except one flagged ``h2c_upgrade``, which
is the HTTP/1 request of a ``101`` upgrade: it counts as that request plus a 101 response,
the way tshark shows them.

Ports: we detect HTTP from bytes; tshark decodes it on its registered ports and, through
its TCP heuristic (enabled by default), on others - unless the port belongs to another
dissector (SOCKS on 1080, ...), which shows up here as a difference, listed in KNOWN.

tshark runs with its default preferences. Its TCP reassembly then ignores out-of-order
segments (``tcp.reassemble_out_of_order`` is off in 4.0): a message whose segments arrive
out of order is lost, or a retransmitted one shown twice. Turning that on makes tshark wait
forever at the first gap instead, which loses more (every capture with drops), so the few
reordering files are in KNOWN. Segments quoted inside ICMP errors or sampled by sFlow are
not counted.

tshark runs once per file, in parallel threads, on first use (1-2 minutes on 2 cores).
``python tests/test_corpus_http1.py`` prints the differing files in KNOWN's format.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import CORPUS, have  # noqa: E402
from sniffer.exchange import Exchange  # noqa: E402
from sniffer.pipeline import run_replay  # noqa: E402

pytestmark = pytest.mark.corpus

_EXTS = (".pcap", ".pcapng", ".cap", ".gz")
FILES = sorted(
    str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*")
    if p.is_file() and ".expected" not in p.name and p.name.endswith(_EXTS)
) if CORPUS.is_dir() else []

Lists = tuple[Counter, Counter]  # requests, responses

# Files where we differ from tshark on purpose, or tshark is wrong:
# ((our requests, our responses), (tshark's requests, tshark's responses), why).
# A change in any number fails the test, and so does an entry whose lists now agree.
KNOWN: dict[str, tuple[tuple[int, int], tuple[int, int], str]] = {
    # http-evader: body framing cut by the FIN, or read differently by tshark
    "suricata-verify/http-evader/http-evader-026.pcap": (
        (1, 1), (1, 0),
        "final chunk '0\\n' only; FIN inside the body: we report the response (truncated); "
        "tshark, still reassembling it, shows none"),
    "suricata-verify/http-evader/http-evader-027.pcap": (
        (1, 1), (1, 0),
        "final chunk '0\\r' only; FIN inside the body: we report the response (truncated); "
        "tshark, still reassembling it, shows none"),
    "suricata-verify/http-evader/http-evader-028.pcap": (
        (1, 1), (1, 0),
        "final chunk '0' only; FIN inside the body: we report the response (truncated); "
        "tshark, still reassembling it, shows none"),
    "suricata-verify/http-evader/http-evader-044.pcap": (
        (1, 1), (1, 0),
        "TE chunked, unchunked body; FIN inside the body: we report the response (truncated); "
        "tshark, still reassembling it, shows none"),
    "suricata-verify/http-evader/http-evader-045.pcap": (
        (1, 1), (1, 0),
        "TE chunked + CL, unchunked body; FIN inside the body: we report the response "
        "(truncated); tshark, still reassembling it, shows none"),
    "suricata-verify/http-evader/http-evader-046.pcap": (
        (1, 1), (1, 0),
        "CL + TE chunked, unchunked body; FIN inside the body: we report the response "
        "(truncated); tshark, still reassembling it, shows none"),
    "suricata-verify/http-evader/http-evader-050.pcap": (
        (1, 1), (1, 0),
        "TE chunked + CL, unchunked body; FIN inside the body: we report the response "
        "(truncated); tshark, still reassembling it, shows none"),
    "suricata-verify/http-evader/http-evader-052.pcap": (
        (1, 1), (1, 0),
        "TE chunked + CL, unchunked body; FIN inside the body: we report the response "
        "(truncated); tshark, still reassembling it, shows none"),
    "suricata-verify/http-evader/http-evader-078.pcap": (
        (1, 1), (1, 0),
        "TE 'chunked\\r ', unchunked body; FIN inside the body: we report the response "
        "(truncated); tshark, still reassembling it, shows none"),
    "suricata-verify/http-evader/http-evader-082.pcap": (
        (1, 1), (1, 0),
        "TE lalala then chunked, unchunked body; FIN inside the body: we report the response "
        "(truncated); tshark, still reassembling it, shows none"),
    "suricata-verify/http-evader/http-evader-086.pcap": (
        (1, 1), (1, 0),
        "TE lalala, chunked + CL, unchunked body; FIN inside the body: we report the response "
        "(truncated); tshark, still reassembling it, shows none"),
    "suricata-verify/http-evader/http-evader-098.pcap": (
        (1, 1), (1, 0),
        "no final chunk; FIN inside the body: we report the response (truncated); tshark, "
        "still reassembling it, shows none"),
    "suricata-verify/http-evader/http-evader-099.pcap": (
        (1, 1), (1, 0),
        "EOF inside a chunk; FIN inside the body: we report the response (truncated); tshark, "
        "still reassembling it, shows none"),
    "suricata-verify/http-evader/http-evader-207.pcap": (
        (1, 1), (1, 0),
        "gzip body shorter than its CL; FIN inside the body: we report the response "
        "(truncated); tshark, still reassembling it, shows none"),
    "suricata-verify/http-evader/http-evader-208.pcap": (
        (1, 1), (1, 0),
        "gzip body shorter than its CL; FIN inside the body: we report the response "
        "(truncated); tshark, still reassembling it, shows none"),
    "suricata-verify/http-evader/http-evader-241.pcap": (
        (1, 1), (1, 0),
        "body shorter than its CL; FIN inside the body: we report the response (truncated); "
        "tshark, still reassembling it, shows none"),
    "suricata-verify/http-evader/http-evader-419.pcap": (
        (1, 1), (1, 0),
        "head ends 'LF SP LF': not an empty line, head and body never end; FIN inside the "
        "body: we report the response (truncated); tshark, still reassembling it, shows none"),
    "suricata-verify/http-evader/http-evader-428.pcap": (
        (1, 1), (1, 0),
        "head ends 'LF HTAB LF': not an empty line, head and body never end; FIN inside the "
        "body: we report the response (truncated); tshark, still reassembling it, shows none"),
    "suricata-verify/http-evader/http-evader-381.pcap": (
        (1, 1), (1, 0),
        "'200\\rTransfer-Encoding:chunked': a bare CR is SP (RFC 9112 §2.2), so no TE and the "
        "CL body completes; tshark splits the line at the CR, takes chunked and fails"),
    "suricata-verify/http-evader/http-evader-384.pcap": (
        (1, 1), (1, 0),
        "'200\\rTransfer-Encoding:chunked': a bare CR is SP (RFC 9112 §2.2), so no TE and the "
        "CL body completes; tshark splits the line at the CR, takes chunked and fails"),
    "suricata-verify/http-evader/http-evader-387.pcap": (
        (1, 1), (1, 0),
        "'200\\rTransfer-Encoding:chunked': a bare CR is SP (RFC 9112 §2.2), so no TE and the "
        "CL body completes; tshark splits the line at the CR, takes chunked and fails"),
    "suricata-verify/http-evader/http-evader-067.pcap": (
        (1, 1), (1, 0),
        "TE 'chunked x' is not chunked: close-delimited, complete at FIN; tshark takes it as "
        "chunked and fails"),
    "suricata-verify/http-evader/http-evader-095.pcap": (
        (1, 1), (1, 0),
        "'...\\rTransfer-Encoding: chunked' is inside another header (bare CR = SP): close- "
        "delimited; tshark splits at the CR"),
    "suricata-verify/http-evader/http-evader-480.pcap": (
        (1, 1), (1, 0),
        "empty lines (CR/LF) before the status line are skipped, as between messages; tshark "
        "does not find the status line"),
    "suricata-verify/http-evader/http-evader-489.pcap": (
        (1, 1), (1, 0),
        "empty lines (CR/LF) before the status line are skipped, as between messages; tshark "
        "does not find the status line"),
    "suricata-verify/http-evader/http-evader-490.pcap": (
        (1, 1), (1, 0),
        "empty lines (CR/LF) before the status line are skipped, as between messages; tshark "
        "does not find the status line"),
    "suricata-verify/http-evader/http-evader-492.pcap": (
        (1, 1), (1, 0),
        "empty lines (CR/LF) before the status line are skipped, as between messages; tshark "
        "does not find the status line"),
    "suricata-verify/http-evader/http-evader-493.pcap": (
        (1, 1), (1, 0),
        "empty lines (CR/LF) before the status line are skipped, as between messages; tshark "
        "does not find the status line"),
    "suricata-verify/http-evader/http-evader-495.pcap": (
        (1, 1), (1, 0),
        "empty lines (CR/LF) before the status line are skipped, as between messages; tshark "
        "does not find the status line"),
    # http-evader and others: malformed status lines and head ends, where tshark is lenient
    "suricata-verify/http-evader/http-evader-391.pcap": (
        (1, 0), (1, 1),
        "a NUL inside the status line's version or code: not a status line for us; tshark "
        "reads around it"),
    "suricata-verify/http-evader/http-evader-392.pcap": (
        (1, 0), (1, 1),
        "a NUL inside the status line's version or code: not a status line for us; tshark "
        "reads around it"),
    "suricata-verify/http-evader/http-evader-394.pcap": (
        (1, 0), (1, 1),
        "a NUL inside the status line's version or code: not a status line for us; tshark "
        "reads around it"),
    "suricata-verify/http-evader/http-evader-393.pcap": (
        (1, 0), (1, 1),
        "status code '2\\0 00' is not 3DIGIT followed by SP: no status line; tshark reads a "
        "number out of it"),
    "suricata-verify/http-evader/http-evader-467.pcap": (
        (1, 0), (1, 1),
        "status code '2xx' is not 3DIGIT followed by SP: no status line; tshark reads a "
        "number out of it"),
    "suricata-verify/http-evader/http-evader-468.pcap": (
        (1, 0), (1, 1),
        "status code '20x' is not 3DIGIT followed by SP: no status line; tshark reads a "
        "number out of it"),
    "suricata-verify/http-evader/http-evader-471.pcap": (
        (1, 0), (1, 1),
        "status code '2000' is not 3DIGIT followed by SP: no status line; tshark reads a "
        "number out of it"),
    "suricata-verify/http-evader/http-evader-472.pcap": (
        (1, 0), (1, 1),
        "status code '0200' is not 3DIGIT followed by SP: no status line; tshark reads a "
        "number out of it"),
    "suricata-verify/http-evader/http-evader-477.pcap": (
        (1, 0), (1, 1),
        "status code '0204' is not 3DIGIT followed by SP: no status line; tshark reads a "
        "number out of it"),
    "suricata-verify/http-evader/http-evader-478.pcap": (
        (1, 0), (1, 1),
        "status code '2040' is not 3DIGIT followed by SP: no status line; tshark reads a "
        "number out of it"),
    "suricata-verify/http-evader/http-evader-474.pcap": (
        (1, 1), (1, 1),
        "'HTTP/1.1 \\t200': SP/HTAB run before the code (RFC 9112 §4 words) is 200; tshark "
        "reads 20"),
    "suricata-verify/http-evader/http-evader-410.pcap": (
        (1, 0), (1, 1),
        "head ends 'LF CR CR LF', no empty line (a bare CR is SP): the head never ends for "
        "us; tshark ends it"),
    "suricata-verify/http-evader/http-evader-412.pcap": (
        (1, 0), (1, 1),
        "head ends 'LF CR CR LF', no empty line (a bare CR is SP): the head never ends for "
        "us; tshark ends it"),
    "suricata-verify/http1-noint-status.pcap": (
        (1, 0), (1, 1), "status code '2XX' is not 3DIGIT: no status line; tshark reads 2"),
    # tshark's TCP reassembly: out-of-order segments, gaps, snapped packets
    "arkime/http-tcp-seq-issue.pcap": (
        (1, 0), (0, 0),
        "segments out of order or retransmitted: tshark's default TCP reassembly loses the "
        "POST (arrives tail first)"),
    "arkime/wireshark-retrans.pcap": (
        (4, 4), (4, 6),
        "segments out of order or retransmitted: tshark's default TCP reassembly shows two "
        "retransmitted 200s twice"),
    "suricata-verify/http-range-file.pcap": (
        (15, 15), (15, 14),
        "segments out of order or retransmitted: tshark's default TCP reassembly loses the "
        "first 206"),
    "zeek/http__concurrent-range-requests.pcap": (
        (3, 3), (3, 2),
        "segments out of order or retransmitted: tshark's default TCP reassembly loses one "
        "206"),
    "suricata-verify/http-gap-beyond-body.pcap": (
        (3, 1), (3, 0),
        "a gap (bytes never captured) inside a response body: we skip it and stay in step; "
        "tshark's reassembly stops there"),
    "suricata-verify/http-pipeline-files-with-gap.pcap": (
        (3, 2), (3, 1),
        "a gap (bytes never captured) inside a response body: we skip it and stay in step; "
        "tshark's reassembly stops there"),
    "zeek/communityid__tcp.pcap": (
        (0, 0), (1, 1),
        "packets cut by the snap length inside both heads: we count the gap and drop the "
        "heads; tshark shows the partial heads"),
    # deliberate: scope (SOCKS, detection) and RFC 9112 choices tshark does not make
    "arkime/socks-http-example.pcap": (
        (0, 0), (3, 3),
        "HTTP inside a SOCKS tunnel: we do not decode SOCKS (the connection is 'other'); "
        "tshark does"),
    "arkime/socks5-http-302-frag.pcap": (
        (0, 0), (1, 1),
        "HTTP inside a SOCKS tunnel: we do not decode SOCKS (the connection is 'other'); "
        "tshark does"),
    "arkime/socks5-http-302.pcap": (
        (0, 0), (1, 1),
        "HTTP inside a SOCKS tunnel: we do not decode SOCKS (the connection is 'other'); "
        "tshark does"),
    "ndpi/http-manipulated.pcap": (
        (3, 2), (3, 2),
        "'GET<many SP>/aaa...': we parse on whitespace words (RFC 9112 §3); tshark takes the "
        "empty word as the URI"),
    "suricata-verify/http-multiple-cl.pcap": (
        (1, 0), (2, 1),
        "Content-Length 11 and 93: differing values are an unrecoverable framing error (RFC "
        "9112 §6.3), we stop; tshark takes the last and parses on"),
    "suricata-verify/http-multiple100.pcap": (
        (1, 2), (1, 3),
        "two 100 Continue before the 200: one interim_100 flag (a set), tshark shows both"),
    "suricata-verify/http-not09.pcap": (
        (1, 0), (0, 0),
        "'GET /' with no version, then header lines: read as a request (Zeek does too); "
        "tshark wants a version"),
    "suricata-verify/http-not09-spaces.pcap": (
        (1, 0), (0, 0),
        "'GET /' with no version, then header lines: read as a request (Zeek does too); "
        "tshark wants a version"),
    "suricata-verify/http-not09-file.pcap": (
        (0, 0), (0, 1),
        "the client sends binary, not HTTP: the connection is 'other' (detection), tshark "
        "shows the server's 400"),
    "zeek/http__methods.pcap": (
        (26, 26), (27, 49),
        "malformed request lines ('OPTIONSHTTP/1.1', 'OPTIONS', 'GET/ HTTP/1.1', non-ASCII "
        "method): detection calls those connections 'other', so their 400/405 answers are not "
        "parsed; tshark shows them"),
    "zeek/tcp__payload-synack.pcap": (
        (0, 0), (1, 0),
        "the request rides in the SYN-ACK, from the server's side: a server speaking a "
        "request line first is 'other' for us"),
    "zeek/http__putty-upload.pcap": (
        (2, 2), (1, 2),
        "the POST body is cut by a RST after an early 200: we report the request; tshark, "
        "waiting for the body, does not"),
    "suricata-verify/http-connect__http-connect-simple.pcap": (
        (2, 2), (2, 1),
        "the close-delimited 200 to the GET inside the CONNECT tunnel ends at the FIN; tshark "
        "never shows it"),
    "suricata-verify/http-connect__http-connect-fragmented.pcap": (
        (2, 2), (2, 1),
        "the close-delimited 200 to the GET inside the CONNECT tunnel ends at the FIN; tshark "
        "never shows it ('GE'+'T' split: see test_http1)"),
    "zeek/http__261__variant-01-chunk_2pow64_overflow.pcap": (
        (2, 0), (1, 0),
        "chunk size 2^64: the POST is malformed and we resync at the next request line (the "
        "smuggled GET); tshark stops"),
    "zeek/http__261__variant-02-cl_uint64max.pcap": (
        (1, 0), (2, 0),
        "Content-Length 2^64-1 is invalid framing (RFC 9112 §6.3): we stop; tshark parses the "
        "smuggled GET"),
    "zeek/http__261__variant-03-cl_negative.pcap": (
        (1, 0), (2, 0),
        "Content-Length -1 is invalid framing (RFC 9112 §6.3): we stop; tshark parses the "
        "smuggled GET"),
    "zeek/http__261__variant-09-te_obs_fold.pcap": (
        (2, 0), (1, 0),
        "'Transfer-Encoding:' + obs-fold ' chunked' is chunked (RFC 9112 §5.2), then the next "
        "GET; tshark does not unfold it"),
    "zeek/http__261__variant-10-multi_value_te.pcap": (
        (1, 0), (2, 0),
        "request TE 'chunked, identity': chunked not last is a framing error (RFC 9112 §6.3), "
        "we stop; tshark parses the smuggled GET"),
    # our TCP layer on crafted or corrupted captures (see tests/test_corpus.py KNOWN)
    "ndpi/ndpi_match_string_subprotocol__error.pcapng": (
        (1, 0), (2, 1),
        "corrupted capture: 'HTTP/1.\\xc5 200' is no status line for us; the reused 4-tuple an "
        "hour later starts with a 244-byte gap, so detection sees no first bytes and says "
        "'other'"),
    "packetbeat/wsgi_drum.pcap": (
        (16, 17), (16, 16),
        "late duplicate packets re-open a closed connection (see test_corpus KNOWN): its 302 "
        "is seen again"),
    "suricata-verify/security-4710-01.pcap": (
        (0, 0), (1, 1),
        "a forged RST (with a TCP MD5 option) before the request ends the connection for our "
        "TCP layer; tshark ignores it"),
    "suricata-verify/transform-base64-7296.pcap": (
        (3, 1), (2, 1),
        "the connection is in the capture twice; crafted timestamps make us evict and re-open "
        "it (see test_corpus KNOWN), so its GET is seen twice"),
}

_AGG = "\x1f"  # between several values of one field in a frame (pipelined messages)


def _tshark(rel: str) -> Lists:
    r = subprocess.run(
        ["tshark", "-n", "-r", str(CORPUS / rel),
         "-Y", "tcp and not icmp and not icmpv6 and not sflow"
               " and (http.request or http.response)",
         "-T", "fields", "-E", "separator=\t", "-E", "aggregator=" + _AGG, "-E", "occurrence=a",
         "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "http.request.method",
         "-e", "http.request.uri", "-e", "http.response.code"],
        capture_output=True, text=True, errors="replace", timeout=300)
    req: Counter = Counter()
    resp: Counter = Counter()
    for line in r.stdout.splitlines():
        sport, dport, methods, uris, codes = (line.split("\t") + [""] * 5)[:5]
        # a tunnelled segment lists the inner TCP header last
        ports = tuple(sorted((int(sport.split(_AGG)[-1]), int(dport.split(_AGG)[-1]))))
        ms = methods.split(_AGG) if methods else []
        us = uris.split(_AGG) if uris else []
        for i, m in enumerate(ms):
            req[(ports, m, us[i] if i < len(us) else "")] += 1
        for c in codes.split(_AGG) if codes else []:
            resp[(ports, int(c))] += 1
    return req, resp


@cache
def tshark_lists() -> dict[str, Lists]:
    with ThreadPoolExecutor(max_workers=(os.cpu_count() or 2) * 2) as ex:
        return dict(zip(FILES, ex.map(_tshark, FILES)))


def _shown(e: Exchange) -> bool:
    """Would tshark show this response (see the module docstring)?"""
    if e.response is None or "gap" in e.flags:
        return False
    return e.response.complete or "malformed" in e.flags or "truncated" in e.flags


def our_lists(rel: str) -> Lists:
    exs: list[Exchange] = []
    run_replay([str(CORPUS / rel)], on_exchange=exs.append)
    req: Counter = Counter()
    resp: Counter = Counter()
    for e in exs:
        upgraded = "h2c_upgrade" in e.flags
        if e.protocol == "http/2" and not upgraded:
            continue
        ports = tuple(sorted((e.client[1], e.server[1])))
        if e.method:
            req[(ports, e.method, e.target.split(" ", 1)[0])] += 1
        for f in e.flags:
            if f.startswith("interim_"):
                resp[(ports, int(f[8:]))] += 1
        if upgraded:
            resp[(ports, 101)] += 1
        elif _shown(e):
            resp[(ports, e.status)] += 1
    return req, resp


def _counts(lists: Lists) -> tuple[int, int]:
    return sum(lists[0].values()), sum(lists[1].values())


def test_corpus_is_present() -> None:
    if not CORPUS.is_dir():
        pytest.skip(f"{CORPUS} not present: the shared corpus is laid beside the checkout")
    assert len(FILES) > 800


@pytest.mark.skipif(not have("tshark"), reason="tshark not installed (scripts/setup installs it)")
@pytest.mark.parametrize("rel", FILES)
def test_http1_matches_tshark(rel: str) -> None:
    ours, theirs = our_lists(rel), tshark_lists()[rel]
    if rel in KNOWN:
        k_ours, k_theirs, why = KNOWN[rel]
        assert (_counts(ours), _counts(theirs)) == (k_ours, k_theirs), why
        assert ours != theirs, f"{rel} now agrees with tshark: remove it from KNOWN"
    else:
        assert ours == theirs, (
            f"{rel}: requests only ours {dict(ours[0] - theirs[0])}, only tshark's "
            f"{dict(theirs[0] - ours[0])}; responses only ours {dict(ours[1] - theirs[1])}, "
            f"only tshark's {dict(theirs[1] - ours[1])}")


def test_known_differences_are_still_files() -> None:
    missing = [k for k in KNOWN if not (CORPUS / k).exists()]
    assert not missing or not CORPUS.is_dir(), missing


if __name__ == "__main__":  # list today's differences in KNOWN's format
    for rel, theirs in tshark_lists().items():
        ours = our_lists(rel)
        if ours != theirs:
            print(f'    "{rel}": ({_counts(ours)}, {_counts(theirs)}, "?"),'
                  f"  # ours-tshark {dict(ours[0] - theirs[0])} {dict(ours[1] - theirs[1])}"
                  f" tshark-ours {dict(theirs[0] - ours[0])} {dict(theirs[1] - ours[1])}")
