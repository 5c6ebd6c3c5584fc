"""``eclipse`` and ``eclipse-fast``: ECLipsE (Xu & Sivaranjani, NeurIPS 2024), our own
implementation.

Both solve LipSDP-Neuron layer by layer.  Divide the LMI by rho and write
L_k = 2 T_k / rho, m_k = (a_k + b_k) / 2, F = 1 / rho: eliminating the blocks from the
input forward leaves X_0 = I and X_k = L_k - m_k^2 L_k W_{k-1} X_{k-1}^{-1} W_{k-1}^T L_k,
which must stay positive definite; at the end F <= 1 / lambda_max(W_L^T W_L X^{-1}).

- ``eclipse-fast`` takes L_k = l_k I with l_k = 1 / (2 m_k^2 lambda_max(W X^{-1} W^T))
  (the l that maximises the smallest eigenvalue of X_k): closed form, no solver.
- ``eclipse`` chooses a diagonal L_k at each stage by a small SDP (cvxpy): maximise s
  subject to [[L_k - s W_{k+1}^T W_{k+1}, L_k K^{1/2}], [K^{1/2} L_k, I]] >= 0 with
  K = m_k^2 W_k X^{-1} W_k^T, i.e. keep X_k >= s W^T W for the next layer.  Each stage is
  certified in float64 (X_k must have a Cholesky factor); a stage whose solver answer
  fails is repaired by falling back to that stage's closed form, and the stats record
  which stages did so (the eclipse-nn package instead returns its Fast value for the
  whole network).

Either way the multipliers T_k = rho L_k / 2 are then certified on the full LipSDP matrix
(``sdp_common.certify``), so the reported value is a checked bound on the network.
The elimination drops the -2 a b W^T T W terms, which is sound only for a_k >= 0
(ReLU, tanh, sigmoid, leaky ReLU): a negative lower slope (|x|) is ``unsupported``.

Conv layers are unrolled (``unsupported`` above the dense limit); a layer wider than
``MAX_NEURONS`` (a conv counts channels x pixels) is ``unsupported`` with its width (two
ReLU convs, one thread: ``eclipse`` 83 s at 256 neurons per layer, a timeout at 150 s with 5.7 GB at 512;
``eclipse-fast`` 0.8 s at 512, 10 s at 1024, 79 s and 0.75 GB at 2048, its dense
eigenproblems growing as the cube of the width).
"""
from __future__ import annotations

import math
import time

import numpy as np
import scipy.linalg

from bench.api import Bound, Budget, Param, Query, Verifier
from bench.network import Net
from bench.registry import register

from .sdp_common import Chain, RepairError, certify, chain, chain_reason, size_reason


def _fast_l(W: np.ndarray, Xinv: np.ndarray, m: float) -> float:
    mat = W @ Xinv @ W.T
    top = float(scipy.linalg.eigvalsh(mat, subset_by_index=[len(mat) - 1, len(mat) - 1])[0])
    return 1.0 / (2.0 * m * m * top)


def _next_X(W: np.ndarray, Xinv: np.ndarray, L: np.ndarray, m: float) -> np.ndarray:
    K = W @ Xinv @ W.T
    X = np.diag(L) - m * m * (L[:, None] * K * L[None, :])
    return (X + X.T) / 2


def _stage_sdp(K: np.ndarray, Wn: np.ndarray, solver: str, eps: float, seconds: float | None = None) -> np.ndarray | None:
    import cvxpy as cp
    d = K.shape[0]
    w, V = np.linalg.eigh((K + K.T) / 2)
    Kh = (V * np.sqrt(np.clip(w, 0, None))) @ V.T
    lam = cp.Variable(d, nonneg=True)
    s = cp.Variable()
    L = cp.diag(lam)
    S = cp.bmat([[L - s * (Wn.T @ Wn), L @ Kh], [Kh @ L, np.eye(d)]])
    prob = cp.Problem(cp.Maximize(s), [(S + S.T) / 2 >> 0, s >= 0])
    opts = {"eps_abs": eps, "eps_rel": eps, "max_iters": 50000} if solver == "SCS" else {}
    if seconds is not None and solver == "SCS":
        opts["time_limit_secs"] = max(seconds, 0.1)
    prob.solve(solver=getattr(cp, solver), **opts)
    return None if lam.value is None else np.maximum(np.asarray(lam.value), 0.0)


