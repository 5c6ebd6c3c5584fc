"""``python -m bench``: run, verify, list, report, show, export, data.

Every error a user can cause is one line on stderr and exit code 2; ``run`` and ``verify``
exit with 1 while the store holds an unsound row, else 3 while a job has ended in error
(:func:`exit_code`)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import logging
import os
import sys

from .api import UserError, p_name

log = logging.getLogger("bench")


def _suite_name(s: str) -> str:
    base = os.path.basename(s)
    return base.rsplit(".", 1)[0] if base.endswith((".yaml", ".yml")) else base


def _out(args) -> str:
    return args.out or os.path.join("results", _suite_name(args.suite))


def cmd_run(args) -> int:
    from .scheduler import run_suite
    from .suite import load_suite
    suite = load_suite(args.suite)
    if args.plugin:  # worker processes import them too
        from .suite import plugin_entry
        extra = tuple(plugin_entry(p, os.getcwd()) for p in args.plugin)
        suite = dataclasses.replace(suite, plugins=tuple(dict.fromkeys(suite.plugins + extra)))
    executor = _executor(args)
    out = _out(args)
    from .scheduler import folder_lock
    with folder_lock(out):   # held through the report too
        summary = run_suite(suite, out, workers=args.jobs or 1, executor=executor, device=args.device, data_dir=args.data_dir,
                            timeout=args.timeout, threads=args.threads, retry=args.retry,
                            mem_limit=args.mem_limit, mix_suites=args.mix_suites)
        if not args.no_report:
            from reports import write_report
            path = write_report(out, title=f"lipbench report: suite {suite.name}")
            log.info("report: %s", path)
    return exit_code(summary)


def _executor(args):
    """The executor ``run`` and ``verify`` hand jobs to, from their options (checked)."""
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"-j must be at least 1, got {args.jobs}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    if args.mem_limit is not None and not 0 < args.mem_limit < float("inf"):
        raise UserError(f"--mem-limit must be a positive number of megabytes, got {args.mem_limit}")
    if getattr(args, "executor", "local") == "ray":
        from .executors.ray import RayExecutor
        return RayExecutor(args.address, workers=args.jobs)
    if getattr(args, "address", None):
        raise UserError("--address is the Ray cluster's; give it with --executor ray")
    return None


def cmd_verify(args) -> int:
    """Bound one network with every verifier: a suite of one network, run by the same
    scheduler into a store, then one table per query."""
    import tempfile

    from . import sources
    from .api import BOX, Query, Unsupported
    from .registry import VERIFIERS, get_verifier, load_plugins
    from .rows import p_label, target_label
    from .scheduler import folder_lock, run_suite
    from .suite import NetworkEntry, Suite, VerifyEntry, network_name
    from .walk import walk
    load_plugins()
    names = args.verifier or sorted(VERIFIERS)
    classes = [get_verifier(n) for n in names]   # an unknown name: a UserError listing the valid ones
    if args.timeout is not None and not 0 < args.timeout < float("inf"):
        raise UserError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    shape = tuple(args.input_shape) if args.input_shape else None
    if shape is not None and min(shape) < 1:
        raise UserError(f"--input-shape takes positive whole numbers, got {' '.join(map(str, shape))}")
    try:   # read here first: an unreadable network is one line before any store exists
        module, shape_read = sources.read(args.model, shape)
        net = walk(module, shape_read)
    except Unsupported as e:
        raise UserError(f"{args.model}: lipbench cannot read this network: {e}") from None
    box = _box(args, net.in_dim)
    installed = [c for c in classes if not c.missing()]
    norms = args.p or sorted({p for c in (installed or classes) for p in c.norms})
    try:
        queries = tuple(Query(p=p, target=tuple(args.target) if args.target else "full",
                              domain="global" if box is None else BOX) for p in norms)
    except UserError as e:
        raise UserError(f"--p / --target: {e}") from None
    plugins = tuple(dict.fromkeys(_plugin_entries(args)))
    entry = NetworkEntry(args.model, network_name(args.model), None, shape, None, box)
    suite = Suite("verify", f"bench verify {args.model}", (), (0,), args.timeout, (),
                  tuple(VerifyEntry(c.name, {}, {}, None, None) for c in classes), queries, plugins,
                  networks=(entry,))
    if args.out:
        out = args.out
    else:
        out = os.path.join(tempfile.gettempdir(), "lipbench-verify",
                           f"{entry.name}-{sources.fingerprint(args.model, shape, module)[:8]}")
        log.info("results folder: %s (give --out DIR to choose it)", out)
    executor = _executor(args)
    job = suite.import_jobs(out)[0]   # its key: what the network holds (run_suite computes the same)
    with folder_lock(out):
        summary = run_suite(suite, out, workers=args.jobs or 1, executor=executor, device=args.device,
                            threads=args.threads, mem_limit=args.mem_limit, retry=args.retry)
        nid = job.network_id
        from .store import Store
        store = Store(out)
        try:
            row = store.job(job.key)
        finally:
            store.close()
        if row is not None and row["status"] != "ok":   # read here, but not in its worker (a timeout, memory)
            raise UserError(f"{args.model}: reading the network ended in {row['status']}: {row['error']}"
                            + ("; --retry reads it again" if row["status"] in ("timeout", "error", "oom") else ""))
        _print_answers(out, nid, net.describe(), args.box_file, {c.name for c in classes},
                       {(p_label(q), target_label(q)) for q in queries})
    print(f"\nstore: {out} (python -m bench show|report|export --out {out})")
    return exit_code(summary)


def _plugin_entries(args):
    from .suite import plugin_entry
    return (plugin_entry(p, os.getcwd()) for p in args.plugin)


def _box(args, n: int) -> dict | None:
    """The input box of ``verify``'s --box CENTER RADIUS (CENTER one number for every input,
    or n numbers separated by commas) or --box-file, checked against the n inputs."""
    from .api import Query
    if args.box and args.box_file:
        raise UserError("give the box once: --box CENTER RADIUS or --box-file FILE")
    if args.box_file:
        from .sources import read_box
        box = read_box(args.box_file)
        where = args.box_file
    elif args.box:
        try:
            center = [float(x) for x in args.box[0].split(",")]
            radius = float(args.box[1])
        except ValueError:
            raise UserError(f"--box CENTER RADIUS takes numbers (CENTER: one, or {n} separated by commas), got "
                            f"{' '.join(args.box)}") from None
        box = {"center": center * n if len(center) == 1 else center, "radius": radius}
        where = "--box"
    else:
        return None
    size = len(box.get("lower", box.get("center")))
    if size != n:
        raise UserError(f"{where}: the box has {size} inputs, the network {n}")
    Query(domain=box)   # a bad box: a one-line UserError
    return box


def _print_answers(out: str, network: str, described: str, box_file: str | None, verifiers: set,
                   queries: set) -> None:
    """One table per query of ``network``'s results (of these ``verifiers`` and ``queries``,
    (p, target) labels: the store may hold more): verifier, bound, kind, bound / best
    sound lower bound, time, status (and why, where not ok); the tightest sound bound and
    the cheapest within 10% of it in a sentence under each table."""
    from .rows import TIGHT_WITHIN, answer
    from .tidy import frame
    df = frame(out)
    import numpy as np
    asked = np.array([(p, t) in queries for p, t in zip(df.p, df.target)], dtype=bool)
    df = df[(df.network == network).to_numpy() & df.verifier.isin(verifiers).to_numpy() & asked]
    print(f"\n{network}: {described[:200]}")
    order = {"exact": 0, "upper": 1, "lower": 2}
    for (p, target, domain), g in df.groupby(["p", "target", "domain"], sort=True):
        where = "global" if domain == "global" else f"over the box{f' of {box_file}' if box_file else ''}"
        print(f"\np={p}{'' if target == 'full' else f', margin {target}'}, {where}")
        rows = g.to_dict("records")
        rows.sort(key=lambda r: (r["value"] is None or r["value"] != r["value"], order.get(r["kind"], 3),
                                 r["value"] if r["value"] == r["value"] and r["value"] is not None else 0,
                                 r["verifier"]))
        print(f"  {'verifier':<13} {'bound':>12} {'kind':<6} {'/ lower':>9} {'time':>8}  status")
        for r in rows:
            v = r["value"]
            has = v is not None and v == v and r["status"] != "unsound"   # an unsound value is no bound
            t = r["tightness"]
            ratio = f"{t:.3g}" if has and t is not None and t == t else "-"
            cost = r["cost_s"] if r["status"] not in ("unsupported", "not_installed") else None
            text = lambda x: x if isinstance(x, str) else ""  # noqa: E731 (the frame's missing text is NaN)
            why = text(r["error"]).strip().splitlines() or [text(r["audit"])]   # unsound: the audit's note
            status = r["status"] if r["status"] == "ok" else f"{r['status']}: {why[0][:200]}".rstrip(": ")
            shown = f"{v:.6g}" if has else ("UNSOUND" if r["status"] == "unsound" else "-")
            print(f"  {r['verifier']:<13} {shown:>12} {r['kind'] if has else '-':<6} "
                  f"{ratio:>9} {f'{cost:.2f} s' if cost is not None and cost == cost else '-':>8}  {status}")
        tight, cheap = answer(rows)
        if tight is None:
            print("  no verifier gave a sound upper bound for this query")
            continue
        lb = tight["best_lower"]
        gap = f", {tight['value'] / lb:.3g} x the best lower bound" if lb and lb == lb else ""
        kept = lambda r: " kept at its timeout" if r["status"] == "timeout" else ""  # noqa: E731
        line = f"  tightest sound bound: {tight['verifier']}, {tight['value']:.6g} ({tight['kind']}{kept(tight)}{gap})"
        if cheap["verifier"] != tight["verifier"]:
            line += (f"; cheapest within {TIGHT_WITHIN - 1:.0%} of it: {cheap['verifier']}, {cheap['value']:.6g} "
                     f"in {cheap['cost_s']:.2g} s{kept(cheap)}")
        else:
            line += f", also the cheapest within {TIGHT_WITHIN - 1:.0%} of it ({tight['cost_s']:.2g} s)"
        print(line)


#: exit codes of run and verify: an unsound row in the store (the worst), a user error (one
#: line, nothing run), a job that ended in error (a plug-in raised, a worker died)
EXIT_UNSOUND, EXIT_USER, EXIT_ERRORS = 1, 2, 3


def exit_code(summary: dict) -> int:
    """run's and verify's exit code from the store's state after the run: 1 while it holds an
    unsound row, else 3 while a job has ended in ``error`` (timeouts, ``unsupported`` and
    ``not_installed`` are answers, not errors), else 0."""
    return EXIT_UNSOUND if summary["unsound"] else (EXIT_ERRORS if summary.get("errors") else 0)


def cmd_list(args) -> int:
    from .registry import ACTIVATIONS, BROKEN, TRAINERS, VERIFIERS, load_plugins
    load_plugins()
    if args.markdown:
        print(markdown_reference(), end="")
        return 0
    if args.name:
        from .suite import shipped_suites
        if args.name in shipped_suites() or args.name.endswith((".yaml", ".yml")):
            return _describe_suite(args.name)
        return _describe(args.name)
    rows = [("name", "type", "kind", "norms", "installed", "description")]
    for name, cls in sorted(TRAINERS.items()):
        miss = cls.missing()
        rows.append((name, "trainer", "-", "-", "yes" if not miss else f"no: missing {', '.join(miss)}",
                     cls.description))
    for name, cls in sorted(VERIFIERS.items()):
        miss = cls.missing()
        inst = "yes" if not miss else f"no: missing {', '.join(miss)}" + (f" ({cls.install_hint})" if cls.install_hint else "")
        rows.append((name, "verifier", cls.kind, ",".join(p_name(p) for p in cls.norms), inst, cls.description))
    for name, err in sorted(BROKEN.items()):
        rows.append((name, "broken", "-", "-", f"no: failed to load: {err}", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5])
    print(f"\nactivations: {', '.join(sorted(ACTIVATIONS))}")
    from .suite import shipped_suites
    print(f"suites: {', '.join(shipped_suites())}")
    return 0


def markdown_reference() -> str:
    """The verifiers and trainers lipbench ships, as markdown tables generated from their
    own declarations (name, version, kind, norms, what it reads, requirements,
    description, every parameter with its default, range and meaning): the body of
    docs/reference.md (``python -m bench list --markdown``).  Plug-ins of the
    ``lipbench.plugins`` entry points only, so that the page is the same on every
    machine."""
    from .registry import TRAINERS, VERIFIERS

    def cell(s) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    def params(cls) -> str:
        decl = cls.declared()
        if not decl:
            return "none"
        out = []
        for k, p in decl.items():
            rng = p.describe_range()
            out.append(f"`{k}` = `{p.default!r}`" + ("" if rng == "any" else f" ({rng})") + (f": {p.doc}" if p.doc else ""))
        return "<br>".join(cell(x) for x in out)

    shipped = lambda cls: cls.__module__.split(".")[0] in ("methods", "baselines", "bench")  # noqa: E731
    lines = ["## Verifiers", "", "| verifier | version | kind | p | reads | needs | what it is | parameters |",
             "|---|---|---|---|---|---|---|---|"]
    for name, cls in sorted(VERIFIERS.items()):
        if not shipped(cls):
            continue
        reads = "any module (gradients)" if cls.gradients_only else ("chains and branches" if cls.graphs else "chains")
        needs = ", ".join(f"`{r}`" for r in cls.requires) or "-"
        lines.append(f"| `{name}` | {cls.version} | {cls.kind} | {', '.join(p_name(p) for p in cls.norms)} | "
                     f"{reads} | {needs} | {cell(cls.description)} | {params(cls)} |")
    lines += ["", "## Trainers", "", "| trainer | version | needs | what it is | parameters |", "|---|---|---|---|---|"]
    for name, cls in sorted(TRAINERS.items()):
        if not shipped(cls):
            continue
        needs = ", ".join(f"`{r}`" for r in cls.requires) or "-"
        lines.append(f"| `{name}` | {cls.version} | {needs} | {cell(cls.description)} | {params(cls)} |")
    return "\n".join(lines) + "\n"


def _describe_suite(name: str) -> int:
    """What a suite holds: its data sets, trainers and architectures, networks read from
    elsewhere, verifiers, queries and budgets."""
    from .suite import load_suite
    s = load_suite(name)
    print(f"suite {s.name}: {s.description}".rstrip(": "))
    if s.datasets:
        print(f"data sets: {', '.join(d if isinstance(d, str) else json.dumps(d) for d in s.datasets)}; "
              f"seeds {', '.join(map(str, s.seeds))}")
    for e in s.train:
        grid = "".join(f", {k} in {v}" for k, v in e.grid.items())
        print(f"train {e.trainer}: {len(e.archs)} architecture(s){grid}; params {json.dumps(e.params)}")
    for e in s.networks:
        extra = "".join(f", {k} {v}" for k, v in (("family", e.family), ("input shape", e.input_shape),
                                                  ("data set", e.dataset)) if v is not None)
        box = "" if e.box is None else f", box {e.box if isinstance(e.box, str) else 'given inline'}"
        print(f"network {e.name}: {e.source}{extra}{box}")
    print("verifiers: " + ", ".join(f"{e.verifier}" + (f" ({e.timeout:g} s)" if e.timeout else "")
                                    for e in s.verify) + f"; timeout {s.timeout:g} s per job")
    print("queries: " + "; ".join(_query_text(q) for q in s.queries))
    if s.certify_eps:
        print(f"certified accuracy at eps {json.dumps(s.certify_eps)}")
    return 0


def _query_text(q) -> str:
    d = q.domain if isinstance(q.domain, str) else "a box"
    return f"p={p_name(q.p)}" + ("" if not q.is_pair else f" margin {q.target[0]}-{q.target[1]}") + f" {d}"


def _describe(name: str) -> int:
    """One plug-in: what it is and its declared parameters."""
    from .registry import TRAINERS, VERIFIERS, get_trainer, get_verifier
    if name not in VERIFIERS and name not in TRAINERS:
        raise UserError(f"unknown plug-in {name!r}; verifiers: {', '.join(sorted(VERIFIERS))}; "
                        f"trainers: {', '.join(sorted(TRAINERS))}")
    cls = get_verifier(name) if name in VERIFIERS else get_trainer(name)
    what = f"verifier, kind {cls.kind}, p in {{{', '.join(p_name(p) for p in cls.norms)}}}" \
        if name in VERIFIERS else "trainer"
    print(f"{cls.name} (version {cls.version}): {what}\n  {cls.description}")
    if cls.missing():
        print(f"  not installed: missing {', '.join(cls.missing())}" + (f" ({cls.install_hint})" if cls.install_hint else ""))
    decl = cls.declared()
    print("parameters:" if decl else "parameters: none")
    for k, p in decl.items():
        allowed = p.describe_range()
        print(f"  {k:<14} default {p.default!r:<10} {'' if allowed == 'any' else allowed + '. '}{p.doc}".rstrip())
    return 0


def cmd_report(args) -> int:
    from reports import write_report
    path = write_report(_out(args), args.file)   # the title names the suite the store holds
    print(path)
    return 0


def _rows(args) -> list[dict]:
    from .store import Store
    store = Store(_out(args), create=False)
    try:
        return store.joined()
    finally:
        store.close()


def cmd_export(args) -> int:
    from .tidy import frame
    df = frame(_out(args))
    if args.format == "parquet":
        if not args.file:
            raise UserError("--format parquet writes a binary file: give --file F.parquet")
        try:
            df.to_parquet(args.file, index=False)
        except ImportError as e:
            raise UserError(f"parquet needs pyarrow (pip install pyarrow): {e}") from None
        return 0
    fh = open(args.file, "w", newline="") if args.file else sys.stdout
    try:
        if args.format == "csv":
            df.to_csv(fh, index=False)
        else:
            df.to_json(fh, orient="records", lines=True)
    finally:
        if args.file:
            fh.close()
    return 0


def cmd_show(args) -> int:
    if args.errors:
        return _show_errors(args)
    if not args.all:
        return _show_headline(args)
    from .rows import best_lower_values, cost_s, tightness
    rows = _rows(args)
    best = best_lower_values(rows)
    print(f"{'network':<46} {'p':<3} {'target':<6} {'verifier':<9} {'status':<11} {'value':>12} {'tight':>7} {'solve_s':>8}")
    for r in rows:
        t = tightness(r, best)
        ratio = "-" if t is None else f"{t:.3f}"
        val = f"{r['value']:.6g}" if r["value"] is not None else "-"
        print(f"{r['network'][:46]:<46} {r['p']:<3} {r['target']:<6} {r['verifier']:<9} {r['status']:<11} "
              f"{val:>12} {ratio:>7} {cost_s(r) or 0:>8.3f}")
    return 0


def _show_errors(args) -> int:
    """Every job that ended in ``error``: what it was, the error, and the traceback where
    the job raised (the plug-in's frames, file and line)."""
    import json as _json

    from .store import Store
    store = Store(_out(args), create=False)
    try:
        jobs = [dict(j) for j in store.jobs() if j["status"] == "error"]
    finally:
        store.close()
    if not jobs:
        print(f"{_out(args)}: no job ended in error")
        return 0
    for j in jobs:
        spec = _json.loads(j["spec"])
        what = {"verify": lambda: f"verify {spec['verifier']} p={spec['query']['p']} on {spec['network']}",
                "train": lambda: f"train {spec['network_id']}", "import": lambda: f"import {spec['network_id']}",
                "certify": lambda: f"certify {spec['network']}"}.get(j["type"], lambda: j["type"])()
        print(f"== {what}\n   {j['error']}")
        if j.get("traceback"):
            print("   " + j["traceback"].rstrip().replace("\n", "\n   "))
        print()
    print(f"{len(jobs)} job(s) ended in error")
    return 0


def _show_headline(args) -> int:
    """The report's headline tables in the terminal, one per query norm (class-pair
    margins apart), transposed to fit: one line per verifier, one column per training
    method; a cell is the median upper / best lower bound [interquartile range], the
    median time and the share settled; '*' marks the cheapest verifier within 10% of the
    best for that method at that norm."""
    from .tidy import AT, frame, headline, headline_sentence, per_norm, row_order
    df = frame(_out(args))
    if df.empty:
        print(f"{_out(args)}: the store holds no results yet")
        return 0
    h = headline(per_norm(df))
    w = 34
    norms = sorted({label.partition(AT)[2] for label in h.method}, key=lambda n: row_order(AT + n))
    for norm in norms:
        methods = sorted(label for label in h.method.unique() if label.partition(AT)[2] == norm)
        print(f"queries at {norm}")
        _show_norm(h, methods, w)
        print()
    print("cell: median upper / best lower bound [interquartile range], median verifier time (solve_s), share of "
          "queries it supports settled (exact, or within 10% of the best lower bound); * the cheapest within 10% of "
          "the best")
    print(headline_sentence(h))
    return 0


def _show_norm(h, methods: list, w: int) -> None:
    from .tidy import AT
    print(f"{'verifier':<14}" + "".join(f"{m.partition(AT)[0][:w - 1]:<{w}}" for m in methods))
    for v, g in h[h.method.isin(methods)].groupby("verifier", sort=True):
        cells = {r.method: r for r in g.itertuples()}
        line = f"{v[:13]:<14}"
        for m in methods:
            r = cells.get(m)
            if r is None:
                c = "-"
            elif r.applicable == 0:
                c = r.statuses.split(" ")[0]
            elif r.unsound:   # first: a tightness below 1 is a wrong bound, not a good one
                c = f"UNSOUND {int(r.unsound)}/{r.applicable}"
            elif r.tight_median is None or r.tight_median != r.tight_median:   # NaN: no lower bound to compare
                c = f"no lower bound {r.cost_median_s:.2g}s"
            else:
                c = (f"{'*' if r.best else ''}{r.tight_median:.3g} [{r.tight_q25:.3g}-{r.tight_q75:.3g}] "
                     f"{r.cost_median_s:.2g}s {r.settled_share:.0%}")
            errors = re.search(r"\berror (\d+)", r.statuses) if r is not None else None
            if errors and r.applicable:
                c += f" err {errors.group(1)}"
            line += f"{c[:w - 1]:<{w}}"
        print(line)


def cmd_data(args) -> int:
    from .data import CIFAR_MD5, CIFAR_URL, VNNCOMP_URL, download_cifar, download_vnncomp
    if args.name == "vnncomp":
        if args.md5:
            raise UserError("--md5 is the CIFAR-10 archive's; the VNN-COMP files are checked against their own SHA-256")
        url = args.url or VNNCOMP_URL
        path = download_vnncomp(args.data_dir, url=url if url.endswith("/") else url + "/", progress=not args.quiet)
    else:
        path = download_cifar(args.data_dir, url=args.url or CIFAR_URL, md5=args.md5 or CIFAR_MD5,
                              progress=not args.quiet)
    print(path)
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench", description="lipbench: Lipschitz verification benchmark")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    ap.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    ap.add_argument("--plugin", action="append", default=[], metavar="MODULE|FILE|DIR",
                    help="import a plug-in first: a module name, a .py file, or a folder of .py files "
                         "(plug-ins registered with the decorator); repeatable")
    sub = ap.add_subparsers(dest="verb", required=True)
    _add_run(sub)
    _add_verify(sub)
    _add_small(sub)
    return ap


