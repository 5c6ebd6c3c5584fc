"""Soundness of the trivial bound: never below the exact constant, exact where it must be."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import bench
import bench.network
from helpers import mlp
from bench.testing.exact import exact_lipschitz

P = [1.0, 2.0, math.inf]


@pytest.mark.slow
@pytest.mark.parametrize("p", P)
@pytest.mark.parametrize("target", [None, (0, 2)])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_trivial_upper_bounds_exact_constant(p, target, seed):
    net = mlp([2, 6, 5, 3], seed=seed)
    exact = exact_lipschitz(net, p, target)
    b = bench.verify(net, "trivial", p=p, target=target)
    assert b.status == "ok" and b.kind == "upper"
    assert b.value >= exact * (1 - 1e-12), (b.value, exact)


@pytest.mark.parametrize("p", P)
def test_trivial_is_exact_on_one_linear_layer(p):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(7, 5))
    W = net[0].weight.detach().double().numpy()
    truth = {1.0: np.abs(W).sum(0).max(), 2.0: np.linalg.norm(W, 2), math.inf: np.abs(W).sum(1).max()}[p]
    b = bench.verify(net, "trivial", p=p)
    assert truth <= b.value <= truth * (1 + 1e-9)


def test_class_pair_trap():
    """W0 = [[1]], W1 = [[1], [-1]], margin f_0 - f_1: the l_inf constant is 2, and a
    product that used the same norm for the pair row and the layer would say 1."""
    net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.ReLU(), nn.Linear(1, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0]]))
        net[2].weight.copy_(torch.tensor([[1.0], [-1.0]]))
    for p in P:
        exact = exact_lipschitz(net, p, (0, 1))
        assert exact == pytest.approx(2.0)
        assert bench.verify(net, "trivial", p=p, target=(0, 1)).value >= 2.0


def test_trivial_on_conv_matches_its_unrolled_matrix():
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4))
    dense_net = bench.network.walk(conv, (2, 8, 8))
    A = dense_net.affines[0].matrix()
    x = torch.randn(5, 2, 8, 8)
    with torch.no_grad():
        ref = conv[0](x).reshape(5, -1).double() - conv[0].bias.repeat_interleave(16).double()
    np.testing.assert_allclose(ref.numpy(), x.reshape(5, -1).double().numpy() @ A.T, rtol=1e-5, atol=1e-5)
    W2 = conv[3].weight.detach().double().numpy()
    for p, f in ((1.0, lambda M: np.abs(M).sum(0).max()), (2.0, lambda M: np.linalg.norm(M, 2)),
                 (math.inf, lambda M: np.abs(M).sum(1).max())):
        b = bench.verify(conv, "trivial", p=p, input_shape=(2, 8, 8))
        assert b.value == pytest.approx(f(A) * f(W2), rel=1e-9)


def test_conv_needs_input_shape():
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 2))
    with pytest.raises(bench.UserError, match="input_shape"):
        bench.verify(conv, "trivial", p=2)


def test_unsupported_layer_is_a_status_not_a_number():
    net = nn.Sequential(nn.Linear(3, 3), nn.Softmax(dim=1), nn.Linear(3, 2))
    b = bench.verify(net, "trivial", p=2)
    assert b.status == "unsupported" and b.value is None and "layer 1 (Softmax)" in b.error


@pytest.mark.parametrize("p", P)
def test_trivial_at_least_lower_on_random_nets(p):
    for seed in range(3):
        net = mlp([6, 16, 16, 4], act=nn.Tanh if seed == 2 else nn.ReLU, seed=seed)
        lo = bench.lower_bound(net, p=p, samples=300, restarts=4, steps=10)
        up = bench.verify(net, "trivial", p=p)
        assert 0 < lo.value <= up.value


def test_spectral_norm_upper_is_above_svd_and_close():
    from methods.trivial import spectral_norm_upper
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (3, 9), (9, 3), (64, 64), (300, 40)]:
        for scale in (1e-8, 1.0, 1e6):
            W = rng.normal(size=shape) * scale
            s = np.linalg.svd(W, compute_uv=False)[0]
            u = spectral_norm_upper(W)
            assert s <= u <= s * (1 + 1e-8), (shape, scale, s, u)
    # rank one with a huge spread: the rounding margin must still cover it
    W = np.outer(rng.normal(size=50), rng.normal(size=70))
    assert np.linalg.svd(W, compute_uv=False)[0] <= spectral_norm_upper(W)


@pytest.mark.parametrize("seed", range(12))
def test_conv_fft_bound_is_above_the_exact_norm_of_the_unrolled_operator(seed):
    """The DFT bound of a conv (any padding, stride, dilation, groups, size) is >= the
    exact spectral norm of its unrolled matrix and not far above it (the grid's edges);
    p = 1 and inf are exact (checked against the unrolled matrix too)."""
    from methods.trivial import conv_spectral_upper, operator_norm
    rng = np.random.default_rng(seed)
    g = int(rng.choice([1, 2]))
    cin, cout = g * int(rng.integers(1, 4)), g * int(rng.integers(1, 4))
    k, s, d = int(rng.integers(1, 5)), int(rng.choice([1, 1, 2, 3])), int(rng.choice([1, 1, 2]))
    pad = int(rng.integers(0, 3))
    h, w = int(rng.integers(max(5, (k - 1) * d + 1), 12)), int(rng.integers(max(5, (k - 1) * d + 1), 12))
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, k, stride=s, padding=pad, dilation=d, groups=g)
    layer = bench.network.walk(nn.Sequential(conv), (cin, h, w)).affines[0]
    W = layer.matrix()
    exact2 = np.linalg.norm(W, 2)
    fft = conv_spectral_upper(layer)
    assert fft >= exact2 * (1 - 1e-12), (fft, exact2)
    assert fft <= exact2 * 1.6, (fft, exact2)   # the phases make strides as tight as stride 1: edge effects only
    for p, exact in [(1.0, np.abs(W).sum(0).max()), (float("inf"), np.abs(W).sum(1).max())]:   # exact, + rounding margin
        assert exact <= operator_norm(layer, p) <= exact * (1 + 1e-9)
    assert operator_norm(layer, 2.0) >= exact2


def test_conv_fft_bound_at_cifar_size_is_fast_and_differentiable():
    """Three conv layers of 32-64 channels on 3x32x32: bounded at p = 2 without
    unrolling, and the training form has a gradient."""
    import time
    from methods.trivial import TorchTrivialBound
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1),
                        nn.ReLU(), nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(64 * 8 * 8, 10))
    t = time.perf_counter()
    b = bench.verify(net, "trivial", p=2, input_shape=(3, 32, 32))
    assert b.status == "ok" and b.value > 0 and time.perf_counter() - t < 10   # ~0.3 s here; CI machines vary
    tb = TorchTrivialBound(net, (3, 32, 32), 2).full()
    tb.backward()
    assert net[0].weight.grad is not None and float(tb) <= b.value * (1 + 1e-9)


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_fft_training_form_has_the_gradient_of_the_max_over_all_frequencies(stride):
    """The training form takes the max's gradient from its one frequency: the same value and
    gradient as backpropagating through every frequency's matrix norm."""
    from methods.trivial import conv_spectral_fft, phase_kernel
    torch.manual_seed(stride)
    conv = nn.Conv2d(3, 5, 3, stride=stride, padding=1).double()
    fast = conv_spectral_fft(conv, (3, 9, 9))
    (g_fast,) = torch.autograd.grad(fast, conv.weight)
    K, (mh, mw) = phase_kernel(conv, (3, 9, 9))
    M = torch.fft.fft2(K, s=(mh, mw)).permute(2, 3, 0, 1).reshape(mh * mw, K.shape[0], K.shape[1])
    full = torch.linalg.matrix_norm(M, ord=2).max()
    (g_full,) = torch.autograd.grad(full, conv.weight)
    assert abs(float(fast) - float(full)) <= 1e-12 * float(full)
    assert torch.allclose(g_fast, g_full, rtol=1e-9, atol=1e-12)
    with torch.no_grad():   # without a gradient: the plain max
        assert abs(float(conv_spectral_fft(conv, (3, 9, 9))) - float(full)) <= 1e-12 * float(full)
