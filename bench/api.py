"""The contracts that hold lipbench together: Query, Bound, Budget, Verifier, Trainer.

Everything a plug-in needs from the harness is here; verifiers and trainers subclass
:class:`Verifier` and :class:`Trainer` and register with :mod:`bench.registry`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

#: Closed status vocabulary.  ``unsound`` is set by the audit only.
STATUSES = ("ok", "timeout", "oom", "error", "unsupported", "not_installed",
            "license_limit", "unsound")
KINDS = ("upper", "lower", "exact")
NORMS = (1.0, 2.0, math.inf)
#: the domain that stands for a network's own input box (a suite resolves it per network)
BOX = "box"


class UserError(Exception):
    """An error the user caused and can fix; the CLI prints it as one line, exit code 2."""


class Unsupported(Exception):
    """Raised by the network walk or a verifier for an input it cannot handle."""


def parse_p(p: Any) -> float:
    """Normalise a norm name: 1, 2, 'inf', float('inf') -> 1.0, 2.0, inf."""
    if isinstance(p, str):
        s = p.strip().lower()
        if s in ("inf", "infinity", "linf"):
            return math.inf
        try:
            p = float(s)
        except ValueError:
            raise UserError(f"norm p={p!r} is not one of 1, 2, inf") from None
    try:
        v = float(p)
    except (TypeError, ValueError):
        raise UserError(f"norm p={p!r} is not one of 1, 2, inf") from None
    if v not in NORMS:
        raise UserError(f"norm p={p!r} is not one of 1, 2, inf")
    return v


def p_name(p: float) -> str:
    return "inf" if math.isinf(p) else str(int(p))


def dual(p: float) -> float:
    """Hoelder dual exponent: 1 <-> inf, 2 <-> 2."""
    return math.inf if p == 1 else (1.0 if math.isinf(p) else 2.0)


@dataclass(frozen=True)
class Query:
    """What is bounded: the Lipschitz constant of ``net`` (or of the margin f_i - f_j)
    from the input ``p``-norm to the output ``q``-norm (``q`` defaults to ``p``;
    for a class-pair target the output is a scalar and ``q`` plays no role) over
    ``domain``: ``"global"`` (all of R^n) or a box ``{"center": [...], "radius": r}``
    (the l_inf ball of radius r around center; r may be one radius per input) or
    ``{"lower": [...], "upper": [...]}``.  In a suite, ``"box"`` stands for each
    network's own input box (its entry's ``box``), resolved before any verifier sees it."""

    p: float = 2.0
    target: str | tuple[int, int] = "full"
    domain: str | tuple = "global"
    q: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "p", parse_p(self.p))
        if self.q is not None:
            object.__setattr__(self, "q", parse_p(self.q))
        t = self.target
        if t is None or t == "full":
            object.__setattr__(self, "target", "full")
        else:
            try:
                i, j = (int(x) for x in t)
            except (TypeError, ValueError):
                raise UserError(f"target {t!r} is neither 'full' nor a class pair [i, j]") from None
            if i == j:
                raise UserError(f"target {t!r}: a class pair needs two different classes")
            object.__setattr__(self, "target", (i, j))
        d = self.domain
        if isinstance(d, dict):
            object.__setattr__(self, "domain", _box(d))
        elif d not in ("global", BOX) and not (isinstance(d, tuple) and len(d) == 2):
            raise UserError(f"domain {d!r} is neither 'global' nor a box {{center, radius}} or {{lower, upper}}")

    def box(self):
        """(lo, hi): the box domain's corners as float64 arrays (one number per input), or
        None for the global domain; every verifier reads the box from here."""
        if self.domain == "global":
            return None
        if self.domain == BOX:
            raise ValueError("the domain 'box' stands for a network's own input box; the suite resolves it")
        import numpy as np
        c = np.asarray(self.domain[0], dtype=np.float64)
        r = np.asarray(self.domain[1], dtype=np.float64)
        return c - r, c + r

    @property
    def out_norm(self) -> float:
        return self.p if self.q is None else self.q

    @property
    def is_pair(self) -> bool:
        return self.target != "full"

    @classmethod
    def from_key(cls, d: dict) -> "Query":
        """The query a :meth:`key` describes."""
        return cls(p=d["p"], target=d["target"], domain=d["domain"], q=d.get("q"))

    def key(self) -> dict:
        """JSON-able description, used in job keys and the store."""
        return {"p": p_name(self.p), "q": None if self.q is None else p_name(self.q),
                "target": self.target if self.target == "full" else list(self.target),
                "domain": self.domain if self.domain in ("global", BOX)
                else {"center": list(self.domain[0]),
                      "radius": list(self.domain[1]) if isinstance(self.domain[1], tuple) else self.domain[1]}}


def _outward(c: float, lo: float, hi: float) -> float:
    """The radius r for center c whose box [c - r, c + r], as rounded in float64, holds
    [lo, hi]: (hi - lo) / 2, raised by an ulp at a time where rounding left an end inside."""
    r = (hi - lo) / 2
    while c - r > lo or c + r < hi:
        r = math.nextafter(r, math.inf)
    return r


def _box(d: dict) -> tuple:
    """A box domain as (center, radius): ``{center: [...], radius: r}`` (the l_inf ball of
    radius r; r may be a list, one radius per input) or ``{lower: [...], upper: [...]}``
    (per-input bounds, as a .vnnlib file's input box; kept as a center and radii whose box,
    rounded, holds it: :func:`_outward`).  Radii are >= 0, at least one positive; a radius
    that is the same for every input is kept as one number."""
    if set(d) == {"lower", "upper"}:
        try:
            lo = [float(x) for x in d["lower"]]
            hi = [float(x) for x in d["upper"]]
        except (TypeError, ValueError):
            raise UserError("domain: lower and upper are lists of numbers") from None
        if len(lo) != len(hi):
            raise UserError(f"domain: lower has {len(lo)} numbers, upper {len(hi)}")
        if any(a > b for a, b in zip(lo, hi)):
            k = next(i for i, (a, b) in enumerate(zip(lo, hi)) if a > b)
            raise UserError(f"domain: lower > upper at input {k} ({lo[k]} > {hi[k]})")
        center = [(a + b) / 2 for a, b in zip(lo, hi)]
        radius = [_outward(c, a, b) for c, a, b in zip(center, lo, hi)]
    elif set(d) == {"center", "radius"}:
        try:
            center = [float(x) for x in d["center"]]
            radius = [float(x) for x in d["radius"]] if isinstance(d["radius"], (list, tuple)) \
                else float(d["radius"])
        except (TypeError, ValueError):
            raise UserError("domain: a box's center is a list of numbers, its radius a number "
                            "(or a list, one per input)") from None
    else:
        raise UserError(f"domain with keys {', '.join(map(str, d))}: a box is {{center: [x1, x2, ...], radius: r}} "
                        f"or {{lower: [...], upper: [...]}}")
    if isinstance(radius, list):
        if len(radius) != len(center):
            raise UserError(f"domain: {len(radius)} radii for a center of {len(center)} inputs")
        if radius and all(r == radius[0] for r in radius):
            radius = radius[0]
    rs = radius if isinstance(radius, list) else [radius]
    if not (all(r >= 0 and math.isfinite(r) for r in rs) and max(rs, default=0) > 0
            and all(math.isfinite(x) for x in center)):
        raise UserError(f"domain: radius must be positive and finite, center finite (got radius "
                        f"{radius if not isinstance(radius, list) else f'in [{min(rs)}, {max(rs)}]'})")
    return tuple(center), (tuple(radius) if isinstance(radius, list) else radius)


def check_vocabulary(status: str, kind: str) -> None:
    """ValueError unless ``status`` and ``kind`` are words of the closed vocabularies."""
    if status not in STATUSES:
        raise ValueError(f"status {status!r} not in {STATUSES}")
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} not in {KINDS}")


@dataclass
class Bound:
    """A verifier's answer.  ``value`` is None unless ``status`` is ``ok`` (or ``timeout``
    with a best bound kept by an anytime verifier)."""

    value: float | None
    kind: str
    status: str = "ok"
    wall_s: float | None = None
    cpu_s: float | None = None
    peak_mem_mb: float | None = None
    device: str = "cpu"
    stats: dict = field(default_factory=dict)
    error: str | None = None
    #: seconds inside the verifier's run (wall_s: the whole job, worker start included)
    solve_s: float | None = None
    #: where a verifier that raised failed: the exception's traceback (status ``error``)
    traceback: str | None = None

    def __post_init__(self):
        check_vocabulary(self.status, self.kind)

    def __repr__(self) -> str:
        v = "None" if self.value is None else f"{self.value:.6g}"
        extra = f", error={self.error!r}" if self.error else ""
        if self.traceback:
            extra += f", at {last_frame(self.traceback)}"
        t = "" if self.wall_s is None else f", wall_s={self.wall_s:.3g}"
        return f"Bound(value={v}, kind={self.kind!r}, status={self.status!r}{t}{extra})"


def last_frame(tb: str) -> str:
    """The innermost frame of a formatted traceback, as "file:line in function" (where
    the exception was raised); "" if there is none."""
    import re
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', tb or "")
    if not frames:
        return ""
    f, line, fn = frames[-1]
    return f"{f}:{line} in {fn}"


@dataclass(frozen=True)
class Budget:
    """Resources granted to one job.  ``timeout_s`` None means no limit; ``mem_mb`` caps
    the memory the job may allocate (enforced in its worker; None: no cap)."""

    timeout_s: float | None = None
    device: str = "cpu"
    threads: int = 1
    mem_mb: float | None = None


@dataclass(frozen=True)
class Param:
    """A declared plug-in parameter: its default (whose type is the parameter's type:
    ints accept ints, floats accept ints and floats, ...), the allowed values
    (``choices``; strings match case-insensitively) or bounds (``gt``, ``ge``, ``lt``,
    ``le``), and one line of documentation.  Suites are checked against these when they
    are parsed, so a bad value is an error before anything runs."""

    default: Any
    doc: str = ""
    choices: tuple = ()
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def check(self, owner: str, key: str, value: Any) -> Any:
        """The value coerced to the parameter's type; a UserError if it is not allowed."""
        v = _coerce(owner, key, value, self.default)
        if v is None:
            return v
        if self.choices:
            # strings match case-insensitively and take the declared spelling
            match = [c for c in self.choices if c == v or (isinstance(c, str) and isinstance(v, str)
                                                           and c.lower() == v.lower())]
            if not match:
                raise UserError(f"{owner}: parameter {key!r} must be one of {', '.join(map(str, self.choices))}, "
                                f"not {value!r}")
            v = match[0]
        for bound, ok, word in ((self.gt, lambda x, b: x > b, ">"), (self.ge, lambda x, b: x >= b, ">="),
                                (self.lt, lambda x, b: x < b, "<"), (self.le, lambda x, b: x <= b, "<=")):
            if bound is not None and not ok(v, bound):
                raise UserError(f"{owner}: parameter {key!r} must be {self.describe_range()}, got {value!r}")
        return v

    def describe_range(self) -> str:
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        lo = f"> {self.gt:g}" if self.gt is not None else (f">= {self.ge:g}" if self.ge is not None else "")
        hi = f"< {self.lt:g}" if self.lt is not None else (f"<= {self.le:g}" if self.le is not None else "")
        return " and ".join(x for x in (lo, hi) if x) or "any"


