"""The page "Next to the published state of the art": the clean and certified robust
accuracy measured in this store on CIFAR-10, next to the published numbers; every row
marked "measured" or "reported", with the network's size and its training budget.

The published numbers are data, kept with their sources in ``reports/published/``:
``sources.csv`` (one row per paper) and one file per data set and kind, one row per
published result: certified robust accuracy (``cifar10.csv``, header RESULT_COLUMNS) or
certified Lipschitz bounds with the clean accuracy of the networks they bound
(``lipschitz_mnist.csv``, header LIPSCHITZ_COLUMNS).  :func:`load_folder` is the one
place that reads and validates them (a file's kind is its header);
:func:`load_published` and :func:`load_lipschitz` are its two halves.  A malformed file
is a one-line :class:`bench.api.UserError` naming the file and line.  No published
number is written in code.

A measured row is one training configuration of the store (everything but the seed,
:func:`reports.evidence.network_info`) on ``cifar`` with certified accuracy for p = 2
(the ``certified`` table, :mod:`bench.certify`): the mean over its seeds, for the
verifier whose bounds certify the most at the first radius.  The page exists only when
the store has such networks.
"""
from __future__ import annotations

import csv
import glob
import json
import math
import os
import re
from dataclasses import dataclass

from bench.api import UserError

from .style import fmt_count, fmt_duration, order

PUBLISHED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "published")
SOURCE_COLUMNS = ("key", "authors", "title", "venue", "year", "arxiv", "note")
RESULT_COLUMNS = ("method", "dataset", "norm", "eps", "clean_pct", "certified_pct", "model", "parameters", "budget",
                  "source")
#: a published row's norm -> lipbench's name of p
NORMS = {"l1": "1", "l2": "2", "linf": "inf"}
#: a published data set -> the lipbench data set it is compared with
DATASETS = {"CIFAR-10": "cifar"}
#: how a measured row names its data: lipbench's reference CIFAR-10 is a JPEG copy of the
#: original (quality 75), so its numbers are not on the published images
MEASURED_DATASET = {"cifar": "CIFAR-10 (JPEG copy)"}
#: the l2 radii the CIFAR-10 literature reports (units of [0, 1] pixels); a column each
EPS_GRID = (36 / 255, 72 / 255, 108 / 255)
LIPSCHITZ_COLUMNS = ("method", "dataset", "norm", "lipschitz_bound", "bound_kind", "input_scaling", "clean_pct",
                     "model", "parameters", "source")
#: a published Lipschitz bound's data set -> the lipbench data sets it is compared with
LIPSCHITZ_DATASETS = {"MNIST": ("mnist", "mnist5k")}
#: how the published number bounds the constant
BOUND_KINDS = ("certified upper", "by construction", "estimate")
#: the inputs the bound is over: "pixels/255" (values in [0, 1], as lipbench's data),
#: "standardised" ((x - mean) / std: the constant on [0, 1] pixels is the published one
#: times 1 / std), "unknown" (the source does not say); only "pixels/255" is compared
INPUT_SCALINGS = ("pixels/255", "standardised", "unknown")
COMPARABLE_SCALING = "pixels/255"
EPS_TOL = 1e-6            # a stored eps (a float) is one of the grid's within this


@dataclass(frozen=True)
class Source:
    key: str
    authors: str
    title: str
    venue: str
    year: int
    arxiv: str
    note: str

    def cite(self) -> str:
        """'Prach et al. 2024'."""
        names = [a.strip() for a in self.authors.split(",") if a.strip()]
        last = names[0].split()[-1] if names else self.key
        return f"{last}{' et al.' if len(names) > 2 else (' and ' + names[1].split()[-1] if len(names) == 2 else '')}" \
               f" {self.year}"

    def reference(self) -> str:
        return (f"{self.authors}: {self.title}. {self.venue} {self.year}" + (f", arXiv {self.arxiv}" if self.arxiv
                                                                             else "") + ".")


@dataclass(frozen=True)
class Published:
    method: str
    dataset: str
    p: str
    eps: float
    eps_text: str
    clean_pct: float
    certified_pct: float
    model: str
    parameters: int | None
    budget: str
    source: Source
    where: str       # "cifar10.csv, line 7"


