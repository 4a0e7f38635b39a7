"""Activations the families share (mirrors ``ms_models/layers/activation.py``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """``relu6(x + 3) / 6`` (GhostNet's SE gate, official ``hard_sigmoid``)."""
    return F.relu6(x + 3.0) / 6.0

