"""The layers networks users bring: BatchNorm, average and max pooling, GELU, ELU, SiLU,
Softplus and modules the walk does not know.  The walk's maps against the modules' own
outputs, the activations' slopes on dense grids, and every verifier against exact
constants of tiny networks (found by region enumeration of an equivalent Linear / ReLU /
MaxMin network built here by probing the torch modules, independent of the walk)."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import bench
from bench import network
from bench.activations import ExactSoftplus, describe
from bench.api import Query, Unsupported, UserError
from bench.registry import get_verifier
from bench.testing.exact import norm, regions
from methods.layers import MaxMin
from methods.trivial import TorchTrivialBound, operator_norm

INF = math.inf
NORMS = (1.0, 2.0, INF)


def rand_bn(bn, seed):
    """A BatchNorm in eval mode with non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        n = bn.num_features
        bn.running_mean.copy_(torch.randn(n, generator=g))
        bn.running_var.copy_(0.2 + 2.5 * torch.rand(n, generator=g))
        if bn.affine:
            bn.weight.copy_(torch.randn(n, generator=g))
            bn.bias.copy_(torch.randn(n, generator=g))
    return bn.eval()


# --- the walk's affine maps are the modules' maps --------------------------------------

AFFINE_CASES = [
    ("bn1d", lambda: rand_bn(nn.BatchNorm1d(5), 0), (5,)),
    ("bn1d-seq", lambda: rand_bn(nn.BatchNorm1d(3), 1), (3, 4)),
    ("bn1d-noaffine", lambda: rand_bn(nn.BatchNorm1d(4, affine=False), 2), (4,)),
    ("bn2d", lambda: rand_bn(nn.BatchNorm2d(3, eps=1e-3), 3), (3, 4, 5)),
    ("avg2", lambda: nn.AvgPool2d(2), (2, 6, 6)),
    ("avg3-s1-p1", lambda: nn.AvgPool2d(3, stride=1, padding=1), (2, 5, 5)),
    ("avg3-s2-p1-nopad", lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), (1, 7, 6)),
    ("avg2-ceil", lambda: nn.AvgPool2d(2, stride=2, ceil_mode=True), (2, 5, 5)),
    ("avg-divisor", lambda: nn.AvgPool2d((2, 3), stride=(1, 2), divisor_override=4), (1, 5, 7)),
    ("adaptive2d", lambda: nn.AdaptiveAvgPool2d((2, 3)), (2, 5, 7)),
    ("avg1d", lambda: nn.AvgPool1d(3, stride=2, padding=1), (2, 9)),
]


@pytest.mark.parametrize("name,make,shape", AFFINE_CASES, ids=[c[0] for c in AFFINE_CASES])
def test_affine_maps_equal_the_modules(name, make, shape):
    m = make().double()
    layer = network.walk(nn.Sequential(m), shape).layers[0]
    assert isinstance(layer, network.Diagonal if name.startswith("bn") else network.Pool)
    g = torch.Generator().manual_seed(7)
    x = 3 * torch.randn(20, *shape, dtype=torch.float64, generator=g)
    with torch.no_grad():
        y = m(x).reshape(20, -1).numpy()
    W, b = layer.matrix(), layer.bias()
    assert W.shape == (layer.out_dim, layer.in_dim) and W.dtype == np.float64
    y2 = x.reshape(20, -1).numpy() @ W.T + (0.0 if b is None else b)
    np.testing.assert_allclose(y2, y, rtol=1e-12, atol=1e-12)
    # row and column sums of |W|, exactly, without the dense matrix
    np.testing.assert_allclose(layer.abs_row_sums(), np.abs(W).sum(1), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(layer.abs_col_sums(), np.abs(W).sum(0), rtol=1e-12, atol=1e-15)
    assert layer.has_bias == (b is not None and bool(np.any(b != 0)))
    # the trivial bound's norms: exact for p = 1, inf; sound for p = 2 (exact for a diagonal)
    sv = float(np.linalg.norm(W, 2))
    for p, true in ((1.0, np.abs(W).sum(0).max()), (INF, np.abs(W).sum(1).max()), (2.0, sv)):
        v = operator_norm(layer, p)
        assert true * (1 - 1e-12) <= v <= true * (1 + 1e-9) or (p == 2 and isinstance(layer, network.Pool)
                                                                 and v >= true * (1 - 1e-12)), (p, v, true)


def test_non_overlapping_average_pooling_has_an_exact_l2_norm():
    layer = network.walk(nn.Sequential(nn.AvgPool2d(2)), (2, 4, 6)).layers[0]
    assert operator_norm(layer, 2.0) == pytest.approx(float(np.linalg.norm(layer.matrix(), 2)), rel=1e-12)


def test_batchnorm_norm_is_max_abs_scale_and_the_bound_is_differentiable():
    bn = rand_bn(nn.BatchNorm1d(6), 4)
    net = nn.Sequential(nn.Linear(3, 6), bn, nn.ReLU(), nn.Linear(6, 2))
    layer = network.walk(net).layers[1]
    s = (bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)).detach().numpy()
    assert isinstance(layer, network.Diagonal)
    for p in NORMS:
        assert operator_norm(layer, p) == pytest.approx(np.abs(s).max(), rel=1e-12)
        tb = TorchTrivialBound(net, (3,), p).full()
        assert float(tb) == pytest.approx(bench.verify(net, "trivial", p=p).value, rel=1e-9)
    TorchTrivialBound(net, (3,), 2.0).full().backward()
    assert bn.weight.grad is not None and float(bn.weight.grad.abs().sum()) > 0


