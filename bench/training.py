"""A plain minibatch training loop shared by trainers (harness utility, method-agnostic)."""
from __future__ import annotations

import logging
import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from .api import Budget
from .data import Dataset

log = logging.getLogger(__name__)


def device_of(budget: Budget) -> torch.device:
    d = budget.device
    if d == "auto":
        d = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(d)


def accuracy(module: nn.Module, X: np.ndarray, y: np.ndarray, device=None, batch: int = 2048) -> float:
    device = device or next(module.parameters()).device
    module.eval()
    correct = 0
    with torch.no_grad():
        for s in range(0, len(X), batch):
            xb = torch.as_tensor(X[s:s + batch], device=device)
            correct += int((module(xb).argmax(1).cpu().numpy() == y[s:s + batch]).sum())
    return correct / max(len(X), 1)


def fit(module: nn.Module, ds: Dataset, budget: Budget, *, epochs: int, lr: float, batch_size: int,
        seed: int, weight_decay: float = 0.0,
        extra_loss: Callable[[nn.Module, int], torch.Tensor] | None = None) -> dict:
    """Train ``module`` with Adam on cross-entropy (+ ``extra_loss(module, epoch)``).
    Stops early, and says so, when 90% of the budget's time is spent."""
    t0 = time.perf_counter()
    deadline = t0 + 0.9 * budget.timeout_s if budget.timeout_s else float("inf")
    dev = device_of(budget)
    module.to(dev).train()
    gen = torch.Generator().manual_seed(seed)
    X = torch.as_tensor(ds.X_train, device=dev)
    y = torch.as_tensor(ds.y_train, device=dev)
    opt = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    lossf = nn.CrossEntropyLoss()
    n = len(X)
    last = float("nan")
    done = 0
    for epoch in range(epochs):
        if time.perf_counter() > deadline:
            break
        perm = torch.randperm(n, generator=gen).to(dev)
        for s in range(0, n, batch_size):
            idx = perm[s:s + batch_size]
            loss = lossf(module(X[idx]), y[idx])
            if extra_loss is not None:
                loss = loss + extra_loss(module, epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            last = float(loss.detach())
        done += 1
    module.eval()
    train_s = time.perf_counter() - t0
    return {"clean_acc": accuracy(module, ds.X_test, ds.y_test, dev),
            "train_acc": accuracy(module, ds.X_train, ds.y_train, dev),
            "train_s": train_s, "epochs_done": done, "final_loss": last,
            "stopped_early": done < epochs, "device": str(dev)}
