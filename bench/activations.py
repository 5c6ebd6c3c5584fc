"""What lipbench knows about an activation: one description class per activation.

A description is a subclass of :class:`ActivationSpec`, registered with
:func:`register_activation`; that registers it under its ``name`` (usable as
``activation: NAME`` in an architecture, listed by ``python -m bench list``) and for its
``module_class`` (so that the network walk recognises every instance of that class and
of its subclasses).  Everything else asks the description: the network walk (slope,
Lipschitz constants, width), the trivial bound, the SDP verifiers, the exact verifiers'
piecewise-linear form, the lower bound's smooth surrogate, the records of a training
run; :func:`describe` finds a module's description.  Adding an activation is one class (next to its ``nn.Module``, in a plug-in)::

    @register_activation
    class SiLUSpec(ActivationSpec):
        name = "silu"
        module_class = nn.SiLU
        slope = (-0.1, 1.1)      # (x sigmoid x)' lies in [-0.0999, 1.0999]

The fields, class attributes (or properties, where they depend on the module's
parameters: ``self.module`` is the instance being described, None for the class):

``name``
    The activation's name.
``module_class``
    The ``nn.Module`` class it describes.  The classmethod ``build(**params)`` makes one
    for ``activation: NAME`` (``params``: the architecture's ``activation_params``);
    override it for another factory.
``slope``
    ``(lo, hi)``: an elementwise map whose derivative lies in [lo, hi] everywhere
    (what LipSDP and ECLipsE need); None for any other map.  Only for maps that keep the
    width.
``lipschitz``
    ``{p: c}`` for p in 1, 2, inf: an upper bound on the Lipschitz constant from the
    p-norm to the p-norm.  None (the default) means ``max(|lo|, |hi|)`` of the slope
    for every p.
``saturates``
    The p for which the operator p-norm of the Jacobian equals 1 at every point where it
    is differentiable (default: none).
``out_factor``
    Output width / input width (default 1).
``in_shape``
    Set by the network walk (:func:`describe` with the layer's input shape): the shape of
    one input without the batch dimension, e.g. (C, H, W) after a conv; None for a
    description made without a network.  ``pwl`` and ``interval`` work on flattened
    inputs (row-major, channel first); a map that is not coordinatewise reads the flat
    coordinates through it (MaxMin pairs channels 2k and 2k+1 at each pixel of an image,
    coordinates 2k and 2k+1 of a vector).  Maps that act on the channel dimension (dim 1
    of a batch: CReLU concatenates along it) need nothing: concatenating channels and then
    flattening is concatenating the flattened parts.

and the optional methods (the base class's say "not available"):

``pwl(in_dim) -> (P, Q, A)``
    Matrices (float64) with ``h = P z + Q relu(A z)``, for the exact verifiers ``bab``
    and ``mip``; None when the map is not piecewise linear in that form.  Raise
    :class:`bench.api.Unsupported` for a parameter value the form cannot hold.
``interval(l, u) -> (lo, hi)``
    The exact interval image of the box [l, u] (torch tensors (B, in_dim); the result
    is (B, out_dim)), coordinate by coordinate; None when not available.  A description
    that gives ``pwl`` gives ``interval`` too (the exact verifiers' bounds use both).
``smooth(beta) -> nn.Module``
    A smooth surrogate (close to the activation for large ``beta``) along which the
    lower bound's gradient search moves; None: the activation is used as it is.
``reference() -> nn.Module``
    The function the description (and so every verifier) describes, where the module's
    own forward is a numerical shortcut of it that differs a little (torch's Softplus
    returns x above its threshold); the lower bound evaluates this one, so that it bounds
    the same function as the upper bounds.  None (the default): the module itself.

A description may raise :class:`bench.api.Unsupported` from ``slope`` or ``lipschitz``
for parameter values it cannot describe; the walk names the layer.

MaxPool2d and AdaptiveMaxPool2d are described by :class:`MaxPool2dSpec`, which the walk
makes with the layer's input shape (its windows depend on it); it is registered under no
name (no architecture builds it from a flat input).

Modules of plug-ins may still describe themselves with the older hook
``lipbench_spec() -> dict`` (keys ``name``, ``slope``, ``lipschitz``, ``saturates``,
``out_factor`` as above) and ``lipbench_smooth(beta)``; such a module is described by a
:class:`DictSpec` made from them.  ``register_activation("name")(factory)`` registers a
plain factory ``(**params) -> nn.Module`` under a name, as before.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .api import Unsupported, UserError

#: name -> description class (the activations an architecture can name)
ACTIVATIONS: dict[str, type["ActivationSpec"]] = {}
#: nn.Module class -> description class (found for instances of the class and its subclasses)
_BY_CLASS: dict[type, type["ActivationSpec"]] = {}


class ActivationSpec:
    """The description of one activation (see the module doc for the fields).  An
    instance describes one module: ``ActivationSpec(module)``."""

    name: str = ""
    module_class: type[nn.Module] | None = None
    slope: tuple[float, float] | None = None
    lipschitz: dict[float, float] | None = None
    saturates: tuple[float, ...] = ()
    out_factor: int = 1
    in_shape: tuple | None = None

    def __init__(self, module: nn.Module | None = None):
        self.module = module

    @classmethod
    def build(cls, **params) -> nn.Module:
        """The module for ``activation: NAME`` with ``activation_params: params``."""
        if cls.module_class is None:
            raise UserError(f"activation {cls.name!r} has no module class to build")
        return cls.module_class(**params)

    def pwl(self, in_dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        return None

    def interval(self, l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None

    def smooth(self, beta: float) -> nn.Module | None:
        return None

    def reference(self) -> nn.Module | None:
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class DictSpec(ActivationSpec):
    """The description of a module that has the older ``lipbench_spec()`` hook."""

    def __init__(self, module: nn.Module, spec: dict):
        super().__init__(module)
        self.name = spec["name"]
        self.slope = spec.get("slope")
        self.lipschitz = spec.get("lipschitz")
        self.saturates = tuple(spec.get("saturates", ()))
        self.out_factor = int(spec.get("out_factor", 1))

    def smooth(self, beta):
        f = getattr(self.module, "lipbench_smooth", None)
        return f(beta) if f is not None else None


def register_activation(spec):
    """Register a description: ``@register_activation`` on an :class:`ActivationSpec`
    subclass; or, as before, ``@register_activation("name")`` on any factory
    ``(**params) -> nn.Module`` (its modules are described by their class or their
    ``lipbench_spec()``).  The last registration of a name wins."""
    if isinstance(spec, str):
        name = spec

        def deco(factory):
            if isinstance(factory, type) and issubclass(factory, ActivationSpec):
                if factory.name != name:
                    raise TypeError(f"{factory.__qualname__} is named {factory.name!r}, not {name!r}")
                _register(factory)
            else:  # a plain factory: its modules describe themselves (lipbench_spec) or by class
                ACTIVATIONS[name] = type(f"FactorySpec_{name}", (ActivationSpec,), {
                    "name": name, "build": classmethod(lambda cls, **params: factory(**params)),
                    "__module__": getattr(factory, "__module__", __name__)})
            return factory
        return deco
    if not (isinstance(spec, type) and issubclass(spec, ActivationSpec)):
        raise TypeError("register_activation takes an ActivationSpec subclass or a name")
    return _register(spec)


def _register(spec: type[ActivationSpec]) -> type[ActivationSpec]:
    if not spec.name:
        raise TypeError(f"{spec.__qualname__} has no name")
    ACTIVATIONS[spec.name] = spec
    if spec.module_class is not None:
        _BY_CLASS[spec.module_class] = spec
    return spec


def describe(module: nn.Module, in_shape: tuple | None = None) -> ActivationSpec | None:
    """The description of ``module``, or None when it is no known activation: its own
    ``lipbench_spec()`` if it has one, else the description registered for its class
    (or the nearest base class).  ``in_shape``: the shape of one input (without the
    batch dimension), as the walk knows it."""
    d = module.lipbench_spec() if hasattr(module, "lipbench_spec") else None
    spec = DictSpec(module, d) if d is not None else None
    for cls in type(module).__mro__ if spec is None else ():
        found = _BY_CLASS.get(cls)
        if found is not None:
            spec = found(module)
            break
    if spec is not None and in_shape is not None:
        spec.in_shape = tuple(int(s) for s in in_shape)
    return spec


def channel_pairs(in_shape: tuple | None, in_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The flat indices (a, b) of the pairs (channel 2k, channel 2k + 1) at every position
    of an input of ``in_shape`` (a vector's pairs of coordinates when it is None or has
    one dimension): the pairing of MaxMin on dim 1 of a batch.  Raises
    :class:`Unsupported` for an odd number of channels."""
    shape = tuple(in_shape) if in_shape else (in_dim,)
    if int(np.prod(shape)) != in_dim:
        raise Unsupported(f"described for inputs of shape {shape}, asked for width {in_dim}")
    if shape[0] % 2:
        raise Unsupported(f"pairs channels (dim 1), and an input of shape {shape} has an odd number of channels, "
                          f"{shape[0]}")
    idx = np.arange(in_dim).reshape(shape)
    return idx[0::2].reshape(-1), idx[1::2].reshape(-1)


