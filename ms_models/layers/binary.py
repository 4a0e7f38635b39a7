"""Binary layers shared by the binary-network families, MindSpore (mirrors ``torch_ref/binary.py`` name for name;
math and official sources documented there).

MindSpore's ``Sign`` has a zero gradient and ``Rint`` none at all ("bprop not defined", 2.8.0): the
quantisers are Cells with a custom ``bprop`` (GRAPH_MODE and PyNative); AdaBin's ``ApproxSign`` is ``sign``
with the derivative of the official ``sign - poly.detach() + poly`` as its ``bprop``, the same values (see the
class).

AdaBin: the weight estimator :class:`BinaryQuantize` is fed ``t``/``k`` as non-trainable Parameters so that
:func:`set_temperature` takes effect in GRAPH_MODE without recompiling; ``t``/``k`` are MindSpore-only state:
the converter fills them with the initial 0.1 / 10 from torch checkpoints (where they are non-persistent
buffers) and drops them towards torch. The official MindSpore port (mindspore-ai/models
``research/cv/AdaBin/src/binarylib.py``) computes the same forward (``weight.std`` = population std;
``Hardtanh`` before ``Sign`` leaves the sign unchanged) without any estimator (inference only) and shapes
``Maxout`` parameters (1, C, 1, 1); ours are (C,) like PyTorch (``convert.official_ms`` reshapes).
"""
from __future__ import annotations

import math

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Constant, Uniform, initializer

from specs.adabin import K_INIT, T_INIT
from specs.bimlp import check_act_binarize, quantiser_kinks


class BinaryQuantize(nn.Cell):
    """``sign(u)`` with the gradient ``k * t * (1 - tanh(u * t)^2)`` (official ``BinaryQuantize``, from IR-Net)."""

    def construct(self, u, k, t):
        return ops.sign(u)

    def bprop(self, u, k, t, out, dout):
        th = ops.tanh(u * t)
        return k * t * (1 - th * th) * dout, ops.zeros_like(k), ops.zeros_like(t)


class ApproxSign(nn.Cell):
    """``sign(u)`` forward, Bi-Real ApproxSign gradient (``2 + 2u`` on [-1, 0), ``2 - 2u`` on [0, 1), else 0) as a
    custom ``bprop``.

    The official code (``torch_ref.layers.binary.ApproxSign``) writes the forward as
    ``sign(u).detach() - poly.detach() + poly`` with a masked piecewise polynomial. In float32 that value is
    ``sign(u)`` exactly for ``|u| < 1.8e19``: ``poly`` lies in [-1, 1] with the sign's sign, and ``(s - p) + p``
    rounds back to ``s``; checked on 11 M values in ``tests/layers/test_binary.py``. Beyond that, ``u * u``
    overflows and the official expression gives NaN where this one gives +-1. Computing only the sign saves
    about 15 element-wise passes per activation in the forward (``docs/adabin.md``, benchmark). The gradient
    sums the polynomial's two ``u`` terms first (``2 * (dout * u)``, exact), as autograd of the official
    expression does, then adds ``2 * dout``."""

    step_function = True        # a step function of its input (the tests share its output across frameworks)

    def construct(self, u):
        return ops.sign(u)

    def bprop(self, u, out, dout):
        two_du, two_d = 2 * (dout * u), 2 * dout
        grad = ops.select(u < 0, two_d + two_du, two_d - two_du)
        return (ops.select((u >= -1) & (u < 1), grad, ops.zeros_like(grad)),)


class BinaryActivation(nn.Cell):
    """Adaptive binary set of the activations: ``alpha_a * (sign((x - beta_a) / alpha_a) + beta_a)``."""

    def __init__(self):
        super().__init__()
        self.sign = ApproxSign()
        self.alpha_a = Parameter(Tensor(1.0, ms.float32), name="alpha_a")
        self.beta_a = Parameter(Tensor(0.0, ms.float32), name="beta_a")

    def construct(self, x):
        return self.alpha_a * (self.sign((x - self.beta_a) / self.alpha_a) + self.beta_a)


