"""``lower``: a sound lower bound on the Lipschitz constant.

The Lipschitz constant of f (from the p-norm to the p-norm, or of the margin f_i - f_j)
is at least the operator norm of the Jacobian at any point where f is differentiable.
This verifier searches for a point where that norm is large (steps 1 and 2), then
certifies what it found (step 3).

1. ``samples`` points drawn from the domain.  A box query: uniformly in the box.  The
   global domain (all of R^n): a fraction ``1 - far`` uniformly in [low, high]^n, which
   holds the [0, 1]-scaled data with margin, and a fraction ``far`` at random directions
   and log-uniform radii up to ``far_radius`` (far from the data a ReLU network's linear
   regions are different ones, and the global constant counts them too).  A share
   ``aligned`` of the uniform ones is drawn instead along the trivial bound's top right
   singular subspace of the first affine layer (singular values within 10% of its
   largest), at radii up to (high - low) sqrt(q) from the sampling box's centre (q: that
   subspace's dimension; in a box query, up to its radius, clamped to it): the inputs
   the first layer stretches most (``docs/smooth.md``).
2. From the best ``restarts`` of them, ``steps`` of projected gradient ascent on the
   Jacobian's operator norm: ``ascent: adam`` (Adam's per-coordinate steps, of size
   ``lr`` in units of the sampling box; it stops within ~3e-5 of a peak, where the
   normalised steps get within 1e-6, and a cosine decay of ``lr`` cost 0.2% on digits)
   or ``normalized`` (version 2: steps along the normalised gradient); ``auto`` (the default) takes Adam when no activation needs a
   surrogate (it reaches 2% higher in the same steps on sinusoidal networks) and the
   normalised steps otherwise (Adam through the sharpening surrogate of a CReLU network
   ends up to 1% lower).  The Jacobian of a piecewise-linear network is piecewise
   constant (zero gradient), so the ascent follows a smoothed surrogate (ReLU ->
   softplus with sharpness ``beta``, sharpened over the run; each activation by its
   description's ``smooth(beta)``, or as it is when it has none); every iterate
   is then scored on the real network.  The surrogate only steers the search: it never
   enters the value.
3. Certification.  Autograd's chain rule is not a Jacobian at a kink (relu'(0) = 0
   composed with other kinks can give a matrix of f's no region has), and projection
   puts points on the box's faces, where kinks may lie.  So for the ``certify`` best
   points the reported value is a witnessed difference quotient of real evaluations
   (:mod:`bench.witness`): ||f(x2) - f(x1)|| / ||x2 - x1|| with x1, x2 = x -+ t v inside
   the domain, v the direction that attains the Jacobian's norm at x, t = ``dq_step`` *
   (1 + ||x||_inf), in float64, deflated for rounding.  Where f is affine around x this
   equals the Jacobian's norm at x (to ~1e-9); where it is not, it is smaller, and still
   a lower bound.  The best pair is stored (``stats["witness"]``) and the audit
   evaluates it again.

"The network" is ``net.module`` in float64, in eval mode, with each activation that
the walk reads replaced by its description's reference function where it gives one
(:func:`bench.activations.referenced`: torch's Softplus without its threshold), the
function the upper bounds describe; the audit evaluates witnesses on it too.  It needs
nothing else of the network (``gradients_only``): a module the walk does not know
(``bench.network.Opaque``) is evaluated as it is.
"""
from __future__ import annotations

import copy
import math
import time

import torch
from torch import nn

from bench.activations import describe, referenced
from bench.api import Bound, Budget, Param, Query, Verifier
from bench.network import Net
from bench.norms import jacobian_norm, margin_jacobian
from bench.registry import register
from bench.witness import as_stats, jacobians, pairs


def jacobian_norms(module: nn.Module, X: torch.Tensor, query: Query) -> torch.Tensor:
    """Operator norm of the Jacobian at each point of the batch X (shape (B, *in_shape)):
    p->p for the full output, the dual norm of the margin gradient for a class pair."""
    return matrix_norms(jacobians(module, X), query)


def matrix_norms(J: torch.Tensor, query: Query) -> torch.Tensor:
    """The query's norm of each full-output Jacobian in the batch J (B, m, n)."""
    return jacobian_norm(margin_jacobian(J, query), query.p, query.is_pair)


