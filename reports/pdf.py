"""The PDF report: which verifier gives how tight a bound at what cost.

Every figure and table is a group-by of the tidy frame (:func:`bench.tidy.frame`); the
best lower bound, tightness and "settled" are computed there (and in :mod:`bench.rows`),
never here.  Pages, in order:

1. the headline: the store (suite, dates, machine, versions) and one table, training
   method x verifier: median tightness with its IQR, median time, share settled; the
   cheapest verifier within 10% of the best highlighted (:func:`bench.tidy.headline`);
2. tightness against cost, one panel per norm p, with the rows that gave no bound;
3. the cactus plot: queries settled against the time budget;
4. scaling: time and memory against width and depth (when the store varies size);
5. anytime bounds of bab and mip; certified accuracy; next to the published state of the
   art (:mod:`reports.sota`, only for CIFAR networks); the paper's claims
   (:mod:`reports.evidence`); the status map; where a verifier gave no bound, and why;
   the audit.

Next to the PDF: ``<stem>-data.csv`` (the frame) and each table as LaTeX
(``<stem>-headline.tex``, ...), so that a figure can be rebuilt for a paper.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from datetime import datetime, timezone

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from bench.rows import TIGHT_WITHIN, mapping  # noqa: E402
from bench.store import EXTERNAL, Store  # noqa: E402
from bench.tidy import (answer_parts, best_parts, frame, headline, networks_frame, per_norm,  # noqa: E402
                        sentence)

from . import evidence, figures, sota, tradeoff  # noqa: E402
from .layout import Flow, chars, save, wrap  # noqa: E402
from .style import (A4L, MEASURED, NOT_APPLICABLE as GREY, RC, SMALL, STATUS_COLORS, TEXT, TITLE,  # noqa: E402
                    UNSOUND, fmt_eps, fmt_g, fmt_pct, fmt_s, order, style)
from .tables import (audit_rows, cell_color, headline_grid, headline_rows, order_status, status_counts,  # noqa: E402
                     status_rows, to_latex, unanswered_rows, write_atomic)

log = logging.getLogger(__name__)
logging.getLogger("fontTools").setLevel(logging.WARNING)   # font subsetting would log every glyph at INFO
HEADLINE_ROWS = 5          # training methods per headline page
HEADLINE_COLS = 8          # verifiers per headline page
STATUS_ROWS = 15           # rows of the status map per page
STATUS_BY_NETWORK_UP_TO = 60   # beyond this many networks the status map has one row per training method
AUDIT_PAGES = 10           # unsound rows beyond these pages are in <stem>-audit.tex and the csv
UNANSWERED_PAGES = 3       # the rest of the reasons are in the csv


# ---- the store's facts, for the headline

def _counted(values, unit="jobs") -> str:
    c = Counter(v for v in values if v not in (None, ""))
    if not c:
        return "not recorded"
    if len(c) == 1:
        return str(next(iter(c)))
    return ", ".join(f"{k} ({n} {unit})" for k, n in c.most_common(3)) + (" ..." if len(c) > 3 else "")


def store_info(store: Store) -> dict:
    jobs = [dict(j) for j in store.jobs()]
    vers = [mapping(j["versions"]) for j in jobs]
    finished = [j["finished"] for j in jobs if j["finished"]]
    nets = store.networks()
    return {
        "suite": store.meta("suite") or "(not recorded)",
        "path": os.path.abspath(store.path),
        "jobs": len(jobs), "networks": len(nets),
        "external": sum(1 for n in nets if n["trainer"] == EXTERNAL),
        "train_failed": [j for j in jobs if j["type"] in ("train", "import") and j["status"] != "ok"],
        "versions": {k: _counted([v.get(k) for v in vers]) for k in ("lipbench", "torch", "python")},
        "device": _counted([j["device"] for j in jobs]),
        "threads": _counted([j["threads"] for j in jobs]),
        "from": min(finished) if finished else None, "to": max(finished) if finished else None,
        "network_ids": [n["id"] for n in nets],
        "accuracy_disagrees": [n["id"] for n in nets if '"accuracy_disagrees": true' in (n["metrics"] or "")],
        "provenance": _latest_provenance(store),
    }


def _networks_text(info: dict) -> str:
    """"12 trained networks", "11 networks read from elsewhere", or both."""
    n, ext = info["networks"], info.get("external", 0)
    if not ext:
        return f"{n} trained networks"
    if ext == n:
        return f"{n} networks read from elsewhere"
    return f"{n} networks ({n - ext} trained, {ext} read from elsewhere)"


def _latest_provenance(store) -> dict | None:
    """Where the latest run into the store ran (bench.provenance), or None."""
    runs = store.runs()
    if not runs:
        return None
    return mapping(runs[-1]["provenance"]) or None


def _date(t) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if t else "-"


# ---- page 1

def _header(fig, title: str, info: dict, df) -> float:
    """The store's facts at the top of the headline page; returns the y below them."""
    fig.text(0.04, 0.965, title, fontsize=14, weight="bold", va="top")
    v = info["versions"]
    nq = df.groupby(["network", "p", "target", "domain"]).ngroups if len(df) else 0
    lines = [
        f"suite {info['suite']}:  {len(df)} results on {df.network.nunique() if len(df) else 0} of "
        f"{_networks_text(info)}, {nq} queries, {df.verifier.nunique() if len(df) else 0} verifiers",
        f"jobs finished {_date(info['from'])} to {_date(info['to'])};  report written "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} from {info['path']}",
        f"machine: device {info['device']}, threads {info['threads']};  versions: lipbench {v['lipbench']}, "
        f"torch {v['torch']}, python {v['python']}",
    ]
    if info.get("provenance"):   # the latest run's machine, software and git commit
        from bench.provenance import summary
        lines += ["latest run: " + l for l in summary(info["provenance"]).splitlines() if l]
    y = 0.925
    for l in lines:
        for w in wrap(l, chars(A4L[0] * 0.92, TEXT)):
            fig.text(0.04, y, w, fontsize=TEXT, va="top")
            y -= 0.022
    n_bad = int((df.status == "unsound").sum()) if len(df) else 0
    if n_bad:
        fig.text(0.04, y, f"AUDIT: {n_bad} UNSOUND result(s): an upper bound below a sound lower bound, or a "
                 f"lower bound its witness does not show (see the audit page)", fontsize=TEXT, color=UNSOUND,
                 weight="bold", va="top")
    else:
        fig.text(0.04, y, "audit: clean (no upper bound below a sound lower bound, every checked lower bound "
                 "shown by its witness)", fontsize=TEXT, va="top")
    return y - 0.03


