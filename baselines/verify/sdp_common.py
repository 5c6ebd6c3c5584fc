"""What the SDP verifiers share: the network as (weights, slopes), the LipSDP-Neuron
matrix M(rho, T) and its certification in float64.

LipSDP (Fazlyab et al., NeurIPS 2019) for f = W_L phi(W_{L-1} ... phi(W_0 x)) with
elementwise activations whose slopes lie in [a_k, b_k]: if, for diagonal T_k >= 0,

  M(rho, T) = [A; B]^T [[-2ab T, (a+b) T], [(a+b) T, -2T]] [A; B] + diag(-rho I, 0, ..., W_L^T W_L) <= 0

(block-tridiagonal: diagonal blocks D_0 = -rho I - 2 a_1 b_1 W_0^T T_1 W_0,
D_k = -2 T_k - 2 a_{k+1} b_{k+1} W_k^T T_{k+1} W_k, D_last = -2 T_last + W_L^T W_L;
off-diagonal blocks O_k = (a_{k+1} + b_{k+1}) W_k^T T_{k+1}), then sqrt(rho) bounds the
l2 Lipschitz constant.  Biases do not enter.

The blocks are written once, in :func:`lmi_terms`, for any backend that supplies the few
operations they need (:class:`Ops`): :data:`NUMPY` for the dense matrix of the
certification (:func:`assemble`), :data:`TORCH` for the differentiable Schur complement of
lipsdp's NATIVE solver, :data:`CVXPY` for lipsdp's SDP.

Certification (:func:`certify`): for given multipliers T (clipped at 0), the least rho
is found by a Schur complement, rho_S = lambda_max(-2ab W_0^T T_1 W_0 + O_0 (-C)^{-1}_11 O_0^T)
with C the matrix without the input block (which must be negative definite: else no rho
works and the multipliers cannot be repaired), and then *checked* on the full, unreduced
M in float64: rho is raised until the largest eigenvalue of M(rho) plus a bound on the
rounding of its assembly and of the eigensolver is <= 0.  Only a rho that passes is
reported.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from bench.api import Query, Unsupported
from bench.network import Activation, Affine, Net

EPS = float(np.finfo(np.float64).eps)


class RepairError(Exception):
    """The multipliers cannot be made into a certificate."""


@dataclass
class Chain:
    """The network as W_0, ..., W_L (float64, out x in; the last one already the pair
    row c^T W_L for a class-pair query) and the slope range [a_k, b_k] of activation k."""
    Ws: list
    a: list
    b: list

    @property
    def hidden(self) -> list[int]:
        return [W.shape[0] for W in self.Ws[:-1]]


def chain(net: Net, query: Query, name: str) -> Chain:
    """Read the network as an alternating chain, or raise Unsupported with the reason.
    Consecutive affine maps (a Linear and the BatchNorm after it, an average pooling and
    the Linear after it, ...) are composed into one matrix: exactly the same map, and
    biases do not enter the LMI."""
    if query.p != 2:
        raise Unsupported(f"{name} bounds the l2 Lipschitz constant only (p = 2)")
    if query.domain != "global":
        raise Unsupported(f"{name} computes global bounds only")
    layers = net.layers
    for l in layers:
        if not isinstance(l, (Affine, Activation)):
            raise Unsupported(f"{name} reads affine layers and activations only; layer {l.index} "
                              f"({getattr(l, 'name', type(l).__name__)}) is neither")
    kinds = ["A" if isinstance(l, Affine) else "S" for l in layers]
    if kinds[0] != "A" or kinds[-1] != "A" or any(x == y == "S" for x, y in zip(kinds, kinds[1:])):
        raise Unsupported(f"{name} needs affine layers separated by single activations, starting and ending "
                          f"with an affine layer (got {' '.join(kinds)})")
    Ws, a, b = [], [], []
    prev_affine = False
    for l in layers:
        if isinstance(l, Affine):   # consecutive affine maps (e.g. Linear, BatchNorm) compose exactly
            if prev_affine:
                Ws[-1] = l.matrix() @ Ws[-1]
            else:
                Ws.append(l.matrix())
            prev_affine = True
        else:
            prev_affine = False
            if not l.elementwise:
                raise Unsupported(f"{name} needs elementwise slope-restricted activations; {l.name} is not")
            a.append(float(l.slope[0]))
            b.append(float(l.slope[1]))
    if query.is_pair:
        i, j = query.target
        Ws[-1] = (Ws[-1][i] - Ws[-1][j])[None, :]
    return Chain(Ws, a, b)


@dataclass(frozen=True)
class Ops:
    """What one backend supplies to :func:`lmi_terms`.  ``t`` is a layer's multiplier in
    the backend's own form (a vector for numpy and torch, the matrix T for cvxpy); products
    with a scalar, ``@``, ``+`` and ``.T`` are the backend's operators."""
    #: (W^T, t) -> W^T T: the columns of W^T scaled by t (never diag(t) formed for it)
    colscale: Callable
    #: t -> T as a matrix
    diag: Callable
    #: n -> the n x n identity
    eye: Callable


