import numpy as np
import pytest
import torch
from torch import nn

import bench
from bench import network
from helpers import mlp


def test_walk_records_affines_activations_and_slopes():
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.LeakyReLU(0.1), nn.Linear(8, 4), nn.Tanh(),
                        nn.Dropout(0.5), nn.Linear(4, 2, bias=False))
    w = network.walk(net, (1, 4, 4))
    assert [type(l).__name__ for l in w.layers] == ["Affine", "Activation", "Affine", "Activation", "Affine"]
    assert w.activations[0].slope == (0.1, 1.0) and w.activations[1].slope == (0.0, 1.0)
    assert w.activations[0].lipschitz[2.0] == 1.0
    assert w.in_dim == 16 and w.out_dim == 2
    assert w.affines[0].has_bias and not w.affines[2].has_bias
    assert w.affines[0].matrix().dtype == np.float64


def test_conv_row_and_column_sums_are_exact():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1, dilation=1), nn.ReLU(),
                        nn.Conv2d(3, 2, 2, padding=0), nn.Flatten(), nn.Linear(2 * 3 * 3, 2))
    w = network.walk(net, (2, 8, 8))
    for a in w.affines[:2]:
        A = a.matrix()
        np.testing.assert_allclose(a.abs_row_sums(), np.abs(A).sum(1), rtol=1e-12)
        np.testing.assert_allclose(a.abs_col_sums(), np.abs(A).sum(0), rtol=1e-12)
        assert len(a.bias()) == a.out_dim


def test_dense_limit_is_unsupported_not_a_guess():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 64 * 64, 2))
    w = network.walk(net, (3, 64, 64))
    with pytest.raises(bench.Unsupported, match="dense limit"):
        w.affines[0].matrix(max_entries=1000)
    b = bench.verify(net, "trivial", p=2, input_shape=(3, 64, 64))   # the DFT bound needs no unrolling either
    assert b.status == "ok" and b.value > 0
    # p = 1 and inf need no unrolling: exact row / column sums of |W|
    assert bench.verify(net, "trivial", p=1, input_shape=(3, 64, 64)).status == "ok"


def test_hash_save_load_roundtrip(tmp_path):
    a, b = mlp([3, 5, 2], seed=0), mlp([3, 5, 2], seed=1)
    assert network.net_hash(a) != network.net_hash(b)
    assert network.net_hash(a) == network.net_hash(mlp([3, 5, 2], seed=0))
    p = tmp_path / "n.pt"
    network.save(a, (3,), str(p))
    m, shape = network.load(str(p))
    assert shape == (3,) and network.net_hash(m) == network.net_hash(a)


def test_a_module_the_walk_does_not_know_is_opaque_and_refused_by_name():
    class Mine(nn.Module):
        def forward(self, x):
            return torch.softmax(x, dim=1)
    net = nn.Sequential(nn.Linear(2, 3), Mine(), nn.Linear(3, 1))
    w = network.walk(net)
    assert isinstance(w.layers[1], network.Opaque) and w.layers[1].name == "Mine" and w.out_dim == 1
    b = bench.verify(net, "trivial", p=2)
    assert b.status == "unsupported" and "layer 1 (Mine) is not supported by trivial" in b.error


def test_build_net_builds_mlps_as_before():
    """The same modules, in the same order of construction, so a seed gives the same weights."""
    torch.manual_seed(3)
    net = network.build_net({"hidden": [5, 4], "activation": "tanh", "bias": False}, (1, 2, 3), 3)
    torch.manual_seed(3)
    ref = nn.Sequential(nn.Flatten(), nn.Linear(6, 5, bias=False), nn.Tanh(), nn.Linear(5, 4, bias=False),
                        nn.Tanh(), nn.Linear(4, 3, bias=False))
    assert network.net_hash(net) == network.net_hash(ref)
    assert network.arch_name({"hidden": [5, 4], "activation": "tanh", "bias": False}) == "mlp5-4-tanh-nobias"


