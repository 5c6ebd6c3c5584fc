"""Runs one job (train or verify) and measures it: wall and CPU seconds, peak memory,
device.  The executor calls :func:`execute` in a fresh worker process per job; the API
calls it in-process.  Every outcome is a plain dict (JSON-able) with a closed status."""
from __future__ import annotations

import importlib
import logging
import os
import platform
import resource
import time
import traceback

import numpy as np
import torch

from . import network as netmod
from .api import Bound, Budget, Query, Unsupported, UserError
from .registry import get_trainer, get_verifier, load_plugins

log = logging.getLogger(__name__)


def versions(plugin=None) -> dict:
    from . import __version__
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


def execute(spec: dict, budget: Budget, net_module=None) -> dict:
    """Run one job; never raises for a job's own failure (it becomes the status)."""
    from threadpoolctl import threadpool_limits
    torch.set_num_threads(max(1, budget.threads))
    base_mem = _rss_mb()
    t0, c0 = time.perf_counter(), _cpu_s()
    dev = "cpu"
    out: dict
    try:
        for mod in spec.get("plugins", []):
            importlib.import_module(mod)
        load_plugins()
        dev = resolve_device(budget.device)
        if dev == "cuda":   # the API has no scheduler handing out GPUs: the current one
            dev = f"cuda:{torch.cuda.current_device()}"
        budget = Budget(budget.timeout_s, dev, budget.threads)
        if dev.startswith("cuda"):
            torch.cuda.set_device(torch.device(dev))
            torch.cuda.reset_peak_memory_stats(dev)
        # BLAS: one thread (faster than two here for eigendecompositions); torch: budget.threads
        with threadpool_limits(limits=1, user_api="blas"):
            if spec["type"] == "train":
                out = _train(spec, budget)
            elif spec["type"] == "certify":
                out = _certify(spec)
            else:
                out = _verify(spec, budget, net_module)
    except MemoryError:
        out = {"status": "oom", "error": "MemoryError: out of host memory"}
    except torch.cuda.OutOfMemoryError as e:
        out = {"status": "oom", "error": f"CUDA out of memory: {str(e).splitlines()[0]}"}
    except (UserError, Unsupported) as e:
        out = {"status": "unsupported" if isinstance(e, Unsupported) else "error", "error": str(e)}
    except Exception as e:  # the job failed; record why and go on
        log.debug("job failed:\n%s", traceback.format_exc())
        out = {"status": "error", "error": f"{type(e).__name__}: {e}".splitlines()[0][:2000],
               "traceback": traceback.format_exc()[-4000:]}
    out.setdefault("kind", spec.get("kind", "upper"))
    out["wall_s"] = time.perf_counter() - t0
    out["cpu_s"] = _cpu_s() - c0
    out["peak_mem_mb"] = max(_maxrss_mb(), _rss_mb())
    out.setdefault("stats", {})["base_mem_mb"] = base_mem
    if dev.startswith("cuda"):
        out["stats"]["gpu_peak_mem_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    out["device"] = dev
    return out


def _train(spec: dict, budget: Budget) -> dict:
    from .data import load as load_data
    cls = get_trainer(spec["trainer"])
    missing = cls.missing()
    if missing:
        return {"status": "not_installed", "error": f"needs {', '.join(missing)}", "versions": versions(cls)}
    torch.manual_seed(spec["seed"])
    np.random.seed(spec["seed"])
    ds = load_data(spec["dataset"], spec.get("data_dir"))
    trainer = cls(**spec["params"])
    module, metrics = trainer.train(ds, spec["arch"], spec["seed"], budget)
    module = module.cpu().eval()
    net = netmod.walk(module, ds.input_shape)
    metrics["activations"] = [{"name": a.name, "saturates": [str(p) for p in a.saturates]}
                              for a in net.activations]
    netmod.save(module, ds.input_shape, spec["out_path"])
    return {"status": "ok", "metrics": metrics, "net_hash": net.hash(), "path": spec["out_path"],
            "input_shape": list(ds.input_shape), "description": net.describe(), "versions": versions(cls)}


def _certify(spec: dict) -> dict:
    from .certify import certify_network
    from .data import load as load_data
    from .registry import VERIFIERS
    module, _shape = netmod.load(spec["net_path"])
    ds = load_data(spec["dataset"], spec.get("data_dir"))
    rows = certify_network(module, ds, spec["rows"], spec["eps"], VERIFIERS)
    return {"status": "ok", "kind": "lower", "certified": rows, "versions": versions()}


def _verify(spec: dict, budget: Budget, net_module=None) -> dict:
    cls = get_verifier(spec["verifier"])
    res = {"kind": cls.kind, "versions": versions(cls)}
    missing = cls.missing()
    if missing:
        return {**res, "status": "not_installed",
                "error": f"{cls.name} needs the Python package(s) {', '.join(missing)}"
                         + (f"; {cls.install_hint}" if getattr(cls, "install_hint", "") else "")}
    if net_module is None:
        module, shape = netmod.load(spec["net_path"])
        if spec.get("net_hash") and netmod.net_hash(module) != spec["net_hash"]:
            return {**res, "status": "error", "error": f"{spec['net_path']} does not hold the network of hash "
                    f"{spec['net_hash']} (it was changed after training)"}
    else:
        module, shape = net_module
    query = Query(**spec["query"]) if isinstance(spec["query"], dict) else spec["query"]
    verifier = cls(**spec["params"])
    net = netmod.walk(module.to(budget.device if budget.device != "auto" else "cpu"), shape)
    reason = verifier.supports(net, query)
    if reason:
        return {**res, "status": "unsupported", "error": reason}
    b: Bound = verifier.run(net, query, budget)
    if not isinstance(b, Bound):
        raise TypeError(f"verifier {cls.name} returned {type(b).__name__}, not a Bound")
    if b.value is not None and not np.isfinite(b.value):
        return {**res, "status": "error", "error": f"verifier returned a non-finite value {b.value}",
                "stats": b.stats}
    return {**res, "status": b.status, "kind": b.kind, "value": b.value, "stats": b.stats, "error": b.error}


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


def child_main(conn, spec: dict, budget: Budget, grace: float = 2.0) -> None:
    """Entry point of a worker process: run the job, send the outcome, exit."""
    _watchdog(budget, grace)
    try:
        out = execute(spec, budget)
    except BaseException as e:  # pragma: no cover - last resort, keep the pipe protocol
        out = {"status": "error", "error": f"{type(e).__name__}: {e}"}
    conn.send(out)
    conn.close()
