"""Shared parts of the Lipschitz-constrained trainers (not a plug-in: no ``@register``).

Each constrained trainer trains a network whose Linear / Conv2d weights are
*parametrized* (``torch.nn.utils.parametrize``: the weight is recomputed from a free
parameter on every access) and exports a plain ``nn.Sequential`` of ``nn.Linear`` /
``nn.Conv2d`` (zero padding) with the weights materialised, which is what the network walk
reads (it refuses a parametrized weight).  Here:

- :class:`SpectralNormalized`: W / max(1, ||W||_2) with the exact spectral norm of a
  dense W (top eigenvalue of the Gram matrix) or, for a conv, the sound DFT bound of
  :func:`methods.trivial.conv_spectral_fft` (never a power iteration, which
  underestimates);
- :class:`AOLScaled`: AOL (Prach & Lampert 2022), W diag(d) with
  d_j = (sum_i |W^T W|_ij)^(-1/2); for a conv the same with the kernel's
  self-correlation summed over every spatial offset (see the class);
- :func:`parametrize_layers` puts one of these on every Linear / Conv2d of a network;
- :func:`export` turns every Linear / Conv2d (parametrized, or a library's subclass) into
  a plain one with its current weight, then divides each layer whose *sound* norm (the
  ``trivial`` verifier's :func:`methods.trivial.operator_norm`, float64 with rounding
  margins) exceeds 1 by that norm, so a layer that a float32 orthogonalisation or the
  cast leaves at 1 + 1e-7 is exported <= 1.  It returns the largest such factor, which the
  trainers record (``export_rescale``; 1.0 when nothing needed it).
"""
from __future__ import annotations

import functools
import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from bench.api import Param, UserError
from bench.network import Affine, Shift, build_net, flat_children, walk
from bench.training import channel_mean, crop_flip, fit, lip_ce
from methods.trivial import conv_spectral_fft, operator_norm, spectral_norm_torch


class SpectralNormalized(nn.Module):
    """W -> W / max(1, ||W||_2): the layer's l2 operator norm is at most 1 (up to
    rounding).  ``conv``/``in_shape``: the conv module and its input shape, for the DFT
    bound; None for a Linear."""

    def __init__(self, conv: nn.Conv2d | None = None, in_shape: tuple | None = None):
        super().__init__()
        self._conv = [conv]   # a list: not a submodule (the conv holds this parametrization)
        self.in_shape = in_shape

    def forward(self, W: torch.Tensor) -> torch.Tensor:
        conv = self._conv[0]
        n = spectral_norm_torch(W.double()) if conv is None else conv_spectral_fft(conv, self.in_shape, W)
        return W / torch.clamp(n, min=1.0).to(W.dtype)


def _rsqrt_safe(t: torch.Tensor) -> torch.Tensor:
    """t^(-1/2), and 0 where t == 0 (a zero column stays zero)."""
    return torch.where(t > 0, t.clamp_min(1e-30).rsqrt(), torch.zeros_like(t))


class AOLScaled(nn.Module):
    """AOL's rescaling, which makes ||W D||_2 <= 1 for D = diag(d),
    d_j = (sum_i |W^T W|_ij)^(-1/2) (Prach & Lampert 2022, Thm 1).

    Conv (Thm 2 of the paper): d per input channel, with |W^T W| replaced by the
    kernel's self-correlation M[c, c', delta] = sum_{o, u} K[o, c, u] K[o, c', u + delta]
    summed in absolute value over c' and every offset delta.  That sum bounds the row sums
    of |P^T P| for the circular conv P on any grid (aliased offsets only merge terms), so
    ||P D|| <= 1; zero padding and a stride compose P with an embedding and a selection of
    rows, which do not increase the norm.  groups = 1 and dilation = 1 only."""

    def __init__(self, conv: nn.Conv2d | None = None):
        super().__init__()
        if conv is not None and (conv.groups != 1 or tuple(conv.dilation) != (1, 1)):
            raise UserError("AOL: conv layers with groups or dilation are not supported")
        self.is_conv = conv is not None

    def forward(self, W: torch.Tensor) -> torch.Tensor:
        if not self.is_conv:
            return W * _rsqrt_safe((W.T @ W).abs().sum(1))[None, :]
        kh, kw = W.shape[-2:]
        Kt = W.transpose(0, 1)                                        # (c_in, c_out, kh, kw)
        M = torch.nn.functional.conv2d(Kt, Kt, padding=(kh - 1, kw - 1))  # (c_in, c_in, 2kh-1, 2kw-1)
        return W * _rsqrt_safe(M.abs().sum((1, 2, 3)))[None, :, None, None]


