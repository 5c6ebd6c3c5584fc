"""Suites: YAML files -> validated, frozen dataclasses -> jobs.

A suite names data sets, seeds, trainers (with architectures, parameters and grids),
verifiers (with parameters) and queries; see docs/suites.md for the format.  Every error
names the file and line and lists the valid choices.
"""
from __future__ import annotations

import itertools
import math
import re
import json
import os
from dataclasses import dataclass, replace
from importlib import resources

import yaml

from . import sources
from .api import BOX, Query, UserError
from .data import DATASETS, PARAMS as DATA_PARAMS
from .network import arch_name
from .registry import VERIFIERS, get_trainer, get_verifier, import_plugin, load_plugins
from .jobs import CertifyJob, ImportJob, TrainJob, VerifyJob, job_key, keyed
from .rows import certifies

TOP_KEYS = {"name", "description", "datasets", "seeds", "timeout", "train", "networks", "verify", "queries",
            "plugins", "certify", "threads", "mem_limit"}
NETWORK_KEYS = {"source", "name", "family", "input_shape", "dataset", "box"}
NAME = re.compile(r"[\w.-]+")
TRAIN_KEYS = {"trainer", "archs", "params", "grid", "timeout"}
VERIFY_KEYS = {"verifier", "params", "grid", "queries", "timeout"}
QUERY_KEYS = {"p", "target", "domain", "q"}
DEFAULT_TIMEOUT = 600.0


# ---- YAML with line numbers -------------------------------------------------------

class LDict(dict):
    line: int = 0
    lines: dict


class LList(list):
    line: int = 0
    lines: list


class _Loader(yaml.SafeLoader):
    pass


def _map(loader, node):
    loader.flatten_mapping(node)
    d = LDict()
    d.line, d.lines = node.start_mark.line + 1, {}
    for k, v in node.value:
        key = loader.construct_object(k, deep=True)
        if key in d:
            raise UserError(f"line {k.start_mark.line + 1}: duplicate key {key!r}")
        d[key] = loader.construct_object(v, deep=True)
        d.lines[key] = k.start_mark.line + 1
    return d


def _seq(loader, node):
    l = LList(loader.construct_object(v, deep=True) for v in node.value)
    l.line, l.lines = node.start_mark.line + 1, [v.start_mark.line + 1 for v in node.value]
    return l


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _map)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _seq)


def _line(obj, key=None) -> int:
    if key is not None and isinstance(obj, LDict):
        return obj.lines.get(key, obj.line)
    if key is not None and isinstance(obj, LList) and isinstance(key, int) and key < len(obj.lines):
        return obj.lines[key]
    return getattr(obj, "line", 0)


# ---- the suite --------------------------------------------------------------------

class _Grid:
    params: dict
    grid: dict

    def combos(self):
        """``params`` overlaid with each combination of the ``grid`` values."""
        keys = sorted(self.grid)
        for values in itertools.product(*(self.grid[k] for k in keys)):
            yield {**self.params, **dict(zip(keys, values))}


@dataclass(frozen=True)
class TrainEntry(_Grid):
    trainer: str
    archs: tuple  # of dicts
    params: dict
    grid: dict
    timeout: float | None


@dataclass(frozen=True)
class NetworkEntry:
    """A network from outside lipbench (:mod:`bench.sources`): ``source`` a file (a
    relative path is looked for in the suite file's folder, then in the data folder) or
    package.module:attribute; ``box`` its input box, a file (.vnnlib, or lower-upper
    pairs) or a mapping ({lower, upper} or {center, radius}), for the queries whose domain
    is ``box``."""
    source: str
    name: str
    family: str | None = None
    input_shape: tuple | None = None
    dataset: str | dict | None = None
    box: str | dict | None = None
    line: int = 0


