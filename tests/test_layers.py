"""The paper's method: polyactivations, the differentiable trivial bound, tb-penalty
training, certified accuracy."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import bench
from bench import network
from bench.activations import describe
from bench.api import Budget
from bench.certify import certified_accuracy, pair_matrix
from bench.data import load
from bench.registry import get_trainer, load_plugins
from bench.testing.exact import exact_lipschitz
from methods.layers import Abs, CReLU, MaxMin, SinCos, SinSplit
from methods.trivial import TorchTrivialBound

load_plugins()
INF = math.inf


def op_norm(J: np.ndarray, p: float) -> float:
    if p == 2:
        return float(np.linalg.norm(J, 2))
    if p == 1:
        return float(np.abs(J).sum(0).max())
    return float(np.abs(J).sum(1).max())


@pytest.mark.parametrize("cls", [Abs, CReLU, SinSplit, MaxMin, SinCos])
def test_polyactivation_jacobians_have_norm_one_where_declared(cls):
    m = cls()
    spec = describe(m)
    rng = np.random.default_rng(0)
    for _ in range(50):
        z = torch.tensor(rng.normal(scale=3.0, size=(1, 6)))
        J = torch.autograd.functional.jacobian(lambda t: m(t), z).reshape(-1, 6).numpy()
        assert J.shape[0] == 6 * spec.out_factor
        for p in (1.0, 2.0, INF):
            n = op_norm(J, p)
            assert n <= spec.lipschitz[p] * (1 + 1e-12), (cls.__name__, p, n)
            if p in [float(x) for x in spec.saturates]:
                assert n == pytest.approx(1.0, abs=1e-12), (cls.__name__, p, n)


def test_saturation_is_not_claimed_where_it_fails():
    """SinSplit's Jacobian has l2 norm below 1 at x = pi/2: it must not declare p = 2."""
    z = torch.tensor([[math.pi / 2]], dtype=torch.float64)
    J = torch.autograd.functional.jacobian(lambda t: SinSplit()(t), z).reshape(-1, 1).numpy()
    assert op_norm(J, 2.0) < 0.99 and 2 not in describe(SinSplit()).saturates


