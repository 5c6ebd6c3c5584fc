import os
import sys

import pytest
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))  # tests/exact.py and test plug-ins, also for worker processes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(REPO, "..", "shared", "reference")


def mlp(sizes, act=nn.ReLU, bias=True, seed=0):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b, bias=bias), act()]
    return nn.Sequential(*layers[:-1])


@pytest.fixture
def tiny_relu():
    return mlp([2, 6, 5, 3], seed=1)


@pytest.fixture(scope="session")
def hostile(tmp_path_factory):
    """The hostile suite (plug-ins that lie, crash, hog and hang, beside trivial and lower)
    run once through the CLI with the local executor: (folder, results folder, process)."""
    from test_cli import HOSTILE, bench
    d = tmp_path_factory.mktemp("hostile")
    (d / "s.yaml").write_text(HOSTILE)
    out = str(d / "o")
    r = bench("run", "--suite", str(d / "s.yaml"), "--out", out, "--no-report")
    return d, out, r
