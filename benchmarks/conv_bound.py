"""Cost and tightness of the trivial bound's conv layer at p = 2 (the DFT bound, no
unrolling) as the input grows: seconds per layer, and the ratio to the exact spectral
norm of the unrolled matrix where that is small enough to compute.

    python benchmarks/conv_bound.py
"""
import time

import numpy as np
import torch
from torch import nn

from bench.network import walk
from methods.trivial import conv_spectral_upper


def main():
    torch.manual_seed(0)
    print(f"{'layer':<34} {'input':>10} {'fft s':>8} {'exact s':>8} {'fft/exact':>9}")
    for cin, cout, stride, hw in [(3, 32, 1, 8), (32, 64, 2, 8), (3, 32, 1, 16), (32, 32, 1, 12),
                                  (3, 32, 1, 32), (32, 64, 2, 32), (64, 64, 2, 16), (64, 128, 1, 32)]:
        conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        layer = walk(nn.Sequential(conv), (cin, hw, hw)).affines[0]
        t = time.perf_counter()
        fft = conv_spectral_upper(layer)
        tf = time.perf_counter() - t
        ratio, te = "-", "-"
        if layer.in_dim * layer.out_dim <= 30_000_000:
            t = time.perf_counter()
            exact = np.linalg.norm(layer.matrix(max_entries=30_000_000), 2)
            te = f"{time.perf_counter() - t:.2f}"
            ratio = f"{fft / exact:.4f}"
        print(f"Conv2d({cin},{cout},3,s={stride},p=1){'':<10} {f'{cin}x{hw}x{hw}':>10} {tf:>8.3f} {te:>8} {ratio:>9}")


if __name__ == "__main__":
    main()
