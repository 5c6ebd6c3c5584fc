"""``standard``: a network (MLP or conv net, ``bench.network.build_net``) trained with
cross-entropy and Adam, no Lipschitz control."""
from __future__ import annotations

import torch

from bench.api import Budget, Param, Trainer
from bench.data import Dataset
from bench.network import build_net
from bench.registry import register
from bench.training import fit, singular_spread, zero_derivative_fraction


@register
class Standard(Trainer):
    name = "standard"
    description = "cross-entropy + Adam (no Lipschitz control)"
    quick_params = {"epochs": 2}
    params = {"epochs": Param(30, "passes over the training set", ge=1), "lr": Param(1e-3, "Adam's learning rate", gt=0),
              "batch_size": Param(64, ge=1), "weight_decay": Param(0.0, ge=0)}

    def train(self, dataset: Dataset, arch: dict, seed: int, budget: Budget):
        torch.manual_seed(seed)
        net = build_net(arch, dataset.input_shape, dataset.n_classes)
        P = self.opts
        spread_before = singular_spread(net)
        metrics = fit(net, dataset, budget, epochs=P["epochs"], lr=P["lr"], batch_size=P["batch_size"],
                      seed=seed, weight_decay=P["weight_decay"])
        net = net.cpu().eval()
        metrics.update({"spread_before": spread_before, "spread_after": singular_spread(net),
                        "zero_derivative_fraction": zero_derivative_fraction(net, dataset.input_shape,
                                                                             dataset.X_test)})
        return net, metrics
