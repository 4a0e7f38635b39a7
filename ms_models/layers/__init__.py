"""Layers shared by the MindSpore families, one module per concern (mirrors ``torch_ref/layers``):

- ``conv_bn``: torch-equivalent convs and BN, the conv + BN pair with its eval-mode BN fold and compiled kernel
- ``linear``: dense layers, ``Identity``;  ``activation``: shared activations (exact GELU with an export form)
- ``drop``: stochastic depth
- ``pool``: global average / adaptive max / padded max pooling;  ``resize``: nearest, bilinear and bicubic resizing
- ``binary``: binarisation layers (AdaBin, BiMLP);  ``adder``: AdderNet's adder layer
- ``kernels``: the compiled CPU kernels of :mod:`native` as AOT custom ops
- ``modes``: graph refresh, layer-by-layer and export modes (MindSpore only)
- ``attention``: multi-head self-attention;  ``mlp``: the transformer MLP;  ``patch_embed``: patch embedding;
  ``pos_embed``: class token and learned position embedding (the transformer backbones)
"""
from .activation import GELU, hard_sigmoid, leaky_relu
from .attention import Attention
from .conv_bn import (BN_MOMENTUM, ConvBn, batch_norm, bn_arrays, conv2d, conv_arrays, conv_bn, fused_conv,
                      torch_init_conv2d, trunc_normal)
from .drop import DropPath
from .linear import Identity, dense, torch_init_dense
from .mlp import Mlp
from .modes import export_mode, graph_compiled, layerwise_mode, refresh_graph, scalar_param
from .patch_embed import PatchEmbed
from .pool import AdaptiveMaxPool2d, GlobalAvgPool, MaxPool2d, spatial_mean
from .resize import mul_resized, resize

__all__ = ["hard_sigmoid", "leaky_relu", "BN_MOMENTUM", "ConvBn", "batch_norm", "bn_arrays", "conv2d", "conv_arrays",
           "conv_bn", "fused_conv", "torch_init_conv2d", "trunc_normal", "DropPath", "Identity", "torch_init_dense",
           "export_mode", "graph_compiled", "layerwise_mode", "refresh_graph", "scalar_param", "AdaptiveMaxPool2d",
           "GlobalAvgPool", "MaxPool2d", "spatial_mean", "mul_resized", "resize", "Attention", "Mlp", "PatchEmbed",
           "dense", "GELU"]
