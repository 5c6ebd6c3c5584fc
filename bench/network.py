"""Canonical feed-forward networks.

A network is a torch ``nn.Sequential``.  :func:`walk` turns it into a list of layers, so
that every verifier asks one place what a layer is:

===================================  =====================================================
module                               layer
===================================  =====================================================
Linear, Conv2d (zero padding)        :class:`Affine` (W x + b; a conv unrolled on demand)
BatchNorm1d/2d/3d in eval mode       :class:`Diagonal`, an Affine: x -> s * x + t per
                                     coordinate, s = gamma / sqrt(running_var + eps),
                                     t = beta - running_mean * s
AvgPool1d/2d, AdaptiveAvgPool1d/2d   :class:`Pool`, an Affine without bias whose matrix has
                                     entries >= 0
lipbench's :class:`Shift`            :class:`Translation`, a Diagonal with scale 1:
                                     x -> x + t per channel (a centering), norm 1
PixelShuffle, PixelUnshuffle,        :class:`Selection`, a Pool whose matrix has at most one
ChannelShuffle, :class:`FirstChannels`, 1 in each row and column (a partial permutation):
:class:`ZeroChannelPad`              norm 1 for every p
MaxPool2d, AdaptiveMaxPool2d         an :class:`Activation` (piecewise linear, not
                                     elementwise; :class:`bench.activations.MaxPool2dSpec`)
a registered activation              an :class:`Activation` (its description:
                                     :mod:`bench.activations`)
Flatten, Unflatten, Identity,        nothing (they do not change the function)
Dropout
anything else (a user's module,      :class:`Opaque`: only verifiers that need nothing
Softmax, LayerNorm, ...)             but gradients (``lower``) accept it
===================================  =====================================================

BatchNorm is a layer of its own, not folded into a neighbouring Linear or Conv2d.
Folding into the layer before it is exact only when there is one (not after an
activation, nor first), and folding into the layer after it is wrong for a padded conv
(the padding would carry the shift); so one rule, a diagonal affine map of its own,
holds everywhere.  Every verifier then reads it through the same Affine interface
(``matrix``, ``bias``, ``abs_row_sums``, ``abs_col_sums``): the exact verifiers
(``pwl``) and the SDP verifiers (``sdp_common.chain``) compose consecutive affine maps
exactly, and the trivial bound multiplies its exact norm max_i |s_i| (the same for every
p), which is sound, if looser than the norm of a folded layer.

A BatchNorm in training mode (or without running statistics) normalises with the
batch's own statistics: its output depends on the other inputs in the batch, so it is
:class:`bench.api.Unsupported` with that reason.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import os
import tempfile
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from . import activations
from .modules import BRANCHING, Concat, FirstChannels, Permute, Pointwise, Reshape, Shift, Sum, ZeroChannelPad  # noqa: F401
from .registry import get_activation
from .activations import ActivationSpec
from .api import NORMS, Unsupported, UserError

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


#: BatchNorm modules (eval mode, running statistics): :class:`Diagonal`
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: average pooling modules: :class:`Pool`
AVGPOOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
#: modules that select, permute or zero-pad their inputs: :class:`Selection`
SELECTIONS = (nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle, FirstChannels, ZeroChannelPad, Permute,
              nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d)
#: max pooling modules: an :class:`Activation` described by :class:`bench.activations.MaxPool2dSpec`
MAXPOOLS = (nn.MaxPool2d, nn.AdaptiveMaxPool2d)


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


_PASS_THROUGH = (nn.Flatten, nn.Identity, nn.Dropout, nn.Unflatten, Reshape)


def flat_children(module: nn.Module) -> list[nn.Module]:
    """The modules the walk reads, in order: nested ``nn.Sequential`` s flattened (a
    layer's ``index`` is its position here)."""
    if isinstance(module, nn.Sequential):
        out = []
        for c in module:
            out.extend(flat_children(c))
        return out
    return [module]


@dataclass
class Net:
    """A walked network: the module, its input shape, and its layers."""

    module: nn.Sequential
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
        return [l for l in self.layers if isinstance(l, Affine)]

    @property
    def activations(self) -> list[Activation]:
        return [l for l in self.layers if isinstance(l, Activation)]

    @property
    def opaque(self) -> list[Opaque]:
        return [l for l in all_layers(self.layers) if isinstance(l, Opaque)]

    @property
    def branching(self) -> list[Branch]:
        """The layers where the network branches (top level), empty for a chain."""
        return [l for l in self.layers if isinstance(l, Branch)]

    def hash(self) -> str:
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


def _input_shape_error(first: nn.Module) -> UserError:
    name = type(first).__name__
    return UserError(f"the input shape cannot be inferred from the first layer, {name} (only a network that "
                     f"starts with Linear gives it: (in_features,)); give the shape of one input, without the "
                     f"batch dimension: input_shape=(C, H, W) or (n,) in bench.verify / bench.lower_bound "
                     f"(network.walk(net, input_shape) in code)")


def _run(m: nn.Module, x: torch.Tensor, i: int, in_shape: tuple) -> torch.Tensor:
    """m(x) in the dtype of m's parameters (or x's); a module that rejects the input
    shape is the caller's error."""
    t = next(itertools.chain(m.parameters(), (b for b in m.buffers() if b.is_floating_point())), None)
    try:
        y = m(x.to(t.dtype) if t is not None else x)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise UserError(f"layer {i} ({type(m).__name__}) does not accept input of shape "
                        f"{in_shape}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(y, torch.Tensor):
        raise Unsupported(f"layer {i} ({type(m).__name__}) returns a {type(y).__name__}, not a tensor")
    return y


def _batchnorm_reason(m: nn.Module) -> str | None:
    """Why a BatchNorm is no fixed affine map (None if it is one: eval mode, running
    statistics)."""
    if m.training:
        return ("is in training mode: it normalises with the statistics of the batch, so its output depends "
                "on the other inputs; call net.eval() to use its running statistics")
    if m.running_mean is None or m.running_var is None:
        return ("has no running statistics (track_running_stats=False): it normalises with the statistics of "
                "the batch even in eval mode, so its output depends on the other inputs")
    return None


def walk(module: nn.Module, input_shape: tuple | None = None) -> Net:
    """Walk ``module`` into its layers (see the module doc): an ``nn.Sequential`` (nested
    ones flattened) of the modules in :data:`READERS`, registered activations and
    lipbench's branching modules (:class:`~bench.modules.Sum`, ``Concat``: a
    :class:`Branch` whose branches are walked the same way); any other module whose
    forward is code is traced (:func:`bench.graph.from_traced`) and its layers read in
    its place, or, where that fails, recorded as :class:`Opaque`.  ``Net.module`` is
    the module itself, or, where something was traced, the ``nn.Sequential`` of what
    was read (sharing its layers).

    ``input_shape`` (without the batch dimension) is needed unless the first layer is a
    Linear, whose input shape is (in_features,).  Raises :class:`Unsupported` naming the
    first layer that has no sound reading (a BatchNorm in training mode, a parametrized
    weight, ...)."""
    if not isinstance(module, nn.Module):
        raise UserError(f"expected a torch nn.Module, got {type(module).__name__}")
    if input_shape is None:
        input_shape = _infer_input_shape(module)
    input_shape = tuple(int(s) for s in input_shape)
    try:
        dev = next(module.parameters()).device
    except StopIteration:
        dev = torch.device("cpu")
    # propagate shapes with a zero input, checking each layer
    x = torch.zeros(1, *input_shape, device=dev)
    with torch.no_grad():
        layers, canon, _ = _walk_chain(flat_children(module), x, "")
    if not any(isinstance(l, (Affine, Opaque)) for l in all_layers(layers)):
        raise Unsupported("the network has no Linear or Conv2d layer")
    return Net(module if canon is None else nn.Sequential(*canon), input_shape, layers)


def _infer_input_shape(module: nn.Module) -> tuple:
    """(in_features,) of a network whose first layer (traced, for a module of code) is
    a Linear; else the error that asks for ``input_shape``."""
    from .graph import Tracer, copy_module, is_leaf
    first = next((c for c in flat_children(module) if not isinstance(c, _PASS_THROUGH)), None)
    if first is None:
        raise Unsupported("the network has no layers")
    if not isinstance(first, nn.Linear) and not is_leaf(first):
        try:
            graph = Tracer().trace(copy_module(first))
            node = next((n for n in graph.nodes if n.op == "call_module"), None)
            inner = first.get_submodule(node.target) if node is not None else None
        except Exception:
            inner = None
        if isinstance(inner, nn.Linear):
            return (inner.in_features,)
    if isinstance(first, nn.Linear):
        return (first.in_features,)
    raise _input_shape_error(first)


def _walk_chain(children: list, x: torch.Tensor, prefix: str):
    """(layers, canonical children or None where they are ``children`` themselves, the
    output on ``x``) of a chain of modules; a layer's index is its position in the
    canonical children, after ``prefix``."""
    layers: list = []
    canon: list = []
    changed = False
    for m in children:
        pos = len(canon)
        index = pos if not prefix else f"{prefix}{pos}"
        in_shape = tuple(x.shape[1:])
        layer, x, read = _read(m, x, index, in_shape)
        if read is not None:   # traced: its layers in its place
            sub_layers, sub_canon, x = _walk_chain(flat_children(read), x, prefix)
            offset = len(canon)
            for l in sub_layers:
                _shift_index(l, offset, prefix)
            layers.extend(sub_layers)
            canon.extend(sub_canon if sub_canon is not None else flat_children(read))
            changed = True
            continue
        if isinstance(layer, Branch) and layer.module is not m:
            changed = True
        canon.append(layer.module if isinstance(layer, Branch) else m)
        if layer is not None:
            layers.append(layer)
    return layers, (canon if changed else None), x


def _shift_index(layer, offset: int, prefix: str) -> None:
    """Renumber a layer read from a traced module (indexed from 0) to its place."""
    if isinstance(layer.index, int):
        layer.index += offset
    else:
        head, _, rest = layer.index[len(prefix):].partition(".")
        layer.index = f"{prefix}{int(head) + offset}" + (f".{rest}" if rest else "")
    if isinstance(layer, Branch):
        for b in layer.branches:
            for l in all_layers(b):
                if isinstance(l.index, str) and l.index.startswith(prefix):
                    head, _, rest = l.index[len(prefix):].partition(".")
                    l.index = f"{prefix}{int(head) + offset}.{rest}"


def _affine(m, x, i, in_shape):
    if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
        raise Unsupported(f"layer {i} (Conv2d): padding_mode {m.padding_mode!r} is not supported")
    y = _run(m, x, i, in_shape)
    return Affine(m, in_shape, tuple(y.shape[1:]), i), y


def _batchnorm(m, x, i, in_shape):
    reason = _batchnorm_reason(m)
    if reason:
        raise Unsupported(f"layer {i} ({type(m).__name__}) {reason}")
    y = _run(m, x, i, in_shape)
    return Diagonal(m, in_shape, tuple(y.shape[1:]), i), y


def _of(cls):
    def read(m, x, i, in_shape):
        y = _run(m, x, i, in_shape)
        return cls(m, in_shape, tuple(y.shape[1:]), i), y
    return read


def _pointwise(m, x, i, in_shape):
    if tuple(m.shape) != tuple(in_shape):
        raise Unsupported(f"layer {i} (Pointwise) holds constants of shape {tuple(m.shape)} for inputs of shape "
                          f"{tuple(in_shape)}")
    return _of(Scaling)(m, x, i, in_shape)


def _maxpool(m, x, i, in_shape):
    try:
        spec = activations.MaxPool2dSpec(m, in_shape)
    except Unsupported as e:
        raise Unsupported(f"layer {i} ({type(m).__name__}): {e}") from None
    return _activation_layer(m, spec, x, i, in_shape)


def _branch(m, x, i, in_shape):
    """A :class:`Branch`: each branch walked on ``x``; the module rebuilt where a branch
    held something traced."""
    kind = "sum" if isinstance(m, Sum) else "concat"
    branches, outs, new = [], [], []
    for b, seq in enumerate(m.branches):
        sub, canon, y = _walk_chain(flat_children(seq), x, f"{i}.{b}.")
        branches.append(sub)
        outs.append(y)
        new.append(seq if canon is None else nn.Sequential(*canon))
    if kind == "sum":
        shapes = {tuple(y.shape) for y in outs}
        if len(shapes) != 1:
            raise Unsupported(f"layer {i} (Sum): its branches' outputs have different shapes {sorted(shapes)}")
    weights = tuple(getattr(m, "weights", ()))
    module = m if all(a is b for a, b in zip(new, m.branches)) else \
        (Sum(*new, weights=weights) if kind == "sum" else Concat(*new))
    y = _run(module, x, i, in_shape)
    return Branch(module, kind, branches, weights, in_shape, tuple(y.shape[1:]), i), y


#: module types -> how the walk reads them (the first match wins); anything else is an
#: activation (:func:`bench.activations.describe`), a pass-through module, a module of code
#: (traced) or :class:`Opaque`
READERS = (
    ((nn.Linear, nn.Conv2d), _affine),
    (BATCHNORMS, _batchnorm),
    ((Shift,), _of(Translation)),
    ((Pointwise,), _pointwise),
    (AVGPOOLS, _of(Pool)),
    (SELECTIONS, _of(Selection)),
    (MAXPOOLS, _maxpool),
    (BRANCHING, _branch),
)


def _read(m: nn.Module, x: torch.Tensor, i, in_shape: tuple):
    """(layer or None, output on ``x``, the tree traced from ``m`` or None) for one module."""
    name = type(m).__name__
    if parametrize.is_parametrized(m):
        raise Unsupported(f"layer {i} ({name}) is parametrized (e.g. spectral_norm): its weight "
                          f"is recomputed on every access; materialise it first "
                          f"(torch.nn.utils.parametrize.remove_parametrizations(m, 'weight'))")
    for types, reader in READERS:
        if isinstance(m, types):
            layer, y = reader(m, x, i, in_shape)
            return layer, y, None
    if isinstance(m, _PASS_THROUGH):
        # dropout keeps the shape; never touch its mode
        return None, (x if isinstance(m, nn.Dropout) else m(x)), None
    spec = activations.describe(m, in_shape)
    if spec is not None:
        layer, y = _activation_layer(m, spec, x, i, in_shape)
        return layer, y, None
    bad = next((s for s in m.modules() if isinstance(s, BATCHNORMS) and _batchnorm_reason(s)), None)
    if bad is not None:
        raise Unsupported(f"layer {i} ({name}) holds a {type(bad).__name__} that {_batchnorm_reason(bad)}")
    from .graph import NotConvertible, from_traced, is_leaf
    why = "torch's own module without a description"
    if not is_leaf(m):
        try:
            return None, x, from_traced(m, x)
        except NotConvertible as e:
            why = str(e)
    try:  # a copy: running it must not change the caller's module (e.g. a BatchNorm's statistics)
        probe = copy.deepcopy(m)
    except Exception:
        probe = m
    y = _run(probe, x, i, in_shape)
    return Opaque(m, name, in_shape, tuple(y.shape[1:]), i, why), y, None


def _activation_layer(m, spec, x, i, in_shape):
    name = type(m).__name__
    y = _run(m, x, i, in_shape)
    try:
        slope, lipschitz = spec.slope, spec.lipschitz
    except Unsupported as e:
        raise Unsupported(f"layer {i} ({name}): {e}") from None
    same_width = int(np.prod(in_shape)) == int(np.prod(y.shape[1:]))
    if slope is not None and not same_width:
        raise Unsupported(f"layer {i} ({name}) declares a slope but changes the width: "
                          f"a slope describes an elementwise map; declare 'lipschitz' per p instead")
    if lipschitz is not None:
        lip = {float(k): float(v) for k, v in lipschitz.items()}
        if set(lip) != set(NORMS):
            raise Unsupported(f"layer {i} ({name}) must declare Lipschitz constants for p = 1, 2, inf")
    elif slope is not None:
        lip = {p: max(abs(slope[0]), abs(slope[1])) for p in NORMS}
    else:
        raise Unsupported(f"layer {i} ({name}) declares neither a slope nor Lipschitz constants")
    return Activation(m, spec.name, int(np.prod(in_shape)), int(np.prod(y.shape[1:])), i,
                      tuple(slope) if slope is not None else None, lip,
                      tuple(float(p) for p in spec.saturates), spec), y


def read(source, input_shape: tuple | None = None) -> tuple[nn.Module, tuple | None]:
    """(module, input shape or None) from any of the sources lipbench reads: an
    ``nn.Module`` (walked as it is, traced where its forward is code) or the path of an
    ONNX file (:func:`bench.onnx_file.read`, which gives the input shape).  A path that
    is not an ``.onnx`` file is a :class:`UserError`."""
    if isinstance(source, nn.Module):
        return source, input_shape
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if path.lower().endswith(".onnx"):
            from . import onnx_file
            return onnx_file.read(path, input_shape)
        raise UserError(f"{path}: lipbench reads networks from .onnx files (or an nn.Module in code)")
    raise UserError(f"expected a torch nn.Module or the path of an .onnx file, got {type(source).__name__}")


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


# --- architectures -------------------------------------------------------------------

def activation_width_factor(m: nn.Module) -> int:
    spec = activations.describe(m)
    return int(spec.out_factor) if spec is not None else 1


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


#: the keys of an architecture spec and of one conv entry (in the compact list's order)
ARCH_KEYS = ("conv", "hidden", "activation", "activation_params", "bias")
CONV_KEYS = ("channels", "kernel", "stride", "padding")
#: presets (``preset: NAME``): each one's own keys with their defaults; a preset arch takes
#: these, ``activation``, ``activation_params`` and ``bias`` (not ``conv`` or ``hidden``)
PRESETS = {"convnet": {"base_width": 64, "blocks": 5, "layers_per_block": 5, "kernel": 3}}
#: Prach et al.'s names of convnet sizes (5 blocks of 5 layers, kernel 3): base width -> name
CONVNET_SIZES = {16: "XS", 32: "S", 64: "M", 128: "L"}


class ArchError(UserError):
    """A bad architecture spec; ``path`` is where in it (keys and list indices), so that a
    suite can name the line."""

    def __init__(self, msg: str, path: tuple = ()):
        super().__init__(f"architecture: {msg}")
        self.path = path


def _count(v, low: int = 1) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def conv_entries(arch: dict) -> list[dict]:
    """The conv entries of ``arch``, each a mapping with every key of :data:`CONV_KEYS`
    (defaults: kernel 3, stride 1, padding kernel // 2), checked."""
    if "conv" not in arch:
        return []
    conv = arch["conv"]
    if not isinstance(conv, (list, tuple)) or not conv:
        raise ArchError(f"conv must be a non-empty list of conv layers ({{channels: C, kernel: 3, stride: 1, "
                        f"padding: 1}} or [C, kernel, stride, padding]), got {conv!r}", ("conv",))
    out = []
    for i, e in enumerate(conv):
        where = ("conv", i)
        if isinstance(e, (list, tuple)):
            if not 1 <= len(e) <= len(CONV_KEYS):
                raise ArchError(f"conv[{i}]: a compact conv layer is [channels, kernel, stride, padding] (1 to 4 "
                                f"whole numbers), got {list(e)!r}", where)
            e = dict(zip(CONV_KEYS, e))
        elif isinstance(e, dict):
            bad = next((k for k in e if k not in CONV_KEYS), None)
            if bad is not None:
                raise ArchError(f"conv[{i}]: unknown key {bad!r}; valid: {', '.join(CONV_KEYS)}", where + (bad,))
            if "channels" not in e:
                raise ArchError(f"conv[{i}]: missing key 'channels'", where)
        else:
            raise ArchError(f"conv[{i}]: a conv layer is {{channels: C, kernel: 3, stride: 1, padding: 1}} or "
                            f"[C, kernel, stride, padding], got {e!r}", where)
        k = e.get("kernel", 3)
        spec = {"channels": e["channels"], "kernel": k, "stride": e.get("stride", 1),
                "padding": e.get("padding", k // 2 if _count(k) else 0)}
        for key, v in spec.items():
            if not _count(v, 0 if key == "padding" else 1):
                need = "a whole number >= 0" if key == "padding" else "a whole number >= 1"
                raise ArchError(f"conv[{i}]: {key} must be {need}, got {v!r}",
                                where + ((key,) if isinstance(arch["conv"][i], dict) else ()))
        out.append(spec)
    return out


def check_arch(arch: dict) -> None:
    """Check an architecture spec without building it (every key and value; the
    activation and its parameters by making one); a bad one is an :class:`ArchError`."""
    if not isinstance(arch, dict):
        raise ArchError(f"an architecture is a mapping like {{hidden: [64], activation: relu}}, got {arch!r}")
    if "preset" in arch:
        _check_preset(arch)
        return
    bad = next((k for k in arch if k not in ARCH_KEYS), None)
    if bad is not None:
        raise ArchError(f"unknown key {bad!r}; valid: {', '.join(ARCH_KEYS)}", (bad,))
    conv_entries(arch)
    hidden = arch.get("hidden", [])
    if not isinstance(hidden, (list, tuple)) or not all(_count(h) for h in hidden):
        raise ArchError(f"hidden must be a list of positive integers, got {hidden!r}", ("hidden",))
    bias = arch.get("bias", True)
    if not isinstance(bias, bool):
        raise ArchError(f"bias must be true or false, got {bias!r}", ("bias",))
    _activation(arch)


def _check_preset(arch: dict) -> dict:
    """The values of a preset arch's own keys (defaults filled in), every key checked."""
    name = arch["preset"]
    if name not in PRESETS:
        raise ArchError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}", ("preset",))
    own = PRESETS[name]
    valid = ("preset", *own, "activation", "activation_params", "bias")
    bad = next((k for k in arch if k not in valid), None)
    if bad is not None:
        raise ArchError(f"preset {name}: unknown key {bad!r}; valid: {', '.join(valid)}", (bad,))
    vals = {k: arch.get(k, d) for k, d in own.items()}
    for k, v in vals.items():
        if not _count(v):
            raise ArchError(f"preset {name}: {k} must be a whole number >= 1, got {v!r}", (k,))
    if vals["base_width"] % 2:
        raise ArchError(f"preset {name}: base_width must be even (each block keeps half its channels, then "
                        f"PixelUnshuffle quadruples them), got {vals['base_width']}", ("base_width",))
    if vals["kernel"] % 2 == 0:
        raise ArchError(f"preset {name}: kernel must be odd (padding kernel // 2 keeps the size), got "
                        f"{vals['kernel']}", ("kernel",))
    bias = arch.get("bias", True)
    if not isinstance(bias, bool):
        raise ArchError(f"bias must be true or false, got {bias!r}", ("bias",))
    if activation_width_factor(_activation(arch)()) != 1:
        raise ArchError(f"preset {name}: the activation must keep the width (its convs map c channels to c), "
                        f"got {arch.get('activation')!r}", ("activation",))
    return vals


def _build_convnet(arch: dict, input_shape: tuple, n_out: int) -> nn.Sequential:
    """Prach et al.'s ConvNet ("1-Lipschitz layers compared", 2024; their repository's
    ``SimplifiedConvNet``, which they describe as similar to the LipConvnet of SOC), built
    from plain Conv2d (zero padding kernel // 2, stride 1): ZeroChannelPad to the base
    width w, a 1x1 conv + activation; ``blocks`` blocks, block b on c = w 2^b channels
    holding ``layers_per_block`` convs c -> c (kernel ``kernel``, 1 in the last block) each
    followed by the activation, then FirstChannels(c / 2) and PixelUnshuffle(2) (c / 2 * 4
    = 2c channels, half the height and width); AdaptiveMaxPool2d(1); a 1x1 conv head on
    w 2^blocks channels; Flatten; FirstChannels(n_out).  Their ConvNetM is base_width 64,
    5 blocks of 5, kernel 3, MaxMin (their BCOP runs end in a linear layer instead of the
    1x1 conv: on a 1 x 1 input the same map; their convs pad circularly, these with zeros,
    which the walk reads)."""
    vals = _check_preset(arch)
    make = _activation(arch)
    bias = arch.get("bias", True)
    w, nb, per, k = vals["base_width"], vals["blocks"], vals["layers_per_block"], vals["kernel"]
    if len(input_shape) != 3:
        raise ArchError(f"preset convnet needs an image input (channels, height, width); the data's input shape is "
                        f"{tuple(input_shape)}", ("preset",))
    c_in, h, wd = input_shape
    if c_in > w:
        raise ArchError(f"preset convnet: base_width {w} is below the input's {c_in} channels", ("base_width",))
    if h % 2 ** nb or wd % 2 ** nb:
        raise ArchError(f"preset convnet: {nb} blocks halve the {h} x {wd} input {nb} times: height and width must "
                        f"be multiples of {2 ** nb}", ("blocks",))
    if w * 2 ** nb < n_out:
        raise ArchError(f"preset convnet: the head has {w * 2 ** nb} channels, fewer than the {n_out} classes",
                        ("base_width",))
    layers: list[nn.Module] = [ZeroChannelPad(w), nn.Conv2d(w, w, 1, bias=bias), make()]
    c = w
    for b in range(nb):
        kb = k if b < nb - 1 else 1   # the last block's input is 2 x 2 (for a 32 x 32 image): 1x1 convs
        for _ in range(per):
            layers += [nn.Conv2d(c, c, kb, padding=kb // 2, bias=bias), make()]
        layers += [FirstChannels(c // 2), nn.PixelUnshuffle(2)]
        c *= 2
    layers += [nn.AdaptiveMaxPool2d(1), nn.Conv2d(c, c, 1, bias=bias), nn.Flatten(), FirstChannels(n_out)]
    return nn.Sequential(*layers)


def _activation(arch: dict):
    """A factory () -> a new activation module of ``arch``, checked by making one."""
    name = arch.get("activation", "relu")
    if not isinstance(name, str):
        raise ArchError(f"activation must be a name, got {name!r}", ("activation",))
    try:
        act = get_activation(name)
    except UserError as e:
        raise ArchError(str(e), ("activation",)) from None
    params = arch.get("activation_params", {})
    if not isinstance(params, dict):
        raise ArchError(f"activation_params must be a mapping, got {params!r}", ("activation_params",))
    try:
        act(**params)
    except (TypeError, ValueError) as e:
        raise ArchError(f"activation_params {dict(params)!r} of {name}: {e}", ("activation_params",)) from None
    return lambda: act(**params)


def build_net(arch: dict, input_shape: tuple, n_out: int) -> nn.Sequential:
    """A network from an architecture spec ``{conv: [...], hidden: [h1, ...], activation:
    name, activation_params: {...}, bias: bool}`` (every key optional; see
    :func:`conv_entries` for a conv entry).

    Without ``conv``, an MLP: inputs of more than one dimension are flattened first, then
    Linear + activation per hidden width, then the output Linear.  With ``conv`` (the
    input is an image (C, H, W)): Conv2d (zero padding) + activation per conv entry,
    Flatten, Linear + activation per hidden width, the output Linear.  An activation that
    widens (CReLU, SinSplit, SinCos: ``out_factor`` 2) multiplies the next layer's input
    channels or features.  ``bias`` applies to every Conv2d and Linear.

    ``{preset: convnet, base_width: 64, blocks: 5, layers_per_block: 5, kernel: 3,
    activation: maxmin}`` (defaults: these, with activation relu as everywhere) is Prach
    et al.'s ConvNet (:func:`_build_convnet`; these values are their ConvNetM)."""
    check_arch(arch)
    input_shape = tuple(int(s) for s in input_shape)
    if "preset" in arch:
        return _build_convnet(arch, input_shape, n_out)
    make = _activation(arch)
    bias = arch.get("bias", True)
    layers: list[nn.Module] = []
    convs = conv_entries(arch)
    if convs:
        if len(input_shape) != 3:
            raise ArchError(f"conv layers need an image input (channels, height, width); the data's input shape is "
                            f"{input_shape}", ("conv",))
        c, h, w = input_shape
        for i, e in enumerate(convs):
            k, s, pad = e["kernel"], e["stride"], e["padding"]
            h2, w2 = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
            if h2 < 1 or w2 < 1:
                raise ArchError(f"conv[{i}] (kernel {k}, padding {pad}) does not fit its {h} x {w} input",
                                ("conv", i))
            layers.append(nn.Conv2d(c, e["channels"], k, stride=s, padding=pad, bias=bias))
            a = make()
            layers.append(a)
            c, h, w = e["channels"] * activation_width_factor(a), h2, w2
        layers.append(nn.Flatten())
        d = c * h * w
    else:
        if len(input_shape) > 1:
            layers.append(nn.Flatten())
        d = int(np.prod(input_shape))
    for width in arch.get("hidden", []):
        layers.append(nn.Linear(d, width, bias=bias))
        a = make()
        layers.append(a)
        d = width * activation_width_factor(a)
    layers.append(nn.Linear(d, n_out, bias=bias))
    return nn.Sequential(*layers)



def arch_name(arch: dict) -> str:
    """A readable name: ``mlp32-32-relu``, ``conv32x3s1-64x3s2-fc128-relu`` (a padding
    other than kernel // 2 is written ``p0``), ``convnetM64-5x5-maxmin`` (a preset),
    ``-nobias`` without biases: :func:`arch_shape`, the activation, the biases."""
    return f"{arch_shape(arch)}-{arch.get('activation', 'relu')}{'' if arch.get('bias', True) else '-nobias'}"


def arch_shape(arch: dict) -> str:
    """The layers alone: ``mlp32-32``, ``conv32x3s1-64x3s2-fc128``, ``convnetM64-5x5``."""
    if "preset" in arch:   # convnetM64-5x5 (Prach et al.'s size name where theirs), convnet8-2x1k5
        v = {k: arch.get(k, d) for k, d in PRESETS[arch["preset"]].items()}
        size = CONVNET_SIZES.get(v["base_width"], "") if (v["blocks"], v["layers_per_block"], v["kernel"]) == \
            (5, 5, 3) else ""
        k = "" if v["kernel"] == 3 else f"k{v['kernel']}"
        return f"{arch['preset']}{size}{v['base_width']}-{v['blocks']}x{v['layers_per_block']}{k}"
    hidden = "-".join(str(x) for x in arch.get("hidden", []))
    if "conv" not in arch:
        return f"mlp{hidden or 'linear'}"
    convs = "-".join(f"{e['channels']}x{e['kernel']}s{e['stride']}" +
                     (f"p{e['padding']}" if e["padding"] != e["kernel"] // 2 else "") for e in conv_entries(arch))
    return f"conv{convs}{'-fc' + hidden if hidden else ''}"
