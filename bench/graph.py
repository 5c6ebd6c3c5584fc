"""A computation graph (a DAG with one input and one output) as a tree of torch modules:
``nn.Sequential`` for chains, :class:`~bench.modules.Sum` and
:class:`~bench.modules.Concat` where the graph branches.  The network walk reads that tree
(:mod:`bench.network`); two front-ends build it, from a traced ``nn.Module`` (``torch.fx``,
here) and from an ONNX file (:mod:`bench.onnx_file`), through :func:`series_parallel`.

The decomposition: walking back from the output, a node with one data input is the last
layer of a chain; a node with several (a sum or a concatenation) starts at its immediate
dominator d (the last node every path from the input to it passes through), and each of
its inputs u is the branch from d to u, built the same way.  Every DAG with one input
decomposes so; a node that two branches use is computed in each (the same module, so the
same function), up to :data:`MAX_COPIES` times the graph's size.
"""
from __future__ import annotations

import copy
import itertools
import operator
from dataclasses import dataclass, field

import torch
from torch import nn

from .api import Unsupported, UserError
from .modules import Concat, Pointwise, Reshape, Sum

#: a tree may hold at most this many times the graph's nodes (nodes shared by branches are copied)
MAX_COPIES = 4


@dataclass
class Node:
    """One node of a computation graph: ``kind`` is ``input``, ``unary`` (``module``
    applied to its one data input), ``sum`` (sum_i weights[i] * inputs[i]) or
    ``concat`` (along dimension 1); ``name`` says which node it is in messages."""

    name: str
    kind: str
    inputs: list = field(default_factory=list)
    module: nn.Module | None = None
    weights: tuple = ()


def series_parallel(nodes: dict[str, Node], order: list[str], output: str) -> nn.Sequential:
    """The tree of modules that computes ``output`` from the graph's input: ``nodes`` by
    name, ``order`` a topological order of them (the input first)."""
    live = _ancestors(nodes, output)
    order = [n for n in order if n in live]
    inputs = [n for n in order if nodes[n].kind == "input"]
    if len(inputs) != 1:
        raise Unsupported(f"the network's output depends on {len(inputs)} inputs; lipbench reads networks of one input")
    pos = {n: i for i, n in enumerate(order)}
    dom: dict[str, frozenset] = {}
    for n in order:
        node = nodes[n]
        if node.kind == "input":
            dom[n] = frozenset([n])
        else:
            dom[n] = frozenset.intersection(*(dom[u] for u in node.inputs)) | {n}
    budget = [MAX_COPIES * len(order)]

    def build(src: str, dst: str) -> list[nn.Module]:
        out: list[nn.Module] = []
        v = dst
        while v != src:
            budget[0] -= 1
            if budget[0] < 0:
                raise Unsupported(f"node {nodes[dst].name}: the graph's branches share so many nodes that its tree would "
                                  f"hold more than {MAX_COPIES} times its {len(order)} nodes")
            node = nodes[v]
            if node.kind == "unary":
                if node.module is not None:
                    out.append(node.module)
                v = node.inputs[0]
                continue
            d = max(dom[v] - {v}, key=pos.get)   # the immediate dominator: where the branches split
            branches = [nn.Sequential(*build(d, u)) for u in node.inputs]
            out.append(Sum(*branches, weights=node.weights) if node.kind == "sum" else Concat(*branches))
            v = d
        return out[::-1]

    return nn.Sequential(*build(inputs[0], output))


def _ancestors(nodes: dict[str, Node], output: str) -> set:
    seen, stack = set(), [output]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(nodes[n].inputs)
    return seen


# --- torch.fx: a module whose forward is code -----------------------------------------

class NotConvertible(Exception):
    """A traced operation that has no reading as a layer (the walk then records the whole
    module as opaque, with this reason)."""


