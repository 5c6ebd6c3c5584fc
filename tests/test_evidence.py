"""The report's evidence pages: the claims are computed from the store, with numbers."""
import os
import shutil
import subprocess

import pytest

from bench.store import Store
from reports import evidence
from test_cli import bench

MINI = """\
name: mini-paper
datasets: [{name: synthetic, n: 300, dim: 6, classes: 3}]
seeds: [0]
timeout: 120
train:
  - trainer: standard
    archs: [{hidden: [16, 16], activation: relu, bias: true}]
    params: {epochs: 15}
  - trainer: tb-penalty
    archs: [{hidden: [16, 16], activation: abs, bias: false}, {hidden: [16, 16], activation: relu, bias: false}]
    params: {epochs: 15, lam: 0.1, p: 2}
queries: [{p: 2}, {p: inf}]
verify:
  - trivial
  - verifier: lower
    params: {samples: 500, restarts: 8, steps: 20}
certify:
  eps: {2: [0.05, 0.1], inf: [0.01]}
"""


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    d = tmp_path_factory.mktemp("mini")
    (d / "mini.yaml").write_text(MINI)
    r = bench("run", "--suite", str(d / "mini.yaml"), "--out", str(d / "o"))
    assert r.returncode == 0, r.stderr
    return str(d / "o")


@pytest.mark.slow
def test_claims_are_measured(mini):
    s = Store(mini, create=False)
    nets = [dict(n) for n in s.networks()]
    s.close()
    from bench.tidy import frame
    rows = frame(mini)   # the evidence reads the tidy frame
    lines = evidence.claims(nets, rows)
    tight = [l for l in lines if l.startswith("Tightness, p=2")]
    assert len(tight) == 1 and ("1 of 1" in tight[0] or "0 of 1" in tight[0])
    assert any(l.startswith("    contrast, standard-trained ReLU") for l in lines)
    size = [l for l in lines if l.startswith("Size, synthetic 16-16, p=2")]
    assert len(size) == 1 and "x smaller" in size[0]
    # the numbers in the claim are the store's numbers
    ab = next(n for n in nets if "abs" in n["id"])
    recs = rows.to_dict("records")
    tb = next(r["value"] for r in recs if r["network"] == ab["id"] and r["verifier"] == "trivial" and r["p"] == "2")
    lo = next(r["value"] for r in recs if r["network"] == ab["id"] and r["verifier"] == "lower" and r["p"] == "2")
    assert f"median {tb / lo:.3f}" in tight[0]
    table = evidence.config_table(nets, rows, [])
    assert {r["config"] for r in table} == {"synthetic mlp16-16-relu standard", "synthetic mlp16-16-abs-nobias tb-penalty p=2",
                                             "synthetic mlp16-16-relu-nobias tb-penalty p=2"}
    abl = {r[0]: r for r in evidence.ablation(nets, rows)}
    assert abl["synthetic mlp16-16-abs-nobias tb-penalty p=2"][1] == "0.00"  # |x| has no dead units
    assert float(abl["synthetic mlp16-16-relu standard"][1]) > 0


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="poppler-utils not installed")
def test_report_shows_the_evidence(mini):
    subprocess.run(["pdftotext", os.path.join(mini, "report.pdf"), os.path.join(mini, "r.txt")], check=True)
    text = open(os.path.join(mini, "r.txt")).read()
    assert "Evidence: the paper's claims" in text and "Tightness, p=2" in text
    assert "Certified robust accuracy" in text and "Obstructions" in text


def test_anytime_pages_plot_traces_unclosed_first(tmp_path):
    """bab's traces become panels, mip's final bounds too (it keeps no trace); unclosed runs
    come first; titles print the absolute bounds."""
    import json

    import pandas as pd
    from matplotlib.backends.backend_pdf import PdfPages
    from reports import figures as rf
    base = {"best_lower": None, "query": "p=inf"}
    df = pd.DataFrame([
        {**base, "verifier": "bab", "value": 2.0, "kind": "exact", "status": "ok", "cost_s": 1.0, "network": "a",
         "stats": json.dumps({"lower": 2.0, "trace": [[0.01, 0.5, 3.0], [0.9, 2.0, 2.0]]})},
        {**base, "verifier": "bab", "value": 4.0, "kind": "upper", "status": "timeout", "cost_s": 5.0, "network": "b",
         "query": "p=1, 0-1", "stats": json.dumps({"trace": [[0.01, 0.5, 9.0], [4.9, 1.0, 4.0]], "gap": 0.75,
                                                    "lower": 1.0})},
        {**base, "verifier": "mip", "value": 3.0, "kind": "exact", "status": "ok", "cost_s": 0.5, "network": "a",
         "stats": json.dumps({"upper": 3.0, "lower": 3.0})},
        {**base, "verifier": "trivial", "value": 9.0, "kind": "upper", "status": "ok", "cost_s": 0.1, "network": "a",
         "stats": "{}"},
    ])
    seen = []
    orig = rf.plt.subplots

    def spy(*a, **k):
        fig, axes = orig(*a, **k)
        seen.append(axes)
        return fig, axes
    rf.plt.subplots = spy
    try:
        with PdfPages(tmp_path / "t.pdf") as pdf:
            rf.anytime_pages(pdf, df)
            assert pdf.get_pagecount() == 1
    finally:
        rf.plt.subplots = orig
    titles = [ax.get_title() for ax in seen[0].flat if ax.axison]
    assert len(titles) == 3 and titles[0].startswith("b")
    assert "timeout after 5 s: upper 4, lower 1" in titles[0]
    assert "bab, p=inf: exact 2 after 1 s" in titles[1] and "mip, p=inf: exact 3 after 0.5 s" in titles[2]
    assert all(ax.get_ylabel().startswith("Lipschitz bound") for ax in seen[0].flat if ax.axison)
