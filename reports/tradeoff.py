"""The trade-off between clean and certified accuracy: one point per network, each training
method's Pareto front, the trivial bound's tightness beside each point, and the sentence
that answers whether the paper's method reaches a baseline at equal clean accuracy.

Pure functions over frames (:func:`bench.tidy.networks_frame`, :func:`bench.tidy.frame`
and the store's certified rows) and one figure; the table page is drawn by
:mod:`reports.pdf`.  Certified accuracy is read per (network, eps) twice: from the sound
class-pair trivial bound, and from the verifier whose bounds certify the most (the
tightest sound bound that answered within its budget), which is named.
"""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
from matplotlib.lines import Line2D

from .layout import save, wrap
from .style import A4L, SMALL, TITLE, fmt_eps, fmt_pct

#: the paper's method: the trainer whose settings the sentence searches
METHOD = "tb-penalty"
#: trainers that are references, not baselines to reach (no Lipschitz control, no training)
REFERENCES = ("standard", "init", "construct", "external")


def table(nf, df, certified, p: str = "2"):
    """One row per (network, eps) at norm ``p``: method, setting, seed, clean_acc,
    train_s, tb (the trivial bound of the whole output), lower (the best sound lower
    bound), tb_over_lower, cert_trivial (certified accuracy from the trivial bound),
    cert_best and best_by (the most any verifier's bounds certify, and which)."""
    import pandas as pd
    c = pd.DataFrame(certified)
    if not len(c) or not len(nf):
        return pd.DataFrame()
    c = c[c.p == p]
    g = df[(df.p == p) & (df.target == "full") & (df.domain == "global")] if len(df) else df
    tb = g[(g.verifier == "trivial") & (g.status == "ok")].groupby("network").value.min() if len(g) else {}
    low = g.groupby("network").best_lower.max() if len(g) else {}
    by_id = nf.drop_duplicates("network").set_index("network")
    rows = []
    for (net, eps), h in c.groupby(["network", "eps"]):
        if net not in by_id.index:
            continue
        n = by_id.loc[net]
        triv = h[h.verifier == "trivial"].certified_acc
        best = h.loc[h.certified_acc.idxmax()]
        t, lo = tb.get(net), low.get(net)
        ok = t is not None and lo is not None and lo == lo and lo > 0
        rows.append({"network": net, "method": n.method, "trainer": n.trainer, "setting": n.setting,
                     "seed": n.seed, "clean_acc": n.clean_acc, "train_s": n.train_s, "eps": float(eps),
                     "tb": t, "lower": lo if ok else None, "tb_over_lower": t / lo if ok else None,
                     "cert_trivial": float(triv.max()) if len(triv) else None,
                     "cert_best": float(best.certified_acc), "best_by": best.verifier})
    return pd.DataFrame(rows)


def settings(t):
    """The mean over seeds of each (method, setting, eps); ``best_by`` the verifier that
    certified the most on most of its networks, ``seeds`` how many networks."""
    if not len(t):
        return t
    agg = t.groupby(["method", "trainer", "setting", "eps"], as_index=False, dropna=False).agg(
        seeds=("network", "nunique"), clean_acc=("clean_acc", "mean"), cert_trivial=("cert_trivial", "mean"),
        cert_best=("cert_best", "mean"), tb_over_lower=("tb_over_lower", "mean"),
        tb_over_lower_max=("tb_over_lower", "max"), train_s=("train_s", "mean"),
        best_by=("best_by", lambda s: s.value_counts().index[0]))
    return agg.sort_values(["eps", "method", "setting"]).reset_index(drop=True)


def front(points):
    """The Pareto front of (clean, certified) points, both maximised: the points no other
    is at least as good in both and better in one, by clean accuracy ascending."""
    pts = sorted(set(points), key=lambda q: (-q[0], -q[1]))
    out, best = [], -math.inf
    for x, y in pts:
        if y > best:
            out.append((x, y))
            best = y
    return sorted(out)


