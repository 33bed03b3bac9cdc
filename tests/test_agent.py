"""The node agent end to end, started as the DaemonSet starts it (``wirespan agent --config``),
on a node the lab builds from network namespaces: a client pod, an nginx ingress pod and a
sidecar pod (iptables REDIRECT to haproxy, app on lo), the lab's ``chain`` scenario.

* The agent watches a netns directory of the test's own (as the DaemonSet watches the host's
  ``/var/run/netns`` through a hostPath mount); the test bind-mounts the lab's pod namespaces
  into it while the agent runs (pods appear) and removes one after the traffic (a pod
  vanishes), so discovery sees only this node's pods whatever else runs on the machine.
* A Kubernetes API served by the test (``FakeApiServer`` of test_agent_k8s, with recorded pod
  objects) learns the lab's pods as they are created: the agent's one watch carries them.
* Spans go to a real OTLP/gRPC receiver the test starts (``GrpcReceiver`` of
  test_exporters), and to ``-o`` for comparison.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from lab import ENV, wait_for
from test_agent_k8s import FakeApiServer, load
from test_exporters import GrpcReceiver, free_port

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parent.parent
WIRESPAN = str(Path(sys.executable).parent / "wirespan")
NODE = "lab-node"


def _need() -> None:
    if os.geteuid() != 0:
        pytest.skip("the agent lab test needs root (network namespaces, AF_PACKET)")
    from scripts.lab.scenarios import missing

    gone = missing("nginx", "haproxy", "ip", "iptables")
    if gone:
        pytest.skip(f"missing tools: {', '.join(gone)} (scripts/setup installs them)")


def pod_object(name: str, namespace: str, ip: str, uid: str, owner: tuple[str, str] | None,
               template_hash: str = "") -> dict:
    """A pod as the API server returns it, made from a recorded one."""
    obj = copy.deepcopy(load("podlist-lab-node.json")["items"][-1])  # web-7d4b9c6f5-x8k2p
    md = obj["metadata"]
    md.update(name=name, namespace=namespace, uid=uid, labels={"app": name.split("-")[0]})
    md.pop("generateName", None)
    md.pop("managedFields", None)
    if owner:
        kind, oname = owner
        md["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": kind, "name": oname,
                                  "uid": uid[::-1], "controller": True,
                                  "blockOwnerDeletion": True}]
        if template_hash:
            md["labels"]["pod-template-hash"] = template_hash
    else:
        md.pop("ownerReferences", None)
    obj["spec"]["nodeName"] = NODE
    obj["status"]["podIP"] = ip
    obj["status"]["podIPs"] = [{"ip": ip}]
    obj["status"]["phase"] = "Running"
    return obj


PODS = {  # lab pod -> (k8s name, namespace, owner, pod-template-hash)
    "client": ("loadgen", "tools", None, ""),
    "ingress": ("ingress-nginx-6f9c8d7b5-k2x9p", "ingress",
                ("ReplicaSet", "ingress-nginx-6f9c8d7b5"), "6f9c8d7b5"),
    "server": ("shop-0", "shop", ("StatefulSet", "shop"), ""),
}


class AgentProc:
    def __init__(self, tmp: Path, cfg: dict) -> None:
        self.cfg_path = tmp / "agent.yaml"
        import yaml

        self.cfg_path.write_text(yaml.safe_dump(cfg))
        self.err = tmp / "agent.stderr"
        self.spans = tmp / "agent.jsonl"
        self.port = int(cfg["listen"].rsplit(":", 1)[1])
        env = {k: v for k, v in ENV.items() if not k.startswith("WIRESPAN_")}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        with open(self.err, "wb") as e:
            self.p = subprocess.Popen([WIRESPAN, "agent", "--config", str(self.cfg_path), "-o",
                                       str(self.spans)], env=env, stdout=subprocess.DEVNULL,
                                      stderr=e, start_new_session=True, cwd=ROOT)

    def logs(self) -> list[dict]:
        out = []
        for line in self.err.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"level": "raw", "msg": line})
        return out

    def logged(self, msg: str, **fields: object) -> list[dict]:
        return [r for r in self.logs() if r.get("msg") == msg
                and all(r.get(k) == v for k, v in fields.items())]

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except urllib.error.URLError:  # not listening (yet)
            return 0, ""

    def metric(self, name: str, **labels: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for fam in text_string_to_metric_families(self.get("/metrics")[1]):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def stop(self) -> int:
        if self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGTERM)
        return self.p.wait(30)

    def kill(self) -> None:
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait(10)


def _attrs(kvs) -> dict:
    out = {}
    for kv in kvs:
        v = kv.value
        out[kv.key] = getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None
    return out


def test_agent_follows_pods_and_exports_proxy_spans_with_pod_metadata(tmp_path, monkeypatch):
    _need()
    from scripts.lab import node as lab_node
    from scripts.lab import scenarios

    api = FakeApiServer()
    recv = GrpcReceiver()
    netns_dir = tmp_path / "netns"
    netns_dir.mkdir()
    (tmp_path / "proc").mkdir()  # no unnamed namespaces: only the ones the test hands over
    cfg = {
        "node_name": NODE, "listen": f"127.0.0.1:{free_port()}", "log_level": "info",
        "shutdown_grace_s": 8,
        "discovery": {"netns_dirs": [str(netns_dir)], "proc": str(tmp_path / "proc"),
                      "rescan_interval_s": 1},
        "kubernetes": {"enabled": "true", "api_url": api.url,
                       "token_file": str(tmp_path / "no-token"),
                       "ca_file": str(tmp_path / "no-ca")},
        "export": {"otlp_endpoint": f"http://127.0.0.1:{recv.port}", "otlp_protocol": "grpc",
                   "timeout_s": 5},
    }
    agent = AgentProc(tmp_path, cfg)
    mounted: list[Path] = []
    state: dict = {}

    def hand_over(node) -> None:
        """The pods exist: mount them where the agent looks, tell the API about them."""
        for i, (lab_name, pod) in enumerate(node.pods.items()):
            name, ns, owner, th = PODS[lab_name]
            uid = f"5f1c2d3e-0000-4000-8000-{i + 1:012d}"
            state.setdefault("uids", {})[lab_name] = uid
            api.add(pod_object(name, ns, pod.ip, uid, owner, th))
            target = netns_dir / lab_name
            target.touch()
            subprocess.run(["mount", "--bind", f"/var/run/netns/{pod.ns}", str(target)],
                           check=True)
            mounted.append(target)
        state["ips"] = {n: p.ip for n, p in node.pods.items()}
        wait_for(lambda: len(agent.logged("pod namespace added")) >= 3, "the agent adding pods",
                 timeout=10)
        wait_for(lambda: agent.metric("wirespan_pods_captured") == 3, "3 pods captured")
        wait_for(lambda: agent.metric("wirespan_kubernetes_api_up") == 1, "the API watched")

    def client_pod_goes(node) -> None:
        """After the traffic: the client pod is deleted while the agent runs."""
        time.sleep(1.5)  # the last hops settle (200 ms) and are emitted by the clock
        target = netns_dir / "client"
        subprocess.run(["umount", str(target)], check=True)
        target.unlink()
        mounted.remove(target)
        api.delete(state["uids"]["client"])
        wait_for(lambda: agent.logged("pod namespace removed", netns="client"),
                 "the agent noticing the pod is gone", timeout=10)

    orig_capture, orig_stop = lab_node.Node.capture_all, lab_node.Node.stop_captures

    def capture_all(self, out_dir):
        r = orig_capture(self, out_dir)
        hand_over(self)
        return r

    def stop_captures(self):
        orig_stop(self)
        client_pod_goes(self)

    monkeypatch.setattr(lab_node.Node, "capture_all", capture_all)
    monkeypatch.setattr(lab_node.Node, "stop_captures", stop_captures)
    try:
        wait_for(lambda: agent.logged("discovery pass complete") or agent.p.poll() is not None,
                 "the agent starting", timeout=20)
        assert agent.p.poll() is None, agent.err.read_text()
        assert agent.get("/healthz")[0] == 200 and agent.get("/readyz")[0] == 200
        truth = scenarios.run_chain(tmp_path / "chain", n=40)
        status_before_stop = agent.metric("wirespan_pod_events_total", event="removed")
        rc = agent.stop()
    finally:
        agent.kill()
        for m in mounted:
            subprocess.run(["umount", str(m)], check=False)
        api.stop()
    logs = agent.logs()
    assert rc == 0, agent.err.read_text()[-3000:]
    assert status_before_stop == 1
    assert not [r for r in logs if r.get("level") in ("error", "raw")], logs
    stopped = agent.logged("stopped")
    assert stopped and stopped[0]["spans_exported"] == stopped[0]["spans"] > 0, stopped

    # every proxy hop of every traced request arrived, with the trace the client sent and
    # the metadata of the proxy's pod
    proxy_spans: dict[tuple[str, str], list[tuple[dict, object]]] = {}
    # hops of requests sent without a trace header (trace id derived from the observation, or
    # from the X-Request-ID the ingress added)
    synthetic: list[tuple[dict, object]] = []
    for req in recv.requests:
        for rs in req.resource_spans:
            res = _attrs(rs.resource.attributes)
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    a = _attrs(sp.attributes)
                    if a.get("wirespan.span.role") == "proxy" and (
                            a.get("wirespan.trace.synthetic")
                            or a.get("wirespan.trace.format") == "request-id"):
                        synthetic.append((res, sp))
                    elif a.get("wirespan.span.role") == "proxy":
                        key = (sp.trace_id.hex(), a["wirespan.proxy.address"])
                        proxy_spans.setdefault(key, []).append((res, sp))
    ips = state["ips"]
    want_pods = {"ingress": ("ingress-nginx-6f9c8d7b5-k2x9p", "ingress", ips["ingress"]),
                 "sidecar": ("shop-0", "shop", ips["server"])}
    traced = [r for r in truth["requests"] if r["trace"]["format"] and r["client"]
              and r["client"]["status"] == 200]
    assert len(traced) >= 30
    for r in traced:
        for hop in r["hops"]:
            got = proxy_spans.get((r["trace"]["trace_id"], hop["address"]))
            assert got and len(got) == 1, (r["id"], hop["proxy"], sorted(proxy_spans)[:3])
            res, sp = got[0]
            assert sp.parent_span_id.hex() == hop["span_id_in"]
            name, ns, ip = want_pods[hop["proxy"]]
            assert res["k8s.pod.name"] == name and res["k8s.namespace.name"] == ns, res
            assert res["k8s.pod.ip"] == ip and res["k8s.node.name"] == NODE
            assert res["service.name"] == "wirespan"
    ing_res = next(res for (t, a), v in proxy_spans.items() for res, _ in v
                   if res.get("k8s.pod.name") == want_pods["ingress"][0])
    assert ing_res["k8s.deployment.name"] == "ingress-nginx"
    srv_res = next(res for v in proxy_spans.values() for res, _ in v
                   if res.get("k8s.pod.name") == "shop-0")
    assert srv_res["k8s.statefulset.name"] == "shop"
    # no proxy span that is not a hop of the truth
    hops_true = {(r["trace"]["trace_id"], h["address"]) for r in truth["requests"]
                 if r["trace"]["format"] for h in r["hops"]}
    untraced = [r for r in truth["requests"] if not r["trace"]["format"]]
    # (untraced requests are matched by timing alone, which gives up when two candidates fit)
    assert len(synthetic) <= sum(len(r["hops"]) for r in untraced)
    extra = set(proxy_spans) - hops_true
    assert not extra, [(k, [r for r in truth["requests"] if r["trace"]["trace_id"] == k[0]])
                       for k in extra]
    # the -o file holds the same spans as the collector got
    n_file = sum(len(ss["spans"]) for line in agent.spans.read_text().splitlines()
                 for rs in json.loads(line)["resourceSpans"] for ss in rs["scopeSpans"])
    assert n_file == len(recv.spans()) == stopped[0]["spans"]
    # the pod watch went through the API, filtered by node; lookups did not
    watches = [q for q in api.watch_requests()]
    assert watches and all("spec.nodeName=lab-node" in json.dumps(q) for q in watches)
    assert api.count(watch=False) <= 3  # the initial list (and a relist at most)


def test_agent_config_errors_name_the_field(tmp_path):
    bad = tmp_path / "agent.yaml"
    bad.write_text("capture:\n  snaplen: lots\n")
    r = subprocess.run([WIRESPAN, "agent", "--config", str(bad)], capture_output=True,
                       text=True, env=ENV, timeout=30)
    assert r.returncode == 2
    assert "capture.snaplen" in r.stderr and str(bad) in r.stderr


def test_agent_port_in_use_is_one_clear_error(tmp_path):
    import socket

    if os.geteuid() != 0:
        pytest.skip("the agent needs root")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    (tmp_path / "proc").mkdir()
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"listen: 127.0.0.1:{port}\ndiscovery:\n  netns_dirs: [{tmp_path}]\n"
                   f"  proc: {tmp_path / 'proc'}\nkubernetes:\n  enabled: false\n")
    try:
        r = subprocess.run([WIRESPAN, "agent", "--config", str(cfg)], capture_output=True,
                           text=True, env=ENV, timeout=30)
    finally:
        s.close()
    assert r.returncode == 1
    assert f"address already in use: 127.0.0.1:{port}" in r.stderr


FLOOD_PY = r"""
import socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = []
for i in range(n):
    s = socket.create_connection((host, port))
    s.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n")
    socks.append(s)
