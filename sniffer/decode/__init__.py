"""Packet decoding: link layer -> IPv4/IPv6 -> TCP segment.

``Decoder.decode(ts_ns, linktype, frame, wire_len)`` returns a ``Segment`` tuple for a TCP
packet and ``None`` for anything else; everything that is not returned is counted in
``Stats`` under stage ``"decode"`` (errors: ``truncated_link``, ``bad_ip_header`` …) or
``"skipped"`` (well-formed but not for us: ``udp``, ``icmp``, ``arp`` …).

This is the per-packet hot path: one function, precompiled structs, no objects per packet
except the result tuple and the payload slice. TCP checksums are not verified (they are
usually offloaded, so captures on the sending host carry garbage there), IP header checksums
neither, for the same reason.

Segment layout (a plain tuple, fastest to build and unpack):
``(src, sport, dst, dport, seq, ack, flags, payload, missing, options)`` where ``src``/``dst``
are 4- or 16-byte ``bytes``, ``payload`` the captured TCP payload, ``missing`` the number of
payload bytes the IP header claims but the snap length cut off, and ``options`` the raw TCP
options of SYN segments (``b""`` otherwise).
"""

from __future__ import annotations

import struct

from ..stats import Stats
from .frag import FragmentReassembler

__all__ = ["ETH_IP4_TCP", "Decoder", "Segment", "FIN", "SYN", "RST", "PSH", "ACK", "tcp_options",
           "format_ip"]

Segment = tuple[bytes, int, bytes, int, int, int, int, bytes, int, bytes]

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

_IP4 = struct.Struct(">BBHHHBBH4s4s")
_IP6 = struct.Struct(">IHBB16s16s")
_TCP = struct.Struct(">HHIIBB")
_H = struct.Struct(">H")
# One unpack for the commonest packet: Ethernet type + IPv4 version/IHL + TOS as one int
# (0x080045xx), IPv4 total length, flags/fragment offset + TTL + protocol as one int (TCP and
# not a fragment: ``& 0x3FFF00FF == 6``), both addresses as one 8-byte string and both ports
# as one int (together: the flow key), then TCP sequence, ack, and data offset + flags.
ETH_IP4_TCP = struct.Struct(">12xIH2xI2x8sIIIH").unpack_from
_HH = struct.Struct(">HH")
_I = struct.Struct(">I")

ETH_IPV4, ETH_IPV6 = 0x0800, 0x86DD
MAX_TUNNEL_DEPTH = 4
_VLAN_TYPES = frozenset((0x8100, 0x88A8, 0x9100, 0x9200))
_V6_EXT = frozenset((0, 43, 60, 135, 139, 140))  # length in 8-octet units, excluding the first 8
_NULL_V6 = frozenset((10, 24, 28, 30))  # AF_INET6 on Linux, BSDs, FreeBSD, macOS
_IP_PROTO_NAMES = {1: "icmp", 17: "udp", 58: "icmpv6", 50: "esp", 47: "gre", 132: "sctp",
                   2: "igmp", 59: "ipv6-no-next", 103: "pim", 112: "vrrp"}
_ETHERTYPE_NAMES = {0x0806: "arp", 0x88CC: "lldp", 0x8035: "rarp", 0x8847: "mpls",
                    0x8864: "pppoe", 0x888E: "eapol", 0x88E5: "macsec", 0x9000: "loopback"}


def format_ip(addr: bytes) -> str:
    import ipaddress

    return str(ipaddress.ip_address(addr))


