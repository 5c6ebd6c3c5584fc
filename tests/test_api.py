import math
import os

import pytest

import bench
import testplugins  # noqa: F401  (registers test-sleep)
from conftest import REPO
from helpers import SMOKE_FAST, TESTS, mlp


def test_verify_returns_a_bound_with_costs():
    b = bench.verify(mlp([4, 8, 3]), "trivial", p=2)
    assert b.kind == "upper" and b.status == "ok" and b.value > 0
    assert b.wall_s >= 0 and b.cpu_s >= 0 and b.peak_mem_mb > 0 and b.device == "cpu"
    assert len(b.stats["layers"]) == 3


def test_unknown_verifier_and_parameter_are_user_errors():
    with pytest.raises(bench.UserError, match="unknown verifier 'nope'; registered: .*trivial"):
        bench.verify(mlp([2, 2]), "nope")
    with pytest.raises(bench.UserError, match="unknown parameter 'smaples'"):
        bench.lower_bound(mlp([2, 2]), smaples=3)
    with pytest.raises(bench.UserError, match="1, 2, inf"):
        bench.verify(mlp([2, 2]), "trivial", p=3)


def test_pair_out_of_range_is_unsupported():
    b = bench.verify(mlp([2, 4, 3]), "trivial", p=2, target=(0, 5))
    assert b.status == "unsupported" and b.value is None and "out of range" in b.error


@pytest.mark.slow
def test_timeout_kills_a_worker_and_says_timeout():
    net = mlp([8, 64, 64, 4])
    b = bench.lower_bound(net, p=2, timeout=5.0, samples=10**9, batch=64)
    # lower honours its deadline itself (searching 75% of it), so it answers ok, in time
    assert b.status == "ok" and b.wall_s < 5.0 and b.value > 0 and b.stats["stopped_early"]
    hung = bench.verify(net, "test-sleep", p=2, timeout=1.0, seconds=30.0)
    assert hung.status == "timeout" and hung.value is None and 1.0 <= hung.wall_s < 6
    b2 = bench.verify(net, "trivial", p=math.inf, timeout=30)
    assert b2.status == "ok" and b2.value == pytest.approx(bench.verify(net, "trivial", p=math.inf).value)


@pytest.mark.slow
def test_a_gpu_job_s_fresh_interpreter_is_not_on_its_clock(monkeypatch):
    """CUDA jobs (and "auto" where a GPU is present) start in a fresh interpreter, not from
    the fork server (CUDA does not survive its fork); the seconds of imports there do not
    count against the job's timeout: its clock starts when the worker says it is ready.
    A GPU is faked for "auto" here, so the job takes that path and runs on the CPU."""
    import bench.executors.local as local
    monkeypatch.setattr(local, "_has_gpu", lambda: True)
    assert local.context("cuda").get_start_method() == local.context("auto").get_start_method() == "spawn"
    assert local.context("cpu").get_start_method() == "forkserver"
    b = bench.verify(mlp([8, 16, 4]), "test-sleep", p=2, timeout=1.5, seconds=1.4, device="auto")
    assert b.status == "unsupported" and "only sleeps" in b.error and b.device == "cpu", (b.status, b.error)
    # the protocol itself: a worker launched long ago that only now says READY is not late
    import multiprocessing as mp
    import time
    from types import SimpleNamespace
    from bench import worker
    from bench.api import Budget
    recv, send = mp.Pipe(duplex=False)
    task = SimpleNamespace(job=SimpleNamespace(kind="verify"), budget=Budget(10.0, "cpu", 1, None))
    r = local._Running(task, SimpleNamespace(is_alive=lambda: True), recv)
    r.started -= 100.0
    send.send(worker.READY)
    assert local.LocalExecutor()._poll(r) is None and time.perf_counter() - r.started < 5
    assert local.LocalExecutor()._poll(r) is None  # running, within its 10 s


def test_not_a_module():
    with pytest.raises(bench.UserError, match=r"expected a torch nn.Module, a file \(\.onnx, \.pt, \.pth\) or "
                                              r"package\.module:attribute, got list"):
        bench.verify([[1.0]], "trivial")
    with pytest.raises(bench.UserError, match=r"net\.h5: lipbench reads networks from \.onnx files"):
        bench.verify("net.h5", "trivial")
    with pytest.raises(bench.UserError, match=r"net\.pt: no such file"):
        bench.verify("net.pt", "trivial")


def test_bad_timeouts_and_negative_bounds_are_refused():
    import pytest
    from bench.api import UserError
    net = mlp([3, 4, 2])
    for t in (-1, 0, float("inf")):
        with pytest.raises(UserError, match="timeout"):
            bench.verify(net, "trivial", timeout=t)
    for kw, word in [({"threads": 0}, "threads"), ({"threads": 1.5}, "threads"), ({"device": "tpu"}, "device"),
                     ({"target": (1, 1)}, "two different classes"), ({"p": 3}, "1, 2, inf")]:
        with pytest.raises(UserError, match=word):   # what the CLI and a suite refuse, the API refuses
            bench.verify(net, "trivial", **kw)
    b = bench.verify(net, "trivial", target=(0, 5))   # depends on the network: as in a suite, unsupported
    assert b.status == "unsupported" and "out of range" in b.error
    b = bench.verify(net, "test-negative", p=2)
    assert b.status == "error" and b.value is None and ">= 0" in b.error


def test_a_run_preloads_what_its_plugins_declare_and_is_installed(monkeypatch):
    import importlib.util

    from bench import registry
    declares = type("Declares", (), {"preload": ("tabnanny", "no_such_module_for_lipbench")})
    monkeypatch.setitem(registry.VERIFIERS, "test-declares-preload", declares)
    assert registry.preloads(["test-declares-preload", "trivial", "no-such-verifier"]) == ["tabnanny"]
    assert registry.preloads(["trivial", "lower"], ["standard"]) == []   # nothing declared: nothing imported
    has_cvxpy = importlib.util.find_spec("cvxpy") is not None
    assert registry.preloads(["lipsdp"]) == (["cvxpy"] if has_cvxpy else [])
    from bench.data import preloads
    assert preloads(["digits", {"name": "synthetic", "n": 10}]) == ["sklearn.datasets"]   # the digits loader's
    assert preloads([{"name": "synthetic"}]) == []


@pytest.mark.slow
def test_the_scheduler_hands_the_suites_preloads_to_the_fork_server(tmp_path, monkeypatch):
    """The run's executor gets what the suite's plug-ins declare; its fork server (a fresh
    one, in a fresh process) imports it, so a job starts with it loaded."""
    import importlib.util
    import subprocess
    import sys

    import bench.scheduler as sched
    from bench.suite import parse_suite
    seen = []

    class Recording(sched.LocalExecutor):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            seen.append(self.preload)
    monkeypatch.setattr(sched, "LocalExecutor", Recording)
    sched.run_suite(parse_suite(SMOKE_FAST % "[trivial, lipsdp]"), str(tmp_path / "o"))
    has_cvxpy = importlib.util.find_spec("cvxpy") is not None
    assert seen == [("cvxpy",) if has_cvxpy else ()]
    code = ("from bench.executors.local import context\n"
            "from helpers import modules_loaded\n"
            "ctx = context('cpu', ['tabnanny'])\n"
            "q = ctx.Queue(); p = ctx.Process(target=modules_loaded, args=(q, ('tabnanny', 'torch', 'pyclbr')))\n"
            "p.start(); print(sorted(q.get(timeout=120).items())); p.join(30)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, TESTS, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.stdout.strip() == "[('pyclbr', False), ('tabnanny', True), ('torch', True)]", out.stderr[-2000:]
