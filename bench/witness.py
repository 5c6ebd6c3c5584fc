"""Witnessed lower bounds: the one way a row proves that the Lipschitz constant is at least
a number.

Any two inputs x1 != x2 of the query's domain give

    L >= ||f(x2) - f(x1)|| / ||x2 - x1||_p

(output norm p, or |.| of the margin f_i - f_j for a class pair).  A verifier that
claims a lower bound (kind ``lower``, or the certified lower part ``stats["lower"]`` of
an ``exact`` row) stores such a pair as ``stats["witness"] = {"x1": [...], "x2": [...]}``
(flattened inputs) and claims at most the quotient :func:`quotients` gives for it, within
``CHECK_RTOL`` (:func:`settle`).  The
audit (:mod:`bench.audit`) evaluates the pair again with :func:`check`, on the stored
network, in float64, before the bound may refute any upper bound: a claim above its own
witness is the row marked ``unsound``.

The quotient is computed in float64 and deflated by a bound on the evaluation error:
``FLOAT64_EVAL_RTOL`` = 1e-12 of the outputs' size, about 1e4 times the rounding of a
float64 forward pass unless the outputs cancel by more than a factor ~1000.

Pairs come from points: at a point x where f is affine nearby, x -+ t v along the
direction v that attains the Jacobian's norm (:func:`directions`) gives a quotient equal
to that norm to ~1e-9; where f is not affine on the segment, a smaller number, still a
lower bound.  :func:`pairs` tries several steps t and keeps the best.
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch

from .activations import referenced
from .api import Query
from .norms import margin_jacobian

FLOAT64_EVAL_RTOL = 1e-12
#: a claim passes its re-check when claimed <= recomputed * (1 + CHECK_RTOL) + CHECK_ATOL:
#: the audit's tolerance for upper bounds too (bench.audit uses these; a region's Jacobian norm and its pair's
#: quotient differ by the quotient's deflation, ~1e-12 of the outputs / the step)
CHECK_RTOL = 1e-6
CHECK_ATOL = 1e-9


def _f(module):
    return lambda x: module(x.unsqueeze(0)).reshape(-1)


def jacobians(module, X: torch.Tensor) -> torch.Tensor:
    """Autograd Jacobians of the full output at the points X (B, *in_shape): (B, m, n)."""
    J = torch.func.vmap(torch.func.jacrev(_f(module)))(X)
    return J.reshape(X.shape[0], J.shape[1], -1)


def directions(J: torch.Tensor, query: Query) -> torch.Tensor:
    """For each Jacobian (B, m, n), an input direction v (B, n) with ||J v|| / ||v|| equal
    to the query's operator norm of J (:func:`bench.norms.jacobian_norm`)."""
    p = query.p
    if query.is_pair:
        g = margin_jacobian(J, query)[:, 0, :]
        if p == 2:
            return g
        if math.isinf(p):  # dual l1: v = sign(g), ||v||_inf = 1
            return torch.sign(g)
        v = torch.zeros_like(g)  # p = 1, dual l_inf: the largest coordinate
        v[torch.arange(len(g)), g.abs().argmax(dim=1)] = 1.0
        return v
    if p == 2:
        return torch.linalg.svd(J, full_matrices=False).Vh[:, 0, :]
    if math.isinf(p):  # the row with the largest absolute sum, its signs
        rows = J.abs().sum(dim=2).argmax(dim=1)
        return torch.sign(J[torch.arange(len(J)), rows, :])
    v = torch.zeros(J.shape[0], J.shape[2], dtype=J.dtype, device=J.device)  # p = 1: the heaviest column
    v[torch.arange(len(J)), J.abs().sum(dim=1).argmax(dim=1)] = 1.0
    return v


def quotients(module, X1: torch.Tensor, X2: torch.Tensor, query: Query) -> torch.Tensor:
    """Certified lower bounds ||f(x2) - f(x1)|| / ||x2 - x1|| for the pairs (X1[k], X2[k]),
    deflated for float64 rounding; 0 where x1 = x2.  ``module`` must be in float64."""
    B = X1.shape[0]
    with torch.no_grad():
        f1, f2 = module(X1).reshape(B, -1), module(X2).reshape(B, -1)
        if query.is_pair:
            i, j = query.target
            d = ((f2[:, i] - f2[:, j]) - (f1[:, i] - f1[:, j])).abs()
            size = f1[:, i].abs() + f1[:, j].abs() + f2[:, i].abs() + f2[:, j].abs()
        else:
            o = query.out_norm
            d = torch.linalg.vector_norm(f2 - f1, ord=o, dim=1)
            size = torch.linalg.vector_norm(f1, ord=o, dim=1) + torch.linalg.vector_norm(f2, ord=o, dim=1)
        dx = torch.linalg.vector_norm((X2 - X1).reshape(B, -1), ord=query.p, dim=1)
        q = (d - FLOAT64_EVAL_RTOL * (size + 1e-300)).clamp_min(0.0) / dx
        return torch.where(dx > 0, q, torch.zeros_like(q))


