"""The layers the network walk reads a network into (:mod:`bench.walk`): affine maps
(:class:`Affine` and its kinds: :class:`Diagonal`, :class:`Translation`,
:class:`Scaling`, :class:`Pool`, :class:`Selection`), :class:`Activation`,
:class:`Opaque` (a module it does not know), :class:`Branch` (where the network
branches), and :class:`Net`, a walked network.  Every verifier asks these, never the
modules, what a layer is; each fact about a layer lives in its class.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from .activations import ActivationSpec
from .api import Unsupported

#: Conv layers are unrolled into dense matrices only up to this many entries (float64).
MAX_DENSE_ENTRIES = 25_000_000


class _Shaped:
    """in_dim and out_dim of a layer with ``in_shape`` and ``out_shape``."""

    @property
    def in_dim(self) -> int:
        return int(np.prod(self.in_shape))

    @property
    def out_dim(self) -> int:
        return int(np.prod(self.out_shape))


@dataclass
class Affine(_Shaped):
    """x -> W x + b on flattened vectors (a Linear or an unrolled Conv2d; the subclasses
    :class:`Diagonal` and :class:`Pool` are BatchNorm and average pooling)."""

    module: nn.Module
    in_shape: tuple
    out_shape: tuple
    index: int
    _dense: np.ndarray | None = field(default=None, repr=False)


    @property
    def is_conv(self) -> bool:
        return isinstance(self.module, nn.Conv2d)

    @property
    def has_bias(self) -> bool:
        b = getattr(self.module, "bias", None)
        return b is not None and bool(torch.any(b != 0))

    @property
    def _device(self) -> torch.device:
        for t in itertools.chain(self.module.parameters(), self.module.buffers()):
            return t.device
        return torch.device("cpu")

    def _linear_map(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the bias-free map (with ``weight`` in place of the module's, and then
        differentiable in it) to a batch of inputs shaped (n, *in_shape), in float64."""
        m = self.module
        w = (m.weight.detach() if weight is None else weight).double()
        if isinstance(m, nn.Linear):
            return x @ w.T
        return torch.nn.functional.conv2d(x, w, None, m.stride, m.padding, m.dilation, m.groups)

    def _abs_map(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """x -> |W| x on a batch shaped (n, *in_shape), float64 (W: ``weight`` or the
        module's)."""
        return self._linear_map(x, (self.module.weight.detach() if weight is None else weight).abs())

    def _check_dense(self, max_entries: int) -> None:
        n_in, n_out = self.in_dim, self.out_dim
        if n_in * n_out > max_entries:
            raise Unsupported(f"layer {self.index} ({type(self.module).__name__}) unrolls to a "
                              f"{n_out} x {n_in} matrix, above the dense limit of {max_entries:,} entries")

    def matrix(self, max_entries: int = MAX_DENSE_ENTRIES) -> np.ndarray:
        """Dense weight matrix, float64, shape (out_dim, in_dim); conv layers (and every
        map but a Linear) are unrolled: the map applied to the unit vectors."""
        if self._dense is not None:
            return self._dense
        if isinstance(self.module, nn.Linear):
            self._dense = self.module.weight.detach().double().cpu().numpy()
            return self._dense
        self._check_dense(max_entries)
        n_in = self.in_dim
        cols = []
        with torch.no_grad():
            for s in range(0, n_in, 512):
                e = torch.zeros(min(512, n_in - s), n_in, dtype=torch.float64)
                e[torch.arange(e.shape[0]), torch.arange(s, s + e.shape[0])] = 1.0
                cols.append(self._linear_map(e.view(-1, *self.in_shape).to(self._device)).reshape(e.shape[0], -1).cpu())
        self._dense = torch.cat(cols).T.contiguous().numpy()
        return self._dense

    def bias(self) -> np.ndarray | None:
        b = getattr(self.module, "bias", None)
        if b is None:
            return None
        b = b.detach().double().cpu()
        if self.is_conv:  # one bias per channel, broadcast over the spatial grid
            b = b.view(-1, 1, 1).expand(*self.out_shape)
        return b.reshape(-1).numpy()

    def abs_sums(self, axis: str, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The sums of |W| along the rows (``axis="row"``: sum_j |W_ij|, one per output)
        or the columns (``"col"``: sum_i |W_ij|, one per input), exactly, without
        unrolling a conv (which sees the boundary: |W| applied to ones, and its adjoint
        applied to ones); a flat float64 tensor.  With ``weight`` (the module's live
        weight) in place of the module's, differentiable in it: the trivial bound's
        training form at p = 1 and inf."""
        m = self.module
        if isinstance(m, nn.Linear):
            W = (m.weight.detach() if weight is None else weight).double().abs()
            return W.sum(1 if axis == "row" else 0)
        dev = self._device
        if axis == "row":
            ones = torch.ones(1, *self.in_shape, dtype=torch.float64, device=dev)
            with torch.set_grad_enabled(weight is not None and weight.requires_grad):
                return self._abs_map(ones, weight).reshape(-1)
        x = torch.zeros(1, *self.in_shape, dtype=torch.float64, device=dev, requires_grad=True)
        with torch.enable_grad():
            out = self._abs_map(x, weight)
            (g,) = torch.autograd.grad(out, x, grad_outputs=torch.ones_like(out),
                                       create_graph=weight is not None and weight.requires_grad)
        return g.reshape(-1)

    def abs_row_sums(self) -> np.ndarray:
        """sum_j |W_ij| for every output i, exactly, without unrolling a conv."""
        return self.abs_sums("row").detach().cpu().numpy()

    def abs_col_sums(self) -> np.ndarray:
        """sum_i |W_ij| for every input j, exactly, without unrolling a conv."""
        return self.abs_sums("col").detach().cpu().numpy()


@dataclass
class Diagonal(Affine):
    """A BatchNorm in eval mode: x -> s * x + t coordinate by coordinate, with one
    (s, t) per channel (the first axis of ``in_shape``), s = gamma / sqrt(running_var +
    eps) and t = beta - running_mean * s, in float64.  Its matrix is diag(s), whose
    operator norm is max_i |s_i| for every p (each coordinate is scaled on its own)."""

    @property
    def is_conv(self) -> bool:
        return False

    def channel_scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(s, t) per channel, float64 tensors on the module's device."""
        m = self.module
        mean, var = m.running_mean.detach().double(), m.running_var.detach().double()
        w = m.weight.detach().double() if m.weight is not None else torch.ones_like(var)
        b = m.bias.detach().double() if m.bias is not None else torch.zeros_like(var)
        s = w / torch.sqrt(var + m.eps)
        return s, b - mean * s

    def _per_coordinate(self, v: torch.Tensor) -> torch.Tensor:
        return v.view(-1, *([1] * (len(self.in_shape) - 1))).expand(*self.in_shape)

    def scale(self) -> np.ndarray:
        """s for every coordinate of the flattened input, float64."""
        return self._per_coordinate(self.channel_scale_shift()[0]).reshape(-1).cpu().numpy()

    @property
    def has_bias(self) -> bool:
        return bool(torch.any(self.channel_scale_shift()[1] != 0))

    def _linear_map(self, x, weight=None):
        s = self.channel_scale_shift()[0] if weight is None else weight
        return x * self._per_coordinate(s)

    def _abs_map(self, x, weight=None):
        return self._linear_map(x, self.channel_scale_shift()[0].abs())

    def matrix(self, max_entries: int = MAX_DENSE_ENTRIES) -> np.ndarray:
        if self._dense is None:
            self._check_dense(max_entries)
            self._dense = np.diag(self.scale())
        return self._dense

    def bias(self) -> np.ndarray:
        return self._per_coordinate(self.channel_scale_shift()[1]).reshape(-1).cpu().numpy()

    def abs_row_sums(self) -> np.ndarray:
        return np.abs(self.scale())

    def abs_col_sums(self) -> np.ndarray:
        return np.abs(self.scale())


@dataclass
class Translation(Diagonal):
    """A :class:`Shift`: x -> x + t, t per channel; a :class:`Diagonal` with s = 1."""

    def channel_scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.module.shift.detach().double()
        return torch.ones_like(t), t


@dataclass
class Scaling(Diagonal):
    """A :class:`~bench.modules.Pointwise`: x -> s * x + t with one (s, t) per coordinate
    (a :class:`Diagonal` whose scale and shift are given for every coordinate, not per
    channel); its norm is max_i |s_i| for every p."""

    def channel_scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.module
        return m.scale.detach().double().reshape(-1), m.shift.detach().double().reshape(-1)

    def _per_coordinate(self, v: torch.Tensor) -> torch.Tensor:
        return v.reshape(self.in_shape)


@dataclass
class Pool(Affine):
    """Average pooling (AvgPool1d/2d, AdaptiveAvgPool1d/2d), and the selections
    (:class:`Selection`): a linear map without bias whose matrix has entries >= 0 (each
    output is a weighted mean of its window), so
    |W| = W and its row and column sums are the map applied to ones and its adjoint
    applied to ones: exact without unrolling.  The module's own forward is the map
    (stride, padding, ceil_mode, count_include_pad, divisor_override included)."""

    @property
    def is_conv(self) -> bool:
        return False

    @property
    def has_bias(self) -> bool:
        return False

    def _linear_map(self, x, weight=None):
        if weight is not None:
            raise ValueError("a pooling layer has no weight to replace")
        return self.module(x)

    def _abs_map(self, x, weight=None):
        return self.module(x)

    def bias(self) -> None:
        return None


@dataclass
class Selection(Pool):
    """A linear map whose matrix has entries 0 and 1, at most one 1 in each row and in
    each column (a partial permutation: output i is input ``source[i]``, or 0 where
    ``source[i] = -1``): PixelShuffle, PixelUnshuffle, ChannelShuffle (permutations),
    :class:`FirstChannels` (a selection), :class:`ZeroChannelPad` (an embedding).  Its
    operator norm is 1 for every p (0 if it selects nothing): ||W x||_p^p sums |x_j|^p
    over the selected j.  The walk reads ``source`` from the module itself, on the input
    1, 2, ..., n (float64, exact up to 2^53), and checks there that the module is such a
    map (distinct whole numbers or 0, and 0 on the input 0); the matrix and the row and
    column sums come from ``source`` without running the module again."""

    source: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        n = self.in_dim
        with torch.no_grad():
            x = torch.arange(1, n + 1, dtype=torch.float64, device=self._device).reshape(1, *self.in_shape)
            y = self.module(x).reshape(-1).cpu().numpy()
            y0 = self.module(torch.zeros_like(x)).reshape(-1).cpu().numpy()
        nz = y[y != 0]
        name = type(self.module).__name__
        if (np.any(y0 != 0) or np.any(nz != np.round(nz)) or np.any(nz < 1) or np.any(nz > n)
                or len(np.unique(nz)) != len(nz)):
            raise Unsupported(f"layer {self.index} ({name}) is not a selection of its inputs (a partial permutation)")
        self.source = np.where(y != 0, y - 1, -1).astype(np.int64)

    def matrix(self, max_entries: int = MAX_DENSE_ENTRIES) -> np.ndarray:
        if self._dense is None:
            self._check_dense(max_entries)
            W = np.zeros((self.out_dim, self.in_dim))
            rows = np.flatnonzero(self.source >= 0)
            W[rows, self.source[rows]] = 1.0
            self._dense = W
        return self._dense

    def abs_row_sums(self) -> np.ndarray:
        return (self.source >= 0).astype(np.float64)

    def abs_col_sums(self) -> np.ndarray:
        return np.bincount(self.source[self.source >= 0], minlength=self.in_dim).astype(np.float64)


@dataclass
class Activation:
    """A (poly)activation.  ``slope`` is (lo, hi) for an elementwise map whose derivative
    lies in [lo, hi]; ``lipschitz`` maps each p to the activation's Lipschitz constant
    (an upper bound) from the p-norm to the p-norm; ``saturates`` the p for which its
    Jacobian has operator norm 1.  The walk reads them, checked, from ``spec``, the
    module's description (:class:`bench.activations.ActivationSpec`), which also gives
    its piecewise-linear form, interval image and smooth surrogate."""

    module: nn.Module
    name: str
    in_dim: int
    out_dim: int
    index: int
    slope: tuple[float, float] | None
    lipschitz: dict[float, float]
    saturates: tuple[float, ...] = ()
    spec: ActivationSpec | None = field(default=None, repr=False)

    @property
    def elementwise(self) -> bool:
        return self.slope is not None and self.in_dim == self.out_dim


@dataclass
class Opaque(_Shaped):
    """A module the walk does not know (a user's own module, Softmax, LayerNorm, ...):
    recorded with its class name and shapes (found by running a copy of it on a zero
    input), so that a verifier that needs nothing but the network's forward pass and
    gradients (``Verifier.gradients_only``: ``lower``) can still bound the network.
    Every other verifier refuses it, naming the layer, in one place:
    :meth:`bench.api.Verifier.supports`."""

    module: nn.Module
    name: str
    in_shape: tuple
    out_shape: tuple
    index: int | str
    why: str = ""
    opaque: ClassVar[bool] = True



@dataclass
class Branch(_Shaped):
    """Where the network branches (a :class:`~bench.modules.Sum`: sum_i w_i f_i(x), a
    residual add; or a :class:`~bench.modules.Concat`: the f_i(x) one after the other):
    ``branches`` holds each f_i as the walk's list of layers (the empty list is the
    identity; a branch may branch again).  A layer inside a branch has the index
    ``"i.b.k"``: layer k of branch b of the layer i."""

    module: nn.Module
    kind: str   # "sum" or "concat"
    branches: list
    weights: tuple
    in_shape: tuple
    out_shape: tuple
    index: int | str

    @property
    def name(self) -> str:
        what = "residual add" if self.kind == "sum" and any(not b for b in self.branches) else self.kind
        return f"{type(self.module).__name__} of {len(self.branches)} branches ({what})"


def all_layers(layers: list):
    """Every layer of a walked list, the layers inside branches included (depth first)."""
    for l in layers:
        yield l
        if isinstance(l, Branch):
            for b in l.branches:
                yield from all_layers(b)


@dataclass
class Net:
    """A walked network: the module, its input shape, and its layers."""

    module: nn.Module
    input_shape: tuple
    layers: list

    @property
    def in_dim(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def out_dim(self) -> int:
        return self.layers[-1].out_dim if self.layers else self.in_dim

    @property
    def affines(self) -> list[Affine]:
        """Every affine layer, those inside branches included."""
        return [l for l in all_layers(self.layers) if isinstance(l, Affine)]

    @property
    def activations(self) -> list[Activation]:
        """Every activation, those inside branches included."""
        return [l for l in all_layers(self.layers) if isinstance(l, Activation)]

    @property
    def opaque(self) -> list[Opaque]:
        return [l for l in all_layers(self.layers) if isinstance(l, Opaque)]

    @property
    def branching(self) -> list[Branch]:
        """The layers where the network branches (top level), empty for a chain."""
        return [l for l in self.layers if isinstance(l, Branch)]

    def hash(self) -> str:
        from .netfile import net_hash
        return net_hash(self.module)

    def describe(self) -> str:
        return _describe(self.layers)


def _describe(layers: list) -> str:
    parts = []
    for l in layers:
        if isinstance(l, (Affine, Opaque)):
            parts.append(f"{type(l.module).__name__}({l.in_dim}->{l.out_dim})")
        elif isinstance(l, Branch):
            inner = [_describe(b) or "identity" for b in l.branches]
            parts.append(f"{l.kind}[{' | '.join(inner)}]")
        else:
            parts.append(l.name)
    return " ".join(parts)
