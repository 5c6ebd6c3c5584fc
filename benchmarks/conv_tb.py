"""Cost of the trivial bound on a CIFAR-size conv net (3 x 32 x 32; convs of 32, 64, 64
channels, the last two strided; fc 128), and of a training step of tb-penalty against
the standard trainer's (batch 64, Adam, one thread unless --threads).

    python benchmarks/conv_tb.py [--threads 1] [--repeat 5]

Prints the median seconds of: the ``trivial`` verifier (sound, float64, rounding
margins) at p = 1, 2, inf; the training form (TorchTrivialBound.full(), forward and
backward); one training step of each trainer's loss.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from torch import nn

import bench
from bench.network import build_net
from methods.trivial import TorchTrivialBound

ARCH = {"conv": [[32, 3, 1], [64, 3, 2], [64, 3, 2]], "hidden": [128], "activation": "relu"}
SHAPE = (3, 32, 32)


def median_s(f, repeat: int) -> float:
    f()   # warm up
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = build_net(ARCH, SHAPE, 10)
    print(f"network {ARCH}, input {SHAPE}, {sum(p.numel() for p in net.parameters()):,} parameters, "
          f"{args.threads} thread(s)")
    print(f"{'p':>4} {'verifier s':>11} {'value':>10} {'train form s':>13} {'value':>10}")
    for p in (1.0, 2.0, math.inf):
        b = bench.verify(net, "trivial", p=p, input_shape=SHAPE)
        tv = median_s(lambda: bench.verify(net, "trivial", p=p, input_shape=SHAPE), args.repeat)
        tb = TorchTrivialBound(net, SHAPE, p)

        def fwd_bwd():
            net.zero_grad()
            tb.full().backward()
        tt = median_s(fwd_bwd, args.repeat)
        print(f"{p:>4} {tv:>11.3f} {b.value:>10.4g} {tt:>13.3f} {float(tb.full().detach()):>10.4g}")

    x, y = torch.rand(64, *SHAPE), torch.randint(0, 10, (64,))
    ce = nn.CrossEntropyLoss()
    print(f"\n{'training step (batch 64)':<28} {'s':>8}")
    for label, p in (("standard", None), ("tb-penalty p=1", 1.0), ("tb-penalty p=2", 2.0), ("tb-penalty p=inf", math.inf)):
        torch.manual_seed(0)
        m = build_net(ARCH, SHAPE, 10)
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        tb = TorchTrivialBound(m, SHAPE, p) if p is not None else None

        def step():
            opt.zero_grad()
            loss = ce(m(x), y)
            if tb is not None:
                loss = loss + 0.05 * torch.log(tb.full()).float()
            loss.backward()
            opt.step()
        print(f"{label:<28} {median_s(step, args.repeat):>8.3f}")


if __name__ == "__main__":
    main()
