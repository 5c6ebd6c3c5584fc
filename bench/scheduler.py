"""Suite -> jobs (train, then verify, then audit), resume, dispatch, progress.

A job's key is a hash of its spec (plug-in name, version and resolved parameters; for
verification also the query and the network's content hash).  A key with a row in the
store is final and is never run again, so rerunning a killed run finishes only the rest.
"""
from __future__ import annotations

import logging
import os
import time

from .api import Budget, UserError
from .audit import audit
from .executors.local import LocalExecutor, Task
from .store import Store
from .suite import Suite
from .worker import resolve_device

log = logging.getLogger(__name__)


class Progress:
    def __init__(self, total: int, done: int = 0):
        self.total, self.done, self.t0 = total, done, time.perf_counter()

    def stamp(self) -> str:
        e = int(time.perf_counter() - self.t0)
        return f"[{self.done:>{len(str(self.total))}}/{self.total} {e // 60:02d}:{e % 60:02d}]"

    def start(self, t: Task):
        log.info("%s start   %s", self.stamp(), t.label)

    def finish(self, t: Task, out: dict):
        self.done += 1
        v = out.get("value")
        extra = f" = {v:.6g}" if isinstance(v, float) else ""
        if out.get("metrics"):
            extra = f" acc {out['metrics'].get('clean_acc', float('nan')):.3f}"
        err = f"  ({out.get('error')})" if out.get("error") and out["status"] != "ok" else ""
        log.info("%s %-7s %s%s  %.2fs%s", self.stamp(), out["status"], t.label, extra, out.get("wall_s") or 0, err)


RETRYABLE = ("timeout", "error", "oom")


def _unique(jobs: list[dict]) -> list[dict]:
    """Drop jobs whose key repeats (e.g. seeds [0, 0], or p 2 and 2.0): one row per key."""
    seen, out = set(), []
    for j in jobs:
        if j["key"] not in seen:
            seen.add(j["key"])
            out.append(j)
    return out


def run_suite(suite: Suite, out_dir: str, workers: int = 1, device: str = "cpu", data_dir: str | None = None,
              timeout: float | None = None, threads: int | None = None, retry: bool = False) -> dict:
    """Run (or resume) a suite into ``out_dir``; returns a summary.  Finished jobs are
    never redone, except, with ``retry``, those that ended in timeout, error or oom."""
    if timeout is not None and not (0 < timeout < float("inf")):
        raise UserError(f"--timeout must be a positive number of seconds, got {timeout}")
    if device not in ("cpu", "cuda", "auto"):
        raise UserError(f"--device must be cpu, cuda or auto, not {device!r}")
    device = resolve_device(device)
    n_gpu = 0
    if device == "cuda":
        import torch
        n_gpu = torch.cuda.device_count()
    threads = threads or max(1, (os.cpu_count() or 1) // max(1, workers))
    from .data import check
    for ds in suite.datasets:
        check(ds, data_dir)  # a missing file is a one-line error before anything runs
    store = Store(out_dir)
    skip = RETRYABLE if retry else ()
    done = store.done_keys(skip)
    train_jobs = _unique(suite.train_jobs(out_dir, data_dir))
    n_verify_each = sum(len(list(e.combos())) * len(e.queries or suite.queries) for e in suite.verify)
    total = len(train_jobs) * (1 + n_verify_each)  # refined once the networks are known
    skipped_train = sum(1 for j in train_jobs if j["key"] in done)
    prog = Progress(total, skipped_train)
    log.info("suite %s: %d train jobs (%d already done), up to %d verify jobs; %d worker(s), device %s, out %s",
             suite.name, len(train_jobs), skipped_train, len(train_jobs) * n_verify_each, workers, device, out_dir)
    ex = LocalExecutor(workers, gpus=n_gpu)

    def budget(t: float) -> Budget:
        return Budget(timeout or t, device, threads)  # "cuda" becomes a free "cuda:k" at dispatch

    # 1. training
    tasks = [Task(j["key"], j, budget(j["timeout"]),
                  f"train  {j['network_id']}") for j in train_jobs if j["key"] not in done]

    def train_done(t: Task, out: dict):
        store.record_train(t.key, t.spec, out, t.spec["network_id"])
        prog.finish(t, out)

    ex.run(tasks, prog.start, train_done)

    # 2. verification of every network this suite trained
    nets = [store.network_by_job(j["key"]) for j in train_jobs]
    nets = [dict(n) for n in nets if n is not None]
    done = store.done_keys(skip)
    tasks = []
    for n in nets:
        for j in _unique(suite.verify_jobs(n)):
            if j["key"] in done:
                continue
            q = j["query"]
            tgt = q["target"] if q["target"] == "full" else f"{q['target'][0]}-{q['target'][1]}"
            tasks.append(Task(j["key"], j, budget(j["timeout"]),
                              f"verify {j['verifier']:<8} p={q['p']:<3} {tgt:<4} {n['id']}"))
    # now that the networks are known, count exactly: this suite's jobs, done and to do
    n_verify = sum(len(_unique(suite.verify_jobs(n))) for n in nets)
    prog.total = len(train_jobs) + n_verify
    prog.done = len(train_jobs) + n_verify - len(tasks)

    def verify_done(t: Task, out: dict):
        store.record_verify(t.key, t.spec, out)
        prog.finish(t, out)

    ex.run(tasks, prog.start, verify_done)

    # 3. audit (before certification, so that no unsound bound certifies anything)
    flagged = audit(store)

    # 4. certified accuracy of every network from its bounds (if the suite asks for it)
    done = store.done_keys(skip)
    by_net: dict[str, list] = {}
    for r in store.results():
        by_net.setdefault(r["network"], []).append(dict(r))
    tasks = []
    for n in nets:
        j = suite.certify_job(n, by_net.get(n["id"], []), data_dir)
        if j is not None and j["key"] not in done:
            tasks.append(Task(j["key"], j, budget(j["timeout"]), f"certify {n['id']}"))
    if tasks:
        prog.total += len(tasks)

    def certify_done(t: Task, out: dict):
        store.record_certify(t.key, t.spec, out)
        prog.finish(t, out)

    ex.run(tasks, prog.start, certify_done)
    summary = {"networks": len(nets), "train_jobs": len(train_jobs), "results": len(store.results()),
               "unsound": len(flagged), "wall_s": time.perf_counter() - prog.t0}
    log.info("done: %d networks, %d results, %d unsound, %.1fs", summary["networks"], summary["results"],
             summary["unsound"], summary["wall_s"])
    store.close()
    return summary
