"""The results store: one SQLite file (``lipbench.sqlite``) per output folder.

Tables: ``jobs`` (every finished job, train or verify, with its spec, status, cost and
versions), ``networks`` (trained or imported networks: readable id, content hash, trainer, params,
data set, seed, accuracy, file), ``results`` (one row per verification), ``runs`` (every
run of a suite into the store: start, end, summary, and its provenance: machine,
versions, git commit, executor and threads).  A network read from outside lipbench
(an import job) has trainer ``external``, its family in ``trainer_params``, where it came
from (path, content hash) in ``source`` and its input box, if it has one, in ``box``.
Each job is
written in one transaction, so the store never holds half a job; only the scheduler's
process writes.  ``meta`` remembers the schema and the suite(s) the store holds.

A job that failed by raising keeps the exception's ``traceback`` (jobs and results),
the plug-in's frames, file and line included (``bench show --errors`` prints them).

Timing columns, one meaning each: ``solve_s`` is the plug-in's own call (a verifier's
``run``, a trainer's ``train``), measured in the worker; ``wall_s`` the whole job, from
its worker's start to its outcome (imports, loading the network, the walk included);
``cpu_s`` the worker's CPU seconds.  ``threads`` is what the job was given.
"""
from __future__ import annotations

import os
import sqlite3
import time
from typing import Iterable

from .api import UserError
from .jobs import CertifyJob, ImportJob, Job, Outcome, TrainJob, VerifyJob, dumps, spec
from .rows import p_label, target_label

SCHEMA_VERSION = 1
#: the ``trainer`` of a network read from outside lipbench (its ``source`` column says from where)
EXTERNAL = "external"
DB_NAME = "lipbench.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS jobs (
    key TEXT PRIMARY KEY, type TEXT NOT NULL, spec TEXT NOT NULL, status TEXT NOT NULL,
    error TEXT, wall_s REAL, cpu_s REAL, peak_mem_mb REAL, device TEXT, versions TEXT,
    finished REAL, solve_s REAL, threads INTEGER);
CREATE TABLE IF NOT EXISTS networks (
    id TEXT PRIMARY KEY, job_key TEXT UNIQUE NOT NULL, net_hash TEXT NOT NULL,
    trainer TEXT NOT NULL, trainer_params TEXT NOT NULL, dataset TEXT NOT NULL,
    seed INTEGER NOT NULL, clean_acc REAL, metrics TEXT, path TEXT NOT NULL,
    input_shape TEXT NOT NULL, description TEXT);
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT, job_key TEXT UNIQUE NOT NULL,
    network TEXT NOT NULL, net_hash TEXT NOT NULL, verifier TEXT NOT NULL,
    verifier_params TEXT NOT NULL, p TEXT NOT NULL, target TEXT NOT NULL, domain TEXT NOT NULL,
    status TEXT NOT NULL, kind TEXT NOT NULL, value REAL, wall_s REAL, cpu_s REAL,
    peak_mem_mb REAL, device TEXT, versions TEXT, stats TEXT, error TEXT, audit TEXT,
    created REAL, solve_s REAL, threads INTEGER);
CREATE INDEX IF NOT EXISTS results_query ON results (network, p, target, domain);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, suite TEXT NOT NULL, started REAL NOT NULL, finished REAL,
    provenance TEXT NOT NULL, summary TEXT);
CREATE TABLE IF NOT EXISTS certified (
    network TEXT NOT NULL, verifier TEXT NOT NULL, verifier_params TEXT NOT NULL, p TEXT NOT NULL,
    eps REAL NOT NULL, certified_acc REAL NOT NULL, clean_acc REAL, source TEXT, job_key TEXT NOT NULL,
    PRIMARY KEY (network, verifier, verifier_params, p, eps));
