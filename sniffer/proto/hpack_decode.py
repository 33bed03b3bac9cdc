"""HPACK (RFC 7541) decoding for a passive observer, including one that joined late.

Why not ``hpack.Decoder``: an observer that starts mid-connection has missed the dynamic
table's earlier insertions, and the h2 project's decoder (rightly, for an endpoint) stops at
the first unknown index. This decoder keeps going: the dynamic table is held newest-first as
the entries *seen* since the join, followed by an unknown tail. HPACK indexes the dynamic
table by position, newest first, so an index that falls among the entries seen resolves
exactly, whatever eviction did to the unknown tail; only an index beyond them is unknown, and
the field comes out as ``None`` (name, value or both). The tail becomes known to be empty
once a size update to 0 arrives, or the entries seen alone fill the table size in force.

The static table and the Huffman code are the h2 project's (``hpack.table``,
``hpack.huffman_table``); its nibble-at-a-time Huffman state machine is composed once into a
byte-at-a-time table (half the steps per string). Decoded strings are latin-1 text, as the HTTP/1 parser makes them.

Speed: most header blocks on a busy connection are byte-for-byte repeats (a client sending
the same request again indexes every field), so a block that does not change the table is
cached with the dynamic entries it read (position and identity): a repeat is answered from
the cache while those positions still hold those entries, even though other requests
inserted entries in between. Huffman-coded strings are cached too. Both caches are bounded.
"""

from __future__ import annotations

from hpack.huffman_table import (HUFFMAN_COMPLETE, HUFFMAN_EMIT_SYMBOL, HUFFMAN_FAIL,
                                  HUFFMAN_TABLE)
from hpack.table import HeaderTable

STATIC: tuple[tuple[str, str], ...] = tuple(
    (n.decode("latin-1"), v.decode("latin-1")) for n, v in HeaderTable.STATIC_TABLE)
N_STATIC = len(STATIC)  # 61
DEFAULT_TABLE_SIZE = 4096
MAX_TABLE_SIZE = 1 << 20  # a peer may announce more; we never hold more than this
MAX_STRING = 1 << 16  # one name or value
MAX_FIELDS = 512  # per block
_CACHE_MAX = 512

Field = tuple[str | None, str | None]  # None: not recoverable after a mid-stream join


class HpackError(Exception):
    """The block is not valid HPACK (or exceeds a bound): the connection's state is lost."""


_huff_cache: dict[bytes, str] = {}
_BYTE_TABLE: list[tuple[int, bytes, int]] = []  # built on first use


