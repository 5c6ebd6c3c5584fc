"""The hand-built families of the suite ``hard`` (baselines/train/construct.py,
docs/hard.md) on their smallest instances: each claim against region enumeration
(``exact_lipschitz``), the exact verifiers (bab, mip) against it, the SDP bounds against
the trivial bound and the pattern bound that the docs prove, and the report's table."""
import itertools
import json

import numpy as np
import pandas as pd
import pytest

import bench
from bench.data import load
from bench.registry import import_plugin
from bench.suite import load_suite
from bench.testing import check_trainer
from bench.testing.exact import exact_lipschitz

import_plugin("baselines.train.construct")
from baselines.train.construct import build, construct  # noqa: E402

SMALL = [("gate", {"width": 4, "bias": b}) for b in (0.0, 0.25, 0.5, 0.75, 1.0)] + \
        [("identity", {"depth": d}) for d in (1, 2, 3)] + [("abs", {"depth": d}) for d in (1, 2, 3)] + \
        [("sawtooth", {"width": n}) for n in (1, 2, 3, 4, 5)]


def _pattern_bound(layers) -> float:
    """max ||W_L D_L ... D_1 W_0||_2 over 0/1 diagonals D (brute force)."""
    Ws = [np.asarray(W) for W, _ in layers]
    best = 0.0
    for pats in itertools.product(*[itertools.product((0, 1), repeat=W.shape[0]) for W in Ws[:-1]]):
        M = Ws[0]
        for D, W in zip(pats, Ws[1:]):
            M = W @ (np.asarray(D, float)[:, None] * M)
        best = max(best, float(np.linalg.norm(M, 2)))
    return best


@pytest.mark.parametrize("family,kw", SMALL, ids=[f"{f}-{list(k.values())}" for f, k in SMALL])
def test_claims_hold_by_enumeration(family, kw):
    layers, claims = construct(family, **kw)
    net = build(layers, 2, 3)   # input 1 of 2, output 1 of 3: every p has the same constant
    for p in (1.0, 2.0, float("inf")):
        assert exact_lipschitz(net, p) == pytest.approx(claims["exact"], abs=1e-9)
    assert np.prod([np.linalg.norm(W, 2) for W, _ in layers]) == pytest.approx(claims["tb"], rel=1e-12)
    assert _pattern_bound(layers) == pytest.approx(claims["pattern_bound"], rel=1e-12)


EXACT = [("gate", {"width": 4, "bias": 0.5}), ("gate", {"width": 4, "bias": 0.75}), ("identity", {"depth": 3}),
         ("abs", {"depth": 3}), ("sawtooth", {"width": 4})]


@pytest.mark.parametrize("family,kw", EXACT, ids=[f"{f}-{list(k.values())}" for f, k in EXACT])
def test_exact_verifiers_agree_with_enumeration(family, kw):
    net = build(construct(family, **kw)[0], 1, 2)
    for verifier, p in (("bab", 2), ("mip", "inf")):
        b = bench.verify(net, verifier, p=p)
        assert b.status == "ok" and b.kind == "exact", b
        assert b.value == pytest.approx(exact_lipschitz(net, float(p)), rel=1e-6, abs=1e-9)
    box = bench.verify(net, "bab", p=2, domain={"center": [0.0], "radius": 1.0})   # the suite's box holds every kink
    assert box.kind == "exact" and box.value == pytest.approx(exact_lipschitz(net, 2.0, lo=-1, hi=1), rel=1e-6)


def _sdp(net, verifier, **params):
    b = bench.verify(net, verifier, p=2, **params)
    assert b.status == "ok", b
    return b.value


def test_gate_sdp_bounds_are_blind_to_the_bias():
    """Fixed weights, growing bias: the SDP bounds stay at the trivial bound m = 4 while
    the exact constant falls to 1 (and to 0 at beta = 1)."""
    for beta, exact in ((0.0, 4.0), (0.75, 1.0)):
        layers, claims = construct("gate", width=4, bias=beta)
        net = build(layers, 1, 2)
        assert claims["exact"] == exact
        for verifier, params in (("lipsdp", {"solver": "SCS"}), ("lipsdp", {"solver": "SCS", "form": "layer"}),
                                 ("eclipse-fast", {})):
            assert _sdp(net, verifier, **params) >= 4.0 * (1 - 1e-6)
    assert construct("gate", width=4, bias=1.0)[1]["exact"] == 0.0


