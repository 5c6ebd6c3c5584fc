"""The exact verifiers ``mip`` (both backends) and ``bab`` against region enumeration,
the class-pair trap, the soundness chain, budgets, and the LipBaB reference networks."""
import math
import os
import time

import numpy as np
import pytest
import torch
from torch import nn

import bench
from bench import witness
from bench.api import Query
from bench.network import from_npz
from conftest import REFERENCE, have
from helpers import mlp
from bench.testing.exact import norm, regions
from methods.layers import Abs, CReLU, MaxMin

INF = math.inf
BACKENDS = ["highs", pytest.param("gurobi", marks=pytest.mark.gurobi)]
BOX = {"center": [0.1, -0.2], "radius": 0.5}
DOMAINS = {"global": ("global", -100.0, 100.0), "box": (BOX, np.array([-0.4, -0.7]), np.array([0.6, 0.3]))}


def tiny(act, seed):
    """2-6-6-3 with biases; CReLU doubles the width it feeds."""
    torch.manual_seed(seed)
    layers, d = [], 2
    for i, w in enumerate([6, 6, 3]):
        layers.append(nn.Linear(d, w))
        d = w
        if i < 2:
            layers.append(act())
            d = 2 * w if act is CReLU else w
    return nn.Sequential(*layers)


_truth = {}


def truth(act, seed, dom, p, target):
    """Exact constant from every linear region of the domain (tests/exact.py)."""
    key = (act.__name__, seed, dom)
    if key not in _truth:
        _, lo, hi = DOMAINS[dom]
        _truth[key] = list(regions(tiny(act, seed), lo, hi))
    return max(norm(J, p, target) for J in _truth[key])


ACTS = [nn.ReLU, Abs, CReLU, MaxMin]