def smoothed(module: nn.Module, beta: float) -> nn.Module:
    """A copy of ``module`` with kinked activations replaced by the smooth surrogates
    their descriptions give (:meth:`bench.activations.ActivationSpec.smooth`)."""
    m = copy.deepcopy(module)

    def swap(parent: nn.Module):
        for name, child in parent.named_children():
            spec = describe(child)
            smooth = spec.smooth(beta) if spec is not None else None
            if smooth is not None:
                setattr(parent, name, smooth)
            else:
                swap(child)
    swap(m)
    return m


def kinked(module: nn.Module) -> bool:
    """True if some activation of ``module`` has a smooth surrogate (a kink the ascent
    steers around, :meth:`bench.activations.ActivationSpec.smooth`)."""
    for m in module.modules():
        spec = describe(m)
        if spec is not None and spec.smooth(1.0) is not None:
            return True
    return False


#: the largest first layer (entries) whose singular subspace the aligned samples use
ALIGNED_MAX_ENTRIES = 4_000_000


def top_subspace(net: Net) -> torch.Tensor | None:
    """Orthonormal rows spanning the first affine layer's right singular vectors whose
    singular values are within 10% of its largest, (q, n) float64 on the CPU; None when
    the network does not start with an affine layer (after pass-through modules) or the
    layer has more than ``ALIGNED_MAX_ENTRIES`` entries."""
    from bench.network import Affine
    layers = getattr(net, "layers", None) or []
    if not layers or not isinstance(layers[0], Affine):
        return None
    first = layers[0]
    if first.in_dim * first.out_dim > ALIGNED_MAX_ENTRIES:
        return None
    try:
        W = torch.as_tensor(first.matrix(), dtype=torch.float64)
    except Exception:   # a layer that cannot be made dense here: sample as version 2 did
        return None
    _, S, Vh = torch.linalg.svd(W, full_matrices=False)
    if len(S) == 0 or float(S[0]) == 0.0:
        return None
    return Vh[: int((S >= 0.9 * S[0]).sum())]


