"""Cost of the SDP verifiers on random 784-h-h-10 ReLU networks (the issue's target:
certified LipSDP-Neuron on 784-256-256-10 within 60 s and 2 GB on 2 cores).  Each job
runs in a fresh worker with a hard timeout, as in a suite.

    python benchmarks/sdp_scaling.py [--widths 64 128 256] [--solvers NATIVE SCS] [--timeout 600]
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

import bench


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--solvers", nargs="+", default=["NATIVE", "SCS"])
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()
    print(f"{'network':<16} {'verifier':<22} {'status':<8} {'value':>10} {'/trivial':>8} {'wall_s':>8} {'peak_MB':>8}")
    for h in args.widths:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(784, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 10))
        tb = bench.verify(net, "trivial", p=2).value
        runs = [("eclipse-fast", {})] + [("lipsdp", {"solver": s}) for s in args.solvers]
        for name, kw in runs:
            b = bench.verify(net, name, p=2, timeout=args.timeout, **kw)
            label = name + (f" {kw['solver']}" if kw else "")
            val = f"{b.value:.6g}" if b.value is not None else "-"
            ratio = f"{b.value / tb:.3f}" if b.value is not None else "-"
            print(f"784-{h}-{h}-10{'':<4} {label:<22} {b.status:<8} {val:>10} {ratio:>8} {b.wall_s:>8.1f} "
                  f"{b.peak_mem_mb or 0:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
