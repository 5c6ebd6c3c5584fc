"""The page "Next to the published state of the art": the clean and certified robust
accuracy measured in this store on CIFAR-10, next to the published numbers
(:mod:`reports.literature` reads them); every row marked "measured" or "reported", with
the network's size and its training budget.

A measured row is one training configuration of the store (everything but the seed,
:func:`reports.evidence.network_info`) on ``cifar`` with certified accuracy for p = 2
(the ``certified`` table, :mod:`bench.certify`): the mean over its seeds, for the
verifier whose bounds certify the most at the first radius.  The page exists only when
the store has such networks.
"""
from __future__ import annotations

import os

from .evidence import network_info
from .literature import DATASETS, EPS_GRID, EPS_TOL, MEASURED_DATASET, PUBLISHED_DIR, Source, load_published
from .style import fmt_count, fmt_duration, fmt_eps, order

# ---- the measured rows

def eps_column(e: float, columns) -> int | None:
    """The index of the column whose radius ``e`` is (within EPS_TOL), or None."""
    for i, c in enumerate(columns):
        if abs(float(e) - c) <= EPS_TOL:
            return i
    return None


def _parameters(n: dict, metrics: dict) -> int | None:
    """Recorded at training time; else counted from the stored network, if its file is there."""
    if isinstance(metrics.get("parameters"), int):
        return metrics["parameters"]
    if n.get("path") and os.path.exists(n["path"]):
        from bench.network import load, parameter_count
        try:
            return parameter_count(load(n["path"])[0])
        except Exception:   # an unreadable file: the size is unknown, the page still stands
            return None
    return None


def _budget(infos: list[dict]) -> str:
    """'30 epochs, 12 min on cpu': the training record of the configuration's networks."""
    m = [i["metrics"] for i in infos]
    secs = [x["train_s"] for x in m if isinstance(x.get("train_s"), (int, float))]
    epochs = {x.get("epochs_done") for x in m if x.get("epochs_done") is not None}
    if not epochs:
        epochs = {i["params"].get("epochs") for i in infos} - {None}
    devices = sorted({str(x["device"]) for x in m if x.get("device")})
    parts = []
    if epochs:
        parts.append(f"{'/'.join(str(e) for e in sorted(epochs))} epochs")
    if secs:
        parts.append(fmt_duration(sum(secs) / len(secs)) + (f" on {', '.join(devices)}" if devices else ""))
    return ", ".join(parts) or "not recorded"


def _dataset_label(ds, recorded: str | None = None) -> str:
    """The data a network was trained on: the loader's own description recorded at training
    ("CIFAR-10 (JPEG copy)" or "CIFAR-10"), else, for an older store, what lipbench's
    reference copy is."""
    name = ds if isinstance(ds, str) else ds.get("name", "")
    label = recorded or MEASURED_DATASET.get(name, name)
    sub = ds.get("test_subset") if isinstance(ds, dict) else None
    return label + (f", {sub} test images" if sub else "")


def measured(df, certified: list[dict], nf, columns=EPS_GRID) -> list[dict]:
    """One row per configuration of the store's CIFAR networks (``nf``: the networks
    frame) with certified accuracy at p = 2 (see the module's doc)."""
    by_id = {n["network"]: n for n in nf.to_dict("records")}
    cert = [c for c in certified if c["p"] == "2" and c["network"] in by_id
            and network_info(by_id[c["network"]])["dataset"] in MEASURED_DATASET]
    if not cert:
        return []
    first = df.drop_duplicates("network").set_index("network") if len(df) else None
    configs: dict[str, dict] = {}
    for nid in sorted({c["network"] for c in cert}):
        n = by_id[nid]
        info = network_info(n)
        info["params"] = n["params"]
        info["parameters"] = _parameters(n, info["metrics"])
        info["dataset_raw"] = n["dataset_spec"]
        known = first is not None and nid in first.index
        info["method"] = first.at[nid, "method"] if known else n["trainer"]
        arch = first.at[nid, "arch"] if known else None
        info["arch"] = arch if isinstance(arch, str) else (n.get("description") or "-")
        configs.setdefault(info["config"], {"infos": []})["infos"].append(info)
    rows = []
    for config, g in sorted(configs.items()):
        ids = {i["id"] for i in g["infos"]}
        acc: dict[tuple, dict] = {}     # (verifier, params) -> {"clean": {net: a}, col: {net: a}}
        for c in cert:
            if c["network"] not in ids:
                continue
            a = acc.setdefault((c["verifier"], c["verifier_params"]), {"clean": {}})
            if c["clean_acc"] is not None:
                a["clean"][c["network"]] = c["clean_acc"]
            j = eps_column(c["eps"], columns)
            if j is not None:
                a.setdefault(j, {})[c["network"]] = c["certified_acc"]

        def mean(d):
            return 100 * sum(d.values()) / len(d) if d else None

        def rank(k):    # the most certified at the first radius any verifier of the configuration has
            js = sorted(j for a in acc.values() for j in a if j != "clean")
            v = mean(acc[k].get(js[0], {})) if js else None
            return (-(v if v is not None else -1), order([x[0] for x in acc]).index(k[0]), k[1])
        best = min(acc, key=rank)
        a = acc[best]
        infos = g["infos"]
        sizes = sorted({i["parameters"] for i in infos} - {None})
        info = infos[0]
        multi = len({p for v, p in acc if v == best[0]}) > 1
        margin = f" margin={info['margin']:g}" if info["margin"] else ""
        rows.append({
            "mark": "measured", "method": info["method"] + margin, "model": info["arch"],
            "dataset": _dataset_label(info["dataset_raw"], info["metrics"].get("data")), "p": "2",
            "parameters": sizes[0] if len(sizes) == 1 else None,
            "parameters_text": "/".join(fmt_count(s) for s in sizes) or "-",
            "budget": _budget(infos) + (f" (mean of {len(infos)} seeds)" if len(infos) > 1 else ""),
            "clean_pct": mean(a["clean"]), "certified_pct": [mean(a.get(j, {})) for j in range(len(columns))],
            "source": f"this store: {best[0]}{' ' + best[1] if multi else ''} bounds, {len(infos)} network(s)",
            "verifier": best[0], "config": config, "cite": None})
    return rows