def test_build_net_builds_conv_nets():
    arch = {"conv": [{"channels": 4}, [6, 3, 2], {"channels": 2, "kernel": 2, "padding": 0}], "hidden": [7]}
    torch.manual_seed(0)
    net = network.build_net(arch, (3, 9, 9), 5)
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == \
        [(3, 4, (3, 3), (1, 1), (1, 1)), (4, 6, (3, 3), (2, 2), (1, 1)), (6, 2, (2, 2), (1, 1), (0, 0))]
    assert all(c.padding_mode == "zeros" for c in convs)
    assert [type(m).__name__ for m in net] == ["Conv2d", "ReLU", "Conv2d", "ReLU", "Conv2d", "ReLU", "Flatten",
                                                "Linear", "ReLU", "Linear"]
    assert net(torch.zeros(2, 3, 9, 9)).shape == (2, 5)          # 9 -> 9 -> 5 -> 4: 2 * 4 * 4 features
    assert net[7].in_features == 2 * 4 * 4
    w = network.walk(net, (3, 9, 9))
    assert [a.out_shape for a in w.affines] == [(4, 9, 9), (6, 5, 5), (2, 4, 4), (7,), (5,)]
    assert network.arch_name(arch) == "conv4x3s1-6x3s2-2x2s1p0-fc7-relu"
    # the compact form and the mapping are the same layer
    a = network.build_net({"conv": [[4, 5, 2, 0]]}, (1, 8, 8), 2)
    b = network.build_net({"conv": [{"channels": 4, "kernel": 5, "stride": 2, "padding": 0}]}, (1, 8, 8), 2)
    assert repr(a) == repr(b)


@pytest.mark.parametrize("act", ["crelu", "sinsplit", "sincos"])
def test_widening_activations_double_the_next_layers_channels(act):
    net = network.build_net({"conv": [[4], [3]], "hidden": [5], "activation": act, "bias": False}, (2, 5, 5), 3)
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    assert convs[1].in_channels == 8 and net[-1].in_features == 10 and net[5].in_features == 6 * 25
    assert all(m.bias is None for m in net if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert net(torch.zeros(1, 2, 5, 5)).shape == (1, 3)


@pytest.mark.parametrize("arch, match", [
    ({"hidden": [4], "width": 3}, "unknown key 'width'"),
    ({"hidden": [0]}, "hidden must be a list of positive integers"),
    ({"bias": "no"}, "bias must be true or false"),
    ({"activation": "nope"}, "unknown activation 'nope'"),
    ({"activation": "leaky_relu", "activation_params": {"slope": 1}}, "activation_params .* of leaky_relu"),
    ({"conv": []}, "conv must be a non-empty list"),
    ({"conv": [[4, 3, 1, 1, 9]]}, r"conv\[0\]: a compact conv layer"),
    ({"conv": [{"channel": 4}]}, r"conv\[0\]: unknown key 'channel'"),
    ({"conv": [{"kernel": 4}]}, r"conv\[0\]: missing key 'channels'"),
    ({"conv": [[4], {"channels": 2, "stride": 0}]}, r"conv\[1\]: stride must be a whole number >= 1, got 0"),
    ({"conv": [[4, 3, 1, -1]]}, r"conv\[0\]: padding must be a whole number >= 0"),
    ({"conv": [[True]]}, r"conv\[0\]: channels must be"),
    ({"conv": ["8x3"]}, r"conv\[0\]: a conv layer is"),
])
def test_build_net_rejects_bad_archs_in_one_line(arch, match):
    with pytest.raises(bench.UserError, match="architecture: " + match) as e:
        network.build_net(arch, (1, 6, 6), 2)
    assert "\n" not in str(e.value)


def test_build_net_rejects_convs_that_do_not_fit_the_input():
    with pytest.raises(bench.UserError, match="need an image input"):
        network.build_net({"conv": [[4]]}, (8,), 2)
    with pytest.raises(bench.UserError, match=r"conv\[1\] \(kernel 5, padding 0\) does not fit its 3 x 3 input"):
        network.build_net({"conv": [[4, 3, 2], [4, 5, 1, 0]]}, (1, 6, 6), 2)


def test_a_bad_conv_arch_is_caught_at_suite_load_with_its_line():
    from bench.suite import parse_suite
    text = ("datasets: [digits]\ntrain:\n  - trainer: standard\n    archs:\n      - conv:\n"
            "          - {channels: 4}\n          - {channels: 4, strid: 2}\n        hidden: [8]\n"
            "verify: [trivial]\n")
    with pytest.raises(bench.UserError, match=r"line 7: architecture: conv\[1\]: unknown key 'strid'"):
        parse_suite(text)
    ok = parse_suite(text.replace("strid", "stride"))
    arch = ok.train[0].archs[0]
    assert arch == {"conv": [{"channels": 4}, {"channels": 4, "stride": 2}], "hidden": [8]}
    assert type(arch["conv"][0]) is dict


def test_walk_leaves_the_callers_module_alone():
    net = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.ReLU(), nn.Linear(4, 2))
    net.train()
    network.walk(net)
    assert net[1].training


