"""Networks from ONNX files (the format VNN-COMP and the verification community exchange
networks in), read as the tree of torch modules the network walk reads
(:func:`bench.graph.series_parallel`), in float64.

Each ONNX operator becomes a torch module or a branching node (:data:`OPERATORS` lists
them); a computation on constants alone (the shape arithmetic of an exported
``x.view(x.size(0), -1)``, a ``Constant``) is evaluated while reading.  An operator it
cannot read is :class:`~bench.api.Unsupported` naming the operator and the node; a
missing, malformed or truncated file is a :class:`~bench.api.UserError`.  The tree is
checked where it is built: on random inputs its output equals the file's own, computed by
``onnxruntime`` on the file with its constants in float64, to 1e-9 (float32 where
onnxruntime has no float64 kernel, to 1e-5).
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from .api import Unsupported, UserError
from .graph import Node, series_parallel
from .modules import Permute, Pointwise, Reshape

#: relative agreement of the tree with the file's own evaluation (float64 both)
CHECK_RTOL = 1e-9
#: the same where onnxruntime evaluates the file in float32 only (it has no float64 Conv)
CHECK_RTOL_FLOAT32 = 1e-5

#: the ONNX operators the reader knows (Add, Sub, Mul and Div with a constant, or Add and
#: Sub of two computed tensors: a residual add; Concat of computed tensors along axis 1)
OPERATORS = ("Abs", "Add", "AveragePool", "BatchNormalization", "Concat", "Constant", "Conv", "Div", "Dropout", "Elu",
             "Flatten", "Gemm", "GlobalAveragePool", "Identity", "LeakyRelu", "MatMul", "Max", "MaxPool", "Min", "Mul", "Neg", "Pad",
             "Relu", "Reshape", "Sigmoid", "Sin", "Cos", "Softplus", "Sub", "Tanh", "Transpose",
             # evaluated on constants only
             "Cast", "ConstantOfShape", "Gather", "Shape", "Slice", "Squeeze", "Unsqueeze")


def read(path: str, input_shape: tuple | None = None) -> tuple[nn.Sequential, tuple]:
    """(the network as a float64 module tree, the shape of one input without the batch
    dimension) of the ONNX file ``path``.  ``input_shape`` is needed only where the file
    leaves the input's dimensions open (a free batch dimension is fine)."""
    model = load(path)
    g = model.graph
    from onnx import numpy_helper
    consts = {t.name: _float64(numpy_helper.to_array(t)) for t in g.initializer}
    inputs = [i for i in g.input if i.name not in consts]
    if len(inputs) != 1:
        raise Unsupported(f"{_base(path)}: the graph has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                          f"lipbench reads networks of one input")
    if len(g.output) != 1:
        raise Unsupported(f"{_base(path)}: the graph has {len(g.output)} outputs; lipbench reads networks of one output")
    shape = _input_shape(path, inputs[0], input_shape)
    reader = _Reader(consts, _consumers(g))
    reader.start(inputs[0].name, shape)
    for node in g.node:
        reader.node(node)
    out = g.output[0].name
    if out not in reader.nodes:
        raise Unsupported(f"{_base(path)}: the output {out!r} does not depend on the input")
    tree = series_parallel(reader.nodes, reader.order, out)
    check(tree, model, shape, path)
    return tree, shape


def load(path: str):
    """The ONNX model in ``path``; a one-line :class:`UserError` for a missing, unreadable
    or malformed file, or where the ``onnx`` package is absent."""
    try:
        import onnx
    except ImportError:
        raise UserError("reading an ONNX file needs the onnx package: pip install onnx") from None
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    try:
        model = onnx.load(path)
        onnx.checker.check_model(model)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not a readable ONNX model ({type(e).__name__}: {first[:200]})") from None
    if not model.graph.node:
        raise UserError(f"{path}: not a readable ONNX model (its graph has no nodes)")
    return model


def _base(path: str) -> str:
    return os.path.basename(path)


def _input_shape(path: str, inp, given) -> tuple:
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in inp.type.tensor_type.shape.dim]
    if given is not None:
        given = tuple(int(s) for s in given)
        if dims and len(dims) - 1 == len(given) and any(a is not None and a != b for a, b in zip(dims[1:], given)):
            raise UserError(f"{path}: input_shape {given} differs from the file's input {tuple(dims)}")
        return given
    if len(dims) < 2 or any(d is None for d in dims[1:]):
        raise UserError(f"{path}: the file leaves the input's shape open ({tuple(dims)}); give the shape of one "
                        f"input without the batch dimension (input_shape= or --input-shape)")
    if dims[0] not in (None, 1):
        raise Unsupported(f"{path}: the input's first dimension is {dims[0]}; lipbench reads it as the batch")
    return tuple(dims[1:])


