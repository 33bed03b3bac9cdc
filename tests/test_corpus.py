"""Every public capture in ../shared/corpus replays without a crash, and its TCP connection
count matches tshark's (`tshark -q -z conv,tcp`), an independent oracle.

tshark runs once per file, in parallel threads, on first use (about a minute on 2 cores).
"""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import pytest

from conftest import CORPUS, have
from sniffer.pipeline import run_replay

pytestmark = pytest.mark.corpus

_EXTS = (".pcap", ".pcapng", ".cap", ".gz")
FILES = sorted(
    str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*")
    if p.is_file() and ".expected" not in p.name and p.name.endswith(_EXTS)
) if CORPUS.is_dir() else []

# Files where we count differently from tshark on purpose: (ours, tshark) and why. A change
# in either number fails the test, so each stays an explained, deliberate difference.
KNOWN: dict[str, tuple[int, int, str]] = {
    "arkime/tcp_handshake_synthetic.pcap": (
        17, 16, "crafted handshakes: a SYN retried with a new ISN is a new connection attempt"),
    "ndpi/ndpi_match_string_subprotocol__error.pcapng": (
        2, 1, "the 4-tuple is reused an hour after its FIN with a new ISN: two connections"),
    "packetbeat/wsgi_drum.pcap": (
        18, 16, "packets duplicated and out of time order by 30 s; late copies of two "
                "connections outlive their tombstones"),
    "suricata-verify/bug-3286-02-linux-evasion.pcap": (
        2, 1, "a forged RST before the SYN-ACK ends the first connection for us"),
    "suricata-verify/transform-base64-7296.pcap": (
        8, 5, "crafted timestamps jump by -65,536 s and +71 million s: idle eviction by "
              "capture time splits connections that tshark, ignoring time, keeps whole"),
    "suricata-verify/bug-3286-03-windows-evasion.pcap": (
        2, 1, "a forged RST before the SYN-ACK ends the first connection for us"),
}


def _tshark_count(rel: str) -> int:
    r = subprocess.run(["tshark", "-n", "-r", str(CORPUS / rel), "-q", "-z", "conv,tcp"],
                       capture_output=True, text=True, timeout=120)
    return sum(1 for line in r.stdout.splitlines() if "<->" in line)


@cache
def tshark_counts() -> dict[str, int]:
    with ThreadPoolExecutor(max_workers=(os.cpu_count() or 2) * 2) as ex:
        return dict(zip(FILES, ex.map(_tshark_count, FILES)))


def test_corpus_is_present() -> None:
    if not CORPUS.is_dir():
        pytest.skip(f"{CORPUS} not present: the shared corpus is laid beside the checkout")
    assert len(FILES) > 800


@pytest.mark.skipif(not have("tshark"), reason="tshark not installed (scripts/setup installs it)")
@pytest.mark.parametrize("rel", FILES)
def test_replay_matches_tshark(rel: str) -> None:
    summary = run_replay([str(CORPUS / rel)])
    d = summary.to_dict()
    assert d["packets"] > 0 or rel.endswith(".gz")
    ours, theirs = d["flows"], tshark_counts()[rel]
    if rel in KNOWN:
        k_ours, k_theirs, why = KNOWN[rel]
        assert (ours, theirs) == (k_ours, k_theirs), why
    else:
        assert ours == theirs, f"{rel}: wirespan {ours} TCP connections, tshark {theirs}"


def test_known_differences_are_still_files() -> None:
    missing = [k for k in KNOWN if not (CORPUS / k).exists()]
    assert not missing or not CORPUS.is_dir(), missing
