"""sniffer.agent.config: the agent's YAML schema, environment overrides and validation.

Every rule is checked through the message the user sees: it must name the field (dotted)
and where its value came from (the file's path, or the environment variable)."""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sniffer.agent.config import (
    SETTINGS, AgentConfig, config_from_mapping, env_name, load_config, redact_url)
from sniffer.errors import UsageError

DEFAULTS: dict[str, Any] = {
    "node_name": "",
    "listen": "0.0.0.0:9102",
    "service_name": "wirespan",
    "log_level": "info",
    "shutdown_grace_s": 10,
    "capture": {"interfaces": ["eth0", "lo"], "filter": "tcp", "snaplen": 262144,
                "ring_block_kib": 1024, "ring_blocks": 8, "ring_timeout_ms": 10},
    "discovery": {"netns_dirs": ["/var/run/netns", "/run/netns"], "proc": "/proc",
                  "rescan_interval_s": 5, "include_host": False},
    "kubernetes": {"enabled": "auto", "api_url": "",
                   "token_file": "/var/run/secrets/kubernetes.io/serviceaccount/token",
                   "ca_file": "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"},
    "export": {"otlp_endpoint": "", "otlp_protocol": "grpc", "output": "", "spans": "traced",
               "queue_size": 10000, "timeout_s": 10},
    "limits": {"max_pods": 512, "max_flows": 65536},
}

FULL = """\
node_name: node-7
listen: "127.0.0.1:19102"
service_name: wirespan-test
log_level: debug
shutdown_grace_s: 3.5
capture:
  interfaces: [eth0, lo, eth1]
  filter: "tcp port 80 or tcp port 4143"
  snaplen: 65535
  ring_block_kib: 2048
  ring_blocks: 4
  ring_timeout_ms: 25
discovery:
  netns_dirs: [/var/run/netns]
  proc: /host/proc
  rescan_interval_s: 30
  include_host: true
kubernetes:
  enabled: false
  api_url: https://10.96.0.1:443
  token_file: /tmp/token
  ca_file: /tmp/ca.crt
export:
  otlp_endpoint: http://otel-collector.observability:4318
  otlp_protocol: http
  output: /tmp/spans.jsonl
  spans: all
  queue_size: 500
  timeout_s: 2
limits:
  max_pods: 64
  max_flows: 1000
"""


def write(tmp_path: Path, text: str, name: str = "agent.yaml") -> str:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return str(p)


def error_of(text: str | None, tmp_path: Path, env: dict[str, str] | None = None) -> str:
    path = write(tmp_path, text) if text is not None else None
    with pytest.raises(UsageError) as ei:
        load_config(path, env or {})
    assert ei.value.exit_code == 2
    return ei.value.message


# -- defaults and round trip ----------------------------------------------------------------

def test_defaults_without_a_file() -> None:
    cfg = load_config(None, {})
    assert cfg.to_dict() == DEFAULTS
    assert cfg == AgentConfig()
    assert cfg.capture.interfaces == ["eth0", "lo"]
    assert cfg.kubernetes.wanted(in_cluster=True) and not cfg.kubernetes.wanted(in_cluster=False)
    assert cfg.warnings == [] and cfg.origin("capture.snaplen") == "default"


def test_defaults_are_not_shared_between_instances() -> None:
    a, b = AgentConfig(), AgentConfig()
    a.capture.interfaces.append("eth9")
    assert b.capture.interfaces == ["eth0", "lo"]


@pytest.mark.parametrize("text", ["", "# only a comment\n", "capture:\n", "capture: ~\n"])
def test_empty_file_and_empty_section_are_the_defaults(tmp_path: Path, text: str) -> None:
    assert load_config(write(tmp_path, text), {}).to_dict() == DEFAULTS


def test_every_setting_of_the_plan_is_in_the_schema() -> None:
    flat = {f"{s}.{k}" if isinstance(v, dict) else s
            for s, v in DEFAULTS.items() for k in (v if isinstance(v, dict) else [None])}
    assert set(SETTINGS) == flat