def sentence(s, eps: float) -> str | None:
    """The answer at one radius, from the per-setting means: the paper's method's best
    setting (the most certified), its clean accuracy and its trivial bound's tightness,
    and for each baseline the most it certifies at that clean accuracy or above (its
    settings at least as accurate): reached when that is no more than the setting's own.
    None where the store has no tb-penalty setting or no baseline at this radius."""
    s = s[s.eps == eps]
    ours = s[s.trainer == METHOD]
    base = s[~s.trainer.isin((METHOD,) + REFERENCES)]
    if not len(ours) or not len(base):
        return None
    b = ours.sort_values(["cert_best", "clean_acc"], ascending=False).iloc[0]
    where = f"{b.method}" + (f", {b.setting}" if b.setting else "")
    tight = ("its trivial bound is " + f"{b.tb_over_lower:.3g}x the best sound lower bound"
             if b.tb_over_lower == b.tb_over_lower and b.tb_over_lower is not None else
             "its trivial bound has no lower bound to compare with")
    parts, reached, not_reached, none_as_accurate = [], [], [], []
    for m, g in base.groupby("method"):
        acc = g[g.clean_acc >= b.clean_acc]
        if not len(acc):
            none_as_accurate.append(f"{m} (at most {fmt_pct(g.clean_acc.max())} clean)")
            continue
        top = acc.loc[acc.cert_best.idxmax()]
        label = f"{m}" + (f" {top.setting}" if top.setting else "")
        item = f"{label}: {fmt_pct(top.cert_best)} at {fmt_pct(top.clean_acc)} clean"
        (reached if top.cert_best <= b.cert_best else not_reached).append(item)
    parts.append(f"At l2 radius {fmt_eps(eps)}, at equal training budget, the best {METHOD} setting ({where}) "
                 f"certifies {fmt_pct(b.cert_best)} of the test images at {fmt_pct(b.clean_acc)} clean accuracy "
                 f"(by {b.best_by}; mean of {b.seeds} seed(s)); {tight}")
    if reached:
        parts.append("it reaches " + "; ".join(reached) + " (the most each certifies at that clean accuracy or above)")
    if not_reached:
        parts.append("it does not reach " + "; ".join(not_reached))
    if none_as_accurate:
        parts.append("no setting of " + ", ".join(none_as_accurate) + " is as accurate")
    top = base.loc[base.cert_best.idxmax()]
    parts.append(f"the most any baseline setting certifies, at any clean accuracy, is {fmt_pct(top.cert_best)} "
                 f"({top.method}" + (f" {top.setting}" if top.setting else "") + f", at {fmt_pct(top.clean_acc)} "
                 f"clean): {'at most' if top.cert_best <= b.cert_best else 'more than'} the best {METHOD} setting's")
    return ". ".join(p[0].upper() + p[1:] for p in parts) + "."


def _colours(methods):
    cmap = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    marks = "osD^v<>ph*"
    return {m: (cmap(i % cmap.N), marks[i % len(marks)]) for i, m in enumerate(methods)}


def page(pdf, t, s) -> bool:
    """Clean against certified accuracy, one panel per radius (at most three), one point
    per network (the best verifier's certificate), each method's Pareto front dashed,
    TB / lower printed beside each point; the answer under the panels.  False (and no
    page) when there is nothing to plot."""
    if not len(t):
        return False
    radii = sorted(t.eps.unique())[:3]
    methods = sorted(t.method.unique(), key=lambda m: (not m.startswith(METHOD), m))
    # the view: from a little left of the least accurate network that certifies anything;
    # networks further left (a collapsed training) certify nothing and are counted in the text
    some = t[t.cert_best > 0]
    xlo = max(0.0, 100 * float(some.clean_acc.min()) - 3) if len(some) else 0.0
    left = t[(100 * t.clean_acc < xlo)].drop_duplicates("network")
    col = _colours(methods)
    fig, axes = plt.subplots(1, len(radii), figsize=A4L, squeeze=False)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.86, bottom=0.36, wspace=0.22)
    fig.suptitle("Clean against certified accuracy: one point per network, each method's Pareto front",
                 fontsize=TITLE)
    for ax, e in zip(axes.flat, radii):
        g = t[t.eps == e]
        for m in methods:
            h = g[g.method == m]
            if not len(h):
                continue
            c, mk = col[m]
            x, y = 100 * h.clean_acc.astype(float), 100 * h.cert_best.astype(float)
            ax.scatter(x, y, color=c, marker=mk, s=18, zorder=3)
            fx, fy = zip(*front(zip(x, y)))
            ax.step(fx, fy, where="post", color=c, ls="--", lw=0.9)
            for xi, yi, r in zip(x, y, h.tb_over_lower):
                if r == r and r is not None:
                    ax.annotate(f"{r:.2g}", (xi, yi), xytext=(2, 2), textcoords="offset points", fontsize=SMALL,
                                color=c)
        ax.set_xlim(left=xlo)
        ax.set_title(f"certified at l2 radius {fmt_eps(e)}")
        ax.set_xlabel("clean accuracy (%)")
        ax.set_ylabel("certified accuracy (%)")
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=col[m][0], marker=col[m][1], ls="--", label=m) for m in methods]
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.22), ncol=min(4, len(handles)),
               fontsize=SMALL, frameon=False)
    words = [w for w in (sentence(s, e) for e in radii) if w]
    off = (f"Left of the view: {len(left)} network(s) below {xlo:.0f}% clean that certify nothing ("
           + ", ".join(f"{m} {n}" for m, n in left.method.value_counts().sort_index().items()) + "). "
           if len(left) else "")
    text = (off + "Each point is certified by the verifier whose sound bounds certify the most (table overleaf); the "
            "number beside it is its trivial bound over the best sound lower bound (1 = tight); dashed: each method's "
            "Pareto front. "
            + " ".join(words))
    fig.text(0.07, 0.19, "\n".join(wrap(text, 190)), fontsize=SMALL, va="top")
    save(pdf, fig)
    return True


__all__ = ["table", "settings", "front", "sentence", "page"]
