"""``lirpa``: sound bounds on the Jacobian over a box from auto_LiRPA's Jacobian API
(Shi et al., "Efficiently computing local Lipschitz constants of neural networks via
bound propagation", NeurIPS 2022).

The network is wrapped so that its output is ``JacobianOP.apply(f(x), x)``; auto_LiRPA
expands the backward pass into a graph it can bound, and ``compute_jacobian_bounds``
(alpha-CROWN on the forward network for the intermediate bounds, then CROWN on the
gradient graph) returns elementwise bounds lo <= J <= hi over the box.  The reported
value is the norm of the entrywise majorant max(|lo|, |hi|) (sound for p = 1, 2, inf).
For a class pair the network is first composed with the row e_i - e_j, so the bounds are
those of the margin's gradient.  auto_LiRPA 0.7.1 has no gradient node for BatchNorm or
average pooling (``build_gradient_node`` raises NotImplementedError), and its Conv2d
gradient fails on the Jacobian's extra dimension (conv_transpose2d gets a 5-d input), so
every affine layer but a Linear is handed to it as what the network walk reads it as: a
Linear with its dense matrix and bias, between a Flatten and a Reshape
(``unsupported`` above the dense limit).  Computed in float64 (auto_LiRPA builds its gradient
graph in torch's default dtype, so the default is switched for the call).

auto_LiRPA is not installable from PyPI in a working version: PyPI's ``auto-lirpa`` is
0.3 (2022), which has no Jacobian API (0.5 is the first release with this one).  Its
repository pins torch < 2.9, yet runs on torch 2.13; install it with ``--no-deps``:

    pip install packaging appdirs tqdm graphviz
    pip install --no-deps 'auto_LiRPA @ git+https://github.com/Verified-Intelligence/auto_LiRPA'

Without it (or with an older release) ``bench list`` and every row say ``not_installed``
with the reason and these commands.
"""
from __future__ import annotations

import contextlib
import copy
import time

import numpy as np
import torch
from torch import nn

from bench.api import Bound, Budget, Query, Verifier
from bench.modules import Concat, Reshape, Sum
from bench.network import MAX_DENSE_ENTRIES, Activation, Affine, Branch, Net, all_layers, flat_children
from bench.norms import jacobian_norm
from bench.registry import register

MIN_VERSION = (0, 5)
INSTALL = ("pip install packaging appdirs tqdm graphviz && pip install --no-deps "
           "'auto_LiRPA @ git+https://github.com/Verified-Intelligence/auto_LiRPA'")


