"""Transformer MLP (mirrors ``ms_models/layers/mlp.py``)."""
from __future__ import annotations

import torch
from torch import nn


class Mlp(nn.Module):
    """timm ``Mlp`` (``timm/layers/mlp.py``) without dropout: ``fc1 -> GELU (exact erf) -> fc2``."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
