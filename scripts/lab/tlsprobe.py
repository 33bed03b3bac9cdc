"""A one-shot TLS probe for the mTLS scenarios (runs inside a pod): does the inbound sidecar
take a connection with / without a client certificate?

``python tlsprobe.py HOST:PORT SNI CA [CERT KEY] [--uid UID] [--tls 1.2|1.3]``: loads the CA
(and the client certificate, if given) as root, then drops to ``UID`` before opening the
socket (a socket's owner is fixed when it is made: with the proxy's uid the pod's OUTPUT
redirect lets it through, as it does the proxy), handshakes with ALPN http/1.1, verifies the
server's certificate against the CA and the SNI, sends ``GET /index.html`` and reads the
answer. Prints one JSON object: ok (an HTTP answer came back), stage reached ("connect" |
"handshake" | "request" | "response"), error, version, alpn, cipher, peer (the server
certificate's subject CN), status.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import sys


def main(argv: list[str]) -> int:
    args = list(argv[1:])
    uid = tls = None
    if "--uid" in args:
        i = args.index("--uid")
        uid = int(args[i + 1])
        del args[i:i + 2]
    if "--tls" in args:
        i = args.index("--tls")
        tls = args[i + 1]
        del args[i:i + 2]
    target, sni, ca = args[:3]
    ctx = ssl.create_default_context(cafile=ca)
    if tls == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if len(args) >= 5:
        ctx.load_cert_chain(args[3], args[4])
    ctx.set_alpn_protocols(["http/1.1"])
    if uid is not None:
        import encodings.idna  # noqa: F401 - getaddrinfo needs it; unreadable after the drop
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    host, port = target.rsplit(":", 1)
    res: dict = {"target": target, "sni": sni, "client_cert": len(args) >= 5, "ok": False,
                 "stage": "connect", "error": None}
    try:
        raw = socket.create_connection((host, int(port)), timeout=5)
        res["stage"] = "handshake"
        with ctx.wrap_socket(raw, server_hostname=sni) as s:
            res.update(version=s.version(), alpn=s.selected_alpn_protocol(),
                       cipher=s.cipher()[0],
                       peer=dict(x[0] for x in s.getpeercert()["subject"]).get("commonName"))
            res["stage"] = "request"
            s.sendall(f"GET /index.html HTTP/1.1\r\nHost: {sni}\r\nx-lab-id: probe\r\n"
                      "Connection: close\r\n\r\n".encode())
            data = b""
            while True:
                d = s.recv(65536)
                if not d:
                    break
                data += d
            res["stage"] = "response"
            line = data.split(b"\r\n", 1)[0].decode("latin-1")
            res["status"] = int(line.split()[1]) if line.startswith("HTTP/") else None
            res["ok"] = res["status"] is not None  # the proxy took it and answered
    except (OSError, ssl.SSLError) as e:
        res["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