def test_full_file_is_read_and_round_trips(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    cfg = load_config(path, {})
    assert cfg.path == path
    assert cfg.node_name == "node-7" and cfg.listen == "127.0.0.1:19102"
    assert cfg.shutdown_grace_s == 3.5 and cfg.log_level == "debug"
    assert cfg.capture.interfaces == ["eth0", "lo", "eth1"]
    assert cfg.capture.filter == "tcp port 80 or tcp port 4143"
    assert (cfg.capture.snaplen, cfg.capture.ring_block_kib, cfg.capture.ring_blocks,
            cfg.capture.ring_timeout_ms) == (65535, 2048, 4, 25)
    assert cfg.discovery.netns_dirs == ["/var/run/netns"] and cfg.discovery.proc == "/host/proc"
    assert cfg.discovery.rescan_interval_s == 30.0 and cfg.discovery.include_host is True
    assert cfg.kubernetes.enabled == "false" and not cfg.kubernetes.wanted(in_cluster=True)
    assert cfg.kubernetes.api_url == "https://10.96.0.1:443"
    assert cfg.export.otlp_protocol == "http/protobuf"  # "http" is an alias
    assert cfg.export.spans == "all" and cfg.export.queue_size == 500
    assert cfg.export.timeout_s == 2.0 and cfg.export.output == "/tmp/spans.jsonl"
    assert (cfg.limits.max_pods, cfg.limits.max_flows) == (64, 1000)
    assert cfg.origin("capture.snaplen") == "file"
    # the effective configuration, written back out, reads as the same configuration
    again = load_config(write(tmp_path, yaml.safe_dump(cfg.to_dict()), "again.yaml"), {})
    assert again == cfg and again.to_dict() == cfg.to_dict()


def test_to_dict_keeps_secrets_out(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "export:\n  otlp_endpoint: "
                                      "'https://user:s3cret@collector:4318/v1?api_key=k3y'\n"
                                      "  otlp_protocol: http\n"
                                      "kubernetes:\n  api_url: https://admin:pw@10.0.0.1\n"), {})
    text = repr(cfg.to_dict())
    assert "s3cret" not in text and "k3y" not in text and "pw@" not in text
    assert cfg.to_dict()["export"]["otlp_endpoint"] == "https://***@collector:4318/v1?***"
    assert cfg.export.otlp_endpoint.startswith("https://user:s3cret@")  # the real value is kept
    assert redact_url("http://collector:4317") == "http://collector:4317"
    # nor does a bad value with a password echo back in an error
    msg = error_of("export:\n  otlp_endpoint: 'ftp://u:hunter2@x'\n", tmp_path)
    assert "hunter2" not in msg and "export.otlp_endpoint" in msg


# -- environment overrides ------------------------------------------------------------------

