"""The report's tables as data: the headline grid (training method x verifier), the status
counts, the audit list; and how a table is written as LaTeX (booktabs) next to the PDF.
Everything here is read from the tidy frame (:func:`bench.tidy.frame`) and the headline
(:func:`bench.tidy.headline`); nothing recomputes tightness or a lower bound."""
from __future__ import annotations

import math
import os

from bench.rows import mapping
from bench.tidy import row_order
from .style import (BEST, NOT_APPLICABLE as GREY, STATUS_COLORS, STATUS_ORDER, fmt_s, fmt_share, fmt_tight, order,
                    worst_status)


def _num(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


UNSOUND_CELL = STATUS_COLORS["unsound"]


def headline_grid(df, h) -> dict:
    """The headline table as the PDF draws it: {"methods": [...], "verifiers": [...],
    "cells": {(method, verifier): {"lines": [...], "color": c, "best": bool, ...}},
    "networks": {method: n}}.  A cell's first line is the median tightness (or why there is
    none), then its interquartile range, the median cost, the share settled and the
    statuses that are not ok."""
    verifiers = order(h.verifier.unique()) if len(h) else []
    methods = sorted(df.method.dropna().unique(), key=row_order) if len(df) else []
    cells = {}
    for _, r in h.iterrows():
        g = df[(df.method == r.method) & (df.verifier == r.verifier)]
        not_ok = {s: n for s, n in g.status.value_counts().items() if s != "ok"}
        med = _num(r.tight_median)
        cell = {"best": bool(r.best), "color": BEST if r.best else (UNSOUND_CELL if r.unsound else None),
                "tight": med, "settled": r.settled_share, "cost": _num(r.cost_median_s), "unsound": int(r.unsound)}
        if r.applicable == 0:
            what = ", ".join(s.replace("_", " ") for s in order_status(not_ok))
            cell.update(lines=[what or "not applicable", f"{r.n} of {r.n} queries"], color=GREY, na=True)
        else:
            if r.unsound:   # said first: a tightness that reads better than tight is wrong, not good
                lines = [f"UNSOUND {int(r.unsound)} of {r.applicable}",
                         f"median {fmt_tight(med)} (not a bound)" if med is not None else ""]
            elif med is not None:
                lines = [fmt_tight(med), f"IQR {fmt_tight(r.tight_q25)}-{fmt_tight(r.tight_q75)}"]
            elif g.value.notna().any():
                lines = ["no lower bound", "to compare"]
            else:
                lines = ["no bound", ""]
            lines += [f"median {fmt_s(r.cost_median_s)}",
                      f"{fmt_share(r.settled_share)} settled ({int(round(r.settled_share * r.applicable))}/"
                      f"{r.applicable})"]
            extra = []
            for s in order_status(not_ok):
                n = not_ok[s]
                if s == "timeout" and g[g.status == "timeout"].value.notna().any():
                    extra.append(f"timeout {n} (anytime)")
                elif s == "unsound":
                    continue   # the cell's first line
                else:
                    extra.append(f"{s.replace('_', ' ')} {n}")
            lines.append(", ".join(extra))
            cell.update(lines=lines, na=False)
        cells[(r.method, r.verifier)] = cell
    nets = df.groupby("method").network.nunique().to_dict() if len(df) else {}
    # the verifier's kind as it declares it: exact if any of its rows says so (a timed-out exact
    # verifier stores an upper bound), else upper
    kinds = {v: "exact" if (df[df.verifier == v].kind == "exact").any() else "upper" for v in verifiers}
    return {"methods": methods, "verifiers": verifiers, "cells": cells, "networks": nets, "kinds": kinds}


def order_status(statuses) -> list[str]:
    s = set(statuses)
    return [x for x in STATUS_ORDER if x in s] + sorted(s - set(STATUS_ORDER))


def headline_rows(h) -> tuple[list[str], list[list[str]]]:
    """The headline in long form for LaTeX: one row per (method, verifier)."""
    header = ["method", "verifier", "tightness (median)", "IQR", "median time", "settled", "statuses", "best"]
    body = []
    for m in sorted(h.method.unique(), key=row_order) if len(h) else []:
        g = h[h.method == m]
        for v in order(g.verifier):
            r = g[g.verifier == v].iloc[0]
            body.append([m, v, fmt_tight(r.tight_median),
                         f"{fmt_tight(r.tight_q25)}-{fmt_tight(r.tight_q75)}" if _num(r.tight_median) else "-",
                         fmt_s(r.cost_median_s), fmt_share(r.settled_share), r.statuses, "yes" if r.best else ""])
    return header, body


def status_counts(df, by: str = "network"):
    """{row label: {verifier: {status: count}}} and the row labels and verifiers in order."""
    counts: dict = {}
    for (k, v, s), n in df.groupby([by, "verifier", "status"]).size().items():
        counts.setdefault(k, {}).setdefault(v, {})[s] = int(n)
    return counts, sorted(counts), order(df.verifier.unique())


def status_rows(df, by: str = "network") -> tuple[list[str], list[list[str]]]:
    counts, keys, verifiers = status_counts(df, by)
    body = []
    for k in keys:
        body.append([k] + [", ".join(f"{s} {c[s]}" for s in order_status(c)) if (c := counts[k].get(v)) else "-"
                           for v in verifiers])
    return [by] + verifiers, body


def cell_color(counts: dict | None) -> str:
    return STATUS_COLORS.get(worst_status(counts), "#ffffff") if counts else "#ffffff"


def audit_note_text(audit_json) -> str:
    """What the audit said about an unsound row, in words."""
    a = mapping(audit_json)
    was = f" (was {a['was']})" if a.get("was") else ""
    if "lower_verifier" in a:
        return (f"below the sound lower bound {fmt_num6(a.get('lower'))} of {a['lower_verifier']}"
                f" (rtol {a.get('tolerance', {}).get('rtol', '?')}){was}")
    w = a.get("witness", {}) if isinstance(a.get("witness"), dict) else {}
    if w.get("failed"):
        return f"lower bound claim {fmt_num6(a.get('claimed_lower'))} not shown by its witness: {w['failed']}{was}"
    return str(audit_json)   # a note of another kind, as stored


def fmt_num6(v) -> str:
    f = _num(v)
    return "-" if f is None else f"{f:.6g}"


def audit_rows(df) -> tuple[list[str], list[list[str]]]:
    header = ["network", "verifier", "query", "value", "audit note"]
    bad = df[df.status == "unsound"]
    body = [[r.network, r.verifier, r.query, fmt_num6(r.value), audit_note_text(r.audit)]
            for r in bad.itertuples()]
    return header, body


#: statuses where a verifier gave no answer to a query (a timeout that kept a bound did answer)
UNANSWERED = ("unsupported", "not_installed", "error", "oom", "timeout", "license_limit")


def _reason(r) -> str:
    """Why a row has no answer, in words that are the same across networks: the stored
    error's first line (numbers of a timeout's progress left out)."""
    if r.status == "timeout":
        return f"no bound within its {r.wall_s:.0f} s budget" if r.wall_s == r.wall_s and r.wall_s else "timeout"
    first = (r.error or "").strip().splitlines()[0] if (r.error or "").strip() else r.status.replace("_", " ")
    return first[:240]


def unanswered_rows(df) -> tuple[list[str], list[list[str]]]:
    """Where a verifier could not answer, and why: one row per (verifier, status, reason)
    with the networks (and how many queries) it holds for; most queries first."""
    header = ["verifier", "status", "why", "networks (queries)"]
    miss = df[df.status.isin(UNANSWERED) & ~((df.status == "timeout") & df.value.notna())]
    groups: dict = {}
    for r in miss.itertuples():
        key = (r.verifier, r.status, _reason(r))
        groups.setdefault(key, {}).setdefault(r.network, 0)
        groups[key][r.network] += 1
    body = []
    for (v, st, why), nets in sorted(groups.items(), key=lambda kv: (-sum(kv[1].values()), kv[0])):
        names = sorted(nets)
        shown = ", ".join(f"{n} ({nets[n]})" for n in names[:8]) + (f", +{len(names) - 8} more" if len(names) > 8
                                                                     else "")
        body.append([v, st.replace("_", " "), why, shown])
    return header, body


# ---- LaTeX

_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(s) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(s))


def to_latex(header: list[str], body: list[list[str]], caption: str = "", bold_rows=()) -> str:
    """A booktabs tabular (``\\toprule``, ``\\midrule``, ``\\bottomrule``), escaped, with
    the caption as a comment above it."""
    lines = [f"% {caption}" if caption else "% lipbench table",
             "% needs \\usepackage{booktabs}",
             "\\begin{tabular}{" + "l" * len(header) + "}", "\\toprule",
             " & ".join(tex_escape(x) for x in header) + r" \\", "\\midrule"]
    if not body:
        lines.append(f"\\multicolumn{{{len(header)}}}{{l}}{{(no rows)}} \\\\")
    for i, row in enumerate(body):
        cells = [tex_escape(x) for x in row]
        if i in bold_rows:
            cells = [f"\\textbf{{{c}}}" if c else c for c in cells]
        lines.append(" & ".join(cells) + r" \\")
    lines += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(lines)


def write_atomic(path: str, text: str) -> str:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


__all__ = ["headline_grid", "headline_rows", "status_counts", "status_rows", "audit_rows", "to_latex",
           "write_atomic"]
