"""Pod metadata for the agent (sniffer/agent/k8s.py) against a Kubernetes API served here.

``FakeApiServer`` is a small, faithful stand-in for the API server's pod endpoints on
127.0.0.1: ``GET /api/v1/pods`` honours ``fieldSelector=spec.nodeName=...`` (and, like the
real one, serves every pod of the cluster to a client that omits it), lists carry a
resourceVersion, ``watch=true`` streams chunked newline-delimited watch events from a
resourceVersion and holds the connection open, a watch from a compacted resourceVersion
gets an ``ERROR`` event with a 410 Status, bookmarks, bearer-token auth and 403s. Pods come
from the recorded objects in tests/data/k8s/.
"""

from __future__ import annotations

import copy
import json
import select
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import kubernetes.client
import pytest

from sniffer.agent.k8s import PodCache, PodMeta, derive_workload, resolve_target
from sniffer.errors import UsageError

# The client's CoreV1Api module is imported lazily and takes seconds on a busy machine; pay
# for it at collection so the waits below measure the cache, not the import.
kubernetes.client.CoreV1Api  # noqa: B018

DATA = Path(__file__).resolve().parent / "data" / "k8s"
SETUP_S = 10.0  # generous bound for first contact; every wait returns as soon as it is met
NODE = "lab-node"
SELECTOR = f"spec.nodeName={NODE}"

WEB_IP, WEB_IP6 = "10.244.1.12", "fd00:10:244:1::c"
DB_IP, DEBUG_IP, JOB_IP = "10.244.1.13", "10.244.1.14", "10.244.1.9"
NODE_IP, OTHER_NODE_POD_IP = "192.168.56.11", "10.244.2.21"
NEW_UID, NEW_IP, NEW_IP6 = "71d0e6b2-4a8c-4f3e-b1d9-8c7a6f5e4d3c", "10.244.1.15", "fd00:10:244:1::f"
WEB_UID = "5c0c8c3e-3f0e-4d57-9a0b-6d2f0c1e8a41"
DEBUG_UID = "0a9b8c7d-6e5f-4a3b-8c2d-1e0f9a8b7c6d"


