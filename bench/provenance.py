"""Where a run ran: the machine (CPU model, cores, memory, GPUs and driver), the software
(python, torch, numpy, cvxpy, SCS, Clarabel, HiGHS, Gurobi, auto_LiRPA, lipbench and the
project's git commit, with whether the tree had uncommitted changes), and how it ran
(executor, workers, threads per job, memory cap).  The scheduler stores one record per
run (``Store.record_run``); the report prints the latest on its first page."""
from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata

PACKAGES = ("torch", "numpy", "scipy", "cvxpy", "scs", "clarabel", "highspy", "gurobipy", "auto_LiRPA",
            "eclipse-nn", "ray")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError):
        pass
    return None


def _gpus() -> list[dict]:
    try:
        import torch
        if not torch.cuda.is_available():
            return []
        out = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out.append({"name": p.name, "memory_gb": round(p.total_memory / 2**30, 1)})
        drv = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        if drv.returncode == 0 and drv.stdout.strip():
            for g in out:
                g["driver"] = drv.stdout.split()[0]
        return out
    except Exception:   # no driver, no nvidia-smi: what torch said is enough
        return []


def _git(root: str) -> dict:
    def run(*args):
        r = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=10)
        return r.stdout.strip() if r.returncode == 0 else None
    try:
        commit = run("rev-parse", "HEAD")
        if commit is None:
            return {}
        dirty = run("status", "--porcelain", "--untracked-files=no")
        return {"commit": commit, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {}


def versions() -> dict:
    """The versions every job records (:func:`bench.worker.versions`) and those of the
    packages lipbench's plug-ins use (absent ones left out)."""
    from .worker import versions as job_versions
    v = job_versions()
    for p in PACKAGES:
        try:
            v[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return v


def collect(**how) -> dict:
    """This machine, this software, and ``how`` (executor, workers, threads, ...)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {"machine": {"host": platform.node(), "os": platform.platform(), "cpu": _cpu_model(),
                       "cores": os.cpu_count(), "memory_gb": _memory_gb(), "gpus": _gpus()},
            "versions": versions(), "git": _git(root), "run": how}


def summary(p: dict) -> str:
    """One or two lines for a report's first page."""
    m, v, g, r = p.get("machine", {}), p.get("versions", {}), p.get("git", {}), p.get("run", {})
    gpus = ", ".join(f"{x['name']}" + (f" (driver {x['driver']})" if x.get("driver") else "") for x in m.get("gpus", []))
    soft = ", ".join(f"{k} {v[k]}" for k in ("lipbench", "python", "torch", "cvxpy", "scs", "highspy", "gurobipy")
                     if k in v)
    code = f"; git {g['commit'][:10]}{' (uncommitted changes)' if g.get('dirty') else ''}" if g.get("commit") else ""
    how = ", ".join(f"{k} {r[k]}" for k in ("executor", "workers", "threads", "mem_limit_mb", "device") if r.get(k) is not None)
    return (f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('memory_gb', '?')} GB"
            f"{'; ' + gpus if gpus else '; no GPU'}\n{soft}{code}\n{how}")
