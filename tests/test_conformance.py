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
          "test-zero": "UNSOUND upper bound"}


#: verifiers whose package the README's set-up does not install: their conformance runs where it is
NEEDS = {"lirpa": pytest.mark.auto_lirpa}


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(n, marks=NEEDS[n]) if n in NEEDS else n
                                  for n in sorted(n for n in VERIFIERS if not n.startswith("test-"))])
def test_verifier_conforms(name):
    check_verifier(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_trainer_conforms(name):
    check_trainer(name)


@pytest.mark.parametrize("name,words", sorted(BROKEN.items()))
def test_broken_verifier_fails_with_a_clear_message(name, words):
    with pytest.raises(ConformanceError) as e:
        check_verifier(name)
    assert words in str(e.value) and repr(name) in str(e.value)


def test_missing_requirement_is_not_installed_not_a_failure():
    assert "not installed: says so" in check_verifier("test-missing")
