"""Plug-ins that lie, crash and hog, run through the CLI as a user would: each ends with
its own status and message, the run completes, and no correct row is marked unsound."""
import json
import time

import pytest

from helpers import SMOKE_FAST, bench, rows


@pytest.mark.slow
def test_each_hostile_plugin_gets_its_own_status(hostile):
    _, out, r = hostile
    assert r.returncode == 1, r.stderr   # unsound rows: the run fails loudly
    res = {(x["verifier"], x["p"]): x for x in rows(out)}
    for p in ("2", "inf"):
        for honest in ("trivial", "lower"):
            assert res[(honest, p)]["status"] == "ok", res[(honest, p)]   # never marked by a liar
        assert "no witness pair" in json.loads(res[("test-fake-lower", p)]["audit"])["witness"]["failed"]
        assert "below the claimed" in json.loads(res[("test-fake-witness", p)]["audit"])["witness"]["failed"]
        assert res[("test-fake-lower", p)]["status"] == res[("test-fake-witness", p)]["status"] == "unsound"
        for liar in ("test-unsound", "test-zero"):   # a tiny and a zero upper bound, refuted by a lower bound
            bad = res[(liar, p)]
            assert bad["status"] == "unsound" and json.loads(bad["audit"])["lower_verifier"] == "lower", bad
        ex, kill, hog, sleep = (res[(v, p)] for v in ("test-exit", "test-kill", "test-hog", "test-sleep"))
        assert ex["status"] == "error" and "exited with code 3" in ex["error"], ex
        assert kill["status"] == "error" and "signal SIGKILL" in kill["error"], kill   # no OOM record: not oom
        assert hog["status"] == "oom" and "memory cap of 400 MB" in hog["error"], hog
        assert hog["peak_mem_mb"] < 2000, hog   # capped well below the 4 GB it asked for
        assert sleep["status"] == "timeout" and sleep["peak_mem_mb"] > 10, sleep   # peak memory kept
    # timing and threads are recorded; the plug-in's own time is inside the job's
    for x in rows(out):
        if x["status"] == "ok":
            assert 0 <= x["solve_s"] <= x["wall_s"] and x["threads"] == 1, x
    assert "8 unsound (8 new in this run)" in r.stderr


@pytest.mark.slow
def test_rerun_counts_the_stores_unsound_rows_and_one_store_holds_one_suite(hostile):
    d, out, _ = hostile
    before = rows(out)
    again = bench("run", "--suite", str(d / "s.yaml"), "--out", out, "--no-report")
    assert again.returncode == 1 and "8 unsound (0 new in this run)" in again.stderr
    other = d / "other.yaml"
    other.write_text(SMOKE_FAST.replace("name: fast", "name: other") % "[trivial]")
    r = bench("run", "--suite", str(other), "--out", out, "--no-report")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "holds the results of suite fast, not other" in r.stderr and "--mix-suites" in r.stderr
    assert rows(out) == before   # nothing lost, nothing added
    r = bench("run", "--suite", str(other), "--out", out, "--no-report", "--mix-suites")
    assert r.returncode == 1, r.stderr   # the store still holds fast's unsound rows


def test_solve_s_of_a_trivial_job_is_the_in_process_call(tmp_path):
    """The stored solve_s of a trivial-bound job is within milliseconds of the same
    verifier call made in this process (wall_s adds the worker: loading the network,
    the walk)."""
    import bench as api
    from bench.api import Budget, Query
    from bench.network import walk
    from bench.registry import get_verifier
    from helpers import mlp
    net = mlp([16, 64, 64, 10], seed=0)
    api.verify(net, "trivial", timeout=30)   # the fork server's start is not the job's
    walked, verifier = walk(net), get_verifier("trivial")()
    inproc = []
    for _ in range(5):
        t = time.perf_counter()
        verifier.run(walked, Query(p=2), Budget())
        inproc.append(time.perf_counter() - t)
    b = min((api.verify(net, "trivial", timeout=30) for _ in range(5)), key=lambda b: b.solve_s)
    assert b.solve_s is not None and b.solve_s <= b.wall_s
    # the worker's call is a cold one (a fresh process): a few ms more than a warm call here
    assert abs(b.solve_s - min(inproc)) < 0.010, (b.solve_s, min(inproc))


@pytest.mark.parametrize("source,words", [
    ('import os\n\nraise ValueError("boom\\non two lines")\n', "ValueError: boom on two lines at {f}:3"),
    ("def f(:\n    pass\n", "SyntaxError: invalid syntax at {f}:1"),
    ("import no_such_module_lipbench_xyz\n", "ModuleNotFoundError: No module named 'no_such_module_lipbench_xyz' at {f}:1"),
])
@pytest.mark.slow
def test_a_plugin_that_fails_at_import_is_one_line_with_its_line(tmp_path, source, words):
    f = tmp_path / "broken_plugin.py"
    f.write_text(source)
    for args in (["--plugin", str(f), "list"],
                 ["--plugin", str(f), "run", "--suite", "smoke", "--out", str(tmp_path / "o")]):
        r = bench(*args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert words.format(f=f) in r.stderr and "cannot be imported" in r.stderr, r.stderr
    assert not (tmp_path / "o" / "lipbench.sqlite").exists()
