"""The node agent's configuration: a YAML file, environment overrides, validation.

Rules of this module:

* The schema is the dataclasses below, one per section; every key is optional and the
  defaults are those of the agent plan (issue 7). A key the schema does not know is an error
  (a typo must not pass silently), with a did-you-mean suggestion.
* Environment variables override the file: ``WIRESPAN_<SECTION>_<KEY>`` for a key of a
  section (``WIRESPAN_CAPTURE_SNAPLEN``), ``WIRESPAN_<KEY>`` for a top-level key
  (``WIRESPAN_LISTEN``), and plain ``NODE_NAME`` (the downward API's ``spec.nodeName``) for
  ``node_name`` (``WIRESPAN_NODE_NAME`` wins over it). A value from the environment is a
  string, converted by the field's type: integers, numbers, booleans (``true/false/1/0/
  yes/no``), lists (comma-separated), strings as they are.
* Every problem is a :class:`sniffer.errors.UsageError` whose message names the field and
  where its value came from: ``agent config /etc/wirespan/agent.yaml: export.otlp_protocol:
  must be one of grpc, http/protobuf (got 'udp')`` or ``agent config (from
  WIRESPAN_CAPTURE_SNAPLEN): capture.snaplen: must be an integer between 1 and 262144 (got
  'abc')``. Nothing else escapes :func:`load_config`, whatever the file holds.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import mmap
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from sniffer.errors import UsageError

ENV_PREFIX = "WIRESPAN_"
LOG_LEVELS = ("debug", "info", "warning", "error")
SPAN_MODES = ("traced", "proxy", "all")
OTLP_PROTOCOLS = ("grpc", "http/protobuf")
K8S_MODES = ("auto", "true", "false")
MAX_SNAPLEN = 262144
RING_OVERHEAD = 256  # bytes a TPACKET_V3 block needs beside one packet (as sniffer.capture.live)


class _Invalid(Exception):
    """A value that does not fit its field: ``problem`` is the text after ``field:``."""

    def __init__(self, problem: str, show_value: bool = True) -> None:
        super().__init__(problem)
        self.problem = problem
        self.show_value = show_value


# -- converters: (value, from_env) -> normalised value, or _Invalid ----------------------------

Conv = Callable[[Any, bool], Any]

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _str(*, nonempty: bool = False, choices: tuple[str, ...] = (),
         aliases: Mapping[str, str] | None = None, lower: bool = False,
         check: Callable[[str], str | None] | None = None, what: str = "") -> Conv:
    if what:
        need = what
    elif choices:
        need = f"must be one of {', '.join(choices)}"
    elif nonempty:
        need = "must be a non-empty string"
    else:
        need = "must be a string"

    def conv(v: Any, _env: bool) -> str:
        if v is None:
            v = ""
        if not isinstance(v, str):
            raise _Invalid(need + (" (quote it in YAML)" if not choices and not what and
                                   isinstance(v, (int, float)) else ""))
        s = v.strip()  # a trailing newline from a ConfigMap or a shell never matters
        if lower or choices:
            s = s.lower()
        if aliases:
            s = aliases.get(s, s)
        if choices and s not in choices:
            raise _Invalid(need)
        if nonempty and not s:
            raise _Invalid(need)
        if check is not None and s:
            problem = check(s)
            if problem:
                raise _Invalid(problem)
        return s

    return conv


def _int(lo: int, hi: int) -> Conv:
    need = f"must be an integer between {lo} and {hi}"

    def conv(v: Any, _env: bool) -> int:
        if isinstance(v, bool):
            raise _Invalid(need)
        if isinstance(v, str):
            try:
                v = int(v.strip(), 10)
            except ValueError:
                raise _Invalid(need) from None
        if not isinstance(v, int) or not lo <= v <= hi:
            raise _Invalid(need)
        return v

    return conv


def _float(lo: float, hi: float) -> Conv:
    need = f"must be a number between {lo:g} and {hi:g}"

    def conv(v: Any, _env: bool) -> float:
        if isinstance(v, bool):
            raise _Invalid(need)
        if isinstance(v, str):
            try:
                v = float(v.strip())
            except ValueError:
                raise _Invalid(need) from None
        if not isinstance(v, (int, float)):
            raise _Invalid(need)
        v = float(v)
        if math.isnan(v) or not lo <= v <= hi:
            raise _Invalid(need)
        return v

    return conv


def _bool_value(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str):
        s = v.strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
    return None


def _bool() -> Conv:
    def conv(v: Any, _env: bool) -> bool:
        b = _bool_value(v)
        if b is None:
            raise _Invalid("must be true or false (also yes/no, 1/0)")
        return b

    return conv


def _tristate() -> Conv:
    """``auto``, or a boolean in any spelling: normalised to ``"auto"``/``"true"``/``"false"``."""

    def conv(v: Any, _env: bool) -> str:
        if isinstance(v, str) and v.strip().lower() == "auto":
            return "auto"
        b = _bool_value(v)
        if b is None:
            raise _Invalid("must be one of auto, true, false")
        return "true" if b else "false"

    return conv


def _strlist(*, nonempty: bool = False, item: Callable[[str], str | None] | None = None,
             what: str = "strings") -> Conv:
    need = f"must be a {'non-empty ' if nonempty else ''}list of {what}"

    def conv(v: Any, _env: bool) -> list[str]:
        if v is None:
            v = []
        if isinstance(v, str):  # the environment's form, also accepted in the file
            items = [p.strip() for p in v.split(",")]
            items = [p for p in items if p]
        elif isinstance(v, list):
            items = []
            for x in v:
                if not isinstance(x, str) or not x.strip():
                    raise _Invalid(f"{need} (got {_show(x)} as an item)", show_value=False)
                items.append(x.strip())
        else:
            raise _Invalid(need)
        if nonempty and not items:
            raise _Invalid(need)
        out: list[str] = []
        for x in items:
            if item is not None:
                problem = item(x)
                if problem:
                    raise _Invalid(f"{problem} (got {_show(x)})", show_value=False)
            if x not in out:  # a repeated entry is harmless: keep the first
                out.append(x)
        return out

    return conv


# -- checks for strings --------------------------------------------------------------------

_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?$")


def split_hostport(s: str) -> tuple[str, int]:
    """``"HOST:PORT"`` or ``"[IPv6]:PORT"`` → (host, port); ``ValueError`` with the reason.
    The host is an IPv4/IPv6 literal or a DNS name; the port is 0..65535 here (the caller
    decides whether 0 is allowed)."""
    if s.startswith("["):
        end = s.find("]")
        if end < 0 or s[end + 1:end + 2] != ":":
            raise ValueError("an IPv6 address is written [ADDR]:PORT")
        host, port_s = s[1:end], s[end + 2:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_s = s.rpartition(":")
        if not sep:
            raise ValueError("no ':PORT'")
        if not host:
            raise ValueError("no HOST before ':'")
        if ":" in host:
            raise ValueError("an IPv6 address is written [ADDR]:PORT")
        if not _HOST_RE.match(host):
            raise ValueError(f"{host!r} is not a host name or IPv4 address")
    if not port_s.isascii() or not port_s.isdigit() or len(port_s) > 5:
        raise ValueError("the port must be a number from 1 to 65535")
    port = int(port_s)
    if port > 65535:
        raise ValueError("the port must be a number from 1 to 65535")
    return host, port


_LISTEN_NEED = "must be HOST:PORT, e.g. 0.0.0.0:9102 or [::]:9102"


def _check_listen(s: str) -> str | None:
    try:
        _, port = split_hostport(s)
    except ValueError as e:
        return f"{_LISTEN_NEED}: {e}"
    if port == 0:
        return f"{_LISTEN_NEED}: the port must be a number from 1 to 65535"
    return None


def _check_url(s: str) -> str | None:
    need = "must be an http:// or https:// URL, e.g. http://otel-collector.observability:4317"
    try:
        u = urlsplit(s)
        port = u.port  # raises ValueError for a bad port
    except ValueError:
        return need
    if u.scheme not in ("http", "https") or not u.hostname or any(c.isspace() for c in s):
        return need
    if port == 0:
        return need
    return None


def _check_ifname(s: str) -> str | None:
    if len(s.encode()) > 15 or "/" in s or any(c.isspace() for c in s) or s in (".", ".."):
        return "interface names are 1 to 15 characters without '/' or spaces"
    return None


def _check_abs(s: str) -> str | None:
    return None if s.startswith("/") else "must be an absolute path"


# -- the schema -----------------------------------------------------------------------------

def _setting(default: Any, conv: Conv, doc: str = "") -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda d=tuple(default): list(d),
                     metadata={"conv": conv, "doc": doc})
    return field(default=default, metadata={"conv": conv, "doc": doc})


@dataclass
class CaptureConfig:
    interfaces: list[str] = _setting(["eth0", "lo"], _strlist(nonempty=True, item=_check_ifname,
                                                              what="interface names"),
                                     "opened in every pod namespace")
    filter: str = _setting("tcp", _str(), "tcpdump syntax, compiled to classic BPF")
    snaplen: int = _setting(MAX_SNAPLEN, _int(1, MAX_SNAPLEN))
    ring_block_kib: int = _setting(1024, _int(1, 65536))
    ring_blocks: int = _setting(8, _int(2, 65536), "per interface per pod")
    ring_timeout_ms: int = _setting(10, _int(1, 10_000))


@dataclass
class DiscoveryConfig:
    netns_dirs: list[str] = _setting(["/var/run/netns", "/run/netns"],
                                     _strlist(item=_check_abs, what="absolute paths"),
                                     "named namespaces (CNI pod sandboxes)")
    proc: str = _setting("/proc", _str(nonempty=True, check=_check_abs),
                         "unnamed namespaces via /proc/*/ns/net")
    rescan_interval_s: float = _setting(5.0, _float(0.1, 3600), "safety net beside inotify")
    include_host: bool = _setting(False, _bool(), "capture the host's own namespace too")


@dataclass
class KubernetesConfig:
    enabled: str = _setting("auto", _tristate(),
                            "auto | true | false (auto: use in-cluster credentials if present)")
    api_url: str = _setting("", _str(check=_check_url),
                            "default: in-cluster (KUBERNETES_SERVICE_HOST/PORT)")
    token_file: str = _setting("/var/run/secrets/kubernetes.io/serviceaccount/token",
                               _str(nonempty=True))
    ca_file: str = _setting("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
                            _str(nonempty=True))

    def wanted(self, in_cluster: bool) -> bool:
        """Whether to use the API: ``true``, or ``auto`` with in-cluster credentials present.
        (``enabled`` is a string: never test it for truth directly.)"""
        return self.enabled == "true" or (self.enabled == "auto" and in_cluster)


@dataclass
class ExportConfig:
    otlp_endpoint: str = _setting("", _str(check=_check_url),
                                  "e.g. http://otel-collector.observability:4317")
    otlp_protocol: str = _setting("grpc", _str(choices=OTLP_PROTOCOLS,
                                               aliases={"http": "http/protobuf"}))
    output: str = _setting("", _str(), "also write OTLP/JSON lines to this file ('-' = stdout)")
    spans: str = _setting("traced", _str(choices=SPAN_MODES))
    queue_size: int = _setting(10_000, _int(1, 10_000_000))
    timeout_s: float = _setting(10.0, _float(0.001, 600))


@dataclass
class LimitsConfig:
    max_pods: int = _setting(512, _int(1, 100_000))
    max_flows: int = _setting(65536, _int(1, 100_000_000))


@dataclass
class AgentConfig:
    node_name: str = _setting("", _str(), "env NODE_NAME (downward API spec.nodeName) fills it")
    listen: str = _setting("0.0.0.0:9102", _str(nonempty=True, check=_check_listen,
                                                         what=_LISTEN_NEED))
    service_name: str = _setting("wirespan", _str(nonempty=True))
    log_level: str = _setting("info", _str(choices=LOG_LEVELS, aliases={"warn": "warning"}))
    shutdown_grace_s: float = _setting(10.0, _float(0, 3600))
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    # Not settings: where the configuration came from (ignored by ==, left out of to_dict()).
    path: str | None = field(default=None, compare=False, repr=False)
    origins: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    warnings: list[str] = field(default_factory=list, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The effective settings as plain YAML-able values, for logging at start (and
        ``load`` again: the result round-trips). Credentials that may sit in a URL (user
        info, query) are masked; the files named by ``token_file``/``ca_file`` are paths,
        never their contents."""
        out: dict[str, Any] = {}
        for name, f in _settings(type(self)):
            v = getattr(self, name)
            if name in _SECTIONS:
                out[name] = {n: _plain(n, getattr(v, n)) for n, _ in _settings(type(v))}
            else:
                out[name] = _plain(name, v)
        return out

    def origin(self, dotted: str) -> str:
        """Where a setting's value came from: ``"default"``, ``"file"`` or ``"env NAME"``."""
        return self.origins.get(dotted, "default")


