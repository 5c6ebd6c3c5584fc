"""The Ray executor on a real local Ray cluster (``ray start --head`` on 127.0.0.1, two
CPUs), as a user runs it: the same bounds as the local executor, each hostile plug-in
with the local executor's status, the driver's own deadline (``ray.cancel(force=True)``),
and a killed driver's rerun leaving one row per job."""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from helpers import SMOKE_FAST, TESTS, bench, killed_midway, rows

# token authentication for the test cluster; set before Ray is imported, which reads it then
AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.urandom(16).hex(), "RAY_USAGE_STATS_ENABLED": "0"}
os.environ.update(AUTH)
ray = pytest.importorskip("ray", reason="the Ray executor's tests need Ray (pip install 'lipbench[dist]')")
RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A one-node Ray cluster with 2 CPUs and token authentication (the token in
    RAY_AUTH_TOKEN, for this process and the drivers it starts); the test plug-ins
    importable on it; stopped after."""
    port = _free_port()
    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")   # short: Ray's socket paths have a length limit
    env = dict(os.environ, PYTHONPATH=TESTS, **AUTH)
    r = subprocess.run([RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                        "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard=false",
                        "--object-store-memory", str(100 * 2**20), "--temp-dir", tmp, "--disable-usage-stats"],
                       env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.mark.slow
def test_hostile_suite_through_ray_ends_as_with_the_local_executor(cluster, hostile):
    d, local_out, local = hostile
    out = str(d / "ray")
    r = bench("run", "--suite", str(d / "s.yaml"), "--out", out, "--no-report", "--executor", "ray",
              "--address", cluster)
    assert r.returncode == local.returncode == 1, r.stderr   # the liars' unsound rows fail the run
    assert "8 unsound (8 new in this run)" in r.stderr
    mine = {x["job_key"]: x for x in rows(out)}
    theirs = {x["job_key"]: x for x in rows(local_out)}
    assert set(mine) == set(theirs) and len(mine) == 20
    for k, x in mine.items():
        y = theirs[k]
        assert x["status"] == y["status"], (x["verifier"], x["status"], y["status"], x["error"])
        if y["value"] is not None:
            assert abs(x["value"] - y["value"]) <= 1e-9 * max(1.0, abs(y["value"])), (x, y)
    res = {(x["verifier"], x["p"]): x for x in mine.values()}
    for p in ("2", "inf"):
        assert "exited with code 3" in res[("test-exit", p)]["error"]
        assert "signal SIGKILL" in res[("test-kill", p)]["error"]
        assert "memory cap of 400 MB" in res[("test-hog", p)]["error"]
        sleep = res[("test-sleep", p)]
        assert sleep["status"] == "timeout" and 1.0 <= sleep["wall_s"] < 10 and sleep["peak_mem_mb"] > 10, sleep
    import sqlite3
    db = sqlite3.connect(os.path.join(out, "lipbench.sqlite"))
    prov = json.loads(db.execute("SELECT provenance FROM runs").fetchone()[0])
    db.close()
    assert prov["run"]["executor"] == "ray" and prov["run"]["cluster"]["cpus"] == 2, prov["run"]
    assert prov["run"]["workers"] == 2   # the cluster's CPUs / 1 thread a job


@pytest.mark.slow
def test_driver_cancels_a_task_past_its_deadline_with_force(cluster, tmp_path, monkeypatch):
    """Ray has no task timeout: the driver's deadline (timeout + grace + slack) cancels an
    unanswered task with force.  Here the slack is made negative so that the driver's
    deadline comes first; the next job on the same cluster still runs."""
    import bench.executors.ray as rayex
    from bench.scheduler import run_suite
    from bench.suite import parse_suite
    monkeypatch.setattr(rayex, "SLACK_S", -2.5)   # deadline = timeout + 2 - 2.5 = 1.5 s
    suite = parse_suite(SMOKE_FAST % "[trivial, {verifier: test-sleep, timeout: 2, params: {seconds: 600}}]")
    ex = rayex.RayExecutor(cluster)
    t0 = time.perf_counter()
    run_suite(suite, str(tmp_path / "o"), executor=ex)
    assert time.perf_counter() - t0 < 120
    assert not ray.is_initialized()   # the executor disconnected at the end
    res = {(x["verifier"], x["p"]): x for x in rows(str(tmp_path / "o"))}
    for p in ("2", "inf"):
        s = res[("test-sleep", p)]
        assert s["status"] == "timeout" and "cancelled with force" in s["error"] and s["wall_s"] < 10, s
        assert res[("trivial", p)]["status"] == "ok"


@pytest.mark.slow
def test_killed_driver_resumes_with_one_row_per_job(cluster, tmp_path):
    f, out, _, first = killed_midway(tmp_path, "--executor", "ray", "--address", cluster, wait_s=180)
    r = bench("run", "--suite", str(f), "--out", out, "--no-report", "--executor", "ray", "--address", cluster)
    assert r.returncode == 0, r.stderr
    final = rows(out)
    assert len(final) == 12 and len({x["job_key"] for x in final}) == 12
    assert final[:len(first)] == first   # nothing redone, nothing rewritten


@pytest.mark.slow
def test_bad_address_and_address_without_ray_are_one_line_errors(tmp_path):
    out = str(tmp_path / "o")
    r = bench("run", "--suite", "smoke", "--out", out, "--address", "127.0.0.1:1")
    assert r.returncode == 2 and "--executor ray" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = bench("run", "--suite", "smoke", "--out", out, "--executor", "ray", "--address", f"127.0.0.1:{_free_port()}",
              timeout=120)
    assert r.returncode == 2 and "cannot reach the Ray cluster at 127.0.0.1" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