def _table(fig, grid, methods, verifiers, top: float, row_h: float) -> float:
    left, right = 0.04, 0.96
    mcol = 0.13
    vw = min(0.12, (right - left - mcol) / max(len(verifiers), 1))
    head_h = 0.05
    width = mcol + vw * len(verifiers)
    fig.add_artist(Rectangle((left, top - head_h), width, head_h, transform=fig.transFigure, facecolor="#dddddd",
                             edgecolor="none"))
    fig.text(left + 0.005, top - 0.008, "method, at norm", fontsize=TEXT, weight="bold", va="top")
    for j, v in enumerate(verifiers):
        x = left + mcol + j * vw
        c, m = style(v)
        fig.add_artist(plt.Line2D([x + 0.012], [top - 0.017], marker=m, color=c, ms=7, ls="",
                                  transform=fig.transFigure))
        fig.text(x + 0.022, top - 0.017, v, fontsize=9 if len(v) <= chars(vw * A4L[0] - 0.3, 9 * 1.1) else TEXT,
                 weight="bold", va="center")
        fig.text(x + 0.008, top - 0.036, grid["kinds"].get(v, ""), fontsize=SMALL, color="#555555", va="center")
    y = top - head_h
    cell_chars = chars(vw * A4L[0] - 0.12, 7.5)
    for m in methods:
        fig.text(left + 0.005, y - 0.01, "\n".join(wrap(m, chars(mcol * A4L[0] - 0.1, 9))), fontsize=9,
                 weight="bold", va="top")
        fig.text(left + 0.005, y - row_h + 0.012, f"{grid['networks'].get(m, 0)} network(s)", fontsize=SMALL,
                 color="#555555", va="bottom")
        for j, v in enumerate(verifiers):
            x = left + mcol + j * vw
            cell = grid["cells"].get((m, v)) or {"lines": ["not run"], "color": GREY, "na": True, "best": False}
            if cell["color"]:
                fig.add_artist(Rectangle((x + 0.002, y - row_h + 0.003), vw - 0.004, row_h - 0.006,
                                         transform=fig.transFigure, facecolor=cell["color"],
                                         edgecolor="#2a8a2a" if cell["best"] else "none", lw=1.5))
            na = cell.get("na")
            ink = "#555555" if na else "black"
            fig.text(x + 0.008, y - 0.01, cell["lines"][0], fontsize=8 if na else 11, weight="normal" if na else "bold",
                     va="top", color=ink)
            rest = [w for l in cell["lines"][1:] if l for w in wrap(l, cell_chars)][:5]
            fig.text(x + 0.008, y - (0.03 if na else 0.036), "\n".join(rest), fontsize=7.5, va="top", color=ink,
                     linespacing=1.15)
        fig.add_artist(plt.Line2D([left, left + width], [y - row_h] * 2, transform=fig.transFigure,
                                  color="#bbbbbb", lw=0.5))
        y -= row_h
    return y


