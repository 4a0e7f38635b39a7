"""Transformer MLP (mirrors ``torch_ref/layers/mlp.py``)."""
from __future__ import annotations

from mindspore import nn

from .activation import GELU
from .linear import dense


class Mlp(nn.Cell):
    """timm ``Mlp`` without dropout: ``fc1 -> GELU -> fc2``; GELU exact (erf:
    :class:`~ms_models.layers.activation.GELU`), not MindSpore's default tanh form."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None):
        super().__init__()
        self.fc1 = dense(in_features, hidden_features)
        self.act = GELU()
        self.fc2 = dense(hidden_features, out_features or in_features)

    def construct(self, x):
        return self.fc2(self.act(self.fc1(x)))
