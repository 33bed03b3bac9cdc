"""The client app of the mTLS mesh scenarios (runs inside the client pod, as root: its
connections are REDIRECTed to the pod's outbound sidecar). One program for the three
protocols, sequential or concurrent.

``python meshclient.py {h1|h2|grpc} PLAN.json OUT.jsonl``. PLAN: {"target": "ip:port",
"connections": C, "concurrency": K, "gap_s": s, "stagger_s": s, "requests": [{"id", "method",
"path", "headers": {...}}]}. With K > 1 the K workers (h1, gRPC) start ``stagger_s`` apart
(default 3 ms), then all run at once; before them the first ``warmup`` requests (default 1)
go alone, so that the proxies' upstream TLS connections exist, as in a warmed-up mesh (a
request arriving while its proxy's only upstream connection is still handshaking makes it
open another one).

* h1: C keep-alive connections opened up front. K == 1: one request in flight in all,
  round-robin over the connections (the accuracy run). K > 1: one thread per connection
  (C = K), each sending its share one at a time, all connections busy at once.
* h2: h2c with prior knowledge on one connection (``h2`` package), at most K streams in
  flight (K == 1: one at a time), each request with its own headers.
* grpc: one grpcio channel, unary /wirespan.lab.Echo/Say, K threads calling at once,
  the request's headers as metadata.

One JSON line per request: id, conn (index), local_port, stream_id (h2), send_ns,
first_byte_ns (response head; None for gRPC), done_ns (ns since the epoch), status,
grpc_status. Prints ``done`` at the end.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time

for _k in ("http_proxy", "https_proxy", "all_proxy", "grpc_proxy", "HTTP_PROXY", "HTTPS_PROXY",
           "ALL_PROXY", "GRPC_PROXY", "no_grpc_proxy", "no_proxy", "NO_PROXY"):
    os.environ.pop(_k, None)

LOCK = threading.Lock()


def emit(out, row: dict) -> None:
    with LOCK:
        out.write(json.dumps(row) + "\n")


# -- HTTP/1.1 ----------------------------------------------------------------------------------

def read_response(sock: socket.socket, buf: bytes) -> tuple[int, bytes, int]:
    """(status, bytes after the response, time of its first byte): h1client's reader."""
    from h1client import read_response as read  # (this script's own directory)

    status, _hdrs, rest, first = read(sock, buf)
    return status, rest, first


