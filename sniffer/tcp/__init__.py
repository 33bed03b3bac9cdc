"""TCP: connections keyed by 4-tuple *and* capture point, reassembled per direction.

``FlowTable.feed(ts_ns, capture_point, segment)`` takes decoded segments and drives each
direction's reassembler, which hands in-order bytes to a ``StreamConsumer``:
``data(chunk, ts_ns)`` with the timestamp of the packet that carried the chunk,
``gap(length, ts_ns)`` for bytes that will never arrive, and ``end(reason, ts_ns)``.
"""

from __future__ import annotations

from .flows import Connection, FlowTable, Half, StreamConsumer, TcpConfig

__all__ = ["Connection", "FlowTable", "Half", "StreamConsumer", "TcpConfig"]
