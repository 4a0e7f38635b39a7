"""Layers and helpers shared by the PyTorch reference models (mirrors ``ms_models/layers.py``)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from specs.pooling import adaptive_bins


def conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0,
            eps: float = 1e-5) -> nn.Sequential:
    """``Sequential(Conv2d(bias=True), BatchNorm2d)``: keys ``0.weight, 0.bias, 1.*``."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride, padding), nn.BatchNorm2d(out_ch, eps=eps))


def bn_arrays(bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """(gamma, beta, running mean, running var, eps) as NumPy, the argument tail of ``specs.fusion.fold_bn``."""
    return (bn.weight.detach().numpy(), bn.bias.detach().numpy(), bn.running_mean.numpy(),
            bn.running_var.numpy(), bn.eps)


def conv_arrays(conv: nn.Conv2d) -> tuple[np.ndarray, np.ndarray | None]:
    return conv.weight.detach().numpy(), None if conv.bias is None else conv.bias.detach().numpy()


def set_conv(conv: nn.Conv2d, weight: np.ndarray, bias: np.ndarray) -> nn.Conv2d:
    """Write fused arrays into ``conv`` (given a bias if it had none)."""
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(weight))
        if conv.bias is None:
            conv.bias = nn.Parameter(torch.zeros(conv.out_channels))
        conv.bias.copy_(torch.from_numpy(bias))
    return conv


def trunc_normal_init(module: nn.Module, std: float = 0.02) -> None:
    """timm's ``trunc_normal_(std)`` (bounds +-2 absolute) on Conv2d/Linear weights, zero bias."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


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


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """``relu6(x + 3) / 6`` (GhostNet's SE gate, official ``hard_sigmoid``)."""
    return F.relu6(x + 3.0) / 6.0


def resize(x: torch.Tensor, size: tuple[int, int], mode: str = "nearest") -> torch.Tensor:
    """``F.interpolate`` to ``size``: legacy ``nearest`` (``floor(i * in / out)``) or ``bilinear`` with
    ``align_corners=True`` (mirrors ``ms_models.layers.resize``)."""
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    if mode == "bilinear":
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    raise ValueError(f"resize mode must be 'nearest' or 'bilinear', not {mode!r}")