class Plugin:
    """Shared machinery of verifiers and trainers: name, version, requirements and
    declared parameters.  ``params`` maps each parameter name to a :class:`Param` (or,
    for a parameter without constraints, just its default).  An instance holds its
    resolved parameter values in ``self.opts``."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    requires: ClassVar[tuple[str, ...]] = ()
    params: ClassVar[dict[str, Any]] = {}
    description: ClassVar[str] = ""
    #: how a user installs what ``requires`` names, shown when it is missing
    install_hint: ClassVar[str] = ""
    #: import names the fork server imports once, where installed, so that a job does not
    #: pay for importing them (a library whose import costs about what a small run does)
    preload: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **params):
        self.opts = self.resolve_params(params)

    @classmethod
    def declared(cls) -> dict[str, Param]:
        """Every parameter as a :class:`Param`."""
        return {k: v if isinstance(v, Param) else Param(v) for k, v in cls.params.items()}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {k: p.default for k, p in cls.declared().items()}

    @classmethod
    def missing(cls) -> list[str]:
        """Import names in ``requires`` that cannot be found."""
        import importlib.util
        out = []
        for mod in cls.requires:
            try:
                if importlib.util.find_spec(mod) is None:
                    out.append(mod)
            except (ImportError, ValueError):
                out.append(mod)
        return out

    @classmethod
    def resolve_params(cls, given: dict | None) -> dict:
        """Defaults overlaid with ``given``; unknown names, wrong types, values outside
        the declared choices or bounds, and combinations that :meth:`check_params`
        rejects are a UserError."""
        decl = cls.declared()
        out = {k: p.default for k, p in decl.items()}
        for k, v in (given or {}).items():
            if k not in decl:
                valid = ", ".join(sorted(decl)) or "(none)"
                raise UserError(f"{cls.name}: unknown parameter {k!r}; valid: {valid}")
            out[k] = decl[k].check(cls.name, k, v)
        cls.check_params(out)
        return out

    @classmethod
    def check_params(cls, params: dict) -> None:
        """Raise UserError for a combination of values that is not allowed (override
        for rules that involve several parameters; single values are declared)."""


def _coerce(owner: str, key: str, value: Any, default: Any) -> Any:
    if default is None or value is None:
        return value
    t = type(default)
    if t is bool:
        if isinstance(value, bool):
            return value
    elif t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif t is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif t is str:
        if isinstance(value, str):
            return value
    elif t in (list, tuple):
        if isinstance(value, (list, tuple)):
            return list(value)
    elif t is dict:
        if isinstance(value, dict):
            return value
    raise UserError(f"{owner}: parameter {key!r} must be {t.__name__}, got {value!r}")


class Verifier(Plugin):
    """Bounds the Lipschitz constant of a network for a query.

    Subclasses set ``name``, ``kind`` (``upper``, ``lower`` or ``exact``), ``norms``
    (the p they support), ``requires``, ``params``, and implement :meth:`run`.
    ``run`` receives a :class:`bench.network.Net` and returns a :class:`Bound`; it
    raises :class:`Unsupported` (or returns such a Bound) for inputs it cannot handle.
    """

    kind: ClassVar[str] = "upper"
    norms: ClassVar[tuple[float, ...]] = NORMS
    #: True if the verifier bounds p -> q norms with q != p (for the full output)
    mixed_norms: ClassVar[bool] = False
    #: True if the verifier needs nothing of the network but its forward pass and
    #: gradients (``net.module``), as ``lower`` does: it accepts layers the network walk
    #: does not know (``bench.network.Opaque``), which every other verifier refuses
    gradients_only: ClassVar[bool] = False
    #: True if the verifier reads networks that branch (``bench.network.Branch``: a
    #: residual add, a concatenation); every other verifier refuses them, naming the
    #: first branching layer.  A ``gradients_only`` verifier reads every network.
    graphs: ClassVar[bool] = False

    def supports(self, net, query: Query) -> str | None:
        """None if this verifier can answer ``query`` on ``net``, else the reason.
        The base class checks for layers the walk does not know (unless
        ``gradients_only``), the norm, mixed norms, and that a class pair exists;
        subclasses add their own checks and call ``super().supports``."""
        if not self.gradients_only:
            reason = opaque_refusal(net, self.name) or (None if self.graphs else branch_refusal(net, self.name))
            if reason:
                return reason
        if query.p not in self.norms:
            return f"{self.name} supports p in {{{', '.join(p_name(p) for p in self.norms)}}}, not {p_name(query.p)}"
        if query.q is not None and query.q != query.p and not query.is_pair and not self.mixed_norms:
            return f"{self.name} bounds the p->p norm only (output norm q must equal p)"
        if query.is_pair:
            i, j = query.target
            if not (0 <= i < net.out_dim and 0 <= j < net.out_dim):
                return f"class pair {query.target} out of range for {net.out_dim} outputs"
        if query.domain == BOX:
            return "the domain 'box' (a network's own input box) was not resolved to a box"
        if query.domain != "global" and len(query.domain[0]) != net.in_dim:
            return f"the box has {len(query.domain[0])} coordinates, the network {net.in_dim} inputs"
        return None

    def refusal(self, net, query: Query) -> str | None:
        """What the harness asks: the base class's checks (a declared norm, ...) whatever
        a subclass's :meth:`supports` says, then :meth:`supports`."""
        return Verifier.supports(self, net, query) or self.supports(net, query)

    def run(self, net, query: Query, budget: Budget) -> Bound:  # pragma: no cover
        raise NotImplementedError


