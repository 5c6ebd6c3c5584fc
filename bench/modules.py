"""lipbench's own parameter-free modules: what a network read from elsewhere (a traced
module, an ONNX file) or built by lipbench holds besides torch's layers.

Each is a plain ``nn.Module`` (saved, hashed and run like any other); the network walk
(:mod:`bench.network`) says what layer each one is.

=========================  ===============================================================
module                     function
=========================  ===============================================================
:class:`Shift`             x + t, one t per channel (a centring)
:class:`Pointwise`         s * x + t, one (s, t) per coordinate (ONNX's Add / Sub / Mul /
                           Div by a constant, a normalisation)
:class:`FirstChannels`     the first c channels (a selection)
:class:`ZeroChannelPad`    zero channels appended (an isometric embedding)
:class:`Permute`           the per-sample axes permuted (ONNX's Transpose, NHWC -> NCHW)
:class:`Reshape`           the per-sample shape changed, the C-order coordinates kept
:class:`Sum`               sum_i w_i f_i(x), each f_i a branch (an ``nn.Sequential``, the
                           empty one the identity): a residual add x + f(x)
:class:`Concat`            (f_1(x), ..., f_k(x)) along the channels
=========================  ===============================================================
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Shift(nn.Module):
    """x -> x + shift, one number per channel (dimension 1: an image's channels, a
    vector's features): a translation, Lipschitz constant 1 for every p.  A network
    trained on centred data (x - mean) starts with Shift(-mean), so that it reads raw
    inputs (and a radius eps stays in the data's own units)."""

    def __init__(self, shift):
        super().__init__()
        self.register_buffer("shift", torch.as_tensor(np.asarray(shift, dtype=np.float32)).reshape(-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.shift.numel():
            raise ValueError(f"Shift of {self.shift.numel()} channels on an input with {x.shape[1]}")
        return x + self.shift.to(x.dtype).view(-1, *([1] * (x.dim() - 2)))


class Pointwise(nn.Module):
    """x -> scale * x + shift with one (scale, shift) per coordinate of one input
    (both of the per-sample shape; ``scale`` None is 1, ``shift`` None is 0): the
    constants an ONNX file adds, subtracts, multiplies or divides by (ERAN's (x - mean) /
    std, ACAS Xu's input offset), broadcast to the input's shape where read."""

    def __init__(self, shape, scale=None, shift=None):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

        def full(v, default):
            t = torch.full(self.shape, default, dtype=torch.float64) if v is None else \
                torch.as_tensor(np.array(v, dtype=np.float64)).expand(self.shape).clone()
            return t
        self.register_buffer("scale", full(scale, 1.0))
        self.register_buffer("shift", full(shift, 0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.to(x.dtype) + self.shift.to(x.dtype)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class FirstChannels(nn.Module):
    """x -> its first ``channels`` channels (dimension 1: the channels of an image, the
    features of a vector): a selection of coordinates, whose matrix has one 1 in each row
    and at most one in each column, so its operator norm is 1 for every p.  ConvNetM
    (Prach et al. 2024) halves the channels with it before each PixelUnshuffle and keeps
    the first ``n_classes`` outputs of its head with it."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = int(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] < self.channels:
            raise ValueError(f"FirstChannels({self.channels}) of an input with {x.shape[1]} channels")
        return x[:, :self.channels]

    def extra_repr(self) -> str:
        return str(self.channels)


class ZeroChannelPad(nn.Module):
    """x -> x followed by zero channels, ``channels`` in all (dimension 1): an isometric
    embedding (one 1 in each column, at most one in each row; ||W x||_p = ||x||_p), norm 1
    for every p.  ConvNetM's first layer, widening the image to its base width."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = int(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.channels - x.shape[1]
        if pad < 0:
            raise ValueError(f"ZeroChannelPad({self.channels}) of an input with {x.shape[1]} channels")
        return torch.cat([x, x.new_zeros(x.shape[0], pad, *x.shape[2:])], 1)

    def extra_repr(self) -> str:
        return str(self.channels)


class Permute(nn.Module):
    """x -> x with its per-sample axes permuted: ``perm`` lists, for each output axis
    after the batch, the input axis (counted from 1, as in ONNX's Transpose with
    perm[0] = 0).  A permutation of the coordinates: norm 1 for every p."""

    def __init__(self, perm):
        super().__init__()
        self.perm = tuple(int(a) for a in perm)
        if sorted(self.perm) != list(range(1, len(self.perm) + 1)):
            raise ValueError(f"Permute: {self.perm} is not a permutation of the axes 1..{len(self.perm)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, *self.perm)

    def extra_repr(self) -> str:
        return str(self.perm)


class Reshape(nn.Module):
    """x -> x reshaped to ``shape`` per sample (the batch dimension kept): the C-order
    coordinates, hence the function on flattened inputs, are unchanged."""

    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # no shape arithmetic (x.shape[0]): tracers (auto_LiRPA's, ONNX export) see a plain reshape
        return torch.flatten(x, 1) if len(self.shape) == 1 else x.reshape(-1, *self.shape)

    def extra_repr(self) -> str:
        return str(self.shape)


class Sum(nn.Module):
    """x -> sum_i weights[i] * branches[i](x): each branch an ``nn.Sequential`` (the empty
    one is the identity), all of the same output shape.  ``Sum(nn.Sequential(), f)`` is a
    residual block x + f(x); its Lipschitz constant is at most sum_i |w_i| Lip(f_i)."""

    def __init__(self, *branches: nn.Module, weights=None):
        super().__init__()
        if len(branches) < 2:
            raise ValueError("a Sum needs at least two branches")
        self.branches = nn.ModuleList(b if isinstance(b, nn.Sequential) else nn.Sequential(b) for b in branches)
        w = [1.0] * len(branches) if weights is None else [float(v) for v in weights]
        if len(w) != len(branches):
            raise ValueError(f"a Sum of {len(branches)} branches with {len(w)} weights")
        self.weights = tuple(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        for w, b in zip(self.weights, self.branches):
            y = b(x)
            y = y if w == 1.0 else w * y
            out = y if out is None else out + y
        return out

    def extra_repr(self) -> str:
        return "" if all(w == 1.0 for w in self.weights) else f"weights={self.weights}"


class Concat(nn.Module):
    """x -> (branches[0](x), branches[1](x), ...) concatenated along dimension 1 (the
    channels, or the features of a vector): on flattened outputs, the branches' outputs
    one after the other."""

    def __init__(self, *branches: nn.Module):
        super().__init__()
        if len(branches) < 2:
            raise ValueError("a Concat needs at least two branches")
        self.branches = nn.ModuleList(b if isinstance(b, nn.Sequential) else nn.Sequential(b) for b in branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], 1)


#: the modules that branch: the walk reads each as a :class:`bench.network.Branch`
BRANCHING = (Sum, Concat)
