"""Runs one job (train, verify or certify) and measures it: wall and CPU seconds, the
plug-in's own seconds (``solve_s``: around its ``run`` or ``train`` call, CUDA
synchronised), peak memory, device, threads; a memory cap (``Budget.mem_mb``) is enforced
here, in the worker, as an address-space limit above what the worker already holds.  An executor calls :func:`execute` in a worker process (the local one: a
fresh process per job) or in-process (the API without a timeout).  Every outcome is an
:class:`bench.jobs.Outcome` with a status from the closed vocabulary."""
from __future__ import annotations

import logging
import os
import platform
import resource
import time
import traceback

import numpy as np
import torch

from . import network as netmod
from .api import KINDS, STATUSES, Bound, Budget, Unsupported, UserError
from .jobs import CertifyJob, ImportJob, Job, Outcome, TrainedNetwork, TrainJob, VerifyJob
from .registry import get_trainer, get_verifier, import_plugin, load_plugins
from .training import measure_accuracy

log = logging.getLogger(__name__)


def versions(plugin=None) -> dict:
    from ._version import __version__
    v = {"lipbench": __version__, "torch": torch.__version__, "numpy": np.__version__,
         "python": platform.python_version()}
    if plugin is not None:
        v["plugin"] = f"{plugin.name}=={plugin.version}"
    return v


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # pragma: no cover - not Linux
        return float("nan")


def _maxrss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if platform.system() != "Darwin" else r / 2**20


def _cpu_s() -> float:
    a = resource.getrusage(resource.RUSAGE_SELF)
    b = resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but torch sees no CUDA device")
    return device


def execute(job: Job, budget: Budget, net_module=None) -> Outcome:
    """Run one job; never raises for a job's own failure (it becomes the status)."""
    from threadpoolctl import threadpool_limits
    torch.set_num_threads(max(1, budget.threads))
    base_mem = _rss_mb()
    t0, c0 = time.perf_counter(), _cpu_s()
    dev = "cpu"
    out: Outcome
    try:
        for mod in job.plugins:
            import_plugin(mod)
        load_plugins()
        dev = resolve_device(budget.device)
        if dev == "cuda":   # the API has no scheduler handing out GPUs: the current one
            dev = f"cuda:{torch.cuda.current_device()}"
        budget = Budget(budget.timeout_s, dev, budget.threads, budget.mem_mb)
        if dev.startswith("cuda"):
            torch.cuda.set_device(torch.device(dev))
            torch.cuda.reset_peak_memory_stats(dev)
        # BLAS: one thread (faster than two here for eigendecompositions); torch: budget.threads
        with threadpool_limits(limits=1, user_api="blas"):
            if isinstance(job, TrainJob):
                out = _train(job, budget)
            elif isinstance(job, ImportJob):
                out = _import(job)
            elif isinstance(job, CertifyJob):
                out = _certify(job)
            else:
                out = _verify(job, budget, net_module)
    except MemoryError:
        out = Outcome("oom", job.kind, error=_oom_message("MemoryError", budget))
    except torch.cuda.OutOfMemoryError as e:
        out = Outcome("oom", job.kind, error=f"CUDA out of memory: {str(e).splitlines()[0]}")
    except (UserError, Unsupported) as e:
        out = Outcome("unsupported" if isinstance(e, Unsupported) else "error", job.kind, error=str(e))
    except Exception as e:  # the job failed; record why and go on
        if isinstance(e, RuntimeError) and "can't allocate memory" in str(e):   # torch's CPU allocator
            out = Outcome("oom", job.kind, error=_oom_message(str(e).splitlines()[0][-200:], budget))
        else:
            log.debug("job failed:\n%s", traceback.format_exc())
            out = Outcome("error", job.kind, error=f"{type(e).__name__}: {e}".splitlines()[0][:2000],
                          traceback=traceback.format_exc()[-4000:])
    stats = {**out.stats, "base_mem_mb": base_mem}
    if dev.startswith("cuda"):
        stats["gpu_peak_mem_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return out.with_(wall_s=time.perf_counter() - t0, cpu_s=_cpu_s() - c0,
                     peak_mem_mb=max(_maxrss_mb(), _rss_mb()), stats=stats, device=dev, threads=budget.threads)