def test_trivial_bound_of_pooling_networks_matches_the_differentiable_one():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8, 3))
    for p in (1.0, INF):
        tb = float(TorchTrivialBound(net, (1, 4, 4), p).full())
        assert tb == pytest.approx(bench.verify(net, "trivial", p=p, input_shape=(1, 4, 4)).value, rel=1e-9)


def test_batchnorm_without_fixed_statistics_is_unsupported_with_the_reason():
    bn = rand_bn(nn.BatchNorm1d(3), 5).train()
    b = bench.verify(nn.Sequential(nn.Linear(2, 3), bn, nn.Linear(3, 1)), "lower", p=2)
    assert b.status == "unsupported" and "layer 1 (BatchNorm1d) is in training mode" in b.error and "eval()" in b.error
    free = nn.BatchNorm1d(3, track_running_stats=False).eval()
    with pytest.raises(Unsupported, match="no running statistics"):
        network.walk(nn.Sequential(nn.Linear(2, 3), free, nn.Linear(3, 1)))

    class Block(nn.Module):   # a module the walk does not know, holding a BatchNorm in training mode
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(3)

        def forward(self, x):
            return self.bn(x)
    with pytest.raises(Unsupported, match=r"layer 1 \(Block\) holds a BatchNorm1d that is in training mode"):
        network.walk(nn.Sequential(nn.Linear(2, 3), Block(), nn.Linear(3, 1)))


# --- MaxPool2d ---------------------------------------------------------------------------

# (kernel, stride, padding, dilation, return_indices, ceil_mode)
MAXPOOLS = [((2,), (1, 4, 6)), ((3, 1, 1), (2, 5, 5)), ((2, 1), (1, 4, 4)), (((1, 2),), (2, 3, 4)),
            ((3, 2, 1, 2), (1, 7, 7)), ((2, 2, 0, 1, False, True), (1, 5, 5)), ((3, 3), (1, 8, 8)),
            ((3, 2, 1, 1, False, True), (1, 6, 6))]


def pool_layer(m, shape):
    """The walk's layer for MaxPool2d ``m`` on inputs of ``shape`` (in a network that
    ends with a Linear, as every walked network must have an affine layer)."""
    k = int(np.prod(m(torch.zeros(1, *shape)).shape[1:]))
    return network.walk(nn.Sequential(m, nn.Flatten(), nn.Linear(k, 1)), shape).layers[0]


def window_counts(m, shape):
    """How many windows hold each input: the outputs that move when input i goes from 0
    to 1 (every other input 0), by the module itself."""
    n = int(np.prod(shape))
    with torch.no_grad():
        e = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
        return (m(e).reshape(n, -1) > 0).sum(1).numpy()


@pytest.mark.parametrize("args,shape", MAXPOOLS)
def test_maxpool_lipschitz_constants_are_attained_and_hold(args, shape):
    m = nn.MaxPool2d(*args)
    a = pool_layer(m, shape)
    assert isinstance(a, network.Activation) and a.slope is None and a.name == "maxpool2d"
    c = int(window_counts(m, shape).max())
    assert a.lipschitz == {1.0: c, 2.0: pytest.approx(math.sqrt(c), rel=1e-15), INF: 1.0}
    assert a.lipschitz[2.0] ** 2 >= c
    assert (a.saturates == (1.0, 2.0, INF)) == (c == 1) and INF in a.saturates
    # attained by x = 0, y = e_i for the input in the most windows
    n = int(np.prod(shape))
    i = int(np.argmax(window_counts(m, shape)))
    e = torch.zeros(1, n, dtype=torch.float64)
    e[0, i] = 1.0
    d = m(e.reshape(1, *shape)).reshape(-1) - m(torch.zeros(1, *shape, dtype=torch.float64)).reshape(-1)
    for p in NORMS:
        assert float(torch.linalg.vector_norm(d, ord=p)) == pytest.approx(a.lipschitz[p], rel=1e-12)
    # and never exceeded on random pairs (near ones too)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, *shape, dtype=torch.float64, generator=g)
    y = torch.randn(300, *shape, dtype=torch.float64, generator=g)
    y[:150] = x[:150] + 1e-3 * torch.randn(150, *shape, dtype=torch.float64, generator=g)
    fx, fy = m(x).reshape(300, -1), m(y).reshape(300, -1)
    for p in NORMS:
        q = torch.linalg.vector_norm(fx - fy, ord=p, dim=1) / torch.linalg.vector_norm((x - y).reshape(300, -1),
                                                                                      ord=p, dim=1)
        assert float(q.max()) <= a.lipschitz[p] * (1 + 1e-12)


