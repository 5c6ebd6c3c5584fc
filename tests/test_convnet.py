"""Prach et al.'s ConvNet ("1-Lipschitz layers compared", 2024) as an arch preset
(``{preset: convnet, ...}``): its structure and size, its validation, its exact constant
on a tiny instance, and the 1-Lipschitz trainers (AOL, orthogonal) training and exporting
it with a trivial bound <= 1."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import bench
from bench import network
from bench.api import Budget, Query
from bench.data import Dataset
from bench.network import ArchError, arch_name, build_net, walk
from bench.registry import get_trainer, import_plugin
from bench.testing.exact import exact_lipschitz

torch.set_num_threads(1)
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


@pytest.mark.parametrize("name", ["aol", pytest.param("orthogonal", marks=pytest.mark.orthogonium)])
def test_one_lipschitz_trainers_export_convnet_with_trivial_bound_one(name):
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


# --- the schedule of Prach et al.: SGD, OneCycleLR, their Lipschitz cross-entropy, centring,
# crop-and-flip augmentation (options of the 1-Lipschitz trainers' shared fit) ------------

def test_lip_ce_is_their_definition():
    from bench.training import lip_ce
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 4, dtype=torch.float64, generator=g)
    y = torch.tensor([0, 1, 2, 3, 1, 0])
    for m, t in ((0.0, 1.0), (0.3993, 0.25), (1.5, 2.0)):
        zz = z.numpy().copy()
        zz[np.arange(6), y.numpy()] -= m            # the true logit lowered by the margin
        zz /= t
        lse = np.log(np.exp(zz).sum(1))
        want = t * np.mean(lse - zz[np.arange(6), y.numpy()])
        assert float(lip_ce(z, y, m, t)) == pytest.approx(want, rel=1e-12)
    assert float(lip_ce(z, y, 0.0, 1.0)) == pytest.approx(float(nn.functional.cross_entropy(z, y)), rel=1e-14)


def test_sgd_with_onecycle_is_torchs_stepped_once_an_epoch():
    from bench.training import fit
    X = np.random.default_rng(0).random((4, 3), dtype=np.float32)
    y = np.array([0, 1, 1, 0])
    ds = Dataset("t", X, y, X, y, 2)
    torch.manual_seed(0)
    lin, ref = nn.Linear(3, 2), nn.Linear(3, 2)
    ref.load_state_dict(lin.state_dict())
    m = fit(lin, ds, Budget(60.0, "cpu", 1), epochs=6, lr=0.5, batch_size=4, seed=0, weight_decay=0.01,
            optimizer="sgd", lr_schedule="onecycle")
    # the same by hand: full batches (the order within a batch does not change its mean loss)
    opt = torch.optim.SGD(ref.parameters(), lr=0.5, momentum=0.9, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, epochs=6, steps_per_epoch=1)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.zero_grad()
        nn.functional.cross_entropy(ref(torch.as_tensor(X)), torch.as_tensor(y)).backward()
        opt.step()
        sched.step()
    torch.testing.assert_close(lin.weight.detach(), ref.weight.detach(), rtol=1e-6, atol=1e-7)
    assert lrs[0] == pytest.approx(0.5 / 25) and max(lrs) == pytest.approx(0.5, rel=0.1)
    assert m["epochs_done"] == 6 and m["lr_last"] == pytest.approx(0.5 / 25 / 1e4)   # annealed to max_lr / 25e4
    m2 = fit(nn.Linear(3, 2), ds, Budget(60.0, "cpu", 1), epochs=2, lr=0.5, batch_size=4, seed=0)
    assert m2["lr_last"] == 0.5     # the default: Adam at a constant rate


@pytest.fixture(scope="module")
def digits():
    from bench.data import load
    ds = load({"name": "digits"})
    ds.X_train, ds.y_train = ds.X_train[:200], ds.y_train[:200]
    return ds


def test_the_defaults_train_as_before(digits):
    """aol with the new parameters at their defaults is the first training: Adam, a
    constant rate, cross-entropy on logit_scale * logits, raw data (rebuilt here by hand)."""
    from baselines.train.lipschitz import AOLScaled, export, parametrize_layers
    from bench.training import fit
    import_plugin("baselines.train.aol")
    arch = {"hidden": [12], "activation": "maxmin"}
    net, _ = get_trainer("aol")(epochs=2).train(digits, arch, 3, Budget(60.0, "cpu", 1))
    torch.manual_seed(3)
    ref = parametrize_layers(build_net(arch, digits.input_shape, 10), digits.input_shape, lambda m, s: AOLScaled())
    ce = nn.CrossEntropyLoss()
    fit(ref, digits, Budget(60.0, "cpu", 1), epochs=2, lr=1e-3, batch_size=64, seed=3,
        loss_fn=lambda module, logits, y, epoch: ce(10.0 * logits, y))
    ref, _ = export(ref, digits.input_shape)
    for a, b in zip(net.state_dict().values(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_centred_training_exports_a_shift_that_reads_raw_inputs(digits):
    from bench.network import Shift, Translation
    from bench.training import channel_mean
    import_plugin("baselines.train.aol")
    arch = {"hidden": [12], "activation": "maxmin"}
    net, metrics = get_trainer("aol")(epochs=1, center=True, optimizer="sgd", lr=0.05, lr_schedule="onecycle",
                                      loss="lip-ce", margin=0.4, temperature=0.25, weight_decay=1e-4
                                      ).train(digits, arch, 0, Budget(60.0, "cpu", 1))
    assert isinstance(net[0], Shift)
    mean = channel_mean(digits.X_train)
    np.testing.assert_allclose(net[0].shift.numpy(), -mean, rtol=1e-6)
    x = torch.as_tensor(digits.X_test[:5])
    torch.testing.assert_close(net(x), net[1:](x - torch.as_tensor(mean, dtype=torch.float32)), rtol=1e-6, atol=1e-6)
    w = walk(net, digits.input_shape)
    t = w.layers[0]
    assert isinstance(t, Translation) and t.has_bias
    np.testing.assert_array_equal(t.matrix(), np.eye(t.in_dim))
    np.testing.assert_allclose(t.bias(), np.repeat(-mean, t.in_dim // mean.size), rtol=1e-6)   # per channel
    for p in (1.0, 2.0, math.inf):   # a translation: the same constant as the network without it
        shape = digits.input_shape
        with_shift = bench.verify(net, "trivial", p=p, input_shape=shape).value
        assert with_shift == pytest.approx(bench.verify(net[1:], "trivial", p=p, input_shape=shape).value, rel=1e-12)
        low = bench.lower_bound(net, p=p, input_shape=shape, samples=100, steps=5)
        assert low.value <= with_shift
    assert metrics["tb_after"] <= 1 + 1e-6


def test_crop_flip_crops_the_padded_image_and_flips():
    from bench.training import crop_flip
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 2, 5, 6, generator=g)
    fill = torch.tensor([0.3, 0.7])
    out = crop_flip(x, torch.Generator().manual_seed(1), pad=2, fill=fill)
    assert out.shape == x.shape
    padded = torch.stack([nn.functional.pad(x[:, c], (2, 2, 2, 2), value=float(fill[c])) for c in range(2)], 1)
    for i in range(16):   # every output is one window of the padded image, flipped or not
        found = [(oy, ox, f) for oy in range(5) for ox in range(5) for f in (False, True)
                 if torch.equal(out[i], (lambda w: w.flip(-1) if f else w)(padded[i, :, oy:oy + 5, ox:ox + 6]))]
        assert found, i
    flips = crop_flip(x, torch.Generator().manual_seed(2), pad=0)
    assert all(torch.equal(flips[i], x[i]) or torch.equal(flips[i], x[i].flip(-1)) for i in range(16))
    assert any(not torch.equal(flips[i], x[i]) for i in range(16))


@pytest.mark.parametrize("params,words", [({"loss": "lip-ce", "logit_scale": 4.0}, "not logit_scale"),
                                          ({"margin": 0.4}, "margin and temperature are loss lip-ce's"),
                                          ({"optimizer": "rmsprop"}, "must be one of adam, sgd")])
def test_schedule_parameters_that_would_go_unused_are_errors(params, words):
    from bench.api import UserError
    import_plugin("baselines.train.aol")
    with pytest.raises(UserError, match=words):
        get_trainer("aol").resolve_params(params)
