"""``mip``: the exact Lipschitz constant of a piecewise-linear network as a mixed-integer
linear program, in the style of LipMIP (Jordan and Dimakis, NeurIPS 2020).

One program holds the forward pass and the backward pass of the same activation
pattern (see ``pwl`` for the network form and the homogenised domains):

* forward: input (y, t) in the domain box; for every unit that interval/linear bounds
  (``pwl.Torch.crown``) cannot fix, a binary a and r = relu(d) by the big-M constraints
  r >= d, r >= 0, r <= d - l (1 - a), r <= u a, with [l, u] the unit's sound bounds;
* backward: v = W_out^T c, then per layer w = Q^T v, u = a w (linearised with the sound
  interval bounds of w from ``pwl.Torch.jacobian_interval``), v <- W^T (P^T v + A^T u);
  the gradient g = c^T J(a) is the last v;
* objective: ||g||_1 (input norm l_inf) with a sign binary per coordinate whose sign is
  not fixed by its bounds, or ||g||_inf (input norm l1) with one binary per coordinate
  and sign choosing which attains the maximum.
* targets: a class pair fixes c = e_i - e_j; the full output takes c = e_i over a
  binary choice of i (l_inf: ||J||_inf->inf is the largest row l1 norm) or c in
  {-1, 1}^m (l1: ||J||_1->1 = max over c of ||J^T c||_inf).
* global domain: the faces of the cube max(||y||_inf, t) = 1 (2n + 1 face binaries),
  never its centre, where every unit has a tie and any pattern would be allowed.

Backends: HiGHS (``highspy``, or scipy's ``milp`` without it), which needs no licence,
and Gurobi (``gurobipy``; a size-limited licence refusing the model is reported as
``license_limit`` with the model's size).  Both get the time left in the budget and the
relative gap ``rtol / 10``.

The reported value is the solver's dual bound (an upper bound).  The incumbent's pattern
is then checked: an LP finds a point strictly inside its region (``pwl.region_point``),
where the norm of its Jacobian is a lower bound; so is the largest Jacobian norm at 256
random points with strict patterns, kept when the solver has no incumbent.  The better
of the two is reported as a witnessed lower bound (``stats["lower"]`` and
``stats["witness"]``, a pair of inputs around that point: :func:`pwl.witness`), which the
audit evaluates again.  Kind ``exact`` when the witnessed lower bound and the upper bound
meet within ``rtol``; otherwise kind ``upper`` with the lower bound in the stats (at a
timeout, or when a tie could not be cut off: below).

Ties.  The big-M rows accept a unit at its kink (d = 0) with either value of its binary,
so the program may pick a pattern whose region has no interior: the closed sets
{a_k = 1 => d_k >= 0, a_k = 0 => d_k <= 0} meet, but the open region is empty (e.g. on
the global domain's face t = 0, or where two kinks cross), and its Jacobian J(a) is no
Jacobian of the network.  When the incumbent's pattern is such a tie (the region LP says
``empty``) it is cut off by a no-good cut, sum_{k in K, a*_k = 1} (1 - a_k) +
sum_{k in K, a*_k = 0} a_k >= 1, over a set K of unit binaries whose values alone leave
no interior (``_tie_cut``: the shortest prefix of layers whose constraints are already
empty, then that prefix's last layer pruned unit by unit; one small LP each; K is often
a few units where all of them would cut one pattern of thousands alike), and the
program is solved again with
the time left, until the incumbent's pattern has an interior (then ``exact`` as above),
the budget ends (``timeout``), ``max_cuts`` cuts were added, the region LP cannot decide
(``undecided``: no cut, a real region could be that thin), or a re-solve gives nothing
(Gurobi's size-limited licence may refuse the model once it has the cuts); these answer
kind ``upper`` with the last sound dual bound.  ``stats["cuts"]`` counts the cuts,
``stats["cuts_s"]`` the seconds from the first cut to the answer.

Why every dual bound stays an upper bound.  The Lipschitz constant is the largest
||C J(a)|| over the patterns a whose region has an interior point in the domain.  In the
program the objective depends on the binaries alone: the backward pass u = a w is
linearised with interval bounds on w that hold for *every* pattern consistent with the
stable units (``jacobian_interval``), so for binary a it is exactly C J(a), and the
sign / face / output binaries only choose how the norm is attained and where x lies; x
only certifies that a's closed region meets the domain.  Every real pattern a is
therefore feasible, with its full norm, in the program with any set of cuts that all
exclude tie patterns only: a no-good cut removes exactly the points whose binaries in K
equal a*'s (every x, every face, every output and sign choice), and no such pattern has
an interior, since a unit's pre-activation is affine in x given the binaries of the
layers before it, so the region of any pattern agreeing with a* on K lies in the set
cut out by K's constraints alone, which the LP found empty (fewer constraints only
widen the LP's margin).  So the cut program's optimum is still >= the constant.  The
cut is over unit binaries only: the face binaries do not define a region (a region with an interior in the solid
homogenised cube with t > 0 is one of R^n whatever face x sits on), nor do the sign or
output binaries.  Stable units are fixed strictly on the whole domain by their bounds.
"No interior" is the region LP's verdict ``empty`` (margin <= ``pwl.EMPTY_EPS``), the
same one that lets ``bab`` drop a pattern at a leaf.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from bench.api import Bound, Budget, Param, Query, Unsupported, Verifier, dual
from bench.network import Net
from bench.registry import register
from bench.witness import settle

from . import pwl

DEFLATE = 1e-12


@register
class MIP(Verifier):
    name = "mip"
    version = "5"  # what each version changed: CHANGELOG.md
    kind = "exact"
    graphs = True   # a residual add with one affine branch is lifted exactly (pwl._residual)
    norms = (1.0, math.inf)
    description = "exact Lipschitz constant as a MILP (LipMIP-style); backends HiGHS or Gurobi"
    params = {"backend": Param("highs", "the MILP solver: HiGHS (free) or Gurobi (licence)", choices=("highs", "gurobi")),
              "rtol": Param(1e-6, "relative gap at which it says exact", gt=0, lt=1),
              "margin_s": Param(0.5, "seconds kept back from the budget to answer", ge=0),
              "max_cuts": Param(10_000, "no-good cuts on tie patterns (no interior) before it answers upper", ge=0)}
    install_hint = "pip install 'lipbench[mip]' (gurobipy, highspy)"

    def supports(self, net: Net, query: Query) -> str | None:
        return pwl.refusal(net) or super().supports(net, query)

    def run(self, net: Net, query: Query, budget: Budget) -> Bound:
        if self.opts["backend"] == "gurobi":
            import importlib.util
            if importlib.util.find_spec("gurobipy") is None:
                return Bound(None, "upper", "not_installed",
                             error=f"mip backend gurobi needs the Python package gurobipy; {self.install_hint}")
        return solve(pwl.pwl(net), query, budget, net=net, **self.opts)


class _Model:
    """A MILP in matrix form: variables with bounds and integrality, rows lo <= A x <= hi."""

    def __init__(self):
        self.lb, self.ub, self.integer, self.names = [], [], [], []
        self.rows, self.rlo, self.rhi = [], [], []

    def var(self, n, lb, ub, integer=False, name=""):
        start = len(self.lb)
        self.lb += list(np.broadcast_to(lb, n).astype(float))
        self.ub += list(np.broadcast_to(ub, n).astype(float))
        self.integer += [integer] * n
        self.names += [name] * n
        return np.arange(start, start + n)

    def row(self, coef: dict | np.ndarray, lo=-np.inf, hi=np.inf):
        self.rows.append(coef)
        self.rlo.append(lo)
        self.rhi.append(hi)

    @property
    def n(self):
        return len(self.lb)

    def matrix(self):
        data, ri, ci = [], [], []
        for i, r in enumerate(self.rows):
            nz = np.nonzero(r)[0]
            data.append(r[nz])
            ri.append(np.full(nz.size, i))
            ci.append(nz)
        A = sp.csr_matrix((np.concatenate(data) if data else [], (np.concatenate(ri) if ri else [],
                           np.concatenate(ci) if ci else [])), shape=(len(self.rows), self.n))
        return A, np.array(self.rlo, float), np.array(self.rhi, float)


class _Expr:
    """Affine expressions E x + k over the model's variables (rows of a dense matrix)."""

    def __init__(self, E: np.ndarray, k: np.ndarray):
        self.E, self.k = E, k

    def map(self, M: np.ndarray) -> "_Expr":
        return _Expr(M @ self.E, M @ self.k)

    def __add__(self, o: "_Expr") -> "_Expr":
        return _Expr(self.E + o.E, self.k + o.k)