def _byte_table() -> list[tuple[int, bytes, int]]:
    """hpack's nibble-at-a-time Huffman state machine composed into a byte-at-a-time one:
    entry ``state << 8 | byte`` -> (next state, bytes emitted, flags of the second nibble,
    with FAIL if either nibble failed). 65,536 entries, built once (~50 ms)."""
    if not _BYTE_TABLE:
        table = HUFFMAN_TABLE
        out = []
        for state in range(len(table) // 16):
            for byte in range(256):
                s1, f1, o1 = table[state * 16 + (byte >> 4)]
                s2, f2, o2 = table[s1 * 16 + (byte & 15)]
                emitted = (bytes((o1,)) if f1 & HUFFMAN_EMIT_SYMBOL else b"") + \
                    (bytes((o2,)) if f2 & HUFFMAN_EMIT_SYMBOL else b"")
                out.append((s2, emitted, f2 | (f1 & HUFFMAN_FAIL)))
        _BYTE_TABLE.extend(out)
    return _BYTE_TABLE


def huffman_decode(raw: bytes) -> bytes:
    """RFC 7541 Appendix B Huffman decoding, a byte per step. Raises ``HpackError``."""
    table = _BYTE_TABLE or _byte_table()
    state = 0
    flags = HUFFMAN_COMPLETE
    parts = []
    for b in raw:
        state, emitted, flags = table[state << 8 | b]
        if flags & HUFFMAN_FAIL:
            raise HpackError("bad huffman string")
        if emitted:
            parts.append(emitted)
    if not flags & HUFFMAN_COMPLETE:
        raise HpackError("bad huffman string: incomplete")
    return b"".join(parts)


def _huffman(raw: bytes) -> str:
    s = _huff_cache.get(raw)
    if s is None:
        s = huffman_decode(raw).decode("latin-1")
        if len(_huff_cache) >= 4096:
            _huff_cache.clear()
        _huff_cache[raw] = s
    return s


class Decoder:
    """One direction's HPACK decoder state (RFC 7541 §2.3, §4)."""

    __slots__ = ("entries", "size", "max_size", "limit", "tail_unknown", "_cache",
                 "partial_blocks")

    def __init__(self, mid_stream: bool = False) -> None:
        self.entries: list[tuple[str | None, str | None, int]] = []  # newest first
        self.size = 0  # of the entries we hold
        self.max_size = DEFAULT_TABLE_SIZE  # in force (last size update, else the default)
        self.limit = DEFAULT_TABLE_SIZE  # SETTINGS_HEADER_TABLE_SIZE of the decoding peer
        self.tail_unknown = mid_stream
        # block -> (dynamic entries it read as (position, entry), fields, partial)
        self._cache: dict[bytes, tuple[tuple, list[Field], bool]] = {}
        self.partial_blocks = 0

    def set_limit(self, limit: int) -> None:
        """The decoding endpoint announced SETTINGS_HEADER_TABLE_SIZE."""
        self.limit = limit

    # -- table ---------------------------------------------------------------------------------
    def _insert(self, name: str | None, value: str | None, exact: bool) -> None:
        size = 32 + len(name or "") + len(value or "")
        self.entries.insert(0, (name, value, size))
        self.size += size
        self._evict()
        if not exact:
            # an entry whose name we could not resolve: its true size is unknown, so we can no
            # longer prove when the unknown tail is gone
            self.tail_unknown = True

    def _evict(self) -> None:
        cap = min(self.max_size, MAX_TABLE_SIZE)
        while self.entries and self.size > cap:
            self.size -= self.entries.pop()[2]
        if self.tail_unknown and self.size + 32 > cap:
            # what we hold fills the table: no older entry can still be in it
            self.tail_unknown = False

    def _resize(self, new: int) -> None:
        self.max_size = new
        if new == 0:
            self.tail_unknown = False
        self._evict()

    def _lookup(self, index: int) -> tuple[str | None, str | None]:
        if index <= 0:
            raise HpackError("index 0")
        if index <= N_STATIC:
            return STATIC[index - 1]
        i = index - N_STATIC - 1
        if i < len(self.entries):
            e = self.entries[i]
            return e[0], e[1]
        if self.tail_unknown:
            return None, None
        raise HpackError(f"index {index} beyond the dynamic table ({len(self.entries)} entries)")

    # -- decoding ------------------------------------------------------------------------------
    def decode(self, block: bytes) -> tuple[list[Field], bool]:
        """A complete header block -> (fields in order, partial?). Raises ``HpackError``."""
        hit = self._cache.get(block)
        if hit is not None:
            ents = self.entries
            n = len(ents)
            for i, e in hit[0]:
                if i >= n or ents[i] is not e:
                    break
            else:
                if hit[2]:
                    self.partial_blocks += 1
                return hit[1], hit[2]
        fields, partial, changed, deps = self._decode(block)
        if not changed and deps is not None:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[block] = (tuple(deps), fields, partial)
        if partial:
            self.partial_blocks += 1
        return fields, partial

    def _decode(self, data: bytes) -> tuple[list[Field], bool, bool, list | None]:
        """-> (fields, partial, changed the table, the dynamic entries read as (position,
        entry), or None if it read beyond what we hold)."""
        out: list[Field] = []
        append = out.append
        partial = changed = False
        deps: list | None = []
        ents = self.entries
        pos = 0
        n = len(data)
        static = STATIC
        huff_cache = _huff_cache
        while pos < n:
            b = data[pos]
            if b & 0x80:  # indexed field
                index = b & 0x7F
                if index == 0x7F:
                    index, pos = _int(data, pos, 7)
                else:
                    pos += 1
                if index <= N_STATIC:
                    if index <= 0:
                        raise HpackError("index 0")
                    append(static[index - 1])
                else:
                    i = index - N_STATIC - 1
                    if i < len(ents):
                        e = ents[i]
                        if deps is not None:
                            deps.append((i, e))
                        name, value = e[0], e[1]
                        if name is None or value is None:
                            partial = True
                        append((name, value))
                    else:
                        deps = None
                        if not self.tail_unknown:
                            raise HpackError(f"index {index} beyond the dynamic table "
                                             f"({len(ents)} entries)")
                        partial = True
                        append((None, None))
            elif b & 0x20 and not b & 0x40:  # dynamic table size update
                size, pos = _int(data, pos, 5)
                if out:
                    raise HpackError("table size update after a field")
                # (more than the peer's SETTINGS allow is the encoder's error; we follow it,
                # never beyond our own cap)
                self._resize(min(size, MAX_TABLE_SIZE))
                changed = True
            else:
                indexing = b & 0x40
                if indexing:
                    index = b & 0x3F
                    if index == 0x3F:
                        index, pos = _int(data, pos, 6)
                    else:
                        pos += 1
                else:
                    index = b & 0x0F
                    if index == 0x0F:
                        index, pos = _int(data, pos, 4)
                    else:
                        pos += 1
                if index:
                    if index <= N_STATIC:
                        name = static[index - 1][0]
                    else:
                        i = index - N_STATIC - 1
                        if i < len(ents):
                            e = ents[i]
                            if deps is not None:
                                deps.append((i, e))
                            name = e[0]
                        else:
                            deps = None
                            if not self.tail_unknown:
                                raise HpackError(f"index {index} beyond the dynamic table "
                                                 f"({len(ents)} entries)")
                            name = None
                else:
                    # the name as a string literal (_string, inlined)
                    if pos >= n:
                        raise HpackError("string runs past the block")
                    h = data[pos]
                    length = h & 0x7F
                    if length == 0x7F:
                        length, pos = _int(data, pos, 7)
                    else:
                        pos += 1
                    end = pos + length
                    if end > n:
                        raise HpackError("string runs past the block")
                    if length > MAX_STRING:
                        raise HpackError("string too long")
                    raw = data[pos:end]
                    pos = end
                    if h & 0x80:
                        name = huff_cache.get(raw)
                        if name is None:
                            name = _huffman(raw)
                    else:
                        name = raw.decode("latin-1")
                # the value (_string, inlined)
                if pos >= n:
                    raise HpackError("string runs past the block")
                h = data[pos]
                length = h & 0x7F
                if length == 0x7F:
                    length, pos = _int(data, pos, 7)
                else:
                    pos += 1
                end = pos + length
                if end > n:
                    raise HpackError("string runs past the block")
                if length > MAX_STRING:
                    raise HpackError("string too long")
                raw = data[pos:end]
                pos = end
                if h & 0x80:
                    value = huff_cache.get(raw)
                    if value is None:
                        value = _huffman(raw)
                else:
                    value = raw.decode("latin-1")
                if name is None:
                    partial = True
                append((name, value))
                if indexing:
                    # (self._insert(name, value, name is not None), inlined with _evict)
                    size = 32 + len(name or "") + len(value)
                    ents.insert(0, (name, value, size))
                    total = self.size + size
                    cap = self.max_size
                    if cap > MAX_TABLE_SIZE:
                        cap = MAX_TABLE_SIZE
                    while ents and total > cap:
                        total -= ents.pop()[2]
                    self.size = total
                    if self.tail_unknown and total + 32 > cap:
                        # what we hold fills the table: no older entry can still be in it
                        self.tail_unknown = False
                    if name is None:
                        # an entry whose name we could not resolve: its true size is
                        # unknown, so we can no longer prove when the unknown tail is gone
                        self.tail_unknown = True
                    changed = True
            if len(out) > MAX_FIELDS:
                raise HpackError("too many fields in one block")
        return out, partial, changed, deps


def _dep(deps: list, ents: list, index: int) -> list | None:
    """Note that a block read dynamic entry ``index`` (None: beyond what we hold)."""
    i = index - N_STATIC - 1
    if i < len(ents):
        deps.append((i, ents[i]))
        return deps
    return None


def _int(data: bytes, pos: int, prefix: int) -> tuple[int, int]:
    """RFC 7541 §5.1 integer with an N-bit prefix, starting at data[pos]."""
    mask = (1 << prefix) - 1
    v = data[pos] & mask
    pos += 1
    if v < mask:
        return v, pos
    shift = 0
    n = len(data)
    while True:
        if pos >= n:
            raise HpackError("integer runs past the block")
        b = data[pos]
        pos += 1
        v += (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, pos
        if shift > 28:
            raise HpackError("integer too long")


def _string(data: bytes, pos: int) -> tuple[str, int]:
    if pos >= len(data):
        raise HpackError("string runs past the block")
    huff = data[pos] & 0x80
    length, pos = _int(data, pos, 7)
    end = pos + length
    if end > len(data):
        raise HpackError("string runs past the block")
    if length > MAX_STRING:
        raise HpackError("string too long")
    raw = data[pos:end]
    return (_huffman(raw) if huff else raw.decode("latin-1")), end
