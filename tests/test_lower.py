"""The sampled lower bound: sound (never above the exact constant), and a real Jacobian norm."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import bench
from conftest import mlp
from bench.testing.exact import exact_lipschitz, regions, norm


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