LEGEND = [
    "Rows: a training method at one query norm (class-pair margins apart), so that a median never pools norms. "
    "Each cell: the median tightness of the verifier's bounds on the row's networks and queries, its "
    "interquartile range (IQR), the median time (solve_s), and the share settled of the queries it supports "
    "(those it refuses, or that need what is not installed, are not counted).",
    f"Tightness = upper bound / best sound lower bound of the same network and query (1 = tight; >= 1 for a sound "
    f"bound). Lower bounds are witnessed: the audit evaluates each one's pair of inputs again on the stored network, "
    f"so the true constant lies between. Settled: an exact result, or an upper bound within "
    f"{100 * (TIGHT_WITHIN - 1):.0f}% of the best lower bound.",
    f"Green: the cheapest verifier (median time) whose median tightness is within {100 * (TIGHT_WITHIN - 1):.0f}% "
    f"of the row's best. Grey: the verifier does not apply (unsupported, not installed) or was not run. "
    f"'anytime': bounds kept at a timeout.",
]


def headline_pages(pdf, title, info, df, h, notes):
    grid = headline_grid(df, h)
    methods, verifiers = grid["methods"], grid["verifiers"]
    mchunks = [methods[i:i + HEADLINE_ROWS] for i in range(0, len(methods), HEADLINE_ROWS)] or [[]]
    vchunks = [verifiers[i:i + HEADLINE_COLS] for i in range(0, len(verifiers), HEADLINE_COLS)] or [[]]
    pages = [(m, v) for m in mchunks for v in vchunks]
    for k, (ms, vs) in enumerate(pages):
        fig = plt.figure(figsize=A4L)
        if k == 0:
            y = _header(fig, title, info, df)
            answer = sentence(answer_parts(h)) if len(h) else ""
            if answer:   # the paper's question, answered where the reader starts
                for w in wrap(answer, chars(A4L[0] * 0.92, 9.5)):
                    fig.text(0.04, y, w, fontsize=9.5, weight="bold", va="top")
                    y -= 0.026
                y -= 0.01
        else:
            fig.text(0.04, 0.965, title + f": headline table (continued, {k + 1} of {len(pages)})",
                     fontsize=TITLE, va="top")
            y = 0.92
        if ms and vs:
            y = _table(fig, grid, ms, vs, y, row_h=0.115 if len(ms) <= 3 else 0.1)
        elif len(df):
            fig.text(0.04, y, "No upper or exact bounds in this store: only lower bounds, nothing to compare.",
                     fontsize=TITLE, va="top")
            y -= 0.05
        if k < len(pages) - 1:
            save(pdf, fig)
            continue
        # under the last table: the answer in words, the legend, what is missing (onto a next page if long)
        f = Flow(pdf, title + ": headline")   # a page it adds says "(continued)"
        f.fig, f.pages, f.y = fig, 1, y - 0.02
        if len(df):
            best = sentence(best_parts(h)) if len(h) else ""
            f.text(best or "No verifier has an upper bound with a proven lower bound to compare against yet.",
                   size=TEXT)
            f.y -= 0.012
            for l in LEGEND:
                f.text(l, size=SMALL, color="#333333")
        for l in notes:
            f.text(l, size=TEXT if not len(df) else SMALL, color="black" if not len(df) else "#333333",
                   space_before=0.006)
        f.close()


# ---- the status map and the audit

