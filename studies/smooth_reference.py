"""Near-exact references for smooth and CReLU networks at p = 2 (``docs/smooth.md``).

Is the trivial bound (TB) of a sinusoidal or CReLU network loose, or is the sampled lower
bound weak?  This script brackets the true global constant L on small instances:

- CReLU (piecewise linear): ``bab`` gives the exact constant.
- Sinusoidal layers (Linear -> SinCos -> Linear -> ... -> Linear, biases allowed): the
  *phase branch and bound* below, :func:`torus_bound`.

    python studies/smooth_reference.py                       # small set, CSV on stdout
    python studies/smooth_reference.py --set digits --out d.csv   # the paper's 128-128 nets on digits

Each network is trained here (``tb-penalty``, p = 2, the project's trainer) and bounded
by ``trivial``, ``lower`` as version 2 did (``ascent: normalized, aligned: 0``), ``lower``
with its defaults, and the reference.

The phase branch and bound (what is sound and why)
--------------------------------------------------
Write f = g(W0 x + b0) where g starts with SinCos.  g is 2 pi-periodic in every
coordinate of its input z (the first layer's phases), and J_f(x) = J_g(z) W0, so

    L = sup_x ||J_f(x)||_2 = sup_{z in W0 R^n + b0} G(z) <= max_{z in [0, 2 pi]^m1} G(z),
    G(z) = ||J_g(z) W0||_2,

with equality when W0 has full row rank (m1 <= n: every phase vector is reached by
x = W0^+ (z - b0)).  The maximum over the cube is bounded by branch and bound over boxes
B = c + [-r, r]^m1 with, for every z in B,

    G(z) <= max over the 2^m1 vertices w of B of ||J(c) + dJ(c)[w - c]||  +  M2 r^2 / 2

(J = J_g W0, dJ its derivative in z by forward-mode autograd): the first term because
the norm of an affine matrix function is convex, so its maximum over a box is at a
vertex; the second is the Taylor remainder, ||J(z) - J(c) - dJ(c)[z - c]|| <= M2
||z - c||_inf^2 / 2 with M2 a bound on ||d^2 J / dt^2|| along any unit l_inf direction:
with layers J = W_L D(z_L) W_{L-1} ... D(z_1) W_0, D(z) the SinCos Jacobian (columns
(cos z_i, -sin z_i): an isometry), ||D'(z)[u]|| <= ||u||_inf, ||D''|| likewise, and the
phases' speeds b_1 = 1, b_{k+1} = ||W_k||_inf b_k and accelerations c_1 = 0,
c_{k+1} = ||W_k||_inf (b_k^2 + c_k) (l_inf, since sin and cos are 1-Lipschitz with
second derivative <= 1), the product rule gives
M2 = prod_k ||W_k||_2 * ((sum_k b_k)^2 + sum_k c_k).  Boxes whose bound is at most the
best centre value are dropped; the rest are bisected in every coordinate.  Float64
throughout; the spectral norms of the layers and M2 are inflated by 1e-6 and the
returned upper bound by 1e-9, relative, which covers the rounding of float64 SVDs and
products of these sizes (~1e-14) with a wide margin.  This argument is exact math plus
that stated rounding allowance; it is not a machine-checked proof.

The lower end of the bracket is certified as ``lower``'s is: when W0 has full row rank
m1 <= n, x = W0^+ (c - b0) realises the best centre's phases and a float64 difference
quotient at x (:func:`bench.witness.pairs`) is the reported lower bound.  When m1 > n the
cube is a relaxation (sound, and for generic weights the sup equals it: the phases of
x -> W0 x are dense in the torus, but reaching a given phase vector may need huge x), and
only the centre value is given, marked as not witnessed.
"""
from __future__ import annotations

import argparse
import copy
import csv
import itertools
import math
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import bench  # noqa: E402
from bench.activations import referenced  # noqa: E402
from bench.api import Query  # noqa: E402
from bench.network import Activation, Affine, walk  # noqa: E402
from bench.witness import pairs  # noqa: E402

