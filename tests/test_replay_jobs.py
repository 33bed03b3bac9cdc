"""``replay --jobs 2``: the parsers in a child process, correlation and spans here. The
output must be the one the single process gives, byte for byte, on real captures; errors in
the child must come back as the same clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SHARED
from sniffer.errors import WirespanError
from sniffer.exchange import Exchange, Message, pack, unpack
from sniffer.pipeline import run_replay
from sniffer.replay_jobs import MIN_AUTO_BYTES, auto_jobs

PCAPS = ROOT / "pcaps"
BENCH = SHARED / "bench" / "bench.pcap"
# several capture points at once (the legs of one request at every hop), plain and mTLS
SETS = {
    "chain": sorted(str(p) for p in (PCAPS / "chain").glob("*.pcap")),
    "mtls": sorted(str(p) for p in (PCAPS / "mtls").glob("*.pcap")),
    "mtls-concurrent": sorted(str(p) for p in (PCAPS / "mtls-concurrent").glob("*.pcap")),
    "grpc": sorted(str(p) for p in (PCAPS / "grpc").glob("*.pcap")),
    "h2": sorted(str(p) for p in (PCAPS / "h2").glob("*.pcap")),
    "sample": [str(PCAPS / "sample-http1.pcap")],
}


def wirespan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sniffer", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)


def _summary(text: str) -> dict:
    d = json.loads(text)
    for k in ("elapsed_s", "packets_per_s", "jobs"):
        d.pop(k, None)
    return d


@pytest.mark.parametrize("name", sorted(SETS))
def test_two_processes_write_what_one_writes(name: str, tmp_path: Path) -> None:
    files = SETS[name]
    assert files, f"no captures for {name}"
    out = {}
    for jobs in ("1", "2"):
        spans = tmp_path / f"spans{jobs}.jsonl"
        r = wirespan("replay", *files, "--jobs", jobs, "--spans", "all", "-o", str(spans),
                     "--json")
        assert r.returncode == 0, r.stderr
        out[jobs] = (spans.read_bytes(), json.loads(r.stdout))
    assert out["2"][1].get("jobs") == 2 and "jobs" not in out["1"][1]
    one, two = out["1"], out["2"]
    assert one[0], "no spans at all: the comparison would prove nothing"
    assert two[0] == one[0]
    assert _summary(json.dumps(two[1])) == _summary(json.dumps(one[1]))
    assert one[1]["packets"] > 0 and one[1]["exchanges"]


def test_mesh_hops_survive_the_pipe() -> None:
    """TLS sessions cross the pipe too: the mesh hops of the mTLS lab come out of both."""
    hops: dict[int, list] = {1: [], 2: []}
    for jobs in (1, 2):
        run_replay(SETS["mtls"], jobs=jobs, on_mesh=hops[jobs].append)
    assert hops[1], "the mTLS captures have mesh hops"
    key = [(h.outbound_address, h.inbound_address, h.outbound.request_ns,
            h.inbound.request_ns if h.inbound else None) for h in hops[1]]
    assert [(h.outbound_address, h.inbound_address, h.outbound.request_ns,
             h.inbound.request_ns if h.inbound else None) for h in hops[2]] == key


def test_capture_points_keep_their_identity() -> None:
    """Exchanges from one interface share one CapturePoint object in this process (the
    correlator tells observations apart by it)."""
    seen: list[Exchange] = []
    s = run_replay(SETS["chain"], jobs=2, on_exchange=seen.append)
    assert seen and s.extra["jobs"] == 2
    by_name: dict[str, set[int]] = {}
    for ex in seen:
        by_name.setdefault(ex.point.name, set()).add(id(ex.point))
    assert len(by_name) == len(SETS["chain"])
    assert all(len(ids) == 1 for ids in by_name.values()), by_name
    assert set(s.interfaces) == set(by_name)


def test_count_stops_at_the_same_packet(tmp_path: Path) -> None:
    files = SETS["mtls-concurrent"]
    n = run_replay(files).packets // 2
    one = run_replay(files, count=n, jobs=1)
    two = run_replay(files, count=n, jobs=2)
    assert one.packets == two.packets == n
    assert one.extra["exchanges"] == two.extra["exchanges"]
    assert one.stats.counts == two.stats.counts


def test_pack_round_trip() -> None:
    ex = Exchange(7, "pt", (b"\x7f\x00\x00\x01", 40000), (b"\x7f\x00\x00\x02", 8080),
                  "http/2", "POST", "/a.B/C?x=1", "svc:8080", "http", 200,
                  Message(1, 2, [("content-type", "application/grpc")], [], 5, True),
                  Message(3, 4, [("x", "y")], [("grpc-status", "0")], 6, True),
                  {"reset"}, (b"\x0a\x00\x00\x01", 80), 3, 0, "", 10, 11)
    back = unpack(pack(ex, 0), "pt2")
    for name in Exchange.__slots__:
        if name in ("request", "response"):
            for m in Message.__slots__:
                assert getattr(getattr(back, name), m) == getattr(getattr(ex, name), m)
        elif name == "point":
            assert back.point == "pt2"
        else:
            assert getattr(back, name) == getattr(ex, name), name
    bare = Exchange(1, None, (b"\x01\x02\x03\x04", 1), (b"\x01\x02\x03\x05", 2), "http/1.1")
    again = unpack(pack(bare, -1), None)
    assert again.response is None and again.flags == set() and again.request.headers == []


def test_an_error_in_the_child_comes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    from sniffer import pipeline

    def broken(self, *a, **k):  # (forked: the child runs the patched engine)
        raise WirespanError("cannot read the thing", "fix the thing")

    monkeypatch.setattr(pipeline.Engine, "run", broken)
    with pytest.raises(WirespanError) as e:
        run_replay(SETS["sample"], jobs=2)
    assert e.value.message == "cannot read the thing" and e.value.hint == "fix the thing"

    def crash(self, *a, **k):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(pipeline.Engine, "run", crash)
    with pytest.raises(WirespanError, match="the parsing process failed: ZeroDivisionError"):
        run_replay(SETS["sample"], jobs=2)


def test_a_child_that_dies_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from sniffer import pipeline

    monkeypatch.setattr(pipeline.Engine, "run", lambda *a, **k: os._exit(3))
    with pytest.raises(WirespanError, match=r"exited without finishing \(exit code 3\)"):
        run_replay(SETS["sample"], jobs=2)


def test_jobs_option(tmp_path: Path) -> None:
    sample = SETS["sample"][0]
    for bad, msg in (("3", "--jobs must be 1 or 2"), ("x", "--jobs must be a number")):
        r = wirespan("replay", sample, "--jobs", bad)
        assert r.returncode == 2 and msg in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "sniffer", "replay", "-", "--jobs", "2"],
                       input=b"", capture_output=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and b"standard input" in r.stderr
    r = wirespan("replay", sample, "--json")  # auto: a small file stays in one process
    assert r.returncode == 0 and "jobs" not in json.loads(r.stdout)
    assert "--jobs" in wirespan("replay", "--help").stdout


def test_auto_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small = tmp_path / "small.pcap"
    small.write_bytes(b"\0" * 100)
    big = tmp_path / "big.pcap"
    with open(big, "wb") as f:
        f.truncate(MIN_AUTO_BYTES)  # sparse
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert auto_jobs([str(small)]) == 1
    assert auto_jobs([str(big)]) == 2
    assert auto_jobs([str(big), "-"]) == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert auto_jobs([str(big)]) == 1


@pytest.mark.corpus
@pytest.mark.skipif(not BENCH.exists(), reason="needs ../shared/bench/bench.pcap")
def test_bench_prefix_with_progress() -> None:
    """The first 100,000 packets of the benchmark capture (HTTP/1, h2c, gRPC through
    proxies): hops, exchanges and counters agree, and progress arrives from the child."""
    seen: list[tuple[int, int, int]] = []
    two = run_replay([str(BENCH)], count=100_000, jobs=2,
                     progress=lambda p, d, t: seen.append((p, d, t)))
    one = run_replay([str(BENCH)], count=100_000, jobs=1)
    assert one.packets == two.packets == 100_000
    assert one.stats.counts == two.stats.counts
    assert {k: v for k, v in two.extra.items() if k != "jobs"} == one.extra
    assert one.extra["proxies"] and one.extra["exchanges"]["http/2"] > 0
    assert [p for p, _, _ in seen] == [65_536]
    assert 0 < seen[0][1] < seen[0][2] == BENCH.stat().st_size
