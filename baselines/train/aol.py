"""``aol``: almost-orthogonal layers (Prach & Lampert 2022): every Linear / Conv2d
weight rescaled column- (input-channel-) wise by AOL's d_j = (sum_i |W^T W|_ij)^(-1/2),
which makes each layer 1-Lipschitz in l2 without an orthogonalisation
(``baselines.train.lipschitz.AOLScaled``).  Written here: orthogonium has AOL for convs
only, and its multi-step variant; deel-torchlip has no AOL.  Exported as plain layers."""
from __future__ import annotations

from torch import nn

from bench.api import Budget, Trainer
from bench.data import Dataset
from bench.registry import register

from baselines.train.lipschitz import PARAMS, check_schedule, AOLScaled, parametrize_layers, train_constrained


@register
class AOL(Trainer):
    name = "aol"
    description = "almost-orthogonal Lipschitz layers (Prach & Lampert 2022), exported as plain layers"
    quick_params = {"epochs": 2}
    params = dict(PARAMS)
    check_params = classmethod(check_schedule)

    def train(self, dataset: Dataset, arch: dict, seed: int, budget: Budget):
        def constrain(net, shape):
            return parametrize_layers(net, shape, lambda m, s: AOLScaled(m if isinstance(m, nn.Conv2d) else None))
        return train_constrained(self.opts, dataset, arch, seed, budget, constrain)
