"""What several test modules share (test modules never import each other): the command
line as a user runs it (:func:`bench`, the small suites it runs, :func:`killed_midway`),
the stored rows, the PDF's pages and text, small networks, and hand-made result stores
for the report's tests (networks and results recorded through Store.record as the
scheduler would, without training or verifying anything)."""
from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

from torch import nn

from conftest import REPO

from bench.api import Query
from bench.jobs import CertifyJob, Outcome, TrainedNetwork, TrainJob, VerifyJob
from bench.store import Store

VERSIONS = {"lipbench": "0.2.0", "torch": "2.13.0+cpu", "python": "3.11.7", "numpy": "2.4.6"}
KIND = {"trivial": "upper", "lower": "lower", "lipsdp": "upper", "eclipse": "upper", "bab": "exact", "mip": "exact",
        "lirpa": "upper", "test-missing": "upper", "test-unsound": "upper", "fake-lower": "lower"}


def add_network(store: Store, nid: str, trainer="standard", hidden=(8,), activation="relu", seed=0, acc=0.9,
                dataset=None, metrics=None, path=None, input_shape=(4,), params=None, bias=True):
    arch = {"hidden": list(hidden), "activation": activation, "bias": bias}
    path = path or f"/nowhere/{nid}.pt"
    job = TrainJob(trainer, "1", {"epochs": 1, **(params or {})}, arch, dataset or {"name": "synthetic", "n": 10},
                   seed, nid, path,
                   key=f"train-{nid}")
    store.record(job, Outcome("ok", network=TrainedNetwork(f"hash-{nid}", path, tuple(input_shape), f"mlp {nid}",
                                                           {"clean_acc": acc, **(metrics or {})}),
                              versions=VERSIONS, device="cpu", threads=1, wall_s=1.0, solve_s=0.9))


def add_result(store: Store, nid: str, verifier: str, status: str, value=None, p="2", target="full", stats=None,
               solve_s=0.01, mem=250.0, error=None, kind=None):
    q = Query(p=p, target=tuple(int(t) for t in target.split("-")) if target != "full" else "full")
    key = f"{nid}-{verifier}-{p}-{target}"
    job = VerifyJob(verifier, "1", {}, q, nid, f"hash-{nid}", f"/nowhere/{nid}.pt", kind or KIND.get(verifier, "upper"),
                    key=key)
    store.record(job, Outcome(status, kind or KIND.get(verifier, "upper"), value, stats or {}, error=error,
                              wall_s=(solve_s or 0) + 0.05, solve_s=solve_s, peak_mem_mb=mem, device="cpu",
                              versions=VERSIONS, threads=1))
    return key


def _ids(store, keys):
    rows = {r["job_key"]: r["id"] for r in store.results()}
    return [rows[k] for k in keys]