def test_vector_activation_must_not_use_a_slope():
    class Dup(nn.Module):  # x -> (relu x, relu x): Lipschitz 2^(1/p), not 1
        def forward(self, x):
            return torch.cat([torch.relu(x), torch.relu(x)], dim=1)

        def lipbench_spec(self):
            return {"name": "dup", "slope": (0.0, 1.0), "out_factor": 2}
    with pytest.raises(bench.Unsupported, match="changes the width"):
        network.walk(nn.Sequential(nn.Linear(1, 1), Dup(), nn.Linear(2, 2)))


def test_parametrized_layers_are_unsupported():
    lin = nn.utils.parametrizations.spectral_norm(nn.Linear(3, 3))
    b = bench.verify(nn.Sequential(lin, nn.ReLU(), nn.Linear(3, 1)), "trivial", p=2)
    assert b.status == "unsupported" and "parametrized" in b.error


def test_from_npz_reads_weights_and_rejects_an_empty_file(tmp_path):
    import numpy as np
    from bench.api import UserError
    from bench.network import from_npz
    W0, b0, W1, b1 = np.ones((3, 2)), np.zeros(3), np.arange(3.0)[None], np.array([0.5])
    np.savez(tmp_path / "n.npz", W0=W0, b0=b0, W1=W1, b1=b1)
    net = from_npz(str(tmp_path / "n.npz"))
    x = torch.tensor([[1.0, -3.0]], dtype=torch.float64)
    assert float(net(x).detach()[0, 0]) == float((W1 @ np.maximum(W0 @ x[0].numpy() + b0, 0) + b1)[0])
    np.savez(tmp_path / "e.npz", x=np.zeros(1))
    with pytest.raises(UserError, match="no weight matrix W0"):
        from_npz(str(tmp_path / "e.npz"))


def test_parameter_count_is_the_weights_and_biases_and_is_recorded_at_training(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 6 * 6, 5, bias=False))
    expected = (3 * 4 * 9 + 4) + (4 + 4) + 4 * 6 * 6 * 5      # BatchNorm: weight and bias, not its running statistics
    assert network.parameter_count(net) == expected
    from bench.api import Budget
    from bench.jobs import TrainJob
    from bench.worker import _train
    path = str(tmp_path / "n.pt")
    job = TrainJob("standard", "1", {"epochs": 1}, {"hidden": [7]}, {"name": "synthetic", "n": 60, "dim": 5}, 0, "n",
                   path)
    out = _train(job, Budget())
    assert out.status == "ok", out.error
    assert out.network.metrics["parameters"] == network.parameter_count(network.load(path)[0]) == 5 * 7 + 7 + 7 * 3 + 3
