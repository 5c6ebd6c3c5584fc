"""Time per call of the linear algebra one NATIVE / ECLipsE evaluation is made of, on the
CPU and (where there is one) on CUDA, float64: which small factorisations a GPU makes
slower, the question an H200 run left open (README, Benchmarks: 784-256-256-10 took 8.7 s
on the GPU, 5.0 s on the CPU, a few thousand evaluations of 256-row Cholesky factors and
eigendecompositions).  Each primitive includes its synchronisation where the solver has
one (a Cholesky's info check, an eigenvalue read back).

    python benchmarks/gpu_latency.py [--sizes 10 64 256 1024] [--repeats 50]

The last row is one pass of the matrix-free operator's first layer, for its 10 outputs;
on CUDA a last line says where ``sdp.linalg.eigs`` sends each size's eigenproblems (the
host's LAPACK or cuSOLVER, whichever it timed faster on first use).
"""
from __future__ import annotations

import argparse
import time

import torch

from baselines.verify.sdp.linalg import host_eigh


def spd(n: int, device: str):
    g = torch.Generator(device="cpu").manual_seed(0)
    A = torch.randn(n, n, generator=g, dtype=torch.float64).to(device)
    return A, A @ A.T + n * torch.eye(n, dtype=torch.float64, device=device)


def primitives(n: int, device: str):
    A, S = spd(n, device)
    C = torch.linalg.cholesky(S)
    B = torch.randn(n, n, generator=torch.Generator(device="cpu").manual_seed(1), dtype=torch.float64).to(device)
    return {
        "matmul": lambda: A @ B,
        "cholesky_ex + info check": lambda: bool(torch.linalg.cholesky_ex(S)[1] != 0),
        "solve_triangular": lambda: torch.linalg.solve_triangular(C, B, upper=False),
        "eigvalsh + read top": lambda: float(torch.linalg.eigvalsh(S)[-1]),
        "eigh": lambda: torch.linalg.eigh(S),
        "host eigh (scipy, copies both ways)": lambda: host_eigh(S),
    }


def conv_pass(device: str):
    """One step's worth of the matrix-free operator on the cifar suite's first layer: a
    16-channel 3x3 stride-2 conv of 10 images 3x32x32 and its adjoint."""
    from torch.nn.functional import conv2d, conv_transpose2d
    g = torch.Generator(device="cpu").manual_seed(0)
    w = torch.randn(16, 3, 3, 3, generator=g, dtype=torch.float64).to(device)
    x = torch.randn(10, 3, 32, 32, generator=g, dtype=torch.float64).to(device)
    return lambda: conv_transpose2d(conv2d(x, w, None, 2, 1), w, None, 2, 1, 1)


def per_call(f, device: str, repeats: int) -> float:
    f()  # warm-up (CUDA kernels, workspaces)
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        f()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeats


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 64, 256, 1024])
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    start = ""
    if "cuda" in devices:  # what a job's clock pays once: the context, then each library's first call
        t = time.perf_counter()
        torch.zeros(1, device="cuda")
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        A, S = spd(256, "cuda")
        bool(torch.linalg.cholesky_ex(S)[1] != 0)
        float(torch.linalg.eigvalsh(S)[-1])
        t2 = time.perf_counter()
        start = (f"; CUDA context {1e3 * (t1 - t):.0f} ms, first Cholesky and eigvalsh (256 rows) "
                 f"{1e3 * (t2 - t1):.0f} ms")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name(0)}" if "cuda" in devices else ", no CUDA device") + start)
    print("| n | primitive | " + " | ".join(f"{d} ms" for d in devices) + " |\n|" + "---|" * (2 + len(devices)))
    for n in args.sizes:
        ops = {d: primitives(n, d) for d in devices}
        for name in ops["cpu"]:
            times = [1e3 * per_call(ops[d][name], d, args.repeats) for d in devices]
            print(f"| {n} | {name} | " + " | ".join(f"{t:.3f}" for t in times) + " |", flush=True)
    times = [1e3 * per_call(conv_pass(d), d, args.repeats) for d in devices]
    print("| 10 x 3,072 | conv2d + conv_transpose2d (16 channels, 3x3, stride 2) | "
          + " | ".join(f"{t:.3f}" for t in times) + " |")
    if "cuda" in devices:  # where sdp.linalg.eigs sends each size's eigenproblems on this machine
        from baselines.verify.sdp.linalg import HOST_EIGS_ROWS, on_host
        routes = {n: "/".join("host" if on_host(spd(n, "cuda")[1], v) else "cuda" for v in (False, True))
                  for n in args.sizes}
        print(f"eigs route, values/vectors (timed on first use, up to {HOST_EIGS_ROWS} rows): "
              + ", ".join(f"{n}: {r}" for n, r in routes.items()))


if __name__ == "__main__":
    main()
