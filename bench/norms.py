"""Operator norms of Jacobians, the harness's one definition of "the norm a query asks for".

A query bounds the Lipschitz constant of f from the input p-norm to the output p-norm,
or, for a class pair (i, j), of the margin f_i - f_j.  At a point where f is
differentiable that constant's local value is a norm of the Jacobian J (m x n):

- full output: the operator norm ||J||_{p->p}: the largest singular value (p = 2), the
  largest absolute column sum (p = 1), the largest absolute row sum (p = inf);
- class pair: the margin's gradient is the row g = J_i - J_j (:func:`margin_jacobian`),
  and ||g||_{p->|.|} is the dual norm ||g||_{p*} (1/p + 1/p* = 1, :func:`bench.api.dual`).

:func:`jacobian_norm` computes these for a batch of Jacobians in the batch's own dtype
and device (torch), in plain floating point: the value for a matrix, not a bound on it.
Verifiers use it for Jacobians they have (``lower``: autograd's; ``mip`` and ``bab``: a
linear region's), and for the entrywise majorant max(|lo|, |hi|) of a Jacobian interval
(``lirpa``, ``pwl.norm_upper``), which bounds every matrix of the interval because these
norms are monotone in |entries|; callers that report an upper bound inflate the value.

Not to be confused with :func:`methods.trivial.vector_norm` and
:func:`methods.trivial.operator_norm`: those are *sound upper bounds* on the norms of a
layer's weights in float64, inflated by a proven bound on their rounding (and an exact
Gram-matrix eigenvalue for p = 2), for a certified product of layer norms.
"""
from __future__ import annotations

import math

import torch

from bench.api import Query, dual


def jacobian_norm(J: torch.Tensor, p: float, pair: bool) -> torch.Tensor:
    """The norm of each Jacobian in the batch J (B, m, n), shape (B,): the p -> p
    operator norm, or, with ``pair``, the dual norm ||g||_{p*} of the single row g = J[:, 0]
    (the margin's gradient, see :func:`margin_jacobian`).  p is 1, 2 or inf."""
    if pair:
        g = J[:, 0, :]
        q = dual(p)
        if math.isinf(q):
            return g.abs().amax(1)
        return torch.linalg.vector_norm(g, ord=q, dim=1)
    if p == 2:
        return torch.linalg.matrix_norm(J, ord=2)
    if p == 1:
        return J.abs().sum(1).amax(1)
    return J.abs().sum(2).amax(1)


def margin_jacobian(J: torch.Tensor, query: Query) -> torch.Tensor:
    """The Jacobians the query's norm is taken of, from those of the full output (B, m, n):
    the margin rows J_i - J_j, shape (B, 1, n), for a class pair (i, j); J itself otherwise."""
    if not query.is_pair:
        return J
    i, j = query.target
    return (J[:, i, :] - J[:, j, :]).unsqueeze(1)
