"""``lower``: a sound lower bound on the Lipschitz constant.

The Lipschitz constant of f (from the p-norm to the p-norm, or of the margin f_i - f_j)
is at least the operator norm of the Jacobian at any point where f is differentiable.
This verifier evaluates that norm at many points and keeps the largest; every reported
value is the norm of an actual Jacobian at an actual point, recomputed in float64 on a
float64 copy of the network.

1. ``samples`` points drawn from the domain.  A box query: uniformly in the box.  The
   global domain (all of R^n): a fraction ``1 - far`` uniformly in [low, high]^n, which
   holds the [0, 1]-scaled data with margin, and a fraction ``far`` at random directions
   and log-uniform radii up to ``far_radius`` (far from the data a ReLU network's linear
   regions are different ones, and the global constant counts them too).
2. From the best ``restarts`` of them, ``steps`` of projected gradient ascent on the
   Jacobian's operator norm.  The Jacobian of a piecewise-linear network is piecewise
   constant (zero gradient), so the ascent follows a smoothed surrogate (ReLU ->
   softplus with sharpness ``beta``, sharpened over the run; other activations as they
   are, or their ``lipbench_smooth(beta)`` when a plug-in provides one); every iterate
   is then scored on the real network.  The surrogate only steers the search: it never
   enters the value.
"""
from __future__ import annotations

import copy
import math
import time

import torch
from torch import nn

from bench.api import Bound, Budget, Query, Verifier, dual
from bench.network import Net
from bench.registry import register


def jacobian_norms(module: nn.Module, X: torch.Tensor, query: Query, create_graph: bool = False) -> torch.Tensor:
    """Operator norm of the Jacobian at each point of the batch X (shape (B, *in_shape)):
    p->p for the full output, the dual norm of the margin gradient for a class pair."""
    def f(x):
        return module(x.unsqueeze(0)).reshape(-1)

    J = torch.func.vmap(torch.func.jacrev(f))(X)
    J = J.reshape(X.shape[0], J.shape[1], -1)
    return matrix_norms(J, query)


def matrix_norms(J: torch.Tensor, query: Query) -> torch.Tensor:
    p = query.p
    if query.is_pair:
        i, j = query.target
        g = J[:, i, :] - J[:, j, :]
        q = dual(p)
        if math.isinf(q):
            return g.abs().amax(dim=1)
        return torch.linalg.vector_norm(g, ord=q, dim=1)
    if p == 2:
        return torch.linalg.matrix_norm(J, ord=2)
    if p == 1:
        return J.abs().sum(dim=1).amax(dim=1)
    return J.abs().sum(dim=2).amax(dim=1)


def smoothed(module: nn.Module, beta: float) -> nn.Module:
    """A copy of ``module`` with kinked activations replaced by smooth surrogates."""
    m = copy.deepcopy(module)

    def swap(parent: nn.Module):
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, name, nn.Softplus(beta=beta))
            elif hasattr(child, "lipbench_smooth"):
                setattr(parent, name, child.lipbench_smooth(beta))
            else:
                swap(child)
    swap(m)
    return m


@register
class Lower(Verifier):
    name = "lower"
    kind = "lower"
    description = "sampling + projected gradient ascent on the Jacobian norm (sound lower bound)"
    params = {"samples": 2000, "restarts": 16, "steps": 60, "lr": 0.02, "beta": 10.0,
              "low": -1.0, "high": 2.0, "far": 0.3, "far_radius": 1000.0, "seed": 0, "batch": 256}

    def run(self, net: Net, query: Query, budget: Budget) -> Bound:
        t0 = time.perf_counter()
        deadline = budget.deadline(t0) - 0.5  # leave time to write the answer
        P = self.p
        dev = torch.device(budget.device if budget.device != "auto" else "cpu")
        g = torch.Generator(device="cpu").manual_seed(int(P["seed"]))
        exact = copy.deepcopy(net.module).double().eval().to(dev)
        shape = net.input_shape
        far = 0.0
        if query.domain == "global":
            lo = torch.full(shape, P["low"], dtype=torch.float64)
            hi = torch.full(shape, P["high"], dtype=torch.float64)
            far = P["far"]
            box_lo, box_hi = lo.clamp(max=-P["far_radius"]), hi.clamp(min=P["far_radius"])
        else:
            c = torch.tensor(query.domain[0], dtype=torch.float64).reshape(shape)
            lo, hi = c - query.domain[1], c + query.domain[1]
            box_lo, box_hi = lo, hi
        lo, hi, box_lo, box_hi = lo.to(dev), hi.to(dev), box_lo.to(dev), box_hi.to(dev)

        best, evaluated = 0.0, 0
        # 1. uniform samples, scored on the exact network
        pool_x, pool_v = [], []
        with torch.no_grad():
            for s in range(0, P["samples"], P["batch"]):
                n = min(P["batch"], P["samples"] - s)
                X = (lo + (hi - lo) * torch.rand(n, *shape, generator=g, dtype=torch.float64).to(dev))
                n_far = int(round(far * n))
                if n_far:
                    u = torch.randn(n_far, *shape, generator=g, dtype=torch.float64)
                    u /= u.reshape(n_far, -1).norm(dim=1).reshape(n_far, *([1] * len(shape)))
                    r = torch.exp(torch.rand(n_far, generator=g, dtype=torch.float64) * math.log(P["far_radius"]))
                    X[:n_far] = (u * r.reshape(n_far, *([1] * len(shape)))).to(dev).clamp(box_lo, box_hi)
                v = jacobian_norms(exact, X, query)
                evaluated += n
                pool_x.append(X)
                pool_v.append(v)
                if time.perf_counter() > deadline:
                    break
        X = torch.cat(pool_x)
        V = torch.cat(pool_v)
        best = float(V.max())
        sample_best = best
        # 2. projected gradient ascent on a smoothed surrogate from the best samples
        k = min(P["restarts"], len(X))
        X = X[torch.topk(V, k).indices].clone()
        steps_done = 0
        span = (hi - lo)
        center = (hi + lo) / 2
        for step in range(P["steps"]):
            if time.perf_counter() > deadline:
                break
            beta = P["beta"] * (1.0 + 9.0 * step / max(P["steps"] - 1, 1))  # sharpen 1x -> 10x
            surrogate = smoothed(exact, beta)
            Xr = X.detach().requires_grad_(True)
            obj = jacobian_norms(surrogate, Xr, query).sum()
            (grad,) = torch.autograd.grad(obj, Xr)
            gn = grad.reshape(k, -1).norm(dim=1).clamp_min(1e-30).reshape(k, *([1] * len(shape)))
            # steps scale with the point's distance from the data box (far points move far)
            scale = 1.0 + ((X - center).abs() / span).reshape(k, -1).amax(dim=1).reshape(gn.shape)
            X = X + P["lr"] * span * scale * grad / gn * math.sqrt(X[0].numel())
            X = torch.minimum(torch.maximum(X, box_lo), box_hi)
            with torch.no_grad():
                v = jacobian_norms(exact, X, query)
            evaluated += k
            best = max(best, float(v.max()))
            steps_done += 1
        stats = {"points": evaluated, "sample_best": sample_best, "ascent_steps": steps_done,
                 "domain": "global box" if query.domain == "global" else "box",
                 "stopped_early": steps_done < P["steps"]}
        return Bound(best, "lower", "ok", stats=stats)
