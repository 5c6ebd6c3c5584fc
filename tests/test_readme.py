"""The README's and docs/'s examples, run exactly as written: every Python block runs
(the named ones by a test of their own that checks what they print), every `python -m
bench` command line of a shell block parses and names a suite that exists."""
import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import REFERENCE, REPO

README = open(os.path.join(REPO, "README.md")).read()
DOCS = {os.path.relpath(f, REPO): open(f).read() for f in sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))}
PAGES = {"README.md": README, **DOCS}
PLUGINS = DOCS["docs/plugins.md"]
API = DOCS["docs/api.md"]
#: a block named <!-- example: NAME --> is run by a test here that checks what it does
NAMED = {"api", "residual", "my_plugins.py", "check.py", "mine.yaml"}


def block(after: str, text: str = README) -> str:
    m = re.search(re.escape(after) + r"\s*```\w*\n(.*?)```", text, re.S)
    assert m, f"no code block after {after!r}"
    return m.group(1)


def blocks(lang: str):
    """(page, name or None, code) of every ```lang block of README.md and docs/."""
    out = []
    for page, text in PAGES.items():
        for m in re.finditer(r"(<!-- example: ([^ ]+) -->\s*)?```" + lang + r"\n(.*?)```", text, re.S):
            out.append((page, m.group(2), m.group(3)))
    return out


def run(args, cwd, pythonpath):
    env = dict(os.environ, PYTHONPATH=pythonpath)
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_readme_starts_with_the_two_commands_and_ci_runs_them():
    cmds = re.findall(r"```sh\n(.*?)\n```", README, re.S)[:2]
    assert "bench run --suite digits" in cmds[0] and "pip install torch==2.13.0" in cmds[0]
    assert "pytest" in cmds[1]
    # .ci/run reads them from README.md and runs them as written: its reader gives these two
    ci = open(os.path.join(REPO, ".ci", "run")).read()
    reader = re.search(r"^readme_command\(\) \{.*\}$", ci, re.M).group(0)
    for k, cmd in enumerate(cmds, 1):
        got = subprocess.run(["bash", "-c", f"{reader}\nreadme_command {k}"], capture_output=True, text=True,
                             cwd=REPO, check=True).stdout.strip()
        assert got == cmd
        assert f'"$(readme_command {k})"' in ci
    assert 'bash -euxo pipefail -c "$cmd1"' in ci and 'bash -euxo pipefail -c "$cmd2"' in ci


@pytest.mark.slow
def test_python_api_example():
    code = block("<!-- example: api -->", API)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "upper ok" in out.stdout


@pytest.mark.slow
def test_residual_and_onnx_example(tmp_path):
    code = block("<!-- example: residual -->", API)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env=dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", "")))
    assert out.returncode == 0, out.stderr
    tb, refusal, low = out.stdout.strip().splitlines()
    assert float(low) <= float(tb) and "branches: lipsdp reads chains of layers only" in refusal
    assert (tmp_path / "net.onnx").exists()


def test_verify_example_shows_what_lipbench_computes(tmp_path):
    """The README's `bench verify` command on the ACAS Xu network, and its output: the
    command's verbs and options parse, and every number its table shows for the
    deterministic verifier (trivial) is what lipbench computes on that network."""
    cmd = re.search(r"```sh\n(\.venv/bin/python -m bench data vnncomp\n.*?)```", README, re.S).group(1)
    verify = next(line for line in cmd.splitlines() if " verify " in line).split()
    args = verify[verify.index("verify") + 1:]
    from bench.cli import parser
    parsed = parser().parse_args(["verify", *args])
    assert parsed.box_file.endswith("prop_1.vnnlib") and parsed.model.endswith("ACASXU_run2a_1_1_batch_2000.onnx")
    shown = block("<!-- output: verify -->")
    trivial = {m.group(1): float(m.group(2)) for m in re.finditer(r"^p=(\w+),.*?^  trivial +(\S+)", shown, re.S | re.M)}
    assert set(trivial) == set(parsed.p)
    onnx = os.path.join(REPO, "..", "shared", "reference", "vnncomp2021", "ACASXU_run2a_1_1_batch_2000.onnx")
    if not os.path.exists(onnx):
        pytest.skip(f"the ACAS Xu network is not in {os.path.dirname(onnx)}")
    import bench
    for p, v in trivial.items():
        assert f"{bench.verify(onnx, 'trivial', p=p).value:.6g}" == f"{v:.6g}"


