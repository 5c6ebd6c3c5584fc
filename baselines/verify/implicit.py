"""NATIVE's solve without the dense layer matrices: LipSDP's matrix applied through the
network's own layers (conv2d and its adjoint conv_transpose2d, linear maps, BatchNorm
scales), its linear systems solved by conjugate gradients, in torch on CPU or CUDA.

The objective is the dense path's (``sdp.elimination.rho_of``), computed another way.  For
normalised multipliers L_k = 2 T_k / rho, with m_k = (a_k + b_k) / 2 and c_k = a_k b_k,

  P(L) = (-M(rho, T) + C) / rho,   C = diag(0, ..., W_L^T W_L) = R R^T,   R = (0, ..., W_L^T),

does not depend on rho: block-tridiagonal with

  P_00 = I + c_1 W_0^T L_1 W_0,   P_kk = L_k + c_{k+1} W_k^T L_{k+1} W_k (0 < k < K),   P_KK = L_K,
  P_{k-1,k} = -m_k W_{k-1}^T L_k.

M(rho, T) <= 0 holds iff rho P(L) >= R R^T, so where P(L) is positive definite the least
rho is lambda_max(R^T P(L)^{-1} R), an eigenvalue problem of the output's size: r right
hand sides (10 outputs, or 1 for a class pair) solved by conjugate gradients,
preconditioned by symmetric Gauss-Seidel with Eisenstat's trick, so that each step is
one forward and one adjoint pass through every layer for the r columns at once.  Its
gradient needs no differentiation through the solver: with X = P(L)^{-1} R held fixed,
S = X^T R + R^T X - X^T P(L) X equals R^T P^{-1} R (less the residual's e^T P e, second
order) and its derivative in L is -X^T (dP) X, which is the derivative of R^T P^{-1} R;
L enters S only as diagonal scalings, so autograd never passes through a layer.

Where P(L) is not positive definite (multipliers outside the feasible set) conjugate
gradients meets a direction p with p^T P p <= 0 once its Krylov space holds a direction of
negative curvature (its Lanczos tridiagonal, whose pivots are those curvatures, then has a
negative eigenvalue), which a solve that reaches the right-hand sides' components along
those directions does; that, or no convergence within ``MAX_STEPS``, is reported as
infeasible and the line search steps back, as the dense path does where a Cholesky factor
fails.  A right-hand side blind to a negative direction could pass unseen (on 120 random
small chains the answer always agreed with the dense elimination's); nothing here
certifies: the multipliers are certified on the dense blocks (``sdp.certificate.certify``) like
any solver's, and the dense blocks are still built for that certificate, so the per-layer
size limit stands: the gain is time (an evaluation's products through the layers instead
of a Cholesky factor per layer), not memory.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from .sdp.chain import Chain
from .sdp.linalg import eigs
from .sdp.optimise import Deadline

#: conjugate-gradient steps per solve before it is called infeasible
MAX_STEPS = 2000
#: relative residual at which a solve stops
TOL = 1e-10


class _Dense:
    """A matrix (numpy factors: ReLU forms, a pair row; layers without a faster map)."""

    def __init__(self, M, device):
        self.M = torch.as_tensor(np.asarray(M), dtype=torch.float64, device=device)

    def fwd(self, X):
        return X @ self.M.T

    def adj(self, U):
        return U @ self.M


class _Scale(_Dense):
    """A diagonal map (BatchNorm in eval mode): its scale per coordinate."""

    def __init__(self, s, device):
        self.s = torch.as_tensor(np.asarray(s), dtype=torch.float64, device=device)

    def fwd(self, X):
        return X * self.s

    adj = fwd


class _Conv:
    """A Conv2d without its bias; the adjoint is conv_transpose2d with the output padding
    that gives back the input's size."""

    def __init__(self, module, in_shape, out_shape, device):
        self.w = module.weight.detach().to(device=device, dtype=torch.float64)
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.kw = dict(stride=module.stride, padding=module.padding, dilation=module.dilation, groups=module.groups)
        self.out_pad = tuple(int(n_in - ((n_out - 1) * s - 2 * p + d * (k - 1) + 1)) for n_in, n_out, s, p, d, k in
                             zip(self.in_shape[1:], self.out_shape[1:], module.stride, module.padding,
                                 module.dilation, self.w.shape[2:]))

    def fwd(self, X):
        from torch.nn.functional import conv2d
        return conv2d(X.reshape(-1, *self.in_shape), self.w, None, **self.kw).reshape(X.shape[0], -1)

    def adj(self, U):
        from torch.nn.functional import conv_transpose2d
        kw = self.kw
        return conv_transpose2d(U.reshape(-1, *self.out_shape), self.w, None, kw["stride"], kw["padding"],
                                self.out_pad, kw["groups"], kw["dilation"]).reshape(U.shape[0], -1)


def _is_conv(f) -> bool:
    from torch import nn

    from bench.network import Affine
    return type(f) is Affine and isinstance(f.module, nn.Conv2d) and not isinstance(f.module.padding, str)