def parametrize_layers(net: nn.Module, input_shape: tuple, make) -> nn.Module:
    """Register ``make(module, in_shape)`` (a parametrization, or None to leave the layer
    free) on the weight of every Linear / Conv2d of ``net``; returns ``net``."""
    shapes = {id(l.module): l.in_shape for l in walk(net, input_shape).layers if isinstance(l, Affine)}
    for m in flat_children(net):
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            p = make(m, shapes[id(m)])
            if p is not None:
                parametrize.register_parametrization(m, "weight", p)
    return net


def plain(m: nn.Module) -> nn.Module:
    """A plain nn.Linear / nn.Conv2d (zero padding) computing what ``m`` computes now,
    weight materialised (float32, like the rest of the network)."""
    with torch.no_grad():
        W = m.weight.detach().clone()
        b = None if m.bias is None else m.bias.detach().clone()
        if isinstance(m, nn.Linear):
            out = nn.Linear(m.in_features, m.out_features, bias=b is not None)
        else:
            if m.padding_mode != "zeros":
                raise UserError(f"cannot export a conv with padding_mode {m.padding_mode!r}: the network walk "
                                f"reads zero-padded convs only")
            out = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
                            dilation=m.dilation, groups=m.groups, bias=b is not None)
        out = out.to(W.device, W.dtype)
        out.weight.copy_(W)
        if b is not None:
            out.bias.copy_(b)
    return out


def _replace(net: nn.Module, fn) -> nn.Module:
    """``net`` (nested Sequentials flattened) with every child replaced by ``fn(child)``."""
    return nn.Sequential(*[fn(c) for c in flat_children(net)])


def export(net: nn.Module, input_shape: tuple, p: float = 2.0) -> tuple[nn.Sequential, float]:
    """(a plain nn.Sequential computing what ``net`` computes, the largest factor a layer
    was divided by so that its sound p-norm is <= 1; 1.0 if none).  See the module doc."""
    out = _replace(net.cpu().eval(),
                   lambda m: plain(m) if isinstance(m, (nn.Linear, nn.Conv2d)) else m).eval()
    return out, renormalise(out, input_shape, p)


def renormalise(net: nn.Sequential, input_shape: tuple, p: float = 2.0, only=None) -> float:
    """Divide every plain Linear / Conv2d of ``net`` (those in ``only``, if given) whose
    sound p-norm exceeds 1 by that norm, in place; the largest factor (1.0 if none)."""
    worst = 1.0
    for l in walk(net, input_shape).layers:
        if not (isinstance(l, Affine) and type(l.module) in (nn.Linear, nn.Conv2d)):
            continue
        if only is not None and not any(l.module is m for m in only):
            continue
        for _ in range(3):   # the division is rounded to float32: check again
            n = operator_norm(Affine(l.module, l.in_shape, l.out_shape, l.index), p)
            if n <= 1.0:
                break
            with torch.no_grad():
                l.module.weight.div_(n * (1 + 2 ** -22))
            worst = max(worst, n)
    return worst


# ---- the training run shared by the constrained trainers ------------------------------

