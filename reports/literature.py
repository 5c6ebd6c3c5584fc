"""The published numbers, read and validated: the one loader of ``reports/published/``.

The published numbers are data, kept with their sources in ``reports/published/``:
``sources.csv`` (one row per paper) and one file per data set and kind, one row per
published result: certified robust accuracy (``cifar10.csv``, header RESULT_COLUMNS) or
certified Lipschitz bounds with the clean accuracy of the networks they bound
(``lipschitz_mnist.csv``, header LIPSCHITZ_COLUMNS).  :func:`load_folder` is the one
place that reads and validates them (a file's kind is its header);
:func:`load_published` and :func:`load_lipschitz` are its two halves.  A malformed file
is a one-line :class:`bench.api.UserError` naming the file and line.  No published
number is written in code.  The CIFAR-10 page (:mod:`reports.sota`) and the paper's
size claim (:mod:`reports.evidence`) both read them here.
"""
from __future__ import annotations

import csv
import glob
import math
import os
import re
from dataclasses import dataclass

from bench.api import UserError

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


__all__ = ["load_folder", "load_published", "load_lipschitz", "load_sources"]
