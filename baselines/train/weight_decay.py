"""``weight-decay``: the ``standard`` loop with an L2 penalty on the weights (Adam's
``weight_decay``), which shrinks every layer's norm and so the trivial bound."""
from __future__ import annotations

from bench.api import Param
from bench.registry import register

from baselines.train.standard import Standard


@register
class WeightDecay(Standard):
    name = "weight-decay"
    description = "cross-entropy + Adam with weight decay (an L2 penalty on the weights)"
    params = {**Standard.params, "weight_decay": Param(1e-3, "Adam's L2 weight decay", gt=0)}
