"""Cost of the trivial bound as the network grows: wall time and peak memory of
``bench.verify(net, "trivial", p)`` on random MLPs 784-h-...-h-10, each measured in a
fresh worker process (the executor's path), so the memory is the job's own.

    python benchmarks/trivial_scaling.py [--widths 64 256 1024] [--depths 2 4 8]
"""
from __future__ import annotations

import argparse
import math

import torch
from torch import nn

import bench


def mlp(width: int, depth: int, d_in: int = 784, d_out: int = 10) -> nn.Sequential:
    torch.manual_seed(0)
    layers, d = [], d_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, d_out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 256, 1024, 2048])
    ap.add_argument("--depths", type=int, nargs="+", default=[2, 8])
    args = ap.parse_args()
    print(f"{'network':<28} {'p':>4} {'wall_s':>9} {'cpu_s':>8} {'peak_MB':>8} {'job_MB':>7} {'bound':>12}")
    for depth in args.depths:
        for w in args.widths:
            net = mlp(w, depth)
            for p in (2, math.inf, 1):
                b = bench.verify(net, "trivial", p=p, timeout=600)
                name = f"784-{'-'.join([str(w)] * depth)}-10"
                job_mb = b.peak_mem_mb - b.stats.get("base_mem_mb", 0.0)
                print(f"{name[:28]:<28} {bench.api.p_name(float(p)):>4} {b.wall_s:>9.3f} {b.cpu_s:>8.3f} "
                      f"{b.peak_mem_mb:>8.0f} {job_mb:>7.0f} {b.value:>12.5g}", flush=True)


if __name__ == "__main__":
    main()
