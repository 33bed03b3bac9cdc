"""Command line: ``wirespan replay`` (and later ``capture``, ``agent``).

The only module that prints. Exit codes: 0 success, 1 runtime failure, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from . import __version__
from .errors import UsageError, WirespanError
from .pipeline import Summary, run_replay

PROG = "wirespan"
PROGRESS_MIN_BYTES = 16 << 20

_EPILOG_REPLAY = """\
examples:
  wirespan replay pcaps/sample-http1.pcap
  wirespan replay -o spans.jsonl --spans all pcaps/sample-http1.pcap
  wirespan replay --otlp-endpoint http://127.0.0.1:4318 pcaps/sample-http1.pcap
  wirespan replay --json eth0.pcap lo.pcapng.gz      merge two interfaces by time
  tcpdump -i any -w - 'tcp port 8080' | wirespan replay -

Reads pcap and pcapng (also gzip-compressed), any mix of Ethernet (with 802.1Q/QinQ),
Linux cooked v1/v2 (tcpdump -i any), raw IPv4/IPv6, BSD NULL/LOOP and NFLOG link types.
Several files are merged by timestamp; each file and interface is its own capture point,
so one connection seen on two interfaces counts as two observations.
"""

_EPILOG_CAPTURE = """\
examples:
  wirespan capture -i eth0 --duration 30
  wirespan capture -i lo -i eth0 -f 'tcp port 8080 or tcp port 4143' -o spans.jsonl
  wirespan capture --netns mypod -i eth0 -i lo --json
  wirespan capture --netns pod-a --netns pod-b -i eth0 -i lo --workers 2 -o spans.jsonl

