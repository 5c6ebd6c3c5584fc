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


def describe(module: nn.Module) -> ActivationSpec | None:
    """The description of ``module``, or None when it is no known activation: its own
    ``lipbench_spec()`` if it has one, else the description registered for its class
    (or the nearest base class)."""
    d = module.lipbench_spec() if hasattr(module, "lipbench_spec") else None
    if d is not None:
        return DictSpec(module, d)
    for cls in type(module).__mro__:
        spec = _BY_CLASS.get(cls)
        if spec is not None:
            return spec(module)
    return None


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


@register_activation
class SoftplusSpec(_Monotone):
    name = "softplus"
    module_class = nn.Softplus
    slope = (0.0, 1.0)

