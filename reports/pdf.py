"""The PDF report: a summary page, results tables, and bound tightness (upper bound /
best sound lower bound) against verification time, log scale, per network and query."""
from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from datetime import datetime, timezone

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from bench.rows import best_lower_values, cost_s, query_key, tightness  # noqa: E402
from bench.store import Store  # noqa: E402

from . import evidence  # noqa: E402

log = logging.getLogger(__name__)
ROWS_PER_PAGE = 28
PER_NETWORK_PAGES_UP_TO = 36  # beyond this many networks the overview pages stand alone
A4 = (8.27, 11.69)
A4L = (11.69, 8.27)


def _fmt(v, digits=4):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}g}"


_PLAIN = FuncFormatter(lambda v, _: f"{v:g}")


def _log_axes(ax, title: str):
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.axhline(1.1, color="grey", lw=0.5, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(_PLAIN)
    ax.yaxis.set_minor_formatter(_PLAIN)
    ax.set_title(title, fontsize=7)
    ax.tick_params(labelsize=6, which="both")
    ax.set_xlabel("verifier time, solve_s (s)", fontsize=7)
    ax.set_ylabel("upper / best lower", fontsize=7)


def _points(rows, best, key):
    """(row, seconds (rows.cost_s), tightness, unsound) for the upper/exact rows of one query."""
    for r in rows:
        if (r["p"], r["target"], r["domain"]) != key:
            continue
        t = tightness(r, best)
        if t is not None and cost_s(r):
            yield r, max(cost_s(r), 1e-4), t, r["status"] == "unsound"


def _table_pages(pdf, title: str, header: list[str], body: list[list[str]], colors=None, widths=None):
    for start in range(0, max(len(body), 1), ROWS_PER_PAGE):
        chunk = body[start:start + ROWS_PER_PAGE] or [["(no rows)"] + [""] * (len(header) - 1)]
        fig = plt.figure(figsize=A4L)
        fig.suptitle(title + (f" (rows {start + 1}-{start + len(chunk)} of {len(body)})" if len(body) > ROWS_PER_PAGE else ""),
                     fontsize=11)
        ax = fig.add_axes([0.02, 0.02, 0.96, 0.9])
        ax.axis("off")
        t = ax.table(cellText=chunk, colLabels=header, loc="upper center", cellLoc="left", colWidths=widths)
        t.auto_set_font_size(False)
        t.set_fontsize(6.5)
        t.scale(1, 1.25)
        if colors:
            for i, row_colors in enumerate(colors[start:start + ROWS_PER_PAGE]):
                for j, c in enumerate(row_colors):
                    if c:
                        t[i + 1, j].set_facecolor(c)
        pdf.savefig(fig)
        plt.close(fig)


def write_report(out_dir: str, path: str | None = None, title: str | None = None) -> str:
    store = Store(out_dir, create=False)
    rows = store.joined()
    nets = [dict(n) for n in store.networks()]
    jobs = [dict(j) for j in store.jobs()]
    certified = store.certified()
    store.close()
    path = path or os.path.join(out_dir, "report.pdf")
    best = best_lower_values(rows)
    status_counts = defaultdict(int)
    for r in rows:
        status_counts[r["status"]] += 1
    unsound = [r for r in rows if r["status"] == "unsound"]
    failed_train = [j for j in jobs if j["type"] == "train" and j["status"] != "ok"]
    tmp = path + ".tmp"
    with PdfPages(tmp) as pdf:
        # --- page 1: summary
        fig = plt.figure(figsize=A4)
        lines = [title or f"lipbench report: {os.path.basename(os.path.abspath(out_dir))}",
                 f"written {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} from {os.path.abspath(store.path)}", "",
                 f"networks: {len(nets)}   results: {len(rows)}   "
                 + "   ".join(f"{k}: {v}" for k, v in sorted(status_counts.items())), ""]
        if unsound:
            lines.append(f"AUDIT: {len(unsound)} UNSOUND result(s): an upper bound below a sound lower bound")
            for r in unsound[:12]:
                a = json.loads(r["audit"] or "{}")
                lines.append(f"  {r['verifier']} on {r['network']} p={r['p']} {r['target']}: "
                             f"{_fmt(r['value'], 6)} < lower {_fmt(a.get('lower'), 6)} ({a.get('lower_verifier')})")
        else:
            lines.append("audit: clean (no upper bound below a sound lower bound, rtol 1e-6)")
        if failed_train:
            lines.append("")
            lines.append(f"{len(failed_train)} training job(s) failed:")
            for j in failed_train[:8]:
                lines.append(f"  {json.loads(j['spec']).get('network_id')}: {j['status']} {j['error'] or ''}"[:110])
        lines += ["", "Tightness = upper bound / best sound lower bound of the same network and query",
                  "(1 = tight; the lower bound is the norm of a real Jacobian, so the truth lies in between).",
                  "p is the input and output norm; target 'full' bounds the whole output, 'i-j' the margin f_i - f_j.",
                  "", "Networks:"]
        for n in nets:
            tp = json.loads(n["trainer_params"])
            lines.append(f"  {n['id']}: acc {_fmt(n['clean_acc'], 3)}, {n['description']}"[:120])
            lines.append(f"      {n['trainer']} {json.dumps(tp, sort_keys=True)}"[:120])
        fig.text(0.06, 0.96, "\n".join(lines[:70]), va="top", ha="left", family="monospace", fontsize=6.8)
        pdf.savefig(fig)
        plt.close(fig)

        _evidence_pages(pdf, nets, rows, certified)

        # --- overview: one panel per query, every network, marker = verifier
        queries = sorted({(r["p"], r["target"], r["domain"]) for r in rows})
        verifiers = sorted({r["verifier"] for r in rows if r["kind"] != "lower"})
        markers = dict(zip(verifiers, "osD^vP*Xh<>" * 3))
        netnames = sorted({r["network"] for r in rows})
        colors = {n: plt.cm.tab20(i % 20) for i, n in enumerate(netnames)}
        for start in range(0, len(queries), 6):
            chunk = queries[start:start + 6]
            ncol = min(3, len(chunk))
            fig, axes = plt.subplots(math.ceil(len(chunk) / ncol), ncol, figsize=A4L, squeeze=False)
            fig.suptitle("Tightness vs verification time, all networks (colour = network, marker = verifier)",
                         fontsize=11)
            for ax, key in zip(axes.flat, chunk):
                dom_s = "global" if key[2] == '"global"' else "box"
                for r, x, y, bad in _points(rows, best, key):
                    ax.scatter([x], [y], marker=markers[r["verifier"]], s=30,
                               color="red" if bad else colors[r["network"]], edgecolors="black" if bad else None)
                _log_axes(ax, f"p={key[0]}, target {key[1]}, {dom_s}")
            for ax in list(axes.flat)[len(chunk):]:
                ax.axis("off")
            handles = [plt.Line2D([], [], marker=markers[v], ls="", color="grey", label=v) for v in verifiers]
            handles += [plt.Line2D([], [], marker="o", ls="", color=colors[n], label=n[:40]) for n in netnames[:20]]
            fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=6)
            fig.tight_layout(rect=(0, 0.12, 1, 0.95))
            pdf.savefig(fig)
            plt.close(fig)

        _anytime_pages(pdf, rows)

        # --- one page per query, one panel per network (for suites small enough to read so)
        for key in (queries if len(netnames) <= PER_NETWORK_PAGES_UP_TO else []):
            qnets = sorted({r["network"] for r, *_ in _points(rows, best, key)})
            dom_s = "global" if key[2] == '"global"' else "box"
            for start in range(0, len(qnets), 12):
                chunk = qnets[start:start + 12]
                ncol = min(3, len(chunk))
                fig, axes = plt.subplots(math.ceil(len(chunk) / ncol), ncol, figsize=A4L, squeeze=False)
                fig.suptitle(f"Tightness (upper / best lower) vs verification time: p={key[0]}, "
                             f"target {key[1]}, {dom_s}", fontsize=11)
                for ax, net in zip(axes.flat, chunk):
                    for r, x, y, bad in _points(rows, best, key):
                        if r["network"] == net:
                            ax.scatter([x], [y], marker=markers[r["verifier"]], color="red" if bad else None,
                                       label=r["verifier"] + (" UNSOUND" if bad else ""), s=36)
                    _log_axes(ax, net[:48])
                    ax.legend(fontsize=6)
                for ax in list(axes.flat)[len(chunk):]:
                    ax.axis("off")
                fig.tight_layout(rect=(0, 0, 1, 0.95))
                pdf.savefig(fig)
                plt.close(fig)
        # --- appendix: every result
        header = ["network", "acc", "p", "target", "verifier", "kind", "status", "value", "tightness", "solve s",
                  "peak MB"]
        body, colors = [], []
        for r in rows:
            ratio = tightness(r, best)
            body.append([r["network"][:44], _fmt(r["clean_acc"], 3), r["p"], r["target"], r["verifier"], r["kind"],
                         r["status"], _fmt(r["value"], 6), _fmt(ratio, 4), _fmt(cost_s(r), 3),
                         _fmt(r["peak_mem_mb"], 4)])
            c = "#ffb3b3" if r["status"] == "unsound" else ("#fff2b3" if r["status"] != "ok" else None)
            colors.append([c] * len(header))
        _table_pages(pdf, "Appendix: every result", header, body, colors,
                     widths=[0.3, 0.05, 0.03, 0.05, 0.08, 0.06, 0.08, 0.1, 0.08, 0.07, 0.07])

        missing_lb = sorted({r["network"] for r in rows if r["kind"] != "lower"
                             and query_key(r) not in best})
        if missing_lb:
            log.info("no sound lower bound for %d network(s): tightness not plotted for them", len(missing_lb))
    os.replace(tmp, path)
    return path


