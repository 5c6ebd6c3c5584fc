"""``spectral-norm``: every Linear / Conv2d weight divided by max(1, its l2 operator
norm) during training, so that the trivial bound at p = 2 is at most the activations'
constants.  The norm is sound and exact for a dense layer (the top eigenvalue of the
Gram matrix, not torch's power iteration, which underestimates) and the DFT bound of
``methods.trivial`` for a conv (Miyato et al. 2018 normalise by a power-iteration
estimate instead).  The exported network holds plain layers with the normalised weights
(``baselines.train.lipschitz.export``)."""
from __future__ import annotations

from torch import nn

from bench.api import Budget, Trainer
from bench.data import Dataset
from bench.registry import register

from baselines.train.lipschitz import PARAMS, check_schedule, SpectralNormalized, parametrize_layers, train_constrained


@register
class SpectralNorm(Trainer):
    name = "spectral-norm"
    description = "each layer divided by max(1, its sound l2 norm) while training; exported as plain layers"
    quick_params = {"epochs": 2}
    params = dict(PARAMS)
    check_params = classmethod(check_schedule)

    def train(self, dataset: Dataset, arch: dict, seed: int, budget: Budget):
        def constrain(net, shape):
            return parametrize_layers(net, shape, lambda m, s: SpectralNormalized(
                m if isinstance(m, nn.Conv2d) else None, s))
        return train_constrained(self.opts, dataset, arch, seed, budget, constrain)