def every_status_store(folder: str) -> str:
    """Two networks (two training methods, two sizes) and every status a result can have:
    ok, timeout with a value (anytime, with a trace) and without, error, oom, unsupported,
    not_installed, license_limit, and unsound (an upper bound below the lower bound, and a
    lower bound whose witness fails); certified accuracy for one network."""
    s = Store(folder)
    s.claim_suite("handmade")
    add_network(s, "net-a", hidden=(8,))
    add_network(s, "net-b", trainer="tb-penalty", hidden=(16, 16), activation="abs", seed=1)
    witnessed = []
    for nid, lo2, loi in (("net-a", 2.0, 3.0), ("net-b", 4.0, 5.0)):
        witnessed.append(add_result(s, nid, "lower", "ok", lo2, "2", solve_s=0.3, stats={"witness": {}}))
        witnessed.append(add_result(s, nid, "lower", "ok", loi, "inf", solve_s=0.4, stats={"witness": {}}))
        add_result(s, nid, "trivial", "ok", lo2 * 2.5, "2", solve_s=0.001)
        add_result(s, nid, "trivial", "ok", loi * 4.0, "inf", solve_s=0.002)
        add_result(s, nid, "lirpa", "unsupported", None, "2", solve_s=None, error="no box domain")
        add_result(s, nid, "test-missing", "not_installed", None, "2", solve_s=None, error="missing pkg")
    # net-a: exact bab, anytime bab, mip without a bound, lipsdp ok, eclipse oom
    add_result(s, "net-a", "bab", "ok", 2.0, "2", solve_s=0.5,
               stats={"lower": 2.0, "trace": [[0.01, 1.5, 4.0], [0.2, 1.9, 2.5], [0.5, 2.0, 2.0]]})
    add_result(s, "net-a", "bab", "timeout", 4.5, "inf", kind="upper", solve_s=10.0,
               stats={"lower": 2.8, "gap": 0.4, "trace": [[0.02, 2.5, 6.0], [3.0, 2.8, 4.5]]})
    add_result(s, "net-a", "mip", "timeout", None, "inf", solve_s=None, mem=900.0)
    add_result(s, "net-a", "lipsdp", "ok", 2.1, "2", solve_s=3.0)
    add_result(s, "net-a", "eclipse", "oom", None, "2", solve_s=None, mem=4000.0, error="MemoryError")
    # net-b: a crashed lipsdp, a licence-limited mip, an anytime mip (final bounds only), unsound rows
    add_result(s, "net-b", "lipsdp", "error", None, "2", solve_s=1.0, error="solver failed")
    add_result(s, "net-b", "mip", "license_limit", None, "inf", solve_s=0.2, error="size-limited licence")
    add_result(s, "net-b", "bab", "timeout", 9.0, "inf", kind="upper", solve_s=10.0,
               stats={"lower": 4.5, "upper": 9.0})
    bad_up = add_result(s, "net-b", "test-unsound", "ok", 0.4, "2")
    bad_low = add_result(s, "net-b", "fake-lower", "ok", 500.0, "2")
    s.set_audit([(i, {"witness": {"value": v}}) for i, v in
                 zip(_ids(s, witnessed), [2.0, 3.0, 4.0, 5.0])])
    s.mark_unsound([
        (_ids(s, [bad_up])[0], {"was": "ok", "value": 0.4, "lower": 4.0, "lower_verifier": "lower",
                                "lower_job": witnessed[2], "tolerance": {"rtol": 1e-6, "atol": 0}}),
        (_ids(s, [bad_low])[0], {"was": "ok", "claimed_lower": 500.0,
                                 "witness": {"value": None, "failed": "no witness pair in the stats"}}),
    ])
    cj = CertifyJob("net-a", "hash-net-a", "/nowhere/net-a.pt", "synthetic", {"2": [0.1, 0.2]}, (), key="cert-a")
    s.record(cj, Outcome("ok", certified=(
        {"verifier": "trivial", "verifier_params": "{}", "p": "2", "eps": [0.1, 0.2], "certified_acc": [0.6, 0.3],
         "clean_acc": 0.9, "source": "full"},), versions=VERSIONS, device="cpu", threads=1))
    s.close()
    return folder


def add_certified(store: Store, nid: str, dataset, p: str, eps: list, rows: list[tuple], clean_acc: float):
    """A certify job's rows: ``rows`` = [(verifier, [certified accuracy per eps]), ...]."""
    job = CertifyJob(nid, f"hash-{nid}", f"/nowhere/{nid}.pt", dataset, {p: list(eps)}, (), key=f"cert-{nid}-{p}")
    store.record(job, Outcome("ok", certified=tuple(
        {"verifier": v, "verifier_params": "{}", "p": p, "eps": list(eps), "certified_acc": list(a),
         "clean_acc": clean_acc, "source": "full"} for v, a in rows), versions=VERSIONS, device="cpu", threads=1))


#: the radii of the CIFAR-10 literature as a suite's eps grid holds them (floats)
CIFAR_EPS = [36 / 255, 72 / 255, 108 / 255]