def status_pages(pdf, df):
    by = "network" if df.network.nunique() <= STATUS_BY_NETWORK_UP_TO else "method"
    counts, keys, verifiers = status_counts(df, by)
    note = ("" if by == "network" else
            f"{df.network.nunique()} networks: one row per training method (counts over its networks). ")
    for start in range(0, len(keys), STATUS_ROWS):
        chunk = keys[start:start + STATUS_ROWS]
        fig = plt.figure(figsize=A4L)
        fig.suptitle("Status of every result: " + ("network" if by == "network" else "training method")
                     + " x verifier (count of each status; colour: the worst)"
                     + (f", rows {start + 1}-{start + len(chunk)} of {len(keys)}" if len(keys) > STATUS_ROWS else ""),
                     fontsize=TITLE, x=0.04, ha="left")
        left, right, top, bottom = 0.27, 0.98, 0.84, 0.12
        cw = (right - left) / max(len(verifiers), 1)
        rh = min(0.07, (top - bottom) / max(len(chunk), 8))
        for j, v in enumerate(verifiers):
            c, m = style(v)
            x = left + j * cw + cw / 2
            fig.add_artist(plt.Line2D([x], [top + 0.04], marker=m, color=c, ms=6, ls="", transform=fig.transFigure))
            size = TEXT if len(v) <= chars(cw * A4L[0] - 0.05, TEXT * 1.1) else SMALL
            fig.text(x, top + 0.015, v, ha="center", va="center", fontsize=size, weight="bold")
        for i, k in enumerate(chunk):
            y = top - i * rh
            fig.text(left - 0.008, y - rh / 2, str(k)[:58], ha="right", va="center", fontsize=SMALL)
            for j, v in enumerate(verifiers):
                c = counts[k].get(v)
                fig.add_artist(Rectangle((left + j * cw + 0.001, y - rh + 0.001), cw - 0.002, rh - 0.002,
                                         transform=fig.transFigure, facecolor=cell_color(c), edgecolor="none"))
                if c:
                    sts = order_status(c)
                    txt = [f"{s.replace('_', ' ')} {c[s]}" for s in sts[:3]] + (
                        [f"+{len(sts) - 3} more"] if len(sts) > 3 else [])
                    fig.text(left + j * cw + cw / 2, y - rh / 2, "\n".join(txt), ha="center", va="center",
                             fontsize=SMALL, linespacing=1.0,
                             color=UNSOUND if "unsound" in c else "black", weight="bold" if "unsound" in c else None)
                else:
                    fig.text(left + j * cw + cw / 2, y - rh / 2, "-", ha="center", va="center", fontsize=SMALL,
                             color="#999999")
        present = {s for k in keys for c in counts[k].values() for s in c}
        handles = [Rectangle((0, 0), 1, 1, facecolor=STATUS_COLORS.get(s, "white"), label=s.replace("_", " "))
                   for s in order_status(present)]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=SMALL, frameon=False,
                   bbox_to_anchor=(0.5, 0.04), title="worst status in the cell (worst first)",
                   title_fontsize=SMALL)
        if note:
            fig.text(0.04, 0.02, note, fontsize=SMALL)
        save(pdf, fig)


def unanswered_pages(pdf, df):
    """Where some verifier could not answer, and why (its stored reason), grouped: one
    line per verifier, status and reason, with the networks it holds for."""
    header, body = unanswered_rows(df)
    if not body:
        return
    f = Flow(pdf, "Where a verifier gave no bound, and why", max_pages=UNANSWERED_PAGES)
    f.text("Each line: a verifier, the status of the queries it did not answer (unsupported and not installed: "
           "refused before running; timeout: no bound by its budget; error, oom), the reason it gave, and the "
           "networks it holds for with how many of their queries. A timeout that kept a bound is an answer "
           "(an anytime bound) and is not listed.")
    f.y -= 0.01
    drawn = f.table(header, body, widths=[0.1, 0.1, 0.45, 0.35])
    if drawn < len(body):
        f.full = False
        f.BOTTOM = 0.02
        f.text(f"{len(body) - drawn} more line(s) not shown: see -data.csv (columns status, error).")
    f.close()


