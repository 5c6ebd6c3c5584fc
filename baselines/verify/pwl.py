"""Piecewise-linear networks in one form, shared by the exact verifiers ``mip`` and ``bab``.

Every supported activation is written as ``h = P z + Q relu(A z)``: one binary *unit*
per row of ``A`` (ReLU, leaky ReLU and Abs have one unit per neuron, CReLU one per input,
MaxMin one per pair, deciding which of the two is larger).  In a region where unit k is
on (``A_k z >= 0``) or off, the activation is linear with Jacobian
``P + Q diag(a) A``, so the network's Jacobian is a product fixed by the pattern ``a``.
Each coordinate of z belongs to exactly one unit (``unit_of``), which keeps interval
arithmetic on the backward pass tight: a coordinate's gradient is affine in one binary.

Domains, homogenised.  Inputs are ``(y, t)``: the last coordinate ``t`` multiplies every
bias (``z_l = W_l h + b_l t``).  A box query fixes ``t = 1`` and ``y`` in the box.  The
global domain (all of R^n) is the box ``y in [-1, 1]^n``, ``t in [0, 1]``: a ReLU-type
network is positively homogeneous in ``(y, t)``, so the point ``(y, t)`` with ``t > 0``
has the activation pattern of ``x = y / t``, and every x of R^n is reached by
``t = 1 / max(1, ||x||_inf)``.  The reachable patterns of R^n are thus those of a bounded
box, on which interval bounds are finite; no box is guessed.  (Without biases ``t`` plays
no role and is fixed at 1.)

Floating point: interval bounds are widened by a relative 1e-12 of their magnitude at
every layer (float64 rounding is ~1e-16 per operation), so the stability of a unit is
never decided by a rounding error; reported bounds add a relative 1e-10.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bench.activations import ACTIVATIONS, ActivationSpec
from bench.api import Query, Unsupported
from bench.network import Activation, Affine, Branch, Net
from bench.norms import jacobian_norm

WIDEN = 1e-12
REPORT_INFLATE = 1e-10


def _act_matrices(act: Activation) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(P, Q, A) with h = P z + Q relu(A z), float64, from the activation's description."""
    try:
        form = act.spec.pwl(act.in_dim)
    except Unsupported as e:
        raise Unsupported(f"layer {act.index} ({act.name}): {e}") from None
    if form is None:
        names = [n for n, s in ACTIVATIONS.items() if s.pwl is not ActivationSpec.pwl]
        raise Unsupported(f"activation {act.name!r} is not piecewise linear with one kink per unit "
                          f"(supported: {', '.join(names)})")
    return form


@dataclass
class Hidden:
    W: np.ndarray        # (d_z, d_h_prev)
    b: np.ndarray        # (d_z,)
    name: str
    P: np.ndarray
    Q: np.ndarray
    A: np.ndarray
    unit_of: np.ndarray  # (d_z,) unit index of each z coordinate
    spec: ActivationSpec | None = None   # the activation's description (its interval image)

    @property
    def units(self) -> int:
        return self.A.shape[0]


@dataclass
class PWLNet:
    hidden: list[Hidden]
    W_out: np.ndarray
    b_out: np.ndarray
    in_dim: int

    @property
    def has_bias(self) -> bool:
        return any(np.any(h.b != 0) for h in self.hidden) or bool(np.any(self.b_out != 0))

    @property
    def n_units(self) -> int:
        return sum(h.units for h in self.hidden)

    @property
    def out_dim(self) -> int:
        return self.W_out.shape[0]


#: the largest (hidden units x inputs) that bab and mip take on.  Measured here (cifar
#: suite): a conv net on CIFAR-10 (3,072 inputs; convs of 16 and 32 channels at stride 2,
#: then 100 units: 6,244 units, 19 million) took 27 s for bab's first bound over the
#: unrolled network and then asked for 412 GB; the MLP 3072-256-256 (1.6 million) ran
#: out of an 8 GB cap in bab and gave mip no bound in 20 s.
MAX_UNITS_X_INPUTS = 1_000_000


