"""``construct``: no training: a ReLU network built by hand, a member of a family where
the bounds built on incremental quadratic constraints (LipSDP-Neuron and -Layer,
ECLipsE, ECLipsE-Fast) are no better than the trivial bound, while the exact constant
(bab, mip) is small.  ``docs/hard.md`` has each construction, why the bounds fail, the
proof and the measured table; the suite ``hard`` runs every family.

Every family is a scalar function of the first input, f: R -> R; the network reads
x_1 (the other inputs get zero weights) and writes f to output 0 (the other outputs are
0), so for every p the Lipschitz constant of the network, of its full output and of the
margin f_0 - f_1, is max |f'|, and the trivial bound is the same number for p = 1, 2, inf.
The architecture a suite gives is ignored: the family and its parameter fix the layers.

* ``gate`` (parameter ``bias`` = beta in [0, 1], ``width`` = m): h = relu(x_1),
  g_i = relu(-h + (i - 1/2)/m - beta) for i = 1..m, f = sum_i g_i.  Fixed weights, so
  LipSDP = ECLipsE = trivial bound = m for every beta; the bias beta kills the units
  with (i - 1/2)/m < beta (h >= 0), so the exact constant is the number of live units,
  m - ceil(m beta - 1/2): m (1 - beta) for beta = k/m, 0 at beta = 1.
* ``identity`` (``depth`` = L): L blocks x -> relu(x) - relu(-x) = x; f(x) = x_1, exact
  1, while the trivial bound and every SDP bound are 2^L.
* ``sawtooth`` (``width`` = n): f(x) = sum_i (-1)^(i+1) relu(x_1 - (i - 1)/n), slopes
  alternating 1, 0: exact 1, trivial bound n, every SDP bound >= ceil(n/2).
* ``abs`` (``depth`` = L), the contrast: L blocks x -> relu(x) + relu(-x) = |x|; exact 1
  and trivial bound 2^L as for ``identity``, but here the linear surrogates of the
  activations are no larger than 1, and LipSDP-Neuron finds 1.

The metrics record what the construction claims (``claimed``: the exact constant, the
trivial bound for p = 2 and ``pattern_bound``, the largest ||W_L D_L ... D_1 W_0||_2 over
0/1 diagonals D, a lower bound on every SDP bound; see docs/hard.md), next to the usual
``clean_acc`` (meaningless here: nothing was fitted) and ``train_s``.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from bench.api import Budget, Param, Trainer, UserError
from bench.data import Dataset
from bench.registry import register
from bench.training import accuracy

FAMILIES = ("gate", "identity", "sawtooth", "abs")
#: each family's parameter: what the report plots it against
FAMILY_PARAM = {"gate": "bias", "identity": "depth", "sawtooth": "width", "abs": "depth"}


def gate(m: int, beta: float):
    """h = relu(x); g_i = relu(-h + (i - 1/2)/m - beta); f = sum g_i."""
    c = (np.arange(1, m + 1) - 0.5) / m - beta
    layers = [(np.ones((1, 1)), np.zeros(1)), (-np.ones((m, 1)), c), (np.ones((1, m)), np.zeros(1))]
    alive = int((c > 0).sum())
    return layers, {"exact": float(alive), "tb": float(m), "pattern_bound": float(m)}


def _chain(depth: int, sign: float):
    """Blocks x -> relu(x) + sign relu(-x): the identity (sign -1) or |x| (sign +1)."""
    down, up = np.array([[1.0], [-1.0]]), np.array([[1.0, sign]])
    layers = [(down, np.zeros(2))]
    layers += [(down @ up, np.zeros(2)) for _ in range(depth - 1)]
    layers += [(up, np.zeros(1))]
    # the middle layers [1; -1][1, sign] have norm 2, the first and last sqrt(2); with every
    # activation the identity the chain is the linear map up (down up)^(L-1) down = (1 - sign)^L
    # (identity: 2^L); for |x| each layer's 0/1 pattern multiplies by d_1 - d_2 in {-1, 0, 1}
    return layers, {"exact": 1.0, "tb": float(2 ** depth), "pattern_bound": float(2 ** depth if sign < 0 else 1)}


def sawtooth(n: int):
    """f(x) = sum_i (-1)^(i+1) relu(x - (i - 1)/n): slopes 1, 0, 1, 0, ... on [0, 1)."""
    v = np.array([(-1.0) ** i for i in range(n)])
    layers = [(np.ones((n, 1)), -np.arange(n) / n), (v[None, :], np.zeros(1))]
    return layers, {"exact": 1.0, "tb": float(n), "pattern_bound": float(math.ceil(n / 2))}


def construct(family: str, depth: int = 4, width: int = 8, bias: float = 0.0):
    """(layers, claims) of the scalar network f: R -> R, layers as (W, b) pairs with a
    ReLU between consecutive ones."""
    if family == "gate":
        return gate(width, bias)
    if family == "identity":
        return _chain(depth, -1.0)
    if family == "abs":
        return _chain(depth, 1.0)
    if family == "sawtooth":
        return sawtooth(width)
    raise UserError(f"unknown family {family!r}; valid: {', '.join(FAMILIES)}")


def build(layers, in_dim: int = 1, out_dim: int = 1) -> nn.Sequential:
    """The network of ``construct``'s layers reading input 1 of ``in_dim`` and writing
    output 1 of ``out_dim`` (zero weights elsewhere), float32."""
    mods = []
    for k, (W, b) in enumerate(layers):
        W, b = np.asarray(W, float), np.asarray(b, float)
        if k == 0:
            W = np.hstack([W, np.zeros((W.shape[0], in_dim - 1))])
        if k == len(layers) - 1:
            W, b = np.vstack([W, np.zeros((out_dim - W.shape[0], W.shape[1]))]), np.r_[b, np.zeros(out_dim - len(b))]
        lin = nn.Linear(W.shape[1], W.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.as_tensor(W))
            lin.bias.copy_(torch.as_tensor(b))
        mods += [lin, nn.ReLU()]
    return nn.Sequential(*mods[:-1]).eval()


@register
class Construct(Trainer):
    name = "construct"
    description = "no training: hand-built networks where SDP bounds are no better than the trivial bound"
    params = {"family": Param("identity", "gate (bias), identity (depth), sawtooth (width), abs (depth; the contrast)",
                              choices=FAMILIES),
              "depth": Param(4, "blocks of the identity and abs chains", ge=1, le=64),
              "width": Param(8, "gated units (gate), teeth (sawtooth)", ge=1, le=4096),
              "bias": Param(0.0, "gate: beta, subtracted from every gated unit's bias (beta = k / width kills k units)",
                            ge=0, le=1)}

    @classmethod
    def network_label(cls, arch: dict, params: dict) -> str:
        """``identity-depth3``, ``gate-bias0.125``: the family and its parameter."""
        key = FAMILY_PARAM[params["family"]]
        return f"{params['family']}-{key}{params[key]:g}"

    def train(self, dataset: Dataset, arch: dict, seed: int, budget: Budget):
        t0 = time.perf_counter()
        P = self.opts
        layers, claims = construct(P["family"], P["depth"], P["width"], P["bias"])
        in_dim = int(np.prod(dataset.input_shape))
        net = build(layers, in_dim, dataset.n_classes)
        if len(dataset.input_shape) != 1:
            net = nn.Sequential(nn.Flatten(), *net)
        return net, {"clean_acc": accuracy(net, dataset.X_test, dataset.y_test, torch.device("cpu")),
                     "train_s": time.perf_counter() - t0, "claimed": claims,
                     "family": P["family"], "family_param": FAMILY_PARAM[P["family"]]}
