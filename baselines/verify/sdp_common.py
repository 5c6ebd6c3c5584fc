"""What the SDP verifiers share: the network as (weights, slopes), the LipSDP-Neuron
matrix M(rho, T) and its certification in float64.

LipSDP (Fazlyab et al., NeurIPS 2019) for f = W_L phi(W_{L-1} ... phi(W_0 x)) with
elementwise activations whose slopes lie in [a_k, b_k]: if, for diagonal T_k >= 0,

  M(rho, T) = [A; B]^T [[-2ab T, (a+b) T], [(a+b) T, -2T]] [A; B] + diag(-rho I, 0, ..., W_L^T W_L) <= 0

(block-tridiagonal: diagonal blocks D_0 = -rho I - 2 a_1 b_1 W_0^T T_1 W_0,
D_k = -2 T_k - 2 a_{k+1} b_{k+1} W_k^T T_{k+1} W_k, D_last = -2 T_last + W_L^T W_L;
off-diagonal blocks O_k = (a_{k+1} + b_{k+1}) W_k^T T_{k+1}), then sqrt(rho) bounds the
l2 Lipschitz constant.  Biases do not enter.

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
    """Read the network as an alternating chain, or raise Unsupported with the reason."""
    if query.p != 2:
        raise Unsupported(f"{name} bounds the l2 Lipschitz constant only (p = 2)")
    if query.domain != "global":
        raise Unsupported(f"{name} computes global bounds only")
    layers = net.layers
    kinds = ["A" if isinstance(l, Affine) else "S" for l in layers]
    if kinds[0] != "A" or kinds[-1] != "A" or any(x == y for x, y in zip(kinds, kinds[1:])):
        raise Unsupported(f"{name} needs affine layers separated by single activations, starting and ending "
                          f"with an affine layer (got {' '.join(kinds)})")
    Ws, a, b = [], [], []
    for l in layers:
        if isinstance(l, Affine):
            Ws.append(l.matrix())
        else:
            assert isinstance(l, Activation)
            if not l.elementwise:
                raise Unsupported(f"{name} needs elementwise slope-restricted activations; {l.name} is not")
            a.append(float(l.slope[0]))
            b.append(float(l.slope[1]))
    if query.is_pair:
        i, j = query.target
        Ws[-1] = (Ws[-1][i] - Ws[-1][j])[None, :]
    return Chain(Ws, a, b)


def assemble(ch: Chain, rho: float, T: list[np.ndarray], absolute: bool = False) -> np.ndarray:
    """The dense matrix M(rho, T) (or, with ``absolute``, the same sum built from |W|,
    |T|, |a b|, |a + b|: an entrywise bound on the terms, for rounding-error bounds)."""
    Ws = [np.abs(W) for W in ch.Ws] if absolute else ch.Ws
    T = [np.abs(t) for t in T] if absolute else T
    sizes = [Ws[0].shape[1]] + ch.hidden
    offs = np.concatenate([[0], np.cumsum(sizes)])
    M = np.zeros((offs[-1], offs[-1]))
    f = (lambda x: abs(x)) if absolute else (lambda x: x)
    M[:sizes[0], :sizes[0]] -= rho * np.eye(sizes[0]) * (-1 if absolute else 1)
    for k in range(len(ch.hidden)):
        W, t = Ws[k], T[k]
        ab, apb = f(ch.a[k] * ch.b[k]), f(ch.a[k] + ch.b[k])
        s, e = slice(offs[k], offs[k + 1]), slice(offs[k + 1], offs[k + 2])
        if ab != 0:
            M[s, s] += (1 if absolute else -1) * 2 * ab * (W.T * t) @ W
        M[s, e] += apb * W.T * t
        M[e, s] += apb * (W.T * t).T
        M[e, e] += (2 if absolute else -2) * np.diag(t)
    last = slice(offs[-2], offs[-1])
    M[last, last] += Ws[-1].T @ Ws[-1]
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
    # rather than negative definite: enlarge T slightly until it is strictly feasible
    for scale in (0.0, 1e-9, 1e-7, 1e-5, 1e-3, 1e-2):
        T = [t * (1 + scale) for t in T0]
        try:
            rho_s = max(_rho_schur(ch, T), 0.0)
            break
        except RepairError:
            if scale == 1e-2:
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
                   "checks": tries, "T_enlarged_by": scale}
