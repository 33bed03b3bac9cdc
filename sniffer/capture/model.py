"""Where a packet was seen, and the link types we decode."""

from __future__ import annotations

from dataclasses import dataclass, field

# LINKTYPE_* values (https://www.tcpdump.org/linktypes.html) -> short names.
LINKTYPE_NAMES: dict[int, str] = {
    0: "null",
    1: "ethernet",
    12: "raw",  # DLT_RAW on most BSDs, written as-is by some tools
    14: "raw",  # DLT_RAW on OpenBSD
    101: "raw",
    104: "c-hdlc",
    108: "loop",
    113: "linux-sll",
    105: "ieee802.11",
    127: "radiotap",
    239: "nflog",
    228: "ipv4",
    229: "ipv6",
    276: "linux-sll2",
}


def linktype_name(linktype: int) -> str:
    return LINKTYPE_NAMES.get(linktype, f"linktype-{linktype}")


@dataclass(eq=False, slots=True)
class CapturePoint:
    """One interface of one source (a pcap file, a pcapng IDB, or a live socket).

    Compared by identity: it is part of every flow key, so one TCP connection seen on two
    interfaces (or at both ends of a veth pair) stays two observations.
    """

    source: str  # file name or "live"
    interface: str  # interface name when known, else "" for a classic pcap
    linktype: int
    namespace: str = ""
    snaplen: int = 0
    index: int = field(default=0)
    packets: int = 0
    _subs: dict[int, CapturePoint] | None = None

    def sub(self, ifindex: int) -> CapturePoint:
        """The capture point of one interface inside an ``-i any`` (SLL2) capture."""
        subs = self._subs
        if subs is None:
            subs = self._subs = {}
        p = subs.get(ifindex)
        if p is None:
            label = f"{self.interface}#{ifindex}" if self.interface else f"ifindex{ifindex}"
            p = subs[ifindex] = CapturePoint(self.source, label, self.linktype, self.namespace,
                                             self.snaplen)
        return p

    def subs(self) -> list[CapturePoint]:
        return list((self._subs or {}).values())

    @property
    def name(self) -> str:
        parts = [p for p in (self.namespace, self.interface) if p]
        label = "/".join(parts) if parts else ""
        return f"{self.source}:{label}" if label else self.source