def _suite_args(p) -> None:
    """--suite and --out, which every verb that reads a suite's store takes."""
    p.add_argument("--suite", default="digits", help="a shipped suite's name or a path to a suite YAML file")
    p.add_argument("--out", help="results folder (default: ./results/<suite>)")


def _add_run(sub) -> None:
    r = sub.add_parser("run", help="train, verify, audit and report a suite (resumes an earlier run)")
    _suite_args(r)
    r.add_argument("-j", "--jobs", type=int, help="jobs at once (default: 1 locally; with --executor ray, as many "
                                                  "as the cluster's CPUs hold)")
    r.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="where jobs run: worker processes on this machine (default), or Ray tasks")
    r.add_argument("--address", metavar="HOST:PORT",
                   help="with --executor ray: the Ray cluster's head (default: start a local Ray instance)")
    r.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    r.add_argument("--timeout", type=float, help="per-job timeout in seconds, overriding the suite's")
    r.add_argument("--threads", type=int, help="torch threads per job (default: the suite's threads, else 1)")
    r.add_argument("--mem-limit", type=float, metavar="MB",
                   help="memory a job may allocate, in MB; above it the job is recorded as oom (default: the "
                        "suite's mem_limit, else no cap)")
    r.add_argument("--mix-suites", action="store_true",
                   help="allow a suite into an --out folder that holds another suite's results")
    r.add_argument("--data-dir", help="folder with mnist / cifar files (default $LIPBENCH_DATA or ./data)")
    r.add_argument("--no-report", action="store_true", help="do not write the PDF at the end")
    r.add_argument("--retry", action="store_true",
                   help="run again the jobs that ended in timeout, error or oom (their rows are replaced)")
    r.set_defaults(func=cmd_run)


