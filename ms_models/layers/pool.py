"""Global average, adaptive max and padded max pooling that run fast and export to ONNX (mirrors
``torch_ref/layers/pool.py``)."""
from __future__ import annotations

from mindspore import nn, ops

from specs.pooling import adaptive_bins

from .modes import graph_compiled


def spatial_mean(x):
    """``x.mean((2, 3), keepdim=True)`` of an NCHW tensor as a product with a ``1 / HW`` column: the 2.8.0 CPU
    ReduceMean is much slower than a MatMul over the same data (figures: ``docs/ghostnetv2.md``).
    GRAPH_MODE only: PyNative takes the plain mean (no shape sync, no constant built per call)."""
    if not graph_compiled():
        return x.mean(axis=(2, 3), keep_dims=True)
    n, c, h, w = x.shape
    col = ops.full((h * w, 1), 1.0 / (h * w), dtype=x.dtype)
    return ops.matmul(x.reshape(n * c, h * w), col).reshape(n, c, 1, 1)


class GlobalAvgPool(nn.Cell):
    """``AdaptiveAvgPool2d(1)`` as :func:`spatial_mean` (exports to ONNX, unlike MindSpore's AdaptiveAvgPool2D)."""

    def construct(self, x):
        return spatial_mean(x)


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



class MaxPool2d(nn.Cell):
    """PyTorch's ``nn.MaxPool2d(kernel_size, stride, padding)`` (implicit -inf padding on all sides).

    Runs MindSpore's padded max pool (``pad_mode='pad'``); under :func:`export_mode` -inf rows and columns
    concatenated around the input and an unpadded pool, because MindSpore's ONNX exporter can write neither the
    padded pool (``MaxPool3DWithArgmax``) nor ``ops.pad`` (``PadV3``).
    """

    def __init__(self, kernel_size: int, stride: int, padding: int):
        super().__init__()
        self.padding = padding
        self.pool = nn.MaxPool2d(kernel_size, stride, pad_mode="pad", padding=padding)
        self.unpadded = nn.MaxPool2d(kernel_size, stride, pad_mode="valid")
        self.for_export = False

    def construct(self, x):
        if not self.for_export:
            return self.pool(x)
        n, c, h, w = x.shape
        p = self.padding
        rows = ops.full((n, c, p, w), float("-inf"), dtype=x.dtype)
        x = ops.concat((rows, x, rows), 2)
        cols = ops.full((n, c, h + 2 * p, p), float("-inf"), dtype=x.dtype)
        return self.unpadded(ops.concat((cols, x, cols), 3))
