"""Layers shared by the PyTorch reference families, one module per concern (mirrors ``ms_models/layers``):

- ``conv_bn``: the conv + BN pair and the BN-fold helpers;  ``activation``: shared activations
- ``drop``: stochastic depth;  ``pool``: adaptive max pooling that exports to ONNX
- ``resize``: nearest, bilinear and bicubic resizing
- ``binary``: binarisation layers (AdaBin, BiMLP);  ``adder``: AdderNet's adder layer (compiled kernels of
  :mod:`native` through ctypes)
- ``attention``: multi-head self-attention;  ``mlp``: the transformer MLP;  ``patch_embed``: patch embedding;
  ``pos_embed``: class token and learned position embedding (the transformer backbones)
"""
from .activation import hard_sigmoid
from .attention import Attention
from .conv_bn import ConvBn, bn_arrays, conv_arrays, conv_bn, fused_conv, trunc_normal_init
from .drop import DropPath
from .mlp import Mlp
from .patch_embed import PatchEmbed
from .pool import AdaptiveMaxPool2d
from .resize import resize

__all__ = ["hard_sigmoid", "ConvBn", "bn_arrays", "conv_arrays", "conv_bn", "fused_conv", "trunc_normal_init",
           "DropPath", "AdaptiveMaxPool2d", "resize", "Attention", "Mlp", "PatchEmbed"]
