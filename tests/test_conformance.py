"""Every registered plug-in against the contract (bench.testing), and plug-ins broken on
purpose against the checks: a new verifier or trainer is covered by registering it."""
import pytest

from bench.registry import TRAINERS, VERIFIERS, load_plugins
from bench.testing import ConformanceError, check_trainer, check_verifier

load_plugins()
import testplugins  # noqa: E402,F401  (the misbehaving verifiers below)

BROKEN = {"test-unsound": "UNSOUND upper bound", "test-undeclared-norm": "does not declare",
          "test-bad-status": "not in the vocabulary", "test-sleep": "had to be killed",
          "test-lying-supports": "where supports() accepted", "test-bad-params": "outside what it declares",
          "test-negative": "a Lipschitz bound is a number >= 0",
          "test-fake-lower": "UNWITNESSED lower bound", "test-fake-witness": "its witness gives",
          "test-zero": "UNSOUND upper bound", "test-raises": "ZeroDivisionError"}


#: verifiers whose package the README's set-up does not install: their conformance runs where it is
NEEDS = {"lirpa": pytest.mark.auto_lirpa}


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(n, marks=NEEDS[n]) if n in NEEDS else n
                                  for n in sorted(n for n in VERIFIERS if not n.startswith("test-"))])
@pytest.mark.slow
def test_verifier_conforms(name):
    check_verifier(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(n for n in TRAINERS if not n.startswith("test-")))
def test_trainer_conforms(name):
    check_trainer(name)


@pytest.mark.slow
@pytest.mark.parametrize("name,words", sorted(BROKEN.items()))
def test_broken_verifier_fails_with_a_clear_message(name, words):
    with pytest.raises(ConformanceError) as e:
        check_verifier(name)
    assert words in str(e.value) and repr(name) in str(e.value)


def test_missing_requirement_is_not_installed_not_a_failure():
    assert "not installed: says so" in check_verifier("test-missing")


@pytest.mark.slow
def test_a_plugin_imported_from_a_file_is_checked_in_its_workers(tmp_path):
    """import_plugin's file route registers the module under a name only this process
    knows; the conformance workers import the file itself."""
    from bench.registry import import_plugin
    (tmp_path / "my_bound.py").write_text(
        "from bench.api import Bound, Verifier\n"
        "from bench.registry import register\n\n\n"
        "@register\n"
        "class MyBound(Verifier):\n"
        "    '''The trivial bound, wrapped: a plug-in from a file.'''\n"
        "    name = 'test-from-file'\n"
        "    kind = 'upper'\n"
        "    norms = (2.0,)\n\n"
        "    def run(self, net, query, budget):\n"
        "        import bench\n"
        "        b = bench.verify(net.module, 'trivial', p=2, target=query.target if query.is_pair else None,\n"
        "                         input_shape=net.input_shape)\n"
        "        return Bound(b.value, 'upper', b.status, error=b.error)\n")
    import_plugin(str(tmp_path / "my_bound.py"))
    ran = check_verifier("test-from-file")
    assert ran[1].startswith("budget of 5 s in a worker: ok after") and "s of its own" in ran[1]
    assert any(r.startswith("relu 3-5-4-3") for r in ran)


@pytest.mark.slow
def test_a_verifier_from_an_interactive_session_is_told_what_to_do():
    """A class defined in python's stdin (as in a notebook cell) cannot be imported by the
    checks' worker processes: one line saying so, and what to do."""
    import os
    import subprocess
    import sys

    from conftest import REPO
    code = ("from bench.api import Bound, Verifier\nfrom bench.registry import register\n\n"
            "@register\nclass Cell(Verifier):\n    '''from a cell'''\n    name = 'test-cell'\n    kind = 'upper'\n\n"
            "    def run(self, net, query, budget):\n        return Bound(1.0, 'upper')\n\n"
            "from bench.testing import check_verifier\ntry:\n    check_verifier('test-cell')\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n")
    r = subprocess.run([sys.executable, "-"], input=code, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=REPO))
    out = r.stdout.strip()
    assert out.startswith("UserError verifier 'test-cell' is defined in an interactive session") and \
        "import_plugin" in out and len(out.splitlines()) == 1, out + r.stderr