@pytest.mark.slow
@pytest.mark.parametrize("act", ACTS, ids=lambda a: a.__name__)
@pytest.mark.parametrize("dom", ["global", "box"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_mip_equals_enumeration(act, dom, backend):
    net = tiny(act, 1)
    for p in (1.0, INF):
        for target in (None, (0, 2)):
            exact = truth(act, 1, dom, p, target)
            b = bench.verify(net, "mip", p=p, target=target, domain=DOMAINS[dom][0], backend=backend)
            assert b.status == "ok" and b.kind == "exact", (p, target, b)
            assert b.value == pytest.approx(exact, rel=1e-6), (p, target, b.value, exact)
            assert b.stats["lower"] <= exact * (1 + 1e-9) <= b.value * (1 + 2e-9)


@pytest.mark.slow
@pytest.mark.parametrize("act", ACTS, ids=lambda a: a.__name__)
@pytest.mark.parametrize("dom", ["global", "box"])
def test_bab_equals_enumeration(act, dom):
    net = tiny(act, 2)
    for p in (1.0, 2.0, INF):
        for target in (None, (0, 2)):
            exact = truth(act, 2, dom, p, target)
            b = bench.verify(net, "bab", p=p, target=target, domain=DOMAINS[dom][0])
            assert b.status == "ok" and b.kind == "exact", (p, target, b)
            assert b.value == pytest.approx(exact, rel=1e-6), (p, target, b.value, exact)
            assert exact * (1 - 1e-9) <= b.value
            assert b.stats["lower"] <= exact * (1 + 1e-9)
            tr = b.stats["trace"]
            assert tr[-1][1] == b.stats["search_lower"] >= b.stats["lower"] and tr[-1][2] == b.value
            # time and lower grow, upper shrinks
            assert all(r1[0] <= r2[0] and r1[1] <= r2[1] and r1[2] >= r2[2] for r1, r2 in zip(tr, tr[1:]))


@pytest.mark.cuda
def test_bab_on_gpu_equals_cpu():
    net = mlp([3, 16, 16, 4], seed=5)
    dom = {"center": [0.1, 0.2, -0.3], "radius": 1.0}
    for p in (1.0, 2.0, INF):
        cpu = bench.verify(net, "bab", p=p, domain=dom)
        gpu = bench.verify(net, "bab", p=p, domain=dom, device="cuda", timeout=120)
        assert gpu.status == "ok", (gpu.error, gpu.stats.get("traceback"))
        assert cpu.kind == gpu.kind == "exact" and gpu.device.startswith("cuda") and gpu.stats["device"].startswith("cuda")
        assert gpu.value == pytest.approx(cpu.value, rel=1e-9)


def trap():
    net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.ReLU(), nn.Linear(1, 2, bias=False))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[2].weight.copy_(torch.tensor([[1.0], [-1.0]]))
    return net


@pytest.mark.parametrize("verifier,params", [("mip", {"backend": "highs"}), ("bab", {}), ("trivial", {}),
                                             pytest.param("mip", {"backend": "gurobi"}, marks=pytest.mark.gurobi)])
def test_class_pair_trap(verifier, params):
    """f = (relu(x), -relu(x)), margin f_0 - f_1 = 2 relu(x): l_inf constant 2."""
    for dom in ("global", {"center": [0.5], "radius": 1.0}):
        b = bench.verify(trap(), verifier, p=INF, target=(0, 1), domain=dom, **params)
        assert b.value >= 2.0 * (1 - 1e-12), b
        if verifier != "trivial":
            assert b.kind == "exact" and b.value == pytest.approx(2.0, rel=1e-9)
    # a box where the neuron is off: the constant is 0 there
    b = bench.verify(trap(), verifier, p=INF, target=(0, 1), domain={"center": [-2.0], "radius": 1.0}, **params)
    assert b.value >= 0.0
    if verifier != "trivial":
        assert b.value == pytest.approx(0.0, abs=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_soundness_chain_on_random_networks(seed):
    """lower <= mip = bab <= trivial where they close; lower <= exact <= bab's upper <=
    trivial on a budget where bab does not close (``max_nodes``)."""
    net = mlp([3, 10, 10, 4], seed=seed)
    dom = {"center": [0.2, -0.1, 0.3], "radius": 0.8}
    for p, target in [(INF, None), (1.0, (1, 3)), (INF, (0, 2))]:
        lo = bench.verify(net, "lower", p=p, target=target, domain=dom).value
        tb = bench.verify(net, "trivial", p=p, target=target, domain=dom).value
        m = bench.verify(net, "mip", p=p, target=target, domain=dom)
        bb = bench.verify(net, "bab", p=p, target=target, domain=dom)
        assert m.kind == bb.kind == "exact"
        assert m.value == pytest.approx(bb.value, rel=1e-6)
        assert lo <= m.value * (1 + 1e-9) and m.value <= tb * (1 + 1e-9)
        g = bench.verify(net, "bab", p=p, target=target, max_nodes=8)       # global: does not close
        gm = bench.verify(net, "mip", p=p, target=target)
        assert g.status == "timeout" and g.kind == "upper" and gm.kind == "exact"
        assert g.stats["lower"] <= gm.value * (1 + 1e-9) <= g.value * (1 + 2e-9)
        assert g.value <= bench.verify(net, "trivial", p=p, target=target).value


@pytest.mark.slow
@pytest.mark.parametrize("verifier,params", [("bab", {}), ("mip", {"backend": "highs"})])
def test_budget_is_honoured_and_bounds_kept(verifier, params):
    """5 s on a network neither closes (4 inputs, 3 x 48 units, global): status timeout,
    returned within the budget plus a small margin, both bounds kept."""
    net = mlp([4, 48, 48, 48, 2], seed=3)
    bench.verify(net, "trivial", timeout=5.0)    # the fork server's start (once per process) is not the job's
    t = time.perf_counter()
    b = bench.verify(net, verifier, p=INF, target=(0, 1), timeout=5.0, **params)
    wall = time.perf_counter() - t
    assert b.status == "timeout" and b.kind == "upper", b
    assert wall < 5.0 + 3.0, wall           # + worker start and the result's trip home
    tb = bench.verify(net, "trivial", p=INF, target=(0, 1)).value
    assert b.value is not None and b.value <= tb * (1 + 1e-9) or verifier == "bab"
    assert b.stats["lower"] is not None and 0 < b.stats["lower"] <= b.value


def test_review_cases():
    """Found by review: (1) a unit identically 0 on a region (Abs fed by an off ReLU) set an
    LP constraint no point meets, and bab dropped the region (said exact 1, truth 2); (2) a
    box 1e-7 wide: the LP's fixed 1e-9 margin accepted an empty pattern (bab said 3); (3)
    HiGHS with mip_feasibility_tolerance 1e-9 returned a too-low optimum (0.125 < 0.283)."""
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), Abs(), nn.Linear(2, 1, bias=False)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
        net[3].weight.copy_(torch.tensor([[-1.0, 1.0]]))
    for dom in ("global", {"center": [-1.0, 2.0], "radius": 0.5}):
        b = bench.verify(net, "bab", p=INF, domain=dom)
        assert b.kind == "exact" and b.value == pytest.approx(2.0, rel=1e-9), (dom, b)
        m = bench.verify(net, "mip", p=INF, domain=dom)
        assert m.value >= 2.0 * (1 - 1e-9) and (m.kind == "upper" or m.value == pytest.approx(2.0, rel=1e-9))
    kink = nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 1, bias=False)).double()
    with torch.no_grad():   # f = 2 relu(x - 1) - relu(1 - x): slopes 1 and 2, kink at 1
        kink[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        kink[0].bias.copy_(torch.tensor([-1.0, 1.0]))
        kink[2].weight.copy_(torch.tensor([[2.0, -1.0]]))
    for r in (1e-6, 1e-7, 3e-8, 1e-9):
        b = bench.verify(kink, "bab", p=INF, domain={"center": [1.0], "radius": r})
        assert b.value >= 2.0 * (1 - 1e-9) and (b.kind != "exact" or b.value == pytest.approx(2.0, rel=1e-9)), (r, b)
    torch.manual_seed(115)
    net = nn.Sequential(nn.Linear(2, 6), nn.ReLU(), nn.Linear(6, 2)).double()
    dom = {"center": [0.357, 0.28], "radius": 1.0}
    m = bench.verify(net, "mip", p=INF, target=(0, 1), domain=dom)
    b = bench.verify(net, "bab", p=INF, target=(0, 1), domain=dom)
    assert m.kind == b.kind == "exact" and m.value == pytest.approx(b.value, rel=1e-6) and m.value > 0.28


@pytest.mark.parametrize("verifier", ["mip", "bab"])
def test_affine_and_dead_networks(verifier):
    """No hidden layer: the matrix norm itself; a last ReLU that never fires: 0."""
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(3, 2))
    W = lin[0].weight.detach().double().numpy()
    for p, truth in [(1.0, np.abs(W).sum(0).max()), (INF, np.abs(W).sum(1).max())]:
        b = bench.verify(lin, verifier, p=p)
        assert b.kind == "exact" and b.value == pytest.approx(truth, rel=1e-9)
    dead = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with torch.no_grad():
        dead[0].bias.fill_(-10.0)
    b = bench.verify(dead, verifier, p=INF, domain={"center": [0.0, 0.0], "radius": 1.0})
    assert b.kind == "exact" and b.value == pytest.approx(0.0, abs=1e-12)