def get(name: str) -> type[ActivationSpec]:
    """The description registered under ``name`` so far (``bench.registry.get_activation``
    loads the plug-ins first)."""
    if name not in ACTIVATIONS:
        raise UserError(f"unknown activation {name!r}; registered: {', '.join(sorted(ACTIVATIONS)) or '(none)'}")
    return ACTIVATIONS[name]


# --- torch's activations ---------------------------------------------------------------

class _Monotone(ActivationSpec):
    """An elementwise non-decreasing map: the image of [l, u] is [f(l), f(u)]."""

    def interval(self, l, u):
        return self.module(l), self.module(u)


@register_activation
class ReLUSpec(_Monotone):
    name = "relu"
    module_class = nn.ReLU
    slope = (0.0, 1.0)

    def pwl(self, in_dim):
        I = np.eye(in_dim)
        return np.zeros((in_dim, in_dim)), I, I

    def interval(self, l, u):
        return torch.relu(l), torch.relu(u)

    def smooth(self, beta):
        return nn.Softplus(beta=beta)


@register_activation
class LeakyReLUSpec(ActivationSpec):
    name = "leaky_relu"
    module_class = nn.LeakyReLU

    @property
    def alpha(self) -> float:
        return float(self.module.negative_slope)

    @property
    def slope(self):
        a = self.alpha
        return (min(a, 1.0), max(a, 1.0))

    def pwl(self, in_dim):
        a = self._monotone()
        I = np.eye(in_dim)
        return a * I, (1.0 - a) * I, I

    def interval(self, l, u):   # monotone
        a = self._monotone()
        f = lambda z: a * z + (1 - a) * torch.relu(z)  # noqa: E731
        return f(l), f(u)

    def _monotone(self) -> float:
        a = self.alpha
        if a < 0:
            raise Unsupported(f"leaky_relu with a negative slope {a} is not monotone")
        return a


