"""Networks from outside lipbench: ``python -m bench verify MODEL`` on networks made here
(an ONNX export, saved modules, package.module:attribute) and on the VNN-COMP files when
present; input boxes from .vnnlib files; suites with ``networks:``; every error one line,
exit 2, with nothing stored touched; a second run reuses what is stored."""
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

from conftest import REFERENCE, REPO
from helpers import mlp
from bench.api import Query, UserError
from bench.sources import read, read_box

VNN = os.path.join(REFERENCE, "vnncomp2021")
needs_vnn = pytest.mark.skipif(not os.path.isdir(VNN), reason=f"the VNN-COMP reference networks are not in {VNN}")

ACAS_PROP_1 = """; ACAS Xu property 1 (its input box)
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const X_2 Real)
(declare-const X_3 Real)
(declare-const X_4 Real)
(declare-const Y_0 Real)
(assert (<= X_0 0.679857769))
(assert (>= X_0 0.6))
(assert (<= X_1 0.5))
(assert (>= X_1 -0.5))
(assert (<= X_2 0.5))
(assert (>= X_2 -0.5))
(assert (<= X_3 0.5))
(assert (>= X_3 0.45))
(assert (<= X_4 -0.45))
(assert (>= X_4 -0.5))
(assert (>= Y_0 3.991125645861615))
"""


def small(seed=0):
    """The 4-8-3 ReLU MLP these tests read back, in eval mode."""
    return mlp([4, 8, 3], seed=seed).eval()


def export(module, path, shape):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, *shape),), str(path), dynamo=False)
    return str(path)


def bench(*args, cwd=None, timeout=600, **env):
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd or REPO, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONPATH=REPO, **env))


def store_rows(out, table="results"):
    db = sqlite3.connect(os.path.join(out, "lipbench.sqlite"))
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(f"SELECT * FROM {table}")]
    finally:
        db.close()


