"""What makes the trivial bound tight at p = inf for trained networks? (docs/pinf.md)

    python studies/pinf_study.py --out pinf.csv                 # the exact suite's data, every variant
    python studies/pinf_study.py --out pinf.csv --only lam      # one group (see VARIANTS)
    python studies/pinf_study.py --out digits.csv --digits      # digits: TB against M and `lower`

Trains ``tb-penalty`` (the project's trainer, ``p: inf``) on the ``exact`` suite's
synthetic data (800 points, 4-d, 3 classes, 16-16 unless the variant says otherwise)
and bounds each network's global l_inf -> l_inf constant with ``bab`` (then ``mip``
when ``bab`` does not close in its budget).  Beside accuracy, TB_inf and the exact
constant it records the decomposition of docs/pinf.md,

    TB = prod ||W_k||_inf  >=  M = || |W_L| A ... A |W_0| ||_inf  >=  P = max over patterns  >=  exact,

(A the activation's Jacobian majorant: |D| = I for Abs, D in {0, 1} for ReLU, a pair
permutation for MaxMin): TB / M is the row-sum *chaining* gap, M / P the *sign
cancellation* gap (no choice of activation Jacobians makes every path from an input to
the maximising output agree in sign), P / exact the *reachability* gap (the aligning
choice is no input's pattern); the functions are in ``studies/pinf.py``.  P is exact by
enumeration of the first hidden layer's patterns (closed form for the second); it needs
2 hidden layers, at most 12 inputs and, for Abs / ReLU, a first hidden layer of at most
16 units (NaN otherwise).  The per-layer sign
statistic is the coherence coh(W) = ||W||_{inf->1} / sum |W_ab| in (0, 1]: the share of
|W|'s mass that the best rank-one sign pattern sigma tau^T agrees with is
(1 + coh) / 2, and coh = 1 exactly when sign(W) is rank one (no cancellation possible
through that layer).  Exact by enumeration over the smaller side up to 20; above it a
greedy local search from 64 starts (a lower bound; column ``coh_exact``).

SinSplit has no piecewise-linear form, so ``bab`` and ``mip`` refuse it; its rows carry
the ``lower`` verifier's sound lower bound instead (TB / lower bounds TB / exact from
above) and ``exact_kind`` says so.

Run with ``nice -n 19`` on a shared machine; the default grid took 20 minutes on 2
shared cores (docs/pinf.md has the tables, the commands and their timings).
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from bench import data, verify  # noqa: E402
from bench.api import Budget  # noqa: E402
from bench.registry import get_trainer, load_plugins  # noqa: E402
from studies.pinf import coherence, linears, majorant, pattern_bound  # noqa: E402

INF = math.inf
#: the exact suite's tb-penalty configuration
BASE = {"epochs": 40, "lr": 0.005, "lam": 0.05, "p": "inf"}
ARCH = {"hidden": [16, 16], "activation": "abs", "bias": False}


def v(group, name, arch=None, trainer="tb-penalty", **params):
    return {"group": group, "name": name, "trainer": trainer, "arch": {**ARCH, **(arch or {})},
            "params": params if trainer != "tb-penalty" else {**BASE, **params}}


#: every variant of the study: (group, name, arch changes, trainer params changes)
VARIANTS = [
    v("base", "abs nobias lam0.05 (suite)"),
    v("lam", "lam 0", lam=0.0),
    v("lam", "lam 0.01", lam=0.01),
    v("lam", "lam 0.2", lam=0.2),
    v("lam", "lam 1", lam=1.0),
    v("lam", "lam 0.1", lam=0.1),
    v("penalty", "penalty tb", penalty="tb"),
    v("penalty", "hinge target 2", penalty="hinge", target=2.0, lam=1.0),
    v("penalty", "constant schedule", schedule="constant"),
    v("penalty", "margin eps 0.05", margin_eps=0.05),
    v("longer", "200 epochs", epochs=200),
    v("longer", "200 epochs lam 1", epochs=200, lam=1.0),
    v("width", "width 8", arch={"hidden": [8, 8]}),
    v("width", "width 32", arch={"hidden": [32, 32]}),
    v("bias", "abs bias", arch={"bias": True}),
    v("bias", "abs bias lam 1", arch={"bias": True}, lam=1.0),
    v("act", "maxmin nobias", arch={"activation": "maxmin"}),
    v("act", "maxmin nobias lam 1", arch={"activation": "maxmin"}, lam=1.0),
    v("act", "relu bias", arch={"activation": "relu", "bias": True}),
    v("act", "sinsplit nobias", arch={"activation": "sinsplit", "hidden": [8, 8]}),
    v("standard", "standard abs nobias", trainer="standard", epochs=40, lr=0.005),
    v("tb-form", "penalty tb lam 0.02", penalty="tb", lam=0.02),
    v("tb-form", "penalty tb lam 0.2", penalty="tb", lam=0.2),
    v("tb-form", "penalty tb abs bias", arch={"bias": True}, penalty="tb"),
    v("tb-form", "penalty tb width 32", arch={"hidden": [32, 32]}, penalty="tb"),
    v("tb-form", "penalty tb maxmin", arch={"activation": "maxmin"}, penalty="tb"),
    v("tb-form", "nonneg abs bias penalty tb", arch={"bias": True}, penalty="tb", sign="nonneg"),
    v("tb-form", "nonneg abs bias width 32 penalty tb", arch={"bias": True, "hidden": [32, 32]}, penalty="tb",
      sign="nonneg"),
    v("nonneg", "nonneg abs nobias", sign="nonneg"),
    v("nonneg", "nonneg abs bias", arch={"bias": True}, sign="nonneg"),
    v("nonneg", "nonneg abs bias lam 0", arch={"bias": True}, sign="nonneg", lam=0.0),
    v("nonneg", "nonneg abs bias lam 0.2", arch={"bias": True}, sign="nonneg", lam=0.2),
    v("nonneg", "nonneg abs bias width 32", arch={"bias": True, "hidden": [32, 32]}, sign="nonneg"),
    v("nonneg", "nonneg relu bias", arch={"activation": "relu", "bias": True}, sign="nonneg"),
    v("nonneg", "nonneg maxmin bias", arch={"activation": "maxmin", "bias": True}, sign="nonneg"),
]

DIGITS_ARCH = {"hidden": [32, 32], "activation": "abs", "bias": False}
DIGITS_BASE = {"epochs": 40, "lr": 0.002, "lam": 0.05, "p": "inf"}   # the digits suite's
DIGITS_VARIANTS = [
    {"group": "digits", "name": "standard relu bias", "trainer": "standard",
     "arch": {**DIGITS_ARCH, "activation": "relu", "bias": True}, "params": {"epochs": 40, "lr": 0.002}},
    {"group": "digits", "name": "abs nobias lam0.05 (suite)", "trainer": "tb-penalty", "arch": DIGITS_ARCH,
     "params": DIGITS_BASE},
    {"group": "digits", "name": "abs nobias lam 1", "trainer": "tb-penalty", "arch": DIGITS_ARCH,
     "params": {**DIGITS_BASE, "lam": 1.0}},
    {"group": "digits", "name": "nonneg abs bias", "trainer": "tb-penalty", "arch": {**DIGITS_ARCH, "bias": True},
     "params": {**DIGITS_BASE, "sign": "nonneg"}},
    {"group": "digits", "name": "nonneg abs bias lam 0", "trainer": "tb-penalty",
     "arch": {**DIGITS_ARCH, "bias": True}, "params": {**DIGITS_BASE, "sign": "nonneg", "lam": 0.0}},
    {"group": "digits", "name": "nonneg relu bias", "trainer": "tb-penalty",
     "arch": {**DIGITS_ARCH, "activation": "relu", "bias": True}, "params": {**DIGITS_BASE, "sign": "nonneg"}},
]


# ---- one variant ------------------------------------------------------------------------

def exact_constant(net, timeout_bab: float, timeout_mip: float, lower_params: dict | None = None):
    """(value, kind, verifier, lower, seconds): bab, then mip when bab does not close,
    then ``lower`` when neither applies or closes."""
    t0 = time.perf_counter()
    best_upper, best_lower = math.inf, 0.0
    for name, to in (("bab", timeout_bab), ("mip", timeout_mip)):
        if to <= 0:
            continue
        b = verify(net, name, p=INF, timeout=to)
        if b.status == "unsupported":
            break
        if b.status == "ok" and b.kind == "exact":   # a killed job keeps the verifier's kind, without a value
            return b.value, "exact", name, b.value, time.perf_counter() - t0
        if b.value is not None:
            best_upper = min(best_upper, b.value)
        best_lower = max(best_lower, float((b.stats or {}).get("lower") or 0.0))
    lb = verify(net, "lower", p=INF, timeout=max(timeout_bab, 60), **(lower_params or {}))
    if lb.value is not None:
        best_lower = max(best_lower, lb.value)
    kind = "bracket" if math.isfinite(best_upper) else "lower-only"
    return (best_upper if math.isfinite(best_upper) else float("nan")), kind, "lower", best_lower, \
        time.perf_counter() - t0


#: the exact suite's other l_inf queries (``--queries all``): a class pair and a box
EXTRA = {"pair": {"target": (0, 1)}, "box": {"domain": {"center": [0.0, 0.0, 0.0, 0.0], "radius": 0.5}}}


def extra_queries(net, timeout: float) -> dict:
    """TB and the exact value (bab, then mip) for the class pair (0, 1) and the box of the exact suite."""
    out = {}
    for name, q in EXTRA.items():
        t = verify(net, "trivial", p=INF, **q).value
        b = verify(net, "bab", p=INF, timeout=timeout, **q)
        ok = b.status == "ok" and b.kind == "exact"
        if not ok:   # mip closes the nonnegative network's class pair where bab does not
            b = verify(net, "mip", p=INF, timeout=90, **q)
            ok = b.status == "ok" and b.kind == "exact"
        out.update({f"tb_{name}": t, f"exact_{name}": b.value if ok else float("nan"),
                    f"tb_over_exact_{name}": t / b.value if ok and b.value else float("nan")})
    return out


def run_variant(var: dict, ds, seed: int, args) -> dict:
    load_plugins()
    trainer = get_trainer(var["trainer"])(**var["params"])
    t0 = time.perf_counter()
    net, metrics = trainer.train(ds, var["arch"], seed, Budget(None))
    train_s = time.perf_counter() - t0
    Ws, acts = linears(net)
    tb = verify(net, "trivial", p=INF).value
    M = majorant(Ws, acts)
    P = pattern_bound(Ws, acts)
    value, kind, who, lower, ver_s = exact_constant(net, args.bab_timeout, args.mip_timeout)
    ref = value if kind == "exact" else lower        # TB / ref: the ratio, or an upper bound on it
    hidden = Ws[1:-1]
    cohs = [coherence(W) for W in Ws[:-1]]
    wmax = max(float(np.abs(W).max()) for W in Ws)
    return {
        "group": var["group"], "variant": var["name"], "seed": seed, "trainer": var["trainer"],
        "activation": var["arch"]["activation"], "bias": var["arch"].get("bias", True),
        "hidden": "-".join(map(str, var["arch"]["hidden"])),
        "params": " ".join(f"{k}={v}" for k, v in var["params"].items()),
        "acc": metrics["clean_acc"], "train_acc": metrics["train_acc"],
        "tb": tb, "M": M, "P": P, "exact": value if kind == "exact" else float("nan"), "exact_kind": kind,
        "verifier": who, "lower": lower,
        "tb_over_exact": tb / ref if ref else float("nan"),
        "tb_over_M": tb / M, "M_over_P": M / P if P == P else float("nan"),
        "P_over_exact": P / ref if (P == P and ref) else float("nan"),
        "M_over_exact": M / ref if ref else float("nan"),
        "coh_W0": cohs[0][0], "coh_hidden": min(c for c, _ in cohs[1:]) if hidden else float("nan"),
        "coh_exact": all(e for _, e in cohs),
        "neg_mass": float(sum(np.clip(-W, 0, None).sum() for W in Ws) / sum(np.abs(W).sum() for W in Ws)),
        "sparsity": float(sum((np.abs(W) < 1e-3 * wmax).sum() for W in Ws) / sum(W.size for W in Ws)),
        "train_s": round(train_s, 2), "verify_s": round(ver_s, 2),
        **(extra_queries(net, args.bab_timeout) if args.queries == "all" else {}),
    }


def linearity(var: dict, ds, seed: int) -> dict:
    """How linear the trained network is on the test data: the share of test points in
    the most common activation pattern (1.0: one affine map on all the data) and the share
    of hidden units that are the identity (pre-activation > 0) on every test point.
    Training only, no verification (``--linearity``)."""
    load_plugins()
    net, metrics = get_trainer(var["trainer"])(**var["params"]).train(ds, var["arch"], seed, Budget(None))
    x = torch.as_tensor(ds.X_test).flatten(1)
    pats = []
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Flatten):
                continue
            if not isinstance(m, nn.Linear):
                pats.append(x > 0)
            x = m(x)
    P = torch.cat(pats, 1)
    _, counts = torch.unique(P, dim=0, return_counts=True)
    return {"group": var["group"], "variant": var["name"], "seed": seed, "acc": metrics["clean_acc"],
            "majority_pattern": float(counts.max()) / len(P), "always_identity": float(P.all(0).float().mean())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="pinf_study.csv", help="CSV written row by row")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--only", nargs="+", help="groups or variant names to run (default: all)")
    ap.add_argument("--digits", action="store_true", help="the digits variants (64-d, 32-32) instead")
    ap.add_argument("--bab-timeout", type=float, default=60.0)
    ap.add_argument("--mip-timeout", type=float, default=90.0)
    ap.add_argument("--queries", choices=("full", "all"), default="full",
                    help="all: also the class pair (0, 1) and the box of the exact suite (synthetic data only)")
    ap.add_argument("--linearity", action="store_true",
                    help="train only, and print how linear each network is on the test data")
    ap.add_argument("--limit", type=int, default=None, help="at most this many variants (smoke runs)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.digits:
        ds = data.load("digits")
        variants = DIGITS_VARIANTS
        args.queries = "full"
    else:
        ds = data.load({"name": "synthetic", "n": 800, "dim": 4, "classes": 3})   # the exact suite's data
        variants = VARIANTS
    if args.only:
        variants = [x for x in variants if x["group"] in args.only or x["name"] in args.only]
    variants = variants[:args.limit]
    t0 = time.perf_counter()
    if args.linearity:
        for var in variants:
            for seed in args.seeds:
                r = linearity(var, ds, seed)
                print(f"{r['variant']:<32} s{seed} acc {r['acc']:.3f} majority pattern {r['majority_pattern']:.3f} "
                      f"always-identity units {r['always_identity']:.3f}", flush=True)
        return
    writer = None
    with open(args.out, "w", newline="") as fh:
        for var in variants:
            for seed in args.seeds:
                row = run_variant(var, ds, seed, args)
                if writer is None:
                    writer = csv.DictWriter(fh, fieldnames=list(row))
                    writer.writeheader()
                writer.writerow(row)
                fh.flush()
                print(f"{row['variant']:<32} s{seed} acc {row['acc']:.3f} TB {row['tb']:8.3f} "
                      f"{row['exact_kind']:>6} {row['exact'] if row['exact'] == row['exact'] else row['lower']:8.3f} "
                      f"TB/ex {row['tb_over_exact']:.3f} = TB/M {row['tb_over_M']:.3f} x M/ex "
                      f"{row['M_over_exact']:.3f} (M/P {row['M_over_P']:.3f} P/ex {row['P_over_exact']:.3f}) "
                      f"coh {row['coh_W0']:.2f}/{row['coh_hidden']:.2f} [{row['train_s']:.0f}+{row['verify_s']:.0f}s]",
                      flush=True)
    print(f"total {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