@pytest.mark.parametrize("args,shape", MAXPOOLS)
def test_maxpool_interval_image_is_exact_and_holds_samples(args, shape):
    m = nn.MaxPool2d(*args)
    spec = pool_layer(m, shape).spec
    g = torch.Generator().manual_seed(2)
    n = int(np.prod(shape))
    c, r = torch.randn(10, n, dtype=torch.float64, generator=g), torch.rand(10, n, dtype=torch.float64, generator=g)
    lo, hi = spec.interval(c - r, c + r)
    for _ in range(30):
        x = c - r + 2 * r * torch.rand(10, n, dtype=torch.float64, generator=g)
        fx = m(x.reshape(10, *shape)).reshape(10, -1)
        assert torch.all(fx >= lo) and torch.all(fx <= hi)
    torch.testing.assert_close(lo, m((c - r).reshape(10, *shape)).reshape(10, -1), rtol=0, atol=0)
    torch.testing.assert_close(hi, m((c + r).reshape(10, *shape)).reshape(10, -1), rtol=0, atol=0)


@pytest.mark.parametrize("args,shape", [(((1, 2),), (2, 3, 4)), (((2, 1), (3, 1)), (1, 7, 3)),
                                        (((1, 2), (1, 2), (0, 1)), (1, 2, 5))])
def test_maxpool_of_pairs_has_the_pwl_form(args, shape):
    m = nn.MaxPool2d(*args)
    spec = pool_layer(m, shape).spec
    n = int(np.prod(shape))
    P, Q, A = (torch.as_tensor(M) for M in spec.pwl(n))
    z = 3 * torch.randn(200, n, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    z[:20] = torch.round(z[:20])  # ties
    # b + relu(a - b) is max(a, b) up to one rounding
    torch.testing.assert_close(z @ P.T + torch.relu(z @ A.T) @ Q.T, m(z.reshape(200, *shape)).reshape(200, -1),
                               rtol=1e-15, atol=1e-15)
    assert np.all((np.abs(A.numpy()) > 0).sum(0) <= 1)   # each input in at most one unit


def test_maxpool_without_a_pwl_form_says_why():
    net = nn.Sequential(nn.Conv2d(1, 1, 2, padding=1), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4, 2))
    b = bench.verify(net, "bab", p=2, input_shape=(1, 3, 3))
    assert b.status == "unsupported" and "layer 1 (maxpool2d)" in b.error and "nested ReLUs" in b.error
    net = nn.Sequential(nn.Conv2d(1, 1, 2, padding=1), nn.MaxPool2d((1, 2), stride=1), nn.Flatten(), nn.Linear(12, 2))
    b = bench.verify(net, "mip", p=1, input_shape=(1, 3, 3))
    assert b.status == "unsupported" and "overlapping windows" in b.error
    with pytest.raises(Unsupported, match=r"layer 1 \(MaxPool2d\).*\(C, H, W\)"):
        network.walk(nn.Sequential(nn.Linear(2, 4), nn.MaxPool2d(2)))


# --- elementwise activations: slopes on a dense grid, the Softplus threshold -----------

GRID = torch.arange(-1_200_000, 1_200_001, dtype=torch.float64) * 1e-5   # [-12, 12], step 1e-5
SMOOTH = [nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU(), nn.ELU(), nn.ELU(alpha=0.3), nn.ELU(alpha=2.5),
          nn.ELU(alpha=-0.7), nn.Softplus(), nn.Softplus(beta=4.0), nn.Softplus(beta=-2.0, threshold=30.0)]


