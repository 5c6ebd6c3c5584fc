"""The command line as a user runs it: run, list, show, export, report; bad input; resume."""
import csv
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from torch import nn

import bench as bench_api
from conftest import REPO
from bench.tidy import COLUMNS

from helpers import SMOKE_FAST, TESTS, bench, killed_midway, rows


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("smoke"))
    r = bench("run", "--suite", "smoke", "--out", out, "-j", "2")
    assert r.returncode == 0, r.stderr
    return out, r


@pytest.mark.slow
def test_run_smoke_end_to_end(smoke):
    out, r = smoke
    res = rows(out)
    from bench.registry import VERIFIERS, load_plugins
    load_plugins()
    installed = {n for n, c in VERIFIERS.items() if not n.startswith("test-")}
    assert {x["verifier"] for x in res} == installed  # "all": every registered verifier
    assert len(res) == 2 * 3 * len(installed)  # networks x queries x verifiers
    # each verifier's own declarations say what to expect: not installed, refused (with the
    # reason it gives), or answered; no verifier is named here
    from bench import network as netmod
    from bench.api import Query
    from bench.rows import parse_target
    from bench.registry import get_verifier
    db = sqlite3.connect(os.path.join(out, "lipbench.sqlite"))
    paths = dict(db.execute("SELECT id, path FROM networks").fetchall())
    accs = [a for (a,) in db.execute("SELECT clean_acc FROM networks")]
    db.close()
    assert min(accs) > 0.5, accs   # 3 classes: well above chance (logistic regression gets 0.72)
    db = sqlite3.connect(os.path.join(out, "lipbench.sqlite"))
    (prov, summ), = db.execute("SELECT provenance, summary FROM runs").fetchall()   # one run, with where it ran
    db.close()
    prov = json.loads(prov)
    assert prov["machine"]["cores"] == os.cpu_count() and "torch" in prov["versions"]
    assert prov["run"]["executor"] == "local" and prov["run"]["threads"] == 1
    assert json.loads(summ)["results"] == len(res)
    for x in res:
        cls = get_verifier(x["verifier"])
        net = netmod.walk(*netmod.load(paths[x["network"]]))
        q = Query(p=x["p"], target=parse_target(x["target"]) or "full")
        if cls.missing():
            assert x["status"] == "not_installed" and x["error"], x
        elif cls().refusal(net, q):
            assert x["status"] == "unsupported" and x["error"] == cls().refusal(net, q), x
        else:
            assert x["status"] == "ok" and x["value"] > 0, x
    assert os.path.getsize(os.path.join(out, "report.pdf")) > 10_000
    assert f"[{2 + len(res) + 2}/{2 + len(res) + 2}" in r.stderr  # progress: 2 train, verify, 2 certify
    cert = sqlite3.connect(os.path.join(out, "lipbench.sqlite")).execute(
        "SELECT COUNT(*), MIN(certified_acc), MAX(certified_acc) FROM certified WHERE verifier='trivial'").fetchone()
    assert cert[0] == 2 * 3 * 3 and 0 <= cert[1] <= cert[2] <= 1  # networks x p x eps
    assert "unsound" in r.stderr and "0 unsound" in r.stderr
    # not a terminal: the live summary comes as plain log lines, every tenth of the run
    prog = [l for l in r.stderr.splitlines() if l.startswith("progress: ")]
    assert len(prog) >= 5 and "running" in prog[-1] and "failed" in prog[-1] and "ETA" in prog[-1]


