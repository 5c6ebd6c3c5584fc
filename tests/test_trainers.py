"""The training baselines: each conforms to the trainer contract; the 1-Lipschitz families
export plain layers whose measured l2 constant is <= 1 + 1e-6 and whose sound trivial
bound is <= 1 (AOL, orthogonal, spectral-norm) or, for SLL, residual blocks that compute
what was trained exactly and are 1-Lipschitz."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from bench.api import Budget, Query
from bench.data import load
from bench.network import Affine, walk
from bench.registry import get_trainer, import_plugin
from bench.testing import check_trainer
from bench.testing.exact import exact_lipschitz
from conftest import have

NEW = {"weight-decay": "weight_decay", "spectral-norm": "spectral_norm", "lmt": "lmt", "gloro": "gloro",
       "aol": "aol", "orthogonal": "orthogonal", "sll": "sll"}
for _mod in NEW.values():   # registered by entry points once installed; importing is enough here
    import_plugin(f"baselines.train.{_mod}")

DENSE = {"hidden": [16, 16], "activation": "maxmin"}
CONV = {"conv": [[4, 3, 1, 1], [6, 3, 2, 1]], "hidden": [12], "activation": "maxmin"}
TOL = 1e-6


@pytest.fixture(scope="module")
def digits():
    ds = load({"name": "digits"})
    n = 300   # a few seconds per training
    ds.X_train, ds.y_train = ds.X_train[:n], ds.y_train[:n]
    return ds


@pytest.mark.parametrize("name", sorted(NEW))
def test_conforms(name):
    ran = check_trainer(name)
    if name == "orthogonal" and not have("orthogonium"):
        assert "not installed: skipped" in ran
    else:
        assert "trained (2)" in ran


def _train(name, ds, arch, **params):
    torch.manual_seed(0)
    net, metrics = get_trainer(name)(epochs=2, **params).train(ds, arch, 0, Budget(120.0, "cpu", 1))
    assert 0.0 <= metrics["clean_acc"] <= 1.0 and metrics["train_s"] > 0
    return net.cpu().eval(), metrics


def _exact_norm(layer: Affine) -> float:
    return float(np.linalg.norm(layer.matrix(), 2))


def _trivial(net, shape, p=2.0) -> float:
    from methods.trivial import Trivial
    return Trivial().run(walk(net, shape), Query(p=p), Budget(60.0, "cpu", 1)).value


@pytest.mark.parametrize("arch", [DENSE, CONV], ids=["dense", "conv"])
@pytest.mark.parametrize("name", ["aol", pytest.param("orthogonal", marks=pytest.mark.orthogonium), "spectral-norm"])
def test_one_lipschitz_layers(name, arch, digits):
    net, metrics = _train(name, digits, arch)
    shape = digits.input_shape
    layers = walk(net, shape).affines
    assert layers and all(type(l.module) in (nn.Linear, nn.Conv2d) for l in layers)
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in net.modules())
    norms = [_exact_norm(l) for l in layers]   # the unrolled layer's exact l2 norm (8x8 inputs)
    assert max(norms) <= 1 + TOL, norms
    assert _trivial(net, shape) <= 1 + TOL
    assert metrics["tb_after"] <= 1 + TOL
    if name == "orthogonal":   # orthogonal layers keep the norm at 1, not below
        assert min(norms) > 0.99, norms


def test_aol_matches_the_paper_on_a_dense_layer():
    """W diag(d), d_j = (sum_i |W^T W|_ij)^(-1/2), and its norm is <= 1 on random matrices."""
    from baselines.train.lipschitz import AOLScaled
    g = torch.Generator().manual_seed(1)
    for shape in [(5, 3), (3, 7), (20, 20)]:
        W = torch.randn(*shape, generator=g, dtype=torch.float64)
        V = AOLScaled()(W)
        d = (W.T @ W).abs().sum(1) ** -0.5
        assert torch.allclose(V, W * d)
        assert torch.linalg.matrix_norm(V, 2) <= 1 + 1e-12


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (1, 0), (2, 2)])
def test_aol_conv_is_one_lipschitz_for_any_stride_and_padding(stride, padding):
    from baselines.train.lipschitz import AOLScaled
    torch.manual_seed(stride * 10 + padding)
    conv = nn.Conv2d(3, 5, 3, stride=stride, padding=padding, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(AOLScaled(conv)(conv.weight))
    n = _exact_norm(walk(nn.Sequential(conv), (3, 6, 6)).affines[0])
    assert 0.3 < n <= 1 + 1e-12


def test_spectral_norm_divides_by_the_sound_norm():
    from baselines.train.lipschitz import SpectralNormalized
    W = torch.randn(6, 4, dtype=torch.float64) * 3
    V = SpectralNormalized()(W)
    assert abs(float(torch.linalg.matrix_norm(V, 2)) - 1) < 1e-12
    small = W / 100
    assert torch.equal(SpectralNormalized()(small), small)   # a layer already below 1 is left alone


@pytest.mark.parametrize("arch", [{"hidden": [8, 6]}, {"conv": [[3, 3, 1, 1], [4, 3, 2, 1]], "hidden": [6]}],
                         ids=["dense", "conv"])
@pytest.mark.slow
def test_sll_export_is_exact_and_one_lipschitz(arch, digits):
    from baselines.train.sll import SLLConv, SLLDense, build_sll, export_sll
    torch.manual_seed(3)
    shape = digits.input_shape
    net = build_sll(arch, shape, 10)
    with torch.no_grad():   # away from the initialisation: random q and biases
        for m in net:
            if isinstance(m, (SLLDense, SLLConv)):
                m.q.normal_()
                m.bias.normal_()
    out, _ = export_sll(net, shape)
    x = torch.as_tensor(digits.X_test[:50])
    assert torch.allclose(out(x), net(x), atol=1e-5)
    assert not any(isinstance(m, (SLLDense, SLLConv)) for m in out.modules())
    assert len(walk(out, shape).branching) == sum(isinstance(m, (SLLDense, SLLConv)) for m in net)
    # every residual block: the Jacobian norm at sampled points, float64, is <= 1
    for m in net:
        if isinstance(m, (SLLDense, SLLConv)):
            m = m.double()
            c = m.weight.shape[1]
            X = torch.randn(20, c, 4, 4) if isinstance(m, SLLConv) else torch.randn(20, c)
            J = torch.func.vmap(torch.func.jacrev(m))(X.double()).reshape(20, X[0].numel(), -1)
            assert float(torch.linalg.matrix_norm(J.detach(), 2).max()) <= 1 + TOL
    # the whole exported network: the lower verifier measures <= 1 (AOL ends, 1-Lipschitz blocks)
    from bench import lower_bound
    lb = lower_bound(out, p=2, input_shape=shape)
    assert lb.value <= 1 + TOL


def test_sll_residual_block_exact_constant():
    """The exported residual block x + f(x) of a tiny SLL block: its exact Lipschitz
    constant (enumerating the linear regions through the sum) is <= 1; its trivial bound,
    1 + Lip(f) by the sum rule, is not (the obstruction)."""
    from baselines.train.sll import SLLDense
    torch.manual_seed(5)
    blk = SLLDense(3, 4).double()
    with torch.no_grad():
        blk.q.normal_()
    res = nn.Sequential(blk.residual()).double()
    X = torch.randn(30, 3, dtype=torch.float64)
    assert torch.allclose(res(X), blk(X), atol=1e-12)
    exact = exact_lipschitz(res, 2.0, input_shape=(3,))
    assert exact <= 1 + TOL
    f = res[0].branches[1]
    by_hand = 1 + float(torch.linalg.matrix_norm(f[2].weight, 2)) * float(torch.linalg.matrix_norm(f[0].weight, 2))
    assert _trivial(res, (3,)) == pytest.approx(by_hand, rel=1e-9) and by_hand > 1.5


def test_sll_trains_and_refuses_other_activations(digits):
    from bench.api import UserError
    net, metrics = _train("sll", digits, {"hidden": [16, 16]})
    shape = digits.input_shape
    assert walk(net, shape).affines
    from bench import lower_bound
    assert lower_bound(net, p=2, input_shape=shape).value <= 1 + TOL
    with pytest.raises(UserError, match="relu"):
        get_trainer("sll")(epochs=1).train(digits, {"hidden": [4], "activation": "abs"}, 0, Budget(10.0, "cpu", 1))


@pytest.mark.parametrize("name", ["lmt", "gloro"])
def test_margin_trainers_record_the_sound_trivial_bound(name, digits):
    net, metrics = _train(name, digits, DENSE, eps=0.5)
    assert math.isclose(metrics["tb_after"], _trivial(net, digits.input_shape), rel_tol=1e-12)
    assert metrics["tb_before"] > 0


def test_gloro_logits_certify_exactly_when_the_margin_beats_eps_k():
    from bench.training import gloro_logits, margin_logits
    logits = torch.tensor([[3.0, 1.0, 0.0]])
    K = torch.tensor([[0.0, 2.0, 1.0], [2.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    out = gloro_logits(logits, K, 0.5)
    assert out.shape == (1, 4) and float(out[0, 3]) == max(1.0 + 0.5 * 2.0, 0.0 + 0.5 * 1.0)
    assert torch.equal(margin_logits(logits, torch.tensor([0]), K, 0.5), torch.tensor([[3.0, 2.0, 0.5]]))


def test_weight_decay_reuses_the_standard_loop():
    from baselines.train.standard import Standard
    cls = get_trainer("weight-decay")
    assert issubclass(cls, Standard) and cls.train is Standard.train
    assert cls.defaults()["weight_decay"] > 0
