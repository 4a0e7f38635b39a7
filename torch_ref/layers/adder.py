"""Adder layer of AdderNet (arXiv 1912.13200; official huawei-noah/AdderNet ``adder.py``), PyTorch
(mirrors ``ms_models/layers/adder.py``; the post-training quantization pipeline of arXiv 2212.10200 that
drives its quantized form is :mod:`torch_ref.methods.quantize`).

``Y[n, o] = -sum_{c,i,j} |X[n, c, s*h+i-p, s*w+j-p] - W[o, c, i, j]|``. The weight is named ``adder`` like
the official code (optional bias ``b``). Differences from the official ``adder2d_function`` (same values):
- the forward distance and the input gradient ``sum_o clamp(W - X, -1, 1) * g`` run in compiled CPU kernels
  (``native/csrc/adder.cc``, through ctypes; float32 CPU tensors) that read the image windows directly (no
  im2col matrix). Where they cannot be built
  (:mod:`native`) the forward is ``torch.cdist(p=1)`` on ``F.unfold``'s matrix and the input gradient
  is accumulated over chunks of output channels whose intermediate stays below :data:`CHUNK_BYTES`; no
  (O, K, L*N) intermediate either way;
- the weight gradient ``sum_l (X - W) * g`` is computed as ``sum_l X g - W * sum_l g``, the first term by
  the convolution weight-gradient kernel (kernel path) or one matmul on the im2col matrix (fallback).
"""
from __future__ import annotations

import ctypes
import functools
import math


import torch
import torch.nn.functional as F
from torch import nn

import native
from specs.addernet import GRAD_ETA, LayerQuant, check_bits

CHUNK_BYTES = 64 << 20      # working-memory bound of the fallback input-gradient intermediate
_SRC = native.source("adder")


@functools.lru_cache(maxsize=None)
def kernel_library() -> ctypes.CDLL | None:
    """The compiled adder kernels, or None (fallback to composed torch ops)."""
    path = native.build(_SRC)
    if path is None:
        return None
    lib = ctypes.CDLL(path)
    ptr, size, window = ctypes.c_void_p, ctypes.c_int64, [ctypes.c_int64] * 10
    lib.adder_forward.argtypes = [ptr, ptr, ptr, *window, size, ctypes.c_int]
    lib.adder_grad_input.argtypes = [ptr, ptr, ptr, ptr, *window, size, ctypes.c_int]
    return lib


