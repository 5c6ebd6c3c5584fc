"""Every verifier on networks no one here trained: the ONNX files of a folder (e.g. the
VNN-COMP 2021 networks), p = 2 and inf, the global domain and a box (radius ``--radius``
around a fixed random point of [0, 1]^n).  Each job runs in a fresh worker with a hard
timeout (``bench.verify(..., timeout=)``), one at a time; a verifier that refuses a query
says why.  The table: network, query, verifier, status, value, time, and the ratio of every
upper bound to the best claimed lower bound of that network and query (``lower``'s value,
which comes with a witness pair, and any exact answer; not re-audited here: a suite's
audit does that).  ``--csv`` is rewritten after every row.

    python benchmarks/onnx_networks.py DIR [--verifiers trivial lower lipsdp:NATIVE ...] \\
        [--timeout 120] [--timeouts bab=30 mip=30 lirpa=60] [--radius 0.02] [--csv out.csv]
"""
from __future__ import annotations

import argparse
import csv
import glob
import math
import os
import time

import numpy as np

import bench
from bench.network import read, walk

DEFAULT = ["lower", "trivial", "lipsdp:NATIVE", "eclipse-fast", "eclipse", "bab", "mip", "lirpa"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--verifiers", nargs="+", default=DEFAULT, help="names; lipsdp:SOLVER picks lipsdp's solver")
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--timeouts", nargs="*", default=["bab=30", "mip=30", "lirpa=60"],
                    help="per-verifier budgets, NAME=SECONDS (default: bab and mip 30 s, lirpa 60 s)")
    ap.add_argument("--radius", type=float, default=0.02)
    ap.add_argument("--p", nargs="+", default=["2", "inf"])
    ap.add_argument("--only", nargs="*", help="file names (without .onnx) to run, default every file")
    ap.add_argument("--csv")
    args = ap.parse_args()
    budgets = {k: float(v) for k, v in (t.split("=") for t in args.timeouts)}
    rows = []
    files = sorted(glob.glob(os.path.join(args.folder, "*.onnx")))
    if args.only:
        files = [f for f in files if os.path.basename(f)[:-5] in args.only]
    for path in files:
        name = os.path.basename(path)[:-5]
        t0 = time.perf_counter()
        module, shape = read(path)
        net = walk(module, shape)
        read_s = time.perf_counter() - t0
        print(f"# {name}: input {shape}, read and walked in {read_s:.2f} s: {net.describe()[:120]}", flush=True)
        n = int(np.prod(shape))
        centre = np.random.default_rng(0).random(n).tolist()
        for p in args.p:
            for dom_name, dom in (("global", "global"), ("box", {"center": centre, "radius": args.radius})):
                group = []
                for spec in args.verifiers:
                    v, _, solver = spec.partition(":")
                    params = {"solver": solver} if solver else {}
                    t = time.perf_counter()
                    b = bench.verify(path, v, p=float(p), domain=dom, timeout=budgets.get(v, args.timeout), **params)
                    row = {"network": name, "p": p, "domain": dom_name, "verifier": spec, "status": b.status,
                           "kind": b.kind, "value": b.value, "wall_s": round(time.perf_counter() - t, 2),
                           "error": (b.error or "")[:160]}
                    group.append(row)
                    print(f"{name:34s} p={p:3s} {dom_name:6s} {spec:14s} {b.status:12s} "
                          f"{'' if b.value is None else f'{b.value:.6g}':>12s} {row['wall_s']:8.1f}s {row['error'][:90]}",
                          flush=True)
                lows = [r["value"] for r in group if r["status"] == "ok" and r["value"] is not None
                        and r["kind"] in ("lower", "exact")]
                best = max(lows) if lows else None
                best = best if best is not None and best > 1e-200 else None   # a constant network: no ratio
                for r in group:
                    r["over_best_lower"] = (r["value"] / best if best and r["value"] is not None
                                            and r["kind"] in ("upper", "exact") else None)
                rows += group
                if args.csv:
                    with open(args.csv, "w", newline="") as f:
                        w = csv.DictWriter(f, fieldnames=list(rows[0]))
                        w.writeheader()
                        w.writerows(rows)
    print("\n| network | p | domain | verifier | status | value | s | upper / best claimed lower |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = "" if r["over_best_lower"] is None or not math.isfinite(r["over_best_lower"]) else \
            f"{r['over_best_lower']:.3g}"
        val = "" if r["value"] is None else f"{r['value']:.6g}"
        why = "" if r["status"] == "ok" else f" ({r['error'][:70]})"
        print(f"| {r['network']} | {r['p']} | {r['domain']} | {r['verifier']} | {r['status']}{why} | {val} | "
              f"{r['wall_s']} | {ratio} |")


if __name__ == "__main__":
    main()