def test_env_overrides_win_and_are_typed(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    env = {
        "WIRESPAN_LISTEN": "[::]:9200",
        "WIRESPAN_LOG_LEVEL": "WARNING",
        "WIRESPAN_SHUTDOWN_GRACE_S": "0.5",
        "WIRESPAN_CAPTURE_INTERFACES": "eth0, lo ,eth2",
        "WIRESPAN_CAPTURE_SNAPLEN": "1500",
        "WIRESPAN_DISCOVERY_INCLUDE_HOST": "no",
        "WIRESPAN_KUBERNETES_ENABLED": "yes",
        "WIRESPAN_EXPORT_OTLP_ENDPOINT": "http://127.0.0.1:4317",
        "WIRESPAN_EXPORT_OTLP_PROTOCOL": "grpc",
        "WIRESPAN_EXPORT_OUTPUT": "",  # an empty value clears a string
        "WIRESPAN_LIMITS_MAX_PODS": "8",
        "NODE_NAME": "from-downward-api",
        "PATH": "/usr/bin", "WIRESPAN_LAB_KEEP": "/tmp/x",  # not settings: ignored
    }
    cfg = load_config(path, env)
    assert cfg.listen == "[::]:9200" and cfg.log_level == "warning"
    assert cfg.shutdown_grace_s == 0.5
    assert cfg.capture.interfaces == ["eth0", "lo", "eth2"]
    assert cfg.capture.snaplen == 1500 and isinstance(cfg.capture.snaplen, int)
    assert cfg.discovery.include_host is False
    assert cfg.kubernetes.enabled == "true"
    assert cfg.export.otlp_endpoint == "http://127.0.0.1:4317"
    assert cfg.export.otlp_protocol == "grpc" and cfg.export.output == ""
    assert cfg.limits.max_pods == 8
    assert cfg.node_name == "from-downward-api"
    assert cfg.origin("capture.snaplen") == "env WIRESPAN_CAPTURE_SNAPLEN"
    assert cfg.origin("capture.ring_blocks") == "file"
    assert cfg.origin("limits.max_flows") == "file"
    assert cfg.warnings == []


def test_env_names_follow_the_pattern() -> None:
    assert env_name("export.otlp_endpoint") == "WIRESPAN_EXPORT_OTLP_ENDPOINT"
    assert env_name("listen") == "WIRESPAN_LISTEN"
    assert env_name("node_name") == "WIRESPAN_NODE_NAME"


def test_node_name_precedence() -> None:
    assert load_config(None, {"NODE_NAME": "a"}).node_name == "a"
    assert load_config(None, {"NODE_NAME": "a", "WIRESPAN_NODE_NAME": "b"}).node_name == "b"
    assert load_config(None, {"NODE_NAME": ""}).node_name == ""


@pytest.mark.parametrize("text,want", [
    ("true", True), ("FALSE", False), ("1", True), ("0", False), ("yes", True), ("No", False)])
def test_env_booleans(text: str, want: bool) -> None:
    assert load_config(None, {"WIRESPAN_DISCOVERY_INCLUDE_HOST": text}).discovery.include_host \
        is want


def test_env_bad_values_name_the_variable() -> None:
    with pytest.raises(UsageError) as ei:
        load_config(None, {"WIRESPAN_CAPTURE_SNAPLEN": "abc"})
    assert ei.value.message == ("agent config (from WIRESPAN_CAPTURE_SNAPLEN): capture.snaplen: "
                                "must be an integer between 1 and 262144 (got 'abc')")
    assert "WIRESPAN_CAPTURE_SNAPLEN" in (ei.value.hint or "")
    for var, value, fieldname in [
            ("WIRESPAN_DISCOVERY_INCLUDE_HOST", "maybe", "discovery.include_host"),
            ("WIRESPAN_EXPORT_TIMEOUT_S", "10s", "export.timeout_s"),
            ("WIRESPAN_LIMITS_MAX_FLOWS", "", "limits.max_flows"),
            ("WIRESPAN_SHUTDOWN_GRACE_S", "nan", "shutdown_grace_s"),
            ("WIRESPAN_CAPTURE_INTERFACES", " , ", "capture.interfaces")]:
        with pytest.raises(UsageError) as ei:
            load_config(None, {var: value})
        assert ei.value.message.startswith(f"agent config (from {var}): {fieldname}: "), var


def test_env_wins_over_a_bad_file_value(tmp_path: Path) -> None:
    path = write(tmp_path, "capture:\n  snaplen: huge\n")
    assert load_config(path, {"WIRESPAN_CAPTURE_SNAPLEN": "100"}).capture.snaplen == 100
    assert "capture.snaplen" in error_of("capture:\n  snaplen: huge\n", tmp_path)


def test_unknown_env_in_a_section_is_an_error_with_a_suggestion() -> None:
    with pytest.raises(UsageError) as ei:
        load_config(None, {"WIRESPAN_CAPTURE_SNAPLNE": "100"})
    assert "WIRESPAN_CAPTURE_SNAPLNE" in ei.value.message
    assert "did you mean WIRESPAN_CAPTURE_SNAPLEN?" in ei.value.message


def test_near_miss_env_outside_sections_is_a_warning() -> None:
    cfg = load_config(None, {"WIRESPAN_LISTN": "1.2.3.4:1"})
    assert cfg.listen == "0.0.0.0:9102"
    assert any("WIRESPAN_LISTN" in w and "WIRESPAN_LISTEN" in w for w in cfg.warnings)


# -- validation: each rule names its field ---------------------------------------------------

def test_error_format_names_file_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, "export:\n  otlp_protocol: udp\n")
    with pytest.raises(UsageError) as ei:
        load_config(path, {})
    assert ei.value.message == (f"agent config {path}: export.otlp_protocol: must be one of "
                                "grpc, http/protobuf (got 'udp')")
    assert ei.value.hint and "WIRESPAN_EXPORT_OTLP_PROTOCOL" in ei.value.hint
    with pytest.raises(UsageError) as ei:
        config_from_mapping({"export": {"otlp_protocol": "udp"}})
    assert ei.value.message.startswith("agent config: export.otlp_protocol: ")