def _settings(cls: type) -> list[tuple[str, Any]]:
    return [(f.name, f) for f in fields(cls) if f.name not in ("path", "origins", "warnings")]


_SECTIONS: dict[str, type] = {
    "capture": CaptureConfig, "discovery": DiscoveryConfig, "kubernetes": KubernetesConfig,
    "export": ExportConfig, "limits": LimitsConfig}
_TOP = [n for n, _ in _settings(AgentConfig) if n not in _SECTIONS]


def _plain(name: str, v: Any) -> Any:
    if isinstance(v, list):
        return list(v)
    if isinstance(v, str) and name.endswith(("_url", "_endpoint")) and v:
        return redact_url(v)
    return v


def redact_url(url: str) -> str:
    """``url`` with any user info and query string masked (``***``)."""
    try:
        u = urlsplit(url)
        netloc = u.netloc
        if "@" in netloc:
            netloc = "***@" + netloc.rpartition("@")[2]
        return urlunsplit((u.scheme, netloc, u.path, "***" if u.query else "", ""))
    except ValueError:
        return "***"


def env_name(dotted: str) -> str:
    """A setting's environment variable: ``capture.snaplen`` → ``WIRESPAN_CAPTURE_SNAPLEN``."""
    return ENV_PREFIX + dotted.replace(".", "_").upper()