def audit_pages(pdf, df):
    """Every unsound row in red with what the audit said, or "audit clean"."""
    header, body = audit_rows(df)
    claims = df[df.kind.isin(["lower", "exact"]) & df.status.isin(["ok", "timeout"]) & df.audit.notna()]
    unchecked = int(claims.audit.str.contains('"unchecked"', regex=False).sum())
    checked = int(claims.audit.str.contains('"value"', regex=False).sum())
    tail = (f"{checked} lower-bound claim(s) shown by their witness; {unchecked} could not be checked (they prove "
            f"nothing and refute nothing)." if checked or unchecked else "No lower-bound claim in this store.")
    if not body:
        f = Flow(pdf, "Audit: clean")
        f.text("No result is unsound: no upper bound lies below the best sound lower bound of its query (rtol 1e-6), "
               "and every lower bound that was checked is shown by its witness (a pair of inputs whose difference "
               "quotient the audit evaluated again on the stored network).")
        f.text(tail, space_before=0.015)
        f.close()
        return
    f = Flow(pdf, f"Audit: {len(body)} UNSOUND result(s)", max_pages=AUDIT_PAGES)
    f.text("An unsound row is an upper bound below a sound lower bound of the same network and query (the note names "
           "the refuting lower bound), or a lower bound that its witness does not show. " + tail, color=UNSOUND)
    f.y -= 0.01
    drawn = f.table(header, body, widths=[0.25, 0.09, 0.09, 0.08, 0.49], text_colors=[UNSOUND] * len(body))
    if drawn < len(body):
        f.full = False
        f.BOTTOM = 0.02
        f.text(f"{len(body) - drawn} more unsound row(s) not shown: see the -audit.tex and -data.csv files.",
               color=UNSOUND, weight="bold")
    f.close()


# ---- the evidence pages (the paper's claims)

def evidence_pages(pdf, nf, df, certified) -> list[tuple[str, list, list]]:
    """The claims, the per-configuration table and the obstructions, one flow of pages, on
    the networks trained here (the claims are about training; a network read from
    elsewhere has no training configuration); returns the tables (name, header, body) for
    LaTeX."""
    nf = nf[nf.trainer != EXTERNAL]
    df = df[df.trainer != EXTERNAL]
    if not len(nf) or not len(df):
        return []
    f = Flow(pdf, "Evidence: the paper's claims")
    f.text("What the numbers say about the claims of arXiv 2603.28113, measured on this store (TB = the trivial "
           "bound, lower = the best sound lower bound of the same network and query).")
    claim_lines = evidence.claims(nf, df)
    if not claim_lines:
        claim_lines = ["(no tb-penalty networks with saturating activations, or no lower bounds: the claims are not "
                       "tested by this suite)"]
    for l in claim_lines:
        sub = l.startswith(" ")
        f.text(l.strip(), indent=4 if sub else 0, space_before=0 if sub else 0.012,
               color="#333333" if sub else "black")

    table = evidence.config_table(nf, df, certified)
    grids = {p: sorted({e for r in table for e in r[f"cert_{p}"]}) for p in ("2", "inf")}
    header = ["configuration", "seeds", "acc", "TB p=2", "lower p=2", "TB / lower p=2", "TB p=inf", "lower p=inf",
              "TB / lower p=inf"]
    widths = [0.26, 0.04, 0.05, 0.07, 0.07, 0.1, 0.07, 0.07, 0.1]
    certs = [p for p in ("2", "inf") if grids[p]]
    for p in certs:
        header.append(f"cert. acc p={p} at eps " + " / ".join(f"{e:g}" for e in grids[p]))
        widths.append(0.13)

    def cert(d):
        return " / ".join(f"{d[e]:.2f}" if e in d else "-" for e in sorted(d)) or "-"
    fmt = fmt_g
    body, colors = [], []
    green = "#c8f0c8"
    for r in table:
        body.append([r["config"], str(r["n"]), fmt(r["clean_acc"], 3), fmt(r["tb_2"]), fmt(r["lower_2"]),
                     fmt(r["ratio_2"], 3) + (f" (max {fmt(r['ratio_max_2'], 3)})" if r["ratio_max_2"] else ""),
                     fmt(r["tb_inf"]), fmt(r["lower_inf"]),
                     fmt(r["ratio_inf"], 3) + (f" (max {fmt(r['ratio_max_inf'], 3)})" if r["ratio_max_inf"] else "")]
                    + [cert(r[f"cert_{p}"]) for p in certs])
        colors.append([None] * 5 + [green if (r["ratio_max_2"] or 9) <= evidence.TIGHT else None] + [None] * 2
                      + [green if (r["ratio_max_inf"] or 9) <= evidence.TIGHT else None] + [None] * len(certs))
    f.text("Per configuration (mean over seeds)", size=TITLE - 1, weight="bold", space_before=0.025)
    f.text(f"A configuration is everything but the seed. Green: TB within {100 * (evidence.TIGHT - 1):.0f}% of the "
           "best sound lower bound on every seed." + (" Certified accuracy from the trivial bound." if certs else ""),
           size=SMALL, color="#333333")
    f.y -= 0.006
    f.table(header, body, widths=widths, colors=colors)
    abl_header = ["configuration", "zero-derivative fraction", "spread init -> trained", "TB / lower p=2",
                  "TB / lower p=inf"]
    abl = evidence.ablation(nf, df)
    f.text("Obstructions: dead neurons, biases, conditioning", size=TITLE - 1, weight="bold", space_before=0.02)
    f.text("The fraction of zero derivatives (dead neurons); conditioning: sigma_max / sigma_min of the weight "
           "matrices, median over layers, at initialisation -> after training.", size=SMALL, color="#333333")
    f.y -= 0.006
    f.table(abl_header, abl, widths=[0.36, 0.14, 0.22, 0.14, 0.14])
    f.close()
    return [("configurations", header, body), ("obstructions", abl_header, abl)]


