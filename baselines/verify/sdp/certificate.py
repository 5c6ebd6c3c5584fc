"""Certification in float64 (:func:`certify`): a block Cholesky factorisation of
-M(rho, T) - delta I from the output backwards, with the rounding of the assembly and of
the factorisation bounded a posteriori and covered by the shift delta; rho comes from the
input block's Schur complement, and only a rho whose factorisation succeeds is reported.
:func:`balanced` rescales the blocks first (weights spanning many orders of magnitude).
"""
from __future__ import annotations

import math

import numpy as np
import torch


from .chain import Chain, EPS, RepairError, torch_chain
from .linalg import cholesky, top_eig_estimate, torch_norm


def _gamma(k: int) -> float:
    u = EPS / 2
    return k * u / (1 - k * u)


def certify(ch: Chain, T: list[np.ndarray], device=None, rho_hint: float | None = None) -> tuple[float, dict]:
    """The certified bound sqrt(rho) for multipliers T, and what was done.

    N = -M(rho, T) >= 0 is proved by a block Cholesky factorisation of N - delta I taken
    from the output backwards (hidden block K first, the input block last, so rho enters
    only the last factorisation): one dense factorisation per layer, in float64, on
    ``device``.  If every block factorises, the computed factor R satisfies
    R^T R = A + E with A the assembled N - delta I and |E| <= gamma |R|^T |R| (the
    componentwise backward error of Cholesky, Higham, Thm 10.3, which holds for the
    blocked order too), so ||E||_2 <= gamma ||R||_F^2; the assembly of N itself is off by
    at most gamma_a ||N_abs||_F (N_abs: the same sums from |W|, |T|, |a b|, |a + b|).  So
    N >= (delta - gamma ||R||_F^2 - gamma_a ||N_abs||_F) I >= 0 when delta covers both,
    which is checked after the factorisation with the computed ||R||_F.  No eigenvalue of
    the LMI is ever estimated: rho's value comes from the (small) input block's Schur
    complement, and only a rho whose factorisation succeeds is reported.

    The multipliers must make the hidden part strictly feasible: a solver's optimum sits
    on the boundary, so T is enlarged slightly until it is -- first uniformly, then
    geometrically by depth, T_k (1 + s)^(K - k) (where the hidden block is homogeneous in
    T, e.g. |x|, only this makes -2 T_k win).

    ``rho_hint`` (the solver's value) sizes the shift before the first factorisation; without
    it, or if it is too small, the hidden blocks are factorised twice."""
    # clipped at 0, and floored at 1e-12 of the layer's largest: a solver leaves exact zeros on
    # neurons that couple to nothing (a zero column), and a zero multiplier no scaling repairs
    T0 = [np.maximum(np.asarray(t, dtype=np.float64), 0.0) for t in T]
    T0 = [np.maximum(t, 1e-12 * t.max(initial=0.0)) for t in T0]
    ch, T0, scales = balanced(ch, T0, rho_hint)
    tc = torch_chain(ch, device)
    T0 = [torch.as_tensor(t, device=tc.Ws[0].device) for t in T0]
    # and floored at twice the first shift: below it a multiplier fails its own diagonal entry
    # 2 t - delta whatever rho (once the blocks are balanced, 1e-12 of the layer's largest can be)
    floor = 2 * _Blocks(tc, T0).delta(1.05 * max(rho_hint or 0.0, 0.0))
    T0 = [t.clamp_min(floor) for t in T0]
    K = len(T0)
    repairs = [(s, lambda k, s=s: 1 + s) for s in (0.0, 1e-9, 1e-7, 1e-5, 1e-3, 1e-2)]
    repairs += [(-s, lambda k, s=s: (1 + s) ** (K - k)) for s in (1e-9, 1e-7, 1e-5, 1e-3, 1e-2)]
    for n, (scale, factor) in enumerate(repairs):
        Ts = [t * factor(k) for k, t in enumerate(T0)]
        try:
            value, stats = _certify_blocks(tc, Ts, rho_hint)
            break
        except RepairError:
            if n == len(repairs) - 1:
                raise
    stats["T_enlarged_by"] = scale  # < 0: geometrically, (1 + |s|)^(K - k)
    stats["block_scales_log2"] = scales
    return value, stats