def test_mip_rejects_l2_and_non_pwl():
    net = mlp([2, 4, 2], seed=0)
    b = bench.verify(net, "mip", p=2)
    assert b.status == "unsupported" and "p in {1, inf}" in b.error
    tnet = mlp([2, 4, 2], act=nn.Tanh, seed=0)
    for v in ("mip", "bab"):
        b = bench.verify(tnet, v, p=INF)
        assert b.status == "unsupported" and "tanh" in b.error


@pytest.mark.gurobi
def test_gurobi_size_limit_is_a_status():
    """The pip licence of gurobipy refuses models above 2,000 variables or constraints."""
    net = mlp([4, 200, 200, 2], seed=0)
    b = bench.verify(net, "mip", p=INF, target=(0, 1), backend="gurobi", timeout=60)
    if b.status == "ok":
        pytest.skip("this gurobipy has an unrestricted licence")
    assert b.status == "license_limit", b
    assert b.stats["variables"] > 0 and "2,000" in b.error and "backend highs" in b.error


LIPBAB = os.path.join(REFERENCE, "lipbab")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(LIPBAB), reason="../shared/reference/lipbab absent")
@pytest.mark.parametrize("name", ["iris_net_4-5-5-3", "SDnet_10-15-10-3", "SDnet_10-20-15-10-3"])
def test_lipbab_reference_networks(name):
    """mip and bab agree for p = inf on the box [0, 0.1]^n; bab closes p = 1, 2 too and
    lower / trivial bracket it.  (SDnet_10-30-30-30-3 is in benchmarks/exact_scaling.py:
    ~20-30 s per norm.)"""
    net = from_npz(os.path.join(LIPBAB, name + ".npz"))
    n = net[0].in_features
    dom = {"center": [0.05] * n, "radius": 0.05}
    for p in (INF, 1.0, 2.0):
        bb = bench.verify(net, "bab", p=p, domain=dom)
        assert bb.status == "ok" and bb.kind == "exact", bb
        if p != 2.0:
            m = bench.verify(net, "mip", p=p, domain=dom)
            assert m.kind == "exact" and m.value == pytest.approx(bb.value, rel=1e-6)
        assert bench.verify(net, "lower", p=p, domain=dom).value <= bb.value * (1 + 1e-9)
        assert bb.value <= bench.verify(net, "trivial", p=p, domain=dom).value * (1 + 1e-9)


