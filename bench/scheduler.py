"""Suite -> jobs (train, then verify, then audit, then certify), resume, dispatch to an
executor, progress.

A job's key is a hash of its spec (plug-in name, version and resolved parameters; for
verification also the query and the network's content hash).  A key with a row in the
store is final and is never run again, so rerunning a killed run finishes only the rest.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass

from .api import Budget, Unsupported, UserError, last_frame
from .audit import audit
from .executors.base import Executor, Task
from .executors.local import LocalExecutor
from .jobs import MAKERS, Outcome, VerifyJob
from .registry import get_verifier, preloads
from .store import Store
from .suite import Suite
from .worker import not_installed_reason, resolve_device, versions

log = logging.getLogger(__name__)


class Progress:
    """Progress of a run: a log line per job start and end, and a summary (done / total,
    running, failed, the slowest running job and its time, an ETA).  On a terminal the
    summary is a live line under the log, redrawn at every event; elsewhere it is a log
    line at every tenth of the run."""

    def __init__(self, total: int, done: int = 0):
        import sys
        self.total, self.done, self.t0 = total, done, time.perf_counter()
        self.done0, self.failed, self.running = done, 0, {}
        self.tty = sys.stderr.isatty() and log.isEnabledFor(logging.INFO)
        self._next_plain = 0.1

    def stamp(self) -> str:
        e = int(time.perf_counter() - self.t0)
        return f"[{self.done:>{len(str(self.total))}}/{self.total} {e // 60:02d}:{e % 60:02d}]"

    def summary(self) -> str:
        now = time.perf_counter()
        ran = self.done - self.done0
        left = max(0, self.total - self.done)
        eta = "" if not ran else f", ETA {_mmss((now - self.t0) / ran * left)}"
        slow = ""
        if self.running:
            label, t = min(self.running.items(), key=lambda kv: kv[1])
            slow = f"; slowest: {' '.join(label.split())} {now - t:.0f}s"
        return (f"{self.done}/{self.total} done, {len(self.running)} running, {self.failed} failed{eta}{slow}")

    def _emit(self, msg: str, *args):
        import sys
        if self.tty:
            sys.stderr.write("\r\033[K")
        log.info(msg, *args)
        if self.tty:
            sys.stderr.write(self.summary()[:160])
            sys.stderr.flush()
        elif self.total and self.done / self.total >= self._next_plain:
            self._next_plain = (int(self.done / self.total * 10) + 1) / 10
            log.info("progress: %s", self.summary())

    def start(self, t: Task):
        self.running[t.label] = time.perf_counter()
        self._emit("%s start   %s", self.stamp(), t.label)

    def finish(self, t: Task, out: Outcome):
        self.done += 1
        self.running.pop(t.label, None)
        if out.status in ("error", "oom", "timeout", "unsound"):
            self.failed += 1
        extra = f" = {out.value:.6g}" if isinstance(out.value, float) else ""
        if out.network is not None:
            acc = out.network.metrics.get("clean_acc")
            extra = "" if acc is None else f" acc {acc:.3f}"
        err = f"  ({out.error})" if out.error and out.status != "ok" else ""
        if out.traceback:   # where it failed (bench show --errors prints the whole traceback)
            err += f" at {last_frame(out.traceback)}"
        self._emit("%s %-7s %s%s  %.2fs%s", self.stamp(), out.status, t.label, extra, out.wall_s or 0, err)

    def close(self):
        import sys
        if self.tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _mmss(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


RETRYABLE = ("timeout", "error", "oom")
LOCK_NAME = "lipbench.lock"


def _unique(jobs: list) -> list:
    """Drop jobs whose key repeats (e.g. seeds [0, 0], or p 2 and 2.0): one row per key."""
    seen, out = set(), []
    for j in jobs:
        if j.key not in seen:
            seen.add(j.key)
            out.append(j)
    return out


def precheck(job: VerifyJob, net) -> Outcome | None:
    """What the driver can answer without a worker: a verifier that is not installed, or
    one whose :meth:`~bench.api.Verifier.supports` refuses the network or query.  ``net``
    is the walked network (or the :class:`Unsupported` raised walking it)."""
    t0 = time.perf_counter()
    cls = get_verifier(job.verifier)
    vers = versions(cls)
    if cls.missing():
        return Outcome("not_installed", cls.kind, versions=vers, error=not_installed_reason(cls),
                       wall_s=time.perf_counter() - t0, device="cpu")
    reason = str(net) if isinstance(net, Exception) else cls(**job.params).refusal(net, job.query)
    if reason:
        return Outcome("unsupported", cls.kind, versions=vers, error=reason, wall_s=time.perf_counter() - t0,
                       device="cpu")
    return None


def _walked(path: str):
    from . import network as netmod
    module, shape = netmod.load(path)
    try:
        return netmod.walk(module, shape)
    except Unsupported as e:
        return e


def run_suite(suite: Suite, out_dir: str, workers: int = 1, device: str = "cpu", data_dir: str | None = None,
              timeout: float | None = None, threads: int | None = None, retry: bool = False,
              executor: Executor | None = None, mem_limit: float | None = None, mix_suites: bool = False) -> dict:
    """Run (or resume) a suite into ``out_dir``; returns a summary.  Finished jobs are
    never redone, except, with ``retry``, those that ended in timeout, error or oom.
    ``executor`` runs the jobs (default: a :class:`LocalExecutor` with ``workers``
    processes and the machine's GPUs when ``device`` is cuda).  Each job gets ``threads``
    torch threads (default: the suite's ``threads``, else 1: on a loaded machine more
    threads per small job cost more than they give) and at most ``mem_limit`` MB (the
    suite's ``mem_limit``; None: no cap).  A store holds one suite unless ``mix_suites``."""
    if timeout is not None and not (0 < timeout < float("inf")):
        raise UserError(f"--timeout must be a positive number of seconds, got {timeout}")
    if mem_limit is not None and not (0 < mem_limit < float("inf")):
        raise UserError(f"--mem-limit must be a positive number of megabytes, got {mem_limit}")
    if device not in ("cpu", "cuda", "auto"):
        raise UserError(f"--device must be cpu, cuda or auto, not {device!r}")
    if hasattr(executor, "gpus"):   # a cluster's GPUs, not this machine's
        n_gpu = executor.gpus()
        if device == "cuda" and not n_gpu:
            raise UserError("device 'cuda' requested but the Ray cluster has no GPU")
        device = "cuda" if device == "auto" and n_gpu else ("cpu" if device == "auto" else device)
    else:
        device = resolve_device(device)
        n_gpu = 0
        if device == "cuda":
            import torch
            n_gpu = torch.cuda.device_count()
    threads = threads or suite.threads or 1
    mem_limit = mem_limit or suite.mem_limit
    from .data import check, preloads as data_preloads
    datasets = suite.datasets + tuple(e.dataset for e in suite.networks if e.dataset is not None)
    for ds in datasets:
        check(ds, data_dir)  # a missing file is a one-line error before anything runs
    preload = preloads([e.verifier for e in suite.verify], [e.trainer for e in suite.train]) + data_preloads(datasets)
    makers = _unique(suite.train_jobs(out_dir, data_dir) + suite.import_jobs(out_dir, data_dir))
    with folder_lock(out_dir):  # one driver per store
        s = Store(out_dir)
        try:
            s.claim_suite(suite.name, mix_suites)
        finally:
            s.close()
        return _run(suite, makers, out_dir, RunOptions(workers, device, n_gpu, data_dir, timeout, threads, retry,
                                                        executor, mem_limit, tuple(preload)))


_HELD: dict = {}  # folder -> [file, depth]: this process's locks (re-entered, not re-taken)


@contextlib.contextmanager
def folder_lock(out_dir: str):
    """Hold an exclusive lock on ``out_dir`` (re-entrant in this process): a second driver
    on the same store is a one-line error naming the first (its pid and host).  The lock
    is the kernel's (flock), so a driver that died, even by SIGKILL, leaves none behind."""
    key = os.path.realpath(out_dir)
    if key in _HELD:
        _HELD[key][1] += 1
    else:
        _HELD[key] = [_take(out_dir), 1]
    try:
        yield
    finally:
        _HELD[key][1] -= 1
        if not _HELD[key][1]:
            _HELD.pop(key)[0].close()


def _take(out_dir: str):
    import fcntl
    import socket
    try:
        os.makedirs(out_dir, exist_ok=True)
        fh = open(os.path.join(out_dir, LOCK_NAME), "a+")
    except OSError as e:
        raise UserError(f"cannot open the results folder {out_dir}: {e}") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise UserError(f"another lipbench run ({holder}) is writing to {out_dir}; wait for it to finish "
                        f"or give another --out") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()} on {socket.gethostname()}")
    fh.flush()
    return fh


@dataclass(frozen=True)
class RunOptions:
    """How a run runs, as :func:`run_suite` resolved it: worker processes, the device and
    how many GPUs, the data folder, the timeout that overrides every job's (None: each
    job's own), torch threads a job, whether failed jobs are retried, the executor (None:
    a local one), the memory cap a job (MB; None: no cap) and what a local executor's fork
    server imports once for this suite (its plug-ins' ``preload``, its data sets' loaders)."""
    workers: int
    device: str
    n_gpu: int
    data_dir: str | None
    timeout: float | None
    threads: int
    retry: bool
    executor: Executor | None
    mem_limit: float | None
    preload: tuple = ()


def _run(suite, train_jobs, out_dir, o: RunOptions) -> dict:
    """Run ``train_jobs`` (the jobs that make networks: training and import) and what
    follows them."""
    workers, device, n_gpu, data_dir, timeout, threads, mem_limit = (o.workers, o.device, o.n_gpu, o.data_dir,
                                                                     o.timeout, o.threads, o.mem_limit)
    store = Store(out_dir)
    skip = RETRYABLE if o.retry else ()
    done = store.done_keys(skip)
    n_verify_each = sum(len(list(e.combos())) * len(e.queries or suite.queries) for e in suite.verify)
    skipped_train = sum(1 for j in train_jobs if j.key in done)
    prog = Progress(len(train_jobs) * (1 + n_verify_each), skipped_train)  # refined as networks appear
    ex = o.executor or LocalExecutor(workers, gpus=n_gpu, preload=o.preload)
    how = {"workers": workers, "threads": threads, "mem_limit_mb": mem_limit, "device": device, "gpus": n_gpu,
           **ex.describe()}
    log.info("suite %s: %d networks to train or read (%d already done), up to %d verify jobs; %s executor, "
             "%d worker(s) of %d thread(s)%s, device %s, out %s", suite.name, len(train_jobs), skipped_train,
             len(train_jobs) * n_verify_each, how["executor"], how["workers"], threads,
             "" if mem_limit is None else f" and {mem_limit:g} MB", device, out_dir)
    from .provenance import collect
    run_id = store.start_run(suite.name, collect(**how))

    def budget(t: float) -> Budget:
        return Budget(timeout or t, device, threads, mem_limit)  # "cuda" becomes a free "cuda:k" at dispatch

    def verify_tasks(job_key: str) -> list[Task]:
        """The verification tasks of the network that train job ``job_key`` made (none if it
        failed); what the driver can answer itself (not installed, unsupported) is stored
        here and now.  Refines the progress total from the estimate to this network's count."""
        n = store.network_by_job(job_key)
        if n is None:
            prog.total -= n_verify_each
            return []
        jobs = _unique(suite.verify_jobs(dict(n)))
        prog.total += len(jobs) - n_verify_each
        todo = [j for j in jobs if j.key not in done]
        prog.done += len(jobs) - len(todo)
        walked = _walked(n["path"]) if todo else None
        tasks = []
        for j in todo:
            out = precheck(j, walked)
            if out is None:
                tasks.append(Task(j, budget(j.timeout), j.label))
            else:
                store.record(j, out)
                prog.done += 1
        return tasks

    def record(t: Task, out: Outcome):
        store.record(t.job, out)
        prog.finish(t, out)
        if isinstance(t.job, MAKERS):  # its network's verification runs next
            return verify_tasks(t.job.key)
        return None

    # 1, 2. training, and the verification of each network as soon as it exists (those
    # trained by an earlier run first)
    tasks = [t for j in train_jobs if j.key in done for t in verify_tasks(j.key)]
    tasks += [Task(j, budget(j.timeout), j.label) for j in train_jobs if j.key not in done]
    try:
        ex.run(tasks, prog.start, record)
        nets = [store.network_by_job(j.key) for j in train_jobs]
        nets = [dict(n) for n in nets if n is not None]
        # 3. audit (before certification, so that no unsound bound certifies anything)
        flagged = audit(store)

        # 4. certified accuracy of every network from its bounds (if the suite asks for it)
        tasks = [Task(j, budget(j.timeout), j.label) for j in _certify_jobs(suite, store, nets, data_dir, skip)]
        prog.total += len(tasks)
        ex.run(tasks, prog.start, record)
        summary = _summary(store, nets, train_jobs, flagged, prog)
        store.finish_run(run_id, summary)
        return summary
    finally:
        getattr(ex, "close", lambda: None)()
        store.close()


def _certify_jobs(suite, store, nets: list, data_dir, skip) -> list:
    """The certification jobs still to run: one per network, from its stored bounds (none
    when the suite does not certify); a job whose rows changed (a retried bound) has a new
    key and runs again."""
    done = store.done_keys(skip)
    by_net: dict[str, list] = {}
    for r in store.results():
        by_net.setdefault(r["network"], []).append(dict(r))
    jobs = [suite.certify_job(n, by_net.get(n["id"], []), data_dir) for n in nets]
    return [j for j in jobs if j is not None and j.key not in done]


def _summary(store, nets: list, train_jobs: list, flagged: list, prog) -> dict:
    """The run's summary, logged: the store's unsound rows and errors (this run's and every
    earlier run's: the store's state) and this run's new unsound rows."""
    unsound = store.unsound()
    errors = [j for j in store.jobs() if j["status"] == "error"]
    summary = {"networks": len(nets), "train_jobs": len(train_jobs), "results": len(store.results()),
               "unsound": len(unsound), "unsound_new": len(flagged), "errors": len(errors),
               "wall_s": time.perf_counter() - prog.t0}
    prog.close()
    log.info("done: %d networks, %d results, %d unsound (%d new in this run), %d error(s)%s, %.1fs",
             summary["networks"], summary["results"], summary["unsound"], summary["unsound_new"],
             summary["errors"], " (python -m bench show --errors --out ... shows why)" if errors else "",
             summary["wall_s"])
    return summary
