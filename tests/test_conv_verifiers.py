"""Every verifier on conv nets: sound against exact constants of a tiny conv net (region
enumeration of the unrolled network), anytime within short budgets on a larger one, and
``unsupported`` with the size where a net is too large for it."""
import math

import numpy as np
import pytest
import torch

import bench
from bench import network
from bench.api import Budget, Query
from bench.registry import VERIFIERS, get_verifier, load_plugins
from bench.testing.exact import norm, regions

load_plugins()
INF = math.inf
TINY = (1, 2, 3)          # two convs of two channels: 8 units, few enough to enumerate
NETS = [("relu", True), ("abs", False), ("crelu", False), ("maxmin", False)]
_REGIONS = {}


def tiny(act, bias):
    torch.manual_seed(2)
    return network.build_net({"conv": [[2, 2, 1, 0], [2, 1]], "activation": act, "bias": bias}, TINY, 3).double().eval()


def exact(act, bias, p, box=None):
    key = (act, bias, box is not None)
    if key not in _REGIONS:
        lo, hi = (-100.0, 100.0) if box is None else box
        _REGIONS[key] = list(regions(tiny(act, bias), lo, hi, TINY))
    return max(norm(J, p) for J in _REGIONS[key])


def check_sound(b, truth, where):
    """An answer is a sound bound of its kind or a refusal with a reason, never an error."""
    assert b.status in ("ok", "timeout", "unsupported", "not_installed"), (where, b.status, b.error)
    if b.status in ("unsupported", "not_installed"):
        assert b.error and b.value is None, where
        return False
    if b.value is None:
        return False
    if b.kind == "upper":
        assert b.value >= truth * (1 - 1e-9), (where, b.value, truth)
    elif b.kind == "lower":
        assert b.value <= truth * (1 + 1e-9), (where, b.value, truth)
    else:
        assert b.value == pytest.approx(truth, rel=1e-6), (where, b.value, truth)
    return True


@pytest.mark.slow
@pytest.mark.parametrize("act,bias", NETS)
@pytest.mark.parametrize("p", [1.0, 2.0, INF])
def test_every_verifier_is_sound_or_refuses_on_a_tiny_conv_net(act, bias, p):
    net = tiny(act, bias)
    truth = exact(act, bias, p)
    answered = set()
    for name in sorted(n for n, cls in VERIFIERS.items()   # lipbench's own, not the tests' misbehaving ones
                       if cls.__module__.split(".")[0] in ("methods", "baselines")):
        params = {"samples": 300, "restarts": 4, "steps": 15} if name == "lower" else {}
        b = bench.verify(net, name, p=p, input_shape=TINY, **params)
        if check_sound(b, truth, (name, act, p)):
            answered.add(name)
    # what each family does with a conv net, unrolled: the exact ones and the trivial bound always answer;
    # the SDPs answer p = 2 for every activation (CReLU, MaxMin and, for ECLipsE, |x| through their ReLU forms)
    assert {"trivial", "lower", "bab"} <= answered
    assert ("mip" in answered) == (p != 2)
    assert ("lipsdp" in answered) == ("eclipse-fast" in answered) == (p == 2)


BOX_C, BOX_R = [0.2, -0.1, 0.3, 0.0, -0.2, 0.1], 0.3


@pytest.mark.auto_lirpa
def test_lirpa_on_a_conv_net_bounds_the_box():
    """lirpa (a box domain): its bound is >= the exact constant over the box."""
    box = (np.array(BOX_C) - BOX_R, np.array(BOX_C) + BOX_R)
    for p in (1.0, 2.0, INF):
        b = bench.verify(tiny("relu", True), "lirpa", p=p, input_shape=TINY, domain=(BOX_C, BOX_R))
        assert b.status == "ok" and check_sound(b, exact("relu", True, p, box), ("lirpa", p))


@pytest.mark.auto_lirpa
def test_lirpa_refuses_crelu_whose_jacobian_bounds_auto_lirpa_gets_wrong():
    """On this CReLU net (as an MLP too: the unrolled convs) auto_LiRPA's Jacobian bounds
    put the box constant at p = 1 below the exact one, which a witnessed lower bound
    reaches: lirpa refuses CReLU, naming it."""
    net = tiny("crelu", False)
    box = (np.array(BOX_C) - BOX_R, np.array(BOX_C) + BOX_R)
    lo = bench.verify(net, "lower", p=1.0, input_shape=TINY, domain=(BOX_C, BOX_R), samples=2000)
    assert lo.value == pytest.approx(exact("crelu", False, 1.0, box), rel=1e-6)
    b = bench.verify(net, "lirpa", p=1.0, input_shape=TINY, domain=(BOX_C, BOX_R))
    assert b.status == "unsupported" and "crelu" in b.error


@pytest.mark.slow
@pytest.mark.parametrize("name,p", [("bab", 2.0), ("bab", INF), ("mip", 1.0)])
def test_exact_verifiers_are_anytime_on_a_larger_conv_net(name, p):
    """A 1 x 6 x 6 input and two convs of 3 and 4 channels (63 units): within a 3 s
    budget bab and mip answer an upper bound (their anytime bound), above the sampled
    lower bound, and say the gap when they stop early."""
    shape = (1, 6, 6)
    torch.manual_seed(0)
    net = network.build_net({"conv": [[3, 3, 2], [4, 3, 1]], "activation": "relu"}, shape, 3).double().eval()
    walked = network.walk(net, shape)
    lo = bench.lower_bound(net, p=p, input_shape=shape, samples=300, restarts=4, steps=15).value
    v = get_verifier(name)()
    assert v.refusal(walked, Query(p=p)) is None
    b = v.run(walked, Query(p=p), Budget(timeout_s=3.0))
    assert b.status in ("ok", "timeout") and b.value is not None and b.value >= lo * (1 - 1e-9)
    if b.status == "timeout":
        assert b.kind == "upper" and b.stats["lower"] <= b.value


def test_sdp_verifiers_refuse_conv_nets_above_their_size_naming_it():
    """Unrolled, a conv counts channels x pixels: above each SDP verifier's size the
    refusal says the size; above the dense limit so does every verifier that unrolls."""
    q = Query(p=2.0)
    mid = network.walk(network.build_net({"conv": [[8, 3, 1], [8, 3, 1]]}, (1, 16, 16), 10), (1, 16, 16))
    assert "4,096 hidden neurons" in get_verifier("lipsdp")().refusal(mid, q)
    assert get_verifier("lipsdp")(solver="NATIVE").refusal(mid, q) is None   # per layer, as eclipse-fast
    for name in ("eclipse", "eclipse-fast"):  # per layer, on the block machinery
        assert get_verifier(name)().refusal(mid, q) is None
    cifar = network.walk(network.build_net({"conv": [[32, 3, 1], [32, 3, 2]], "hidden": [64]}, (3, 32, 32), 10),
                         (3, 32, 32))
    for verifier in (get_verifier("eclipse-fast")(), get_verifier("eclipse")(), get_verifier("lipsdp")(solver="NATIVE")):
        assert "32,768 neurons" in verifier.refusal(cifar, q)
    box = Query(p=2.0, domain=([0.5] * cifar.in_dim, 0.1))
    assert "dense limit" in get_verifier("lirpa")().refusal(cifar, box)
    for name in ("bab", "mip"):   # refused by size before anything is unrolled
        assert "41,024 units x 3,072 inputs" in get_verifier(name)().refusal(cifar, Query(p=INF))
    for name in ("trivial", "lower"):
        assert get_verifier(name)().refusal(cifar, q) is None