def build(pw: pwl.PWLNet, query: Query, bounds, status, w_bounds, g_bounds, c_kind: str):
    """The program; returns (model, objective vector, objective constant, layout): the
    variables, then the rows of the global domain's faces, the forward pass (the
    activations of the unstable units), the backward pass (the gradient) and the
    objective (its dual norm)."""
    M = _Model()
    V = _Vars(M, pw, query, status, g_bounds, c_kind)
    if V.faces is not None:
        _face_rows(M, V, pw)
    _forward(M, V, pw, bounds, status)
    g = _backward(M, V, pw, query, status, w_bounds, c_kind)
    obj, const = _objective(M, V, g, g_bounds)
    layout = {"x": V.X, "a": V.Abin, "unst": V.unst}
    return M, obj, const, layout


class _Vars:
    """The program's variables: the input x (with t, the homogenising coordinate), the
    global domain's face choice, per unstable unit its activation r, its pattern bit a
    and its backward value u, the output selection c, and the norm's variables (p = inf:
    mu and the sign choice gamma; otherwise the split g = gp - gn of the gradient's mixed
    coordinates and its bit sigma).  ``unit(idx, coef)`` is a row over all of them."""

    def __init__(self, M: "_Model", pw, query, status, g_bounds, c_kind):
        n = self.n = pw.in_dim
        lo, hi = pwl.domain_box(pw, query)
        # count variables first: the expressions are dense over all of them
        self.unst = unst = [np.nonzero(s == 0)[0] for s in status]
        self.m = pw.out_dim
        gl, gu = g_bounds
        self.G = np.maximum(np.abs(gl), np.abs(gu))
        self.q = dual(query.p)
        self.X = M.var(n + 1, lo, hi, name="x")
        glob = pwl.is_global(pw, query)
        self.faces = M.var(2 * n + (1 if pw.has_bias else 0), 0, 1, True, "face") if glob else None
        self.R = [M.var(len(u), 0, np.inf, name=f"r{li}") for li, u in enumerate(unst)]
        self.Abin = [M.var(len(u), 0, 1, True, f"a{li}") for li, u in enumerate(unst)]
        self.beta = M.var(self.m, 0, 1, True, "c") if c_kind != "pair" else None
        self.U = [M.var(len(u), -np.inf, np.inf, name=f"u{li}") for li, u in enumerate(unst)]
        if math.isinf(self.q):
            self.mu = M.var(1, 0, float(self.G.max()), name="mu")
            self.gam = M.var(2 * n, 0, 1, True, "gamma")
        else:
            self.mixed = np.nonzero((gl < 0) & (gu > 0))[0]
            self.gp = M.var(self.mixed.size, 0, gu[self.mixed], name="gp")
            self.gn = M.var(self.mixed.size, 0, -gl[self.mixed], name="gn")
            self.sig = M.var(self.mixed.size, 0, 1, True, "sigma")
        self.NV = M.n

    def unit(self, idx, coef=1.0):
        e = np.zeros(self.NV)
        e[idx] = coef
        return e


