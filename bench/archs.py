"""Architecture specs: ``{hidden: [...], conv: [...], activation: NAME, bias: ...}`` or a
preset, checked (:func:`check_arch`), named (:func:`arch_name`, :func:`arch_shape`) and
built into an ``nn.Sequential`` (:func:`build_net`)."""
from __future__ import annotations

import numpy as np
from torch import nn

from . import activations
from .api import UserError
from .modules import FirstChannels, ZeroChannelPad
from .registry import get_activation


def activation_width_factor(m: nn.Module) -> int:
    spec = activations.describe(m)
    return int(spec.out_factor) if spec is not None else 1


#: the keys of an architecture spec and of one conv entry (in the compact list's order)
ARCH_KEYS = ("conv", "hidden", "activation", "activation_params", "bias")
CONV_KEYS = ("channels", "kernel", "stride", "padding")
#: presets (``preset: NAME``): each one's own keys with their defaults; a preset arch takes
#: these, ``activation``, ``activation_params`` and ``bias`` (not ``conv`` or ``hidden``)
PRESETS = {"convnet": {"base_width": 64, "blocks": 5, "layers_per_block": 5, "kernel": 3}}
#: Prach et al.'s names of convnet sizes (5 blocks of 5 layers, kernel 3): base width -> name
CONVNET_SIZES = {16: "XS", 32: "S", 64: "M", 128: "L"}


class ArchError(UserError):
    """A bad architecture spec; ``path`` is where in it (keys and list indices), so that a
    suite can name the line."""

    def __init__(self, msg: str, path: tuple = ()):
        super().__init__(f"architecture: {msg}")
        self.path = path


