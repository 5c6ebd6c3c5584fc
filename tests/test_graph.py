"""Networks that branch (residual adds, concatenations), modules of code (traced) and ONNX
files: one tree of modules, walked, checked against the module's own forward or the file's
own evaluation, and bounded by the verifiers that read graphs."""
import math
import os
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import bench
from bench import graph, network, onnx_file
from bench.api import NORMS, Unsupported, UserError
from bench.modules import Concat, Sum
from bench.testing.exact import exact_lipschitz
from conftest import REFERENCE
from methods.layers import Abs
from methods.trivial import TorchTrivialBound

INF = math.inf
VNNCOMP = os.path.join(REFERENCE, "vnncomp2021")


class Block(nn.Module):
    """x + W2 relu(W1 x + b1) + b2, written as code."""

    def __init__(self, d, h=None):
        super().__init__()
        self.a, self.b = nn.Linear(d, h or d), nn.Linear(h or d, d)

    def forward(self, x):
        return x + self.b(torch.relu(self.a(x)))


class ResMLP(nn.Module):
    def __init__(self, d_in=3, d=4, blocks=2, d_out=2):
        super().__init__()
        self.inp = nn.Linear(d_in, d)
        self.blocks = nn.Sequential(*[Block(d) for _ in range(blocks)])
        self.out = nn.Linear(d, d_out)

    def forward(self, x):
        h = self.blocks(torch.relu(self.inp(x)))
        return self.out(h.view(h.size(0), -1))


