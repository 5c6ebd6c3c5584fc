"""The phase branch and bound of studies/smooth_reference.py: a sound upper bound on the
l2 constant of sinusoidal networks, exact against closed forms, never below a witnessed
lower bound."""
import math

import pytest
import torch
from torch import nn

import bench
from methods.layers import SinCos

from studies.smooth_reference import sinusoidal_layers, torus_bound


def _net(W0, W1, b0=None):
    net = nn.Sequential(nn.Linear(W0.shape[1], W0.shape[0], bias=b0 is not None), SinCos(),
                        nn.Linear(W1.shape[1], W1.shape[0], bias=False)).double()
    with torch.no_grad():
        net[0].weight.copy_(W0)
        net[2].weight.copy_(W1)
        if b0 is not None:
            net[0].bias.copy_(b0)
    return net


def test_sup_that_no_input_attains():
    """f = sin x + sin(sqrt2 x): sup f' = 1 + sqrt 2, approached but never reached; TB is
    sqrt 2 sqrt 3.  The relaxation over free phases is exact here (the phases are dense)."""
    net = _net(torch.tensor([[1.0], [math.sqrt(2)]], dtype=torch.float64),
               torch.tensor([[1.0, 1.0, 0.0, 0.0]], dtype=torch.float64))
    r = torus_bound(net, rtol=1e-4)
    exact = 1 + math.sqrt(2)
    assert r["closed"] and r["lower"] is None            # m1 = 2 > n = 1: no witness claimed
    assert exact <= r["upper"] <= exact * (1 + 2e-4)
    assert r["upper"] < bench.verify(net, "trivial", p=2).value
    assert bench.lower_bound(net, p=2).value <= r["upper"]


def test_closed_form_with_biases_and_a_pair_query():
    """f_0 = sum_i sin(x_i - c_i) + sin(2 (x_i - c_i)) / 2, f_1 = 0: constant 2 sqrt n."""
    n = 2
    I = torch.eye(n, dtype=torch.float64)
    c = torch.tensor([0.4, -1.3], dtype=torch.float64)
    W1 = torch.zeros(2, 4 * n, dtype=torch.float64)
    W1[0, :n], W1[0, n:2 * n] = 1.0, 0.5
    net = _net(torch.cat([I, 2 * I]), W1, -torch.cat([c, 2 * c]))
    for target in (None, (0, 1)):
        r = torus_bound(net, target=target, rtol=1e-4)
        assert 2 * math.sqrt(n) <= r["upper"] <= 2 * math.sqrt(n) * (1 + 2e-4), (target, r)


def test_bracket_on_a_random_net_holds_the_lower_bound():
    """m1 = n = 3 with W0 invertible: the bracket is certified at both ends, it is narrow,
    and lower (a different search) lands inside it, below the upper end."""
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(3, 3, bias=False), SinCos(), nn.Linear(6, 8), SinCos(),
                        nn.Linear(16, 2, bias=False)).double()
    r = torus_bound(net, rtol=1e-3)
    assert r["closed"] and r["lower"] is not None
    assert r["lower"] <= r["upper"] <= r["lower"] * (1 + 2e-3)
    assert r["upper"] <= bench.verify(net, "trivial", p=2).value
    lo = bench.lower_bound(net, p=2).value
    assert lo <= r["upper"] * (1 + 1e-9)
    assert lo >= 0.99 * r["lower"]


def test_refuses_other_networks():
    with pytest.raises(ValueError, match="SinCos"):
        sinusoidal_layers(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)))
    with pytest.raises(ValueError, match="p = 2"):
        torus_bound(_net(torch.eye(1, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)), p=math.inf)
