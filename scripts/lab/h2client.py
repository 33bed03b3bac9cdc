"""HTTP/2 (h2c, prior knowledge) client for the lab, on the ``h2`` package: one connection,
requests one at a time, each with its own headers. ``python h2client.py PLAN.json OUT.jsonl``
(PLAN as for h1client.py); one JSON line per request with the stream id and times."""

import json
import socket
import sys
import time

import h2.config
import h2.connection
import h2.events


def main() -> int:
    plan = json.load(open(sys.argv[1]))
    host, port = plan["target"].rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                header_encoding="utf-8"))
    conn.initiate_connection()
    s.sendall(conn.data_to_send())
    with open(sys.argv[2], "w") as out:
        for r in plan["requests"]:
            sid = conn.get_next_available_stream_id()
            hdrs = [(":method", r["method"]), (":scheme", "http"),
                    (":authority", plan["target"]), (":path", r["path"]),
                    *((k.lower(), v) for k, v in r["headers"].items())]
            t0 = time.time_ns()
            conn.send_headers(sid, hdrs, end_stream=True)
            s.sendall(conn.data_to_send())
            first = status = None
            done = False
            while not done:
                data = s.recv(65536)
                if not data:
                    raise ConnectionError("closed")
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                        first = first or time.time_ns()
                        status = int(dict(ev.headers)[":status"])
                    elif isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                        done = True
                    elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                        done = True
                pending = conn.data_to_send()
                if pending:
                    s.sendall(pending)
            t1 = time.time_ns()
            out.write(json.dumps({"id": r["id"], "stream_id": sid,
                                  "local_port": s.getsockname()[1], "send_ns": t0,
                                  "first_byte_ns": first or t1, "done_ns": t1,
                                  "status": status}) + "\n")
            time.sleep(plan.get("gap_s", 0.002))
    conn.close_connection()
    s.sendall(conn.data_to_send())
    s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
