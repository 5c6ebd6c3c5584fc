"""``eclipse-nn``: the authors' ``eclipse-nn`` package (PyPI), as an external reference
beside our ``eclipse`` / ``eclipse-fast``, so both can be compared on the same networks.

Its value is the package's own, *not* certified here (the package returns a number, not
its multipliers): the row says so in its stats, and the audit checks it against the
sound lower bounds like every other upper bound.  Beware: the package's ECLipsE returns
its Fast value whenever an SCS sub-solution is slightly infeasible (``exit_code`` 1); we
report that case as ``error`` rather than pass the Fast value off as ECLipsE's.
"""
from __future__ import annotations

import time

import torch

from bench.api import Bound, Budget, Param, Query, Verifier
from bench.network import Net
from bench.registry import register

from .sdp.chain import chain, chain_reason, size_reason


@register
class ECLipsENN(Verifier):
    name = "eclipse-nn"
    kind = "upper"
    norms = (2.0,)
    requires = ("eclipse_nn",)
    install_hint = "pip install 'lipbench[eclipse]' (the eclipse-nn package)"
    description = "reference: the eclipse-nn package's ECLipsE / ECLipsE_Fast (uncertified)"
    params = {"method": Param("fast", "the package's ECLipsE_Fast or ECLipsE", choices=("fast", "eclipse"))}
    #: the widest layer attempted, per method: the package forms dense inverses (Fast) and
    #: solves each stage with cvxpy (ECLipsE); measured with our former implementations of
    #: the same computations (79 s at 2,048 neurons; a timeout at 512 with 5.7 GB)
    MAX_NEURONS = {"fast": 2048, "eclipse": 512}

    def supports(self, net: Net, query: Query) -> str | None:
        limit = self.MAX_NEURONS[self.opts["method"]]
        return (super().supports(net, query) or size_reason(net, self.name, limit, per_layer=True, nonnegative=True)
                or chain_reason(net, query, self.name, nonnegative_slopes=True))

    def run(self, net: Net, query: Query, budget: Budget) -> Bound:
        ch = chain(net, query, self.name, nonnegative=True)
        ws = [torch.tensor(W, dtype=torch.float64) for W in ch.Ws]
        t0 = time.perf_counter()
        if self.opts["method"] == "fast":
            from eclipse_nn.eclipsE_fast import ECLipsE_Fast
            value = float(ECLipsE_Fast(ws, ch.a, ch.b))
            code = 0
        else:
            from eclipse_nn.eclipsE import ECLipsE
            v, code = ECLipsE(ws, ch.a, ch.b)
            value = None if v is None else float(v)
        stats = {"certified": False, "package_exit_code": int(code), "solve_s": time.perf_counter() - t0}
        if code != 0 or value is None:
            return Bound(None, "upper", "error", stats=stats,
                         error="eclipse-nn reported a numerical issue (exit code 1): it would have fallen back to "
                               "its Fast value")
        return Bound(value, "upper", "ok", stats=stats)
