"""gRPC peers for the lab (grpcio, raw-bytes methods, no generated code).

``python grpcpeers.py server HOST PORT``: serves /wirespan.lab.Echo/Say (echoes the request
bytes), prints ``ready``. ``python grpcpeers.py client PLAN.json OUT.jsonl``: one unary call per
plan request, its headers sent as metadata, one JSON line each (times, grpc code)."""

import json
import os
import sys
import time

for k in ("http_proxy", "https_proxy", "all_proxy", "grpc_proxy", "HTTP_PROXY", "HTTPS_PROXY",
          "ALL_PROXY", "GRPC_PROXY", "no_grpc_proxy", "no_proxy", "NO_PROXY"):
    os.environ.pop(k, None)

import grpc  # noqa: E402

OPTS = [("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)]
METHOD = "/wirespan.lab.Echo/Say"


def server(host: str, port: str) -> None:
    from concurrent import futures

    def say(req: bytes, ctx) -> bytes:
        return b"echo:" + req

    h = grpc.method_handlers_generic_handler("wirespan.lab.Echo", {
        "Say": grpc.unary_unary_rpc_method_handler(say)})
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[h], options=OPTS)
    srv.add_insecure_port(f"{host}:{port}")
    srv.start()
    print("ready", flush=True)
    srv.wait_for_termination()


def client(plan_path: str, out_path: str) -> None:
    plan = json.load(open(plan_path))
    ch = grpc.insecure_channel(plan["target"], options=OPTS)
    grpc.channel_ready_future(ch).result(timeout=10)
    call = ch.unary_unary(METHOD)
    with open(out_path, "w") as out:
        for r in plan["requests"]:
            md = [(k.lower(), v) for k, v in r["headers"].items()]
            t0 = time.time_ns()
            try:
                call(r["id"].encode(), metadata=md, timeout=10)
                code = 0
            except grpc.RpcError as e:
                code = e.code().value[0]
            t1 = time.time_ns()
            out.write(json.dumps({"id": r["id"], "send_ns": t0, "first_byte_ns": None,
                                  "done_ns": t1, "status": 200, "grpc_status": code}) + "\n")
            time.sleep(plan.get("gap_s", 0.002))
    ch.close()


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(sys.argv[2], sys.argv[3])
    else:
        client(sys.argv[2], sys.argv[3])
