"""Compiled CPU kernels used as MindSpore AOT custom ops, with a clean fallback to native ops.

MindSpore 2.8's CPU depthwise convolution is several times slower than PyTorch's (figures:
``docs/kernels.md``). ``native/csrc/dwconv.cc`` implements
``depthwise_conv(act(x), w) (+ b)`` (any kernel, stride and zero padding, ``act`` = relu or identity) and both
gradients; it is compiled with the system C++ compiler on first use into a per-user cache (:mod:`native`)
and loaded through ``ops.Custom(func_type="aot")``.

Used only on the CPU backend with float32 inputs (Ascend and GPU keep MindSpore's native kernels), and
never if ``MS_MODELS_NATIVE_KERNELS=0`` is set, the compiler is missing or the build fails: callers get
``None`` and use native ops. ``tests/layers/test_kernels.py`` checks the kernels against PyTorch and the native path.

``native/csrc/erf.cc``: a vectorised float32 ``erf`` (MindSpore 2.8's CPU Erf is 5-10x slower than PyTorch's),
the core of the exact GELU (:class:`~ms_models.layers.activation.GELU`); its bprop ``2 / sqrt(pi) exp(-x^2)`` is
made of MindSpore ops.
"""
from __future__ import annotations

import functools

import mindspore as ms
import numpy as np
from mindspore import Tensor, ops

import native

_SRC = native.source("dwconv")
_ERF_SRC = native.source("erf")


@functools.lru_cache(maxsize=None)
def library() -> str | None:
    """Path of the compiled kernel library (built by :func:`native.build`); None where it cannot be used."""
    return native.build(_SRC) if ms.get_context("device_target") == "CPU" else None


@functools.lru_cache(maxsize=None)
def _ops(stride: tuple[int, int], padding: tuple[int, int, int, int], has_bias: bool):
    """The forward custom op (output shape from ``stride`` and ``padding``) with its bprop."""
    lib = library()
    grad_input = ops.Custom(f"{lib}:DwConvGradInput", out_shape=lambda x, w, dy, cfg: x,
                            out_dtype=lambda x, w, dy, cfg: x, func_type="aot")
    grad_weight = ops.Custom(f"{lib}:DwConvGradWeight", out_shape=lambda x, dy, w, cfg: w,
                             out_dtype=lambda x, dy, w, cfg: w, func_type="aot")
    (top, bottom, left, right), (sh, sw) = padding, stride

    def out_shape(x, w, *_):
        return [x[0], x[1], (x[2] + top + bottom - w[2]) // sh + 1, (x[3] + left + right - w[3]) // sw + 1]

    if has_bias:
        def bprop(x, w, b, cfg, out, dout):
            return (grad_input(x, w, dout, cfg), grad_weight(x, dout, w, cfg), dout.sum(axis=(0, 2, 3)),
                    ops.zeros_like(cfg))
    else:
        def bprop(x, w, cfg, out, dout):
            return grad_input(x, w, dout, cfg), grad_weight(x, dout, w, cfg), ops.zeros_like(cfg)
    op = ops.Custom(f"{lib}:DwConv", out_shape=out_shape, out_dtype=lambda x, *_: x, func_type="aot", bprop=bprop)
    # PyNative caches inferred shapes per primitive attributes and input shapes: keep the geometries apart
    return op.add_prim_attr("geometry", (*stride, *padding))


def depthwise_conv(stride: int | tuple[int, int] = 1, padding: int | tuple[int, int, int, int] = 0,
                   has_bias: bool = False):
    """The compiled ``depthwise_conv(act(x), w) (+ b)`` for this stride and zero padding (an int, or
    ``(top, bottom, left, right)``) as a differentiable primitive called as ``op(x, w[, b], cfg)`` with
    ``w`` of shape ``(C, 1, KH, KW)`` and ``cfg = kernel_cfg(stride, padding, relu)``; None where the compiled
    kernels cannot be used (callers then run native ops)."""
    if library() is None:
        return None
    return _ops(_pair(stride), _quad(padding), has_bias)


def kernel_cfg(stride: int | tuple[int, int] = 1, padding: int | tuple[int, int, int, int] = 0,
               relu: bool = False) -> Tensor:
    """The int32 ``cfg`` input of :func:`depthwise_conv`: ``(SH, SW, top, left, relu)``."""
    (sh, sw), (top, _, left, _) = _pair(stride), _quad(padding)
    return Tensor(np.array([sh, sw, top, left, int(relu)], np.int32))


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _quad(v) -> tuple[int, int, int, int]:
    return (v,) * 4 if isinstance(v, int) else tuple(v)


@functools.lru_cache(maxsize=None)
def erf():
    """The compiled float32 ``erf`` as a differentiable primitive ``op(x)``; None where the compiled kernels cannot
    be used (callers then run ``ops.erf``)."""
    lib = native.build(_ERF_SRC) if ms.get_context("device_target") == "CPU" else None
    if lib is None:
        return None

    def bprop(x, out, dout):
        return (dout * (1.1283791670955126 * ops.exp(-(x * x))),)      # d erf / dx = 2 / sqrt(pi) exp(-x^2)
    return ops.Custom(f"{lib}:Erf", out_shape=lambda x: x, out_dtype=lambda x: x, func_type="aot", bprop=bprop)
