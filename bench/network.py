"""A network, as lipbench reads it: the public names of the modules that hold each idea,
in one place for ``from bench.network import ...`` (and for networks saved when they all
lived here: their classes are found by these names).

- :mod:`bench.modules`: lipbench's own parameter-free modules (Shift, Pointwise,
  FirstChannels, ZeroChannelPad, Permute, Reshape; Sum and Concat, where a network branches);
- :mod:`bench.layers`: the layers a network is read into (Affine and its kinds,
  Activation, Opaque, Branch) and :class:`Net`;
- :mod:`bench.walk`: the walk (module -> layers; a table from module type to layer;
  a module whose forward is code is traced: :mod:`bench.graph`);
- :mod:`bench.sources`: :func:`read`, a network from any source (a module, an ONNX file:
  :mod:`bench.onnx_file`, a saved module, package.module:attribute) and input boxes;
- :mod:`bench.archs`: architecture specs and the networks built from them;
- :mod:`bench.netfile`: hashing, size, save and load, ``.npz`` weights.
"""
from .archs import (ARCH_KEYS, CONV_KEYS, CONVNET_SIZES, PRESETS, ArchError, activation_width_factor,  # noqa: F401
                    arch_name, arch_shape, build_net, check_arch, conv_entries)
from .layers import (MAX_DENSE_ENTRIES, Activation, Affine, Branch, Diagonal, Net, Opaque, Pool,  # noqa: F401
                     Scaling, Selection, Translation, all_layers)
from .modules import (Concat, FirstChannels, Permute, Pointwise, Reshape, Shift, Sum,  # noqa: F401
                      ZeroChannelPad)
from .netfile import from_npz, load, net_hash, parameter_count, save  # noqa: F401
from .walk import (AVGPOOLS, BATCHNORMS, MAXPOOLS, READERS, SELECTIONS, flat_children, walk)  # noqa: F401
from .sources import read  # noqa: F401
