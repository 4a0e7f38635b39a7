"""Layers and helpers shared by the MindSpore models (mirrors ``torch_ref/layers.py``).

Every MindSpore layer here is built with explicit arguments, never defaults: MindSpore's ``Conv2d`` pads
``'same'`` without bias by default, its BN momentum is ``1 - torch's`` (0.9 here = torch's 0.1).
"""
from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import TruncatedNormal, Uniform, initializer
from mindspore.ops.primitive import constexpr

from specs.pooling import adaptive_bins, linear_taps, nearest_indices

from .kernels import depthwise_conv, kernel_cfg

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


def with_depthwise_kernel(conv: nn.Conv2d) -> nn.Conv2d:
    """Attach the compiled CPU depthwise kernel of :mod:`ms_models.kernels` to a depthwise ``nn.Conv2d``
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


@constexpr
def _graph_compiled() -> bool:
    """True while GRAPH_MODE compiles (a compile-time constant there), False in PyNative."""
    return ms.get_context("mode") == ms.GRAPH_MODE


def _folds(bn: nn.BatchNorm2d) -> bool:
    """Whether :func:`conv_bn_apply` folds ``bn``: eval mode, in GRAPH_MODE (PyNative runs op by op, and the
    fold's eight small ops cost more there than one BatchNorm), not under :func:`layerwise_mode`."""
    return not bn.training and bn.fold and _graph_compiled()


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
    if conv.fused is None or not _graph_compiled() or x.dtype != ms.float32:
        return conv_bn_apply(conv, bn, x)
    if not _folds(bn):
        return bn(conv.fused(x, conv.weight, conv.fused_cfg))
    scale, shift = _bn_fold(bn)
    return conv.fused_bias(x, conv.weight * scale.reshape((-1, 1, 1, 1)), shift, conv.fused_cfg)


def torch_init_dense(in_ch: int, out_ch: int) -> nn.Dense:
    """``nn.Dense`` (same weight layout as ``torch.nn.Linear``) with PyTorch's default initialisation."""
    bound = 1.0 / math.sqrt(in_ch)
    return nn.Dense(in_ch, out_ch, weight_init=Uniform(bound), bias_init=Uniform(bound), has_bias=True)


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


def spatial_mean(x):
    """``x.mean((2, 3), keepdim=True)`` of an NCHW tensor as a product with a ``1 / HW`` column: the 2.8.0 CPU
    ReduceMean is ~10x slower than a MatMul over the same data (a tenth of GhostNetV2's time at batch 16).
    GRAPH_MODE only: PyNative takes the plain mean (no shape sync, no constant built per call)."""
    if not _graph_compiled():
        return x.mean(axis=(2, 3), keep_dims=True)
    n, c, h, w = x.shape
    col = ops.full((h * w, 1), 1.0 / (h * w), dtype=x.dtype)
    return ops.matmul(x.reshape(n * c, h * w), col).reshape(n, c, 1, 1)


class GlobalAvgPool(nn.Cell):
    """``AdaptiveAvgPool2d(1)`` as :func:`spatial_mean` (exports to ONNX, unlike MindSpore's AdaptiveAvgPool2D)."""

    def construct(self, x):
        return spatial_mean(x)


class Identity(nn.Cell):
    def construct(self, x):
        return x


class DropPath(nn.Cell):
    """Stochastic depth per sample, as ``torch_ref.layers.DropPath`` (timm semantics): in training each sample's
    branch is zeroed with probability ``p`` (uniform draw < 1 - p, one per sample) and the kept samples are
    scaled by ``1 / (1 - p)``; identity in eval and at ``p = 0``. No parameters."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)
        self.keep = 1.0 - self.p

    def construct(self, x):
        if self.p == 0.0 or not self.training:
            return x
        mask = (ops.rand((x.shape[0],) + (1,) * (x.ndim - 1)) < self.keep).astype(x.dtype)
        return x * (mask / self.keep if self.keep > 0.0 else mask)


def hard_sigmoid(x):
    """``relu6(x + 3) / 6`` (GhostNet's SE gate; the official MindSpore port multiplies by 0.16666667)."""
    return ops.relu6(x + 3.0) / 6.0


def _take(x, index: tuple, axis: int):
    return ops.gather(x, Tensor(index, ms.int32), axis)


def _resize_axis(x, size: int, axis: int, mode: str):
    if x.shape[axis] == size:
        return x
    if mode == "nearest":
        return _take(x, nearest_indices(x.shape[axis], size), axis)
    lo, hi, w = linear_taps(x.shape[axis], size)
    shape = (size, 1) if axis == 2 else (size,)
    w = Tensor(w, ms.float32).reshape(shape).astype(x.dtype)
    return _take(x, lo, axis) * (1.0 - w) + _take(x, hi, axis) * w


def resize(x, size: tuple[int, int], mode: str = "nearest"):
    """Resize an NCHW tensor to ``size`` (static shapes) like ``torch_ref.layers.resize``: legacy ``nearest``
    (source ``floor(i * in / out)``) or ``bilinear`` with ``align_corners=True``, as explicit gathers along H
    then W with index (and weight) constants computed from the static shapes, so GRAPH_MODE and the ONNX
    exporter see plain ``Gather``/arithmetic ops."""
    return _resize_axis(_resize_axis(x, size[0], 2, mode), size[1], 3, mode)


def mul_resized(x, gate, mode: str = "nearest"):
    """``x * resize(gate, x's spatial size, mode)``. A nearest upsample by whole factors (every ``floor(i * in /
    out)`` is ``floor(i / f)``) is, in GRAPH_MODE, a broadcast multiply over a 6-D view instead: no gathered
    copy of the gate (the gathers were a sixth of GhostNetV2's graph-mode CPU time at batch 16; in PyNative the
    reshapes' shape syncs cost more)."""
    n, c, hx, wx = x.shape
    h, w = gate.shape[2], gate.shape[3]
    if _graph_compiled() and mode == "nearest" and hx % h == 0 and wx % w == 0:
        return (x.reshape(n, c, h, hx // h, w, wx // w) * gate.reshape(n, c, h, 1, w, 1)).reshape(n, c, hx, wx)
    return x * resize(gate, (hx, wx), mode)


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


def refresh_graph(cell: nn.Cell) -> nn.Cell:
    """Make a structural change (deploy switch, new head) visible in GRAPH_MODE.

    MindSpore caches a compiled graph per cell object and creation time and does not look at Python
    attributes or child cells again (measured on 2.8.0: a swapped child still ran the old graph). This drops
    the cached graphs of ``cell`` and its children and renames parameters to their structural names.
    """
    from mindspore.common.api import _cell_graph_executor
    stamp = time.time_ns()
    for _, sub in cell.cells_and_names():
        if sub.compile_cache:
            _cell_graph_executor.del_net_res(sub, sub.compile_cache)
            sub.compile_cache.clear()
        object.__setattr__(sub, "_create_time", stamp)
        stamp += 1
    for name, param in cell.parameters_and_names():
        param.name = name
    return cell


def scalar_param(value: float, name: str) -> Parameter:
    """A non-trainable float32 scalar that GRAPH_MODE reads at run time (a Python float is frozen at compile)."""
    return Parameter(Tensor(value, ms.float32), name=name, requires_grad=False)


def leaky_relu(x, slope):
    """``torch.nn.functional.leaky_relu`` for a tensor slope in [0, 1]: ``max(x, slope * x)``.

    Bit-identical to ``x if x > 0 else slope * x`` for slopes in [0, 1] (VanillaNet's deep-training range)
    and 5x faster than ``ops.select`` on the 2.8.0 CPU backend.
    """
    return ops.maximum(x, x * slope)


class AdaptiveMaxPool2d(nn.Cell):
    """PyTorch's adaptive max pooling (overlapping non-divisible windows, e.g. 75 -> 38).

    Runs MindSpore's native kernel; under :func:`export_mode` it takes the same windows as static slices,
    rows then columns, because MindSpore's ONNX exporter cannot write ``AdaptiveMaxPool2D``.
    """

    def __init__(self, output_size: tuple[int, int]):
        super().__init__()
        self.output_size = tuple(output_size)
        self.pool = nn.AdaptiveMaxPool2d(self.output_size)
        self.for_export = False

    def construct(self, x):
        if not self.for_export:
            return self.pool(x)
        rows = ()
        for a, b in adaptive_bins(x.shape[2], self.output_size[0]):
            rows = rows + (x[:, :, a:b, :].max(axis=2, keepdims=True),)
        x = ops.concat(rows, 2)
        cols = ()
        for a, b in adaptive_bins(x.shape[3], self.output_size[1]):
            cols = cols + (x[:, :, :, a:b].max(axis=3, keepdims=True),)
        return ops.concat(cols, 3)


@contextlib.contextmanager
def layerwise_mode(model: nn.Cell, export: bool = False):
    """Inside the block ``model`` runs cell by cell on MindSpore's native ops: compiled custom kernels are
    replaced by native ops and conv + BN pairs are not folded (:func:`conv_bn_apply`), so every conv and BN
    cell runs and its forward hooks fire (the parity tool compares layer by layer this way). ``export``
    also takes adaptive pools as static slices: only ops MindSpore's ONNX exporter can write
    (:func:`export_mode`). The compiled graph is refreshed on entry and on exit."""
    cells = [cell for _, cell in model.cells_and_names()]
    kernels = [(cell, cell.fused) for cell in cells if getattr(cell, "fused", None) is not None]
    folds = [cell for cell in cells if getattr(cell, "fold", False)]
    pools = [cell for cell in cells if export and hasattr(cell, "for_export")]
    for cell, _ in kernels:
        cell.fused = None
    for cell in folds:
        cell.fold = False
    for cell in pools:
        cell.for_export = True
    refresh_graph(model)
    try:
        yield model
    finally:
        for cell, op in kernels:
            cell.fused = op
        for cell in folds:
            cell.fold = True
        for cell in pools:
            cell.for_export = False
        refresh_graph(model)


def export_mode(model: nn.Cell):
    """:func:`layerwise_mode` for MindSpore's ONNX exporter: native ops only, adaptive pools as static slices."""
    return layerwise_mode(model, export=True)