def _add_verify(sub) -> None:
    v = sub.add_parser("verify", help="bound one network's Lipschitz constant with every verifier: an ONNX file, a "
                                      "saved module (.pt, .pth) or package.module:attribute")
    v.add_argument("model", help="an .onnx file, a .pt / .pth file (a whole module or TorchScript), or "
                                 "package.module:attribute (a module, or a function returning one)")
    v.add_argument("--input-shape", type=int, nargs="+", metavar="D",
                   help="one input's shape without the batch dimension (e.g. 1 28 28), where the file cannot tell it")
    v.add_argument("--p", nargs="+", metavar="P", help="norms: 1 2 inf (default: every norm an installed verifier "
                                                       "supports)")
    v.add_argument("--target", type=int, nargs=2, metavar=("I", "J"), help="bound the margin f_I - f_J, not the "
                                                                          "whole output")
    v.add_argument("--box", nargs=2, metavar=("CENTER", "RADIUS"),
                   help="bound over the box |x - CENTER|_inf <= RADIUS (CENTER: one number for every input, or one "
                        "per input separated by commas); default: globally")
    v.add_argument("--box-file", metavar="FILE", help="bound over a box of per-input bounds: a .vnnlib file's input "
                                                      "box, or a text file of 'lower upper' lines")
    v.add_argument("--verifier", nargs="+", metavar="NAME", help="verifiers (default: every registered one; those "
                                                                 "not installed or not applicable are listed as such)")
    v.add_argument("--timeout", type=float, default=60.0, help="seconds per verifier and query (default 60)")
    v.add_argument("-j", "--jobs", type=int, help="jobs at once (default 1)")
    v.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    v.add_argument("--threads", type=int, help="torch threads per job (default 1)")
    v.add_argument("--mem-limit", type=float, metavar="MB", help="memory a job may allocate, in MB (default: no cap)")
    v.add_argument("--out", help="results folder, kept (default: a folder under the system's temporary directory, "
                                 "named after the network and its content)")
    v.add_argument("--retry", action="store_true",
                   help="run again the jobs that ended in timeout, error or oom (their rows are replaced)")
    v.set_defaults(func=cmd_verify)


