"""Passive TLS: the record layer and the cleartext handshake of one connection, without keys.

Rules of this module (details and rationale in docs/tls.md)
-----------------------------------------------------------
* Sans-IO: ``TlsConnection`` is fed by the TCP layer through two stream consumers
  (``client_side``, ``server_side``: ``data``/``gap``/``end``) and hands one finished
  ``TlsSession`` to its sink per connection, when *both* directions have ended (the TCP layer
  ends both at close, eviction or capture end). Nothing is ever decrypted; no key material
  is read or kept. Every time is the timestamp of the packet that carried the byte.
* Records are framed from their 5-byte headers; only cleartext handshake and alert records
  are looked into. Application-data bodies are skipped by length, never copied.
* Per direction the first ``max_records`` records (or, ``rolling``, the latest) are kept in
  compact arrays (content type,
  length, first-byte ts, last-byte ts, flags); later ones are only counted. Application-data
  records are grouped into *bursts* (same direction, no record started by the other
  direction in between, each record's first byte within ``burst_gap_ns`` of the previous
  record's last byte); at most ``max_bursts`` are kept, the rest counted.
* Handshake complete: TLS <= 1.2 when both directions have sent ChangeCipherSpec and the
  (encrypted) handshake record after it (Finished): the time is the last byte of the later of
  those two records. TLS 1.3: the first application_data-typed record from the client after
  the server's first encrypted record (the client's Finished): the time is its last byte.
* TLS 1.3 hides ALPN (EncryptedExtensions), certificates and session tickets: ``alpn`` stays
  None. Its encrypted handshake records (the server's flight, the client's Finished) are
  flagged ``F_HANDSHAKE`` and kept out of bursts; NewSessionTicket and KeyUpdate records
  cannot be told from application data.
* Handshake messages are reassembled across records up to ``max_handshake`` bytes (64 KiB);
  only ClientHello and ServerHello are parsed, others are recorded by type and skipped.
* Gaps: a gap inside a record body keeps the framing (the record is flagged ``F_GAP``; if it
  was a cleartext handshake record, handshake parsing of that direction stops). A gap that
  covers a record header loses the framing: the direction resynchronises only on a plausible
  record header (type 20-24, the direction's record version) whose successor, at the
  offset its length announces, is plausible too; skipped bytes are counted.
* A record header that is not TLS where one must be marks the connection broken (counted
  ``broken_<reason>``); both directions stop parsing, bytes are still counted.
* Anomalies are counted in ``Stats`` under stage ``tls``; nothing raises out of this module.
"""

from __future__ import annotations

import re
import struct
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..stats import Stats

__all__ = [
    "TlsConfig", "TlsConnection", "TlsDirection", "TlsSession", "version_name",
    "CCS", "ALERT", "HANDSHAKE", "APPLICATION_DATA", "HEARTBEAT", "SSL2",
    "F_GAP", "F_PARTIAL", "F_HANDSHAKE", "F_EARLY",
]

# content types
CCS, ALERT, HANDSHAKE, APPLICATION_DATA, HEARTBEAT = 20, 21, 22, 23, 24
SSL2 = 128  # pseudo content type for an SSLv2-compatible ClientHello record
# record flags
F_GAP = 1  # bytes of this record were lost in a capture gap (its framing was kept)
F_PARTIAL = 2  # the direction ended (or lost sync) before the record's last byte
F_HANDSHAKE = 4  # part of the handshake (cleartext, or TLS 1.3 encrypted handshake)
F_EARLY = 8  # TLS 1.3 application data sent before the server's flight (0-RTT, presumed)

MAX_RECORD = (1 << 14) + 2048  # TLSCiphertext.length limit (RFC 5246 §6.2.3)
TLS13 = 0x0304
# ServerHello.random of a HelloRetryRequest: SHA-256("HelloRetryRequest"), RFC 8446 §4.1.3
HRR_RANDOM = bytes.fromhex(
    "cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")

_HDR = struct.Struct(">BHH")
_U16 = struct.Struct(">H")
# a plausible record header start: type 20..24, version 3.0..3.4
_PLAUSIBLE = re.compile(rb"[\x14-\x18]\x03[\x00-\x04]")

# direction states
SYNC, RESYNC, STOPPED = range(3)


