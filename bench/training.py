"""A plain minibatch training loop shared by trainers (harness utility, method-agnostic)."""
from __future__ import annotations

import logging
import math
import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from .api import Budget
from .data import Dataset, fit_inputs
from .network import Activation, walk

log = logging.getLogger(__name__)


def device_of(budget: Budget) -> torch.device:
    d = budget.device
    if d == "auto":
        d = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(d)


def accuracy(module: nn.Module, X: np.ndarray, y: np.ndarray, device=None, batch: int = 2048) -> float:
    """The share of inputs ``X`` whose largest output is the label ``y``, the inputs in the
    dtype of the module's parameters."""
    p = next(module.parameters(), None)
    device = device or (p.device if p is not None else "cpu")
    dtype = p.dtype if p is not None else torch.float32
    module.eval()
    correct = 0
    with torch.no_grad():
        for s in range(0, len(X), batch):
            xb = torch.as_tensor(np.ascontiguousarray(X[s:s + batch]), device=device, dtype=dtype)
            out = module(xb)
            correct += int((out.reshape(len(out), -1).argmax(1).cpu().numpy() == y[s:s + batch]).sum())
    return correct / max(len(X), 1)


def heldout_accuracy(module, input_shape: tuple, ds: Dataset) -> float:
    """Clean accuracy of ``module`` on ``ds``'s test split, fed in the network's input
    shape (:func:`bench.data.fit_inputs`)."""
    return accuracy(module, fit_inputs(ds.X_test, input_shape, f"data set {ds.name}"), ds.y_test)


def measure_accuracy(module, ds: Dataset, metrics: dict) -> dict:
    """The harness's own clean accuracy of a trained network, in ``metrics["clean_acc"]``
    (what the store and every page use); the trainer's figure is kept as
    ``trainer_clean_acc``, and ``accuracy_disagrees`` is set where the two differ by more
    than one test image (rounding in another batch size can flip one)."""
    measured = heldout_accuracy(module, ds.input_shape, ds)
    claimed = metrics.get("clean_acc")
    if isinstance(claimed, (int, float)) and not isinstance(claimed, bool):
        metrics["trainer_clean_acc"] = float(claimed)
        if abs(claimed - measured) > 1.0 / max(1, len(ds.y_test)) + 1e-12:
            metrics["accuracy_disagrees"] = True
    metrics["clean_acc"] = measured
    return metrics


#: SGD's momentum (``optimizer="sgd"``), as Prach et al. train
SGD_MOMENTUM = 0.9


def fit(module: nn.Module, ds: Dataset, budget: Budget, *, epochs: int, lr: float, batch_size: int,
        seed: int, weight_decay: float = 0.0,
        loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor] | None = None,
        optimizer: str = "adam", lr_schedule: str = "constant",
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None) -> dict:
    """Train ``module`` on ``loss_fn(module, logits, labels, epoch)`` (default:
    cross-entropy) with ``optimizer`` "adam" or "sgd" (momentum :data:`SGD_MOMENTUM`),
    ``weight_decay`` (the optimizer's, on every parameter) and ``lr_schedule``
    "constant" (``lr`` throughout) or "onecycle" (torch's OneCycleLR peaking at ``lr``,
    its defaults, stepped once per epoch as Prach et al. do; with SGD it also cycles the
    momentum between 0.85 and 0.95).  ``augment(batch, generator)``, if given, transforms
    each training batch (e.g. :func:`crop_flip`).  Stops early, and says so, when 90% of
    the budget's time is spent."""
    t0 = time.perf_counter()
    deadline = t0 + 0.9 * budget.timeout_s if budget.timeout_s else float("inf")
    dev = device_of(budget)
    module.to(dev).train()
    gen = torch.Generator().manual_seed(seed)
    X = torch.as_tensor(ds.X_train, device=dev)
    y = torch.as_tensor(ds.y_train, device=dev)
    if optimizer == "sgd":
        opt = torch.optim.SGD(module.parameters(), lr=lr, momentum=SGD_MOMENTUM, weight_decay=weight_decay)
    elif optimizer == "adam":
        opt = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer {optimizer!r}: adam or sgd")
    if lr_schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, epochs=epochs, steps_per_epoch=1)
    elif lr_schedule == "constant":
        sched = None
    else:
        raise ValueError(f"lr_schedule {lr_schedule!r}: constant or onecycle")
    lossf = nn.CrossEntropyLoss()
    n = len(X)
    last = lr_last = float("nan")
    done = 0
    for epoch in range(epochs):
        if time.perf_counter() > deadline:
            break
        perm = torch.randperm(n, generator=gen).to(dev)
        for s in range(0, n, batch_size):
            idx = perm[s:s + batch_size]
            xb = X[idx] if augment is None else augment(X[idx], gen)
            logits = module(xb)
            loss = lossf(logits, y[idx]) if loss_fn is None else loss_fn(module, logits, y[idx], epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            last = float(loss.detach())
        lr_last = float(opt.param_groups[0]["lr"])   # the rate of this epoch's steps
        if sched is not None:
            sched.step()
        done += 1
    module.eval()
    train_s = time.perf_counter() - t0
    return {"clean_acc": accuracy(module, ds.X_test, ds.y_test, dev),
            "train_acc": accuracy(module, ds.X_train, ds.y_train, dev),
            "train_s": train_s, "epochs_done": done, "final_loss": last,
            "stopped_early": done < epochs, "device": str(dev), "lr_last": lr_last}


def channel_mean(X: np.ndarray) -> np.ndarray:
    """The mean of every channel (dimension 1 of a batch: an image's channels, a vector's
    features) over the data, float64: what a centring subtracts (:class:`bench.network.Shift`)."""
    return np.asarray(X, dtype=np.float64).mean(axis=tuple(a for a in range(X.ndim) if a != 1))


def crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4, fill: torch.Tensor | None = None) -> torch.Tensor:
    """The standard CIFAR augmentation, per image of a batch (n, C, H, W): pad by ``pad``
    pixels with ``fill`` (one value per channel; 0 if None), crop a random H x W window,
    flip left-right with probability 1/2.  Random numbers from ``gen`` (a CPU generator)."""
    n, c, h, w = x.shape
    f = 0.0 if fill is None else fill.to(x.device, x.dtype).view(1, c, 1, 1)
    xp = torch.nn.functional.pad(x - f, (pad, pad, pad, pad)) + f
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
    rows = oy[:, None] + torch.arange(h, device=x.device)
    cols = ox[:, None] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    b = torch.arange(n, device=x.device)[:, None, None]
    return xp.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


