"""The block machinery: one dense factorisation per layer, never the whole LMI.

N = -M(rho, T) is block-tridiagonal: with L_k = 2 T_k / rho,
  N_00 / rho = I + a_1 b_1 W_0^T L_1 W_0,
  N_kk / rho = L_k + a_{k+1} b_{k+1} W_k^T L_{k+1} W_k   (1 <= k < K),
  N_KK / rho = L_K - W_L^T W_L / rho,
  N_{k,k+1} / rho = -m_{k+1} W_k^T L_{k+1},  m = (a + b) / 2.
Eliminating from the input forward (Y_0 = N_00 / rho,
Y_k = N_kk / rho - m_k^2 L_k W_{k-1} Y_{k-1}^{-1} W_{k-1}^T L_k) leaves the last block
Y_K - W_L^T W_L / rho >= 0, so for multipliers L with every Y_k positive definite the
least rho is lambda_max(W_L Y_K^{-1} W_L^T): an eigenvalue problem of the output's size.
That is NATIVE's objective, and each ECLipsE stage is the same recursion one layer at a
time (ECLipsE drops the a b terms, sound for a b >= 0).

:func:`input_gram` and :func:`stage` are the recursion's steps, :func:`rho_of` the whole
of it with its gradient by the elimination's adjoint in closed form.
"""
from __future__ import annotations

import functools

import torch


from .chain import Chain
from .linalg import cholesky, eigs


def input_gram(tc: Chain, L1=None, drop_ab: bool = False):
    """G_0 = W_0 Y_0^{-1} W_0^T (torch): W_0 W_0^T when a_1 b_1 = 0 (or dropped), else
    through the Cholesky factor of Y_0 = I + a_1 b_1 W_0^T L_1 W_0; None if Y_0 is not
    positive definite."""
    W0 = tc.Ws[0]
    ab = tc.a[0] * tc.b[0]
    if ab == 0 or drop_ab:
        return W0 @ W0.T
    Y0 = torch.eye(W0.shape[1], dtype=W0.dtype, device=W0.device) + ab * (W0.T * L1) @ W0
    C = cholesky(Y0)
    if C is None:
        return None
    Z = torch.linalg.solve_triangular(C, W0.T, upper=False)
    return Z.T @ Z


def stage(tc: Chain, k: int, G, L, L_next=None, drop_ab: bool = False):
    """One elimination step (torch, differentiable in L and L_next): from
    G_{k-1} = W_{k-1} Y_{k-1}^{-1} W_{k-1}^T (``G``, hidden layer k's size; k counts from
    0 here, the chain's activation k) to G_k = W_{k+1} Y_k^{-1} W_{k+1}^T, with
    Y_k = diag(L) - m^2 L G L (+ a' b' W_{k+1}^T L_next W_{k+1} for the next activation's
    slopes, unless ``drop_ab``).  None if Y_k is not positive definite."""
    m = (tc.a[k] + tc.b[k]) / 2
    Y = torch.diag(L) - (m * m) * (L[:, None] * G * L[None, :])
    W = tc.Ws[k + 1]
    if k + 1 < len(tc.hidden) and not drop_ab:
        ab = tc.a[k + 1] * tc.b[k + 1]
        if ab != 0:
            Y = Y + ab * (W.T * L_next) @ W
    C = cholesky(Y)
    if C is None:
        return None
    Z = torch.linalg.solve_triangular(C, W.T, upper=False)  # W Y^{-1} W^T = Z^T Z
    return Z.T @ Z


