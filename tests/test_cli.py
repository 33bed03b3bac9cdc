"""The `wirespan` command line: help, summary, --json, exit codes, errors that say what to do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, Conv, write_pcap
from sniffer.cli import main

SAMPLE = ROOT / "pcaps" / "sample-http1.pcap"


def wirespan(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sniffer", *args], capture_output=True,
                          text=stdin is None, input=stdin, cwd=ROOT, timeout=120)


def test_help_lists_replay() -> None:
    r = wirespan("--help")
    assert r.returncode == 0
    assert "replay" in r.stdout
    r = wirespan("replay", "--help")
    assert r.returncode == 0
    for opt in ("--json", "--count", "FILE", "examples:"):
        assert opt in r.stdout


def test_no_command_is_usage_error() -> None:
    r = wirespan()
    assert r.returncode == 2
    assert "usage:" in r.stderr


def test_bad_option_is_usage_error() -> None:
    assert wirespan("replay", "--nope", str(SAMPLE)).returncode == 2
    r = wirespan("replay", "-c", "-5", str(SAMPLE))
    assert r.returncode == 2 and "--count" in r.stderr


def test_bundled_sample_summary_table() -> None:
    r = wirespan("replay", str(SAMPLE))
    assert r.returncode == 0, r.stderr
    for field in ("packets", "TCP flows", "gaps", "link types", "capture span",
                  "decode errors", "packets/s"):
        assert field in r.stdout
    assert "ethernet" in r.stdout


def test_bundled_sample_json() -> None:
    r = wirespan("replay", "--json", str(SAMPLE))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    for key in ("packets", "bytes", "flows", "gaps", "link_types", "decode_errors",
                "capture", "packets_per_s"):
        assert key in d
    # made by scripts/make_sample_pcap.sh: 4 curl connections to nginx, both directions
    assert d["flows"] == 4 and d["gaps"] == 0
    assert d["link_types"] == {"ethernet": d["packets"]}
    assert d["decode_errors"] == {}
    assert d["tcp"] == {"connections": 4}  # a clean capture: no TCP anomalies at all


def test_stdin_is_read(tmp: Path) -> None:
    p = write_pcap(tmp / "x.pcap", Conv().handshake().c(b"hi").close().l2())
    r = wirespan("replay", "--json", "-", stdin=p.read_bytes())
    assert r.returncode == 0
    assert json.loads(r.stdout)["flows"] == 1


def test_not_a_capture_exits_1_with_a_fix(tmp: Path) -> None:
    bad = tmp / "notes.txt"
    bad.write_text("just some text\n")
    r = wirespan("replay", str(bad))
    assert r.returncode == 1
    assert "error:" in r.stderr and "not a pcap or pcapng" in r.stderr
    assert "hint:" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_file_exits_1(tmp: Path) -> None:
    r = wirespan("replay", str(tmp / "missing.pcap"))
    assert r.returncode == 1 and "no such file" in r.stderr


def test_truncated_capture_warns_and_succeeds(tmp: Path) -> None:
    p = write_pcap(tmp / "x.pcap", Conv().handshake().c(b"hello").close().l2())
    cut = tmp / "cut.pcap"
    cut.write_bytes(p.read_bytes()[:-5])
    r = wirespan("replay", str(cut))
    assert r.returncode == 0
    assert "warning:" in r.stderr and "cut short" in r.stderr


def test_main_returns_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--json", str(SAMPLE)]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["packets"] > 0


def test_progress_bar_when_forced(tmp: Path) -> None:
    r = wirespan("replay", "--progress", str(SAMPLE))
    assert r.returncode == 0