@dataclass(frozen=True)
class VerifyEntry(_Grid):
    verifier: str
    params: dict
    grid: dict
    queries: tuple | None
    timeout: float | None


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    datasets: tuple
    seeds: tuple
    timeout: float
    train: tuple
    verify: tuple
    queries: tuple
    plugins: tuple = ()
    path: str = ""
    certify_eps: dict | None = None  # {p name: [eps, ...]}: certified accuracy after verification
    threads: int | None = None       # torch threads per job (None: 1; --threads overrides)
    mem_limit: float | None = None   # MB a job may allocate (None: no cap; --mem-limit overrides)
    networks: tuple = ()             # NetworkEntry: networks from outside lipbench

    # -- jobs
    def train_jobs(self, out_dir: str, data_dir: str | None = None) -> list[TrainJob]:
        jobs = []
        for ds in self.datasets:
            ds_name = ds if isinstance(ds, str) else ds["name"]
            for entry in self.train:
                cls = get_trainer(entry.trainer)
                for arch in entry.archs:
                    for params in entry.combos():
                        resolved = cls.resolve_params(params)
                        for seed in self.seeds:
                            job = TrainJob(cls.name, cls.version, resolved, arch, ds, seed, "", "",
                                           entry.timeout or self.timeout, data_dir, tuple(self.plugins))
                            key = job_key(job.ident())
                            label = cls.network_label(arch, resolved) or arch_name(arch)
                            nid = f"{ds_name}-{cls.name}-{label}-s{seed}-{key[:6]}"
                            jobs.append(replace(job, key=key, network_id=nid,
                                                out_path=os.path.join(out_dir, "networks", nid + ".pt")))
        return jobs

    def import_jobs(self, out_dir: str, data_dir: str | None = None) -> list[ImportJob]:
        """One job per entry of ``networks``, keyed by what its source holds.  A file
        that is missing, an unreadable box: a one-line UserError naming the entry's line,
        before anything runs."""
        jobs = []
        base = os.path.dirname(os.path.abspath(self.path)) if self.path and os.path.isfile(self.path) else os.getcwd()
        for e in self.networks:
            try:
                src = _locate(e.source, base, data_dir)
                box, box_source = e.box, None
                if isinstance(box, str):
                    box_source = _locate(box, base, data_dir)
                    box = sources.read_box(box_source)
                if box is not None:
                    Query(domain=box)   # checked here, once
                    box = {k: list(map(float, v)) if isinstance(v, (list, tuple)) else float(v) for k, v in box.items()}
                snap = None
                if sources.kind(src) == "import":
                    h, snap = sources.snapshot(src, os.path.join(out_dir, "networks", "from-code"), e.input_shape)
                else:
                    h = sources.fingerprint(src, e.input_shape)
            except UserError as err:
                raise UserError(f"{_where(e)}{err}") from None
            job = ImportJob(src, h, e.name, e.family, e.input_shape, e.dataset, box, box_source, "", "",
                            self.timeout, data_dir, tuple(self.plugins), snapshot=snap)
            key = job_key(job.ident())
            nid = f"{e.name}-{key[:6]}"
            jobs.append(replace(job, key=key, network_id=nid,
                                out_path=os.path.join(out_dir, "networks", nid + ".pt")))
        return jobs

    def verify_jobs(self, network) -> list[VerifyJob]:
        """Verification jobs for one stored network (a ``networks`` row); a query whose
        domain is ``box`` only for a network that has one."""
        jobs = []
        for entry in self.verify:
            cls = get_verifier(entry.verifier)
            for params in entry.combos():
                resolved = cls.resolve_params(params)
                for q in (entry.queries or self.queries):
                    q = _fit_domain(q, network)
                    if q is None:
                        continue
                    jobs.append(keyed(VerifyJob(cls.name, cls.version, resolved, q, network["id"],
                                                network["net_hash"], network["path"], cls.kind,
                                                entry.timeout or self.timeout, tuple(self.plugins))))
        return jobs

    def certify_job(self, network, rows: list, data_dir: str | None) -> CertifyJob | None:
        """The certified-accuracy job of one network, given its stored result rows (only
        rows that :func:`bench.rows.certifies` say may certify)."""
        if not self.certify_eps or json.loads(network["dataset"]) is None:
            return None
        use = tuple({k: r[k] for k in ("verifier", "verifier_params", "p", "target", "value", "job_key")}
                    for r in rows if certifies(r))
        if not use:
            return None
        return keyed(CertifyJob(network["id"], network["net_hash"], network["path"],
                                json.loads(network["dataset"]), self.certify_eps, use, self.timeout, data_dir,
                                tuple(self.plugins)))