# ---- certified-margin losses (given any pairwise Lipschitz bounds K) ----

def margin_logits(logits: torch.Tensor, y: torch.Tensor, K: torch.Tensor, eps: float) -> torch.Tensor:
    """Lipschitz-margin training (Tsuzuku et al. 2018) with class-pair bounds: the logit of
    every wrong class j is raised by eps * K[y, j] (K[i, j] bounds the Lipschitz constant
    of the margin f_i - f_j; K[y, y] = 0), so cross-entropy on these logits asks for
    margins that certify radius eps."""
    return logits + eps * K.to(logits.dtype)[y]


def lip_ce(logits: torch.Tensor, y: torch.Tensor, margin: float, temperature: float) -> torch.Tensor:
    """Prach et al.'s Lipschitz cross-entropy (``LipCrossEntropyLoss`` of their repository,
    reimplemented): the true class's logit lowered by ``margin``, the logits divided by
    ``temperature``, cross-entropy (mean over the batch), times ``temperature``.  For a
    1-Lipschitz network a margin of sqrt(2) eps between the true logit and every other
    certifies radius eps; they train with margin 2 sqrt(2) 36/255 = 0.3993, temperature 0.25."""
    z = logits - margin * torch.nn.functional.one_hot(y, logits.shape[1]).to(logits.dtype)
    return torch.nn.functional.cross_entropy(z / temperature, y) * temperature


def gloro_logits(logits: torch.Tensor, K: torch.Tensor, eps: float) -> torch.Tensor:
    """GloRo's logits (Leino et al. 2021): the C logits and a bottom class,
    f_bot = max_{j != j*} f_j + eps * K[j*, j] with j* the predicted class; cross-entropy
    with the true label asks that f_{j*} beat every f_j by eps * K[j*, j], i.e. that the
    prediction be certified at radius eps."""
    K = K.to(logits.dtype)
    top = logits.detach().argmax(1)
    raised = logits + eps * K[top]
    raised = raised.scatter(1, top[:, None], float("-inf"))
    return torch.cat([logits, raised.max(1, keepdim=True).values], 1)


# ---- diagnostics of a trained network (the obstructions to a tight trivial bound) ----

def singular_spread(module: nn.Module) -> list[float]:
    """sigma_max / sigma_min of each Linear layer's weight (inf if singular)."""
    out = []
    for m in module.modules():
        if isinstance(m, nn.Linear):
            s = torch.linalg.svdvals(m.weight.detach().double())
            out.append(float(s[0] / s[-1]) if s[-1] > 0 else math.inf)
    return out


def zero_derivative_fraction(module: nn.Module, input_shape, X: np.ndarray, limit: int = 512) -> float | None:
    """Fraction of (test point, hidden unit) pairs whose activation Jacobian column is zero.

    For each hidden unit i the column of the activation's Jacobian is read off blockwise:
    the activations here map unit i to one output per block of width d (K = out / in
    blocks; MaxMin permutes within pairs), so d(sum of block k)/dz_i is that column's
    k-th entry (MaxMin: its single nonzero).  None if an activation is not of that kind."""
    net = walk(module, input_shape)
    if net.opaque:   # a module the walk does not know: its inner modules are not layers of the walk
        return None
    x = torch.as_tensor(X[:limit], dtype=torch.float32)
    dead, total = 0, 0
    h = x
    children = [c for c in module.modules() if not isinstance(c, nn.Sequential)]
    by_module = {id(l.module): l for l in net.layers}
    with torch.enable_grad():
        for c in children:
            l = by_module.get(id(c))
            if isinstance(l, Activation):
                z = h.detach().requires_grad_(True)
                out = c(z)
                K = out.shape[1] // z.shape[1]
                if K * z.shape[1] != out.shape[1]:
                    return None
                sq = torch.zeros_like(z)
                for k in range(K):
                    (g,) = torch.autograd.grad(out[:, k * z.shape[1]:(k + 1) * z.shape[1]].sum(), z,
                                               retain_graph=True)
                    sq = sq + g * g
                dead += int((sq < 1e-12).sum())
                total += sq.numel()
                h = out.detach()
            else:
                with torch.no_grad():
                    h = c(h)
    return dead / total if total else None