def _count(v, low: int = 1) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def conv_entries(arch: dict) -> list[dict]:
    """The conv entries of ``arch``, each a mapping with every key of :data:`CONV_KEYS`
    (defaults: kernel 3, stride 1, padding kernel // 2), checked."""
    if "conv" not in arch:
        return []
    conv = arch["conv"]
    if not isinstance(conv, (list, tuple)) or not conv:
        raise ArchError(f"conv must be a non-empty list of conv layers ({{channels: C, kernel: 3, stride: 1, "
                        f"padding: 1}} or [C, kernel, stride, padding]), got {conv!r}", ("conv",))
    out = []
    for i, e in enumerate(conv):
        where = ("conv", i)
        if isinstance(e, (list, tuple)):
            if not 1 <= len(e) <= len(CONV_KEYS):
                raise ArchError(f"conv[{i}]: a compact conv layer is [channels, kernel, stride, padding] (1 to 4 "
                                f"whole numbers), got {list(e)!r}", where)
            e = dict(zip(CONV_KEYS, e))
        elif isinstance(e, dict):
            bad = next((k for k in e if k not in CONV_KEYS), None)
            if bad is not None:
                raise ArchError(f"conv[{i}]: unknown key {bad!r}; valid: {', '.join(CONV_KEYS)}", where + (bad,))
            if "channels" not in e:
                raise ArchError(f"conv[{i}]: missing key 'channels'", where)
        else:
            raise ArchError(f"conv[{i}]: a conv layer is {{channels: C, kernel: 3, stride: 1, padding: 1}} or "
                            f"[C, kernel, stride, padding], got {e!r}", where)
        k = e.get("kernel", 3)
        spec = {"channels": e["channels"], "kernel": k, "stride": e.get("stride", 1),
                "padding": e.get("padding", k // 2 if _count(k) else 0)}
        for key, v in spec.items():
            if not _count(v, 0 if key == "padding" else 1):
                need = "a whole number >= 0" if key == "padding" else "a whole number >= 1"
                raise ArchError(f"conv[{i}]: {key} must be {need}, got {v!r}",
                                where + ((key,) if isinstance(arch["conv"][i], dict) else ()))
        out.append(spec)
    return out


def check_arch(arch: dict) -> None:
    """Check an architecture spec without building it (every key and value; the
    activation and its parameters by making one); a bad one is an :class:`ArchError`."""
    if not isinstance(arch, dict):
        raise ArchError(f"an architecture is a mapping like {{hidden: [64], activation: relu}}, got {arch!r}")
    if "preset" in arch:
        _check_preset(arch)
        return
    bad = next((k for k in arch if k not in ARCH_KEYS), None)
    if bad is not None:
        raise ArchError(f"unknown key {bad!r}; valid: {', '.join(ARCH_KEYS)}", (bad,))
    conv_entries(arch)
    hidden = arch.get("hidden", [])
    if not isinstance(hidden, (list, tuple)) or not all(_count(h) for h in hidden):
        raise ArchError(f"hidden must be a list of positive integers, got {hidden!r}", ("hidden",))
    bias = arch.get("bias", True)
    if not isinstance(bias, bool):
        raise ArchError(f"bias must be true or false, got {bias!r}", ("bias",))
    _activation(arch)


def _check_preset(arch: dict) -> dict:
    """The values of a preset arch's own keys (defaults filled in), every key checked."""
    name = arch["preset"]
    if name not in PRESETS:
        raise ArchError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}", ("preset",))
    own = PRESETS[name]
    valid = ("preset", *own, "activation", "activation_params", "bias")
    bad = next((k for k in arch if k not in valid), None)
    if bad is not None:
        raise ArchError(f"preset {name}: unknown key {bad!r}; valid: {', '.join(valid)}", (bad,))
    vals = {k: arch.get(k, d) for k, d in own.items()}
    for k, v in vals.items():
        if not _count(v):
            raise ArchError(f"preset {name}: {k} must be a whole number >= 1, got {v!r}", (k,))
    if vals["base_width"] % 2:
        raise ArchError(f"preset {name}: base_width must be even (each block keeps half its channels, then "
                        f"PixelUnshuffle quadruples them), got {vals['base_width']}", ("base_width",))
    if vals["kernel"] % 2 == 0:
        raise ArchError(f"preset {name}: kernel must be odd (padding kernel // 2 keeps the size), got "
                        f"{vals['kernel']}", ("kernel",))
    bias = arch.get("bias", True)
    if not isinstance(bias, bool):
        raise ArchError(f"bias must be true or false, got {bias!r}", ("bias",))
    if activation_width_factor(_activation(arch)()) != 1:
        raise ArchError(f"preset {name}: the activation must keep the width (its convs map c channels to c), "
                        f"got {arch.get('activation')!r}", ("activation",))
    return vals


def _build_convnet(arch: dict, input_shape: tuple, n_out: int) -> nn.Sequential:
    """Prach et al.'s ConvNet ("1-Lipschitz layers compared", 2024; their repository's
    ``SimplifiedConvNet``, which they describe as similar to the LipConvnet of SOC), built
    from plain Conv2d (zero padding kernel // 2, stride 1): ZeroChannelPad to the base
    width w, a 1x1 conv + activation; ``blocks`` blocks, block b on c = w 2^b channels
    holding ``layers_per_block`` convs c -> c (kernel ``kernel``, 1 in the last block) each
    followed by the activation, then FirstChannels(c / 2) and PixelUnshuffle(2) (c / 2 * 4
    = 2c channels, half the height and width); AdaptiveMaxPool2d(1); a 1x1 conv head on
    w 2^blocks channels; Flatten; FirstChannels(n_out).  Their ConvNetM is base_width 64,
    5 blocks of 5, kernel 3, MaxMin (their BCOP runs end in a linear layer instead of the
    1x1 conv: on a 1 x 1 input the same map; their convs pad circularly, these with zeros,
    which the walk reads)."""
    vals = _check_preset(arch)
    make = _activation(arch)
    bias = arch.get("bias", True)
    w, nb, per, k = vals["base_width"], vals["blocks"], vals["layers_per_block"], vals["kernel"]
    if len(input_shape) != 3:
        raise ArchError(f"preset convnet needs an image input (channels, height, width); the data's input shape is "
                        f"{tuple(input_shape)}", ("preset",))
    c_in, h, wd = input_shape
    if c_in > w:
        raise ArchError(f"preset convnet: base_width {w} is below the input's {c_in} channels", ("base_width",))
    if h % 2 ** nb or wd % 2 ** nb:
        raise ArchError(f"preset convnet: {nb} blocks halve the {h} x {wd} input {nb} times: height and width must "
                        f"be multiples of {2 ** nb}", ("blocks",))
    if w * 2 ** nb < n_out:
        raise ArchError(f"preset convnet: the head has {w * 2 ** nb} channels, fewer than the {n_out} classes",
                        ("base_width",))
    layers: list[nn.Module] = [ZeroChannelPad(w), nn.Conv2d(w, w, 1, bias=bias), make()]
    c = w
    for b in range(nb):
        kb = k if b < nb - 1 else 1   # the last block's input is 2 x 2 (for a 32 x 32 image): 1x1 convs
        for _ in range(per):
            layers += [nn.Conv2d(c, c, kb, padding=kb // 2, bias=bias), make()]
        layers += [FirstChannels(c // 2), nn.PixelUnshuffle(2)]
        c *= 2
    layers += [nn.AdaptiveMaxPool2d(1), nn.Conv2d(c, c, 1, bias=bias), nn.Flatten(), FirstChannels(n_out)]
    return nn.Sequential(*layers)


def _activation(arch: dict):
    """A factory () -> a new activation module of ``arch``, checked by making one."""
    name = arch.get("activation", "relu")
    if not isinstance(name, str):
        raise ArchError(f"activation must be a name, got {name!r}", ("activation",))
    try:
        act = get_activation(name)
    except UserError as e:
        raise ArchError(str(e), ("activation",)) from None
    params = arch.get("activation_params", {})
    if not isinstance(params, dict):
        raise ArchError(f"activation_params must be a mapping, got {params!r}", ("activation_params",))
    try:
        act(**params)
    except (TypeError, ValueError) as e:
        raise ArchError(f"activation_params {dict(params)!r} of {name}: {e}", ("activation_params",)) from None
    return lambda: act(**params)


def build_net(arch: dict, input_shape: tuple, n_out: int) -> nn.Sequential:
    """A network from an architecture spec ``{conv: [...], hidden: [h1, ...], activation:
    name, activation_params: {...}, bias: bool}`` (every key optional; see
    :func:`conv_entries` for a conv entry).

    Without ``conv``, an MLP: inputs of more than one dimension are flattened first, then
    Linear + activation per hidden width, then the output Linear.  With ``conv`` (the
    input is an image (C, H, W)): Conv2d (zero padding) + activation per conv entry,
    Flatten, Linear + activation per hidden width, the output Linear.  An activation that
    widens (CReLU, SinSplit, SinCos: ``out_factor`` 2) multiplies the next layer's input
    channels or features.  ``bias`` applies to every Conv2d and Linear.

    ``{preset: convnet, base_width: 64, blocks: 5, layers_per_block: 5, kernel: 3,
    activation: maxmin}`` (defaults: these, with activation relu as everywhere) is Prach
    et al.'s ConvNet (:func:`_build_convnet`; these values are their ConvNetM)."""
    check_arch(arch)
    input_shape = tuple(int(s) for s in input_shape)
    if "preset" in arch:
        return _build_convnet(arch, input_shape, n_out)
    make = _activation(arch)
    bias = arch.get("bias", True)
    layers: list[nn.Module] = []
    convs = conv_entries(arch)
    if convs:
        if len(input_shape) != 3:
            raise ArchError(f"conv layers need an image input (channels, height, width); the data's input shape is "
                            f"{input_shape}", ("conv",))
        c, h, w = input_shape
        for i, e in enumerate(convs):
            k, s, pad = e["kernel"], e["stride"], e["padding"]
            h2, w2 = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
            if h2 < 1 or w2 < 1:
                raise ArchError(f"conv[{i}] (kernel {k}, padding {pad}) does not fit its {h} x {w} input",
                                ("conv", i))
            layers.append(nn.Conv2d(c, e["channels"], k, stride=s, padding=pad, bias=bias))
            a = make()
            layers.append(a)
            c, h, w = e["channels"] * activation_width_factor(a), h2, w2
        layers.append(nn.Flatten())
        d = c * h * w
    else:
        if len(input_shape) > 1:
            layers.append(nn.Flatten())
        d = int(np.prod(input_shape))
    for width in arch.get("hidden", []):
        layers.append(nn.Linear(d, width, bias=bias))
        a = make()
        layers.append(a)
        d = width * activation_width_factor(a)
    layers.append(nn.Linear(d, n_out, bias=bias))
    return nn.Sequential(*layers)



def arch_name(arch: dict) -> str:
    """A readable name: ``mlp32-32-relu``, ``conv32x3s1-64x3s2-fc128-relu`` (a padding
    other than kernel // 2 is written ``p0``), ``convnetM64-5x5-maxmin`` (a preset),
    ``-nobias`` without biases: :func:`arch_shape`, the activation, the biases."""
    return f"{arch_shape(arch)}-{arch.get('activation', 'relu')}{'' if arch.get('bias', True) else '-nobias'}"


def arch_shape(arch: dict) -> str:
    """The layers alone: ``mlp32-32``, ``conv32x3s1-64x3s2-fc128``, ``convnetM64-5x5``."""
    if "preset" in arch:   # convnetM64-5x5 (Prach et al.'s size name where theirs), convnet8-2x1k5
        v = {k: arch.get(k, d) for k, d in PRESETS[arch["preset"]].items()}
        size = CONVNET_SIZES.get(v["base_width"], "") if (v["blocks"], v["layers_per_block"], v["kernel"]) == \
            (5, 5, 3) else ""
        k = "" if v["kernel"] == 3 else f"k{v['kernel']}"
        return f"{arch['preset']}{size}{v['base_width']}-{v['blocks']}x{v['layers_per_block']}{k}"
    hidden = "-".join(str(x) for x in arch.get("hidden", []))
    if "conv" not in arch:
        return f"mlp{hidden or 'linear'}"
    convs = "-".join(f"{e['channels']}x{e['kernel']}s{e['stride']}" +
                     (f"p{e['padding']}" if e["padding"] != e["kernel"] // 2 else "") for e in conv_entries(arch))
    return f"conv{convs}{'-fc' + hidden if hidden else ''}"
