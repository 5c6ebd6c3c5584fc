"""Prach et al.'s ConvNet ("1-Lipschitz layers compared", 2024) as an arch preset
(``{preset: convnet, ...}``): its structure and size, its validation, its exact constant
on a tiny instance, and the 1-Lipschitz trainers (AOL, orthogonal) training and exporting
it with a trivial bound <= 1."""
import importlib
import math

import numpy as np
import pytest
import torch
from torch import nn

import bench
from bench import network
from bench.api import Budget, Query
from bench.data import Dataset
from bench.network import ArchError, arch_name, build_net, check_arch, walk
from bench.registry import get_trainer, import_plugin
from bench.testing.exact import exact_lipschitz

torch.set_num_threads(1)
HAS_ORTHOGONIUM = importlib.util.find_spec("orthogonium") is not None
M = {"preset": "convnet", "base_width": 64, "blocks": 5, "layers_per_block": 5, "kernel": 3, "activation": "maxmin"}


def test_convnetm_has_prach_et_al_s_layers_and_size():
    net = build_net(M, (3, 32, 32), 10)
    kinds = [type(m).__name__ for m in net]
    block = ["Conv2d", "MaxMin"] * 5 + ["FirstChannels", "PixelUnshuffle"]
    assert kinds == (["ZeroChannelPad", "Conv2d", "MaxMin"] + block * 5
                     + ["AdaptiveMaxPool2d", "Conv2d", "Flatten", "FirstChannels"])
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    # channels 64, 128, 256, 512, 1024 per block; kernel 3 but 1 in the last; a 1x1 first conv and head
    assert [(c.in_channels, c.kernel_size[0]) for c in convs[1:-1]] == \
        [(64 * 2 ** b, 3 if b < 4 else 1) for b in range(5) for _ in range(5)]
    assert (convs[0].in_channels, convs[0].kernel_size) == (64, (1, 1))
    assert (convs[-1].in_channels, convs[-1].out_channels, convs[-1].kernel_size) == (2048, 2048, (1, 1))
    assert all(c.padding_mode == "zeros" and c.padding[0] == c.kernel_size[0] // 2 and c.bias is not None
               for c in convs)
    weights = 64 ** 2 + sum(5 * 9 * (64 * 2 ** b) ** 2 for b in range(4)) + 5 * 1024 ** 2 + 2048 ** 2
    biases = 64 + sum(5 * 64 * 2 ** b for b in range(5)) + 2048
    assert network.parameter_count(net) == weights + biases   # 25.0 M
    w = walk(net.eval(), (3, 32, 32))
    assert w.out_dim == 10 and len(w.affines) == 27 + 12 and w.layers[-1].out_shape == (10,)
    assert arch_name(M) == "convnetM64-5x5-maxmin"
    assert arch_name({"preset": "convnet", "base_width": 8, "blocks": 2, "layers_per_block": 1, "kernel": 5,
                      "bias": False}) == "convnet8-2x1k5-relu-nobias"
    assert arch_name({"preset": "convnet"}) == "convnetM64-5x5-relu"


@pytest.mark.parametrize("arch,shape,words", [
    ({"preset": "resnet"}, (3, 32, 32), "unknown preset 'resnet'"),
    ({"preset": "convnet", "hidden": [10]}, (3, 32, 32), "unknown key 'hidden'"),
    ({"preset": "convnet", "base_width": 7}, (3, 32, 32), "base_width must be even"),
    ({"preset": "convnet", "kernel": 2}, (3, 32, 32), "kernel must be odd"),
    ({"preset": "convnet", "blocks": 0}, (3, 32, 32), "blocks must be a whole number >= 1"),
    ({"preset": "convnet", "activation": "crelu"}, (3, 32, 32), "must keep the width"),
    ({"preset": "convnet", "bias": "yes"}, (3, 32, 32), "bias must be true or false"),
    ({"preset": "convnet", "blocks": 6}, (3, 32, 32), "multiples of 64"),
    ({"preset": "convnet", "base_width": 2}, (3, 32, 32), "below the input's 3 channels"),
    ({"preset": "convnet", "base_width": 2, "blocks": 1}, (1, 2, 2), "fewer than the 10 classes"),
    ({"preset": "convnet"}, (64,), "needs an image input"),
])
def test_bad_presets_are_one_line_errors(arch, shape, words):
    with pytest.raises(ArchError, match=words):
        build_net(arch, shape, 10)


