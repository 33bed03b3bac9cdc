"""Live capture (``wirespan capture``) in throw-away network namespaces: curl -> nginx over a
veth pair, captured by wirespan on AF_PACKET sockets (and by tcpdump beside it for
comparison), on the veth and on ``lo``. Needs root, iproute2, tcpdump, nginx and curl.

wirespan runs as a subprocess (``ip netns exec NS wirespan capture ...``); the tests wait for
its "listening on" line, make the traffic, then end it with SIGTERM (or ``--duration``) and
read the JSON summary from its stdout and the spans from ``-o``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab import ENV, Lab, Proc, sh, wait_for, lab_or_skip

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parent.parent
WIRESPAN = str(Path(sys.executable).parent / "wirespan")
CLI_IP, SRV_IP = "10.99.6.1", "10.99.6.2"
PORT = 8080


@pytest.fixture
def lab() -> Iterator[Lab]:
    yield from lab_or_skip("live capture lab test")


def topology(lab: Lab) -> tuple[str, str, str]:
    """curl's namespace, nginx's namespace, and nginx's end of the veth between them."""
    cli, srv = lab.netns("cli"), lab.netns("srv")
    _, if_s = lab.veth(cli, srv, (f"{CLI_IP}/24",), (f"{SRV_IP}/24",))
    lab.nginx(srv, {"/hello.txt": b"hello live\n", "/big.bin": bytes(range(256)) * 400})
    return cli, srv, if_s


class Live:
    """A running ``wirespan capture`` with stdout (the --json summary) and stderr apart."""

    def __init__(self, lab: Lab, ns: str, *args: str, name: str = "live") -> None:
        self.out = lab.tmp / f"{name}.stdout"
        self.err = lab.tmp / f"{name}.stderr"
        self.spans = lab.tmp / f"{name}.spans.jsonl"
        with open(self.out, "wb") as o, open(self.err, "wb") as e:
            p = subprocess.Popen(["ip", "netns", "exec", ns, WIRESPAN, "capture", "--json",
                                  "-o", str(self.spans), *args], env=ENV, stdout=o, stderr=e,
                                 stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT)
        self.proc = Proc(name, p, self.err)
        lab.procs.append(self.proc)
        wait_for(lambda: "listening on" in self.proc.output() or not self.proc.alive(),
                 f"wirespan capture {args}")
        assert self.proc.alive(), f"wirespan capture exited:\n{self.proc.output()}"

    def stop(self, sig: int = signal.SIGTERM) -> dict:
        if self.proc.alive():
            os.kill(self.proc.pid, sig)
        return self.wait()

    def wait(self, timeout: float = 15) -> dict:
        rc = self.proc.popen.wait(timeout)
        assert rc == 0, f"wirespan capture exit {rc}:\n{self.proc.output()}"
        lines = [ln for ln in self.out.read_text().splitlines() if ln.startswith("{")]
        assert lines, f"no JSON summary:\n{self.out.read_text()}\n{self.proc.output()}"
        return json.loads(lines[-1])


# A client that makes one request on a keep-alive connection, reads the response, and holds
# the connection open.
HOLD_PY = r"""
import socket, sys, time
host, port, tid = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = socket.create_connection((host, port))
c.sendall(f"GET /hello.txt HTTP/1.1\r\nHost: {host}\r\n"
          f"traceparent: 00-{tid}-00f067aa0ba902b7-01\r\n\r\n".encode())
buf = b""
while not buf.endswith(b"hello live\n"):
    buf += c.recv(65536)
print("got", flush=True)
time.sleep(60)
"""


def trace_id(i: int) -> str:
    return f"{0x4bf92f3577b34da6a3ce929d0e0e4700 + i:032x}"


def curls(lab: Lab, cli: str, n: int, url: str) -> set[str]:
    ids = set()
    for i in range(n):
        tid = trace_id(i)
        ids.add(tid)
        lab.curl(cli, "-o", "/dev/null", "-H", f"traceparent: 00-{tid}-00f067aa0ba902b7-01", url)
    return ids


def _attr(span: dict, key: str):
    for a in span.get("attributes", []):
        if a["key"] == key:
            v = a["value"]
            return v.get("stringValue", v.get("intValue"))
    return None


def exchanges_of(path: Path) -> list[tuple]:
    """(method, path, status, trace id) of every span in an OTLP/JSON lines file, sorted."""
    out = []
    for line in path.read_text().splitlines():
        for rs in json.loads(line).get("resourceSpans", []):
            for ss in rs.get("scopeSpans", []):
                for sp in ss.get("spans", []):
                    out.append((_attr(sp, "http.request.method"), _attr(sp, "url.path"),
                                str(_attr(sp, "http.response.status_code")), sp["traceId"]))
    return sorted(out)


