"""Resizing NCHW tensors (mirrors ``ms_models/layers/resize.py``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def resize(x: torch.Tensor, size: tuple[int, int], mode: str = "nearest") -> torch.Tensor:
    """``F.interpolate`` to ``size``: legacy ``nearest`` (``floor(i * in / out)``) or ``bilinear`` with
    ``align_corners=True`` or ``bicubic`` with ``align_corners=False`` (mirrors ``ms_models.layers.resize``)."""
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "bilinear":
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    if mode == "bicubic":
        return F.interpolate(x, size=size, mode="bicubic", align_corners=False)
    raise ValueError(f"resize mode must be 'nearest', 'bilinear' or 'bicubic', not {mode!r}")