@register
class Lower(Verifier):
    name = "lower"
    kind = "lower"
    version = "3"   # what each version changed: CHANGELOG.md
    gradients_only = True   # net.module is all it needs: it accepts layers the walk does not know
    description = "sampling + projected gradient ascent on the Jacobian norm (sound lower bound)"
    params = {"samples": Param(2000, "uniform samples scored on the exact network", ge=1),
              "restarts": Param(16, "best samples the gradient ascent starts from", ge=1),
              "steps": Param(60, "gradient ascent steps", ge=0),
              "lr": Param(0.02, "ascent step, in units of the sampling box", gt=0),
              "ascent": Param("auto", "adam (per-coordinate steps), normalized (version 2's normalised "
                                      "gradient) or auto: adam on smooth networks, normalized where a "
                                      "surrogate steers", choices=("auto", "adam", "normalized")),
              "aligned": Param(0.25, "share of the uniform samples drawn along the first layer's top singular "
                                     "subspace (0: version 2's sampling)", ge=0, le=1),
              "beta": Param(10.0, "sharpness of the smooth surrogate (raised 10x over the steps)", gt=0),
              "low": Param(-1.0, "sampling box of the global domain: lower end per coordinate"),
              "high": Param(2.0, "sampling box of the global domain: upper end per coordinate"),
              "far": Param(0.3, "share of samples drawn far out (radius up to far_radius)", ge=0, le=1),
              "far_radius": Param(1000.0, gt=0),
              "seed": Param(0, ge=0),
              "batch": Param(256, "points per Jacobian batch", ge=1),
              "certify": Param(16, "best points certified by float64 difference quotients", ge=1),
              "dq_step": Param(1e-4, "difference quotient step, relative", gt=0, lt=1)}
    quick_params = {"samples": 200, "restarts": 4, "steps": 10}

    @classmethod
    def check_params(cls, P: dict) -> None:
        from bench.api import UserError
        if not P["low"] < P["high"]:
            raise UserError(f"lower: need low < high, got {P['low']} and {P['high']}")

    def run(self, net: Net, query: Query, budget: Budget) -> Bound:
        t0 = time.perf_counter()
        # stop searching at 75% of the budget: certification and the answer need the rest
        deadline = t0 + 0.75 * budget.timeout_s if budget.timeout_s else math.inf
        P = self.opts
        dev = torch.device(budget.device if budget.device != "auto" else "cpu")
        g = torch.Generator(device="cpu").manual_seed(int(P["seed"]))
        exact = referenced(copy.deepcopy(net.module)).double().eval().to(dev)
        box = _Box(net, query, P, dev)
        # 1. uniform samples, scored on the exact network
        X, V, evaluated = self._sample(exact, box, query, g, deadline)
        best = sample_best = float(V.max())
        # 2. projected gradient ascent on a smoothed surrogate from the best samples
        cand_x, cand_v, steps_done, ascent_best, ascended = self._ascend(exact, box, query, X, V, deadline)
        best, evaluated = max(best, ascent_best), evaluated + ascended
        # 3. certify the best candidates by difference quotients of real evaluations
        CX, CV = torch.cat(cand_x), torch.cat(cand_v)
        top = torch.topk(CV, min(P["certify"], len(CV))).indices
        dq, X1, X2 = pairs(exact, CX[top], query, box.box_lo, box.box_hi, steps=(P["dq_step"],))
        k = int(dq.argmax())
        value = float(dq[k])
        stats = {"points": evaluated, "sample_best": sample_best,
                 "aligned_dims": 0 if box.top_dirs is None or not P["aligned"] else int(box.top_dirs.shape[0]),
                 "ascent_steps": steps_done,
                 "jacobian_best": best, "certified_points": len(top),
                 "jacobian_at_certified_best": float(CV[top][k]), "witness": as_stats(X1[k], X2[k]),
                 "domain": "global box" if query.domain == "global" else "box",
                 "stopped_early": steps_done < P["steps"]}
        return Bound(value, "lower", "ok", stats=stats)

    def _sample(self, exact, box: "_Box", query: Query, g, deadline: float):
        """Uniform samples of the box (a share ``far`` far outside it for a global query, a
        share ``aligned`` along the first layer's top singular directions), scored by their
        Jacobian norms on the exact network: (points, norms, how many)."""
        P, shape, top_dirs = self.opts, box.shape, box.top_dirs
        lo, hi, box_lo, box_hi, far = box.lo, box.hi, box.box_lo, box.box_hi, box.far
        dev = lo.device
        evaluated = 0
        pool_x, pool_v = [], []
        with torch.no_grad():
            for s in range(0, P["samples"], P["batch"]):
                n = min(P["batch"], P["samples"] - s)
                X = (lo + (hi - lo) * torch.rand(n, *shape, generator=g, dtype=torch.float64).to(dev))
                n_far = int(round(far * n))
                n_al = int(round(P["aligned"] * (n - n_far))) if top_dirs is not None else 0
                if n_al:
                    a = torch.randn(n_al, top_dirs.shape[0], generator=g, dtype=torch.float64)
                    d = (a / a.norm(dim=1, keepdim=True)) @ top_dirs
                    rad = torch.rand(n_al, 1, generator=g, dtype=torch.float64) * box.aligned_radius
                    Xa = ((lo + hi) / 2).reshape(1, -1).cpu() + rad * d
                    X[n - n_al:] = Xa.reshape(n_al, *shape).to(dev).clamp(box_lo, box_hi)
                if n_far:
                    u = torch.randn(n_far, *shape, generator=g, dtype=torch.float64)
                    u /= u.reshape(n_far, -1).norm(dim=1).reshape(n_far, *([1] * len(shape)))
                    r = torch.exp(torch.rand(n_far, generator=g, dtype=torch.float64) * math.log(P["far_radius"]))
                    X[:n_far] = (u * r.reshape(n_far, *([1] * len(shape)))).to(dev).clamp(box_lo, box_hi)
                v = jacobian_norms(exact, X, query)
                evaluated += n
                pool_x.append(X)
                pool_v.append(v)
                if time.perf_counter() > deadline:
                    break
        return torch.cat(pool_x), torch.cat(pool_v), evaluated

    def _ascend(self, exact, box: "_Box", query: Query, X, V, deadline: float):
        """Projected ascent (Adam, or normalised gradient steps on a kinked network) of the
        Jacobian norm of a smoothed surrogate, from the ``restarts`` best samples, sharpened
        1x -> 10x over the steps: (candidate points and their norms on the exact network,
        one tensor per step, the steps done, the best norm, points evaluated)."""
        P, shape = self.opts, box.shape
        lo, hi, box_lo, box_hi = box.lo, box.hi, box.box_lo, box.box_hi
        best, evaluated = 0.0, 0
        k = min(P["restarts"], len(X))
        cand_x, cand_v = [X[torch.topk(V, k).indices]], [torch.topk(V, k).values]
        X = cand_x[0].clone()
        steps_done = 0
        adam_m, adam_v = torch.zeros_like(X), torch.zeros_like(X)
        use_adam = P["ascent"] == "adam" or (P["ascent"] == "auto" and not kinked(exact))
        span = (hi - lo)
        center = (hi + lo) / 2
        for step in range(P["steps"]):
            if time.perf_counter() > deadline:
                break
            beta = P["beta"] * (1.0 + 9.0 * step / max(P["steps"] - 1, 1))  # sharpen 1x -> 10x
            surrogate = smoothed(exact, beta)
            Xr = X.detach().requires_grad_(True)
            obj = jacobian_norms(surrogate, Xr, query).sum()
            if not obj.requires_grad:  # the Jacobian does not depend on x (an affine network)
                break
            (grad,) = torch.autograd.grad(obj, Xr, allow_unused=True)
            if grad is None:
                break
            gn = grad.reshape(k, -1).norm(dim=1).clamp_min(1e-30).reshape(k, *([1] * len(shape)))
            # steps scale with the point's distance from the data box (far points move far)
            scale = 1.0 + ((X - center).abs() / span.clamp_min(1e-300)).reshape(k, -1).amax(dim=1).reshape(gn.shape)
            if use_adam:   # torch.optim.Adam's update (betas 0.9, 0.999), per point's scale
                adam_m = 0.9 * adam_m + 0.1 * grad
                adam_v = 0.999 * adam_v + 0.001 * grad * grad
                mh, vh = adam_m / (1 - 0.9 ** (step + 1)), adam_v / (1 - 0.999 ** (step + 1))
                X = X + P["lr"] * span * scale * mh / (vh.sqrt() + 1e-12 * gn)
            else:
                X = X + P["lr"] * span * scale * grad / gn * math.sqrt(X[0].numel())
            X = torch.minimum(torch.maximum(X, box_lo), box_hi)
            with torch.no_grad():
                v = jacobian_norms(exact, X, query)
            evaluated += k
            best = max(best, float(v.max()))
            cand_x.append(X.clone())
            cand_v.append(v)
            steps_done += 1
        return cand_x, cand_v, steps_done, best, evaluated


