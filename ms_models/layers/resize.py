"""Resizing NCHW tensors as PyTorch's ``F.interpolate`` does (mirrors ``torch_ref/layers/resize.py``)."""
from __future__ import annotations

import mindspore as ms
from mindspore import Tensor, ops

from specs.pooling import cubic_weights, linear_taps, nearest_indices

from .modes import graph_compiled


def _take(x, index: tuple, axis: int):
    return ops.gather(x, Tensor(index, ms.int32), axis)


def _resize_axis(x, size: int, axis: int, mode: str):
    if x.shape[axis] == size:
        return x
    if mode == "nearest":
        return _take(x, nearest_indices(x.shape[axis], size), axis)
    shape = (size, 1) if axis == 2 else (size,)
    if mode == "bicubic":
        return _bicubic_axis(x, size, axis, shape)
    if mode != "bilinear":
        raise ValueError(f"resize mode must be 'nearest', 'bilinear' or 'bicubic', not {mode!r}")
    lo, hi, w = linear_taps(x.shape[axis], size)
    w = Tensor(w, ms.float32).reshape(shape).astype(x.dtype)
    return _take(x, lo, axis) * (1.0 - w) + _take(x, hi, axis) * w


def _bicubic_axis(x, size: int, axis: int, shape: tuple):
    """PyTorch's bicubic resize (``align_corners=False``, taps clamped to the border) along ``axis``: source
    positions and weights computed in the graph in ``x``'s dtype (a constant per output would unroll thousands
    of elements into the graph for PViG's relative-position resize)."""
    n_in = x.shape[axis]
    src = (ops.arange(size).astype(x.dtype) + 0.5) * (n_in / size) - 0.5
    i0 = ops.floor(src)
    base = i0.astype(ms.int32)
    out = 0
    for k, w in enumerate(cubic_weights(src - i0)):
        out = out + ops.gather(x, ops.clip(base + (k - 1), 0, n_in - 1), axis) * w.reshape(shape)
    return out


def resize(x, size: tuple[int, int], mode: str = "nearest"):
    """Resize an NCHW tensor to ``size`` (static shapes) like ``torch_ref.layers.resize``: legacy ``nearest``
    (source ``floor(i * in / out)``), ``bilinear`` with ``align_corners=True`` or ``bicubic`` with
    ``align_corners=False`` (A = -0.75, taps clamped to the border), as explicit gathers along H
    then W with index (and weight) constants computed from the static shapes, so GRAPH_MODE and the ONNX
    exporter see plain ``Gather``/arithmetic ops."""
    return _resize_axis(_resize_axis(x, size[0], 2, mode), size[1], 3, mode)


def mul_resized(x, gate, mode: str = "nearest"):
    """``x * resize(gate, x's spatial size, mode)``. A nearest upsample by whole factors (every ``floor(i * in /
    out)`` is ``floor(i / f)``) is, in GRAPH_MODE, a broadcast multiply over a 6-D view instead: no gathered
    copy of the gate (the gathers were a large share of GhostNetV2's graph-mode CPU time; in PyNative the
    reshapes' shape syncs cost more)."""
    n, c, hx, wx = x.shape
    h, w = gate.shape[2], gate.shape[3]
    if graph_compiled() and mode == "nearest" and hx % h == 0 and wx % w == 0:
        return (x.reshape(n, c, h, hx // h, w, wx // w) * gate.reshape(n, c, h, 1, w, 1)).reshape(n, c, hx, wx)
    return x * resize(gate, (hx, wx), mode)