def eclipse(ch: Chain, fast: bool, solver: str = "SCS", eps: float = 1e-6,
            deadline: float = math.inf) -> tuple[list[np.ndarray], float, dict]:
    """Multipliers T (for LipSDP-Neuron), ECLipsE's own value, and what each stage did.
    Past ``deadline`` (a ``time.perf_counter()`` value) the remaining stages take the
    closed form: still a certified bound, looser, and the stages say so."""
    Xinv = np.eye(ch.Ws[0].shape[1])
    Ls, stages = [], []
    for k in range(len(ch.hidden)):
        W, m = ch.Ws[k], (ch.a[k] + ch.b[k]) / 2
        L = None
        late = time.perf_counter() > deadline
        if not fast and not late:
            K = m * m * (W @ Xinv @ W.T)
            L = _stage_sdp(K, ch.Ws[k + 1], solver, eps,
                           None if math.isinf(deadline) else deadline - time.perf_counter())
            if L is not None:
                X = _next_X(W, Xinv, L, m)
                try:
                    scipy.linalg.cholesky(X)
                    stages.append("sdp")
                except np.linalg.LinAlgError:
                    L = None
        if L is None:
            L = np.full(W.shape[0], _fast_l(W, Xinv, m))
            stages.append("closed form" if fast else "closed form (budget spent)" if late
                          else "closed form (stage SDP failed the check)")
            X = _next_X(W, Xinv, L, m)
        c = scipy.linalg.cho_factor(X)
        Xinv = scipy.linalg.cho_solve(c, np.eye(len(X)))
        Ls.append(L)
    WL = ch.Ws[-1]
    G = WL @ Xinv @ WL.T
    rho = float(scipy.linalg.eigvalsh((G + G.T) / 2, subset_by_index=[len(G) - 1, len(G) - 1])[0])
    T = [rho * L / 2 for L in Ls]
    return T, float(np.sqrt(max(rho, 0.0))), {"stages": stages}


class _ECLipsEBase(Verifier):
    kind = "upper"
    norms = (2.0,)
    fast = True

    #: neurons of the widest layer attempted (79 s at 2,048; the cost grows as the cube)
    MAX_NEURONS = 2048

    def supports(self, net: Net, query: Query) -> str | None:
        return (super().supports(net, query) or size_reason(net, self.name, self.MAX_NEURONS, per_layer=True)
                or chain_reason(net, query, self.name, nonnegative_slopes=True))

    def run(self, net: Net, query: Query, budget: Budget) -> Bound:
        ch = chain(net, query, self.name)
        t0 = time.perf_counter()
        try:
            # the stage SDPs start within half the budget (cvxpy compiles for seconds outside
            # the solver's time limit); certification needs the rest
            deadline = t0 + 0.5 * budget.timeout_s if budget.timeout_s else math.inf
            T, raw, stats = eclipse(ch, self.fast, **({} if self.fast else
                                                      {"solver": self.opts["solver"], "eps": self.opts["eps"],
                                                       "deadline": deadline}))
            stats["solve_s"] = time.perf_counter() - t0
            stats["raw_value"] = raw
            value, cert = certify(ch, T)
        except (RepairError, np.linalg.LinAlgError) as e:
            return Bound(None, "upper", "error", error=f"not certified: {e}")
        stats.update(cert)
        return Bound(value, "upper", "ok", stats=stats)


@register
class ECLipsEFast(_ECLipsEBase):
    name = "eclipse-fast"
    description = "ECLipsE-Fast: LipSDP-Neuron layer by layer in closed form, certified"
    fast = True


@register
class ECLipsE(_ECLipsEBase):
    name = "eclipse"
    version = "2"  # 2: stages past half the budget take the closed form (it overran a 5 s budget)
    description = "ECLipsE: LipSDP-Neuron layer by layer, one small SDP per layer, certified"
    requires = ("cvxpy", "scs")
    install_hint = "pip install 'lipbench[sdp]'"
    params = {"solver": Param("SCS", "cvxpy's solver of the per-layer SDPs", choices=("SCS", "CLARABEL", "MOSEK")),
              "eps": Param(1e-6, "the solver's tolerance", gt=0, lt=1)}
    fast = False
    MAX_NEURONS = 512