def comparison(df, certified: list[dict], nf, folder: str = PUBLISHED_DIR) -> dict | None:
    """The page's data: {"columns": radii, "rows": measured and reported rows (dicts),
    "sources": [Source]}, or None when the store has no CIFAR network with certified
    accuracy at p = 2 (then there is no page).  The published numbers are read only then."""
    if not certified:
        return None
    ours = measured(df, certified, nf, EPS_GRID)
    if not ours:
        return None
    pub = [r for r in load_published(folder) if DATASETS[r.dataset] == "cifar" and r.p == "2"]
    columns = list(EPS_GRID) + sorted({r.eps for r in pub if eps_column(r.eps, EPS_GRID) is None})
    sources: list[Source] = []
    rows = list(ours)
    for r in pub:
        if r.source not in sources:
            sources.append(r.source)
        cert = [None] * len(columns)
        cert[eps_column(r.eps, columns)] = r.certified_pct
        rows.append({"mark": "reported", "method": r.method, "model": r.model, "dataset": r.dataset, "p": r.p,
                     "parameters": r.parameters, "parameters_text": fmt_count(r.parameters),
                     "budget": r.budget or "not stated", "clean_pct": r.clean_pct, "certified_pct": cert,
                     "source": f"{r.source.cite()} [{sources.index(r.source) + 1}]", "verifier": None,
                     "config": None, "cite": r.where})
    first = [r["certified_pct"][0] for r in rows]
    # by certified accuracy at the first radius, best first; rows without it last
    rows = [r for _, r in sorted(zip(first, rows), key=lambda x: (x[0] is None, -(x[0] or 0)))]
    return {"columns": columns, "rows": rows, "sources": sources}


def _pct(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def table(comp: dict) -> tuple[list[str], list[list[str]]]:
    header = (["", "method", "model", "data set", "parameters", "training budget", "clean %"]
              + [f"certified % at {fmt_eps(e)}" for e in comp["columns"]] + ["source"])
    body = [[r["mark"], r["method"], r["model"], r["dataset"], r["parameters_text"], r["budget"], _pct(r["clean_pct"])]
            + [_pct(v) for v in r["certified_pct"]] + [r["source"]] for r in comp["rows"]]
    return header, body


def frame(comp: dict):
    """The page's table as a DataFrame (``<stem>-published.csv``): exact parameter counts,
    a column per radius."""
    import pandas as pd
    recs = []
    for r in comp["rows"]:
        d = {k: r[k] for k in ("mark", "method", "model", "dataset", "p", "parameters", "budget", "clean_pct")}
        d.update({f"certified_pct_{fmt_eps(e)}": v for e, v in zip(comp["columns"], r["certified_pct"])})
        d.update(source=r["source"], verifier=r["verifier"], configuration=r["config"], published_in=r["cite"])
        recs.append(d)
    out = pd.DataFrame(recs)
    out["parameters"] = out["parameters"].astype("Int64")
    return out.round(4)


__all__ = ["comparison", "measured", "table", "frame"]