def balanced(ch: Chain, T: list[np.ndarray], rho_hint: float | None) -> tuple[Chain, list[np.ndarray], list[int]]:
    """The same LMI under the congruence D = diag(I, 2^e_1 I, ..., 2^e_K I): D M(rho, T; W) D =
    M(rho, T'; W') with T'_k = 4^e_k T_k, W'_k = 2^(e_k - e_{k+1}) W_k (e_0 = 0), W'_L = 2^e_K W_L,
    whatever the activations, so one is <= 0 iff the other is, at the same rho.  A deep net's
    multipliers span orders of magnitude (ECLipsE's: 4.9e11 down to 0.48 on ACAS Xu), and the
    shift delta I, sized by the largest block, swamps the smallest; e_k puts 2 max T'_k within a
    factor 2 of rho.  Powers of 2 scale exactly; where one would not (over/underflow) the LMI
    is certified as given.  Returns (chain, T', [e_1, ..., e_K])."""
    ref = rho_hint if rho_hint and math.isfinite(rho_hint) and rho_hint > 0 else None
    if ref is None:
        top = T[0].max(initial=0.0) if T else 0.0
        ref = 2 * top if top > 0 else 1.0
    es = [0]
    for t in T:
        top = float(t.max(initial=0.0))
        es.append(int(round(0.5 * math.log2(ref / (2 * top)))) if top > 0 and math.isfinite(top) else es[-1])
    Ws, Ts = [], []
    for k, W in enumerate(ch.Ws):
        W = np.asarray(W, dtype=np.float64)
        e = es[k] - es[k + 1] if k + 1 < len(es) else es[k]  # W'_k = (c_k / c_{k+1}) W_k; W'_L = c_K W_L
        Wk = np.ldexp(W, e)
        if e and not (np.isfinite(Wk).all() and np.array_equal(np.ldexp(Wk, -e), W)):
            return ch, T, [0] * len(T)  # not exact in float64: certify the LMI as given
        Ws.append(Wk)
    for k, t in enumerate(T):
        tk = np.ldexp(t, 2 * es[k + 1])
        if not (np.isfinite(tk).all() and np.array_equal(np.ldexp(tk, -2 * es[k + 1]), t)):
            return ch, T, [0] * len(T)
        Ts.append(tk)
    return Chain(Ws, ch.a, ch.b, ch.relu_forms), Ts, es[1:]


