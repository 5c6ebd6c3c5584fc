"""Cost of the SDP verifiers as networks grow: random 784-h-...-h-10 MLPs (width h,
depth = number of hidden layers; ReLU, or ``--activation abs`` for the paper's |x|) and, with ``--networks DIR``, the conv nets a suite
trained (e.g. the ``cifar`` suite's results folder).  Each job runs in a fresh worker
with a hard timeout, as in a suite; the table gives the network, the verifier and its
solver, the device, wall time (the worker's, CUDA's start included), the solve's and the
certificate's seconds within it, peak host and GPU memory, the bound over the trivial
bound and over the sampled lower bound.  ``--csv`` is rewritten after every row.

    python benchmarks/sdp_scaling.py [--widths 128 256] [--depths 2] \\
        [--verifiers eclipse-fast eclipse lipsdp:NATIVE lipsdp:NATIVE:dense lipsdp:SCS] [--timeout 600] \\
        [--device cpu|cuda] [--activation relu|abs] [--networks RESULTS/networks] [--csv out.csv]
"""
from __future__ import annotations

import argparse
import csv
import glob
import os

import torch
from torch import nn

import bench
from bench.network import load


def mlps(widths, depths, activation="relu"):
    from methods.layers import Abs
    act = {"relu": nn.ReLU, "abs": Abs}[activation]
    for d in depths:
        for h in widths:
            torch.manual_seed(0)
            layers, n = [], 784
            for _ in range(d):
                layers += [nn.Linear(n, h), act()]
                n = h
            tag = "" if activation == "relu" else f" {activation}"
            yield f"784-{'-'.join([str(h)] * d)}-10{tag}", nn.Sequential(*layers, nn.Linear(n, 10)), None


def stored(folder):
    for path in sorted(glob.glob(os.path.join(folder, "*.pt"))):
        module, shape = load(path)
        yield os.path.basename(path)[:-3], module, shape


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", type=int, nargs="*", default=[128, 256, 512, 1024, 2048])
    ap.add_argument("--depths", type=int, nargs="*", default=[2])
    ap.add_argument("--verifiers", nargs="+", default=["eclipse-fast", "eclipse", "lipsdp:NATIVE"],
                    help="verifier names; lipsdp:SOLVER picks lipsdp's solver, lipsdp:NATIVE:dense|layers "
                         "NATIVE's operator")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--activation", choices=["relu", "abs"], default="relu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--networks", help="a folder of stored networks (a results folder's networks/) to add")
    ap.add_argument("--csv", help="also write the rows here")
    args = ap.parse_args()
    nets = list(mlps(args.widths, args.depths, args.activation)) + (list(stored(args.networks)) if args.networks else [])
    cols = ["network", "verifier", "device", "status", "value", "bound/trivial", "bound/lower", "wall_s", "solve_s",
            "certify_s", "peak_MB", "gpu_MB"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols), flush=True)
    rows = []
    for label, module, shape in nets:
        kw = {"input_shape": shape} if shape else {}
        tb = bench.verify(module, "trivial", p=2, **kw).value
        lb = bench.lower_bound(module, p=2, samples=500, restarts=8, steps=30, timeout=args.timeout, **kw)
        low = lb.value
        if low is None:
            print(f"({label}: no sampled lower bound, {lb.status}: {lb.error})", flush=True)
        for spec in args.verifiers:
            name, solver, operator = (spec.split(":") + ["", ""])[:3]
            params = {k: v for k, v in (("solver", solver), ("operator", operator)) if v}
            b = bench.verify(module, name, p=2, timeout=args.timeout, device=args.device, threads=args.threads,
                             **params, **kw)
            row = {"network": label, "verifier": spec, "device": args.device, "status": b.status,
                   "value": b.value, "bound/trivial": b.value / tb if b.value else None,
                   "bound/lower": b.value / low if b.value and low else None, "wall_s": b.wall_s,
                   "solve_s": b.stats.get("solve_s"), "certify_s": b.stats.get("certify_s"),
                   "peak_MB": b.peak_mem_mb, "gpu_MB": b.stats.get("gpu_peak_mem_mb")}
            rows.append(row)
            fmt = {"value": "{:.6g}", "bound/trivial": "{:.3f}", "bound/lower": "{:.3f}", "wall_s": "{:.1f}",
                   "solve_s": "{:.1f}", "certify_s": "{:.1f}", "peak_MB": "{:.0f}", "gpu_MB": "{:.0f}"}
            print("| " + " | ".join("-" if row[c] is None else fmt.get(c, "{}").format(row[c]) for c in cols)
                  + " |" + ("" if b.status == "ok" else f" {b.error}"), flush=True)
            if args.csv:
                with open(args.csv, "w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=cols)
                    w.writeheader()
                    w.writerows(rows)


if __name__ == "__main__":
    main()
