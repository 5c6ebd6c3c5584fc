"""Exact Lipschitz constants of tiny ReLU networks by enumerating activation regions.

For a piecewise-linear network the Lipschitz constant over a convex domain equals the
largest Jacobian norm over the full-dimensional linear regions that meet the domain.
Regions are enumerated depth first, neuron by neuron, keeping a sign pattern only when
the LP "maximise t s.t. s_k (a_k x + b_k) >= t, x in box" has t > 0 (a region with
interior).  Independent of everything in bench/ and methods/ by construction.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linprog
from torch import nn


def _affine_relu_layers(module: nn.Sequential):
    Ws, bs = [], []
    kinds = []
    for m in module:
        if isinstance(m, nn.Linear):
            Ws.append(m.weight.detach().double().numpy())
            bs.append(np.zeros(m.out_features) if m.bias is None else m.bias.detach().double().numpy())
            kinds.append("lin")
        elif isinstance(m, nn.ReLU):
            kinds.append("relu")
        elif isinstance(m, nn.Flatten):
            continue
        else:
            raise TypeError(f"exact enumeration handles Linear and ReLU only, not {type(m).__name__}")
    assert kinds == ["lin"] + ["relu", "lin"] * (len(Ws) - 1), kinds
    return Ws, bs


def _interior(A: np.ndarray, c: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> bool:
    """Is {x in [lo, hi] : A x + c > 0 componentwise} non-empty with interior?"""
    n = A.shape[1]
    if A.shape[0] == 0:
        return True
    # variables (x, t): maximise t subject to -(A x) + t <= c, t <= 1
    A_ub = np.hstack([-A, np.ones((A.shape[0], 1))])
    res = linprog(np.r_[np.zeros(n), -1.0], A_ub=A_ub, b_ub=c,
                  bounds=[(l, h) for l, h in zip(lo, hi)] + [(None, 1.0)], method="highs")
    return res.status == 0 and -res.fun > 1e-9


def regions(module: nn.Sequential, lo, hi):
    """Yield the Jacobian (as a matrix) of every full-dimensional linear region in the box."""
    Ws, bs = _affine_relu_layers(module)
    n = Ws[0].shape[1]
    lo, hi = np.broadcast_to(np.asarray(lo, float), n), np.broadcast_to(np.asarray(hi, float), n)

    def rec(layer: int, M: np.ndarray, v: np.ndarray, A: np.ndarray, c: np.ndarray):
        # current affine map of the input: x -> M x + v (pre-activation of `layer` once W applied)
        if layer == len(Ws) - 1:
            yield Ws[-1] @ M
            return
        Z, z = Ws[layer] @ M, Ws[layer] @ v + bs[layer]
        k = Z.shape[0]

        def signs(i, A, c, s):
            if i == k:
                yield s
                return
            for sg in (1.0, -1.0):
                A2, c2 = np.vstack([A, sg * Z[i]]), np.r_[c, sg * z[i]]
                if _interior(A2, c2, lo, hi):
                    yield from signs(i + 1, A2, c2, s + [sg])

        for s in signs(0, A, c, []):
            d = (np.array(s) > 0).astype(float)
            A_new = np.vstack([A, np.array(s)[:, None] * Z])
            c_new = np.r_[c, np.array(s) * z]
            yield from rec(layer + 1, d[:, None] * Z, d * z, A_new, c_new)

    yield from rec(0, np.eye(n), np.zeros(n), np.zeros((0, n)), np.zeros(0))


def norm(J: np.ndarray, p: float, target=None) -> float:
    if target is not None:
        i, j = target
        g = J[i] - J[j]
        q = {1.0: np.inf, 2.0: 2.0, np.inf: 1.0}[float(p)]
        return float(np.linalg.norm(g, q))
    if p == 2:
        return float(np.linalg.norm(J, 2))
    if p == 1:
        return float(np.abs(J).sum(0).max())
    return float(np.abs(J).sum(1).max())


def exact_lipschitz(module: nn.Sequential, p: float, target=None, lo=-100.0, hi=100.0) -> float:
    """The exact Lipschitz constant over the box [lo, hi]^n (global when the box holds
    every vertex of the arrangement, which a box of +-100 does for the tiny test nets)."""
    return max(norm(J, p, target) for J in regions(module, lo, hi))
