"""The sampled lower bound: sound (never above the exact constant), and a real Jacobian norm."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import bench
from helpers import mlp
from bench.testing.exact import exact_lipschitz, regions, norm


@pytest.mark.slow
@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
@pytest.mark.parametrize("target", [None, (1, 2)])
def test_lower_is_below_exact_and_close_on_tiny_nets(p, target):
    for seed in (1, 2):
        net = mlp([2, 6, 5, 3], seed=seed)
        exact = exact_lipschitz(net, p, target)
        b = bench.lower_bound(net, p=p, target=target, samples=2000, restarts=8, steps=30)
        assert b.kind == "lower" and b.status == "ok"
        assert b.value <= exact * (1 + 1e-9)
        # it must actually find something: within 20% of the truth on a 2-D input
        assert b.value >= 0.8 * exact, (b.value, exact)


def test_lower_value_is_a_jacobian_norm_that_exists():
    """The value must be one of the region Jacobians' norms (a real point's Jacobian)."""
    net = mlp([2, 4, 3], seed=5)
    b = bench.lower_bound(net, p=2, samples=500, restarts=2, steps=5, low=-100.0, high=100.0)
    norms = [norm(J, 2.0) for J in regions(net, -100, 100)]
    # the value is a certified difference quotient: within float64 deflation of a region's norm
    assert min(abs(b.value - v) for v in norms) < 1e-5 * max(norms)
    assert b.value <= max(norms) * (1 + 1e-12)


def test_lower_on_linear_net_is_exact():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4))
    W = net[0].weight.detach().double().numpy()
    b = bench.lower_bound(net, p=2, samples=10, steps=5)
    assert b.status == "ok" and b.value == pytest.approx(np.linalg.norm(W, 2), rel=1e-6)
    assert b.value <= np.linalg.norm(W, 2)


def test_lower_over_a_box_stays_in_the_box():
    net = mlp([2, 8, 2], seed=3)
    box = {"center": [0.3, -0.2], "radius": 0.05}
    b = bench.verify(net, "lower", p=math.inf, domain=box, samples=200, restarts=4, steps=5)
    exact_box = exact_lipschitz(net, math.inf, None, lo=[0.25, -0.25], hi=[0.35, -0.15])
    assert b.value <= exact_box * (1 + 1e-9)


def test_kink_on_the_box_face_does_not_inflate_the_lower_bound():
    """f = 0 on the cone x2 > |x1|; a box on that cone's edge puts ascent points on the
    kinks, where autograd's chain rule returns a matrix that is no Jacobian of f."""
    net = nn.Sequential(nn.Linear(2, 3, bias=False), nn.ReLU(), nn.Linear(3, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, 1.0]]))
        net[2].weight.copy_(torch.tensor([[1.0, -0.5, 0.5]]))
    box = {"center": [0.25, 2.0], "radius": 0.25}
    exact = exact_lipschitz(net, 2.0, None, lo=[0.0, 1.75], hi=[0.5, 2.25])
    for p in (1.0, 2.0, math.inf):
        b = bench.verify(net, "lower", p=p, domain=box)
        assert b.status == "ok" and b.value <= exact + 1e-12, (p, b.value, exact, b.stats)


def test_lower_rejects_bad_parameters():
    with pytest.raises(bench.UserError, match="far"):
        bench.lower_bound(mlp([2, 2]), far=2.0)
    with pytest.raises(bench.UserError, match="samples"):
        bench.lower_bound(mlp([2, 2]), samples=0)


def _sin_net(c):
    """f(x) = sum_i sin(x_i - c_i) + sin(2 (x_i - c_i)) / 2: a bias-free-after-the-first
    -layer sinusoidal net with grad_i = cos u_i + cos 2 u_i (u = x - c), so its l2
    constant is 2 sqrt(n), reached only at x = c (mod 2 pi), while TB = sqrt(10 n) sqrt 5 / sqrt n."""
    from methods.layers import SinCos
    n = len(c)
    net = nn.Sequential(nn.Linear(n, 2 * n), SinCos(), nn.Linear(4 * n, 1, bias=False))
    with torch.no_grad():
        I = torch.eye(n, dtype=torch.float64)
        net[0].weight.copy_(torch.cat([I, 2 * I]))
        ct = torch.tensor(c, dtype=torch.float64)
        net[0].bias.copy_(-torch.cat([ct, 2 * ct]))
        net[2].weight.copy_(torch.cat([torch.ones(n), 0.5 * torch.ones(n), torch.zeros(2 * n)])[None])
    return net.double()


def test_lower_reaches_the_closed_form_constant_of_a_sinusoidal_net():
    c = [0.3, 0.9, 0.1, 0.6, 0.45, 0.8, 0.2, 0.7]
    net = _sin_net(c)
    exact = 2 * math.sqrt(len(c))
    tb = bench.verify(net, "trivial", p=2).value
    assert tb > 1.2 * exact                      # the trivial bound is loose here
    b = bench.lower_bound(net, p=2)
    assert b.stats["aligned_dims"] >= 1
    assert b.value <= exact * (1 + 1e-9)
    assert b.value >= exact * (1 - 1e-4), (b.value, exact, b.stats)


def test_lower_versions_differ_only_in_search():
    """ascent normalized + aligned 0 is version 2's search; both stay sound on a net whose
    constant is known."""
    c = [0.5, 0.2, 0.9, 0.1]
    net = _sin_net(c)
    exact = 2 * math.sqrt(len(c))
    v2 = bench.lower_bound(net, p=2, ascent="normalized", aligned=0.0)
    v3 = bench.lower_bound(net, p=2)
    assert v2.stats["aligned_dims"] == 0 and v3.stats["aligned_dims"] == 4
    for b in (v2, v3):
        assert b.value <= exact * (1 + 1e-9)
    with pytest.raises(bench.UserError, match="ascent"):
        bench.lower_bound(net, ascent="newton")