ROUND_REL = 1e-9     # relative allowance on the returned upper bound (float64 rounding)
NORM_REL = 1e-6      # relative inflation of layer norms and M2


def sinusoidal_layers(net, input_shape=None):
    """The affine maps (W_k, b_k) of a network Linear -> SinCos -> Linear -> ... -> Linear,
    float64; raises ValueError with the reason for any other network."""
    walked = walk(net, input_shape)
    layers = walked.layers
    if not layers or not isinstance(layers[0], Affine) or not isinstance(layers[-1], Affine):
        raise ValueError("needs a network that starts and ends with an affine layer")
    maps = []
    for k, layer in enumerate(layers):
        want_affine = k % 2 == 0
        if want_affine:
            if not isinstance(layer, Affine):
                raise ValueError(f"layer {k} ({type(layer).__name__}): expected an affine layer")
            W = torch.tensor(layer.matrix(), dtype=torch.float64)
            b = layer.bias()
            maps.append((W, torch.zeros(W.shape[0], dtype=torch.float64) if b is None
                         else torch.tensor(b, dtype=torch.float64).reshape(-1)))
        elif not (isinstance(layer, Activation) and layer.name == "sincos"):
            raise ValueError(f"layer {k} ({getattr(layer, 'name', type(layer).__name__)}): only SinCos "
                             f"activations between affine layers are covered")
    if len(maps) < 2:
        raise ValueError("needs at least one SinCos layer")
    return maps, walked


def _jac(maps, rows):
    """J(z) = rows D(z_L) W_{L-1} ... D(z_1) W_0 for one phase vector z (m1,): (m, n)."""
    W0 = maps[0][0]

    def J(z):
        M = torch.cat([torch.cos(z)[:, None] * W0, -torch.sin(z)[:, None] * W0])   # D(z_1) W0
        for W, b in maps[1:-1]:
            h = torch.cat([torch.sin(z), torch.cos(z)])
            z = W @ h + b
            M = W @ M
            M = torch.cat([torch.cos(z)[:, None] * M, -torch.sin(z)[:, None] * M])
        return rows @ M
    return J


def second_derivative_bound(maps, rows) -> float:
    """M2 (module docstring): a bound on ||d^2 J / dt^2||_2 along any unit l_inf direction."""
    norms = [float(torch.linalg.matrix_norm(W, ord=2)) for W, _ in maps[:-1]] + [float(torch.linalg.matrix_norm(rows, ord=2))]
    b, c = [1.0], [0.0]
    for W, _ in maps[1:-1]:
        inf = float(W.abs().sum(dim=1).max())
        b.append(inf * b[-1])
        c.append(inf * (b[-2] ** 2 + c[-1]))
    return math.prod(norms) * (sum(b) ** 2 + sum(c)) * (1 + NORM_REL)