def _face_rows(M: "_Model", V: _Vars, pw):
    """max(||y||_inf, t) = 1: one face is chosen and lies on it."""
    n, X, faces, unit = V.n, V.X, V.faces, V.unit
    M.row(unit(faces), 1, 1)
    for i in range(n):
        r = unit(X[i]); r[faces[2 * i + 1]] = -2.0            # y_i >= 2 phi - 1
        M.row(r, -1, np.inf)
        r = unit(X[i]); r[faces[2 * i]] = 2.0                 # y_i <= 1 - 2 phi
        M.row(r, -np.inf, 1)
    if pw.has_bias:
        r = unit(X[n]); r[faces[2 * n]] = -1.0                # t >= phi
        M.row(r, 0, np.inf)


def _forward(M: "_Model", V: _Vars, pw, bounds, status):
    """The forward pass: each unstable unit's r = relu(d) by its big-M rows."""
    n, NV, unit = V.n, V.NV, V.unit
    E = np.zeros((n, NV))
    E[np.arange(n), V.X[:n]] = 1.0
    h = _Expr(E, np.zeros(n))
    tvec = unit(V.X[n])
    for li, (L, (dl, du), s) in enumerate(zip(pw.hidden, bounds, status)):
        z = h.map(L.W)
        z.E = z.E + np.outer(L.b, tvec)
        d = z.map(L.A)
        k = L.units
        rE, rk = np.zeros((k, NV)), np.zeros(k)
        on = s > 0
        rE[on], rk[on] = d.E[on], d.k[on]
        for j, ui in enumerate(V.unst[li]):
            r, a = V.R[li][j], V.Abin[li][j]
            de, dk = d.E[ui], d.k[ui]
            l_, u_ = float(dl[ui]), float(du[ui])
            M.row(unit(r) - de, dk, np.inf)                        # r >= d
            row = unit(r) - de
            row[a] -= l_
            M.row(row, -np.inf, dk - l_)                           # r <= d - l (1 - a)
            M.row(unit(r) - u_ * unit(a), -np.inf, 0.0)            # r <= u a
            rE[ui] = unit(r)
        h = z.map(L.P) + _Expr(L.Q @ rE, L.Q @ rk)


