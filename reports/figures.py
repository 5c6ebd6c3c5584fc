"""The report's figures, each drawn from the tidy frame (:func:`bench.tidy.frame`):
tightness against cost, the cactus plot, scaling, anytime bounds, certified accuracy.
Colours and markers per verifier come from :func:`reports.style.style`."""
from __future__ import annotations

import math
import textwrap

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

from bench.rows import TIGHT_WITHIN, mapping
from bench.store import EXTERNAL
from bench.tidy import NOT_APPLICABLE, dataset_name, varying

from .layout import save
from .style import A4L, SMALL, TEXT, TITLE, UNSOUND, order, style

RASTER_ABOVE = 2000     # scatter plots with more points are rasterised inside the PDF (small files)
ANYTIME_PANELS = 24     # at most this many anytime panels (runs that did not close first, then the slowest)

_PLAIN = FuncFormatter(lambda v, _: f"{v:g}")
_G4 = FuncFormatter(lambda v, _: f"{v:.4g}")
P_ORDER = {"1": 0, "2": 1, "inf": 2}


def _p_sorted(ps):
    return sorted(ps, key=lambda p: (P_ORDER.get(p, 9), p))


def upper_rows(df):
    """The rows the headline compares: upper and exact bounds, and the verifiers that do not
    apply, without the lower-bound verifiers (the same rule as :func:`bench.tidy.headline`)."""
    up = df[df.kind.isin(["upper", "exact"]) | df.status.isin(NOT_APPLICABLE)]
    return up[~up.verifier.isin(df[df.kind == "lower"].verifier.unique())]


_MULTS = ((1,), (1, 2, 5), (1, 1.5, 2, 3, 5, 7), (1, 1.1, 1.2, 1.3, 1.5, 1.7, 2, 2.5, 3, 4, 5, 6, 7, 8, 9))


def _log_ticks(ax, axis="y"):
    """Readable ticks on a log axis: 1-2-5 (or finer, or coarser) so that there are 4 to 9
    labels, printed as plain numbers (0.01, 2, 500) rather than powers."""
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    lo, hi = min(lo, hi), max(lo, hi)
    if not (lo > 0 and math.isfinite(lo) and math.isfinite(hi)):
        return
    ticks = []
    for mults in _MULTS:
        cand = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
                for m in mults]
        cand = [round(t, 12) for t in cand if lo <= t <= hi]
        if len(cand) > 9 and ticks:
            break
        ticks = cand
        if len(cand) >= 4:
            break
    a = ax.yaxis if axis == "y" else ax.xaxis
    a.set_major_locator(FixedLocator(ticks))
    a.set_major_formatter(_PLAIN)
    a.set_minor_locator(NullLocator())
    a.set_minor_formatter(NullFormatter())


def _legend_below(fig, handles, ncol=6, y=0.01):
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=SMALL, frameon=False,
               bbox_to_anchor=(0.5, y))


def _verifier_handles(verifiers, counts=None):
    out = []
    for v in verifiers:
        c, m = style(v)
        out.append(Line2D([], [], marker=m, color=c, ls="", ms=6,
                          label=v + (f" ({counts[v]})" if counts and v in counts else "")))
    return out


# ---- 2. tightness against cost

STRIP = ("timeout, no bound", "error / oom / licence", "no lower bound")   # the strip's rows


def _strip_row(r) -> int | None:
    if r.status == "timeout" and r.value != r.value:   # NaN: no value
        return 0
    if r.status in ("error", "oom", "license_limit"):
        return 1
    if r.tightness != r.tightness and r.value == r.value and r.status != "unsound":
        return 2
    return None


