"""When the trivial bound is tight at p = inf (docs/pinf.md).

The claims, each checked against the exact verifiers on tiny networks:

- TB >= M >= P >= exact (``studies.pinf``), and P is the largest Jacobian norm over
  every activation pattern (checked against brute force);
- rank-one sign patterns (here: nonnegative weights, up to row signs before an Abs and
  sign flips of the inputs) with chained row sums make TB equal to the exact constant;
- a cancelling sign pattern (coherence < 1) leaves TB = M while the exact constant is
  smaller, and coherent signs are not enough when the aligning pattern is unreachable;
- ``tb-penalty`` with ``sign: nonneg`` trains plain, nonnegative layers whose exact
  constant is M = ||W_L ... W_0||_inf (the theorem of docs/pinf.md).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from bench import data, verify
from bench.api import Budget, UserError
from bench.registry import get_trainer, load_plugins
from methods.layers import Abs, MaxMin
from studies.pinf import coherence, linears, majorant, pattern_bound

INF = math.inf


def net_of(Ws, act=Abs, biases=None):
    """Linear, act, Linear, ..., Linear with the given weights (and biases)."""
    layers = []
    for k, W in enumerate(Ws):
        W = torch.as_tensor(np.asarray(W, dtype=np.float64), dtype=torch.float32)
        lin = nn.Linear(W.shape[1], W.shape[0], bias=biases is not None)
        with torch.no_grad():
            lin.weight.copy_(W)
            if biases is not None:
                lin.bias.copy_(torch.as_tensor(np.asarray(biases[k]), dtype=torch.float32))
        layers.append(lin)
        if k < len(Ws) - 1:
            layers.append(act())
    return nn.Sequential(*layers)


def exact(net):
    b = verify(net, "bab", p=INF)
    assert b.status == "ok" and b.kind == "exact", b
    return b.value


def tb(net):
    return verify(net, "trivial", p=INF).value


def equal_rows(rng, shape):
    """A nonnegative matrix whose rows all sum to 1: ||W||_inf = 1 on every row."""
    V = rng.uniform(0.1, 1.0, shape)
    return V / V.sum(1, keepdims=True)


def test_cancelling_sign_pattern_keeps_tb_above_the_exact_constant():
    """f(x) = | |x1| + |x2| | + | |x1| - |x2| | = 2 max(|x1|, |x2|): Lip_inf = 2, while TB = M = 4.
    The hidden matrix [[1, 1], [1, -1]] has no rank-one sign pattern (coherence 1/2), so
    under every pattern the two paths from an input to the output cancel (P = 2)."""
    W1 = np.array([[1.0, 1.0], [1.0, -1.0]])
    net = net_of([np.eye(2), W1, [[1.0, 1.0]]])
    x = torch.randn(64, 2)
    assert torch.allclose(net(x)[:, 0], 2 * x.abs().max(1).values, atol=1e-5)
    Ws, acts = linears(net)
    assert tb(net) == pytest.approx(4.0, rel=1e-9)
    assert majorant(Ws, acts) == pytest.approx(4.0)
    assert pattern_bound(Ws, acts) == pytest.approx(2.0)
    assert exact(net) == pytest.approx(2.0, rel=1e-6)
    assert verify(net, "mip", p=INF).value == pytest.approx(2.0, rel=1e-5)
    assert coherence(W1) == (pytest.approx(0.5), True)


@pytest.mark.parametrize("act", [Abs, nn.ReLU])
def test_nonnegative_weights_with_equal_row_sums_make_tb_exact(act):
    """Every path has a nonnegative weight and, far out along x = t 1, every unit is
    active: the exact constant is ||W_2 W_1 W_0||_inf, which equal row sums make prod of
    the row sums = TB = 1.  Biases (here random, of either sign) do not change that."""
    rng = np.random.default_rng(0)
    Ws = [equal_rows(rng, (6, 3)), equal_rows(rng, (6, 6)), equal_rows(rng, (2, 6))]
    bs = [rng.normal(size=6), rng.normal(size=6), rng.normal(size=2)]
    net = net_of(Ws, act, bs)
    assert tb(net) == pytest.approx(1.0, rel=1e-6)
    assert exact(net) == pytest.approx(1.0, rel=1e-6)
    assert verify(net, "mip", p=INF).value == pytest.approx(1.0, rel=1e-5)
    assert all(coherence(W)[0] == pytest.approx(1.0) for W in Ws)


def test_rank_one_sign_pattern_up_to_row_and_input_signs_is_tight():
    """sign(W_0) = tau^T (input sign flips), sign(W_1) = rho 1^T (row signs, which the Abs
    after it absorbs): both rank one, and TB equals the exact constant.  Flipping one
    entry of W_1 breaks the pattern (coherence < 1) and the exact constant drops below TB."""
    rng = np.random.default_rng(1)
    tau = np.array([1.0, -1.0, 1.0])
    rho = np.array([1.0, -1.0, -1.0, 1.0, 1.0])
    W0 = equal_rows(rng, (5, 3)) * tau[None, :]
    W1 = rho[:, None] * equal_rows(rng, (5, 5))
    W2 = equal_rows(rng, (2, 5))
    net = net_of([W0, W1, W2])
    assert [coherence(W)[0] for W in (W0, W1)] == [pytest.approx(1.0), pytest.approx(1.0)]
    assert tb(net) == pytest.approx(1.0, rel=1e-6)
    assert exact(net) == pytest.approx(1.0, rel=1e-6)
    W1b = W1.copy()
    W1b[0, 0] = -W1b[0, 0]
    broken = net_of([W0, W1b, W2])
    assert coherence(W1b)[0] < 1.0
    assert tb(broken) == pytest.approx(1.0, rel=1e-6)
    assert exact(broken) < 0.99


def test_coherent_signs_are_not_enough_when_the_pattern_is_unreachable():
    """f(x) = | |x| - |x| | = 0: every layer has a rank-one sign pattern (a single column,
    a single row) and the pattern D_0 = diag(1, -1) aligns the two paths (P = M = TB = 2),
    but it needs x > 0 and x < 0 at once: the exact constant is 0."""
    net = net_of([[[1.0], [1.0]], [[1.0, -1.0]], [[1.0]]])
    Ws, acts = linears(net)
    assert tb(net) == pytest.approx(2.0, rel=1e-9)
    assert majorant(Ws, acts) == pytest.approx(2.0)
    assert pattern_bound(Ws, acts) == pytest.approx(2.0)
    assert all(coherence(W)[0] == pytest.approx(1.0) for W in Ws)
    assert exact(net) == pytest.approx(0.0, abs=1e-9)


def brute_force_pattern_bound(Ws, act):
    """max over every pattern of both hidden layers and every input sign vector."""
    W0, W1, W2 = Ws
    if act == "maxmin":
        def choices(w):
            for bits in itertools.product((0, 1), repeat=w // 2):
                P = np.eye(w)
                for k, s in enumerate(bits):
                    if s:
                        P[[2 * k, 2 * k + 1]] = P[[2 * k + 1, 2 * k]]
                yield P
    else:
        vals = (-1.0, 1.0) if act == "abs" else (0.0, 1.0)

        def choices(w):
            for d in itertools.product(vals, repeat=w):
                yield np.diag(d)
    return max(np.abs(W2 @ D1 @ W1 @ D0 @ W0).sum(1).max()
               for D0 in choices(W0.shape[0]) for D1 in choices(W1.shape[0]))


@pytest.mark.parametrize("act,cls", [("abs", Abs), ("relu", nn.ReLU), ("maxmin", MaxMin)])
@pytest.mark.parametrize("seed", [0, 1])
def test_decomposition_brackets_the_exact_constant(act, cls, seed):
    """TB >= M >= P >= exact on random signed networks with biases, and P is the brute-force
    maximum over all patterns (the second layer's chosen in closed form)."""
    rng = np.random.default_rng(seed)
    Ws = [rng.normal(size=(4, 3)), rng.normal(size=(4, 4)), rng.normal(size=(2, 4))]
    net = net_of(Ws, cls, [rng.normal(size=4), rng.normal(size=4), rng.normal(size=2)])
    Wn, acts = linears(net)
    T, M, P = tb(net), majorant(Wn, acts), pattern_bound(Wn, acts)
    assert P == pytest.approx(brute_force_pattern_bound(Wn, act), rel=1e-12)
    E = exact(net)
    assert T >= M * (1 - 1e-9) and M >= P * (1 - 1e-12) and P >= E * (1 - 1e-6)


@pytest.mark.slow
def test_coherence_exact_and_local_search():
    rng = np.random.default_rng(0)
    rank_one = np.outer(rng.choice((-1.0, 1.0), 7), rng.choice((-1.0, 1.0), 5)) * rng.uniform(0.1, 1, (7, 5))
    assert coherence(rank_one) == (pytest.approx(1.0), True)
    assert coherence(rank_one.T) == (pytest.approx(1.0), True)
    W = rng.normal(size=(24, 22))
    exact_c, was_exact = coherence(W, exact_upto=22)
    searched, flag = coherence(W)
    assert was_exact and not flag
    assert 0 < searched <= exact_c + 1e-12 < 1.0


@pytest.fixture(scope="module")
def tiny():
    return data.load({"name": "synthetic", "n": 300, "dim": 4, "classes": 3})


def test_nonneg_trainer_gives_plain_nonnegative_layers_whose_constant_is_m(tiny):
    load_plugins()
    net, m = get_trainer("tb-penalty")(epochs=6, lr=0.005, p="inf", sign="nonneg").train(
        tiny, {"hidden": [8, 8], "activation": "abs", "bias": True}, 0, Budget(120))
    lins = [l for l in net if isinstance(l, nn.Linear)]
    assert all(type(l) is nn.Linear for l in lins)      # the parametrization is gone
    assert all(bool((l.weight >= 0).all()) for l in lins)
    Ws, acts = linears(net)
    M = majorant(Ws, acts)
    prod = Ws[2] @ Ws[1] @ Ws[0]
    assert M == pytest.approx(prod.sum(1).max())
    assert exact(net) == pytest.approx(M, rel=1e-6)
    assert m["tb_after"] >= M * (1 - 1e-9)


def test_nonneg_is_a_declared_parameter(tiny):
    load_plugins()
    T = get_trainer("tb-penalty")
    assert T.declared()["sign"].default == "free"
    with pytest.raises(UserError):
        T(sign="positive")
    net, _ = T(epochs=1, p="inf").train(tiny, {"hidden": [4], "activation": "abs"}, 0, Budget(60))
    assert any(float(l.weight.detach().min()) < 0 for l in net if isinstance(l, nn.Linear))   # free: signs stay free


def test_pattern_bound_declines_large_networks_without_enumerating():
    """64 inputs (digits) would be 2^64 sign vectors: NaN at once, not an out-of-memory."""
    rng = np.random.default_rng(0)
    Ws = [rng.normal(size=(8, 64)), rng.normal(size=(8, 8)), rng.normal(size=(3, 8))]
    assert math.isnan(pattern_bound(Ws, ["abs", "abs"]))
    assert math.isnan(pattern_bound([rng.normal(size=(20, 4)), rng.normal(size=(8, 20)), Ws[2]], ["abs", "abs"]))