@pytest.mark.parametrize("m", SMOOTH, ids=repr)
def test_slope_bounds_hold_on_a_dense_grid_and_are_tight(m):
    spec = describe(m)
    lo, hi = spec.slope
    f = spec.reference() or m
    x = GRID.clone().requires_grad_(True)
    (g1,) = torch.autograd.grad(f(x).sum(), x, create_graph=True)
    (g2,) = torch.autograd.grad(g1.sum(), x)
    d = g1.detach()
    # tanh GELU, whose bounds are numerical: between grid points g' moves by at most
    # max|g''| h / 2 (the others' extremes are in closed form: checked there below; ELU's
    # and Softplus's g' is monotone on each side of 0)
    slack = float(g2.abs().max()) * 1e-5 / 2 if getattr(m, "approximate", "") == "tanh" else 0.0
    assert float(d.min()) - slack >= lo and float(d.max()) + slack <= hi, (float(d.min()), float(d.max()))
    crit = {"gelu": math.sqrt(2.0), "silu": 2.3993572805154677}.get(spec.name)
    if crit is not None and slack == 0.0:
        z = torch.tensor([-crit, crit], dtype=torch.float64, requires_grad=True)
        (gz,) = torch.autograd.grad(f(z).sum(), z)
        assert lo <= float(gz[0]) <= lo + 2e-6 and hi - 2e-6 <= float(gz[1]) <= hi, gz
    assert float(d.min()) <= lo + 2e-5 or lo == 0.0 or (spec.name == "elu" and lo == spec.alpha)
    assert float(d.max()) >= hi - 2e-5 or (spec.name == "softplus" and hi == 1.0)
    # difference quotients of wide pairs too
    y = GRID[::997].detach()
    dq = (f(y[1:]) - f(y[:-1])) / (y[1:] - y[:-1])
    assert float(dq.min()) >= lo and float(dq.max()) <= hi


def test_tanh_gelu_has_the_two_inflections_its_proof_relies_on():
    m = nn.GELU(approximate="tanh")
    x = GRID.clone().requires_grad_(True)
    (g1,) = torch.autograd.grad(m(x).sum(), x, create_graph=True)
    (g2,) = torch.autograd.grad(g1.sum(), x)
    s = torch.sign(g2)
    flips = GRID[:-1][(s[1:] * s[:-1]) < 0]
    assert flips.tolist() == pytest.approx([-1.41851, 1.41850], abs=2e-5)
    assert float(g2.abs().max()) <= 0.8
    assert float(g1[0]) == pytest.approx(0.0, abs=1e-12) and float(g1[-1]) == pytest.approx(1.0, abs=1e-12)


def test_softplus_is_read_without_its_threshold_and_a_small_threshold_is_unsupported():
    spec = describe(nn.Softplus(beta=2.0))
    ref = spec.reference()
    assert isinstance(ref, ExactSoftplus)
    x = torch.linspace(-30, 30, 601, dtype=torch.float64)
    torch.testing.assert_close(ref(x), torch.logaddexp(torch.zeros_like(x), 2 * x) / 2, rtol=1e-15, atol=1e-15)
    assert float((nn.Softplus(beta=2.0)(x) - ref(x)).abs().max()) > 0   # torch's threshold: not the same function
    from bench.activations import referenced
    net = referenced(nn.Sequential(nn.Linear(2, 2), nn.Softplus(beta=2.0), nn.Linear(2, 1)))
    assert isinstance(net[1], ExactSoftplus)
    b = bench.verify(nn.Sequential(nn.Linear(2, 3), nn.Softplus(threshold=5.0), nn.Linear(3, 1)), "trivial", p=2)
    assert b.status == "unsupported" and "layer 1 (Softplus)" in b.error and "threshold 5" in b.error
    with pytest.raises(Unsupported, match="beta = 0"):
        network.walk(nn.Sequential(nn.Linear(2, 3), nn.Softplus(beta=0.0), nn.Linear(3, 1)))


# --- every verifier on tiny networks with these layers --------------------------------

def probe_affine(mods, shape):
    """The affine map x -> W x + b that the modules compute in sequence (torch's own
    forward on unit vectors and on 0), and the output shape."""
    n = int(np.prod(shape))
    with torch.no_grad():
        def run(x):
            for m in mods:
                x = m(x)
            return x
        zero = run(torch.zeros(1, *shape, dtype=torch.float64))
        cols = run(torch.eye(n, dtype=torch.float64).reshape(n, *shape)).reshape(n, -1) - zero.reshape(1, -1)
    return cols.T.numpy(), zero.reshape(-1).numpy(), tuple(zero.shape[1:])


