"""Adder layer of AdderNet (arXiv 1912.13200; official huawei-noah/AdderNet ``adder.py``), MindSpore; mirrors
``torch_ref/layers/adder.py`` name for name (the post-training quantization pipeline of arXiv 2212.10200 that
drives its quantized form is :mod:`ms_models.methods.quantize`).

The core op is a Cell with a custom ``bprop`` (GRAPH_MODE and PyNative) on the im2col matrix: forward
``-cdist_1(W_col, X)``; weight gradient ``g @ X - W * sum g`` rescaled by ``sqrt(numel(W)) * 0.2 /
max(||.||_2, 1e-12)``; input gradient ``sum_o clamp(W - X, -1, 1) * g``. On the CPU backend the forward and
the input gradient run the compiled kernels of ``native/csrc/adder.cc`` as AOT custom ops (float32); where
they cannot be built (:mod:`native`) or on other backends, ``ops.cdist`` and an input gradient
accumulated over chunks of output channels (bounded memory in PyNative; a GRAPH_MODE graph keeps the chunks'
intermediates alive, see ``docs/addernet.md``). The im2col (``ops.unfold``) around it is differentiated by
MindSpore.
"""
from __future__ import annotations

import functools
import math


import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, initializer

import native
from specs.addernet import GRAD_ETA, LayerQuant, check_bits


CHUNK_BYTES = 64 << 20      # working-memory bound of the fallback input-gradient intermediate (as torch_ref)
_SRC = native.source("adder")


@functools.lru_cache(maxsize=None)
def kernel_library() -> str | None:
    """Path of the compiled adder kernels on the CPU backend, or None (fallback to composed ops)."""
    return native.build(_SRC) if ms.get_context("device_target") == "CPU" else None


class AdderCore(nn.Cell):
    """(O, K) weights, (N, K, L) im2col columns -> (N, O, L) negative L1 distances, AdderNet gradients."""

    def __init__(self):
        super().__init__()
        lib = kernel_library()
        self.kernel = lib is not None
        if self.kernel:
            self.forward_op = ops.Custom(f"{lib}:AdderForward", out_shape=lambda x, w: (x[0], w[0], x[2]),
                                         out_dtype=lambda x, w: x, func_type="aot")
            self.grad_input_op = ops.Custom(f"{lib}:AdderGradInput", out_shape=lambda x, w, g: x,
                                            out_dtype=lambda x, w, g: x, func_type="aot")

    def construct(self, w_col, cols):
        if self.kernel and cols.dtype == ms.float32:
            return self.forward_op(cols, w_col)
        n, k, length = cols.shape
        rows = cols.transpose(0, 2, 1).reshape(n * length, k)
        return -ops.cdist(w_col, rows, 1.0).reshape(w_col.shape[0], n, length).transpose(1, 0, 2)

    def bprop(self, w_col, cols, out, dout):
        n, k, length = cols.shape
        o = w_col.shape[0]
        grad_w = ops.matmul(dout.transpose(1, 0, 2).reshape(o, -1), cols.transpose(0, 2, 1).reshape(-1, k)) \
            - w_col * dout.sum(axis=(0, 2)).expand_dims(1)
        norm = ops.sqrt((grad_w * grad_w).sum())
        grad_w = grad_w * (math.sqrt(o * k) * GRAD_ETA / ops.maximum(norm, 1e-12))
        if self.kernel and cols.dtype == ms.float32:
            return grad_w, self.grad_input_op(cols, w_col, dout)
        step = max(1, min(o, CHUNK_BYTES // max(1, k * n * length * 4)))
        grad_x = ops.zeros_like(cols)
        for start in range(0, o, step):
            diff = ops.clamp(w_col[start:start + step].reshape(-1, 1, k, 1) - cols.expand_dims(0), -1.0, 1.0)
            grad_x = grad_x + (diff * dout[:, start:start + step].transpose(1, 0, 2).expand_dims(2)).sum(axis=0)
        return grad_w, grad_x


def adder2d(core: AdderCore, x, weight, stride: int, padding: int):
    """Functional adder convolution through ``core`` (official ``adder2d_function``)."""
    n, _, h, w = x.shape
    o, _, kh, kw = weight.shape
    ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    cols = ops.unfold(x, (kh, kw), 1, padding, stride)                          # (N, K, L)
    return core(weight.reshape(o, -1), cols).reshape(n, o, ho, wo)


class Adder2d(nn.Cell):
    """Adder convolution, weight ``adder`` ~ N(0, 1), optional bias ``b``; quantized form as in torch_ref:
    ``scale_para`` (G,), ``group`` (O,), ``qbias`` (O,), non-trainable."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = False, quant_groups: int = 0, quant_bits: int = 8):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding = stride, padding
        self.adder = Parameter(initializer(Normal(sigma=1.0), (out_channels, in_channels, kernel_size, kernel_size),
                                           ms.float32), name="adder")
        self.bias = bias
        if bias:
            self.b = Parameter(initializer("uniform", (out_channels,), ms.float32), name="b")
        self.core = AdderCore()
        self.quant_groups, self.quant_bits = 0, quant_bits
        if quant_groups:
            self._add_quant_params(quant_groups, quant_bits)

    def _add_quant_params(self, groups: int, bits: int) -> None:
        self.quant_groups, self.quant_bits = groups, check_bits(bits)
        self.scale_para = Parameter(Tensor(np.ones(groups, np.float32)), name="scale_para", requires_grad=False)
        self.group = Parameter(Tensor(np.zeros(self.out_channels, np.int64)), name="group", requires_grad=False)
        self.qbias = Parameter(Tensor(np.zeros(self.out_channels, np.float32)), name="qbias", requires_grad=False)

    def set_quant(self, q: LayerQuant, bits: int) -> None:
        """Switch to quantized inference (call ``refresh_graph`` on the model afterwards, as :func:`quantize` does)."""
        if self.quant_groups != len(q.scale):
            self._add_quant_params(len(q.scale), bits)
        self.quant_bits = check_bits(bits)
        self.adder.set_data(Tensor(q.weight))
        self.scale_para.set_data(Tensor(q.scale))
        self.group.set_data(Tensor(q.group))
        self.qbias.set_data(Tensor(q.bias))

    def _quantized(self, x):
        # every group's input against all weights, then the group's channels selected by a mask: static
        # shapes for GRAPH_MODE (the group sizes are data); G x the adder work of torch_ref's gather, same values
        m = float(2 ** self.quant_bits - 1)
        out = None
        for g in range(self.quant_groups):
            s = self.scale_para[g]
            a = ops.clamp(ops.round(x * m / s), 0.0, m) * s / m
            y = adder2d(self.core, a, self.adder, self.stride, self.padding)
            y = y * (self.group == g).astype(y.dtype).reshape(1, -1, 1, 1)
            out = y if out is None else out + y
        return out + self.qbias.reshape(1, -1, 1, 1)

    def construct(self, x):
        if self.quant_groups:
            out = self._quantized(x)
        else:
            out = adder2d(self.core, x, self.adder, self.stride, self.padding)
        if self.bias:
            out = out + self.b.reshape(1, -1, 1, 1)
        return out


def adder_layers(model: nn.Cell) -> dict[str, Adder2d]:
    return {n: c for n, c in model.cells_and_names() if isinstance(c, Adder2d)}
