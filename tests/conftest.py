"""Shared fixtures: scapy-built TCP conversations written to real pcap files, and a recording
stream consumer that keeps every data/gap/end event the reassembler delivers."""

from __future__ import annotations

import os
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest

os.environ.setdefault("SCAPY_USE_LIBPCAP", "no")
from scapy.layers.inet import IP, TCP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402
from scapy.utils import PcapWriter  # noqa: E402

from sniffer.pipeline import Summary, run_replay  # noqa: E402
from sniffer.tcp import Connection  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
CORPUS = SHARED / "corpus" / "public"
T0 = 1_700_000_000.0
# Explicit MACs: without them scapy looks up routes and ARP for every Ether() it builds.
MAC = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}


class Rec:
    """A StreamConsumer that records what it is given."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def data(self, chunk: bytes, ts: int) -> None:
        self.events.append(("data", bytes(chunk), ts))

    def gap(self, length: int, ts: int) -> None:
        self.events.append(("gap", length, ts))

    def end(self, reason: str, ts: int) -> None:
        self.events.append(("end", reason, ts))

    @property
    def stream(self) -> bytes:
        return b"".join(e[1] for e in self.events if e[0] == "data")

    @property
    def gaps(self) -> list[int]:
        return [e[1] for e in self.events if e[0] == "gap"]

    @property
    def end_reason(self) -> str | None:
        ends = [e[1] for e in self.events if e[0] == "end"]
        assert len(ends) <= 1, ends
        return ends[0] if ends else None


@dataclass
class Recorded:
    conn: Connection
    client: Rec
    server: Rec  # what the server sent


@dataclass
class Recorder:
    conns: list[Recorded] = field(default_factory=list)

    def __call__(self, conn: Connection) -> tuple[Rec, Rec]:
        r = Recorded(conn, Rec(), Rec())
        self.conns.append(r)
        return r.client, r.server


def replay(*paths: Path | str, **kw: object) -> tuple[Summary, Recorder]:
    rec = Recorder()
    summary = run_replay([str(p) for p in paths], factory=rec, **kw)  # type: ignore[arg-type]
    return summary, rec


class Conv:
    """Builds the packets of one TCP conversation with explicit sequence numbers.

    ``c(data)``/``s(data)`` send the next bytes from client/server; ``at=`` sends bytes at a
    given stream offset (for out-of-order, overlap and retransmission cases) without moving
    the sender's next offset.
    """

    def __init__(self, cli: tuple[str, int] = ("10.0.0.1", 40000),
                 srv: tuple[str, int] = ("10.0.0.2", 8080), isn_c: int = 1000,
                 isn_s: int = 500000, t0: float = T0, step: float = 0.001) -> None:
        self.cli, self.srv = cli, srv
        self.isn = {"c": isn_c, "s": isn_s}
        self.off = {"c": 0, "s": 0}
        self.t = t0
        self.step = step
        self.pkts: list = []
        self.v6 = ":" in cli[0]

    def _ip(self, who: str):
        a, b = (self.cli, self.srv) if who == "c" else (self.srv, self.cli)
        ip = IPv6(src=a[0], dst=b[0]) if self.v6 else IP(src=a[0], dst=b[0])
        return ip, a[1], b[1]

    def pkt(self, who: str, flags: str, data: bytes = b"", at: int | None = None,
            seq: int | None = None, ack: int | None = None):
        ip, sport, dport = self._ip(who)
        other = "s" if who == "c" else "c"
        off = self.off[who] if at is None else at
        if seq is None:
            seq = (self.isn[who] + 1 + off) & 0xFFFFFFFF
            if "S" in flags:
                seq = self.isn[who]
        if ack is None:
            ack = (self.isn[other] + 1 + self.off[other]) & 0xFFFFFFFF
        p = ip / TCP(sport=sport, dport=dport, flags=flags, seq=seq,
                     ack=ack if "A" in flags else 0, window=65535)
        if data:
            p = p / data
        self.t += self.step
        p.time = self.t
        if at is None and data:
            self.off[who] += len(data)
        self.pkts.append(p)
        return p

    def handshake(self) -> Conv:
        self.pkt("c", "S")
        self.pkt("s", "SA")
        self.pkt("c", "A")
        return self

    def c(self, data: bytes, **kw: object) -> Conv:
        self.pkt("c", "PA", data, **kw)  # type: ignore[arg-type]
        return self

    def s(self, data: bytes, **kw: object) -> Conv:
        self.pkt("s", "PA", data, **kw)  # type: ignore[arg-type]
        return self

    def fin(self, who: str) -> Conv:
        self.pkt(who, "FA")
        self.off[who] += 0  # FIN is not data; the ack side counts it below
        return self

    def close(self) -> Conv:
        """FIN from both sides and the last ACK (ack numbers include the FINs)."""
        self.pkt("c", "FA")
        ip_ack = (self.isn["c"] + 2 + self.off["c"]) & 0xFFFFFFFF
        self.pkt("s", "FA", ack=ip_ack)
        self.pkt("c", "A", seq=(self.isn["c"] + 2 + self.off["c"]) & 0xFFFFFFFF,
                 ack=(self.isn["s"] + 2 + self.off["s"]) & 0xFFFFFFFF)
        return self

    def l2(self, frame_fn=None) -> list:
        """Packets with a link layer: Ethernet by default."""
        fn = frame_fn or (lambda p: Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / p)
        out = []
        for p in self.pkts:
            f = fn(p)
            f.time = p.time
            out.append(f)
        return out


def write_pcap(path: Path, pkts: list, linktype: int | None = None, nano: bool = False,
               endianness: str = "", snaplen: int = 65535, cut: bool = False) -> Path:
    """Write packets with scapy's writer; ``cut`` truncates frames to ``snaplen`` the way
    tcpdump -s does (captured length < wire length), which scapy does not do itself."""
    if cut:
        order = endianness or "<"
        out = struct.pack(order + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype or 1)
        for p in pkts:
            raw = bytes(p)
            t = int(round(float(p.time) * 1e6))
            out += struct.pack(order + "IIII", t // 10**6, t % 10**6, min(len(raw), snaplen),
                               len(raw)) + raw[:snaplen]
        path.write_bytes(out)
        return path
    w = PcapWriter(str(path), linktype=linktype, nano=nano, endianness=endianness,
                   snaplen=snaplen, sync=True)
    for p in pkts:
        w.write(p)
    w.close()
    return path


def pcapng_bytes(interfaces: list[tuple[int, str, int]], packets: list[tuple[int, int, bytes]],
                 order: str = "<") -> bytes:
    """A pcapng file: ``interfaces`` = [(linktype, name, tsresol byte)], ``packets`` =
    [(interface id, timestamp in that interface's units, frame)]. Written by hand so tests
    control every field (two interfaces, different resolutions, both byte orders)."""

    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        n = len(body) + 12
        return struct.pack(order + "II", btype, n) + body + struct.pack(order + "I", n)

    def opt(code: int, val: bytes) -> bytes:
        return struct.pack(order + "HH", code, len(val)) + val + b"\0" * (-len(val) % 4)

    out = block(0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))
    for lt, name, res in interfaces:
        opts = opt(2, name.encode()) + opt(9, bytes([res])) + opt(0, b"")
        out += block(1, struct.pack(order + "HHI", lt, 0, 262144) + opts)
    for ifid, ts, frame in packets:
        out += block(6, struct.pack(order + "IIIII", ifid, ts >> 32, ts & 0xFFFFFFFF,
                                    len(frame), len(frame)) + frame)
    return out


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path
