"""Binary layers shared by the binary-network families, MindSpore (mirrors ``torch_ref/binary.py``).

MindSpore's ``Sign`` has a zero gradient and ``Rint`` none at all ("bprop not defined", 2.8.0): the
quantisers are Cells with a custom ``bprop``, which MindSpore uses in GRAPH_MODE and PyNative alike.
"""
from __future__ import annotations

import math

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import Constant, Uniform, initializer

from specs.bimlp import ACT_BINARIZE


# ---------------------------------------------------------------- BiMLP (XNOR weights, {-1, 0, +1} activations)
# Official mindspore-ai/models research/cv/BiMLP/src/quan_conv.py: ``QuanConv(quan_name_w='xnor',
# quan_name_a='xnor', nbit_w=1, nbit_a=1)``, ``XnorM``, ``dorefa_a``, and ``LearnableBias``/``prelu``/``RPReLU``
# of src/bimlp.py.
class XnorWeight(nn.Cell):
    """``sign(W) * mean(|W|, axis=1)`` (official ``XnorM``, the same Cell with the same ``bprop``: ``dout``)."""

    def construct(self, w):
        return ops.sign(w) * ops.abs(w).mean(axis=1, keep_dims=True)

    def bprop(self, w, out, dout):
        return (dout,)


class ActQuantize(nn.Cell):
    """1-bit activation quantiser: ``Rint(clip(x, -1, 1))`` (official ``dorefa_a``, nbit 1) or
    ``sign(clip(x, -1, 1))``; gradient ``dout * (|x| <= 1)`` (straight-through estimator of the clipped
    quantiser; the official code has none, see ``ms_models/bimlp.py``)."""

    def __init__(self, mode: str = "round"):
        super().__init__()
        self.round = mode == "round"
        self.rint = ops.Rint()

    def construct(self, x):
        c = ops.clamp(x, -1.0, 1.0)
        return self.rint(c) if self.round else ops.sign(c)

    def bprop(self, x, out, dout):
        return (dout * (ops.abs(x) <= 1.0).astype(dout.dtype),)


def check_act_binarize(mode: str) -> str:
    if mode not in ACT_BINARIZE:
        raise ValueError(f"act_binarize must be one of {', '.join(ACT_BINARIZE)}, not {mode!r}")
    return mode


class XnorConv2d(nn.Cell):
    """Bias-free convolution on quantised activations with XNOR weights (official ``QuanConv``, an
    ``nn.Conv2d`` subclass: parameter ``weight``), PyTorch's default initialisation ``U(+-1/sqrt(fan_in))``.
    ``padding`` is (top, bottom, left, right), as MindSpore's."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int] = (1, 1),
                 padding: tuple[int, int, int, int] = (0, 0, 0, 0), group: int = 1, act_binarize: str = "round"):
        super().__init__()
        bound = 1.0 / math.sqrt(in_channels // group * kernel_size[0] * kernel_size[1])
        self.weight = Parameter(initializer(Uniform(bound), (out_channels, in_channels // group, *kernel_size),
                                            ms.float32), name="weight")
        self.conv = ops.Conv2D(out_channels, kernel_size, mode=1, pad_mode="pad", pad=padding, group=group)
        self.quant_a = ActQuantize(check_act_binarize(act_binarize))
        self.quant_w = XnorWeight()

    def construct(self, x):
        return self.conv(self.quant_a(x), self.quant_w(self.weight))


class LearnableBias(nn.Cell):
    """``x + bias``, bias (1, C, 1, 1) initialised to zero (official ``LearnableBias``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = Parameter(initializer("zeros", (1, channels, 1, 1), ms.float32), name="bias")

    def construct(self, x):
        return x + self.bias


class PReLU(nn.Cell):
    """``max(x, 0) + w * min(x, 0)``, ``w`` (1, C, 1, 1) = 0.25 (official ``prelu``). Written with masks that
    include 0 on both sides, which gives the official gradient ``1 + w`` at exactly 0 (MindSpore's
    ``maximum``/``minimum`` would split ties)."""

    def __init__(self, channels: int):
        super().__init__()
        self.w = Parameter(initializer(Constant(0.25), (1, channels, 1, 1), ms.float32), name="w")

    def construct(self, x):
        pos = x * (x >= 0).astype(x.dtype)
        neg = x * (x <= 0).astype(x.dtype)
        return pos + self.w * neg


class RPReLU(nn.Cell):
    """ReActNet's RPReLU ``move2(prelu(move1(x)))`` (official ``RPReLU``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.move1 = LearnableBias(channels)
        self.act = PReLU(channels)
        self.move2 = LearnableBias(channels)

    def construct(self, x):
        return self.move2(self.act(self.move1(x)))
