"""``tb-penalty``: training so that the trivial bound is small and tight.

loss = task loss + lambda_t * penalty(TB_p(net)), where TB_p is the differentiable
trivial bound (:class:`methods.trivial.TorchTrivialBound`) in the norm ``p``.

Choices the paper's abstract leaves open, all suite parameters:

- ``penalty``: ``log`` (lambda * log TB: scale-free, the default), ``tb`` (lambda * TB) or
  ``hinge`` (lambda * max(0, TB - target)).
- ``schedule``: ``constant`` lambda, or ``warmup`` (lambda ramps linearly from 0 over
  the first ``warmup`` fraction of the epochs, so the network first learns the task).
- ``margin_eps`` > 0 switches the task loss to the certified-margin loss: the logit of
  every wrong class j is raised by eps * TB_pair(y, j) before the cross-entropy, so the
  network learns margins that certify radius eps in the p-norm (Tsuzuku et al.'s
  Lipschitz-margin training with the trivial bound as the Lipschitz estimate).
- ``sign``: ``free`` (the default) or ``nonneg``: every Linear / Conv2d weight is trained
  as |V| (a parametrization, removed after training, so the network is plain layers
  again).  With nonnegative weights no two paths of the network cancel, so at p = inf the
  exact constant of an Abs or ReLU network equals || W_L ... W_0 ||_inf and TB_inf / exact
  is only the row-sum chaining gap, which the penalty closes; free signs leave a
  cancellation gap the penalty cannot see, since TB_inf depends on |W| alone
  (docs/pinf.md, which also measures the accuracy this costs).
- The architecture (``activation`` abs / crelu / sinsplit / maxmin / sincos / relu,
  ``bias``, widths) comes from the suite's ``archs``.

Metrics recorded beside clean accuracy: the trivial bound before and after training,
each Linear layer's singular value spread (sigma_max / sigma_min) before and after, and
the fraction of hidden units with a zero activation derivative on the test set (the
"dead neuron" obstruction).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from bench.api import Budget, Param, Trainer, parse_p
from bench.data import Dataset
from bench.network import build_net
from bench.registry import register
from bench.training import fit, margin_logits, singular_spread, zero_derivative_fraction
from methods.trivial import TorchTrivialBound


@register
class TBPenalty(Trainer):
    name = "tb-penalty"
    description = "task loss + lambda * penalty(trivial bound) (arXiv 2603.28113)"
    quick_params = {"epochs": 2}
    params = {"epochs": Param(30, "passes over the training set", ge=1),
              "lr": Param(2e-3, "Adam's learning rate", gt=0),
              "batch_size": Param(64, ge=1),
              "p": Param(2.0, "the norm of the penalised trivial bound", choices=(1.0, 2.0, math.inf)),
              "lam": Param(0.05, "penalty weight lambda", ge=0),
              "penalty": Param("log", "lambda * log TB, lambda * TB, or lambda * max(0, TB - target)",
                               choices=("log", "tb", "hinge")),
              "target": Param(1.0, "the hinge penalty's target TB", gt=0),
              "schedule": Param("warmup", "constant lambda, or a linear ramp over the first `warmup` of the epochs",
                                choices=("constant", "warmup")),
              "warmup": Param(0.3, "fraction of the epochs of the ramp", ge=0, le=1),
              "margin_eps": Param(0.0, "> 0: the certified-margin task loss at this radius", ge=0),
              "weight_decay": Param(0.0, ge=0),
              "sign": Param("free", "free weights, or every Linear / Conv2d weight nonnegative (|V|, "
                                    "which makes TB_inf tight up to row-sum chaining)", choices=("free", "nonneg"))}

    def train(self, dataset: Dataset, arch: dict, seed: int, budget: Budget):
        P = self.opts
        p = parse_p(P["p"])
        torch.manual_seed(seed)
        net = build_net(arch, dataset.input_shape, dataset.n_classes)
        tb = TorchTrivialBound(net, dataset.input_shape, p)   # walks the plain layers: before any parametrization
        weighted = [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        if P["sign"] == "nonneg":
            for m in weighted:
                parametrize.register_parametrization(m, "weight", _Abs())
        before = {"tb": float(tb.full().detach()), "spread": singular_spread(net)}
        ce = nn.CrossEntropyLoss()
        warm = max(1e-9, P["warmup"] * P["epochs"])

        def lam_at(epoch: int) -> float:
            return P["lam"] if P["schedule"] == "constant" else P["lam"] * min(1.0, (epoch + 1) / warm)

        def penalty(value):
            if P["penalty"] == "log":
                return torch.log(value)
            if P["penalty"] == "tb":
                return value
            return torch.relu(value - P["target"])

        def loss_fn(module, logits, y, epoch):
            if P["margin_eps"] > 0:
                K = tb.pairs().to(logits.dtype)  # (C, C), K[y, j] bounds the margin f_y - f_j
                task = ce(margin_logits(logits, y, K, P["margin_eps"]), y)
                return task + lam_at(epoch) * penalty(K.max()).to(logits.dtype)
            return ce(logits, y) + lam_at(epoch) * penalty(tb.full()).to(logits.dtype)

        metrics = fit(net, dataset, budget, epochs=P["epochs"], lr=P["lr"], batch_size=P["batch_size"],
                      seed=seed, weight_decay=P["weight_decay"], loss_fn=loss_fn)
        if P["sign"] == "nonneg":   # back to plain layers holding |V|, which every verifier reads
            for m in weighted:
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
        net = net.cpu().eval()
        with torch.no_grad():
            metrics.update({"tb_before": before["tb"], "tb_after": float(tb.full().detach()), "tb_p": P["p"],
                            "spread_before": before["spread"], "spread_after": singular_spread(net)})
        metrics["zero_derivative_fraction"] = zero_derivative_fraction(net, dataset.input_shape, dataset.X_test)
        return net, metrics


class _Abs(nn.Module):
    """The parametrization W = |V| of ``sign: nonneg``."""

    def forward(self, V):
        return V.abs()
