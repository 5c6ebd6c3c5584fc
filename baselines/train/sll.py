"""``sll``: SDP-based Lipschitz layers (Araujo et al. 2023), residual blocks
h(x) = x - 2 W^T T^-1 relu(W x + b) with T = diag(t), t_i = sum_j |W W^T|_ij q_j / q_i
(q = exp of a learnt vector), which make h 1-Lipschitz in l2: T >= W W^T, so with
A = T^-1/2 W the Jacobian I - 2 A^T D A (0 <= D <= I) is symmetric with eigenvalues in
[-1, 1].  The conv block uses the stride-1 zero-padded conv P and its transpose, with
W W^T's row sums replaced by those of the kernel's self-correlation over every offset,
which bound those of the circular conv's C C^T >= P P^T (zero padding and the selection
of outputs only shrink it).

The network from an architecture (activation relu only):

- conv entries [C, k, s, p]: an AOL conv (``baselines.train.lipschitz.AOLScaled``) from
  the previous channels to C (kernel k, stride s, padding p), then an SLL conv block on C
  channels (C inner channels, kernel k odd, padding k // 2, stride 1);
- ``hidden: [h_1, ..., h_n]``: an AOL Linear to width h_1, then n SLL blocks of width
  h_1, block i with h_i inner units;
- an AOL Linear to the outputs.

Export.  A block is exported in its residual form, a :class:`bench.modules.Sum` of the
identity and Linear W (bias b) -> ReLU -> Linear -2 W^T T^-1 (for a conv block: the conv K
and the transposed conv written as a conv with the flipped, transposed kernel, stride 1,
padding k // 2, k odd), so the exported network computes exactly what was trained and the
trivial bound sees 1 + Lip(f) per block (the sum rule, ``methods.trivial.branch_bound``).
The blocks are 1-Lipschitz (``lower`` and exact enumeration confirm it in the tests), but
the trivial bound is not 1: 1 + ||2 W^T T^-1|| ||W|| is the obstruction this family poses
to it.  Written here: orthogonium's SLL layers would need the same export, which depends on
their internals; deel-torchlip has no SLL.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from bench.api import Budget, Trainer, UserError
from bench.data import Dataset
from bench.modules import Sum
from bench.network import conv_entries
from bench.registry import register

from baselines.train.lipschitz import (PARAMS, AOLScaled, centred, check_schedule, finish_metrics, fit_constrained,
                                       plain, renormalise)


def _sll_t(M: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """t_i = sum_j |M_ij...| q_j / q_i (M: (m, m) or (m, m, a, b)), q = exp(log q)."""
    A = M.abs().sum(tuple(range(2, M.dim()))) if M.dim() > 2 else M.abs()
    e = torch.exp(q)
    return (A * e[None, :]).sum(1) / e


class SLLDense(nn.Module):
    """x -> x - 2 W^T T^-1 relu(W x + b) on vectors of width ``width`` (W: inner x width)."""

    def __init__(self, width: int, inner: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(inner, width))
        nn.init.xavier_normal_(self.weight)
        self.bias = nn.Parameter(torch.empty(inner).uniform_(-width ** -0.5, width ** -0.5)) if bias else None
        self.q = nn.Parameter(torch.zeros(inner))

    def t(self) -> torch.Tensor:
        return _sll_t(self.weight @ self.weight.T, self.q)

    def forward(self, x):
        h = F.relu(F.linear(x, self.weight, self.bias)) / self.t()
        return x - 2 * F.linear(h, self.weight.T)

    def residual(self) -> Sum:
        """The block as it computes: Sum(identity, Linear W -> ReLU -> Linear -2 W^T T^-1)."""
        with torch.no_grad():
            W, t = self.weight.detach(), self.t().detach()
            m, w = W.shape
            up = nn.Linear(w, m, bias=self.bias is not None)
            up.weight.copy_(W)
            if self.bias is not None:
                up.bias.copy_(self.bias.detach())
            down = nn.Linear(m, w, bias=False)
            down.weight.copy_(-2 * W.T / t[None, :])
        return Sum(nn.Sequential(), nn.Sequential(up, nn.ReLU(), down))


class SLLConv(nn.Module):
    """x -> x - 2 P^T T^-1 relu(P x + b), P the zero-padded stride-1 conv with kernel K
    (inner x channels x k x k, k odd, padding k // 2), T one t per inner channel."""

    def __init__(self, channels: int, inner: int, kernel: int, bias: bool = True):
        super().__init__()
        if kernel % 2 == 0:
            raise UserError(f"sll: a conv block needs an odd kernel (its export writes the identity as a centre "
                            f"tap), got {kernel}")
        self.pad = kernel // 2
        self.weight = nn.Parameter(torch.empty(inner, channels, kernel, kernel))
        nn.init.xavier_normal_(self.weight)
        fan = channels * kernel * kernel
        self.bias = nn.Parameter(torch.empty(inner).uniform_(-fan ** -0.5, fan ** -0.5)) if bias else None
        self.q = nn.Parameter(torch.zeros(inner))

    def t(self) -> torch.Tensor:
        k = self.weight.shape[-1]
        return _sll_t(F.conv2d(self.weight, self.weight, padding=k - 1), self.q)   # (m, m, 2k-1, 2k-1)

    def forward(self, x):
        h = F.relu(F.conv2d(x, self.weight, self.bias, padding=self.pad)) / self.t()[None, :, None, None]
        return x - 2 * F.conv_transpose2d(h, self.weight, padding=self.pad)

    def residual(self) -> Sum:
        """The block as it computes: Sum(identity, conv K -> ReLU -> the transposed conv as a
        conv with the flipped, transposed kernel divided by t; stride 1, padding k // 2)."""
        with torch.no_grad():
            K, t = self.weight.detach(), self.t().detach()
            m, c, k, _ = K.shape
            up = nn.Conv2d(c, m, k, padding=self.pad, bias=self.bias is not None)
            up.weight.copy_(K)
            if self.bias is not None:
                up.bias.copy_(self.bias.detach())
            down = nn.Conv2d(m, c, k, padding=self.pad, bias=False)
            down.weight.copy_(-2 * (K / t[:, None, None, None]).transpose(0, 1).flip(-1, -2))
        return Sum(nn.Sequential(), nn.Sequential(up, nn.ReLU(), down))


def _aol(layer: nn.Module) -> nn.Module:
    from torch.nn.utils import parametrize
    parametrize.register_parametrization(layer, "weight", AOLScaled(layer if isinstance(layer, nn.Conv2d) else None))
    return layer


def build_sll(arch: dict, input_shape: tuple, n_out: int) -> nn.Sequential:
    """The SLL network of ``arch`` (see the module doc)."""
    from bench.network import check_arch
    check_arch(arch)
    if "preset" in arch:
        raise UserError(f"sll: builds its residual blocks from conv and hidden layers; the {arch['preset']} preset "
                        f"is not one of those")
    if arch.get("activation", "relu") != "relu" or arch.get("activation_params"):
        raise UserError(f"sll: SLL blocks use relu (the export writes the identity as relu(x) - relu(-x)); "
                        f"got activation {arch.get('activation')!r}")
    bias = arch.get("bias", True)
    layers: list[nn.Module] = []
    shape = tuple(input_shape)
    convs = conv_entries(arch)
    if convs:
        if len(shape) != 3:
            raise UserError(f"sll: conv layers need an image input (channels, height, width), got {shape}")
        c, h, w = shape
        for e in convs:
            k, s, p = e["kernel"], e["stride"], e["padding"]
            layers += [_aol(nn.Conv2d(c, e["channels"], k, stride=s, padding=p, bias=bias)),
                       SLLConv(e["channels"], e["channels"], k, bias)]
            c, h, w = e["channels"], (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        layers.append(nn.Flatten())
        d = c * h * w
    else:
        if len(shape) > 1:
            layers.append(nn.Flatten())
        d = int(torch.tensor(shape).prod())
    hidden = list(arch.get("hidden", []))
    if hidden:
        layers.append(_aol(nn.Linear(d, hidden[0], bias=bias)))
        layers += [SLLDense(hidden[0], h_i, bias) for h_i in hidden]
        d = hidden[0]
    layers.append(_aol(nn.Linear(d, n_out, bias=bias)))
    return nn.Sequential(*layers)


def export_sll(net: nn.Sequential, input_shape: tuple) -> tuple[nn.Sequential, float]:
    """The plain Sequential: AOL layers materialised (and renormalised where rounding left
    them above 1), SLL blocks in their residual form."""
    out, aol = [], []
    for m in net.cpu().eval():
        if isinstance(m, (SLLDense, SLLConv)):
            out.append(m.residual())
        elif isinstance(m, (nn.Linear, nn.Conv2d)):
            aol.append(plain(m))
            out.append(aol[-1])
        else:
            out.append(m)
    out = nn.Sequential(*out).eval()
    return out, renormalise(out, input_shape, only=aol)


@register
class SLL(Trainer):
    name = "sll"
    description = "SDP-based Lipschitz layers (Araujo et al. 2023), exported as residual blocks"
    version = "2"
    quick_params = {"epochs": 2}
    params = dict(PARAMS)
    check_params = classmethod(check_schedule)

    def train(self, dataset: Dataset, arch: dict, seed: int, budget: Budget):
        torch.manual_seed(seed)
        shape = dataset.input_shape
        net = centred(build_sll(arch, shape, dataset.n_classes), dataset, self.opts)
        metrics = fit_constrained(net, dataset, budget, self.opts, seed)
        out, rescale = export_sll(net, shape)
        metrics.update(finish_metrics(out, dataset), export_rescale=rescale)
        return out, metrics