def _backward(M: "_Model", V: _Vars, pw, query, status, w_bounds, c_kind) -> "_Expr":
    """The backward pass from the selected output (or the class pair): the gradient, an
    (n, NV) expression, each unstable unit's u = a w by its big-M rows."""
    m, NV, unit = V.m, V.NV, V.unit
    C = pwl.targets(pw, query)
    if c_kind == "pair":
        c = _Expr(np.zeros((m, NV)), C[0].copy())
    else:
        cE = np.zeros((m, NV))
        cE[np.arange(m), V.beta] = 1.0 if c_kind == "select" else 2.0
        c = _Expr(cE, np.zeros(m) if c_kind == "select" else -np.ones(m))
        if c_kind == "select":
            M.row(unit(V.beta), 1, 1)
    v = c.map(pw.W_out.T)
    for li in reversed(range(len(pw.hidden))):
        L, s = pw.hidden[li], status[li]
        wl, wu = w_bounds[li]
        w = v.map(L.Q.T)
        k = L.units
        uE, uk = np.zeros((k, NV)), np.zeros(k)
        on = s > 0
        uE[on], uk[on] = w.E[on], w.k[on]
        for j, ui in enumerate(V.unst[li]):
            uu, a = V.U[li][j], V.Abin[li][j]
            we, wk = w.E[ui], w.k[ui]
            l_, h_ = float(wl[ui]), float(wu[ui])
            row = unit(uu) - we; row[a] -= l_
            M.row(row, -np.inf, wk - l_)                           # u <= w - wl (1 - a)
            row = unit(uu) - we; row[a] -= h_
            M.row(row, wk - h_, np.inf)                            # u >= w - wu (1 - a)
            M.row(unit(uu) - l_ * unit(a), 0.0, np.inf)            # u >= wl a
            M.row(unit(uu) - h_ * unit(a), -np.inf, 0.0)           # u <= wu a
            uE[ui] = unit(uu)
        vz = v.map(L.P.T) + _Expr(L.A.T @ uE, L.A.T @ uk)
        v = vz.map(L.W.T)
    return v


def _objective(M: "_Model", V: _Vars, g: "_Expr", g_bounds) -> tuple[np.ndarray, float]:
    """The gradient's dual norm to maximise: max_i |g_i| (p = inf) by a chosen sign and
    coordinate, else sum_i |g_i| (mixed-sign coordinates split)."""
    n, unit = V.n, V.unit
    gl, gu = g_bounds
    obj = np.zeros(V.NV)
    const = 0.0
    if math.isinf(V.q):                     # max_i |g_i|
        Mbig = 2.0 * float(V.G.max()) + 1.0
        M.row(unit(V.gam), 1, 1)
        for i in range(n):
            for sgn, gi in ((1.0, V.gam[2 * i]), (-1.0, V.gam[2 * i + 1])):
                row = unit(V.mu) - sgn * g.E[i]
                row[gi] += Mbig
                M.row(row, -np.inf, sgn * g.k[i] + Mbig)           # mu <= s g_i + M (1 - gamma)
        obj[V.mu] = 1.0
    else:                                   # sum_i |g_i|
        mixed_set = {int(i): j for j, i in enumerate(V.mixed)}
        for i in range(n):
            if i in mixed_set:
                j = mixed_set[i]
                M.row(g.E[i] - unit(V.gp[j]) + unit(V.gn[j]), -g.k[i], -g.k[i])   # g = gp - gn
                M.row(unit(V.gp[j]) - gu[i] * unit(V.sig[j]), -np.inf, 0.0)
                M.row(unit(V.gn[j]) - gl[i] * unit(V.sig[j]), -np.inf, -gl[i])   # gn <= -gl (1 - sigma)
                obj[V.gp[j]] += 1.0
                obj[V.gn[j]] += 1.0
            else:
                sgn = 1.0 if gl[i] >= 0 else -1.0
                obj += sgn * g.E[i]
                const += sgn * g.k[i]
    return obj, const


@dataclass
class _Program:
    """The program of one query with what its result is read against: the network in
    torch, the domain box, the model and its matrix, the objective's constant and size."""
    T: pwl.Torch
    lo: np.ndarray
    hi: np.ndarray
    model: object
    obj: np.ndarray
    const: float
    layout: dict
    A: sp.csr_matrix
    rlo: np.ndarray
    rhi: np.ndarray
    size: dict