class ConvRes(nn.Module):
    """A ResNet block on images: conv-BN-relu-conv, a 1x1 strided shortcut, add, relu,
    global average pooling."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.short = nn.Conv2d(2, 4, 1, stride=2)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = self.c2(torch.relu(self.bn(self.c1(x))))
        h = torch.relu(h + self.short(x))
        h = nn.functional.adaptive_avg_pool2d(h, 1)
        return self.head(torch.flatten(h, 1))


def _randomise_bn(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
    return net.eval()


def test_a_residual_module_of_code_is_read_as_a_sum_of_branches():
    torch.manual_seed(0)
    net = ResMLP().double()
    w = network.walk(net)
    assert w.input_shape == (3,)
    assert [type(l).__name__ for l in w.layers] == ["Affine", "Activation", "Branch", "Branch", "Affine"]
    b = w.layers[2]
    assert b.kind == "sum" and b.branches[0] == [] and [type(l).__name__ for l in b.branches[1]] == \
        ["Affine", "Activation", "Affine"]
    assert b.branches[1][0].index == "2.1.0" and w.layers[4].index == 5   # the Reshape of view() is position 4
    assert "sum[identity | Linear(4->4) relu Linear(4->4)]" in w.describe()
    x = torch.randn(7, 3, dtype=torch.float64)
    assert torch.equal(w.module(x), net(x))
    # the tree shares the module's layers (training through it trains the module)
    assert w.layers[2].branches[1][0].module is net.blocks[0].a


def test_the_trivial_bound_of_a_residual_network_uses_the_sum_rule_and_is_sound():
    """Per block 1 + ||W2|| ||W1|| (not a product through a dense copy); at or above the
    exact constant (regions enumerated) and the lower bound; differentiable for training."""
    torch.manual_seed(1)
    net = ResMLP(d_in=2, d=3, blocks=2, d_out=2).double()
    for p in NORMS:
        nrm = lambda m: float(torch.linalg.matrix_norm(m.weight.detach(), {1.0: 1, 2.0: 2, INF: INF}[p]))  # noqa: E731
        by_hand = nrm(net.inp) * nrm(net.out) * math.prod(1 + nrm(b.b) * nrm(b.a) for b in net.blocks)
        tb = bench.verify(net, "trivial", p=p)
        assert tb.status == "ok" and tb.value == pytest.approx(by_hand, rel=1e-9)
        ex = exact_lipschitz(network.walk(net).module, p)
        low = bench.lower_bound(net, p=p, samples=300, restarts=4, steps=10)
        assert low.status == "ok" and low.value <= ex * (1 + 1e-9) <= tb.value * (1 + 1e-9), (p, low, ex, tb)
        t = TorchTrivialBound(net, (2,), p).full()
        assert float(t) == pytest.approx(by_hand, rel=1e-9)
    t = TorchTrivialBound(net, (2,), 2.0).full()
    t.backward()
    assert net.blocks[1].a.weight.grad is not None and float(net.blocks[1].a.weight.grad.abs().sum()) > 0


def test_a_concatenation_bounds_each_norm_by_its_rule():
    """(f1(x), f2(x)): sqrt(L1^2 + L2^2) at p = 2, max at inf, the sum at 1."""
    torch.manual_seed(2)
    f1, f2 = nn.Linear(3, 2, bias=False).double(), nn.Linear(3, 4, bias=False).double()
    net = nn.Sequential(Concat(f1, nn.Sequential(f2, nn.ReLU())), nn.Linear(6, 2)).double()
    for p, combine in ((2.0, lambda a, b: math.hypot(a, b)), (INF, max), (1.0, lambda a, b: a + b)):
        o = {1.0: 1, 2.0: 2, INF: INF}[p]
        L = combine(float(torch.linalg.matrix_norm(f1.weight.detach(), o)),
                    float(torch.linalg.matrix_norm(f2.weight.detach(), o)))
        tb = bench.verify(net, "trivial", p=p, input_shape=(3,))
        assert tb.value == pytest.approx(L * float(torch.linalg.matrix_norm(net[1].weight.detach(), o)), rel=1e-9)
        assert bench.lower_bound(net, p=p, input_shape=(3,)).value <= tb.value


def test_chain_verifiers_refuse_a_branching_network_naming_the_node():
    torch.manual_seed(3)
    net = ResMLP().double()
    for v in ("lipsdp", "eclipse", "eclipse-fast"):
        b = bench.verify(net, v, p=2)
        assert b.status == "unsupported" and "layer 2 (Sum of 2 branches (residual add)) branches" in b.error, (v, b)
    both = nn.Sequential(nn.Linear(2, 3), Sum(nn.Sequential(nn.ReLU()), nn.Sequential(nn.Tanh())), nn.Linear(3, 1))
    b = bench.verify(both.double(), "bab", p=2)
    assert b.status == "unsupported" and "activations in one branch only" in b.error


RESIDUAL_NETS = {
    "residual mlp": lambda: ResMLP(d_in=2, d=3, blocks=2, d_out=2),
    "weighted add, linear shortcut": lambda: nn.Sequential(
        nn.Linear(2, 4), nn.ReLU(), Sum(nn.Sequential(nn.Linear(4, 3)), nn.Sequential(nn.Linear(4, 5), nn.ReLU(),
                                                                                     nn.Linear(5, 3)),
                                        weights=(0.5, -1.0)), nn.ReLU(), nn.Linear(3, 2)),
    "abs block": lambda: nn.Sequential(nn.Linear(2, 3), Sum(nn.Sequential(), nn.Sequential(nn.Linear(3, 3), Abs(),
                                                                                           nn.Linear(3, 3))),
                                       nn.Linear(3, 2)),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RESIDUAL_NETS))
def test_bab_and_mip_close_residual_networks_exactly(name):
    """A residual ReLU (or |x|) network is piecewise linear: with the block's input carried
    past the branch's activations, bab and mip equal the enumerated constant, globally and
    on a box, for the whole output and a class pair."""
    torch.manual_seed(1)
    net = RESIDUAL_NETS[name]().double()
    tree = network.walk(net).module
    box = {"center": [0.1, -0.2], "radius": 0.5}
    for p in NORMS:
        for target in (None, (0, 1)):
            # global: a box of +-1e4 holds every region here (+-100 missed one that peaks near x = 275)
            for dom, lo, hi in (("global", -1e4, 1e4), (box, np.array([-0.4, -0.7]), np.array([0.6, 0.3]))):
                ex = exact_lipschitz(tree, p, target, lo, hi)
                for v in ("bab",) + (("mip",) if p != 2 else ()):
                    b = bench.verify(net, v, p=p, target=target, domain=dom)
                    assert b.kind == "exact" and b.value == pytest.approx(ex, rel=1e-6, abs=1e-12), (v, p, target, b)


def test_a_conv_resnet_block_with_batchnorm_is_traced_and_bounded():
    torch.manual_seed(4)
    net = _randomise_bn(ConvRes().double())
    w = network.walk(net, (2, 6, 6))
    kinds = [type(l).__name__ for l in w.layers]
    assert kinds.count("Branch") == 1 and "Diagonal" in [type(l).__name__ for l in network.all_layers(w.layers)]
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    assert torch.allclose(w.module(x), net(x), rtol=1e-12, atol=1e-12)
    for p in NORMS:
        tb = bench.verify(net, "trivial", p=p, input_shape=(2, 6, 6))
        low = bench.lower_bound(net, p=p, input_shape=(2, 6, 6), samples=200, restarts=4, steps=10)
        assert tb.status == low.status == "ok" and low.value <= tb.value


def test_a_module_the_tracer_cannot_read_is_opaque_with_the_reason():
    class Odd(nn.Module):
        def forward(self, x):
            return torch.erf(x)
    w = network.walk(nn.Sequential(nn.Linear(2, 2), Odd(), nn.Linear(2, 1)))
    assert type(w.layers[1]).__name__ == "Opaque" and "node erf (erf) has no reading as a layer" in w.layers[1].why
    with pytest.raises(graph.NotConvertible, match="does not depend on its input"):
        graph.from_traced(type("Const", (nn.Module,), {"forward": lambda self, x: torch.ones(1, 2)})(),
                          torch.zeros(1, 2))


def test_series_parallel_copies_a_node_two_branches_share():
    """x -> a; b = f(a); c = g(a) + b; d = c + b: b is computed in both branches."""
    lin = {k: nn.Linear(2, 2).double() for k in "fg"}
    N = graph.Node
    nodes = {"x": N("x", "input"), "a": N("a", "unary", ["x"], nn.Tanh()), "b": N("b", "unary", ["a"], lin["f"]),
             "g": N("g", "unary", ["a"], lin["g"]), "c": N("c", "sum", ["g", "b"], weights=(1.0, 1.0)),
             "d": N("d", "sum", ["c", "b"], weights=(1.0, 2.0))}
    tree = graph.series_parallel(nodes, list(nodes), "d")
    x = torch.randn(4, 2, dtype=torch.float64)
    a = torch.tanh(x)
    b = lin["f"](a)
    assert torch.allclose(tree(x), lin["g"](a) + b + 2 * b, rtol=1e-14)


# --- ONNX -----------------------------------------------------------------------------

def _export(net, shape, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.float().eval(), torch.zeros(1, *shape), str(path), dynamo=False,
                          input_names=["x"], output_names=["y"])
    return str(path)


class NHWC(nn.Module):
    """A Keras-style net: NHWC input, transposed to NCHW for the conv, back to NHWC before
    the dense layer (so the flatten order is height, width, channel)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.fc = nn.Linear(4 * 3 * 3, 5)

    def forward(self, x):
        h = torch.relu(self.conv(x.permute(0, 3, 1, 2)))
        return self.fc(h.permute(0, 2, 3, 1).reshape(x.shape[0], -1))


