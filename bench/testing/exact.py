"""Exact Lipschitz constants of tiny piecewise-linear networks (Linear and Conv2d layers;
ReLU, Abs, CReLU, MaxMin, max pooling; sums and concatenations of branches, lipbench's
Sum and Concat, read by class name) by enumerating activation regions (the ground
truth of the conformance checks and the tests).  A conv is unrolled here, from torch's
own conv2d on the unit vectors; activations after it act on the channel dimension
(MaxMin pairs channels 2k and 2k + 1 at every pixel).  Modules without parameters that
only move, drop or zero-pad inputs (PixelShuffle, PixelUnshuffle, ChannelShuffle,
FirstChannels, ZeroChannelPad, Permute, ZeroPad1d/2d/3d, by class name) are unrolled the same way; a max pooling
(MaxPool2d, AdaptiveMaxPool2d) takes its windows from the module itself (input i is in
the window of output o when o moves as i goes from 0 to 1).

For a piecewise-linear network the Lipschitz constant over a convex domain equals the
largest Jacobian norm over the full-dimensional linear regions that meet the domain.
Regions are enumerated depth first, neuron by neuron, keeping a sign pattern only when
the LP "maximise t s.t. s_k (a_k x + b_k) >= t, x in box" has t > 0 (a region with
interior).  Independent of everything in bench/ and methods/ by construction.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linprog
from torch import nn


def _pairs(shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the pairs MaxMin sorts: (2k, 2k + 1) along the first axis of one
    input of ``shape`` (coordinates of a vector, channels of an image)."""
    idx = np.arange(int(np.prod(shape))).reshape(shape)
    return idx[0::2].reshape(-1), idx[1::2].reshape(-1)


def _act_rules(m: nn.Module, shape: tuple):
    """(A, jac) for a piecewise-linear, positively homogeneous activation on inputs of
    ``shape``: the region is decided by the signs s of A z, and in that region
    act(z) = jac(s) z."""
    name = type(m).__name__
    d = int(np.prod(shape))
    I = np.eye(d)
    if name == "ReLU":
        return I, lambda s: np.diag((s > 0).astype(float))
    if name == "Abs":
        return I, lambda s: np.diag(s)
    if name == "CReLU":
        return I, lambda s: np.vstack([np.diag((s > 0).astype(float)), -np.diag((s < 0).astype(float))])
    if name == "MaxMin":
        pa, pb = _pairs(shape)
        A = np.zeros((len(pa), d))
        A[np.arange(len(pa)), pa] = 1.0
        A[np.arange(len(pa)), pb] = -1.0

        def jac(s):
            J = np.zeros((d, d))
            for k, sg in enumerate(s):
                a, b = pa[k], pb[k]
                hi, lo = (a, b) if sg > 0 else (b, a)
                J[a, hi] = 1.0  # max
                J[b, lo] = 1.0  # min
            return J
        return A, jac
    if name in MAXPOOLS:
        n = d
        with torch.no_grad():
            E = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
            hit = (m(E).reshape(n, -1) > 0).numpy().T           # (outputs, inputs): the windows
        wins = [np.flatnonzero(r) for r in hit]
        pairs = [(a, b) for w in wins for ia, a in enumerate(w) for b in w[ia + 1:]]
        A = np.zeros((len(pairs), d))
        for k, (a, b) in enumerate(pairs):
            A[k, a], A[k, b] = 1.0, -1.0
        where = {pr: k for k, pr in enumerate(pairs)}

        def jac(s):   # in each region every window's maximum is the input that beats the others
            J = np.zeros((len(wins), d))
            for o, w in enumerate(wins):
                best = w[0]
                for c in w[1:]:
                    if s[where[(min(best, c), max(best, c))]] * (1.0 if best < c else -1.0) < 0:
                        best = c
                J[o, best] = 1.0
            return J
        return A, jac
    raise TypeError(f"exact enumeration handles ReLU, Abs, CReLU, MaxMin, max pooling, not {name}")


#: parameter-free modules that move, drop or zero-pad inputs: linear, unrolled by probing
MOVES = ("PixelShuffle", "PixelUnshuffle", "ChannelShuffle", "FirstChannels", "ZeroChannelPad", "Permute", "ZeroPad1d",
         "ZeroPad2d", "ZeroPad3d")