class _Blocks:
    """The blocks of N = -M(rho, T) (torch, float64) and bounds on their rounding."""

    def __init__(self, tc: Chain, T: list):
        self.tc, self.T, self.K = tc, T, len(T)
        Ws = tc.Ws
        self.n = [Ws[0].shape[1]] + tc.hidden
        rows2 = [(W * W).sum(1) for W in Ws]  # squared row norms of each W_k
        # the hidden part's trace and Frobenius bound (entries of |W|^T T |W| bounded by
        # its trace: a positive semidefinite matrix's Frobenius norm is at most its trace)
        tr = fro = 0.0
        for k in range(1, self.K + 1):
            t = T[k - 1]
            tr += 2 * float(t.sum())
            fro += 2 * float(torch_norm(t))
            if k < self.K:
                ab = abs(tc.a[k] * tc.b[k])
                if ab:
                    x = 2 * ab * float((T[k] * rows2[k]).sum())
                    tr, fro = tr + x, fro + x
            apb = abs(tc.a[k - 1] + tc.b[k - 1])  # the coupling of block k - 1 with block k, twice
            fro += 2 * apb * float(torch_norm(t[:, None] * Ws[k - 1]))
        last = float(rows2[-1].sum())  # ||W_L||_F^2 bounds ||W_L^T W_L||_F and its trace
        self.tr_h, self.fro_h = tr + last, fro + last
        ab1 = abs(tc.a[0] * tc.b[0])
        self.in_abs = 2 * ab1 * float((T[0] * rows2[0]).sum())
        self.gc = _gamma(2 * (sum(self.n) + 2))
        self.ga = _gamma(2 * (max(max(W.shape) for W in Ws) + 5))

    def delta(self, rho: float) -> float:
        """The shift that covers the rounding at this rho (twice the a priori bound)."""
        tr = self.tr_h + self.n[0] * rho + self.in_abs
        fro = self.fro_h + math.sqrt(self.n[0]) * rho + self.in_abs
        return 2 * (self.gc * tr / (1 - self.gc) + self.ga * fro) + 1e-300

    def margin(self, fro2: float, rho: float) -> float:
        """The rounding bound a posteriori, from the computed factor's ||R||_F^2."""
        fro = self.fro_h + math.sqrt(self.n[0]) * rho + self.in_abs
        return (self.gc * fro2 + self.ga * fro) * (1 + 1e-9)

    def diag_block(self, k: int):
        """N_kk for a hidden block k (1..K)."""
        tc, T = self.tc, self.T
        t = T[k - 1]
        if k == self.K:
            W = tc.Ws[-1]
            return torch.diag(2 * t) - W.T @ W
        D = torch.diag(2 * t)
        ab = tc.a[k] * tc.b[k]
        if ab:
            W = tc.Ws[k]
            D = D + (2 * ab) * ((W.T * T[k]) @ W)
        return D

    def input_block(self):
        """N_00 without rho (None when it is zero)."""
        tc = self.tc
        ab = tc.a[0] * tc.b[0]
        if not ab:
            return None
        W = tc.Ws[0]
        return (2 * ab) * ((W.T * self.T[0]) @ W)

    def coupling_T(self, k: int):
        """N_{k,k+1}^T (n_{k+1} x n_k): -(a + b) T_{k+1} W_k."""
        tc = self.tc
        return -(tc.a[k] + tc.b[k]) * (self.T[k][:, None] * tc.Ws[k])

    def factor_hidden(self, delta: float):
        """Factor the hidden blocks of N - delta I from the output backwards; returns
        (X_0, sum of the squared Frobenius norms of the factor's blocks so far), with
        X_0^T X_0 = N_01 S_1^{-1} N_10.  RepairError if a block is not positive definite."""
        fro2 = 0.0
        S = self.diag_block(self.K)
        for k in range(self.K, 0, -1):
            S.diagonal().sub_(delta)
            R = cholesky(S)
            if R is None:
                raise RepairError("the multipliers leave the hidden-layer block of the LMI indefinite: "
                                  f"no rho makes M(rho, T) <= 0 (block {k} of {self.K})")
            X = torch.linalg.solve_triangular(R, self.coupling_T(k - 1), upper=False)
            fro2 += float((R * R).sum()) + float((X * X).sum())
            if k == 1:
                return X, fro2
            S = self.diag_block(k - 1) - X.T @ X


def _certify_blocks(tc: Chain, T: list, rho_hint: float | None) -> tuple[float, dict]:
    B = _Blocks(tc, T)
    n0 = B.n[0]
    N00 = B.input_block()
    delta, passes = B.delta(1.05 * max(rho_hint or 0.0, 0.0)), 0
    while True:
        passes += 1
        X0, fro2 = B.factor_hidden(delta)
        # the input block's Schur complement: rho must exceed lambda_max(X_0^T X_0 - N_00)
        if N00 is None and X0.shape[0] < n0:
            lam = top_eig_estimate(X0 @ X0.T)  # the same nonzero spectrum, smaller
        else:
            lam = top_eig_estimate(X0.T @ X0 - (N00 if N00 is not None else 0))
        rho_s = max(lam, 0.0)
        need = B.delta(rho_s * (1 + 1e-6) + 1e-300)
        if delta >= need or passes == 3:
            break
        delta = 2 * need  # the input block's rounding is larger than guessed: factor again
    rho = (rho_s + delta) * (1 + 1e-12) + 1e-300
    eye = torch.eye(n0, dtype=X0.dtype, device=X0.device)
    for tries in range(1, 40):
        S0 = (rho - delta) * eye - X0.T @ X0
        if N00 is not None:
            S0 = S0 + N00
        R0 = cholesky(S0)
        if R0 is not None:
            total = fro2 + float((R0 * R0).sum())
            margin = B.margin(total, rho)
            if margin <= delta:
                break
        rho = rho * (1 + 1e-9 * 4 ** tries) + 1e-12 * 4 ** tries
    else:
        raise RepairError(f"no certified rho found (the input block did not factorise at rho {rho:.6g})")
    value = math.nextafter(math.sqrt(rho), math.inf)
    return value, {"rho_schur": rho_s, "rho_certified": rho, "lmi_shift": delta, "lmi_margin": margin,
                   "checks": tries, "factorisations": passes}