# ---- clean against certified accuracy

def tradeoff_pages(pdf, nf, df, certified) -> tuple | None:
    """The trade-off (:mod:`reports.tradeoff`): the figure, then one row per setting (mean
    over seeds): clean accuracy, certified accuracy from the trivial bound and from the
    verifier that certifies the most (named), TB / lower, training time.  Returns the
    per-setting frame, or None when no network has certified accuracy at p = 2."""
    t = tradeoff.table(nf, df, certified)
    if not len(t):
        return None
    s = tradeoff.settings(t)
    tradeoff.page(pdf, t, s)
    f = Flow(pdf, "Clean against certified accuracy, per setting")
    f.text("Mean over seeds. cert. (TB): certified by the sound class-pair trivial bound; cert. (best): by the "
           "verifier whose sound bounds certify the most, named; TB / lower: the trivial bound of the whole output "
           "over the best sound lower bound (mean, max over seeds); training time per network.", size=SMALL,
           color="#333333")
    f.y -= 0.006
    header = ["method", "setting", "seeds", "clean", "eps", "cert. (TB)", "cert. (best)", "by", "TB / lower",
              "train"]
    body = [[r.method, r.setting or "-", str(r.seeds), fmt_pct(r.clean_acc), fmt_eps(r.eps),
             fmt_pct(r.cert_trivial), fmt_pct(r.cert_best), r.best_by,
             "-" if r.tb_over_lower != r.tb_over_lower else f"{r.tb_over_lower:.3g} (max {r.tb_over_lower_max:.3g})",
             fmt_s(r.train_s)] for r in s.itertuples()]
    f.table(header, body, widths=[0.17, 0.28, 0.04, 0.05, 0.05, 0.07, 0.07, 0.06, 0.1, 0.06])
    f.close()
    return s


# ---- next to the published state of the art