#: max pooling modules (piecewise linear, their windows probed)
MAXPOOLS = ("MaxPool2d", "AdaptiveMaxPool2d")


def _probed(m: nn.Module, shape: tuple) -> tuple[np.ndarray, np.ndarray, tuple]:
    """A parameter-free linear module on inputs of ``shape`` as (W, 0, output shape)."""
    n = int(np.prod(shape))
    with torch.no_grad():
        out = m(torch.eye(n, dtype=torch.float64).reshape(n, *shape))
    oshape = tuple(out.shape[1:])
    return out.reshape(n, -1).T.numpy(), np.zeros(int(np.prod(oshape))), oshape


def _unrolled(m: nn.Conv2d, shape: tuple) -> tuple[np.ndarray, np.ndarray, tuple]:
    """A Conv2d on inputs of ``shape`` as (W, b, output shape), float64."""
    n = int(np.prod(shape))
    with torch.no_grad():
        E = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
        out = torch.nn.functional.conv2d(E, m.weight.double(), None, m.stride, m.padding, m.dilation, m.groups)
    oshape = tuple(out.shape[1:])
    b = np.zeros(oshape) if m.bias is None else np.broadcast_to(m.bias.detach().double().numpy()[:, None, None],
                                                                oshape)
    return out.reshape(n, -1).T.numpy(), np.asarray(b, dtype=float).reshape(-1), oshape


def _flat(module: nn.Module) -> list:
    """The modules of nested Sequentials, in order."""
    if isinstance(module, nn.Sequential):
        return [c for m in module for c in _flat(m)]
    return [module]


def _layers(module: nn.Sequential, input_shape: tuple | None = None, top: bool = True):
    """The network as a list of ("lin", W, b), ("act", module, input shape) and, where it
    branches (a module with ``branches``: lipbench's Sum, with ``weights``, or Concat),
    ("sum", weights, [branch lists]) or ("cat", None, [branch lists])."""
    out = []
    shape = tuple(input_shape) if input_shape is not None else None
    for m in _flat(module):
        if isinstance(m, nn.Linear):
            b = np.zeros(m.out_features) if m.bias is None else m.bias.detach().double().numpy()
            out.append(("lin", m.weight.detach().double().numpy(), b))
            shape = (m.out_features,)
        elif isinstance(m, nn.Conv2d):
            if shape is None or len(shape) != 3:
                raise TypeError("a conv needs input_shape=(C, H, W)")
            W, b, shape = _unrolled(m, shape)
            out.append(("lin", W, b))
        elif isinstance(m, (nn.Flatten, nn.Unflatten)) or type(m).__name__ == "Reshape":
            shape = tuple(m(torch.zeros(1, *shape)).shape[1:]) if shape is not None else None
        elif type(m).__name__ in MOVES:
            if shape is None:
                raise TypeError(f"a {type(m).__name__} needs input_shape")
            W, b, shape = _probed(m, shape)
            out.append(("lin", W, b))
        elif type(m).__name__ in ("Sum", "Concat"):
            if shape is None:
                raise TypeError(f"a {type(m).__name__} needs input_shape")
            branches = [_layers(b, shape, top=False) for b in m.branches]
            out.append(("sum", tuple(m.weights), branches) if type(m).__name__ == "Sum" else ("cat", None, branches))
            with torch.no_grad():
                shape = tuple(m(torch.zeros(1, *shape, dtype=torch.float64)).shape[1:])
        else:
            out.append(("act", m, shape))   # an activation's entry holds its input shape
            if type(m).__name__ == "CReLU" and shape is not None:
                shape = (2 * shape[0], *shape[1:])
            elif type(m).__name__ in MAXPOOLS:
                shape = tuple(m(torch.zeros(1, *shape)).shape[1:])
    if top:
        assert out and out[0][0] != "act" and out[-1][0] != "act"
    return out