#: parameters every constrained trainer declares: the first four from the start, the rest
#: (their defaults keep the first behaviour: Adam, a constant rate, cross-entropy on
#: logit_scale * logits, raw data) for Prach et al.'s schedules (``cifar-full``)
PARAMS = {"epochs": Param(30, "passes over the training set", ge=1),
          "lr": Param(1e-3, "the learning rate (with onecycle: its peak)", gt=0),
          "batch_size": Param(64, ge=1),
          "logit_scale": Param(10.0, "loss ce reads the logits times this (a temperature for 1-Lipschitz nets, "
                                    "whose logits are small); the network is exported unscaled", gt=0),
          "optimizer": Param("adam", "adam, or sgd with momentum 0.9", choices=("adam", "sgd")),
          "weight_decay": Param(0.0, "the optimizer's weight decay, on every parameter", ge=0),
          "lr_schedule": Param("constant", "constant, or onecycle (torch's OneCycleLR, stepped per epoch)",
                               choices=("constant", "onecycle")),
          "loss": Param("ce", "ce: cross-entropy on logit_scale * logits; lip-ce: Prach et al.'s Lipschitz "
                              "cross-entropy with margin and temperature", choices=("ce", "lip-ce")),
          "margin": Param(0.0, "lip-ce: the true logit is lowered by this", ge=0),
          "temperature": Param(1.0, "lip-ce: the logits are divided by this, the loss multiplied", gt=0),
          "center": Param(False, "subtract the training data's mean per channel: the network starts with "
                                 "Shift(-mean) and reads raw inputs (a translation: Lipschitz constant unchanged)"),
          "augment": Param("none", "crop-flip: random 4-pixel-padded crops (padded with the data's mean when "
                                   "centring, as Prach et al.'s centred data pads with 0) and left-right flips",
                           choices=("none", "crop-flip"))}


def check_schedule(cls, params: dict) -> None:
    """The combinations of :data:`PARAMS` that would leave a value unused (a trainer's
    ``check_params``)."""
    d = {k: p.default for k, p in PARAMS.items()}
    if params["loss"] == "ce" and (params["margin"] != d["margin"] or params["temperature"] != d["temperature"]):
        raise UserError(f"{cls.name}: margin and temperature are loss lip-ce's; loss ce reads logit_scale")
    if params["loss"] == "lip-ce" and params["logit_scale"] != d["logit_scale"]:
        raise UserError(f"{cls.name}: loss lip-ce reads margin and temperature, not logit_scale")


def centred(net: nn.Module, dataset, opts: dict) -> nn.Module:
    """``net`` with Shift(-mean of the training data per channel) in front when
    ``opts["center"]`` (flat), else ``net``."""
    if not opts["center"]:
        return net
    return nn.Sequential(Shift(-channel_mean(dataset.X_train)), *flat_children(net))


def fit_constrained(net: nn.Module, dataset, budget, opts: dict, seed: int) -> dict:
    """Train ``net`` with the schedule of :data:`PARAMS` (``bench.training.fit``)."""
    if opts["loss"] == "lip-ce":
        m, t = opts["margin"], opts["temperature"]

        def loss_fn(module, logits, y, epoch):
            return lip_ce(logits, y, m, t)
    else:
        ce, scale = nn.CrossEntropyLoss(), opts["logit_scale"]

        def loss_fn(module, logits, y, epoch):
            return ce(scale * logits, y)
    augment = None
    if opts["augment"] == "crop-flip":
        if len(dataset.input_shape) != 3:
            raise UserError(f"augment crop-flip needs images (channels, height, width), not inputs of shape "
                            f"{dataset.input_shape}")
        fill = torch.as_tensor(channel_mean(dataset.X_train), dtype=torch.float32) if opts["center"] else None
        augment = functools.partial(crop_flip, fill=fill)
    return fit(net, dataset, budget, epochs=opts["epochs"], lr=opts["lr"], batch_size=opts["batch_size"], seed=seed,
               weight_decay=opts["weight_decay"], loss_fn=loss_fn, optimizer=opts["optimizer"],
               lr_schedule=opts["lr_schedule"], augment=augment)