def _consumers(g) -> dict:
    count: dict = {}
    for n in g.node:
        for i in n.input:
            count[i] = count.get(i, 0) + 1
    for o in g.output:
        count[o.name] = count.get(o.name, 0) + 1
    return count


def _attrs(node) -> dict:
    from onnx import helper
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


class _Reader:
    """Reads nodes in the file's (topological) order: a node on constants is evaluated
    (``consts``), one on the input becomes a graph :class:`~bench.graph.Node` with its
    module, run on a sample (``values``) for the shapes."""

    def __init__(self, consts: dict, consumers: dict):
        self.consts = consts
        self.consumers = consumers
        self.nodes: dict[str, Node] = {}
        self.order: list[str] = []
        self.values: dict[str, torch.Tensor] = {}
        #: the parts of lipbench's polyactivations as torch exports them, joined back where
        #: the pattern completes: name -> (part, the tensor it reads); see :meth:`pending`
        self.parts: dict[str, tuple] = {}

    def start(self, name: str, shape: tuple) -> None:
        self.nodes[name] = Node(name, "input")
        self.order.append(name)
        self.values[name] = torch.rand(1, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def add(self, out: str, node: Node, value: torch.Tensor) -> None:
        self.nodes[out] = node
        self.order.append(out)
        self.values[out] = value

    def unary(self, onnx_node, x: str, module: nn.Module | None) -> None:
        out = onnx_node.output[0]
        with torch.no_grad():
            v = self.values[x] if module is None else module(self.values[x])
        self.add(out, Node(f"{onnx_node.name or out} ({onnx_node.op_type})", "unary", [x], module), v)

    def node(self, n) -> None:
        op = n.op_type
        ins = [i for i in n.input]
        data = [i for i in ins if i in self.nodes]
        where = f"ONNX node {n.name or n.output[0]!r} ({op})"
        if op not in OPERATORS:
            raise Unsupported(f"{where}: lipbench's ONNX reader does not know the operator {op} (it reads "
                              f"{', '.join(OPERATORS[:OPERATORS.index('Cast')])})")
        stray = [i for i in ins if i in self.parts]
        if not data and not stray and not (op == "Constant" or all(i == "" or i in self.consts for i in ins)):
            raise Unsupported(f"{where}: an input is neither a constant nor computed before it")
        handler = self.fold if not data else getattr(self, "op_" + op, None)
        if handler is None and not stray:
            raise Unsupported(f"{where}: {op} of the network's values is not read (only of constants)")
        try:
            if stray:
                self.pending(n, stray, where)
            elif not data:
                self.fold(n, where)
            else:
                handler(n, data, _attrs(n), where)
        except (Unsupported, UserError):
            raise
        except Exception as e:   # a module that rejects its input: the file is inconsistent
            raise UserError(f"{where}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None

    def pending(self, n, stray: list, where: str) -> None:
        """Join the parts of a polyactivation as torch exports it: MaxMin as Slice(u, 0::2)
        and Slice(u, 1::2) along axis 1, Max and Min of the two, each Unsqueezed at axis 2,
        Concat along axis 2 and Reshape to u's shape; SinCos as Concat(Sin u, Cos u) along
        axis 1.  ``n`` reads the parts ``stray``: it is the next part, or completes the
        pattern (the activation joins the graph, checked on the sample), or is
        :class:`Unsupported`."""
        from .registry import get_activation
        op, out = n.op_type, n.output[0]
        parts = [self.parts[i] for i in stray]
        kinds, sources = [p[0] for p in parts], {p[1] for p in parts}
        a = _attrs(n)
        vals = [self.values[i] if i in self.values else None for i in n.input]
        if len(sources) == 1:
            u = parts[0][1]
            if op in ("Max", "Min") and sorted(kinds) == ["even", "odd"] and len(n.input) == 2:
                self.parts[out] = (op.lower(), u)
                self.values[out] = (torch.maximum if op == "Max" else torch.minimum)(*vals)
                return
            if op == "Unsqueeze" and kinds in (["max"], ["min"]):
                axes = a["axes"] if "axes" in a else self.const(n.input[1], where).astype(int).tolist()
                if list(axes) == [2]:
                    self.parts[out] = ("u" + kinds[0], u)
                    self.values[out] = vals[0].unsqueeze(2)
                    return
            if op == "Concat" and kinds == ["umax", "umin"] and len(n.input) == 2 and a.get("axis") == 2:
                self.parts[out] = ("maxmin", u)
                self.values[out] = torch.cat(vals, 2)
                return
            if op == "Reshape" and kinds == ["maxmin"]:
                target = self.const(n.input[1], where).astype(int).tolist()
                y = vals[0].reshape([vals[0].shape[i] if t == 0 else t for i, t in enumerate(target)])
                self.unary(n, u, get_activation("maxmin")())
                if y.shape != self.values[out].shape or not torch.equal(y, self.values[out]):
                    raise Unsupported(f"{where}: a Max / Min pattern that is not MaxMin")
                return
            if op == "Concat" and kinds == ["sin", "cos"] and len(n.input) == 2 and \
                    a.get("axis") in (1, 1 - self.values[u].dim()):
                self.unary(n, u, get_activation("sincos")())
                return
        raise Unsupported(f"{where}: {op} of {' and '.join(kinds)} parts that lipbench's ONNX reader does not join "
                          f"into an activation (it reads MaxMin and SinCos as torch exports them)")

    def op_Slice(self, n, data, a, where):
        """x[:, 0::2] or x[:, 1::2] (MaxMin's halves; see :meth:`pending`)."""
        x = self.values[data[0]]
        starts, ends = (self.const(i, where).astype(int).tolist() for i in n.input[1:3])
        axes = self.const(n.input[3], where).astype(int).tolist() if len(n.input) > 3 and n.input[3] else [0]
        steps = self.const(n.input[4], where).astype(int).tolist() if len(n.input) > 4 and n.input[4] else [1]
        if len(axes) != 1 or axes[0] not in (1, 1 - x.dim()) or steps != [2] or starts[0] not in (0, 1) \
                or ends[0] < x.shape[1]:
            raise Unsupported(f"{where}: Slice {starts}:{ends}:{steps} along {axes} of the network's values (lipbench "
                              f"reads it as half of a MaxMin only)")
        self.parts[n.output[0]] = ("even" if starts[0] == 0 else "odd", data[0])
        self.values[n.output[0]] = x[:, starts[0]::2]

    def op_Sin(self, n, data, a, where):
        self.parts[n.output[0]] = ("sin", data[0])
        self.values[n.output[0]] = torch.sin(self.values[data[0]])

    def op_Cos(self, n, data, a, where):
        self.parts[n.output[0]] = ("cos", data[0])
        self.values[n.output[0]] = torch.cos(self.values[data[0]])

    def const(self, name: str, where: str) -> np.ndarray:
        if name not in self.consts:
            raise Unsupported(f"{where}: {name!r} must be a constant")
        return self.consts[name]

    # --- constants --------------------------------------------------------------
    def fold(self, n, where: str) -> None:
        a = _attrs(n)
        op = n.op_type
        x = [self.consts[i] if i else None for i in n.input]
        if op == "Constant":
            from onnx import numpy_helper
            if "value" not in a:
                raise Unsupported(f"{where}: only a tensor 'value' is read")
            v = numpy_helper.to_array(a["value"])
        elif op == "Cast" or op == "Identity" or op == "Dropout":
            v = x[0]
        elif op == "ConstantOfShape":
            from onnx import numpy_helper
            fill = numpy_helper.to_array(a["value"]).reshape(-1)[0] if "value" in a else np.float32(0)
            v = np.full(x[0].astype(int).tolist(), fill)
        elif op == "Slice":
            starts, ends = x[1].astype(int).tolist(), x[2].astype(int).tolist()
            axes = x[3].astype(int).tolist() if len(x) > 3 and x[3] is not None else list(range(len(starts)))
            steps = x[4].astype(int).tolist() if len(x) > 4 and x[4] is not None else [1] * len(starts)
            index = [slice(None)] * x[0].ndim
            for st, en, ax, sp in zip(starts, ends, axes, steps):
                index[ax] = slice(st, en, sp)
            v = x[0][tuple(index)]
        elif op == "Gather":
            v = np.take(x[0], x[1], axis=a.get("axis", 0))
        elif op == "Unsqueeze":
            v = x[0]
            for ax in sorted(a["axes"] if "axes" in a else x[1].tolist()):
                v = np.expand_dims(v, ax)
        elif op == "Squeeze":
            axes = a.get("axes", x[1].tolist() if len(x) > 1 and x[1] is not None else None)
            v = np.squeeze(x[0], axis=tuple(axes) if axes is not None else None)
        elif op == "Concat":
            v = np.concatenate([np.atleast_1d(t) for t in x], axis=a.get("axis", 0))
        elif op in ("Add", "Sub", "Mul", "Div"):
            v = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op](x[0], x[1])
        elif op == "Reshape":
            v = x[0].reshape(x[1].astype(int))
        elif op == "Transpose":
            v = np.transpose(x[0], a.get("perm"))
        else:
            raise Unsupported(f"{where}: {op} of constants is not evaluated")
        self.consts[n.output[0]] = _float64(np.asarray(v))

    # --- operators on the network's values --------------------------------------
    def op_Shape(self, n, data, a, where):
        shape = np.array(self.values[data[0]].shape, dtype=np.int64)
        self.consts[n.output[0]] = shape[a.get("start", 0):a.get("end", len(shape))]

    def op_Identity(self, n, data, a, where):
        self.unary(n, data[0], None)

    op_Dropout = op_Identity

    def op_Cast(self, n, data, a, where):
        from onnx import TensorProto
        if a.get("to") not in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16):
            raise Unsupported(f"{where}: a cast of the network's values to a non-float type")
        self.unary(n, data[0], None)

    def op_Relu(self, n, data, a, where):
        self.unary(n, data[0], nn.ReLU())

    def op_Abs(self, n, data, a, where):
        from .registry import get_activation
        self.unary(n, data[0], get_activation("abs")())

    def op_Neg(self, n, data, a, where):
        self.unary(n, data[0], Pointwise(tuple(self.values[data[0]].shape[1:]), scale=-1.0))

    def op_Sigmoid(self, n, data, a, where):
        self.unary(n, data[0], nn.Sigmoid())

    def op_Tanh(self, n, data, a, where):
        self.unary(n, data[0], nn.Tanh())

    def op_Softplus(self, n, data, a, where):
        self.unary(n, data[0], nn.Softplus())

    def op_LeakyRelu(self, n, data, a, where):
        self.unary(n, data[0], nn.LeakyReLU(float(a.get("alpha", 0.01))))

    def op_Elu(self, n, data, a, where):
        self.unary(n, data[0], nn.ELU(float(a.get("alpha", 1.0))))

    def op_Flatten(self, n, data, a, where):
        if a.get("axis", 1) != 1:
            raise Unsupported(f"{where}: Flatten with axis {a.get('axis')} (only axis 1 keeps the batch)")
        self.unary(n, data[0], nn.Flatten())

    def _per_sample(self, out_shape: tuple, where: str) -> tuple:
        if len(out_shape) < 1 or out_shape[0] != 1:
            raise Unsupported(f"{where}: its output {tuple(out_shape)} does not keep the batch dimension first")
        return tuple(int(s) for s in out_shape[1:])

    def op_Reshape(self, n, data, a, where):
        if len(data) != 1:
            raise Unsupported(f"{where}: a shape computed from the network's values")
        target = self.const(n.input[1], where).astype(int).tolist()
        x = self.values[data[0]]
        if a.get("allowzero", 0) == 0:
            target = [x.shape[i] if t == 0 else t for i, t in enumerate(target)]
        y = x.reshape(target)
        self.unary(n, data[0], Reshape(self._per_sample(tuple(y.shape), where)))

    def op_Transpose(self, n, data, a, where):
        x = self.values[data[0]]
        perm = a.get("perm", list(range(x.dim() - 1, -1, -1)))
        if perm[0] != 0:
            raise Unsupported(f"{where}: Transpose {perm} moves the batch dimension")
        self.unary(n, data[0], Permute(perm[1:]))

    def op_Gemm(self, n, data, a, where):
        if n.input[0] not in self.nodes or len(data) != 1:
            raise Unsupported(f"{where}: Gemm whose weight is computed from the network's values")
        if a.get("transA", 0):
            raise Unsupported(f"{where}: Gemm with transA (the batch would be transposed)")
        B = self.const(n.input[1], where)
        W = (B if a.get("transB", 0) else B.T) * float(a.get("alpha", 1.0))
        C = self.const(n.input[2], where) * float(a.get("beta", 1.0)) if len(n.input) > 2 and n.input[2] else None
        self.unary(n, data[0], _linear(W, C, where))

    def op_MatMul(self, n, data, a, where):
        if n.input[0] not in self.nodes or len(data) != 1:
            raise Unsupported(f"{where}: MatMul of the network's values on the right, or of two computed tensors")
        B = self.const(n.input[1], where)
        if B.ndim != 2 or self.values[data[0]].dim() != 2:
            raise Unsupported(f"{where}: MatMul of a {self.values[data[0]].dim()}-d input with a {B.ndim}-d constant "
                              f"(lipbench reads a vector times a matrix)")
        self.unary(n, data[0], _linear(B.T, None, where))

    def _elementwise(self, n, data, where, kind: str):
        """Add / Sub / Mul / Div with one constant operand, as a Pointwise (a bias-free
        Linear's bias where an Add or Sub follows it and nothing else reads it)."""
        x_name = data[0]
        x_first = n.input[0] == x_name
        c = self.const(n.input[1] if x_first else n.input[0], where)
        x = self.values[x_name]
        shape = tuple(x.shape[1:])
        c = np.asarray(c, dtype=np.float64)
        try:
            full = np.broadcast_to(c, x.shape)
        except ValueError:
            raise Unsupported(f"{where}: a constant of shape {c.shape} does not broadcast to {tuple(x.shape)}") from None
        if full.shape != tuple(x.shape):
            raise Unsupported(f"{where}: a constant of shape {c.shape} would change the shape {tuple(x.shape)}")
        c = full[0]
        if kind == "Div" and not x_first:
            raise Unsupported(f"{where}: a constant divided by the network's values (not Lipschitz)")
        sign = -1.0 if kind == "Sub" else 1.0
        scale = shift = None
        if kind in ("Add", "Sub"):
            if x_first:
                shift = sign * c
            else:   # c - x
                scale, shift = np.full(shape, sign), c
            if scale is not None and sign > 0:   # c + x: the same shift
                scale, shift = None, c
            prev = self.nodes[x_name]
            if (scale is None and prev.kind == "unary" and isinstance(prev.module, nn.Linear)
                    and prev.module.bias is None and self.consumers.get(x_name, 0) == 1 and len(shape) == 1):
                lin = _linear(prev.module.weight.detach().numpy(), shift, where)
                prev.module = lin
                with torch.no_grad():
                    self.values[x_name] = lin(self.values[prev.inputs[0]])
                self.unary(n, x_name, None)
                return
        else:
            scale = 1.0 / c if kind == "Div" else c
        self.unary(n, x_name, Pointwise(shape, scale=scale, shift=shift))

    def _binary(self, n, data, a, where, kind):
        if len(data) == 2 or (len(data) == 1 and n.input[0] == n.input[1]):
            if kind not in ("Add", "Sub"):
                raise Unsupported(f"{where}: {kind} of two computed tensors (not an affine map)")
            x, y = n.input[0], n.input[1]
            if tuple(self.values[x].shape) != tuple(self.values[y].shape):
                raise Unsupported(f"{where}: {kind} of tensors of shapes {tuple(self.values[x].shape)} and "
                                  f"{tuple(self.values[y].shape)} (a broadcast)")
            w = (1.0, 1.0 if kind == "Add" else -1.0)
            v = self.values[x] + w[1] * self.values[y]
            self.add(n.output[0], Node(f"{n.name or n.output[0]} ({n.op_type})", "sum", [x, y], weights=w), v)
            return
        self._elementwise(n, data, where, kind)

    def op_Add(self, n, data, a, where):
        self._binary(n, data, a, where, "Add")

    def op_Sub(self, n, data, a, where):
        self._binary(n, data, a, where, "Sub")

    def op_Mul(self, n, data, a, where):
        self._binary(n, data, a, where, "Mul")

    def op_Div(self, n, data, a, where):
        self._binary(n, data, a, where, "Div")

    def op_Concat(self, n, data, a, where):
        x = self.values[data[0]]
        axis = a.get("axis", 1)
        if axis not in (1, 1 - x.dim()) or len(data) != len(n.input):
            raise Unsupported(f"{where}: Concat along axis {axis} or with constants (lipbench reads concatenations of "
                              f"computed tensors along axis 1)")
        v = torch.cat([self.values[i] for i in n.input], 1)
        self.add(n.output[0], Node(f"{n.name or n.output[0]} (Concat)", "concat", list(n.input)), v)

    def _pads2d(self, pads, where) -> tuple:
        """ONNX's 2-d pads [top, left, bottom, right] as torch's (left, right, top, bottom)."""
        if len(pads) != 4:
            raise Unsupported(f"{where}: pads {pads} (lipbench reads 2-d convolutions and pooling)")
        t, l, b, r = pads
        return (l, r, t, b)

    def _auto_pad(self, a, x, k, s, d, where) -> list:
        mode = a.get("auto_pad", "NOTSET")
        if mode in ("NOTSET", ""):
            return list(a.get("pads", [0] * 4))
        if mode == "VALID":
            return [0] * 4
        pads = [0] * 4
        for i, size in enumerate(x.shape[2:]):
            out = -(-size // s[i])
            total = max((out - 1) * s[i] + (k[i] - 1) * d[i] + 1 - size, 0)
            small, big = total // 2, total - total // 2
            pads[i], pads[i + 2] = (small, big) if mode == "SAME_UPPER" else (big, small)
        return pads

    def op_Conv(self, n, data, a, where):
        W = self.const(n.input[1], where)
        if W.ndim != 4:
            raise Unsupported(f"{where}: a {W.ndim - 2}-d convolution (lipbench reads 2-d ones)")
        B = self.const(n.input[2], where) if len(n.input) > 2 and n.input[2] else None
        x = self.values[data[0]]
        k = list(a.get("kernel_shape", W.shape[2:]))
        s = list(a.get("strides", [1, 1]))
        d = list(a.get("dilations", [1, 1]))
        l, r, t, b = self._pads2d(self._auto_pad(a, x, k, s, d, where), where)
        groups = int(a.get("group", 1))
        conv = nn.Conv2d(W.shape[1] * groups, W.shape[0], tuple(k), stride=tuple(s), dilation=tuple(d),
                         groups=groups, bias=B is not None, padding=(t, l) if (t, l) == (b, r) else 0,
                         dtype=torch.float64)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(W)))
            if B is not None:
                conv.bias.copy_(torch.from_numpy(np.ascontiguousarray(B)))
        if (t, l) != (b, r):   # asymmetric padding: a zero padding of its own first
            pad_out = n.output[0] + "/pad"
            with torch.no_grad():
                pad = nn.ZeroPad2d((l, r, t, b))
                self.add(pad_out, Node(f"{n.name or n.output[0]} (Conv's padding)", "unary", [data[0]], pad),
                         pad(x))
            self.unary(n, pad_out, conv)
        else:
            self.unary(n, data[0], conv)

    def _pool(self, n, data, a, where, cls):
        x = self.values[data[0]]
        k = list(a["kernel_shape"])
        s = list(a.get("strides", [1] * len(k)))
        d = list(a.get("dilations", [1] * len(k)))
        if len(k) != 2:
            raise Unsupported(f"{where}: {len(k)}-d pooling (lipbench reads 2-d pooling)")
        l, r, t, b = self._pads2d(self._auto_pad(a, x, k, s, d, where), where)
        if (t, l) != (b, r):
            raise Unsupported(f"{where}: asymmetric padding {[t, l, b, r]} of a pooling layer")
        ceil = bool(a.get("ceil_mode", 0))
        if cls is nn.MaxPool2d:
            mod = nn.MaxPool2d(tuple(k), tuple(s), (t, l), dilation=tuple(d), ceil_mode=ceil)
        else:
            if d != [1, 1]:
                raise Unsupported(f"{where}: AveragePool with dilations {d}")
            mod = nn.AvgPool2d(tuple(k), tuple(s), (t, l), ceil_mode=ceil,
                               count_include_pad=bool(a.get("count_include_pad", 0)))
        self.unary(n, data[0], mod)

    def op_MaxPool(self, n, data, a, where):
        if len(n.output) > 1 and n.output[1]:
            raise Unsupported(f"{where}: MaxPool's indices output")
        self._pool(n, data, a, where, nn.MaxPool2d)

    def op_AveragePool(self, n, data, a, where):
        self._pool(n, data, a, where, nn.AvgPool2d)

    def op_GlobalAveragePool(self, n, data, a, where):
        if self.values[data[0]].dim() != 4:
            raise Unsupported(f"{where}: GlobalAveragePool of a {self.values[data[0]].dim()}-d tensor")
        self.unary(n, data[0], nn.AdaptiveAvgPool2d(1))

    def op_BatchNormalization(self, n, data, a, where):
        if a.get("training_mode", 0) or len([o for o in n.output if o]) > 1:
            raise Unsupported(f"{where}: BatchNormalization in training mode normalises with the batch's own "
                              f"statistics (its output depends on the other inputs)")
        x = self.values[data[0]]
        scale, bias, mean, var = (self.const(i, where) for i in n.input[1:5])
        bn = (nn.BatchNorm2d if x.dim() == 4 else nn.BatchNorm1d)(len(scale), eps=float(a.get("epsilon", 1e-5)),
                                                                   dtype=torch.float64)
        with torch.no_grad():
            for t, v in ((bn.weight, scale), (bn.bias, bias), (bn.running_mean, mean), (bn.running_var, var)):
                t.copy_(torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)))
        self.unary(n, data[0], bn.eval())

    def op_Pad(self, n, data, a, where):
        x = self.values[data[0]]
        if len(n.input) > 3 and n.input[3]:
            raise Unsupported(f"{where}: Pad with an 'axes' input (lipbench reads pads for every axis)")
        pads = list(a["pads"]) if "pads" in a else self.const(n.input[1], where).astype(int).tolist()
        value = a.get("value", 0.0)
        if len(n.input) > 2 and n.input[2]:
            value = float(self.const(n.input[2], where))
        if a.get("mode", "constant") != "constant" or value != 0.0:
            raise Unsupported(f"{where}: Pad mode {a.get('mode', 'constant')!r} with value {value} (lipbench reads a "
                              f"zero padding)")
        r = x.dim()
        begin, end = pads[:r], pads[r:]
        if x.dim() != 4 or begin[:2] != [0, 0] or end[:2] != [0, 0]:
            raise Unsupported(f"{where}: Pad {pads} of a {r}-d tensor (lipbench reads a zero padding of an image's "
                              f"height and width)")
        self.unary(n, data[0], nn.ZeroPad2d((begin[3], end[3], begin[2], end[2])))