def version_name(v: int) -> str:
    return {0x0300: "SSL 3.0", 0x0301: "TLS 1.0", 0x0302: "TLS 1.1", 0x0303: "TLS 1.2",
            0x0304: "TLS 1.3", 0x0002: "SSL 2.0"}.get(v, f"0x{v:04x}" if v else "")


@dataclass(frozen=True, slots=True)
class TlsConfig:
    max_records: int = 4096  # records kept per direction (the rest are counted)
    # rolling: keep the *latest* max_records (the oldest half goes when full, counted in
    # records_dropped) -- for long-lived connections read while open (mesh hops)
    rolling: bool = False
    max_bursts: int = 4096  # bursts kept per direction
    burst_gap_ns: int = 1_000_000  # max idle between records of one burst
    max_handshake: int = 64 * 1024  # largest ClientHello/ServerHello reassembled
    max_alerts: int = 16
    max_handshake_types: int = 32


@dataclass(slots=True, eq=False)
class TlsDirection:
    """What one direction carried. Records and bursts are kept in parallel arrays; use
    ``iter_records()`` / ``iter_bursts()`` for tuples."""

    rec_type: array = field(default_factory=lambda: array("B"))
    rec_len: array = field(default_factory=lambda: array("I"))
    rec_first_ts: array = field(default_factory=lambda: array("q"))
    rec_last_ts: array = field(default_factory=lambda: array("q"))
    rec_flags: array = field(default_factory=lambda: array("B"))
    records: int = 0  # all records seen, kept or not (partial ones included)
    records_dropped: int = 0  # seen but not kept (beyond max_records)
    record_bytes: int = 0  # sum of record lengths (payload, without 5-byte headers)
    app_records: int = 0  # application_data records outside the handshake
    app_bytes: int = 0
    burst_first_ts: array = field(default_factory=lambda: array("q"))
    burst_last_ts: array = field(default_factory=lambda: array("q"))
    burst_records: array = field(default_factory=lambda: array("I"))
    burst_bytes: array = field(default_factory=lambda: array("Q"))
    bursts: int = 0  # all bursts, kept or not
    bursts_dropped: int = 0
    handshake_types: list[int] = field(default_factory=list)  # cleartext handshake msgs
    bytes: int = 0  # stream bytes delivered (data, not gaps)
    gaps: int = 0
    gap_bytes: int = 0
    resyncs: int = 0
    skipped_bytes: int = 0  # bytes passed over while looking for a record header
    end_reason: str = ""
    end_ts: int = 0

    def iter_records(self) -> Iterator[tuple[int, int, int, int, int]]:
        """(content type, length, first-byte ts, last-byte ts, flags) of the kept records."""
        return zip(self.rec_type, self.rec_len, self.rec_first_ts, self.rec_last_ts,
                   self.rec_flags)

    def iter_bursts(self) -> Iterator[tuple[int, int, int, int]]:
        """(first ts, last ts, records, bytes) of the kept bursts."""
        return zip(self.burst_first_ts, self.burst_last_ts, self.burst_records,
                   self.burst_bytes)


@dataclass(slots=True, eq=False)
class TlsSession:
    conn_id: int
    point: object  # CapturePoint
    client: tuple[bytes, int]
    server: tuple[bytes, int]
    dialled: tuple[bytes, int] | None = None  # Connection.dialled (outbound REDIRECT)
    sni: str | None = None  # server_name (host_name) from the ClientHello
    alpn_offered: tuple[str, ...] | None = None  # ClientHello ALPN list
    alpn: str | None = None  # ServerHello ALPN (<= 1.2 only; 1.3 hides it: None)
    client_version: int = 0  # ClientHello.legacy_version
    client_versions: tuple[int, ...] = ()  # ClientHello supported_versions
    server_version: int = 0  # ServerHello.legacy_version
    version: int = 0  # negotiated: ServerHello supported_versions, else legacy_version
    cipher_suite: int | None = None  # chosen by the server
    cipher_suites_offered: int = 0  # how many the client offered
    hello_retry: bool = False  # a TLS 1.3 HelloRetryRequest was seen
    resumed: bool | None = None  # <=1.2 session-id echo / 1.3 pre_shared_key; None unknown
    sslv2_hello: bool = False
    client_hello_ts: int = 0  # first byte of the record carrying the ClientHello
    syn_ts: int = 0  # the TCP connection's SYN and SYN-ACK, when the capture saw them
    synack_ts: int = 0
    server_hello_ts: int = 0
    handshake_complete: bool = False
    handshake_ts: int | None = None  # see the module rules
    broken: str = ""  # why parsing stopped ("" = it did not)
    alerts: list[tuple[str, int, int, int]] = field(default_factory=list)
    #   cleartext alerts: ("client"|"server", level, description, ts)
    encrypted_alerts: int = 0
    from_client: TlsDirection = field(default_factory=TlsDirection)
    from_server: TlsDirection = field(default_factory=TlsDirection)

    @property
    def version_name(self) -> str:
        return version_name(self.version)


