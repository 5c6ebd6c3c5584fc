"""A conv net trained on real CIFAR-10 (2,000 images, one epoch) learns: the data folder
is built offline from the reference copy (../shared/reference/cifar10) into a temporary
folder, and the test skips, saying why, where that copy is missing or cannot be built."""
import os
import subprocess
import sys
import time

import pytest
import torch

from bench.api import Budget
from bench.data import load
from bench.registry import get_trainer
from conftest import REFERENCE

SOURCE = os.path.join(REFERENCE, "cifar10", "to_batches.py")


@pytest.fixture(scope="session")
def cifar_folder(tmp_path_factory):
    if not os.path.isfile(SOURCE):
        pytest.skip(f"no CIFAR-10 reference copy to build from ({os.path.normpath(SOURCE)} is absent)")
    dest = tmp_path_factory.mktemp("cifar")
    r = subprocess.run([sys.executable, SOURCE, str(dest)], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["(no message)"])[-1]
        pytest.skip(f"building CIFAR-10 from {os.path.normpath(SOURCE)} failed: {last}")
    return str(dest)


@pytest.mark.slow
def test_a_small_conv_net_learns_cifar_in_one_epoch(cifar_folder):
    ds = load({"name": "cifar", "subset": 2000, "test_subset": 2000}, cifar_folder)
    assert ds.input_shape == (3, 32, 32) and len(ds.X_train) == 2000 and len(set(ds.y_train.tolist())) == 10
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        arch = {"conv": [[16, 3, 2], [32, 3, 2]], "hidden": [64]}
        net, m = get_trainer("standard")(epochs=1, batch_size=16, lr=2e-3).train(ds, arch, 0, Budget(120))
        train_s = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    assert m["clean_acc"] > 0.2, m["clean_acc"]   # chance: 0.1
    assert train_s < 60, train_s


@pytest.mark.slow
def test_the_cifar_method_study_runs_small_and_its_tradeoff_page_renders(cifar_folder, tmp_path):
    """The shipped study (cifar-method), cut to a few hundred images and one epoch: it
    parses, trains two tb-penalty grid points and one baseline, certifies, and the report
    has the trade-off: the per-setting CSV with both grid points named by their settings,
    and the answer sentence."""
    import yaml

    from reports import tradeoff
    from bench import tidy
    from bench.store import Store
    from conftest import REPO
    doc = yaml.safe_load(open(os.path.join(REPO, "bench", "suites", "cifar-method.yaml")))
    doc["name"] = "cifar-method-small"
    doc["datasets"] = [{"name": "cifar", "subset": 300, "test_subset": 200}]
    doc["seeds"] = [0]
    tb = doc["train"][0]
    assert tb["trainer"] == "tb-penalty" and len(tb["grid"]["lam"]) >= 4   # the study's lam grid
    tb["grid"] = {"lam": [tb["grid"]["lam"][0], tb["grid"]["lam"][-1]]}   # two grid points
    lmt = next(e for e in doc["train"] if e["trainer"] == "lmt")
    lmt.pop("grid")
    doc["train"] = [tb, lmt]
    for e in doc["train"]:
        e["params"]["epochs"] = 1
    doc["verify"] = [v for v in doc["verify"] if v in ("trivial",) or (isinstance(v, dict) and v["verifier"] == "lower")]
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=REPO)
    r = subprocess.run([sys.executable, "-m", "bench", "run", "--suite", str(path), "--data-dir", cifar_folder,
                        "--out", str(out), "-j", "2"], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    import csv
    rows = list(csv.DictReader(open(out / "report-tradeoff.csv")))
    tb_rows = [x for x in rows if x["trainer"] == "tb-penalty"]
    assert {x["setting"] for x in tb_rows} == {"lam=0.01", "lam=1"}
    assert {float(x["eps"]) for x in rows} == {36 / 255, 72 / 255}
    assert {x["trainer"] for x in rows} == {"tb-penalty", "lmt"}
    for x in rows:
        assert 0 <= float(x["cert_best"]) <= float(x["clean_acc"]) and float(x["cert_trivial"]) <= float(x["cert_best"])
    store = Store(str(out), create=False)
    try:
        t = tradeoff.table(tidy.networks_frame(store.networks()), tidy.frame(store), store.certified())
    finally:
        store.close()
    words = tradeoff.sentence(tradeoff.settings(t), 36 / 255)
    assert words.startswith("At l2 radius 36/255") and "best tb-penalty setting" in words and "lmt" in words
