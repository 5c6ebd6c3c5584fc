"""Norm-saturating polyactivations and the bias-free sinusoidal layer.

Each module is described, next to it, by one :class:`bench.activations.ActivationSpec`
(``AbsSpec`` for ``Abs``, ...; the fields are documented there): ``lipschitz`` (its
Lipschitz constant from the p-norm to the p-norm, for each p), ``saturates`` (the p for
which the operator norm of its Jacobian equals 1 at every point where it is
differentiable: the Jacobian lies on the boundary of the unit operator-norm ball, so the
activation never shrinks the trivial bound's product), ``slope`` for elementwise
slope-restricted maps, ``out_factor`` (output width / input width), and where they exist
the piecewise-linear form ``pwl`` (for ``bab`` and ``mip``), the exact interval image
``interval`` and the smooth surrogate ``smooth`` (for the lower bound's search).

- :class:`Abs`: ``|x|``; Jacobian diag(+-1), a signed identity: saturates p = 1, 2, inf.
- :class:`CReLU`: ``x -> (relu(x), relu(-x))`` (width doubles).  Each input coordinate
  lands in exactly one output coordinate with slope +-1, so ``||J v||_p = ||v||_p`` for
  every p; the Jacobian is an extreme point of the unit ball for p in [1, inf)
  (columns are signed unit vectors / it is an isometry), and for p = inf it has norm 1 but
  zero rows, so it is declared saturating for p in {1, 2} (as DESIGN.md reads the paper).
- :class:`SinSplit`: ``x -> ((x + sin x)/2, (x - sin x)/2)`` (width doubles).  The column
  of unit i is ((1 + cos x)/2, (1 - cos x)/2) >= 0, whose l1 norm is exactly 1:
  saturates p = 1; Lipschitz 1 for p = 2 and inf too (column l2 norm <= 1, rows have
  one entry <= 1), not saturating there.
- :class:`MaxMin` (GroupSort with groups of 2): sorts each pair (x_2k, x_2k+1) into
  (max, min); the Jacobian is a permutation: saturates every p (needs an even width).
- :class:`SinCos`: ``z -> (sin z, cos z)`` (width doubles).  After a bias-free Linear W this
  is the sinusoidal layer ``h -> (sin(W h), cos(W h))``: each unit's Jacobian column
  (cos z, -sin z) is a unit l2 vector, so ``||J v||_2 = ||v||_2``: saturates p = 2 and the
  layer's exact l2 constant is ||W||_2.  For p = inf its rows have one entry |cos| or
  |sin| <= 1 with equality at z = 0 (h = 0), so the layer's exact l_inf constant is
  ||W||_inf.  For p = 1 the column l1 norm |cos z| + |sin z| lies in [1, sqrt 2], so the
  layer's constant lies in [||W||_1, sqrt 2 ||W||_1]; the walk reports sqrt 2 (sound, and
  not exact in general).  A bias would only rotate each (sin, cos) pair, which the next
  layer can absorb, so the layer has none (``bias: false`` in the architecture).

Conv form: every module acts on dim 1 of its batch, the features of a vector and the
channels of an image (N, C, H, W): Abs coordinatewise, CReLU / SinSplit / SinCos
concatenate along the channels (the width doubles as the channels do), MaxMin pairs
channels 2k and 2k + 1 at every pixel (needs an even number of channels).  Each
constant above holds unchanged, since each argument is about how each input coordinate
moves its own output coordinates, whatever their layout.  The descriptions work on
flattened inputs; MaxMin reads its pairs through the walk's input shape
(:func:`bench.activations.channel_pairs`).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from bench.activations import ActivationSpec, channel_pairs, register_activation

INF = math.inf
SQRT2_UP = math.nextafter(math.sqrt(2.0), INF)  # a float >= sqrt 2


class Abs(nn.Module):
    def forward(self, x):
        return x.abs()


@register_activation
class AbsSpec(ActivationSpec):
    name = "abs"
    module_class = Abs
    slope = (-1.0, 1.0)
    lipschitz = {1: 1.0, 2: 1.0, INF: 1.0}
    saturates = (1, 2, INF)

    def pwl(self, in_dim):   # |z| = -z + 2 relu(z)
        I = np.eye(in_dim)
        return -I, 2.0 * I, I

    def interval(self, l, u):
        hi = torch.maximum(l.abs(), u.abs())
        lo = torch.where((l < 0) & (u > 0), torch.zeros_like(l), torch.minimum(l.abs(), u.abs()))
        return lo, hi

    def smooth(self, beta):
        return _SmoothAbs(beta)


class _SmoothAbs(nn.Module):
    def __init__(self, beta):
        super().__init__()
        self.beta = beta

    def forward(self, x):
        return torch.sqrt(x * x + 1.0 / self.beta ** 2)


class CReLU(nn.Module):
    def forward(self, x):
        return torch.cat([torch.relu(x), torch.relu(-x)], dim=1)


@register_activation
class CReLUSpec(ActivationSpec):
    name = "crelu"
    module_class = CReLU
    lipschitz = {1: 1.0, 2: 1.0, INF: 1.0}
    saturates = (1, 2)
    out_factor = 2

    def pwl(self, in_dim):   # [relu(z), relu(-z)] = [relu(z), relu(z) - z]
        d, I = in_dim, np.eye(in_dim)
        return np.vstack([np.zeros((d, d)), -I]), np.vstack([I, I]), I

    def interval(self, l, u):
        return torch.cat([torch.relu(l), torch.relu(-u)], 1), torch.cat([torch.relu(u), torch.relu(-l)], 1)

    def smooth(self, beta):
        return _SmoothCReLU(beta)


class _SmoothCReLU(nn.Module):
    def __init__(self, beta):
        super().__init__()
        self.sp = nn.Softplus(beta=beta)

    def forward(self, x):
        return torch.cat([self.sp(x), self.sp(-x)], dim=1)


class SinSplit(nn.Module):
    def forward(self, x):
        s = torch.sin(x)
        return torch.cat([(x + s) / 2, (x - s) / 2], dim=1)


@register_activation
class SinSplitSpec(ActivationSpec):
    name = "sinsplit"
    module_class = SinSplit
    lipschitz = {1: 1.0, 2: 1.0, INF: 1.0}
    saturates = (1,)
    out_factor = 2


class MaxMin(nn.Module):
    def forward(self, x):
        if x.shape[1] % 2:
            raise ValueError(f"MaxMin needs an even width (dim 1: features or channels), got {x.shape[1]}")
        a, b = x[:, 0::2], x[:, 1::2]
        out = torch.stack([torch.maximum(a, b), torch.minimum(a, b)], dim=2)
        return out.reshape(x.shape)


@register_activation
class MaxMinSpec(ActivationSpec):
    name = "maxmin"
    module_class = MaxMin
    lipschitz = {1: 1.0, 2: 1.0, INF: 1.0}
    saturates = (1, 2, INF)

    def pwl(self, in_dim):   # (max, min) of pairs (a, b): max = b + relu(a - b), min = a - relu(a - b)
        a, b = channel_pairs(self.in_shape, in_dim)
        k = np.arange(len(a))
        A = np.zeros((len(a), in_dim))
        A[k, a], A[k, b] = 1.0, -1.0
        P = np.zeros((in_dim, in_dim))
        P[a, b], P[b, a] = 1.0, 1.0
        Q = np.zeros((in_dim, len(a)))
        Q[a, k], Q[b, k] = 1.0, -1.0
        return P, Q, A

    def interval(self, l, u):   # max and min are monotone in each argument
        a, b = (torch.as_tensor(i, device=l.device) for i in channel_pairs(self.in_shape, l.shape[1]))
        lo, hi = l.clone(), u.clone()
        lo[:, a], lo[:, b] = torch.maximum(l[:, a], l[:, b]), torch.minimum(l[:, a], l[:, b])
        hi[:, a], hi[:, b] = torch.maximum(u[:, a], u[:, b]), torch.minimum(u[:, a], u[:, b])
        return lo, hi

    def smooth(self, beta):
        return _SmoothMaxMin(beta)


class _SmoothMaxMin(nn.Module):
    def __init__(self, beta):
        super().__init__()
        self.beta = beta

    def forward(self, x):
        a, b = x[:, 0::2], x[:, 1::2]
        d = torch.sqrt((a - b) ** 2 + 1.0 / self.beta ** 2)
        out = torch.stack([(a + b + d) / 2, (a + b - d) / 2], dim=2)
        return out.reshape(x.shape)


class SinCos(nn.Module):
    def forward(self, x):
        return torch.cat([torch.sin(x), torch.cos(x)], dim=1)


@register_activation
class SinCosSpec(ActivationSpec):
    name = "sincos"
    module_class = SinCos
    lipschitz = {1: SQRT2_UP, 2: 1.0, INF: 1.0}
    saturates = (2,)
    out_factor = 2
