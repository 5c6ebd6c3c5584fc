"""Jobs and outcomes: the typed spine that carries work from a suite to the store.

A suite expands into :class:`TrainJob`, :class:`VerifyJob` and :class:`CertifyJob`
(frozen: a job is a value); an executor runs each one (:func:`bench.worker.execute`) and
hands back an :class:`Outcome`; the store records a job with its outcome in one
transaction.  A job's *key* is the hash of its identity (:meth:`ident`): the plug-in's
name, version and resolved parameters, and what it runs on (the data set and seed, or the
network's content hash and the query).  A key with a row in the store is final.

Jobs and outcomes travel to and from worker processes as they are (pickled); ``spec()`` is
the JSON form the store's ``jobs`` table keeps.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Union

from .api import Bound, Query, check_vocabulary


def dumps(x: Any) -> str:
    """JSON with sorted keys; non-finite floats become the strings "inf", "-inf", "nan"
    (strict JSON has no such numbers, and CSV readers choke on Infinity)."""
    return json.dumps(_finite(x), sort_keys=True, default=_json_default, allow_nan=False)


def _finite(x: Any) -> Any:
    if isinstance(x, float) and x != x:
        return "nan"
    if isinstance(x, float) and x in (float("inf"), float("-inf")):
        return "inf" if x > 0 else "-inf"
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _json_default(o):
    try:
        import numpy as np
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, tuple):
        return list(o)
    return str(o)


def job_key(ident: dict) -> str:
    return hashlib.sha256(dumps(ident).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TrainJob:
    """Train one network: trainer x architecture x parameters x data set x seed."""

    type: ClassVar[str] = "train"
    trainer: str
    version: str
    params: dict
    arch: dict
    dataset: Union[str, dict]
    seed: int
    network_id: str
    out_path: str
    timeout: float | None = None
    data_dir: str | None = None
    plugins: tuple = ()
    key: str = ""

    def ident(self) -> dict:
        return {"type": "train", "trainer": self.trainer, "version": self.version, "params": self.params,
                "arch": self.arch, "dataset": self.dataset, "seed": self.seed}

    @property
    def label(self) -> str:
        return f"train  {self.network_id}"

    @property
    def kind(self) -> str:
        return "upper"


@dataclass(frozen=True)
class VerifyJob:
    """Bound one network's Lipschitz constant for one query with one verifier."""

    type: ClassVar[str] = "verify"
    verifier: str
    version: str
    params: dict
    query: Query
    network: str
    net_hash: str
    net_path: str
    kind: str
    timeout: float | None = None
    plugins: tuple = ()
    key: str = ""

    def ident(self) -> dict:
        return {"type": "verify", "verifier": self.verifier, "version": self.version, "params": self.params,
                "query": self.query.key(), "net_hash": self.net_hash, "network": self.network}

    @property
    def label(self) -> str:
        q = self.query
        tgt = "full" if not q.is_pair else f"{q.target[0]}-{q.target[1]}"
        where = "" if q.domain == "global" else " box"
        return f"verify {self.verifier:<8} p={q.key()['p']:<3} {tgt:<4}{where} {self.network}"


@dataclass(frozen=True)
class CertifyJob:
    """Certified accuracy of one network from its stored sound upper bounds (``rows``:
    dicts with verifier, verifier_params, p, target, value, job_key)."""

    type: ClassVar[str] = "certify"
    network: str
    net_hash: str
    net_path: str
    dataset: Union[str, dict]
    eps: dict
    rows: tuple
    timeout: float | None = None
    data_dir: str | None = None
    plugins: tuple = ()
    key: str = ""
    kind: str = "lower"

    def ident(self) -> dict:
        return {"type": "certify", "network": self.network, "net_hash": self.net_hash, "eps": self.eps,
                "rows": sorted(r["job_key"] for r in self.rows), "version": "1"}

    @property
    def label(self) -> str:
        return f"certify {self.network}"


@dataclass(frozen=True)
class ImportJob:
    """Read one network from outside lipbench (a file or package.module:attribute:
    :mod:`bench.sources`), check it, measure its accuracy on its data set where it has
    one, and store it as trained networks are stored (``networks`` row and file).  Its
    identity is what the source holds (``source_hash``), not where it lies."""

    type: ClassVar[str] = "import"
    source: str
    source_hash: str
    name: str
    family: str | None
    input_shape: tuple | None
    dataset: Union[str, dict, None]
    box: dict | None            # the network's input box, {lower: [...], upper: [...]}
    box_source: str | None      # where the box came from (a .vnnlib file), for the record
    network_id: str
    out_path: str
    timeout: float | None = None
    data_dir: str | None = None
    plugins: tuple = ()
    key: str = ""
    kind: str = "upper"
    snapshot: str | None = None   # a network from code: the file of what the driver read (bench.sources.snapshot)

    def ident(self) -> dict:
        from .sources import READER_VERSION
        return {"type": "import", "reader": READER_VERSION, "source_hash": self.source_hash, "name": self.name,
                "family": self.family,
                "input_shape": None if self.input_shape is None else list(self.input_shape),
                "dataset": self.dataset, "box": self.box}

    @property
    def label(self) -> str:
        return f"import {self.network_id}"


Job = Union[TrainJob, ImportJob, VerifyJob, CertifyJob]
#: the jobs that make a network (its verification follows)
MAKERS = (TrainJob, ImportJob)


def keyed(job: Job) -> Job:
    """The job with its key filled in from its identity."""
    return replace(job, key=job_key(job.ident()))


def spec(job: Job) -> dict:
    """JSON-able form: what the store keeps of a job."""
    d = {f.name: getattr(job, f.name) for f in fields(job)}
    d["type"] = job.type
    d["plugins"] = list(job.plugins)
    if isinstance(job, VerifyJob):
        d["query"] = job.query.key()
    if isinstance(job, CertifyJob):  # the store keeps which rows, not their values
        d["row_jobs"] = sorted(r["job_key"] for r in job.rows)
        del d["rows"]
    return d


@dataclass(frozen=True)
class TrainedNetwork:
    """What a training job produced (the store's ``networks`` row)."""

    net_hash: str
    path: str
    input_shape: tuple
    description: str
    metrics: dict


@dataclass(frozen=True)
class Outcome:
    """How a job ended.  ``status`` is from :data:`bench.api.STATUSES`; ``value`` only for
    verification; ``network`` only for a training job that succeeded, ``certified`` only
    for a certify job (one dict per verifier and p: eps grid and certified accuracies)."""

    status: str
    kind: str = "upper"
    value: float | None = None
    stats: dict = field(default_factory=dict)
    error: str | None = None
    wall_s: float | None = None
    cpu_s: float | None = None
    peak_mem_mb: float | None = None
    device: str | None = None
    versions: dict = field(default_factory=dict)
    solve_s: float | None = None
    threads: int | None = None
    network: TrainedNetwork | None = None
    certified: tuple = ()
    traceback: str | None = None

    def __post_init__(self):
        check_vocabulary(self.status, self.kind)

    def bound(self) -> Bound:
        return Bound(self.value, self.kind, self.status, self.wall_s, self.cpu_s, self.peak_mem_mb,
                     self.device or "cpu", dict(self.stats), self.error, self.solve_s, self.traceback)

    def with_(self, **kw) -> "Outcome":
        return replace(self, **kw)
