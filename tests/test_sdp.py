"""SDP verifiers: LipSDP (neuron, layer), ECLipsE, ECLipsE-Fast; certification."""
import math
import os

import numpy as np
import pytest
import torch
from torch import nn

import bench
from conftest import REFERENCE, mlp
from bench.testing.exact import exact_lipschitz

pytest.importorskip("cvxpy", reason="the sdp extra is not installed")
from baselines.verify.sdp_common import Chain, RepairError, certify, check  # noqa: E402

LIPSDP = os.path.join(REFERENCE, "lipsdp")


def from_mat(name):
    import scipy.io
    W = scipy.io.loadmat(os.path.join(LIPSDP, name))["weights"][0]
    layers = []
    for k, w in enumerate(W):
        lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
        lin.weight.data = torch.tensor(w, dtype=torch.float64)
        layers += [lin, nn.ReLU()] if k < len(W) - 1 else [lin]
    return nn.Sequential(*layers).double()


@pytest.mark.skipif(not os.path.isdir(LIPSDP), reason="../shared/reference/lipsdp absent")
@pytest.mark.parametrize("solver", ["CLARABEL", "SCS", "NATIVE"])
def test_reproduces_the_published_lipsdp_values(solver):
    """The LipSDP authors publish, for random_weights.mat (2-10-30-20-2):
    LipSDP-Neuron 36.482 and LipSDP-Layer 39.839."""
    net = from_mat("random_weights.mat")
    neuron = bench.verify(net, "lipsdp", p=2, form="neuron", solver=solver, eps=1e-7)
    layer = bench.verify(net, "lipsdp", p=2, form="layer", solver=solver, eps=1e-7)
    assert neuron.status == "ok" and layer.status == "ok", (neuron.error, layer.error)
    assert round(neuron.value, 3) == 36.482 and round(layer.value, 3) == 39.839
    assert neuron.stats["lmi_lambda_max"] + neuron.stats["lmi_margin"] <= 0
    fast = bench.verify(net, "eclipse-fast", p=2).value
    ecl = bench.verify(net, "eclipse", p=2).value
    triv = bench.verify(net, "trivial", p=2).value
    assert neuron.value <= ecl * (1 + 1e-4) and ecl <= fast * (1 + 1e-9) and layer.value <= triv