def torus_bound(net, p: float = 2.0, target=None, input_shape=None, rtol: float = 1e-3, max_boxes: int = 2_000_000,
                time_s: float = 60.0, batch: int = 4096) -> dict:
    """Branch and bound over the first layer's phases (module docstring).  Returns a dict:
    ``upper`` (sound), ``center_best`` (the best G(c) found: a value of the relaxation),
    ``lower`` (a witnessed difference quotient at x = W0^+ (c - b0), only when W0 has full
    row rank m1 <= n, else None), ``closed`` (upper <= center_best (1 + rtol)), ``boxes``,
    ``levels``, ``seconds``, ``m1``."""
    if p != 2:
        raise ValueError("the phase bound is for p = 2")
    t0 = time.perf_counter()
    maps, walked = sinusoidal_layers(net, input_shape)
    WL = maps[-1][0]
    rows = WL if target is None else (WL[target[0]] - WL[target[1]])[None, :]
    J = _jac(maps, rows)
    dJ = torch.func.vmap(torch.func.jacfwd(J))      # (B, m, n, m1)
    Jb = torch.func.vmap(J)
    m1 = maps[0][0].shape[0]
    M2 = second_derivative_bound(maps, rows)
    S = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=m1)), dtype=torch.float64)   # (2^m1, m1)
    r = math.pi * (1 + 1e-6)                        # one box over a full period (G is 2 pi-periodic)
    C = torch.full((1, m1), math.pi, dtype=torch.float64)
    best_v, best_c = -1.0, None
    upper, boxes, levels = math.inf, 0, 0
    while True:
        ubs, keep_c = [], []
        for s in range(0, len(C), batch):
            c = C[s:s + batch]
            D = dJ(c)                                                # (B, m, n, m1)
            J0 = Jb(c)                                               # (B, m, n)
            v = torch.linalg.matrix_norm(J0, ord=2)
            k = int(v.argmax())
            if float(v[k]) > best_v:
                best_v, best_c = float(v[k]), c[k].clone()
            A = J0[:, None] + r * torch.einsum("bmnk,vk->bvmn", D, S)     # vertices (B, 2^m1, m, n)
            ub = torch.linalg.matrix_norm(A, ord=2).amax(dim=1) + 0.5 * M2 * r * r
            ubs.append(ub)
            keep_c.append(c)
        boxes += len(C)
        ub = torch.cat(ubs)
        C = torch.cat(keep_c)
        live = ub > best_v * (1 + rtol)
        upper = max(best_v, float(ub.max())) * (1 + ROUND_REL)
        levels += 1
        if not bool(live.any()):
            break
        C = C[live]
        n_next = len(C) * 2 ** m1
        if boxes + n_next > max_boxes or time.perf_counter() - t0 > time_s:
            upper = max(best_v, float(ub[live].max())) * (1 + ROUND_REL)
            break
        r = r / 2
        C = (C[:, None, :] + r * S[None]).reshape(-1, m1)
    W0, b0 = maps[0]
    lower = None
    n = W0.shape[1]
    if m1 <= n and int(torch.linalg.matrix_rank(W0)) == m1:
        x = torch.linalg.pinv(W0) @ (best_c - b0)
        exact = referenced(copy.deepcopy(net)).double().eval()
        X = x.reshape(1, *walked.input_shape)
        q = Query(p=2.0, target=tuple(target) if target is not None else "full")
        dq, _, _ = pairs(exact, X, q, steps=(1e-4, 1e-5, 1e-6))
        lower = float(dq[0])
    return {"upper": upper, "center_best": best_v, "lower": lower,
            "closed": upper <= best_v * (1 + rtol) * (1 + 2 * ROUND_REL), "boxes": boxes, "levels": levels,
            "seconds": time.perf_counter() - t0, "m1": m1, "M2": M2}


def phase_ascent(net, input_shape=None, starts: int = 64, steps: int = 300, lr: float = 0.05, seed: int = 0) -> float:
    """Adam ascent of G over free first-layer phases z (the relaxation above), from random
    phases: the best G(z) found.  Not a bound of either kind by itself: it is a value of
    the relaxation (so at most its maximum, hence at most TB), and a lower bound on L only
    through the density of the phases x -> W0 x + b0 in the torus, which holds for generic
    weights when m1 > n but is not witnessed by an input."""
    maps, _ = sinusoidal_layers(net, input_shape)
    J = torch.func.vmap(_jac(maps, maps[-1][0]))
    g = torch.Generator().manual_seed(seed)
    Z = (torch.rand(starts, maps[0][0].shape[0], generator=g, dtype=torch.float64) * 2 * math.pi).requires_grad_(True)
    opt = torch.optim.Adam([Z], lr=lr)
    best = 0.0
    for _ in range(steps):
        v = torch.linalg.matrix_norm(J(Z), ord=2)
        best = max(best, float(v.detach().max()))
        opt.zero_grad()
        (-v.sum()).backward()
        opt.step()
    return best


SETS = {
    # (data, hidden, activation, bias, trainer params): the paper suite's tb-penalty settings
    "small": [("syn4", [16, 16], "crelu", False), ("syn4", [16, 16], "crelu", True),
              ("syn4", [4, 16], "sincos", False), ("syn4", [4, 16], "sincos", True),
              ("syn4", [16, 16], "sincos", False)],
    "digits": [("digits", [128, 128], "crelu", False), ("digits", [128, 128], "sincos", False)],
}
DATA = {"syn4": {"name": "synthetic", "n": 800, "dim": 4, "classes": 3}, "digits": "digits"}
TRAIN = {"syn4": dict(epochs=40, lr=0.005, lam=0.05, p=2.0),            # the exact suite's
         "digits": dict(epochs=20, lr=0.002, batch_size=128, lam=0.05, penalty="log", schedule="warmup", p=2.0)}