"""

#: columns added after schema 1 (``Store`` adds them to an older store when it opens it)
_ADDED = {"jobs": [("solve_s", "REAL"), ("threads", "INTEGER"), ("traceback", "TEXT")],
          "results": [("solve_s", "REAL"), ("threads", "INTEGER"), ("traceback", "TEXT")],
          "networks": [("source", "TEXT"), ("box", "TEXT")]}



class Store:
    def __init__(self, folder: str, create: bool = True):
        self.folder = folder
        self.path = os.path.join(folder, DB_NAME)
        if not create and not os.path.exists(self.path):
            raise UserError(f"no results store at {self.path}; run the suite first (python -m bench run ...) "
                            f"or name the right folder with --out")
        try:
            os.makedirs(folder, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=30)
        except (OSError, sqlite3.OperationalError) as e:
            raise UserError(f"cannot open the results folder {folder}: {e}") from None
        self.db.row_factory = sqlite3.Row
        try:
            with self.db:
                self.db.executescript(_SCHEMA)
                self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.DatabaseError as e:
            raise UserError(f"{self.path} is not a lipbench store ({e})") from None
        v = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
        if int(v) != SCHEMA_VERSION:
            raise UserError(f"{self.path} has store schema {v}, this lipbench reads {SCHEMA_VERSION}")
        with self.db:   # columns added since schema 1 was written: a store of an older lipbench gains them
            for table, cols in _ADDED.items():
                have = {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}
                for col, typ in cols:
                    if col not in have:
                        self.db.execute(f"ALTER TABLE {table} ADD COLUMN {col} {typ}")

    # ---- what the store is of
    def meta(self, key: str) -> str | None:
        r = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if r is None else r[0]

    def claim_suite(self, name: str, mix: bool = False) -> None:
        """Remember that this store holds suite ``name``; another suite's run into it is
        refused (one line) unless ``mix``, which records both."""
        have = self.meta("suite")
        names = [] if have is None else have.split(",")
        if name in names:
            return
        if names and not mix:
            raise UserError(f"{self.folder} holds the results of suite {have}, not {name}; give another --out, "
                            f"or --mix-suites to add {name}'s results to the same store")
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('suite', ?)", (",".join(names + [name]),))

    def close(self):
        self.db.close()

    # ---- reads
    def done_keys(self, retry: tuple = ()) -> set[str]:
        """Keys of finished jobs, except those whose status is in ``retry``."""
        return {r[0] for r in self.db.execute("SELECT key, status FROM jobs") if r[1] not in retry}

    def job(self, key: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM jobs WHERE key=?", (key,)).fetchone()

    def network_by_job(self, job_key: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM networks WHERE job_key=?", (job_key,)).fetchone()

    def networks(self) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM networks ORDER BY id").fetchall()

    def results(self) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM results ORDER BY id").fetchall()

    def jobs(self, type_: str | None = None) -> list[sqlite3.Row]:
        if type_:
            return self.db.execute("SELECT * FROM jobs WHERE type=? ORDER BY finished", (type_,)).fetchall()
        return self.db.execute("SELECT * FROM jobs ORDER BY finished").fetchall()

    def joined(self) -> list[dict]:
        """Every result joined with its network: the export/report view."""
        rows = self.db.execute(
            """SELECT r.*, n.trainer, n.trainer_params, n.dataset, n.seed, n.clean_acc
               FROM results r JOIN networks n ON r.network = n.id ORDER BY r.network, r.id""").fetchall()
        return [dict(r) for r in rows]

    # ---- writes: one transaction per job
    def record(self, job: Job, out: Outcome) -> None:
        """Store a finished job and what it produced, in one transaction."""
        with self.db:
            self._job_row(job, out)
            if isinstance(job, TrainJob) and out.status == "ok":
                self._network_row(job, out.network, job.trainer, {"arch": job.arch, **job.params}, job.seed)
            elif isinstance(job, ImportJob) and out.status == "ok":
                self._network_row(job, out.network, EXTERNAL, {"family": job.family}, 0,
                                  {"source": job.source, "sha256": job.source_hash, "box_source": job.box_source},
                                  job.box)
            elif isinstance(job, VerifyJob):
                q = job.query
                self.db.execute(
                    "INSERT INTO results (job_key, network, net_hash, verifier, verifier_params, p, target, domain,"
                    " status, kind, value, wall_s, cpu_s, peak_mem_mb, device, versions, stats, error, created,"
                    " solve_s, threads, traceback) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (job.key, job.network, job.net_hash, job.verifier, dumps(job.params), p_label(q),
                     target_label(q), dumps(q.key()["domain"]), out.status, out.kind, out.value, out.wall_s,
                     out.cpu_s, out.peak_mem_mb, out.device, dumps(out.versions), dumps(out.stats), out.error,
                     time.time(), out.solve_s, out.threads, out.traceback))
            elif isinstance(job, CertifyJob):
                # certified accuracy is derived data: a newer computation for the same network,
                # verifier and p replaces the older one (its job row stays as history)
                for c in out.certified:
                    self.db.execute("DELETE FROM certified WHERE network=? AND verifier=? AND verifier_params=? "
                                    "AND p=?", (job.network, c["verifier"], c["verifier_params"], c["p"]))
                    for e, a in zip(c["eps"], c["certified_acc"]):
                        self.db.execute("INSERT INTO certified VALUES (?,?,?,?,?,?,?,?,?)",
                                        (job.network, c["verifier"], c["verifier_params"], c["p"], e, a,
                                         c["clean_acc"], c["source"], job.key))

    def _network_row(self, job, n, trainer: str, params: dict, seed: int, source: dict | None = None,
                     box: dict | None = None) -> None:
        """The ``networks`` row of a job that made network ``n`` (trained or imported)."""
        self.db.execute(
            "INSERT INTO networks (id, job_key, net_hash, trainer, trainer_params, dataset, seed, clean_acc, metrics,"
            " path, input_shape, description, source, box) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (job.network_id, job.key, n.net_hash, trainer, dumps(params), dumps(job.dataset), seed,
             n.metrics.get("clean_acc"), dumps(n.metrics), n.path, dumps(list(n.input_shape)), n.description,
             None if source is None else dumps(source), None if box is None else dumps(box)))

    def _job_row(self, job: Job, out: Outcome):
        # a retried job replaces its earlier (failed) rows in the same transaction
        key = job.key
        self.db.execute("DELETE FROM results WHERE job_key=?", (key,))
        self.db.execute("DELETE FROM networks WHERE job_key=?", (key,))
        self.db.execute("DELETE FROM jobs WHERE key=?", (key,))
        self.db.execute(
            "INSERT INTO jobs (key, type, spec, status, error, wall_s, cpu_s, peak_mem_mb, device, versions, finished,"
            " solve_s, threads, traceback) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (key, job.type, dumps(spec(job)), out.status, out.error, out.wall_s, out.cpu_s, out.peak_mem_mb,
             out.device, dumps(out.versions), time.time(), out.solve_s, out.threads, out.traceback))

    def certified(self) -> list[dict]:
        return [dict(r) for r in self.db.execute("SELECT * FROM certified ORDER BY network, verifier, p, eps")]

    def start_run(self, suite: str, provenance: dict) -> int:
        """Record a run's start and where it runs (:mod:`bench.provenance`); its id."""
        with self.db:
            cur = self.db.execute("INSERT INTO runs (suite, started, provenance) VALUES (?,?,?)",
                                  (suite, time.time(), dumps(provenance)))
        return int(cur.lastrowid)

    def finish_run(self, run_id: int, summary: dict) -> None:
        with self.db:
            self.db.execute("UPDATE runs SET finished=?, summary=? WHERE id=?", (time.time(), dumps(summary), run_id))

    def runs(self) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM runs ORDER BY id").fetchall()

    def set_audit(self, notes: Iterable[tuple[int, dict]]) -> None:
        """The audit's verdict on rows it lets stand (e.g. a checked witness)."""
        with self.db:
            for rid, note in notes:
                self.db.execute("UPDATE results SET audit=? WHERE id=?", (dumps(note), rid))

    def unsound(self) -> list[sqlite3.Row]:
        """Every row the audit marked, of this run or an earlier one."""
        return self.db.execute("SELECT * FROM results WHERE status='unsound' ORDER BY id").fetchall()

    def mark_unsound(self, marks: Iterable[tuple[int, dict]]) -> None:
        with self.db:
            for rid, note in marks:
                self.db.execute("UPDATE results SET status='unsound', audit=? WHERE id=?", (dumps(note), rid))
