"""The network walk: a torch module -> the layers of :mod:`bench.layers`, so that every
verifier asks one place what a layer is.  :data:`READERS` maps module types to layers
(docs/architecture.md has the table): affine maps (Linear, Conv2d, BatchNorm, average
pooling, lipbench's Shift and Pointwise, selections), max pooling and registered
activations, and the branching modules Sum and Concat; a module whose forward is code
is traced (:mod:`bench.graph`) and read as its layers, a module that cannot be read is
:class:`~bench.layers.Opaque`.  :func:`bench.sources.read` takes a network from any source (a
module, an ONNX file, a saved module).

BatchNorm is a layer of its own, not folded into a neighbouring Linear or Conv2d.
Folding into the layer before it is exact only when there is one (not after an
activation, nor first), and folding into the layer after it is wrong for a padded conv
(the padding would carry the shift); so one rule, a diagonal affine map of its own,
holds everywhere.  Every verifier then reads it through the same Affine interface
(``matrix``, ``bias``, ``abs_row_sums``, ``abs_col_sums``): the exact verifiers
(``pwl``) and the SDP verifiers (``sdp.chain.chain``) compose consecutive affine maps
exactly, and the trivial bound multiplies its exact norm max_i |s_i| (the same for every
p), which is sound, if looser than the norm of a folded layer.

A BatchNorm in training mode (or without running statistics) normalises with the
batch's own statistics: its output depends on the other inputs in the batch, so it is
:class:`bench.api.Unsupported` with that reason.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from . import activations
from .api import NORMS, Unsupported, UserError
from .layers import (Activation, Affine, Branch, Diagonal, Net, Opaque, Pool, Scaling, Selection, Translation,
                     all_layers)
from .graph import module_dtype, own_forward
from .modules import BRANCHING, Concat, FirstChannels, Permute, Pointwise, Reshape, Shift, Sum, ZeroChannelPad


#: BatchNorm modules (eval mode, running statistics): :class:`Diagonal`
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: average pooling modules: :class:`Pool`
AVGPOOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
#: modules that select, permute or zero-pad their inputs: :class:`Selection`
SELECTIONS = (nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle, FirstChannels, ZeroChannelPad, Permute,
              nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d)
#: max pooling modules: an :class:`Activation` described by :class:`bench.activations.MaxPool2dSpec`
MAXPOOLS = (nn.MaxPool2d, nn.AdaptiveMaxPool2d)


_PASS_THROUGH = (nn.Flatten, nn.Identity, nn.Dropout, nn.Unflatten, Reshape)


def flat_children(module: nn.Module) -> list[nn.Module]:
    """The modules the walk reads, in order: nested ``nn.Sequential`` s flattened (a
    layer's ``index`` is its position here)."""
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        out = []
        for c in module:
            out.extend(flat_children(c))
        return out
    return [module]


def _input_shape_error(first: nn.Module) -> UserError:
    name = type(first).__name__
    return UserError(f"the input shape cannot be inferred from the first layer, {name} (only a network that "
                     f"starts with Linear gives it: (in_features,)); give the shape of one input, without the "
                     f"batch dimension: input_shape=(C, H, W) or (n,) in bench.verify / bench.lower_bound "
                     f"(network.walk(net, input_shape) in code)")


def _run(m: nn.Module, x: torch.Tensor, i: int, in_shape: tuple) -> torch.Tensor:
    """m(x) in the dtype of m's parameters (or x's); a module that rejects the input
    shape is the caller's error."""
    dtype = module_dtype(m)
    try:
        y = m(x.to(dtype) if dtype is not None else x)
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


def _walk_chain(children: list, x: torch.Tensor, prefix: str, start: int = 0):
    """(layers, canonical children or None where they are ``children`` themselves, the
    output on ``x``) of a chain of modules; a layer's index is ``prefix`` and its position
    in the canonical children, counted from ``start``."""
    layers: list = []
    canon: list = []
    changed = False
    for m in children:
        pos = start + len(canon)
        index = pos if not prefix else f"{prefix}{pos}"
        in_shape = tuple(x.shape[1:])
        layer, x, read = _read(m, x, index, in_shape)
        if read is not None:   # traced: its layers in its place
            sub_layers, sub_canon, x = _walk_chain(flat_children(read), x, prefix, pos)
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
    weights = tuple(m.weights) if kind == "sum" else ()
    if kind == "sum" and len(weights) != len(m.branches):
        raise Unsupported(f"layer {i} (Sum): {len(m.branches)} branches, {len(weights)} weights")
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
        if isinstance(m, types) and own_forward(m, types):
            layer, y = reader(m, x, i, in_shape)
            return layer, y, None
    if isinstance(m, _PASS_THROUGH) and own_forward(m, _PASS_THROUGH):
        # dropout keeps the shape; never touch its mode
        return None, (x if isinstance(m, nn.Dropout) else m(x)), None
    spec = activations.describe(m, in_shape)
    if spec is not None and (spec.module_class is None or own_forward(m, (spec.module_class,))):
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