V2 = {"ascent": "normalized", "aligned": 0.0}   # lower as version 2 searched


def train(data, hidden, act, bias, seed):
    from bench import data as datamod
    from bench.api import Budget
    from bench.registry import get_trainer, load_plugins
    load_plugins()
    ds = datamod.load(DATA[data])
    net, metrics = get_trainer("tb-penalty")(**TRAIN[data]).train(
        ds, {"hidden": hidden, "activation": act, "bias": bias}, seed, Budget(600.0, "cpu", 1))
    return net, metrics


def measure(net, act, budget_s, lower_params):
    row = {}
    row["tb"] = bench.verify(net, "trivial", p=2).value
    for name, extra in (("lower_v2", V2), ("lower", {})):
        t = time.perf_counter()
        row[name] = bench.lower_bound(net, p=2, **lower_params, **extra).value
        row[name + "_s"] = time.perf_counter() - t
    t = time.perf_counter()
    row.update(ref_lower=None, ref_upper=None, ref_kind="", phase_ascent=None)
    if act == "crelu" and walk(net).in_dim > 16:
        row["ref_kind"] = "none (bab does not close on this input size)"
    elif act == "crelu":
        b = bench.verify(net, "bab", p=2, timeout=budget_s)
        row["ref_kind"] = f"bab {b.status} {b.kind}"
        if b.value is not None:
            row["ref_upper"] = b.value
            row["ref_lower"] = b.value if b.kind == "exact" else (b.stats or {}).get("lower")
    else:
        maps, _ = sinusoidal_layers(net)
        if maps[0][0].shape[0] <= 6:
            r = torus_bound(net, time_s=budget_s)
            row.update(ref_upper=r["upper"], ref_lower=r["lower"],
                       ref_kind=f"phase bnb {'closed' if r['closed'] else 'open'} ({r['boxes']} boxes)")
        row["phase_ascent"] = phase_ascent(net)
    row["ref_s"] = time.perf_counter() - t
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", choices=sorted(SETS), default="small")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--budget", type=float, default=120.0, help="seconds for each reference (bab, phase bnb)")
    ap.add_argument("--lower", default="", help="lower's parameters, e.g. samples=3000,restarts=24,steps=80")
    ap.add_argument("--out", default="-", help="CSV file (- for stdout)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    lower_params = {k: (float(v) if "." in v else int(v)) for k, v in
                    (kv.split("=") for kv in args.lower.split(",") if kv)}
    cols = ["data", "hidden", "activation", "bias", "seed", "clean_acc", "tb", "lower_v2", "lower", "ref_lower",
            "ref_upper", "ref_kind", "phase_ascent", "tb_over_lower_v2", "tb_over_lower", "tb_over_ref_upper",
            "lower_v2_s", "lower_s", "ref_s"]
    fh = sys.stdout if args.out == "-" else open(args.out, "w", newline="")
    w = csv.DictWriter(fh, fieldnames=cols)
    w.writeheader()
    for data, hidden, act, bias in SETS[args.set]:
        for seed in args.seeds:
            net, metrics = train(data, hidden, act, bias, seed)
            row = measure(net, act, args.budget, lower_params)
            row.update(data=data, hidden="-".join(map(str, hidden)), activation=act, bias=bias, seed=seed,
                       clean_acc=metrics.get("clean_acc"), tb_over_lower_v2=row["tb"] / row["lower_v2"],
                       tb_over_lower=row["tb"] / row["lower"],
                       tb_over_ref_upper=row["tb"] / row["ref_upper"] if row["ref_upper"] else None)
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items() if k in cols})
            fh.flush()
    if fh is not sys.stdout:
        fh.close()


if __name__ == "__main__":
    main()