def _float64(a: np.ndarray) -> np.ndarray:
    """A constant as the reader keeps it: floats in float64 (exactly, from float32), the
    rest (shapes, indices) as they are."""
    return a.astype(np.float64) if a.dtype.kind == "f" else a


def _linear(W: np.ndarray, b, where: str) -> nn.Linear:
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2:
        raise Unsupported(f"{where}: a weight of shape {W.shape} (lipbench reads a matrix)")
    lin = nn.Linear(W.shape[1], W.shape[0], bias=b is not None, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W)))
        if b is not None:
            b = np.asarray(b, dtype=np.float64)
            try:
                lin.bias.copy_(torch.from_numpy(np.array(np.broadcast_to(b, (1, W.shape[0]))[0])))
            except ValueError:
                raise Unsupported(f"{where}: a bias of shape {b.shape} for {W.shape[0]} outputs") from None
    return lin


def as_float64(model):
    """A copy of ``model`` computing in float64: its float constants, inputs, outputs and
    casts to float made double (what :func:`check` evaluates)."""
    import onnx
    from onnx import TensorProto, numpy_helper
    m = onnx.ModelProto()
    m.CopyFrom(model)
    F, D = TensorProto.FLOAT, TensorProto.DOUBLE
    g = m.graph
    for t in list(g.initializer):
        if t.data_type == F:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
    for v in list(g.input) + list(g.output) + list(g.value_info):
        if v.type.tensor_type.elem_type == F:
            v.type.tensor_type.elem_type = D
    for n in g.node:
        for a in n.attribute:
            if n.op_type == "Constant" and a.name == "value" and a.t.data_type == F:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float64), a.t.name))
            if n.op_type == "Cast" and a.name == "to" and a.i == F:
                a.i = D
    del onnx
    return m


