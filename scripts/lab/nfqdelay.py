"""Hold every packet of an NFQUEUE for a fixed number of milliseconds, then accept it.

A stand-in for ``tc qdisc netem delay`` on kernels without sch_netem: an iptables rule
``-j NFQUEUE --queue-num Q`` sends packets here; we speak nfnetlink_queue ourselves over a raw
``AF_NETLINK``/``NETLINK_NETFILTER`` socket (no libnetfilter_queue, no compiled extension),
ask for metadata only (COPY_META: the packet id is all we need), and give each packet its
ACCEPT verdict ``delay`` ms after it arrived. Verdicts go out in arrival order, so a fixed
delay never reorders a flow.

Usage (inside the namespace that has the rule): ``python nfqdelay.py QUEUE DELAY_MS [LOG]``.
Prints ``ready`` once bound; with LOG, appends one JSON line per packet (id, arrival and
release times in ns since the epoch). Stops on SIGTERM/SIGINT (unbinding: the kernel drops
a queue's pending packets when the socket closes, so stop it only after the traffic is done).
"""

from __future__ import annotations

import collections
import json
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS = 1, 2
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NF_ACCEPT = 1
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR, NLMSG_DONE = 2, 3


def _attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * ((4 - n % 4) % 4)


class Queue:
    def __init__(self, num: int) -> None:
        self.num = num
        self.seq = 0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((0, 0))

    def _send(self, msg: int, attrs: bytes, flags: int = NLM_F_REQUEST) -> None:
        self.seq += 1
        body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(self.num)) + attrs
        hdr = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg, flags,
                          self.seq, 0)
        self.sock.send(hdr + body)

    def _ack(self) -> None:
        data = self.sock.recv(65536)
        n, kind = struct.unpack_from("=IH", data)
        if kind == NLMSG_ERROR:
            (err,) = struct.unpack_from("=i", data, 16)
            if err:
                raise OSError(-err, f"nfqueue config refused: errno {-err}")

    def bind(self) -> None:
        # command: (u8 cmd, u8 pad, be16 pf); params: (be32 copy_range, u8 copy_mode)
        self._send(NFQNL_MSG_CONFIG, _attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND,
                                                                      0, socket.AF_INET)),
                   NLM_F_REQUEST | NLM_F_ACK)
        self._ack()
        self._send(NFQNL_MSG_CONFIG, _attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0,
                                                                         NFQNL_COPY_META)),
                   NLM_F_REQUEST | NLM_F_ACK)
        self._ack()

    def packets(self) -> list[int]:
        """Packet ids of the messages waiting on the socket (non-blocking read of one batch)."""
        data = self.sock.recv(1 << 20)
        ids, pos = [], 0
        while pos + 16 <= len(data):
            n, kind = struct.unpack_from("=IH", data, pos)
            if n < 16:
                break
            if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                a = pos + 20  # nlmsghdr (16) + nfgenmsg (4)
                while a + 4 <= pos + n:
                    alen, atype = struct.unpack_from("=HH", data, a)
                    if alen < 4:
                        break
                    if atype & 0x7FFF == NFQA_PACKET_HDR:
                        ids.append(struct.unpack_from("!I", data, a + 4)[0])
                    a += (alen + 3) & ~3
            pos += (n + 3) & ~3
        return ids

    def accept(self, pid: int) -> None:
        self._send(NFQNL_MSG_VERDICT, _attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, pid)))


def main(argv: list[str]) -> int:
    num, delay_ns = int(argv[1]), int(float(argv[2]) * 1e6)
    log = open(argv[3], "a") if len(argv) > 3 else None
    q = Queue(num)
    q.bind()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    held: collections.deque[tuple[int, int, int]] = collections.deque()  # (release, arrival, id)
    print("ready", flush=True)
    while not stop:
        now = time.time_ns()
        while held and held[0][0] <= now:
            rel, arr, pid = held.popleft()
            q.accept(pid)
            if log:
                log.write(json.dumps({"id": pid, "arrival_ns": arr, "release_ns": time.time_ns(),
                                      "delay_ms": delay_ns / 1e6}) + "\n")
        timeout = max(0.0, (held[0][0] - time.time_ns()) / 1e9) if held else 0.2
        try:
            r, _, _ = select.select([q.sock], [], [], timeout)
        except InterruptedError:
            continue
        if r:
            t = time.time_ns()
            for pid in q.packets():
                held.append((t + delay_ns, t, pid))
    for _, _, pid in held:  # let anything still held through before unbinding
        q.accept(pid)
    if log:
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
