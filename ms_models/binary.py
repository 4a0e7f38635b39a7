"""AdaBin binary layers, MindSpore (arXiv 2208.08084), mirroring ``torch_ref/binary.py`` name for name (math
and official sources documented there).

MindSpore's ``Sign`` has a zero gradient. The weight estimator is a Cell with a custom ``bprop``
(:class:`BinaryQuantize`, GRAPH_MODE and PyNative), fed ``t``/``k`` as non-trainable Parameters so that
:func:`set_temperature` takes effect in GRAPH_MODE without recompiling. The activation estimator is the
official ``sign - stop_gradient(poly) + poly`` expression (same forward rounding as the PyTorch code).
``t``/``k`` are MindSpore-only state: the converter fills them with the initial 0.1 / 10 from torch
checkpoints (where they are non-persistent buffers) and drops them towards torch.

The official MindSpore port (mindspore-ai/models ``research/cv/AdaBin/src/binarylib.py``) computes the same
forward (``weight.std`` = population std; ``Hardtanh`` before ``Sign`` leaves the sign unchanged) without
any estimator (inference only) and shapes ``Maxout`` parameters (1, C, 1, 1); ours are (C,) like PyTorch
(``convert.official_ms`` reshapes).
"""
from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import initializer

from specs.adabin import K_INIT, T_INIT


class BinaryQuantize(nn.Cell):
    """``sign(u)`` with the gradient ``k * t * (1 - tanh(u * t)^2)`` (official ``BinaryQuantize``, from IR-Net)."""

    def construct(self, u, k, t):
        return ops.sign(u)

    def bprop(self, u, k, t, out, dout):
        th = ops.tanh(u * t)
        return k * t * (1 - th * th) * dout, ops.zeros_like(k), ops.zeros_like(t)


class ApproxSign(nn.Cell):
    """``sign(u)`` forward, Bi-Real ApproxSign gradient, in the official mask arithmetic and detach form."""

    step_function = True        # a step function of its input (the tests share its output across frameworks)

    def construct(self, u):
        m1, m2, m3 = (u < -1).astype(u.dtype), (u < 0).astype(u.dtype), (u < 1).astype(u.dtype)
        out1 = (-1) * m1 + (u * u + 2 * u) * (1 - m1)
        out2 = out1 * m2 + (-u * u + 2 * u) * (1 - m2)
        out3 = out2 * m3 + 1 * (1 - m3)
        return ops.stop_gradient(ops.sign(u)) - ops.stop_gradient(out3) + out3


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
