"""Every registered activation description agrees with its module."""
import math

import pytest
import torch
from torch import nn

import bench
from bench import activations, network
from bench.activations import ActivationSpec, describe
from bench.api import Unsupported
from bench.registry import load_plugins

load_plugins()
INF = math.inf
# each description on a vector and on an image after a conv (C, H, W): an even width, an
# even number of channels (MaxMin pairs coordinates, channels on an image)
SHAPES = [(6,), (4, 2, 3)]
SHAPE_IDS = ["flat", "conv"]

# every registered description, and a few parameter values of the parametrised ones
CASES = [(name, {}) for name in sorted(activations.ACTIVATIONS)] + [
    ("leaky_relu", {"negative_slope": 0.3}), ("leaky_relu", {"negative_slope": 1.7}),
    ("hardtanh", {"min_val": -0.5, "max_val": 2.0}), ("softplus", {"beta": 3.0}), ("softplus", {"beta": -2.0}),
    ("elu", {"alpha": 0.5}), ("elu", {"alpha": 2.5}), ("elu", {"alpha": -0.7}), ("gelu", {"approximate": "tanh"})]
IDS = [n + "".join(f"-{v}" for v in p.values()) for n, p in CASES]
each_case = pytest.mark.parametrize("name,params", CASES, ids=IDS)
each_shape = pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)


class Described:
    """An activation as the walk reads it after a layer with output ``shape``: ``a`` (the
    walked layer), ``spec`` (its description), and ``flat(m)``, a map on flattened
    inputs (B, in_dim) -> (B, out_dim) that runs the module ``m`` on (B, *shape), the
    layout on which the description's ``pwl`` and ``interval`` work."""

    def __init__(self, name, params, shape):
        self.m = activations.get(name).build(**params).double()
        self.shape, self.dim = shape, int(math.prod(shape))
        spec = describe(self.m)
        assert spec is not None and spec.name == name and isinstance(spec, activations.get(name))
        first = nn.Linear(6, shape[0]) if len(shape) == 1 else nn.Conv2d(2, shape[0], 3, padding=1)
        width = self.dim * spec.out_factor
        net = nn.Sequential(first, self.m, nn.Flatten(), nn.Linear(width, 2)).double()
        self.a = network.walk(net, (6,) if len(shape) == 1 else (2, *shape[1:])).activations[0]
        self.spec = self.a.spec
        assert type(self.spec) is type(spec) and self.a.name == name and self.spec.in_shape == shape
        assert (self.a.in_dim, self.a.out_dim) == (self.dim, width)

    def flat(self, m=None):
        m = self.m if m is None else m
        return lambda z: m(z.reshape(-1, *self.shape)).reshape(z.shape[0], -1)


def points(n, seed, dim, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, dim, generator=g, dtype=torch.float64)


def op_norm(J, p):
    if p == 2:
        return float(torch.linalg.matrix_norm(J, 2))
    if p == 1:
        return float(J.abs().sum(0).max())
    return float(J.abs().sum(1).max())


@each_shape
@each_case
def test_width_slope_and_lipschitz_hold_on_samples(name, params, shape):
    d = Described(name, params, shape)
    a, spec = d.a, d.spec
    assert set(a.lipschitz) == set(bench.api.NORMS)
    x, y = points(400, 0, d.dim), points(400, 1, d.dim)
    y[:200] = x[:200] + 1e-3 * points(200, 8, d.dim, scale=1.0)  # near pairs too
    f = d.flat(spec.reference() or d.m)   # the function the description describes
    fx, fy = f(x), f(y)
    assert fx.shape == (400, d.dim * spec.out_factor)
    for p in (1.0, 2.0, INF):
        q = torch.linalg.vector_norm(fx - fy, ord=p, dim=1) / torch.linalg.vector_norm(x - y, ord=p, dim=1)
        assert float(q.max()) <= a.lipschitz[p] * (1 + 1e-9), (p, float(q.max()))
    if a.slope is not None:  # elementwise: every difference quotient lies in [lo, hi]
        lo, hi = a.slope
        dq = (fx - fy) / (x - y)
        assert float(dq.min()) >= lo - 1e-9 and float(dq.max()) <= hi + 1e-9


