"""Adaptive max pooling that exports to ONNX (mirrors ``ms_models/layers/pool.py``)."""
from __future__ import annotations

import torch
from torch import nn

from specs.pooling import adaptive_bins


class AdaptiveMaxPool2d(nn.AdaptiveMaxPool2d):
    """``nn.AdaptiveMaxPool2d`` that ONNX export can write: while exporting, the same windows are taken as
    static slices, rows then columns (max is separable), since the exporter refuses non-divisible sizes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.onnx.is_in_onnx_export():
            return super().forward(x)
        oh, ow = (self.output_size, self.output_size) if isinstance(self.output_size, int) else self.output_size
        h, w = int(x.shape[2]), int(x.shape[3])   # Python ints: traced shapes would floor-divide wrongly
        x = torch.cat([x[:, :, a:b].amax(2, keepdim=True) for a, b in adaptive_bins(h, oh)], 2)
        return torch.cat([x[:, :, :, a:b].amax(3, keepdim=True) for a, b in adaptive_bins(w, ow)], 3)

