import importlib.util
import os
import shutil
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests/exact.py and test plug-ins, also for worker processes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(REPO, "..", "shared", "reference")
sys.path.insert(1, REPO)  # studies/: the research studies, used by their tests, not installed

#: What a test may need that a fresh set-up (the README's command) does not install: the
#: marker a test carries (``@pytest.mark.auto_lirpa``) -> (is it here?, what to do).  A
#: marked test skips with that reason when the requirement is absent; CI installs
#: auto_LiRPA afterwards and runs ``pytest -m auto_lirpa``.
OPTIONAL = {
    "auto_lirpa": (lambda: importlib.util.find_spec("auto_LiRPA") is not None,
                   "auto_LiRPA is not installed (the lirpa verifier): pip install packaging appdirs tqdm graphviz "
                   "&& pip install --no-deps 'auto_LiRPA @ git+https://github.com/Verified-Intelligence/auto_LiRPA'"),
    "gurobi": (lambda: importlib.util.find_spec("gurobipy") is not None,
               "gurobipy is not installed (pip install 'lipbench[mip]')"),
    "eclipse_nn": (lambda: importlib.util.find_spec("eclipse_nn") is not None,
                   "eclipse-nn is not installed (pip install 'lipbench[eclipse]')"),
    "orthogonium": (lambda: importlib.util.find_spec("orthogonium") is not None,
                    "orthogonium is not installed (pip install 'lipbench[lipnets]')"),
    "cuda": (lambda: torch.cuda.is_available(), "no CUDA device"),
    "poppler": (lambda: all(shutil.which(c) for c in ("pdftoppm", "pdfinfo", "pdftotext")),
                "poppler-utils (pdftoppm, pdfinfo, pdftotext) is not installed: apt-get install poppler-utils"),
}
_HAVE: dict = {}


def have(requirement: str) -> bool:
    """Whether an :data:`OPTIONAL` requirement is here (asked once per run)."""
    if requirement not in _HAVE:
        _HAVE[requirement] = bool(OPTIONAL[requirement][0]())
    return _HAVE[requirement]


def pytest_configure(config):
    for name, (_, why) in OPTIONAL.items():
        config.addinivalue_line("markers", f"{name}: needs it; skipped where absent ({why.split(':')[0]})")


def pytest_runtest_setup(item):
    for name, (_, why) in OPTIONAL.items():
        if item.get_closest_marker(name) is not None and not have(name):
            pytest.skip(why)


@pytest.fixture
def tiny_relu():
    from helpers import mlp
    return mlp([2, 6, 5, 3], seed=1)


@pytest.fixture(scope="session")
def hostile(tmp_path_factory):
    """The hostile suite (plug-ins that lie, crash, hog and hang, beside trivial and lower)
    run once through the CLI with the local executor: (folder, results folder, process)."""
    from helpers import HOSTILE, bench
    d = tmp_path_factory.mktemp("hostile")
    (d / "s.yaml").write_text(HOSTILE)
    out = str(d / "o")
    r = bench("run", "--suite", str(d / "s.yaml"), "--out", out, "--no-report")
    return d, out, r