Needs root or CAP_NET_RAW. Outgoing packets are captured too; on lo each packet is seen once.
The summary ends with the kernel's counters (packets that passed the filter, drops).
"""

_MESSAGES = {
    ("capture", "truncated_record"): "the last record of a file is cut short (capture still being written, or truncated copy)",
    ("capture", "truncated_compressed"): "a gzip stream ends early",
    ("capture", "corrupt_record"): "a record has an impossible length; the rest of that file was skipped",
    ("capture", "corrupt_block"): "a pcapng block is damaged; the rest of that file was skipped",
    ("capture", "read_error"): "a read failed; the rest of that file was skipped",
}


def _add_output_options(r: argparse.ArgumentParser) -> None:
    """Span outputs, the same for replay and capture."""
    r.add_argument("-o", "--output", metavar="PATH",
                   help="write spans to PATH ('-' for standard output), in --format")
    r.add_argument("--format", choices=["otlp-json", "zipkin-json"], default="otlp-json",
                   help="span file format for -o: otlp-json (one ExportTraceServiceRequest "
                        "per line, default) or zipkin-json (one Zipkin v2 span array per line)")
    r.add_argument("--otlp-endpoint", metavar="URL",
                   help="send spans to an OTLP collector, e.g. http://127.0.0.1:4318")
    r.add_argument("--otlp-protocol", choices=["http/protobuf", "grpc"],
                   default="http/protobuf",
                   help="OTLP transport (default: http/protobuf, port 4318; grpc: port 4317)")
    r.add_argument("--zipkin-endpoint", metavar="URL",
                   help="send spans to a Zipkin server (POST URL/api/v2/spans), "
                        "e.g. http://127.0.0.1:9411")
    r.add_argument("--export-queue", type=int, default=10_000, metavar="N",
                   help="spans held for an endpoint before new ones are dropped "
                        "(default: 10000)")
    r.add_argument("--export-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="at the end, wait at most this long to deliver queued spans "
                        "(default: 10)")
    r.add_argument("--spans", choices=["traced", "all", "proxy"], default="traced",
                   help="which spans: traced = exchanges carrying a trace context (default); "
                        "all = every exchange (synthetic trace ids where none); proxy = "
                        "proxy hops only")
    r.add_argument("--service-name", default="wirespan", metavar="NAME",
                   help="resource service.name of the spans (default: wirespan)")
    r.add_argument("--keep-query", action="store_true",
                   help="export request query strings as url.query (default: dropped)")


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Passive, packet-level tracer for service meshes: reads packets, "
                    "reassembles TCP, and reports what it saw.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-V", "--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    r = sub.add_parser(
        "replay",
        help="read capture files (pcap, pcapng, .gz) and summarise them",
        description="Read capture files offline, run the full pipeline, and print a summary.",
        epilog=_EPILOG_REPLAY,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("files", nargs="+", metavar="FILE",
                   help="capture file(s); '-' reads standard input")
    r.add_argument("-c", "--count", type=int, default=0, metavar="N",
                   help="stop after N packets (like tcpdump -c)")
    r.add_argument("--json", action="store_true",
                   help="print the summary as one JSON object instead of a table")
    r.add_argument("-j", "--jobs", default="auto", metavar="N",
                   help="processes: 1 does everything in this one; 2 parses in a second "
                        "process while this one correlates and writes spans (about twice "
                        "as fast on two CPUs). Default auto: 2 on a machine with several "
                        "CPUs for files of 32 MiB or more, else 1")
    _add_output_options(r)
    g = r.add_mutually_exclusive_group()
    g.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="always show a progress bar on stderr")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="never show a progress bar (default: shown on a terminal for inputs "
                        f"over {PROGRESS_MIN_BYTES >> 20} MiB)")
    c = sub.add_parser(
        "capture",
        help="capture live from network interfaces (AF_PACKET) and summarise",
        description="Capture live from AF_PACKET sockets (TPACKET_V3 ring, classic BPF "
                    "filter in the kernel), run the full pipeline, and print a summary at "
                    "the end (Ctrl-C, SIGTERM, --count or --duration).",
        epilog=_EPILOG_CAPTURE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("-i", "--interface", action="append", required=True, metavar="IFACE",
                   help="interface to capture on (repeatable)")
    c.add_argument("--netns", action="append", metavar="NAME",
                   help="open the interfaces inside the network namespace NAME "
                        "(/var/run/netns/NAME); repeatable: each -i in each namespace")
    c.add_argument("--netns-path", action="append", metavar="PATH",
                   help="the same for a namespace file, e.g. /proc/PID/ns/net (repeatable)")
    c.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes sharing the packets through PACKET_FANOUT (hash "
                        "mode: both directions of a flow go to one worker); one process "
                        "correlates them all (default: the number of CPUs, 1 with --count)")
    c.add_argument("-f", "--filter", default="tcp", metavar="BPF",
                   help="tcpdump-style filter, compiled to classic BPF and run in the kernel "
                        "(default: tcp)")
    c.add_argument("-c", "--count", type=int, default=0, metavar="N",
                   help="stop after N packets (like tcpdump -c)")
    c.add_argument("--duration", type=float, default=0.0, metavar="SECONDS",
                   help="stop after this many seconds")
    c.add_argument("-w", "--write", metavar="FILE",
                   help="also save the captured packets to FILE (pcapng, with interface "
                        "names and nanosecond timestamps)")
    c.add_argument("-s", "--snaplen", type=int, default=262144, metavar="BYTES",
                   help="bytes kept of each packet (default: 262144)")
    c.add_argument("-p", "--promisc", action="store_true",
                   help="put the interfaces in promiscuous mode (default: off)")
    c.add_argument("--ring-block-kib", type=int, default=1024, metavar="KIB",
                   help="size of one ring block (default: 1024 KiB)")
    c.add_argument("--ring-blocks", type=int, default=32, metavar="N",
                   help="blocks in each interface's ring (default: 32)")
    c.add_argument("--ring-timeout-ms", type=int, default=10, metavar="MS",
                   help="a partly filled block is handed over after this long (default: 10)")
    c.add_argument("--metrics-port", type=int, default=0, metavar="PORT",
                   help="serve Prometheus /metrics (and /healthz, /readyz) on 0.0.0.0:PORT "
                        "while capturing")
    c.add_argument("--json", action="store_true",
                   help="print the summary as one JSON object instead of a table")
    g = c.add_mutually_exclusive_group()
    g.add_argument("--status", dest="status", action="store_true", default=None,
                   help="always show a status line on stderr (packets/s, drops, flows, "
                        "exchanges, spans)")
    g.add_argument("--no-status", dest="status", action="store_false",
                   help="never show it (default: shown when stderr is a terminal)")
    _add_output_options(c)
    a = sub.add_parser(
        "agent",
        help="the node agent: capture every pod network namespace, export spans over OTLP",
        description="Run as the node agent (a privileged DaemonSet): find every pod network "
                    "namespace on the node, capture each pod's interfaces (eth0 and lo by "
                    "default), correlate proxy hops across all pods, export spans with "
                    "Kubernetes metadata over OTLP, and serve /metrics, /healthz, /readyz. "
                    "Configuration: a YAML file (see deploy/configmap.yaml and "
                    "docs/operations.md) with WIRESPAN_<SECTION>_<KEY> environment overrides.",
        epilog="examples:\n  wirespan agent --config /etc/wirespan/agent.yaml\n"
               "  WIRESPAN_EXPORT_OTLP_ENDPOINT=http://127.0.0.1:4317 wirespan agent -o -\n\n"
               "Needs root (CAP_NET_RAW, CAP_SYS_ADMIN for setns, CAP_SYS_PTRACE for "
               "/proc/PID/ns/net). SIGTERM flushes and exits within shutdown_grace_s.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a.add_argument("--config", metavar="FILE",
                   help="the agent's YAML configuration (default: built-in defaults + env)")
    a.add_argument("--listen", metavar="HOST:PORT",
                   help="serve /metrics, /healthz, /readyz here (overrides listen:; "
                        "default 0.0.0.0:9102)")
    a.add_argument("-o", "--output", metavar="PATH",
                   help="also write spans as OTLP/JSON lines to PATH ('-' for stdout)")
    a.add_argument("--check-config", action="store_true",
                   help="validate the configuration, print the effective one, and exit")
    return p


def _fmt_ts(ns: int | None) -> str:
    if ns is None:
        return "-"
    dt = datetime.fromtimestamp(ns // 1_000_000_000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%d %H:%M:%S") + f".{ns % 1_000_000_000:09d} UTC"


def _print_table(s: Summary, title: str = "wirespan replay") -> None:
    from rich.console import Console
    from rich.table import Table

    d = s.to_dict()
    console = Console(highlight=False)
    t = Table(title=title, show_header=False, title_justify="left", box=None,
              pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("interfaces" if "kernel" in d else "files", ", ".join(s.files))
    t.add_row("packets", f"{s.packets:,} ({s.tcp_packets:,} TCP)")
    t.add_row("bytes", f"{s.bytes:,}")
    t.add_row("link types", ", ".join(f"{k} {v:,}" for k, v in d["link_types"].items()) or "-")
    if len(d["interfaces"]) > 1:
        t.add_row("capture points", ", ".join(f"{k} {v:,}" for k, v in d["interfaces"].items()))
    t.add_row("capture span", f"{s.duration_s:.3f} s from {_fmt_ts(s.first_ts)}")
    tcp = d["tcp"]
    t.add_row("TCP flows", f"{d['flows']:,}")
    t.add_row("gaps", f"{d['gaps']:,} ({d['gap_bytes']:,} bytes lost)")
    extra = {k: v for k, v in tcp.items() if k not in ("connections", "gaps", "gap_bytes")}
    if extra:
        t.add_row("TCP notes", ", ".join(f"{k} {v:,}" for k, v in extra.items()))
    errs = {**d["capture_errors"], **d["decode_errors"]}
    t.add_row("decode errors", ", ".join(f"{k} {v:,}" for k, v in errs.items()) or "none")
    if d["skipped"]:
        t.add_row("not TCP (skipped)", ", ".join(f"{k} {v:,}" for k, v in d["skipped"].items()))
    ex = d.get("exchanges") or {}
    t.add_row("exchanges", ", ".join(f"{k} {v:,}" for k, v in ex.items()) or "none")
    if d.get("protocols"):
        t.add_row("connections by protocol", ", ".join(f"{k} {v:,}"
                                                       for k, v in d["protocols"].items()))
    if d.get("parse_errors"):
        t.add_row("parse errors", ", ".join(f"{k} {v:,}" for k, v in d["parse_errors"].items()))
    if d.get("grpc_calls"):
        t.add_row("gRPC calls", f"{d['grpc_calls']:,}")
    if d.get("tls_connections"):
        tls = d.get("tls") or {}
        t.add_row("TLS connections", f"{d['tls_connections']:,} ({tls.get('sni', 0):,} with SNI; "
                  + ", ".join(f"{k} {v:,}" for k, v in (tls.get("versions") or {}).items())
                  + ")")
    if "spans_written" in d:
        t.add_row("spans written", f"{d['spans_written']:,}")
    if "spans_exported" in d:
        dropped = sum((d.get("spans_dropped") or {}).values())
        t.add_row("spans exported", f"{d['spans_exported']:,} ({dropped:,} dropped)")
    if "kernel" in d:
        t.add_row("kernel", ", ".join(f"{k}: {v['packets']:,} packets, {v['drops']:,} dropped"
                                      for k, v in d["kernel"].items()))
    t.add_row("speed", f"{s.packets_per_s:,.0f} packets/s ({s.elapsed_s:.2f} s)")
    console.print(t)
    proxies = d.get("proxies") or []
    if proxies:
        pt = Table(title="proxies", title_justify="left", box=None, pad_edge=False)
        for col in ("address", "requests", "matched by", "request dwell p50/p90/p99/max",
                    "response dwell p50/p90/p99/max"):
            pt.add_column(col, justify="right" if col == "requests" else "left")
        for p in proxies:
            pt.add_row(p["address"], f"{p['requests']:,}",
                       ", ".join(f"{k} {v:,}" for k, v in p["match_kinds"].items()),
                       _dwell(p["request_dwell_ns"]), _dwell(p["response_dwell_ns"]))
        console.print(pt)


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.2f}"


def _dwell(pct: dict) -> str:
    if not pct:
        return "-"
    return " / ".join(_ms(pct[k]) for k in ("p50", "p90", "p99", "max")) + " ms"


def _warn_capture_problems(s: Summary) -> None:
    for (stage, reason), n in sorted(s.stats.counts.items()):
        msg = _MESSAGES.get((stage, reason))
        if msg and n:
            print(f"{PROG}: warning: {msg} ({n}x)", file=sys.stderr)


def _replay(args: argparse.Namespace) -> int:
    if args.count < 0:
        raise UsageError("--count must be 0 (no limit) or more")
    show = args.progress
    if show is None:
        total = sum(os.path.getsize(f) for f in args.files if f != "-" and os.path.isfile(f))
        show = sys.stderr.isatty() and total >= PROGRESS_MIN_BYTES
    if args.jobs == "auto":
        from .replay_jobs import auto_jobs

        jobs = auto_jobs(args.files)
    else:
        try:
            jobs = int(args.jobs)
        except ValueError:
            raise UsageError(f"--jobs must be a number or auto, not {args.jobs!r}") from None
        if jobs not in (1, 2):
            raise UsageError("--jobs must be 1 or 2 (beyond one parsing process the "
                             "correlating one is the bottleneck)", "use --jobs 2, or auto")
        if jobs == 2 and "-" in args.files:
            raise UsageError("--jobs 2 cannot read standard input", "use --jobs 1")
    writer, kw = _open_outputs(args)
    kw["count"] = args.count
    kw["jobs"] = jobs
    if show:
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                   TimeRemainingColumn)

        with Progress(TextColumn("replay"), BarColumn(), DownloadColumn(),
                      TextColumn("{task.fields[pk]} packets"), TimeRemainingColumn(),
                      transient=True, console=None) as bar:
            task = bar.add_task("replay", total=None, pk="0")

            def progress(packets: int, done: int, total: int) -> None:
                bar.update(task, completed=done, total=total or None, pk=f"{packets:,}")

            summary = run_replay(args.files, progress=progress, **kw)
    else:
        summary = run_replay(args.files, **kw)
    return _finish(args, summary, writer)


def _capture(args: argparse.Namespace) -> int:
    import signal
    import time

    from .capture.live import LiveCapture, RingConfig, ns_label
    from .pipeline import run_records
    from .stats import Stats

    if args.count < 0:
        raise UsageError("--count must be 0 (no limit) or more")
    if args.duration < 0:
        raise UsageError("--duration must be 0 (no limit) or more")
    if not 0 < args.snaplen <= 262144:
        raise UsageError("--snaplen must be between 1 and 262144")
    workers = args.workers
    if workers is None:
        workers = 1 if args.count else (os.cpu_count() or 1)
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.count and workers > 1:
        raise UsageError("--count needs --workers 1: with several workers the packets have "
                         "no single order to count in", "drop --workers, or use --duration")
    ring = RingConfig(block_size=args.ring_block_kib * 1024, block_count=args.ring_blocks,
                      timeout_ms=args.ring_timeout_ms)
    namespaces = [*(args.netns or []), *(args.netns_path or [])] or [""]
    interfaces = [(ns, i) for ns in namespaces for i in args.interface]
    stats = Stats()
    show = args.status if args.status is not None else sys.stderr.isatty()
    writer: Any = None
    exchanges = [0]
    last = [time.monotonic(), 0]

    def status_line(packets: int, drops: int, flows: int) -> None:
        now = time.monotonic()
        rate = (packets - last[1]) / max(now - last[0], 1e-3)
        last[:] = [now, packets]
        spans = f", {writer.written:,} spans" if writer is not None else ""
        sys.stderr.write(f"\r{packets:,} packets ({rate:,.0f}/s), {drops:,} dropped, "
                         f"{flows:,} flows, {exchanges[0]:,} exchanges{spans}\x1b[K")
        sys.stderr.flush()

    engines: list[Any] = []

    by_proto: dict[str, int] = {}
    metrics = health = None
    if args.metrics_port:
        if not 0 < args.metrics_port < 65536:
            raise UsageError("--metrics-port must be between 1 and 65535")
        from exporter.metrics import Metrics

        from .pipeline import HTTP2_NOT_ERRORS

        metrics = Metrics()

    def update_metrics(packets: dict[str, int], drops: dict[str, int], active: int) -> None:
        if metrics is None:
            return
        for name, n in packets.items():
            metrics.set_total("wirespan_packets_total", {"interface": name}, n)
        for name, n in drops.items():
            metrics.set_total("wirespan_kernel_drops_total", {"interface": name}, n)
        metrics.set_gauge("wirespan_flows_active", None, active)
        for proto, n in by_proto.items():
            metrics.set_total("wirespan_exchanges_total", {"protocol": proto}, n)
        for stage in ("http1", "http2", "tls"):
            for reason, n in stats.by_stage(stage).items():
                if not reason.startswith("opaque_") and (stage != "http2" or
                                                         reason not in HTTP2_NOT_ERRORS):
                    metrics.set_total("wirespan_parse_errors_total",
                                      {"protocol": stage, "reason": reason}, n)
        gaps = stats.get("tcp", "gaps") + sum(e.flows.gaps for e in engines)
        metrics.set_total("wirespan_reassembly_gaps_total", None, gaps)
        if writer is not None:
            summ = writer.summary()
            metrics.set_total("wirespan_spans_exported_total", None,
                              summ.get("spans_exported", summ.get("spans_written", 0)))
            for reason, n in summ.get("spans_dropped", {}).items():
                metrics.set_total("wirespan_spans_dropped_total", {"reason": reason}, n)

    def status(lc: LiveCapture) -> None:
        flows = stats.get("tcp", "connections") + sum(e.flows.connections for e in engines)
        if show:
            status_line(sum(p.packets for p in lc.points), lc.drops, flows)
        update_metrics({p.name: p.packets for p in lc.points},
                       {s.point.name: s.kernel_drops for s in lc.sockets},
                       sum(e.flows.active for e in engines))

    def fan_status(f: Any) -> None:
        if show:
            status_line(f.packets, f.drops, f.flows)
        packets: dict[str, int] = {}
        drops: dict[str, int] = {}
        for st in f.status:
            for k, v in st.get("points", {}).items():
                packets[k] = packets.get(k, 0) + v
            for k, v in st.get("kernel_drops", {}).items():
                drops[k] = drops.get(k, 0) + v
        update_metrics(packets, drops, sum(st.get("active", 0) for st in f.status))

    def count_exchange(ex: Any) -> None:
        exchanges[0] += 1
        by_proto[ex.protocol] = by_proto.get(ex.protocol, 0) + 1

    fan = live = None
    if workers > 1:
        from .capture.fanout import FanoutCapture

        fan = FanoutCapture(interfaces, args.filter, workers=workers, snaplen=args.snaplen,
                            promisc=args.promisc, ring=ring, duration=args.duration)
        stopper: Any = fan
    else:
        live = LiveCapture(interfaces, args.filter, snaplen=args.snaplen, promisc=args.promisc,
                           ring=ring, duration=args.duration,
                           on_tick=status if show or metrics is not None else None)
        stopper = live
    saved = tee = None
    old: dict[int, Any] = {}
    try:
        if fan is not None:
            fan.start()  # fork before any exporter thread exists (or the metrics server's)
        if metrics is not None:
            from exporter.metrics import HealthServer

            health = HealthServer(f"0.0.0.0:{args.metrics_port}", metrics).start()
        if args.write:
            from .capture.writer import PcapngWriter

            saved = PcapngWriter(args.write)
            if fan is not None:  # the workers split the packets: the file gets its own sockets
                tee = LiveCapture(interfaces, args.filter, snaplen=args.snaplen,
                                  promisc=args.promisc, ring=ring)
        writer, kw = _open_outputs(args)
        kw["on_exchange"] = count_exchange

        def stop(_sig: int, _frame: Any) -> None:
            stopper.stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, stop)
        where = (f" in network namespace{'s' if len(namespaces) > 1 else ''} "
                 f"{', '.join(ns_label(n) for n in namespaces)}" if namespaces != [""] else "")
        if fan is not None:
            workers = fan.workers  # (fewer when some would have nothing to capture)
        per = (f", {workers} worker{'s' if workers > 1 else ''}" if fan is not None else "")
        print(f"{PROG}: listening on {', '.join(args.interface)}{where}, filter "
              f"{args.filter!r}{per}", file=sys.stderr, flush=True)
        try:
            if live is not None:
                records = saved.tee(live) if saved is not None else live
                summary = run_records(records, lambda: live.points,
                                      files=[p.name for p in live.points], stats=stats,
                                      count=args.count, on_engine=engines.append, **kw)
                kernel = live.kernel_stats()
            else:
                assert fan is not None
                summary = _run_fanout(fan, tee, saved, stats, kw,
                                      fan_status if show or metrics is not None else None)
                kernel = summary.extra.pop("kernel_workers")
                if fan.failed:
                    raise WirespanError(f"capture failed: {'; '.join(fan.failed)}",
                                        "see the messages above")
        finally:
            if show:
                sys.stderr.write("\r\x1b[K")
            for sig, h in old.items():
                signal.signal(sig, h)
    finally:
        if health is not None:
            health.close()
        if live is not None:
            live.close()
        if fan is not None:
            fan.close()
        if tee is not None:
            tee.close()
        if saved is not None:
            saved.close()
    if saved is not None:
        summary.extra["saved"] = {"path": saved.path, "packets": saved.packets}
    summary.extra["kernel"] = kernel
    summary.extra["kernel_drops"] = sum(v["drops"] for v in kernel.values())
    if fan is not None:
        summary.extra["workers"] = fan.workers
    return _finish(args, summary, writer, "wirespan capture")


def _run_fanout(fan: Any, tee: Any, saved: Any, stats: Any, kw: dict[str, Any],
                on_tick: Any) -> Summary:
    """``capture --workers N``: the workers parse, this process correlates (and writes -w)."""
    import gc
    import time

    from .pipeline import Backend, interface_counts, low_gc

    back = Backend(stats, **kw)
    extra: dict[int, Any] = {}
    if tee is not None:
        for s in tee.sockets:
            def drain(s: Any = s) -> None:
                batch: list[Any] = []
                s.drain(batch)
                for r in batch:
                    saved.write(*r)
            extra[s.fileno()] = drain
    t0 = time.perf_counter()
    old = low_gc()
    try:
        fan.run(back.exchange, back.tls, on_tick=on_tick, extra_fds=extra)
        back.finish()
    finally:
        gc.set_threshold(*old)
    if tee is not None:
        time.sleep(2 * max(s.ring.timeout_ms for s in tee.sockets) / 1000)
        for fn in extra.values():
            fn()
    elapsed = time.perf_counter() - t0
    m = fan.merged(stats)
    points = list(fan.points.values())
    link_types, interfaces = interface_counts(points)
    extra_summary = back.extra()
    extra_summary["kernel_workers"] = m["kernel"]
    extra_summary["worker_packets"] = m["per_worker"]
    return Summary(files=[p.name for p in points], packets=m["packets"], bytes=m["bytes"],
                   tcp_packets=m["tcp_packets"], first_ts=m["first_ts"], last_ts=m["last_ts"],
                   elapsed_s=elapsed, link_types=link_types, interfaces=interfaces,
                   stats=stats, extra=extra_summary)


def _agent(args: argparse.Namespace) -> int:
    from .agent.config import load_config

    env = dict(os.environ)
    if args.listen:
        env["WIRESPAN_LISTEN"] = args.listen
    cfg = load_config(args.config, env)
    if args.check_config:
        json.dump(cfg.to_dict(), sys.stdout, indent=1)
        sys.stdout.write("\n")
        for w in cfg.warnings:
            print(f"{PROG}: warning: {w}", file=sys.stderr)
        return 0
    from .agent.run import main as agent_main

    return agent_main(cfg, output=args.output)


def _open_outputs(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The span outputs of -o / --otlp-endpoint / --zipkin-endpoint, and the pipeline
    callbacks that feed them (shared by replay and capture)."""
    kw: dict[str, Any] = {}
    if not (args.output or args.otlp_endpoint or args.zipkin_endpoint):
        return None, kw
    from exporter.outputs import SpanOutputs
    from exporter.spans import SpanBuilder

    writer = SpanOutputs.open(  # the -o file and/or the endpoints' exporters
        output=args.output, fmt=args.format, otlp_endpoint=args.otlp_endpoint,
        otlp_protocol=args.otlp_protocol, zipkin_endpoint=args.zipkin_endpoint,
        service_name=args.service_name, version=__version__, max_queue=args.export_queue)
    build = SpanBuilder(args.spans, args.keep_query)

    def on_hop(hop: Any) -> None:
        writer.add(build.hop(hop))

    def on_unmatched(ex: Any, ctx: Any) -> None:
        span = build.exchange(ex, ctx)
        if span is not None:
            writer.add(span)

    def on_mesh(mh: Any) -> None:
        for span in build.mesh(mh):
            writer.add(span)

    kw.update(on_hop=on_hop, on_unmatched=on_unmatched, on_mesh=on_mesh)
    return writer, kw


def _finish(args: argparse.Namespace, summary: Summary, writer: Any,
            title: str = "wirespan replay") -> int:
    """Flush the span outputs, then print the summary (JSON or table)."""
    if writer is not None:
        writer.close(args.export_timeout)
        summary.extra.update(writer.summary())
        for msg in writer.warnings():
            print(f"{PROG}: warning: {msg}", file=sys.stderr)
    _warn_capture_problems(summary)
    if args.output == "-":  # stdout carries the spans: the summary goes to stderr
        if args.json:
            json.dump(summary.to_dict(), sys.stderr)
            sys.stderr.write("\n")
        return 0
    if args.json:
        json.dump(summary.to_dict(), sys.stdout, indent=None, sort_keys=False)
        sys.stdout.write("\n")
    else:
        _print_table(summary, title)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        handlers: dict[str, Any] = {"replay": _replay, "capture": _capture, "agent": _agent}
        return int(handlers[args.command](args))
    except WirespanError as e:
        print(f"{PROG}: error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"{PROG}: hint: {e.hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `wirespan replay --json ... | head`: the reader went away; not our failure.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        except OSError:
            pass
        return 0


if __name__ == "__main__":
    sys.exit(main())
