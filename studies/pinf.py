"""The p = inf decomposition of the trivial bound (docs/pinf.md).

For a network f = W_L A(W_{L-1} ... A(W_0 x + b_0) ...) + b_L with a piecewise-linear
activation A whose Jacobians have entries of absolute value at most one (Abs: D in
{-1, 1}; ReLU: D in {0, 1}; MaxMin: a permutation of each pair), the global l_inf ->
l_inf constant is bracketed by

    TB = prod ||W_k||_inf  >=  M  >=  P  >=  exact,

- :func:`majorant` M = || |W_L| |A| ... |A| |W_0| ||_inf, maximised over the Jacobians:
  TB / M is the *row-sum chaining* gap (the rows of largest l1 norm of each layer are
  not the ones the next layer's largest rows read);
- :func:`pattern_bound` P = max over every activation pattern, reachable or not, of
  ||W_L D ... D W_0||_inf: M / P is the *sign cancellation* gap (no pattern makes all the
  paths from an input to the maximising output agree in sign), P / exact the
  *reachability* gap (the aligning pattern is no input's);
- :func:`coherence` coh(W) = ||W||_{inf->1} / sum |W_ab|, the per-layer sign statistic:
  the best rank-one sign pattern agrees with a share (1 + coh) / 2 of |W|'s mass, and
  coh = 1 exactly when sign(W) is rank one, which M = P requires of every layer on the
  units that matter (docs/pinf.md).

Analysis helpers for ``studies/pinf_study.py`` and ``tests/test_pinf.py``; no verifier
depends on them.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import nn


def linears(net: nn.Module) -> tuple[list[np.ndarray], list[str]]:
    """The weight matrices W_0 .. W_L (float64) and the activation names between them."""
    Ws, acts = [], []
    for m in net:
        if isinstance(m, nn.Linear):
            Ws.append(m.weight.detach().double().cpu().numpy())
        elif not isinstance(m, (nn.Flatten, nn.Identity, nn.Dropout)):   # no Jacobian of their own
            acts.append(type(m).__name__.lower())
    return Ws, acts


def row_sum_norm(W: np.ndarray) -> float:
    return float(np.abs(W).sum(1).max())


def _pairs(w: int) -> np.ndarray:
    return np.arange(w).reshape(-1, 2)


def _maxmin_choices(w: int) -> np.ndarray:
    """Every pair permutation of w units as index arrays (2^(w/2), w)."""
    pr = _pairs(w)
    out = []
    for bits in itertools.product((0, 1), repeat=len(pr)):
        idx = np.arange(w)
        for (a, b), s in zip(pr, bits):
            if s:
                idx[a], idx[b] = b, a
        out.append(idx)
    return np.array(out)


def majorant(Ws, acts) -> float:
    """M: the largest row sum of |W_L| A ... A |W_0| maximised over the activation's
    Jacobians A with nonnegative entries (|D| = I for abs, D = I for relu, a pair
    permutation for maxmin: enumerated for 2 hidden layers); sinsplit's majorant is
    [I; I] per unit.  An upper bound on the exact constant, at most TB."""
    act = set(acts)
    A = [np.abs(W) for W in Ws]
    if act <= {"abs", "relu"}:
        out = A[0]
        for W in A[1:]:
            out = W @ out
        return float(out.sum(1).max())
    if act == {"sinsplit"}:
        out = A[0]
        for W in A[1:]:
            out = W @ np.vstack([out, out])
        return float(out.sum(1).max())
    if act == {"maxmin"} and len(A) == 3:
        return _maxmin_best(A, np.ones((A[0].shape[1], 1)))
    return float("nan")


def _maxmin_best(Ws, S) -> float:
    """max over pair permutations Pi_0, Pi_1 and columns s of S of e_i^T W_2 Pi_1 W_1 Pi_0 W_0 s
    (the first layer's permutations enumerated, the second's chosen per pair)."""
    W0, W1, W2 = (torch.as_tensor(W) for W in Ws)
    V = W0 @ torch.as_tensor(S, dtype=torch.float64)                   # (w0, s)
    best = -math.inf
    for chunk in np.array_split(_maxmin_choices(W0.shape[0]), max(1, 2 ** (W0.shape[0] // 2) // 4096)):
        U = torch.einsum("ab,kbs->kas", W1, V[torch.as_tensor(chunk)])   # (k, w1, s)
        pr = torch.as_tensor(_pairs(W1.shape[0]))
        a, b = pr[:, 0], pr[:, 1]
        # output i, pair (a, b): straight W2[i,a] u_a + W2[i,b] u_b or swapped W2[i,a] u_b + W2[i,b] u_a
        st = W2[:, a][None, :, :, None] * U[:, None, a] + W2[:, b][None, :, :, None] * U[:, None, b]
        sw = W2[:, a][None, :, :, None] * U[:, None, b] + W2[:, b][None, :, :, None] * U[:, None, a]
        best = max(best, float(torch.maximum(st, sw).sum(2).max()))
    return best


def pattern_bound(Ws, acts, max_units: int = 16, max_inputs: int = 12) -> float:
    """P: max over *every* activation pattern (reachable or not) of ||W_L D ... D W_0||_inf
    for 2 hidden layers: the first layer's patterns enumerated (2^w0 for abs / relu,
    2^(w0/2) for maxmin), the second's chosen per unit, every input sign vector s.
    NaN where that is too many (more than ``max_units`` Abs / ReLU units or 2 ``max_units``
    MaxMin units in the first hidden layer, or more than ``max_inputs`` inputs)."""
    if len(Ws) != 3 or len(set(acts)) != 1:
        return float("nan")
    act = acts[0]
    n = Ws[0].shape[1]
    too_big = Ws[0].shape[0] > (2 * max_units if act == "maxmin" else max_units)
    if n > max_inputs or too_big or act not in ("abs", "relu", "maxmin"):
        return float("nan")
    S = np.array(list(itertools.product((-1.0, 1.0), repeat=n))).T      # (n, 2^n)
    if act == "maxmin":
        return _maxmin_best(Ws, S)
    vals = torch.tensor((-1.0, 1.0) if act == "abs" else (0.0, 1.0), dtype=torch.float64)
    W0, W1, W2 = (torch.as_tensor(W) for W in Ws)
    V = W0 @ torch.as_tensor(S)                                          # (w0, 2^n)
    best = -math.inf
    pats = torch.tensor(list(itertools.product(vals.tolist(), repeat=W0.shape[0])), dtype=torch.float64)
    for D0 in torch.split(pats, 4096):
        U = torch.einsum("ab,kbs->kas", W1, D0[:, :, None] * V[None])     # (k, w1, 2^n)
        T = W2[None, :, :, None] * U[:, None]                            # (k, C, w1, 2^n)
        # the second layer's d_a in vals maximises each term d_a W2[i,a] u_a on its own
        best = max(best, float(torch.maximum(vals[0] * T, vals[1] * T).sum(2).max()))
    return best


def coherence(W: np.ndarray, exact_upto: int = 20, starts: int = 64, seed: int = 0) -> tuple[float, bool]:
    """coh(W) = ||W||_{inf->1} / sum|W| = max over sign vectors t of ||W t||_1 / sum|W|,
    and whether it is exact (enumeration over the smaller side) or a local-search lower bound."""
    W = np.asarray(W, dtype=np.float64)
    if W.shape[1] > W.shape[0]:
        W = W.T                      # ||W||_{inf->1} = ||W^T||_{inf->1}
    total = np.abs(W).sum()
    if total == 0:
        return 1.0, True
    k = W.shape[1]
    if k <= exact_upto:
        best = 0.0
        signs = np.array(list(itertools.product((-1.0, 1.0), repeat=k - 1)))
        T = np.hstack([np.ones((len(signs), 1)), signs])                   # t and -t give the same value
        for chunk in np.array_split(T, max(1, len(T) // 8192)):
            best = max(best, float(np.abs(chunk @ W.T).sum(1).max()))
        return best / total, True
    rng = np.random.default_rng(seed)
    best = 0.0
    for _ in range(starts):
        t = rng.choice((-1.0, 1.0), k)
        cur = np.abs(W @ t).sum()
        improved = True
        while improved:
            improved = False
            for j in range(k):
                t[j] = -t[j]
                new = np.abs(W @ t).sum()
                if new > cur + 1e-15:
                    cur, improved = new, True
                else:
                    t[j] = -t[j]
        best = max(best, cur)
    return best / total, False