def _all_settings() -> dict[str, tuple[str, str | None, Any]]:
    """dotted name → (key, section or None, dataclass field), in schema order."""
    out: dict[str, tuple[str, str | None, Any]] = {}
    for name, f in _settings(AgentConfig):
        if name in _SECTIONS:
            for key, sf in _settings(_SECTIONS[name]):
                out[f"{name}.{key}"] = (key, name, sf)
        else:
            out[name] = (name, None, f)
    return out


SETTINGS = _all_settings()
_ENV_NAMES = {env_name(d): d for d in SETTINGS}


# -- messages ----------------------------------------------------------------------------------

def _show(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, Mapping):
        return "a mapping"
    if isinstance(v, (list, tuple, set)):
        return "a list"
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def _where(path: str | None, env: str | None) -> str:
    if env:
        return f"agent config (from {env})"
    return f"agent config {path}" if path else "agent config"


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.\-]+")


def _keytext(k: Any) -> str:
    """A key as it goes into a message: plain keys as they are, anything odd quoted."""
    if isinstance(k, str):
        return k if _PLAIN_KEY.fullmatch(k) else repr(k)
    return _show(k)


def _kind(v: Any) -> str:
    if isinstance(v, Mapping):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    return _show(v)


def _suggest(key: str, candidates: list[str], section: str | None) -> str:
    if section is None and "." in key and key.lower() in SETTINGS:
        # a dotted key written flat: "capture.snaplen: 100"
        sec, _, k = key.lower().partition(".")
        return f"; write it nested: '{sec}:' then '  {k}:' below it"
    close = difflib.get_close_matches(key.lower(), candidates, n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    if section is None:
        homes = [d for d, (k, s, _) in SETTINGS.items() if s and k == key.lower()]
        if homes:
            return f"; did you mean '{homes[0]}' (it belongs in the {homes[0].split('.')[0]} " \
                   "section)?"
    return ""


# -- YAML ----------------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error (the second one
    would silently win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    dup = key in seen
                    seen.add(key)
                except TypeError:
                    continue  # unhashable: the base class reports it with its position
                if dup:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep)


