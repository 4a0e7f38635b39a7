"""Activations the families share (mirrors ``torch_ref/layers/activation.py``)."""
from __future__ import annotations

from mindspore import ops


def hard_sigmoid(x):
    """``relu6(x + 3) / 6`` (GhostNet's SE gate; the official MindSpore port multiplies by 0.16666667)."""
    return ops.relu6(x + 3.0) / 6.0


def leaky_relu(x, slope):
    """``torch.nn.functional.leaky_relu`` for a tensor slope in [0, 1]: ``max(x, slope * x)``.

    Bit-identical to ``x if x > 0 else slope * x`` for slopes in [0, 1] (VanillaNet's deep-training range)
    and faster than ``ops.select`` on the 2.8.0 CPU backend.
    """
    return ops.maximum(x, x * slope)