@pytest.mark.slow
def test_decorator_plugin_example(tmp_path):
    (tmp_path / "my_plugins.py").write_text(block("<!-- example: my_plugins.py -->", PLUGINS))
    (tmp_path / "mine.yaml").write_text(block("<!-- example: mine.yaml -->", PLUGINS))
    r = run(["run", "--suite", "mine.yaml", "--no-report"], tmp_path, str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "my-decay" in r.stderr and "frobenius" in r.stderr
    e = run(["export", "--suite", "mine"], tmp_path, str(tmp_path))
    import csv
    import io
    ok = {r["verifier"] for r in csv.DictReader(io.StringIO(e.stdout)) if r["status"] == "ok"}
    assert {"frobenius", "random-pairs", "trivial", "lower"} <= ok
    lst = run(["--plugin", "my_plugins", "list"], tmp_path, str(tmp_path))
    assert "frobenius" in lst.stdout and "my-decay" in lst.stdout
    # the Frobenius bound is an upper bound at least as large as the trivial one
    import bench
    import sys as _s
    _s.path.insert(0, str(tmp_path))
    try:
        import my_plugins  # noqa: F401
        from torch import nn
        net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        assert bench.verify(net, "frobenius", p=2).value >= bench.verify(net, "trivial", p=2).value
        assert bench.verify(net, "frobenius", p=2, target=(0, 1)).status == "unsupported"
        lo = bench.verify(net, "random-pairs", p=2)
        assert lo.kind == "lower" and 0 < lo.value <= bench.verify(net, "trivial", p=2).value
    finally:
        _s.path.remove(str(tmp_path))
    (tmp_path / "check.py").write_text(block("<!-- example: check.py -->", PLUGINS))   # from a script
    c = subprocess.run([sys.executable, "check.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=REPO))
    assert c.returncode == 0, c.stderr
    lines = c.stdout.strip().splitlines()
    assert lines[0].startswith("['declarations', 'budget of 5 s in a worker: ok") and "relu 3-5-4-3" in lines[0]
    assert "relu 3-5-4-3" in lines[1] and "trained (2)" in lines[2]


@pytest.mark.slow
def test_plugin_folder_needs_no_install(tmp_path):
    """A plug-in file dropped into a folder, named with --plugin or in the suite, is found
    without PYTHONPATH or an install, also by the worker processes."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "my_plugins.py").write_text(block("<!-- example: my_plugins.py -->", PLUGINS))
    suite = block("<!-- example: mine.yaml -->", PLUGINS).replace("plugins: [my_plugins]", "plugins: [plugins]")
    (tmp_path / "mine.yaml").write_text(suite)
    r = run(["run", "--suite", "mine.yaml", "--no-report"], str(tmp_path), "")
    assert r.returncode == 0, r.stderr
    assert "ok      verify frobenius" in r.stderr and "ok      train  synthetic-my-decay" in r.stderr
    lst = run(["--plugin", str(folder), "list"], "/", "")
    assert re.search(r"^frobenius\s+verifier", lst.stdout, re.M), lst.stdout + lst.stderr
    bad = run(["--plugin", str(tmp_path / "nope.py"), "list"], "/", "")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "nope.py" in bad.stderr


def test_entry_point_plugin_example(tmp_path):
    """What pip installs for a package that declares the README's entry point."""
    (tmp_path / "my_plugins.py").write_text(block("<!-- example: my_plugins.py -->", PLUGINS))
    toml = re.search(r'\[project\.entry-points\."lipbench\.plugins"\]\n(.*?)\n', PLUGINS).group(1)
    info = tmp_path / "my_plugins-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text('[lipbench.plugins]\n' + toml.replace('"', "") + "\n")
    r = run(["list"], tmp_path, str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert re.search(r"^frobenius\s+verifier\s+upper\s+2\s+yes", r.stdout, re.M), r.stdout


def test_reference_page_is_current():
    """docs/reference.md's tables are what `python -m bench list --markdown` prints now."""
    page = open(os.path.join(REPO, "docs", "reference.md")).read()
    body = re.search(r"<!-- generated: python -m bench list --markdown -->\n(.*)<!-- end of generated -->", page,
                     re.S).group(1)
    r = run(["list", "--markdown"], REPO, "")
    assert r.returncode == 0, r.stderr
    assert body == r.stdout, "docs/reference.md is stale: regenerate it with python -m bench list --markdown"


def test_every_named_example_is_run_by_a_test():
    names = {name for lang in ("python", "yaml", "toml") for _, name, _ in blocks(lang) if name}
    assert names == NAMED, "a named example no test runs, or a test whose example is gone"


def _vnncomp_data(folder):
    """data/vnncomp2021/ as `python -m bench data vnncomp` lays it out, linked to the
    reference copies of the networks (the properties are not there)."""
    from bench.data import VNNCOMP_FILES
    ref = os.path.join(REFERENCE, "vnncomp2021")
    for rel in VNNCOMP_FILES:
        src = os.path.join(ref, os.path.basename(rel))
        if os.path.exists(src):
            dst = folder / "data" / "vnncomp2021" / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src)


@pytest.mark.parametrize("page,code", [(p, c) for p, n, c in blocks("python") if n is None],
                         ids=lambda v: v if isinstance(v, str) and v.endswith(".md") else "")
@pytest.mark.slow
def test_every_other_python_block_runs(page, code, tmp_path):
    _vnncomp_data(tmp_path)
    for path in re.findall(r'"(data/vnncomp2021/[^"]+)"', code):
        if not (tmp_path / path).exists():
            pytest.skip(f"{path} has no reference copy in {os.path.normpath(REFERENCE)}")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env=dict(os.environ, PYTHONPATH=REPO))
    assert out.returncode == 0, f"{page}: {out.stderr[-2000:]}"


def _bench_commands():
    """Every `python -m bench ...` command of a ```sh block: (page, its arguments)."""
    out = []
    for page, _, code in blocks("sh"):
        for line in code.splitlines():
            line = line.split(" #")[0].strip()
            for cmd in line.split("&&"):
                words = shlex.split(cmd)
                if len(words) > 2 and words[0].endswith("python") and words[1:3] == ["-m", "bench"]:
                    out.append((page, words[3:]))
    return out


def test_every_bench_command_in_the_docs_parses_and_names_a_suite_that_exists():
    from bench.cli import parser
    from bench.suite import shipped_suites
    cmds = _bench_commands()
    assert {p for p, _ in cmds} >= {"README.md", "docs/data.md", "docs/networks.md", "docs/plugins.md"}
    written = set(re.findall(r"<!-- example: (\S+\.yaml) -->", "".join(PAGES.values())))
    for page, args in cmds:
        try:
            a = parser().parse_args(args)
        except SystemExit:
            pytest.fail(f"{page}: python -m bench {' '.join(args)} does not parse")
        suite = getattr(a, "suite", None)
        if suite:
            assert suite in shipped_suites() or suite in written, f"{page}: no suite {suite!r}"