def train_constrained(opts: dict, dataset, arch: dict, seed: int, budget, constrain) -> tuple[nn.Sequential, dict]:
    """Build ``arch`` (centred if asked: :func:`centred`), let ``constrain(net,
    input_shape)`` return the network to train (parametrized or with layers replaced),
    train it (:func:`fit_constrained`), export it (:func:`export`) and return it with its
    metrics: fit's (``train_s``, ...), ``clean_acc`` of the exported network,
    ``export_rescale`` and the exported network's sound trivial bound at p = 2
    (``tb_after``)."""
    torch.manual_seed(seed)
    shape = dataset.input_shape
    net = constrain(centred(build_net(arch, shape, dataset.n_classes), dataset, opts), shape)
    metrics = fit_constrained(net, dataset, budget, opts, seed)
    out, rescale = export(net, shape)
    metrics.update(finish_metrics(out, dataset), export_rescale=rescale)
    return out, metrics


def finish_metrics(out: nn.Module, dataset) -> dict:
    """Metrics of an exported network: its test accuracy and its sound trivial bound at p = 2."""
    from bench.api import Budget, Query
    from bench.training import accuracy
    from methods.trivial import Trivial
    tb = Trivial().run(walk(out, dataset.input_shape), Query(p=2), Budget(60.0, "cpu", 1)).value
    return {"clean_acc": accuracy(out, dataset.X_test, dataset.y_test, torch.device("cpu")), "tb_after": tb,
            "tb_p": 2.0}


# ---- Lipschitz-margin training (lmt, gloro) ---------------------------------------------

#: parameters of the margin trainers
MARGIN_PARAMS = {"epochs": Param(30, "passes over the training set", ge=1),
                 "lr": Param(1e-3, "Adam's learning rate", gt=0),
                 "batch_size": Param(64, ge=1),
                 "p": Param(2.0, "the norm of the certified radius", choices=(1.0, 2.0, math.inf)),
                 "eps": Param(0.3, "the radius the margins are trained to certify", gt=0),
                 "warmup": Param(0.3, "fraction of the epochs over which eps ramps up linearly from 0",
                                 ge=0, le=1)}


def train_margin(opts: dict, dataset, arch: dict, seed: int, budget, logits_fn) -> tuple[nn.Sequential, dict]:
    """Train ``arch`` (unconstrained layers) with cross-entropy on ``logits_fn(logits, y,
    K, eps)``, K the differentiable class-pair trivial bounds
    (:meth:`methods.trivial.TorchTrivialBound.pairs`) and eps ramped over the warm-up;
    metrics add the sound trivial bound at p before and after (``tb_before``, ``tb_after``)."""
    from bench.api import Budget, Query, parse_p
    from methods.trivial import TorchTrivialBound, Trivial
    p = parse_p(opts["p"])
    torch.manual_seed(seed)
    shape = dataset.input_shape
    net = build_net(arch, shape, dataset.n_classes)

    def sound_tb(module):
        return Trivial().run(walk(module.cpu().eval(), shape), Query(p=p), Budget(60.0, "cpu", 1)).value

    before = sound_tb(net)
    tb = TorchTrivialBound(net, shape, p)
    ce = nn.CrossEntropyLoss()
    warm = max(1e-9, opts["warmup"] * opts["epochs"])

    def loss_fn(module, logits, y, epoch):
        eps = opts["eps"] * min(1.0, (epoch + 1) / warm)
        return ce(logits_fn(logits, y, tb.pairs(), eps), y)

    metrics = fit(net, dataset, budget, epochs=opts["epochs"], lr=opts["lr"], batch_size=opts["batch_size"],
                  seed=seed, loss_fn=loss_fn)
    net = net.cpu().eval()
    metrics.update({"tb_before": before, "tb_after": sound_tb(net), "tb_p": opts["p"]})
    return net, metrics