for s in socks:
    s.recv(65536)
print("open", len(socks), flush=True)
time.sleep(60)
"""


def test_a_flood_of_connections_stays_within_max_flows(tmp_path):
    """limits.max_flows bounds the connections the agent tracks node-wide: 400 connections
    held open against a limit of 64 leave at most 64 tracked (the least recently active are
    evicted, counted), and the agent keeps serving its endpoints."""
    _need()
    from lab import Lab

    lab = Lab()
    mounted: list[Path] = []
    netns_dir = tmp_path / "netns"
    netns_dir.mkdir()
    (tmp_path / "proc").mkdir()
    agent = None
    try:
        cli, srv = lab.netns("cli"), lab.netns("srv")
        if_c, if_s = lab.veth(cli, srv, ("10.99.8.1/24",), ("10.99.8.2/24",))
        lab.nginx(srv, {"/hello.txt": b"hi\n"})
        cfg = {"listen": f"127.0.0.1:{free_port()}", "kubernetes": {"enabled": "false"},
               "discovery": {"netns_dirs": [str(netns_dir)], "proc": str(tmp_path / "proc")},
               "limits": {"max_flows": 64}, "export": {"spans": "all"},
               "capture": {"interfaces": [if_c, if_s]}}
        agent = AgentProc(tmp_path, cfg)
        for name in (cli, srv):
            (netns_dir / name).touch()
            subprocess.run(["mount", "--bind", f"/var/run/netns/{name}",
                            str(netns_dir / name)], check=True)
            mounted.append(netns_dir / name)
        wait_for(lambda: agent.metric("wirespan_pods_captured") == 2 or agent.p.poll() is not None,
                 "2 pods", timeout=20)
        assert agent.p.poll() is None, agent.err.read_text()
        script = lab.tmp / "flood.py"
        script.write_text(FLOOD_PY)
        flood = lab.spawn(cli, "flood", sys.executable, "-u", str(script), "10.99.8.2", "8080",
                          "400")
        wait_for(lambda: "open 400" in flood.output() or not flood.alive(), "the flood",
                 timeout=60)
        assert flood.alive(), flood.output()
        time.sleep(1.5)  # a metrics tick
        assert 0 < agent.metric("wirespan_flows_active") <= 64
        assert agent.get("/healthz")[0] == 200
        rc = agent.stop()
        assert rc == 0, agent.err.read_text()[-2000:]
        stopped = agent.logged("stopped")
        # every connection was seen twice (both ends of the veth): 800 flows for 64 slots
        assert stopped and stopped[0]["exchanges"] >= 400, stopped
    finally:
        if agent is not None:
            agent.kill()
        for m in mounted:
            subprocess.run(["umount", str(m)], check=False)
        lab.close()