BAD: list[tuple[str, str, str]] = [
    # (yaml, field, a piece of the problem)
    ("listen: 9102", "listen", "must be HOST:PORT"),
    ("listen: '0.0.0.0'", "listen", "must be HOST:PORT"),
    ("listen: ':9102'", "listen", "must be HOST:PORT"),
    ("listen: '0.0.0.0:0'", "listen", "1 to 65535"),
    ("listen: '0.0.0.0:65536'", "listen", "1 to 65535"),
    ("listen: '0.0.0.0:http'", "listen", "1 to 65535"),
    ("listen: ':::9102'", "listen", "[ADDR]:PORT"),
    ("listen: '[nothex]:9102'", "listen", "not an IPv6 address"),
    ("listen: 'bad host:9102'", "listen", "not a host name"),
    ("service_name: ''", "service_name", "non-empty"),
    ("service_name: 2024", "service_name", "string (quote it in YAML) (got 2024)"),
    ("log_level: verbose", "log_level", "must be one of debug, info, warning, error"),
    ("shutdown_grace_s: -1", "shutdown_grace_s", "between 0 and 3600"),
    ("shutdown_grace_s: true", "shutdown_grace_s", "must be a number"),
    ("capture: [eth0]", "capture", "must be a mapping"),
    ("capture: eth0", "capture", "must be a mapping"),
    ("capture:\n  interfaces: []", "capture.interfaces", "non-empty list"),
    ("capture:\n  interfaces: {eth0: 1}", "capture.interfaces", "list of interface names"),
    ("capture:\n  interfaces: [eth0, 7]", "capture.interfaces", "got 7 as an item"),
    ("capture:\n  interfaces: [eth0, [lo]]", "capture.interfaces", "got a list as an item"),
    ("capture:\n  interfaces: [averyveryverylongname]", "capture.interfaces", "15 characters"),
    ("capture:\n  interfaces: ['a/b']", "capture.interfaces", "without '/'"),
    ("capture:\n  filter: [tcp]", "capture.filter", "must be a string"),
    ("capture:\n  snaplen: 0", "capture.snaplen", "between 1 and 262144"),
    ("capture:\n  snaplen: 262145", "capture.snaplen", "between 1 and 262144"),
    ("capture:\n  snaplen: 1500.5", "capture.snaplen", "must be an integer"),
    ("capture:\n  snaplen: true", "capture.snaplen", "must be an integer"),
    ("capture:\n  ring_block_kib: 0", "capture.ring_block_kib", "between 1 and 65536"),
    ("capture:\n  ring_blocks: 1", "capture.ring_blocks", "between 2 and 65536"),
    ("capture:\n  ring_timeout_ms: 0", "capture.ring_timeout_ms", "between 1 and 10000"),
    ("capture:\n  snaplen: 9000\n  ring_block_kib: 8", "capture.ring_block_kib",
     "cannot hold one packet of capture.snaplen 9000"),
    ("discovery:\n  netns_dirs: [run/netns]", "discovery.netns_dirs", "absolute path"),
    ("discovery:\n  netns_dirs: /run/netns", None, None),  # a string is a one-item list: fine
    ("discovery:\n  proc: proc", "discovery.proc", "absolute path"),
    ("discovery:\n  rescan_interval_s: 0", "discovery.rescan_interval_s", "between 0.1 and 3600"),
    ("discovery:\n  include_host: maybe", "discovery.include_host", "true or false"),
    ("discovery:\n  include_host: 2", "discovery.include_host", "true or false"),
    ("kubernetes:\n  enabled: sometimes", "kubernetes.enabled", "one of auto, true, false"),
    ("kubernetes:\n  api_url: kubernetes.default", "kubernetes.api_url", "http:// or https://"),
    ("kubernetes:\n  token_file: ''", "kubernetes.token_file", "non-empty"),
    ("export:\n  otlp_endpoint: otel-collector:4317", "export.otlp_endpoint",
     "http:// or https:// URL"),
    ("export:\n  otlp_endpoint: 'grpc://otel:4317'", "export.otlp_endpoint", "http:// or https://"),
    ("export:\n  otlp_endpoint: 'http://'", "export.otlp_endpoint", "http:// or https://"),
    ("export:\n  otlp_endpoint: 'http://otel:99999'", "export.otlp_endpoint",
     "http:// or https://"),
    ("export:\n  otlp_protocol: udp", "export.otlp_protocol", "one of grpc, http/protobuf"),
    ("export:\n  spans: some", "export.spans", "one of traced, proxy, all"),
    ("export:\n  queue_size: 0", "export.queue_size", "between 1 and 10000000"),
    ("export:\n  timeout_s: 0", "export.timeout_s", "between 0.001 and 600"),
    ("limits:\n  max_pods: -3", "limits.max_pods", "between 1 and 100000"),
    ("limits:\n  max_flows: {}", "limits.max_flows", "must be an integer"),
]


