"""The LipSDP-Neuron matrix M(rho, T), written once (:func:`lmi_terms`) for the backends
that need it assembled (:class:`Ops`): :data:`CVXPY` for lipsdp's SDP, :data:`NUMPY` for
:func:`assemble` and :func:`check`, the dense reference the tests hold the structured
certificate against.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import scipy.linalg


from .chain import Chain, EPS


@dataclass(frozen=True)
class Ops:
    """What one backend supplies to :func:`lmi_terms`.  ``t`` is a layer's multiplier in
    the backend's own form (a vector for numpy, the matrix T for cvxpy); products
    with a scalar, ``@``, ``+`` and ``.T`` are the backend's operators."""
    #: (W^T, t) -> W^T T: the columns of W^T scaled by t (never diag(t) formed for it)
    colscale: Callable
    #: t -> T as a matrix
    diag: Callable
    #: n -> the n x n identity
    eye: Callable


#: numpy arrays: t a vector
NUMPY = Ops(colscale=lambda Wt, t: Wt * t, diag=np.diag, eye=np.eye)


#: cvxpy expressions: t is already the diagonal matrix T (cp.diag(variable), or
#: variable * I for one multiplier per layer)
CVXPY = Ops(colscale=lambda Wt, T: Wt @ T, diag=lambda T: T, eye=np.eye)


def lmi_terms(ch: Chain, T: list, ops: Ops, rho=None, absolute: bool = False) -> Iterator[tuple[int, int, object]]:
    """The terms of M(rho, T) as (i, j, term), ``term`` to be added to block (i, j): block 0
    is the input, block k the k-th hidden layer.  A block is the sum of its terms in the
    order given: D_0 = -rho I, then -2 a_1 b_1 W_0^T T_1 W_0; O_k and O_k^T (one product
    W_k^T T_{k+1}, transposed); D_k = -2 T_k, then -2 a_{k+1} b_{k+1} W_k^T T_{k+1} W_k, then
    (last block) W_L^T W_L.  The -2ab terms are left out where ab = 0 (ReLU, tanh, ...).

    ``ch.Ws`` and ``T`` hold the backend's matrices and multipliers (see :class:`Ops`), so
    that numpy and cvxpy build one matrix.  ``ch.Ws[0]`` may be lipsdp's reduced
    U S (W_0 = U S V^T): the input blocks are then those of W_0 in the basis V.
    ``rho=None`` leaves out the -rho I term.  With ``absolute`` every scalar coefficient is
    replaced by its absolute value (the caller passes |W_k| and |t_k|): the entrywise bound
    on the terms that :func:`assemble` needs for its rounding margin."""
    f = abs if absolute else (lambda x: x)
    if rho is not None:
        yield 0, 0, f(-rho) * ops.eye(ch.Ws[0].shape[1])
    K = len(ch.hidden)
    for k in range(K):
        W, t = ch.Ws[k], T[k]
        WtT = ops.colscale(W.T, t)  # W_k^T T_{k+1}
        ab, apb = ch.a[k] * ch.b[k], ch.a[k] + ch.b[k]
        if ab != 0:
            yield k, k, f(-2 * ab) * (WtT @ W)
        O = f(apb) * WtT
        yield k, k + 1, O
        yield k + 1, k, O.T
        yield k + 1, k + 1, f(-2) * ops.diag(t)
    yield K, K, ch.Ws[-1].T @ ch.Ws[-1]


def block_offsets(ch: Chain) -> np.ndarray:
    """Where the blocks of M start (and, last, its size)."""
    return np.concatenate([[0], np.cumsum([ch.Ws[0].shape[1]] + ch.hidden)]).astype(int)


def assemble(ch: Chain, rho: float, T: list[np.ndarray], absolute: bool = False) -> np.ndarray:
    """The dense matrix M(rho, T) (or, with ``absolute``, the same sum built from |W|,
    |T|, |a b|, |a + b|: an entrywise bound on the terms, for rounding-error bounds)."""
    if absolute:
        ch, T = Chain([np.abs(W) for W in ch.Ws], ch.a, ch.b), [np.abs(t) for t in T]
    offs = block_offsets(ch)
    M = np.zeros((offs[-1], offs[-1]))
    for i, j, term in lmi_terms(ch, T, NUMPY, rho, absolute):
        M[offs[i]:offs[i + 1], offs[j]:offs[j + 1]] += term
    return M


def check(ch: Chain, rho: float, T: list[np.ndarray]) -> tuple[bool, float, float]:
    """(passes, computed lambda_max, error margin) of a dense float64 check of M(rho, T) <= 0:
    the reference the tests hold :func:`certify` against on small networks."""
    M = assemble(ch, rho, T)
    N = M.shape[0]
    lam = float(scipy.linalg.eigvalsh(M, subset_by_index=[N - 1, N - 1], check_finite=True)[0])
    margin = 32.0 * N * EPS * float(np.linalg.norm(assemble(ch, rho, T, absolute=True)))
    return lam + margin <= 0.0, lam, margin