def as_linear(net, shape):
    """An equivalent Linear / ReLU / MaxMin network for region enumeration: the affine
    runs between activations composed by probing, a MaxPool of (1, 2) windows written as
    MaxMin followed by selecting the maxima."""
    out, run, cur = [], [], tuple(shape)
    pending = None   # a selection to apply before the next affine run (after MaxMin)

    def flush():
        nonlocal run, cur, pending
        W, b, cur = probe_affine(run, cur)
        if pending is not None:
            W = W @ pending
        lin = nn.Linear(W.shape[1], W.shape[0]).double()
        with torch.no_grad():
            lin.weight.copy_(torch.as_tensor(W))
            lin.bias.copy_(torch.as_tensor(b))
        out.append(lin)
        run, pending = [], None
    for m in net:
        if isinstance(m, nn.ReLU):
            flush()
            out.append(nn.ReLU())
        elif isinstance(m, nn.MaxPool2d):
            assert m.kernel_size == (1, 2) and m.stride == (1, 2) and cur[-1] % 2 == 0
            flush()
            out.append(MaxMin())
            n = int(np.prod(cur))
            pending = np.eye(n)[0::2]            # the maxima: MaxMin gives (max, min) per pair
            cur = (cur[0], cur[1], cur[2] // 2)
        else:
            run.append(m)
    flush()
    return nn.Sequential(*out)


def tiny_nets():
    torch.manual_seed(0)
    bn_mlp = nn.Sequential(nn.Linear(2, 5), rand_bn(nn.BatchNorm1d(5), 10), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(),
                           rand_bn(nn.BatchNorm1d(4), 11), nn.Linear(4, 3))
    torch.manual_seed(1)
    conv = nn.Sequential(nn.Linear(2, 8), nn.Unflatten(1, (2, 2, 2)), rand_bn(nn.BatchNorm2d(2), 12), nn.ReLU(),
                         nn.Conv2d(2, 2, 2, padding=1), nn.AvgPool2d(2, stride=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8, 3))
    torch.manual_seed(2)
    pool = nn.Sequential(nn.Linear(2, 8), nn.Unflatten(1, (1, 2, 4)), nn.MaxPool2d((1, 2)), nn.Flatten(),
                         nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    return {"bn-mlp": bn_mlp.double().eval(), "conv-bn-avgpool": conv.double().eval(),
            "maxpool": pool.double().eval()}


NETS = tiny_nets()
BOX = {"center": [0.1, -0.2], "radius": 0.4}
_EXACT: dict = {}


def exact(name, p, dom):
    key = (name, dom)
    if key not in _EXACT:
        lin = as_linear(NETS[name], (2,))
        x = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
        torch.testing.assert_close(lin(x), NETS[name](x), rtol=1e-12, atol=1e-12)
        lo, hi = (-100.0, 100.0) if dom == "global" else (np.array(BOX["center"]) - BOX["radius"],
                                                          np.array(BOX["center"]) + BOX["radius"])
        _EXACT[key] = list(regions(lin, lo, hi))
    return max(norm(J, p) for J in _EXACT[key])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NETS))
def test_every_verifier_is_sound_on_tiny_networks(name):
    net = NETS[name]
    for p in NORMS:
        ex = exact(name, p, "global")
        low = bench.lower_bound(net, p=p, samples=300, restarts=4, steps=10)
        assert low.status == "ok" and 0 < low.value <= ex * (1 + 1e-9), (p, low, ex)
        tb = bench.verify(net, "trivial", p=p)
        assert tb.status == "ok" and tb.value >= ex * (1 - 1e-12), (p, tb, ex)
        b = bench.verify(net, "bab", p=p)
        assert b.status == "ok" and b.kind == "exact" and b.value == pytest.approx(ex, rel=1e-6), (p, b, ex)
        if p != 2:
            b = bench.verify(net, "mip", p=p)
            assert b.status == "ok" and b.kind == "exact" and b.value == pytest.approx(ex, rel=1e-6), (p, b, ex)
        for v in ("lipsdp", "eclipse-fast", "eclipse"):
            b = bench.verify(net, v, p=p)
            if p != 2:
                assert b.status == "unsupported"
            else:   # a max pool (not elementwise) through its exact ReLU form
                assert b.status == "ok" and b.value >= ex * (1 - 1e-9), (v, b, ex)
                assert ("relu_forms" in b.stats) == (name == "maxpool"), (v, b.stats)
        b = bench.verify(net, "bab", p=p, domain=BOX)
        assert b.kind == "exact" and b.value == pytest.approx(exact(name, p, "box"), rel=1e-6)


@pytest.mark.auto_lirpa
@pytest.mark.parametrize("name", sorted(NETS))
def test_lirpa_is_sound_on_tiny_networks_over_a_box(name):
    net = NETS[name]
    for p in NORMS:
        ex_box = exact(name, p, "box")
        b = bench.verify(net, "lirpa", p=p, domain=BOX)
        if name == "maxpool":
            assert b.status == "unsupported" and "maxpool2d" in b.error
        else:
            assert b.status == "ok" and b.value >= ex_box * (1 - 1e-9), (p, b, ex_box)


SMOOTH_NETS = {"gelu": nn.GELU, "gelu-tanh": lambda: nn.GELU(approximate="tanh"), "silu": nn.SiLU,
               "elu": nn.ELU, "elu-neg": lambda: nn.ELU(alpha=-0.5), "softplus": nn.Softplus}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMOOTH_NETS))