def rho_of(tc: Chain, Ls: list, G0=None):
    """The eigenvalues of W_L Y_K^{-1} W_L^T, the largest of which is the least rho for
    normalised multipliers L (full LipSDP-Neuron, a b terms included), differentiable in
    ``Ls``; None if some Y_k is not positive definite.  ``G0``: G_0 when a_1 b_1 = 0,
    precomputed (W_0 W_0^T; an ECLipsE stage passes its G_{k-1}).

    The elimination runs without autograd; its gradient is the adjoint in closed form
    (:class:`_Elimination`), which costs O(n_k^2 q) a layer for the q <= r eigenvalues weighed where autograd
    through the Cholesky factors cost O(n_k^3), three times the forward pass."""
    with torch.no_grad():
        Ld = [l.detach() for l in Ls]
        K = len(Ld)
        W0, ab0 = tc.Ws[0], tc.a[0] * tc.b[0]
        C_in = None
        if ab0 == 0:
            G = G0 if G0 is not None else W0 @ W0.T
        else:
            Y0 = torch.eye(W0.shape[1], dtype=W0.dtype, device=W0.device) + ab0 * (W0.T * Ld[0]) @ W0
            C_in = cholesky(Y0)
            if C_in is None:
                return None
            Z = torch.linalg.solve_triangular(C_in, W0.T, upper=False)
            G = Z.T @ Z
        Gs, Cs = [], []
        for k in range(K):
            L, m = Ld[k], (tc.a[k] + tc.b[k]) / 2
            Y = torch.diag(L) - (m * m) * (L[:, None] * G * L[None, :])
            W = tc.Ws[k + 1]
            if k + 1 < K and tc.a[k + 1] * tc.b[k + 1] != 0:
                Y = Y + (tc.a[k + 1] * tc.b[k + 1]) * (W.T * Ld[k + 1]) @ W
            C = cholesky(Y)
            if C is None:
                return None
            Z = torch.linalg.solve_triangular(C, W.T, upper=False)  # W Y^{-1} W^T = Z^T Z
            Gs.append(G)
            Cs.append(C)
            G = Z.T @ Z
        lv = eigs(G, vectors=True)
        if lv is None:
            return None
        lam, V = lv
    if not any(l.requires_grad for l in Ls):
        return lam
    return _elimination_function().apply((tc, Ld, Gs, Cs, C_in, Z, V), lam, *Ls)


def _elimination_grads(state, lam_bar) -> list:
    """The gradient of sum(lam_bar * eigenvalues) in each L_k: the adjoint of the
    elimination.  With Y_bar_k = -B_k Gc B_k^T (Gc = V diag(lam_bar) V^T, r x r, B_k of
    hidden layer k's size x r): B_K = Y_K^{-1} W_L^T, B_{k-1} = m_k Y_{k-1}^{-1} W_k^T L_k B_k,
    and dL_k = diag(Y_bar_k) - 2 m_k^2 diag(G_{k-1} L_k Y_bar_k) (+ a b diag(W Y_bar W^T) for
    the a b terms, which Y_{k-1} and Y_0 hold for L_k).  Each B_k is carried in the
    eigenvectors' coordinates, B_k V, and only for the q eigenvalues with a weight (a soft
    maximum's weights fall below 1e-16 of the largest a few tau under the top), so every
    term is of rank q <= r: an ECLipsE stage, whose r is the next layer's width, pays
    O(n^2 q) for its gradient, not O(n^2 r)."""
    tc, Ld, Gs, Cs, C_in, Z, V = state
    K = len(Ld)
    keep = lam_bar.abs() > 1e-16 * lam_bar.abs().max()
    w, Vq = lam_bar[keep], V[:, keep]  # one synchronisation on a GPU (the count q)
    grads = [torch.zeros_like(l) for l in Ld]

    def ybar_diag(A, B=None):  # diag(-A Gc B^T) for A, B in the eigenvectors' coordinates
        return -((A * w[None, :]) * (A if B is None else B)).sum(1)
    B = torch.linalg.solve_triangular(Cs[K - 1].T, Z @ Vq, upper=True)  # Y_K^{-1} W_L^T V
    for k in range(K - 1, -1, -1):
        L, m = Ld[k], (tc.a[k] + tc.b[k]) / 2
        grads[k] += ybar_diag(B) - 2 * m * m * ybar_diag(Gs[k] @ (L[:, None] * B), B)
        if k + 1 < K and tc.a[k + 1] * tc.b[k + 1] != 0:
            grads[k + 1] += (tc.a[k + 1] * tc.b[k + 1]) * ybar_diag(tc.Ws[k + 1] @ B)
        C = Cs[k - 1] if k > 0 else C_in
        if C is None:  # a_1 b_1 = 0: G_0 = W_0 W_0^T (or the G0 given) does not depend on L
            break
        X = m * (tc.Ws[k].T @ (L[:, None] * B))  # the previous layer's B, before Y^{-1}
        B = torch.linalg.solve_triangular(C.T, torch.linalg.solve_triangular(C, X, upper=False), upper=True)
        if k == 0:
            grads[0] += (tc.a[0] * tc.b[0]) * ybar_diag(tc.Ws[0] @ B)
    return grads


@functools.cache
def _elimination_function():

    class Elimination(torch.autograd.Function):
        """The eigenvalues ``rho_of`` computed, with the closed-form adjoint as backward."""

        @staticmethod
        def forward(ctx, state, lam, *Ls):
            ctx.state = state
            return lam.clone()

        @staticmethod
        def backward(ctx, lam_bar):
            return (None, None, *_elimination_grads(ctx.state, lam_bar))
    return Elimination