@pytest.mark.slow
def test_export_is_the_tidy_frame(smoke, tmp_path):
    out, _ = smoke
    r = bench("export", "--suite", "smoke", "--out", out, "--format", "csv")
    assert r.returncode == 0, r.stderr
    table = list(csv.DictReader(io.StringIO(r.stdout)))
    assert list(table[0].keys()) == COLUMNS
    assert len(table) == len(rows(out))
    import bench as api
    df = api.results(out)
    assert len(df) == len(table) and list(df.columns) == COLUMNS
    assert {t["dataset"] for t in table} == {"synthetic"} or all(t["dataset"] for t in table)
    ok = df[(df.status == "ok") & df.kind.isin(["upper", "exact"])]
    assert ok.tightness.dropna().ge(1 - 1e-6).all()   # sound bounds over the best lower bound
    pq = tmp_path / "x.parquet"
    r2 = bench("export", "--out", out, "--format", "parquet", "--file", str(pq))
    assert r2.returncode == 0, r2.stderr
    import pandas as pd
    back = pd.read_parquet(pq)
    assert len(back) == len(df) and list(back.columns) == COLUMNS
    tp = json.loads(table[0]["trainer_params"])
    assert "arch" in tp and "activation" in tp["arch"]
    assert {t["seed"] for t in table} == {"0"}
    assert all(float(t["value"]) > 0 for t in table if t["status"] == "ok")
    assert all(t["value"] == "" for t in table if t["status"] != "ok")
    f = tmp_path / "x.csv"
    assert bench("export", "--out", out, "--format", "csv", "--file", str(f)).returncode == 0
    assert f.read_text() == r.stdout


@pytest.mark.slow
def test_report_from_store_alone(smoke, tmp_path):
    out, _ = smoke
    pdf = tmp_path / "again.pdf"
    r = bench("report", "--suite", "smoke", "--out", out, "--file", str(pdf))
    assert r.returncode == 0, r.stderr
    assert pdf.read_bytes()[:5] == b"%PDF-"


@pytest.mark.slow
@pytest.mark.poppler
def test_report_from_store_alone_has_its_pages(smoke, tmp_path):
    out, _ = smoke
    pdf = tmp_path / "again.pdf"
    assert bench("report", "--suite", "smoke", "--out", out, "--file", str(pdf)).returncode == 0
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
    assert int(info.split("Pages:")[1].split()[0]) >= 3


@pytest.mark.slow
def test_rerun_does_nothing_and_show_prints(smoke):
    out, _ = smoke
    before = rows(out)
    r = bench("run", "--suite", "smoke", "--out", out, "--no-report")
    assert r.returncode == 0 and "start" not in r.stderr
    assert rows(out) == before
    s = bench("show", "--out", out)
    assert s.returncode == 0 and "trivial" in s.stdout


@pytest.mark.slow
def test_list_shows_plugins_and_missing_requirements():
    r = bench("list")
    assert r.returncode == 0
    assert "trivial" in r.stdout and "lower" in r.stdout and "standard" in r.stdout
    line = next(l for l in r.stdout.splitlines() if l.startswith("trivial"))
    assert "upper" in line and "1,2,inf" in line and "yes" in line


@pytest.mark.parametrize("args,words", [
    (["run", "--suite", "nosuchsuite"], "unknown suite"),
    (["report", "--suite", "nosuchsuite"], "no results store"),
    (["run", "--suite", "smoke", "--device", "tpu"], "--device"),
    (["run", "--suite", "smoke", "-j", "0"], "-j"),
    (["run", "--suite", "smoke", "--timeout", "-5"], "--timeout"),
    (["run", "--suite", "smoke", "--timeout", "inf"], "--timeout"),
    (["run", "--suite", "/"], "not a file"),
    (["export", "--suite", "smoke", "--file", "/nonexistent/dir/x.csv"], "no results store"),
    pytest.param(["run", "--suite", "smoke", "--device", "cuda"], "no CUDA device",
                 marks=pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="CUDA present")),
])
@pytest.mark.slow
def test_bad_input_is_one_line_exit_2(args, words, tmp_path):
    r = bench(*args, "--out", str(tmp_path / "o"))
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], r.stderr