def _add_small(sub) -> None:
    """The verbs of a few options each: list, report, show, data, export."""
    l = sub.add_parser("list", help="registered trainers and verifiers, whether they are installed, and the shipped "
                                    "suites")
    l.add_argument("name", nargs="?", help="one plug-in (its declared parameters) or suite (what it holds)")
    l.add_argument("--markdown", action="store_true", help="the shipped verifiers and trainers as markdown tables "
                                                           "(the body of docs/reference.md)")
    l.set_defaults(func=cmd_list)

    p = sub.add_parser("report", help="write the PDF report from the store")
    _suite_args(p)
    p.add_argument("--file", help="PDF path (default: <out>/report.pdf)")
    p.set_defaults(func=cmd_report)

    s = sub.add_parser("show", help="print the headline table (or, with --all, every result)")
    _suite_args(s)
    s.add_argument("--all", action="store_true", help="every result, one line each")
    s.add_argument("--errors", action="store_true", help="every job that ended in error, with its traceback")
    s.set_defaults(func=cmd_show)

    d = sub.add_parser("data", help="download what is not bundled: cifar (CIFAR-10, 163 MB), vnncomp (the VNN-COMP "
                                    "2021 networks and properties of the vnncomp suite, 12 MB)")
    d.add_argument("name", choices=["cifar", "vnncomp"])
    d.add_argument("--data-dir", help="where to put it (default: $LIPBENCH_DATA or ./data)")
    d.add_argument("--url", help="a mirror: of the original cifar-10-python.tar.gz, or of the vnncomp2021 "
                                 "repository's benchmarks/ folder at its pinned commit")
    d.add_argument("--md5", help="the archive's MD5, when a mirror holds another file (default: the original's)")
    d.set_defaults(func=cmd_data)

    e = sub.add_parser("export", help="write the store as one tidy row per result")
    _suite_args(e)
    e.add_argument("--format", choices=["csv", "parquet", "jsonl"], default="csv")
    e.add_argument("--file", help="output file (default: standard output)")
    e.set_defaults(func=cmd_export)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else (logging.WARNING if args.quiet else logging.INFO)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    try:
        from .registry import import_plugin
        for mod in args.plugin:
            try:
                import_plugin(mod)
            except UserError as e:
                raise UserError(f"--plugin {mod}: {e}") from None
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER
    except BrokenPipeError:  # e.g. `show | head`
        sys.stderr.close()
        return 0
    except OSError as e:  # a file or folder the user named: unwritable, missing, a directory
        print(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("interrupted; finished jobs are stored, rerun the same command to resume", file=sys.stderr)
        return 130