def test_lirpa_absent_or_too_old_says_not_installed(monkeypatch):
    from baselines.verify import lirpa
    net = mlp([2, 8, 1], seed=0)
    if not have("auto_lirpa"):
        b = bench.verify(net, "lirpa", p=INF, domain={"center": [0.0, 0.0], "radius": 1.0})
        assert b.status == "not_installed" and b.value is None
        assert "auto_LiRPA" in b.error and "pip install --no-deps" in b.error and "Verified-Intelligence" in b.error
    # a release without the Jacobian API (PyPI's 0.3) is reported as such
    monkeypatch.setattr(lirpa.Verifier, "missing", classmethod(lambda cls: []))
    monkeypatch.setattr(lirpa, "_installed_version", lambda: "0.3")
    assert lirpa.LiRPA.missing() == ["auto_LiRPA >= 0.5 (installed: 0.3, which has no Jacobian API)"]


@pytest.mark.auto_lirpa
def test_lirpa_bounds_the_exact_constant():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    dom = {"center": [0.0, 0.0], "radius": 1.0}
    for p, target in [(INF, None), (1.0, None), (2.0, None), (INF, (0, 2))]:
        ex = bench.verify(net, "bab", p=p, target=target, domain=dom)
        b = bench.verify(net, "lirpa", p=p, target=target, domain=dom)
        assert ex.kind == "exact" and b.status == "ok"
        assert ex.value * (1 - 1e-9) <= b.value
    assert bench.verify(net, "lirpa", p=INF).status == "unsupported"   # global: no box


@pytest.mark.slow
@pytest.mark.parametrize("act", [nn.ReLU, Abs, MaxMin], ids=lambda a: a.__name__)
def test_box_around_the_origin_of_a_bias_free_net(act):
    """Every region of a bias-free network is a cone at 0: a box holding the origin meets
    them all, where every unit has a tie.  Both verifiers still close, and equal the
    enumeration over the box."""
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(3, 8, bias=False), act(), nn.Linear(8, 8, bias=False), act(),
                        nn.Linear(8, 3, bias=False))
    dom = {"center": [0.1, -0.1, 0.0], "radius": 0.5}
    reg = list(regions(net, np.array([-0.4, -0.6, -0.5]), np.array([0.6, 0.4, 0.5])))
    for p, target in [(INF, None), (1.0, (0, 2))]:
        exact = max(norm(J, p, target) for J in reg)
        for v in ("mip", "bab"):
            b = bench.verify(net, v, p=p, target=target, domain=dom)
            assert b.kind == "exact" and b.value == pytest.approx(exact, rel=1e-6), (v, p, b, exact)
            # the witness of the lower bound lies in the box and gives the claimed bound again
            w = b.stats["witness"]
            for x in (w["x1"], w["x2"]):
                assert np.all(np.abs(np.array(x) - dom["center"]) <= dom["radius"])
            q = Query(p=p, target=target or "full", domain=dom)
            value, why = witness.check(net, (3,), q, w)
            assert why is None and b.stats["lower"] <= value * (1 + 1e-9), (v, value, b.stats["lower"])