def test_smooth_activation_networks_bound_above_the_lower_bound(name):
    torch.manual_seed(3)
    act = SMOOTH_NETS[name]
    net = nn.Sequential(nn.Linear(3, 6), act(), nn.Linear(6, 5), rand_bn(nn.BatchNorm1d(5), 13), act(),
                        nn.Linear(5, 2)).double().eval()
    negative = describe(act()).slope[0] < 0
    for p in NORMS:
        low = bench.lower_bound(net, p=p, samples=400, restarts=4, steps=20)
        assert low.status == "ok" and low.value > 0
        ups = {"trivial": bench.verify(net, "trivial", p=p)}
        if p == 2:
            ups.update({v: bench.verify(net, v, p=p) for v in ("lipsdp", "eclipse-fast")})
        for v, b in ups.items():
            if v == "eclipse-fast" and negative:
                assert b.status == "unsupported" and "lower slope" in b.error
                continue
            assert b.status == "ok" and b.value >= low.value * (1 - 1e-6), (v, p, b, low)
        for v in ("bab", "mip"):
            b = bench.verify(net, v, p=1)
            assert b.status == "unsupported" and "not piecewise linear" in b.error


@pytest.mark.auto_lirpa
@pytest.mark.parametrize("name", sorted(SMOOTH_NETS))
def test_lirpa_refuses_smooth_activations_by_name(name):
    net = nn.Sequential(nn.Linear(3, 6), SMOOTH_NETS[name](), nn.Linear(6, 2)).double()
    for p in NORMS:
        b = bench.verify(net, "lirpa", p=p, domain={"center": [0.0, 0.1, 0.2], "radius": 0.3})
        assert b.status == "unsupported" and "no Jacobian bounds" in b.error


# --- modules the walk does not know -----------------------------------------------------

class Gate(nn.Module):
    """A module of code whose product of two computed tensors is no layer the walk knows."""

    def __init__(self, d):
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x):
        h = self.lin(x)
        return h * torch.sigmoid(h)


def test_a_custom_module_works_with_lower_and_is_refused_by_name_elsewhere():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), Gate(4), nn.Linear(4, 2))
    w = network.walk(net)
    assert [type(l).__name__ for l in w.layers] == ["Affine", "Activation", "Opaque", "Affine"]
    assert w.layers[2].in_shape == w.layers[2].out_shape == (4,) and "Gate(4->4)" in w.describe()
    assert "node mul (mul) has no reading as a layer" in w.layers[2].why
    low = bench.lower_bound(net, p=2, samples=200, restarts=4, steps=10)
    assert low.status == "ok" and low.value > 0
    for v, p in (("trivial", 2), ("lipsdp", 2), ("bab", 2), ("mip", 1), ("eclipse-fast", 2)):
        b = bench.verify(net, v, p=p)
        assert b.status == "unsupported" and f"layer 2 (Gate) is not supported by {v}" in b.error, (v, b)
        assert "node mul (mul) has no reading as a layer" in b.error
    # lirpa's refusal (asked directly: the harness says not_installed first where auto_LiRPA is absent)
    assert "layer 2 (Gate) is not supported by lirpa" in get_verifier("lirpa")().refusal(w, Query(p=2, domain=([0, 0, 0], 1.0)))
    # a whole network the walk does not know, and one that starts with it
    assert bench.lower_bound(Gate(3), p=INF, input_shape=(3,), samples=100, steps=5).value > 0
    # its input shape is read from its first traced layer, a Linear
    assert bench.verify(nn.Sequential(Gate(3), nn.Linear(3, 1)), "lower", samples=50, steps=3).status == "ok"


def test_the_input_shape_message_names_the_layer_and_the_argument():
    with pytest.raises(UserError, match=r"cannot be inferred from the first layer, Conv2d.*input_shape=\(C, H, W\)"):
        network.walk(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 1)))
    with pytest.raises(UserError, match="BatchNorm1d"):
        bench.verify(nn.Sequential(nn.BatchNorm1d(3).eval(), nn.Linear(3, 1)), "trivial")
    assert bench.verify(nn.Sequential(rand_bn(nn.BatchNorm1d(3), 6), nn.Linear(3, 1)), "trivial",
                        input_shape=(3,)).status == "ok"


def test_walking_an_unknown_module_does_not_change_it():
    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x):
            self.calls += 1
            return x
    c = Counter()
    network.walk(nn.Sequential(nn.Linear(2, 2), c, nn.Linear(2, 1)))
    assert float(c.calls) == 0


# --- selections (PixelShuffle, PixelUnshuffle, ChannelShuffle, FirstChannels, ZeroChannelPad)
# and AdaptiveMaxPool2d: ConvNetM's layers (Prach et al. 2024) ----------------------------