def _read_yaml(path: str) -> Any:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise UsageError(f"agent config {path}: no such file",
                         "give the path of an existing file to --config, or leave --config out "
                         "to run with the defaults") from None
    except IsADirectoryError:
        raise UsageError(f"agent config {path}: is a directory, not a file",
                         "give the path of the YAML file itself") from None
    except OSError as e:
        raise UsageError(f"agent config {path}: cannot read: {e.strerror or e}",
                         "check the path and its permissions") from None
    try:
        return yaml.load(data, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = e.problem or e.context or "not valid YAML"
        raise UsageError(f"agent config {path}: invalid YAML{where}: {problem}",
                         "fix the file (indentation, quoting, a missing ':')") from None
    except yaml.YAMLError as e:  # e.g. a ReaderError: bytes that are not text
        raise UsageError(f"agent config {path}: invalid YAML: {e}",
                         "the file must be UTF-8 (or UTF-16) text") from None
    except RecursionError:
        raise UsageError(f"agent config {path}: invalid YAML: nested too deeply",
                         "the agent configuration is two levels deep") from None


# -- building ----------------------------------------------------------------------------------

def load_config(path: str | None, env: Mapping[str, str] = os.environ) -> AgentConfig:
    """Read ``path`` (YAML; ``None``: no file, the defaults), apply the environment
    overrides from ``env``, validate. Raises :class:`UsageError` naming the field."""
    raw = _read_yaml(path) if path is not None else None
    return config_from_mapping(raw, env, path=path)


def config_from_mapping(raw: Any, env: Mapping[str, str] | None = None,
                        path: str | None = None) -> AgentConfig:
    """As :func:`load_config` for data already parsed (``raw`` is what the YAML held;
    ``None`` means an empty file); ``path`` is only used in messages."""
    env = {} if env is None else env
    values: dict[str, tuple[Any, str | None]] = {}  # dotted → (raw value, env var or None)
    warnings: list[str] = []
    where = _where(path, None)

    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise UsageError(f"{where}: the top level must be a mapping of settings "
                         f"(got {_kind(raw)})", "write 'key: value' lines, e.g. 'listen: "
                         "0.0.0.0:9102', with sections such as 'capture:' nested below")
    for key, v in raw.items():
        k = _keytext(key)
        if k in _SECTIONS:
            if v is None:
                continue  # a section with every key commented out
            if not isinstance(v, Mapping):
                raise UsageError(f"{where}: {k}: must be a mapping of settings (got {_kind(v)})",
                                 f"nest the {k} settings below '{k}:', one 'key: value' a line")
            known = [n for n, _ in _settings(_SECTIONS[k])]
            for sk, sv in v.items():
                sks = _keytext(sk)
                if sks not in known:
                    raise UsageError(f"{where}: {k}.{sks}: unknown setting"
                                     f"{_suggest(sks, known, k)}",
                                     f"the {k} settings are: {', '.join(known)}")
                values[f"{k}.{sks}"] = (sv, None)
        elif k in _TOP:
            values[k] = (v, None)
        else:
            hint = _suggest(k, _TOP + list(_SECTIONS), None)
            raise UsageError(f"{where}: {k}: unknown setting{hint}",
                             "the top-level settings are: "
                             + ", ".join(_TOP + [s + ":" for s in _SECTIONS]))

    # the environment wins over the file
    node = env.get("NODE_NAME")
    if node:
        values["node_name"] = (node, "NODE_NAME")
    sections = tuple(ENV_PREFIX + s.upper() + "_" for s in _SECTIONS)
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX):
            continue
        dotted = _ENV_NAMES.get(name)
        if dotted is not None:
            values[dotted] = (env[name], name)
            continue
        close = difflib.get_close_matches(name, list(_ENV_NAMES), n=1, cutoff=0.8)
        if name.startswith(sections):
            raise UsageError(f"agent config (from {name}): unknown setting"
                             + (f"; did you mean {close[0]}?" if close else ""),
                             "the variables are WIRESPAN_<SECTION>_<KEY>, e.g. "
                             "WIRESPAN_CAPTURE_SNAPLEN")
        if close:
            warnings.append(f"environment variable {name} is not a setting and was ignored; "
                            f"did you mean {close[0]}?")

    cfg = AgentConfig(path=path, warnings=warnings)
    for dotted, (key, section, f) in SETTINGS.items():
        if dotted not in values:
            continue
        v, from_env = values[dotted]
        try:
            value = f.metadata["conv"](v, from_env is not None)
        except _Invalid as e:
            shown = redact_url(v) if isinstance(v, str) and dotted.endswith(
                ("_url", "_endpoint")) else v
            got = f" (got {_show(shown)})" if e.show_value else ""
            raise UsageError(f"{_where(path, from_env)}: {dotted}: {e.problem}{got}",
                             _hint(dotted, from_env)) from None
        target = getattr(cfg, section) if section else cfg
        setattr(target, key, value)
        cfg.origins[dotted] = f"env {from_env}" if from_env else "file"
    _cross_checks(cfg, path)
    _advice(cfg)
    return cfg


