"""HTTP/1.1 load client for the lab (runs inside the client pod).

``python h1client.py PLAN.json OUT.jsonl``: PLAN is {"target": "ip:port", "connections": N,
"requests": [{"id", "method", "path", "headers": {...}}]}; requests are sent one at a time,
round-robin over N keep-alive connections opened up front. For each request one JSON line:
id, connection local port, send/first-byte/done times (ns since the epoch), status and the
response's x-lab-* headers. Stops by itself when the plan is done.
"""

import json
import socket
import sys
import time


def read_response(sock: socket.socket, buf: bytes) -> tuple[int, dict, bytes, int]:
    first = 0
    while b"\r\n\r\n" not in buf:
        d = sock.recv(65536)
        if not d:
            raise ConnectionError("closed before response head")
        first = first or time.time_ns()
        buf += d
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    n = int(hdrs.get("content-length", "0"))
    while len(rest) < n:
        d = sock.recv(65536)
        if not d:
            raise ConnectionError("closed in body")
        rest += d
    return status, hdrs, rest[n:], first


def main() -> int:
    plan = json.load(open(sys.argv[1]))
    host, port = plan["target"].rsplit(":", 1)
    conns = [socket.create_connection((host, int(port)), timeout=10)
             for _ in range(plan.get("connections", 1))]
    for c in conns:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    bufs = [b""] * len(conns)
    with open(sys.argv[2], "w") as out:
        for i, r in enumerate(plan["requests"]):
            k = i % len(conns)
            c = conns[k]
            hdrs = {"Host": plan.get("host", plan["target"]), "User-Agent": "wirespan-lab/1",
                    **r["headers"]}
            msg = f"{r['method']} {r['path']} HTTP/1.1\r\n" + "".join(
                f"{a}: {b}\r\n" for a, b in hdrs.items()) + "\r\n"
            t0 = time.time_ns()
            c.sendall(msg.encode("latin-1"))
            status, rh, bufs[k], first = read_response(c, bufs[k])
            t1 = time.time_ns()
            out.write(json.dumps({
                "id": r["id"], "local_port": c.getsockname()[1], "send_ns": t0,
                "first_byte_ns": first or t1, "done_ns": t1, "status": status,
                "response_headers": {a: b for a, b in rh.items() if a.startswith("x-lab")},
            }) + "\n")
            time.sleep(plan.get("gap_s", 0.002))
    for c in conns:
        c.close()
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
