"""What ``python -m bench verify`` costs beyond the bound itself: for each network, the
wall time of

- ``cli``: ``python -m bench -q verify FILE --verifier trivial --p 2 --out NEW`` (a new
  store: the network read in the driver, an import job and one verify job in worker
  processes, the audit, the table);
- ``cli again``: the same command on the same store (every job reused: nothing runs);
- ``python``: ``python -c "import bench; bench.verify(FILE, 'trivial', p=2)"`` (the same
  interpreter start and the same read, in one process);
- ``in-process``: ``bench.verify(FILE, "trivial", p=2)`` in a warm process;

and the peak resident memory of the largest process the CLI ran (its driver or a
worker).  Overhead of ``bench verify`` = cli - python.

    python benchmarks/verify_cost.py [FILE.onnx ...]   (default: a 784-256x2 MLP made here)
"""
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings

import torch
from torch import nn


def made(folder: str) -> str:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    path = os.path.join(folder, "mlp-784-256x2.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.zeros(1, 784),), path, dynamo=False)
    return path


def timed(cmd: list) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    return time.perf_counter() - t, max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024


def main(files: list) -> None:
    import bench
    py = sys.executable
    with tempfile.TemporaryDirectory() as d:
        files = files or [made(d)]
        print("| network | cli (s) | cli again (s) | python (s) | in-process (s) | overhead (s) | largest process MB |")
        print("|---|---|---|---|---|---|---|")
        for f in files:
            out = os.path.join(d, "out-" + os.path.basename(f))
            cli, mb = timed([py, "-m", "bench", "-q", "verify", f, "--verifier", "trivial", "--p", "2", "--out", out])
            again, _ = timed([py, "-m", "bench", "-q", "verify", f, "--verifier", "trivial", "--p", "2", "--out", out])
            api, _ = timed([py, "-c", f"import bench; bench.verify({f!r}, 'trivial', p=2)"])
            bench.verify(f, "trivial", p=2)   # warm
            t = time.perf_counter()
            bench.verify(f, "trivial", p=2)
            warm = time.perf_counter() - t
            print(f"| {os.path.basename(f)} | {cli:.2f} | {again:.2f} | {api:.2f} | {warm:.2f} | {cli - api:.2f} | "
                  f"{mb:.0f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
