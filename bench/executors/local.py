"""The local executor: one fresh worker process per job, forked from a server that has
torch and the plug-ins preloaded (a CUDA job: a fresh interpreter, see :func:`context`);
at most ``workers`` at once.

A fresh process per job gives a hard timeout (the process is killed, the job recorded as
``timeout`` with the peak memory it had reached, the run goes on), honest peak-memory
numbers (nothing left over from an earlier job) and isolation from crashes.  A worker
killed by SIGKILL is recorded as ``oom`` only with evidence that the kernel's OOM killer
took it (its ``oom_kill`` counter, :func:`oom_kills`, went up meanwhile), else as
``error`` naming the signal.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import time
from dataclasses import replace
from multiprocessing.connection import wait
from typing import Iterable

from ..jobs import Outcome
from .. import worker
from .base import OnDone, OnStart, Task

log = logging.getLogger(__name__)
GRACE_S = 2.0  # beyond the timeout before the hard kill (verifiers stop themselves first)
_ctx = None
_preload: set[str] = set()   # what the fork server imports besides bench._preload (see context)


def context(device: str = "cpu", preload: Iterable[str] = ()):
    """The multiprocessing context a job on ``device`` starts in: the fork server (torch
    and the plug-ins preloaded) for CPU jobs; a fresh interpreter ("spawn", seconds of
    imports, which a job's clock does not count: it starts when the worker says it is
    ready) for CUDA jobs and for "auto" where a GPU is present.  CUDA does not survive a
    fork of a process that has initialised its driver: on an H200 (torch 2.11) every CUDA
    job forked from the fork server failed at its first CUDA call with "CUDA error:
    initialization error"; a fork after each step of the preload showed its torch.func
    warm-up to be what initialises the driver.  ``preload``: modules the fork server
    imports after ``bench._preload`` (what the run's plug-ins declare); they count only
    until the fork server has started, which happens once per process."""
    global _ctx
    if device.startswith("cuda") or (device == "auto" and _has_gpu()):
        return mp.get_context("spawn")
    if _ctx is None:
        if "forkserver" in mp.get_all_start_methods():
            _ctx = mp.get_context("forkserver")
        else:  # pragma: no cover - not Linux
            _ctx = mp.get_context("spawn")
    if _ctx.get_start_method() == "forkserver":   # (a list to import when it starts; cheap)
        _preload.update(preload)
        _ctx.set_forkserver_preload(["bench._preload", *sorted(_preload)])
    return _ctx


def _has_gpu() -> bool:
    import torch
    return torch.cuda.is_available()


def oom_kills() -> int | None:
    """The kernel's count of OOM kills: this cgroup's (v2 ``memory.events``, v1
    ``memory.oom_control``), else the machine's (``/proc/vmstat``); None where none is
    readable."""
    for path in ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control", "/proc/vmstat"):
        try:
            with open(path) as f:
                for line in f:
                    k, _, v = line.partition(" ")
                    if k == "oom_kill":
                        return int(v)
        except (OSError, ValueError):
            continue
    return None


def _peak_rss_mb(pid: int) -> float | None:
    """A live process's peak resident memory (VmHWM), read before it is killed."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class _Running:
    def __init__(self, task: Task, proc, conn):
        self.task, self.proc, self.conn, self.started = task, proc, conn, time.perf_counter()
        self.oom_kills = oom_kills()


class LocalExecutor:
    """At most ``workers`` jobs at once; with ``gpus`` > 0, a job whose budget names
    device "cuda" gets a GPU of its own ("cuda:k") for as long as it runs."""

    def __init__(self, workers: int = 1, gpus: int = 0, preload: Iterable[str] = ()):
        self.workers = max(1, int(workers))
        self.gpus = int(gpus)
        self.preload = tuple(preload)   # modules the fork server imports once (registry.preloads)

    def describe(self) -> dict:
        import os
        return {"executor": "local", "workers": self.workers, "gpus": self.gpus, "cpus": os.cpu_count()}

    def run(self, tasks: Iterable[Task], on_start: OnStart | None = None, on_done: OnDone | None = None) -> None:
        """Run every task; ``on_done(task, outcome)`` is called in this process as each
        one finishes (the scheduler writes the store there); the tasks it returns run next."""
        pending = list(tasks)[::-1]
        running: list[_Running] = []
        free_gpus = list(range(self.gpus))
        try:
            _main_not_reimported().__enter__()
            while pending or running:
                while pending and len(running) < self.workers:
                    if pending[-1].budget.device == "cuda" and self.gpus:
                        if not free_gpus:
                            break
                        pending[-1].budget = replace(pending[-1].budget, device=f"cuda:{free_gpus.pop(0)}")
                    t = pending.pop()
                    ctx = context(t.budget.device, self.preload)
                    recv, send = ctx.Pipe(duplex=False)
                    proc = ctx.Process(target=worker.child_main, args=(send, t.job, t.budget), daemon=True)
                    proc.start()   # the first one waits for the fork server's preload (seconds) ...
                    r = _Running(t, proc, recv)  # ... so the job's clock starts after it (again at READY)
                    send.close()
                    running.append(r)
                    if on_start:
                        on_start(t)
                now = time.perf_counter()
                limits = [r.started + r.task.budget.timeout_s + GRACE_S - now for r in running
                          if r.task.budget.timeout_s is not None]
                wait([r.conn for r in running] + [r.proc.sentinel for r in running],
                     timeout=max(0.0, min(limits)) if limits else None)
                for r in list(running):
                    out = self._poll(r)
                    if out is not None:
                        t = r.task
                        if t.budget.device.startswith("cuda:") and self.gpus:
                            free_gpus.append(int(t.budget.device.split(":")[1]))
                        if out.device is None:
                            out = out.with_(device=t.budget.device)
                        running.remove(r)
                        if on_done:  # the tasks it returns run next
                            pending.extend(list(on_done(t, out) or ())[::-1])
        finally:
            _main_not_reimported.restore()
            for r in running:  # interrupted: leave nothing behind
                if r.proc.is_alive():
                    r.proc.kill()
                r.proc.join()

    def _poll(self, r: _Running) -> Outcome | None:
        elapsed = time.perf_counter() - r.started
        kind = r.task.job.kind
        if r.conn.poll():
            try:
                out = r.conn.recv()
            except EOFError:
                out = None
            if out == worker.READY:  # imported (a spawned worker: seconds): the job's clock starts now
                r.started = time.perf_counter()
                return None
            if out is not None:
                r.proc.join(5)
                if r.proc.is_alive():
                    r.proc.kill()
                    r.proc.join()
                return out
        if not r.proc.is_alive():
            r.proc.join()
            code = r.proc.exitcode
            if code is not None and code < 0:
                sig = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
                now = oom_kills()
                if code == -signal.SIGKILL and now is not None and r.oom_kills is not None and now > r.oom_kills:
                    return Outcome("oom", kind, wall_s=elapsed, error=f"worker killed by the kernel's out-of-memory "
                                   f"killer (oom_kill count {r.oom_kills} -> {now})")
                return Outcome("error", kind, wall_s=elapsed, error=f"worker killed by signal {sig} without a result")
            return Outcome("error", kind, wall_s=elapsed, error=f"worker exited with code {code} without a result")
        timeout = r.task.budget.timeout_s
        if timeout is not None and elapsed > timeout + GRACE_S:
            peak = _peak_rss_mb(r.proc.pid)
            r.proc.kill()
            r.proc.join()
            return Outcome("timeout", kind, wall_s=elapsed, peak_mem_mb=peak, threads=r.task.budget.threads,
                           error=f"killed after {elapsed:.1f} s (timeout {timeout:g} s)")
        return None


class _main_not_reimported:
    """multiprocessing re-imports a script's ``__main__`` in every worker, which runs the
    caller's top-level code again (a script calling ``bench.verify(..., timeout=...)``
    without an ``if __name__ == "__main__"`` guard would recurse).  While workers start,
    make ``__main__`` look like a module that is never re-imported; plug-ins must then
    live in importable modules, not in the script itself."""
    _patched = None

    def __enter__(self):
        import sys
        import types
        main = sys.modules.get("__main__")
        if main is not None and getattr(main, "__spec__", None) is None:
            main.__spec__ = types.SimpleNamespace(name="__main__")
            _main_not_reimported._patched = main
        return self

    @staticmethod
    def restore():
        if _main_not_reimported._patched is not None:
            _main_not_reimported._patched.__spec__ = None
            _main_not_reimported._patched = None