@pytest.mark.slow
def test_bad_suite_files_keep_the_store(tmp_path):
    out = tmp_path / "o"
    ok = tmp_path / "ok.yaml"
    ok.write_text(SMOKE_FAST % "[trivial]")
    assert bench("run", "--suite", str(ok), "--out", str(out), "--no-report").returncode == 0
    before = rows(str(out))
    assert len(before) == 2
    cases = {"malformed": "name: [\n", "unknown verifier": SMOKE_FAST % "[trivail]",
             "unknown trainer": (SMOKE_FAST % "[trivial]").replace("standard", "nope"),
             "unknown data set": (SMOKE_FAST % "[trivial]").replace("synthetic", "mnist").replace(", n: 120, dim: 3, classes: 3", "")}
    for what, text in cases.items():
        f = tmp_path / "bad.yaml"
        f.write_text(text)
        r = bench("run", "--suite", str(f), "--out", str(out), "--data-dir", str(tmp_path / "nodata"))
        assert r.returncode == 2, (what, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, (what, r.stderr)
        assert rows(str(out)) == before, what
    assert "train-images-idx3-ubyte" in r.stderr  # the missing data file is named


@pytest.mark.slow
def test_missing_requirement_and_unsound_rows(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(SMOKE_FAST % "[trivial, lower, test-missing, test-unsound]")
    out = str(tmp_path / "o")
    r = bench("run", "--suite", str(f), "--out", out)
    assert r.returncode == 1  # unsound results make the run fail loudly
    res = {(x["verifier"], x["p"]): x for x in rows(out)}
    miss = res[("test-missing", "2")]
    assert miss["status"] == "not_installed" and "no_such_package_lipbench_xyz" in miss["error"]
    assert miss["value"] is None
    bad = res[("test-unsound", "2")]
    assert bad["status"] == "unsound" and json.loads(bad["audit"])["lower_verifier"] == "lower"
    assert res[("trivial", "2")]["status"] == "ok"
    assert "UNSOUND" in r.stderr
    shown = bench("show", "--out", out).stdout   # an unsound verifier's cell says so first, no tightness
    assert next(l for l in shown.splitlines() if l.startswith("test-unsound")).split()[1] == "UNSOUND"
    lst = bench("--plugin", "testplugins", "list")
    line = next(l for l in lst.stdout.splitlines() if l.startswith("test-missing"))
    assert "no: missing no_such_package_lipbench_xyz" in line


@pytest.mark.slow
def test_a_plugin_that_raises_keeps_its_traceback(tmp_path):
    """A verifier that raises in a helper of its own: the row keeps the traceback (file,
    line, function), the live log names the frame, show --errors prints it, the run exits
    3 (a job ended in error); from the API the Bound carries it."""
    f = tmp_path / "s.yaml"
    f.write_text(SMOKE_FAST % "[trivial, test-raises]")
    out = str(tmp_path / "o")
    r = bench("run", "--suite", str(f), "--out", out, "--no-report")
    assert r.returncode == 3, r.stderr
    assert re.search(r"error +verify test-raises.*ZeroDivisionError.* at .*testplugins\.py:\d+ in _author_helper",
                     r.stderr), r.stderr
    bad = [x for x in rows(out) if x["verifier"] == "test-raises"]
    assert bad and all(x["status"] == "error" and "in _author_helper" in x["traceback"] for x in bad)
    e = bench("show", "--errors", "--out", out)
    assert e.returncode == 0 and "ZeroDivisionError" in e.stdout and "return x / 0" in e.stdout
    assert f"{len(bad)} job(s) ended in error" in e.stdout
    import testplugins  # noqa: F401  (registers test-raises here too)
    from bench.registry import get_verifier
    b = bench_api.verify(nn.Sequential(nn.Linear(3, 2)), "test-raises")
    assert b.status == "error" and "_author_helper" in b.traceback and "in _author_helper" in repr(b)
    assert get_verifier("test-raises").description == "Raises inside a helper of its own, as a plug-in under " \
                                                       "development does."
    with pytest.raises(bench_api.UserError, match="loaded with --plugin"):
        get_verifier("no-such-verifier")


@pytest.mark.slow
def test_the_harness_measures_accuracy_and_flags_a_trainer_that_reports_another(tmp_path):
    import testplugins  # noqa: F401
    from bench.testing import ConformanceError, check_trainer
    with pytest.raises(ConformanceError, match="but the returned network's test accuracy is"):
        check_trainer("test-liar")
    f = tmp_path / "s.yaml"
    f.write_text(SMOKE_FAST.replace("trainer: standard", "trainer: test-liar").replace("params: {epochs: 2}", "")
                 % "[trivial]")
    out = str(tmp_path / "o")
    r = bench("run", "--suite", str(f), "--out", out)
    assert r.returncode == 0, r.stderr
    db = sqlite3.connect(os.path.join(out, "lipbench.sqlite"))
    acc, metrics = db.execute("SELECT clean_acc, metrics FROM networks").fetchone()
    db.close()
    metrics = json.loads(metrics)
    assert acc < 1.0 and metrics["trainer_clean_acc"] == 1.0 and metrics["accuracy_disagrees"] is True
    from bench.data import load
    ds = load({"name": "synthetic", "n": 120, "dim": 3, "classes": 3})
    assert acc == pytest.approx(float((ds.y_test == 0).mean()))   # it always says class 0


@pytest.mark.slow
def test_hanging_job_is_killed_as_timeout_and_the_run_goes_on(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(SMOKE_FAST % "[trivial, {verifier: test-sleep, timeout: 1}]")
    out = str(tmp_path / "o")
    t0 = time.perf_counter()
    r = bench("run", "--suite", str(f), "--out", out, "--no-report")
    assert r.returncode == 0, r.stderr
    assert time.perf_counter() - t0 < 40
    res = rows(out)
    sleeps = [x for x in res if x["verifier"] == "test-sleep"]
    assert len(sleeps) == 2 and all(x["status"] == "timeout" and x["value"] is None for x in sleeps)
    assert all(1.0 <= x["wall_s"] < 10 for x in sleeps)
    assert all(x["status"] == "ok" for x in res if x["verifier"] == "trivial")


@pytest.mark.slow
def test_resume_after_sigkill(tmp_path):
    """Kill the whole run (SIGKILL) halfway; the rerun finishes only what is missing."""
    f, out, proc, first = killed_midway(tmp_path)
    db = os.path.join(out, "lipbench.sqlite")
    assert f"pid {proc.pid}" in open(os.path.join(out, "lipbench.lock")).read()  # the dead driver's lock ...
    conn = sqlite3.connect(db)
    jobs_before = conn.execute("SELECT key, finished FROM jobs").fetchall()
    conn.close()
    r = bench("run", "--suite", str(f), "--out", out, "--no-report")   # ... is no obstacle
    assert r.returncode == 0, r.stderr
    final = rows(out)
    assert len(final) == 12
    assert len({x["job_key"] for x in final}) == 12
    assert final[:len(first)] == first  # nothing redone, nothing rewritten
    conn = sqlite3.connect(db)
    jobs_after = dict(conn.execute("SELECT key, finished FROM jobs").fetchall())
    conn.close()
    assert all(jobs_after[k] == t for k, t in jobs_before)
    started = r.stderr.count(" start ")
    assert started == 3 + 12 - len(jobs_before)  # only the missing jobs ran


@pytest.mark.cuda
def test_smoke_on_gpu(tmp_path):
    out = str(tmp_path / "o")
    r = bench("run", "--suite", "smoke", "--out", out, "--device", "cuda", "--no-report")
    assert r.returncode == 0, r.stderr
    res = rows(out)
    assert res and all(x["device"].startswith("cuda") for x in res)
    assert not [x for x in res if x["status"] in ("error", "timeout", "oom", "unsound")]
    ok = {x["verifier"] for x in res if x["status"] == "ok"}
    assert {"trivial", "lower", "bab"} <= ok, ok


@pytest.mark.slow
def test_more_bad_suites_name_their_line(tmp_path):
    base = SMOKE_FAST % "[trivial]"
    cases = {
        "seeds must be integers": base.replace("seeds: [0]", "seeds: [-1]"),
        "bias": base.replace("activation: relu}", "activation: relu, bias: maybe}"),
        "radius": base.replace("{p: 2}", "{p: 2, domain: {center: [0, 0, 0], radius: -1}}"),
        "a box is": base.replace("{p: 2}", "{p: 2, domain: {centre: [0, 0, 0], radius: 1}}"),
        "non-negative int": base.replace("n: 120", "n: abc"),
        "finite": base.replace("timeout: 60", "timeout: .inf"),
    }
    for words, text in cases.items():
        f = tmp_path / "bad.yaml"
        f.write_text(text)
        r = bench("run", "--suite", str(f), "--out", str(tmp_path / "o"))
        assert r.returncode == 2 and words in r.stderr and "line" in r.stderr, (words, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    f = tmp_path / "latin1.yaml"
    f.write_bytes("name: caf\xe9\n".encode("latin-1"))
    r = bench("run", "--suite", str(f), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "UTF-8" in r.stderr


@pytest.mark.slow
def test_duplicate_jobs_and_retry(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text((SMOKE_FAST % "[trivial, {verifier: test-sleep, timeout: 1, params: {seconds: 0.1}}]")
                 .replace("seeds: [0]", "seeds: [0, 0]").replace("[{p: 2}, ", "[{p: 2}, {p: 2.0}, "))
    out = str(tmp_path / "o")
    r = bench("run", "--suite", str(f), "--out", out, "--no-report", "--timeout", "0.05")
    assert r.returncode == 0, r.stderr
    first = rows(out)
    assert len(first) == 2 * 2 or all(x["status"] == "timeout" for x in first)
    # with --retry, the timed-out jobs run again, and their rows are replaced (not duplicated)
    r = bench("run", "--suite", str(f), "--out", out, "--no-report", "--retry")
    assert r.returncode == 0, r.stderr
    again = rows(out)
    assert len(again) == 4 and len({x["job_key"] for x in again}) == 4
    assert all(x["status"] == "ok" for x in again if x["verifier"] == "trivial")


@pytest.mark.slow
def test_list_one_plugin_shows_its_declared_parameters():
    r = bench("list", "tb-penalty")
    assert r.returncode == 0, r.stderr
    assert "penalty" in r.stdout and "one of log, tb, hinge" in r.stdout and "default 'log'" in r.stdout
    r = bench("list", "lipsdp")
    assert "kind upper, p in {2}" in r.stdout and "NATIVE" in r.stdout
    bad = bench("list", "nope")
    assert bad.returncode == 2 and "unknown plug-in 'nope'" in bad.stderr and "tb-penalty" in bad.stderr


@pytest.mark.slow
def test_a_second_driver_on_the_same_store_is_refused(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(SMOKE_FAST % "[trivial, {verifier: test-sleep, params: {seconds: 30.0}}]")
    out = str(tmp_path / "o")
    first = subprocess.Popen([sys.executable, "-m", "bench", "run", "--suite", str(f), "--out", out, "--no-report"],
                             cwd=REPO, env=dict(os.environ, PYTHONPATH=TESTS), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        lock = os.path.join(out, "lipbench.lock")
        deadline = time.time() + 120
        while time.time() < deadline and not (os.path.exists(lock) and open(lock).read()):
            time.sleep(0.2)
        r = bench("run", "--suite", str(f), "--out", out, "--no-report")
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert f"pid {first.pid}" in r.stderr and "another lipbench run" in r.stderr
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


@pytest.mark.slow
def test_a_plugin_cannot_take_a_builtin_name(tmp_path):
    (tmp_path / "shadow.py").write_text(
        "from bench.api import Bound, Verifier\nfrom bench.registry import register\n\n"
        "@register\nclass Trivial(Verifier):\n    name = 'trivial'\n\n"
        "    def run(self, net, query, budget):\n        return Bound(0.0, 'upper')\n")
    r = bench("--plugin", str(tmp_path / "shadow.py"), "list")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "'trivial'" in r.stderr and "methods.trivial.Trivial" in r.stderr and "shadow" in r.stderr