@dataclass(frozen=True)
class PublishedBound:
    method: str
    dataset: str
    p: str
    bound: float
    kind: str             # one of BOUND_KINDS
    input_scaling: str    # one of INPUT_SCALINGS
    clean_pct: float
    model: str
    parameters: int | None
    source: Source
    where: str            # "lipschitz_mnist.csv, line 7"


# ---- reading the published numbers

def _lines(path: str):
    """(line number, stripped cells) of each line of a CSV file that is not a comment
    (empty, or starting with '#'); an unreadable or malformed file is a one-line UserError."""
    try:
        fh = open(path, newline="", encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot read the published numbers {path}: {e.strerror}") from None
    with fh:
        reader = csv.reader(fh)
        try:
            for cells in reader:
                if not cells or not "".join(cells).strip() or cells[0].lstrip().startswith("#"):
                    continue
                yield reader.line_num, [c.strip() for c in cells]
        except csv.Error as e:
            raise UserError(f"{path}, line {reader.line_num}: not CSV ({e})") from None


def _rows(path: str, columns: tuple):
    """(line number, {column: cell}) of a CSV file whose header is ``columns``."""
    header = None
    for line, cells in _lines(path):
        if header is None:
            if tuple(cells) != columns:
                raise UserError(f"{path}, line {line}: the header must be {','.join(columns)}, not "
                                f"{','.join(cells)}")
            header = cells
            continue
        if len(cells) != len(columns):
            raise UserError(f"{path}, line {line}: {len(cells)} cells, the header has {len(columns)}")
        yield line, dict(zip(columns, cells))
    if header is None:
        raise UserError(f"{path}: no header line ({','.join(columns)})")


def _number(v: str, what: str, lo: float, hi: float) -> float:
    try:
        f = float(v)
    except ValueError:
        raise ValueError(f"{what} {v!r} is not a number") from None
    if not (lo <= f <= hi):
        raise ValueError(f"{what} {v} is outside [{lo:g}, {hi:g}]")
    return f


def _eps(v: str) -> float:
    """'36/255' or '0.1411' -> a positive radius."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*/\s*([0-9.]+)\s*", v)
    try:
        e = float(m.group(1)) / float(m.group(2)) if m else float(v)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"eps {v!r} is not a radius (a number or a fraction like 36/255)") from None
    if not (e > 0 and math.isfinite(e)):
        raise ValueError(f"eps {v!r} is not a positive, finite radius")
    return e


def _required(d: dict, *keys):
    for k in keys:
        if not d[k]:
            raise ValueError(f"{k} is empty")


def load_sources(path: str) -> dict[str, Source]:
    out: dict[str, Source] = {}
    for line, d in _rows(path, SOURCE_COLUMNS):
        try:
            _required(d, "key", "authors", "title", "year")
            year = int(_number(d["year"], "year", 1900, 2100))
            if d["arxiv"] and not re.fullmatch(r"\d{4}\.\d{4,5}(v\d+)?", d["arxiv"]):
                raise ValueError(f"arxiv {d['arxiv']!r} is not an arXiv identifier like 2311.16833")
            if d["key"] in out:
                raise ValueError(f"source {d['key']!r} is named twice")
        except ValueError as e:
            raise UserError(f"{path}, line {line}: {e}") from None
        out[d["key"]] = Source(d["key"], d["authors"], d["title"], d["venue"], year, d["arxiv"], d["note"])
    return out


def _parameters_cell(v: str) -> int | None:
    if not v:
        return None
    if not re.fullmatch(r"[0-9]+", v) or int(v) == 0:
        raise ValueError(f"parameters {v!r} is not a whole number > 0 (leave it empty when the source does not say)")
    return int(v)


def _source(d: dict, sources: dict[str, Source]) -> Source:
    if d["source"] not in sources:
        raise ValueError(f"source {d['source']!r} is not a key of sources.csv; known: "
                         f"{', '.join(sorted(sources)) or '(none)'}")
    return sources[d["source"]]


def load_results(path: str, sources: dict[str, Source]) -> list[Published]:
    out: list[Published] = []
    seen: dict[tuple, int] = {}
    for line, d in _rows(path, RESULT_COLUMNS):
        try:
            _required(d, "method", "dataset", "norm", "eps", "clean_pct", "certified_pct", "model", "source")
            if d["dataset"] not in DATASETS:
                raise ValueError(f"unknown data set {d['dataset']!r}; known: {', '.join(DATASETS)}")
            if d["norm"] not in NORMS:
                raise ValueError(f"unknown norm {d['norm']!r}; valid: {', '.join(NORMS)}")
            eps = _eps(d["eps"])
            clean = _number(d["clean_pct"], "clean_pct", 0, 100)
            cert = _number(d["certified_pct"], "certified_pct", 0, 100)
            if cert > clean:
                raise ValueError(f"certified_pct {cert:g} is above clean_pct {clean:g} (a certified point is "
                                 f"classified correctly)")
            params = _parameters_cell(d["parameters"])
            _source(d, sources)
            key = (d["method"], d["model"], d["dataset"], d["norm"], round(eps, 9), d["source"])
            if key in seen:
                raise ValueError(f"the same result as line {seen[key]}")
            seen[key] = line
        except ValueError as e:
            raise UserError(f"{path}, line {line}: {e}") from None
        out.append(Published(d["method"], d["dataset"], NORMS[d["norm"]], eps, d["eps"], clean, cert, d["model"],
                             params, d["budget"], sources[d["source"]], f"{os.path.basename(path)}, line {line}"))
    return out


def load_bounds(path: str, sources: dict[str, Source]) -> list[PublishedBound]:
    """A file of published Lipschitz bounds (header LIPSCHITZ_COLUMNS)."""
    out: list[PublishedBound] = []
    seen: dict[tuple, int] = {}
    for line, d in _rows(path, LIPSCHITZ_COLUMNS):
        try:
            _required(d, "method", "dataset", "norm", "lipschitz_bound", "bound_kind", "input_scaling", "clean_pct",
                      "model", "source")
            if d["dataset"] not in LIPSCHITZ_DATASETS:
                raise ValueError(f"unknown data set {d['dataset']!r}; known: {', '.join(LIPSCHITZ_DATASETS)}")
            if d["norm"] not in NORMS:
                raise ValueError(f"unknown norm {d['norm']!r}; valid: {', '.join(NORMS)}")
            bound = _number(d["lipschitz_bound"], "lipschitz_bound", 0, math.inf)
            if not (bound > 0 and math.isfinite(bound)):
                raise ValueError(f"lipschitz_bound {d['lipschitz_bound']} is not a positive, finite number")
            if d["bound_kind"] not in BOUND_KINDS:
                raise ValueError(f"unknown bound_kind {d['bound_kind']!r}; valid: {', '.join(BOUND_KINDS)}")
            if d["input_scaling"] not in INPUT_SCALINGS:
                raise ValueError(f"unknown input_scaling {d['input_scaling']!r}; valid: {', '.join(INPUT_SCALINGS)}")
            clean = _number(d["clean_pct"], "clean_pct", 0, 100)
            params = _parameters_cell(d["parameters"])
            src = _source(d, sources)
            key = (d["method"], d["model"], d["dataset"], d["norm"], d["source"])
            if key in seen:
                raise ValueError(f"the same result as line {seen[key]}")
            seen[key] = line
        except ValueError as e:
            raise UserError(f"{path}, line {line}: {e}") from None
        out.append(PublishedBound(d["method"], d["dataset"], NORMS[d["norm"]], bound, d["bound_kind"],
                                  d["input_scaling"], clean, d["model"], params, src,
                                  f"{os.path.basename(path)}, line {line}"))
    return out


#: a results file's header -> (its kind, its reader)
KINDS = {RESULT_COLUMNS: ("certified", load_results), LIPSCHITZ_COLUMNS: ("lipschitz", load_bounds)}
KIND_NAMES = {"certified": "certified accuracy", "lipschitz": "Lipschitz bounds"}


def _header(path: str) -> tuple:
    """The header of a results file, which says its kind (a UserError for none of KINDS)."""
    for line, cells in _lines(path):
        if tuple(cells) not in KINDS:
            raise UserError(f"{path}, line {line}: the header must be "
                            + " or ".join(f"{','.join(c)} ({KIND_NAMES[k]})" for c, (k, _) in KINDS.items())
                            + f", not {','.join(cells)}")
        return tuple(cells)
    raise UserError(f"{path}: no header line (" + " or ".join(",".join(c) for c in KINDS) + ")")


def load_folder(folder: str = PUBLISHED_DIR) -> dict[str, list]:
    """Every published result in ``folder``, by kind: {"certified": [Published],
    "lipschitz": [PublishedBound]}; ``sources.csv`` and each other ``*.csv``, every file
    validated (a malformed one is a one-line UserError, whichever kind is asked for)."""
    sources = load_sources(os.path.join(folder, "sources.csv"))
    out: dict[str, list] = {k: [] for k, _ in KINDS.values()}
    for path in sorted(glob.glob(os.path.join(folder, "*.csv"))):
        if os.path.basename(path) != "sources.csv":
            kind, read = KINDS[_header(path)]
            out[kind] += read(path, sources)
    return out


def load_published(folder: str = PUBLISHED_DIR) -> list[Published]:
    """The published certified robust accuracies in ``folder`` (see :func:`load_folder`)."""
    return load_folder(folder)["certified"]


def load_lipschitz(folder: str = PUBLISHED_DIR) -> list[PublishedBound]:
    """The published Lipschitz bounds in ``folder`` (see :func:`load_folder`)."""
    return load_folder(folder)["lipschitz"]


# ---- the measured rows

def eps_column(e: float, columns) -> int | None:
    """The index of the column whose radius ``e`` is (within EPS_TOL), or None."""
    for i, c in enumerate(columns):
        if abs(float(e) - c) <= EPS_TOL:
            return i
    return None


def eps_text(e: float) -> str:
    """36/255 for a radius that is a whole number of 255ths, else the number."""
    k = round(e * 255)
    return f"{k}/255" if abs(e - k / 255) <= EPS_TOL else f"{e:g}"


def _json(s, default):
    try:
        v = json.loads(s) if s else default
    except (TypeError, ValueError):
        return default
    return v if isinstance(v, type(default)) else default


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
        epochs = {_json(i["trainer_params"], {}).get("epochs") for i in infos} - {None}
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


def measured(df, certified: list[dict], nets: list[dict], columns=EPS_GRID) -> list[dict]:
    """One row per configuration of the store's CIFAR networks with certified accuracy at
    p = 2 (see the module's doc)."""
    from .evidence import network_info
    by_id = {n["id"]: n for n in nets}
    cert = [c for c in certified if c["p"] == "2" and c["network"] in by_id
            and network_info(by_id[c["network"]])["dataset"] in MEASURED_DATASET]
    if not cert:
        return []
    first = df.drop_duplicates("network").set_index("network") if len(df) else None
    configs: dict[str, dict] = {}
    for nid in sorted({c["network"] for c in cert}):
        n = by_id[nid]
        info = network_info(n)
        info["trainer_params"] = n["trainer_params"]
        info["parameters"] = _parameters(n, info["metrics"])
        info["dataset_raw"] = _json(n["dataset"], "") or _json(n["dataset"], {})
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


def comparison(df, certified: list[dict], nets: list[dict], folder: str = PUBLISHED_DIR) -> dict | None:
    """The page's data: {"columns": radii, "rows": measured and reported rows (dicts),
    "sources": [Source]}, or None when the store has no CIFAR network with certified
    accuracy at p = 2 (then there is no page).  The published numbers are read only then."""
    if not certified:
        return None
    ours = measured(df, certified, nets, EPS_GRID)
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
              + [f"certified % at {eps_text(e)}" for e in comp["columns"]] + ["source"])
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
        d.update({f"certified_pct_{eps_text(e)}": v for e, v in zip(comp["columns"], r["certified_pct"])})
        d.update(source=r["source"], verifier=r["verifier"], configuration=r["config"], published_in=r["cite"])
        recs.append(d)
    out = pd.DataFrame(recs)
    out["parameters"] = out["parameters"].astype("Int64")
    return out.round(4)


__all__ = ["load_folder", "load_published", "load_lipschitz", "comparison", "table", "frame"]
