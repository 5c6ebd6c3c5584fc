"""The solver NATIVE and ECLipsE share: L-BFGS on a soft maximum of the eigenvalues, in
rounds of decreasing temperature tau (:func:`minimise`), stopped before a deadline
(:class:`Deadline`).
"""
from __future__ import annotations

import math

import torch





class Deadline(Exception):
    pass


#: L-BFGS iterations per round of :func:`minimise` (one value of tau)
ROUND_ITERS = 100


#: the first round's tau, relative to the value: a smaller first tau ends slightly lower on
#: wide MLPs but can stall above the optimum on small conv nets, where this one does not
FIRST_TAU = 1e-2


def minimise(f, params: list, eps: float, max_iters: int, deadline: float = math.inf):
    """Minimise the largest of the eigenvalues f(params) returns (a 1-d tensor, or None
    outside the feasible set; or a list of such tensors, all positive, whose largest
    entries' product is minimised, each softened on the log scale) over ``params`` (torch
    leaves).  A largest eigenvalue is not
    smooth where eigenvalues meet, which is where its minimum lies, so L-BFGS (strong
    Wolfe line search) minimises the soft maximum tau log sum exp(lambda / tau) >=
    lambda_max instead, with tau a fraction of the best value, ``FIRST_TAU`` and then ten times
    smaller each round (of at most ``ROUND_ITERS`` iterations) down to ``eps`` / 10 (Adam
    on lambda_max itself needed ten times as many steps and stalled 1% above the
    optimum).  It stops after ``max_iters`` evaluations of f or before the evaluation that
    would end past ``deadline`` (a ``time.perf_counter()`` value; judged by the mean
    evaluation so far).  Returns (best
    lambda_max, best params (detached), 'k evaluations, ...')."""
    import time

    best, best_p, evals, infeasible = math.inf, [p.detach().clone() for p in params], 0, 0
    soft, rounds, started = FIRST_TAU, 0, time.perf_counter()
    try:
        while soft >= eps / 10 and evals < max_iters:
            rounds += 1
            scale = abs(best) if math.isfinite(best) else 1.0
            opt = torch.optim.LBFGS(params, lr=1, max_iter=min(ROUND_ITERS, max_iters - evals), history_size=20,
                                    line_search_fn="strong_wolfe", tolerance_grad=1e-12 * scale,
                                    tolerance_change=1e-14 * scale)
            tau = None

            def closure():
                nonlocal best, best_p, evals, infeasible, tau
                now = time.perf_counter()
                if now + (now - started) / max(evals, 1) > deadline:  # the next evaluation would end past it
                    raise Deadline
                evals += 1
                opt.zero_grad()
                lam = f(params)
                if lam is None:  # outside the feasible set: the line search steps back
                    infeasible += 1
                    # large but finite: the line search interpolates and steps back
                    return torch.tensor(1e3 * (abs(best) + 1), dtype=torch.float64)
                if isinstance(lam, (list, tuple)):  # a product of largest eigenvalues, all positive
                    v = math.prod(float(l[-1].detach()) for l in lam)
                    # each factor's soft maximum on the log scale: tau is a relative precision
                    logs = [torch.log(l.clamp_min(1e-300)) for l in lam]
                    loss = torch.exp(sum(soft * torch.logsumexp(g / soft, 0) for g in logs))
                else:
                    v = float(lam[-1].detach())
                    if tau is None:
                        tau = soft * abs(v) + 1e-300
                    loss = tau * torch.logsumexp(lam / tau, 0)
                if v < best:
                    best, best_p = v, [p.detach().clone() for p in params]
                loss.backward()
                return loss
            opt.step(closure)
            with torch.no_grad():  # the next round starts from the best point
                for p, b in zip(params, best_p):
                    p.copy_(b)
            soft /= 10
    except Deadline:
        pass
    return best, best_p, f"{evals} evaluations in {rounds} rounds of L-BFGS, {infeasible} infeasible"