def _chunk(out_ch: int, k: int, m: int, itemsize: int) -> int:
    return max(1, min(out_ch, CHUNK_BYTES // max(1, k * m * itemsize)))


def _weight_grad(w_col: torch.Tensor, xg: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``sum_{n,l} (X - W) g = xg - W sum g`` (``xg = sum X g``), rescaled by ``sqrt(numel) * eta / ||.||_2``
    (official)."""
    grad_w = xg - w_col * grad.sum((0, 2)).unsqueeze(1)
    return grad_w * (math.sqrt(w_col.numel()) * GRAD_ETA / grad_w.norm(p=2).clamp(min=1e-12))


class AdderKernelFunction(torch.autograd.Function):
    """The adder layer in the compiled kernels: image (N, C, H, W), weight (O, K) -> (N, O, Ho * Wo)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w_col: torch.Tensor, lib: ctypes.CDLL, window: tuple[int, ...]) -> torch.Tensor:
        x, w_col = x.contiguous(), w_col.contiguous()
        ctx.save_for_backward(x, w_col)
        ctx.lib, ctx.window = lib, window                   # (N, C, H, W, kh, kw, stride, padding, Ho, Wo)
        out = x.new_empty((x.shape[0], w_col.shape[0], window[-2] * window[-1]))
        lib.adder_forward(x.data_ptr(), w_col.data_ptr(), out.data_ptr(), *window, w_col.shape[0],
                          torch.get_num_threads())
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, w_col = ctx.saved_tensors
        grad, lib, threads = grad.contiguous(), ctx.lib, torch.get_num_threads()
        grad_x = torch.empty_like(x)
        lib.adder_grad_input(x.data_ptr(), w_col.data_ptr(), grad.data_ptr(), grad_x.data_ptr(), *ctx.window,
                             w_col.shape[0], threads)
        (n, c, _, _, kh, kw, stride, padding, ho, wo), o = ctx.window, w_col.shape[0]
        xg = torch.ops.aten.convolution_backward(     # sum X g: a convolution's weight gradient (no im2col)
            grad.view(n, o, ho, wo), x, w_col.view(o, c, kh, kw), None, (stride, stride), (padding, padding),
            (1, 1), False, (0, 0), 1, (False, True, False))[1]
        return grad_x, _weight_grad(w_col, xg.reshape(o, -1), grad), None, None


class AdderFunction(torch.autograd.Function):
    """The adder layer in composed ops, on the im2col matrix: ``-cdist_1`` (O, K) x (N, K, L) -> (N, O, L),
    the input gradient accumulated over chunks of output channels."""

    @staticmethod
    def forward(ctx, w_col: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(w_col, cols)
        (n, k, length), o = cols.shape, w_col.shape[0]
        rows = cols.transpose(1, 2).reshape(n * length, k)
        out = -torch.cdist(w_col.unsqueeze(0), rows.unsqueeze(0), p=1).squeeze(0)           # (O, N*L)
        return out.reshape(o, n, length).transpose(0, 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        w_col, cols = ctx.saved_tensors
        (n, k, length), o = cols.shape, w_col.shape[0]
        grad = grad.contiguous()
        grad_x = torch.zeros_like(cols)
        step = _chunk(o, k, n * length, cols.element_size())
        for s in range(0, o, step):
            diff = (w_col[s:s + step, None, :, None] - cols.unsqueeze(0)).clamp_(-1, 1)    # (c, N, K, L)
            grad_x += (diff * grad[:, s:s + step].transpose(0, 1).unsqueeze(2)).sum(0)
        xg = grad.transpose(0, 1).reshape(o, -1) @ cols.transpose(0, 1).reshape(k, -1).T
        return _weight_grad(w_col, xg, grad), grad_x


def adder2d(x: torch.Tensor, weight: torch.Tensor, stride: int = 1, padding: int = 0) -> torch.Tensor:
    """Functional adder convolution (official ``adder2d_function``) with the gradients described above."""
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    if x.dtype == weight.dtype == torch.float32 and x.device.type == weight.device.type == "cpu" \
            and (lib := kernel_library()) is not None:
        out = AdderKernelFunction.apply(x, weight.reshape(o, -1), lib, (n, c, h, w, kh, kw, stride, padding, ho, wo))
    else:
        out = AdderFunction.apply(weight.reshape(o, -1), F.unfold(x, (kh, kw), padding=padding, stride=stride))
    return out.reshape(n, o, ho, wo)


class Adder2d(nn.Module):
    """Adder convolution (official ``adder2d``): stride/padding like ``Conv2d``, weight ``adder`` ~ N(0, 1).

    After :func:`quantize` (or when built with ``quant_groups``) it also holds the quantized state of
    arXiv 2212.10200: ``scale_para`` (G,) group scales, ``group`` (O,) group of each output channel and
    ``qbias`` (O,) the lossless-clamp bias; ``adder`` then holds the quantized weights and the input is
    quantized per group with that group's scale (official ``QAdder2dKmeansGroupShare.construct``, with the
    concatenation over *all* groups the official code skips by an indentation slip): each group's channels
    are computed on their own and written back in the original channel order.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = False, quant_groups: int = 0, quant_bits: int = 8):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding = stride, padding
        self.adder = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = bias
        if bias:
            self.b = nn.Parameter(torch.rand(out_channels))
        self.quant_groups, self.quant_bits = 0, quant_bits
        if quant_groups:
            self._add_quant_buffers(quant_groups, quant_bits)

    def _add_quant_buffers(self, groups: int, bits: int) -> None:
        self.quant_groups, self.quant_bits = groups, check_bits(bits)
        self.register_buffer("scale_para", torch.ones(groups))
        self.register_buffer("group", torch.zeros(self.out_channels, dtype=torch.int64))
        self.register_buffer("qbias", torch.zeros(self.out_channels))

    @torch.no_grad()
    def set_quant(self, q: LayerQuant, bits: int) -> None:
        """Switch to quantized inference with the state computed by :func:`specs.addernet.layer_quant`."""
        if self.quant_groups != len(q.scale):
            self._add_quant_buffers(len(q.scale), bits)
        self.quant_bits = check_bits(bits)
        self.adder.copy_(torch.from_numpy(q.weight))
        self.scale_para.copy_(torch.from_numpy(q.scale))
        self.group.copy_(torch.from_numpy(q.group))
        self.qbias.copy_(torch.from_numpy(q.bias))

    def _quantized(self, x: torch.Tensor) -> torch.Tensor:
        m = float(2 ** self.quant_bits - 1)
        out = None
        for g in range(self.quant_groups):
            idx = torch.nonzero(self.group == g).flatten()      # this group's output channels
            s = self.scale_para[g]
            a = torch.clamp(torch.round(x * m / s), 0, m) * s / m
            y = adder2d(a, self.adder[idx], self.stride, self.padding)
            if out is None:
                out = y.new_zeros((y.shape[0], self.out_channels) + y.shape[2:])
            out[:, idx] = y
        return out + self.qbias.view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._quantized(x) if self.quant_groups else adder2d(x, self.adder, self.stride, self.padding)
        if self.bias:
            out = out + self.b.view(1, -1, 1, 1)
        return out

    def extra_repr(self) -> str:
        q = f", quant {self.quant_bits} bit x {self.quant_groups} groups" if self.quant_groups else ""
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias}{q}")


def adder_layers(model: nn.Module) -> dict[str, Adder2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, Adder2d)}