ANYTIME_PANELS = 24


def _anytime_pages(pdf, rows):
    """bab's upper and lower bounds over time (stats ``trace``: [t, lower, upper] rows),
    divided by the final value so that 1 is where a closed run ends.  The runs that did
    not close come first, then the slowest; at most ANYTIME_PANELS panels.  (mip keeps
    no trace: its solver reports only the final bounds, in the stats.)"""
    runs = []
    for r in rows:
        if r["verifier"] == "bab" and r["value"]:
            st = json.loads(r["stats"] or "{}")
            if st.get("trace"):
                runs.append((r, st))
    if not runs:
        return
    runs.sort(key=lambda x: (x[0]["kind"] == "exact", -(x[0]["wall_s"] or 0)))
    runs = runs[:ANYTIME_PANELS]
    for start in range(0, len(runs), 6):
        chunk = runs[start:start + 6]
        fig, axes = plt.subplots(3, 2, figsize=A4, squeeze=False)
        fig.suptitle("bab: upper (solid) and lower (dashed) bound over time, / final value; not closed first",
                     fontsize=10)
        for ax, (r, st) in zip(axes.flat, chunk):
            v = float(r["value"])
            tr = [(max(float(t), 1e-3), float(lo) / v, float(up) / v) for t, lo, up in st["trace"]]
            ax.step([t for t, _, _ in tr], [u for _, _, u in tr], where="post", color="tab:blue", label="upper")
            ax.step([t for t, _, _ in tr], [lo for _, lo, _ in tr], where="post", ls="--", color="tab:orange",
                    label="lower")
            ax.set_xscale("log")
            ax.ticklabel_format(axis="y", useOffset=False)
            ax.set_xlabel("seconds", fontsize=7)
            ax.tick_params(labelsize=6)
            state = f"exact {v:.6g}" if r["kind"] == "exact" else f"{r['status']}: {v:.4g} (gap {st.get('gap', 0):.2g})"
            ax.set_title(f"{r['network'][:44]}\np={r['p']} {r['target']}: {state}", fontsize=7)
            ax.legend(fontsize=6)
        for ax in list(axes.flat)[len(chunk):]:
            ax.axis("off")
        fig.tight_layout(rect=(0, 0, 1, 0.96))
        pdf.savefig(fig)
        plt.close(fig)


