"""exporter.metrics: the Prometheus contract (names, types, values read back through
prometheus_client's own parser), cumulative counters, the cardinality bound, and the HTTP
endpoints on 127.0.0.1 with ephemeral ports."""

from __future__ import annotations

import gzip
import http.client
import socket
import threading
import time
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import \
    text_string_to_metric_families as om_families
from prometheus_client.parser import text_string_to_metric_families

from exporter.metrics import DWELL_BUCKETS, SPECS, HealthServer, Metrics, split_listen
from sniffer.errors import WirespanError

CONTRACT = {
    "wirespan_packets_total": ("counter", {"interface"}),
    "wirespan_kernel_drops_total": ("counter", {"interface"}),
    "wirespan_flows_active": ("gauge", set()),
    "wirespan_exchanges_total": ("counter", {"protocol"}),
    "wirespan_parse_errors_total": ("counter", {"protocol", "reason"}),
    "wirespan_reassembly_gaps_total": ("counter", set()),
    "wirespan_proxy_request_dwell_seconds": ("histogram", {"proxy", "namespace", "pod"}),
    "wirespan_proxy_response_dwell_seconds": ("histogram", {"proxy", "namespace", "pod"}),
    "wirespan_spans_exported_total": ("counter", set()),
    "wirespan_spans_dropped_total": ("counter", {"reason"}),
    "wirespan_pods_captured": ("gauge", set()),
    "wirespan_pod_events_total": ("counter", {"event"}),
    "wirespan_kubernetes_api_up": ("gauge", set()),
}


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the text exposition, parsed by prometheus_client."""
    out = {}
    for fam in text_string_to_metric_families(m.text()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return samples(m).get((name, tuple(sorted(labels.items()))))


def populated() -> Metrics:
    m = Metrics()
    m.set_total("wirespan_packets_total", {"interface": "web-1/eth0"}, 10)
    m.set_total("wirespan_kernel_drops_total", "web-1/eth0", 1)
    m.set_gauge("wirespan_flows_active", None, 3)
    m.set_total("wirespan_exchanges_total", {"protocol": "http/1.1"}, 4)
    m.set_total("wirespan_parse_errors_total", {"protocol": "http1", "reason": "bad_chunk_size"}, 2)
    m.set_total("wirespan_reassembly_gaps_total", None, 5)
    m.observe_hop("10.0.0.5:4143", "default", "web-1", 120_000, 2_000_000)
    m.set_total("wirespan_spans_exported_total", None, 6)
    m.set_total("wirespan_spans_dropped_total", {"reason": "queue_full"}, 1)
    m.set_gauge("wirespan_pods_captured", None, 2)
    m.inc("wirespan_pod_events_total", {"event": "added"}, 2)
    m.set_gauge("wirespan_kubernetes_api_up", None, 1)
    return m


# -- the contract -------------------------------------------------------------------------

def test_specs_are_the_contract() -> None:
    have = {s.name: (s.kind, set(s.labels)) for s in SPECS}
    for name, want in CONTRACT.items():
        assert have[name] == want, name


def test_exposition_has_every_contract_name_and_type() -> None:
    text = populated().text()
    for name, (kind, _) in CONTRACT.items():
        assert f"# TYPE {name} {kind}\n" in text, name
    for h in ("wirespan_proxy_request_dwell_seconds", "wirespan_proxy_response_dwell_seconds"):
        for suffix in ("_bucket{", "_sum{", "_count{"):
            assert h + suffix in text
    # counters are exposed under the contract's name, once: no _total_total, no _created
    assert "_total_total" not in text and "_created" not in text


def test_exposition_parses_with_the_contract_types_and_labels() -> None:
    fams = {f.name: f for f in text_string_to_metric_families(populated().text())}
    for name, (kind, labels) in CONTRACT.items():
        # the parser names counter families without _total, as OpenMetrics does
        fam = fams.get(name) or fams[name.removesuffix("_total")]
        assert fam.type == kind, name
        for s in fam.samples:
            assert set(s.labels) - {"le"} == labels, (name, s)


def test_names_present_before_anything_is_counted() -> None:
    text = Metrics().text()
    for name, (kind, _) in CONTRACT.items():
        assert f"# TYPE {name} {kind}" in text
    assert "wirespan_flows_active 0.0" in text and "wirespan_reassembly_gaps_total 0.0" in text


def test_openmetrics_exposition() -> None:
    m = populated()
    body, ctype = m.exposition("application/openmetrics-text; version=1.0.0; charset=utf-8")
    assert ctype.startswith("application/openmetrics-text")
    text = body.decode()
    assert text.endswith("# EOF\n")
    fams = {f.name: f for f in om_families(text)}
    assert fams["wirespan_packets"].type == "counter"
    assert fams["wirespan_packets"].samples[0].name == "wirespan_packets_total"
    assert fams["wirespan_proxy_request_dwell_seconds"].type == "histogram"
    plain, ctype = m.exposition(None)
    assert ctype.startswith("text/plain") and b"# EOF" not in plain


# -- values ---------------------------------------------------------------------------------

def test_set_total_advances_by_the_difference() -> None:
    m = Metrics()
    iface = {"interface": "web-1/eth0"}
    m.set_total("wirespan_packets_total", iface, 100)
    assert value(m, "wirespan_packets_total", **iface) == 100
    m.set_total("wirespan_packets_total", iface, 150)
    m.set_total("wirespan_packets_total", iface, 150)
    assert value(m, "wirespan_packets_total", **iface) == 150
    # backwards: the interface was replaced; the new count is a fresh start, and the
    # exposed counter stays monotonic
    m.set_total("wirespan_packets_total", iface, 20)
    assert value(m, "wirespan_packets_total", **iface) == 170
    m.set_total("wirespan_packets_total", iface, 25)
    assert value(m, "wirespan_packets_total", **iface) == 175
    m.set_total("wirespan_packets_total", iface, 0)
    m.set_total("wirespan_packets_total", iface, 3)
    assert value(m, "wirespan_packets_total", **iface) == 178
    # other label sets are separate
    m.set_total("wirespan_packets_total", "web-1/lo", 7)
    assert value(m, "wirespan_packets_total", interface="web-1/lo") == 7
    assert value(m, "wirespan_packets_total", **iface) == 178


def test_labels_by_mapping_tuple_or_string() -> None:
    m = Metrics()
    m.set_total("wirespan_parse_errors_total", {"reason": "x", "protocol": "http1"}, 1)
    m.set_total("wirespan_parse_errors_total", ("http1", "x"), 3)
    assert value(m, "wirespan_parse_errors_total", protocol="http1", reason="x") == 3
    with pytest.raises(ValueError):
        m.set_total("wirespan_parse_errors_total", {"protocol": "http1"}, 1)
    with pytest.raises(ValueError):
        m.set_total("wirespan_packets_total", ("a", "b"), 1)
    with pytest.raises(ValueError):
        m.set_total("wirespan_no_such_total", None, 1)
    with pytest.raises(ValueError):
        m.set_total("wirespan_flows_active", None, 1)  # a gauge
    with pytest.raises(ValueError):
        m.set_total("wirespan_packets_total", "a", -1)


def test_gauges_and_inc() -> None:
    m = Metrics()
    m.set_gauge("wirespan_pods_captured", None, 5)
    m.set_gauge("wirespan_pods_captured", None, 2)
    assert value(m, "wirespan_pods_captured") == 2
    m.set_gauge("wirespan_kubernetes_api_up", None, 1)
    m.set_gauge("wirespan_kubernetes_api_up", None, 0)
    assert value(m, "wirespan_kubernetes_api_up") == 0
    m.inc("wirespan_pod_events_total", {"event": "added"})
    m.inc("wirespan_pod_events_total", {"event": "added"})
    m.inc("wirespan_pod_events_total", {"event": "removed"})
    assert value(m, "wirespan_pod_events_total", event="added") == 2
    assert value(m, "wirespan_pod_events_total", event="removed") == 1


def test_observe_hop_fills_both_histograms() -> None:
    m = Metrics()
    lab = {"proxy": "10.0.0.5:4143", "namespace": "shop", "pod": "cart-1"}
    m.observe_hop("10.0.0.5:4143", "shop", "cart-1", 40_000, 3_000_000)   # 40 µs, 3 ms
    m.observe_hop("10.0.0.5:4143", "shop", "cart-1", 200_000, 20_000_000_000)  # 200 µs, 20 s
    m.observe_hop("10.0.0.5:4143", "shop", "cart-1", -5_000, 50_000)  # noise: counted as 0
    s = samples(m)
    req = "wirespan_proxy_request_dwell_seconds"
    resp = "wirespan_proxy_response_dwell_seconds"

    def bucket(name: str, le: str) -> float:
        return s[(name + "_bucket", tuple(sorted({**lab, "le": le}.items())))]

    assert bucket(req, "5e-05") == 2  # 40 µs and the clamped negative
    assert bucket(req, "0.00025") == 3
    assert bucket(req, "+Inf") == 3
    assert s[(req + "_count", tuple(sorted(lab.items())))] == 3
    assert s[(req + "_sum", tuple(sorted(lab.items())))] == pytest.approx(240e-6)
    assert bucket(resp, "5e-05") == 1  # exactly 50 µs is in le=5e-05 (le is <=)
    assert bucket(resp, "0.0025") == 1 and bucket(resp, "0.005") == 2
    assert bucket(resp, "10.0") == 2 and bucket(resp, "+Inf") == 3  # 20 s only in +Inf
    assert s[(resp + "_sum", tuple(sorted(lab.items())))] == pytest.approx(20.00305)


def test_dwell_buckets_span_50us_to_10s() -> None:
    assert DWELL_BUCKETS[0] == 50e-6 and DWELL_BUCKETS[-1] == 10.0
    ratios = [b / a for a, b in zip(DWELL_BUCKETS, DWELL_BUCKETS[1:])]
    assert all(1.9 <= r <= 2.6 for r in ratios)


# -- cardinality and forgetting ------------------------------------------------------------

def test_cardinality_cap_folds_into_other_and_counts() -> None:
    m = Metrics(max_label_sets=3)
    for i in range(10):
        m.set_total("wirespan_packets_total", f"pod-{i}/eth0", 10)
    assert m.label_sets("wirespan_packets_total") == 4  # 3 kept + "other"
    assert value(m, "wirespan_packets_total", interface="pod-0/eth0") == 10
    assert value(m, "wirespan_packets_total", interface="pod-5/eth0") is None
    assert value(m, "wirespan_packets_total", interface="other") == 70
    # folded sources still count by their difference
    for i in range(10):
        m.set_total("wirespan_packets_total", f"pod-{i}/eth0", 15)
    assert value(m, "wirespan_packets_total", interface="other") == 105
    assert value(m, "wirespan_packets_total", interface="pod-1/eth0") == 15
    assert m.folded("wirespan_packets_total") == 7
    assert value(m, "wirespan_metric_label_sets_folded_total",
                 metric="wirespan_packets_total") == 7
    # the histograms fold every label
    for i in range(5):
        m.observe_hop(f"10.0.0.{i}:4143", "ns", f"p{i}", 1000, 1000)
    assert value(m, "wirespan_proxy_request_dwell_seconds_count",
                 proxy="other", namespace="other", pod="other") == 2
    assert m.folded("wirespan_proxy_request_dwell_seconds") == 2


def test_remove_interface_forgets_and_frees_room() -> None:
    m = Metrics(max_label_sets=2)
    m.set_total("wirespan_packets_total", "a/eth0", 5)
    m.set_total("wirespan_kernel_drops_total", "a/eth0", 1)
    m.set_total("wirespan_packets_total", "b/eth0", 5)
    assert m.remove_interface("a/eth0") is True
    assert m.remove_interface("a/eth0") is False
    assert value(m, "wirespan_packets_total", interface="a/eth0") is None
    assert value(m, "wirespan_kernel_drops_total", interface="a/eth0") is None
    m.set_total("wirespan_packets_total", "c/eth0", 9)  # the freed room is used again
    assert value(m, "wirespan_packets_total", interface="c/eth0") == 9
    assert m.folded("wirespan_packets_total") == 0
    m.remove_interface("c/eth0")
    # churn: many pods come and go, the label sets stay bounded and nothing is folded
    for i in range(500):
        m.set_total("wirespan_packets_total", f"churn-{i}/eth0", i)
        m.remove_interface(f"churn-{i}/eth0")
    assert m.label_sets("wirespan_packets_total") == 1
    assert m.folded("wirespan_packets_total") == 0


def test_remove_every_interface_of_a_pod() -> None:
    m = Metrics()
    for iface in ("web-1/eth0", "web-1/lo", "web-10/eth0"):
        m.set_total("wirespan_packets_total", iface, 1)
        m.set_total("wirespan_kernel_drops_total", iface, 1)
    assert m.remove_interface("web-1/") is True
    left = {k[1] for k in samples(m) if k[0] in ("wirespan_packets_total",
                                                 "wirespan_kernel_drops_total")}
    assert left == {(("interface", "web-10/eth0"),)}


def test_a_folded_label_set_kept_later_does_not_count_twice() -> None:
    m = Metrics(max_label_sets=1)
    m.set_total("wirespan_packets_total", "a", 10)
    m.set_total("wirespan_packets_total", "b", 10)  # folded
    m.remove_interface("a")
    m.set_total("wirespan_packets_total", "b", 12)  # now kept: only the new 2 are its own
    assert value(m, "wirespan_packets_total", interface="b") == 2
    assert value(m, "wirespan_packets_total", interface="other") == 10


def test_remove_pod_forgets_dwell_series() -> None:
    m = Metrics()
    m.observe_hop("10.0.0.5:4143", "shop", "cart-1", 1000, 1000)
    m.observe_hop("10.0.0.5:4140", "shop", "cart-1", 1000, 1000)
    m.observe_hop("10.0.0.6:4143", "shop", "cart-2", 1000, 1000)
    assert m.remove_pod("shop", "cart-1") is True
    text = m.text()
    assert 'pod="cart-1"' not in text and 'pod="cart-2"' in text
    assert m.remove("wirespan_proxy_request_dwell_seconds",
                    ("10.0.0.6:4143", "shop", "cart-2")) is True


def test_instances_do_not_share_state() -> None:
    a, b = Metrics(), Metrics()
    a.set_total("wirespan_packets_total", "x", 3)
    assert value(b, "wirespan_packets_total", interface="x") is None
    assert a.registry is not b.registry


# -- HTTP ------------------------------------------------------------------------------------

def get(port: int, path: str, headers: dict[str, str] | None = None
        ) -> tuple[int, dict[str, str], bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


@pytest.fixture
def server() -> Any:
    state = {"healthy": (True, "ok"), "ready": (False, "waiting for the first pod scan")}
    lines: list[str] = []
    m = populated()
    srv = HealthServer("127.0.0.1:0", m, lambda: state["healthy"], lambda: state["ready"],
                       log=lines.append).start()
    srv.state, srv.lines = state, lines  # type: ignore[attr-defined]
    yield srv
    srv.close()


def test_metrics_endpoint(server: Any) -> None:
    status, headers, body = get(server.port, "/metrics")
    assert status == 200
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert fams["wirespan_packets"].samples[0].value == 10
    status, headers, body = get(server.port, "/metrics",
                                {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200 and headers["content-type"].startswith("application/openmetrics-text")
    assert body.decode().endswith("# EOF\n")
    status, headers, body = get(server.port, "/metrics?x=1", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers.get("content-encoding") == "gzip"
    assert b"wirespan_packets_total" in gzip.decompress(body)


def test_health_and_ready_follow_the_callables(server: Any) -> None:
    assert get(server.port, "/healthz")[::2] == (200, b"ok\n")
    assert get(server.port, "/readyz")[::2] == (503, b"waiting for the first pod scan\n")
    server.state["ready"] = (True, "ok")
    assert get(server.port, "/readyz")[::2] == (200, b"ok\n")
    server.state["healthy"] = (False, "capture loop stalled for 30 s")
    assert get(server.port, "/healthz")[::2] == (503, b"capture loop stalled for 30 s\n")
    server.state["healthy"] = (True, "")
    assert get(server.port, "/healthz")[0] == 200


def test_a_failing_check_is_503_not_a_crash() -> None:
    def boom() -> tuple[bool, str]:
        raise RuntimeError("no state yet")

    with HealthServer("127.0.0.1:0", Metrics(), boom, boom) as srv:
        status, _, body = get(srv.port, "/healthz")
        assert status == 503 and b"no state yet" in body
        assert get(srv.port, "/metrics")[0] == 200


def test_other_paths_are_404(server: Any) -> None:
    for path in ("/", "/metric", "/healthz/x", "/favicon.ico"):
        assert get(server.port, path)[0] == 404


def test_requests_go_to_the_log_callback_not_stderr(server: Any,
                                                    capfd: pytest.CaptureFixture[str]) -> None:
    get(server.port, "/healthz")
    get(server.port, "/nope")
    assert capfd.readouterr().err == ""
    assert any("/healthz" in line for line in server.lines)
    assert any("/nope" in line and "404" in line for line in server.lines)


def test_silent_without_a_log_callback(capfd: pytest.CaptureFixture[str]) -> None:
    with HealthServer("127.0.0.1:0", Metrics()) as srv:
        assert get(srv.port, "/healthz")[0] == 200
        assert get(srv.port, "/nope")[0] == 404
    assert capfd.readouterr().err == ""


def test_port_in_use_is_a_wirespan_error_with_the_hint() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        listen = f"127.0.0.1:{s.getsockname()[1]}"
        srv = HealthServer(listen, Metrics())
        with pytest.raises(WirespanError) as ei:
            srv.start()
    assert ei.value.message == f"address already in use: {listen}"
    assert ei.value.hint == "set listen: in the config or WIRESPAN_LISTEN"
    assert "WIRESPAN_LISTEN" in str(ei.value)


def test_two_servers_cannot_share_a_port() -> None:
    with HealthServer("127.0.0.1:0", Metrics()) as a:
        with pytest.raises(WirespanError, match="address already in use"):
            HealthServer(f"127.0.0.1:{a.port}", Metrics()).start()


def test_close_releases_the_port() -> None:
    srv = HealthServer("127.0.0.1:0", Metrics()).start()
    port = srv.port
    srv.close()
    srv.close()  # idempotent
    with HealthServer(f"127.0.0.1:{port}", Metrics()) as again:
        assert get(again.port, "/healthz")[0] == 200


def test_ipv6_listen() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        srv = HealthServer("[::1]:0", Metrics()).start()
    except WirespanError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    with srv:
        c = http.client.HTTPConnection("::1", srv.port, timeout=5)
        c.request("GET", "/healthz")
        assert c.getresponse().status == 200
        c.close()


def test_split_listen() -> None:
    assert split_listen("0.0.0.0:9102") == ("0.0.0.0", 9102)
    assert split_listen("[::]:9102") == ("::", 9102)
    for bad in ("9102", "host:", "[::]", "x:99999"):
        with pytest.raises(ValueError):
            split_listen(bad)
    with pytest.raises(WirespanError, match="WIRESPAN_LISTEN"):
        HealthServer("nonsense", Metrics()).start()


def test_concurrent_scrapes_while_updating() -> None:
    m = Metrics(max_label_sets=20)
    errors: list[BaseException] = []
    stop = threading.Event()

    def update() -> None:
        try:
            i = 0
            while not stop.is_set():
                i += 1
                m.set_total("wirespan_packets_total", f"pod-{i % 80}/eth0", i)
                m.observe_hop(f"10.0.0.{i % 70}:4143", "ns", f"p{i % 70}", i * 1000, i * 10)
                m.inc("wirespan_pod_events_total", {"event": "added"})
                if i % 50 == 0:
                    time.sleep(0.001)  # the pipeline updates in batches, not in a spin
                if i % 7 == 0:
                    m.remove_interface(f"pod-{i % 80}/eth0")
                    m.remove_pod("ns", f"p{i % 70}")
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def scrape(port: int) -> None:
        try:
            for _ in range(8):
                status, _, body = get(port, "/metrics")
                assert status == 200
                fams = list(text_string_to_metric_families(body.decode()))
                assert any(f.name == "wirespan_packets" for f in fams)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    with HealthServer("127.0.0.1:0", m) as srv:
        writers = [threading.Thread(target=update) for _ in range(2)]
        readers = [threading.Thread(target=scrape, args=(srv.port,)) for _ in range(3)]
        for t in writers + readers:
            t.start()
        for t in readers:
            t.join(60)
        stop.set()
        for t in writers:
            t.join(10)
    assert not errors, errors[:3]
    assert m.label_sets("wirespan_packets_total") <= 21
    assert value(m, "wirespan_pod_events_total", event="added") > 0
