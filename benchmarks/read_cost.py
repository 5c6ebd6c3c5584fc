"""What reading a network costs as it grows: a residual MLP of ``--blocks`` blocks written
as code (traced with torch.fx), a ResNet-18-sized conv net on 32 x 32 images (BatchNorm,
1x1 strided shortcuts), and each of them exported to ONNX and read back.  Per network:
seconds to walk it (tracing and the check against its forward included), to export and
read the ONNX file (the check against onnxruntime included), and the trivial bound's time
at p = 2 and inf (the sum rule at every residual add), with the peak memory the Python
allocator saw for each step (tracemalloc: torch's own buffers are not counted).

    python benchmarks/read_cost.py [--blocks 10 50] [--width 256]
"""
from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
import tracemalloc
import warnings

import torch
from torch import nn

import bench
from bench import onnx_file
from bench.network import walk


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.a, self.b = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):
        return x + self.b(torch.relu(self.a(x)))


class ResMLP(nn.Module):
    def __init__(self, blocks, d, d_in=784, d_out=10):
        super().__init__()
        self.inp = nn.Linear(d_in, d)
        self.blocks = nn.Sequential(*[Block(d) for _ in range(blocks)])
        self.out = nn.Linear(d, d_out)

    def forward(self, x):
        return self.out(self.blocks(torch.relu(self.inp(x))))


class Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential() if stride == 1 and cin == cout else \
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = torch.relu(self.b1(self.c1(x)))
        return torch.relu(self.b2(self.c2(h)) + self.short(x))


class ResNet18(nn.Module):
    """He et al.'s ResNet-18 for 32 x 32 inputs (the CIFAR variant: a 3x3 stem, no max pool)."""

    def __init__(self, width=64):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks, c = [], width
        for i, mult in enumerate((1, 2, 4, 8)):
            out = width * mult
            blocks += [Basic(c, out, 1 if i == 0 else 2), Basic(out, out, 1)]
            c = out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        h = self.blocks(self.stem(x))
        h = nn.functional.adaptive_avg_pool2d(h, 1)
        return self.fc(torch.flatten(h, 1))


def timed(fn):
    tracemalloc.start()
    t = time.perf_counter()
    out = fn()
    s = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1] / 2 ** 20
    tracemalloc.stop()
    return out, s, peak


def report(name, net, shape):
    net = net.eval()
    w, walk_s, walk_mb = timed(lambda: walk(net, shape))
    print(f"{name}: {sum(p.numel() for p in net.parameters()):,} parameters, {len(w.branching)} residual adds at the "
          f"top level")
    print(f"  walk (trace, check against the forward): {walk_s:.2f} s, peak {walk_mb:.0f} MB")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "n.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, export_s, _ = timed(lambda: torch.onnx.export(net, torch.zeros(1, *shape), path, dynamo=False))
        (tree, _), read_s, read_mb = timed(lambda: onnx_file.read(path))
        print(f"  ONNX: export {export_s:.2f} s ({os.path.getsize(path) / 2 ** 20:.1f} MB); read (check against "
              f"onnxruntime) {read_s:.2f} s, peak {read_mb:.0f} MB")
    for p in (2.0, math.inf):
        b, s, mb = timed(lambda: bench.verify(net, "trivial", p=p, input_shape=shape))
        print(f"  trivial p={p:g}: {b.value:.6g} in {s:.2f} s (solve {b.stats.get('solve_s', b.wall_s) or 0:.2f} s), "
              f"peak {mb:.0f} MB")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, nargs="*", default=[10, 50])
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--resnet-width", type=int, default=64)
    args = ap.parse_args()
    torch.manual_seed(0)
    for k in args.blocks:
        report(f"residual MLP 784-{args.width}-10 with {k} blocks", ResMLP(k, args.width), (784,))
    report(f"ResNet-18 (width {args.resnet_width}), 3x32x32", ResNet18(args.resnet_width), (3, 32, 32))


if __name__ == "__main__":
    main()