def cifar_store(folder: str, net_dir: str | None = None) -> str:
    """CIFAR networks with certified accuracy at p = 2, as a cifar suite would leave them: a
    tb-penalty configuration with two seeds (trivial and lipsdp bounds, parameters recorded),
    and a standard MLP certified at 36/255 and one other radius only whose parameter count was
    not recorded (counted from its saved file when ``net_dir`` is given)."""
    s = Store(folder)
    s.claim_suite("cifar-handmade")
    cifar = {"name": "cifar", "test_subset": 1000}
    metrics = {"train_s": 1500.0, "epochs_done": 30, "device": "cuda:0", "parameters": 4_206_602}
    for seed, acc, cert in ((0, 0.52, [0.31, 0.17, 0.08]), (1, 0.54, [0.33, 0.19, 0.10])):
        nid = f"cifar-tb-s{seed}"
        add_network(s, nid, trainer="tb-penalty", hidden=(1024, 1024), activation="abs", seed=seed, acc=acc,
                    dataset=cifar, metrics=metrics, input_shape=(3, 32, 32))
        add_result(s, nid, "trivial", "ok", 3.0, "2")
        add_result(s, nid, "lipsdp", "ok", 2.5, "2", solve_s=30.0)
        add_certified(s, nid, cifar, "2", CIFAR_EPS, [("trivial", cert), ("lipsdp", [c + 0.02 for c in cert])], acc)
    path = None
    if net_dir:
        import os

        from bench.network import build_net, save
        path = os.path.join(net_dir, "cifar-std.pt")
        save(build_net({"hidden": [16]}, (3, 32, 32), 10), (3, 32, 32), path)
    add_network(s, "cifar-std", hidden=(16,), acc=0.4, dataset="cifar", path=path, input_shape=(3, 32, 32),
                metrics={"train_s": 95.0, "epochs_done": 5, "device": "cpu"})
    add_result(s, "cifar-std", "trivial", "ok", 40.0, "2")
    add_certified(s, "cifar-std", "cifar", "2", [36 / 255, 0.5], [("trivial", [0.12, 0.01])], 0.4)
    s.close()
    return folder


