"""Per-job overhead of each executor: for a trivial-bound job on a tiny network, the
median of (the job's whole time in the driver, from dispatch to its outcome) minus
(the verifier's own time, ``solve_s``), jobs one at a time.

    python benchmarks/job_overhead.py [--jobs 40] [--executors local,ray] [--address HOST:PORT]

Local: a fresh worker process forked from a warm fork server per job.  Ray: the same
inside a Ray task, plus Ray's dispatch (a local Ray instance unless --address).  The
first job of each executor (cold fork server, cold Ray worker) is reported apart.
"""
import argparse
import os
import statistics
import tempfile
import time

import torch

from bench import network as netmod
from bench.api import Budget, Query
from bench.executors.base import Task
from bench.jobs import VerifyJob, keyed
from bench.registry import get_verifier, load_plugins


def tasks(n: int, path: str, h: str) -> list:
    cls = get_verifier("trivial")
    out = []
    for i in range(n):
        job = keyed(VerifyJob("trivial", cls.version, {}, Query(p=2.0), f"net{i}", h, path, cls.kind, timeout=60))
        out.append(Task(job, Budget(60, "cpu", 1, None), f"trivial #{i}"))
    return out


def measure(ex, ts) -> list[float]:
    started, over = {}, []

    def on_start(t):
        started[t.label] = time.perf_counter()

    def on_done(t, out):
        assert out.status == "ok", (out.status, out.error)
        over.append(time.perf_counter() - started[t.label] - (out.solve_s or 0.0))

    ex.run(ts, on_start, on_done)
    return over


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=40)
    ap.add_argument("--executors", default="local,ray")
    ap.add_argument("--address")
    a = ap.parse_args()
    load_plugins()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    path = os.path.join(tempfile.mkdtemp(), "net.pt")
    netmod.save(net, (4,), path)
    h = netmod.net_hash(net)
    for name in a.executors.split(","):
        if name == "local":
            from bench.executors.local import LocalExecutor
            ex = LocalExecutor(1)
        else:
            from bench.executors.ray import RayExecutor
            ex = RayExecutor(a.address, workers=1)
        try:
            over = measure(ex, tasks(a.jobs + 1, path, h))
        finally:
            getattr(ex, "close", lambda: None)()
        rest = sorted(over[1:])
        print(f"{name:>6}: first job {over[0] * 1e3:8.1f} ms; then median {statistics.median(rest) * 1e3:6.1f} ms, "
              f"p10 {rest[len(rest) // 10] * 1e3:6.1f} ms, p90 {rest[9 * len(rest) // 10] * 1e3:6.1f} ms "
              f"over {len(rest)} jobs")


if __name__ == "__main__":
    main()
