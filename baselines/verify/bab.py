"""``bab``: branch and bound over the input domain and the activation patterns, in the
style of LipBaB (Bhowmick, D'Souza and Raghavan, 2021), batched in torch.

The Lipschitz constant of a piecewise-linear network over a box is the largest norm of
its Jacobian over the activation regions that meet the box (see ``pwl``).  A node is a
sub-box of the (homogenised) input domain.

* Upper bound of a node: interval bounds on every unit's pre-activation (interval
  arithmetic, float64, widened outward) fix the units that are stable on the box; the
  Jacobian ``C J(a)`` over all patterns consistent with them is bounded by interval
  arithmetic on the backward pass, and its norm by the norm of the entrywise majorant.
* Lower bound: the Jacobian at the centre of every node, counted only where the pattern
  there is strict (no unit within 1e-9 of its kink), so it is the Jacobian of a real
  region: a certified lower bound.
* Leaves: a node with at most ``leaf_units`` unstable units is solved exactly: the
  Jacobians of all 2^k patterns are computed in one batch and, from the largest norm
  down, each pattern's region is tested for an interior point in the box by an LP
  (``pwl.region_point``).  The first pattern with one gives the node's exact value and a
  certified lower bound at that point.  Patterns below the current lower bound are never
  tested.  A leaf that needs more than ``leaf_lps`` LPs is split instead.
* Branching: the ``batch`` nodes with the largest upper bounds are each split in two
  along the input coordinate that is widest relative to the domain.  Nodes whose upper
  bound is below the lower bound are dropped.

The reported lower bound is witnessed: a pair of inputs around the best point, evaluated
on the network itself (``pwl.witness``; ``stats["witness"]``, which the audit evaluates
again); the search's own, the region's norm, is ``stats["search_lower"]`` (and the
trace's lower bounds are the search's).  It stops when the gap closes (``upper - lower <= rtol * upper``;
kind ``exact``) or at
the budget (status ``timeout``, kind ``upper``, the lower bound in the stats).  The
stats hold the trace of both bounds over time.  p in {1, 2, inf}, full output or class
pair, box or global domain; on ``budget.device`` (CPU or CUDA).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from bench.api import Bound, Budget, Param, Query, Verifier
from bench.network import Net
from bench.registry import register
from bench.witness import settle

from . import pwl

DEFLATE = 1e-12   # a certified lower bound is the computed norm less this relative margin


@register
class BaB(Verifier):
    name = "bab"
    version = "5"  # what each version changed: CHANGELOG.md
    graphs = True   # a residual add with one affine branch is lifted exactly (pwl._residual)
    kind = "exact"
    description = "branch and bound over input boxes and activation patterns (exact when it closes)"
    params = {"rtol": Param(1e-9, "relative gap at which it stops and says exact", ge=0, lt=1),
              "batch": Param(256, "boxes bounded at once", ge=1),
              "leaf_units": Param(10, "a box with at most this many unstable units is solved exactly (2^k patterns)",
                                  ge=0, le=16),
              "leaf_lps": Param(64, "region LPs per leaf before it is split instead", ge=1),
              "margin_s": Param(0.5, "seconds kept back from the budget to answer", ge=0),
              "max_nodes": Param(2_000_000, "boxes kept in memory at most", ge=1)}

    def supports(self, net: Net, query: Query) -> str | None:
        return pwl.refusal(net) or super().supports(net, query)

    def run(self, net: Net, query: Query, budget: Budget) -> Bound:
        pw = pwl.pwl(net)
        from bench.registry import get_verifier
        cap = get_verifier("trivial")().run(net, query, budget)
        return solve(pw, query, budget, cap=cap.value if cap.status == "ok" else math.inf, net=net, **self.opts)


class _Trace:
    def __init__(self, t0):
        self.t0, self.rows, self.last = t0, [], None

    def add(self, lb, ub, force=False):
        cur = (lb, ub)
        if cur != self.last or force:
            self.rows.append([round(time.perf_counter() - self.t0, 4), lb, ub])
            self.last = cur

    def thinned(self, n=200):
        r = self.rows
        if len(r) <= n:
            return r
        idx = np.unique(np.r_[np.linspace(0, len(r) - 1, n).round().astype(int), len(r) - 1])
        return [r[i] for i in idx]


def solve(pw: pwl.PWLNet, query: Query, budget: Budget, rtol=1e-9, batch=256, leaf_units=10, leaf_lps=64,
          margin_s=0.5, max_nodes=2_000_000, cap=math.inf, net: Net | None = None) -> Bound:
    """Branch and bound; ``cap`` is a sound global upper bound (the trivial bound) that
    no reported upper bound exceeds."""
    t0 = time.perf_counter()
    deadline = math.inf if budget.timeout_s is None else t0 + max(0.1, budget.timeout_s - margin_s)
    dev = budget.device if budget.device not in ("auto", None) else "cpu"
    s = _Search(pw, query, dev, deadline, rtol, leaf_units, leaf_lps)
    lo0, hi0 = pwl.domain_boxes(pw, query)
    if not pw.hidden:   # an affine network: one Jacobian everywhere
        v = float(pwl.norms(s.T.jacobians(s.C, []), s.p, s.pair)[0])
        up = v * (1 + pwl.REPORT_INFLATE)
        low, wit = _witnessed(net, pw, query, torch.as_tensor((lo0[0] + hi0[0]) / 2, device=dev)[None], v * (1 - DEFLATE))
        stats = {"lower": low, "upper": up, "gap": (up - low) / up if up > 0 else 0.0, "nodes": 0,
                 "trace": [[0.0, low, up]], "device": dev, "units": 0, "witness": wit}
        return Bound(up, "exact" if up - low <= rtol * up else "upper", "ok", stats=stats)
    width0 = torch.as_tensor(np.maximum((hi0 - lo0).max(0), 1e-300), dtype=torch.float64, device=dev)
    trace = _Trace(t0)
    st = s.st
    O_lo, O_hi, O_ub, closed_best = s.evaluate(torch.as_tensor(lo0, dtype=torch.float64, device=dev),
                                               torch.as_tensor(hi0, dtype=torch.float64, device=dev))
    status = "ok"
    while True:
        # drop what cannot beat the lower bound
        live = O_ub > s.lb * (1 + rtol)
        if not live.all():     # within rtol of the lower bound: kept in the upper bound
            st["pruned"] += int((~live).sum())
            closed_best = max(closed_best, float(O_ub[~live].max()))
        O_lo, O_hi, O_ub = O_lo[live], O_hi[live], O_ub[live]
        ub = max(closed_best, float(O_ub.max()) if O_ub.numel() else -math.inf)
        ub = max(min(ub, cap), s.lb)   # all closed below the lower bound: the lower bound is the value
        trace.add(s.lb, ub)
        if O_ub.numel() == 0 or ub - s.lb <= rtol * ub:
            break
        if time.perf_counter() > deadline:
            status = "timeout"
            break
        if st["nodes"] >= max_nodes:
            status = "timeout"
            st["stopped"] = f"max_nodes {max_nodes} reached"
            break
        O_lo, O_hi, O_ub, c_closed = s.branch(O_lo, O_hi, O_ub, min(batch, O_ub.numel()), width0)
        closed_best = max(closed_best, c_closed)
    trace.add(s.lb, ub, force=True)
    point = st.pop("lower_point")
    low, wit = (0.0, None) if point is None else _witnessed(net, pw, query, point[None], s.lb)
    stats = {**st, "lower": low, "upper": ub, "gap": (ub - low) / ub if ub > 0 else 0.0,
             "open_nodes": int(O_ub.numel()), "trace": trace.thinned(), "device": dev,
             "units": pw.n_units, "witness": wit, "search_lower": s.lb}
    if status == "ok" and ub - low <= rtol * ub:
        return Bound(ub, "exact", "ok", stats=stats)
    if status == "ok":   # every node closed, yet some leaf value has no certified point
        stats["note"] = "search closed without a certified lower bound at the upper bound: a sound upper bound"
        return Bound(ub, "upper", "ok", stats=stats)
    return Bound(ub, "upper", "timeout", stats=stats,
                 error=stats.get("stopped", f"budget reached with gap {stats['gap']:.3g} "
                                             f"(lower {low:.6g}, upper {ub:.6g})"))


class _Search:
    """The state of one branch and bound: the network in torch, the query's targets, the
    best lower bound found (``lb``, its point in ``st["lower_point"]``) and the counters;
    its steps bound a batch of boxes (:meth:`evaluate`), close a box exactly
    (:meth:`leaf`) and split the boxes of highest upper bound (:meth:`branch`)."""

    def __init__(self, pw, query, dev, deadline, rtol, leaf_units, leaf_lps):
        self.pw, self.dev, self.deadline = pw, dev, deadline
        self.rtol, self.leaf_units, self.leaf_lps = rtol, leaf_units, leaf_lps
        self.T = pwl.Torch(pw, dev)
        self.pair, self.p = query.is_pair, query.p
        self.C = torch.as_tensor(pwl.targets(pw, query), dtype=torch.float64, device=dev)
        self.st = {"nodes": 0, "leaves": 0, "lps": 0, "pruned": 0, "lower_point": None}
        self.lb = 0.0

    def raise_lower(self, val: float, point):
        v = float(val) * (1 - DEFLATE)
        if v > self.lb:
            self.lb = v
            self.st["lower_point"] = point

    def centres_lower(self, lo, hi):
        X = (lo + hi) / 2
        pats, ok = pwl.strict_pattern(self.T, X)
        if ok.any():
            J = self.T.jacobians(self.C, [a[ok] for a in pats])
            v = pwl.norms(J, self.p, self.pair)
            k = int(torch.argmax(v))
            self.raise_lower(float(v[k]), X[ok][k])

    def leaf(self, lo, hi, status) -> float | None:
        """Exact value of a node, -inf if no pattern above the lower bound has a region
        in it, None if it needs more than leaf_lps LPs."""
        dev = self.dev
        flat = torch.cat(status)
        unst = torch.nonzero(flat == 0).flatten()
        k = unst.numel()
        base = (flat > 0).to(torch.float64)
        combos = torch.tensor(list(np.ndindex(*(2,) * k)) if k else [[]], dtype=torch.float64, device=dev)
        pats = base.expand(combos.shape[0], -1).clone()
        if k:
            pats[:, unst] = combos
        sizes = [s.numel() for s in status]
        per_layer = list(torch.split(pats, sizes, dim=1))
        vals = pwl.norms(self.T.jacobians(self.C, per_layer), self.p, self.pair)
        order = torch.argsort(vals, descending=True)
        lo_np, hi_np = lo.cpu().numpy(), hi.cpu().numpy()
        free = [(s == 0).cpu().numpy() for s in status]
        tried = 0
        for i in order.tolist():
            v = float(vals[i])
            if v <= self.lb * (1 + self.rtol):    # cannot matter: the gap test counts it
                return v * (1 + pwl.REPORT_INFLATE)
            if tried >= self.leaf_lps or time.perf_counter() > self.deadline:   # split it, or leave it open
                return None
            tried += 1
            self.st["lps"] += 1
            pat = [a[i].cpu().numpy() for a in per_layer]
            state, x = pwl.region_point(self.pw, pat, lo_np, hi_np, free)
            if state == "empty":
                continue
            if state == "undecided":     # too thin to tell here: split the box
                return None
            self.raise_lower(v, torch.as_tensor(x, dtype=torch.float64, device=dev))
            return v * (1 + pwl.REPORT_INFLATE)
        return -math.inf

    def evaluate(self, lo, hi, parent_ub=None):
        """Bounds of a batch of nodes; returns open (lo, hi, ub) and the best closed value.
        A child's bound is never above its parent's (both are sound for the child)."""
        self.st["nodes"] += lo.shape[0]
        status = pwl.status_from(self.T.crown(lo, hi))
        self.centres_lower(lo, hi)
        n_unst = sum((s == 0).sum(1) for s in status) if status else torch.zeros(lo.shape[0], device=self.dev)
        keep = torch.ones(lo.shape[0], dtype=torch.bool, device=self.dev)
        closed = -math.inf
        for i in torch.nonzero(n_unst <= self.leaf_units).flatten().tolist():
            if time.perf_counter() > self.deadline:   # the rest stay open with their interval bounds
                break
            v = self.leaf(lo[i], hi[i], [s[i] for s in status])
            if v is not None:
                keep[i] = False
                self.st["leaves"] += 1
                closed = max(closed, v)
        if not keep.any():
            return lo[:0], hi[:0], lo.new_zeros(0), closed
        lo, hi = lo[keep], hi[keep]
        status = [s[keep] for s in status]
        Jl, Ju = self.T.jacobian_interval(self.C, status)
        ub = pwl.norm_upper(Jl, Ju, self.p, self.pair)
        if parent_ub is not None:
            ub = torch.minimum(ub, parent_ub[keep])
        return lo, hi, ub, closed

    def branch(self, O_lo, O_hi, O_ub, k: int, width0):
        """Split the ``k`` open boxes of highest upper bound in half along their widest
        side (relative to the domain's) and bound the halves: the open boxes after, and
        the best value closed."""
        top = torch.topk(O_ub, k).indices
        rest = torch.ones(O_ub.numel(), dtype=torch.bool, device=self.dev)
        rest[top] = False
        lo, hi = O_lo[top], O_hi[top]
        dim = torch.argmax((hi - lo) / width0, 1)
        mid = ((lo + hi) / 2).gather(1, dim[:, None]).squeeze(1)
        r = torch.arange(k, device=self.dev)
        lo2, hi2 = lo.clone(), hi.clone()
        hi1 = hi.clone()
        hi1[r, dim] = mid
        lo2[r, dim] = mid
        c_lo, c_hi, c_ub, c_closed = self.evaluate(torch.cat([lo, lo2]), torch.cat([hi1, hi2]),
                                                   torch.cat([O_ub[top], O_ub[top]]))
        return (torch.cat([O_lo[rest], c_lo]), torch.cat([O_hi[rest], c_hi]), torch.cat([O_ub[rest], c_ub]),
                c_closed)


def _witnessed(net, pw, query, Y: torch.Tensor, claimed: float) -> tuple[float, dict | None]:
    """The lower bound to report for the ``claimed`` region norm at the point(s) Y and its
    witness (:func:`pwl.witness`, :func:`bench.witness.settle`); without the network
    (``solve`` called on a bare PWL form) nothing is witnessed: 0."""
    if net is None:
        return 0.0, None
    v, wit = pwl.witness(net, pw, query, Y)
    return settle(claimed, v), wit   # 0 without a witness: a bound that needs none
