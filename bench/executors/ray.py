"""The Ray executor: each job a Ray task, on this machine's Ray instance or a cluster's
(``python -m bench run --executor ray [--address HOST:PORT]``).

Inside its Ray task a job runs exactly as with ``--executor local``: a
:class:`~bench.executors.local.LocalExecutor` of one worker forks a fresh process for it
from a fork server kept warm in that Ray worker, kills it at the timeout, and maps its
death to ``timeout`` / ``oom`` / ``error`` (peak memory included).  Ray itself has no
per-task timeout, so the driver holds a second deadline per task (the timeout plus
:data:`SLACK_S` for Ray's dispatch and a cold fork server): a task still unanswered then
is cancelled with ``ray.cancel(force=True)``, which kills its Ray worker even inside native
code, and recorded ``timeout``.  A Ray worker that dies (Ray's memory monitor, a lost
node) ends its job as ``oom`` / ``error``.  No task is retried by Ray: a crash is a result.

Resources: a job declares its torch threads as ``num_cpus`` and, on a GPU, ``num_gpus=1``
(Ray sets ``CUDA_VISIBLE_DEVICES``, so "cuda" in the task is that GPU).  The driver keeps
at most ``workers`` tasks in flight (default: as many as the cluster's CPUs hold), so a
task in flight is a task running, and its deadline is honest.

Networks travel through Ray's object store, so nodes need no shared folder: a training
task sends back the network file's bytes and the driver writes them into the results
folder (unless a shared folder already holds them); a verification or certification task
gets them as an argument and writes them to a node-local cache where the results folder
is not visible.  Data sets are read on the node, from the same ``--data-dir`` path.
Results are written by the driver alone, one transaction per job, as with the local
executor, so a killed driver resumes exactly.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from typing import Iterable

from ..api import UserError
from ..jobs import MAKERS, ImportJob, Outcome
from .base import OnDone, OnStart, Task
from .local import GRACE_S

log = logging.getLogger(__name__)
SLACK_S = 60.0  # beyond timeout + GRACE_S before the driver force-cancels a Ray task


def _ray():
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'lipbench[dist]' (or pip install ray)") from None
    return ray


def _node_path(path: str, blob: bytes | None) -> str:
    """Where this node reads a network (or a network's source file): ``path`` if it is
    there (a shared folder), else a node-local copy written from ``blob``, with the same
    file ending."""
    if blob is None or os.path.exists(path):
        return path
    import hashlib
    folder = os.path.join(tempfile.gettempdir(), "lipbench-networks")
    os.makedirs(folder, exist_ok=True)
    local = os.path.join(folder, hashlib.sha256(blob).hexdigest()[:24] + (os.path.splitext(path)[1] or ".pt"))
    if not os.path.exists(local):
        _write_atomic(local, blob)
    return local


def _write_atomic(path: str, blob: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".part-")
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
    os.replace(tmp, path)


def _reachable(address: str, seconds: float = 5.0) -> None:
    """A quick one-line error for a cluster address nothing listens on (Ray itself would
    retry for minutes)."""
    import socket
    host, _, port = address.rpartition(":")
    if address == "auto":
        return
    if not host or not port.isdigit():
        raise UserError(f"--address must be HOST:PORT (the Ray head's GCS port, 6379 by default), got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=seconds).close()
    except OSError as e:
        raise UserError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}; start it with "
                        f"`ray start --head --port {port}` on that machine") from None


def run_on_node(job, budget, blob: bytes | None):
    """The body of a Ray task: run ``job`` in a fresh worker process on this node; returns
    (outcome, the trained network's bytes or None)."""
    from .local import LocalExecutor
    out_file = None
    if isinstance(job, ImportJob) and job.snapshot:
        job = dataclasses.replace(job, snapshot=_node_path(job.snapshot, blob))
    elif isinstance(job, ImportJob):
        job = dataclasses.replace(job, source=_node_path(job.source, blob))
    if isinstance(job, MAKERS):
        try:
            os.makedirs(os.path.dirname(job.out_path) or ".", exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=os.path.dirname(job.out_path) or ".")
            probe.close()
        except OSError:   # the results folder is not writable here: train into a local one
            folder = tempfile.mkdtemp(prefix="lipbench-train-")
            job = dataclasses.replace(job, out_path=os.path.join(folder, os.path.basename(job.out_path)))
        out_file = job.out_path
    elif hasattr(job, "net_path"):
        job = dataclasses.replace(job, net_path=_node_path(job.net_path, blob))
    got: list[Outcome] = []
    LocalExecutor(1).run([Task(job, budget)], on_done=lambda t, o: got.append(o))
    out = got[0]
    data = None
    if out_file is not None and out.status == "ok" and out.network is not None:
        with open(out_file, "rb") as f:
            data = f.read()
    return out, data


class RayExecutor:
    """Runs tasks as Ray tasks on the Ray instance at ``address`` (None: a local one,
    started here with this machine's CPUs and stopped at :meth:`close`).  Where this
    process is already connected to Ray, that connection is used (and kept)."""

    def __init__(self, address: str | None = None, workers: int | None = None):
        self.address, self.workers = address, workers
        self._owns = False
        self._remote = None
        self._blobs: dict[str, object] = {}   # network path -> its bytes in the object store

    def _start(self):
        ray = _ray()
        if not ray.is_initialized():
            kw = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                      configure_logging=True)
            if self.address:
                _reachable(self.address)
            try:
                ray.init(address=self.address, **kw) if self.address else ray.init(**kw)
                self._owns = True   # shut down (a local instance) or disconnected (a cluster) at close
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = self.address or "a local Ray instance"
                raise UserError(f"cannot start or reach {where}: {str(e).splitlines()[0]}") from None
        if self._remote is None:
            self._remote = ray.remote(max_retries=0)(run_on_node)
            self._resources = ray.cluster_resources()
        return ray

    def describe(self) -> dict:
        ray = self._start()
        res = ray.cluster_resources()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        return {"executor": "ray", "address": self.address or "local", "workers": self.slots(),
                "cluster": {"nodes": len(nodes), "cpus": res.get("CPU", 0), "gpus": res.get("GPU", 0),
                            "memory_gb": round(res.get("memory", 0) / 2**30, 1), "ray": ray.__version__}}

    def gpus(self) -> int:
        self._start()
        return int(self._resources.get("GPU", 0))

    def slots(self, threads: int = 1) -> int:
        """Tasks in flight at once: ``workers``, else as many as the cluster's CPUs hold."""
        if self.workers:
            return self.workers
        self._start()
        return max(1, int(self._resources.get("CPU", 1) // max(1, threads)))

    def _blob(self, path: str):
        if path not in self._blobs:
            with open(path, "rb") as f:
                self._blobs[path] = self._start().put(f.read())
        return self._blobs[path]

    def _submit(self, t: Task):
        job = t.job
        if isinstance(job, MAKERS):   # paths the node can use whatever its working folder
            job = dataclasses.replace(job, out_path=os.path.abspath(job.out_path))
            read = (job.snapshot or job.source) if isinstance(job, ImportJob) else None
            blob = self._blob(read) if read and os.path.isfile(read) else None
        else:
            job = dataclasses.replace(job, net_path=os.path.abspath(job.net_path))
            blob = self._blob(job.net_path)
        opts = {"num_cpus": max(1, t.budget.threads)}
        if t.budget.device.startswith("cuda"):
            opts["num_gpus"] = 1
        return self._remote.options(**opts).remote(job, t.budget, blob)

    def run(self, tasks: Iterable[Task], on_start: OnStart | None = None, on_done: OnDone | None = None) -> None:
        ray = self._start()
        pending = list(tasks)[::-1]
        running: dict = {}   # ref -> (task, submitted at)
        try:
            while pending or running:
                while pending and len(running) < self.slots(pending[-1].budget.threads):
                    t = pending.pop()
                    running[self._submit(t)] = (t, time.perf_counter())
                    if on_start:
                        on_start(t)
                now = time.perf_counter()
                limits = [t0 + t.budget.timeout_s + GRACE_S + SLACK_S - now for t, t0 in running.values()
                          if t.budget.timeout_s is not None]
                ready, _ = ray.wait(list(running), num_returns=1,
                                    timeout=max(0.0, min(limits)) if limits else None)
                finished = [(ref, self._outcome(ray, ref, *running[ref])) for ref in ready]
                now = time.perf_counter()
                for ref, (t, t0) in list(running.items()):
                    if ref not in ready and t.budget.timeout_s is not None and \
                            now - t0 > t.budget.timeout_s + GRACE_S + SLACK_S:
                        ray.cancel(ref, force=True)
                        finished.append((ref, Outcome(
                            "timeout", t.job.kind, wall_s=now - t0, threads=t.budget.threads,
                            error=f"no answer from its Ray task {now - t0:.1f} s after dispatch (timeout "
                                  f"{t.budget.timeout_s:g} s); cancelled with force")))
                for ref, out in finished:
                    t, _ = running.pop(ref)
                    if on_done:
                        pending.extend(list(on_done(t, out) or ())[::-1])
        finally:
            for ref in running:   # interrupted: leave nothing behind
                ray.cancel(ref, force=True)

    def _outcome(self, ray, ref, t: Task, t0: float) -> Outcome:
        kind = t.job.kind
        try:
            out, data = ray.get(ref)
        except ray.exceptions.OutOfMemoryError as e:
            return Outcome("oom", kind, wall_s=time.perf_counter() - t0,
                           error=f"Ray's memory monitor killed the task: {str(e).splitlines()[0][:300]}")
        except ray.exceptions.RayError as e:
            return Outcome("error", kind, wall_s=time.perf_counter() - t0,
                           error=f"Ray task failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
        if data is not None and isinstance(t.job, MAKERS):   # the network, home
            path = t.job.out_path
            if not os.path.exists(path):
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                _write_atomic(path, data)
            out = out.with_(network=dataclasses.replace(out.network, path=path))
        return out

    def close(self) -> None:
        if self._owns:
            _ray().shutdown()
            self._owns = False
        self._remote = None
        self._blobs.clear()