def _torch_eye(n: int):
    import torch
    return torch.eye(n, dtype=torch.float64)


#: numpy arrays: t a vector
NUMPY = Ops(colscale=lambda Wt, t: Wt * t, diag=np.diag, eye=np.eye)
#: torch tensors (float64, differentiable in t): t a vector
TORCH = Ops(colscale=lambda Wt, t: Wt * t, diag=lambda t: t.diag(), eye=_torch_eye)
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
    that numpy, torch and cvxpy build one matrix.  ``ch.Ws[0]`` may be lipsdp's reduced
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
        yield k, k + 1, f(apb) * WtT
        # O_k^T from its own product, not O_k.T: the torch graph then sums NATIVE's
        # gradients in the same order as before this builder existed (NATIVE's path is
        # sensitive to the last bit, and the suites' numbers are kept)
        yield k + 1, k, (f(apb) * ops.colscale(W.T, t)).T
        yield k + 1, k + 1, f(-2) * ops.diag(t)
    yield K, K, ch.Ws[-1].T @ ch.Ws[-1]


def block_offsets(ch: Chain) -> np.ndarray:
    """Where the blocks of M start (and, last, its size)."""
    return np.concatenate([[0], np.cumsum([ch.Ws[0].shape[1]] + ch.hidden)]).astype(int)


def size_reason(net: Net, name: str, max_neurons: int, per_layer: bool) -> str | None:
    """Why the network is too large for an SDP verifier (None if it is not): its hidden
    neurons, all of them (``per_layer`` False: LipSDP's one LMI) or the widest layer's
    (ECLipsE's stages), counted from the walk's shapes before anything is unrolled.  A
    conv counts every channel at every pixel, so conv nets pass the limit quickly."""
    widths = [(a.in_dim, a.index) for a in net.activations]
    if not widths:
        return None
    n, index = max(widths, key=lambda w: w[0]) if per_layer else (sum(w for w, _ in widths), None)
    if n <= max_neurons:
        return None
    what = f"layer {index} has {n:,} neurons" if per_layer else f"the network has {n:,} hidden neurons"
    return (f"{name} solves networks up to {max_neurons:,} {'neurons per layer' if per_layer else 'hidden neurons'} "
            f"(beyond that it cannot finish in a suite's budget); {what} (convs unrolled: channels x pixels)")


def chain_reason(net: Net, query: Query, name: str, nonnegative_slopes: bool = False) -> str | None:
    """Why :func:`chain` cannot read this network for this query (None if it can); with
    ``nonnegative_slopes``, also an activation with a negative lower slope (the ECLipsE
    elimination drops the -2ab W^T T W terms, sound only for a >= 0)."""
    try:
        ch = chain(net, query, name)
    except Unsupported as e:
        return str(e)
    if nonnegative_slopes and any(a < 0 for a in ch.a):
        return (f"{name} drops the -2ab W^T T W terms, sound only for activations with a lower slope >= 0 "
                f"(this network has {min(ch.a)})")
    return None


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