def test_a_bad_preset_in_a_suite_names_its_line(tmp_path):
    from bench.api import UserError
    from bench.suite import load_suite
    p = tmp_path / "s.yaml"
    p.write_text("name: s\ndatasets: [{name: synthetic}]\ntrain:\n  - trainer: standard\n    archs:\n"
                 "      - preset: convnet\n        kernel: 4\nqueries: [{p: 2}]\nverify: [trivial]\n")
    with pytest.raises(UserError, match=r"line 7: .*kernel must be odd"):
        load_suite(str(p))


def test_tiny_convnet_trivial_bound_is_above_the_exact_constant_and_lower():
    torch.manual_seed(0)
    arch = {"preset": "convnet", "base_width": 2, "blocks": 1, "layers_per_block": 1, "activation": "maxmin"}
    net = build_net(arch, (1, 2, 2), 3).double().eval()
    for p in (1.0, 2.0, math.inf):
        ex = exact_lipschitz(net, p, input_shape=(1, 2, 2))
        tb = bench.verify(net, "trivial", p=p, input_shape=(1, 2, 2))
        low = bench.lower_bound(net, p=p, input_shape=(1, 2, 2), samples=300, restarts=4, steps=10)
        assert tb.status == low.status == "ok"
        assert low.value <= ex * (1 + 1e-9) and tb.value >= ex * (1 - 1e-12), (p, low.value, ex, tb.value)


def tiny_images(n=8, seed=0):
    g = np.random.default_rng(seed)
    X = g.random((n, 3, 32, 32), dtype=np.float32)
    y = g.integers(0, 10, n).astype(np.int64)
    return Dataset("tiny-images", X, y, X.copy(), y.copy(), 10)


@pytest.mark.parametrize("name", ["aol", "orthogonal"])
def test_one_lipschitz_trainers_export_convnet_with_trivial_bound_one(name):
    if name == "orthogonal" and not HAS_ORTHOGONIUM:
        pytest.skip("orthogonium is not installed (pip install lipbench[lipnets])")
    import_plugin(f"baselines.train.{name}")
    # two blocks of two: every kind of layer, and no conv small enough for the trivial bound's
    # dense eigendecomposition, which made ConvNetM's 5 x 5 at base width 4 take ~110 s a
    # trainer here (export and metrics; it passes the same checks)
    arch = dict(M, base_width=4, blocks=2, layers_per_block=2)
    net, metrics = get_trainer(name)(epochs=1, batch_size=8).train(tiny_images(), arch, 0, Budget(120.0, "cpu", 1))
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in net.modules())
    w = walk(net, (3, 32, 32))
    assert [type(l.module) for l in w.affines if not isinstance(l, network.Selection)] == [nn.Conv2d] * 6
    from methods.trivial import Trivial
    tb = Trivial().run(w, Query(p=2), Budget(60.0, "cpu", 1)).value
    assert tb <= 1 + 1e-6 and metrics["tb_after"] <= 1 + 1e-6, (tb, metrics)
    assert metrics["epochs_done"] == 1


def test_sll_refuses_the_preset_with_the_reason():
    from bench.api import UserError
    import_plugin("baselines.train.sll")
    with pytest.raises(UserError, match="sll: builds its residual blocks .* convnet preset"):
        get_trainer("sll")(epochs=1).train(tiny_images(), dict(M, base_width=4), 0, Budget(60.0, "cpu", 1))