def load(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def wait_for(predicate, timeout: float = 2.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


# --------------------------------------------------------------------------- the fake API


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # chunked watch streams and keep-alive, as the real one
    timeout = 10

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        api: FakeApiServer = self.server.api  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        watch = query.get("watch") == "true"
        with api.cond:
            api.requests.append({"path": url.path, "query": query, "watch": watch,
                                 "auth": self.headers.get("Authorization")})
        if url.path != "/api/v1/pods":
            return self._send_json(404, _status(404, "NotFound", "the server could not find the requested resource"))
        if api.token is not None and self.headers.get("Authorization") != f"Bearer {api.token}":
            return self._send_json(401, _status(401, "Unauthorized", "Unauthorized"))
        if api.forbid:
            return self._send_json(403, _status(403, "Forbidden", (
                'pods is forbidden: User "system:serviceaccount:wirespan:wirespan" cannot '
                f'{"watch" if watch else "list"} resource "pods" in API group "" at the cluster scope')))
        selector = query.get("fieldSelector", "")
        if selector and not selector.startswith("spec.nodeName="):
            return self._send_json(400, _status(400, "BadRequest", f"unsupported field selector {selector!r}"))
        node = selector.partition("=")[2] or None  # no selector: the whole cluster
        if watch:
            self._watch(api, node, query)
        else:
            with api.cond:
                items = [api.as_list_item(o) for o in api.cluster.values() if api.on_node(o, node)]
                doc = {"kind": "PodList", "apiVersion": "v1",
                       "metadata": {"resourceVersion": str(api.rv)}, "items": items}
            self._send_json(200, doc)

    def _send_json(self, code: int, doc: dict) -> None:
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _chunk(self, event: dict) -> None:
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _client_gone(self) -> bool:
        readable, _, _ = select.select([self.connection], [], [], 0)
        if not readable:
            return False
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _watch(self, api: FakeApiServer, node: str | None, query: dict) -> None:
        rv = int(query.get("resourceVersion") or 0) or api.rv
        deadline = time.monotonic() + int(query.get("timeoutSeconds") or 3600)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        with api.cond:
            if rv < api.compacted:
                too_old = _status(410, "Expired", f"too old resource version: {rv} ({api.compacted})")
                self._chunk({"type": "ERROR", "object": too_old})
                self.wfile.write(b"0\r\n\r\n")
                return
            kill, release, drop = api.kill_gen, api.release_gen, api.drop_gen
            api.open_watches += 1
            api.cond.notify_all()
        try:
            while True:
                ending = None
                with api.cond:
                    while True:
                        if api.closing or api.drop_gen != drop:
                            ending = "drop"
                        elif api.kill_gen != kill:
                            ending = "expire"
                        elif api.release_gen != release or time.monotonic() > deadline:
                            ending = "release"
                        pending = [e for e in api.log if e[0] > rv]
                        if ending or pending:
                            break
                        api.cond.wait(0.05)
                        if self._client_gone():
                            return
                    if ending == "expire":
                        pending = []  # whatever changed since is only visible to a new list
                if ending == "drop":
                    self.connection.shutdown(socket.SHUT_RDWR)  # no terminating chunk
                    self.close_connection = True
                    return
                for erv, etype, obj in pending:
                    rv = erv
                    if etype == "BOOKMARK" or api.on_node(obj, node):
                        self._chunk({"type": etype, "object": obj})
                if ending == "expire":
                    too_old = _status(410, "Expired", f"too old resource version: {rv} ({api.compacted})")
                    self._chunk({"type": "ERROR", "object": too_old})
                if ending:
                    self.wfile.write(b"0\r\n\r\n")
                    return
        except OSError:
            self.close_connection = True
        finally:
            with api.cond:
                api.open_watches -= 1
                api.cond.notify_all()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # skip HTTPServer's getfqdn() DNS lookup
        self.server_name, self.server_port = self.server_address[:2]


class FakeApiServer:
    def __init__(self, *, listening: bool = True) -> None:
        self.cond = threading.Condition()
        podlist = load("podlist-lab-node.json")
        self.cluster: dict[str, dict] = {}
        for item in podlist["items"] + [load("pod-lab-node-2-db-1.json")]:
            self.cluster[item["metadata"]["uid"]] = self.as_event_object(item)
        self.rv = int(podlist["metadata"]["resourceVersion"])
        self.log: list[tuple[int, str, dict | None]] = []
        self.compacted = 0
        self.kill_gen = self.release_gen = self.drop_gen = 0
        self.closing = False
        self.open_watches = 0
        self.requests: list[dict] = []
        self.token: str | None = None
        self.forbid = False
        # Bound but not listening: connections are refused until activate().
        self.httpd = _HTTPServer(("127.0.0.1", 0), _Handler, bind_and_activate=False)
        self.httpd.api = self  # type: ignore[attr-defined]
        self.httpd.server_bind()
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None
        if listening:
            self.activate()

    def activate(self) -> None:
        self.httpd.server_activate()
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-kube-apiserver", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        if self._thread is not None:
            self.httpd.shutdown()
        self.httpd.server_close()

    # -- objects, as the API server writes them
    @staticmethod
    def as_event_object(obj: dict) -> dict:
        return {"kind": "Pod", "apiVersion": "v1", **copy.deepcopy(obj)}

    @staticmethod
    def as_list_item(obj: dict) -> dict:
        item = copy.deepcopy(obj)  # PodList items carry no kind/apiVersion
        item.pop("kind", None)
        item.pop("apiVersion", None)
        return item

    @staticmethod
    def on_node(obj: dict | None, node: str | None) -> bool:
        return obj is not None and (node is None or obj["spec"].get("nodeName") == node)

    # -- what happens in the cluster
    def _emit(self, etype: str, obj: dict, silently: bool = False) -> None:
        self.rv += 1
        obj = self.as_event_object(obj)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        if etype == "DELETED":
            self.cluster.pop(obj["metadata"]["uid"], None)
        else:
            self.cluster[obj["metadata"]["uid"]] = obj
        if not silently:
            self.log.append((self.rv, etype, obj))
        self.cond.notify_all()

    def add(self, obj: dict) -> None:
        with self.cond:
            self._emit("ADDED", obj)

    def modify(self, obj: dict) -> None:
        with self.cond:
            self._emit("MODIFIED", obj)

    def delete(self, uid: str) -> None:
        with self.cond:
            self._emit("DELETED", self.cluster[uid])

    def bookmark(self) -> int:
        """Other objects moved the global resourceVersion on; tell watchers where it is."""
        with self.cond:
            self.rv += 7
            self.log.append((self.rv, "BOOKMARK",
                             {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": str(self.rv)}}))
            self.cond.notify_all()
            return self.rv

    def expire(self, *, silently_add: dict | None = None, silently_delete: str | None = None) -> None:
        """Compact history past every watcher: open watches get ERROR 410, and changes
        made here are seen only by a new list."""
        with self.cond:
            if silently_add is not None:
                self._emit("ADDED", silently_add, silently=True)
            if silently_delete is not None:
                self._emit("DELETED", self.cluster[silently_delete], silently=True)
            self.rv += 1
            self.compacted = self.rv
            self.kill_gen += 1
            self.cond.notify_all()

    def release_watches(self) -> None:
        """End open watches cleanly (as timeoutSeconds would)."""
        with self.cond:
            self.release_gen += 1
            self.cond.notify_all()

    def drop_watches(self) -> None:
        """Cut open watch connections without ending the stream (a restarting LB)."""
        with self.cond:
            self.drop_gen += 1
            self.cond.notify_all()

    def count(self, watch: bool | None = None) -> int:
        with self.cond:
            return sum(1 for r in self.requests if watch is None or r["watch"] == watch)

    def watch_requests(self) -> list[dict]:
        with self.cond:
            return [r for r in self.requests if r["watch"]]


class Logs:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: list[tuple[str, str]] = []

    def __call__(self, level: str, message: str) -> None:
        with self.lock:
            self.records.append((level, message))

    def at(self, level: str) -> list[str]:
        with self.lock:
            return [m for lv, m in self.records if lv == level]


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def api():
    server = FakeApiServer()
    yield server
    server.stop()


@pytest.fixture
def make_cache(tmp_path):
    caches: list[PodCache] = []

    def make(server: FakeApiServer, **kwargs) -> tuple[PodCache, Logs]:
        logs = Logs()
        kwargs.setdefault("token_file", str(tmp_path / "no-token"))
        kwargs.setdefault("backoff_initial_s", 0.05)
        kwargs.setdefault("backoff_max_s", 0.2)
        cache = PodCache(NODE, api_url=server.url, enabled="auto", on_log=logs, **kwargs)
        caches.append(cache)
        return cache, logs

    yield make
    for cache in caches:
        cache.close()


def started(server: FakeApiServer, make_cache, **kwargs) -> tuple[PodCache, Logs]:
    """A cache that has listed and has its watch open."""
    cache, logs = make_cache(server, **kwargs)
    assert cache.wait_ready(SETUP_S), cache.last_error
    wait_for(lambda: server.open_watches == 1, SETUP_S, what="the watch to open")
    return cache, logs


def assert_all_requests_node_scoped(server: FakeApiServer) -> None:
    with server.cond:
        requests = list(server.requests)
    assert requests
    for r in requests:
        assert r["query"].get("fieldSelector") == SELECTOR, r


# --------------------------------------------------------------------------- fixtures


def test_recorded_objects_are_valid_pods():
    kv = pytest.importorskip("kubernetes_validate")
    podlist = load("podlist-lab-node.json")
    assert podlist["kind"] == "PodList" and podlist["metadata"]["resourceVersion"]
    objects = [{"kind": "Pod", "apiVersion": "v1", **item} for item in podlist["items"]]
    objects += [load(n) for n in ("pod-lab-node-2-db-1.json", "pod-web-q7m4n-pending.json",
                                  "pod-web-q7m4n-running.json")]
    for obj in objects:
        kv.validate(obj, "1.37", strict=True)
    assert {o["spec"]["nodeName"] for o in objects} == {NODE, "lab-node-2"}


# --------------------------------------------------------------------------- PodMeta


@pytest.mark.parametrize(
    ("owners", "labels", "expected"),
    [
        ([{"kind": "ReplicaSet", "name": "web-7d4b9c6f5", "controller": True}],
         {"pod-template-hash": "7d4b9c6f5"}, ("Deployment", "web", "ReplicaSet", "web-7d4b9c6f5")),
        ([{"kind": "ReplicaSet", "name": "my-api-v2-5f6c9d8b7c", "controller": True}],
         {"pod-template-hash": "5f6c9d8b7c"}, ("Deployment", "my-api-v2", "ReplicaSet", "my-api-v2-5f6c9d8b7c")),
        # a ReplicaSet not made by a Deployment (no hash label, or a name that does not end in it)
        ([{"kind": "ReplicaSet", "name": "frontend", "controller": True}], {},
         ("ReplicaSet", "frontend", "ReplicaSet", "frontend")),
        ([{"kind": "ReplicaSet", "name": "frontend-abc", "controller": True}], {"pod-template-hash": "xyz"},
         ("ReplicaSet", "frontend-abc", "ReplicaSet", "frontend-abc")),
        ([{"kind": "ReplicaSet", "name": "-7d4b9c6f5", "controller": True}], {"pod-template-hash": "7d4b9c6f5"},
         ("ReplicaSet", "-7d4b9c6f5", "ReplicaSet", "-7d4b9c6f5")),
        ([{"kind": "StatefulSet", "name": "db", "controller": True}], {}, ("StatefulSet", "db", "StatefulSet", "db")),
        ([{"kind": "DaemonSet", "name": "node-exporter", "controller": True}], {},
         ("DaemonSet", "node-exporter", "DaemonSet", "node-exporter")),
        # a CronJob's Job stays the Job: the pod does not name the CronJob
        ([{"kind": "Job", "name": "report-28994460", "controller": True}], {"job-name": "report-28994460"},
         ("Job", "report-28994460", "Job", "report-28994460")),
        ([], {}, ("Pod", "the-pod", "", "")),
        # only the controller reference counts
        ([{"kind": "ConfigMap", "name": "owner-for-gc"}], {}, ("Pod", "the-pod", "", "")),
        ([{"kind": "ConfigMap", "name": "gc", "controller": False},
          {"kind": "StatefulSet", "name": "db", "controller": True}], {}, ("StatefulSet", "db", "StatefulSet", "db")),
        # a static pod's mirror is "controlled" by its Node; other controllers are kept as they are
        ([{"kind": "Node", "name": "lab-node", "controller": True}], {}, ("Node", "lab-node", "Node", "lab-node")),
    ],
)
def test_derive_workload(owners, labels, expected):
    assert derive_workload("the-pod", owners, labels) == expected


def recorded_pods() -> dict[str, PodMeta]:
    return {p.name: p for p in map(PodMeta.from_object, load("podlist-lab-node.json")["items"])}


def test_pod_meta_from_recorded_objects():
    pods = recorded_pods()
    web = pods["web-7d4b9c6f5-x8k2p"]
    assert web.namespace == "shop" and web.uid == WEB_UID and web.node_name == NODE
    assert web.ips == (WEB_IP, WEB_IP6)
    assert (web.workload_kind, web.workload_name) == ("Deployment", "web")
    assert not web.host_network and web.phase == "Running"
    assert web.labels == {"app.kubernetes.io/name": "web"}  # linkerd.io/*, pod-template-hash dropped
    assert web.attributes() == {
        "k8s.pod.name": "web-7d4b9c6f5-x8k2p",
        "k8s.namespace.name": "shop",
        "k8s.node.name": NODE,
        "k8s.pod.uid": WEB_UID,
        "k8s.replicaset.name": "web-7d4b9c6f5",
        "k8s.deployment.name": "web",
    }
    db = pods["db-0"]
    assert db.ips == (DB_IP,) and db.labels == {"app": "db"}
    assert db.attributes()["k8s.statefulset.name"] == "db"
    ds = pods["node-exporter-4xk9z"]
    assert ds.host_network and ds.ips == (NODE_IP,)
    assert ds.attributes()["k8s.daemonset.name"] == "node-exporter"
    bare = pods["debug-shell"].attributes()
    assert bare["k8s.pod.name"] == "debug-shell" and bare["k8s.namespace.name"] == "default"
    assert not any(k.endswith((".deployment.name", ".statefulset.name", ".daemonset.name", ".job.name",
                               ".replicaset.name")) for k in bare)
    job = pods["report-28994460-6dqlt"]
    assert job.phase == "Succeeded" and job.attributes()["k8s.job.name"] == "report-28994460"
    pending = PodMeta.from_object(load("pod-web-q7m4n-pending.json"))
    assert pending.ips == () and pending.phase == "Pending"
    # frozen and hashable (labels are left out of the hash)
    with pytest.raises(AttributeError):
        web.name = "x"  # type: ignore[misc]
    assert len({web, PodMeta.from_object(load("podlist-lab-node.json")["items"][4])}) == 1
    with pytest.raises(ValueError):
        PodMeta.from_object({"metadata": {"name": "no-namespace"}})


def test_pod_ips_are_canonical_and_podip_first():
    obj = {"metadata": {"name": "p", "namespace": "n"},
           "status": {"podIP": "10.0.0.1", "podIPs": [{"ip": "FD00:0:0:0::0001"}, {"ip": "10.0.0.1"}, {"ip": "junk"}]}}
    assert PodMeta.from_object(obj).ips == ("10.0.0.1", "fd00::1")


# --------------------------------------------------------------------------- configuration


def test_resolve_target(tmp_path):
    token = tmp_path / "token"
    token.write_text("t0k\n")
    ca = tmp_path / "ca.crt"
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}

    target, why = resolve_target("auto", "", str(token), str(ca), env)
    assert why == "" and target.url == "https://10.96.0.1:443" and target.source == "in-cluster"
    assert target.token_file == str(token) and target.ca_file == str(ca) and target.token_required
    target, _ = resolve_target("auto", "", str(token), str(ca), {"KUBERNETES_SERVICE_HOST": "fd00:96::1"})
    assert target.url == "https://[fd00:96::1]:443"
    # auto: no in-cluster environment, or no token mounted -> disabled, with the reason
    target, why = resolve_target("auto", "", str(token), str(ca), {})
    assert target is None and "KUBERNETES_SERVICE_HOST" in why
    target, why = resolve_target("auto", "", str(tmp_path / "absent"), str(ca), env)
    assert target is None and "absent" in why and "automountServiceAccountToken" in why
    # true: a missing token is a (retried, reported) runtime failure, not a silent disable
    target, _ = resolve_target("true", "", str(tmp_path / "absent"), str(ca), env)
    assert target is not None and target.token_required
    with pytest.raises(UsageError, match="kubernetes.enabled is true but no API server is known"):
        resolve_target("true", "", str(token), str(ca), {})
    # false wins over everything; api_url wins over the environment
    assert resolve_target("false", "http://127.0.0.1:1", str(token), str(ca), env)[0] is None
    assert resolve_target(False, "", str(token), str(ca), env)[0] is None
    target, _ = resolve_target(True, "http://127.0.0.1:8001/", str(token), str(ca), env)
    assert target.url == "http://127.0.0.1:8001" and target.ca_file == "" and not target.token_required
    with pytest.raises(UsageError, match=r"kubernetes.enabled: must be one of auto, true, false \(got 'maybe'\)"):
        resolve_target("maybe")
    with pytest.raises(UsageError, match="kubernetes.api_url"):
        resolve_target("auto", "127.0.0.1:6443")


def test_auto_without_cluster_is_disabled_without_network(monkeypatch, tmp_path):
    connects: list = []
    real_connect = socket.socket.connect

    def spy(self, address):
        connects.append(address)
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", spy)
    monkeypatch.setattr(socket.socket, "connect_ex", lambda self, a: connects.append(a) or 111)
    threads_before = set(threading.enumerate())
    logs = Logs()
    cache = PodCache(NODE, token_file=str(tmp_path / "token"), ca_file=str(tmp_path / "ca"),
                     enabled="auto", on_log=logs, environ={})
    try:
        assert not cache.enabled and "KUBERNETES_SERVICE_HOST" in cache.disabled_reason
        assert cache.by_ip(WEB_IP) is None and not cache.ready and not cache.api_up
        assert not cache.wait_ready(0.01)
        assert cache._thread is None
        assert [t for t in threading.enumerate() if t not in threads_before] == []
        assert logs.at("info") == ["kubernetes metadata disabled: not running in a pod "
                                   "(KUBERNETES_SERVICE_HOST is not set)"]
        assert logs.at("warning") == []
    finally:
        cache.close()
    # enabled: false, even in a cluster
    token = tmp_path / "token"
    token.write_text("x")
    off = PodCache(NODE, token_file=str(token), enabled="false", on_log=logs,
                   environ={"KUBERNETES_SERVICE_HOST": "127.0.0.1"})
    assert not off.enabled and off._thread is None
    off.close()
    assert connects == []


def test_node_name_required(tmp_path):
    with pytest.raises(UsageError, match="node_name"):
        PodCache("", api_url="http://127.0.0.1:9", enabled="true", start=False)
    logs = Logs()
    cache = PodCache("", api_url="http://127.0.0.1:9", enabled="auto", on_log=logs)
    assert not cache.enabled and "NODE_NAME" in cache.disabled_reason
    assert len(logs.at("warning")) == 1


# --------------------------------------------------------------------------- list + watch


def test_initial_list_fills_cache(api, make_cache):
    cache, logs = started(api, make_cache)
    assert cache.api_up and cache.ready
    web = cache.by_ip(WEB_IP)
    assert web is not None and web.name == "web-7d4b9c6f5-x8k2p" and web.workload_name == "web"
    assert cache.by_ip(WEB_IP6) is web  # the second podIPs entry
    assert cache.by_ip("fd00:10:244:1:0:0:0:c") is web  # any spelling of the address
    assert cache.by_ip(DB_IP).attributes()["k8s.statefulset.name"] == "db"
    assert cache.by_ip(DEBUG_IP).workload_kind == "Pod"
    # the hostNetwork pod is kept and marked, but the node's IP does not name it
    assert cache.by_ip(NODE_IP) is None
    (ds,) = [p for p in cache.pods() if p.name == "node-exporter-4xk9z"]
    assert ds.host_network and ds.ips == (NODE_IP,)
    # a finished Job pod's IP has been released
    assert cache.get("batch", "report-28994460-6dqlt").phase == "Succeeded"
    assert cache.by_ip(JOB_IP) is None
    # only this node's pods were asked for
    assert cache.by_ip(OTHER_NODE_POD_IP) is None and len(cache.pods()) == 5
    assert_all_requests_node_scoped(api)
    (listing,), (watching,) = [r for r in api.requests if not r["watch"]], api.watch_requests()
    assert listing["query"].get("resourceVersion") == "0"  # from the watch cache, not etcd
    assert watching["query"]["resourceVersion"] == "48213"
    assert watching["query"]["allowWatchBookmarks"] == "true"
    assert int(watching["query"]["timeoutSeconds"]) > 0
    assert logs.at("warning") == []
    assert logs.at("info") == [f"kubernetes API: 5 pods on node {NODE}"]
    assert cache.stats["lists"] == 1 and cache.stats["pods"] == 5


def test_watch_added_modified_deleted(api, make_cache):
    cache, _ = started(api, make_cache)
    api.add(load("pod-web-q7m4n-pending.json"))  # scheduled, no IP yet
    wait_for(lambda: cache.get("shop", "web-7d4b9c6f5-q7m4n") is not None, what="ADDED pod")
    assert cache.get("shop", "web-7d4b9c6f5-q7m4n").ips == ()
    assert cache.by_ip(NEW_IP) is None

    api.modify(load("pod-web-q7m4n-running.json"))  # got its IPs
    wait_for(lambda: cache.by_ip(NEW_IP) is not None, what="MODIFIED pod's IP")
    pod = cache.by_ip(NEW_IP)
    assert pod.uid == NEW_UID and pod.phase == "Running" and cache.by_ip(NEW_IP6) is pod

    api.delete(WEB_UID)
    wait_for(lambda: cache.by_ip(WEB_IP) is None, what="DELETED pod to go")
    assert cache.by_ip(WEB_IP6) is None and cache.get("shop", "web-7d4b9c6f5-x8k2p") is None

    # a new pod that reuses the finished Job pod's address resolves to the new pod
    reuse = load("pod-web-q7m4n-running.json")
    reuse["metadata"].update(name="web-7d4b9c6f5-r2d2x", uid="2f1e0d9c-8b7a-4c6d-9e5f-4a3b2c1d0e9f")
    reuse["status"].update(podIP=JOB_IP, podIPs=[{"ip": JOB_IP}])
    api.add(reuse)
    wait_for(lambda: cache.by_ip(JOB_IP) is not None, what="reused IP")
    assert cache.by_ip(JOB_IP).name == "web-7d4b9c6f5-r2d2x"

    # an event for another node's pod never reaches us (the watch is node-scoped too)
    other = load("pod-lab-node-2-db-1.json")
    other["status"]["podIP"], other["status"]["podIPs"] = "10.244.2.99", [{"ip": "10.244.2.99"}]
    api.modify(other)
    api.add({**load("pod-web-q7m4n-running.json"),
             "metadata": {**reuse["metadata"], "name": "sentinel", "uid": "sentinel-uid"}})
    wait_for(lambda: cache.get("shop", "sentinel") is not None, what="sentinel")
    assert cache.by_ip("10.244.2.99") is None

    s = cache.stats
    assert (s["events_added"], s["events_modified"], s["events_deleted"]) == (3, 1, 1)
    assert s["lists"] == 1 and s["relists"] == 0 and s["errors"] == 0
    assert api.count(watch=True) == 1  # all of it on one watch
    assert_all_requests_node_scoped(api)


def test_lookups_never_call_the_api(api, make_cache):
    cache, _ = started(api, make_cache)
    before = api.count()
    ips = [WEB_IP, WEB_IP6, DB_IP, DEBUG_IP, NODE_IP, "10.99.0.1", "fd00::dead", "not-an-ip"]
    t0 = time.perf_counter()
    hits = sum(cache.by_ip(ips[i % len(ips)]) is not None for i in range(1000))
    elapsed = time.perf_counter() - t0
    assert hits == 500  # 4 of the 8 addresses are pod addresses
    assert api.count() == before == 2  # one list, one watch
    assert elapsed < 0.5


def test_expired_watch_relists(api, make_cache):
    cache, logs = started(api, make_cache)
    assert cache.by_ip(DEBUG_IP) is not None
    # History is compacted past us; meanwhile a pod came and one went, which we were never told.
    api.expire(silently_add=load("pod-web-q7m4n-running.json"), silently_delete=DEBUG_UID)
    wait_for(lambda: cache.stats["relists"] == 1 and cache.by_ip(NEW_IP) is not None, what="relist")
    assert cache.by_ip(DEBUG_IP) is None
    lists = [r for r in api.requests if not r["watch"]]
    assert len(lists) == 2 and "resourceVersion" not in lists[1]["query"]  # a consistent read
    # and watching resumes from the new list's resourceVersion
    wait_for(lambda: api.open_watches == 1, what="the watch to reopen")
    assert api.watch_requests()[-1]["query"]["resourceVersion"] == str(api.rv)
    api.delete(NEW_UID)
    wait_for(lambda: cache.by_ip(NEW_IP) is None, what="an event after the relist")
    assert logs.at("warning") == [] and cache.api_up
    assert_all_requests_node_scoped(api)


def test_watch_reopens_from_last_resource_version(api, make_cache):
    cache, logs = started(api, make_cache)
    rv = api.bookmark()
    wait_for(lambda: cache.stats["events_bookmark"] == 1, what="bookmark")
    api.release_watches()  # the server ends the watch, as timeoutSeconds does
    wait_for(lambda: api.count(watch=True) == 2 and api.open_watches == 1, what="second watch")
    assert api.watch_requests()[1]["query"]["resourceVersion"] == str(rv)
    # the connection is cut mid-stream: resumed, and not reported as an outage
    api.drop_watches()
    wait_for(lambda: api.count(watch=True) == 3 and api.open_watches == 1, what="third watch")
    assert api.watch_requests()[2]["query"]["resourceVersion"] == str(rv)
    api.add(load("pod-web-q7m4n-running.json"))
    wait_for(lambda: cache.by_ip(NEW_IP) is not None, what="event on the resumed watch")
    assert cache.stats["lists"] == 1 and cache.stats["relists"] == 0
    assert logs.at("warning") == [] and cache.api_up


def test_api_down_at_start_warns_once_then_fills(make_cache):
    server = FakeApiServer(listening=False)  # the port is bound, connections are refused
    try:
        cache, logs = make_cache(server)
        wait_for(lambda: cache.stats["errors"] >= 4, SETUP_S, what="several failed attempts")
        assert not cache.ready and not cache.api_up and cache.by_ip(WEB_IP) is None
        assert logs.at("warning") == [
            f"kubernetes API unavailable: cannot connect to {server.url}: Connection refused; "
            "spans carry pod IPs and namespace identity only"
        ]
        server.activate()
        assert cache.wait_ready(SETUP_S)
        assert cache.by_ip(WEB_IP).name == "web-7d4b9c6f5-x8k2p"
        wait_for(lambda: cache.api_up, what="api_up")
        assert len(logs.at("warning")) == 1  # once for the whole outage
        assert "kubernetes API reachable again; 5 pods on node lab-node" in logs.at("info")
        assert_all_requests_node_scoped(server)
    finally:
        server.stop()


def test_close_is_prompt_during_backoff(make_cache):
    server = FakeApiServer(listening=False)
    try:
        cache, logs = make_cache(server, backoff_initial_s=30.0, backoff_max_s=30.0)
        wait_for(lambda: cache.stats["errors"] == 1, SETUP_S, what="first failure")
        t0 = time.monotonic()
        cache.close()
        assert time.monotonic() - t0 < 1.0 and not cache._thread.is_alive()
    finally:
        server.stop()


def test_close_is_prompt_with_an_open_watch(api, make_cache):
    cache, _ = started(api, make_cache)
    t0 = time.monotonic()
    cache.close()
    assert time.monotonic() - t0 < 1.0
    assert not cache._thread.is_alive() and not cache.api_up
    wait_for(lambda: api.open_watches == 0, what="the server to see the watch closed")


def test_bearer_token_is_sent_and_reread(api, make_cache, tmp_path):
    token = tmp_path / "token"
    token.write_text("first-token\n")
    api.token = "first-token"
    cache, logs = started(api, make_cache, token_file=str(token))
    assert {r["auth"] for r in api.requests} == {"Bearer first-token"}
    # the kubelet rotates the projected token; the next watch uses the new one
    token.write_text("second-token\n")
    with api.cond:
        api.token = "second-token"
    api.release_watches()
    wait_for(lambda: api.count(watch=True) == 2 and api.open_watches == 1, what="watch with the new token")
    assert api.watch_requests()[-1]["auth"] == "Bearer second-token"
    assert logs.at("warning") == [] and cache.stats["errors"] == 0


def test_forbidden_names_the_rbac_fix(api, make_cache):
    api.forbid = True
    cache, logs = make_cache(api)
    wait_for(lambda: cache.stats["errors"] >= 2, SETUP_S, what="retries")
    (warning,) = logs.at("warning")
    assert "HTTP 403" in warning and 'cannot list resource "pods"' in warning
    assert "get, list and watch on pods" in warning
    assert not cache.ready and cache.by_ip(WEB_IP) is None
