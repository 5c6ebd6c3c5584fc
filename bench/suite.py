"""Suites: YAML files -> validated, frozen dataclasses -> jobs.

A suite names data sets, seeds, trainers (with architectures, parameters and grids),
verifiers (with parameters) and queries; see README.md for the format.  Every error
names the file and line and lists the valid choices.
"""
from __future__ import annotations

import itertools
import math
import json
import os
from dataclasses import dataclass, replace
from importlib import resources

import yaml

from .api import Query, UserError
from .data import DATASETS, PARAMS as DATA_PARAMS
from .network import arch_name
from .registry import VERIFIERS, get_trainer, get_verifier, import_plugin, load_plugins
from .jobs import CertifyJob, TrainJob, VerifyJob, job_key, keyed
from .rows import certifies

TOP_KEYS = {"name", "description", "datasets", "seeds", "timeout", "train", "verify", "queries", "plugins",
            "certify", "threads", "mem_limit"}
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

    def verify_jobs(self, network) -> list[VerifyJob]:
        """Verification jobs for one stored network (a ``networks`` row)."""
        jobs = []
        for entry in self.verify:
            cls = get_verifier(entry.verifier)
            for params in entry.combos():
                resolved = cls.resolve_params(params)
                for q in (entry.queries or self.queries):
                    q = _fit_domain(q, network)
                    jobs.append(keyed(VerifyJob(cls.name, cls.version, resolved, q, network["id"],
                                                network["net_hash"], network["path"], cls.kind,
                                                entry.timeout or self.timeout, tuple(self.plugins))))
        return jobs

    def certify_job(self, network, rows: list, data_dir: str | None) -> CertifyJob | None:
        """The certified-accuracy job of one network, given its stored result rows (only
        rows that :func:`bench.rows.certifies` say may certify)."""
        if not self.certify_eps:
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
    try:
        doc = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise UserError(f"{where}malformed YAML: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(doc, dict):
        raise UserError("line 1: a suite is a YAML mapping (name:, datasets:, train:, verify:, ...)")
    _keys(doc, TOP_KEYS, "suite")
    plugins = []
    for i, mod in enumerate(_list(doc, "plugins", [])):
        plugins.append(plugin_entry(str(mod), os.path.dirname(os.path.abspath(path))))
        try:
            import_plugin(plugins[-1])
        except UserError as e:
            raise UserError(f"line {_line(doc['plugins'], i)}: {e}") from None
    plugins = tuple(plugins)
    load_plugins()

    datasets = []
    for i, ds in enumerate(_list(doc, "datasets", None)):
        name = ds if isinstance(ds, str) else (ds.get("name") if isinstance(ds, dict) else None)
        ln = _line(doc["datasets"], i)
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
        datasets.append(ds)
    seeds = _list(doc, "seeds", [0])
    if not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**32 for s in seeds):
        raise UserError(f"line {_line(doc, 'seeds')}: seeds must be integers in [0, 2^32), got {list(seeds)!r}")
    timeout = _num(doc, "timeout", DEFAULT_TIMEOUT)
    threads = doc.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UserError(f"line {_line(doc, 'threads')}: threads must be a whole number >= 1, got {threads!r}")
    mem_limit = _num(doc, "mem_limit", None, "megabytes")

    train = []
    for i, e in enumerate(_list(doc, "train", None)):
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

    queries = tuple(_queries(doc, "queries", [Query()]))
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

    certify_eps = None
    if "certify" in doc:
        c = doc["certify"]
        if not isinstance(c, dict) or set(c) != {"eps"}:
            raise UserError(f"line {_line(doc, 'certify')}: certify is {{eps: [e1, e2, ...]}} or "
                            f"{{eps: {{2: [...], inf: [...]}}}}")
        from .certify import eps_by_p
        try:
            certify_eps = eps_by_p(c["eps"])
        except (UserError, TypeError, ValueError) as err:
            raise UserError(f"line {_line(c, 'eps')}: bad eps grid ({err})") from None
    name = doc.get("name") or os.path.splitext(os.path.basename(path))[0]
    return Suite(str(name), str(doc.get("description", "")), tuple(datasets), tuple(seeds), timeout,
                 tuple(train), tuple(verify), queries, plugins, path, certify_eps, threads, mem_limit)


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
    if isinstance(v, (str, int)) and key in ("datasets", "seeds", "plugins", "verify"):
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


def _fit_domain(q: Query, network) -> Query:
    """A box whose center is one number (``{center: 0.5, radius: 0.5}``: every coordinate
    0.5, here the box of all images [0, 1]^n) gets the network's input size."""
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
