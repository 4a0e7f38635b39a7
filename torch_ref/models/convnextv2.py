"""ConvNeXt V2, PyTorch reference (arXiv 2301.00808, sections 3 and 4: the ConvNeXt block with GRN).

Follows the file VanillaKD trains (Hao840/vanillaKD@a27b029 ``models/convnextv2.py``, i.e.
facebookresearch/ConvNeXt-V2@2553895 ``models/convnextv2.py`` with ``models/utils.py``'s ``LayerNorm`` and
``GRN``) key for key: ``downsample_layers.0.{0: 4x4 conv, 1: channels-first LayerNorm}``,
``downsample_layers.{1,2,3}.{0: channels-first LayerNorm, 1: 2x2 conv}``,
``stages.i.j.{dwconv, norm, pwconv1, grn.gamma, grn.beta, pwconv2}``, ``norm``, ``head``. The maths as the code
computes it: the channels-first LayerNorm written out (mean, biased variance, ``/ sqrt(var + eps)``, then the
affine), GRN's L2 norm over the spatial axes divided by its channel mean plus 1e-6, stochastic depth rising over
all blocks (``torch.linspace``), trunc-normal(0.02) conv/linear weights with zero biases, and the head scaled by
``head_init_scale``.

API beside the official code (the project's, like timm's ConvNeXt): ``forward_features`` returns the last
stage's map (B, C, h, w) and ``forward_head`` pools it, applies the final ``norm`` and the ``head`` (the official
``forward_features`` does the pooling and the norm too); ``num_classes=0`` has no ``head``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from specs.convnextv2 import (DW_KERNEL, GRN_EPS, LN_EPS, MLP_RATIO, STEM_STRIDE, check_arch, check_input_size,
                              drop_path_rates, group_matcher, no_weight_decay)
from specs.errors import ConfigError

from .._registry import registry
from ..layers import DropPath, trunc_normal_init


class LayerNorm(nn.LayerNorm):
    """The official ``LayerNorm``: channels-last input is ``F.layer_norm`` over the last axis; channels-first
    (NCHW) input is normalised over axis 1 with the official formula, kept op for op for its rounding."""

    def __init__(self, normalized_shape: int, eps: float = LN_EPS, data_format: str = "channels_last"):
        super().__init__(normalized_shape, eps=eps)
        if data_format not in ("channels_last", "channels_first"):
            raise ConfigError(f"LayerNorm data_format must be channels_last or channels_first, got {data_format!r}")
        self.data_format = data_format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.data_format == "channels_last":
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class GRN(nn.Module):
    """Global Response Normalization (paper eq. 1-3) on channels-last input: ``G = ||x||_2`` over H and W per
    channel, ``N = G / (mean_c G + 1e-6)``, ``gamma * (x * N) + beta + x``; gamma and beta (1, 1, 1, C), zeros."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.linalg.vector_norm(x, 2, dim=(1, 2), keepdim=True)      # what torch.norm(p=2, dim=(1, 2)) runs
        nx = gx / (gx.mean(dim=-1, keepdim=True) + GRN_EPS)
        return self.gamma * (x * nx) + self.beta + x

    @torch.no_grad()
    def draw_test_values(self, g: torch.Generator) -> None:
        """Test weights (``torch_ref.testing.deterministic_weights``): gamma and beta of the scale a trained GRN
        has, so the layer's output depends on them (the generic 0.02 draw would hide it)."""
        self.gamma.copy_(torch.randn(self.gamma.shape, generator=g) * 0.5)
        self.beta.copy_(torch.randn(self.beta.shape, generator=g) * 0.1)


class Block(nn.Module):
    """``x + drop_path(pwconv2(grn(gelu(pwconv1(norm(dwconv(x)))))))``: 7x7 depthwise conv (NCHW), then
    channels-last LayerNorm, the 4x MLP as Linear layers with exact GELU and GRN, back to NCHW."""

    def __init__(self, dim: int, drop_path: float = 0.0):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, DW_KERNEL, padding=DW_KERNEL // 2, groups=dim)
        self.norm = LayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, MLP_RATIO * dim)
        self.act = nn.GELU()
        self.grn = GRN(MLP_RATIO * dim)
        self.pwconv2 = nn.Linear(MLP_RATIO * dim, dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(y)))))
        return x + self.drop_path(y.permute(0, 3, 1, 2))


def _downsample_layers(in_chans: int, dims: tuple[int, ...]) -> nn.ModuleList:
    """The stem (4x4 conv stride 4, channels-first LayerNorm) and three (LayerNorm, 2x2 conv stride 2) layers."""
    stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], STEM_STRIDE, stride=STEM_STRIDE),
                         LayerNorm(dims[0], data_format="channels_first"))
    return nn.ModuleList([stem] + [nn.Sequential(LayerNorm(dims[i], data_format="channels_first"),
                                                 nn.Conv2d(dims[i], dims[i + 1], 2, stride=2))
                                   for i in range(len(dims) - 1)])


class ConvNeXtV2(nn.Module):
    """The official ``ConvNeXtV2``: four (downsample layer, stage of blocks) pairs, global average pooling, final
    LayerNorm, linear head (see the module docstring for the API)."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, depths: tuple[int, ...] = (3, 3, 9, 3),
                 dims: tuple[int, ...] = (96, 192, 384, 768), drop_path_rate: float = 0.0,
                 head_init_scale: float = 1.0):
        super().__init__()
        check_arch(depths, dims)
        self.depths, self.dims, self.num_classes = tuple(depths), tuple(dims), num_classes
        self.num_features = self.head_hidden_size = dims[-1]
        self.downsample_layers = _downsample_layers(in_chans, self.dims)
        dpr = drop_path_rates(drop_path_rate, sum(depths))
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.stages = nn.ModuleList([nn.Sequential(*[Block(dims[i], dpr[starts[i] + j]) for j in range(depths[i])])
                                     for i in range(len(depths))])
        self.norm = nn.LayerNorm(dims[-1], eps=LN_EPS)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():            # official _init_weights: every Conv2d and Linear
            trunc_normal_init(m)
        if num_classes > 0:
            with torch.no_grad():
                self.head.weight.mul_(head_init_scale)
                self.head.bias.mul_(head_init_scale)

    def reset_classifier(self, num_classes: int) -> None:
        """A new ``head`` for ``num_classes`` (0: the normalised pooled features), PyTorch's default Linear init."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Nothing: ConvNeXt V2 has no epoch-dependent state."""

    def no_weight_decay(self) -> set[str]:
        """The GRN gammas and betas (ConvNeXt-V2 ``optim_factory``; the engine adds norms and biases, ``ndim <= 1``)."""
        return no_weight_decay(self.depths)

    def group_matcher(self, coarse: bool = False) -> dict:
        """ConvNeXt-V2's layer-decay layouts: per block (fine), BEiT's 12 groups (coarse)
        (:func:`specs.convnextv2.group_matcher`)."""
        return group_matcher(self.depths, coarse)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing():
            check_input_size(x.shape[-2], x.shape[-1])
        for downsample, stage in zip(self.downsample_layers, self.stages):
            x = stage(downsample(x))
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.norm(x.mean([-2, -1]))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


registry.register_family("convnextv2", ConvNeXtV2)