@each_shape
@each_case
def test_jacobians_are_bounded_and_saturate_where_declared(name, params, shape):
    d = Described(name, params, shape)
    f = d.flat(d.spec.reference() or d.m)
    for z in points(30, 2, d.dim):
        J = torch.autograd.functional.jacobian(lambda t: f(t[None])[0], z)
        for p in (1.0, 2.0, INF):
            assert op_norm(J, p) <= d.a.lipschitz[p] * (1 + 1e-12), (p, z)
        for p in d.spec.saturates:
            assert op_norm(J, float(p)) == pytest.approx(1.0, abs=1e-12), (p, z)


@each_shape
@each_case
def test_pwl_form_equals_the_module_and_its_jacobian(name, params, shape):
    d = Described(name, params, shape)
    form = d.spec.pwl(d.dim)
    if form is None:
        pytest.skip(f"{name} is not piecewise linear")
    P, Q, A = (torch.as_tensor(M) for M in form)
    assert P.dtype == Q.dtype == A.dtype == torch.float64
    z = points(500, 3, d.dim)
    z[:50] = torch.round(z[:50])  # ties (kinks) too
    h = z @ P.T + torch.relu(z @ A.T) @ Q.T
    torch.testing.assert_close(h, d.flat()(z), rtol=1e-14, atol=1e-14)
    for x in z[50:60]:   # away from kinks: the Jacobian is P + Q diag(A x > 0) A
        J = torch.autograd.functional.jacobian(lambda t: d.flat()(t[None])[0], x)
        torch.testing.assert_close(J, P + Q @ torch.diag((A @ x > 0).double()) @ A, rtol=0, atol=1e-14)


