"""Activations the families share (mirrors ``torch_ref/layers/activation.py``)."""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from . import kernels
from .modes import graph_compiled


def hard_sigmoid(x):
    """``relu6(x + 3) / 6`` (GhostNet's SE gate; the official MindSpore port multiplies by 0.16666667)."""
    return ops.relu6(x + 3.0) / 6.0


def leaky_relu(x, slope):
    """``torch.nn.functional.leaky_relu`` for a tensor slope in [0, 1]: ``max(x, slope * x)``.

    Bit-identical to ``x if x > 0 else slope * x`` for slopes in [0, 1] (VanillaNet's deep-training range)
    and faster than ``ops.select`` on the 2.8.0 CPU backend.
    """
    return ops.maximum(x, x * slope)


# Numerical Recipes' erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z / 2), z >= 0: fractional error < 1.2e-7
_ERFC = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807, -1.13520398, 1.48851587,
         -0.82215223, 0.17087277)


class GELU(nn.Cell):
    """torch's ``nn.GELU()``: ``x * Phi(x)`` with the exact erf (MindSpore's ``nn.GELU`` defaults to the tanh form).

    In GRAPH_MODE on float32 the erf is the compiled kernel of :func:`ms_models.layers.kernels.erf` (``fused``;
    cleared by :func:`~ms_models.layers.layerwise_mode`), elsewhere MindSpore's ``Erf``.

    In export form (``for_export``, set by :func:`~ms_models.layers.export_mode`) ``Phi`` is computed from
    Numerical Recipes' erfc approximation (``Abs``/``Exp``/``Where`` and arithmetic): MindSpore's ONNX exporter
    has no ``Erf``. Its error (<= 1.2e-7 relative to ``Phi``) is within float32 rounding: on [-10, 10] it differs
    from float64 GELU by 5e-7 at most, torch's float32 kernel by 1e-6."""

    def __init__(self):
        super().__init__()
        self.for_export = False
        self.fused = kernels.erf()      # the compiled erf (GRAPH_MODE, float32); None: MindSpore's Erf

    def construct(self, x):
        if not self.for_export:     # torch's CPU kernel: (x * 0.5) * (1 + erf(x * sqrt(1/2))); a multiply, not
            u = x * 0.7071067811865476                                      # ops.gelu's division by sqrt(2)
            fused = self.fused is not None and graph_compiled() and x.dtype == ms.float32
            return (x * 0.5) * (1.0 + (self.fused(u) if fused else ops.erf(u)))
        z = ops.abs(x) * 0.7071067811865476
        t = 1.0 / (1.0 + 0.5 * z)
        poly = _ERFC[-1]
        for c in _ERFC[-2::-1]:
            poly = poly * t + c
        erfc = t * ops.exp(poly - z * z)                   # erfc(|x| / sqrt(2))
        return x * ops.where(x >= 0, 1.0 - 0.5 * erfc, 0.5 * erfc)