def test_capture_on_veth_sees_every_exchange_with_its_trace_id(lab: Lab) -> None:
    cli, srv, if_s = topology(lab)
    live = Live(lab, srv, "-i", if_s, "--duration", "4")
    ids = curls(lab, cli, 5, f"http://{SRV_IP}:{PORT}/hello.txt")
    s = live.wait()
    assert s["exchanges"] == {"http/1.1": 5}, s
    assert s["flows"] == 5
    assert s["gaps"] == 0 and s["kernel_drops"] == 0
    ex = exchanges_of(live.spans)
    assert {e[3] for e in ex} == ids
    assert all(e[:3] == ("GET", "/hello.txt", "200") for e in ex)
    # both directions were captured (outgoing packets too)
    assert s["packets"] >= 5 * 8
    (k,) = s["kernel"].values()
    assert k["packets"] == s["packets"]


def test_live_spans_equal_replay_of_tcpdump_capture(lab: Lab) -> None:
    cli, srv, if_s = topology(lab)
    dump = lab.tcpdump(srv, if_s, "ref", "tcp")
    saved = lab.tmp / "live.pcapng"
    live = Live(lab, srv, "-i", if_s, "-w", str(saved))
    ids = curls(lab, cli, 3, f"http://{SRV_IP}:{PORT}/hello.txt")
    ids |= curls(lab, cli, 1, f"http://{SRV_IP}:{PORT}/big.bin")  # many segments
    dump.wait_fins(8)
    dump.stop()
    s = live.stop()
    replay_spans = lab.tmp / "replay.jsonl"
    r = subprocess.run([WIRESPAN, "replay", "--json", "-o", str(replay_spans), str(dump.path)],
                       check=False, capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 0, r.stderr
    rs = json.loads(r.stdout)
    live_ex, replay_ex = exchanges_of(live.spans), exchanges_of(replay_spans)
    assert len(live_ex) == 4 and {e[3] for e in live_ex} == ids
    assert live_ex == replay_ex
    assert s["packets"] == rs["packets"] and s["bytes"] == rs["bytes"]
    assert s["exchanges"] == rs["exchanges"] == {"http/1.1": 4}
    # -w saved the same packets as a pcapng that replays (and tcpdump reads) the same
    assert s["saved"]["packets"] == s["packets"]
    again = lab.tmp / "again.jsonl"
    r = subprocess.run([WIRESPAN, "replay", "--json", "-o", str(again), str(saved)],
                       check=False, capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["interfaces"] == {f"live.pcapng:{if_s}": s["packets"]}
    assert exchanges_of(again) == live_ex
    n = len(sh("tcpdump", "-nn", "-r", str(saved), check=False).stdout.splitlines())
    assert n == s["packets"]


def test_filter_runs_in_the_kernel(lab: Lab) -> None:
    cli, srv, if_s = topology(lab)
    dump = lab.tcpdump(srv, if_s, "ref", "tcp")
    live = Live(lab, srv, "-i", if_s, "-f", "tcp port 9999")
    curls(lab, cli, 3, f"http://{SRV_IP}:{PORT}/hello.txt")
    dump.wait_fins(6)
    dump.stop()
    s = live.stop()
    assert dump.count("tcp port 8080") >= 3 * 8  # the traffic was there
    assert s["packets"] == 0 and s["exchanges"] == {}
    (k,) = s["kernel"].values()
    assert k["packets"] == 0, k  # the kernel never queued the filtered-out packets


def test_bad_filter_is_a_usage_error(lab: Lab) -> None:
    srv = lab.netns("srv")
    r = lab.run(srv, WIRESPAN, "capture", "-i", "lo", "-f", "tcp prot 80", check=False)
    assert r.returncode == 2
    assert "bad filter 'tcp prot 80'" in r.stderr


def test_loopback_packets_are_seen_once(lab: Lab) -> None:
    ns = lab.netns("srv")
    lab.nginx(ns, {"/hello.txt": b"hello lo\n"})
    dump = lab.tcpdump(ns, "lo", "lo", "tcp")
    live = Live(lab, ns, "-i", "lo")
    ids = curls(lab, ns, 3, f"http://127.0.0.1:{PORT}/hello.txt")
    dump.wait_fins(6)
    dump.stop()
    s = live.stop()
    n = dump.count("tcp")
    assert n >= 3 * 8
    assert s["packets"] == n
    assert s["exchanges"] == {"http/1.1": 3}
    assert {e[3] for e in exchanges_of(live.spans)} == ids


def test_sigterm_flushes_finished_exchanges(lab: Lab) -> None:
    cli, srv, if_s = topology(lab)
    live = Live(lab, srv, "-i", if_s, "--spans", "all")
    ids = curls(lab, cli, 4, f"http://{SRV_IP}:{PORT}/hello.txt")
    # a keep-alive connection still open when the signal comes, its exchange finished
    ids.add(trace_id(99))
    script = lab.tmp / "hold.py"
    script.write_text(HOLD_PY)
    hold = lab.spawn(cli, "hold", sys.executable, "-u", str(script), SRV_IP, str(PORT),
                     trace_id(99))
    wait_for(lambda: "got" in hold.output() or not hold.alive(), "the held connection")
    assert hold.alive(), hold.output()
    s = live.stop(signal.SIGTERM)
    assert s["exchanges"] == {"http/1.1": 5}, s
    got = {e[3] for e in exchanges_of(live.spans)}
    assert got == ids


def test_netns_option_opens_the_interface_inside(lab: Lab) -> None:
    cli, srv, if_s = topology(lab)
    # run wirespan in the host namespace; only the socket is opened inside srv
    out = lab.tmp / "netns.stdout"
    with open(out, "wb") as o, open(lab.tmp / "netns.stderr", "wb") as e:
        p = subprocess.Popen([WIRESPAN, "capture", "--json", "--netns", srv, "-i", if_s],
                             env=ENV, stdout=o, stderr=e, start_new_session=True)
    proc = Proc("netns", p, lab.tmp / "netns.stderr")
    lab.procs.append(proc)
    wait_for(lambda: "listening on" in proc.output() or not proc.alive(), "listening")
    assert proc.alive(), proc.output()
    curls(lab, cli, 2, f"http://{SRV_IP}:{PORT}/hello.txt")
    os.kill(p.pid, signal.SIGTERM)
    assert p.wait(15) == 0, proc.output()
    s = json.loads(out.read_text().splitlines()[-1])
    assert s["exchanges"] == {"http/1.1": 2}
    assert list(s["interfaces"]) == [f"live:{srv}/{if_s}"]


def test_without_cap_net_raw_one_clear_line(lab: Lab) -> None:
    if not sh("sh", "-c", "command -v setpriv", check=False).stdout:
        pytest.skip("setpriv not installed")
    r = sh("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
           WIRESPAN, "capture", "-i", "lo", check=False)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "CAP_NET_RAW" in lines[0], r.stderr


def test_several_interfaces_in_one_run(lab: Lab) -> None:
    cli, srv, if_s = topology(lab)
    live = Live(lab, srv, "-i", "any")  # lo and the veth, one socket each
    ids = curls(lab, cli, 2, f"http://{SRV_IP}:{PORT}/hello.txt")
    ids |= {trace_id(50 + i) for i in range(2)}
    for i in range(2):
        lab.curl(srv, "-o", "/dev/null", "-H",
                 f"traceparent: 00-{trace_id(50 + i)}-00f067aa0ba902b7-01",
                 f"http://127.0.0.1:{PORT}/hello.txt")
    s = live.stop()
    assert s["exchanges"] == {"http/1.1": 4}, s
    assert set(s["kernel"]) == {"live:lo", f"live:{if_s}"}
    assert {e[3] for e in exchanges_of(live.spans)} == ids
    per_if = s["interfaces"]
    assert per_if["live:lo"] > 0 and per_if[f"live:{if_s}"] > 0


def test_count_stops_after_n_packets(lab: Lab) -> None:
    cli, srv, if_s = topology(lab)
    live = Live(lab, srv, "-i", if_s, "-c", "6")
    curls(lab, cli, 2, f"http://{SRV_IP}:{PORT}/hello.txt")  # > 6 packets
    s = live.wait()
    assert s["packets"] == 6


def test_kernel_drops_are_counted(lab: Lab) -> None:
    cli, srv, if_s = topology(lab)
    live = Live(lab, srv, "-i", if_s, "-s", "2048", "--ring-block-kib", "8",
                "--ring-blocks", "2", "--workers", "1")
    os.kill(live.proc.pid, signal.SIGSTOP)  # nobody empties the 16 KiB ring meanwhile
    try:
        curls(lab, cli, 2, f"http://{SRV_IP}:{PORT}/big.bin")
    finally:
        os.kill(live.proc.pid, signal.SIGCONT)
    s = live.stop()
    (k,) = s["kernel"].values()
    assert k["drops"] > 0 and s["kernel_drops"] == k["drops"], k
    assert k["packets"] == s["packets"] + k["drops"], (k, s["packets"])


# -- fanout workers and several namespaces -------------------------------------------------------

def proxied_topology(lab: Lab) -> tuple[str, str, str]:
    """curl -> nginx reverse proxy on :8081 (the veth) -> nginx file server on :8080 (lo)."""
    cli, srv = lab.netns("cli"), lab.netns("srv")
    _, if_s = lab.veth(cli, srv, (f"{CLI_IP}/24",), (f"{SRV_IP}/24",))
    lab.nginx(srv, {"/hello.txt": b"hello live\n", "/big.bin": bytes(range(256)) * 400},
              extra_servers="""server { listen 8081;
                  location / { proxy_pass http://127.0.0.1:8080; proxy_http_version 1.1;
                               proxy_set_header Connection ""; } }""")
    return cli, srv, if_s


def all_spans(path: Path) -> list[str]:
    """Every span of an OTLP/JSON lines file, as canonical JSON, sorted."""
    out = []
    for line in path.read_text().splitlines():
        for rs in json.loads(line).get("resourceSpans", []):
            for ss in rs.get("scopeSpans", []):
                out += [json.dumps(sp, sort_keys=True) for sp in ss.get("spans", [])]
    return sorted(out)


def span_essence(path: Path) -> list[tuple]:
    """Per span: what it says about the request, its trace and the proxy, exactly; and its
    times. Two sockets on one interface do not get the same timestamps from the kernel (each
    delivery is stamped on its own, ~1 µs apart), so the times are compared with a tolerance."""
    out = []
    for js in all_spans(path):
        sp = json.loads(js)
        attrs = {a["key"]: next(iter(a["value"].values())) for a in sp["attributes"]}
        times = (int(sp["startTimeUnixNano"]), int(sp["endTimeUnixNano"]),
                 int(attrs.pop("wirespan.proxy.request_dwell_ns")),
                 int(attrs.pop("wirespan.proxy.response_dwell_ns")))
        for k in ("wirespan.proxy.upstream_duration_ns", "wirespan.proxy.upstream_connect_ns",
                  "wirespan.capture.interface", "client.address", "network.peer.address"):
            attrs.pop(k, None)
        out.append((sp["traceId"], sp["parentSpanId"], sp["name"],
                    json.dumps(attrs, sort_keys=True), times))
    return sorted(out)


def assert_same_spans(a: list[tuple], b: list[tuple], tol_ns: int) -> None:
    assert [x[:4] for x in a] == [y[:4] for y in b]
    for x, y in zip(a, b):
        worst = max(abs(p - q) for p, q in zip(x[4], y[4]))
        assert worst <= tol_ns, (x, y)


def test_fanout_two_workers_equal_one_and_replay(lab: Lab) -> None:
    """Two captures of the same proxied traffic at once, one process and two fanout workers,
    and tcpdump beside them: the same proxy spans from all three. The proxy's two legs are
    different connections, so with two workers hops are put together from both workers.

    The kernel stamps each socket's copy of a packet when it delivers it, so three sockets on
    one interface read times a few µs apart, up to ~0.2 ms on a loaded machine (measured):
    the identity of every span must be equal, its times within 1 ms."""
    cli, srv, if_s = proxied_topology(lab)
    dump = lab.tcpdump(srv, "any", "ref", "tcp")
    one = Live(lab, srv, "-i", if_s, "-i", "lo", "--workers", "1", name="one")
    two = Live(lab, srv, "-i", if_s, "-i", "lo", "--workers", "2", name="two")
    n = 24
    for i in range(n):
        tid = trace_id(200 + i)
        lab.curl(cli, "-o", "/dev/null", "-H", f"traceparent: 00-{tid}-00f067aa0ba902b7-01",
                 f"http://{SRV_IP}:8081/{'big.bin' if i % 6 == 0 else 'hello.txt'}")
    dump.wait_fins(2 * n)
    dump.stop()
    s1, s2 = one.stop(), two.stop()
    assert s2["workers"] == 2 and len(s2["worker_packets"]) == 2
    assert all(p > 0 for p in s2["worker_packets"]), s2["worker_packets"]  # both worked
    assert sum(s2["worker_packets"]) == s2["packets"] == s1["packets"]
    assert s1["exchanges"] == s2["exchanges"] == {"http/1.1": 2 * n}
    assert s1["kernel_drops"] == s2["kernel_drops"] == 0
    (p1,), (p2,) = s1["proxies"], s2["proxies"]
    assert p1["requests"] == p2["requests"] == n, (p1, p2)
    e1, e2 = span_essence(one.spans), span_essence(two.spans)
    assert len(e1) == n and {x[0] for x in e1} == {trace_id(200 + i) for i in range(n)}
    assert_same_spans(e1, e2, 1_000_000)
    replay = lab.tmp / "replay.jsonl"
    r = subprocess.run([WIRESPAN, "replay", "--json", "-o", str(replay), str(dump.path)],
                       check=False, capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["proxies"][0]["requests"] == n
    assert_same_spans(e2, span_essence(replay), 1_000_000)


def test_workers_default_and_count_rules(lab: Lab) -> None:
    srv = lab.netns("srv")
    r = lab.run(srv, WIRESPAN, "capture", "-i", "lo", "-c", "5", "--workers", "2",
                check=False)
    assert r.returncode == 2 and "--count needs --workers 1" in r.stderr
    r = lab.run(srv, WIRESPAN, "capture", "-i", "lo", "--workers", "0", check=False)
    assert r.returncode == 2 and "--workers must be at least 1" in r.stderr


def test_several_namespaces_in_one_run(lab: Lab) -> None:
    """From the host namespace: both ends of the veth, each in its own namespace, in one
    run; every exchange is seen twice and merged into one leg by the correlator."""
    cli, srv, if_s = topology(lab)
    if_c = next(n for _, n in socket_names(lab, cli) if n != "lo")
    out = lab.tmp / "multi.stdout"
    spans = lab.tmp / "multi.jsonl"
    with open(out, "wb") as o, open(lab.tmp / "multi.stderr", "wb") as e:
        p = subprocess.Popen([WIRESPAN, "capture", "--json", "-o", str(spans), "--netns", cli,
                              "--netns-path", f"/var/run/netns/{srv}", "-i", "any"],
                             env=ENV, stdout=o, stderr=e, start_new_session=True)
    proc = Proc("multi", p, lab.tmp / "multi.stderr")
    lab.procs.append(proc)
    wait_for(lambda: "listening on" in proc.output() or not proc.alive(), "listening")
    assert proc.alive(), proc.output()
    ids = curls(lab, cli, 3, f"http://{SRV_IP}:{PORT}/hello.txt")
    os.kill(p.pid, signal.SIGTERM)
    assert p.wait(15) == 0, proc.output()
    s = json.loads(out.read_text().splitlines()[-1])
    assert {f"live:{cli}/{if_c}", f"live:{srv}/{if_s}"} <= set(s["interfaces"]), s
    assert s["exchanges"] == {"http/1.1": 6}  # each exchange at both ends of the veth
    assert s["correlation"]["observations_merged"] == 3
    got = exchanges_of(spans)
    assert len(got) == 3 and {e[3] for e in got} == ids


def socket_names(lab: Lab, ns: str) -> list[tuple[int, str]]:
    r = lab.run(ns, sys.executable, "-c", "import socket; print(socket.if_nameindex())")
    return eval(r.stdout)  # noqa: S307 - our own subprocess' repr of a list of tuples


@pytest.mark.parametrize("workers", ["1", "2"])
def test_metrics_port_serves_the_contract_metrics(lab: Lab, workers: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    cli, srv, if_s = topology(lab)
    port = 19000 + os.getpid() % 1000
    live = Live(lab, srv, "-i", if_s, "--workers", workers, "--metrics-port", str(port))
    curls(lab, cli, 3, f"http://{SRV_IP}:{PORT}/hello.txt")

    def scrape() -> dict:
        r = lab.run(srv, "curl", "-s", f"http://127.0.0.1:{port}/metrics", check=False)
        out = {}
        for fam in text_string_to_metric_families(r.stdout):
            for smp in fam.samples:
                out[(smp.name, tuple(sorted(smp.labels.items())))] = smp.value
        return out

    want = ("wirespan_exchanges_total", (("protocol", "http/1.1"),))
    point = f"live:{if_s}"
    packets = ("wirespan_packets_total", (("interface", point),))
    # (the workers report their counters once a second)
    wait_for(lambda: scrape().get(want) == 3 and scrape().get(packets, 0) >= 24,
             "the exchanges and packets in /metrics", timeout=10)
    m = scrape()
    assert m[("wirespan_kernel_drops_total", (("interface", point),))] == 0
    assert ("wirespan_flows_active", ()) in m
    s = live.stop()
    assert s["exchanges"] == {"http/1.1": 3}
