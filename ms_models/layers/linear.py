"""Dense layers with torch's initialisation, and ``Identity``."""
from __future__ import annotations

import math

from mindspore import nn
from mindspore.common.initializer import Uniform


def torch_init_dense(in_ch: int, out_ch: int) -> nn.Dense:
    """``nn.Dense`` (same weight layout as ``torch.nn.Linear``) with PyTorch's default initialisation."""
    bound = 1.0 / math.sqrt(in_ch)
    return nn.Dense(in_ch, out_ch, weight_init=Uniform(bound), bias_init=Uniform(bound), has_bias=True)


class Identity(nn.Cell):
    def construct(self, x):
        return x