@each_shape
@each_case
def test_interval_image_holds_the_samples_and_its_ends_are_attained(name, params, shape):
    d = Described(name, params, shape)
    spec, D = d.spec, d.dim
    c, r = points(40, 4, D), torch.rand(40, D, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 2
    r[:5] = 0.0  # degenerate boxes
    l, u = c - r, c + r
    iv = spec.interval(l, u)
    if iv is None:
        pytest.skip(f"{name} gives no interval image")
    lo, hi = iv
    assert lo.shape == hi.shape == (40, D * spec.out_factor)
    tol = 1e-12 * (1 + lo.abs() + hi.abs())
    g = torch.Generator().manual_seed(6)
    f = d.flat(spec.reference() or d.m)   # the function the description describes
    for _ in range(50):
        x = l + (u - l) * torch.rand(40, D, dtype=torch.float64, generator=g)
        fx = f(x)
        assert torch.all(fx >= lo - tol) and torch.all(fx <= hi + tol)
    # exact: each end is the value at l, at u, at the point of the box nearest 0 or
    # nearest the minimum of a map with one minimum (GELU, SiLU)
    clamp = lambda c: torch.minimum(torch.maximum(torch.full_like(l, c), l), u)  # noqa: E731
    ends = [l, u, clamp(0.0)] + ([clamp(spec.argmin)] if hasattr(spec, "argmin") else [])
    cand = torch.stack([f(z) for z in ends])
    torch.testing.assert_close(lo, cand.amin(0), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(hi, cand.amax(0), rtol=1e-12, atol=1e-14)


@each_shape
@each_case
def test_smooth_surrogate_is_close_for_a_large_beta(name, params, shape):
    d = Described(name, params, shape)
    beta = 1e4
    s = d.spec.smooth(beta)
    if s is None:
        pytest.skip(f"{name} is used as it is")
    z = points(300, 7, d.dim)
    err = float((d.flat(s.double())(z) - d.flat()(z)).abs().max())
    assert err <= 1.0 / beta, err
    assert d.spec.smooth(1.0) is not None and not isinstance(d.spec.smooth(1.0), type(d.m))


def test_maxmin_pairs_channels_on_an_image():
    """On (N, C, H, W) MaxMin sorts channels 2k and 2k + 1 at each pixel, and its pwl form
    and interval image say the same; an odd number of channels is refused by name."""
    from methods.layers import MaxMin
    x = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    y = MaxMin()(x)
    torch.testing.assert_close(y[:, 0::2], torch.maximum(x[:, 0::2], x[:, 1::2]))
    torch.testing.assert_close(y[:, 1::2], torch.minimum(x[:, 0::2], x[:, 1::2]))
    spec = describe(MaxMin(), (4, 2, 2))
    P, Q, A = (torch.as_tensor(M) for M in spec.pwl(16))
    z = x.reshape(3, -1)
    torch.testing.assert_close(z @ P.T + torch.relu(z @ A.T) @ Q.T, y.reshape(3, -1))
    with pytest.raises(Unsupported, match="odd number of channels"):
        describe(MaxMin(), (3, 2, 2)).pwl(12)
    with pytest.raises(bench.UserError, match="even width"):
        network.walk(nn.Sequential(nn.Conv2d(1, 3, 1), MaxMin(), nn.Flatten(), nn.Linear(12, 1)), (1, 2, 2))


def test_negative_leaky_slope_has_no_pwl_form():
    spec = describe(nn.LeakyReLU(-0.5))
    assert spec.slope == (-0.5, 1.0)
    with pytest.raises(Unsupported, match="not monotone"):
        spec.pwl(3)


def test_the_older_plugin_hooks_still_work():
    """A module with ``lipbench_spec()`` / ``lipbench_smooth`` and a factory registered
    by name: described, walked, built and smoothed as before."""
    from baselines.verify.lower import smoothed

    class Clip(nn.Module):
        def forward(self, x):
            return x.clamp(-1, 1)

        def lipbench_spec(self):
            return {"name": "clip", "slope": (0.0, 1.0), "saturates": ()}

        def lipbench_smooth(self, beta):
            return nn.Tanh()

    try:
        bench.register_activation("clip-test")(Clip)
        net = network.build_net({"hidden": [3], "activation": "clip-test"}, (2,), 2)
        a = network.walk(net).activations[0]
        assert a.name == "clip" and a.slope == (0.0, 1.0) and a.lipschitz == {1.0: 1.0, 2.0: 1.0, INF: 1.0}
        assert isinstance(smoothed(net, 5.0)[1], nn.Tanh)
        assert network.activation_width_factor(Clip()) == 1
    finally:
        activations.ACTIVATIONS.pop("clip-test", None)


def test_a_new_activation_is_one_class():
    class Half(nn.Module):
        def forward(self, x):
            return x / 2

    @bench.register_activation
    class HalfSpec(ActivationSpec):
        name = "half-test"
        module_class = Half
        slope = (0.5, 0.5)

    try:
        from bench.registry import ACTIVATIONS, get_activation
        assert ACTIVATIONS["half-test"] is HalfSpec and isinstance(get_activation("half-test")(), Half)
        net = network.build_net({"hidden": [3], "activation": "half-test"}, (2,), 2)
        assert network.walk(net).activations[0].lipschitz[2.0] == 0.5
        assert isinstance(describe(type("Sub", (Half,), {})()), HalfSpec)  # subclasses by the MRO
    finally:
        activations.ACTIVATIONS.pop("half-test", None)
        activations._BY_CLASS.pop(Half, None)


def test_unknown_activation_names_the_registered_ones():
    with pytest.raises(bench.UserError, match="unknown activation 'nope'; registered: .*relu"):
        network.build_net({"hidden": [3], "activation": "nope"}, (2,), 2)