def test_identity_sdp_bounds_equal_the_trivial_bound():
    """2^L for depth L (here 3) against the exact constant 1."""
    net = build(construct("identity", depth=3)[0], 1, 2)
    tb = bench.verify(net, "trivial", p=2).value
    assert tb == pytest.approx(8.0, rel=1e-6)
    for verifier, params in (("lipsdp", {"solver": "SCS"}), ("lipsdp", {"solver": "NATIVE"}), ("eclipse-fast", {})):
        assert _sdp(net, verifier, **params) >= 8.0 * (1 - 1e-6)


def test_sawtooth_sdp_bound_is_at_least_half_the_trivial_bound():
    net = build(construct("sawtooth", width=4)[0], 1, 2)
    assert bench.verify(net, "trivial", p=2).value == pytest.approx(4.0, rel=1e-6)
    assert _sdp(net, "lipsdp", solver="SCS") >= 2.0 * (1 - 1e-6)


def test_abs_contrast_lipsdp_is_exact():
    """The contrast: the pattern bound is 1 and LipSDP-Neuron finds the exact constant 1,
    while the trivial bound is 2^L."""
    net = build(construct("abs", depth=3)[0], 1, 2)
    assert bench.verify(net, "trivial", p=2).value == pytest.approx(8.0, rel=1e-6)
    assert _sdp(net, "lipsdp", solver="SCS") == pytest.approx(1.0, rel=1e-3)


def test_trainer_conforms_and_reads_the_data_set():
    assert "trained (2)" in check_trainer("construct", {"family": "gate", "width": 3, "bias": 0.5})
    from bench.api import Budget
    from bench.registry import get_trainer
    ds = load({"name": "synthetic", "n": 40, "dim": 3, "classes": 4})
    net, metrics = get_trainer("construct")(family="identity", depth=2).train(ds, {}, 0, Budget(10.0))
    assert net[0].in_features == 3 and net[-1].out_features == 4
    assert metrics["claimed"] == {"exact": 1.0, "tb": 4.0, "pattern_bound": 4.0} and metrics["family"] == "identity"
    assert exact_lipschitz(net, 2.0) == 1.0


def test_suite_parses_into_each_family_member():
    s = load_suite("hard")
    fams = [json.dumps({k: j.params[k] for k in ("family", "depth", "width", "bias")}) for j in s.train_jobs("/tmp/x")]
    assert len(fams) == len(set(fams)) == 29
    assert {j.params["family"] for j in s.train_jobs("/tmp/x")} == {"gate", "identity", "sawtooth", "abs"}


def test_family_frame_reads_bounds_and_the_varying_parameter():
    from reports.figures import family_frame
    rows = []
    for depth in (1, 2):
        tp = json.dumps({"arch": {}, "family": "identity", "depth": depth, "width": 8, "bias": 0.0})
        for verifier, vp, kind, value, dom in (
                ("trivial", {}, "upper", 2.0 ** depth, "global"), ("lipsdp", {"form": "neuron"}, "upper", 2.0 ** depth,
                                                                    "global"),
                ("lipsdp", {"form": "layer"}, "upper", 2.0 ** depth + 0.5, "global"),
                ("bab", {}, "exact", 1.0, "global"), ("lirpa", {}, "upper", 2.0 ** depth, '{"center": [0.0]}')):
            rows.append({"network": f"n{depth}", "trainer_params": tp, "verifier": verifier,
                         "verifier_params": json.dumps(vp), "p": "2", "target": "full", "status": "ok", "kind": kind,
                         "value": value, "domain": dom})
    f = family_frame(pd.DataFrame(rows))
    assert list(f.value_of_parameter) == [1, 2] and set(f.parameter) == {"depth"}
    assert list(f["LipSDP-Neuron"]) == [2.0, 4.0] and list(f["LipSDP-Layer"]) == [2.5, 4.5]
    assert list(f["lirpa (box)"]) == [2.0, 4.0] and list(f["LipSDP-Neuron / exact"]) == [2.0, 4.0]