def _program(pw: pwl.PWLNet, query: Query) -> _Program:
    """Sound bounds on every unit and on the backward pass, then the program (``build``)."""
    T = pwl.Torch(pw, "cpu")
    lo, hi = pwl.domain_box(pw, query)
    Lo = torch.as_tensor(lo, dtype=torch.float64)[None]
    Hi = torch.as_tensor(hi, dtype=torch.float64)[None]
    bnds = T.crown(Lo, Hi)
    status = pwl.status_from(bnds)
    C = torch.as_tensor(pwl.targets(pw, query), dtype=torch.float64)
    if query.is_pair:
        c_kind, c_rad = "pair", None
        Cc = C
    elif math.isinf(query.p):
        c_kind = "select"
        Cc, c_rad = torch.full((1, pw.out_dim), 0.5, dtype=torch.float64), torch.full((1, pw.out_dim), 0.5, dtype=torch.float64)
    else:
        c_kind = "signs"
        Cc, c_rad = torch.zeros((1, pw.out_dim), dtype=torch.float64), torch.ones((1, pw.out_dim), dtype=torch.float64)
    gl, gu, kept = T.jacobian_interval(Cc, status, c_rad, keep=True)
    w_bounds = [(a[0, 0].numpy(), b[0, 0].numpy()) for a, b in reversed(kept)]
    np_bounds = [(dl[0].numpy(), du[0].numpy()) for dl, du in bnds]
    np_status = [s[0].numpy() for s in status]
    model, obj, const, layout = build(pw, query, np_bounds, np_status, w_bounds,
                                      (gl[0, 0].numpy(), gu[0, 0].numpy()), c_kind)
    A, rlo, rhi = model.matrix()
    size = {"variables": model.n, "binaries": int(sum(model.integer)), "constraints": A.shape[0],
            "unstable_units": int(sum(len(u) for u in layout["unst"])), "units": pw.n_units}
    return _Program(T, lo, hi, model, obj, const, layout, A, rlo, rhi, size)


@dataclass
class _Solves:
    """Where the solve loop ended: the last solver result (``out``; None when the budget
    ran out before the first solve), the best dual bound, why it stopped early (``stop``),
    whether the last incumbent was a tie, the cuts spent and the witnessed points."""
    points: list
    out: dict | None = None
    upper: float | None = None
    stop: str | None = None
    nodes: int = 0
    tie: bool = False
    t_first: float | None = None
    t_cut: float | None = None
    cuts: list = field(default_factory=list)   # no-good cuts, one row each over the model's variables


def _solve_with_cuts(pw, query, prog: _Program, budget: Budget, backend, rtol, margin_s, max_cuts, t0) -> _Solves:
    """Solve; while the incumbent's pattern is a tie with an empty region, cut it off with
    a no-good cut and solve again (the module's docstring: Ties)."""
    run = _gurobi if backend == "gurobi" else _highs
    sampled = _sampled_lower(pw, prog.T, query)
    s = _Solves(points=[sampled] if sampled is not None else [])
    A, rlo, rhi = prog.A, prog.rlo, prog.rhi
    while True:
        left = math.inf if budget.timeout_s is None else budget.timeout_s - margin_s - (time.perf_counter() - t0)
        if left <= 0:
            s.stop = "budget"
            return s
        if s.cuts:
            Ac = sp.vstack([A, sp.csr_matrix(np.array(s.cuts))]).tocsr()
            lo_c = np.r_[rlo, [1.0 - float(np.sum(c < 0)) for c in s.cuts]]
            hi_c = np.r_[rhi, np.full(len(s.cuts), np.inf)]
        else:
            Ac, lo_c, hi_c = A, rlo, rhi
        res = run(prog.model, Ac, lo_c, hi_c, prog.obj, left, rtol / 10, budget.threads)
        s.t_first = res["t_start"] if s.t_first is None else s.t_first
        if res.get("license_limit") or res["upper"] is None:
            if s.out is None:
                s.out = res
            else:   # a re-solve with cuts gave nothing: the last solve's bounds stand
                s.stop = "license_limit" if res.get("license_limit") else (
                    "budget" if res.get("timed_out") else f"{res['backend']}: {res['status_text']}")
            return s
        s.out = out = res
        s.nodes += out.get("nodes") or 0
        s.upper = out["upper"] if s.upper is None else min(s.upper, out["upper"])   # every one is sound (docstring)
        if out["timed_out"] or out["x"] is None:
            return s
        state, inc, binaries = _certify_incumbent(pw, prog.T, query, out["x"], prog.layout, prog.lo, prog.hi)
        if state == "in":
            s.points.append(inc)
            s.tie = False
            return s
        s.tie = True
        if s.points and (s.upper + prog.const) - max(v for v, _ in s.points) <= rtol * (s.upper + prog.const) * 0.5:
            s.tie = False   # a real region (the sampled one) already meets the dual bound
            return s
        if state != "empty" or not binaries.size:   # (no binaries: a fixed pattern has no tie)
            return s   # undecided: a region too thin for the LP to say; cutting it could drop a real one
        if len(s.cuts) >= max_cuts:
            s.stop = "max_cuts"
            return s
        s.t_cut = time.perf_counter() if s.t_cut is None else s.t_cut
        # the no-good cut: sum_{K, a*=1} (1 - a) + sum_{K, a*=0} a >= 1 over the unit binaries K (_tie_cut)
        ones = np.round(np.asarray(out["x"])[binaries]) > 0.5
        row = np.zeros(prog.model.n)
        row[binaries] = np.where(ones, -1.0, 1.0)
        s.cuts.append(row)