def plugin_entry(entry: str, base: str) -> str:
    """A suite's or the command line's plug-in entry as workers will import it: a module
    name as is, a file or folder as an absolute path (relative paths are read from
    ``base``, the suite file's folder or the current one)."""
    if entry.endswith(".py") or os.sep in entry or os.path.isdir(os.path.join(base, entry)):
        return os.path.normpath(os.path.join(base, entry))
    return entry


def shipped_suites() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("bench.suites").iterdir() if p.name.endswith(".yaml"))


def load_suite(name_or_path: str) -> Suite:
    """A shipped suite by name, or a YAML file by path."""
    if os.path.exists(name_or_path):
        path = name_or_path
        if not os.path.isfile(path):
            raise UserError(f"suite {path} is not a file")
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except UnicodeDecodeError:
            raise UserError(f"suite {path} is not a UTF-8 text file") from None
    elif name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path:
        raise UserError(f"suite file {name_or_path} does not exist")
    else:
        f = resources.files("bench.suites") / f"{name_or_path}.yaml"
        if not f.is_file():
            raise UserError(f"unknown suite {name_or_path!r}; shipped suites: {', '.join(shipped_suites())} "
                            f"(or give a path to a YAML file)")
        path, text = str(f), f.read_text()
    try:
        return parse_suite(text, path)
    except UserError as e:
        raise UserError(f"{os.path.basename(path)}, {e}" if str(e).startswith("line") else f"{path}: {e}") from None


def parse_suite(text: str, path: str = "<suite>") -> Suite:
    """A suite from its YAML text (``path``: where it was read, for relative plug-ins and
    the default name); every error is a one-line UserError naming the line."""
    doc = _yaml(text)
    _keys(doc, TOP_KEYS, "suite")
    plugins = _plugins(doc, path)
    if "train" not in doc and "networks" not in doc:
        raise UserError(f"line {_line(doc)}: a suite trains networks (train:), reads them (networks:), or both")
    datasets = [_dataset(ds, _line(doc["datasets"], i))
                for i, ds in enumerate(_list(doc, "datasets", None if "train" in doc else []))]
    seeds = _seeds(doc)   # checked in the order of the file's usual layout: the first error is reported
    timeout = _num(doc, "timeout", DEFAULT_TIMEOUT)
    threads = _threads(doc)
    mem_limit = _num(doc, "mem_limit", None, "megabytes")
    networks = _networks(doc)
    train = _train(doc)
    queries = tuple(_queries(doc, "queries", [Query()]))
    verify = _verify(doc)
    certify_eps = _certify(doc)
    name = doc.get("name") or os.path.splitext(os.path.basename(path))[0]
    return Suite(str(name), str(doc.get("description", "")), tuple(datasets), seeds, timeout, train, verify,
                 queries, plugins, path, certify_eps, threads, mem_limit, networks)


def _yaml(text: str) -> dict:
    try:
        doc = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise UserError(f"{where}malformed YAML: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(doc, dict):
        raise UserError("line 1: a suite is a YAML mapping (name:, datasets:, train:, verify:, ...)")
    return doc


def _plugins(doc: dict, path: str) -> tuple:
    """The suite's plug-in modules, imported now (relative to the suite's folder), then the
    registry's own."""
    plugins = []
    for i, mod in enumerate(_list(doc, "plugins", [])):
        plugins.append(plugin_entry(str(mod), os.path.dirname(os.path.abspath(path))))
        try:
            import_plugin(plugins[-1])
        except UserError as e:
            raise UserError(f"line {_line(doc['plugins'], i)}: {e}") from None
    load_plugins()
    return tuple(plugins)


def _seeds(doc: dict) -> tuple:
    seeds = _list(doc, "seeds", [0])
    if not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**32 for s in seeds):
        raise UserError(f"line {_line(doc, 'seeds')}: seeds must be integers in [0, 2^32), got {list(seeds)!r}")
    return tuple(seeds)