class _Box:
    """Where ``lower`` searches: the sampling box (lo, hi) and the box points are kept in
    (box_lo, box_hi).  A global query samples the data box [low, high] and keeps points
    within ``far_radius`` of it, ``far`` of them sampled out there; a box query samples and
    keeps its own box.  ``top_dirs``: the first layer's top singular directions, sampled
    along up to ``aligned_radius``."""

    def __init__(self, net: Net, query: Query, P: dict, dev):
        self.shape = shape = net.input_shape
        self.far = 0.0
        if query.domain == "global":
            lo = torch.full(shape, P["low"], dtype=torch.float64)
            hi = torch.full(shape, P["high"], dtype=torch.float64)
            self.far = P["far"]
            box_lo, box_hi = lo.clamp(max=-P["far_radius"]), hi.clamp(min=P["far_radius"])
        else:
            lo, hi = (torch.as_tensor(a).reshape(shape) for a in query.box())
            box_lo, box_hi = lo, hi
        self.lo, self.hi, self.box_lo, self.box_hi = lo.to(dev), hi.to(dev), box_lo.to(dev), box_hi.to(dev)
        self.top_dirs = top_subspace(net)
        self.aligned_radius = 0.0
        if self.top_dirs is not None:   # global: beyond the data box along the subspace; a box: its half-width
            self.aligned_radius = float((self.hi - self.lo).max()) * (
                math.sqrt(self.top_dirs.shape[0]) if query.domain == "global" else 0.5)