def _hint(dotted: str, from_env: str | None) -> str:
    if from_env:
        return f"fix or unset {from_env}"
    return f"fix {dotted} in the file (or override it with {env_name(dotted)})"


def _fail(cfg: AgentConfig, path: str | None, dotted: str, problem: str, hint: str) -> None:
    o = cfg.origin(dotted)
    env = o[4:] if o.startswith("env ") else None
    raise UsageError(f"{_where(path, env)}: {dotted}: {problem}", hint)


def _cross_checks(cfg: AgentConfig, path: str | None) -> None:
    c = cfg.capture
    block = c.ring_block_kib * 1024
    page = mmap.PAGESIZE
    if block % page:
        _fail(cfg, path, "capture.ring_block_kib",
              f"must be a multiple of the page size, {page // 1024} KiB (got {c.ring_block_kib})",
              f"use a multiple of {page // 1024}, e.g. 1024")
    if block < c.snaplen + RING_OVERHEAD:
        _fail(cfg, path, "capture.ring_block_kib",
              f"a ring block of {c.ring_block_kib} KiB cannot hold one packet of "
              f"capture.snaplen {c.snaplen} bytes",
              "use a larger ring_block_kib or a smaller snaplen")


def _advice(cfg: AgentConfig) -> None:
    """Settings that are valid but probably not what was meant: warnings to log."""
    e = cfg.export
    if e.otlp_endpoint:
        port = urlsplit(e.otlp_endpoint).port
        if port == 4318 and e.otlp_protocol == "grpc":
            cfg.warnings.append("export.otlp_endpoint uses port 4318 (OTLP/HTTP) but "
                                "export.otlp_protocol is grpc; set otlp_protocol: http/protobuf?")
        elif port == 4317 and e.otlp_protocol == "http/protobuf":
            cfg.warnings.append("export.otlp_endpoint uses port 4317 (OTLP/gRPC) but "
                                "export.otlp_protocol is http/protobuf; set otlp_protocol: grpc?")


__all__ = [
    "AgentConfig", "CaptureConfig", "DiscoveryConfig", "ExportConfig", "KubernetesConfig",
    "LimitsConfig", "SETTINGS", "config_from_mapping", "env_name", "load_config", "redact_url",
    "split_hostport",
]
