"""Compiled CPU kernels used as MindSpore AOT custom ops, with a clean fallback to native ops.

MindSpore 2.8's CPU depthwise convolution is 3-20x slower than PyTorch's (measured for VanillaNet's 7x7
activation: 512 channels at 56x56, batch 8: 250 ms vs 62 ms). ``csrc/relu_dwconv.cc`` implements
``depthwise_conv(relu(x), w) (+ b)`` and both gradients; it is compiled with the system C++ compiler on
first use into a per-user cache (:mod:`specs.native`) and loaded through ``ops.Custom(func_type="aot")``.

Used only on the CPU backend with float32 inputs (Ascend and GPU keep MindSpore's native kernels), and
never if ``MS_MODELS_NATIVE_KERNELS=1`` is set, the compiler is missing or the build fails: callers get
``None`` and use native ops. ``tests/test_kernels.py`` checks the kernels against the native path.
"""
from __future__ import annotations

import functools
from pathlib import Path

import mindspore as ms
from mindspore import ops

from specs import native

_SRC = Path(__file__).parent / "csrc" / "relu_dwconv.cc"


@functools.lru_cache(maxsize=None)
def library() -> str | None:
    """Path of the compiled kernel library (built by :func:`specs.native.build`); None where it cannot be used."""
    return native.build(_SRC) if ms.get_context("device_target") == "CPU" else None


def _same(x, *_):
    return x


@functools.lru_cache(maxsize=None)
def relu_dwconv(has_bias: bool):
    """``depthwise_conv_KxK(relu(x), w) (+ b)`` (stride 1, padding K//2) as a differentiable custom op,
    or None where the compiled kernels cannot be used."""
    lib = library()
    if lib is None:
        return None
    grad_input = ops.Custom(f"{lib}:ReluDwConvGradInput", out_shape=_same, out_dtype=_same, func_type="aot")
    grad_weight = ops.Custom(f"{lib}:ReluDwConvGradWeight", out_shape=lambda x, dy, w: w,
                             out_dtype=lambda x, dy, w: w, func_type="aot")

    if has_bias:
        def bprop(x, w, b, out, dout):
            return grad_input(x, w, dout), grad_weight(x, dout, w), dout.sum(axis=(0, 2, 3))
    else:
        def bprop(x, w, out, dout):
            return grad_input(x, w, dout), grad_weight(x, dout, w)
    return ops.Custom(f"{lib}:ReluDwConv", out_shape=_same, out_dtype=_same, func_type="aot", bprop=bprop)