class _Bad(Exception):
    pass


class _Reader:
    """Bounds-checked reads over one handshake message body."""

    __slots__ = ("b", "p", "end")

    def __init__(self, b: bytes, p: int = 0, end: int | None = None) -> None:
        self.b = b
        self.p = p
        self.end = len(b) if end is None else end

    def take(self, n: int) -> bytes:
        p = self.p
        if p + n > self.end:
            raise _Bad
        self.p = p + n
        return self.b[p : p + n]

    def u8(self) -> int:
        if self.p >= self.end:
            raise _Bad
        self.p += 1
        return self.b[self.p - 1]

    def u16(self) -> int:
        if self.p + 2 > self.end:
            raise _Bad
        v = _U16.unpack_from(self.b, self.p)[0]
        self.p += 2
        return v

    def sub(self, n: int) -> _Reader:
        if self.p + n > self.end:
            raise _Bad
        r = _Reader(self.b, self.p, self.p + n)
        self.p += n
        return r

    def left(self) -> int:
        return self.end - self.p


def _extensions(r: _Reader) -> Iterator[tuple[int, _Reader]]:
    if not r.left():
        return  # no extensions block at all (allowed before TLS 1.2)
    ext = r.sub(r.u16())
    while ext.left():
        t = ext.u16()
        yield t, ext.sub(ext.u16())


def _text(b: bytes) -> str:
    return b.decode("ascii", "backslashreplace")


