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