def _verifier_points(ax, strip, g, plotted, v, i, verifiers, xhi, raster, flags: set):
    """One verifier's results on a tightness panel: its points (hollow: anytime; red:
    unsound), its median (returned as (cost, tightness, name), or None) and, in the strip
    above, its results that gave no tightness.  ``flags`` collects what the legend needs."""
    c, m = style(v)
    median = None
    gv = plotted[plotted.verifier == v]
    x = gv.cost_s.clip(lower=1e-4)
    ok = (gv.status != "unsound") & ~gv.anytime
    ax.scatter(x[ok], gv.tightness[ok], marker=m, color=c, s=22, alpha=0.75, lw=0, rasterized=raster)
    at = gv.anytime & (gv.status != "unsound")
    if at.any():
        flags.add("anytime")
        ax.scatter(x[at], gv.tightness[at], marker=m, facecolors="none", edgecolors=c, s=26, lw=1,
                   rasterized=raster)
    bad = gv.status == "unsound"
    if bad.any():
        flags.add("unsound")
        ax.scatter(x[bad], gv.tightness[bad], marker=m, color=UNSOUND, edgecolors="black", s=40, lw=0.6,
                   zorder=5)
        for xx, yy in list(zip(x[bad], gv.tightness[bad]))[:6]:
            ax.annotate(f"{v} UNSOUND", (xx, yy), xytext=(4, -8), textcoords="offset points",
                        fontsize=SMALL, color=UNSOUND)
    good = gv[gv.status != "unsound"]
    if len(good):
        mx, my = max(good.cost_s.median(), 1e-4), good.tightness.median()
        median = (mx, my, v)
        if good.anytime.all():   # a median of anytime bounds only is hollow too
            ax.scatter([mx], [my], marker=m, facecolors="white", edgecolors=c, s=110, lw=2.2, zorder=6)
        else:
            ax.scatter([mx], [my], marker=m, color=c, s=110, edgecolors="black", lw=1.2, zorder=6)
        flags.add("median")
    # rows with no tightness: the strip above (one scatter per verifier, row and fill)
    if strip is not None:
        pts = {}
        for r in g[g.verifier == v].itertuples():
            row = _strip_row(r)
            if row is not None:
                cx = r.cost_s if r.cost_s == r.cost_s and r.cost_s is not None else xhi
                pts.setdefault((row, r.status == "timeout"), []).append(max(cx, 1e-4))
        for (row, hollow), xs_ in pts.items():
            strip.scatter(xs_, [row + (i - len(verifiers) / 2) * 0.06] * len(xs_), marker=m, s=24,
                          edgecolors=c, facecolors="none" if hollow else c, lw=1, rasterized=raster)
    return median


def _tightness_handles(verifiers, flags: set) -> list:
    """The tightness page's legend: the verifiers, then the marks this page used."""
    handles = _verifier_handles(verifiers)
    if "median" in flags:
        handles.append(Line2D([], [], marker="o", color="#999999", mec="black", mew=1.2, ms=9, ls="",
                              label="median of a verifier"))
        handles.append(Line2D([], [], color="black", ls="--", lw=1, label="Pareto front of the medians"))
    if "anytime" in flags:
        handles.append(Line2D([], [], marker="o", mfc="none", color="#555555", ls="",
                              label="hollow: anytime bound (kept at a timeout)"))
    if "unsound" in flags:
        handles.append(Line2D([], [], marker="o", color=UNSOUND, mec="black", ls="",
                              label="red: UNSOUND (below a sound lower bound)"))
    handles += [Line2D([], [], color="#444444", lw=0.9, label="tightness 1 (tight)"),
                Line2D([], [], color="#444444", lw=0.8, ls=":", label=f"within {100 * (TIGHT_WITHIN - 1):.0f}%")]
    return handles


