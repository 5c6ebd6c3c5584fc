"""What the SDP verifiers share: the network as (weights, slopes), the LipSDP-Neuron
matrix M(rho, T) and its certification in float64.

LipSDP (Fazlyab et al., NeurIPS 2019) for f = W_L phi(W_{L-1} ... phi(W_0 x)) with
elementwise activations whose slopes lie in [a_k, b_k]: if, for diagonal T_k >= 0,

  M(rho, T) = [A; B]^T [[-2ab T, (a+b) T], [(a+b) T, -2T]] [A; B] + diag(-rho I, 0, ..., W_L^T W_L) <= 0

(block-tridiagonal: diagonal blocks D_0 = -rho I - 2 a_1 b_1 W_0^T T_1 W_0,
D_k = -2 T_k - 2 a_{k+1} b_{k+1} W_k^T T_{k+1} W_k, D_last = -2 T_last + W_L^T W_L;
off-diagonal blocks O_k = (a_{k+1} + b_{k+1}) W_k^T T_{k+1}), then sqrt(rho) bounds the
l2 Lipschitz constant.  Biases do not enter.

The blocks are written once, in :func:`lmi_terms`, for the backends that need the
assembled matrix (:class:`Ops`): :data:`CVXPY` for lipsdp's SDP, :data:`NUMPY` for
:func:`assemble` and :func:`check`, the dense reference that the tests hold the
structured certificate against.

Everything else works block by block, one dense matrix per layer and never the whole LMI,
in torch (float64) on the verifier's device, CPU or CUDA:

- the forward elimination (:func:`input_gram`, :func:`stage`, :func:`rho_of`): for
  normalised multipliers L_k = 2 T_k / rho the least rho is the largest eigenvalue of
  an output-sized matrix, after one Cholesky factor per hidden layer: NATIVE's
  objective, and ECLipsE's stages one layer at a time; :func:`minimise` is the solver
  both use (L-BFGS on a soft maximum of the eigenvalues);
- certification (:func:`certify`): a block Cholesky factorisation of -M(rho, T) - delta I
  from the output backwards, with the rounding of the assembly and of the factorisation
  bounded a posteriori and covered by the shift delta; rho comes from the input block's
  Schur complement, and only a rho whose factorisation succeeds is reported.

NATIVE's matrix-free solve (:mod:`baselines.verify.implicit`) computes the elimination's
rho(L) without the dense blocks, from the layers each W_k composes (``Chain.factors``).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from bench.api import Query, Unsupported
from bench.network import Activation, Affine, Net

EPS = float(np.finfo(np.float64).eps)


class RepairError(Exception):
    """The multipliers cannot be made into a certificate."""


@dataclass
class Chain:
    """The network as W_0, ..., W_L (float64, out x in; the last one already the pair
    row c^T W_L for a class-pair query) and the slope range [a_k, b_k] of activation k;
    ``relu_forms`` names the activations read through their exact ReLU form."""
    Ws: list
    a: list
    b: list
    relu_forms: tuple = ()
    #: each W_k as the maps it composes, first applied first: the network's Affine layers
    #: and the numpy matrices of ReLU forms and of a pair query's row (what
    #: :mod:`baselines.verify.implicit` applies without the dense W_k); None when not read
    #: from a network
    factors: list | None = None
    #: the activations at the input and output that were dropped (see :func:`chain`), if any
    dropped: tuple = ()

    @property
    def hidden(self) -> list[int]:
        return [W.shape[0] for W in self.Ws[:-1]]


def relu_form(act: Activation) -> tuple[np.ndarray, np.ndarray] | None:
    """(A, Q) with act(z) = Q relu(A z) exactly, from the description's piecewise-linear
    form h = P z + Q relu(A z) (with P z = P relu(z) - P relu(-z)); None without one.
    |x| = relu(x) + relu(-x), CReLU = (relu(x), relu(-x)), MaxMin's max(u, v) =
    v + relu(u - v) and min(u, v) = u - relu(u - v)."""
    try:
        form = act.spec.pwl(act.in_dim) if act.spec is not None else None
    except Unsupported:
        return None
    if form is None:
        return None
    P, Q, A = form
    if np.any(P):
        eye = np.eye(P.shape[1])
        A, Q = np.vstack([A, eye, -eye]), np.hstack([Q, P, -P])
    used = np.any(Q != 0, axis=0)  # a unit whose output goes nowhere (P's zero columns) is dropped
    return A[used], Q[:, used]


def chain(net: Net, query: Query, name: str, nonnegative: bool = False) -> Chain:
    """Read the network as an alternating chain, or raise Unsupported with the reason.
    Consecutive affine maps (a Linear and the BatchNorm after it, an average pooling and
    the Linear after it, ...) are composed into one matrix: exactly the same map, and
    biases do not enter the LMI.  An activation that is not elementwise (CReLU, MaxMin),
    and with ``nonnegative`` one whose lower slope is negative (|x|: ECLipsE needs a >= 0),
    is read through its exact ReLU form (:func:`relu_form`): its A joins the affine map
    before it, its Q the one after, and the chain sees ReLUs (the same function, so the
    same constant).  Sound, but loose: LipSDP's bound of the form is at least its largest
    product W_L D ... D W_0 over 0/1 diagonal D, which for |x| = relu(x) + relu(-x) doubles
    per layer (the hard suite's ``identity`` family); |x| keeps its sector [-1, 1] where
    the verifier takes negative slopes.

    An elementwise activation at the output (ERAN's nets end with a ReLU) or at the input
    is dropped: |phi(u) - phi(v)| <= c |u - v| coordinatewise, c its Lipschitz constant
    (max(|a|, |b|) for slopes in [a, b]), so the constant of the network without it, times
    c (folded into W_L or W_0, exactly: c must be a power of 2, as for ReLU, sigmoid, tanh),
    bounds the network's.  Sound, not exact; a class pair's margin relu(u_i) - relu(u_j)
    is not bounded so by dropping the output's, and is refused."""
    if query.p != 2:
        raise Unsupported(f"{name} bounds the l2 Lipschitz constant only (p = 2)")
    if query.domain != "global":
        raise Unsupported(f"{name} computes global bounds only")
    layers = net.layers
    for l in layers:
        if not isinstance(l, (Affine, Activation)):
            raise Unsupported(f"{name} reads affine layers and activations only; layer {l.index} "
                              f"({getattr(l, 'name', type(l).__name__)}) is neither")
    kinds = ["A" if isinstance(l, Affine) else "S" for l in layers]
    head, tail = dropped_activations(layers)
    if tail is not None and query.is_pair:
        raise Unsupported(f"{name} bounds a class pair's margin only for a network that ends with an affine "
                          f"layer (this one ends with {tail.name}, and dropping it bounds the whole output only)")
    head_gain, gain = (_gain(l, name) if l is not None else 0 for l in (head, tail))
    if tail is not None:
        layers, kinds = layers[:-1], kinds[:-1]
    if head is not None:
        layers, kinds = layers[1:], kinds[1:]
    if kinds[0] != "A" or kinds[-1] != "A" or any(x == y == "S" for x, y in zip(kinds, kinds[1:])):
        shown = (["S"] if head else []) + kinds + (["S"] if tail else [])
        raise Unsupported(f"{name} needs affine layers separated by single activations (one elementwise "
                          f"activation before the first and after the last is dropped) (got {' '.join(shown)})")
    Ws, a, b, forms, factors = [], [], [], [], []
    prev_affine, after = False, None
    for l in layers:
        if isinstance(l, Affine):   # consecutive affine maps (e.g. Linear, BatchNorm) compose exactly
            if prev_affine:
                Ws[-1] = l.matrix() @ Ws[-1]
                factors[-1].append(l)
            else:
                Ws.append(l.matrix() if after is None else l.matrix() @ after)
                factors.append([l] if after is None else [after, l])
                after = None
            prev_affine = True
            continue
        prev_affine = False
        if l.elementwise and (l.slope[0] >= 0 or not nonnegative):
            a.append(float(l.slope[0]))
            b.append(float(l.slope[1]))
            continue
        form = relu_form(l)
        if form is not None:
            A, after = form
            Ws[-1] = A @ Ws[-1]
            factors[-1].append(A)
            a.append(0.0)
            b.append(1.0)
            forms.append(l.name)
        elif l.elementwise:
            a.append(float(l.slope[0]))  # no ReLU form (GELU, ...): the caller refuses a < 0
            b.append(float(l.slope[1]))
        else:
            raise Unsupported(f"{name} needs elementwise slope-restricted activations or a piecewise-linear "
                              f"form; {l.name} has neither")
    if query.is_pair:
        i, j = query.target
        row = np.zeros((1, Ws[-1].shape[0]))
        row[0, i], row[0, j] = 1.0, -1.0
        Ws[-1] = (Ws[-1][i] - Ws[-1][j])[None, :]
        factors[-1].append(row)
    if gain:  # the dropped activation's Lipschitz constant c = 2^gain, folded into W_L exactly
        Ws[-1] = np.ldexp(Ws[-1], gain)
        factors[-1].append(np.ldexp(np.eye(Ws[-1].shape[0]), gain))
    if head_gain:   # the same for one at the input, into W_0
        Ws[0] = np.ldexp(Ws[0], head_gain)
        factors[0].insert(0, np.ldexp(np.eye(Ws[0].shape[1]), head_gain))
    return Chain(Ws, a, b, tuple(forms), factors, tuple(l.name for l in (head, tail) if l is not None))


def _gain(act: Activation, name: str) -> int:
    """e with 2^e the Lipschitz constant of an activation the chain drops (see :func:`chain`)."""
    c = act.lipschitz[2.0] if act.elementwise else 0.0
    if not (c > 0 and math.frexp(c)[0] == 0.5):
        raise Unsupported(f"{name} drops an activation at the input or output only where it is elementwise with a "
                          f"Lipschitz constant that is a power of 2 ({act.name} is not)")
    return math.frexp(c)[1] - 1


@dataclass(frozen=True)
class Ops:
    """What one backend supplies to :func:`lmi_terms`.  ``t`` is a layer's multiplier in
    the backend's own form (a vector for numpy, the matrix T for cvxpy); products
    with a scalar, ``@``, ``+`` and ``.T`` are the backend's operators."""
    #: (W^T, t) -> W^T T: the columns of W^T scaled by t (never diag(t) formed for it)
    colscale: Callable
    #: t -> T as a matrix
    diag: Callable
    #: n -> the n x n identity
    eye: Callable


#: numpy arrays: t a vector
NUMPY = Ops(colscale=lambda Wt, t: Wt * t, diag=np.diag, eye=np.eye)
#: cvxpy expressions: t is already the diagonal matrix T (cp.diag(variable), or
#: variable * I for one multiplier per layer)
CVXPY = Ops(colscale=lambda Wt, T: Wt @ T, diag=lambda T: T, eye=np.eye)


def lmi_terms(ch: Chain, T: list, ops: Ops, rho=None, absolute: bool = False) -> Iterator[tuple[int, int, object]]:
    """The terms of M(rho, T) as (i, j, term), ``term`` to be added to block (i, j): block 0
    is the input, block k the k-th hidden layer.  A block is the sum of its terms in the
    order given: D_0 = -rho I, then -2 a_1 b_1 W_0^T T_1 W_0; O_k and O_k^T (one product
    W_k^T T_{k+1}, transposed); D_k = -2 T_k, then -2 a_{k+1} b_{k+1} W_k^T T_{k+1} W_k, then
    (last block) W_L^T W_L.  The -2ab terms are left out where ab = 0 (ReLU, tanh, ...).

    ``ch.Ws`` and ``T`` hold the backend's matrices and multipliers (see :class:`Ops`), so
    that numpy and cvxpy build one matrix.  ``ch.Ws[0]`` may be lipsdp's reduced
    U S (W_0 = U S V^T): the input blocks are then those of W_0 in the basis V.
    ``rho=None`` leaves out the -rho I term.  With ``absolute`` every scalar coefficient is
    replaced by its absolute value (the caller passes |W_k| and |t_k|): the entrywise bound
    on the terms that :func:`assemble` needs for its rounding margin."""
    f = abs if absolute else (lambda x: x)
    if rho is not None:
        yield 0, 0, f(-rho) * ops.eye(ch.Ws[0].shape[1])
    K = len(ch.hidden)
    for k in range(K):
        W, t = ch.Ws[k], T[k]
        WtT = ops.colscale(W.T, t)  # W_k^T T_{k+1}
        ab, apb = ch.a[k] * ch.b[k], ch.a[k] + ch.b[k]
        if ab != 0:
            yield k, k, f(-2 * ab) * (WtT @ W)
        O = f(apb) * WtT
        yield k, k + 1, O
        yield k + 1, k, O.T
        yield k + 1, k + 1, f(-2) * ops.diag(t)
    yield K, K, ch.Ws[-1].T @ ch.Ws[-1]


def block_offsets(ch: Chain) -> np.ndarray:
    """Where the blocks of M start (and, last, its size)."""
    return np.concatenate([[0], np.cumsum([ch.Ws[0].shape[1]] + ch.hidden)]).astype(int)


#: neurons of an activation's ReLU form per input (MaxMin: 5 per pair of inputs; CReLU and
#: |x|: 2 per input), the most of them, for the size check before the form is built
RELU_FORM_WIDTH = 2.5


def dropped_activations(layers: list) -> tuple[Activation | None, Activation | None]:
    """(the activation a network starts with, before an affine layer; the one it ends
    with, after one), each None where there is none: :func:`chain` drops them, where they
    are elementwise with a Lipschitz constant that is a power of 2."""
    head = layers[0] if len(layers) > 1 and isinstance(layers[0], Activation) and isinstance(layers[1], Affine) \
        else None
    tail = layers[-1] if len(layers) > 1 and isinstance(layers[-1], Activation) and isinstance(layers[-2], Affine) \
        else None
    return head, tail


def size_reason(net: Net, name: str, max_neurons: int, per_layer: bool, nonnegative: bool = False) -> str | None:
    """Why the network is too large for an SDP verifier (None if it is not): its hidden
    neurons, all of them (``per_layer`` False: LipSDP's one LMI) or the widest layer's
    (ECLipsE's stages), counted from the walk's shapes before anything is unrolled.  A
    conv counts every channel at every pixel, so conv nets pass the limit quickly; an
    activation read through its ReLU form (see :func:`chain`; ``nonnegative`` as there)
    counts ``RELU_FORM_WIDTH`` neurons per input."""
    def width(a):
        plain = a.elementwise and (a.slope[0] >= 0 or not nonnegative)
        return a.in_dim if plain else int(math.ceil(RELU_FORM_WIDTH * a.in_dim))
    head, tail = dropped_activations(net.layers)
    acts = [a for a in net.activations if a is not head and a is not tail]   # dropped (see :func:`chain`)
    widths = [(width(a), a.index) for a in acts]
    if not widths:
        return None
    n, index = max(widths, key=lambda w: w[0]) if per_layer else (sum(w for w, _ in widths), None)
    if n <= max_neurons:
        return None
    what = f"layer {index} has {n:,} neurons" if per_layer else f"the network has {n:,} hidden neurons"
    what += " (ReLU forms counted)" if any(w != a.in_dim for (w, _), a in zip(widths, acts)) else ""
    return (f"{name} solves networks up to {max_neurons:,} {'neurons per layer' if per_layer else 'hidden neurons'} "
            f"(beyond that it cannot finish in a suite's budget); {what} (convs unrolled: channels x pixels)")


def chain_reason(net: Net, query: Query, name: str, nonnegative_slopes: bool = False) -> str | None:
    """Why :func:`chain` cannot read this network for this query (None if it can).  With
    ``nonnegative_slopes`` the chain is read as ECLipsE reads it (ReLU forms for |x|) and an
    activation left with a negative lower slope is refused (the elimination drops the
    -2ab W^T T W terms, sound only for a >= 0)."""
    try:
        ch = chain(net, query, name, nonnegative_slopes)
    except Unsupported as e:
        return str(e)
    if nonnegative_slopes and any(a < 0 for a in ch.a):
        return (f"{name} needs activations with a lower slope >= 0 or a piecewise-linear (ReLU) form "
                f"(this network has a slope range down to {min(ch.a)} and no such form)")
    return None


def assemble(ch: Chain, rho: float, T: list[np.ndarray], absolute: bool = False) -> np.ndarray:
    """The dense matrix M(rho, T) (or, with ``absolute``, the same sum built from |W|,
    |T|, |a b|, |a + b|: an entrywise bound on the terms, for rounding-error bounds)."""
    if absolute:
        ch, T = Chain([np.abs(W) for W in ch.Ws], ch.a, ch.b), [np.abs(t) for t in T]
    offs = block_offsets(ch)
    M = np.zeros((offs[-1], offs[-1]))
    for i, j, term in lmi_terms(ch, T, NUMPY, rho, absolute):
        M[offs[i]:offs[i + 1], offs[j]:offs[j + 1]] += term
    return M


def check(ch: Chain, rho: float, T: list[np.ndarray]) -> tuple[bool, float, float]:
    """(passes, computed lambda_max, error margin) of a dense float64 check of M(rho, T) <= 0:
    the reference the tests hold :func:`certify` against on small networks."""
    M = assemble(ch, rho, T)
    N = M.shape[0]
    lam = float(scipy.linalg.eigvalsh(M, subset_by_index=[N - 1, N - 1], check_finite=True)[0])
    margin = 32.0 * N * EPS * float(np.linalg.norm(assemble(ch, rho, T, absolute=True)))
    return lam + margin <= 0.0, lam, margin




# --------------------------------------------------------------------------------------
# The block machinery: one dense factorisation per layer, never the whole LMI.
#
# N = -M(rho, T) is block-tridiagonal: with L_k = 2 T_k / rho,
#   N_00 / rho = I + a_1 b_1 W_0^T L_1 W_0,
#   N_kk / rho = L_k + a_{k+1} b_{k+1} W_k^T L_{k+1} W_k   (1 <= k < K),
#   N_KK / rho = L_K - W_L^T W_L / rho,
#   N_{k,k+1} / rho = -m_{k+1} W_k^T L_{k+1},  m = (a + b) / 2.
# Eliminating from the input forward (Y_0 = N_00 / rho,
# Y_k = N_kk / rho - m_k^2 L_k W_{k-1} Y_{k-1}^{-1} W_{k-1}^T L_k) leaves the last block
# Y_K - W_L^T W_L / rho >= 0, so for multipliers L with every Y_k positive definite the
# least rho is lambda_max(W_L Y_K^{-1} W_L^T): an eigenvalue problem of the output's size.
# That is NATIVE's objective, and each ECLipsE stage is the same recursion one layer at a
# time (ECLipsE drops the a b terms, sound for a b >= 0).
# --------------------------------------------------------------------------------------

def device(budget) -> str:
    """Where the block machinery runs: the budget's device (CPU unless it says cuda)."""
    return budget.device if budget.device not in ("auto", None) else "cpu"


def torch_chain(ch: Chain, device=None) -> Chain:
    """The chain's matrices as float64 torch tensors on ``device``."""
    import torch
    return Chain([torch.as_tensor(np.asarray(W), dtype=torch.float64, device=device) for W in ch.Ws],
                 ch.a, ch.b)


def input_gram(tc: Chain, L1=None, drop_ab: bool = False):
    """G_0 = W_0 Y_0^{-1} W_0^T (torch): W_0 W_0^T when a_1 b_1 = 0 (or dropped), else
    through the Cholesky factor of Y_0 = I + a_1 b_1 W_0^T L_1 W_0; None if Y_0 is not
    positive definite."""
    import torch
    W0 = tc.Ws[0]
    ab = tc.a[0] * tc.b[0]
    if ab == 0 or drop_ab:
        return W0 @ W0.T
    Y0 = torch.eye(W0.shape[1], dtype=W0.dtype, device=W0.device) + ab * (W0.T * L1) @ W0
    C = cholesky(Y0)
    if C is None:
        return None
    Z = torch.linalg.solve_triangular(C, W0.T, upper=False)
    return Z.T @ Z


def stage(tc: Chain, k: int, G, L, L_next=None, drop_ab: bool = False):
    """One elimination step (torch, differentiable in L and L_next): from
    G_{k-1} = W_{k-1} Y_{k-1}^{-1} W_{k-1}^T (``G``, hidden layer k's size; k counts from
    0 here, the chain's activation k) to G_k = W_{k+1} Y_k^{-1} W_{k+1}^T, with
    Y_k = diag(L) - m^2 L G L (+ a' b' W_{k+1}^T L_next W_{k+1} for the next activation's
    slopes, unless ``drop_ab``).  None if Y_k is not positive definite."""
    import torch
    m = (tc.a[k] + tc.b[k]) / 2
    Y = torch.diag(L) - (m * m) * (L[:, None] * G * L[None, :])
    W = tc.Ws[k + 1]
    if k + 1 < len(tc.hidden) and not drop_ab:
        ab = tc.a[k + 1] * tc.b[k + 1]
        if ab != 0:
            Y = Y + ab * (W.T * L_next) @ W
    C = cholesky(Y)
    if C is None:
        return None
    Z = torch.linalg.solve_triangular(C, W.T, upper=False)  # W Y^{-1} W^T = Z^T Z
    return Z.T @ Z


def cholesky(Y):
    """The Cholesky factor of a symmetric torch matrix, or None where it is not positive
    definite in floating point: the factorisation's info, and a finite diagonal (a NaN
    anywhere in Y reaches a later pivot; not every backend reports a NaN pivot)."""
    import torch
    C, info = torch.linalg.cholesky_ex(Y)
    if bool((info != 0) | ~torch.isfinite(C.diagonal()).all()):  # one synchronisation
        return None
    return C


def _host_eigh(S):
    """LAPACK's (scipy's) eigendecomposition of a symmetric torch matrix, as tensors on
    its device."""
    import torch
    lam, V = scipy.linalg.eigh(S.detach().cpu().numpy(), driver="evd")  # torch's driver (syevd)
    return torch.as_tensor(lam, device=S.device), torch.as_tensor(V, device=S.device)


@functools.cache
def _host_eigvalsh():
    import torch

    class HostEigvalsh(torch.autograd.Function):
        """Eigenvalues by :func:`_host_eigh`, differentiable: d lambda_i / dS = v_i v_i^T."""

        @staticmethod
        def forward(ctx, S):
            lam, V = _host_eigh(S)
            ctx.save_for_backward(V)
            return lam

        @staticmethod
        def backward(ctx, g):
            (V,) = ctx.saved_tensors
            return (V * g[None, :]) @ V.T
    return HostEigvalsh


#: on CUDA, eigenproblems up to this many rows are timed both ways on first use (:func:`on_host`)
HOST_EIGS_ROWS = 512
#: (rows, device, vectors) -> whether LAPACK on the host was the faster there (:func:`route`)
_EIGS_ON_HOST: dict = {}


def faster(a: Callable, b: Callable, sync: Callable = lambda: None, repeats: int = 3) -> bool:
    """Whether ``a`` is faster than ``b``: the best of ``repeats`` timed calls each, after
    one untimed call (kernels load, workspaces grow), ``sync`` (the device's
    synchronisation) closing each; a ``b`` that raises loses."""
    import time

    def best(f):
        f()
        sync()
        t = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            f()
            sync()
            t = min(t, time.perf_counter() - t0)
        return t
    try:
        tb = best(b)
    except Exception:  # noqa: BLE001 (cuSOLVER's failures, pytorch#94772: the host answers)
        return True
    try:
        return best(a) < tb
    except Exception:  # noqa: BLE001
        return False


def on_host(S, vectors: bool = False) -> bool:
    """Whether S's eigenproblem (with eigenvectors or not) goes to LAPACK on the host:
    never for a CPU tensor; on CUDA, for up to ``HOST_EIGS_ROWS`` rows, where the host was
    the faster of the two on the first such matrix of that size (:func:`route`; a small
    eigenproblem on a GPU is bound by latency, and torch's cuSOLVER heuristics have
    changed between versions: a 32-row one took 19 ms on CUDA against 41 us on the CPU in
    pytorch#10172, and 2.10 slowed CUDA's eigh, pytorch#183806); larger ones stay on the
    device (README, Benchmarks: ECLipsE at width 1,024 on an H200 against the CPU)."""
    import torch
    if not S.is_cuda or S.shape[0] > HOST_EIGS_ROWS:
        return False
    return route(S, vectors, lambda: torch.cuda.synchronize(S.device))


def route(S, vectors: bool, sync: Callable) -> bool:
    """:func:`on_host`'s choice for S's size, device and ``vectors``, timed on the first
    finite matrix (the host's way, :func:`_host_eigh`, against torch's eigh or eigvalsh on
    S's device; ``sync`` closes each timed call) and kept for the process."""
    import torch
    key = (S.shape[0], str(S.device), vectors)
    if key not in _EIGS_ON_HOST:
        if not bool(torch.isfinite(S).all()):  # decide on a matrix both can take
            return False
        D = S.detach()
        here = torch.linalg.eigh if vectors else torch.linalg.eigvalsh
        _EIGS_ON_HOST[key] = faster(lambda: _host_eigh(D), lambda: here(D), sync)
    return _EIGS_ON_HOST[key]


def eigs(G, vectors: bool = False):
    """The eigenvalues (ascending; and eigenvectors with ``vectors``) of the symmetric part
    of G, differentiable (values only); None where G is not finite.  Small ones on CUDA
    may go to the host (:func:`on_host`: whichever was faster), with one transfer and no
    finiteness test on the device.  cuSOLVER fails on
    some rank-deficient matrices that LAPACK takes ("failed to converge ... error code
    6": pytorch#94772; on an H200, ECLipsE and NATIVE stopped on the Gram matrix of a
    784-1,024 layer, rank 784); there LAPACK on the host answers instead."""
    import torch
    S = (G + G.T) / 2
    if on_host(S, vectors):
        try:
            return _host_eigh(S) if vectors else _host_eigvalsh().apply(S)
        except (np.linalg.LinAlgError, ValueError):  # ValueError: scipy's test, not finite
            return None
    if not bool(torch.isfinite(S).all()):
        return None
    try:
        return torch.linalg.eigh(S) if vectors else torch.linalg.eigvalsh(S)
    except torch.linalg.LinAlgError:
        try:
            return _host_eigh(S) if vectors else _host_eigvalsh().apply(S)
        except (np.linalg.LinAlgError, ValueError):
            return None


def top_eig(G):
    """The largest eigenvalue of a symmetric matrix (torch, differentiable); None as
    :func:`eigs`."""
    lam = eigs(G)
    return None if lam is None else lam[-1]


def top_eig_estimate(G) -> float:
    """The largest eigenvalue of a symmetric torch matrix, not differentiated: dense below
    512 rows (on CUDA up to 8,192), Lanczos (ARPACK, to 1e-12 relatively) above, where a
    full eigendecomposition costs seconds on the CPU (15 s at 4,096 rows here).  Only ever
    a choice of multipliers or of the rho to try: a certificate rests on a factorisation,
    never on this number.  Where Lanczos fails (an optimised ECLipsE stage leaves its top
    eigenvalues clustered: ARPACK did not converge in 7,841 iterations on a 1,024-row one)
    the dense solver answers (0.3 s at 1,024 rows here, 15 s at 4,096)."""
    n = G.shape[0]
    if n <= 512 or (G.is_cuda and n <= 8192):  # a GPU's dense solver beats ARPACK on the host
        return _dense_top(G)
    import scipy.sparse.linalg
    A = G.detach().cpu().numpy()
    A = (A + A.T) / 2
    v0 = np.ones(n) / math.sqrt(n)
    try:
        return float(scipy.sparse.linalg.eigsh(A, k=1, which="LA", tol=1e-12, v0=v0, return_eigenvectors=False)[0])
    except scipy.sparse.linalg.ArpackError:  # no convergence, or a failed factorisation
        return _dense_top(G)


def _dense_top(G) -> float:
    lam = top_eig(G.detach())
    if lam is None:
        raise RepairError("a matrix of the elimination is not finite")
    return float(lam)


def norm_estimate(W) -> float:
    """||W||_2 of a dense matrix, to rescale a problem by (never a bound, and any positive
    scale keeps the problem equivalent): LAPACK's exact value up to 512 rows or columns,
    above that 30 power iterations on the smaller Gram matrix from a fixed start (within
    about 1% on conv layers, whose clustered top singular values cost ARPACK 300
    iterations and 6 to 11 s at 4,096 x 3,072 on one thread, LAPACK's SVD 26 s)."""
    W = np.asarray(W, dtype=np.float64)
    if min(W.shape) <= 512:
        return float(np.linalg.norm(W, 2))
    A = W if W.shape[0] <= W.shape[1] else W.T  # A A^T is the smaller Gram matrix
    v = np.ones(A.shape[0]) / math.sqrt(A.shape[0])
    lam = 0.0
    for _ in range(30):
        w = A @ (A.T @ v)
        lam = float(np.linalg.norm(w))
        if lam == 0.0:
            return 0.0
        v = w / lam
    return math.sqrt(lam)


def rho_of(tc: Chain, Ls: list, G0=None):
    """The eigenvalues of W_L Y_K^{-1} W_L^T, the largest of which is the least rho for
    normalised multipliers L (full LipSDP-Neuron, a b terms included), differentiable in
    ``Ls``; None if some Y_k is not positive definite.  ``G0``: G_0 when a_1 b_1 = 0,
    precomputed (W_0 W_0^T; an ECLipsE stage passes its G_{k-1}).

    The elimination runs without autograd; its gradient is the adjoint in closed form
    (:class:`_Elimination`), which costs O(n_k^2 q) a layer for the q <= r eigenvalues weighed where autograd
    through the Cholesky factors cost O(n_k^3), three times the forward pass."""
    import torch
    with torch.no_grad():
        Ld = [l.detach() for l in Ls]
        K = len(Ld)
        W0, ab0 = tc.Ws[0], tc.a[0] * tc.b[0]
        C_in = None
        if ab0 == 0:
            G = G0 if G0 is not None else W0 @ W0.T
        else:
            Y0 = torch.eye(W0.shape[1], dtype=W0.dtype, device=W0.device) + ab0 * (W0.T * Ld[0]) @ W0
            C_in = cholesky(Y0)
            if C_in is None:
                return None
            Z = torch.linalg.solve_triangular(C_in, W0.T, upper=False)
            G = Z.T @ Z
        Gs, Cs = [], []
        for k in range(K):
            L, m = Ld[k], (tc.a[k] + tc.b[k]) / 2
            Y = torch.diag(L) - (m * m) * (L[:, None] * G * L[None, :])
            W = tc.Ws[k + 1]
            if k + 1 < K and tc.a[k + 1] * tc.b[k + 1] != 0:
                Y = Y + (tc.a[k + 1] * tc.b[k + 1]) * (W.T * Ld[k + 1]) @ W
            C = cholesky(Y)
            if C is None:
                return None
            Z = torch.linalg.solve_triangular(C, W.T, upper=False)  # W Y^{-1} W^T = Z^T Z
            Gs.append(G)
            Cs.append(C)
            G = Z.T @ Z
        lv = eigs(G, vectors=True)
        if lv is None:
            return None
        lam, V = lv
    if not any(l.requires_grad for l in Ls):
        return lam
    return _elimination_function().apply((tc, Ld, Gs, Cs, C_in, Z, V), lam, *Ls)


def _elimination_grads(state, lam_bar) -> list:
    """The gradient of sum(lam_bar * eigenvalues) in each L_k: the adjoint of the
    elimination.  With Y_bar_k = -B_k Gc B_k^T (Gc = V diag(lam_bar) V^T, r x r, B_k of
    hidden layer k's size x r): B_K = Y_K^{-1} W_L^T, B_{k-1} = m_k Y_{k-1}^{-1} W_k^T L_k B_k,
    and dL_k = diag(Y_bar_k) - 2 m_k^2 diag(G_{k-1} L_k Y_bar_k) (+ a b diag(W Y_bar W^T) for
    the a b terms, which Y_{k-1} and Y_0 hold for L_k).  Each B_k is carried in the
    eigenvectors' coordinates, B_k V, and only for the q eigenvalues with a weight (a soft
    maximum's weights fall below 1e-16 of the largest a few tau under the top), so every
    term is of rank q <= r: an ECLipsE stage, whose r is the next layer's width, pays
    O(n^2 q) for its gradient, not O(n^2 r)."""
    import torch
    tc, Ld, Gs, Cs, C_in, Z, V = state
    K = len(Ld)
    keep = lam_bar.abs() > 1e-16 * lam_bar.abs().max()
    w, Vq = lam_bar[keep], V[:, keep]  # one synchronisation on a GPU (the count q)
    grads = [torch.zeros_like(l) for l in Ld]

    def ybar_diag(A, B=None):  # diag(-A Gc B^T) for A, B in the eigenvectors' coordinates
        return -((A * w[None, :]) * (A if B is None else B)).sum(1)
    B = torch.linalg.solve_triangular(Cs[K - 1].T, Z @ Vq, upper=True)  # Y_K^{-1} W_L^T V
    for k in range(K - 1, -1, -1):
        L, m = Ld[k], (tc.a[k] + tc.b[k]) / 2
        grads[k] += ybar_diag(B) - 2 * m * m * ybar_diag(Gs[k] @ (L[:, None] * B), B)
        if k + 1 < K and tc.a[k + 1] * tc.b[k + 1] != 0:
            grads[k + 1] += (tc.a[k + 1] * tc.b[k + 1]) * ybar_diag(tc.Ws[k + 1] @ B)
        C = Cs[k - 1] if k > 0 else C_in
        if C is None:  # a_1 b_1 = 0: G_0 = W_0 W_0^T (or the G0 given) does not depend on L
            break
        X = m * (tc.Ws[k].T @ (L[:, None] * B))  # the previous layer's B, before Y^{-1}
        B = torch.linalg.solve_triangular(C.T, torch.linalg.solve_triangular(C, X, upper=False), upper=True)
        if k == 0:
            grads[0] += (tc.a[0] * tc.b[0]) * ybar_diag(tc.Ws[0] @ B)
    return grads


@functools.cache
def _elimination_function():
    import torch

    class Elimination(torch.autograd.Function):
        """The eigenvalues ``rho_of`` computed, with the closed-form adjoint as backward."""

        @staticmethod
        def forward(ctx, state, lam, *Ls):
            ctx.state = state
            return lam.clone()

        @staticmethod
        def backward(ctx, lam_bar):
            return (None, None, *_elimination_grads(ctx.state, lam_bar))
    return Elimination


def symmetric(ch: Chain) -> bool:
    """Every activation's slope range is symmetric, [-c, c] with c > 0 (|x|): then a + b = 0
    and LipSDP splits layer by layer (:func:`symmetric_factors`)."""
    return bool(ch.a) and all(a + b == 0 and b > 0 for a, b in zip(ch.a, ch.b))


def symmetric_factors(tc: Chain, us: list) -> list:
    """LipSDP-Neuron for a :func:`symmetric` chain, as a product of scaled norms (torch,
    differentiable in ``us``).

    With slopes in [-c_k, c_k] every off-diagonal block (a + b) W_k^T T_{k+1} vanishes and
    M(rho, T) <= 0 is the diagonal blocks alone: rho I >= 2 c_1^2 W_0^T T_1 W_0,
    T_k >= c_{k+1}^2 W_k^T T_{k+1} W_k and 2 T_K >= W_L^T W_L.  For multipliers of shape
    T_k = t_k E_k (E_k = diag(exp(u_k))) the least scalars t_k, taken from the output back,
    make each block singular, and then
      rho(u) = prod_k c_k^2 * prod_{k=0}^{K} ||E_{k+1}^{1/2} W_k E_k^{-1/2}||_2^2   (E_0 = E_{K+1} = I),
    so LipSDP's value is the least product of diagonally rescaled layer norms (u = 0, and
    the layer form, give the trivial bound).  Returns the eigenvalues of each factor's Gram
    matrix (the smaller of B B^T and B^T B), c_k^2 folded into them: rho(u) is the product
    of their largest.  :func:`symmetric_multipliers` gives the T."""
    import torch
    out, K = [], len(us)
    for k, W in enumerate(tc.Ws):
        B = W
        if k > 0:
            B = B * torch.exp(-us[k - 1] / 2)[None, :]
        if k < K:
            B = torch.exp(us[k] / 2)[:, None] * B
        G = B @ B.T if B.shape[0] <= B.shape[1] else B.T @ B
        c2 = tc.b[k] ** 2 if k < K else 1.0  # W_k meets the slope of the activation after it
        lam = eigs(G)
        if lam is None:  # exp(u) overflowed: outside what the solver may step to
            return None
        out.append(c2 * lam)
    return out


def symmetric_multipliers(tc: Chain, us: list) -> tuple[list[np.ndarray], float]:
    """The multipliers T_k = t_k E_k of :func:`symmetric_factors` (each block made singular
    from the output back) and rho(u), in float64."""
    import torch
    with torch.no_grad():
        n = [float(l[-1]) for l in symmetric_factors(tc, us)]  # factor k, its slope's c^2 folded in
    K = len(us)
    t = [0.0] * K
    t[K - 1] = n[K] / 2  # 2 T_K >= W_L^T W_L
    for k in range(K - 2, -1, -1):  # T_k >= c_{k+1}^2 W_k^T T_{k+1} W_k
        t[k] = n[k + 1] * t[k + 1]
    rho = float(np.prod(n))  # = 2 n[0] t[0]: rho I >= 2 c_1^2 W_0^T T_1 W_0
    return [t[k] * torch.exp(us[k]).detach().cpu().numpy() for k in range(K)], rho


class _Deadline(Exception):
    pass


#: L-BFGS iterations per round of :func:`minimise` (one value of tau)
ROUND_ITERS = 100
#: the first round's tau, relative to the value.  1e-3 ended 0.5% / 0.2% lower than this
#: after 25 s / 60 s on 784-512-512-10 / 784-1024-1024-10, but stalled 0.13% above
#: Clarabel's optimum on a small conv net, where 1e-2 ends 0.02% above it
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

    import torch
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
                    raise _Deadline
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
    except _Deadline:
        pass
    return best, best_p, f"{evals} evaluations in {rounds} rounds of L-BFGS, {infeasible} infeasible"


# --------------------------------------------------------------------------------------
# Structured certification
# --------------------------------------------------------------------------------------

def _gamma(k: int) -> float:
    u = EPS / 2
    return k * u / (1 - k * u)


def certify(ch: Chain, T: list[np.ndarray], device=None, rho_hint: float | None = None) -> tuple[float, dict]:
    """The certified bound sqrt(rho) for multipliers T, and what was done.

    N = -M(rho, T) >= 0 is proved by a block Cholesky factorisation of N - delta I taken
    from the output backwards (hidden block K first, the input block last, so rho enters
    only the last factorisation): one dense factorisation per layer, in float64, on
    ``device``.  If every block factorises, the computed factor R satisfies
    R^T R = A + E with A the assembled N - delta I and |E| <= gamma |R|^T |R| (the
    componentwise backward error of Cholesky, Higham, Thm 10.3, which holds for the
    blocked order too), so ||E||_2 <= gamma ||R||_F^2; the assembly of N itself is off by
    at most gamma_a ||N_abs||_F (N_abs: the same sums from |W|, |T|, |a b|, |a + b|).  So
    N >= (delta - gamma ||R||_F^2 - gamma_a ||N_abs||_F) I >= 0 when delta covers both,
    which is checked after the factorisation with the computed ||R||_F.  No eigenvalue of
    the LMI is ever estimated: rho's value comes from the (small) input block's Schur
    complement, and only a rho whose factorisation succeeds is reported.

    The multipliers must make the hidden part strictly feasible: a solver's optimum sits
    on the boundary, so T is enlarged slightly until it is -- first uniformly, then
    geometrically by depth, T_k (1 + s)^(K - k) (where the hidden block is homogeneous in
    T, e.g. |x|, only this makes -2 T_k win).

    ``rho_hint`` (the solver's value) sizes the shift before the first factorisation; without
    it, or if it is too small, the hidden blocks are factorised twice."""
    import torch
    # clipped at 0, and floored at 1e-12 of the layer's largest: a solver leaves exact zeros on
    # neurons that couple to nothing (a zero column), and a zero multiplier no scaling repairs
    T0 = [np.maximum(np.asarray(t, dtype=np.float64), 0.0) for t in T]
    T0 = [np.maximum(t, 1e-12 * t.max(initial=0.0)) for t in T0]
    ch, T0, scales = balanced(ch, T0, rho_hint)
    tc = torch_chain(ch, device)
    T0 = [torch.as_tensor(t, device=tc.Ws[0].device) for t in T0]
    # and floored at twice the first shift: below it a multiplier fails its own diagonal entry
    # 2 t - delta whatever rho (once the blocks are balanced, 1e-12 of the layer's largest can be)
    floor = 2 * _Blocks(tc, T0).delta(1.05 * max(rho_hint or 0.0, 0.0))
    T0 = [t.clamp_min(floor) for t in T0]
    K = len(T0)
    repairs = [(s, lambda k, s=s: 1 + s) for s in (0.0, 1e-9, 1e-7, 1e-5, 1e-3, 1e-2)]
    repairs += [(-s, lambda k, s=s: (1 + s) ** (K - k)) for s in (1e-9, 1e-7, 1e-5, 1e-3, 1e-2)]
    for n, (scale, factor) in enumerate(repairs):
        Ts = [t * factor(k) for k, t in enumerate(T0)]
        try:
            value, stats = _certify_blocks(tc, Ts, rho_hint)
            break
        except RepairError:
            if n == len(repairs) - 1:
                raise
    stats["T_enlarged_by"] = scale  # < 0: geometrically, (1 + |s|)^(K - k)
    stats["block_scales_log2"] = scales
    return value, stats


def balanced(ch: Chain, T: list[np.ndarray], rho_hint: float | None) -> tuple[Chain, list[np.ndarray], list[int]]:
    """The same LMI under the congruence D = diag(I, 2^e_1 I, ..., 2^e_K I): D M(rho, T; W) D =
    M(rho, T'; W') with T'_k = 4^e_k T_k, W'_k = 2^(e_k - e_{k+1}) W_k (e_0 = 0), W'_L = 2^e_K W_L,
    whatever the activations, so one is <= 0 iff the other is, at the same rho.  A deep net's
    multipliers span orders of magnitude (ECLipsE's: 4.9e11 down to 0.48 on ACAS Xu), and the
    shift delta I, sized by the largest block, swamps the smallest; e_k puts 2 max T'_k within a
    factor 2 of rho.  Powers of 2 scale exactly; where one would not (over/underflow) the LMI
    is certified as given.  Returns (chain, T', [e_1, ..., e_K])."""
    ref = rho_hint if rho_hint and math.isfinite(rho_hint) and rho_hint > 0 else None
    if ref is None:
        top = T[0].max(initial=0.0) if T else 0.0
        ref = 2 * top if top > 0 else 1.0
    es = [0]
    for t in T:
        top = float(t.max(initial=0.0))
        es.append(int(round(0.5 * math.log2(ref / (2 * top)))) if top > 0 and math.isfinite(top) else es[-1])
    Ws, Ts = [], []
    for k, W in enumerate(ch.Ws):
        W = np.asarray(W, dtype=np.float64)
        e = es[k] - es[k + 1] if k + 1 < len(es) else es[k]  # W'_k = (c_k / c_{k+1}) W_k; W'_L = c_K W_L
        Wk = np.ldexp(W, e)
        if e and not (np.isfinite(Wk).all() and np.array_equal(np.ldexp(Wk, -e), W)):
            return ch, T, [0] * len(T)  # not exact in float64: certify the LMI as given
        Ws.append(Wk)
    for k, t in enumerate(T):
        tk = np.ldexp(t, 2 * es[k + 1])
        if not (np.isfinite(tk).all() and np.array_equal(np.ldexp(tk, -2 * es[k + 1]), t)):
            return ch, T, [0] * len(T)
        Ts.append(tk)
    return Chain(Ws, ch.a, ch.b, ch.relu_forms), Ts, es[1:]


class _Blocks:
    """The blocks of N = -M(rho, T) (torch, float64) and bounds on their rounding."""

    def __init__(self, tc: Chain, T: list):
        self.tc, self.T, self.K = tc, T, len(T)
        Ws = tc.Ws
        self.n = [Ws[0].shape[1]] + tc.hidden
        rows2 = [(W * W).sum(1) for W in Ws]  # squared row norms of each W_k
        # the hidden part's trace and Frobenius bound (entries of |W|^T T |W| bounded by
        # its trace: a positive semidefinite matrix's Frobenius norm is at most its trace)
        tr = fro = 0.0
        for k in range(1, self.K + 1):
            t = T[k - 1]
            tr += 2 * float(t.sum())
            fro += 2 * float(torch_norm(t))
            if k < self.K:
                ab = abs(tc.a[k] * tc.b[k])
                if ab:
                    x = 2 * ab * float((T[k] * rows2[k]).sum())
                    tr, fro = tr + x, fro + x
            apb = abs(tc.a[k - 1] + tc.b[k - 1])  # the coupling of block k - 1 with block k, twice
            fro += 2 * apb * float(torch_norm(t[:, None] * Ws[k - 1]))
        last = float(rows2[-1].sum())  # ||W_L||_F^2 bounds ||W_L^T W_L||_F and its trace
        self.tr_h, self.fro_h = tr + last, fro + last
        ab1 = abs(tc.a[0] * tc.b[0])
        self.in_abs = 2 * ab1 * float((T[0] * rows2[0]).sum())
        self.gc = _gamma(2 * (sum(self.n) + 2))
        self.ga = _gamma(2 * (max(max(W.shape) for W in Ws) + 5))

    def delta(self, rho: float) -> float:
        """The shift that covers the rounding at this rho (twice the a priori bound)."""
        tr = self.tr_h + self.n[0] * rho + self.in_abs
        fro = self.fro_h + math.sqrt(self.n[0]) * rho + self.in_abs
        return 2 * (self.gc * tr / (1 - self.gc) + self.ga * fro) + 1e-300

    def margin(self, fro2: float, rho: float) -> float:
        """The rounding bound a posteriori, from the computed factor's ||R||_F^2."""
        fro = self.fro_h + math.sqrt(self.n[0]) * rho + self.in_abs
        return (self.gc * fro2 + self.ga * fro) * (1 + 1e-9)

    def diag_block(self, k: int):
        """N_kk for a hidden block k (1..K)."""
        import torch
        tc, T = self.tc, self.T
        t = T[k - 1]
        if k == self.K:
            W = tc.Ws[-1]
            return torch.diag(2 * t) - W.T @ W
        D = torch.diag(2 * t)
        ab = tc.a[k] * tc.b[k]
        if ab:
            W = tc.Ws[k]
            D = D + (2 * ab) * ((W.T * T[k]) @ W)
        return D

    def input_block(self):
        """N_00 without rho (None when it is zero)."""
        tc = self.tc
        ab = tc.a[0] * tc.b[0]
        if not ab:
            return None
        W = tc.Ws[0]
        return (2 * ab) * ((W.T * self.T[0]) @ W)

    def coupling_T(self, k: int):
        """N_{k,k+1}^T (n_{k+1} x n_k): -(a + b) T_{k+1} W_k."""
        tc = self.tc
        return -(tc.a[k] + tc.b[k]) * (self.T[k][:, None] * tc.Ws[k])

    def factor_hidden(self, delta: float):
        """Factor the hidden blocks of N - delta I from the output backwards; returns
        (X_0, sum of the squared Frobenius norms of the factor's blocks so far), with
        X_0^T X_0 = N_01 S_1^{-1} N_10.  RepairError if a block is not positive definite."""
        import torch
        fro2 = 0.0
        S = self.diag_block(self.K)
        for k in range(self.K, 0, -1):
            S.diagonal().sub_(delta)
            R = cholesky(S)
            if R is None:
                raise RepairError("the multipliers leave the hidden-layer block of the LMI indefinite: "
                                  f"no rho makes M(rho, T) <= 0 (block {k} of {self.K})")
            X = torch.linalg.solve_triangular(R, self.coupling_T(k - 1), upper=False)
            fro2 += float((R * R).sum()) + float((X * X).sum())
            if k == 1:
                return X, fro2
            S = self.diag_block(k - 1) - X.T @ X


def torch_norm(t):
    import torch
    return torch.linalg.vector_norm(t.reshape(-1))


def _certify_blocks(tc: Chain, T: list, rho_hint: float | None) -> tuple[float, dict]:
    import torch
    B = _Blocks(tc, T)
    n0 = B.n[0]
    N00 = B.input_block()
    delta, passes = B.delta(1.05 * max(rho_hint or 0.0, 0.0)), 0
    while True:
        passes += 1
        X0, fro2 = B.factor_hidden(delta)
        # the input block's Schur complement: rho must exceed lambda_max(X_0^T X_0 - N_00)
        if N00 is None and X0.shape[0] < n0:
            lam = top_eig_estimate(X0 @ X0.T)  # the same nonzero spectrum, smaller
        else:
            lam = top_eig_estimate(X0.T @ X0 - (N00 if N00 is not None else 0))
        rho_s = max(lam, 0.0)
        need = B.delta(rho_s * (1 + 1e-6) + 1e-300)
        if delta >= need or passes == 3:
            break
        delta = 2 * need  # the input block's rounding is larger than guessed: factor again
    rho = (rho_s + delta) * (1 + 1e-12) + 1e-300
    eye = torch.eye(n0, dtype=X0.dtype, device=X0.device)
    for tries in range(1, 40):
        S0 = (rho - delta) * eye - X0.T @ X0
        if N00 is not None:
            S0 = S0 + N00
        R0 = cholesky(S0)
        if R0 is not None:
            total = fro2 + float((R0 * R0).sum())
            margin = B.margin(total, rho)
            if margin <= delta:
                break
        rho = rho * (1 + 1e-9 * 4 ** tries) + 1e-12 * 4 ** tries
    else:
        raise RepairError(f"no certified rho found (the input block did not factorise at rho {rho:.6g})")
    value = math.nextafter(math.sqrt(rho), math.inf)
    return value, {"rho_schur": rho_s, "rho_certified": rho, "lmi_shift": delta, "lmi_margin": margin,
                   "checks": tries, "factorisations": passes}