def test_sinusoidal_layer_constants():
    """h -> (sin Wh, cos Wh): the l2 constant is exactly ||W||_2 (an isometry after W), the
    l_inf one ||W||_inf (attained at h = 0), and the l1 one at most sqrt 2 ||W||_1."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4, bias=False), SinCos())
    W = net[0].weight.detach().double().numpy()
    rng = np.random.default_rng(1)
    for h in [np.zeros(5)] + [rng.normal(size=5) for _ in range(20)]:
        J = torch.autograd.functional.jacobian(lambda t: net.double()(t[None])[0], torch.tensor(h)).numpy()
        assert op_norm(J, 2.0) == pytest.approx(np.linalg.norm(W, 2), rel=1e-10)
        assert op_norm(J, INF) <= np.abs(W).sum(1).max() * (1 + 1e-12)
        assert op_norm(J, 1.0) <= math.sqrt(2) * np.abs(W).sum(0).max() * (1 + 1e-12)
    J0 = torch.autograd.functional.jacobian(lambda t: net(t[None])[0], torch.zeros(5, dtype=torch.float64)).numpy()
    assert op_norm(J0, INF) == pytest.approx(np.abs(W).sum(1).max(), rel=1e-12)
    tb = bench.verify(nn.Sequential(nn.Linear(5, 4, bias=False), SinCos(), nn.Linear(8, 3, bias=False)), "trivial", p=2)
    assert tb.status == "ok"


def mixed_net(act, seed=0, sizes=(2, 6, 4, 3), bias=True):
    torch.manual_seed(seed)
    layers, d = [], sizes[0]
    for h in sizes[1:-1]:
        a = act()
        layers += [nn.Linear(d, h, bias=bias), a]
        d = h * describe(a).out_factor
    return nn.Sequential(*layers, nn.Linear(d, sizes[-1], bias=bias))


@pytest.mark.slow
@pytest.mark.parametrize("act", [Abs, CReLU, MaxMin])
@pytest.mark.parametrize("p", [1.0, 2.0, INF])
def test_trivial_and_lower_bracket_the_exact_constant_on_polyactivation_nets(act, p):
    for seed in (0, 1):
        net = mixed_net(act, seed)
        exact = exact_lipschitz(net, p)
        up = bench.verify(net, "trivial", p=p).value
        lo = bench.lower_bound(net, p=p, samples=1000, restarts=4, steps=20).value
        assert lo <= exact * (1 + 1e-9) and exact <= up * (1 + 1e-12), (lo, exact, up)


CONV_SHAPE = (1, 2, 3)


def tiny_conv(act, bias, seed=0):
    """Two convs (2 x 2, no padding, then 1 x 1) of two channels each, then the output:
    8 units, few enough for region enumeration."""
    torch.manual_seed(seed)
    return network.build_net({"conv": [[2, 2, 1, 0], [2, 1]], "activation": act, "bias": bias},
                             CONV_SHAPE, 3).double().eval()


@pytest.mark.parametrize("act,bias", [("relu", True), ("abs", False), ("crelu", False), ("maxmin", False),
                                      ("maxmin", True)])
@pytest.mark.slow
def test_polyactivations_in_conv_form_bracket_the_exact_constant(act, bias):
    """Conv nets with each polyactivation (bias-free too): the walk's piecewise-linear
    form is the network, and trivial >= exact >= lower for every p (the exact constant
    from enumerating the regions of the unrolled network)."""
    from baselines.verify import pwl
    from bench.testing.exact import norm, regions
    net = tiny_conv(act, bias)
    walked = network.walk(net, CONV_SHAPE)
    assert [l.in_dim for l in walked.activations] == [4, 4]
    assert all(a.spec.in_shape == (2, 1, 2) for a in walked.activations)
    assert not any(l.has_bias for l in walked.affines) if not bias else all(l.has_bias for l in walked.affines)
    pw = pwl.pwl(walked)
    x = torch.randn(50, *CONV_SHAPE, dtype=torch.float64)
    h = x.reshape(50, -1).numpy()
    for hd in pw.hidden:
        z = h @ hd.W.T + hd.b
        h = z @ hd.P.T + np.maximum(z @ hd.A.T, 0) @ hd.Q.T
    np.testing.assert_allclose(h @ pw.W_out.T + pw.b_out, net(x).detach().numpy(), rtol=1e-12, atol=1e-12)
    R = list(regions(net, -100, 100, CONV_SHAPE))
    for p in (1.0, 2.0, INF):
        exact = max(norm(J, p) for J in R)
        up = bench.verify(net, "trivial", p=p, input_shape=CONV_SHAPE).value
        lo = bench.lower_bound(net, p=p, input_shape=CONV_SHAPE, samples=300, restarts=4, steps=15).value
        assert lo <= exact * (1 + 1e-9) and exact <= up * (1 + 1e-12), (p, lo, exact, up)


@pytest.mark.parametrize("act", ["relu", "abs", "crelu", "maxmin", "sincos", "sinsplit"])
@pytest.mark.parametrize("p", [1.0, 2.0, INF])
def test_differentiable_tb_equals_the_verifier(act, p):
    torch.manual_seed(3)
    net = network.build_net({"hidden": [8, 6], "activation": act, "bias": act != "sincos"}, (1, 3, 3), 4)
    tb = TorchTrivialBound(net, (1, 3, 3), p)
    full = tb.full()
    assert full.requires_grad
    v = bench.verify(net, "trivial", p=p, input_shape=(1, 3, 3)).value
    assert float(full.detach()) == pytest.approx(v, rel=1e-9)
    K = tb.pairs().detach().numpy()
    walked = network.walk(net, (1, 3, 3))
    from bench.registry import get_verifier
    Kv = get_verifier("trivial")().pair_bounds(walked, p)
    np.testing.assert_allclose(K, Kv, rtol=1e-9)
    assert bench.verify(net, "trivial", p=p, target=(1, 3), input_shape=(1, 3, 3)).value == pytest.approx(K[1, 3], rel=1e-9)
    full.backward()
    assert all(m.weight.grad is not None for m in net if isinstance(m, nn.Linear))


@pytest.mark.parametrize("act", ["relu", "abs", "crelu", "maxmin", "sincos"])
@pytest.mark.parametrize("p", [1.0, 2.0, INF])
def test_differentiable_tb_on_conv_nets_matches_the_verifier(act, p):
    """The training form on a conv net (strides, paddings, the boundary): equal to the
    verifier at p = 1 and inf, the DFT bound at p = 2 (>= the verifier, which may use the
    exact norm of a small unrolled conv); class pairs as for MLPs; every weight gets a
    gradient."""
    from bench.registry import get_verifier
    from methods.trivial import conv_spectral_fft
    shape = (3, 7, 6)
    torch.manual_seed(5)
    net = network.build_net({"conv": [[4, 3, 2], [4, 2, 1, 0]], "hidden": [6], "activation": act,
                             "bias": act != "sincos"}, shape, 4)
    tb = TorchTrivialBound(net, shape, p)
    full = tb.full()
    v = bench.verify(net, "trivial", p=p, input_shape=shape).value
    walked = network.walk(net, shape)
    Kv = get_verifier("trivial")().pair_bounds(walked, p)
    K = tb.pairs().detach().numpy()
    if p == 2:
        assert float(full.detach()) >= v * (1 - 1e-9)
        for l in (l for l in walked.affines if l.is_conv):
            with torch.no_grad():
                assert float(conv_spectral_fft(l.module, l.in_shape)) >= np.linalg.norm(l.matrix(), 2) * (1 - 1e-12)
        assert np.all(K >= Kv * (1 - 1e-9))
    else:
        assert float(full.detach()) == pytest.approx(v, rel=1e-9)
        np.testing.assert_allclose(K, Kv, rtol=1e-9)
    full.backward()
    assert all(m.weight.grad is not None and float(m.weight.grad.abs().sum()) > 0
               for m in net if isinstance(m, (nn.Conv2d, nn.Linear)))


@pytest.mark.parametrize("p", [1.0, 2.0, INF])
def test_differentiable_conv_tb_has_the_right_gradient(p):
    """The gradient of the training form in a conv's weight agrees with finite
    differences (float64; random weights have no ties in the max)."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False), Abs(), nn.Flatten(),
                        nn.Linear(3 * 3 * 3, 2, bias=False)).double()
    tb = TorchTrivialBound(net, (2, 5, 5), p)
    w = net[0].weight

    def value():
        return float(tb.full().detach())
    net.zero_grad()
    tb.full().backward()
    g = w.grad.clone()
    h = 1e-6
    for idx in [(0, 0, 0, 0), (1, 1, 2, 1), (2, 0, 1, 1)]:
        with torch.no_grad():
            w[idx] += h
            up = value()
            w[idx] -= 2 * h
            down = value()
            w[idx] += h
        assert (up - down) / (2 * h) == pytest.approx(float(g[idx]), rel=1e-5, abs=1e-8), (p, idx)