def _suite_archs():
    from bench.suite import load_suite
    seen = {}
    for suite in ("digits", "paper", "cifar", "exact", "scaling"):
        for job in load_suite(suite).train_jobs("/tmp/x"):
            arch = job.arch
            if arch and "preset" not in arch:
                seen[network.arch_name(arch)] = arch
    return seen


ROUND_TRIPS = {
    "residual mlp": (lambda: ResMLP(), (3,)),
    "batchnorm conv resnet": (lambda: _randomise_bn(ConvRes()), (2, 6, 6)),
    "nhwc input": (lambda: NHWC(), (7, 7, 3)),
    "pooling and padding": (lambda: nn.Sequential(nn.ZeroPad2d((1, 0, 2, 1)), nn.Conv2d(1, 2, 3, groups=1, dilation=1),
                                                  nn.MaxPool2d(2), nn.LeakyReLU(0.2), nn.AvgPool2d(2, 1, 1),
                                                  nn.Flatten(), nn.Linear(2 * 6 * 4, 3), nn.Sigmoid(),
                                                  nn.Linear(3, 2), nn.Tanh()), (1, 9, 7)),
    "normalised mlp": (lambda: nn.Sequential(network.Pointwise((4,), scale=[2.0, 0.5, 1.0, -1.0], shift=[1.0] * 4),
                                             nn.Linear(4, 3), nn.Softplus(), nn.Linear(3, 2)), (4,)),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ROUND_TRIPS))