def tightness_page(pdf, df):
    up = upper_rows(df)
    ps = _p_sorted(up.p.unique())
    if not ps:
        return
    ncol = min(3, len(ps))
    nrow = math.ceil(len(ps) / ncol)
    fig = plt.figure(figsize=A4L)
    fig.suptitle("Tightness against cost: every network and query (points), the median of each verifier (large), "
                 "and their Pareto front", fontsize=TITLE, y=0.975)
    has_strip = any(_strip_row(r) is not None for r in up.itertuples())
    per = 2 if has_strip else 1
    gs = fig.add_gridspec(nrow * per, ncol, height_ratios=([0.8, 3.6] if has_strip else [1]) * nrow,
                          hspace=0.1 if nrow == 1 else 0.35, wspace=0.25, left=0.11 if has_strip else 0.07,
                          right=0.98, top=0.88, bottom=0.27 if nrow == 1 else 0.2)
    fig.text(0.5, 0.935, ("Grey strip above a panel: results that gave no tightness, at their cost (a timeout at "
                          "its budget); hollow = timed out. " if has_strip else
                          "Every result that ran gave a bound. ") + "Tightness 1: the bound equals the best sound "
             "lower bound; lower is better, left is cheaper.", ha="center", fontsize=SMALL, color="#333333")
    verifiers = order(up.verifier.unique())
    flags: set = set()
    for k, p in enumerate(ps):
        g = up[up.p == p]
        row0 = (k // ncol) * per
        strip = fig.add_subplot(gs[row0, k % ncol]) if has_strip else None
        ax = fig.add_subplot(gs[row0 + per - 1, k % ncol], sharex=strip)
        plotted = g[g.tightness.notna()]
        costed = g[g.cost_s.notna() & ~g.status.isin(NOT_APPLICABLE)]
        xs = costed.cost_s.clip(lower=1e-4)
        xlo, xhi = (xs.min() / 2, xs.max() * 2) if len(xs) else (1e-3, 10)
        raster = len(g) > RASTER_ABOVE
        medians = []
        for i, v in enumerate(verifiers):
            med = _verifier_points(ax, strip, g, plotted, v, i, verifiers, xhi, raster, flags)
            if med is not None:
                medians.append(med)
        front = _pareto(medians)
        if len(front) > 1:
            ax.step([f[0] for f in front], [f[1] for f in front], where="post", color="black", lw=1, ls="--",
                    zorder=4)
        ax.axhline(1.0, color="#444444", lw=0.9, ls="-", zorder=1)
        ax.axhline(TIGHT_WITHIN, color="#444444", lw=0.8, ls=":", zorder=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ys = plotted.tightness
        ylo = min(0.95, ys.min() * 0.9) if len(ys) else 0.95
        yhi = max(1.5, ys.max() * 1.3) if len(ys) else 10
        ax.set_ylim(ylo, yhi)
        ax.set_xlim(xlo, xhi)
        _log_ticks(ax, "y")
        _log_ticks(ax, "x")
        ax.set_xlabel("verifier time, solve_s (s, log)")
        if k % ncol == 0:
            ax.set_ylabel("tightness: upper / best sound lower (log)")
        if not len(plotted):
            ax.text(0.5, 0.5, "no bound of this norm has a sound lower\nbound to compare with: tightness undefined",
                    transform=ax.transAxes, ha="center", va="center", fontsize=TEXT, color="#555555")
        nq = g.groupby(["network", "target", "domain"]).ngroups
        (strip or ax).set_title(f"p = {p}: {len(g)} results on {nq} queries", fontsize=TEXT)
        if strip is not None:
            strip.set_ylim(-0.6, len(STRIP) - 0.4)
            strip.set_yticks(range(len(STRIP)))
            strip.set_yticklabels(STRIP if k % ncol == 0 else [""] * len(STRIP), fontsize=SMALL)
            strip.tick_params(labelbottom=False, left=False)
            strip.invert_yaxis()
            strip.set_facecolor("#f2f2f2")
            strip.grid(axis="y", color="white", lw=2)
        na = g[g.status.isin(NOT_APPLICABLE)]
        if len(na):
            parts = [f"{v} {n}" for v, n in na.verifier.value_counts().reindex(order(na.verifier.unique())).items()]
            txt = "not applicable (unsupported / not installed): " + ", ".join(parts)
            ax.text(0.0, -0.13 if nrow == 1 else -0.2, "\n".join(textwrap.wrap(txt, 62)[:3]),
                    transform=ax.transAxes, va="top", fontsize=SMALL, color="#555555")
    handles = _tightness_handles(verifiers, flags)
    _legend_below(fig, handles, ncol=min(7, len(handles)))
    save(pdf, fig)


def _pareto(points):
    """The medians no other median beats in both cost and tightness, by cost."""
    front, best = [], math.inf
    for x, y, v in sorted(points):
        if y < best:
            front.append((x, y, v))
            best = y
    return front


# ---- 3. cactus

def cactus_page(pdf, df):
    up = upper_rows(df)
    up = up[~up.status.isin(NOT_APPLICABLE)]
    if not len(up):
        return
    fig, ax = plt.subplots(figsize=A4L)
    fig.subplots_adjust(left=0.08, right=0.75, top=0.9, bottom=0.1)
    queries = df.groupby(["network", "p", "target", "domain"]).ngroups
    settled = up[up.settled & up.cost_s.notna()]
    verifiers = order(up.verifier.unique())
    fig.suptitle("Cactus plot: queries settled within a time budget", fontsize=TITLE)
    xs = settled.cost_s.clip(lower=1e-4)
    xlo, xhi = (xs.min() / 2, xs.max() * 3) if len(xs) else (1e-3, 10)
    handles = []
    for v in verifiers:
        c, m = style(v)
        n_run = int((up.verifier == v).sum())
        t = np.sort(settled[settled.verifier == v].cost_s.clip(lower=1e-4).to_numpy())
        label = f"{v}: {len(t)} of {n_run}"
        if len(t):
            x = np.concatenate([[xlo], t, [xhi]])
            y = np.concatenate([[0], np.arange(1, len(t) + 1), [len(t)]])
            ax.step(x, y, where="post", color=c, lw=1.6)
            ax.plot(t, np.arange(1, len(t) + 1), ls="", marker=m, color=c, ms=4, markevery=max(1, len(t) // 12))
        handles.append(Line2D([], [], color=c, marker=m, lw=1.6, label=label))
    if len(settled):
        vb = np.sort(settled.groupby(["network", "p", "target", "domain"]).cost_s.min().clip(lower=1e-4).to_numpy())
        ax.step(np.concatenate([[xlo], vb, [xhi]]), np.concatenate([[0], np.arange(1, len(vb) + 1), [len(vb)]]),
                where="post", color="black", lw=1, ls="--")
        handles.append(Line2D([], [], color="black", ls="--", label=f"any verifier (virtual best): {len(vb)}"))
    top = max(int(settled.groupby(["network", "p", "target", "domain"]).ngroups) if len(settled) else 0, 1)
    if queries <= top * 1.6:
        ax.axhline(queries, color="#777777", lw=0.8, ls=":")
        handles.append(Line2D([], [], color="#777777", ls=":", label=f"all {queries} queries"))
        top = queries
    ax.set_xscale("log")
    ax.set_xlim(xlo, xhi)
    _log_ticks(ax, "x")
    ax.set_ylim(0, top * 1.1 + 0.5)
    ax.set_xlabel("time budget: verifier time, solve_s (s, log)")
    ax.set_ylabel(f"queries settled (count; the store has {queries} queries)")
    if not len(settled):
        ax.text(0.5, 0.5, "no verifier settled any query (no exact result, and no upper bound\nwithin "
                f"{100 * (TIGHT_WITHIN - 1):.0f}% of a sound lower bound)", transform=ax.transAxes, ha="center",
                va="center", fontsize=TEXT, color="#555555")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=SMALL, frameon=False,
              title="verifier: results that settled a query,\nof its results", title_fontsize=SMALL)
    fig.text(0.77, 0.3, "\n".join(textwrap.wrap(
        f"A query (network, p, target) is settled by a result that is exact, or by an upper bound within "
        f"{100 * (TIGHT_WITHIN - 1):.0f}% of the best sound lower bound. A curve counts the results of a verifier "
        f"that settled their query within the time on the x axis.", 40)), fontsize=SMALL, va="top", color="#333333")
    save(pdf, fig)


# ---- 4. scaling

def scaling_note(df) -> str | None:
    """None when the store varies size (the scaling page is drawn), else why it is omitted."""
    if not len(df):
        return "Scaling page omitted: no results."
    w = df.width.dropna().unique()
    d = df.depth.dropna().unique()
    if len(w) > 1 or len(d) > 1:
        return None
    if not len(w) and not len(d):
        return "Scaling page omitted: no network is an MLP built from hidden layers (no width or depth)."
    return (f"Scaling page omitted: every network has width {w[0] if len(w) else '-'} and depth "
            f"{d[0] if len(d) else '-'} (the store does not vary size).")


def scaling_page(pdf, df):
    g = df[df.width.notna() & ~df.status.isin(NOT_APPLICABLE)]
    dims = [(c, lab) for c, lab in (("width", "width: the widest hidden layer (units, log)"),
                                    ("depth", "depth: hidden layers (log)")) if df[c].dropna().nunique() > 1]
    if not dims or not len(g):
        return
    fig, axes = plt.subplots(2, len(dims), figsize=A4L, squeeze=False)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.17, hspace=0.3, wspace=0.22)
    fig.suptitle("Scaling: time and peak memory against network size (points: results; lines: medians)",
                 fontsize=TITLE)
    verifiers = order(g.verifier.unique())
    raster = len(g) > RASTER_ABOVE
    any_timeout = any_error = False
    sized = df.dropna(subset=["width", "depth"]).drop_duplicates("network")
    together = (len(dims) == 2 and sized.groupby("width").depth.nunique().max() == 1
                and sized.groupby("depth").width.nunique().max() == 1)
    note = ("Peak memory is the resident memory of the job's worker process (torch alone takes about 180 MB)."
            + (" In this store width and depth vary together (each width comes with one depth), so the left and right "
               "panels show the same results." if together else ""))
    fig.text(0.5, 0.945, "\n".join(textwrap.wrap(note, 150)), ha="center", va="top", fontsize=SMALL, color="#333333")
    for j, (dim, label) in enumerate(dims):
        for i, (col, ylab) in enumerate((("cost_s", "verifier time, solve_s (s, log)"),
                                         ("peak_mem_mb", "peak memory of the job (MB, log)"))):
            ax = axes[i, j]
            for k, v in enumerate(verifiers):
                c, m = style(v)
                gv = g[(g.verifier == v) & g[col].notna() & (g[col] > 0)]
                if not len(gv):
                    continue
                jit = 1 + 0.02 * (k - (len(verifiers) - 1) / 2)   # side by side, not on top
                x = gv[dim].astype(float) * jit
                y = gv[col].astype(float)
                ok = ~gv.status.isin(["timeout", "error", "oom"])
                ax.scatter(x[ok], y[ok], marker=m, color=c, s=18, alpha=0.7, lw=0, rasterized=raster)
                to = gv.status == "timeout"
                if to.any():
                    any_timeout = True
                    ax.scatter(x[to], y[to], marker=m, facecolors="none", edgecolors=c, s=24, lw=1,
                               rasterized=raster)
                er = gv.status.isin(["error", "oom"])
                if er.any():
                    any_error = True
                    ax.scatter(x[er], y[er], marker="x", color="black", s=26, lw=1)
                med = gv[~er].groupby(dim)[col].median()
                if len(med) > 1:
                    ax.plot(med.index.astype(float) * jit, med.values, color=c, lw=1.2)
            ax.set_xscale("log")
            ax.set_yscale("log")
            values = sorted(df[dim].dropna().unique().astype(float))
            ax.set_xlim(values[0] / 1.25, values[-1] * 1.25)
            ax.xaxis.set_major_locator(FixedLocator(values))
            ax.xaxis.set_major_formatter(_PLAIN)
            ax.xaxis.set_minor_locator(NullLocator())
            _log_ticks(ax, "y")
            ax.set_xlabel(label)
            ax.set_ylabel(ylab)
    handles = _verifier_handles(verifiers)
    if any_timeout:
        handles.append(Line2D([], [], marker="o", mfc="none", color="#555555", ls="",
                              label="hollow: timed out (at its budget)"))
    if any_error:
        handles.append(Line2D([], [], marker="x", color="black", ls="", label="error or oom"))
    _legend_below(fig, handles, ncol=min(6, len(handles)), y=0.02)
    save(pdf, fig)


# ---- 5. anytime bounds

def anytime_runs(df) -> list:
    """(row, stats) of bab and mip (any verifier with a trace, and mip's final bounds), the
    runs that did not close first, then the slowest; at most ANYTIME_PANELS."""
    cand = df[df.value.notna() & df.status.isin(["ok", "timeout"])
              & (df.verifier.isin(["bab", "mip"]) | df.stats.str.contains('"trace"', regex=False, na=False))]
    runs = []
    for r in cand.itertuples():
        st = mapping(r.stats)
        if st.get("trace") or (st.get("lower") is not None and st.get("upper", r.value) is not None):
            runs.append((r, st))
    rank = {v: i for i, v in enumerate(order(df.verifier.unique()))}
    runs.sort(key=lambda x: (x[0].kind == "exact" and x[0].status == "ok", rank.get(x[0].verifier, 0),
                             -_finite(x[0].cost_s)))
    return runs[:ANYTIME_PANELS]


def _finite(v, default=0.0) -> float:
    return float(v) if v is not None and v == v else default


def _state(r, st) -> str:
    """'timeout after 10 s: upper 50.44, lower 12.1' or 'exact 2.5 after 0.3 s'."""
    t = r.cost_s if r.cost_s == r.cost_s and r.cost_s is not None else None
    after = f" after {t:.3g} s" if t is not None else ""
    lo = st.get("lower")
    lo_s = f"{float(lo):.4g}" if lo is not None else "-"
    if r.kind == "exact" and r.status == "ok":
        return f"exact {r.value:.4g}{after}"
    return f"{r.status}{after}: upper {r.value:.4g}, lower {lo_s}"


def anytime_pages(pdf, df):
    runs = anytime_runs(df)
    for start in range(0, len(runs), 6):
        chunk = runs[start:start + 6]
        fig, axes = plt.subplots(2, 3, figsize=A4L, squeeze=False)
        fig.subplots_adjust(left=0.07, right=0.98, top=0.86, bottom=0.14, hspace=0.55, wspace=0.3)
        fig.suptitle("Anytime bounds of bab and mip: upper and lower bound over time (runs that did not close "
                     "first, then the slowest)" + (f", page {start // 6 + 1}" if len(runs) > 6 else ""),
                     fontsize=TITLE)
        for ax, (r, st) in zip(axes.flat, chunk):
            c, m = style(r.verifier)
            t_end = max(r.cost_s if r.cost_s == r.cost_s and r.cost_s else 1e-3, 1e-3)
            if st.get("trace"):
                tr = [(max(float(t), 1e-3), float(lo), float(up)) for t, lo, up in st["trace"]]
                ts = [t for t, _, _ in tr] + [max(t_end, tr[-1][0])]
                ax.step(ts, [u for _, _, u in tr] + [tr[-1][2]], where="post", color=c, lw=1.5)
                ax.step(ts, [lo for _, lo, _ in tr] + [tr[-1][1]], where="post", color=c, lw=1.5, ls="--")
                vals = [u for _, _, u in tr] + [lo for _, lo, _ in tr]
                t0 = ts[0]
            else:
                up, lo = float(st.get("upper", r.value)), float(st["lower"])
                ax.plot([t_end, t_end], [lo, up], color=c, lw=1)
                ax.plot([t_end], [up], marker="v", color=c, ms=7)
                ax.plot([t_end], [lo], marker="^", mfc="none", color=c, ms=7)
                ax.text(0.03, 0.96, "no trace: final bounds only", transform=ax.transAxes, fontsize=SMALL,
                        color="#555555", va="top")
                vals = [up, lo]
                t0 = t_end / 10
            if r.best_lower == r.best_lower and r.best_lower is not None:
                ax.axhline(r.best_lower, color="#777777", lw=0.8, ls=":")
                vals.append(r.best_lower)
            vals = [v for v in vals if v > 0]
            ax.axvline(t_end, color="#bbbbbb", lw=0.8, zorder=0)
            ax.set_xscale("log")
            ax.set_xlim(t0 / 1.5, t_end * 1.5)
            _log_ticks(ax, "x")
            if vals and max(vals) / min(vals) > 4:
                ax.set_yscale("log")
                ax.set_ylim(min(vals) / 1.2, max(vals) * 1.2)
                _log_ticks(ax, "y")
            elif vals:
                # linear; a closed run's bounds meet, so pad by 2% of the value (not of their tiny gap)
                pad = max(0.08 * (max(vals) - min(vals)), 0.02 * max(vals))
                ax.set_ylim(min(vals) - pad, max(vals) + pad)
                ax.yaxis.set_major_formatter(_G4)
            ax.set_xlabel("time since the verifier started (s, log)")
            ax.set_ylabel(f"Lipschitz bound ({r.query})")
            net = r.network if len(r.network) <= 46 else r.network[:43] + "..."
            ax.set_title(f"{net}\n{r.verifier}, {r.query}: {_state(r, st)}", fontsize=SMALL)
        for ax in list(axes.flat)[len(chunk):]:
            ax.axis("off")
        handles = [Line2D([], [], color="#555555", lw=1.5, label="upper bound"),
                   Line2D([], [], color="#555555", lw=1.5, ls="--", label="lower bound (the verifier's own)"),
                   Line2D([], [], color="#777777", lw=0.8, ls=":", label="best sound lower bound (any verifier)"),
                   Line2D([], [], color="#bbbbbb", lw=0.8, label="end of the run")]
        if any(not st.get("trace") for _, st in chunk):
            handles += [Line2D([], [], marker="v", color="#555555", ls="", label="final upper (no trace)"),
                        Line2D([], [], marker="^", mfc="none", color="#555555", ls="", label="final lower (no trace)")]
        handles += _verifier_handles(order({r.verifier for r, _ in chunk}))
        _legend_below(fig, handles, ncol=len(handles), y=0.02)
        save(pdf, fig)


# ---- certified accuracy

LINES_PER_PANEL = 8


def certified_page(pdf, df, certified):
    """Certified robust accuracy against eps: one panel per (data set, p), one line per
    training method x verifier (or, when there would be more than LINES_PER_PANEL, per method
    with its best verifier); the mean over the method's networks.  Returns the plotted
    table (a DataFrame) or None."""
    import pandas as pd
    if not certified:
        return None
    c = pd.DataFrame(certified)
    nets = df.drop_duplicates("network").set_index("network")
    c["method"] = c.network.map(nets.method).fillna("(network without results)")
    c["dataset"] = c.network.map(nets.dataset).fillna("").map(dataset_name)
    c["source"] = c["source"].fillna("")
    mean = c.groupby(["dataset", "p", "method", "verifier", "eps"], as_index=False).agg(
        certified_acc=("certified_acc", "mean"), clean_acc=("clean_acc", "mean"), networks=("network", "nunique"),
        source=("source", "first"))
    panels = sorted(mean.groupby(["dataset", "p"]).groups, key=lambda k: (k[0], P_ORDER.get(k[1], 9), k[1]))
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=A4L, squeeze=False)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.88, bottom=0.22, hspace=0.4, wspace=0.25)
    fig.suptitle("Certified robust accuracy against eps (mean over each training method's networks)",
                 fontsize=TITLE)
    methods = sorted(mean.method.unique())
    dashes = ["-", "--", ":", "-."]
    shown = {}
    # one rule for every panel: all method x verifier lines, or (too many somewhere) each method's best
    reduced = max(mean.groupby(["dataset", "p"]).apply(
        lambda g: g.groupby(["method", "verifier"]).ngroups, include_groups=False)) > LINES_PER_PANEL
    top = min(1.02, max(mean.clean_acc.max(), mean.certified_acc.max()) * 1.15 + 0.02)
    for ax, key in zip(axes.flat, panels):
        g = mean[(mean.dataset == key[0]) & (mean.p == key[1])]
        pairs = sorted(g.groupby(["method", "verifier"]).groups)
        if reduced:
            best = g.groupby(["method", "verifier"]).certified_acc.mean().reset_index()
            best = best.loc[best.groupby("method").certified_acc.idxmax()]
            pairs = sorted(zip(best.method, best.verifier))
        for meth, v in pairs:
            col, m = style(v)
            s = g[(g.method == meth) & (g.verifier == v)].sort_values("eps")
            x = [0.0] + list(s.eps)
            y = [s.clean_acc.iloc[0]] + list(s.certified_acc)
            ls = dashes[methods.index(meth) % len(dashes)]
            ax.plot(x, y, color=col, marker=m, ms=4, ls=ls, lw=1.2)
            shown[(meth, v)] = shown.get((meth, v)) or (s.source.iloc[0] == "pairs")
        ax.set_title(f"{key[0]}, p = {key[1]}" if key[0] else f"p = {key[1]}")
        ax.set_xlabel(f"eps: radius of the input {key[1]}-norm ball")
        ax.set_ylabel("certified robust accuracy (share)")
        ax.set_ylim(0, top)
        ax.set_xlim(left=0)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles = [Line2D([], [], color=style(v)[0], marker=style(v)[1], ls=dashes[methods.index(meth) % len(dashes)],
                      label=f"{meth}, {v}" + (" (from the suite's class pairs only)" if shown[(meth, v)] else ""))
               for meth, v in sorted(shown)]
    _legend_below(fig, handles, ncol=min(4, max(1, len(handles))), y=0.01)
    fig.text(0.07, 0.925, "Colour and marker: the verifier whose bounds certify; line style: the training method. "
             "At eps = 0 the clean accuracy." + (" Per method only its best verifier (more lines would not be "
                                                 "readable)." if reduced else ""),
             fontsize=SMALL, color="#333333")
    save(pdf, fig)
    return mean


