"""Stochastic depth (mirrors ``torch_ref/layers/drop.py``)."""
from __future__ import annotations

from mindspore import nn, ops


class DropPath(nn.Cell):
    """Stochastic depth per sample, as ``torch_ref.layers.DropPath`` (timm semantics): in training each sample's
    branch is zeroed with probability ``p`` (uniform draw < 1 - p, one per sample) and the kept samples are
    scaled by ``1 / (1 - p)``; identity in eval and at ``p = 0``. No parameters."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)
        self.keep = 1.0 - self.p

    def construct(self, x):
        if self.p == 0.0 or not self.training:
            return x
        mask = (ops.rand((x.shape[0],) + (1,) * (x.ndim - 1)) < self.keep).astype(x.dtype)
        return x * (mask / self.keep if self.keep > 0.0 else mask)

