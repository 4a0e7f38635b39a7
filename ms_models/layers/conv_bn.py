"""Convolutions and batch norm with torch's conventions, and the conv + BN pair (mirrors ``torch_ref/layers/conv_bn.py``).

Every MindSpore layer here is built with explicit arguments, never defaults: MindSpore's ``Conv2d`` pads
``'same'`` without bias by default, its BN momentum is ``1 - torch's`` (0.9 here = torch's 0.1).
"""
from __future__ import annotations

import math

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops
from mindspore.common.initializer import TruncatedNormal, Uniform, initializer

from .kernels import depthwise_conv, kernel_cfg
from .modes import graph_compiled


BN_MOMENTUM = 0.9  # == torch momentum 0.1


def conv2d(in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0, bias: bool = True,
           group: int = 1, std: float = 0.02) -> nn.Conv2d:
    """torch-equivalent ``Conv2d`` (zero padding ``padding`` on all sides), weights trunc-normal(std)."""
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, pad_mode="pad", padding=padding, group=group,
                     has_bias=bias, weight_init=TruncatedNormal(sigma=std), bias_init="zeros")


def torch_init_conv2d(in_ch: int, out_ch: int, kernel: int | tuple[int, int], stride: int = 1, padding: int = 0,
                      bias: bool = False, group: int = 1, pad_mode: str = "pad") -> nn.Conv2d:
    """``Conv2d`` with PyTorch's default initialisation (weight and bias ``U(+-1/sqrt(fan_in))``, the bound of
    ``kaiming_uniform_(a=sqrt(5))``); zero padding ``padding`` on all sides, or ``pad_mode='same'``."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    bound = 1.0 / math.sqrt(in_ch // group * kh * kw)
    return nn.Conv2d(in_ch, out_ch, (kh, kw), stride=stride, pad_mode=pad_mode, padding=padding, group=group,
                     has_bias=bias, weight_init=Uniform(bound), bias_init=Uniform(bound) if bias else "zeros")


def batch_norm(ch: int, eps: float = 1e-5) -> nn.BatchNorm2d:
    """torch-equivalent ``BatchNorm2d``; ``fold`` lets :func:`conv_bn_apply` fold it in eval mode (see
    :func:`layerwise_mode`)."""
    bn = nn.BatchNorm2d(ch, eps=eps, momentum=BN_MOMENTUM)
    bn.fold = True
    return bn


def conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0,
            eps: float = 1e-5) -> nn.SequentialCell:
    """``SequentialCell(Conv2d(bias), BatchNorm2d)``: names ``0.weight, 0.bias, 1.gamma, ...``."""
    return nn.SequentialCell([conv2d(in_ch, out_ch, kernel, stride, padding), batch_norm(out_ch, eps)])


def trunc_normal(shape: tuple, std: float = 0.02) -> Tensor:
    return initializer(TruncatedNormal(sigma=std), shape, ms.float32)


def with_depthwise_kernel(conv: nn.Conv2d) -> nn.Conv2d:
    """Attach the compiled CPU depthwise kernel of :mod:`ms_models.layers.kernels` to a depthwise ``nn.Conv2d``
    (``group == in == out channels``) for :func:`depthwise_bn`: ``conv.fused`` (no bias) and
    ``conv.fused_bias`` (the eval-mode BN fold), or None where the kernel cannot be used or the geometry is
    not covered (``pad_mode='same'`` only at stride 1: TensorFlow's split, the extra row/column at the
    bottom/right). The conv itself and its parameters are unchanged."""
    (kh, kw), stride = conv.kernel_size, conv.stride
    if not conv.group == conv.in_channels == conv.out_channels or conv.dilation != (1, 1) or conv.has_bias:
        raise ValueError(f"with_depthwise_kernel needs a bias-free depthwise conv without dilation, got "
                         f"group={conv.group}, {conv.in_channels} -> {conv.out_channels}")
    if conv.pad_mode == "pad":
        padding = conv.padding if isinstance(conv.padding, tuple) else (conv.padding,) * 4
    elif conv.pad_mode == "valid":
        padding = (0, 0, 0, 0)
    elif stride == (1, 1):
        padding = ((kh - 1) // 2, kh // 2, (kw - 1) // 2, kw // 2)
    else:
        padding = None
    conv.fused = None if padding is None else depthwise_conv(stride, padding)
    conv.fused_bias = None if padding is None else depthwise_conv(stride, padding, has_bias=True)
    conv.fused_cfg = kernel_cfg(stride, padding or 0)
    return conv


def _folds(bn: nn.BatchNorm2d) -> bool:
    """Whether :func:`conv_bn_apply` folds ``bn``: eval mode, in GRAPH_MODE (PyNative runs op by op, and the
    fold's eight small ops cost more there than one BatchNorm), not under :func:`layerwise_mode`."""
    return not bn.training and bn.fold and graph_compiled()


def _bn_fold(bn: nn.BatchNorm2d):
    """Eval-mode BN as ``y * scale + shift``: ``scale = gamma / sqrt(var + eps)``, ``shift = beta - mean * scale``."""
    scale = bn.gamma / ops.sqrt(bn.moving_variance + bn.eps)
    return scale, bn.beta - bn.moving_mean * scale


def conv_bn_apply(conv: nn.Conv2d, bn: nn.BatchNorm2d, x):
    """``bn(conv(x))`` for a bias-free conv; in eval mode in GRAPH_MODE the BN is folded into the conv's weight
    and a bias (one conv and a BiasAdd instead of a conv and a BatchNorm, the 2.8.0 CPU BatchNorm being 2-7x
    slower than torch's). Folding rounds differently from BN after the conv by a few float32 ulps; under
    :func:`layerwise_mode` the two cells run as they are."""
    if not _folds(bn):
        return bn(conv(x))
    scale, shift = _bn_fold(bn)
    return ops.bias_add(conv.conv2d(x, conv.weight * scale.reshape((-1, 1, 1, 1))), shift)


def depthwise_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, x):
    """:func:`conv_bn_apply` for a conv prepared by :func:`with_depthwise_kernel`: in GRAPH_MODE the compiled
    kernel on float32 inputs where attached (the eval-mode fold as its weight and bias), MindSpore's native ops
    otherwise (PyNative: the custom op's per-call shape inference and the dtype check's sync cost more than
    the kernel saves) and under :func:`layerwise_mode`."""
    if conv.fused is None or not graph_compiled() or x.dtype != ms.float32:
        return conv_bn_apply(conv, bn, x)
    if not _folds(bn):
        return bn(conv.fused(x, conv.weight, conv.fused_cfg))
    scale, shift = _bn_fold(bn)
    return conv.fused_bias(x, conv.weight * scale.reshape((-1, 1, 1, 1)), shift, conv.fused_cfg)


def bn_arrays(bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """(gamma, beta, moving mean, moving var, eps) as NumPy, the argument tail of ``specs.fusion.fold_bn``."""
    return (bn.gamma.asnumpy(), bn.beta.asnumpy(), bn.moving_mean.asnumpy(), bn.moving_variance.asnumpy(),
            float(bn.eps))


def conv_arrays(conv: nn.Conv2d) -> tuple[np.ndarray, np.ndarray | None]:
    return conv.weight.asnumpy(), None if conv.bias is None else conv.bias.asnumpy()


def fused_conv(conv: nn.Conv2d, weight: np.ndarray, bias: np.ndarray) -> nn.Conv2d:
    """A conv with ``conv``'s geometry, the given weight and a bias."""
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                    pad_mode=conv.pad_mode, padding=conv.padding, group=conv.group, has_bias=True,
                    weight_init=Tensor(weight), bias_init=Tensor(bias))
    return out

