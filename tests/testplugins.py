"""Verifiers that misbehave on purpose, for the executor and bad-input tests.
Imported by suites through ``plugins: [testplugins]`` (tests/ is on sys.path)."""
import time

from bench.api import Bound, Verifier
from bench.registry import register


@register
class Sleepy(Verifier):
    """Sleeps, then answers honestly with nothing useful: 'unsupported'."""
    name = "test-sleep"
    kind = "upper"
    params = {"seconds": 60.0}

    def run(self, net, query, budget):
        time.sleep(self.p["seconds"])
        return Bound(None, "upper", "unsupported", error="test verifier: it only sleeps")


@register
class NeedsMissing(Verifier):
    name = "test-missing"
    kind = "upper"
    requires = ("no_such_package_lipbench_xyz",)
    install_hint = "pip install no-such-package"

    def run(self, net, query, budget):  # pragma: no cover - never reached
        raise AssertionError("must not run without its requirement")


@register
class TooLow(Verifier):
    """An unsound verifier: reports a tenth of the trivial bound, so the audit must flag it."""
    name = "test-unsound"
    kind = "upper"

    def run(self, net, query, budget):
        from bench.registry import get_verifier
        b = get_verifier("trivial")().run(net, query, budget)
        return Bound(b.value / 1000.0, "upper")