# ---- hand-built families (a trainer with a ``family`` parameter, e.g. construct)

#: the family page's columns: (label, verifier, what its parameters must hold, which query)
FAMILY_BOUNDS = (("trivial", "trivial", {}, "global"), ("LipSDP-Neuron", "lipsdp", {"form": "neuron"}, "global"),
                 ("LipSDP-Layer", "lipsdp", {"form": "layer"}, "global"), ("ECLipsE", "eclipse", {}, "global"),
                 ("ECLipsE-Fast", "eclipse-fast", {}, "global"), ("lirpa (box)", "lirpa", {}, "box"),
                 ("lower", "lower", {}, "global"), ("exact", None, {}, "global"), ("exact (box)", None, {}, "box"))


def family_frame(df):
    """One row per network of a hand-built family (not a family of networks read from
    elsewhere) at p = 2 (the global query, and for
    lirpa and "exact (box)" the first box): the family, the parameter that varies within it
    and its value, each bound of :data:`FAMILY_BOUNDS` (the best ``ok`` value where several
    parameter sets or solvers answer; "exact": an ``ok`` row of kind exact), and the ratios
    trivial / exact and LipSDP-Neuron / exact.  Empty when the frame has no family."""
    import pandas as pd
    fam = df.trainer_params.map(lambda t: mapping(t).get("family"))
    made_here = (df["trainer"] != EXTERNAL) if "trainer" in df else True
    d = df[fam.notna() & made_here & (df.p == "2") & (df.target == "full") & (df.status == "ok") & df.value.notna()].copy()
    cols = ["family", "parameter", "value_of_parameter", "network"] + [c for c, *_ in FAMILY_BOUNDS] + \
        ["trivial / exact", "LipSDP-Neuron / exact"]
    if not len(d):
        return pd.DataFrame(columns=cols)
    d["family"] = fam[d.index]
    boxes = sorted(x for x in d.domain.dropna().unique() if x != "global")
    d["where"] = d.domain.map(lambda x: "global" if x == "global" else ("box" if boxes and x == boxes[0] else None))
    rows = []
    for family, g in d.groupby("family", sort=True):
        params = {n: mapping(t) for n, t in g.groupby("network").trainer_params.first().items()}
        keys = sorted({k for p in params.values() for k in p if k not in ("arch", "family")})
        varies = varying(list(params.values()), skip=("arch", "family"))
        key = varies[0] if varies else (keys[0] if keys else "network")
        for net, h in g.groupby("network"):
            row = {"family": family, "parameter": key, "value_of_parameter": params[net].get(key, net), "network": net}
            for label, verifier, need, where in FAMILY_BOUNDS:
                r = h[h["where"] == where]
                if verifier is None:
                    r = r[r.kind == "exact"]
                else:
                    r = r[r.verifier == verifier]
                    if need:
                        r = r[r.verifier_params.map(lambda s: all(mapping(s).get(k) == v for k, v in need.items()))]
                row[label] = (r.value.max() if verifier == "lower" else r.value.min()) if len(r) else None
            ex = row["exact"]
            for label, top in (("trivial / exact", "trivial"), ("LipSDP-Neuron / exact", "LipSDP-Neuron")):
                row[label] = row[top] / ex if ex and row[top] is not None else None
            rows.append(row)
    out = pd.DataFrame(rows, columns=cols)
    return out.sort_values(["family", "value_of_parameter"], kind="stable").reset_index(drop=True)


