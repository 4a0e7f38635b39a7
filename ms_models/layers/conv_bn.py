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
    """torch-equivalent ``BatchNorm2d``; ``fold`` lets :class:`ConvBn` fold it into the conv before it in eval mode
    (cleared by :func:`~ms_models.layers.layerwise_mode`)."""
    bn = nn.BatchNorm2d(ch, eps=eps, momentum=BN_MOMENTUM)
    bn.fold = True
    return bn


def conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0,
            eps: float = 1e-5) -> nn.SequentialCell:
    """``SequentialCell(Conv2d(bias), BatchNorm2d)``: names ``0.weight, 0.bias, 1.gamma, ...``."""
    return nn.SequentialCell([conv2d(in_ch, out_ch, kernel, stride, padding), batch_norm(out_ch, eps)])


def trunc_normal(shape: tuple, std: float = 0.02) -> Tensor:
    return initializer(TruncatedNormal(sigma=std), shape, ms.float32)


class ConvBn(nn.SequentialCell):
    """Bias-free conv -> BatchNorm2d [-> activation], one or more times in a row, as a ``SequentialCell``
    (children ``0, 1, ...``, or named by an ``OrderedDict``): the twin of ``torch_ref.layers.ConvBn``, with the
    same children and parameter names.

    MindSpore-specific, in GRAPH_MODE only: in eval mode each BN is folded into its conv's weight and a bias (one
    conv and a BiasAdd instead of a conv and a BatchNorm, the 2.8.0 CPU BatchNorm being slower than torch's;
    the fold rounds differently from BN after the conv by a few float32 ulps), and depthwise convs run the
    compiled CPU kernel of :mod:`ms_models.layers.kernels` on float32 inputs (the fold as its weight and bias).
    PyNative runs MindSpore's native ops (op by op, the fold's small ops and the custom op's per-call shape
    inference cost more than they save), and so does :func:`~ms_models.layers.layerwise_mode`, which clears
    the BNs' ``fold`` and the convs' ``fused`` kernels. Training mode always runs real BatchNorm.
    """

    def __init__(self, *layers):
        super().__init__(*layers)
        cells, groups, i = self.cell_list, [], 0
        while i < len(cells):
            conv, bn = cells[i], cells[i + 1] if i + 1 < len(cells) else None
            if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d) or conv.has_bias:
                raise ValueError(f"ConvBn needs bias-free Conv2d -> BatchNorm2d pairs, got {type(conv).__name__} "
                                 f"-> {type(bn).__name__} at child {i}")
            act = cells[i + 2] if i + 2 < len(cells) and not isinstance(cells[i + 2], nn.Conv2d) else None
            if conv.group == conv.in_channels == conv.out_channels > 1 and conv.dilation == (1, 1):
                ConvBn.with_kernel(conv)
            groups.append((i, act is not None))
            i += 2 if act is None else 3
        self._groups = tuple(groups)       # (index of the conv, whether an activation follows the BN)

    def construct(self, x):
        # the children are looked up at each call (not held since __init__), so a child replaced through
        # ``self[i] = cell`` (the train parity's kink wrappers) is the one that runs
        for i, has_act in self._groups:
            x = ConvBn.forward_pair(self.cell_list[i], self.cell_list[i + 1], x)
            if has_act:
                x = self.cell_list[i + 2](x)
        return x

    @staticmethod
    def with_kernel(conv: nn.Conv2d) -> nn.Conv2d:
        """Attach the compiled CPU depthwise kernel to a bias-free depthwise ``nn.Conv2d`` (``group == in == out
        channels``, no dilation) for :meth:`forward_pair`: ``conv.fused`` (no bias) and ``conv.fused_bias`` (the
        eval-mode BN fold), or None where the kernel cannot be used or the geometry is not covered
        (``pad_mode='same'`` only at stride 1: TensorFlow's split, the extra row/column at the bottom/right).
        The conv itself and its parameters are unchanged. :class:`ConvBn` does this for its own depthwise
        convs; a conv + BN pair kept as two named attributes of another cell (official keys) calls it."""
        (kh, kw), stride = conv.kernel_size, conv.stride
        if not conv.group == conv.in_channels == conv.out_channels or conv.dilation != (1, 1) or conv.has_bias:
            raise ValueError(f"ConvBn.with_kernel needs a bias-free depthwise conv without dilation, got "
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

    @staticmethod
    def forward_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d, x):
        """``bn(conv(x))`` for a bias-free conv, on the paths of :class:`ConvBn` (the eval-mode fold, the kernel
        attached by :meth:`with_kernel`); for conv + BN pairs kept as two named attributes of another cell."""
        kernel = getattr(conv, "fused", None)
        if kernel is not None and graph_compiled() and x.dtype == ms.float32:
            if not _folds(bn):
                return bn(kernel(x, conv.weight, conv.fused_cfg))
            scale, shift = _bn_fold(bn)
            return conv.fused_bias(x, conv.weight * scale.reshape((-1, 1, 1, 1)), shift, conv.fused_cfg)
        if not _folds(bn):
            return bn(conv(x))
        scale, shift = _bn_fold(bn)
        return ops.bias_add(conv.conv2d(x, conv.weight * scale.reshape((-1, 1, 1, 1))), shift)


def _folds(bn: nn.BatchNorm2d) -> bool:
    """Whether :meth:`ConvBn.forward_pair` folds ``bn``: eval mode, in GRAPH_MODE, not under
    :func:`~ms_models.layers.layerwise_mode` (which clears ``bn.fold``)."""
    return not bn.training and bn.fold and graph_compiled()


def _bn_fold(bn: nn.BatchNorm2d):
    """Eval-mode BN as ``y * scale + shift``: ``scale = gamma / sqrt(var + eps)``, ``shift = beta - mean * scale``."""
    scale = bn.gamma / ops.sqrt(bn.moving_variance + bn.eps)
    return scale, bn.beta - bn.moving_mean * scale


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