@pytest.mark.parametrize("p", [2.0, INF])
def test_short_tb_penalty_run_on_a_conv_net_lowers_tb(p):
    """tb-penalty trains a conv net (digits, 8 x 8 images): the bound falls during
    training and ends below the standard trainer's."""
    ds = load({"name": "digits"})
    arch = {"conv": [[4, 3, 2]], "hidden": [16], "activation": "abs", "bias": False}
    torch.set_num_threads(1)
    std, ms = get_trainer("standard")(epochs=4).train(ds, arch, 0, Budget(120))
    tbp, m = get_trainer("tb-penalty")(epochs=4, p=p, lam=0.1).train(ds, arch, 0, Budget(120))
    tb_std = bench.verify(std, "trivial", p=p, input_shape=ds.input_shape).value
    tb_pen = bench.verify(tbp, "trivial", p=p, input_shape=ds.input_shape).value
    assert m["tb_after"] < m["tb_before"] and tb_pen < 0.8 * tb_std, (m["tb_before"], m["tb_after"], tb_std)
    assert m["tb_after"] >= tb_pen * (1 - 1e-6)   # the training form is the verifier's or above it (p = 2)
    assert m["clean_acc"] > 0.3 and ms["clean_acc"] > 0.3   # chance: 0.1 (4 short epochs)


