"""Layers shared by the MindSpore families, one module per concern (mirrors ``torch_ref/layers``):

- ``conv_bn``: torch-equivalent convs and BN, the conv + BN pair with its eval-mode BN fold and compiled kernel
- ``linear``: dense layers, ``Identity``;  ``activation``: shared activations;  ``drop``: stochastic depth
- ``pool``: global average / adaptive max pooling;  ``resize``: nearest, bilinear and bicubic resizing
- ``binary``: binarisation layers (AdaBin, BiMLP);  ``adder``: AdderNet's adder layer
- ``kernels``: the compiled CPU kernels of :mod:`native` as AOT custom ops
- ``modes``: graph refresh, layer-by-layer and export modes (MindSpore only)

Attention, patch embedding and position embedding arrive with the transformer backbones, each in its own module.
"""
from .activation import hard_sigmoid, leaky_relu
from .conv_bn import (BN_MOMENTUM, ConvBn, batch_norm, bn_arrays, conv2d, conv_arrays, conv_bn, fused_conv,
                      torch_init_conv2d, trunc_normal)
from .drop import DropPath
from .linear import Identity, torch_init_dense
from .modes import export_mode, graph_compiled, layerwise_mode, refresh_graph, scalar_param
from .pool import AdaptiveMaxPool2d, GlobalAvgPool, spatial_mean
from .resize import mul_resized, resize

__all__ = ["hard_sigmoid", "leaky_relu", "BN_MOMENTUM", "ConvBn", "batch_norm", "bn_arrays", "conv2d", "conv_arrays",
           "conv_bn", "fused_conv", "torch_init_conv2d", "trunc_normal", "DropPath", "Identity", "torch_init_dense",
           "export_mode", "graph_compiled", "layerwise_mode", "refresh_graph", "scalar_param", "AdaptiveMaxPool2d",
           "GlobalAvgPool", "spatial_mean", "mul_resized", "resize"]