def test_bab_and_mip_refuse_networks_above_their_size_limit_before_unrolling():
    from baselines.verify.pwl import MAX_UNITS_X_INPUTS
    net = nn.Sequential(nn.Linear(3000, 400), nn.ReLU(), nn.Linear(400, 10))
    assert 400 * 3000 > MAX_UNITS_X_INPUTS
    for v in ("bab", "mip"):
        t = time.perf_counter()
        b = bench.verify(net, v, p=float("inf"))
        assert b.status == "unsupported" and "400 units x 3,000 inputs" in b.error, b
        assert time.perf_counter() - t < 5


def tie_net(seed):
    """2-4-4-4-1 with biases (conftest.mlp): on the global domain the big-M program's
    optimum sits on activation patterns with no interior (ties, e.g. at t = 0 where layer 1
    is off and every later unit is at its kink) for these seeds, found by a seeded search."""
    return mlp([2, 4, 4, 4, 1], seed=seed)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed,p", [(2, INF), (2, 1.0), (8, INF)])
def test_mip_cuts_tie_patterns_until_its_incumbent_is_a_real_region(seed, p, backend):
    """Without cuts (max_cuts = 0, mip version 4's behaviour) the program closes on a tie:
    kind upper, well above the truth.  With them mip is exact and equals bab and the region
    enumeration."""
    from bench.testing.exact import exact_lipschitz
    net = tie_net(seed)
    truth_ = exact_lipschitz(net, p)
    old = bench.verify(net, "mip", p=p, backend=backend, max_cuts=0)
    assert old.status == "ok" and old.kind == "upper" and old.stats["cuts"] == 0, old
    assert "(a tie)" in old.stats["note"] and "max_cuts = 0" in old.stats["note"]
    assert old.value > truth_ * 1.05
    m = bench.verify(net, "mip", p=p, backend=backend)
    assert m.status == "ok" and m.kind == "exact", m
    assert m.stats["cuts"] >= 1 and m.stats["cuts_s"] >= 0 and "note" not in m.stats
    assert m.value == pytest.approx(truth_, rel=1e-6)
    assert m.stats["lower"] <= truth_ * (1 + 1e-9) <= m.value * (1 + 2e-9)
    b = bench.verify(net, "bab", p=p)
    assert b.kind == "exact" and m.value == pytest.approx(b.value, rel=1e-6)


def test_mip_keeps_the_last_sound_bound_when_a_re_solve_is_refused(monkeypatch):
    """Gurobi's size-limited licence may refuse the program once cuts are added: the first
    solve's dual bound stands, kind upper, and the note says why (HiGHS stands in here)."""
    from baselines.verify import mip
    real, calls = mip._highs, []

    def refusing(*args):
        calls.append(1)
        out = real(*args)
        return out if len(calls) == 1 else {"backend": "gurobi", "license_limit": True, "status_text": "size-limited",
                                            "t_start": out["t_start"]}
    monkeypatch.setattr(mip, "_highs", refusing)
    b = bench.verify(tie_net(2), "mip", p=INF)
    assert len(calls) == 2 and b.status == "ok" and b.kind == "upper" and b.stats["cuts"] == 1, b
    assert "licence refused the program with 1 cuts" in b.stats["note"]
    assert b.value >= 0.0797301959 * (1 - 1e-9)
