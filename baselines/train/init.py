"""``init``: no training: the architecture at its (seeded) initialisation.  For scaling
studies of verifiers, where what matters is the network's size, not what it learned."""
from __future__ import annotations

import time

import torch

from bench.api import Budget, Trainer
from bench.data import Dataset
from bench.network import build_net
from bench.registry import register
from bench.training import accuracy


@register
class Init(Trainer):
    name = "init"
    description = "no training: the seeded initialisation (for scaling studies)"

    def train(self, dataset: Dataset, arch: dict, seed: int, budget: Budget):
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        net = build_net(arch, dataset.input_shape, dataset.n_classes).eval()
        return net, {"clean_acc": accuracy(net, dataset.X_test, dataset.y_test, torch.device("cpu")),
                     "train_s": time.perf_counter() - t0}
