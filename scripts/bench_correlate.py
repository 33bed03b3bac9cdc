#!/usr/bin/env python3
"""Everything after the parsers (Backend + Correlator + trace-context extract) on the
exchanges of one capture: µs per exchange.

Usage: python scripts/bench_correlate.py [CAPTURE] [--rounds N] [--baseline REV]
                                         [--cache FILE] [--profile]

One untimed replay of CAPTURE (default: ../shared/bench/bench.pcap) records the exchanges in
the order the correlator receives them (``run_replay(on_exchange=...)``); each round then
feeds that list to a fresh ``sniffer.pipeline.Backend`` (exchange counter, correlator,
mesh matcher, callbacks) and calls ``finish()``; the median of --rounds rounds is reported,
and the fastest round. Rounds are timed in CPU time of this process (``process_time``), which
other work on a shared host disturbs less than wall time.
The recorded exchanges are frozen out of the cyclic GC (``gc.freeze``) and the run uses
the replay's GC thresholds (``low_gc``), so a round costs what the correlator costs in a
replay, not a rescan of the recording.

  --baseline REV  also time Backend, Correlator and tracecontext as of git revision REV
                  (e.g. HEAD: ``git show`` into a temporary directory, loaded under other
                  module names), old and new rounds interleaved, and check that both give
                  the same hops, unmatched exchanges (in order) and counters.
  --cache FILE    pickle the recorded exchanges to FILE, or load them from it if it exists
                  (saves the replay when iterating; delete it when the parsers change).
  --profile       one extra cProfile'd round of the working tree's code, top 25 by tottime.

Run from the repository root (cwd first on sys.path, so the tree's code is what runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from types import ModuleType

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT = os.path.join(ROOT, "..", "shared", "bench", "bench.pcap")
sys.path.insert(0, ROOT)

from sniffer import pipeline  # noqa: E402
from sniffer.stats import Stats  # noqa: E402


def record(capture: str, cache: str | None) -> list:
    """The exchanges of ``capture``, in the order the correlator receives them."""
    if cache and os.path.exists(cache):
        with open(cache, "rb") as f:
            return pickle.load(f)
    exchanges: list = []
    pipeline.run_replay([capture], on_exchange=exchanges.append)
    if cache:
        with open(cache, "wb") as f:
            pickle.dump(exchanges, f, protocol=pickle.HIGHEST_PROTOCOL)
    return exchanges


def load_baseline(rev: str) -> ModuleType:
    """``sniffer/pipeline.py`` as of ``rev``, with the correlator and tracecontext of ``rev``
    (loaded as ``sniffer._base_*``; every other module is the working tree's)."""
    tmp = tempfile.mkdtemp(prefix="wirespan-bench-correlate-")
    renames = {"from .tracecontext import": "from ._base_tracecontext import",
               "from .correlate import": "from ._base_correlate import"}
    mod = None
    for name in ("tracecontext", "correlate", "pipeline"):
        src = subprocess.run(["git", "-C", ROOT, "show", f"{rev}:sniffer/{name}.py"],
                             check=True, capture_output=True, text=True).stdout
        for old, new in renames.items():
            src = src.replace(old, new)
        path = os.path.join(tmp, f"{name}.py")
        with open(path, "w") as f:
            f.write(src)
        full = f"sniffer._base_{name}"
        spec = importlib.util.spec_from_file_location(full, path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[full] = mod
        spec.loader.exec_module(mod)
    assert mod is not None
    return mod


def _ctx(ctx: object) -> tuple | None:
    if ctx is None:
        return None
    return tuple(getattr(ctx, f.name) for f in dataclasses.fields(ctx))  # type: ignore[arg-type]


def one_round(mod: ModuleType, exchanges: list, check: bool) -> tuple[float, tuple | None]:
    """(CPU seconds for one fresh Backend to consume ``exchanges``, what it produced or None)."""
    hops: list = []
    unmatched: list = []
    stats = Stats()
    back = mod.Backend(stats, on_hop=hops.append,
                       on_unmatched=lambda ex, ctx: unmatched.append((ex, ctx)))
    feed = back.exchange
    old = pipeline.low_gc()
    try:
        t0 = time.process_time()
        for ex in exchanges:
            feed(ex)
        back.finish()
        elapsed = time.process_time() - t0
    finally:
        gc.set_threshold(*old)
    out = None
    if check:
        out = (
            [(id(h.down.ex), id(h.up.ex), len(h.down.obs), len(h.up.obs), h.match,
              h.ambiguous, h.request_dwell_ns, h.response_dwell_ns, h.upstream_duration_ns,
              h.upstream_connect_ns, h.start_ns, h.end_ns, h.proxy_address,
              h.upstream_address, h.direction, h.span_id_rewritten, h.retries,
              sorted(h.extra.items()), _ctx(h.down.ctx), _ctx(h.up.ctx)) for h in hops],
            [(id(ex), _ctx(ctx)) for ex, ctx in unmatched],
            sorted(stats.counts.items()),
            back.extra()["proxies"],
        )
    del hops, unmatched, back
    gc.collect()
    return elapsed, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("capture", nargs="?", default=DEFAULT)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--baseline", metavar="REV")
    ap.add_argument("--cache", metavar="FILE")
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    t0 = time.perf_counter()
    exchanges = record(os.path.abspath(a.capture), a.cache)
    n = len(exchanges)
    print(f"{n} exchanges recorded in {time.perf_counter() - t0:.1f} s", file=sys.stderr,
          flush=True)
    gc.collect()
    gc.freeze()  # the recording is not what is measured
    modes: dict[str, ModuleType] = {}
    if a.baseline:
        modes[f"baseline {a.baseline}"] = load_baseline(a.baseline)
    modes["working tree"] = pipeline
    times: dict[str, list[float]] = {m: [] for m in modes}
    outputs: dict[str, tuple | None] = {}
    for r in range(a.rounds):
        for mode, mod in modes.items():
            check = r == 0 and len(modes) > 1
            elapsed, out = one_round(mod, exchanges, check)
            times[mode].append(elapsed)
            if check:
                outputs[mode] = out
    if a.rounds and len(modes) > 1:
        base, new = outputs.values()
        same = base == new
        print("outputs identical" if same else "OUTPUTS DIFFER", file=sys.stderr, flush=True)
        if not same:
            for what, x, y in zip(("hops", "unmatched", "counters", "proxies"), base, new):
                if x != y:
                    print(f"  {what}: {len(x)} vs {len(y)}", file=sys.stderr)
    med = {m: statistics.median(ts) for m, ts in times.items() if ts}
    for mode, t in med.items():
        print(f"{mode:24} {t * 1e6 / n:7.2f} µs/exchange, fastest {min(times[mode]) * 1e6 / n:.2f}"
              f"  (median of {a.rounds}: {' '.join(f'{x:.2f}' for x in times[mode])} s)")
    if len(med) > 1:
        b, w = med.values()
        print(f"speedup {b / w:.2f}x (median), "
              f"{min(list(times.values())[0]) / min(list(times.values())[1]):.2f}x (fastest)")
    if a.profile:
        import cProfile
        import pstats
        prof = cProfile.Profile()
        prof.enable()
        one_round(pipeline, exchanges, False)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