def test_onnx_round_trip_equals_the_module_and_onnxruntime(name, tmp_path):
    make, shape = ROUND_TRIPS[name]
    torch.manual_seed(5)
    net = make().double().eval()
    path = _export(net, shape, tmp_path / "n.onnx")
    tree, read_shape = onnx_file.read(path)
    assert read_shape == shape
    worst, precision = onnx_file.check(tree, onnx_file.load(path), shape, path)
    assert worst <= (1e-9 if precision == "float64" else 1e-5)
    x = torch.rand(4, *shape, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(tree(x), net.double()(x), rtol=1e-5, atol=1e-6)   # float32 weights in the file
    w = network.walk(tree, shape)
    assert not w.opaque
    tb = bench.verify(path, "trivial", p=2)
    assert tb.status == "ok" and bench.lower_bound(path, p=2).value <= tb.value


def test_onnx_round_trip_of_every_suite_architecture(tmp_path):
    archs = _suite_archs()
    assert len(archs) >= 5 and {a.get("activation", "relu") for a in archs.values()} >= {"relu", "abs", "crelu", "maxmin",
                                                                                           "sincos"}
    for name, arch in sorted(archs.items()):
        shape = (1, 8, 8) if "conv" in arch else (6,)
        torch.manual_seed(6)
        net = network.build_net(arch, shape, 3).double().eval()
        path = _export(net, shape, tmp_path / f"{len(name)}.onnx")
        act = arch.get("activation", "relu")
        tree, s = onnx_file.read(path)
        x = torch.rand(3, *shape, dtype=torch.float64)
        with torch.no_grad():
            assert torch.allclose(tree(x), net.double()(x), rtol=1e-5, atol=1e-6), name
        if act == "crelu":   # (relu(x), relu(-x)): read as a concatenation
            assert network.walk(tree, s).branching
            continue
        if act in ("maxmin", "sincos"):   # joined back into the activation itself
            assert any(a.name == act for a in network.walk(tree, s).activations)
        net32 = network.build_net(arch, shape, 3)
        net32.load_state_dict(net.float().state_dict())
        a = bench.verify(net32.double(), "trivial", p=INF, input_shape=shape).value
        b = bench.verify(tree, "trivial", p=INF, input_shape=s).value
        assert b == pytest.approx(a, rel=1e-9), name   # the same layers, the same norms


def test_an_operator_the_reader_does_not_know_is_named(tmp_path):
    net = nn.Sequential(nn.Linear(3, 3), nn.Softmax(dim=1))
    path = _export(net, (3,), tmp_path / "s.onnx")
    with pytest.raises(Unsupported, match=r"ONNX node .*\(Softmax\): lipbench's ONNX reader does not know the operator "
                                          r"Softmax"):
        onnx_file.read(path)
    b = bench.verify(path, "trivial")
    assert b.status == "unsupported" and "Softmax" in b.error


def test_a_part_of_a_polyactivation_used_alone_is_named(tmp_path):
    """MaxMin exports as Slice / Max / Min / Unsqueeze / Concat / Reshape, which the reader
    joins back; a slice used otherwise is refused, naming the node that reads it."""
    class Evens(nn.Module):
        def forward(self, x):
            return x[:, 0::2]
    path = _export(nn.Sequential(nn.Linear(4, 4), Evens(), nn.Linear(2, 1)), (4,), tmp_path / "e.onnx")
    with pytest.raises(Unsupported, match=r"\(Gemm\): Gemm of even parts that lipbench's ONNX reader does not join"):
        onnx_file.read(path)


def test_a_truncated_or_missing_file_is_a_one_line_error(tmp_path):
    path = _export(ResMLP(), (3,), tmp_path / "r.onnx")
    data = open(path, "rb").read()
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(data[: len(data) // 2])
    for p, words in ((str(bad), "not a readable ONNX model"), (str(tmp_path / "none.onnx"), "no such file")):
        with pytest.raises(UserError, match=words) as e:
            bench.verify(p, "trivial")
        assert "\n" not in str(e.value)
    junk = tmp_path / "junk.onnx"
    junk.write_text("not a model")
    with pytest.raises(UserError, match="not a readable ONNX model"):
        onnx_file.read(str(junk))


def test_an_open_input_shape_must_be_given(tmp_path):
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 2))
    path = str(tmp_path / "d.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.zeros(1, 1, 6, 6), path, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch", 2: "h", 3: "w"}})
    with pytest.raises(UserError, match="leaves the input's shape open"):
        onnx_file.read(path)
    tree, shape = onnx_file.read(path, (1, 6, 6))
    assert shape == (1, 6, 6) and bench.verify(path, "trivial", input_shape=(1, 6, 6)).status == "ok"


VNN_FILES = sorted(f for f in os.listdir(VNNCOMP) if f.endswith(".onnx")) if os.path.isdir(VNNCOMP) else []


@pytest.mark.slow
@pytest.mark.skipif(not VNN_FILES, reason="../shared/reference/vnncomp2021 absent: the VNN-COMP networks are not here")
@pytest.mark.parametrize("name", VNN_FILES)
def test_the_vnncomp_networks_are_read_and_checked(name):
    path = os.path.join(VNNCOMP, name)
    tree, shape = onnx_file.read(path)
    worst, _ = onnx_file.check(tree, onnx_file.load(path), shape, path)
    assert worst < 1e-5
    w = network.walk(tree, shape)
    assert not w.opaque
    assert bool(w.branching) == name.startswith("resnet")
    tb = bench.verify(path, "trivial", p=2)
    low = bench.lower_bound(path, p=2, samples=50, restarts=2, steps=5)
    assert tb.status == low.status == "ok" and low.value <= tb.value