class _Dir:
    """One direction's record framer and handshake reassembler."""

    __slots__ = (
        "tc", "is_client", "info", "state", "hdr", "hdr_ts", "rtype", "rlen", "remaining",
        "rfirst", "rlast", "rflags", "collect", "body", "hs_buf", "hs_skip", "hs_lost", "ccs",
        "finished_ts", "enc13", "sent_enc", "rec_ver", "synced_once", "first", "burst_open",
        "b_first", "b_last", "b_count", "b_bytes", "b_mark", "starts", "rbuf", "rts", "rscan",
        "ended",
    )

    def __init__(self, tc: TlsConnection, is_client: bool, info: TlsDirection) -> None:
        self.tc = tc
        self.is_client = is_client
        self.info = info
        self.state = SYNC
        self.hdr = b""  # a record header split across chunks
        self.hdr_ts = 0
        self.rtype = 0
        self.rlen = 0
        self.remaining = -1  # body bytes still to come of the current record; -1 = none
        self.rfirst = 0  # ts of the current record's first byte
        self.rlast = 0  # ts of the last chunk that carried bytes of it
        self.rflags = 0
        self.collect = False  # keep the body (cleartext handshake / alert)?
        self.body = bytearray()
        self.hs_buf = bytearray()  # handshake messages being reassembled
        self.hs_skip = 0  # bytes of a handshake message we do not parse
        self.hs_lost = False
        self.ccs = False
        self.finished_ts = 0  # <= 1.2: last byte of the record after our CCS
        self.enc13 = False  # server: TLS 1.3 ServerHello sent, everything after encrypted
        self.sent_enc = False  # server: has sent an encrypted (1.3) record
        self.rec_ver = 0  # record-layer version of the last good record
        self.synced_once = False
        self.first = True
        self.burst_open = False
        self.b_first = self.b_last = self.b_count = self.b_bytes = self.b_mark = 0
        self.starts = 0  # records started in this direction (breaks the peer's bursts)
        self.rbuf = bytearray()  # resync window
        self.rts: list[tuple[int, int]] = []  # (offset in rbuf, ts) of each chunk in it
        self.rscan = 0
        self.ended = False

    # -- StreamConsumer ----------------------------------------------------------------------
    def data(self, chunk: bytes, ts: int) -> None:
        try:
            self.info.bytes += len(chunk)
            st = self.state
            if st == SYNC:
                self._frame(chunk, ts)
            elif st == RESYNC:
                self._resync(chunk, ts)
        except Exception:  # noqa: BLE001 - a parser bug must not stop the pipeline
            self.tc.stats.add("tls", "internal_error")
            self.tc.set_broken("internal_error")

    def gap(self, length: int, ts: int) -> None:
        try:
            self._gap(length, ts)
        except Exception:  # noqa: BLE001
            self.tc.stats.add("tls", "internal_error")
            self.tc.set_broken("internal_error")

    def end(self, reason: str, ts: int) -> None:
        if self.ended:
            return
        self.ended = True
        try:
            if self.state == SYNC:
                if self.remaining >= 0:
                    self.tc.stats.add("tls", "truncated_record")
                    self._log(self.rflags | F_PARTIAL, self.rlast)
                elif self.hdr:
                    self.tc.stats.add("tls", "truncated_record")
                    self.info.skipped_bytes += len(self.hdr)
            self._stop()
            self.info.end_reason = reason
            self.info.end_ts = ts
        except Exception:  # noqa: BLE001
            self.tc.stats.add("tls", "internal_error")
        self.tc.side_ended()

    def _stop(self) -> None:
        if self.state == RESYNC:
            self.info.skipped_bytes += len(self.rbuf)
        self._close_burst()
        self.state = STOPPED
        self.remaining = -1
        self.hdr = b""
        self.collect = False
        self.rbuf = bytearray()
        self.rts = []

    # -- framing -----------------------------------------------------------------------------
    def _frame(self, chunk: bytes, ts: int) -> None:
        n = len(chunk)
        pos = 0
        while pos < n:
            rem = self.remaining
            if rem >= 0:  # inside a record body: skip it by length
                left = n - pos
                if left < rem:
                    if self.collect:
                        self.body += chunk[pos:] if pos else chunk
                    self.remaining = rem - left
                    self.rlast = ts
                    return
                if self.collect and rem:
                    self.body += chunk[pos : pos + rem]
                pos += rem
                self.remaining = -1
                self._record_done(ts)
                if self.state != SYNC:
                    return
                continue
            # a record header
            if self.hdr or n - pos < 5:
                if not self.hdr:
                    self.hdr_ts = ts
                need = 5 - len(self.hdr)
                self.hdr += bytes(chunk[pos : pos + need])
                pos += need
                if len(self.hdr) < 5:
                    return
                hdr, self.hdr = self.hdr, b""
                first_ts = self.hdr_ts
            else:
                hdr = bytes(chunk[pos : pos + 5])
                pos += 5
                first_ts = ts
            if not self._start_record(hdr, first_ts, ts):
                if self.state == RESYNC:
                    self.info.skipped_bytes += 1
                    self._resync(hdr[1:] + bytes(chunk[pos:]), ts)
                return

    def _start_record(self, hdr: bytes, first_ts: int, ts: int) -> bool:
        """A record header was read; False if the direction left SYNC."""
        typ, ver, length = _HDR.unpack(hdr)
        tc = self.tc
        if self.first and self.is_client and typ & 0x80:
            # SSLv2-compatible ClientHello: 2-byte length, then msg type 1 and a version
            self.first = False
            rlen = ((typ & 0x7F) << 8) | (ver >> 8)
            if (ver & 0xFF) != 1 or rlen < 3:
                tc.set_broken("bad_sslv2")
                return False
            tc.session.sslv2_hello = True
            tc.stats.add("tls", "sslv2_hello")
            self._begin(SSL2, 0, rlen, first_ts, ts, rlen - 3)
        elif not (CCS <= typ <= HEARTBEAT):
            return self._bad("bad_record_type", first_ts)
        elif ver >> 8 != 3 or (ver & 0xFF) > 4:
            return self._bad("bad_record_version", first_ts)
        elif length > MAX_RECORD:
            return self._bad("record_too_long", first_ts)
        else:
            self.first = False
            self._begin(typ, ver, length, first_ts, ts, length)
        if self.remaining == 0:
            self.remaining = -1
            self._record_done(ts)
        return self.state == SYNC

    def _bad(self, why: str, ts: int) -> bool:
        self.first = False
        if not self.synced_once and self.tc.conn_roles_inferred:
            # joined mid-stream: this direction may start inside a record
            self.tc.stats.add("tls", "mid_stream_resync")
            self._to_resync(ts)
        else:
            self.tc.set_broken(why)
        return False

    def _begin(self, typ: int, ver: int, length: int, first_ts: int, ts: int,
               remaining: int) -> None:
        self.rtype, self.rlen = typ, length
        self.rfirst = first_ts
        self.rlast = ts
        self.remaining = remaining
        self.rflags = 0
        self.starts += 1
        self.synced_once = True
        if ver:
            self.rec_ver = ver
        if typ == HANDSHAKE:
            self.collect = not self.hs_lost and self._cleartext()
        elif typ == ALERT:
            self.collect = length == 2 and self._cleartext()
        else:
            self.collect = False
        if self.collect:
            self.body.clear()

    def _cleartext(self) -> bool:
        """Are this direction's handshake/alert records still in the clear?"""
        if self.enc13:
            return False
        return not (self.ccs and self.tc.session.version != TLS13)

    def _log(self, flags: int, last_ts: int) -> None:
        info = self.info
        info.records += 1
        info.record_bytes += self.rlen
        cfg = self.tc.config
        if len(info.rec_len) >= cfg.max_records and cfg.rolling:
            half = cfg.max_records // 2
            for arr in (info.rec_type, info.rec_len, info.rec_first_ts, info.rec_last_ts,
                        info.rec_flags):
                del arr[:half]
            info.records_dropped += half
        if len(info.rec_len) < cfg.max_records:
            info.rec_type.append(self.rtype)
            info.rec_len.append(self.rlen)
            info.rec_first_ts.append(self.rfirst)
            info.rec_last_ts.append(last_ts)
            info.rec_flags.append(flags)
        else:
            info.records_dropped += 1

    def _record_done(self, ts: int) -> None:
        typ = self.rtype
        tc = self.tc
        s = tc.session
        flags = self.rflags
        if typ == APPLICATION_DATA:
            if self.is_client:
                if s.version == TLS13:
                    if not s.handshake_complete and tc.server_side.sent_enc:
                        self._log(flags | F_HANDSHAKE, ts)  # the client's Finished
                        self._close_burst()
                        tc.complete(ts)
                        return
                elif (s.version == 0 and not tc.server_side.starts
                      and TLS13 in s.client_versions):
                    flags |= F_EARLY
                    tc.stats.add("tls", "early_data_records")
            elif self.enc13 and not s.handshake_complete:
                self.sent_enc = True  # the server's encrypted flight
                self._log(flags | F_HANDSHAKE, ts)
                self._close_burst()
                return
            self._log(flags, ts)
            self._app(ts)
            return
        self._close_burst()
        if typ == HANDSHAKE:
            self._log(flags | F_HANDSHAKE, ts)
            if self.collect:
                self.collect = False
                self._handshake(self.body)
            elif self.ccs and s.version != TLS13 and not self.finished_ts:
                self.finished_ts = ts  # the encrypted Finished after our ChangeCipherSpec
                peer = tc.server_side if self.is_client else tc.client_side
                if peer.finished_ts:
                    tc.complete(ts)
        elif typ == CCS:
            self._log(flags | F_HANDSHAKE, ts)
            if s.version != TLS13:  # in 1.3 a CCS is only middlebox compatibility
                self.ccs = True
        elif typ == ALERT:
            self._log(flags, ts)
            if self.collect:
                self.collect = False
                body = self.body
                if len(s.alerts) < tc.config.max_alerts:
                    s.alerts.append(("client" if self.is_client else "server",
                                     body[0], body[1], ts))
                tc.stats.add("tls", "alert")
            else:
                s.encrypted_alerts += 1
        else:  # heartbeat, the SSLv2 hello
            self._log(flags | (F_HANDSHAKE if typ == SSL2 else 0), ts)

    def _app(self, ts: int) -> None:
        """An application-data record ended at ``ts``: extend the open burst or start one."""
        info = self.info
        info.app_records += 1
        info.app_bytes += self.rlen
        peer = self.tc.server_side if self.is_client else self.tc.client_side
        if (self.burst_open and peer.starts == self.b_mark
                and self.rfirst - self.b_last <= self.tc.config.burst_gap_ns):
            self.b_last = ts
            self.b_count += 1
            self.b_bytes += self.rlen
            return
        self._close_burst()
        self.burst_open = True
        self.b_first, self.b_last, self.b_count, self.b_bytes = self.rfirst, ts, 1, self.rlen
        self.b_mark = peer.starts

    def _close_burst(self) -> None:
        if not self.burst_open:
            return
        self.burst_open = False
        info = self.info
        info.bursts += 1
        if len(info.burst_records) < self.tc.config.max_bursts:
            info.burst_first_ts.append(self.b_first)
            info.burst_last_ts.append(self.b_last)
            info.burst_records.append(self.b_count)
            info.burst_bytes.append(self.b_bytes)
        else:
            info.bursts_dropped += 1

    # -- handshake messages ------------------------------------------------------------------
    def _handshake(self, body: bytes | bytearray) -> None:
        """The body of a cleartext handshake record: reassemble and parse the hellos."""
        pos = 0
        n = len(body)
        if self.hs_skip:
            pos = min(self.hs_skip, n)
            self.hs_skip -= pos
        buf = self.hs_buf
        if pos < n:
            buf += body[pos:] if pos else body
        tc = self.tc
        cfg = tc.config
        types = self.info.handshake_types
        while len(buf) >= 4:
            mtype = buf[0]
            mlen = int.from_bytes(buf[1:4], "big")
            hello = mtype == (1 if self.is_client else 2)
            if len(buf) < 4 + mlen:
                if hello and mlen <= cfg.max_handshake:
                    return  # wait for the rest of the hello
                if hello:
                    tc.stats.add("tls", "handshake_too_large")
                if len(types) < cfg.max_handshake_types:
                    types.append(mtype)
                self.hs_skip = 4 + mlen - len(buf)  # skip it without buffering it
                buf.clear()
                return
            if len(types) < cfg.max_handshake_types:
                types.append(mtype)
            if not hello:
                del buf[: 4 + mlen]
                continue
            msg = bytes(buf[4 : 4 + mlen])
            del buf[: 4 + mlen]
            if self.is_client:
                tc.client_hello(msg, self.rfirst)
            else:
                tc.server_hello(msg, self.rfirst)
                if self.enc13:
                    buf.clear()  # what follows a TLS 1.3 ServerHello is encrypted
                    return

    # -- gaps and resynchronisation ----------------------------------------------------------
    def _gap(self, length: int, ts: int) -> None:
        info = self.info
        info.gaps += 1
        info.gap_bytes += length
        st = self.tc.stats
        st.add("tls", "gap")
        if self.state == STOPPED:
            return
        self._close_burst()
        if self.state == RESYNC:  # the window cannot chain across the hole: start afresh
            info.skipped_bytes += len(self.rbuf)
            self.rbuf.clear()
            self.rts.clear()
            self.rscan = 0
            return
        if self.remaining >= 0 and length <= self.remaining:
            # inside the body: the framing holds, the record is flagged
            st.add("tls", "gap_in_record")
            self.rflags |= F_GAP
            if self.collect:
                self.collect = False
                if self.rtype == HANDSHAKE:
                    self._lose_handshake()
            self.remaining -= length
            if not self.remaining:
                self.remaining = -1
                self._record_done(ts)
            return
        st.add("tls", "gap_lost_sync")
        if self.remaining >= 0:  # the gap runs past the end of the record
            self._log(self.rflags | F_GAP | F_PARTIAL, self.rlast)
        elif self.hdr:
            info.skipped_bytes += len(self.hdr)
        if self._cleartext() and not self.tc.session.handshake_complete:
            self._lose_handshake()
        self._to_resync(ts)

    def _lose_handshake(self) -> None:
        if not self.hs_lost:
            self.hs_lost = True
            self.hs_buf.clear()
            self.hs_skip = 0
            self.tc.stats.add("tls", "gap_in_handshake")

    def _to_resync(self, ts: int) -> None:
        self.state = RESYNC
        self.remaining = -1
        self.hdr = b""
        self.collect = False
        self.rbuf = bytearray()
        self.rts = []
        self.rscan = 0

    def _resync(self, chunk: bytes, ts: int) -> None:
        """Look for a record header confirmed by the one after it; then frame from there."""
        if not chunk:
            return
        buf = self.rbuf
        self.rts.append((len(buf), ts))
        buf += chunk
        want = self.rec_ver
        while True:
            m = _PLAUSIBLE.search(buf, self.rscan)
            if m is None:
                self._drop(len(buf) - 2)  # keep a header start split across chunks
                return
            p = m.start()
            if p + 5 > len(buf):
                self._drop(p)
                return
            ver, length = _VL.unpack_from(buf, p + 1)
            if length > MAX_RECORD or (want and ver != want):
                self.rscan = p + 1
                continue
            q = p + 5 + length
            if q + 3 > len(buf):
                self._drop(p)
                return
            if CCS <= buf[q] <= HEARTBEAT and _U16.unpack_from(buf, q + 1)[0] == ver:
                break
            self.rscan = p + 1
        # confirmed at p: count what was skipped, replay the window with its timestamps
        info = self.info
        info.skipped_bytes += p
        info.resyncs += 1
        self.tc.stats.add("tls", "resync")
        data = bytes(buf)
        marks = self.rts
        self.rbuf = bytearray()
        self.rts = []
        self.rscan = 0
        self.state = SYNC
        self.first = False
        self.synced_once = True
        for i, (off, t) in enumerate(marks):
            end = marks[i + 1][0] if i + 1 < len(marks) else len(data)
            if end > p:
                self._frame(data[max(off, p) : end], t)
                if self.state != SYNC:
                    return

    def _drop(self, n: int) -> None:
        """Forget the first ``n`` bytes of the resync window (counted as skipped)."""
        self.rscan = 0
        if n <= 0:
            return
        buf = self.rbuf
        del buf[:n]
        self.info.skipped_bytes += n
        out: list[tuple[int, int]] = []
        for off, t in self.rts:
            o = off - n
            if o <= 0:
                out = [(0, t)]
            else:
                out.append((o, t))
        self.rts = out


