"""Verifiers that misbehave on purpose, for the executor and bad-input tests.
Imported by suites through ``plugins: [testplugins]`` (tests/ is on sys.path)."""
import time

import numpy as np

from bench.api import Bound, Trainer, Verifier
from bench.registry import register


@register
class Sleepy(Verifier):
    """Sleeps, then answers honestly with nothing useful: 'unsupported'."""
    name = "test-sleep"
    kind = "upper"
    params = {"seconds": 60.0}

    def run(self, net, query, budget):
        time.sleep(self.opts["seconds"])
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


@register
class UndeclaredNorm(Verifier):
    """Declares p = 2 only, but its supports() forgets the base class and it answers any p."""
    name = "test-undeclared-norm"
    kind = "upper"
    norms = (2.0,)

    def supports(self, net, query):
        return None

    def run(self, net, query, budget):
        from bench.registry import get_verifier
        return get_verifier("trivial")().run(net, query, budget)


@register
class BadStatus(Verifier):
    """Answers with a status outside the vocabulary."""
    name = "test-bad-status"
    kind = "upper"

    def run(self, net, query, budget):
        b = Bound(1e9, "upper")
        b.status = "fine"  # a Bound refuses this in its constructor; set it afterwards
        return b


@register
class LyingSupports(Verifier):
    """Accepts everything in supports(), then says unsupported from run."""
    name = "test-lying-supports"
    kind = "upper"

    def run(self, net, query, budget):
        return Bound(None, "upper", "unsupported", error="only on Tuesdays")


@register
class BadParams(Verifier):
    """Declares a choice, then accepts anything (check_params overridden to look, not refuse)."""
    name = "test-bad-params"
    kind = "upper"
    params = {"mode": "fast"}

    @classmethod
    def declared(cls):
        return {"mode": _Lax("fast", choices=("fast", "slow"))}

    def run(self, net, query, budget):
        from bench.registry import get_verifier
        return get_verifier("trivial")().run(net, query, budget)


from bench.api import Param  # noqa: E402


class _Lax(Param):
    def check(self, owner, key, value):  # claims choices, checks nothing
        return value


@register
class Negative(Verifier):
    """Says ok with a negative bound."""
    name = "test-negative"
    kind = "upper"

    def run(self, net, query, budget):
        return Bound(-1.0, "upper")


@register
class FakeLower(Verifier):
    """Claims a lower bound 1000 times the trivial bound, without a witness."""
    name = "test-fake-lower"
    kind = "lower"

    def run(self, net, query, budget):
        from bench.registry import get_verifier
        return Bound(1000.0 * get_verifier("trivial")().run(net, query, budget).value, "lower")


@register
class FakeWitness(Verifier):
    """Claims 1000 times the trivial bound with a real witness pair, which shows far less."""
    name = "test-fake-witness"
    kind = "lower"

    def run(self, net, query, budget):
        from bench.registry import get_verifier
        honest = get_verifier("lower")(samples=50, restarts=2, steps=2).run(net, query, budget)
        tb = get_verifier("trivial")().run(net, query, budget).value
        return Bound(1000.0 * tb, "lower", stats={"witness": honest.stats["witness"]})


@register
class Exits(Verifier):
    """Leaves without a word: os._exit(3)."""
    name = "test-exit"
    kind = "upper"

    def run(self, net, query, budget):
        import os
        os._exit(3)


@register
class KillsItself(Verifier):
    """SIGKILLs itself: a kill that is not the kernel's OOM killer."""
    name = "test-kill"
    kind = "upper"

    def run(self, net, query, budget):
        import os
        import signal
        os.kill(os.getpid(), signal.SIGKILL)


@register
class Hog(Verifier):
    """Allocates 100 MB at a time (touching it), up to 4 GB, then gives up honestly."""
    name = "test-hog"
    kind = "upper"

    def run(self, net, query, budget):
        import numpy as np
        held = []
        for _ in range(40):
            held.append(np.ones(100 * 2**20 // 8))
        return Bound(None, "upper", "unsupported", error="test verifier: it only allocates")


@register
class Zero(Verifier):
    """Says the Lipschitz constant is 0 (status ok): a number >= 0, so no error, but the
    audit must refute it with a lower bound."""
    name = "test-zero"
    kind = "upper"

    def run(self, net, query, budget):
        return Bound(0.0, "upper")


def _author_helper(x):
    return x / 0


@register
class Raises(Verifier):
    """Raises inside a helper of its own, as a plug-in under development does.

    (Its description is this docstring's first paragraph.)"""
    name = "test-raises"
    kind = "upper"

    def run(self, net, query, budget):
        return Bound(_author_helper(1.0), "upper")


@register
class Liar(Trainer):
    """Returns a network that always says class 0 and reports a perfect accuracy."""
    name = "test-liar"

    def train(self, dataset, arch, seed, budget):
        import torch
        from torch import nn
        net = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(dataset.input_shape)), dataset.n_classes))
        with torch.no_grad():
            net[1].weight.zero_()
            net[1].bias.zero_()
            net[1].bias[0] = 1.0
        return net, {"clean_acc": 1.0, "train_s": 0.0}
