"""The layering docs/architecture.md states, checked on every module of the four packages,
late (function-level) imports included: a late import hides a circle, it does not remove
it."""
import ast
import os
import subprocess
import sys

import pytest

from conftest import REPO

PACKAGES = ("bench", "methods", "baselines", "reports", "studies")
#: package -> the packages it may import
ALLOWED = {"bench": set(), "methods": {"bench"}, "baselines": {"bench", "methods"}, "reports": {"bench"},
           "studies": {"bench", "methods", "baselines"}}   # and nothing imports studies
#: the one module of bench that wires the packages together, and what it may import of them
WIRING = {"bench.cli": {"reports"}}


def _graph() -> dict[str, set[str]]:
    """Every module of the project -> the project's modules it imports anywhere in its code
    (`from pkg import sub` depends on the submodule, `from mod import name` on mod)."""
    raw = {}
    for top in PACKAGES:
        for d, _, files in os.walk(os.path.join(REPO, top)):
            for f in files:
                if not f.endswith(".py"):
                    continue
                path = os.path.join(d, f)
                parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
                pkg = parts[:-1]
                name = ".".join(pkg if parts[-1] == "__init__" else parts)
                deps = set()
                for node in ast.walk(ast.parse(open(path).read())):
                    if isinstance(node, ast.ImportFrom):
                        base = pkg[:len(pkg) - node.level + 1] if node.level else []
                        mod = ".".join(base + ([node.module] if node.module else []))
                        if mod.split(".")[0] in PACKAGES:
                            deps |= {(f"{mod}.{a.name}", mod) for a in node.names}
                    elif isinstance(node, ast.Import):
                        deps |= {(a.name, a.name) for a in node.names if a.name.split(".")[0] in PACKAGES}
                raw[name] = deps
    modules = set(raw)

    def resolve(m):
        while m and m not in modules:
            m = m.rpartition(".")[0]
        return m
    return {m: {sub if sub in modules else resolve(mod) for sub, mod in deps} - {m, ""} for m, deps in raw.items()}


GRAPH = _graph()


def test_the_graph_sees_every_package_and_late_imports():
    assert {p for m in GRAPH for p in [m.split(".")[0]]} == set(PACKAGES)
    assert "reports.pdf" in GRAPH["bench.cli"] or "reports" in GRAPH["bench.cli"]   # a function-level import
    assert "bench.api" in GRAPH["baselines.verify.lipsdp"]


def test_packages_import_only_down():
    wrong = []
    for m, deps in GRAPH.items():
        top = m.split(".")[0]
        for d in deps:
            other = d.split(".")[0]
            if other == top or other in ALLOWED[top]:
                continue
            if other in WIRING.get(m, ()):
                continue
            wrong.append(f"{m} -> {d}")
    assert not wrong, "imports against the layering of docs/architecture.md: " + ", ".join(sorted(wrong))


def test_no_import_circle_anywhere():
    def reaches(a, b, seen):
        for c in GRAPH.get(a, ()):
            if c == b or (c not in seen and not seen.add(c) and reaches(c, b, seen)):
                return True
        return False
    circles = sorted((a, b) for a in GRAPH for b in GRAPH[a] if reaches(b, a, set()))
    assert not circles, f"import circles (module, what it imports that imports it back): {circles}"
    assert "bench.network" not in GRAPH["bench.registry"] and "bench.network" not in GRAPH["bench.activations"]


def test_the_architecture_document_states_the_rules():
    text = " ".join(open(os.path.join(REPO, "docs", "architecture.md")).read().split())
    assert "`baselines` may import `methods`" in text and "`bench/cli.py`" in text
    assert "tests/test_layering.py" in text


@pytest.mark.parametrize("order", [("bench.network", "bench.registry"), ("bench.registry", "bench.network"),
                                   ("bench.activations", "bench.network")])
@pytest.mark.slow
def test_fresh_imports_in_either_order(order):
    code = ("import importlib, sys\n"
            f"for m in {list(order)!r}:\n    importlib.import_module(m)\n"
            "from bench.registry import ACTIVATIONS, register_activation, get_activation\n"
            "import bench\n"
            "assert bench.register_activation is register_activation\n"
            "assert {'relu', 'tanh', 'leaky_relu'} <= set(ACTIVATIONS)\n"
            "assert type(get_activation('abs')()).__name__ == 'Abs'\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", "")))
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def _trees():
    for top in PACKAGES:
        for d, _, files in os.walk(os.path.join(REPO, top)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(d, f)
                    yield os.path.relpath(path, REPO), ast.parse(open(path).read())


def test_only_public_names_cross_modules():
    """`from mod import _name` and `mod._name` stay inside a module: what another module
    needs is public."""
    crossing = []
    for path, tree in _trees():
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] in PACKAGES):
                imported |= {a.asname or a.name for a in node.names}
                crossing += [f"{path}:{node.lineno} imports {a.name}" for a in node.names
                             if a.name.startswith("_") and not a.name.startswith("__")]
            elif isinstance(node, ast.Import):
                imported |= {(a.asname or a.name).split(".")[0] for a in node.names
                             if a.name.split(".")[0] in PACKAGES}
        crossing += [f"{path}:{node.lineno} reads {node.value.id}.{node.attr}" for node in ast.walk(tree)
                     if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                     and node.value.id in imported and node.attr.startswith("_") and not node.attr.startswith("__")]
    assert not crossing, "private names used from another module: " + ", ".join(crossing)


def test_reports_read_stored_json_through_bench():
    """Stored JSON (stats, audit notes, parameters, versions, provenance) is read by
    bench.rows.mapping and tidy's frames, the one reading; no report module parses it."""
    parsing = [path for path, tree in _trees() if path.startswith("reports") and any(
        isinstance(n, ast.Import) and any(a.name == "json" for a in n.names) or
        isinstance(n, ast.ImportFrom) and n.module == "json" for n in ast.walk(tree))]
    assert not parsing, f"report modules that parse JSON themselves: {parsing}"