def _oom_message(what: str, budget: Budget) -> str:
    if budget.mem_mb is not None:
        return f"{what}: the job went over its memory cap of {budget.mem_mb:g} MB (--mem-limit)"
    return f"{what}: out of host memory"


def _clock(dev: str) -> float:
    """perf_counter after the device's queued work is done (the plug-in's time, honestly)."""
    if dev.startswith("cuda"):
        torch.cuda.synchronize(dev)
    return time.perf_counter()


def cap_memory(mem_mb: float | None) -> None:
    """Limit this process's address space to what it holds now plus ``mem_mb``: an
    allocation beyond it fails (MemoryError, or torch's "can't allocate memory"), which
    the worker records as ``oom``."""
    if mem_mb is None:
        return
    with open("/proc/self/statm") as f:
        vm = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = vm + int(mem_mb * 2**20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _train(job: TrainJob, budget: Budget) -> Outcome:
    from .data import load as load_data
    cls = get_trainer(job.trainer)
    missing = cls.missing()
    if missing:
        return Outcome("not_installed", error=f"needs {', '.join(missing)}", versions=versions(cls))
    torch.manual_seed(job.seed)
    np.random.seed(job.seed)
    ds = load_data(job.dataset, job.data_dir)
    trainer = cls(**job.params)
    t = _clock(budget.device)
    module, metrics = trainer.train(ds, job.arch, job.seed, budget)
    solve_s = _clock(budget.device) - t
    module = module.cpu().eval()
    net = netmod.walk(module, ds.input_shape)
    module = net.module   # what was read: a module of code is stored as its traced tree (its hash is the tree's)
    measure_accuracy(module, ds, metrics)
    metrics.setdefault("data", ds.note or ds.name)
    metrics.update(_described(net))
    netmod.save(module, ds.input_shape, job.out_path)
    trained = TrainedNetwork(net.hash(), job.out_path, tuple(ds.input_shape), net.describe(), metrics)
    return Outcome("ok", network=trained, versions=versions(cls), solve_s=solve_s)


def _described(net) -> dict:
    """What the store keeps of a walked network beside its accuracy: its activations (and
    the norms they saturate) and its size (parameters, for the report)."""
    return {"activations": [{"name": a.name, "saturates": [str(p) for p in a.saturates]} for a in net.activations],
            "parameters": netmod.parameter_count(net.module)}


def _import(job: ImportJob) -> Outcome:
    """Read a network from its source (checked where it is read), walk it, measure its
    clean accuracy on its data set (if it names one), and save what was read."""
    from . import sources
    t = time.perf_counter()
    module, shape = sources.read(job.snapshot or job.source, job.input_shape)
    now = netmod.net_hash(module) if job.snapshot else sources.fingerprint(job.source, job.input_shape, module)
    if job.source_hash != now:
        return Outcome("error", error=f"{job.source} changed after the run started (its content hash is no longer "
                                      f"{job.source_hash}; a function that builds a network must build the same one "
                                      f"each time: seed it)", versions=versions())
    net = netmod.walk(module, shape)
    module = net.module
    metrics = {"source": job.source, **_described(net)}
    if job.dataset is not None:
        from .data import load as load_data
        ds = load_data(job.dataset, job.data_dir)
        from .training import heldout_accuracy
        metrics["clean_acc"] = heldout_accuracy(module, net.input_shape, ds)
        metrics["data"] = ds.note or ds.name
    solve_s = time.perf_counter() - t
    netmod.save(module, net.input_shape, job.out_path)
    return Outcome("ok", network=TrainedNetwork(net.hash(), job.out_path, tuple(net.input_shape), net.describe(),
                                                metrics), versions=versions(), solve_s=solve_s)


def _certify(job: CertifyJob) -> Outcome:
    from .certify import certify_network
    from .data import load as load_data
    from .registry import VERIFIERS
    module, shape = netmod.load(job.net_path)
    ds = load_data(job.dataset, job.data_dir)
    t = time.perf_counter()
    rows = certify_network(module, ds, list(job.rows), job.eps, VERIFIERS, shape)
    return Outcome("ok", "lower", certified=tuple(rows), versions=versions(), solve_s=time.perf_counter() - t)


def _verify(job: VerifyJob, budget: Budget, net_module=None) -> Outcome:
    cls = get_verifier(job.verifier)
    vers = versions(cls)
    missing = cls.missing()
    if missing:
        return Outcome("not_installed", cls.kind, versions=vers, error=not_installed_reason(cls))
    if net_module is None:
        module, shape = netmod.load(job.net_path)
        if job.net_hash and netmod.net_hash(module) != job.net_hash:
            return Outcome("error", cls.kind, versions=vers, error=f"{job.net_path} does not hold the network of "
                           f"hash {job.net_hash} (it was changed after training)")
    else:
        module, shape = net_module
    verifier = cls(**job.params)
    net = netmod.walk(module.to(budget.device if budget.device != "auto" else "cpu"), shape)
    reason = verifier.refusal(net, job.query)
    if reason:
        return Outcome("unsupported", cls.kind, versions=vers, error=reason)
    t = _clock(budget.device)
    b: Bound = verifier.run(net, job.query, budget)
    solve_s = _clock(budget.device) - t
    if not isinstance(b, Bound):
        raise TypeError(f"verifier {cls.name} returned {type(b).__name__}, not a Bound")
    if b.status not in STATUSES or b.kind not in KINDS or b.status == "unsound":
        return Outcome("error", cls.kind, versions=vers, error=f"verifier {cls.name} answered status {b.status!r}, "
                       f"kind {b.kind!r}: not in the vocabulary (statuses {', '.join(STATUSES[:-1])}; kinds "
                       f"{', '.join(KINDS)}; unsound is the audit's)")
    if b.value is not None and not np.isfinite(b.value):
        return Outcome("error", cls.kind, versions=vers, stats=b.stats,
                       error=f"verifier returned a non-finite value {b.value}")
    if b.status == "ok" and (b.value is None or b.value < 0):
        return Outcome("error", cls.kind, versions=vers, stats=b.stats,
                       error=f"verifier said ok with value {b.value!r}: a Lipschitz bound is a number >= 0")
    return Outcome(b.status, b.kind, b.value, b.stats, b.error, versions=vers, solve_s=solve_s)


def not_installed_reason(cls) -> str:
    return (f"{cls.name} needs the Python package(s) {', '.join(cls.missing())}"
            + (f"; {cls.install_hint}" if getattr(cls, "install_hint", "") else ""))


def _watchdog(budget: Budget, grace: float) -> None:
    """Second line of defence: leave if the process that forked us is gone (the scheduler
    was killed) or long after the timeout (should the scheduler's kill never come)."""
    import threading

    parent, t0 = os.getppid(), time.monotonic()
    limit = None if budget.timeout_s is None else budget.timeout_s + 3 * grace

    def watch():
        while True:
            time.sleep(0.5)
            if os.getppid() != parent or (limit is not None and time.monotonic() - t0 > limit):
                os._exit(137)

    threading.Thread(target=watch, daemon=True, name="lipbench-watchdog").start()


#: the first message of a worker: imported and about to run its job
READY = "ready"


def child_main(conn, job: Job, budget: Budget, grace: float = 2.0) -> None:
    """Entry point of a worker process: say it is ready (its imports done: the executor's
    clock for the job starts then), run the job, send the outcome, exit."""
    conn.send(READY)
    _watchdog(budget, grace)
    try:
        cap_memory(budget.mem_mb)
        out = execute(job, budget)
    except BaseException as e:  # pragma: no cover - last resort, keep the pipe protocol
        out = Outcome("error", job.kind, error=f"{type(e).__name__}: {e}")
    conn.send(out)
    conn.close()
