"""A network's identity and files: its content hash, its size, saving and loading it, and
reading weight matrices kept as ``.npz`` (other projects' networks)."""
from __future__ import annotations

import copy
import hashlib
import os
import tempfile

import numpy as np
import torch
from torch import nn

from .api import UserError


def net_hash(module: nn.Module) -> str:
    """Content hash: structure (module reprs) and every parameter and buffer, bitwise."""
    h = hashlib.sha256()
    h.update(repr(module).encode())
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def parameter_count(module: nn.Module) -> int:
    """The network's size: how many numbers its trainable parameters hold (a buffer, such
    as a BatchNorm's running statistics, is not counted)."""
    return int(sum(t.numel() for t in module.parameters()))


def save(module: nn.Module, input_shape: tuple, path: str) -> None:
    """Save a network atomically (write to a temporary file, then rename)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
    os.close(fd)
    try:
        torch.save({"format": 1, "module": copy.deepcopy(module).cpu(), "input_shape": tuple(input_shape)}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(path: str) -> tuple[nn.Module, tuple]:
    """Load a network saved by :func:`save`: (module in eval mode, input_shape)."""
    obj = torch.load(path, map_location="cpu", weights_only=False)
    return obj["module"].eval(), tuple(obj["input_shape"])


def from_npz(path: str, activation=nn.ReLU) -> nn.Sequential:
    """A float64 MLP from an npz of weights ``W0, b0, W1, b1, ...`` (torch convention,
    out x in), ``activation`` between layers and none after the last: the format in which
    networks of other projects (e.g. LipBaB's) are kept for checks."""
    z = np.load(path)
    layers, k = [], 0
    while f"W{k}" in z:
        W, b = z[f"W{k}"], z[f"b{k}"] if f"b{k}" in z else None
        lin = nn.Linear(W.shape[1], W.shape[0], bias=b is not None).double()
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.asarray(W, dtype=np.float64)))
            if b is not None:
                lin.bias.copy_(torch.from_numpy(np.asarray(b, dtype=np.float64)))
        layers += [lin, activation()]
        k += 1
    if not layers:
        raise UserError(f"{path}: no weight matrix W0 in it")
    return nn.Sequential(*layers[:-1])
