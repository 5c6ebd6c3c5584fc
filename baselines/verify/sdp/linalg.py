"""Dense linear algebra on the verifier's device (float64, CPU or CUDA): Cholesky factors,
eigenvalues (on CUDA, small eigenproblems go to LAPACK on the host where that was faster
for their size on first use: :func:`route`, timed once per size), the largest eigenvalue
and norm estimates.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import scipy.linalg
import torch


from .chain import RepairError


def cholesky(Y):
    """The Cholesky factor of a symmetric torch matrix, or None where it is not positive
    definite in floating point: the factorisation's info, and a finite diagonal (a NaN
    anywhere in Y reaches a later pivot; not every backend reports a NaN pivot)."""
    C, info = torch.linalg.cholesky_ex(Y)
    if bool((info != 0) | ~torch.isfinite(C.diagonal()).all()):  # one synchronisation
        return None
    return C


def host_eigh(S):
    """LAPACK's (scipy's) eigendecomposition of a symmetric torch matrix, as tensors on
    its device."""
    lam, V = scipy.linalg.eigh(S.detach().cpu().numpy(), driver="evd")  # torch's driver (syevd)
    return torch.as_tensor(lam, device=S.device), torch.as_tensor(V, device=S.device)


@functools.cache
def _host_eigvalsh():

    class HostEigvalsh(torch.autograd.Function):
        """Eigenvalues by :func:`host_eigh`, differentiable: d lambda_i / dS = v_i v_i^T."""

        @staticmethod
        def forward(ctx, S):
            lam, V = host_eigh(S)
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
    changed between versions: pytorch#10172, pytorch#183806); larger ones stay on the
    device (docs/performance.md: ECLipsE at width 1,024 on a GPU against the CPU)."""
    if not S.is_cuda or S.shape[0] > HOST_EIGS_ROWS:
        return False
    return route(S, vectors, lambda: torch.cuda.synchronize(S.device))


def route(S, vectors: bool, sync: Callable) -> bool:
    """:func:`on_host`'s choice for S's size, device and ``vectors``, timed on the first
    finite matrix (the host's way, :func:`host_eigh`, against torch's eigh or eigvalsh on
    S's device; ``sync`` closes each timed call) and kept for the process."""
    key = (S.shape[0], str(S.device), vectors)
    if key not in _EIGS_ON_HOST:
        if not bool(torch.isfinite(S).all()):  # decide on a matrix both can take
            return False
        D = S.detach()
        here = torch.linalg.eigh if vectors else torch.linalg.eigvalsh
        _EIGS_ON_HOST[key] = faster(lambda: host_eigh(D), lambda: here(D), sync)
    return _EIGS_ON_HOST[key]


def eigs(G, vectors: bool = False):
    """The eigenvalues (ascending; and eigenvectors with ``vectors``) of the symmetric part
    of G, differentiable (values only); None where G is not finite.  Small ones on CUDA
    may go to the host (:func:`on_host`: whichever was faster), with one transfer and no
    finiteness test on the device.  cuSOLVER fails on
    some rank-deficient matrices that LAPACK takes ("failed to converge ... error code
    6": pytorch#94772; on an H200, ECLipsE and NATIVE stopped on the Gram matrix of a
    784-1,024 layer, rank 784); there LAPACK on the host answers instead."""
    S = (G + G.T) / 2
    if on_host(S, vectors):
        try:
            return host_eigh(S) if vectors else _host_eigvalsh().apply(S)
        except (np.linalg.LinAlgError, ValueError):  # ValueError: scipy's test, not finite
            return None
    if not bool(torch.isfinite(S).all()):
        return None
    try:
        return torch.linalg.eigh(S) if vectors else torch.linalg.eigvalsh(S)
    except torch.linalg.LinAlgError:
        try:
            return host_eigh(S) if vectors else _host_eigvalsh().apply(S)
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


def torch_norm(t):
    return torch.linalg.vector_norm(t.reshape(-1))