def check(tree: nn.Module, model, shape: tuple, path: str, samples: int = 3) -> tuple[float, str]:
    """(the largest relative difference between ``tree`` and the file's own evaluation on
    ``samples`` standard normal inputs, the last times 10; the precision compared): onnxruntime on the
    float64 copy of the model, to :data:`CHECK_RTOL`; where onnxruntime has no float64
    kernel for an operator (Conv, ...), on the file as it is (float32) to
    :data:`CHECK_RTOL_FLOAT32`.  Raises :class:`UserError` above the tolerance; None
    (nothing checked) where onnxruntime is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        sess, dtype, rtol = ort.InferenceSession(as_float64(model).SerializeToString(), opts,
                                                 providers=["CPUExecutionProvider"]), np.float64, CHECK_RTOL
    except Exception:   # an operator onnxruntime has no float64 kernel for
        try:
            sess, dtype, rtol = ort.InferenceSession(model.SerializeToString(), opts,
                                                     providers=["CPUExecutionProvider"]), np.float32, CHECK_RTOL_FLOAT32
        except Exception as e:
            raise UserError(f"{path}: onnxruntime cannot evaluate it ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    inp = sess.get_inputs()[0]
    gen = np.random.default_rng(0)
    worst = 0.0
    for k in range(samples):   # inputs of both signs (a ReLU read as |x| shows), the last one scaled up
        x = gen.standard_normal((1, *shape)) * (1.0 if k < samples - 1 else 10.0)
        ref = sess.run(None, {inp.name: x.astype(dtype)})[0]
        with torch.no_grad():
            ours = tree(torch.from_numpy(x.astype(dtype).astype(np.float64))).numpy()
        ref = np.asarray(ref, dtype=np.float64)
        if ref.size != ours.size:
            raise UserError(f"{path}: lipbench's reading gives {ours.size} outputs, the file's own evaluation "
                            f"{ref.size}")
        ref = ref.reshape(ours.shape)
        worst = max(worst, float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-300)))
    if worst > rtol:
        raise UserError(f"{path}: lipbench's reading differs from the file's own evaluation by {worst:.2e} (relative, "
                        f"{np.dtype(dtype).name}; allowed {rtol:g})")
    return worst, np.dtype(dtype).name
