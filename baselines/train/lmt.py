"""``lmt``: Lipschitz-margin training (Tsuzuku, Sato & Sugiyama 2018) with the
sound trivial bound as the Lipschitz estimate: cross-entropy on the logits with every
wrong class j raised by eps * K[y, j], K[y, j] the differentiable trivial bound of the
margin f_y - f_j (``bench.training.margin_logits``; Tsuzuku et al. raise every wrong
logit by sqrt(2) eps L with one global L, which the class-pair bound tightens).  The
same loss is tb-penalty's ``margin_eps`` with no penalty term."""
from __future__ import annotations

from bench.api import Budget, Trainer
from bench.data import Dataset
from bench.registry import register
from bench.training import margin_logits

from baselines.train.lipschitz import MARGIN_PARAMS, train_margin


@register
class LMT(Trainer):
    name = "lmt"
    description = "Lipschitz-margin training (Tsuzuku et al. 2018), class-pair trivial bounds as the margin"
    quick_params = {"epochs": 2}
    params = dict(MARGIN_PARAMS)

    def train(self, dataset: Dataset, arch: dict, seed: int, budget: Budget):
        return train_margin(self.opts, dataset, arch, seed, budget,
                            lambda logits, y, K, eps: margin_logits(logits, y, K, eps))
