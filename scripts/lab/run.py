"""wirespan proxy lab CLI.

    python -m scripts.lab [SCENARIO ...] [-o OUT] [-n N] [--seed S]   # from the repo root, as root
    python -m scripts.lab --bundle        # the small capture set in pcaps/<scenario>/
    python -m scripts.lab --list

Each scenario builds a node of network namespaces (pods on a bridge, 10.88.0.0/24 inside
them only), runs real clients through real proxies, writes one pcap per pod and interface
(``<pod>-<iface>.pcap``) and ``truth.json`` into ``OUT/<scenario>/``, and tears everything
down (namespaces, processes, iptables rules, temp files) on exit, error, Ctrl-C or SIGTERM.
Exit codes: 0 ok, 1 a scenario failed, 2 usage (or not root / tools missing).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .scenarios import SCENARIOS, missing

BUNDLE_N = {"sidecar": 8, "ingress": 8, "ingress-nokeepalive": 8, "chain": 8, "h2": 8,
            "grpc": 8, "mesh": 8, "mtls": 45, "mtls-h2": 60, "mtls-grpc": 45, "mtls-tls12": 30,
            "mtls-concurrent": 39}
REPO = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scripts.lab", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="scenarios:\n" + "\n".join(
                                     f"  {k:20} {(v.__doc__ or '').strip().splitlines()[0]}"
                                     for k, v in SCENARIOS.items()))
    ap.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                    help="scenarios to run (default: all)")
    ap.add_argument("-o", "--out", type=Path, default=Path("lab-out"),
                    help="output folder; one sub-folder per scenario (default: lab-out)")
    ap.add_argument("-n", "--requests", type=int, help="requests per scenario")
    ap.add_argument("--seed", type=int, help="random seed (default: fixed per scenario)")
    ap.add_argument("--bundle", action="store_true",
                    help="write the small bundled capture set into pcaps/<scenario>/")
    ap.add_argument("--list", action="store_true", help="list scenarios and exit")
    a = ap.parse_args(argv)
    if a.list:
        for k, v in SCENARIOS.items():
            print(f"{k:20} {(v.__doc__ or '').strip().splitlines()[0]}")
        return 0
    names = a.scenarios or list(SCENARIOS)
    bad = [n for n in names if n not in SCENARIOS]
    if bad:
        ap.error(f"unknown scenario(s): {', '.join(bad)} (see --list)")
    why = missing(*names)
    if why:
        print("lab: cannot run here, needs: " + "; ".join(why), file=sys.stderr)
        return 2
    out = REPO / "pcaps" if a.bundle else a.out
    rc = 0
    for name in names:
        kw = {}
        n = a.requests or (BUNDLE_N.get(name) if a.bundle else None)
        if n:
            kw["n"] = n
        if a.seed is not None:
            kw["seed"] = a.seed
        if a.bundle:
            kw["small"] = True
        t = time.monotonic()
        try:
            tr = SCENARIOS[name](out / name, **kw)
        except Exception as e:  # noqa: BLE001 - report and go on with the next scenario
            print(f"lab: {name}: FAILED: {e}", file=sys.stderr)
            rc = 1
            continue
        ok = sum(1 for r in tr["requests"] if r.get("client") and r["client"]["status"] == 200)
        print(f"{name:20} {ok}/{len(tr['requests'])} ok, {len(tr['captures'])} captures, "
              f"{time.monotonic() - t:.1f}s -> {out / name}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