def big_store(folder: str, rows: int = 10_000, seed: int = 0) -> str:
    """A synthetic store of about ``rows`` results: networks of several widths and depths,
    eight verifiers, five queries, a mix of statuses; for timing the report."""
    rng = random.Random(seed)
    s = Store(folder)
    s.db.execute("PRAGMA synchronous=OFF")
    s.claim_suite("big")
    verifiers = ["lower", "trivial", "lipsdp", "eclipse", "bab", "mip", "lirpa", "test-missing"]
    queries = [("2", "full"), ("inf", "full"), ("1", "full"), ("2", "3-8"), ("inf", "0-1")]
    nets = max(1, rows // (len(verifiers) * len(queries)))
    for i in range(nets):
        w, d = [16, 32, 64, 128][i % 4], [1, 2, 3][i % 3]
        method = [("standard", "relu"), ("standard", "tanh"), ("tb-penalty", "abs")][i % 3]
        nid = f"big-{method[0]}-{method[1]}-w{w}-d{d}-s{i}"
        add_network(s, nid, trainer=method[0], hidden=(w,) * d, activation=method[1], seed=i)
        ids = []
        for p, t in queries:
            lo = rng.uniform(1, 50)
            cost = w * d / 64
            ids.append((add_result(s, nid, "lower", "ok", lo, p, t, solve_s=0.3 * cost, stats={"witness": {}}), lo))
            add_result(s, nid, "trivial", "ok", lo * rng.uniform(1.0, 8), p, t, solve_s=0.001 * cost)
            if p == "2":
                add_result(s, nid, "lipsdp", "ok", lo * rng.uniform(1.0, 1.3), p, t, solve_s=5 * cost)
                add_result(s, nid, "eclipse", rng.choice(["ok", "ok", "ok", "error"]), lo * 1.1, p, t, solve_s=2 * cost)
            else:
                add_result(s, nid, "lipsdp", "unsupported", None, p, t, solve_s=None)
                add_result(s, nid, "eclipse", "unsupported", None, p, t, solve_s=None)
            closed = rng.random() < 0.4
            end = [min(10.0, cost), lo * (1 if closed else 0.9), lo * (1 if closed else 2)]
            trace = [[0.01, lo * 0.8, lo * 3], end]
            add_result(s, nid, "bab", "ok" if closed else "timeout", lo * (1 if closed else 2), p, t,
                       kind="exact" if closed else "upper", solve_s=min(10.0, cost) if closed else 10.0,
                       stats={"lower": lo * (1 if closed else 0.9), "trace": trace})
            add_result(s, nid, "mip", "timeout", None, p, t, solve_s=None, mem=rng.uniform(300, 2000))
            add_result(s, nid, "lirpa", "unsupported", None, p, t, solve_s=None)
            add_result(s, nid, "test-missing", "not_installed", None, p, t, solve_s=None)
        s.db.commit()
        s.set_audit([(i_, {"witness": {"value": v}}) for i_, v in zip(_ids(s, [k for k, _ in ids]),
                                                                       [v for _, v in ids])])
    s.close()
    return folder


if __name__ == "__main__":   # python tests/helpers.py every|cifar|big FOLDER [rows]
    kind, folder = sys.argv[1], sys.argv[2]
    if kind == "every":
        every_status_store(folder)
    elif kind == "cifar":
        cifar_store(folder)
    else:
        big_store(folder, int(sys.argv[3]) if len(sys.argv) > 3 else 10_000)
    print(json.dumps({"folder": folder}))


# ---- the command line

TESTS = os.path.dirname(__file__)
SMOKE_FAST = """\
name: fast
datasets: [{name: synthetic, n: 120, dim: 3, classes: 3}]
seeds: [0]
timeout: 60
plugins: [testplugins]
train:
  - trainer: standard
    archs: [{hidden: [4], activation: relu}]
    params: {epochs: 2}
queries: [{p: 2}, {p: inf, target: [0, 1]}]
verify: %s
"""
HOSTILE = SMOKE_FAST % """
  - trivial
  - lower
  - test-fake-lower
  - test-fake-witness
  - test-unsound
  - test-zero
  - test-exit
  - test-kill
  - {verifier: test-hog, timeout: 60}
  - {verifier: test-sleep, timeout: 1}
""" + "mem_limit: 400\n"


def bench(*args, cwd=None, timeout=300, env_extra=None):
    """`python -m bench ARGS` in a fresh process, the test plug-ins importable."""
    env = dict(os.environ, PYTHONPATH=TESTS)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def rows(out):
    """Every stored result of the store in ``out``, as dicts."""
    db = sqlite3.connect(os.path.join(out, "lipbench.sqlite"))
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM results ORDER BY id")]
    finally:
        db.close()


def killed_midway(tmp_path, *args, wait_s=120):
    """A 12-job run started with ``args`` and killed (SIGKILL, the whole process group) once
    4 results are stored: (suite file, results folder, the dead driver, its rows)."""
    f = tmp_path / "s.yaml"
    f.write_text((SMOKE_FAST % "[trivial, {verifier: test-sleep, params: {seconds: 0.4}}]")
                 .replace("seeds: [0]", "seeds: [0, 1, 2]"))
    out = str(tmp_path / "o")
    env = dict(os.environ, PYTHONPATH=TESTS)
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", "--suite", str(f), "--out", out, "--no-report",
                             *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    db = os.path.join(out, "lipbench.sqlite")
    deadline = time.time() + wait_s
    while time.time() < deadline:
        time.sleep(0.2)
        try:
            if os.path.exists(db) and len(rows(out)) >= 4:
                break
        except sqlite3.OperationalError:  # the file exists, its tables not yet
            pass
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = rows(out)
    assert 4 <= len(first) < 12, len(first)
    return f, out, proc, first


# ---- the PDF

def report_pdf(out, pdf):
    """`python -m bench report` into ``pdf``; its pypdf reader."""
    import pypdf
    r = bench("report", "--out", str(out), "--file", str(pdf))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(pdf)
    assert pdf.read_bytes()[:5] == b"%PDF-"
    return pypdf.PdfReader(str(pdf))


def pdf_text(reader, page=None):
    pages = reader.pages if page is None else [reader.pages[page]]
    return "\n".join(p.extract_text() for p in pages)


def pages_render(pdf, tmp_path):
    """Every page of ``pdf`` rendered by pdftoppm, none blank; how many."""
    from matplotlib.image import imread
    d = tmp_path / "png"
    d.mkdir()
    subprocess.run(["pdftoppm", "-png", "-r", "30", str(pdf), str(d / "p")], check=True, timeout=120)
    pngs = sorted(d.glob("p-*.png"))
    assert pngs
    for png in pngs:
        img = imread(png)
        assert (img[..., :3] < 0.9).any(), f"{png.name} is blank"
    return len(pngs)


# ---- small networks

def mlp(sizes, act=nn.ReLU, bias=True, seed=0) -> nn.Sequential:
    """A seeded MLP of the given layer sizes (``mlp([4, 8, 3])``: 4 inputs, 8 hidden, 3
    outputs), ``act`` between the layers."""
    import torch
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b, bias=bias), act()]
    return nn.Sequential(*layers[:-1])


def modules_loaded(q, names) -> None:
    """In a worker process: which of ``names`` are already imported, put on ``q``."""
    import sys
    q.put({n: n in sys.modules for n in names})