class Maxout(nn.Cell):
    """Per-channel two-slope nonlinearity of AdaBin (official ``Maxout``); parameters shaped (C,)."""

    kinks = (0.0,)      # inputs where the gradient steps (the tests share the side of each across frameworks)

    def __init__(self, channels: int, neg_init: float = 0.25, pos_init: float = 1.0):
        super().__init__()
        self.neg_scale = Parameter(Tensor(np.full(channels, neg_init, np.float32)), name="neg_scale")
        self.pos_scale = Parameter(Tensor(np.full(channels, pos_init, np.float32)), name="pos_scale")
        self.relu = nn.ReLU()

    def construct(self, x):
        return self.pos_scale.reshape(1, -1, 1, 1) * self.relu(x) - self.neg_scale.reshape(1, -1, 1, 1) * self.relu(-x)


class AdaBinConv2d(nn.Cell):
    """1-bit conv (official ``AdaBin_Conv2d``, no bias): ``binary_a`` on the input, binarised ``weight``;
    ``weight_init`` is a MindSpore initializer (the model picks the official one)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 weight_init="normal"):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.weight = Parameter(initializer(weight_init, (out_channels, in_channels, kernel_size, kernel_size),
                                            ms.float32), name="weight")
        self.k = Parameter(Tensor([K_INIT], ms.float32), name="k", requires_grad=False)
        self.t = Parameter(Tensor([T_INIT], ms.float32), name="t", requires_grad=False)
        self.binary_a = BinaryActivation()
        self.quantize = BinaryQuantize()
        self.conv = ops.Conv2D(out_channel=out_channels, kernel_size=(kernel_size, kernel_size), mode=1,
                               pad_mode="pad", pad=(padding,) * 4, stride=stride)
        self.filter_size = kernel_size * kernel_size * in_channels

    def binarize_weight(self):
        """``sign((W - beta) / alpha) * alpha + beta`` per output channel (population std, ``k*k*C_in``)."""
        w = self.weight
        beta = w.mean((1, 2, 3)).reshape(-1, 1, 1, 1)
        alpha = ops.sqrt(((w - beta) ** 2).sum((1, 2, 3)) / self.filter_size).reshape(-1, 1, 1, 1)
        return self.quantize((w - beta) / alpha, self.k, self.t) * alpha + beta

    def construct(self, x):
        return self.conv(self.binary_a(x), self.binarize_weight())


def set_temperature(model: nn.Cell, t: float, k: float) -> None:
    """Write the weight estimator's ``t``/``k`` into every :class:`AdaBinConv2d` (no GRAPH_MODE recompile)."""
    for _, cell in model.cells_and_names():
        if isinstance(cell, AdaBinConv2d):
            cell.t.set_data(Tensor([t], ms.float32))
            cell.k.set_data(Tensor([k], ms.float32))


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
    quantiser; the official code has none, see ``ms_models/models/bimlp.py``)."""

    step_function = True        # a step function of its input (the tests share its output across frameworks)

    def __init__(self, mode: str = "round"):
        super().__init__()
        self.mode = check_act_binarize(mode)
        self.kinks = quantiser_kinks(mode)      # where the value or the gradient steps
        self.round = self.mode == "round"
        self.rint = ops.Rint()

    def construct(self, x):
        c = ops.clamp(x, -1.0, 1.0)
        return self.rint(c) if self.round else ops.sign(c)

    def bprop(self, x, out, dout):
        return (dout * (ops.abs(x) <= 1.0).astype(dout.dtype),)


class XnorConv2d(nn.Cell):
    """Bias-free convolution on quantised activations with XNOR weights (official ``QuanConv``, an
    ``nn.Conv2d`` subclass: parameter ``weight``), PyTorch's default initialisation ``U(+-1/sqrt(fan_in))``.
    Same signature as the torch twin: ``padding`` is zero padding per side, an int or ``(h, w)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int] = 1,
                 padding: int | tuple[int, int] = 0, groups: int = 1, act_binarize: str = "round"):
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        ph, pw = (padding, padding) if isinstance(padding, int) else padding
        bound = 1.0 / math.sqrt(in_channels // groups * kh * kw)
        self.weight = Parameter(initializer(Uniform(bound), (out_channels, in_channels // groups, kh, kw),
                                            ms.float32), name="weight")
        self.conv = ops.Conv2D(out_channels, (kh, kw), mode=1, pad_mode="pad", pad=(ph, ph, pw, pw), group=groups)
        self.quant_a = ActQuantize(act_binarize)
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

    kinks = (0.0,)      # inputs where the gradient steps (the tests share the side of each across frameworks)

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
