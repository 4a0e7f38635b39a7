"""Conv + BN helpers (mirrors ``ms_models/layers/conv_bn.py``)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class ConvBn(nn.Sequential):
    """Bias-free conv -> BatchNorm2d [-> activation], one or more times in a row, as a plain ``Sequential``
    (children ``0, 1, ...``, or named by an ``OrderedDict``): the twin of ``ms_models.layers.ConvBn``, whose
    GRAPH_MODE fast paths (eval-mode BN fold, compiled depthwise kernel) torch does not need."""


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


def fused_conv(conv: nn.Conv2d, weight: np.ndarray, bias: np.ndarray) -> nn.Conv2d:
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