@pytest.mark.slow
@pytest.mark.parametrize("act,p", [("abs", 2.0), ("relu", INF)])
def test_short_tb_penalty_run_lowers_tb(act, p):
    ds = load({"name": "synthetic", "n": 400, "dim": 8, "classes": 3})
    arch = {"hidden": [16, 16], "activation": act, "bias": False}
    std, _ = get_trainer("standard")(epochs=15).train(ds, arch, 0, Budget(120))
    tbp, m = get_trainer("tb-penalty")(epochs=15, p=p, lam=0.1).train(ds, arch, 0, Budget(120))
    tb_std = bench.verify(std, "trivial", p=p, input_shape=ds.input_shape).value
    tb_pen = bench.verify(tbp, "trivial", p=p, input_shape=ds.input_shape).value
    assert tb_pen < 0.8 * tb_std, (tb_pen, tb_std)
    assert m["tb_after"] < m["tb_before"] and m["tb_after"] == pytest.approx(tb_pen, rel=1e-6)
    assert m["clean_acc"] > 0.6
    assert len(m["spread_before"]) == 3
    zdf = m["zero_derivative_fraction"]
    assert zdf == 0.0 if act == "abs" else 0.0 < zdf < 1.0  # |x| never has a zero derivative


def test_margin_loss_trainer_runs_and_records_metrics():
    ds = load({"name": "synthetic", "n": 200, "dim": 4, "classes": 3})
    net, m = get_trainer("tb-penalty")(epochs=3, margin_eps=0.05, p="inf").train(
        ds, {"hidden": [8], "activation": "abs", "bias": False}, 0, Budget(60))
    assert 0 <= m["clean_acc"] <= 1 and m["tb_p"] == INF
    with pytest.raises(bench.UserError, match="penalty"):
        get_trainer("tb-penalty")(penalty="square").train(ds, {"hidden": [4]}, 0, Budget(60))


# ---- certified accuracy against brute force -------------------------------------

def test_certified_accuracy_matches_brute_force_on_a_linear_classifier():
    """For a linear classifier the pairwise trivial bound is exact, so certification
    must agree with an exhaustive check of the ball's vertices (p = 1, inf in 2-D: the
    margins are linear, so their minimum over the ball sits at a vertex)."""
    rng = np.random.default_rng(0)
    W, b = rng.normal(size=(3, 2)), rng.normal(size=3)
    X = rng.normal(size=(300, 2))
    logits = X @ W.T + b
    y = np.where(rng.random(300) < 0.8, logits.argmax(1), rng.integers(0, 3, 300))
    for p, vertices in ((INF, [(1, 1), (1, -1), (-1, 1), (-1, -1)]), (1.0, [(1, 0), (-1, 0), (0, 1), (0, -1)])):
        q = 1.0 if p == INF else INF
        K = np.array([[np.linalg.norm(W[i] - W[j], q) for j in range(3)] for i in range(3)])
        for eps in (0.0, 0.05, 0.2, 0.5):
            brute = []
            for x, label in zip(X, y):
                pts = [x] + [x + eps * np.array(v) for v in vertices]
                brute.append(all((pt @ W.T + b).argmax() == label for pt in pts))
            ours = certified_accuracy(logits, y, K, [eps])[0]
            # certification is strict (radius > eps), brute force counts the boundary; no ties here
            assert ours == pytest.approx(np.mean(brute)), (p, eps)


def test_pair_matrix_uses_the_tightest_source():
    K = pair_matrix(3, 2.0, full=1.0, pairs={(0, 1): 0.5})
    assert K[0, 1] == K[1, 0] == 0.5
    assert K[0, 2] == pytest.approx(math.sqrt(2)) and K[0, 2] >= math.sqrt(2)
    assert np.all(np.diag(K) == 0)
    K = pair_matrix(3, INF, pairs={(0, 1): 0.5})
    assert np.isinf(K[0, 2])
    logits = np.array([[2.0, 0.0, 0.0]])
    assert certified_accuracy(logits, np.array([0]), K, [0.0]) == [0.0]  # pair (0, 2) unknown