def refusal(net: Net) -> str | None:
    """Why the network has no PWL form (what ``bab`` and ``mip`` say in ``supports``), or
    None; a network above :data:`MAX_UNITS_X_INPUTS` is refused before any unrolling."""
    units = sum(layer.in_dim for layer in net.activations)
    if units * net.in_dim > MAX_UNITS_X_INPUTS:
        return (f"bab and mip take networks up to {MAX_UNITS_X_INPUTS:,} hidden units x inputs (beyond that one "
                f"bound over the unrolled network takes tens of seconds and branching exhausts memory); this one "
                f"has {units:,} units x {net.in_dim:,} inputs = {units * net.in_dim:,}")
    try:
        pwl(net)
    except Unsupported as e:
        return str(e)
    return None


class _Carried:
    """The interval image of a hidden layer that carries a residual block's input past
    an activation: the activation's own on its first ``width`` coordinates, the identity
    on the rest."""

    def __init__(self, spec: ActivationSpec, width: int):
        self.spec, self.width = spec, width

    def interval(self, lo, hi):
        k = self.width
        fl, fu = self.spec.interval(lo[:, :k], hi[:, :k])
        return torch.cat([fl, lo[:, k:]], 1), torch.cat([fu, hi[:, k:]], 1)


def _affine_chain(layers: list, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The composed (W, b) of a chain of affine layers on n inputs (the identity if empty)."""
    W, b = np.eye(n), np.zeros(n)
    for layer in layers:
        M, bb = layer.matrix(), layer.bias()
        W, b = M @ W, M @ b + (0.0 if bb is None else bb)
    return W, b


def _residual(layer: Branch, W: np.ndarray, b: np.ndarray, hidden: list) -> tuple[np.ndarray, np.ndarray]:
    """A residual add w_f f(x) + w_s S x (S: affine layers or the identity; f: affine layers
    and activations) in the PWL form, exactly: x = W h + b (the pending affine map) is
    carried past each of f's activations as coordinates that belong to no unit (P = I,
    Q = 0, A = 0 on them: on and off give the same Jacobian), and the add is the next
    pending map.  Returns that map; appends f's hidden layers to ``hidden``."""
    where = f"layer {layer.index} ({layer.name})"
    if layer.kind != "sum" or len(layer.branches) != 2:
        raise Unsupported(f"{where}: bab and mip read a residual add of two branches, not a {layer.kind} of "
                          f"{len(layer.branches)}")
    plain = [all(isinstance(l, Affine) for l in br) for br in layer.branches]
    if any(not isinstance(l, (Affine, Activation)) for br in layer.branches for l in br):
        raise Unsupported(f"{where}: bab and mip read a residual add whose branches are chains of affine layers and "
                          f"activations (no branch inside a branch)")
    n = W.shape[0]
    if all(plain):   # both affine: the sum is one affine map
        (W0, b0), (W1, b1) = (_affine_chain(br, n) for br in layer.branches)
        w0, w1 = layer.weights
        M, c = w0 * W0 + w1 * W1, w0 * b0 + w1 * b1
        return M @ W, M @ b + c
    if not any(plain):
        raise Unsupported(f"{where}: bab and mip read a residual add with activations in one branch only")
    k = plain.index(False)
    f, wf, ws = layer.branches[k], layer.weights[k], layer.weights[1 - k]
    S, sb = _affine_chain(layer.branches[1 - k], n)
    Wf, bf = W, b       # f's pending map, on the state
    Wc, bc = W, b       # the carried input x, on the state
    for l in f:
        if isinstance(l, Affine):
            M, bb = l.matrix(), l.bias()
            Wf, bf = M @ Wf, M @ bf + (0.0 if bb is None else bb)
            continue
        P, Q, A = _act_matrices(l)
        dz, dh, k_units = P.shape[1], P.shape[0], A.shape[0]
        P2 = np.block([[P, np.zeros((dh, n))], [np.zeros((n, dz)), np.eye(n)]])
        Q2 = np.vstack([Q, np.zeros((n, k_units))])
        A2 = np.hstack([A, np.zeros((k_units, n))])
        hidden.append(Hidden(np.vstack([Wf, Wc]), np.concatenate([bf, bc]), l.name, P2, Q2, A2,
                             np.argmax(np.abs(A2), axis=0), _Carried(l.spec, dz)))
        Wf, bf = np.hstack([np.eye(dh), np.zeros((dh, n))]), np.zeros(dh)
        Wc, bc = np.hstack([np.zeros((n, dh)), np.eye(n)]), np.zeros(n)
    return wf * Wf + ws * (S @ Wc), wf * bf + ws * (S @ bc + sb)


