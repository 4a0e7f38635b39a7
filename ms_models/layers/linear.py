"""Dense layers with torch's or timm's transformer initialisation, and ``Identity``."""
from __future__ import annotations

import math

from mindspore import nn
from mindspore.common.initializer import TruncatedNormal, Uniform


def torch_init_dense(in_ch: int, out_ch: int) -> nn.Dense:
    """``nn.Dense`` (same weight layout as ``torch.nn.Linear``) with PyTorch's default initialisation."""
    bound = 1.0 / math.sqrt(in_ch)
    return nn.Dense(in_ch, out_ch, weight_init=Uniform(bound), bias_init=Uniform(bound), has_bias=True)


class Identity(nn.Cell):
    def construct(self, x):
        return x



def dense(in_ch: int, out_ch: int, bias: bool = True, std: float = 0.02) -> nn.Dense:
    """``nn.Dense`` with timm's transformer init (``trunc_normal_(std=0.02)`` weight, bounds +-2 absolute; zero
    bias)."""
    return nn.Dense(in_ch, out_ch, weight_init=TruncatedNormal(sigma=std), bias_init="zeros", has_bias=bias)