@register_activation
class TanhSpec(_Monotone):
    name = "tanh"
    module_class = nn.Tanh
    slope = (0.0, 1.0)


@register_activation
class SigmoidSpec(_Monotone):
    name = "sigmoid"
    module_class = nn.Sigmoid
    slope = (0.0, 0.25)


@register_activation
class HardtanhSpec(_Monotone):   # also nn.ReLU6, a subclass
    name = "hardtanh"
    module_class = nn.Hardtanh
    slope = (0.0, 1.0)


class _OneMinimum(ActivationSpec):
    """An elementwise map that decreases up to ``argmin`` and increases after it: the
    image of [l, u] is [f(clamp(argmin, l, u)), max(f(l), f(u))] (the lower end also
    takes f(l) and f(u), so that float rounding near a flat minimum cannot put it
    above a computed value)."""

    argmin: float = 0.0

    def interval(self, l, u):
        f = self.module
        fl, fu = f(l), f(u)
        fm = f(torch.minimum(torch.maximum(torch.full_like(l, self.argmin), l), u))
        return torch.minimum(torch.minimum(fl, fu), fm), torch.maximum(fl, fu)


@register_activation
class GELUSpec(_OneMinimum):
    r"""GELU, g(x) = x Phi(x) (``approximate='none'``) or its tanh form
    g(x) = x (1 + tanh(c (x + 0.044715 x^3))) / 2, c = sqrt(2 / pi) (``'tanh'``).

    Both have g(x) - g(-x) = x, so g'(x) + g'(-x) = 1: the largest slope is 1 minus the
    smallest.

    Exact (erf) form: g' = Phi + x phi and g'' = 2 phi + x phi' = phi (2 - x^2)
    (phi' = -x phi).  So g' decreases on (-inf, -sqrt 2], increases on [-sqrt 2, sqrt 2]
    and decreases on [sqrt 2, inf), with limits 0 at -inf and 1 at +inf: its extremes
    are g'(+-sqrt 2) = Phi(+-sqrt 2) +- sqrt 2 phi(sqrt 2) = 1.1289041452 and
    -0.1289041452; declared (-0.128905, 1.128905), rounded outward.  g' < 0 on
    (-inf, -sqrt 2] (it falls from its limit 0) and > 1 on [sqrt 2, inf) (it falls to
    1), so it has one zero, x* = -0.7517915247 in (-sqrt 2, sqrt 2): g decreases to its
    minimum g(x*) = -0.1699712 and increases after.

    tanh form (checked numerically, not in closed form): g'' has exactly two zeros,
    +-1.4185040088 (g'' > 0 between them, < 0 outside; ``tests/test_walk_layers.py``
    checks the sign of g'' and the slope bounds on a grid of step 1e-5 over [-12, 12],
    where |g''| <= 0.8 bounds the grid's error by 4e-6, and beyond which g' is within
    1e-12 of 0 or 1); the extremes g'(+-1.4185040088) = 1.1289930687 and -0.1289930687
    are declared as (-0.129, 1.129), a margin of 6.9e-6.  One zero of g' again, at
    x* = -0.7524614221 (minimum -0.1700408)."""

    name = "gelu"
    module_class = nn.GELU

    @property
    def _tanh(self) -> bool:
        return getattr(self.module, "approximate", "none") == "tanh"

    @property
    def slope(self):
        return (-0.129, 1.129) if self._tanh else (-0.128905, 1.128905)

    @property
    def argmin(self):
        return -0.7524614220710163 if self._tanh else -0.7517915246935645


