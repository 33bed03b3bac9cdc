#!/usr/bin/env python3
"""Span building and OTLP/JSON encoding alone, per span, on the hops and exchanges of a capture.

Usage: python scripts/bench_spans.py [CAPTURE] [--rounds N] [--spans MODE] [--baseline REV]
                                     [--limit N] [--profile]

One untimed replay of CAPTURE (default ../shared/bench/bench.pcap) collects what the
correlator hands to the span outputs (proxy hops, unmatched exchanges with their trace
context, mesh hops), as ``wirespan replay --spans MODE -o FILE`` would (MODE: all by
default). Then, N rounds (default 5), median reported in µs per span:
  build    SpanBuilder.hop / .exchange / .mesh over everything collected
  encode   OtlpJsonWriter (256 spans a line) into an io.StringIO, over the built spans
--baseline REV also loads exporter/spans.py and exporter/otlp_json.py as they are at git
revision REV (``git show``, read-only) and times them in the same rounds, interleaved with
the tree's own, after checking that both give the same text; --profile prints the top
functions of one build+encode pass of the tree's code (cProfile).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import importlib
import io
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT = os.path.join(ROOT, "..", "shared", "bench", "bench.pcap")
sys.path.insert(0, ROOT)


def collect(path: str, mode: str, limit: int) -> list[tuple[str, Any, Any]]:
    """(kind, object, ctx) in the order the pipeline hands them out."""
    from exporter.spans import SpanBuilder
    from sniffer.pipeline import run_replay

    items: list[tuple[str, Any, Any]] = []
    keep = SpanBuilder(mode)  # only to know which exchanges would become spans

    def on_hop(hop: Any) -> None:
        items.append(("hop", hop, None))

    def on_unmatched(ex: Any, ctx: Any) -> None:
        if keep.exchange(ex, ctx) is not None:
            items.append(("exchange", ex, ctx))

    def on_mesh(mh: Any) -> None:
        items.append(("mesh", mh, None))

    run_replay([path], on_hop=on_hop, on_unmatched=on_unmatched, on_mesh=on_mesh)
    return items[:limit] if limit else items


def build_all(mod: Any, items: list[tuple[str, Any, Any]], mode: str) -> list[Any]:
    b = mod.SpanBuilder(mode)
    hop, exchange, mesh = b.hop, b.exchange, b.mesh
    out: list[Any] = []
    add = out.append
    for kind, obj, ctx in items:
        if kind == "hop":
            add(hop(obj))
        elif kind == "exchange":
            add(exchange(obj, ctx))
        else:
            out.extend(mesh(obj))
    return out


def encode_all(mod: Any, spans: list[Any]) -> io.StringIO:
    """The spans through an OtlpJsonWriter, as the -o file gets them (the StringIO's
    ``getvalue()``, which copies everything at once, is left out of the timing)."""
    buf = io.StringIO()
    w = mod.OtlpJsonWriter(buf, {"service.name": "wirespan", "host.name": "bench"},
                           version="0.1.0")
    for s in spans:
        w.add(s)
    w.flush()
    return buf


def load_baseline(rev: str) -> tuple[Any, Any]:
    """exporter/spans.py and exporter/otlp_json.py at ``rev``, as package ``_baseline``."""
    d = tempfile.mkdtemp(prefix="wirespan-bench-spans-")
    pkg = os.path.join(d, "_baseline")
    os.mkdir(pkg)
    open(os.path.join(pkg, "__init__.py"), "w").close()
    for name in ("spans", "otlp_json"):
        src = subprocess.run(["git", "-C", ROOT, "show", f"{rev}:exporter/{name}.py"],
                             check=True, capture_output=True, text=True).stdout
        with open(os.path.join(pkg, name + ".py"), "w") as f:
            f.write(src)
    sys.path.insert(0, d)
    return importlib.import_module("_baseline.spans"), importlib.import_module("_baseline.otlp_json")


def timed(fn: Any, *args: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    r = fn(*args)
    return time.perf_counter() - t0, r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("capture", nargs="?", default=DEFAULT)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--spans", default="all", choices=("traced", "all", "proxy"))
    ap.add_argument("--baseline", metavar="REV", help="also time this git revision's code")
    ap.add_argument("--limit", type=int, default=0, help="only the first N items")
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()

    import exporter.otlp_json as new_json
    import exporter.spans as new_spans

    t0 = time.perf_counter()
    items = collect(os.path.abspath(a.capture), a.spans, a.limit)
    print(f"collected {len(items):,} items in {time.perf_counter() - t0:.1f} s "
          f"({sum(k == 'hop' for k, _, _ in items):,} hops)", file=sys.stderr)
    impls = {"new": (new_spans, new_json)}
    if a.baseline:
        impls = {"old": load_baseline(a.baseline), **impls}
        texts = {k: encode_all(j, build_all(s, items, a.spans)).getvalue()
                 for k, (s, j) in impls.items()}
        if texts["old"] != texts["new"]:
            print("output differs from the baseline's", file=sys.stderr)
            return 1
        print("output identical to the baseline's", file=sys.stderr)
    if a.profile:
        prof = cProfile.Profile()
        prof.enable()
        encode_all(new_json, build_all(new_spans, items, a.spans))
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)

    times: dict[str, dict[str, list[float]]] = {k: {"build": [], "encode": []} for k in impls}
    n = 0
    old_gc = gc.get_threshold()
    gc.set_threshold(100_000, 50, 100)  # as the replay runs (sniffer.pipeline.low_gc)
    try:
        for r in range(a.rounds):
            # alternate which goes first: the second of a pair tends to run a little faster
            for k, (s, j) in (list(impls.items()) if r % 2 == 0 else list(impls.items())[::-1]):
                gc.collect()
                tb, spans = timed(build_all, s, items, a.spans)
                te, buf = timed(encode_all, j, spans)
                times[k]["build"].append(tb)
                times[k]["encode"].append(te)
                n = len(spans)
                del spans, buf
    finally:
        gc.set_threshold(*old_gc)
    print(f"{n:,} spans, median of {a.rounds} rounds, µs per span:")
    print(f"{'':8}{'build':>10}{'encode':>10}{'total':>10}")
    med = {k: {p: statistics.median(v) * 1e6 / n for p, v in d.items()} for k, d in times.items()}
    for k, m in med.items():
        print(f"{k:8}{m['build']:10.2f}{m['encode']:10.2f}{m['build'] + m['encode']:10.2f}")
    if "old" in med:
        o, w = med["old"], med["new"]
        print(f"{'speedup':8}{o['build'] / w['build']:9.2f}x{o['encode'] / w['encode']:9.2f}x"
              f"{(o['build'] + o['encode']) / (w['build'] + w['encode']):9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