def _threads(doc: dict) -> int | None:
    threads = doc.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UserError(f"line {_line(doc, 'threads')}: threads must be a whole number >= 1, got {threads!r}")
    return threads


def _train(doc: dict) -> tuple:
    train = []
    for i, e in enumerate(_list(doc, "train", [])):
        ln = _line(doc["train"], i)
        if not isinstance(e, dict) or "trainer" not in e:
            raise UserError(f"line {ln}: a train entry is a mapping with a 'trainer' key")
        _keys(e, TRAIN_KEYS, "train entry")
        cls = _named(e, "trainer", get_trainer)
        archs = e.get("archs", [{}])
        if not isinstance(archs, list) or not all(isinstance(a, dict) for a in archs):
            raise UserError(f"line {_line(e, 'archs')}: archs is a list of mappings like {{hidden: [64], activation: relu}}")
        archs = tuple(_check_arch(a) for a in archs)
        params, grid = _params(e, cls)
        train.append(TrainEntry(cls.name, archs, params, grid, _num(e, "timeout", None)))
    return tuple(train)


def _verify(doc: dict) -> tuple:
    verify = []
    named = {e["verifier"] for e in _list(doc, "verify", []) if isinstance(e, dict) and "verifier" in e} | \
            {e for e in _list(doc, "verify", []) if isinstance(e, str) and e != "all"}
    for i, e in enumerate(_list(doc, "verify", None)):
        ln = _line(doc["verify"], i)
        if e == "all":  # every registered verifier not named elsewhere, with its defaults
            verify.extend(VerifyEntry(n, {}, {}, None, None) for n in sorted(VERIFIERS) if n not in named)
            continue
        if isinstance(e, str):
            e = LDict(verifier=e)
            e.line, e.lines = ln, {"verifier": ln}
        if not isinstance(e, dict) or "verifier" not in e:
            raise UserError(f"line {ln}: a verify entry is a verifier name, 'all', or a mapping with a 'verifier' key")
        _keys(e, VERIFY_KEYS, "verify entry")
        cls = _named(e, "verifier", get_verifier)
        params, grid = _params(e, cls)
        qs = tuple(_queries(e, "queries", None)) if "queries" in e else None
        verify.append(VerifyEntry(cls.name, params, grid, qs, _num(e, "timeout", None)))
    return tuple(verify)


def _certify(doc: dict) -> dict | None:
    if "certify" not in doc:
        return None
    c = doc["certify"]
    if not isinstance(c, dict) or set(c) != {"eps"}:
        raise UserError(f"line {_line(doc, 'certify')}: certify is {{eps: [e1, e2, ...]}} or "
                        f"{{eps: {{2: [...], inf: [...]}}}}")
    from .certify import eps_by_p
    try:
        return eps_by_p(c["eps"])
    except (UserError, TypeError, ValueError) as err:
        raise UserError(f"line {_line(c, 'eps')}: bad eps grid ({err})") from None


def _dataset(ds, ln: int):
    """A data set entry (a name, or a mapping with its parameters), checked."""
    name = ds if isinstance(ds, str) else (ds.get("name") if isinstance(ds, dict) else None)
    if name not in DATASETS:
        raise UserError(f"line {ln}: unknown data set {name!r}; valid: {', '.join(DATASETS)}")
    if isinstance(ds, dict):
        _keys(ds, {"name"} | set(DATA_PARAMS[name]), f"data set {name}")
        from .data import check_params
        try:
            check_params(name, {k: v for k, v in ds.items() if k != "name"})
        except UserError as err:
            raise UserError(f"line {ln}: {err}") from None
        ds = {k: v for k, v in ds.items()}
    return ds