def pwl(net: Net) -> PWLNet:
    """The network in PWL form; consecutive affine maps (Linear, Conv2d, BatchNorm,
    average pooling) are composed; a residual add whose one branch is affine is lifted
    exactly (:func:`_residual`)."""
    W = np.eye(net.in_dim)
    b = np.zeros(net.in_dim)
    hidden = []
    for layer in net.layers:
        if isinstance(layer, Affine):
            M = layer.matrix()
            bb = layer.bias()
            W, b = M @ W, M @ b + (0.0 if bb is None else bb)
        elif isinstance(layer, Branch):
            W, b = _residual(layer, W, b, hidden)
        elif not isinstance(layer, Activation):
            raise Unsupported(f"layer {layer.index} ({getattr(layer, 'name', type(layer).__name__)}) has no "
                              f"piecewise-linear form")
        else:
            P, Q, A = _act_matrices(layer)
            unit_of = np.argmax(np.abs(A), axis=0)
            hidden.append(Hidden(W, b, layer.name, P, Q, A, unit_of, layer.spec))
            W, b = np.eye(P.shape[0]), np.zeros(P.shape[0])
    return PWLNet(hidden, W, b, net.in_dim)


def targets(pw: PWLNet, query: Query) -> np.ndarray:
    """The rows c whose gradients c^T J are bounded: e_i - e_j for a class pair, the
    identity for the full output (t x m)."""
    m = pw.out_dim
    if query.is_pair:
        i, j = query.target
        c = np.zeros((1, m))
        c[0, i], c[0, j] = 1.0, -1.0
        return c
    return np.eye(m)


def is_global(pw: PWLNet, query: Query) -> bool:
    """The global domain, or a box that amounts to it: a network without biases is
    positively homogeneous, every one of its regions is a cone at the origin, so a box
    with the origin in its interior meets every region (and its local constant is the
    global one).  Such a box is solved as the global domain: around the origin every unit
    is at its kink and no sub-box would ever separate the regions."""
    if query.domain == "global":
        return True
    if pw.has_bias:
        return False
    lo, hi = query.box()
    return bool(np.all((lo < 0) & (hi > 0)))


