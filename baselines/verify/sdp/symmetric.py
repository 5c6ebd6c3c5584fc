"""|x| in its slope range [-1, 1]: every off-diagonal block of the LMI vanishes, and
LipSDP-Neuron is the product of diagonally rescaled layer norms
(:func:`symmetric_factors`), minimised from u = 0 (the trivial bound);
:func:`symmetric_multipliers` turns the scalings into the LMI's multipliers.
"""
from __future__ import annotations


import numpy as np
import torch


from .chain import Chain
from .linalg import eigs


def symmetric(ch: Chain) -> bool:
    """Every activation's slope range is symmetric, [-c, c] with c > 0 (|x|): then a + b = 0
    and LipSDP splits layer by layer (:func:`symmetric_factors`)."""
    return bool(ch.a) and all(a + b == 0 and b > 0 for a, b in zip(ch.a, ch.b))


def symmetric_factors(tc: Chain, us: list) -> list:
    """LipSDP-Neuron for a :func:`symmetric` chain, as a product of scaled norms (torch,
    differentiable in ``us``).

    With slopes in [-c_k, c_k] every off-diagonal block (a + b) W_k^T T_{k+1} vanishes and
    M(rho, T) <= 0 is the diagonal blocks alone: rho I >= 2 c_1^2 W_0^T T_1 W_0,
    T_k >= c_{k+1}^2 W_k^T T_{k+1} W_k and 2 T_K >= W_L^T W_L.  For multipliers of shape
    T_k = t_k E_k (E_k = diag(exp(u_k))) the least scalars t_k, taken from the output back,
    make each block singular, and then
      rho(u) = prod_k c_k^2 * prod_{k=0}^{K} ||E_{k+1}^{1/2} W_k E_k^{-1/2}||_2^2   (E_0 = E_{K+1} = I),
    so LipSDP's value is the least product of diagonally rescaled layer norms (u = 0, and
    the layer form, give the trivial bound).  Returns the eigenvalues of each factor's Gram
    matrix (the smaller of B B^T and B^T B), c_k^2 folded into them: rho(u) is the product
    of their largest.  :func:`symmetric_multipliers` gives the T."""
    out, K = [], len(us)
    for k, W in enumerate(tc.Ws):
        B = W
        if k > 0:
            B = B * torch.exp(-us[k - 1] / 2)[None, :]
        if k < K:
            B = torch.exp(us[k] / 2)[:, None] * B
        G = B @ B.T if B.shape[0] <= B.shape[1] else B.T @ B
        c2 = tc.b[k] ** 2 if k < K else 1.0  # W_k meets the slope of the activation after it
        lam = eigs(G)
        if lam is None:  # exp(u) overflowed: outside what the solver may step to
            return None
        out.append(c2 * lam)
    return out


def symmetric_multipliers(tc: Chain, us: list) -> tuple[list[np.ndarray], float]:
    """The multipliers T_k = t_k E_k of :func:`symmetric_factors` (each block made singular
    from the output back) and rho(u), in float64."""
    with torch.no_grad():
        n = [float(l[-1]) for l in symmetric_factors(tc, us)]  # factor k, its slope's c^2 folded in
    K = len(us)
    t = [0.0] * K
    t[K - 1] = n[K] / 2  # 2 T_K >= W_L^T W_L
    for k in range(K - 2, -1, -1):  # T_k >= c_{k+1}^2 W_k^T T_{k+1} W_k
        t[k] = n[k + 1] * t[k + 1]
    rho = float(np.prod(n))  # = 2 n[0] t[0]: rho I >= 2 c_1^2 W_0^T T_1 W_0
    return [t[k] * torch.exp(us[k]).detach().cpu().numpy() for k in range(K)], rho