#: functions (and tensor methods, by name) that are an activation module
_ACTIVATION_FUNCTIONS = {
    torch.relu: nn.ReLU, torch.nn.functional.relu: nn.ReLU, "relu": nn.ReLU,
    torch.tanh: nn.Tanh, torch.nn.functional.tanh: nn.Tanh, "tanh": nn.Tanh,
    torch.sigmoid: nn.Sigmoid, torch.nn.functional.sigmoid: nn.Sigmoid, "sigmoid": nn.Sigmoid,
    torch.nn.functional.softplus: nn.Softplus, torch.nn.functional.gelu: nn.GELU, torch.nn.functional.silu: nn.SiLU,
    torch.nn.functional.elu: nn.ELU, torch.nn.functional.leaky_relu: nn.LeakyReLU,
}
_ADD = (operator.add, torch.add, "add")
_SUB = (operator.sub, torch.sub, "sub")
_MUL = (operator.mul, torch.mul, "mul")
_DIV = (operator.truediv, torch.div, "div")
_CAT = (torch.cat, torch.concat)
_RESHAPE = (torch.flatten, torch.reshape, "flatten", "view", "reshape")
_POOL_FUNCTIONS = {torch.nn.functional.avg_pool2d: nn.AvgPool2d, torch.nn.functional.max_pool2d: nn.MaxPool2d,
                   torch.nn.functional.adaptive_avg_pool2d: nn.AdaptiveAvgPool2d,
                   torch.nn.functional.adaptive_max_pool2d: nn.AdaptiveMaxPool2d}


def own_forward(m: nn.Module, types: tuple) -> bool:
    """Whether ``m`` computes what the first of ``types`` it is an instance of computes: a
    subclass that overrides ``forward`` (``class L(nn.Linear)`` returning 3 W x) is code,
    not that layer."""
    base = next(t for t in types if isinstance(m, t))
    return type(m).forward is base.forward


def is_leaf(m: nn.Module) -> bool:
    """Whether the walk reads ``m`` as one layer (never traced into): torch's own modules
    (but containers), lipbench's, and every module with an activation description whose
    forward is the described class's."""
    from .activations import describe
    if isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        return False
    if type(m).__module__.startswith(("torch.nn", "torch.ao.nn", "bench.")):
        return True
    spec = describe(m)
    return spec is not None and (spec.module_class is None or own_forward(m, (spec.module_class,)))


class Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m, qualname):
        return is_leaf(m)