def h1(plan: dict, out) -> None:
    host, port = plan["target"].rsplit(":", 1)
    k = max(1, plan.get("concurrency", 1))
    nconn = k if k > 1 else max(1, plan.get("connections", 1))
    conns = [socket.create_connection((host, int(port)), timeout=20) for _ in range(nconn)]
    for c in conns:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    bufs = [b""] * nconn
    gap = plan.get("gap_s", 0.002)

    def one(ci: int, r: dict) -> None:
        c = conns[ci]
        hdrs = {"Host": plan.get("host", plan["target"]), "User-Agent": "wirespan-lab/1",
                **r["headers"]}
        msg = f"{r['method']} {r['path']} HTTP/1.1\r\n" + "".join(
            f"{a}: {b}\r\n" for a, b in hdrs.items()) + "\r\n"
        t0 = time.time_ns()
        c.sendall(msg.encode("latin-1"))
        status, bufs[ci], first = read_response(c, bufs[ci])
        t1 = time.time_ns()
        emit(out, {"id": r["id"], "conn": ci, "local_port": c.getsockname()[1], "send_ns": t0,
                   "first_byte_ns": first or t1, "done_ns": t1, "status": status})

    reqs = plan["requests"]
    if k == 1:
        for i, r in enumerate(reqs):
            one(i % nconn, r)
            time.sleep(gap)
    else:
        warm = plan.get("warmup", 1)
        for r in reqs[:warm]:
            one(0, r)
            time.sleep(gap)
        reqs = reqs[warm:]
        start = threading.Barrier(nconn)
        stagger = plan.get("stagger_s", 0.003)

        def worker(ci: int) -> None:
            start.wait()
            time.sleep(ci * stagger)
            for r in reqs[ci::nconn]:
                one(ci, r)
                time.sleep(gap)
        ts = [threading.Thread(target=worker, args=(i,)) for i in range(nconn)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    for c in conns:
        c.close()


# -- HTTP/2 (h2c) ------------------------------------------------------------------------------

def h2c(plan: dict, out) -> None:
    import h2.config
    import h2.connection
    import h2.events

    host, port = plan["target"].rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=20)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                header_encoding="utf-8"))
    conn.initiate_connection()
    s.sendall(conn.data_to_send())
    k = max(1, plan.get("concurrency", 1))
    gap = plan.get("gap_s", 0.002)
    todo = list(plan["requests"])
    warm = plan.get("warmup", 1) if k > 1 else 0
    open_: dict[int, dict] = {}  # stream id -> {r, t0, first, status}
    lport = s.getsockname()[1]
    done = 0
    while todo or open_:
        limit = 1 if done < warm else k
        while todo and len(open_) < limit:
            r = todo.pop(0)
            sid = conn.get_next_available_stream_id()
            hdrs = [(":method", r["method"]), (":scheme", "http"),
                    (":authority", plan["target"]), (":path", r["path"]),
                    *((a.lower(), b) for a, b in r["headers"].items())]
            t0 = time.time_ns()
            conn.send_headers(sid, hdrs, end_stream=True)
            s.sendall(conn.data_to_send())
            open_[sid] = {"r": r, "t0": t0, "first": None, "status": None}
            if k > 1 and todo and len(open_) < k:
                time.sleep(gap / k)  # staggered, not one burst
        data = s.recv(65536)
        if not data:
            raise ConnectionError("closed")
        now = time.time_ns()
        for ev in conn.receive_data(data):
            st = open_.get(getattr(ev, "stream_id", 0) or 0)
            if isinstance(ev, h2.events.ResponseReceived) and st:
                st["first"] = st["first"] or now
                st["status"] = int(dict(ev.headers)[":status"])
            elif isinstance(ev, h2.events.DataReceived):
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)) and st:
                t1 = time.time_ns()
                del open_[ev.stream_id]
                done += 1
                emit(out, {"id": st["r"]["id"], "conn": 0, "stream_id": ev.stream_id,
                           "local_port": lport, "send_ns": st["t0"],
                           "first_byte_ns": st["first"] or t1, "done_ns": t1,
                           "status": st["status"]})
                if k == 1 or done <= warm:
                    pending = conn.data_to_send()
                    if pending:
                        s.sendall(pending)
                    time.sleep(gap)
        pending = conn.data_to_send()
        if pending:
            s.sendall(pending)
    conn.close_connection()
    s.sendall(conn.data_to_send())
    s.close()


# -- gRPC --------------------------------------------------------------------------------------

def grpc_client(plan: dict, out) -> None:
    import grpc

    opts = [("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)]
    ch = grpc.insecure_channel(plan["target"], options=opts)
    grpc.channel_ready_future(ch).result(timeout=10)
    call = ch.unary_unary("/wirespan.lab.Echo/Say")
    k = max(1, plan.get("concurrency", 1))
    gap = plan.get("gap_s", 0.002)
    reqs = plan["requests"]

    def one(r: dict) -> None:
        md = [(a.lower(), b) for a, b in r["headers"].items()]
        t0 = time.time_ns()
        try:
            call(r["id"].encode(), metadata=md, timeout=20)
            code = 0
        except grpc.RpcError as e:
            code = e.code().value[0]
        t1 = time.time_ns()
        emit(out, {"id": r["id"], "conn": 0, "send_ns": t0, "first_byte_ns": None,
                   "done_ns": t1, "status": 200, "grpc_status": code})

    if k == 1:
        for r in reqs:
            one(r)
            time.sleep(gap)
    else:
        warm = plan.get("warmup", 1)
        for r in reqs[:warm]:
            one(r)
            time.sleep(gap)
        reqs = reqs[warm:]
        start = threading.Barrier(k)
        stagger = plan.get("stagger_s", 0.003)

        def worker(i: int) -> None:
            start.wait()
            time.sleep(i * stagger)
            for r in reqs[i::k]:
                one(r)
                time.sleep(gap)
        ts = [threading.Thread(target=worker, args=(i,)) for i in range(k)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    ch.close()


def main(argv: list[str]) -> int:
    proto, plan_path, out_path = argv[1:4]
    plan = json.load(open(plan_path))
    with open(out_path, "w") as out:
        {"h1": h1, "h2": h2c, "grpc": grpc_client}[proto](plan, out)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