def tcp_options(opts: bytes) -> dict[str, int]:
    """MSS, window scale, SACK-permitted and timestamps from raw TCP options (RFC 9293 §3.2)."""
    out: dict[str, int] = {}
    i, n = 0, len(opts)
    while i < n:
        kind = opts[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= n or opts[i + 1] < 2 or i + opts[i + 1] > n:
            out["malformed"] = 1
            break
        length = opts[i + 1]
        body = opts[i + 2 : i + length]
        if kind == 2 and length == 4:
            out["mss"] = _H.unpack(body)[0]
        elif kind == 3 and length == 3:
            out["wscale"] = body[0]
        elif kind == 4:
            out["sack_permitted"] = 1
        elif kind == 8 and length == 10:
            out["tsval"] = _I.unpack(body[:4])[0]
        i += length
    return out


class Decoder:
    """Stateful only for IP fragments; counts everything it does not return."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.frags = FragmentReassembler(stats)
        self.snapped = 0

    def _err(self, reason: str) -> None:
        self.stats.add("decode", reason)

    def _skip(self, what: str) -> None:
        self.stats.add("skipped", what)

    def decode(self, ts: int, lt: int, buf: bytes, wirelen: int) -> Segment | None:
        n = len(buf)
        if n < wirelen:
            self.snapped += 1
        if lt == 1 and n >= 54:
            # Fast path: untagged Ethernet, IPv4 without options or fragmentation, TCP.
            l2l3, tot, fragproto, addrs, ports, seq, ack, offflags = ETH_IP4_TCP(buf)
            if l2l3 >> 8 == 0x080045 and fragproto & 0x3FFF00FF == 6:
                end = 14 + tot if tot else n
                pstart = 34 + ((offflags >> 12) << 2)
                flags = offflags & 0xFF
                if 54 <= pstart <= end <= n:
                    return (addrs[:4], ports >> 16, addrs[4:], ports & 0xFFFF, seq, ack, flags,
                            buf[pstart:end], 0,
                            buf[54:pstart] if flags & SYN and pstart > 54 else b"")
        # ---- link layer -> (ethertype, l3 offset)
        if lt == 1:
            return self._ether(ts, buf, 0, n, 0)
        if lt == 113:  # Linux cooked v1
            if n < 16:
                self._err("truncated_link")
                return None
            return self._l3(ts, buf[14] << 8 | buf[15], buf, 16, n, 0)
        if lt == 276:  # Linux cooked v2
            if n < 20:
                self._err("truncated_link")
                return None
            return self._l3(ts, buf[0] << 8 | buf[1], buf, 20, n, 0)
        if lt == 101 or lt == 12 or lt == 14 or lt == 228 or lt == 229:  # raw IP
            return self._raw_ip(ts, buf, 0, n, 0)
        if lt == 0 or lt == 108:  # BSD NULL (host byte order) / LOOP (network byte order)
            if n < 4:
                self._err("truncated_link")
                return None
            fam = buf[3] if lt == 108 else (buf[0] or buf[3])
            et = ETH_IPV4 if fam == 2 else ETH_IPV6 if fam in _NULL_V6 else 0
            return self._l3(ts, et, buf, 4, n, 0)
        if lt == 104:  # Cisco HDLC
            if n < 4:
                self._err("truncated_link")
                return None
            return self._l3(ts, buf[2] << 8 | buf[3], buf, 4, n, 0)
        if lt == 239:
            return self._nflog(ts, buf)
        if lt == 127:
            return self._radiotap(ts, buf)
        if lt == 105:
            return self._wifi(ts, buf, 0)
        self._skip(f"linktype-{lt}")
        return None

    def _ether(self, ts: int, buf: bytes, off: int, n: int, depth: int) -> Segment | None:
        if n < off + 14:
            self._err("truncated_link")
            return None
        return self._l3(ts, buf[off + 12] << 8 | buf[off + 13], buf, off + 14, n, depth)

    def _l3(self, ts: int, et: int, buf: bytes, off: int, n: int, depth: int) -> Segment | None:
        """Dispatch on an ethertype at ``off``: VLAN tags, LLC/SNAP, MPLS, PPPoE, then IP."""
        for _ in range(8):
            if et == ETH_IPV4:
                return self._ipv4(ts, buf, off, n, depth)
            if et == ETH_IPV6:
                return self._ipv6(ts, buf, off, n, depth)
            if et in _VLAN_TYPES:
                if n < off + 4:
                    self._err("truncated_link")
                    return None
                et = buf[off + 2] << 8 | buf[off + 3]
                off += 4
            elif et <= 1500:  # 802.3 length field: LLC, and IP only behind SNAP
                if n < off + 8 or buf[off : off + 3] != b"\xaa\xaa\x03":
                    self._skip("llc")
                    return None
                et = buf[off + 6] << 8 | buf[off + 7]
                off += 8
            elif et == 0x8847 or et == 0x8848:  # MPLS: labels until the bottom of the stack
                while True:
                    if n < off + 4:
                        self._err("truncated_link")
                        return None
                    bottom = buf[off + 2] & 1
                    off += 4
                    if bottom:
                        break
                return self._raw_ip(ts, buf, off, n, depth, "mpls-non-ip")
            elif et == 0x8864:  # PPPoE session: 6-byte header, then PPP
                return self._ppp(ts, buf, off + 6, n, depth)
            else:
                self._skip(_ETHERTYPE_NAMES.get(et, "other-l3"))
                return None
        self._err("too_many_link_headers")
        return None

    def _ppp(self, ts: int, buf: bytes, off: int, n: int, depth: int) -> Segment | None:
        """PPP: optional address/control (ff 03), then a 1- or 2-byte protocol (RFC 1661 §6.5
        protocol-field compression: an odd first byte is the whole field)."""
        if n >= off + 2 and buf[off] == 0xFF and buf[off + 1] == 0x03:
            off += 2
        if n < off + 1:
            self._err("truncated_link")
            return None
        if buf[off] & 1:
            proto, off = buf[off], off + 1
        elif n >= off + 2:
            proto, off = buf[off] << 8 | buf[off + 1], off + 2
        else:
            self._err("truncated_link")
            return None
        if proto == 0x21:
            return self._ipv4(ts, buf, off, n, depth)
        if proto == 0x57:
            return self._ipv6(ts, buf, off, n, depth)
        self._skip("ppp-non-ip")
        return None

    def _l2tp(self, ts: int, buf: bytes, p: int, end: int, depth: int) -> Segment | None:
        """L2TPv2 data messages (RFC 2661 §3.1) carrying PPP."""
        if end - p < 6:
            self._err("truncated_tunnel")
            return None
        flags = buf[p] << 8 | buf[p + 1]
        if flags & 0x8000 or flags & 0x000F != 2:  # control message, or not version 2
            self._skip("l2tp")
            return None
        q = p + 2 + (2 if flags & 0x4000 else 0) + 4 + (4 if flags & 0x0800 else 0)
        if flags & 0x0200:
            if end - q < 2:
                self._err("truncated_tunnel")
                return None
            q += 2 + (buf[q] << 8 | buf[q + 1])
        return self._ppp(ts, buf, q, end, depth)

    def _raw_ip(self, ts: int, buf: bytes, off: int, n: int, depth: int,
                other: str = "not-ip") -> Segment | None:
        if n <= off:
            self._err("truncated_link")
            return None
        v = buf[off] >> 4
        if v == 4:
            return self._ipv4(ts, buf, off, n, depth)
        if v == 6:
            return self._ipv6(ts, buf, off, n, depth)
        self._skip(other)
        return None

    def _ipv4(self, ts: int, buf: bytes, off: int, n: int, depth: int = 0) -> Segment | None:
        if n < off + 20:
            self._err("truncated_ip")
            return None
        vihl, _tos, tot, ident, frag, _ttl, proto, _sum, src, dst = _IP4.unpack_from(buf, off)
        ihl = (vihl & 15) << 2
        if vihl >> 4 != 4 or ihl < 20:
            self._err("bad_ip_header")
            return None
        if tot:
            if tot < ihl:
                self._err("bad_ip_header")
                return None
            end = off + tot
        else:
            end = n  # total length 0: TCP segmentation offload on the capturing host
        missing = 0
        if end > n:
            missing = end - n
            end = n
        l4 = off + ihl
        if l4 > end:
            self._err("truncated_ip")
            return None
        if frag & 0x3FFF:  # MF set or a non-zero offset
            if missing:
                self._err("frag_snapped")
                return None
            whole = self.frags.add((4, src, dst, ident, proto), (frag & 0x1FFF) << 3,
                                   bool(frag & 0x2000), buf[l4:end], ts)
            if whole is None:
                return None
            buf, l4, end = whole, 0, len(whole)
        if proto == 6:
            return self._tcp(buf, l4, end, missing, src, dst)
        return self._inner(ts, proto, buf, l4, end, depth)

    def _inner(self, ts: int, proto: int, buf: bytes, p: int, end: int,
               depth: int) -> Segment | None:
        """A non-TCP IP payload: follow the tunnels a node sees (IPIP, 6in4, GRE/ERSPAN, VXLAN,
        Geneve, GRE-in-UDP, GTP-U, Teredo), at most ``MAX_TUNNEL_DEPTH`` deep."""
        if depth < MAX_TUNNEL_DEPTH:
            if proto == 4:
                return self._ipv4(ts, buf, p, end, depth + 1)
            if proto == 41:
                return self._ipv6(ts, buf, p, end, depth + 1)
            if proto == 47:
                return self._gre(ts, buf, p, end, depth + 1)
            if proto == 17 and end - p >= 8:
                sport, dport = _HH.unpack_from(buf, p)
                u = p + 8
                if dport == 4789 or sport == 4789 or dport == 8472:  # VXLAN (+ Linux's old port)
                    return self._ether(ts, buf, u + 8, end, depth + 1)
                if dport == 6081 and end - u >= 8:  # Geneve
                    optlen = (buf[u] & 0x3F) << 2
                    et = buf[u + 2] << 8 | buf[u + 3]
                    u += 8 + optlen
                    if et == 0x6558:
                        return self._ether(ts, buf, u, end, depth + 1)
                    return self._l3(ts, et, buf, u, end, depth + 1)
                if dport == 1701 and sport == 1701:  # L2TPv2
                    return self._l2tp(ts, buf, u, end, depth + 1)
                if dport == 4754:  # GRE-in-UDP (RFC 8086)
                    return self._gre(ts, buf, u, end, depth + 1)
                if (dport == 2152 or sport == 2152) and end - u >= 8:  # GTP-U
                    return self._gtpu(ts, buf, u, end, depth + 1)
                if (dport == 3544 or sport == 3544) and end > u and buf[u] >> 4 == 6:  # Teredo
                    return self._ipv6(ts, buf, u, end, depth + 1)
        self._skip(_IP_PROTO_NAMES.get(proto, "other-ip"))
        return None

    def _gre(self, ts: int, buf: bytes, p: int, end: int, depth: int) -> Segment | None:
        if end - p < 4:
            self._err("truncated_tunnel")
            return None
        flags, et = _HH.unpack_from(buf, p)
        p += 4 + 4 * (bool(flags & 0x8000) + bool(flags & 0x2000) + bool(flags & 0x1000))
        if et == 0x6558:  # transparent Ethernet bridging
            return self._ether(ts, buf, p, end, depth)
        if et == 0x88BE:  # ERSPAN: type II has an 8-byte header (and the sequence bit set)
            return self._ether(ts, buf, p + 8 if flags & 0x1000 else p, end, depth)
        if et == 0x22EB:  # ERSPAN type III: 12 bytes, +8 with the optional subheader
            if end - p < 12:
                self._err("truncated_tunnel")
                return None
            return self._ether(ts, buf, p + 12 + (8 if buf[p + 11] & 1 else 0), end, depth)
        return self._l3(ts, et, buf, p, end, depth)

    def _gtpu(self, ts: int, buf: bytes, p: int, end: int, depth: int) -> Segment | None:
        flags, mtype = buf[p], buf[p + 1]
        if flags >> 5 != 1 or mtype != 0xFF:  # GTPv1, G-PDU only
            self._skip("gtp")
            return None
        q = p + 8
        if flags & 0x07:
            q += 4
            if flags & 0x04:  # extension headers: length in 4-octet units; next type 0 ends
                nxt = buf[q - 1] if q <= end else 0
                while nxt and q < end:
                    ln = buf[q] << 2
                    if not ln or q + ln > end:
                        self._err("truncated_tunnel")
                        return None
                    nxt = buf[q + ln - 1]
                    q += ln
        return self._raw_ip(ts, buf, q, end, depth, "gtp")

    def _radiotap(self, ts: int, buf: bytes) -> Segment | None:
        if len(buf) < 4:
            self._err("truncated_link")
            return None
        return self._wifi(ts, buf, buf[2] | buf[3] << 8)

    def _wifi(self, ts: int, buf: bytes, off: int) -> Segment | None:
        """An 802.11 data frame: MAC header, then LLC/SNAP. Protected frames are skipped."""
        n = len(buf)
        if n < off + 24:
            self._err("truncated_link")
            return None
        fc0, fc1 = buf[off], buf[off + 1]
        if (fc0 >> 2) & 3 != 2:
            self._skip("802.11-mgmt-ctrl")
            return None
        if fc1 & 0x40:
            self._skip("802.11-protected")
            return None
        if fc0 & 0x40:  # null function: no payload
            self._skip("802.11-null")
            return None
        hdr = 30 if fc1 & 3 == 3 else 24
        if fc0 & 0x80:  # QoS data
            hdr += 2
            if fc1 & 0x80:  # +HTC
                hdr += 4
        return self._l3(ts, 1500, buf, off + hdr, n, 0)  # 1500: "an LLC header follows"

    def _tcp(self, buf: bytes, l4: int, end: int, missing: int, src: bytes,
             dst: bytes) -> Segment | None:
        if end - l4 < 20:
            self._err("truncated_tcp")
            return None
        sport, dport, seq, ack, offb, flags = _TCP.unpack_from(buf, l4)
        doff = (offb >> 4) << 2
        pstart = l4 + doff
        if doff < 20 or pstart > end:
            self._err("truncated_tcp" if missing else "bad_tcp_header")
            return None
        opts = buf[l4 + 20 : pstart] if flags & SYN and doff > 20 else b""
        return (src, sport, dst, dport, seq, ack, flags, buf[pstart:end], missing, opts)

    def _ipv6(self, ts: int, buf: bytes, off: int, n: int, depth: int = 0) -> Segment | None:
        if n < off + 40:
            self._err("truncated_ip")
            return None
        vtf, plen, nh, _hlim, src, dst = _IP6.unpack_from(buf, off)
        if vtf >> 28 != 6:
            self._err("bad_ip_header")
            return None
        p = off + 40
        end = p + plen if plen else n  # 0: jumbogram or TSO
        missing = 0
        if end > n:
            missing = end - n
            end = n
        for _ in range(16):
            if nh == 6:
                return self._tcp(buf, p, end, missing, src, dst)
            if nh in _V6_EXT:
                if p + 2 > end:
                    self._err("truncated_ip")
                    return None
                nh, p = buf[p], p + ((buf[p + 1] + 1) << 3)
            elif nh == 51:  # AH: length in 4-octet units, minus 2
                if p + 2 > end:
                    self._err("truncated_ip")
                    return None
                nh, p = buf[p], p + ((buf[p + 1] + 2) << 2)
            elif nh == 44:  # Fragment
                if p + 8 > end:
                    self._err("truncated_ip")
                    return None
                nxt = buf[p]
                fo = _H.unpack_from(buf, p + 2)[0]
                ident = _I.unpack_from(buf, p + 4)[0]
                p += 8
                if fo & 0xFFF9:  # offset or M set: a real fragment (not an atomic one)
                    if missing:
                        self._err("frag_snapped")
                        return None
                    whole = self.frags.add((6, src, dst, ident, nxt), fo & 0xFFF8,
                                           bool(fo & 1), buf[p:end], ts)
                    if whole is None:
                        return None
                    buf, p, end = whole, 0, len(whole)
                nh = nxt
            else:
                return self._inner(ts, nh, buf, p, end, depth)
            if p > end:
                self._err("truncated_ip")
                return None
        self._err("bad_ip_header")  # more extension headers than any real stack sends
        return None

    def _nflog(self, ts: int, buf: bytes) -> Segment | None:
        """LINKTYPE_NFLOG: 4-byte header, then TLVs in host byte order; type 9 is the packet."""
        n = len(buf)
        if n < 4:
            self._err("truncated_link")
            return None
        fam = buf[0]
        for order in ("<", ">"):
            p = 4
            while p + 4 <= n:
                length, typ = struct.unpack_from(order + "HH", buf, p)
                if length < 4 or p + length > n:
                    break
                if typ & 0x7FFF == 9:
                    payload = buf[p + 4 : p + length]
                    if fam == 2:
                        return self._ipv4(ts, payload, 0, len(payload))
                    if fam == 10:
                        return self._ipv6(ts, payload, 0, len(payload))
                    self._skip("other-l3")
                    return None
                p += (length + 3) & ~3
        self._err("truncated_link")
        return None

    def close(self) -> None:
        self.frags.close()
        if self.snapped:
            self.stats.add("decode", "snapped_packets", self.snapped)
            self.snapped = 0