def _rho_schur(ch: Chain, T: list[np.ndarray]) -> float:
    """The least rho with M(rho, T) <= 0 in exact arithmetic (before the check)."""
    M0 = assemble(ch, 0.0, T)
    n0 = ch.Ws[0].shape[1]
    C = M0[n0:, n0:]
    try:
        Lc = scipy.linalg.cholesky(-C, lower=True)
    except np.linalg.LinAlgError:
        raise RepairError("the multipliers leave the hidden-layer block of the LMI indefinite: "
                          "no rho makes M(rho, T) <= 0") from None
    O0 = M0[:n0, n0:]
    X = scipy.linalg.solve_triangular(Lc, O0.T, lower=True)  # O0 (-C)^-1 O0^T = X^T X
    Q = M0[:n0, :n0] + X.T @ X
    return float(scipy.linalg.eigvalsh(Q, subset_by_index=[n0 - 1, n0 - 1])[0])


def check(ch: Chain, rho: float, T: list[np.ndarray]) -> tuple[bool, float, float]:
    """(passes, computed lambda_max, error margin) of the float64 check of M(rho, T) <= 0."""
    M = assemble(ch, rho, T)
    N = M.shape[0]
    lam = float(scipy.linalg.eigvalsh(M, subset_by_index=[N - 1, N - 1], check_finite=True)[0])
    margin = 32.0 * N * EPS * float(np.linalg.norm(assemble(ch, rho, T, absolute=True)))
    return lam + margin <= 0.0, lam, margin


def certify(ch: Chain, T: list[np.ndarray]) -> tuple[float, dict]:
    """The certified bound sqrt(rho) for multipliers T, and what was done."""
    T0 = [np.maximum(np.asarray(t, dtype=np.float64), 0.0) for t in T]
    # a solver's optimum sits on the boundary, where the hidden block may be singular
    # rather than negative definite: enlarge T slightly until it is strictly feasible.
    # First uniformly (this outgrows the constant W_L^T W_L), then geometrically by depth,
    # T_k (1 + s)^(K - k): where the hidden block is homogeneous in T (a negative lower
    # slope, e.g. |x|: block k is -2 T_k + 2 W^T T_{k+1} W) only this makes -2 T_k win.
    K = len(T0)
    repairs = [(s, lambda k, s=s: 1 + s) for s in (0.0, 1e-9, 1e-7, 1e-5, 1e-3, 1e-2)]
    repairs += [(-s, lambda k, s=s: (1 + s) ** (K - k)) for s in (1e-9, 1e-7, 1e-5, 1e-3, 1e-2)]
    for n, (scale, factor) in enumerate(repairs):
        T = [t * factor(k) for k, t in enumerate(T0)]
        try:
            rho_s = max(_rho_schur(ch, T), 0.0)
            break
        except RepairError:
            if n == len(repairs) - 1:
                raise
    rho = rho_s * (1 + 1e-10) + 1e-300
    tries = 0
    for tries in range(1, 40):
        ok, lam, margin = check(ch, rho, T)
        if ok:
            break
        rho = rho * (1 + 1e-9 * 4 ** tries) + 1e-12 * 4 ** tries
    else:
        raise RepairError(f"no certified rho found (largest eigenvalue {lam:.3g} with margin {margin:.3g} "
                          f"at rho {rho:.6g})")
    value = math.nextafter(math.sqrt(rho), math.inf)
    return value, {"rho_schur": rho_s, "rho_certified": rho, "lmi_lambda_max": lam, "lmi_margin": margin,
                   "checks": tries, "T_enlarged_by": scale}  # < 0: geometrically, (1 + |s|)^(K - k)