@pytest.mark.auto_lirpa
def test_lirpa_bounds_a_residual_network_over_a_box_above_its_exact_constant():
    torch.manual_seed(1)
    net = ResMLP(d_in=2, d=3, blocks=2, d_out=2).double()
    c, r = np.array([0.1, 0.2]), 0.5
    for p in NORMS:
        b = bench.verify(net, "lirpa", p=p, domain={"center": c.tolist(), "radius": r})
        ex = exact_lipschitz(network.walk(net).module, p, None, c - r, c + r)
        assert b.status == "ok" and b.value >= ex * (1 - 1e-9), (p, b, ex)
    conv = _randomise_bn(ConvRes().double())
    b = bench.verify(conv, "lirpa", p=2, input_shape=(2, 6, 6), domain={"center": [0.0] * 72, "radius": 0.5})
    low = bench.lower_bound(conv, p=2, input_shape=(2, 6, 6), domain={"center": [0.0] * 72, "radius": 0.5})
    assert b.status == "ok" and low.value <= b.value


def test_a_subclass_that_overrides_forward_is_read_as_its_code():
    """class L(nn.Linear) returning 3 W x is not the Linear its weights say: it is traced
    (here: opaque, F.linear has no reading), and a ReLU subclass returning 5 relu(x) is
    traced into relu and a scaling; no bound falls below the lower bound."""
    class L(nn.Linear):
        def forward(self, x):
            return 3 * super().forward(x)

    class R(nn.ReLU):
        def forward(self, x):
            return 5 * torch.relu(x)
    torch.manual_seed(0)
    for net in (nn.Sequential(L(3, 3), nn.ReLU(), nn.Linear(3, 2)), nn.Sequential(nn.Linear(3, 3), R(), nn.Linear(3, 2))):
        net = net.double()
        low = bench.lower_bound(net, p=2, input_shape=(3,)).value
        tb = bench.verify(net, "trivial", p=2, input_shape=(3,))
        assert tb.status == "unsupported" or tb.value >= low, (net, tb, low)
    assert "Pointwise" in network.walk(nn.Sequential(nn.Linear(3, 3), R(), nn.Linear(3, 2)), (3,)).describe()


def test_traced_functions_keep_their_arguments_and_bad_input_is_one_line():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return nn.functional.elu(self.lin(x), alpha=2.0) + nn.functional.softplus(x, beta=2.0)
    m = M().double()
    w = network.walk(m, (4,))
    assert "sum[Linear(4->4) elu | softplus]" == w.describe()
    x = torch.randn(5, 4, dtype=torch.float64)
    assert torch.allclose(w.module(x), m(x), rtol=1e-12)
    with pytest.raises(UserError, match=r"M does not accept input of shape \(5,\)") as e:
        network.walk(m, (5,))
    assert "\n" not in str(e.value)

    class Mix(nn.Module):   # a reshape that mixes the samples of a batch
        def forward(self, x):
            return x.reshape(-1, 2)
    w = network.walk(nn.Sequential(nn.Linear(4, 4), Mix()), (4,))
    assert type(w.layers[-1]).__name__ == "Opaque" and "outputs of shape" in w.layers[-1].why


def test_class_pair_bounds_of_a_network_that_ends_where_it_branches():
    """The certification's all-pairs bounds equal one run per pair, also where the last
    layer is not affine (a residual add at the output)."""
    from methods.trivial import Trivial
    torch.manual_seed(7)
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), Sum(nn.Sequential(), nn.Sequential(nn.Linear(3, 3)))).double()
    w = network.walk(net, (3,))
    K = Trivial().pair_bounds(w, 2.0)
    for i, j in ((0, 1), (2, 0)):
        assert K[i, j] == pytest.approx(bench.verify(net, "trivial", p=2, target=(i, j)).value, rel=1e-12)


def test_an_onnx_batchnorm_in_training_mode_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    c = 2
    init = [numpy_helper.from_array(np.ones(c, np.float32), n) for n in ("s", "b", "m", "v")]
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], training_mode=1)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 3, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 3, 3])], init)
    path = str(tmp_path / "bn.onnx")
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 15)]), path)
    with pytest.raises(Unsupported, match="training mode"):
        onnx_file.read(path)