def published_page(pdf, comp: dict):
    """The comparison with published numbers (:func:`reports.sota.comparison`): the table
    (measured rows shaded), the sources, and clean against certified accuracy at the first
    radius as a scatter."""
    from matplotlib.lines import Line2D
    e0 = fmt_eps(comp["columns"][0])
    f = Flow(pdf, "Next to the published state of the art: CIFAR-10, l2 balls")
    f.text("Clean and certified robust accuracy (%); the certified radius eps in units of [0, 1] pixels. 'measured': "
           "this store's networks on CIFAR-10 (JPEG copy): lipbench's reference CIFAR-10 went through JPEG "
           "compression, so these are not the published test images; certified from the sound bounds of the named "
           "verifier, the mean over seeds. 'reported': copied from the paper named (reports/published/), not run "
           "here. Parameters and training budget as the source states them ('-': not stated); for a measured row, "
           "its training record (epochs, mean time, device).", size=SMALL, color="#333333")
    f.y -= 0.008
    header, body = sota.table(comp)
    widths = [0.07, 0.12, 0.1, 0.1, 0.07, 0.13, 0.05] + [0.065] * len(comp["columns"]) + [0.17]
    f.table(header, body, widths, colors=[MEASURED if r["mark"] == "measured" else None for r in comp["rows"]])
    for k, s in enumerate(comp["sources"], 1):
        f.text(f"[{k}] {s.reference()}" + (f" Numbers: {s.note}." if s.note else ""), size=SMALL, color="#333333")
    missing = [r for r in comp["rows"] if r["mark"] == "measured" and r["certified_pct"][0] is None]
    if missing:
        f.text(f"{len(missing)} measured configuration(s) have no certified accuracy at {e0}: certify at the radii "
               f"the literature uses (in a suite: certify: {{eps: {{2: [{', '.join(f'{e:.6g}' for e in sota.EPS_GRID)}"
               f"]}}}}).", size=SMALL, space_before=0.006)
    pts = [r for r in comp["rows"] if r["certified_pct"][0] is not None and r["clean_pct"] is not None]
    if not pts:
        f.close()
        return
    fig, top = f.area(0.34)     # the scatter: below the table where it fits, else on the next page
    ax = fig.add_axes([0.08, f.BOTTOM + 0.05, 0.45, top - f.BOTTOM - 0.08])
    xs = [r["clean_pct"] for r in pts]
    ys = [r["certified_pct"][0] for r in pts]
    ax.plot([0, 100], [0, 100], color="#bbbbbb", lw=0.8, ls=":", zorder=0)
    ax.set_xlim(max(0, min(xs) - 12), min(100, max(xs) + 4))
    ax.set_ylim(max(0, min(ys) - 5), min(100, max(ys) + 5))
    reported = sorted((r for r in pts if r["mark"] == "reported"), key=lambda r: r["certified_pct"][0])
    for r in pts:
        x, y = r["clean_pct"], r["certified_pct"][0]
        if r["mark"] == "reported":
            ax.scatter([x], [y], marker="s", facecolors="none", edgecolors="#555555", s=30, lw=1)
        else:
            c, m = style(r["verifier"])
            ax.scatter([x], [y], marker=m, color=c, s=45, edgecolors="black", lw=0.6, zorder=5)
            ax.annotate(r["method"], (x, y), xytext=(5, -9), textcoords="offset points", fontsize=SMALL)
    if reported:   # published points cluster: their names in a column to their left, one leader line each
        lo, hi = ax.get_ylim()
        gap = 0.05 * (hi - lo)
        ly = []
        for r in reported:
            ly.append(max(r["certified_pct"][0], ly[-1] + gap) if ly else r["certified_pct"][0])
        shift = max(0.0, ly[-1] - (hi - gap / 2))
        x_col = min(r["clean_pct"] for r in reported) - 0.04 * (ax.get_xlim()[1] - ax.get_xlim()[0])
        for r, y in zip(reported, ly):
            y -= shift
            ax.annotate(r["method"], (r["clean_pct"], r["certified_pct"][0]), xytext=(x_col, y), textcoords="data",
                        ha="right", va="center", fontsize=SMALL, color="#555555",
                        arrowprops={"arrowstyle": "-", "color": "#bbbbbb", "lw": 0.5, "shrinkA": 2, "shrinkB": 3})
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel(f"certified accuracy at eps = {e0} (%)")
    handles = [Line2D([], [], marker="s", mfc="none", color="#555555", ls="", label="reported (published), CIFAR-10")]
    handles += [Line2D([], [], marker=style(v)[1], color=style(v)[0], mec="black", ls="",
                       label=f"measured here, CIFAR-10 (JPEG copy), {v} bounds")
                for v in order({r["verifier"] for r in pts if r["mark"] == "measured"})]
    handles.append(Line2D([], [], color="#bbbbbb", ls=":", label="certified = clean"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.03, 1.0), fontsize=SMALL, frameon=False,
              title="up and right is better", title_fontsize=SMALL)
    f.close()


# ---- the whole report

def _notes(df, info, scaling_note, extra) -> list[str]:
    notes = []
    if not len(df):
        notes.append("The store holds no results." + (
            f" {info['networks']} network(s) trained, nothing verified yet: run the suite's verification "
            f"(python -m bench run ...) to fill it." if info["networks"] else
            " No network has been trained either: run the suite first."))
        if info["jobs"]:
            notes.append(f"{info['jobs']} job(s) recorded.")
    else:
        if df.best_lower.isna().all():
            notes.append("No sound lower bound in this store (no lower-bound verifier ran, or none was witnessed): "
                         "tightness is undefined, so the table shows costs and statuses only.")
        missing = sorted(set(info["network_ids"]) - set(df.network))
        if missing:
            notes.append(f"{len(missing)} network(s) have no results yet: " + ", ".join(missing[:5])
                         + (" ..." if len(missing) > 5 else ""))
    if info["train_failed"]:
        fails = [f"{mapping(j['spec']).get('network_id', j['key'])} ({j['status']})" for j in info["train_failed"]]
        notes.append(f"{len(fails)} job(s) that train or read a network failed: " + ", ".join(fails[:5])
                     + (" ..." if len(fails) > 5 else ""))
    if info.get("accuracy_disagrees"):
        bad = info["accuracy_disagrees"]
        notes.append(f"{len(bad)} network(s) whose trainer reported another clean accuracy than the harness measured "
                     f"on the returned network (the measured one is used): " + ", ".join(bad[:5])
                     + (" ..." if len(bad) > 5 else ""))
    if scaling_note and len(df):
        notes.append(scaling_note)
    notes += extra
    return notes


