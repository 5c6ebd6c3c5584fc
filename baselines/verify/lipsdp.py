"""``lipsdp``: LipSDP-Neuron and LipSDP-Layer (Fazlyab et al., NeurIPS 2019), through cvxpy or natively.

The SDP of :mod:`baselines.verify.sdp` is solved in a well-conditioned, smaller
but equivalent form, and the answer is certified on the original network:

- each weight is divided by its spectral norm, estimated (the LMI is invariant under any
  such rescaling with T_k scaled by d_k^2, d_k = prod_{j >= k} s_j; rho scales by
  (prod s_j)^2; the s_k only condition the problem, so an estimate serves:
  ``sdp.linalg.norm_estimate``, exact up to 512 rows or columns, power iterations above,
  where a dense SVD of a conv net's unrolled layer would cost more than the solve);
- the input block is reduced exactly to the rank of W_0 (with W_0 = U S V^T, the LMI
  only sees W_0 through U S: directions orthogonal to V meet -rho I alone; NATIVE needs
  the reduction only where the first activation's a b term puts W_0 inside a factorised
  block, and takes it there from a QR factor on the device);
- the solver's multipliers, mapped back, are certified in float64 on the full,
  unreduced matrix (``sdp.certificate.certify``): the reported value is that certificate, the
  solver's own value is in the stats.

``form``: ``neuron`` (one multiplier per neuron) or ``layer`` (one per layer).  ``solver``:
SCS (first order, scales), CLARABEL (interior point, accurate, but through cvxpy it
needed 6.7 GB and 278 s for a 192-row LMI here: use it on small networks only), MOSEK
(needs its licence); ``eps`` is the solver's tolerance (the certified value does not
depend on it for soundness, only for tightness).  NATIVE is ours, for scale: it minimises
rho(L), the largest eigenvalue of the output-sized matrix W_L Y_K^{-1} W_L^T left by the
forward block elimination (``sdp.elimination.rho_of``: one Cholesky factor per hidden layer,
the -2ab terms included, differentiable), over log L with L-BFGS on a soft maximum of
those eigenvalues (``sdp.optimise.minimise``), from ECLipsE's multipliers, in torch on
the budget's device (CPU or CUDA); ``eps`` sets how far the soft maximum is sharpened,
``max_iters`` caps the evaluations, and 80% of the budget caps its time.  Its answer is no
optimum certificate: it is a feasible point, certified like any other, and usually at or
slightly below SCS's value at eps 1e-5 (SCS stops within its tolerance).  ``operator``
picks its linear algebra: ``dense``, the Cholesky factors above, or ``layers``, the same
function matrix-free (:mod:`baselines.verify.implicit`: products through the conv layers
themselves, conjugate gradients for the output's r right-hand sides), about 70 steps of
4 ms an evaluation on the cifar suite's conv net here against 3.4 s dense; ``auto`` takes
``layers`` for a conv net whose widest layer has ``LAYERS_FROM`` units or more.  ECLipsE's warm start and the certificate stay
dense, one layer at a time, so the per-layer limit stands.  On networks of
|x| alone (every slope range symmetric, so the layers decouple) it minimises LipSDP's
equivalent form, the product of diagonally rescaled layer norms
(``sdp.symmetric.symmetric_factors``), from the trivial bound; the layer form is the
trivial bound there.

Every solver's multipliers are certified by ``sdp.certificate.certify`` (a block Cholesky
factorisation per layer), so the structured path needs no dense LMI.  Conv layers are
unrolled into dense matrices per layer for that certificate (``unsupported`` above the
dense limit).  With a
cvxpy solver a network of more than ``MAX_NEURONS`` hidden neurons (a conv counts
channels x pixels) is ``unsupported`` with its size: one dense LMI of that order does
not solve within a suite's budget (the limit is where SCS stopped finishing in 150 s on
one thread: docs/performance.md).  NATIVE has ECLipsE's limit per layer.
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
from .sdp.elimination import rho_of
from .sdp.linalg import norm_estimate
from .sdp.lmi import CVXPY, lmi_terms
from .sdp.optimise import minimise
from .sdp.symmetric import symmetric, symmetric_factors, symmetric_multipliers

SOLVERS = ("SCS", "CLARABEL", "MOSEK", "NATIVE")


def scaled(ch: Chain) -> tuple[Chain, list[float]]:
    s = [norm_estimate(W) or 1.0 for W in ch.Ws]
    return Chain([W / si for W, si in zip(ch.Ws, s)], ch.a, ch.b), s


def unscale_T(T: list[np.ndarray], s: list[float]) -> list[np.ndarray]:
    """Multipliers of the rescaled LMI -> multipliers of the original one."""
    d0 = float(np.prod(s))
    out, d = [], d0
    for k, t in enumerate(T):
        d /= s[k]  # d_{k+1} = d_0 / (s_0 ... s_k)
        out.append(np.asarray(t) * d * d)
    return out


def solve_native(ch: Chain, form: str, eps: float, max_iters: int, time_limit: float | None, device=None,
                 op=None):
    """Minimise rho(L) (``sdp.elimination.rho_of``: the block elimination, one Cholesky factor per
    hidden layer and an eigenvalue problem of the output's size; with ``op``, the same
    function matrix-free, ``implicit.Operator.rho``) over log L with L-BFGS, from ECLipsE's
    multipliers (the layer form from ECLipsE-Fast's); returns T = rho L / 2 for the chain
    given (already rescaled, ||W_k|| = 1).

    Symmetric sectors (|x|, a + b = 0 in every layer) decouple the layers: there rho(L)
    would see the last multipliers alone and the others only through feasibility, a wall
    L-BFGS cannot follow (it stopped 17% above SCS), so NATIVE minimises LipSDP's
    equivalent form instead, the product of diagonally rescaled layer norms
    (``sdp.symmetric.symmetric_factors``), from u = 0 (the trivial bound).  Any other
    negative lower slope (a chain mixing |x| with other activations, GELU) is refused."""
    from .eclipse import eclipse
    t0 = time.perf_counter()
    if op is not None and symmetric(ch):
        op = None  # |x|: a product of layer norms, never through P(L)
    if op is None:
        tc = torch_chain(ch, device)
        W0 = tc.Ws[0]
        if ch.a[0] * ch.b[0] != 0 and W0.shape[1] > W0.shape[0]:
            # the input reduced to W_0's rank: with W_0^T = Q R, W_0 Y_0^{-1} W_0^T is the same for
            # R^T in W_0's place (Q^T (I + Q X Q^T)^{-1} Q = (I + X)^{-1}), and Y_0 shrinks to n_1 rows.
            # Elsewhere (ReLU, |x|) NATIVE sees W_0 through W_0 W_0^T or its smaller Gram alone
            tc = Chain([torch.linalg.qr(W0.T, mode="r")[1].T] + tc.Ws[1:], tc.a, tc.b)
        G0, dev, r = tc.Ws[0] @ tc.Ws[0].T, tc.Ws[0].device, min(tc.Ws[0].shape)
    else:  # matrix-free: no dense copy of the chain on the device, no Gram matrix, the whole input block
        tc, G0, dev, r = None, None, op.B.device, ch.Ws[0].shape[1]
    sizes = ch.hidden
    deadline = t0 + time_limit if time_limit else math.inf
    stats = {"solver": "NATIVE", "lmi_size": int(r + sum(sizes)), "input_block": int(r),
             "operator": "dense" if op is None else "layers"}
    if symmetric(ch):  # |x|: the product of diagonally rescaled layer norms, from the trivial bound (u = 0)
        us = [torch.zeros(n, dtype=torch.float64, device=dev, requires_grad=form == "neuron") for n in sizes]
        if form == "neuron":
            _, us, status = minimise(lambda ps: symmetric_factors(tc, ps), us, eps, max_iters, deadline)
        else:
            status = "the layer form of a symmetric sector is the trivial bound: nothing to solve"
        T, rho = symmetric_multipliers(tc, us)
        return T, {**stats, "solver_status": status, "solve_s": time.perf_counter() - t0, "raw_rho_scaled": rho,
                   "symmetric_sectors": True}
    if any(a < 0 for a in ch.a):
        raise RepairError("solver NATIVE needs activation slopes >= 0 or all symmetric ([-c, c]); use SCS")
    # the neuron form starts from ECLipsE's multipliers (its stages within a tenth of the time, 50
    # evaluations each): L-BFGS from ECLipsE-Fast's stalled at 8 on the hard suite's abs depth 8,
    # where ECLipsE finds 1; on wide layers (an eigendecomposition of the next layer per step) the
    # cap keeps it cheap.  The layer form starts from ECLipsE-Fast's, one multiplier a layer already
    # (the mean of ECLipsE's per layer need not be feasible).
    if form == "layer":
        T0, value, _ = eclipse(ch, fast=True, device=device)
    else:
        stage_deadline = t0 + 0.1 * time_limit if time_limit else math.inf
        T0, value, _ = eclipse(ch, fast=False, max_iters=50, deadline=stage_deadline, device=device)
    L0 = [2 * t / (value * value) for t in T0]
    if form == "layer":
        L0 = [np.full(1, float(np.mean(l))) for l in L0]
    params = [torch.tensor(np.log(np.maximum(l, 1e-300)), device=dev, requires_grad=True) for l in L0]

    def f(ps):
        Ls = [torch.exp(p).expand(n) if form == "layer" else torch.exp(p) for p, n in zip(ps, sizes)]
        return rho_of(tc, Ls, G0) if op is None else op.rho(Ls)
    best, best_p, status = minimise(f, params, eps, max_iters, deadline)
    if op is not None:
        stats["cg_steps"] = op.steps
    if not math.isfinite(best):
        raise RepairError(f"solver NATIVE found no feasible multipliers ({status})")
    L = [np.exp(p.cpu().numpy()) * np.ones(n) for p, n in zip(best_p, sizes)]
    return [best * l / 2 for l in L], {**stats, "solver_status": status, "solve_s": time.perf_counter() - t0,
                                       "raw_rho_scaled": best}


def solve(ch: Chain, form: str, solver: str, eps: float, max_iters: int, time_limit: float | None,
          verbose: bool = False, device=None, op=None) -> tuple[list[np.ndarray], dict]:
    """Solve the rescaled, reduced LipSDP; returns the multipliers (for the rescaled
    chain, full size) and solver statistics.  ``op``: NATIVE's matrix-free operator
    (:class:`baselines.verify.implicit.Operator`), None for its dense blocks."""
    if solver == "NATIVE":
        return solve_native(ch, form, eps, max_iters, time_limit, device, op)
    import cvxpy as cp
    W0 = ch.Ws[0]
    U, S, _ = np.linalg.svd(W0, full_matrices=False)
    W0r = U * S  # n1 x r: the input block reduced to the rank of W_0
    Ws = [W0r] + ch.Ws[1:]
    sizes = [W0r.shape[1]] + ch.hidden
    rho = cp.Variable(nonneg=True)
    if form == "neuron":
        lams = [cp.Variable(n, nonneg=True) for n in ch.hidden]
        Ts = [cp.diag(l) for l in lams]
    else:
        lams = [cp.Variable(nonneg=True) for _ in ch.hidden]
        Ts = [l * np.eye(n) for l, n in zip(lams, ch.hidden)]
    blocks = [[None] * len(sizes) for _ in sizes]
    for i, j, term in lmi_terms(Chain(Ws, ch.a, ch.b), Ts, CVXPY, rho):
        blocks[i][j] = term if blocks[i][j] is None else blocks[i][j] + term
    blocks = [[np.zeros((sizes[i], sizes[j])) if blk is None else blk for j, blk in enumerate(row)]
              for i, row in enumerate(blocks)]
    M = cp.bmat(blocks)
    prob = cp.Problem(cp.Minimize(rho), [(M + M.T) / 2 << 0])
    opts: dict = {}
    if solver == "SCS":
        opts = {"eps_abs": eps, "eps_rel": eps, "max_iters": max_iters}
        if time_limit:
            opts["time_limit_secs"] = time_limit
    elif solver == "CLARABEL":
        opts = {"tol_gap_abs": eps, "tol_gap_rel": eps, "tol_feas": eps, "max_iter": max_iters}
        if time_limit:
            opts["time_limit"] = time_limit
    t0 = time.perf_counter()
    prob.solve(solver=getattr(cp, solver), verbose=verbose, **opts)
    stats = {"solver": solver, "solver_status": prob.status, "solve_s": time.perf_counter() - t0,
             "lmi_size": int(sum(sizes)), "input_block": int(sizes[0]), "raw_rho_scaled": float(rho.value)
             if rho.value is not None else None}
    if any(l.value is None for l in lams):
        raise RepairError(f"{solver} returned no multipliers (status {prob.status})")
    T = [np.asarray(l.value, dtype=np.float64) * (np.ones(n) if form == "layer" else 1.0)
         for l, n in zip(lams, ch.hidden)]
    return T, stats


@register
class LipSDP(Verifier):
    name = "lipsdp"
    # 2: NATIVE restarts with smaller steps on a plateau; 3: depth-geometric repair of T (|x| nets);
    # 4: NATIVE on the block elimination with L-BFGS, certification block by block (torch, CPU or CUDA)
    # 5: NATIVE takes |x| networks (the product of rescaled layer norms)
    # 6: NATIVE solves conv nets matrix-free (operator 'layers', chosen by 'auto')
    # 7: NATIVE's warm start from ECLipsE 4 (another optimiser path); Lanczos's failure not fatal
    version = "8"
    kind = "upper"
    norms = (2.0,)
    requires = ("cvxpy", "scs", "clarabel")
    preload = ("cvxpy",)   # imported once in the fork server, not by every job (docs/performance.md)
    install_hint = "pip install 'lipbench[sdp]'"
    description = "LipSDP-Neuron / -Layer through cvxpy or the NATIVE solver, certified in float64 layer by layer"
    # eps 1e-5: SCS within ~0.1% of the optimum, 3-10x faster than 1e-6 (digits networks)
    params = {"form": Param("neuron", "one multiplier per neuron, or per layer", choices=("neuron", "layer")),
              "solver": Param("SCS", "cvxpy's SCS, CLARABEL or MOSEK, or our first-order NATIVE", choices=SOLVERS),
              "eps": Param(1e-5, "the solver's tolerance (tightness, not soundness)", gt=0, lt=1),
              "max_iters": Param(100000, "the solver's iteration limit", ge=1),
              "operator": Param("auto", "NATIVE's linear algebra: dense Cholesky factors per layer, or products "
                                "through the layers with conjugate gradients ('layers', matrix-free); 'auto': "
                                "'layers' for a conv net with a layer of 2,048 units or more; |x| nets are dense", choices=("auto", "dense", "layers"))}

    #: hidden neurons (all layers) of the largest network attempted with a cvxpy solver
    MAX_NEURONS = 1024
    #: the widest hidden layer from which 'auto' solves a conv net matrix-free: one evaluation
    #: of rho(L) on two-conv nets here, dense against layers (13 conjugate-gradient steps; near
    #: the optimum they take about 70): widest layer 1,024, 0.053 s against 0.034 s;
    #: 2,048, 0.42 s against 0.059 s; 4,096 (the cifar suite's; 22 steps), 3.4 s against 0.15 s
    LAYERS_FROM = 2048

    @classmethod
    def check_params(cls, P: dict) -> None:
        from bench.api import UserError
        if P["operator"] != "auto" and P["solver"] != "NATIVE":
            raise UserError(f"lipsdp: parameter 'operator' ({P['operator']}) applies to solver NATIVE only, "
                            f"not {P['solver']}")

    def operator(self, ch: Chain) -> str:
        """'layers' or 'dense': the linear algebra NATIVE is given for this chain (an |x|
        chain is solved as a product of layer norms whatever it is given, ``solve_native``
        decides; ``stats["operator"]`` says what ran)."""
        from .implicit import has_conv
        op = self.opts["operator"]
        if op == "auto":
            op = "layers" if has_conv(ch) and max(ch.hidden) >= self.LAYERS_FROM else "dense"
        return op

    def supports(self, net: Net, query: Query) -> str | None:
        r = super().supports(net, query)
        if r:
            return r
        if self.opts["solver"] == "NATIVE":
            from .eclipse import ECLipsE
            reason = size_reason(net, f"{self.name} (solver NATIVE)", ECLipsE.MAX_NEURONS, per_layer=True)
        else:
            reason = size_reason(net, self.name, self.MAX_NEURONS, per_layer=False)
        reason = reason or chain_reason(net, query, self.name)
        if reason:
            return reason
        if self.opts["solver"] == "NATIVE":
            ch = chain(net, query, self.name)
            if any(a < 0 for a in ch.a) and not symmetric(ch):
                return ("solver NATIVE needs activation slopes >= 0, or every activation's slope range symmetric "
                        f"([-c, c], as |x|); this network's go down to {min(ch.a):g} otherwise: use solver SCS")
        if self.opts["solver"] == "MOSEK":
            try:
                import mosek  # noqa: F401
            except ImportError:
                return "solver MOSEK needs the mosek package and its licence"
        return None

    def run(self, net: Net, query: Query, budget: Budget) -> Bound:
        t_run = time.perf_counter()
        ch = chain(net, query, self.name)
        sch, s = scaled(ch)
        P = self.opts
        try:
            dev = device(budget)
            # the solve ends by 80% of the budget, counted from here: certification needs the rest
            limit = max(0.8 * budget.timeout_s - (time.perf_counter() - t_run), 1.0) if budget.timeout_s else None
            op = None
            if P["solver"] == "NATIVE" and self.operator(ch) == "layers":
                from .implicit import Operator
                op = Operator(ch, s, dev, deadline=time.perf_counter() + limit if limit else math.inf)
            T, stats = solve(sch, P["form"], P["solver"].upper(), P["eps"], P["max_iters"], limit, device=dev, op=op)
            t0 = time.perf_counter()
            hint = stats["raw_rho_scaled"] * float(np.prod(s)) ** 2 if stats["raw_rho_scaled"] is not None else None
            value, cert = certify(ch, unscale_T(T, s), dev, rho_hint=hint)
        except RepairError as e:
            return Bound(None, "upper", "error", error=f"not certified: {e}")
        stats.update(cert)
        stats["certify_s"] = time.perf_counter() - t0
        if ch.relu_forms:
            stats["relu_forms"] = list(ch.relu_forms)
        if ch.dropped:
            stats["activations_dropped"] = list(ch.dropped)
        if stats["raw_rho_scaled"] is not None:
            stats["raw_value"] = float(np.sqrt(max(stats["raw_rho_scaled"], 0.0)) * np.prod(s))
        return Bound(value, "upper", "ok", stats=stats)