# --------------------------------------------------------------------------- sources
def test_every_source_reads_the_same_function(tmp_path):
    m = small()
    x = torch.randn(5, 4)
    want = m(x).double()
    onnx_path = export(m, tmp_path / "m.onnx", (4,))
    torch.save(m, tmp_path / "whole.pt")
    torch.jit.script(m).save(str(tmp_path / "script.pt"))
    (tmp_path / "mynets.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn
        def make():
            torch.manual_seed(0)
            return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        NET = make()
    """))
    sys.path.insert(0, str(tmp_path))
    try:
        for src in (onnx_path, str(tmp_path / "whole.pt"), str(tmp_path / "script.pt"), "mynets:NET", "mynets:make"):
            module, shape = read(src)
            assert shape in (None, (4,)), src
            assert torch.allclose(module.double()(x.double()), want, atol=1e-5), src
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mynets", None)


def test_unreadable_sources_are_one_line_errors(tmp_path):
    torch.save(small().state_dict(), tmp_path / "weights.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    cases = {str(tmp_path / "weights.pt"): "a state dict", str(tmp_path / "junk.pt"): "not a readable torch file",
             str(tmp_path / "none.onnx"): "no such file", "nosuchpackage_xyz:NET": "cannot import",
             "json:dumps": "calling dumps\\(\\) failed", "os:sep": "not a torch nn.Module",
             "model.h5": "lipbench reads networks from"}
    for src, words in cases.items():
        with pytest.raises(UserError, match=words):
            read(src)


def test_vnnlib_and_text_boxes(tmp_path):
    f = tmp_path / "prop.vnnlib"
    f.write_text(ACAS_PROP_1)
    box = read_box(str(f))
    assert box == {"lower": [0.6, -0.5, -0.5, 0.45, -0.5], "upper": [0.679857769, 0.5, 0.5, 0.5, -0.45]}
    q = Query(domain=box)
    lo, hi = q.box()
    assert np.allclose(lo, box["lower"], rtol=0, atol=1e-15) and np.allclose(hi, box["upper"], rtol=0, atol=1e-15)
    t = tmp_path / "box.txt"
    t.write_text("# lower upper\n0 1\n-1, 2\n")
    assert read_box(str(t)) == {"lower": [0.0, -1.0], "upper": [1.0, 2.0]}
    half = tmp_path / "half.vnnlib"
    half.write_text("(assert (<= X_0 1.0))\n(assert (>= X_0 0.0))\n(assert (<= X_1 1.0))\n")
    with pytest.raises(UserError, match="X_1 has no lower bound"):
        read_box(str(half))
    (tmp_path / "bad.txt").write_text("0 1 2\n")
    with pytest.raises(UserError, match="line 1: expected two numbers"):
        read_box(str(tmp_path / "bad.txt"))
    with pytest.raises(UserError, match="lower > upper at input 1"):
        Query(domain={"lower": [0, 2], "upper": [1, 1]})


def test_verifiers_bound_a_box_of_unequal_sides_soundly():
    """bab and lower on a box whose sides differ, against the constant enumerated over it."""
    import bench
    from bench.testing.exact import exact_lipschitz
    m = small(3).double()
    box = {"lower": [-0.2, 0.1, -1.0, 0.3], "upper": [0.3, 0.15, 1.0, 0.35]}
    for p in (2, "inf"):
        exact = exact_lipschitz(m, Query(p=p).p, None, np.array(box["lower"]), np.array(box["upper"]))
        b = bench.verify(m, "bab", p=p, domain=box)
        lo = bench.lower_bound(m, p=p, domain=box)
        assert b.status == "ok" and exact * (1 - 1e-6) <= b.value <= exact * (1 + 1e-6), (p, b, exact)
        assert lo.value <= exact * (1 + 1e-9)
        wide = bench.verify(m, "bab", p=p, domain={"center": [0.05, 0.125, 0.0, 0.325], "radius": 1.0})
        assert wide.value >= b.value * (1 - 1e-9)   # a box that holds it: no smaller


# --------------------------------------------------------------------------- bench verify
@pytest.mark.slow
def test_verify_an_onnx_export_then_reuse_the_store(tmp_path):
    path = export(small(), tmp_path / "net.onnx", (4,))
    out = str(tmp_path / "out")
    r = bench("verify", path, "--verifier", "trivial", "lower", "lipsdp", "--p", "2", "inf", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "p=2, global" in r.stdout and "p=inf, global" in r.stdout
    assert "tightest sound bound: " in r.stdout
    assert "unsupported: lipsdp supports p in {2}, not inf" in r.stdout
    rows = store_rows(out)
    assert {(x["verifier"], x["p"]) for x in rows} == {(v, p) for v in ("trivial", "lower", "lipsdp")
                                                       for p in ("2", "inf")}
    net = store_rows(out, "networks")[0]
    src = json.loads(net["source"])
    assert net["trainer"] == "external" and src["source"] == path and len(src["sha256"]) == 16
    trivial2 = next(x for x in rows if x["verifier"] == "trivial" and x["p"] == "2")
    assert f"{trivial2['value']:.6g}" in r.stdout
    jobs = {j["key"]: j["finished"] for j in store_rows(out, "jobs")}
    again = bench("verify", path, "--verifier", "trivial", "lower", "lipsdp", "--p", "2", "inf", "--out", out)
    assert again.returncode == 0, again.stderr
    assert {j["key"]: j["finished"] for j in store_rows(out, "jobs")} == jobs   # nothing ran again
    assert "(1 already done)" in again.stderr
    shown = bench("show", "--all", "--out", out)
    assert shown.returncode == 0 and "trivial" in shown.stdout
    report = bench("report", "--out", out)   # the store's own suite, "verify"
    assert report.returncode == 0 and os.path.getsize(os.path.join(out, "report.pdf")) > 0, report.stderr


@pytest.mark.slow
def test_verify_a_saved_module_a_box_and_a_class_pair(tmp_path):
    torch.save(small(1), tmp_path / "net.pt")
    (tmp_path / "box.txt").write_text("\n".join(f"{-0.1 * i} {0.1 * i + 0.05}" for i in range(4)))
    out = str(tmp_path / "out")
    r = bench("verify", str(tmp_path / "net.pt"), "--verifier", "trivial", "bab", "lower", "--p", "inf",
              "--target", "0", "2", "--box-file", str(tmp_path / "box.txt"), "--out", out, "--timeout", "30")
    assert r.returncode == 0, r.stderr
    assert "p=inf, margin 0-2, over the box of" in r.stdout
    rows = store_rows(out)
    bab = next(x for x in rows if x["verifier"] == "bab")
    lower = next(x for x in rows if x["verifier"] == "lower")
    assert bab["status"] == "ok" and bab["kind"] == "exact" and lower["value"] <= bab["value"] * (1 + 1e-9)
    assert "tightest sound bound: bab" in r.stdout
    assert json.loads(store_rows(out, "networks")[0]["box"])["lower"][3] == pytest.approx(-0.3)


@pytest.mark.slow
def test_verify_module_attribute_without_out(tmp_path):
    (tmp_path / "netdef.py").write_text("from torch import nn\nNET = nn.Sequential(nn.Linear(3, 2))\n")
    r = bench("verify", "netdef:NET", "--verifier", "trivial", "--p", "2", cwd=str(tmp_path), TMPDIR=str(tmp_path))
    assert r.returncode == 0, r.stderr
    folder = r.stdout.strip().splitlines()[-1].split("store: ", 1)[1].split(" ")[0]
    assert folder.startswith(os.path.join(str(tmp_path), "lipbench-verify", "NET-"))
    assert store_rows(folder)[0]["status"] == "ok"


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing", "unreadable", "verifier", "box", "shape", "state_dict"])
def test_verify_errors_are_one_line_and_touch_nothing(tmp_path, case):
    good = export(small(), tmp_path / "net.onnx", (4,))
    out = str(tmp_path / "out")
    first = bench("verify", good, "--verifier", "trivial", "--p", "2", "--out", out)
    assert first.returncode == 0, first.stderr
    before = store_rows(out, "jobs")
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07junk")
    torch.save(small().state_dict(), tmp_path / "sd.pt")
    args, words = {
        "missing": ([str(tmp_path / "nope.onnx")], "no such file"),
        "unreadable": ([str(tmp_path / "junk.onnx")], "not a readable ONNX model"),
        "verifier": ([good, "--verifier", "nosuch"], "unknown verifier"),
        "box": ([good, "--box", "0,0", "0.5"], "the box has 2 inputs, the network 4"),
        "shape": ([good, "--input-shape", "5"], "differs from the file's input"),
        "state_dict": ([str(tmp_path / "sd.pt")], "a state dict"),
    }[case]
    r = bench("verify", *args, "--out", out)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert words in r.stderr
    assert store_rows(out, "jobs") == before


@pytest.mark.slow
@needs_vnn
def test_verify_acas_xu_over_its_property_box(tmp_path):
    (tmp_path / "prop_1.vnnlib").write_text(ACAS_PROP_1)
    out = str(tmp_path / "out")
    r = bench("verify", os.path.join(VNN, "ACASXU_run2a_1_1_batch_2000.onnx"), "--box-file",
              str(tmp_path / "prop_1.vnnlib"), "--verifier", "trivial", "lower", "lipsdp", "--p", "2", "--out", out)
    assert r.returncode == 0, r.stderr
    rows = {x["verifier"]: x for x in store_rows(out)}
    assert rows["lipsdp"]["status"] == "unsupported"   # a global bound only
    assert 0 < rows["lower"]["value"] <= rows["trivial"]["value"]
    assert "tightest sound bound: trivial" in r.stdout


# --------------------------------------------------------------------------- suites
SUITE = """
name: ext
networks:
  - {source: net.onnx, name: small, family: tiny, dataset: {name: synthetic, dim: 4, classes: 3, n: 60},
     box: {lower: [0, 0, 0, 0], upper: [1, 1, 0.5, 1]}}
  - {source: netdef:NET, name: code}
queries: [{p: 2}, {p: inf, domain: box}]
verify: [trivial, lower]
certify: {eps: {2: [0.01, 0.1]}}
"""


@pytest.mark.slow
def test_a_suite_of_networks_from_files_and_code(tmp_path):
    export(small(), tmp_path / "net.onnx", (4,))
    (tmp_path / "netdef.py").write_text("from torch import nn\nNET = nn.Sequential(nn.Linear(4, 3))\n")
    (tmp_path / "ext.yaml").write_text(SUITE)
    listed = bench("list", str(tmp_path / "ext.yaml"), cwd=str(tmp_path))
    assert listed.returncode == 0 and "network small: net.onnx, family tiny" in listed.stdout, listed.stderr
    out = str(tmp_path / "out")
    r = bench("run", "--suite", "ext.yaml", "--out", out, "--no-report", cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    nets = {n["id"].rsplit("-", 1)[0]: n for n in store_rows(out, "networks")}
    assert set(nets) == {"small", "code"}
    assert 0 <= nets["small"]["clean_acc"] <= 1 and nets["code"]["clean_acc"] is None
    assert json.loads(nets["small"]["trainer_params"]) == {"family": "tiny"}
    rows = store_rows(out)
    # the box query only for the network that has a box: 2 verifiers x (2 + 1) queries
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    boxed = [r for r in rows if r["domain"] != '"global"']
    assert {r["network"] for r in boxed} == {nets["small"]["id"]}
    from bench.tidy import frame
    assert set(frame(out).method) == {"external tiny", "external"}
    cert = store_rows(out, "certified")   # only the network with a data set, from its global p = 2 bound
    assert {c["network"] for c in cert} == {nets["small"]["id"]} and {c["verifier"] for c in cert} == {"trivial"}
    assert all(c["clean_acc"] == pytest.approx(nets["small"]["clean_acc"]) for c in cert)


@pytest.mark.parametrize("entry,words", [
    ("{source: a.onnx, nme: x}", "unknown key 'nme' in networks entry"),
    ("{source: model.h5}", "lipbench reads networks from"),
    ("{source: a.onnx, input_shape: [0, 3]}", "input_shape is a list of positive whole numbers"),
    ("{source: a.onnx, box: {lower: [1], upper: [0]}}", "lower > upper"),
    ("{source: a.onnx, dataset: nosuch}", "unknown data set"),
])
def test_bad_network_entries_name_their_line(entry, words):
    from bench.suite import parse_suite
    with pytest.raises(UserError, match="line 3: .*" + words.replace("(", "\\(").replace("[", "\\[")):
        parse_suite(f"name: x\nnetworks:\n  - {entry}\nverify: [trivial]\n")


def test_two_networks_of_one_name_and_a_suite_of_nothing():
    from bench.suite import parse_suite
    with pytest.raises(UserError, match="line 1: network name 'a' is used twice"):
        parse_suite("networks: [a.onnx, x/a.onnx]\nverify: [trivial]\n")
    with pytest.raises(UserError, match="line 2: network name 'a b': letters, digits"):
        parse_suite("networks:\n  - {source: a.onnx, name: a b}\nverify: [trivial]\n")
    with pytest.raises(UserError, match="line 2: .*lipbench reads networks from"):
        parse_suite("networks:\n  - model.h5\nverify: [trivial]\n")
    with pytest.raises(UserError, match="trains networks \\(train:\\), reads them \\(networks:\\), or both"):
        parse_suite("name: x\nverify: [trivial]\n")


@pytest.mark.slow
def test_vnncomp_without_its_files_names_the_command(tmp_path):
    r = bench("run", "--suite", "vnncomp", "--data-dir", str(tmp_path), "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "get it with: python -m bench data vnncomp" in r.stderr
    assert not os.path.exists(tmp_path / "out" / "lipbench.sqlite")