def write_report(out_dir: str, path: str | None = None, title: str | None = None) -> str:
    """Write the PDF (atomically) and, next to it, ``<stem>-data.csv`` and the tables as
    ``<stem>-*.tex``; returns the PDF's path."""
    store = Store(out_dir, create=False)
    try:
        info = store_info(store)
        df = frame(store)
        certified = store.certified()
        nf = networks_frame(store.networks())
    finally:
        store.close()
    path = path or os.path.join(out_dir, "report.pdf")
    stem = path[:-4] if path.lower().endswith(".pdf") else path
    title = title or f"lipbench report: suite {info['suite']}"
    hdf = per_norm(df)   # one row per training method and query norm: medians of comparable queries
    h = headline(hdf)
    tables, cert_table, trade = [], None, None
    fams = figures.family_frame(df)   # hand-built families (a trainer with a family parameter); often empty
    comp = sota.comparison(df, certified, nf) if len(df) else None   # None: no CIFAR networks to compare
    tmp = path + ".tmp"
    try:
        with plt.rc_context(RC), PdfPages(tmp) as pdf:
            scaling_note = figures.scaling_note(df)
            extra = []
            if len(df):
                if not figures.anytime_runs(df):
                    extra.append("No anytime bounds (no bab or mip result with bounds over time): that page is "
                                 "omitted.")
                if not certified:
                    extra.append("No certified accuracy in this store (the suite has no certify: key): that page "
                                 "is omitted.")
                elif comp is None:
                    extra.append("No CIFAR-10 network with certified accuracy for p = 2 in this store: the page "
                                 "next to the published state of the art (CIFAR-10, l2) is omitted.")
            headline_pages(pdf, title, info, hdf, h, _notes(df, info, scaling_note, extra))
            if len(df):
                figures.tightness_page(pdf, df)
                figures.cactus_page(pdf, df)
                if scaling_note is None:
                    figures.scaling_page(pdf, df)
                figures.family_pages(pdf, df, fams)
                figures.anytime_pages(pdf, df)
                cert_table = figures.certified_page(pdf, df, certified)
                trade = tradeoff_pages(pdf, nf, df, certified)
                if comp is not None:
                    published_page(pdf, comp)
                tables += evidence_pages(pdf, nf, df, certified)
                status_pages(pdf, df)
                unanswered_pages(pdf, df)
                audit_pages(pdf, df)
            pdf.infodict()["Title"] = title
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):   # a failed report leaves the previous PDF, not half a new one
            os.unlink(tmp)
    _write_data(stem, df, h, tables, cert_table, comp, fams, trade)
    return path


def _csv(frame_, path):
    tmp = path + ".tmp"
    frame_.to_csv(tmp, index=False)
    os.replace(tmp, path)


def _write_data(stem: str, df, h, tables, cert_table=None, comp=None, fams=None, trade=None):
    _csv(df, stem + "-data.csv")
    if trade is not None:
        _csv(trade, stem + "-tradeoff.csv")
    if fams is not None and len(fams):
        _csv(fams, stem + "-families.csv")
    if cert_table is not None:
        _csv(cert_table, stem + "-certified.csv")
    if comp is not None:
        _csv(sota.frame(comp), stem + "-published.csv")
        header, body = sota.table(comp)
        write_atomic(stem + "-published.tex", to_latex(
            header, body, "lipbench: clean and certified accuracy (%) measured here on CIFAR-10 (JPEG copy), next "
            "to published (reported) results on CIFAR-10, l2"))
    header, body = headline_rows(h)
    best = [i for i, r in enumerate(body) if r[-1] == "yes"]
    write_atomic(stem + "-headline.tex", to_latex(
        header, body, "lipbench headline: per training method and verifier, the median tightness (upper / best "
        "sound lower bound) and IQR, median time, share settled; best = cheapest within 10% of the tightest",
        bold_rows=best))
    if len(df):
        sh, sb = status_rows(df, "network")
        write_atomic(stem + "-status.tex", to_latex(sh, sb, "lipbench: count of each status, network x verifier"))
        ah, ab = audit_rows(df)
        write_atomic(stem + "-audit.tex", to_latex(ah, ab, "lipbench audit: every unsound result"))
    for name, header, body in tables:
        write_atomic(f"{stem}-{name}.tex", to_latex(header, body, f"lipbench evidence: {name}"))


__all__ = ["write_report"]