def _geometric(values) -> bool:
    v = sorted(values)
    return len(v) > 2 and v[0] > 0 and all(b / a >= 1.5 for a, b in zip(v, v[1:]))


def family_pages(pdf, df, fams=None):
    """One page per hand-built family: every bound against the family's parameter (log
    scale), the ratio of each upper bound to the exact constant, and the numbers."""
    fams = family_frame(df) if fams is None else fams
    lines = {"trivial": ("trivial", "-"), "LipSDP-Neuron": ("lipsdp", "-"), "LipSDP-Layer": ("lipsdp", "--"),
             "ECLipsE": ("eclipse", "-"), "ECLipsE-Fast": ("eclipse-fast", "-"), "lirpa (box)": ("lirpa", "-"),
             "lower": ("lower", ":")}
    for family, g in fams.groupby("family", sort=True):
        key = g.parameter.iloc[0]
        x = g.value_of_parameter.astype(float)
        fig = plt.figure(figsize=A4L)
        fig.suptitle(f"Family {family}: bounds (p = 2) against its parameter {key}", fontsize=TITLE)
        fig.text(0.5, 0.935, "\n".join(textwrap.wrap(
            "Hand-built networks (docs/hard.md). Global constant unless marked box (lirpa bounds boxes only); exact: "
            "bab or mip where it closed (kind exact). The SDP bounds never read biases; their ratio to the exact "
            "constant grows with the trivial bound's where the construction defeats them. In the table, - is no bound (an "
            "error, a timeout or unsupported: see the status page).", 170)),
            ha="center", va="top", fontsize=SMALL, color="#333333")
        axes = [fig.add_axes([0.07, 0.42, 0.38, 0.45]), fig.add_axes([0.57, 0.42, 0.38, 0.45])]
        for ax, ratio in zip(axes, (False, True)):
            for k, label in enumerate(lines):
                if label not in g or g[label].isna().all() or (ratio and label == "lower"):
                    continue
                c, m = style(lines[label][0])
                y = g[label].astype(float) / (g["exact"].astype(float) if ratio else 1.0)
                ok = y.notna() & (y > 0) & np.isfinite(y)
                ax.plot(x[ok] * (1 + 0.01 * (k - 3)), y[ok], marker=m, color=c, ls=lines[label][1], lw=1.2, ms=5,
                        label=label)
            if not ratio and g["exact"].notna().any():
                ok = g["exact"].astype(float) > 0
                ax.plot(x[ok], g["exact"][ok].astype(float), color="black", lw=2.2, alpha=0.5, label="exact")
            if _geometric(x.unique()):
                ax.set_xscale("log")
                ax.xaxis.set_major_locator(FixedLocator(sorted(x.unique())))
                ax.xaxis.set_major_formatter(_PLAIN)
                ax.xaxis.set_minor_locator(NullLocator())
            ax.set_yscale("log")
            _log_ticks(ax, "y")
            ax.set_xlabel(key)
            ax.set_ylabel("bound / exact constant (log)" if ratio else "bound on the Lipschitz constant (log)")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=SMALL, frameon=False, loc="best")
        shown = [c for c in ("trivial", "LipSDP-Neuron", "LipSDP-Layer", "ECLipsE", "ECLipsE-Fast", "lirpa (box)",
                             "lower", "exact", "trivial / exact", "LipSDP-Neuron / exact")]
        cells = [[f"{v:g}"] + ["-" if r is None or (isinstance(r, float) and not math.isfinite(r)) else f"{r:.4g}"
                               for r in row] for v, row in zip(g.value_of_parameter, g[shown].itertuples(index=False))]
        tab = fig.add_axes([0.04, 0.02, 0.92, 0.3])
        tab.axis("off")
        t = tab.table(cellText=cells[:16], colLabels=[key] + shown, loc="upper center", cellLoc="right")
        t.auto_set_font_size(False)
        t.set_fontsize(SMALL)
        t.scale(1, 1.0)
        save(pdf, fig)
