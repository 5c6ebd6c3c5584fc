"""``gloro``: globally-robust networks (Leino, Wang & Fredrikson 2021) with the sound
trivial bound as the Lipschitz bound: a bottom class whose logit is
max_{j != j*} f_j + eps * K[j*, j] (j* the predicted class, K the differentiable
class-pair trivial bounds; ``bench.training.gloro_logits``), trained with cross-entropy,
so a correct prediction must also be certified at radius eps.  The exported network has
the C logits only (the bottom class is the certificate, which a verifier recomputes)."""
from __future__ import annotations

from bench.api import Budget, Trainer
from bench.data import Dataset
from bench.registry import register
from bench.training import gloro_logits

from baselines.train.lipschitz import MARGIN_PARAMS, train_margin


@register
class GloRo(Trainer):
    name = "gloro"
    description = "GloRo (Leino et al. 2021): a bottom class from class-pair trivial bounds"
    quick_params = {"epochs": 2}
    params = dict(MARGIN_PARAMS)

    def train(self, dataset: Dataset, arch: dict, seed: int, budget: Budget):
        return train_margin(self.opts, dataset, arch, seed, budget,
                            lambda logits, y, K, eps: gloro_logits(logits, K, eps))