def _interior(A: np.ndarray, c: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> bool:
    """Is {x in [lo, hi] : A x + c > 0 componentwise} non-empty with interior?"""
    n = A.shape[1]
    if A.shape[0] == 0:
        return True
    # variables (x, t): maximise t subject to -(A x) + t <= c, t <= 1 (rows L1-normalised)
    nrm = np.abs(A).sum(1) + np.abs(c) + 1e-300
    A, c = A / nrm[:, None], c / nrm
    A_ub = np.hstack([-A, np.ones((A.shape[0], 1))])
    res = linprog(np.r_[np.zeros(n), -1.0], A_ub=A_ub, b_ub=c,
                  bounds=[(l, h) for l, h in zip(lo, hi)] + [(None, 1.0)], method="highs")
    return res.status == 0 and -res.fun > 1e-9


def regions(module: nn.Sequential, lo, hi, input_shape: tuple | None = None):
    """Yield the Jacobian (as a matrix) of every full-dimensional linear region in the box."""
    layers = _layers(module, input_shape)
    n = int(np.prod(input_shape)) if input_shape is not None else _first_width(layers)
    lo, hi = np.broadcast_to(np.asarray(lo, float), n), np.broadcast_to(np.asarray(hi, float), n)

    def run(layers, M: np.ndarray, v: np.ndarray, A: np.ndarray, c: np.ndarray):
        # the current vector is the affine map x -> M x + v on the region {A x + c > 0};
        # yields (M, v, A, c) at the end of ``layers`` for every region it splits into
        if not layers:
            yield M, v, A, c
            return
        (kind, W, b), rest = layers[0], layers[1:]
        if kind == "lin":
            yield from run(rest, W @ M, W @ v + b, A, c)
            return
        if kind in ("sum", "cat"):   # each branch from (M, v), the later ones inside the earlier ones' regions
            weights, branches = W, b

            def combine(k, A, c, parts):
                if k == len(branches):
                    if kind == "sum":
                        Ms = sum(w * P for w, (P, _) in zip(weights, parts))
                        vs = sum(w * q for w, (_, q) in zip(weights, parts))
                    else:
                        Ms, vs = np.vstack([P for P, _ in parts]), np.concatenate([q for _, q in parts])
                    yield from run(rest, Ms, vs, A, c)
                    return
                for Mb, vb, Ab, cb in run(branches[k], M, v, A, c):
                    yield from combine(k + 1, Ab, cb, parts + [(Mb, vb)])
            yield from combine(0, A, c, [])
            return
        Ad, jac = _act_rules(W, b if b is not None else (M.shape[0],))   # (module, its input shape)
        Z, z = Ad @ M, Ad @ v
        k = Z.shape[0]

        def signs(j, A, c, s):
            if j == k:
                yield s, A, c
                return
            if np.abs(Z[j]).sum() + abs(z[j]) <= 1e-14:   # identically 0 here: either state, same J
                yield from signs(j + 1, A, c, s + [-1.0])
                return
            for sg in (1.0, -1.0):
                A2, c2 = np.vstack([A, sg * Z[j]]), np.r_[c, sg * z[j]]
                if _interior(A2, c2, lo, hi):
                    yield from signs(j + 1, A2, c2, s + [sg])

        for s, A2, c2 in signs(0, A, c, []):
            J = jac(np.array(s))
            yield from run(rest, J @ M, J @ v, A2, c2)

    for M, *_ in run(layers, np.eye(n), np.zeros(n), np.zeros((0, n)), np.zeros(0)):
        yield M


def _first_width(layers: list) -> int:
    """The input width of a network that starts with a Linear (or branches into one)."""
    kind, W, b = layers[0]
    if kind == "lin":
        return W.shape[1]
    if kind in ("sum", "cat"):
        return _first_width(next(br for br in b if br))
    raise TypeError("give input_shape: the network does not start with a Linear")


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


def exact_lipschitz(module: nn.Sequential, p: float, target=None, lo=-100.0, hi=100.0,
                    input_shape: tuple | None = None) -> float:
    """The exact Lipschitz constant over the box [lo, hi]^n (global when the box holds
    every vertex of the arrangement, which a box of +-100 does for the tiny test nets).
    ``input_shape`` (C, H, W) for a network that starts with a conv."""
    return max(norm(J, p, target) for J in regions(module, lo, hi, input_shape))