@pytest.mark.parametrize("text,fieldname,problem", BAD)
def test_validation_names_the_field(tmp_path: Path, text: str, fieldname: str | None,
                                    problem: str | None) -> None:
    path = write(tmp_path, text + "\n")
    if fieldname is None:
        load_config(path, {})
        return
    with pytest.raises(UsageError) as ei:
        load_config(path, {})
    msg = ei.value.message
    assert msg.startswith(f"agent config {path}: {fieldname}: "), msg
    assert problem in msg, msg


def test_ring_block_must_be_a_multiple_of_the_page_size(tmp_path: Path) -> None:
    page_kib = mmap.PAGESIZE // 1024
    ok = load_config(write(tmp_path, f"capture:\n  ring_block_kib: {page_kib * 300}\n"), {})
    assert ok.capture.ring_block_kib == page_kib * 300
    msg = error_of(f"capture:\n  ring_block_kib: {page_kib * 300 + 1}\n", tmp_path)
    assert "capture.ring_block_kib: must be a multiple of the page size" in msg


@pytest.mark.parametrize("text,want", [
    ("listen: '[::]:9102'", "[::]:9102"), ("listen: '[::1]:1'", "[::1]:1"),
    ("listen: 'localhost:9102'", "localhost:9102"), ("listen: ' 10.0.0.1:80 '", "10.0.0.1:80"),
])
def test_listen_forms_accepted(tmp_path: Path, text: str, want: str) -> None:
    assert load_config(write(tmp_path, text + "\n"), {}).listen == want


@pytest.mark.parametrize("value,want", [
    ("auto", "auto"), ("AUTO", "auto"), ("true", "true"), ("false", "false"), ("yes", "true"),
    ("off", "false"), ("'true'", "true"), ("'false'", "false")])
def test_kubernetes_enabled_accepts_auto_and_yaml_booleans(tmp_path: Path, value: str,
                                                           want: str) -> None:
    cfg = load_config(write(tmp_path, f"kubernetes:\n  enabled: {value}\n"), {})
    assert cfg.kubernetes.enabled == want


def test_choices_are_normalised(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "log_level: WARN\nexport:\n  otlp_protocol: HTTP\n"
                                      "  spans: Proxy\n"), {})
    assert cfg.log_level == "warning" and cfg.export.otlp_protocol == "http/protobuf"
    assert cfg.export.spans == "proxy"


def test_numbers_as_strings_and_lists_as_strings_are_accepted(tmp_path: Path) -> None:
    # YAML 1.1 reads "1e3" as a string; quoting a number is common in Helm values
    cfg = load_config(write(tmp_path, "export:\n  timeout_s: 1e2\n  queue_size: '64'\n"
                                      "capture:\n  interfaces: eth0,lo\n"), {})
    assert cfg.export.timeout_s == 100.0 and cfg.export.queue_size == 64
    assert cfg.capture.interfaces == ["eth0", "lo"]


def test_duplicate_interfaces_are_merged(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "capture:\n  interfaces: [eth0, lo, eth0]\n"), {})
    assert cfg.capture.interfaces == ["eth0", "lo"]


def test_protocol_port_mismatch_is_a_warning(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "export:\n  otlp_endpoint: http://c:4318\n"), {})
    assert any("4318" in w and "http/protobuf" in w for w in cfg.warnings)


# -- unknown keys ---------------------------------------------------------------------------