def domain_boxes(pw: PWLNet, query: Query) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (lo, hi), each (K, n + 1), of the homogenised input (y, t) that together hold
    a point of every activation region of the query's domain (see the module doc).

    A box query: one box, t = 1.  The global domain: the faces of the cube
    max(||y||_inf, t) = 1 with t >= 0, i.e. {t = 1, y in [-1, 1]^n} (the points with
    ||x||_inf <= 1) and {y_i = +-1, t in [0, 1]} (x = y / t with ||x||_inf >= 1).  Faces,
    not the solid cube: every region's hyperplane passes through the cube's centre
    (y, t) = 0, where no box could ever separate them.  Without biases the pattern of x
    is that of every positive multiple, so the 2n faces y_i = +-1 (t = 1) suffice."""
    n = pw.in_dim
    if not is_global(pw, query):
        lo, hi = query.box()
        return np.r_[lo, 1.0][None], np.r_[hi, 1.0][None]
    lo, hi = [], []
    t_lo = 0.0 if pw.has_bias else 1.0
    for i in range(n):
        for s in (-1.0, 1.0):
            l, h = np.r_[-np.ones(n), t_lo], np.r_[np.ones(n), 1.0]
            l[i] = h[i] = s
            lo.append(l)
            hi.append(h)
    if pw.has_bias:
        lo.append(np.r_[-np.ones(n), 1.0])
        hi.append(np.r_[np.ones(n), 1.0])
    return np.array(lo), np.array(hi)


def inputs(pw: PWLNet, query: Query, Y: torch.Tensor) -> torch.Tensor:
    """The inputs x (B, n) that homogenised points (y, t) (B, n + 1), t > 0, stand for:
    x = y / t.  For a box solved as global (:func:`is_global`) x is moved along its ray
    into the box, which keeps its activation pattern (no biases: patterns are cones)."""
    X = Y[:, :-1] / Y[:, -1:]
    if query.domain != "global" and is_global(pw, query):
        lo, hi = (torch.as_tensor(a, device=Y.device) for a in query.box())
        s = 0.5 * (torch.minimum(-lo, hi) / (X.abs() + 1e-300)).amin(dim=1, keepdim=True)
        X = X * s
    return X


def witness(net: Net, pw: PWLNet, query: Query, Y: torch.Tensor) -> tuple[float, dict | None]:
    """A witnessed lower bound (:mod:`bench.witness`) from homogenised points Y (B, n + 1)
    with t > 0 (each strictly inside a linear region, so that the Jacobian there is the
    network's): the best quotient of pairs around them on the network itself, in
    float64, and the pair as stored (None when no point gives a positive quotient)."""
    import copy

    from bench import witness as wit
    Y = Y[Y[:, -1] > 0]
    if Y.shape[0] == 0:
        return 0.0, None
    module = copy.deepcopy(net.module).double().cpu().eval()
    X = inputs(pw, query, Y.detach().cpu().to(torch.float64)).reshape(-1, *net.input_shape)
    lo = hi = None
    if query.domain != "global":
        lo, hi = (torch.as_tensor(a).reshape(net.input_shape) for a in query.box())
    q, X1, X2 = wit.pairs(module, X, query, lo, hi, steps=(1e-2, 1e-3, 1e-4, 1e-5, 1e-6),
                          nudges=(0.0, 1e-2, 1e-4, 1e-6))
    k = int(torch.argmax(q))
    if not q[k] > 0:
        return 0.0, None
    return float(q[k]), wit.as_stats(X1[k], X2[k])


def domain_box(pw: PWLNet, query: Query) -> tuple[np.ndarray, np.ndarray]:
    """One box (lo, hi) of (y, t) holding the query's domain: the solid cube
    [-1, 1]^n x [0, 1] for the global domain (a MIP needs no faces)."""
    n = pw.in_dim
    if is_global(pw, query):
        return np.r_[-np.ones(n), 0.0 if pw.has_bias else 1.0], np.r_[np.ones(n), 1.0]
    lo, hi = domain_boxes(pw, query)
    return lo[0], hi[0]


# --------------------------------------------------------------------------- torch side
class Torch:
    """The PWL network's matrices as float64 tensors on one device, for batched bounds."""

    def __init__(self, pw: PWLNet, device: str = "cpu"):
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float64, device=device)
        self.device = device
        self.layers = []
        for h in pw.hidden:
            Wt = t(np.hstack([h.W, h.b[:, None]]))      # acts on (h_prev, t)
            self.layers.append(dict(W=Wt, Wabs=Wt.abs(), P=t(h.P), Q=t(h.Q), A=t(h.A), Aabs=t(np.abs(h.A)),
                                    Mon=t(h.P + h.Q @ h.A), Moff=t(h.P), Monabs=t(np.abs(h.P + h.Q @ h.A)),
                                    Moffabs=t(np.abs(h.P)), unit_of=torch.as_tensor(h.unit_of, device=device),
                                    I=t(np.eye(h.W.shape[0])), A_is_I=bool(np.array_equal(h.A, np.eye(h.W.shape[0]))),
                                    name=h.name, spec=h.spec))
        self.W_out = t(pw.W_out)
        self.in_dim = pw.in_dim

    # ---- forward
    def forward(self, X: torch.Tensor):
        """Pre-activations d of every unit at points X (B, n+1): list of (B, k_l)."""
        tcol = X[:, -1:]
        h = X[:, :-1]
        ds = []
        for L in self.layers:
            z = torch.cat([h, tcol], 1) @ L["W"].T
            d = z @ L["A"].T
            ds.append(d)
            h = z @ L["P"].T + torch.relu(d) @ L["Q"].T
        return ds

    def crown(self, lo: torch.Tensor, hi: torch.Tensor):
        """Bounds (dl, du) on the unit pre-activations d over boxes (B, n+1), one pair per
        layer, widened outward: interval arithmetic tightened by linear relaxation (CROWN, Zhang et al. 2018): each z_l is
        bounded by back-substituting a linear function through the earlier layers, each
        unit relu(d) relaxed between s_l d and s_u d + m from its own bounds; the result
        is the intersection with the interval bounds."""
        c, r = (lo + hi) / 2, (hi - lo) / 2
        B = lo.shape[0]
        out, relax = [], []
        hl, hu = lo[:, :-1], hi[:, :-1]
        tl, tu = lo[:, -1:], hi[:, -1:]
        for li, L in enumerate(self.layers):
            # interval bounds of z from the previous layer's (tightened) interval image
            xl, xu = torch.cat([hl, tl], 1), torch.cat([hu, tu], 1)
            xc, xr = (xl + xu) / 2, (xu - xl) / 2
            zc, zr = xc @ L["W"].T, xr @ L["Wabs"].T
            zl, zu = zc - zr, zc + zr
            if li > 0:
                dz = L["W"].shape[0]
                rows = L["I"] if L["A_is_I"] else torch.cat([L["I"], L["A"]], 0)
                lin = []
                for sign in (1.0, -1.0):
                    lam = rows.expand(B, -1, -1) @ L["W"]                  # over (h_prev, t)
                    lam_h, lam_t = lam[:, :, :-1], lam[:, :, -1]
                    const = torch.zeros(B, rows.shape[0], dtype=lo.dtype, device=lo.device)
                    for J, (sl, su, mu) in zip(reversed(self.layers[:li]), reversed(relax)):
                        G = lam_h @ J["Q"]                                    # (B, rows, units)
                        use_up = (G >= 0) if sign > 0 else (G < 0)
                        slope = torch.where(use_up, su.unsqueeze(1), sl.unsqueeze(1))
                        const = const + (G * torch.where(use_up, mu.unsqueeze(1), 0.0)).sum(2)
                        lam_z = lam_h @ J["P"] + (G * slope) @ J["A"]
                        lam_h, lam_t = lam_z @ J["W"][:, :-1], lam_t + lam_z @ J["W"][:, -1]
                    lam_x = torch.cat([lam_h, lam_t.unsqueeze(2)], 2)
                    val = (lam_x @ c.unsqueeze(2)).squeeze(2) + sign * (lam_x.abs() @ r.unsqueeze(2)).squeeze(2) + const
                    lin.append(val)
                up, low = lin
                zl, zu = torch.maximum(zl, low[:, :dz]), torch.minimum(zu, up[:, :dz])
            w = WIDEN * (zl.abs() + zu.abs()) + 1e-300
            zl, zu = zl - w, zu + w
            dc, dr = (zl + zu) / 2 @ L["A"].T, (zu - zl) / 2 @ L["Aabs"].T
            dl, du = dc - dr, dc + dr
            if li > 0 and not L["A_is_I"]:
                dl, du = torch.maximum(dl, low[:, dz:] - WIDEN * low[:, dz:].abs()), torch.minimum(du, up[:, dz:] + WIDEN * up[:, dz:].abs())
            out.append((dl, du))
            # relaxation of this layer's units
            on, off = dl >= 0, du <= 0
            den = torch.where(on | off, 1.0, du - dl)
            su = torch.where(on, 1.0, torch.where(off, 0.0, du / den))
            mu = torch.where(on | off, 0.0, -du * dl / den)
            sl = torch.where(on, 1.0, torch.where(off, 0.0, (du >= -dl).to(lo.dtype)))
            relax.append((sl, su, mu))
            hl, hu = L["spec"].interval(zl, zu)
        return out

    # ---- Jacobians
    def jacobians(self, C: torch.Tensor, pats: list[torch.Tensor]) -> torch.Tensor:
        """C J(a) for patterns a (list of (B, k_l) in {0, 1}): (B, t, n)."""
        V = (C @ self.W_out).unsqueeze(0).expand(pats[0].shape[0] if pats else 1, -1, -1)
        for L, a in zip(reversed(self.layers), reversed(pats)):
            Vz = V @ L["P"] + ((V @ L["Q"]) * a.unsqueeze(1)) @ L["A"]
            V = Vz @ L["W"][:, :-1]
        return V

    def jacobian_interval(self, C: torch.Tensor, status: list[torch.Tensor], c_rad: torch.Tensor | None = None,
                          keep: bool = False):
        """Interval (lo, hi) of C J(a) over every pattern a consistent with ``status``
        (per layer (B, k_l): +1 on, -1 off, 0 either).  ``c_rad``: C is an interval
        (center C, radius c_rad).  With ``keep`` also the intervals of Q^T v at each
        layer (the products the MIP linearises), last layer first."""
        B = status[0].shape[0] if status else 1
        Vc = (C @ self.W_out).unsqueeze(0).expand(B, -1, -1)
        Vr = torch.zeros_like(Vc) if c_rad is None else (c_rad @ self.W_out.abs()).unsqueeze(0).expand(B, -1, -1)
        kept = []
        for L, s in zip(reversed(self.layers), reversed(status)):
            if keep:
                wc, wr = Vc @ L["Q"], Vr @ L["Q"].abs()
                kept.append((wc - wr, wc + wr))
            onc, onr = Vc @ L["Mon"], Vr @ L["Monabs"]
            offc, offr = Vc @ L["Moff"], Vr @ L["Moffabs"]
            sz = s[:, L["unit_of"]].unsqueeze(1)      # (B, 1, d_z)
            lo_on, hi_on, lo_off, hi_off = onc - onr, onc + onr, offc - offr, offc + offr
            lo = torch.where(sz > 0, lo_on, torch.where(sz < 0, lo_off, torch.minimum(lo_on, lo_off)))
            hi = torch.where(sz > 0, hi_on, torch.where(sz < 0, hi_off, torch.maximum(hi_on, hi_off)))
            Vc, Vr = (lo + hi) / 2, (hi - lo) / 2
            W = L["W"][:, :-1]
            Vc, Vr = Vc @ W, Vr @ W.abs()
            Vr = Vr + WIDEN * (Vc.abs() + Vr)
        return (Vc - Vr, Vc + Vr, kept) if keep else (Vc - Vr, Vc + Vr)


