"""The trivial bound: the product of the layerwise Lipschitz constants.

``TB(f) = prod_l Lip(layer_l)`` with ``Lip(x -> Wx + b) = ||W||_{p->p}``: the largest
singular value for p = 2 (an exact SVD in float64, never a power iteration, which
underestimates), the largest absolute column sum for p = 1 and the largest absolute row
sum for p = inf.  Activations contribute the constant the network walk reports.  For a
class pair (i, j) the last affine layer is replaced by the row ``c^T W_L`` with
``c = e_i - e_j``, whose Lipschitz constant from the p-norm is the dual norm
``||W_L^T c||_{p*}``.  Conv layers use exact row/column sums of |W| for p in {1, inf}
(no unrolling) and for p = 2 the largest norm over frequencies of the kernel's 2-D DFT on
the padded grid (:func:`conv_spectral_upper`: no unrolling, sound for any padding,
stride, dilation and groups), or the exact norm of the unrolled matrix where that is
smaller and the matrix small.  A BatchNorm is a diagonal map of its own, whose
norm is max |scale| for every p; an average pooling uses its exact row / column sums and,
for p = 2, sqrt(||W||_1 ||W||_inf) (see :func:`operator_norm`).  The spectral norm is the square root of the top
eigenvalue of the smaller Gram matrix, with a proven rounding margin (see
:func:`spectral_norm_upper`).

Soundness and floating point: every computed norm is inflated by a bound on its
rounding error (``(1 + c * n * eps)`` with n the summation length / matrix dimension,
well above the backward-error bounds of summation and of LAPACK's SVD), and so is the
product.  The bound is global, hence also valid for a box domain.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import torch

from bench.api import Bound, Budget, Query, Verifier, dual, p_name
from bench.network import Affine, Branch, Diagonal, Net, Pool, Scaling, Translation
from bench.registry import register

EPS = float(np.finfo(np.float64).eps)


def _inflate(x: float, n: int) -> float:
    """x enlarged by a safe margin for the rounding error of an n-term computation."""
    return float(x) * (1.0 + 16.0 * max(n, 1) * EPS) + 1e-300


def vector_norm(v: np.ndarray, p: float) -> float:
    v = np.abs(np.asarray(v, dtype=np.float64))
    if math.isinf(p):
        return float(v.max())
    if p == 1:
        return _inflate(v.sum(), v.size)
    return _inflate(math.sqrt(float(np.dot(v, v))), v.size)


def operator_norm(layer: Affine, p: float) -> float:
    """A sound upper bound on ||W||_{p->p} for one affine layer.

    p = 1 and inf: the largest absolute column / row sum (exact, no unrolling).  p = 2:
    a BatchNorm (:class:`~bench.network.Diagonal`, W = diag(s)) has the exact norm
    max_i |s_i| for every p, inflated for the rounding of s = gamma / sqrt(var + eps);
    an average pooling (:class:`~bench.network.Pool`) the bound
    ||W||_2 <= sqrt(||W||_1 ||W||_inf) (Hoelder / the Schur test), which is exact for
    non-overlapping windows (rows orthogonal, of norm 1 / sqrt(k); columns summing to
    1 / k); any other layer the exact spectral norm of its dense matrix."""
    if isinstance(layer, Diagonal):
        return _inflate(float(np.abs(layer.scale()).max()), 4)
    if p == 1:
        return _inflate(layer.abs_col_sums().max(), layer.out_dim)
    if math.isinf(p):
        return _inflate(layer.abs_row_sums().max(), layer.in_dim)
    if isinstance(layer, Pool):
        return _inflate(math.sqrt(operator_norm(layer, 1.0) * operator_norm(layer, math.inf)), 2)
    if layer.is_conv:
        fft = conv_spectral_upper(layer)
        if layer.in_dim * layer.out_dim <= DENSE_CONV_ENTRIES:   # small: the exact norm may be tighter
            return min(fft, spectral_norm_upper(layer.matrix()))
        return fft
    return spectral_norm_upper(layer.matrix())


#: a conv layer whose unrolled matrix has at most this many entries also gets its exact
#: spectral norm (the smaller of the two sound bounds is used)
DENSE_CONV_ENTRIES = 4_000_000


def full_kernel(module, weight=None):
    """A Conv2d's weight (or ``weight`` in its place, e.g. inside a parametrization of
    it) as a dense kernel (c_out, c_in, kh, kw), float64: groups become a
    block-diagonal kernel and dilation zeros between the taps, so that the conv is a plain
    cross-correlation with it (then strided).  Differentiable in the weight."""
    W = (module.weight if weight is None else weight).double()
    g = module.groups
    co, ci_g, kh, kw = W.shape
    if g > 1:
        full = W.new_zeros(co, ci_g * g, kh, kw)
        per = co // g
        for k in range(g):
            full[k * per:(k + 1) * per, k * ci_g:(k + 1) * ci_g] = W[k * per:(k + 1) * per]
        W = full
    dh, dw = module.dilation
    if dh > 1 or dw > 1:
        D = W.new_zeros(W.shape[0], W.shape[1], (kh - 1) * dh + 1, (kw - 1) * dw + 1)
        D[:, :, ::dh, ::dw] = W
        W = D
    return W if isinstance(W, torch.Tensor) else torch.as_tensor(W)


def fft_grid(module, in_shape) -> tuple[int, int]:
    """The periodic grid on which the conv is a compression of a circular convolution:
    the zero-padded input's size, and at least the (dilated) kernel's."""
    _, h, w = in_shape
    ph, pw = module.padding if not isinstance(module.padding, str) else _same_padding(module)
    kh = (module.kernel_size[0] - 1) * module.dilation[0] + 1
    kw = (module.kernel_size[1] - 1) * module.dilation[1] + 1
    return max(h + 2 * ph, kh), max(w + 2 * pw, kw)


def _same_padding(module):
    if module.padding == "valid":
        return 0, 0
    return tuple(((k - 1) * d + 1) // 2 for k, d in zip(module.kernel_size, module.dilation))


def phase_kernel(module, in_shape, weight=None):
    """The conv as a stride-1 correlation of its input's s_h x s_w phases: the kernel
    (c_out, c_in s_h s_w, ceil(kh/s_h), ceil(kw/s_w)) and the phase grid (m_h, m_w)."""
    K = full_kernel(module, weight)
    sh, sw = module.stride
    nh, nw = fft_grid(module, in_shape)
    co, ci, kh, kw = K.shape
    kh2, kw2 = -(-kh // sh) * sh, -(-kw // sw) * sw
    if (kh2, kw2) != (kh, kw):
        Kp = K.new_zeros(co, ci, kh2, kw2)
        Kp[:, :, :kh, :kw] = K
        K = Kp
    K = K.reshape(co, ci, kh2 // sh, sh, kw2 // sw, sw).permute(0, 1, 3, 5, 2, 4).reshape(co, ci * sh * sw,
                                                                                          kh2 // sh, kw2 // sw)
    return K, (max(-(-nh // sh), kh2 // sh), max(-(-nw // sw), kw2 // sw))


def conv_spectral_fft(module, in_shape, weight=None):
    """max over the phase grid's frequencies of ||K^(w)||_2, the c_out x (c_in s_h s_w)
    matrices of the phase kernel's 2-D DFT (float64 torch; differentiable in the weight,
    no rounding margin); ``weight`` in place of the module's."""
    K, (mh, mw) = phase_kernel(module, in_shape, weight)
    with torch.no_grad():
        lam, _fro2 = _phase_grams(K.detach(), mh, mw)
        norms = lam.clamp_min(0).sqrt()
    if not K.requires_grad:
        return norms.max()
    # for training, the max's (sub)gradient is that of its frequency alone: one small matrix,
    # rebuilt differentiably, instead of backpropagating through every frequency's SVD
    u, v = divmod(int(norms.argmax()), mw // 2 + 1)
    a = torch.arange(K.shape[2], dtype=torch.float64, device=K.device)
    b = torch.arange(K.shape[3], dtype=torch.float64, device=K.device)
    phase = torch.exp(-2j * math.pi * (a[:, None] * u / mh + b[None, :] * v / mw))
    return torch.linalg.matrix_norm((K.to(phase.dtype) * phase).sum((-2, -1)), ord=2)


def _phase_grams(K, mh: int, mw: int):
    """Per frequency of the phase grid: the top eigenvalue of the smaller Gram matrix of the
    phase kernel's DFT K^(w) (its squared spectral norm; ~3x faster than an SVD) and
    ||K^(w)||_F^2.  Only the frequencies (u, v) with v <= m_w / 2, in the order of
    ``rfft2``: the kernel is real, so K^(-w) is the conjugate of K^(w), with the same
    singular values."""
    F = torch.fft.rfft2(K, s=(mh, mw))                     # (c_out, c_in s^2, mh, mw // 2 + 1)
    M = F.permute(2, 3, 0, 1).reshape(-1, K.shape[0], K.shape[1])
    G = M @ M.mH if M.shape[1] <= M.shape[2] else M.mH @ M
    return torch.linalg.eigvalsh(G)[:, -1], (M.abs() ** 2).sum(dim=(1, 2))


def gram_bound(lam: float, fro2: float, n: int, k: int) -> float:
    """A proven upper bound on sigma_max^2 from lambda_hat, the computed top eigenvalue of
    the computed n x n Gram matrix of a matrix W with inner dimension k: the computed
    Gram matrix is G + E1 with ||E1||_2 <= gamma_k ||W||_F^2, and the computed eigenvalue
    is exact for a matrix within c n eps ||G||_2 of it (backward stability), so
    sigma_max^2 <= lambda_hat (1 + 16 n eps) + 2 k eps ||W||_F^2 (1 + 1e-6)."""
    return max(lam, 0.0) * (1.0 + 16.0 * n * EPS) + 2.0 * k * EPS * fro2 * (1.0 + 1e-6)


def conv_spectral_upper(layer: Affine) -> float:
    """A sound upper bound on ||conv||_{2->2} without unrolling.

    Zero padding embeds the input into the padded grid (an isometry).  A stride s splits
    that grid into its s_h s_w phases x_rt[u, v] = x[s_h u + r, s_w v + t] (a permutation,
    after padding the grid with zeros to a multiple of s) and the conv into a stride-1
    correlation of the stacked phases with the phase kernel K_rt[a, b] = K[s_h a + r,
    s_w b + t] (:func:`phase_kernel`).  On the phase grid every output PyTorch computes is
    an entry of the circular correlation, since its window lies inside the grid.  So the
    conv is P C E with E an embedding and P a selection (both of norm <= 1) and C the
    circular correlation, which the 2-D DFT block-diagonalises: ||C||_2 = max_w
    ||K^(w)||_2 over the phase grid's frequencies (K^ the c_out x c_in s_h s_w DFT of the
    phase kernel).  Without the phases a stride would only select outputs of the
    stride-1 conv, a looser bound (1.37x instead of 1.0x on a stride-2 layer here).  Rounding: each DFT entry is within 8 log2(N) eps sum|k_oi| of the exact one
    (N grid points; a generous bound for a float64 FFT), so the exact matrix's norm is at
    most the computed one plus the Frobenius norm of that error; the computed singular
    value's rounding (computed from the Gram matrix) is :func:`gram_bound`'s."""
    m = layer.module
    with torch.no_grad():
        K, (nh, nw) = phase_kernel(m, layer.in_shape)
        lam, fro2 = _phase_grams(K, nh, nw)
        n, k = min(K.shape[0], K.shape[1]), max(K.shape[0], K.shape[1])
        top = math.sqrt(max(gram_bound(float(a), float(f), n, k) for a, f in zip(lam.tolist(), fro2.tolist())))
        gamma = 8.0 * math.log2(max(nh * nw, 2)) * EPS
        err = gamma * float(torch.linalg.vector_norm(K.abs().sum(dim=(2, 3))))
    return _inflate(top + err, 1)


def spectral_norm_upper(W: np.ndarray) -> float:
    """A proven upper bound on the largest singular value of W (float64).

    Computed as the largest eigenvalue of the smaller Gram matrix G = W W^T (or W^T W),
    which LAPACK's symmetric solver gives about 4x faster than an SVD, with its rounding
    accounted for by :func:`gram_bound`."""
    W = np.asarray(W, dtype=np.float64)
    if not np.all(np.isfinite(W)):
        raise ValueError("weight matrix has non-finite entries")
    m, k = W.shape
    if m > k:
        W, (m, k) = W.T, (k, m)
    G = W @ W.T
    lam = float(scipy.linalg.eigvalsh(G, check_finite=False)[-1])
    fro2 = float(np.einsum("ij,ij->", W, W))
    return _inflate(math.sqrt(gram_bound(lam, fro2, m, k)), 1)


def pair_row(layer: Affine, target: tuple[int, int]) -> np.ndarray:
    """W_L^T (e_i - e_j): the gradient of the margin f_i - f_j with respect to the
    last affine layer's input."""
    i, j = target
    W = layer.matrix()
    return W[i] - W[j]


@register
class Trivial(Verifier):
    name = "trivial"
    kind = "upper"
    description = "product of layerwise operator norms (exact SVD / row and column sums); sum rule where it branches"
    graphs = True

    def run(self, net: Net, query: Query, budget: Budget) -> Bound:
        p = query.p
        layers = list(net.layers)
        factors: list[float] = []
        per_layer: list[dict] = []
        pair_folded = False
        if query.is_pair and isinstance(layers[-1], Affine):
            last = layers.pop()
            row = pair_row(last, query.target)
            v = vector_norm(row, dual(p))
            per_layer.append({"layer": last.index, "type": "pair-row", "value": v})
            factors.append(v)
            pair_folded = True
        factors.extend(chain_factors(layers, p, per_layer))
        if query.is_pair and not pair_folded:
            # c^T f with f ending in an activation: |c^T (f(x)-f(y))| <= ||c||_{p*} ||f(x)-f(y)||_p
            factors.append(vector_norm(np.array([1.0, -1.0]), dual(p)))
        value = _inflate(math.prod(factors), len(factors))
        return Bound(value, "upper", "ok",
                     stats={"layers": per_layer, "p": p_name(p), "global": query.domain == "global"})

    def pair_bounds(self, net: Net, p: float) -> np.ndarray:
        """The bound of every class pair at once, (C, C): the same values as one run per
        pair (the shared product of the other layers is computed once)."""
        last = net.layers[-1]
        if not isinstance(last, Affine):   # |c^T (f(x) - f(y))| <= ||c||_{p*} ||f(x) - f(y)||_p, as in run
            full = chain_factors(net.layers, p) + [vector_norm(np.array([1.0, -1.0]), dual(p))]
            C = net.out_dim
            return np.where(np.eye(C, dtype=bool), 0.0, _inflate(math.prod(full), len(full)))
        rest = chain_factors(net.layers[:-1], p)
        W = last.matrix()
        C = W.shape[0]
        K = np.zeros((C, C))
        for i in range(C):
            for j in range(C):
                if i != j:
                    K[i, j] = _inflate(vector_norm(W[i] - W[j], dual(p)) * math.prod(rest), len(rest) + 1)
        return K


def chain_bound(layers: list, p: float, per_layer: list | None = None) -> float:
    """A sound bound on the p -> p Lipschitz constant of a chain of walked layers (the
    empty chain, the identity: 1): the product of :func:`chain_factors`, inflated for
    its rounding."""
    factors = chain_factors(layers, p, per_layer)
    return _inflate(math.prod(factors), len(factors)) if factors else 1.0


def chain_factors(layers: list, p: float, per_layer: list | None = None) -> list[float]:
    """Each layer's sound bound on its p -> p Lipschitz constant (a branching layer's by
    :func:`branch_bound`), each appended to ``per_layer`` when given."""
    factors = []
    for l in layers:
        if isinstance(l, Affine):
            v, kind = operator_norm(l, p), type(l.module).__name__
        elif isinstance(l, Branch):
            v, kind = branch_bound(l, p, per_layer), l.kind
        else:
            v, kind = l.lipschitz[p], l.name
        if per_layer is not None:
            per_layer.append({"layer": l.index, "type": kind, "value": v})
        factors.append(v)
    return factors


def branch_bound(layer: Branch, p: float, per_layer: list | None = None) -> float:
    """A sound bound where the network branches: :func:`branch_rule` on the branches'
    bounds, inflated for its rounding."""
    L = [chain_bound(b, p, per_layer) for b in layer.branches]
    return _inflate(branch_rule(layer.kind, layer.weights, L, p), 2 * len(L))


def branch_rule(kind: str, weights, L: list, p: float):
    """Where the network branches into f_1, ..., f_k, with L_i a bound on Lip(f_i) (floats,
    or tensors for training): a sum sum_i w_i f_i(x) has Lipschitz constant at most
    sum_i |w_i| L_i (the triangle inequality), so a residual block x + f(x) at most
    1 + Lip(f); a concatenation (f_1(x), ..., f_k(x)) at most (sum_i L_i^p)^(1/p), since
    ||(d_1, ..., d_k)||_p^p = sum_i ||d_i||_p^p (max_i L_i for p = inf)."""
    if kind == "sum":
        return sum(abs(w) * v for w, v in zip(weights, L, strict=True))
    if math.isinf(p):
        return max(L)
    return sum(v ** p for v in L) ** (1.0 / p)


# ---- the differentiable trivial bound (for training) --------------------------------

def spectral_norm_torch(W):
    """||W||_2 of a dense matrix, differentiable: the square root of the top eigenvalue of
    the smaller Gram matrix (~3x faster than an SVD; no rounding margin)."""
    G = W @ W.T if W.shape[0] <= W.shape[1] else W.T @ W
    return torch.linalg.eigvalsh(G)[-1].clamp_min(0).sqrt()


class TorchTrivialBound:
    """The trivial bound as a differentiable function of the network's weights.

    Built once for a module (its structure must not change); each call reads the current
    weights.  Values equal the ``trivial`` verifier's (up to its rounding margin, which
    the training penalty does not need; at p = 2 a conv small enough to unroll may get
    the smaller exact norm there, so this form is >= the verifier's); for p = 2 the gradient flows through the top
    singular value of each weight matrix, computed as the square root of the top
    eigenvalue of its smaller Gram matrix.
    Conv layers: row / column sums of |K| via the conv itself for p in {1, inf}
    (:meth:`bench.network.Affine.abs_sums`, exact at the boundary), the DFT bound
    (:func:`conv_spectral_fft`) for p = 2.  Class pairs need a network that ends with a
    Linear."""

    def __init__(self, module, input_shape, p: float):
        from bench.api import parse_p, Unsupported
        from bench.network import walk
        self.p = parse_p(p)
        net = walk(module, input_shape)
        for l in net.opaque:
            raise Unsupported(f"layer {l.index} ({l.name}) is not supported by the trivial bound: the network "
                              f"walk does not know this module")
        self.items = self._items(net.layers)
        last = self.items[-1]
        self.last_is_affine = isinstance(last, Affine) and isinstance(last.module, torch.nn.Linear)

    def _items(self, layers: list) -> list:
        """A walked chain as what each call multiplies: a constant, an affine layer (its
        norm read from the live weight), or a branching layer (kind, weights, branches)."""
        items = []
        for l in layers:
            if isinstance(l, (Pool, Translation, Scaling)):   # no parameters: a constant
                items.append(operator_norm(l, self.p))
            elif isinstance(l, Affine):
                items.append(l)
            elif isinstance(l, Branch):
                items.append((l.kind, l.weights, [self._items(b) for b in l.branches]))
            else:
                items.append(float(l.lipschitz[self.p]))
        return items

    def _norm(self, l: Affine):
        if isinstance(l, Diagonal):   # max |gamma| / sqrt(var + eps), differentiable in gamma
            m = l.module
            g = m.weight.double() if m.weight is not None else torch.ones_like(m.running_var, dtype=torch.float64)
            return (g.abs() / torch.sqrt(m.running_var.double() + m.eps)).max()
        if self.p == 2 and l.is_conv:   # the DFT bound (conv_spectral_upper without its rounding margin)
            return conv_spectral_fft(l.module, l.in_shape)
        if self.p == 2:
            return spectral_norm_torch(l.module.weight.double())
        # p = 1: the largest column sum of |W|, p = inf: the largest row sum (a conv's with its boundary)
        return l.abs_sums("col" if self.p == 1 else "row", l.module.weight).max()

    def _prod(self, items):
        out = 1.0
        for it in items:
            if isinstance(it, tuple):   # branch_bound's rule, differentiable
                kind, weights, branches = it
                out = out * branch_rule(kind, weights, [self._prod(b) for b in branches], self.p)
            else:
                out = out * (it if isinstance(it, float) else self._norm(it))
        return out

    def full(self):
        """TB of the whole output (a 0-dim float64 tensor)."""
        return self._prod(self.items)

    def pairs(self):
        """(C, C) tensor: TB of every margin f_i - f_j (zero on the diagonal)."""
        if not self.last_is_affine:
            from bench.api import Unsupported
            raise Unsupported("class-pair trivial bounds (training form) need a network that ends with a Linear layer")
        W = self.items[-1].module.weight.double()
        D = W[:, None, :] - W[None, :, :]
        q = dual(self.p)
        rows = D.abs().amax(-1) if math.isinf(q) else torch.linalg.vector_norm(D, ord=q, dim=-1)
        return rows * self._prod(self.items[:-1])
