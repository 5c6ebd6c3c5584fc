"""``eclipse`` and ``eclipse-fast``: ECLipsE (Xu & Sivaranjani, NeurIPS 2024), our own
implementation, on the block machinery of :mod:`baselines.verify.sdp`.

Both solve LipSDP-Neuron layer by layer.  Divide the LMI by rho and write
L_k = 2 T_k / rho, m_k = (a_k + b_k) / 2: eliminating the blocks from the input forward
leaves Y_0 = I and Y_k = L_k - m_k^2 L_k G_{k-1} L_k with G_{k-1} = W_{k-1} Y_{k-1}^{-1} W_{k-1}^T,
which must stay positive definite; at the end rho = lambda_max(G_K) (``sdp.elimination.stage``).

- ``eclipse-fast`` takes L_k = l_k I with l_k = 1 / (2 m_k^2 lambda_max(G_{k-1})) (the l
  that maximises the smallest eigenvalue of Y_k): closed form, no solver.
- ``eclipse`` chooses a diagonal L_k at each stage to maximise s with Y_k >= s W_k^T W_k
  (ECLipsE's stage problem, a small convex SDP), i.e. to minimise
  lambda_max(W_k Y_k^{-1} W_k^T) = lambda_max(G_k).  We solve it natively: L-BFGS on log L_k
  from the closed form (``sdp.optimise.minimise``), one Cholesky factor of Y_k and one
  eigenvalue problem of the next layer's size per step, the gradient by the
  elimination's adjoint (``sdp.elimination.rho_of`` on the one-stage chain), on CPU or CUDA;
  ``eps`` is its tolerance and ``max_iters`` caps its evaluations per stage.  Each stage is
  certified in float64 (Y_k must have a Cholesky factor); a stage whose answer fails, or
  that is no better than the closed form, takes the closed form, and the stats say which.

Either way the multipliers T_k = rho L_k / 2 are then certified on the full LipSDP matrix
(``sdp.certificate.certify``, block by block), so the reported value is a checked bound on the
network.  The elimination drops the -2 a b W^T T W terms, which is sound only for a_k >= 0
(ReLU, tanh, sigmoid, leaky ReLU); |x|, CReLU and MaxMin are read through their exact
ReLU forms (``sdp.chain.relu_form``), and an elementwise map with a negative lower slope
and no such form (GELU) is ``unsupported``.

Conv layers are unrolled (``unsupported`` above the dense limit); a layer wider than
``MAX_NEURONS`` (a conv counts channels x pixels) is ``unsupported`` with its width.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from bench.api import Bound, Budget, Param, Query, Verifier
from bench.network import Net
from bench.registry import register

from .sdp.certificate import certify
from .sdp.chain import Chain, chain, chain_reason, device, RepairError, size_reason, torch_chain
from .sdp.elimination import input_gram, rho_of, stage
from .sdp.linalg import top_eig_estimate
from .sdp.optimise import minimise


def eclipse(ch: Chain, fast: bool, eps: float = 1e-4, max_iters: int = 200, deadline: float = math.inf,
            device=None) -> tuple[list[np.ndarray], float, dict]:
    """Multipliers T (for LipSDP-Neuron), ECLipsE's own value, and what each stage did.
    Past ``deadline`` (a ``time.perf_counter()`` value) the remaining stages take the
    closed form: still a certified bound, looser, and the stages say so."""
    tc = torch_chain(ch, device)
    G = input_gram(tc, drop_ab=True)
    Ls, stages = [], []
    for k, n in enumerate(ch.hidden):
        m = (ch.a[k] + ch.b[k]) / 2
        l_fast = 1.0 / (2.0 * m * m * top_eig_estimate(G))
        L = torch.full((n,), l_fast, dtype=torch.float64, device=G.device)
        G_next = stage(tc, k, G, L, drop_ab=True)
        if G_next is None:
            raise RepairError(f"stage {k + 1}: the closed form's Y has no Cholesky factor")
        late = time.perf_counter() > deadline
        if fast:
            stages.append("closed form")
        elif late:
            stages.append("closed form (budget spent)")
        else:
            Gk = G
            p = torch.log(L).clone().requires_grad_(True)
            best, (bp,), status = minimise(lambda ps: _stage_value(tc, k, Gk, torch.exp(ps[0])), [p], eps,
                                           max_iters, deadline)
            cand = torch.exp(bp)
            with torch.no_grad():
                Gc = stage(tc, k, G, cand, drop_ab=True)  # the stage's check, float64
            if Gc is not None and top_eig_estimate(Gc) < top_eig_estimate(G_next):
                L, G_next = cand, Gc
                stages.append(f"native ({status})")
            else:
                stages.append("closed form (the stage's answer was no better or failed the check)")
        Ls.append(L.detach())
        G = G_next.detach()
    rho = top_eig_estimate(G)
    T = [(rho * L / 2).cpu().numpy() for L in Ls]
    return T, float(np.sqrt(max(rho, 0.0))), {"stages": stages}


def _stage_value(tc: Chain, k: int, G, L):
    """The eigenvalues of G_k for the stage's L, differentiable: ``rho_of`` on the one-stage
    chain from G_{k-1} (its adjoint in closed form, not autograd through the Cholesky
    factor).  Dropping the a b term is the elimination of the sector [0, a + b]: the same
    m = (a + b) / 2, no a b term."""
    return rho_of(Chain([tc.Ws[k], tc.Ws[k + 1]], [0.0], [tc.a[k] + tc.b[k]]), [L], G)


class _ECLipsEBase(Verifier):
    kind = "upper"
    norms = (2.0,)
    fast = True

    #: neurons of the widest layer attempted (measured: benchmarks/sdp_scaling.py)
    MAX_NEURONS = 8192

    def supports(self, net: Net, query: Query) -> str | None:
        return (super().supports(net, query)
                or size_reason(net, self.name, self.MAX_NEURONS, per_layer=True, nonnegative=True)
                or chain_reason(net, query, self.name, nonnegative_slopes=True))

    def run(self, net: Net, query: Query, budget: Budget) -> Bound:
        ch = chain(net, query, self.name, nonnegative=True)
        t0 = time.perf_counter()
        dev = device(budget)
        try:
            # the stages may use half the budget; certification needs the rest
            deadline = t0 + 0.5 * budget.timeout_s if budget.timeout_s else math.inf
            T, raw, stats = eclipse(ch, self.fast, device=dev, deadline=deadline,
                                    **({} if self.fast else {"eps": self.opts["eps"],
                                                             "max_iters": self.opts["max_iters"]}))
            stats["solve_s"] = time.perf_counter() - t0
            stats["raw_value"] = raw
            value, cert = certify(ch, T, dev, rho_hint=raw * raw)
        except (RepairError, np.linalg.LinAlgError) as e:
            return Bound(None, "upper", "error", error=f"not certified: {e}")
        stats.update(cert)
        stats["certify_s"] = time.perf_counter() - t0 - stats["solve_s"]
        if ch.relu_forms:
            stats["relu_forms"] = list(ch.relu_forms)
        if ch.dropped:
            stats["activations_dropped"] = list(ch.dropped)
        return Bound(value, "upper", "ok", stats=stats)


@register
class ECLipsEFast(_ECLipsEBase):
    name = "eclipse-fast"
    # 2: the block machinery (torch, CPU or CUDA), certified block by block; 3: Lanczos's failure not fatal
    version = "4"
    description = "ECLipsE-Fast: LipSDP-Neuron layer by layer in closed form, certified"
    fast = True


@register
class ECLipsE(_ECLipsEBase):
    name = "eclipse"
    # 2: stages past half the budget take the closed form; 3: stages solved natively (no cvxpy)
    # 4: the stage's gradient by the elimination's adjoint (another optimiser path); Lanczos's failure not fatal
    version = "5"
    description = "ECLipsE: LipSDP-Neuron layer by layer, each stage's problem solved natively, certified"
    params = {"eps": Param(1e-4, "the stage optimiser's relative plateau tolerance", gt=0, lt=1),
              "max_iters": Param(200, "the stage optimiser's steps per layer", ge=1)}
    fast = False