def _text_page(pdf, title: str, lines: list[str], size=7.5):
    fig = plt.figure(figsize=A4L)
    fig.suptitle(title, fontsize=11)
    import textwrap
    wrapped = []
    for l in lines:
        wrapped += textwrap.wrap(l, 150, subsequent_indent="      ") or [""]
    fig.text(0.04, 0.92, "\n".join(wrapped[:60]), va="top", ha="left", family="monospace", fontsize=size)
    pdf.savefig(fig)
    plt.close(fig)


def _evidence_pages(pdf, nets, rows, certified):
    """The paper's claims with their numbers, the per-configuration table, the ablation
    of the obstructions, and certified accuracy against eps."""
    if not nets or not rows:
        return
    claim_lines = evidence.claims(nets, rows)
    intro = ["What the numbers say about the claims of arXiv 2603.28113 (measured on this store; "
             "TB = trivial bound, lower = best sound lower bound of the same network and query).", ""]
    if not claim_lines:
        claim_lines = ["(no tb-penalty networks with saturating activations, or no lower bounds: "
                       "the claims are not tested by this suite)"]
    spaced = []
    for l in claim_lines:
        if not l.startswith(" ") and spaced:
            spaced.append("")
        spaced.append(l)
    _text_page(pdf, "Evidence: the paper's claims", intro + spaced)

    table = evidence.config_table(nets, rows, certified)
    grids = {p: sorted({e for r in table for e in r[f"cert_{p}"]}) for p in ("2", "inf")}
    header = ["configuration", "seeds", "acc", "TB p=2", "lower p=2", "TB/lower p=2", "TB p=inf", "lower p=inf",
              "TB/lower p=inf", "cert. acc p=2 @ " + "/".join(f"{e:g}" for e in grids["2"]),
              "cert. acc p=inf @ " + "/".join(f"{e:g}" for e in grids["inf"])]

    def cert(d):
        return "/".join(f"{d[e]:.2f}" if e in d else "-" for e in sorted(d)) or "-"
    body, colors = [], []
    for r in table:
        body.append([r["config"][:52], str(r["n"]), _fmt(r["clean_acc"], 3), _fmt(r["tb_2"]), _fmt(r["lower_2"]),
                     _fmt(r["ratio_2"], 3) + (f" (max {_fmt(r['ratio_max_2'], 3)})" if r["ratio_max_2"] else ""),
                     _fmt(r["tb_inf"]), _fmt(r["lower_inf"]),
                     _fmt(r["ratio_inf"], 3) + (f" (max {_fmt(r['ratio_max_inf'], 3)})" if r["ratio_max_inf"] else ""),
                     cert(r["cert_2"]), cert(r["cert_inf"])])
        colors.append([None] * 5 + [("#c8f0c8" if (r["ratio_max_2"] or 9) <= evidence.TIGHT else None)] + [None] * 2
                      + [("#c8f0c8" if (r["ratio_max_inf"] or 9) <= evidence.TIGHT else None)] + [None] * 2)
    _table_pages(pdf, "Per configuration (mean over seeds; green: TB within 10% of the lower bound on every seed)",
                 header, body, colors, widths=[0.22, 0.03, 0.04, 0.06, 0.06, 0.09, 0.06, 0.06, 0.09, 0.145, 0.145])

    abl = evidence.ablation(nets, rows)
    _table_pages(pdf, "Obstructions: dead neurons (zero-derivative fraction), biases, conditioning "
                 "(sigma_max/sigma_min, median over layers: init -> trained)",
                 ["configuration", "zero-derivative fraction", "spread init -> trained", "TB/lower p=2",
                  "TB/lower p=inf"], abl, widths=[0.34, 0.14, 0.24, 0.14, 0.14])

    # certified accuracy vs eps, one panel per (data set, p), one line per configuration
    panels = defaultdict(lambda: defaultdict(list))
    for r in table:
        ds = r["members"][0]["dataset"]
        for p in ("2", "inf"):
            for e, a in r[f"cert_{p}"].items():
                panels[(ds, p)][r["config"]].append((e, a))
    if panels:
        keys = sorted(panels)
        ncol = min(2, len(keys))
        fig, axes = plt.subplots(math.ceil(len(keys) / ncol), ncol, figsize=A4L, squeeze=False)
        fig.suptitle("Certified robust accuracy from the trivial bound (all class pairs), mean over seeds",
                     fontsize=11)
        for ax, key in zip(axes.flat, keys):
            for i, (config, pts) in enumerate(sorted(panels[key].items())):
                pts.sort()
                ax.plot([e for e, _ in pts], [a for _, a in pts], marker="o", ms=3, lw=1,
                        color=plt.cm.tab20(i % 20), label=config.split(" ", 1)[1][:44])
            ax.set_title(f"{key[0]}, p={key[1]}", fontsize=8)
            ax.set_xlabel("eps (input p-norm radius)", fontsize=7)
            ax.set_ylabel("certified accuracy", fontsize=7)
            ax.set_ylim(0, 1)
            ax.tick_params(labelsize=6)
            ax.legend(fontsize=4.5, ncol=2)
        for ax in list(axes.flat)[len(keys):]:
            ax.axis("off")
        fig.tight_layout(rect=(0, 0, 1, 0.95))
        pdf.savefig(fig)
        plt.close(fig)