def _verdict(pw, query, net, prog: _Program, s: _Solves, rtol, max_cuts, t0) -> Bound:
    """The bound the solves support: exact when the witnessed lower bound meets the dual
    bound, otherwise an upper bound (with why, at a timeout or an uncut tie)."""
    out, upper, cuts, model, A = s.out, s.upper, s.cuts, prog.model, prog.A
    stats = {**prog.size, "backend": out["backend"], "nodes": s.nodes if upper is not None else out.get("nodes"),
             "build_s": s.t_first - t0, "solver_status": out["status_text"], "cuts": len(cuts),
             "cuts_s": 0.0 if s.t_cut is None else time.perf_counter() - s.t_cut}
    if upper is None:
        if out.get("license_limit"):
            return Bound(None, "upper", "license_limit", stats=stats,
                         error=f"the size-limited Gurobi licence refused the model ({model.n} variables, "
                               f"{A.shape[0]} constraints; limit 2,000 each): use backend highs")
        status_ = "timeout" if out["timed_out"] else "error"
        return Bound(None, "upper", status_, stats=stats, error=f"{out['backend']}: {out['status_text']}, no bound")
    upper = (upper + prog.const) * (1 + pwl.REPORT_INFLATE) + 1e-300
    lower, wit = None, None
    if s.points and net is not None:   # the reported lower bound is a witnessed one (bench.witness)
        claimed = max(v for v, _ in s.points)
        lower, wit = pwl.witness(net, pw, query, torch.stack([y for _, y in s.points]))
        lower = settle(claimed, lower)   # 0 without a witness: a bound that needs none
    stats.update(upper=upper, lower=lower, witness=wit,
                 incumbent=None if out["obj"] is None else out["obj"] + prog.const)
    stats["gap"] = None if lower is None else (upper - lower) / upper if upper > 0 else 0.0
    if out["timed_out"] or s.stop == "budget":
        return Bound(upper, "upper", "timeout", stats=stats,
                     error=f"budget reached{f' after {len(cuts)} tie cuts' if cuts else ''}: upper {upper:.6g}, "
                           f"lower {lower if lower is None else f'{lower:.6g}'}")
    if lower is not None and lower > upper * (1 + 1e-9) + 1e-12:
        return Bound(None, "upper", "error", stats=stats,
                     error=f"{out['backend']} reported an upper bound {upper:.9g} below a certified lower bound "
                           f"{lower:.9g}: a solver tolerance failure, no value reported")
    if lower is not None and upper - lower <= rtol * upper + 1e-12:
        return Bound(upper, "exact", "ok", stats=stats)
    if s.tie:
        stop = s.stop
        why = ("the region LP could not decide whether it has one" if stop is None else
               f"the size-limited Gurobi licence refused the program with {len(cuts)} cuts" if stop == "license_limit"
               else f"max_cuts = {max_cuts} no-good cuts were spent" if stop == "max_cuts"
               else f"the re-solve with {len(cuts)} cuts gave no bound ({stop})")
        stats["note"] = ("the solver closed, but the incumbent's activation pattern has no interior point in the "
                         f"domain (a tie) and {why}: the value is a sound upper bound, not certified exact")
    return Bound(upper, "upper", "ok", stats=stats)


def solve(pw: pwl.PWLNet, query: Query, budget: Budget, backend="highs", rtol=1e-6, margin_s=0.5,
          max_cuts=10_000, net: Net | None = None) -> Bound:
    t0 = time.perf_counter()
    if query.p == 2:
        raise Unsupported("mip: the l2 norm of the gradient is not linear; use p = 1 or inf (or bab for p = 2)")
    prog = _program(pw, query)
    s = _solve_with_cuts(pw, query, prog, budget, backend, rtol, margin_s, max_cuts, t0)
    if s.out is None:
        return Bound(None, "upper", "timeout", stats=prog.size, error="the budget ran out while building the program")
    return _verdict(pw, query, net, prog, s, rtol, max_cuts, t0)