def pairs(module, X: torch.Tensor, query: Query, lo=None, hi=None, steps: Sequence[float] = (1e-4,),
          nudges: Sequence[float] = (0.0,)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Witness pairs at the points X (B, *in_shape): x -+ t v, v from :func:`directions`,
    t = step * (1 + ||x||_inf), clamped into the box [lo, hi] (None: no box), the best of
    ``steps`` x ``nudges`` for each point, where a nudge first moves x by that share of
    its distance towards the box's centre (a point on a face of the box has room there
    for a pair along v).  Returns (quotients (B,), X1, X2).  ``module`` in float64."""
    B = X.shape[0]
    flat = lambda t: t.reshape(B, -1)  # noqa: E731
    shape1 = (B, *([1] * (X.dim() - 1)))
    best = torch.full((B,), -1.0, dtype=X.dtype, device=X.device)
    X1b, X2b = X.clone(), X.clone()
    for nudge in nudges:
        Xn = X if nudge == 0 or lo is None or hi is None else X + nudge * ((lo + hi) / 2 - X)
        with torch.no_grad():
            v = directions(jacobians(module, Xn), query).reshape(X.shape)
        vn = flat(v).abs().amax(dim=1).clamp_min(1e-300).reshape(shape1)
        for step in steps:
            t = step * (1.0 + flat(Xn).abs().amax(dim=1)).reshape(shape1)
            x1, x2 = Xn - t * v / vn, Xn + t * v / vn
            if lo is not None:
                x1, x2 = torch.maximum(x1, lo), torch.maximum(x2, lo)
            if hi is not None:
                x1, x2 = torch.minimum(x1, hi), torch.minimum(x2, hi)
            q = quotients(module, x1, x2, query)
            better = q > best
            best = torch.where(better, q, best)
            X1b[better], X2b[better] = x1[better], x2[better]
    return best.clamp_min(0.0), X1b, X2b


def settle(claimed: float, witnessed: float) -> float:
    """The lower bound a verifier may report for a ``claimed`` value (e.g. a linear
    region's Jacobian norm) whose witness gives ``witnessed``: the claim where the
    witness confirms it within the audit's tolerance, else what the witness shows."""
    return claimed if claimed <= witnessed * (1 + CHECK_RTOL) + CHECK_ATOL else witnessed


def as_stats(x1: torch.Tensor, x2: torch.Tensor) -> dict:
    """The stored form of a witness pair (``stats["witness"]``)."""
    return {"x1": [float(v) for v in x1.reshape(-1).tolist()],
            "x2": [float(v) for v in x2.reshape(-1).tolist()]}


def check(module, input_shape: tuple, query: Query, witness) -> tuple[float | None, str | None]:
    """Re-evaluate a stored witness on ``module``: (its quotient, None), or (None, why it
    is not a witness for this query: malformed, wrong size, non-finite, outside the
    query's box, or x1 = x2)."""
    if not isinstance(witness, dict) or not isinstance(witness.get("x1"), list) or not isinstance(witness.get("x2"), list):
        return None, "no witness pair (stats['witness'] with lists x1, x2)"
    n = math.prod(input_shape)
    try:
        x1 = torch.tensor(witness["x1"], dtype=torch.float64)
        x2 = torch.tensor(witness["x2"], dtype=torch.float64)
    except (TypeError, ValueError):
        return None, "the witness holds something other than numbers"
    if x1.numel() != n or x2.numel() != n:
        return None, f"the witness has {x1.numel()} and {x2.numel()} coordinates; the network's input has {n}"
    if not (torch.isfinite(x1).all() and torch.isfinite(x2).all()):
        return None, "the witness has non-finite coordinates"
    if query.domain != "global":
        lo, hi = (torch.as_tensor(a) for a in query.box())
        slack = 1e-15 * (lo.abs() + hi.abs())    # c -+ r rounded when the box was formed
        if bool(((x1 < lo - slack) | (x1 > hi + slack) | (x2 < lo - slack) | (x2 > hi + slack)).any()):
            return None, "the witness lies outside the query's box"
    if bool((x1 == x2).all()):
        return None, "the witness's two points are equal"
    module = referenced(copy.deepcopy(module)).double().eval()   # the function the bounds describe
    q = quotients(module, x1.reshape(1, *input_shape), x2.reshape(1, *input_shape), query)
    return float(q[0]), None


def confirm(module, input_shape: tuple, query: Query, claim: float, witness) -> tuple[float | None, str | None]:
    """The audit's (and the conformance check's) verdict on a claimed lower bound:
    (the witness's value, None) when the witness shows the claim within ``CHECK_RTOL``,
    else (that value or None, why not).  A claim of 0 needs no witness."""
    if claim <= 0.0:
        return 0.0, None
    value, why = check(module, input_shape, query, witness)
    if why is None and claim > value * (1 + CHECK_RTOL) + CHECK_ATOL:
        why = f"its witness gives {value:.9g}, below the claimed {claim:.9g}"
    return value, why