SELECTION_CASES = [
    ("unshuffle", lambda: nn.PixelUnshuffle(2), (2, 4, 6)),
    ("shuffle", lambda: nn.PixelShuffle(2), (8, 2, 3)),
    ("channel-shuffle", lambda: nn.ChannelShuffle(2), (4, 3, 3)),
    ("first-channels", lambda: network.FirstChannels(3), (5, 2, 2)),
    ("first-features", lambda: network.FirstChannels(4), (7,)),
    ("zero-pad", lambda: network.ZeroChannelPad(5), (2, 3, 3)),
    ("zero-pad-flat", lambda: network.ZeroChannelPad(6), (3,)),
]


@pytest.mark.parametrize("name,make,shape", SELECTION_CASES, ids=[c[0] for c in SELECTION_CASES])
def test_selections_are_the_modules_maps_with_norm_one(name, make, shape):
    m = make()
    layer = network.walk(nn.Sequential(m), shape).layers[0]
    assert isinstance(layer, network.Selection) and isinstance(layer, network.Affine)
    assert not layer.has_bias and layer.bias() is None
    g = torch.Generator().manual_seed(8)
    x = 3 * torch.randn(20, *shape, dtype=torch.float64, generator=g)
    with torch.no_grad():
        y = m(x).reshape(20, -1).numpy()
    W = layer.matrix()
    assert W.shape == (layer.out_dim, layer.in_dim)
    np.testing.assert_array_equal(x.reshape(20, -1).numpy() @ W.T, y)
    # the unrolled module (torch's forward on the unit vectors) is the same matrix
    n = layer.in_dim
    with torch.no_grad():
        unrolled = m(torch.eye(n, dtype=torch.float64).reshape(n, *shape)).reshape(n, -1).T.numpy()
    np.testing.assert_array_equal(W, unrolled)
    assert set(np.unique(W)) <= {0.0, 1.0} and W.sum(1).max() <= 1 and W.sum(0).max() <= 1
    np.testing.assert_array_equal(layer.abs_row_sums(), W.sum(1))
    np.testing.assert_array_equal(layer.abs_col_sums(), W.sum(0))
    for p in NORMS:
        exact_norm = {1.0: W.sum(0).max(), 2.0: np.linalg.norm(W, 2), INF: W.sum(1).max()}[p]
        assert exact_norm == pytest.approx(1.0, abs=1e-12)
        v = operator_norm(layer, p)
        assert exact_norm <= v <= 1 + 1e-12, (p, v)
        assert float(TorchTrivialBound(nn.Sequential(m), shape, p).full()) == pytest.approx(v, rel=1e-12)
    if name.startswith("zero-pad"):   # an isometry: every p-norm kept
        for p in NORMS:
            np.testing.assert_allclose(np.linalg.norm(y, ord=p, axis=1),
                                       np.linalg.norm(x.reshape(20, -1).numpy(), ord=p, axis=1), rtol=1e-15)
    if name in ("unshuffle", "shuffle", "channel-shuffle"):   # a permutation
        np.testing.assert_array_equal(W @ W.T, np.eye(layer.out_dim))


def test_a_selection_the_module_cannot_make_names_the_layer():
    with pytest.raises(UserError, match=r"layer 1 \(FirstChannels\) does not accept input of shape \(2, 2, 2\)"):
        network.walk(nn.Sequential(nn.Conv2d(1, 2, 1), network.FirstChannels(3)), (1, 2, 2))
    with pytest.raises(UserError, match=r"layer 0 \(ZeroChannelPad\)"):
        network.walk(nn.Sequential(network.ZeroChannelPad(2), nn.Flatten(), nn.Linear(12, 1)), (3, 2, 2))

    class Doubling(network.FirstChannels):   # claims to be a selection, scales instead: its own code
        def forward(self, x):
            return 2 * super().forward(x)
    net = nn.Sequential(Doubling(2), nn.Flatten(), nn.Linear(8, 1))
    w = network.walk(net, (3, 2, 2))
    assert type(w.layers[0]).__name__ == "Opaque"
    b = bench.verify(net, "trivial", input_shape=(3, 2, 2))
    assert b.status == "unsupported" and "layer 0 (Doubling) is not supported by trivial" in b.error


# (output_size, input shape)
ADAPTIVE_MAXPOOLS = [(1, (2, 3, 5)), ((2, 3), (1, 5, 7)), ((None, 2), (1, 3, 4)), (3, (1, 7, 7)), (1, (3, 1, 1))]