@pytest.mark.parametrize("text,fieldname,suggestion", [
    ("capture:\n  snaplne: 100", "capture.snaplne", "did you mean 'snaplen'?"),
    ("capture:\n  interface: [eth0]", "capture.interface", "did you mean 'interfaces'?"),
    ("export:\n  otlp_endpiont: http://x:4317", "export.otlp_endpiont",
     "did you mean 'otlp_endpoint'?"),
    ("lisen: 0.0.0.0:1", "lisen", "did you mean 'listen'?"),
    ("captures:\n  snaplen: 1", "captures", "did you mean 'capture'?"),
    ("Listen: 0.0.0.0:1", "Listen", "did you mean 'listen'?"),
    ("snaplen: 100", "snaplen", "did you mean 'capture.snaplen'"),
    ("capture.snaplen: 100", "capture.snaplen", "write it nested"),
    ("1: x", "1", ""),
])
def test_unknown_keys_are_errors_with_a_suggestion(tmp_path: Path, text: str, fieldname: str,
                                                   suggestion: str) -> None:
    path = write(tmp_path, text + "\n")
    with pytest.raises(UsageError) as ei:
        load_config(path, {})
    msg = ei.value.message
    assert msg.startswith(f"agent config {path}: {fieldname}: unknown setting"), msg
    assert suggestion in msg
    assert ei.value.hint  # lists the settings that exist


# -- the file itself ------------------------------------------------------------------------

def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(UsageError) as ei:
        load_config(path, {})
    assert path in ei.value.message and "no such file" in ei.value.message
    assert ei.value.hint


def test_directory_is_not_a_config(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as ei:
        load_config(str(tmp_path), {})
    assert "directory" in ei.value.message


@pytest.mark.parametrize("text,line", [
    ("listen: 0.0.0.0:9102\ncapture:\n  snaplen: [1\n", 4),
    ("capture:\n  snaplen: 1\n    ring_blocks: 2\n", 3),
    ("a: 'unterminated\n", 2),
    ("listen: x:1\nlisten: y:2\n", 2),  # a key given twice
])
def test_invalid_yaml_gives_the_line(tmp_path: Path, text: str, line: int) -> None:
    msg = error_of(text, tmp_path)
    assert "invalid YAML" in msg and f"line {line}" in msg, msg


def test_binary_junk_is_a_usage_error(tmp_path: Path) -> None:
    p = tmp_path / "junk.yaml"
    p.write_bytes(b"\xff\xfe\x00\x00\x81\x82garbage\x00")
    with pytest.raises(UsageError):
        load_config(str(p), {})


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    assert "top level must be a mapping" in error_of(text, tmp_path)


# -- nothing but UsageError, whatever the input --------------------------------------------

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
                     st.sampled_from(["auto", "true", "0", "[::]:1", "http://x:1", "eth0,lo",
                                      "1e3", "-", "grpc", "http", "4096", "/abs", "a:b:c"]))
_junk = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
_section_keys = st.sampled_from(sorted(SETTINGS))


@st.composite
def _configs(draw: st.DrawFn) -> dict[Any, Any]:
    """Mostly real keys (so that the validators run), with junk values and junk keys."""
    out: dict[Any, Any] = {}
    for dotted in draw(st.lists(_section_keys, max_size=8)):
        sec, _, key = dotted.partition(".")
        if key:
            s = out.setdefault(sec, {})
            if isinstance(s, dict):
                s[key] = draw(_junk)
        else:
            out[sec] = draw(_junk)
    if draw(st.booleans()):
        out[draw(st.one_of(st.text(max_size=8), st.integers(), st.none()))] = draw(_junk)
    if draw(st.integers(0, 9)) == 0:
        out[draw(st.sampled_from(["capture", "export", "limits"]))] = draw(_junk)
    return out


_env = st.dictionaries(st.sampled_from(sorted({env_name(d) for d in SETTINGS}
                                              | {"NODE_NAME", "WIRESPAN_CAPTURE_X",
                                                 "WIRESPAN_OTHER"})),
                       st.text(max_size=12), max_size=4)


@settings(max_examples=250, deadline=None)
@given(data=st.one_of(_configs(), _junk), env=_env)
def test_junk_mappings_raise_only_usage_error(data: Any, env: dict[str, str]) -> None:
    try:
        cfg = config_from_mapping(data, env, path="junk.yaml")
    except UsageError as e:
        assert e.message.startswith("agent config")
        return
    # whatever passed is a usable configuration that round-trips
    assert isinstance(cfg, AgentConfig)
    assert config_from_mapping(cfg.to_dict()) == cfg


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=200),
                      _configs().map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
                      st.binary(max_size=100).map(lambda b: b.decode("latin-1"))))
def test_junk_files_raise_only_usage_error(tmp_path: Path, text: str) -> None:
    p = tmp_path / "fuzz.yaml"
    p.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_config(str(p), {})
    except UsageError:
        pass