_VL = struct.Struct(">HH")

_VERSION_STAT = {0x0300: "version_ssl_3_0", 0x0301: "version_1_0", 0x0302: "version_1_1",
                 0x0303: "version_1_2", 0x0304: "version_1_3"}


class TlsConnection:
    """Both directions of one TCP connection speaking TLS.

    ``sink(TlsSession)`` is called exactly once, when both directions have ended (or on an
    explicit ``finish()``). ``config`` bounds memory and sets the burst gap.
    """

    def __init__(self, conn: object, stats: Stats, sink: Callable[[TlsSession], None], *,
                 config: TlsConfig | None = None) -> None:
        self.stats = stats
        self.sink = sink
        self.config = config or TlsConfig()
        cl = getattr(conn, "client", None)
        sv = getattr(conn, "server", None)
        self.session = TlsSession(
            conn_id=getattr(conn, "id", 0), point=getattr(conn, "point", None),
            client=(getattr(cl, "src", b""), getattr(cl, "sport", 0)),
            server=(getattr(sv, "src", b""), getattr(sv, "sport", 0)),
            dialled=getattr(conn, "dialled", None), syn_ts=getattr(conn, "syn_ts", 0) or 0,
            synack_ts=getattr(conn, "synack_ts", 0) or 0)
        self.conn_roles_inferred = bool(getattr(conn, "roles_inferred", False))
        self.client_side = _Dir(self, True, self.session.from_client)
        self.server_side = _Dir(self, False, self.session.from_server)
        self.emitted = False
        self._sid = b""  # the ClientHello's session id (resumption check, <= 1.2)
        stats.add("tls", "connections")

    # -- called by the directions ------------------------------------------------------------
    def set_broken(self, why: str) -> None:
        """Not TLS (any more): stop parsing both directions; bytes are still counted."""
        s = self.session
        if not s.broken:
            s.broken = why
            self.stats.add("tls", "broken_" + why)
        for d in (self.client_side, self.server_side):
            if d.state == SYNC and d.remaining >= 0:
                d._log(d.rflags | F_PARTIAL, d.rlast)
            d._stop()

    def complete(self, ts: int) -> None:
        s = self.session
        if not s.handshake_complete:
            s.handshake_complete = True
            s.handshake_ts = ts
            self.stats.add("tls", "handshake_complete")

    def side_ended(self) -> None:
        if self.client_side.ended and self.server_side.ended:
            self.finish()

    def finish(self) -> None:
        """Hand the session to the sink (once); open bursts are closed first."""
        if self.emitted:
            return
        self.emitted = True
        st = self.stats
        try:
            for d in (self.client_side, self.server_side):
                d._close_burst()
            s = self.session
            for info in (s.from_client, s.from_server):
                for name in ("records", "records_dropped", "app_records", "bursts",
                             "bursts_dropped", "skipped_bytes", "resyncs"):
                    v = getattr(info, name)
                    if v:
                        st.add("tls", name, v)
        except Exception:  # noqa: BLE001
            st.add("tls", "internal_error")
        try:
            self.sink(self.session)
        except Exception:  # noqa: BLE001 - the sink's bug is not the parser's
            st.add("tls", "sink_error")

    # -- hellos ------------------------------------------------------------------------------
    def client_hello(self, msg: bytes, ts: int) -> None:
        s = self.session
        st = self.stats
        st.add("tls", "client_hello")
        if s.client_hello_ts:
            st.add("tls", "client_hello_again")  # after a HelloRetryRequest, or renegotiation
            return  # the first ClientHello's metadata is the one recorded
        s.client_hello_ts = ts
        try:
            r = _Reader(msg)
            s.client_version = r.u16()
            r.take(32)
            self._sid = r.take(r.u8())
            n = r.u16()
            r.take(n)
            s.cipher_suites_offered = n // 2
            r.take(r.u8())  # compression methods
            for t, e in _extensions(r):
                if t == 0 and s.sni is None:
                    names = e.sub(e.u16())
                    while names.left():
                        kind = names.u8()
                        name = names.take(names.u16())
                        if kind == 0:
                            s.sni = _text(name)
                            st.add("tls", "sni")
                            break
                elif t == 16 and s.alpn_offered is None:
                    lst = e.sub(e.u16())
                    out = []
                    while lst.left():
                        out.append(_text(lst.take(lst.u8())))
                    s.alpn_offered = tuple(out)
                elif t == 43 and not s.client_versions:
                    lst = e.sub(e.u8())
                    vs = []
                    while lst.left() >= 2:
                        vs.append(lst.u16())
                    s.client_versions = tuple(vs)
        except _Bad:
            st.add("tls", "bad_client_hello")

    def server_hello(self, msg: bytes, ts: int) -> None:
        s = self.session
        st = self.stats
        st.add("tls", "server_hello")
        try:
            r = _Reader(msg)
            legacy = r.u16()
            random = r.take(32)
            sid = r.take(r.u8())
            suite = r.u16()
            r.u8()  # compression method
            selected = 0
            alpn = None
            psk = False
            for t, e in _extensions(r):
                if t == 43 and e.left() >= 2:
                    selected = e.u16()
                elif t == 16:
                    lst = e.sub(e.u16())
                    if lst.left():
                        alpn = _text(lst.take(lst.u8()))
                elif t == 41:
                    psk = True
        except _Bad:
            st.add("tls", "bad_server_hello")
            return
        s.server_version = legacy
        s.cipher_suite = suite
        s.version = selected or legacy
        if random == HRR_RANDOM:
            s.hello_retry = True
            st.add("tls", "hello_retry")
            return  # a second ClientHello and the real ServerHello follow in the clear
        if s.server_hello_ts:
            st.add("tls", "server_hello_again")
            return
        s.server_hello_ts = ts
        if alpn is not None and s.version != TLS13:
            s.alpn = alpn
            st.add("tls", "alpn")
        if s.version == TLS13:
            s.resumed = psk
            self.server_side.enc13 = True
        else:
            s.resumed = bool(sid) and sid == self._sid
        st.add("tls", _VERSION_STAT.get(s.version, "version_other"))