@register_activation
class SiLUSpec(_OneMinimum):
    r"""SiLU (swish), s(x) = x sigma(x).

    s' = sigma (1 + x (1 - sigma)) and s'' = sigma (1 - sigma) (2 - x tanh(x / 2))
    (1 - 2 sigma(x) = -tanh(x / 2)).  x tanh(x / 2) is even, 0 at 0 and increasing on
    [0, inf) without bound, so it equals 2 exactly at +-x0, x0 = 2.3993572805: s'
    decreases on (-inf, -x0], increases on [-x0, x0], decreases on [x0, inf), with
    limits 0 at -inf and 1 at +inf.  Its extremes are s'(x0) = 1.0998393201 and
    s'(-x0) = -0.0998393201 (s(x) - s(-x) = x, so s'(x) + s'(-x) = 1); declared
    (-0.09984, 1.09984), rounded outward.  As for GELU, s' < 0 on (-inf, -x0] and > 1 on
    [x0, inf), so s' has one zero x* = -1.2784645428: s decreases to its minimum
    s(x*) = -0.2784645428 and increases after."""

    name = "silu"
    module_class = nn.SiLU
    slope = (-0.09984, 1.09984)
    argmin = -1.2784645427610738


@register_activation
class ELUSpec(ActivationSpec):
    r"""ELU(alpha): x for x > 0, alpha (e^x - 1) for x <= 0 (torch's definition, for
    every alpha; continuous at 0).

    Its derivative is 1 on x > 0 and alpha e^x on x < 0, which lies strictly between 0
    and alpha; by the mean value theorem on each piece (and the continuity at 0) every
    difference quotient lies in the closed hull of these values, so the slope is
    (min(0, alpha), max(1, alpha)): (0, 1) for 0 <= alpha <= 1, (0, alpha) for
    alpha > 1, (alpha, 1) for alpha < 0.  For alpha >= 0 the map is non-decreasing; for
    alpha < 0 it decreases on x <= 0 (from -alpha towards 0) and increases after: one
    minimum, at 0."""

    name = "elu"
    module_class = nn.ELU

    @property
    def alpha(self) -> float:
        return float(self.module.alpha)

    @property
    def slope(self):
        a = self.alpha
        return (min(0.0, a), max(1.0, a))

    def interval(self, l, u):
        f = self.module
        fl, fu = f(l), f(u)
        if self.alpha >= 0:    # monotone
            return fl, fu
        f0 = f(torch.minimum(torch.maximum(torch.zeros_like(l), l), u))
        return torch.minimum(torch.minimum(fl, fu), f0), torch.maximum(fl, fu)


