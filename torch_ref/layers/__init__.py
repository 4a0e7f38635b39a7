"""Layers shared by the PyTorch reference families, one module per concern (mirrors ``ms_models/layers``):

- ``conv_bn``: the conv + BN pair and the BN-fold helpers;  ``activation``: shared activations
- ``drop``: stochastic depth;  ``pool``: adaptive max pooling that exports to ONNX
- ``resize``: nearest, bilinear and bicubic resizing
- ``binary``: binarisation layers (AdaBin, BiMLP);  ``adder``: AdderNet's adder layer (compiled kernels of
  :mod:`native` through ctypes)

Attention, patch embedding and position embedding arrive with the transformer backbones, each in its own module.
"""
from .activation import hard_sigmoid
from .conv_bn import ConvBn, bn_arrays, conv_arrays, conv_bn, fused_conv, trunc_normal_init
from .drop import DropPath
from .pool import AdaptiveMaxPool2d
from .resize import resize

__all__ = ["hard_sigmoid", "ConvBn", "bn_arrays", "conv_arrays", "conv_bn", "fused_conv", "trunc_normal_init",
           "DropPath", "AdaptiveMaxPool2d", "resize"]