def _sampled_lower(pw, T, query, n=256, seed=0) -> tuple[float, torch.Tensor] | None:
    """A lower bound that does not depend on the solver finding an incumbent: the
    largest Jacobian norm at ``n`` random points of the domain where the pattern is
    strict (faces of the homogenised cube for the global domain), and that point."""
    lo, hi = pwl.domain_boxes(pw, query)
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, lo.shape[0], (n,), generator=g)
    Lo, Hi = torch.as_tensor(lo)[k], torch.as_tensor(hi)[k]
    X = Lo + (Hi - Lo) * torch.rand(n, lo.shape[1], generator=g, dtype=torch.float64)
    pats, ok = pwl.strict_pattern(T, X)
    if not ok.any():
        return None
    C = torch.as_tensor(pwl.targets(pw, query), dtype=torch.float64)
    v = pwl.norms(T.jacobians(C, [a[ok] for a in pats]), query.p, query.is_pair)
    k = int(v.argmax())
    return float(v[k]) * (1 - DEFLATE), X[ok][k]


def _certify_incumbent(pw, T, query, x, layout, lo, hi):
    """The incumbent's region: (state, (norm, point strictly inside) or None, the indices
    of the unit binaries of the tie cut, or None); state as :func:`pwl.region_point`
    says: ``in``, ``empty`` (no interior: a tie) or ``undecided``."""
    # the program's pattern: stable units as the forward pass at x has them (their bounds
    # fix them on the whole domain), unstable ones from the binaries
    yt = np.asarray(x)[layout["x"]]
    ds = T.forward(torch.as_tensor(yt, dtype=torch.float64)[None])
    pattern, free = [], []
    for d, u, ab in zip(ds, layout["unst"], layout["a"]):
        a = (d[0].numpy() > 0).astype(float)
        a[u] = np.round(np.asarray(x)[ab])
        pattern.append(a)
        f = np.zeros(a.size, bool)
        f[u] = True
        free.append(f)
    state, point = pwl.region_point(pw, pattern, lo, hi, free)
    if state == "empty":
        return state, None, _tie_cut(pw, pattern, free, layout, lo, hi)
    if state != "in":
        return state, None, None
    C = torch.as_tensor(pwl.targets(pw, query), dtype=torch.float64)
    J = T.jacobians(C, [torch.as_tensor(a)[None] for a in pattern])
    value = float(pwl.norms(J, query.p, query.is_pair)[0]) * (1 - DEFLATE)
    return state, (value, torch.as_tensor(point, dtype=torch.float64)), None


def _tie_cut(pw, pattern, free, layout, lo, hi) -> np.ndarray:
    """The unit binaries a no-good cut on a tie pattern runs over: the fewest of this
    greedy search whose values alone leave no interior.  The pre-activations of layer l
    are affine in x given the pattern of the layers before it, so the constraints of the
    layers 1..l (and of a subset S of layer l's units) depend on the binaries of layers
    < l and of S only; when they already have no interior, neither has any pattern that
    agrees there.  So: the shortest prefix of layers with no interior, then layer l's
    units dropped one by one while it stays empty (one small LP each)."""
    depth = len(pattern)
    for li in range(depth):
        if pwl.region_point(pw, pattern[:li + 1], lo, hi, free[:li + 1])[0] == "empty":
            depth = li + 1
            break
    keep = free[depth - 1].copy()
    for k in np.nonzero(keep)[0]:
        keep[k] = False
        if pwl.region_point(pw, pattern[:depth], lo, hi, free[:depth - 1] + [keep])[0] != "empty":
            keep[k] = True
    last = np.asarray(layout["a"][depth - 1], int)[keep[layout["unst"][depth - 1]]]
    return np.concatenate([np.asarray(ab, int) for ab in layout["a"][:depth - 1]] + [last])


