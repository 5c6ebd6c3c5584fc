"""The local executor: one fresh worker process per job, forked from a server that has
torch and the plug-ins preloaded; at most ``workers`` at once.

A fresh process per job gives a hard timeout (the process is killed, the job recorded as
``timeout``, the run goes on), honest peak-memory numbers (nothing left over from an
earlier job) and isolation from crashes (a dead worker is recorded as ``oom`` when the
kernel's OOM killer took it, else ``error``).
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Callable, Iterable

from ..api import Bound, Budget, Query, Unsupported
from .. import worker

log = logging.getLogger(__name__)
GRACE_S = 2.0  # beyond the timeout before the hard kill (verifiers stop themselves first)
_ctx = None


def context():
    global _ctx
    if _ctx is None:
        if "forkserver" in mp.get_all_start_methods():
            _ctx = mp.get_context("forkserver")
            _ctx.set_forkserver_preload(["bench._preload"])
        else:  # pragma: no cover - not Linux
            _ctx = mp.get_context("spawn")
    return _ctx


@dataclass
class Task:
    key: str
    spec: dict
    budget: Budget
    label: str = ""
    # filled in while running
    proc: object = None
    conn: object = None
    started: float = 0.0
    result: dict | None = field(default=None)


class LocalExecutor:
    """At most ``workers`` jobs at once; with ``gpus`` > 0, a job whose budget names
    device "cuda" gets a GPU of its own ("cuda:k") for as long as it runs."""

    def __init__(self, workers: int = 1, gpus: int = 0):
        self.workers = max(1, int(workers))
        self.gpus = int(gpus)

    def run(self, tasks: Iterable[Task], on_start: Callable[[Task], None] | None = None,
            on_done: Callable[[Task, dict], None] | None = None) -> None:
        """Run every task; ``on_done(task, outcome)`` is called in this process as each
        one finishes (the scheduler writes the store there)."""
        pending = list(tasks)[::-1]
        running: list[Task] = []
        ctx = context()
        free_gpus = list(range(self.gpus))
        try:
            while pending or running:
                while pending and len(running) < self.workers:
                    if pending[-1].budget.device == "cuda" and self.gpus:
                        if not free_gpus:
                            break
                        k = free_gpus.pop(0)
                        pending[-1].budget = Budget(pending[-1].budget.timeout_s, f"cuda:{k}",
                                                    pending[-1].budget.threads)
                    t = pending.pop()
                    recv, send = ctx.Pipe(duplex=False)
                    t.proc = ctx.Process(target=worker.child_main, args=(send, t.spec, t.budget), daemon=True)
                    t.started = time.perf_counter()
                    t.proc.start()
                    send.close()
                    t.conn = recv
                    running.append(t)
                    if on_start:
                        on_start(t)
                now = time.perf_counter()
                limits = [t.started + t.budget.timeout_s + GRACE_S - now for t in running
                          if t.budget.timeout_s is not None]
                wait([t.conn for t in running] + [t.proc.sentinel for t in running],
                     timeout=max(0.0, min(limits)) if limits else None)
                for t in list(running):
                    out = self._poll(t)
                    if out is not None:
                        if t.budget.device.startswith("cuda:") and self.gpus:
                            free_gpus.append(int(t.budget.device.split(":")[1]))
                        out.setdefault("kind", t.spec.get("kind", "upper"))
                        out.setdefault("device", t.budget.device)
                        running.remove(t)
                        t.result = out
                        if on_done:
                            on_done(t, out)
        finally:
            for t in running:  # interrupted: leave nothing behind
                if t.proc.is_alive():
                    t.proc.kill()
                t.proc.join()

    def _poll(self, t: Task) -> dict | None:
        elapsed = time.perf_counter() - t.started
        if t.conn.poll():
            try:
                out = t.conn.recv()
            except EOFError:
                out = None
            if out is not None:
                t.proc.join(5)
                if t.proc.is_alive():
                    t.proc.kill()
                    t.proc.join()
                return out
        if not t.proc.is_alive():
            t.proc.join()
            code = t.proc.exitcode
            if code == -signal.SIGKILL:
                return {"status": "oom", "wall_s": elapsed,
                        "error": "worker killed by SIGKILL (most likely the kernel's out-of-memory killer)"}
            return {"status": "error", "wall_s": elapsed,
                    "error": f"worker exited with code {code} without a result"}
        if t.budget.timeout_s is not None and elapsed > t.budget.timeout_s + GRACE_S:
            t.proc.kill()
            t.proc.join()
            return {"status": "timeout", "wall_s": elapsed,
                    "error": f"killed after {elapsed:.1f} s (timeout {t.budget.timeout_s:g} s)"}
        return None


class _main_not_reimported:
    """multiprocessing re-imports a script's ``__main__`` in every worker, which runs the
    caller's top-level code again (a script calling ``bench.verify(..., timeout=...)``
    without an ``if __name__ == "__main__"`` guard would recurse).  While the API's worker
    starts, make ``__main__`` look like a module that is never re-imported; plug-ins must
    then live in importable modules, not in the script itself."""

    def __enter__(self):
        import sys
        import types
        self.main = sys.modules.get("__main__")
        self.spec = getattr(self.main, "__spec__", None)
        if self.main is not None and self.spec is None:
            self.main.__spec__ = types.SimpleNamespace(name="__main__")
        return self

    def __exit__(self, *exc):
        if self.main is not None and self.spec is None:
            self.main.__spec__ = None
        return False


def run_one(net, verifier: str, query: Query, input_shape, timeout, device, threads, params) -> Bound:
    """The Python API's path: verify one in-memory network, in-process without a timeout,
    in a worker process that is killed at the timeout otherwise."""
    import tempfile
    from .. import network as netmod
    from ..registry import get_verifier
    cls = get_verifier(verifier)
    cls.resolve_params(params)  # a bad parameter is the caller's error: raise it here
    try:
        walked = netmod.walk(net, input_shape)
    except Unsupported as e:
        return Bound(None, cls.kind, "unsupported", error=str(e))
    spec = {"type": "verify", "verifier": verifier, "params": params, "query": query.key(), "kind": cls.kind}
    budget = Budget(timeout, device, threads)
    if timeout is None:
        out = worker.execute(spec, budget, net_module=(net, walked.input_shape))
    else:
        with tempfile.TemporaryDirectory() as d:
            spec["net_path"] = os.path.join(d, "net.pt")
            netmod.save(net, walked.input_shape, spec["net_path"])
            mods = {type(m).__module__ for m in net.modules()} | {cls.__module__}
            spec["plugins"] = sorted(m for m in mods if m != "__main__" and not m.startswith("torch."))
            done: list[dict] = []
            with _main_not_reimported():
                LocalExecutor(1).run([Task("api", spec, budget)], on_done=lambda t, o: done.append(o))
            out = done[0]
    return Bound(out.get("value"), out.get("kind", cls.kind), out["status"], out.get("wall_s"), out.get("cpu_s"),
                 out.get("peak_mem_mb"), out.get("device", device), out.get("stats", {}), out.get("error"))