class ExactSoftplus(nn.Module):
    """softplus_beta(x) = log(1 + exp(beta x)) / beta for every x, computed stably as
    (max(beta x, 0) + log1p(exp(-|beta x|))) / beta: torch's Softplus without its
    threshold."""

    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.beta = float(beta)

    def forward(self, x):
        y = self.beta * x
        return (torch.relu(y) + torch.log1p(torch.exp(-y.abs()))) / self.beta


#: the smallest Softplus threshold read as softplus (torch's default)
SOFTPLUS_MIN_THRESHOLD = 20.0


@register_activation
class SoftplusSpec(ActivationSpec):
    r"""Softplus(beta, threshold): log(1 + exp(beta x)) / beta, whose derivative
    sigma(beta x) lies in (0, 1) for every beta != 0: slope (0, 1), non-decreasing.

    torch returns x instead where beta x > threshold, which is below the function by
    log1p(exp(-threshold)) / |beta| there: a jump, so torch's module is, strictly, not
    Lipschitz at all.  The description (and every verifier) therefore reads the module as
    the softplus function itself (:meth:`reference`, which the lower bound evaluates, so
    that lower and upper bounds bound the same function), and only for a threshold >= 20,
    torch's default, where the jump is <= 2.1e-9 / |beta|, far below the float32
    resolution of the values (about 20 / |beta|) where it happens; a smaller threshold is
    unsupported with that reason."""

    name = "softplus"
    module_class = nn.Softplus

    @property
    def slope(self):
        beta, thr = float(self.module.beta), float(self.module.threshold)
        if beta == 0:
            raise Unsupported("softplus with beta = 0 is not defined (log(1 + exp(0 x)) / 0)")
        if not thr >= SOFTPLUS_MIN_THRESHOLD:
            jump = float(np.log1p(np.exp(-thr))) / abs(beta)
            raise Unsupported(f"softplus with threshold {thr:g}: torch returns x where beta x > threshold, a jump "
                              f"of log1p(exp(-threshold)) / |beta| = {jump:.3g} below the softplus function that "
                              f"the verifiers bound; a threshold >= {SOFTPLUS_MIN_THRESHOLD:g} (torch's default) "
                              f"makes the jump negligible")
        return (0.0, 1.0)

    def reference(self):
        return ExactSoftplus(float(self.module.beta))

    def interval(self, l, u):   # monotone
        f = self.reference()
        return f(l), f(u)