def _highs(model, A, rlo, rhi, obj, time_limit, gap, threads):
    t_start = time.perf_counter()
    try:
        import highspy
    except ImportError:
        return _scipy_milp(model, A, rlo, rhi, obj, time_limit, gap, t_start)
    h = _quiet_highs(highspy)
    h.setOptionValue("time_limit", float(time_limit))
    h.setOptionValue("mip_rel_gap", float(gap))
    h.setOptionValue("mip_abs_gap", 1e-12)
    h.setOptionValue("threads", int(max(1, threads)))
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = model.n, A.shape[0]
    lp.col_cost_ = np.asarray(obj, float)
    lp.col_lower_, lp.col_upper_ = np.array(model.lb), np.array(model.ub)
    lp.row_lower_, lp.row_upper_ = rlo, rhi
    Acsc = A.tocsc()
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = Acsc.indptr, Acsc.indices, Acsc.data
    lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = model.n, A.shape[0]
    lp.integrality_ = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous
                       for i in model.integer]
    lp.sense_ = highspy.ObjSense.kMaximize
    h.passModel(lp)
    h.run()
    ms = h.getModelStatus()
    info = h.getInfo()
    text = h.modelStatusToString(ms)
    timed_out = ms == highspy.HighsModelStatus.kTimeLimit
    has_sol = info.primal_solution_status == 2
    upper = info.mip_dual_bound if math.isfinite(info.mip_dual_bound) else None
    if ms == highspy.HighsModelStatus.kOptimal:
        upper = max(upper if upper is not None else -math.inf, info.objective_function_value)
    return {"backend": "highs (highspy)", "upper": upper, "obj": info.objective_function_value if has_sol else None,
            "x": np.array(h.getSolution().col_value) if has_sol else None, "timed_out": timed_out,
            "status_text": text, "nodes": int(info.mip_node_count), "t_start": t_start}


def _quiet_highs(highspy):
    """A Highs object, without the banner its constructor prints on the process's stdout."""
    import os
    import sys
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            h = highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    h.setOptionValue("output_flag", False)
    return h


def _scipy_milp(model, A, rlo, rhi, obj, time_limit, gap, t_start):
    from scipy.optimize import Bounds, LinearConstraint, milp
    res = milp(-np.asarray(obj), integrality=np.array(model.integer, int),
               bounds=Bounds(np.array(model.lb), np.array(model.ub)),
               constraints=LinearConstraint(A, rlo, rhi),
               options={"time_limit": float(time_limit), "mip_rel_gap": float(gap), "disp": False})
    dual_b = getattr(res, "mip_dual_bound", None)
    upper = None if dual_b is None or not np.isfinite(dual_b) else -float(dual_b)
    return {"backend": "highs (scipy milp)", "upper": upper, "obj": None if res.x is None else -float(res.fun),
            "x": res.x, "timed_out": res.status == 1, "status_text": res.message,
            "nodes": getattr(res, "mip_node_count", None), "t_start": t_start}


def _gurobi(model, A, rlo, rhi, obj, time_limit, gap, threads):
    import gurobipy as gp
    from gurobipy import GRB
    t_start = time.perf_counter()
    env = gp.Env(empty=True)
    env.setParam("OutputFlag", 0)
    env.start()
    try:
        m = gp.Model(env=env)
        vt = np.where(np.array(model.integer), GRB.BINARY, GRB.CONTINUOUS)
        x = m.addMVar(model.n, lb=np.array(model.lb), ub=np.array(model.ub), vtype=vt)
        fin_hi, fin_lo = np.isfinite(rhi), np.isfinite(rlo)
        eq = fin_hi & fin_lo & (rhi == rlo)
        if (fin_hi & ~eq).any():
            m.addMConstr(A[fin_hi & ~eq], x, GRB.LESS_EQUAL, rhi[fin_hi & ~eq])
        if (fin_lo & ~eq).any():
            m.addMConstr(A[fin_lo & ~eq], x, GRB.GREATER_EQUAL, rlo[fin_lo & ~eq])
        if eq.any():
            m.addMConstr(A[eq], x, GRB.EQUAL, rhi[eq])
        m.setObjective(gp.quicksum([]) + np.asarray(obj) @ x, GRB.MAXIMIZE)
        m.Params.TimeLimit = float(time_limit)
        m.Params.MIPGap = float(gap)
        m.Params.MIPGapAbs = 1e-12
        m.Params.IntFeasTol = 1e-9
        m.Params.FeasibilityTol = 1e-9
        m.Params.Threads = int(max(1, threads))
        try:
            m.optimize()
        except gp.GurobiError as e:
            if getattr(e, "errno", None) == 10010:
                return {"backend": "gurobi", "license_limit": True, "status_text": str(e), "t_start": t_start}
            raise
        has_sol = m.SolCount > 0
        upper = float(m.ObjBound) if math.isfinite(m.ObjBound) else None
        return {"backend": "gurobi", "upper": upper, "obj": float(m.ObjVal) if has_sol else None,
                "x": np.array(x.X) if has_sol else None, "timed_out": m.Status == GRB.TIME_LIMIT,
                "status_text": {2: "optimal", 9: "time limit"}.get(m.Status, f"status {m.Status}"),
                "nodes": int(m.NodeCount), "t_start": t_start}
    finally:
        env.dispose()