@pytest.mark.parametrize("size,shape", ADAPTIVE_MAXPOOLS)
def test_adaptive_maxpool_windows_constants_and_interval(size, shape):
    m = nn.AdaptiveMaxPool2d(size)
    a = pool_layer(m, shape)
    assert isinstance(a, network.Activation) and a.name == "adaptivemaxpool2d"
    spec = a.spec
    # the description's windows are the module's: each input in as many windows as the module says
    counts = np.zeros(int(np.prod(shape)), dtype=int)
    for w in spec._flat_windows():
        counts[w] += 1
    np.testing.assert_array_equal(counts, window_counts(m, shape))
    c = int(counts.max())
    assert a.lipschitz == {1.0: c, 2.0: pytest.approx(math.sqrt(c), rel=1e-15), INF: 1.0}
    if size == 1:   # the max over all pixels of a channel: each input in one window, Lipschitz 1
        assert c == 1 and a.lipschitz == {1.0: 1.0, 2.0: 1.0, INF: 1.0} and a.saturates == (1.0, 2.0, INF)
    g = torch.Generator().manual_seed(9)
    x = torch.randn(300, *shape, dtype=torch.float64, generator=g)
    y = x + 1e-2 * torch.randn(300, *shape, dtype=torch.float64, generator=g)
    fx, fy = m(x).reshape(300, -1), m(y).reshape(300, -1)
    for p in NORMS:
        q = torch.linalg.vector_norm(fx - fy, ord=p, dim=1) / torch.linalg.vector_norm((x - y).reshape(300, -1),
                                                                                      ord=p, dim=1)
        assert float(q.max()) <= a.lipschitz[p] * (1 + 1e-12)
    lo_in, hi_in = x.reshape(300, -1) - 0.3, x.reshape(300, -1) + 0.3
    lo, hi = spec.interval(lo_in, hi_in)
    torch.testing.assert_close(lo, m(lo_in.reshape(300, *shape)).reshape(300, -1), rtol=0, atol=0)
    torch.testing.assert_close(hi, m(hi_in.reshape(300, *shape)).reshape(300, -1), rtol=0, atol=0)
    assert torch.all(fx >= lo) and torch.all(fx <= hi)


def test_adaptive_maxpool_of_pairs_has_the_pwl_form():
    m, shape = nn.AdaptiveMaxPool2d(1), (3, 1, 2)
    spec = pool_layer(m, shape).spec
    P, Q, A = (torch.as_tensor(M) for M in spec.pwl(6))
    z = 3 * torch.randn(100, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(z @ P.T + torch.relu(z @ A.T) @ Q.T, m(z.reshape(100, *shape)).reshape(100, -1),
                               rtol=1e-15, atol=1e-15)
    with pytest.raises(Unsupported, match="adaptivemaxpool2d with windows of 6 inputs"):
        pool_layer(m, (1, 2, 3)).spec.pwl(6)


def convnet_like():
    """A tiny net with every ConvNetM layer, on a 2-d input (few regions): a Linear into a
    (1, 2, 4) image, zero channels to 2, a 3x3 conv, MaxMin, the first channel,
    PixelUnshuffle (-> 4 x 1 x 2), the max over pixels, a 1x1 head, the first 3 outputs."""
    torch.manual_seed(5)
    return nn.Sequential(nn.Linear(2, 8), nn.Unflatten(1, (1, 2, 4)), network.ZeroChannelPad(2),
                         nn.Conv2d(2, 2, 3, padding=1), MaxMin(), network.FirstChannels(1), nn.PixelUnshuffle(2),
                         nn.AdaptiveMaxPool2d(1), nn.Conv2d(4, 4, 1), nn.Flatten(), network.FirstChannels(3)
                         ).double().eval()


@pytest.mark.slow
def test_every_verifier_is_sound_on_a_tiny_convnet_with_these_layers():
    from bench.testing.exact import exact_lipschitz
    net = convnet_like()
    w = network.walk(net)
    assert [type(l).__name__ for l in w.layers] == ["Affine", "Selection", "Affine", "Activation", "Selection",
                                                    "Selection", "Activation", "Affine", "Selection"]
    for p in NORMS:
        ex = exact_lipschitz(net, p)
        low = bench.lower_bound(net, p=p, samples=300, restarts=4, steps=10)
        assert low.status == "ok" and 0 < low.value <= ex * (1 + 1e-9), (p, low, ex)
        tb = bench.verify(net, "trivial", p=p)
        assert tb.status == "ok" and tb.value >= ex * (1 - 1e-12), (p, tb, ex)
        b = bench.verify(net, "bab", p=p)
        assert b.status == "ok" and b.kind == "exact" and b.value == pytest.approx(ex, rel=1e-6), (p, b, ex)
        if p != 2:
            b = bench.verify(net, "mip", p=p)
            assert b.status == "ok" and b.value == pytest.approx(ex, rel=1e-6), (p, b, ex)
        for v in ("lipsdp", "eclipse-fast"):
            b = bench.verify(net, v, p=p)
            if p != 2:
                assert b.status == "unsupported", (v, b)
            else:   # MaxMin and the max pool through their exact ReLU forms: sound
                assert b.status == "ok" and b.value >= ex * (1 - 1e-9), (v, b, ex)
        assert get_verifier("lirpa")().refusal(w, Query(p=p, domain=([0.0, 0.0], 1.0)))