def opaque_refusal(net, verifier: str) -> str | None:
    """The reason a verifier that reads the network's layers cannot use ``net``: its
    first layer that the network walk does not know (``bench.network.Opaque``), named
    with its index and class; None if there is none."""
    for layer in getattr(net, "opaque", ()):
        why = f" ({layer.why})" if getattr(layer, "why", "") else ""
        return (f"layer {layer.index} ({layer.name}) is not supported by {verifier}: the network walk does not "
                f"know this module{why}, so only a verifier that needs nothing but gradients (lower) can bound "
                f"this network")
    return None


def branch_refusal(net, verifier: str) -> str | None:
    """The reason a verifier that reads chains of layers cannot use ``net``: its first
    layer where the network branches (``bench.network.Branch``); None for a chain."""
    for layer in getattr(net, "branching", ()):
        return f"layer {layer.index} ({layer.name}) branches: {verifier} reads chains of layers only"
    return None


class Trainer(Plugin):
    """Trains a network.  ``train`` returns ``(nn.Sequential, metrics)``; metrics hold at
    least ``clean_acc`` (test accuracy) and ``train_s``."""

    def train(self, dataset, arch: dict, seed: int, budget: Budget):  # pragma: no cover
        raise NotImplementedError

    @classmethod
    def network_label(cls, arch: dict, params: dict) -> str | None:
        """What a network's id calls what this trainer made from ``arch`` and its resolved
        ``params``; None (the default): the architecture's name.  A trainer that ignores
        ``arch`` (``construct``) names its own."""
        return None