def _installed_version() -> str | None:
    from importlib import metadata
    for dist in ("auto_LiRPA", "auto-lirpa", "auto_lirpa"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


#: activations whose Jacobian auto_LiRPA 0.7.1 bounds (tried one by one; abs, maxmin,
#: leaky_relu, hardtanh, sinsplit and sincos raise inside it).  Not crelu: auto_LiRPA
#: returns bounds for it that sampled Jacobians escape (by 0.056 on a bias-free
#: 6-8-4-8-3 CReLU network, whose box constant it then puts 4% below a witnessed lower
#: bound; tests/test_conv_verifiers.py keeps the case)
JACOBIAN_ACTIVATIONS = frozenset({"relu", "tanh", "sigmoid"})


@register
class LiRPA(Verifier):
    name = "lirpa"
    kind = "upper"
    description = "auto_LiRPA's Jacobian bounds (local Lipschitz constant over a box)"
    requires = ("auto_LiRPA",)
    install_hint = INSTALL
    params = {"optimize": True}
    graphs = True   # auto_LiRPA bounds the module's own graph: residual adds and concatenations too

    @classmethod
    def missing(cls) -> list[str]:
        miss = super().missing()
        if miss:
            return miss
        v = _installed_version()
        try:
            parts = tuple(int(x) for x in (v or "0").split(".")[:2])
        except ValueError:
            parts = (0, 0)
        if parts < MIN_VERSION:
            return [f"auto_LiRPA >= {MIN_VERSION[0]}.{MIN_VERSION[1]} (installed: {v}, which has no Jacobian API)"]
        return []

    def supports(self, net: Net, query: Query) -> str | None:
        if query.domain == "global":
            return "lirpa bounds the Jacobian over a box: give the query a domain {center, radius}"
        layers = list(all_layers(net.layers))
        other = sorted({a.name for a in layers if isinstance(a, Activation)} - JACOBIAN_ACTIVATIONS)
        if other:
            return (f"auto_LiRPA has no Jacobian bounds for {', '.join(other)} (it has them for "
                    f"{', '.join(sorted(JACOBIAN_ACTIVATIONS))})")
        for l in (l for l in layers if isinstance(l, Affine)):
            if not isinstance(l.module, nn.Linear) and l.in_dim * l.out_dim > MAX_DENSE_ENTRIES:
                return (f"layer {l.index} ({type(l.module).__name__}) is handed to auto_LiRPA as a dense Linear "
                        f"(it has no working gradient node for it), and its {l.out_dim} x {l.in_dim} matrix is above the "
                        f"dense limit of {MAX_DENSE_ENTRIES:,} entries")
        return super().supports(net, query)

    def run(self, net: Net, query: Query, budget: Budget) -> Bound:
        import logging
        from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm
        from auto_LiRPA.jacobian import JacobianOP
        for name in ("auto_LiRPA", "auto_LiRPA.utils"):
            logging.getLogger(name).setLevel(logging.WARNING)

        class JacobianOf(nn.Module):
            def __init__(self, model):
                super().__init__()
                self.model = model

            def forward(self, x):
                return JacobianOP.apply(self.model(x), x)

        model = _as_linear(net, copy.deepcopy(net.module).cpu().eval())
        if query.is_pair:
            i, j = query.target
            row = nn.Linear(net.out_dim, 1, bias=False)
            with torch.no_grad():
                row.weight.zero_()
                row.weight[0, i], row.weight[0, j] = 1.0, -1.0
            model = nn.Sequential(model, row)
        t0 = time.perf_counter()
        with _default_dtype(torch.float64):
            model = model.double()
            x_L, x_U = (torch.as_tensor(a).reshape(1, *net.input_shape) for a in query.box())
            center = (x_L + x_U) / 2
            try:
                bm = BoundedModule(JacobianOf(model), center, device="cpu")
            except Exception as e:   # an operator auto_LiRPA cannot parse or bound
                return Bound(None, "upper", "unsupported",
                             error=f"auto_LiRPA cannot bound this network: {type(e).__name__}: {e}".splitlines()[0])
            x = BoundedTensor(center, PerturbationLpNorm(norm=np.inf, x_L=x_L, x_U=x_U))
            with contextlib.redirect_stdout(None):
                lb, ub = bm.compute_jacobian_bounds(x, optimize=self.opts["optimize"])
        lb = lb.detach().reshape(lb.shape[1], -1)
        ub = ub.detach().reshape(ub.shape[1], -1)
        M = torch.maximum(lb.abs(), ub.abs()).double()
        value = _majorant_norm(M, query)
        import auto_LiRPA
        return Bound(value * (1 + 1e-10), "upper", "ok",
                     stats={"auto_lirpa_version": getattr(auto_LiRPA, "__version__", None),
                            "bound_s": time.perf_counter() - t0, "optimize": self.opts["optimize"]})


def _as_linear(net: Net, module: nn.Module) -> nn.Module:
    """``module`` (a copy of ``net.module``) with every affine layer but a Linear (Conv2d,
    BatchNorm, average pooling, selections) replaced by a float64 Linear with the walk's
    dense matrix and bias, between a Flatten and a Reshape to a constant shape (nn.Unflatten's
    shape arithmetic becomes operators auto_LiRPA cannot bound once torch's ONNX exporter has
    run in the process): the same map, in layers auto_LiRPA can differentiate; the branches
    of a Sum or Concat likewise."""
    return _swapped(net.layers, flat_children(module))


def _swapped(layers: list, children: list) -> nn.Module:
    by_index = {_position(l.index): l for l in layers}
    out = []
    for i, m in enumerate(children):
        l = by_index.get(i)
        if isinstance(l, Branch):
            new = [_swapped(b, flat_children(seq)) for b, seq in zip(l.branches, m.branches)]
            out.append(Sum(*new, weights=l.weights) if l.kind == "sum" else Concat(*new))
            continue
        if not isinstance(l, Affine) or isinstance(l.module, nn.Linear):
            out.append(m)
            continue
        lin = nn.Linear(l.in_dim, l.out_dim, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.as_tensor(l.matrix()))
            b = l.bias()
            lin.bias.copy_(torch.as_tensor(b) if b is not None else torch.zeros(l.out_dim, dtype=torch.float64))
        out += [nn.Flatten(), lin] + ([Reshape(l.out_shape)] if len(l.out_shape) > 1 else [])
    return nn.Sequential(*out)


def _position(index) -> int:
    """A layer's position in its own chain: the index itself at the top, the last part of
    ``"i.b.k"`` inside a branch."""
    return index if isinstance(index, int) else int(str(index).rsplit(".", 1)[-1])


def _majorant_norm(M: torch.Tensor, query: Query) -> float:
    """Norm of the nonnegative majorant of the Jacobian (rows: outputs, or the margin)."""
    return float(jacobian_norm(M.unsqueeze(0), query.p, query.is_pair)[0])


@contextlib.contextmanager
def _default_dtype(dt):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dt)
    try:
        yield
    finally:
        torch.set_default_dtype(old)