def _networks(doc: dict) -> tuple:
    """The ``networks`` entries: a source (string), or a mapping with ``source`` and
    optional name, family, input_shape, dataset and box; names are unique."""
    out, names = [], {}
    for i, e in enumerate(_list(doc, "networks", [])):
        ln = _line(doc["networks"], i)
        if isinstance(e, str):
            e = LDict(source=e)
            e.line, e.lines = ln, {"source": ln}
        if not isinstance(e, dict) or not isinstance(e.get("source"), str):
            raise UserError(f"line {ln}: a networks entry is a file or package.module:attribute, or a mapping "
                            f"with a 'source' key")
        _keys(e, NETWORK_KEYS, "networks entry")
        try:
            sources.kind(e["source"])
        except UserError as err:
            raise UserError(f"line {_line(e, 'source')}: {err}") from None
        name = str(e.get("name") or network_name(e["source"]))
        if not NAME.fullmatch(name):
            raise UserError(f"line {_line(e, 'name') if 'name' in e else ln}: network name {name!r}: letters, digits, "
                            f"'.', '_' and '-' only (it names the network's file); give a name:")
        if name in names:
            raise UserError(f"line {ln}: network name {name!r} is used twice (lines {names[name]} and {ln}); "
                            f"give one of them a name:")
        names[name] = ln
        shape = e.get("input_shape")
        if shape is not None and not (isinstance(shape, list) and shape and
                                      all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
            raise UserError(f"line {_line(e, 'input_shape')}: input_shape is a list of positive whole numbers, "
                            f"one input's shape without the batch dimension, e.g. [1, 28, 28]")
        ds = None if e.get("dataset") is None else _dataset(e["dataset"], _line(e, "dataset"))
        box = e.get("box")
        if box is not None and not isinstance(box, str):
            if not isinstance(box, dict):
                raise UserError(f"line {_line(e, 'box')}: box is a file (.vnnlib, or lower-upper pairs) or a "
                                f"mapping {{lower: [...], upper: [...]}} or {{center: [...], radius: r}}")
            try:
                Query(domain=dict(box))
            except UserError as err:
                raise UserError(f"line {_line(e, 'box')}: {err}") from None
            box = _plain(box)
        family = e.get("family")
        out.append(NetworkEntry(e["source"], name, None if family is None else str(family),
                                None if shape is None else tuple(shape), ds, box, ln))
    return tuple(out)


def network_name(source: str) -> str:
    """A network's default name: its file's name without the ending (the attribute of
    package.module:attribute)."""
    if sources.kind(source) == "import":
        return source.rsplit(":", 1)[1].rsplit(".", 1)[-1]
    return os.path.splitext(os.path.basename(source))[0]


def _keys(d: dict, valid: set, what: str):
    for k in d:
        if k not in valid:
            raise UserError(f"line {_line(d, k)}: unknown key {k!r} in {what}; valid: {', '.join(sorted(valid))}")


def _list(d: dict, key: str, default):
    if key not in d:
        if default is None:
            raise UserError(f"line {_line(d)}: missing required key {key!r}")
        return default
    v = d[key]
    if isinstance(v, (str, int)) and key in ("datasets", "seeds", "plugins", "verify", "networks"):
        return [v]
    if not isinstance(v, list) or (default is None and not v):
        raise UserError(f"line {_line(d, key)}: {key} must be a non-empty list")
    return v


def _num(d: dict, key: str, default, unit: str = "seconds"):
    if key not in d:
        return default
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf"):
        raise UserError(f"line {_line(d, key)}: {key} must be a positive, finite number of {unit}, got {v!r}")
    return float(v)


def _named(e: dict, key: str, getter):
    try:
        return getter(e[key])
    except UserError as err:
        raise UserError(f"line {_line(e, key)}: {err}") from None


def _params(e: dict, cls) -> tuple[dict, dict]:
    params = e.get("params", {}) or {}
    grid = e.get("grid", {}) or {}
    if not isinstance(params, dict) or not isinstance(grid, dict):
        raise UserError(f"line {_line(e)}: params and grid are mappings")
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise UserError(f"line {_line(grid, k)}: grid values are non-empty lists, {k}: {v!r} is not")
    for part in (params, *({k: v} for k, vs in grid.items() for v in vs)):
        try:
            cls.resolve_params(part)
        except UserError as err:
            k = next(iter(part), None)
            raise UserError(f"line {_line(params if k in params else grid, k)}: {err}") from None
    return dict(params), {k: list(v) for k, v in grid.items()}


def _check_arch(a: dict) -> dict:
    """An architecture checked (:func:`bench.network.check_arch`), as plain dicts and
    lists; an error names the line of the bad key or entry."""
    from .network import ArchError, check_arch
    try:
        check_arch(a)
    except ArchError as err:
        node, ln = a, _line(a)
        for step in err.path:   # the deepest line the path reaches
            ln = _line(node, step) or ln
            try:
                node = node[step]
            except (KeyError, IndexError, TypeError):
                break
        raise UserError(f"line {ln}: {err}") from None
    return _plain(a)


def _plain(v):
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _where(e: NetworkEntry) -> str:
    return f"line {e.line}: " if e.line else ""


def _locate(path: str, base: str, data_dir: str | None) -> str:
    """A network entry's file: as given if absolute, else in the suite file's folder, else
    in the data folder; package.module:attribute as it is.  Missing: a UserError that names
    the command that downloads it, for a folder lipbench downloads."""
    from .data import DOWNLOADS, data_dir as data_folder
    if os.path.isabs(path):
        if not os.path.exists(path):
            raise UserError(f"{path}: no such file")
        return path
    if sources.is_import(path) and not os.path.exists(os.path.join(base, path)):
        return path
    for d in (base, data_folder(data_dir)):
        if os.path.exists(os.path.join(d, path)):
            return os.path.abspath(os.path.join(d, path))
    first = path.replace("\\", "/").split("/")[0]
    hint = f"; get it with: {DOWNLOADS[first]}" if first in DOWNLOADS else ""
    raise UserError(f"{path}: no such file in {base} nor in the data folder {data_folder(data_dir)}{hint} "
                    f"(or point --data-dir / LIPBENCH_DATA at the folder that holds it)")


def _fit_domain(q: Query, network) -> Query | None:
    """The query as it applies to one network: the domain ``box`` becomes the network's
    input box (None, no query, for a network without one); a box whose center is one
    number (``{center: 0.5, radius: 0.5}``: every coordinate 0.5, here the box of all
    images [0, 1]^n) gets the network's input size."""
    if q.domain == BOX:
        box = network["box"] if "box" in network.keys() else None
        return None if box is None else Query(q.p, q.target, json.loads(box), q.q)
    if q.domain == "global" or len(q.domain[0]) != 1 or "input_shape" not in network.keys():
        return q
    n = math.prod(json.loads(network["input_shape"]))
    if n == 1:
        return q
    return Query(q.p, q.target, {"center": [q.domain[0][0]] * n, "radius": q.domain[1]}, q.q)


def _queries(d: dict, key: str, default) -> list[Query]:
    if key not in d:
        return default
    out = []
    for i, q in enumerate(_list(d, key, None)):
        ln = _line(d[key], i)
        if not isinstance(q, dict):
            raise UserError(f"line {ln}: a query is a mapping like {{p: 2, target: full}}")
        _keys(q, QUERY_KEYS, "query")
        dom = q.get("domain", "global")
        if isinstance(dom, dict) and isinstance(dom.get("center"), (int, float)):
            dom = {**dom, "center": [dom["center"]]}   # one number: every coordinate (see _fit_domain)
        try:
            out.append(Query(p=q.get("p", 2), target=q.get("target", "full"), domain=dom, q=q.get("q")))
        except (UserError, KeyError, TypeError) as err:
            raise UserError(f"line {ln}: {err}") from None
    return out