def has_conv(ch: Chain) -> bool:
    """Whether some W_k of the chain composes a conv that :func:`layer_map` applies as a
    conv (not as its dense matrix)."""
    return any(_is_conv(f) for fs in ch.factors or [] for f in fs)


def layer_map(f, device):
    """One factor of a chain matrix as forward and adjoint maps on rows (a batch of r
    vectors, r x n): a Linear or a zero-padded Conv2d through torch's own operators, a
    BatchNorm as its scales, anything else (ReLU forms' matrices, pooling, selections)
    as its dense matrix."""
    from torch import nn

    from bench.network import Affine, Diagonal
    if isinstance(f, np.ndarray):
        return _Dense(f, device)
    if isinstance(f, Diagonal):
        return _Scale(f.scale(), device)
    m = f.module
    if type(f) is Affine and isinstance(m, nn.Linear):
        return _Dense(m.weight.detach().double().cpu().numpy(), device)
    if _is_conv(f):
        return _Conv(m, f.in_shape, f.out_shape, device)
    return _Dense(f.matrix(), device)


class Operator:
    """P(L) of a chain read from a network (``chain.factors``), each W_k divided by
    ``scales[k]`` as in lipsdp's rescaled problem, on ``device``.  Past ``deadline`` (a
    ``time.perf_counter()`` value) a solve stops the minimisation (``sdp.optimise.minimise``
    keeps the best point so far)."""

    def __init__(self, ch: Chain, scales, device="cpu", deadline: float = math.inf):
        if ch.factors is None:
            raise ValueError("the chain holds no layers to apply (read it from a network)")
        self.maps = [[layer_map(f, device) for f in fs] for fs in ch.factors]
        self.scales = [float(s) for s in scales]
        self.n = [ch.Ws[0].shape[1]] + ch.hidden
        self.offs = np.concatenate([[0], np.cumsum(self.n)]).astype(int)
        self.K = len(ch.hidden)
        self.m = [(a + b) / 2 for a, b in zip(ch.a, ch.b)]
        self.c = [a * b for a, b in zip(ch.a, ch.b)]
        r = ch.Ws[-1].shape[0]
        eye = torch.eye(r, dtype=torch.float64, device=device)
        self.B = torch.zeros(r, self.offs[-1], dtype=torch.float64, device=device)
        self.B[:, self.offs[-2]:] = self.adj(self.K, eye)  # R^T, as rows
        self.X = None  # the last solution: the next solve starts there
        self.steps, self.deadline = 0, deadline

    def fwd(self, k, X):
        """W_k applied to the rows of X."""
        for f in self.maps[k]:
            X = f.fwd(X)
        return X / self.scales[k]

    def adj(self, k, U):
        """W_k^T applied to the rows of U."""
        for f in reversed(self.maps[k]):
            U = f.adj(U)
        return U / self.scales[k]

    def _blocks(self, X):
        return [X[:, self.offs[j]:self.offs[j + 1]] for j in range(self.K + 1)]

    def apply(self, Ls, X):
        """P(L) applied to the rows of X."""
        xs = self._blocks(X)
        Z = [self.fwd(k, xs[k]) for k in range(self.K)]  # W_k x_k
        out = []
        for j in range(self.K + 1):
            y = xs[0] if j == 0 else Ls[j - 1] * (xs[j] - self.m[j - 1] * Z[j - 1])
            if j < self.K:
                u = -self.m[j] * xs[j + 1]
                if self.c[j]:
                    u = u + self.c[j] * Z[j]
                y = y + self.adj(j, Ls[j] * u)
            out.append(y)
        return torch.cat(out, 1)

    def quadratic(self, Ls, X):
        """X P(L) X^T (r x r) for rows X held fixed, differentiable in ``Ls``."""
        xs = self._blocks(X)
        Q = xs[0] @ xs[0].T
        for j in range(1, self.K + 1):
            L, x, z = Ls[j - 1], xs[j], self.fwd(j - 1, xs[j - 1])
            xL, zL = x * L, z * L
            Q = Q + xL @ x.T - self.m[j - 1] * (zL @ x.T + xL @ z.T)
            if self.c[j - 1]:
                Q = Q + self.c[j - 1] * (zL @ z.T)
        return Q

    # P(L) = (D + E) + (D + E^T) - D + F: D = diag(I, L_1, ..., L_K), E the block lower part
    # (-m_j L_j W_{j-1}), F the a b terms (c_{j+1} W_j^T L_{j+1} W_j, none for ReLU)

    def _lower(self, Ls, ws):
        """(D + E)^{-1} applied to rows, block by block (a forward substitution through the layers)."""
        ys = [ws[0]]
        for j in range(1, self.K + 1):
            ys.append(ws[j] / Ls[j - 1] + self.m[j - 1] * self.fwd(j - 1, ys[j - 1]))
        return ys

    def _upper(self, Ls, ws):
        """(D + E^T)^{-1} applied to rows, block by block (a backward substitution)."""
        zs = [None] * (self.K + 1)
        zs[self.K] = ws[self.K] / Ls[self.K - 1]
        for j in range(self.K - 1, -1, -1):
            z = ws[j] + self.m[j] * self.adj(j, Ls[j] * zs[j + 1])
            zs[j] = z / Ls[j - 1] if j else z
        return zs

    def _upper_times(self, Ls, xs):
        """(D + E^T) applied to rows."""
        out = []
        for j in range(self.K + 1):
            y = xs[j] * Ls[j - 1] if j else xs[0]
            if j < self.K:
                y = y - self.m[j] * self.adj(j, Ls[j] * xs[j + 1])
            out.append(y)
        return out

    def _split(self, Ls):
        d = torch.cat([torch.ones(self.n[0], dtype=self.B.dtype, device=self.B.device)] + list(Ls))
        return d, torch.sqrt(d)

    def _hat(self, Ls, d, sd, V):
        """C^{-1} P(L) C^{-T} applied to rows, C = (D + E) D^{-1/2} (symmetric Gauss-Seidel's
        factor): with w = D^{1/2} v and t = (D + E^T)^{-1} w it is
        D^{1/2} (t + (D + E)^{-1} (w - D t + F t)), one backward and one forward substitution,
        the cost of one product with P (Eisenstat's trick)."""
        w = V * sd
        ts = self._upper(Ls, self._blocks(w))
        t = torch.cat(ts, 1)
        rest = w - d * t
        if any(self.c):
            Ft = [self.c[j] * self.adj(j, Ls[j] * self.fwd(j, ts[j])) if self.c[j] else torch.zeros_like(ts[j])
                  for j in range(self.K)] + [torch.zeros_like(ts[self.K])]
            rest = rest + torch.cat(Ft, 1)
        return sd * (t + torch.cat(self._lower(Ls, self._blocks(rest)), 1))

    def solve(self, Ls):
        """X with X P(L) = R^T (rows), by conjugate gradients on C^{-1} P(L) C^{-T} (symmetric
        Gauss-Seidel preconditioning, :meth:`_hat`), from the last solution; (X, steps), or
        (None, steps) where P(L) is not positive definite (the transformed matrix has P's
        inertia) or the solve does not converge.  Convergence is confirmed on the true
        residual, B - X P(L); where it is not yet small enough the solve goes on to a tighter
        transformed tolerance.  On the cifar suite's conv net symmetric Gauss-Seidel took the
        steps of P's diagonal (Jacobi) from 51 to 22 at ECLipsE-Fast's multipliers, and
        Eisenstat's trick makes a step cost one product with P."""
        B = self.B
        d, sd = self._split(Ls)
        Bh = sd * torch.cat(self._lower(Ls, self._blocks(B)), 1)  # C^{-1} b
        if self.X is None:
            Y = torch.zeros_like(B)
        else:
            Y = torch.cat(self._upper_times(Ls, self._blocks(self.X)), 1) / sd  # C^T x
        bound = TOL * torch.linalg.vector_norm(B, dim=1)
        bound_h = TOL * torch.linalg.vector_norm(Bh, dim=1)
        Rs = Bh - self._hat(Ls, d, sd, Y)
        P, rr = Rs, (Rs * Rs).sum(1)
        for step in range(MAX_STEPS):
            done = rr.sqrt() <= bound_h
            if bool(done.all()):
                X = torch.cat(self._upper(Ls, self._blocks(Y * sd)), 1)  # C^{-T} y
                if bool((torch.linalg.vector_norm(B - self.apply(Ls, X), dim=1) <= bound).all()):
                    self.X = X
                    return X, step
                bound_h = bound_h / 10  # the true residual is not there yet: go on, tighter
                Rs = Bh - self._hat(Ls, d, sd, Y)
                P, rr = Rs, (Rs * Rs).sum(1)
                done = torch.zeros_like(done)
            if step % 16 == 15 and time.perf_counter() > self.deadline:
                raise Deadline
            AP = self._hat(Ls, d, sd, P)
            pAp = (P * AP).sum(1)
            if not bool((pAp[~done] > 0).all()):  # negative curvature: P(L) is not positive definite
                return None, step
            alpha = torch.where(done, 0.0, rr / pAp)[:, None]
            Y = Y + alpha * P
            Rs = Rs - alpha * AP
            rr_new = (Rs * Rs).sum(1)
            P = Rs + (rr_new / torch.where(rr == 0, 1.0, rr))[:, None] * P
            rr = rr_new
        return None, MAX_STEPS

    def rho(self, Ls):
        """The eigenvalues of R^T P(L)^{-1} R (ascending; the largest is the least rho),
        differentiable in ``Ls``; None where P(L) is not positive definite.  The number of
        conjugate-gradient steps is added to ``self.steps``."""
        with torch.no_grad():
            X, steps = self.solve([l.detach() for l in Ls])
        self.steps += steps
        if X is None:
            return None
        A = self.fwd(self.K, X[:, self.offs[-2]:])  # X R: (W_L x_i)_j
        return eigs(A + A.T - self.quadratic(Ls, X))