#: operator norm of each C J in the batch (B, t, n): the dual norm of the single row for a
#: class pair, the p -> p matrix norm for the full output (the harness's one definition)
norms = jacobian_norm


def norm_upper(lo: torch.Tensor, hi: torch.Tensor, p: float, pair: bool) -> torch.Tensor:
    """An upper bound on the norm of every matrix in the interval [lo, hi]: the norm of the
    entrywise majorant (monotone in |entries| for these norms)."""
    return norms(torch.maximum(lo.abs(), hi.abs()), p, pair) * (1 + REPORT_INFLATE)


def status_from(bounds) -> list[torch.Tensor]:
    return [torch.where(dl > 0, 1, torch.where(du < 0, -1, 0)).to(torch.int8) for dl, du in bounds]


# --------------------------------------------------------------------------- regions
#: an LP margin (in box-normalised units) at least this certifies an interior point ...
REGION_EPS = 1e-6
#: ... and at most this (or infeasibility) shows there is none; in between the solver's
#: tolerances (1e-7) could decide either way, and the caller must not rely on the answer
EMPTY_EPS = 1e-9


def region_point(pw: PWLNet, pattern: list[np.ndarray], lo: np.ndarray, hi: np.ndarray,
                 free: list[np.ndarray] | None = None) -> tuple[str, np.ndarray | None]:
    """Is there a point (y, t) of the box, with t > 0, strictly inside the region of
    ``pattern`` (every unit of ``free``, or all units, away from its kink)?

    An LP (HiGHS) in box-normalised coordinates u in [0, 1] maximises the smallest margin
    of the (L1-normalised) region constraints.  Returns ``("in", x)`` when that margin is
    >= REGION_EPS and the point's margins, recomputed in float64, are positive: the
    Jacobian of ``pattern`` is then the network's Jacobian around x; ``("empty", None)``
    when the LP is infeasible or its margin <= EMPTY_EPS; ``("undecided", None)`` in
    between.  A unit whose pre-activation is identically zero on the region (a zero row,
    e.g. an Abs fed by a ReLU that is off) sets no constraint: its state cannot change the
    Jacobian there."""
    from scipy.optimize import linprog
    n1 = lo.size
    M = np.eye(n1)[:-1]          # h as an affine function of (y, t): rows (d_h, n+1)
    rows = []
    for li, (h, a) in enumerate(zip(pw.hidden, pattern)):
        Z = h.W @ M
        Z[:, -1] += h.b
        D = h.A @ Z
        sel = np.ones(h.units, bool) if free is None else np.asarray(free[li], bool).copy()
        size = np.abs(D).sum(1)
        sel &= size > 1e-14 * (1.0 + size.max(initial=0.0))
        s = np.where(a > 0, 1.0, -1.0)
        if sel.any():
            rows.append(s[sel, None] * D[sel])          # s D x > 0 inside the region
        M = (h.P + h.Q @ (a[:, None] * h.A)) @ Z
    w = hi - lo
    var = w > 0
    if lo[-1] < hi[-1]:          # t > 0 as one more margin
        e = np.zeros(n1)
        e[-1] = 1.0
        rows.append(e[None])
    if not rows:
        return "in", (lo + hi) / 2
    G = np.vstack(rows)                                  # want G x > 0
    Gu, g0 = G[:, var] * w[var], G @ lo                  # G x = Gu u + g0
    norm = np.abs(Gu).sum(1)
    const = norm <= 1e-14 * (1.0 + np.abs(g0))
    if np.any(const & (g0 <= 0)):
        return "empty", None
    Gu, g0, norm = Gu[~const], g0[~const], norm[~const]
    if Gu.shape[0] == 0:
        return "in", (lo + hi) / 2
    Gu, g0 = Gu / norm[:, None], g0 / norm
    # maximise eps subject to -(Gu u + g0) + eps <= 0, u in [0, 1], eps <= 1
    k = int(var.sum())
    res = linprog(np.r_[np.zeros(k), -1.0], A_ub=np.hstack([-Gu, np.ones((Gu.shape[0], 1))]), b_ub=g0,
                  bounds=[(0.0, 1.0)] * k + [(None, 1.0)], method="highs")
    if res.status == 2:
        return "empty", None
    if res.status != 0:
        return "undecided", None
    eps = -res.fun
    if eps <= EMPTY_EPS:
        return "empty", None
    if eps < REGION_EPS:
        return "undecided", None
    u = np.clip(res.x[:-1], 0.0, 1.0)
    if np.min(Gu @ u + g0) < eps / 2:
        return "undecided", None
    x = lo.copy()
    x[var] = lo[var] + w[var] * u
    return "in", x


def strict_pattern(T: Torch, X: torch.Tensor, rel: float = 1e-9):
    """Patterns at points X (B, n+1) and whether each is strict (every unit's
    pre-activation away from its kink by more than ``rel`` of its scale)."""
    ds = T.forward(X)
    pats, ok = [], torch.ones(X.shape[0], dtype=torch.bool, device=X.device)
    scale = X.abs().amax(1) + 1.0
    for d in ds:
        pats.append((d > 0).to(torch.float64))
        sc = scale * (1.0 + d.abs().amax(1))
        ok &= (d.abs().amin(1) > rel * sc) if d.shape[1] else ok
    return pats, ok