class MaxPool2dSpec(ActivationSpec):
    r"""MaxPool2d or AdaptiveMaxPool2d on an input of shape (C, H, W): output w is the
    largest input in its window S_w (padding counts as -inf, so only input pixels count).
    Made by the walk with the input shape; the windows are those torch uses (kernel,
    stride, padding, dilation, ceil_mode): along each axis, window o covers
    o s - pad + d j, 0 <= j < k, clipped to the axis; adaptive pooling to n outputs on an
    axis of length L: window o covers [floor(o L / n), ceil((o + 1) L / n)) (so
    AdaptiveMaxPool2d(1), the max over all pixels of each channel, puts each input in
    exactly one window); a 2-d window is the product of one window per axis.  Let
    c_i be the number of windows that hold input i and c = max_i c_i (the product of the
    two axes' maxima; 1 when stride >= dilation (kernel - 1) + 1, the windows then being
    disjoint).

    Lipschitz constants, with d = x - y:

    - |max_{S_w} x - max_{S_w} y| <= max_{i in S_w} |d_i| (max is 1-Lipschitz in the
      l_inf norm).
    - p = inf: each output moves by at most ||d||_inf: constant 1.
    - p = 1: sum_w max_{S_w} |d_i| <= sum_w sum_{i in S_w} |d_i| = sum_i c_i |d_i|
      <= c ||d||_1: constant c.
    - p = 2: sum_w (max_{S_w} |d_i|)^2 <= sum_w sum_{i in S_w} d_i^2 = sum_i c_i d_i^2
      <= c ||d||_2^2: constant sqrt(c) (rounded up).
    - Each is attained: x = 0, y = e_i with c_i = c moves exactly the c windows that hold
      i, each by 1.

    Where it is differentiable its Jacobian selects one input per window (each row one
    1): operator inf-norm 1, so it saturates inf; with disjoint windows (c = 1) the rows
    are distinct unit vectors, so the Jacobian has norm 1 for p = 1 and 2 too.

    Interval image: max is monotone in each argument, so [l, u] maps to
    [max_{S_w} l, max_{S_w} u]: the layer applied to l and to u, exactly.

    Piecewise-linear form for ``bab`` and ``mip`` (h = P z + Q relu(A z), one unit per
    row of A, each input in at most one unit): a window of two inputs (a, b) is
    b + relu(a - b), one unit; a window of one input is a selection (P only).  The max of
    three or more values needs nested ReLUs (max(a, b, c) = c + relu(b + relu(a - b) - c)),
    which one layer of that form cannot hold, and overlapping windows would put an input
    in two units: both are unsupported there, with the reason."""

    name = "maxpool2d"
    module_class = None
    slope = None

    def __init__(self, module: nn.Module, in_shape: tuple):
        super().__init__(module)
        m = module
        if m.return_indices:
            raise Unsupported(f"{type(m).__name__} with return_indices=True returns a tuple")
        if len(in_shape) != 3:
            raise Unsupported(f"{type(m).__name__} on an input of shape {tuple(in_shape)}: the walk reads it on "
                              f"(C, H, W)")
        self.in_shape = tuple(int(s) for s in in_shape)
        with torch.no_grad():
            out = m(torch.zeros(1, *self.in_shape))
        self.out_shape = tuple(out.shape[1:])
        self.windows = []    # per axis: the input positions of each window
        if isinstance(m, nn.AdaptiveMaxPool2d):   # torch's adaptive windows: [floor(o L / n), ceil((o + 1) L / n))
            self.name = "adaptivemaxpool2d"
            for ax in range(2):
                L, n_out = self.in_shape[1 + ax], self.out_shape[1 + ax]
                self.windows.append([list(range((o * L) // n_out, -((-(o + 1) * L) // n_out))) for o in range(n_out)])
        else:
            pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
            k, s, pad, dil = pair(m.kernel_size), pair(m.stride if m.stride is not None else m.kernel_size), \
                pair(m.padding), pair(m.dilation)
            for ax in range(2):
                L, n_out = self.in_shape[1 + ax], self.out_shape[1 + ax]
                wins = []
                for o in range(n_out):
                    start = o * s[ax] - pad[ax]
                    w = [start + dil[ax] * j for j in range(k[ax]) if 0 <= start + dil[ax] * j < L]
                    if not w:
                        raise Unsupported(f"MaxPool2d window {o} along axis {ax + 1} holds no input (only padding)")
                    wins.append(w)
                self.windows.append(wins)
        counts = [np.bincount(np.concatenate(w), minlength=self.in_shape[1 + ax]) for ax, w in enumerate(self.windows)]
        self.max_count = int(counts[0].max()) * int(counts[1].max())

    @property
    def lipschitz(self):
        c = self.max_count
        r = float(np.sqrt(c))
        if r * r != c:
            r = float(np.nextafter(r, np.inf))
        return {1.0: float(c), 2.0: r, np.inf: 1.0}

    @property
    def saturates(self):
        return (1.0, 2.0, np.inf) if self.max_count == 1 else (np.inf,)

    def _flat_windows(self):
        C, H, W = self.in_shape
        Ho, Wo = self.out_shape[1:]
        for c in range(C):
            for oh in range(Ho):
                for ow in range(Wo):
                    yield [(c * H + y) * W + x for y in self.windows[0][oh] for x in self.windows[1][ow]]

    def pwl(self, in_dim):
        if in_dim != int(np.prod(self.in_shape)):
            raise Unsupported(f"{self.name} described for {self.in_shape}, asked for width {in_dim}")
        if self.max_count > 1:
            raise Unsupported(f"{self.name} with overlapping windows (an input in up to {self.max_count}) has no "
                              f"form h = P z + Q relu(A z) with each input in one unit (bab, mip)")
        wins = list(self._flat_windows())
        big = max(len(w) for w in wins)
        if big > 2:
            raise Unsupported(f"{self.name} with windows of {big} inputs: the max of more than 2 values needs nested "
                              f"ReLUs, which the one-layer form h = P z + Q relu(A z) of bab and mip cannot hold")
        pairs = [o for o, w in enumerate(wins) if len(w) == 2]
        if not pairs:
            raise Unsupported(f"{self.name} whose windows all hold one input (a subsampling) has no unit for the "
                              "form of bab and mip")
        P = np.zeros((len(wins), in_dim))
        Q = np.zeros((len(wins), len(pairs)))
        A = np.zeros((len(pairs), in_dim))
        unit = 0
        for o, w in enumerate(wins):
            if len(w) == 1:
                P[o, w[0]] = 1.0
            else:             # max(a, b) = b + relu(a - b)
                a, b = w
                A[unit, a], A[unit, b] = 1.0, -1.0
                P[o, b] = 1.0
                Q[o, unit] = 1.0
                unit += 1
        return P, Q, A

    def interval(self, l, u):
        B = l.shape[0]
        f = lambda z: self.module(z.reshape(B, *self.in_shape)).reshape(B, -1)  # noqa: E731
        return f(l), f(u)


def referenced(module: nn.Module) -> nn.Module:
    """``module`` with every walked activation that has a reference function
    (:meth:`bench.activations.ActivationSpec.reference`, e.g. torch's Softplus without
    its threshold) replaced by it, in place: the function the upper bounds describe.
    Only the layers the walk reads (children of ``nn.Sequential`` containers) are
    replaced; a module the walk does not know is evaluated as it is."""
    def ref_of(m: nn.Module):
        spec = describe(m)
        return spec.reference() if spec is not None else None

    def swap(parent: nn.Module):
        for name, child in parent.named_children():
            ref = ref_of(child)
            if ref is not None:
                setattr(parent, name, ref)
            elif isinstance(child, nn.Sequential):
                swap(child)
    ref = ref_of(module)
    if ref is not None:
        return ref
    if isinstance(module, nn.Sequential):
        swap(module)
    return module
