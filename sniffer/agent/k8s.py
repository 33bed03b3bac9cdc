"""Pod metadata from the Kubernetes API for the node agent: one list + one watch, cached.

The agent sees pods as network namespaces with addresses; this module says which pod an
address belongs to, so spans can carry ``k8s.pod.name``, ``k8s.namespace.name``,
``k8s.node.name`` (DESIGN.md, "Span contract", resource) and the workload.

How it talks to the API (the same shape as a client-go reflector):

* one ``list`` of the pods *bound to this node* (``fieldSelector=spec.nodeName=<node>``; a
  DaemonSet must never list every pod of the cluster), served from the API server's watch
  cache (``resourceVersion=0``), then
* one ``watch`` from the list's resourceVersion, with bookmarks, re-opened from the last
  resourceVersion seen whenever the server ends it (``timeoutSeconds``), and
* a fresh, consistent list when the server answers 410 Gone (the resourceVersion we hold
  was compacted away), after which watching resumes.

All of it runs in one daemon thread. Lookups (:meth:`PodCache.by_ip`) answer from an
in-memory index that the thread replaces copy-on-write, so they take no lock, make no API
call and never block. When the API cannot be reached (or refuses us), the agent keeps
working with what it has: the cache logs one warning per outage, retries with capped,
jittered exponential backoff, and fills in when the API comes back.

Workload derivation (:func:`derive_workload`) is deliberately simple and local to the pod
object (no extra API reads, no extra RBAC):

* the owner reference with ``controller: true`` is the pod's controller;
* a ReplicaSet whose name is ``<deployment>-<labels["pod-template-hash"]>`` is taken to be
  owned by Deployment ``<deployment>`` (that is how the Deployment controller names them);
  a ReplicaSet that does not match stays a ReplicaSet;
* StatefulSet, DaemonSet, Job (and any other controller kind) are the workload themselves.
  A Job created by a CronJob is reported as the Job: the pod does not say which CronJob
  owns its Job, and guessing from the name's numeric suffix would be wrong for hand-made
  Jobs;
* no controller: the pod is its own workload (kind ``"Pod"``).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sniffer.errors import UsageError

__all__ = [
    "DEFAULT_CA_FILE",
    "DEFAULT_TOKEN_FILE",
    "ApiTarget",
    "PodCache",
    "PodMeta",
    "derive_workload",
    "resolve_target",
]

DEFAULT_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"
DEFAULT_CA_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"

#: Labels kept on :class:`PodMeta` (the rest are dropped to keep the cache small).
KEPT_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/version",
    "app",
    "version",
)

#: Resource attribute (OTel semantic conventions) for each workload kind we name.
_WORKLOAD_ATTRIBUTE = {
    "Deployment": "k8s.deployment.name",
    "ReplicaSet": "k8s.replicaset.name",
    "StatefulSet": "k8s.statefulset.name",
    "DaemonSet": "k8s.daemonset.name",
    "Job": "k8s.job.name",
    "CronJob": "k8s.cronjob.name",
}

_TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})

LogFn = Callable[[str, str], None]


# --------------------------------------------------------------------------- pod metadata


@dataclass(frozen=True)
class PodMeta:
    """What the agent keeps about one pod. Built from the API's JSON (``from_object``).

    ``ips`` are the pod's addresses in the API's order (``status.podIPs``, else
    ``status.podIP``), IPv6 in canonical compressed form. For a ``host_network`` pod they
    are the node's addresses, shared with the node and every other host-network pod, so
    such pods are kept (see :meth:`PodCache.pods`) but never returned by
    :meth:`PodCache.by_ip`. ``labels`` holds only :data:`KEPT_LABELS`; treat it as
    read-only (it is excluded from hashing).
    """

    name: str
    namespace: str
    uid: str = ""
    node_name: str = ""
    ips: tuple[str, ...] = ()
    workload_kind: str = "Pod"
    workload_name: str = ""
    host_network: bool = False
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    #: The direct controller (``ownerReferences[controller=true]``), e.g. the ReplicaSet.
    owner_kind: str = ""
    owner_name: str = ""
    phase: str = ""
    #: ``metadata.deletionTimestamp`` is set (graceful termination in progress).
    terminating: bool = False
    #: ``metadata.creationTimestamp`` as the API wrote it (RFC 3339, sorts as text).
    created: str = ""

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> PodMeta:
        """Build from a pod as the API serves it (a PodList item or a watch event's
        object). Raises ``ValueError`` if it has no name or namespace."""
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        name = meta.get("name") or ""
        namespace = meta.get("namespace") or ""
        if not name or not namespace:
            raise ValueError("pod object without metadata.name/metadata.namespace")
        all_labels = meta.get("labels") or {}
        kind, wname, okind, oname = derive_workload(
            name, meta.get("ownerReferences") or (), all_labels
        )
        return cls(
            name=name,
            namespace=namespace,
            uid=meta.get("uid") or "",
            node_name=spec.get("nodeName") or "",
            ips=_pod_ips(status),
            workload_kind=kind,
            workload_name=wname,
            host_network=bool(spec.get("hostNetwork")),
            labels={k: str(all_labels[k]) for k in KEPT_LABELS if k in all_labels},
            owner_kind=okind,
            owner_name=oname,
            phase=status.get("phase") or "",
            terminating=bool(meta.get("deletionTimestamp")),
            created=meta.get("creationTimestamp") or "",
        )

    @property
    def key(self) -> str:
        """Identity in the cache: the uid (names are reused across pod lifetimes)."""
        return self.uid or f"{self.namespace}/{self.name}"

    def attributes(self) -> dict[str, str]:
        """OTel semantic-convention resource attributes for spans seen in this pod."""
        attrs = {
            "k8s.pod.name": self.name,
            "k8s.namespace.name": self.namespace,
        }
        if self.node_name:
            attrs["k8s.node.name"] = self.node_name
        if self.uid:
            attrs["k8s.pod.uid"] = self.uid
        if self.owner_kind == "ReplicaSet" and self.owner_name:
            attrs["k8s.replicaset.name"] = self.owner_name
        key = _WORKLOAD_ATTRIBUTE.get(self.workload_kind)
        if key and self.workload_name:
            attrs[key] = self.workload_name
        return attrs


def derive_workload(
    pod_name: str,
    owner_references: Iterable[Mapping[str, Any]],
    labels: Mapping[str, str] | None = None,
) -> tuple[str, str, str, str]:
    """``(workload_kind, workload_name, owner_kind, owner_name)`` for a pod.

    The owner is the reference with ``controller: true`` (others, e.g. garbage-collection
    owners, are ignored). See the module docstring for the rules.
    """
    labels = labels or {}
    owner = None
    for ref in owner_references or ():
        if isinstance(ref, Mapping) and ref.get("controller") is True:
            owner = ref
            break
    if owner is None or not owner.get("kind") or not owner.get("name"):
        return "Pod", pod_name, "", ""
    okind, oname = str(owner["kind"]), str(owner["name"])
    if okind == "ReplicaSet":
        pth = labels.get("pod-template-hash") or ""
        suffix = f"-{pth}"
        if pth and oname.endswith(suffix) and len(oname) > len(suffix):
            return "Deployment", oname[: -len(suffix)], okind, oname
    return okind, oname, okind, oname


def _canonical_ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        return None


def _pod_ips(status: Mapping[str, Any]) -> tuple[str, ...]:
    out: list[str] = []
    for entry in status.get("podIPs") or ():
        ip = entry.get("ip") if isinstance(entry, Mapping) else None
        if isinstance(ip, str):
            canon = _canonical_ip(ip)
            if canon and canon not in out:
                out.append(canon)
    single = status.get("podIP")
    if isinstance(single, str) and single:
        canon = _canonical_ip(single)
        if canon:
            if canon in out:
                out.remove(canon)
            out.insert(0, canon)  # podIP is by definition podIPs[0]
    return tuple(out)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ApiTarget:
    """Where the API is and how to authenticate (from :func:`resolve_target`)."""

    url: str
    token_file: str = ""
    ca_file: str = ""
    #: In-cluster: the token is required (a missing one is an error, retried).
    token_required: bool = False
    source: str = "api_url"  # "api_url" | "in-cluster"


def _normalize_enabled(enabled: str | bool) -> str:
    if isinstance(enabled, bool):
        return "true" if enabled else "false"
    value = str(enabled).strip().lower()
    if value not in ("auto", "true", "false"):
        raise UsageError(
            f"agent config: kubernetes.enabled: must be one of auto, true, false (got {enabled!r})"
        )
    return value


def resolve_target(
    enabled: str | bool = "auto",
    api_url: str = "",
    token_file: str = DEFAULT_TOKEN_FILE,
    ca_file: str = DEFAULT_CA_FILE,
    environ: Mapping[str, str] | None = None,
) -> tuple[ApiTarget | None, str]:
    """Decide whether and how to reach the API, without any network access.

    Returns ``(target, "")`` or ``(None, reason it is disabled)``. Raises ``UsageError``
    for a bad ``enabled`` value, or for ``enabled: true`` when no API server is known.

    * ``false``: disabled.
    * ``api_url`` set (and not ``false``): that URL (``http://`` allowed, for tests and
      ``kubectl proxy``); the token file is sent if it exists, the CA file is used for
      ``https://`` if it exists (else the system trust store).
    * in-cluster (``KUBERNETES_SERVICE_HOST``/``_PORT``): ``https://host:port`` with the
      service-account token and CA. With ``auto`` this needs the token file to exist
      (``automountServiceAccountToken: false`` means "no API"); with ``true`` a missing token
      is reported and retried like any other failure.
    """
    mode = _normalize_enabled(enabled)
    env = os.environ if environ is None else environ
    if mode == "false":
        return None, "disabled by configuration (kubernetes.enabled: false)"
    if api_url:
        url = api_url.rstrip("/")
        if not re.match(r"^https?://[^/]+", url):
            raise UsageError(
                f"agent config: kubernetes.api_url: must be an http:// or https:// URL (got {api_url!r})"
            )
        return ApiTarget(
            url=url,
            token_file=token_file or "",
            ca_file=ca_file if url.startswith("https://") else "",
            token_required=False,
            source="api_url",
        ), ""
    host = (env.get("KUBERNETES_SERVICE_HOST") or "").strip()
    port = (env.get("KUBERNETES_SERVICE_PORT") or "443").strip()
    if not host:
        if mode == "true":
            raise UsageError(
                "agent config: kubernetes.enabled is true but no API server is known "
                "(KUBERNETES_SERVICE_HOST is not set and kubernetes.api_url is empty)",
                hint="run the agent in a pod, set kubernetes.api_url, or set kubernetes.enabled: auto",
            )
        return None, "not running in a pod (KUBERNETES_SERVICE_HOST is not set)"
    if mode == "auto" and not (token_file and os.path.isfile(token_file)):
        return None, (
            f"no service account token at {token_file or '(none)'} "
            "(automountServiceAccountToken: false?)"
        )
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return ApiTarget(
        url=f"https://{host}:{port}",
        token_file=token_file or "",
        ca_file=ca_file or "",
        token_required=True,
        source="in-cluster",
    ), ""


# --------------------------------------------------------------------------- the cache


class _Stopped(Exception):
    pass


def _default_log(level: str, message: str) -> None:
    logging.getLogger("wirespan.agent.k8s").log(
        getattr(logging, level.upper(), logging.INFO), message
    )


class PodCache:
    """Pods bound to ``node_name``, kept current by one watch, looked up by IP.

    ``PodCache(node_name, api_url="", token_file=..., ca_file=..., enabled="auto",
    on_log=callable)``; the thread starts at construction unless ``start=False`` (then call
    :meth:`start`). ``on_log(level, message)`` receives ``"debug"``, ``"info"`` or
    ``"warning"`` messages; it is called from the cache's thread.

    Public state, safe to read from any thread: :attr:`enabled`, :attr:`disabled_reason`,
    :attr:`ready` (the first list has completed), :attr:`api_up` (the last request to the
    API got an answer; for ``wirespan_kubernetes_api_up``), :attr:`stats`,
    :attr:`last_error`.

    The remaining keyword arguments tune timing (the defaults are for production; tests
    shrink them): ``watch_timeout_s`` (server-side end of each watch, which is then
    re-opened from the last resourceVersion), ``connect_timeout_s``, ``list_timeout_s``,
    ``backoff_initial_s``/``backoff_max_s`` (retry delays, doubled per failure, ±20 %
    jitter, capped), and ``environ`` (instead of ``os.environ``, for in-cluster detection).
    """

    def __init__(
        self,
        node_name: str,
        api_url: str = "",
        token_file: str = DEFAULT_TOKEN_FILE,
        ca_file: str = DEFAULT_CA_FILE,
        enabled: str | bool = "auto",
        on_log: LogFn | None = None,
        *,
        start: bool = True,
        environ: Mapping[str, str] | None = None,
        watch_timeout_s: int = 300,
        connect_timeout_s: float = 5.0,
        list_timeout_s: float = 60.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        self.node_name = node_name or ""
        self._log = on_log or _default_log
        self._watch_timeout_s = max(1, int(watch_timeout_s))
        self._connect_timeout_s = connect_timeout_s
        self._list_timeout_s = list_timeout_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = max(backoff_max_s, backoff_initial_s)

        # Copy-on-write snapshots: replaced whole, never mutated after publication.
        self._pods: dict[str, PodMeta] = {}
        self._by_ip: dict[str, PodMeta] = {}

        self._lock = threading.Lock()  # writers, stats, the open response
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._resp: Any = None  # the urllib3 response being read (list body or watch)
        self._api_up = False
        self._warned = False  # a warning was logged for the current outage
        self._ever_listed = False
        self._rv: str = ""
        self._last_error = ""
        self._stats: dict[str, int] = {
            "lists": 0,
            "relists": 0,
            "watches": 0,
            "events_added": 0,
            "events_modified": 0,
            "events_deleted": 0,
            "events_bookmark": 0,
            "events_other": 0,
            "events_invalid": 0,
            "errors": 0,
        }

        target, reason = resolve_target(enabled, api_url, token_file, ca_file, environ)
        if target is not None and not self.node_name:
            if _normalize_enabled(enabled) == "true":
                raise UsageError(
                    "agent config: node_name: must be set when kubernetes.enabled is true",
                    hint="set NODE_NAME from the downward API (fieldRef: spec.nodeName)",
                )
            target, reason = None, (
                "node_name is empty; set NODE_NAME from the downward API (fieldRef: spec.nodeName)"
            )
        self._target = target
        self._disabled_reason = reason
        if target is None:
            level = "debug" if reason.startswith("disabled by configuration") else (
                "info" if reason.startswith("not running in a pod") else "warning"
            )
            self._log(level, f"kubernetes metadata disabled: {reason}")
        elif start:
            self.start()

    # ----------------------------------------------------------------- public surface

    @property
    def enabled(self) -> bool:
        return self._target is not None

    @property
    def disabled_reason(self) -> str:
        return self._disabled_reason

    @property
    def target(self) -> ApiTarget | None:
        return self._target

    @property
    def ready(self) -> bool:
        """The first list has completed (stays true through later outages)."""
        return self._ready.is_set()

    @property
    def api_up(self) -> bool:
        return self._api_up

    @property
    def last_error(self) -> str:
        return self._last_error

    @property
    def stats(self) -> dict[str, int]:
        with self._lock:
            out = dict(self._stats)
        out["pods"] = len(self._pods)
        return out

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the first list completes (or ``timeout``); False if disabled."""
        if self._target is None:
            return False
        return self._ready.wait(timeout)

    def by_ip(self, ip: str) -> PodMeta | None:
        """The pod (not host-network, not finished) that has this address, or None.

        Answers from memory only: no lock, no API call."""
        pod = self._by_ip.get(ip)
        if pod is None and ip:
            canon = _canonical_ip(ip if isinstance(ip, str) else str(ip))
            if canon is not None and canon != ip:
                pod = self._by_ip.get(canon)
        return pod

    def get(self, namespace: str, name: str) -> PodMeta | None:
        for pod in self._pods.values():
            if pod.name == name and pod.namespace == namespace:
                return pod
        return None

    def pods(self) -> list[PodMeta]:
        """Every cached pod of the node (host-network and finished ones included)."""
        return sorted(self._pods.values(), key=lambda p: (p.namespace, p.name))

    def start(self) -> PodCache:
        if self._target is None or self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="wirespan-k8s", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 1.0) -> None:
        """Stop the thread: ends an open watch at once; returns within ``timeout``."""
        self._stop.set()
        self._abort_response()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def __enter__(self) -> PodCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- the thread

    def _run(self) -> None:
        from kubernetes import watch  # imported here: a disabled cache costs nothing

        api = None
        watcher = watch.Watch(return_type="object")  # events as dicts, not models
        backoff = self._backoff_initial_s
        need_list = True
        consistent = False  # after a 410, list from etcd rather than the watch cache
        gone_in_a_row = 0
        try:
            while not self._stop.is_set():
                progress = {"connected": False, "events": 0}
                try:
                    if api is None:
                        api = self._make_api()
                    self._refresh_token(api)
                    if need_list:
                        self._list(api, consistent)
                        need_list = False
                        backoff = self._backoff_initial_s
                    began = time.monotonic()
                    events = self._watch(api, watcher, progress)
                    # The server ended the watch (timeoutSeconds): resume from self._rv,
                    # at once, unless it is ending watches as soon as they open.
                    gone_in_a_row = 0
                    if events == 0 and time.monotonic() - began < 1.0:
                        if self._stop.wait(backoff * random.uniform(0.8, 1.2)):
                            break
                        backoff = min(backoff * 2, self._backoff_max_s)
                    else:
                        backoff = self._backoff_initial_s
                except _Stopped:
                    break
                except Exception as exc:  # noqa: BLE001 - every failure is retried
                    if self._stop.is_set():
                        break
                    if _status(exc) == 410:
                        with self._lock:
                            self._stats["relists"] += 1
                        self._log("debug", f"kubernetes watch expired ({_describe(exc)}); listing again")
                        need_list, consistent = True, True
                        gone_in_a_row = 1 if progress["events"] else gone_in_a_row + 1
                        if gone_in_a_row < 3:
                            continue
                        # 410 again right after a fresh list: do not spin.
                    with self._lock:
                        self._stats["errors"] += 1
                    reason = _describe(exc, self._target)
                    self._last_error = reason
                    if progress["connected"]:
                        # An established watch broke: not an outage until re-opening fails.
                        self._log("debug", f"kubernetes watch interrupted: {reason}; resuming")
                        delay = self._backoff_initial_s
                    else:
                        self._outage(reason)
                        delay = backoff
                        backoff = min(backoff * 2, self._backoff_max_s)
                        if isinstance(exc, _TokenError):
                            api = None  # rebuild once the files are there
                    if self._stop.wait(delay * random.uniform(0.8, 1.2)):
                        break
        finally:
            self._api_up = False
            if api is not None:
                try:
                    api.api_client.close()
                except Exception:  # noqa: BLE001
                    pass

    def _make_api(self) -> Any:
        from kubernetes import client

        target = self._target
        assert target is not None
        cfg = client.Configuration(host=target.url)
        cfg.verify_ssl = True
        if target.url.startswith("https://") and target.ca_file:
            if os.path.isfile(target.ca_file):
                cfg.ssl_ca_cert = target.ca_file
            elif target.token_required:
                raise _TokenError(f"cluster CA certificate {target.ca_file}: not found")
        cfg.retries = False  # our loop does the retrying, with backoff
        cfg.keep_alive = True  # TCP keepalive: an idle watch behind a dead LB is noticed
        return client.CoreV1Api(client.ApiClient(cfg))

    def _refresh_token(self, api: Any) -> None:
        """Re-read the token before every list/watch: projected tokens rotate (~hourly)."""
        target = self._target
        assert target is not None
        cfg = api.api_client.configuration
        token = ""
        if target.token_file:
            try:
                with open(target.token_file, encoding="utf-8") as fh:
                    token = fh.read().strip()
            except FileNotFoundError:
                if target.token_required:
                    raise _TokenError(
                        f"service account token {target.token_file}: not found"
                    ) from None
            except OSError as exc:
                raise _TokenError(
                    f"service account token {target.token_file}: {exc.strerror or exc}"
                ) from None
        if token:
            cfg.api_key["authorization"] = token
            cfg.api_key_prefix["authorization"] = "Bearer"
        else:
            cfg.api_key.pop("authorization", None)

    def _selector(self) -> str:
        return f"spec.nodeName={self.node_name}"

    def _list(self, api: Any, consistent: bool) -> None:
        kwargs: dict[str, Any] = {
            "field_selector": self._selector(),
            "_preload_content": False,
            "_request_timeout": (self._connect_timeout_s, self._list_timeout_s),
        }
        if not consistent:
            kwargs["resource_version"] = "0"  # served from the API server's watch cache
        resp = api.list_pod_for_all_namespaces(**kwargs)
        self._hold(resp)
        try:
            body = resp.data
        finally:
            self._release(resp)
        if self._stop.is_set():
            raise _Stopped
        doc = json.loads(body)
        pods: dict[str, PodMeta] = {}
        invalid = 0
        for item in doc.get("items") or ():
            pod = self._parse(item)
            if pod is None:
                invalid += 1
            else:
                pods[pod.key] = pod
        rv = str((doc.get("metadata") or {}).get("resourceVersion") or "")
        with self._lock:
            self._stats["lists"] += 1
            self._stats["events_invalid"] += invalid
            self._publish(pods)
            self._rv = rv
        first = not self._ever_listed
        self._ever_listed = True
        self._ready.set()
        self._api_ok(f"{len(pods)} pods on node {self.node_name}" if first else "")

    def _watch(self, api: Any, watcher: Any, progress: dict[str, Any]) -> int:
        """One watch request, until the server ends it. Returns the number of events;
        ``progress`` says, also when it raises, whether it connected and what it applied."""

        def call(**kwargs: Any) -> Any:
            resp = api.list_pod_for_all_namespaces(**kwargs)
            progress["connected"] = True
            self._hold(resp)
            with self._lock:
                self._stats["watches"] += 1
            self._api_ok("")
            return resp

        if self._stop.is_set():
            raise _Stopped
        n = 0
        stream = watcher.stream(
            call,
            field_selector=self._selector(),
            resource_version=self._rv or "0",
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_timeout_s,  # also turns off Watch's own retries
            _request_timeout=(self._connect_timeout_s, self._watch_timeout_s + 30),
        )
        try:
            for event in stream:
                if self._stop.is_set():
                    raise _Stopped
                n += 1
                progress["events"] = n
                self._apply(event)
        finally:
            stream.close()
            with self._lock:
                self._resp = None
        if self._stop.is_set():
            raise _Stopped
        return n

    def _apply(self, event: Any) -> None:
        if not isinstance(event, dict):
            with self._lock:
                self._stats["events_invalid"] += 1
            return
        etype = event.get("type")
        raw = event.get("raw_object")
        if not isinstance(raw, dict):
            with self._lock:
                self._stats["events_invalid"] += 1
            return
        rv = str((raw.get("metadata") or {}).get("resourceVersion") or "")
        with self._lock:
            if etype in ("ADDED", "MODIFIED", "DELETED"):
                self._stats["events_" + etype.lower()] += 1
                pod = self._parse(raw)
                if pod is None:
                    self._stats["events_invalid"] += 1
                else:
                    pods = dict(self._pods)
                    if etype == "DELETED":
                        pods.pop(pod.key, None)
                    else:
                        pods[pod.key] = pod
                    self._publish(pods)
            elif etype == "BOOKMARK":
                self._stats["events_bookmark"] += 1
            else:
                self._stats["events_other"] += 1
            if rv:
                self._rv = rv

    def _parse(self, obj: Any) -> PodMeta | None:
        try:
            pod = PodMeta.from_object(obj)
        except (ValueError, TypeError, AttributeError):
            return None
        if pod.node_name and pod.node_name != self.node_name:
            return None  # the selector is the server's job; do not trust it blindly
        return pod

    def _publish(self, pods: dict[str, PodMeta]) -> None:
        """Install a new pod table and its IP index (caller holds ``_lock``)."""
        index: dict[str, PodMeta] = {}
        # Where two live pods claim one IP (a reused address, before the old pod's
        # deletion arrives), the one not terminating, then the newest, wins.
        order = sorted(
            (p for p in pods.values() if not p.host_network and p.phase not in _TERMINAL_PHASES),
            key=lambda p: (not p.terminating, p.created),
        )
        for pod in order:
            for ip in pod.ips:
                index[ip] = pod
        self._pods = pods
        self._by_ip = index

    # ----------------------------------------------------------------- state and logs

    def _hold(self, resp: Any) -> None:
        with self._lock:
            self._resp = resp
        if self._stop.is_set():
            self._abort_response()

    def _release(self, resp: Any) -> None:
        with self._lock:
            if self._resp is resp:
                self._resp = None
        try:
            resp.release_conn()
        except Exception:  # noqa: BLE001
            pass

    def _abort_response(self) -> None:
        """Unblock a read in progress by shutting the socket down under it."""
        with self._lock:
            resp = self._resp
        if resp is None:
            return
        conn = getattr(resp, "connection", None) or getattr(resp, "_connection", None)
        sock = getattr(conn, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _api_ok(self, detail: str) -> None:
        was_down = self._warned
        self._api_up = True
        self._warned = False
        if was_down:
            self._log("info", "kubernetes API reachable again"
                      + (f"; {detail}" if detail else ""))
        elif detail:
            self._log("info", f"kubernetes API: {detail}")

    def _outage(self, reason: str) -> None:
        self._api_up = False
        if not self._warned:
            self._warned = True
            self._log(
                "warning",
                f"kubernetes API unavailable: {reason}; "
                "spans carry pod IPs and namespace identity only",
            )
        else:
            self._log("debug", f"kubernetes API still unavailable: {reason}")


class _TokenError(Exception):
    pass


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")


def _describe(exc: BaseException, target: ApiTarget | None = None) -> str:
    """One line naming the cause (and, for auth failures, the fix)."""
    where = target.url if target else "the API server"
    if isinstance(exc, _TokenError):
        return str(exc)
    status = _status(exc)
    if status:
        message = ""
        body = getattr(exc, "body", None)
        if body:
            try:
                message = json.loads(body).get("message") or ""
            except (ValueError, AttributeError, TypeError):
                message = str(body)[:200]
        text = f"{where} answered HTTP {status} {getattr(exc, 'reason', '') or ''}".rstrip()
        if message:
            text += f": {message}"
        if status == 401:
            text += " (the service account token was rejected)"
        elif status == 403:
            text += (" (grant the agent's ServiceAccount get, list and watch on pods: "
                     "see the ClusterRole in deploy/)")
        return text
    text = str(exc)
    found = _ERRNO.search(text)
    if found:
        return f"cannot connect to {where}: {found.group(1).strip()}"
    name = type(exc).__name__
    if "SSL" in name or ("ssl" in text.lower() and "certificate" in text.lower()):
        return f"TLS with {where} failed: {text}"
    return f"{where}: {name}: {text}" if text else f"{where}: {name}"