def from_traced(module: nn.Module, x: torch.Tensor) -> nn.Sequential:
    """``module``'s forward, traced with ``torch.fx`` and run on the sample batch ``x``
    (for the shapes), as a tree of modules (:func:`series_parallel`) that shares
    ``module``'s layers.  Raises :class:`NotConvertible` naming the operation it cannot
    read, and for anything torch.fx cannot trace (control flow on values, ...)."""
    traced = copy_module(module)   # traced and run on a copy: that runs the forward (a counter's += would count)
    try:
        graph = Tracer().trace(traced)
    except Exception as e:   # torch.fx's own errors: data-dependent control flow, unsupported Python
        raise NotConvertible(f"torch.fx cannot trace it ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    run = torch.fx.GraphModule(traced, graph)
    values: dict = {}
    nodes: dict[str, Node] = {}
    order: list[str] = []
    output = None
    with torch.no_grad():
        for n in graph.nodes:
            if n.op == "output":
                if not isinstance(n.args[0], torch.fx.Node):
                    raise NotConvertible("its forward returns more than one tensor")
                output = n.args[0].name
                break
            args = torch.fx.node.map_arg(n.args, lambda a: values[a.name])
            kwargs = torch.fx.node.map_arg(n.kwargs, lambda a: values[a.name])
            if n.op == "placeholder":
                if any(nodes[o].kind == "input" for o in order):
                    raise NotConvertible("its forward takes more than one input")
                values[n.name] = x.to(module_dtype(module) or torch.get_default_dtype())
                nodes[n.name] = Node(n.name, "input")
                order.append(n.name)
                continue
            if n.op == "get_attr":
                values[n.name] = _attr(run, n.target)
                continue
            if n.op == "call_module":
                fn = run.get_submodule(n.target)
            elif n.op == "call_function":
                fn = n.target
            else:   # call_method
                fn = getattr(args[0], n.target)
            try:
                values[n.name] = out = fn(*args, **kwargs) if n.op != "call_method" else fn(*args[1:], **kwargs)
            except (RuntimeError, ValueError, TypeError, IndexError) as e:
                raise UserError(f"{type(module).__name__} does not accept input of shape {tuple(x.shape[1:])}: node "
                                f"{n.name} ({_what(n)}): {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
                    from None
            data = [a.name for a in n.all_input_nodes if a.name in nodes]
            if not isinstance(out, torch.Tensor):
                if data and not _is_shape(out):
                    raise NotConvertible(f"node {n.name} ({_what(n)}) returns a {type(out).__name__} computed from "
                                         f"the input's values")
                continue   # shape arithmetic (x.size(0), x.shape, ...): a batch of the same shape gives the same
            if not data:   # a constant computed from constants
                continue
            nodes[n.name] = _fx_node(n, module, args, kwargs, values, data, out)
            order.append(n.name)
    if output not in nodes:
        raise NotConvertible("its output does not depend on its input")
    tree = series_parallel(nodes, order, output)
    check_same(run, tree, x)
    return tree


#: relative agreement of a traced tree with the module's own forward (float64; float32: 1e-5)
TRACE_RTOL = 1e-9


def check_same(module: nn.Module, tree: nn.Module, x: torch.Tensor, samples: int = 3) -> None:
    """Raise :class:`NotConvertible` unless ``tree`` computes ``module``'s forward on
    ``samples`` random inputs shaped like ``x`` (relative :data:`TRACE_RTOL` in float64)."""
    dtype = module_dtype(module) or torch.get_default_dtype()
    rtol = TRACE_RTOL if dtype == torch.float64 else 1e-5
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(samples):   # a batch of 2: a reshape that mixes samples shows
            z = torch.randn((2, *x.shape[1:]), generator=gen, dtype=torch.float64).to(device=x.device, dtype=dtype)
            want, got = module(z), tree(z)
            if not isinstance(want, torch.Tensor) or tuple(want.shape) != tuple(got.shape):
                raise NotConvertible(f"its reading as layers gives outputs of shape {tuple(got.shape)}, its forward "
                                     f"{tuple(getattr(want, 'shape', ()))}")
            err = float((want - got).abs().max() / want.abs().max().clamp_min(1e-300))
            if not err <= rtol:
                raise NotConvertible(f"its reading as layers differs from its forward by {err:.1e} (relative)")


def copy_module(module: nn.Module) -> nn.Module:
    try:
        return copy.deepcopy(module)
    except Exception:   # a module that cannot be copied is traced and run as it is
        return module


def _is_shape(v) -> bool:
    """Whether ``v`` is what a tensor's shape gives (a size, a tuple of sizes)."""
    if isinstance(v, (tuple, list)):
        return all(_is_shape(a) for a in v)
    return isinstance(v, int) and not isinstance(v, bool)


def module_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype a module computes in: its first parameter's (or floating buffer's); None
    for a module without either."""
    for t in itertools.chain(module.parameters(), (b for b in module.buffers() if b.is_floating_point())):
        return t.dtype
    return None


def _attr(gm, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _what(n) -> str:
    t = n.target
    return t if isinstance(t, str) else getattr(t, "__name__", repr(t))


def _fx_node(n, root: nn.Module, args, kwargs, values, data: list, out: torch.Tensor) -> Node:
    """The graph node of one traced operation with data inputs ``data`` (a constant read
    with get_attr, a parameter included, is read as its current value)."""
    shape = tuple(out.shape[1:])
    target = n.target if n.op in ("call_function", "call_method") else None
    if n.op == "call_module":
        if len(data) != 1 or len(n.all_input_nodes) != 1:
            raise NotConvertible(f"node {n.name} calls {n.target} with {len(n.all_input_nodes)} arguments")
        return Node(n.name, "unary", data, root.get_submodule(n.target))
    what = _what(n)
    data_args = [a for a in n.args if isinstance(a, torch.fx.Node) and a.name in data]
    if target in _ACTIVATION_FUNCTIONS and len(data) == 1:
        # F.elu(x, alpha), F.softplus(x, beta, threshold), F.gelu(x, approximate=...), F.leaky_relu(x, slope):
        # the module takes the function's arguments after the input, in the same order
        extra = {k: v for k, v in kwargs.items() if k != "inplace"}
        return Node(n.name, "unary", data, _ACTIVATION_FUNCTIONS[target](*args[1:], **extra))
    if target in _POOL_FUNCTIONS and len(data) == 1:
        mod = _POOL_FUNCTIONS[target](*args[1:], **kwargs)
        return Node(n.name, "unary", data, mod)
    if target in _RESHAPE and len(data) == 1:
        return Node(n.name, "unary", data, Reshape(shape))
    if target in _CAT:
        dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
        if dim not in (1, 1 - len(out.shape)) or not isinstance(n.args[0], (list, tuple)) or \
                not all(isinstance(a, torch.fx.Node) and a.name in data for a in n.args[0]):
            raise NotConvertible(f"node {n.name} ({what}) concatenates along dimension {dim} or constants; "
                                 f"lipbench reads concatenations of computed tensors along dimension 1")
        return Node(n.name, "concat", [a.name for a in n.args[0]])
    if target in _ADD + _SUB and len(n.args) == 2:
        sign = 1.0 if target in _ADD else -1.0
        a, b = n.args
        alpha = float(kwargs.get("alpha", 1.0))
        if len(data_args) == 2:
            if tuple(values[a.name].shape) != tuple(values[b.name].shape):
                raise NotConvertible(f"node {n.name} ({what}) adds tensors of shapes {tuple(values[a.name].shape)} "
                                     f"and {tuple(values[b.name].shape)} (a broadcast)")
            return Node(n.name, "sum", [a.name, b.name], weights=(1.0, sign * alpha))
        c = args[1] if data_args[0] is a else args[0]
        c = torch.as_tensor(c, dtype=torch.float64).detach() * (alpha if data_args[0] is a else 1.0)
        if data_args[0] is a:
            return Node(n.name, "unary", data, Pointwise(shape, shift=_full(sign * c, shape)))
        return Node(n.name, "unary", data, Pointwise(shape, scale=_full(torch.tensor(sign * alpha), shape),
                                                      shift=_full(c, shape)))
    if target in _MUL + _DIV and len(n.args) == 2 and len(data_args) == 1:
        a, b = n.args
        if target in _DIV and data_args[0] is not a:
            raise NotConvertible(f"node {n.name} divides by its input")
        c = torch.as_tensor(args[1] if data_args[0] is a else args[0], dtype=torch.float64).detach()
        return Node(n.name, "unary", data, Pointwise(shape, scale=_full(1.0 / c if target in _DIV else c, shape)))
    if target in (operator.neg, torch.neg, "neg") and len(data) == 1:
        return Node(n.name, "unary", data, Pointwise(shape, scale=_full(torch.tensor(-1.0), shape)))
    if target in ("contiguous", "clone") or (target in ("to", "double", "float") and len(data) == 1):
        return Node(n.name, "unary", data, None)
    raise NotConvertible(f"node {n.name} ({what}) has no reading as a layer")


def _full(c: torch.Tensor, shape: tuple) -> torch.Tensor:
    """A constant broadcast against one sample of ``shape`` (a leading batch axis of 1
    dropped)."""
    c = torch.as_tensor(c, dtype=torch.float64)
    if c.dim() > len(shape):
        if c.shape[0] != 1:
            raise NotConvertible(f"a constant of shape {tuple(c.shape)} on a batch: it would mix samples")
        c = c[0]
    return c.expand(shape).clone()