@pytest.mark.skipif(not os.path.isdir(LIPSDP), reason="../shared/reference/lipsdp absent")
@pytest.mark.slow
def test_mnist_reference_network_ordering():
    net = from_mat("mnist_weights.mat")  # 784-50-10
    low = bench.lower_bound(net, p=2, samples=500, restarts=8, steps=20).value
    neuron = bench.verify(net, "lipsdp", p=2).value
    fast = bench.verify(net, "eclipse-fast", p=2).value
    triv = bench.verify(net, "trivial", p=2).value
    assert low <= neuron <= fast * (1 + 1e-4) and fast <= triv * (1 + 1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ordering_on_random_networks(seed):
    net = mlp([5, 12, 10, 3], seed=seed, act=nn.ReLU if seed < 2 else nn.Tanh)
    v = {name: bench.verify(net, name, p=2, **kw).value for name, kw in
         [("lipsdp", {"form": "neuron"}), ("eclipse", {}), ("eclipse-fast", {}), ("trivial", {})]}
    v["layer"] = bench.verify(net, "lipsdp", p=2, form="layer").value
    v["native"] = bench.verify(net, "lipsdp", p=2, solver="NATIVE").value
    assert abs(v["native"] / v["lipsdp"] - 1) < 1e-2  # the same SDP, two solvers
    low = bench.lower_bound(net, p=2, samples=1000, restarts=8, steps=20).value
    tol = 1 + 1e-2  # SCS at eps 1e-5 reaches the SDP's optimum to ~0.1%
    assert low <= v["lipsdp"] <= v["layer"] * tol and v["layer"] <= v["trivial"] * tol
    assert v["lipsdp"] <= v["eclipse"] * tol and v["eclipse"] <= v["eclipse-fast"] * tol


@pytest.mark.parametrize("target", [None, (0, 2)])
def test_sdp_bounds_are_above_the_exact_constant(target):
    for seed in (1, 2):
        net = mlp([2, 6, 5, 3], seed=seed)
        exact = exact_lipschitz(net, 2.0, target)
        for name in ("lipsdp", "eclipse", "eclipse-fast"):
            b = bench.verify(net, name, p=2, target=target)
            assert b.status == "ok" and b.value >= exact * (1 - 1e-12), (name, b.value, exact)


def test_pair_target_is_tighter_than_full_times_sqrt2():
    net = mlp([4, 10, 3], seed=4)
    full = bench.verify(net, "lipsdp", p=2).value
    pair = bench.verify(net, "lipsdp", p=2, target=(0, 1)).value
    assert pair <= full * math.sqrt(2) * (1 + 1e-6)


def test_certification_raises_rho_and_refuses_infeasible_multipliers():
    rng = np.random.default_rng(0)
    ch = Chain([rng.normal(size=(6, 3)), rng.normal(size=(2, 6))], [0.0], [1.0])
    with pytest.raises(RepairError, match="indefinite"):
        certify(ch, [np.zeros(6)])  # T = 0: the hidden block is W^T W, not negative definite
    value, stats = certify(ch, [np.full(6, 5.0)])
    rho = stats["rho_certified"]
    assert stats["T_enlarged_by"] == 0.0
    assert check(ch, rho, [np.full(6, 5.0)])[0]
    assert not check(ch, stats["rho_schur"] * (1 - 1e-6), [np.full(6, 5.0)])[0]  # just below fails
    assert value == pytest.approx(math.sqrt(rho))


def test_unsupported_inputs_say_why():
    net = mlp([3, 4, 2])
    b = bench.verify(net, "lipsdp", p=math.inf)
    assert b.status == "unsupported" and "supports p in {2}" in b.error
    from methods.layers import Abs, CReLU
    crelu = nn.Sequential(nn.Linear(3, 4), CReLU(), nn.Linear(8, 2))
    b = bench.verify(crelu, "lipsdp", p=2)
    assert b.status == "unsupported" and "elementwise" in b.error
    absnet = nn.Sequential(nn.Linear(3, 4), Abs(), nn.Linear(4, 2))
    b = bench.verify(absnet, "eclipse-fast", p=2)
    assert b.status == "unsupported" and "lower slope" in b.error
    ok = bench.verify(absnet, "lipsdp", p=2)  # LipSDP handles the sector [-1, 1]
    assert ok.status == "ok" and ok.value <= bench.verify(absnet, "trivial", p=2).value * (1 + 1e-6)


def test_small_conv_network_is_unrolled():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 5 * 5, 3))
    b = bench.verify(net, "lipsdp", p=2, input_shape=(1, 5, 5))
    low = bench.lower_bound(net, p=2, input_shape=(1, 5, 5), samples=300, restarts=4, steps=10).value
    assert b.status == "ok" and low <= b.value <= bench.verify(net, "trivial", p=2, input_shape=(1, 5, 5)).value


@pytest.mark.skipif(__import__("importlib").util.find_spec("eclipse_nn") is None,
                    reason="eclipse-nn is not installed (pip install 'lipbench[eclipse]')")
def test_our_fast_equals_the_eclipse_nn_package():
    for seed in range(3):
        net = mlp([6, 16, 12, 3], seed=seed)
        ours = bench.verify(net, "eclipse-fast", p=2)
        ref = bench.verify(net, "eclipse-nn", p=2, method="fast")
        assert ref.stats["certified"] is False
        assert ours.stats["raw_value"] == pytest.approx(ref.value, rel=1e-10)
        assert ours.value == pytest.approx(ref.value, rel=1e-8)


def test_native_solver_on_abs_says_why():
    from methods.layers import Abs
    net = nn.Sequential(nn.Linear(3, 4), Abs(), nn.Linear(4, 2))
    b = bench.verify(net, "lipsdp", p=2, solver="NATIVE")
    assert b.status == "unsupported" and "use solver SCS" in b.error
