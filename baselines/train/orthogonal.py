"""``orthogonal``: orthogonal layers from orthogonium (MIT): ``OrthoLinear`` for a Linear
and ``AdaptiveOrthoConv2d`` for a Conv2d, i.e. BCOP (Li et al. 2019) combined with RKO
for strided kernels (Boissin et al. 2025), with zero padding.  A kernel that is
orthogonal as a circular convolution on every grid gives a zero-padded conv of l2 norm
<= 1 (an embedding, the circular conv, a selection), so every layer exports as a plain
nn.Linear / nn.Conv2d of norm <= 1; the export checks it with the sound bound and divides
by it where float32 orthogonalisation left 1 + 1e-7 (``export_rescale``).

Tried: orthogonium 0.0.4 works with torch 2.13 on float32 (its normalisers reject
float64).  deel-torchlip 1.0.5 (MIT) was looked at and not used: its spectral layers
normalise by a power-iteration estimate and its convs pad their own way; orthogonium
covers the orthogonal convs.  Optional: ``pip install lipbench[lipnets]``."""
from __future__ import annotations

from torch import nn

from bench.api import Budget, Trainer
from bench.data import Dataset
from bench.network import flat_children
from bench.registry import register

from baselines.train.lipschitz import PARAMS, check_schedule, train_constrained


def _orthogonal(m: nn.Module) -> nn.Module:
    from orthogonium.layers import AdaptiveOrthoConv2d, OrthoLinear
    bias = getattr(m, "bias", None) is not None
    if isinstance(m, nn.Linear):
        return OrthoLinear(m.in_features, m.out_features, bias=bias)
    if isinstance(m, nn.Conv2d):
        return AdaptiveOrthoConv2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride,
                                   padding=m.padding, padding_mode="zeros", bias=bias)
    return m


@register
class Orthogonal(Trainer):
    name = "orthogonal"
    description = "orthogonal Linear and BCOP/RKO convs (orthogonium), exported as plain layers"
    requires = ("orthogonium",)
    install_hint = "pip install orthogonium  (or lipbench[lipnets])"
    quick_params = {"epochs": 2}
    params = dict(PARAMS)
    check_params = classmethod(check_schedule)

    def train(self, dataset: Dataset, arch: dict, seed: int, budget: Budget):
        def constrain(net, shape):
            return nn.Sequential(*[_orthogonal(m) for m in flat_children(net)])
        return train_constrained(self.opts, dataset, arch, seed, budget, constrain)
