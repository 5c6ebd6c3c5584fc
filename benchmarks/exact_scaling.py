"""Cost of the exact verifiers (bab, mip with HiGHS, mip with Gurobi) as networks grow.

    python benchmarks/exact_scaling.py targets            # the speed targets (see targets())
    python benchmarks/exact_scaling.py width [--budget 60] # 2-w-w-1 over [-5, 5]^2, l_inf
    python benchmarks/exact_scaling.py depth [--budget 60] [--width 16]  # 2-w x d-1 over [-5, 5]^2
    ... [--only bab]                                       # one verifier
    python benchmarks/exact_scaling.py targets --device cuda   # bab on a GPU

Every run is one job in a fresh worker with a hard budget (``bench.verify(timeout=)``),
so wall time and peak memory are the job's own.  Prints a Markdown table: status, wall
seconds, peak RSS of the worker, the value (or upper / lower at a timeout), and the
number of branch-and-bound nodes (bab) or MIP nodes.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import bench  # noqa: E402
from bench.network import from_npz  # noqa: E402

LIPBAB = os.environ.get("LIPBAB_DIR", os.path.join(HERE, "..", "..", "shared", "reference", "lipbab"))
RUNS = [("bab", {}), ("mip", {"backend": "highs"}), ("mip", {"backend": "gurobi"})]


def mlp(sizes, seed):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def row(label, net, verifier, params, p, domain, budget, device="cpu"):
    if verifier == "mip" and params.get("backend") == "gurobi":
        import importlib.util
        if importlib.util.find_spec("gurobipy") is None:
            return None
    b = bench.verify(net, verifier, p=p, domain=domain, timeout=budget, device=device, **params)
    s = b.stats or {}
    if b.value is None:
        val = b.error or ""
    elif b.kind == "exact":
        val = f"{b.value:.6f}"
    elif b.value is not None:
        val = f"<= {b.value:.4g} (>= {s.get('lower') or 0:.4g})"
    else:
        val = b.error or ""
    name = verifier + (f"-{params['backend']}" if "backend" in params else "") + (f" ({device})" if device != "cpu" else "")
    wall = "-" if b.wall_s is None else f"{b.wall_s:.2f}"
    mem = "-" if b.peak_mem_mb is None else f"{b.peak_mem_mb:.0f}"
    line = f"| {label} | {name} | {b.status} {b.kind} | {wall} | {mem} | {val} | {s.get('nodes', '-')} |"
    print(line, flush=True)
    return b


HEADER = "| network | verifier | status | wall s | peak MB | value | nodes |\n|---|---|---|---|---|---|---|"


def targets(args):
    print(HEADER)
    path = os.path.join(LIPBAB, "SDnet_10-30-30-30-3.npz")
    if os.path.exists(path):
        net = from_npz(path)
        dom = {"center": [0.05] * 10, "radius": 0.05}
        for p in (math.inf, 1.0, 2.0):
            row(f"SDnet_10-30-30-30-3 p={bench.api.p_name(p)}", net, *RUNS[0], p, dom, args.budget, args.device)
            if p != 2.0 and args.device == "cpu":
                for v, kw in RUNS[1:]:
                    row(f"SDnet_10-30-30-30-3 p={bench.api.p_name(p)}", net, v, kw, p, dom, args.budget)
    dom = {"center": [0.0, 0.0], "radius": 5.0}
    for seed in args.seeds:
        net = mlp([2, 32, 32, 1], seed)
        for v, kw in (RUNS if args.device == "cpu" else RUNS[:1]):
            row(f"2-32-32-1 seed {seed}", net, v, kw, math.inf, dom, args.budget, args.device if v == "bab" else "cpu")


def grow(args, sizes_list):
    print(HEADER)
    dom = {"center": [0.0, 0.0], "radius": 5.0}
    alive = {f"{v}-{kw.get('backend', '')}": True for v, kw in RUNS}
    for sizes in sizes_list:
        net = mlp(sizes, 0)
        for v, kw in RUNS:
            k = f"{v}-{kw.get('backend', '')}"
            if not alive[k]:
                continue
            b = row("-".join(map(str, sizes)), net, v, kw, math.inf, dom, args.budget, args.device if v == "bab" else "cpu")
            if b is not None and b.kind != "exact":
                alive[k] = False       # larger networks will not close either


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["targets", "width", "depth"])
    ap.add_argument("--budget", type=float, default=60.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batch", type=int, default=None, help="bab: nodes split per step")
    ap.add_argument("--width", type=int, default=16, help="depth: the hidden width")
    ap.add_argument("--only", choices=["bab", "mip-highs", "mip-gurobi"], default=None)
    args = ap.parse_args()
    if args.batch:
        RUNS[0] = ("bab", {"batch": args.batch})
    if args.only:
        RUNS[:] = [r for r in RUNS if r[0] + (f"-{r[1]['backend']}" if "backend" in r[1] else "") == args.only]
    if args.what == "targets":
        targets(args)
    elif args.what == "width":
        grow(args, [[2, w, w, 1] for w in (8, 16, 24, 32, 48, 64, 96, 128)])
    else:
        grow(args, [[2] + [args.width] * d + [1] for d in (1, 2, 3, 4, 5, 6, 8, 12, 16)])


if __name__ == "__main__":
    main()
