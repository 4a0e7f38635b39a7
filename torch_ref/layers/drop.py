"""Stochastic depth (mirrors ``ms_models/layers/drop.py``)."""
from __future__ import annotations

import torch
from torch import nn


class DropPath(nn.Module):
    """Stochastic depth per sample (timm ``DropPath``, e.g. the official ViG blocks): in training each sample's
    branch is zeroed with probability ``p`` (a Bernoulli(1 - p) mask over the batch axis) and the kept samples
    are scaled by ``1 / (1 - p)``; identity in eval and at ``p = 0``. No parameters (no state_dict keys)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * (mask / keep if keep > 0.0 else mask)

    def extra_repr(self) -> str:
        return f"p={self.p}"

