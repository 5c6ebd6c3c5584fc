"""Certified robust accuracy from Lipschitz bounds.

A test point x with label y is certified at radius eps (in the input p-norm) when the
network classifies it correctly and, for every other class j,
``f_y(x) - f_j(x) > eps * K[y, j]``, where K[y, j] is an upper bound on the Lipschitz
constant of the margin f_y - f_j: no x' with ||x' - x||_p <= eps can then change the
prediction.  K comes from a verifier's class-pair bounds where it has them, else from its
whole-output bound L (p -> p) as ``||e_y - e_j||_{p*} * L`` (Hoelder: |c^T (f(x)-f(x'))|
<= ||c||_{p*} ||f(x)-f(x')||_p); pairs with neither are never certified.
"""
from __future__ import annotations

import math

import numpy as np

from .api import dual, parse_p, p_name
from .rows import parse_target


def pair_factor(p: float) -> float:
    """||e_i - e_j||_{p*}: 1 for p = 1, sqrt 2 for p = 2, 2 for p = inf (rounded up)."""
    q = dual(parse_p(p))
    v = 2.0 if q == 1 else (1.0 if math.isinf(q) else math.sqrt(2.0))
    return math.nextafter(v, math.inf) if q == 2 else v


def pair_matrix(n_classes: int, p: float, full: float | None = None, pairs: dict | None = None,
                all_pairs: np.ndarray | None = None) -> np.ndarray:
    """The (C, C) matrix of margin bounds: the smallest of what is known for each pair."""
    K = np.full((n_classes, n_classes), np.inf)
    if full is not None:
        K = np.minimum(K, full * pair_factor(p))
    for (i, j), v in (pairs or {}).items():
        K[i, j] = min(K[i, j], v)
        K[j, i] = min(K[j, i], v)  # |f_i - f_j| and |f_j - f_i| have the same constant
    if all_pairs is not None:
        K = np.minimum(K, all_pairs)
    np.fill_diagonal(K, 0.0)
    return K


def certified_radius(logits: np.ndarray, y: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Per point: min over j != y of (f_y - f_j) / K[y, j]; -1 where misclassified."""
    logits = np.asarray(logits, dtype=np.float64)
    n, C = logits.shape
    margins = logits[np.arange(n), y][:, None] - logits  # (n, C)
    Ky = K[y]  # (n, C)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(Ky > 0, margins / Ky, np.where(margins > 0, np.inf, -np.inf))
    r[np.arange(n), y] = np.inf
    radius = r.min(axis=1) * (1.0 - 1e-9)  # margin for the float64 rounding of logits and bounds
    correct = logits.argmax(axis=1) == y
    return np.where(correct, radius, -1.0)


def certified_accuracy(logits: np.ndarray, y: np.ndarray, K: np.ndarray, eps_grid) -> list[float]:
    """Fraction of points certified at each eps (strictly larger radius)."""
    radius = certified_radius(logits, y, K)
    return [float(np.mean(radius > e)) for e in eps_grid]


def certify_network(module, dataset, rows: list[dict], eps: dict, verifiers: dict,
                    input_shape: tuple | None = None) -> list[dict]:
    """Certified accuracy of one network for every (verifier, its parameters, p) that has
    bounds in ``rows`` (dicts with verifier, verifier_params, p, target, value), at the eps
    of ``eps`` ({p name: [eps, ...]}).  ``verifiers`` maps a verifier name to its class;
    one with a ``pair_bounds`` method contributes every class pair at once.  The test
    inputs are fed in the network's ``input_shape`` (default: the data set's;
    :func:`bench.data.fit_inputs`, which keeps every norm)."""
    import copy
    import json

    import torch
    from .data import fit_inputs
    from .network import walk

    shape = tuple(input_shape or dataset.input_shape)
    X = fit_inputs(dataset.X_test, shape, f"data set {dataset.name}")
    m64 = copy.deepcopy(module).double().eval()
    with torch.no_grad():
        logits = m64(torch.as_tensor(X, dtype=torch.float64)).reshape(len(X), -1).numpy()
    y = dataset.y_test
    C = logits.shape[1]
    groups: dict[tuple, dict] = {}
    for r in rows:
        if r["p"] not in eps or r["value"] is None:
            continue
        g = groups.setdefault((r["verifier"], r["verifier_params"], r["p"]), {"full": None, "pairs": {}})
        if r["target"] == "full":
            g["full"] = r["value"] if g["full"] is None else min(g["full"], r["value"])
        else:
            i, j = parse_target(r["target"])
            g["pairs"][(i, j)] = min(g["pairs"].get((i, j), math.inf), r["value"])
    net = walk(module, shape)
    out = []
    for (name, params, p), g in sorted(groups.items()):
        cls = verifiers.get(name)
        all_pairs, source = None, "full" if g["full"] is not None else "pairs"
        if cls is not None and hasattr(cls, "pair_bounds"):
            all_pairs = cls(**json.loads(params)).pair_bounds(net, parse_p(p))
            source = "all pairs"
        K = pair_matrix(C, parse_p(p), g["full"], g["pairs"], all_pairs)
        grid = [float(e) for e in eps[p]]
        out.append({"verifier": name, "verifier_params": params, "p": p, "source": source, "eps": grid,
                    "certified_acc": certified_accuracy(logits, y, K, grid),
                    "clean_acc": float(np.mean(logits.argmax(1) == y))})
    return out


def eps_by_p(spec) -> dict:
    """Normalise a suite's eps grid: a list (every p) or {p: list} -> {p name: list}.  An
    eps is a number >= 0 or a fraction written "36/255" (pixel units)."""
    if isinstance(spec, dict):
        return {p_name(parse_p(k)): [_eps(e) for e in v] for k, v in spec.items()}
    return {p: [_eps(e) for e in spec] for p in ("1", "2", "inf")}


def _eps(e) -> float:
    if isinstance(e, str) and "/" in e:
        a, _, b = e.partition("/")
        v = float(a) / float(b)
    else:
        v = float(e)
    if not (0 <= v < math.inf):
        raise ValueError(f"eps {e!r} is not a number >= 0")
    return v
