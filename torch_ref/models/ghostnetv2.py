"""GhostNetV2, PyTorch reference (arXiv 2211.12905, NeurIPS 2022).

Follows huawei-noah/Efficient-AI-Backbones ``ghostnetv2_pytorch/model/ghostnetv2_torch.py`` module for module
and key for key (timm's ``ghostnetv2_*`` use the same keys), so the official ``ck_ghostnetv2_*.pth.tar`` files
load with ``strict=True`` once the converter has dropped their thop ``total_ops``/``total_params`` buffers.
Channel counts come from :func:`specs.ghostnetv2.block_plan`. Additions, in timm's style:
``forward_features``/``forward_head``/``reset_classifier``, ``num_features`` (960 at width 1),
``head_hidden_size`` (1280) and ``dfc_upsample='bilinear'`` (align_corners), the gate upsampling of the
official MindSpore port (default ``'nearest'``, the official PyTorch one).
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from specs.ghostnetv2 import BN_EPS, BlockSpec, block_plan, check_dfc_upsample, group_matcher, se_channels

from .._registry import registry
from ..layers import ConvBn, hard_sigmoid, resize


def _conv(in_chs: int, out_chs: int, kernel, stride: int = 1, padding=0, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, kernel, stride, padding, groups=groups, bias=False)


def _conv_bn_act(in_chs: int, out_chs: int, kernel: int, groups: int = 1, relu: bool = True) -> ConvBn:
    """``[Conv(k, pad k//2, no bias), BN, ReLU or nothing]`` (official ``primary_conv``/``cheap_operation``)."""
    return ConvBn(_conv(in_chs, out_chs, kernel, 1, kernel // 2, groups), nn.BatchNorm2d(out_chs, eps=BN_EPS),
                  nn.ReLU(inplace=True) if relu else nn.Identity())


class SqueezeExcite(nn.Module):
    """SE with a hard-sigmoid gate: ``x * hard_sigmoid(conv_expand(relu(conv_reduce(mean(x)))))``."""

    def __init__(self, in_chs: int, se_ratio: float = 0.25):
        super().__init__()
        reduced = se_channels(in_chs, se_ratio)
        self.conv_reduce = nn.Conv2d(in_chs, reduced, 1, bias=True)
        self.act1 = nn.ReLU(inplace=True)
        self.conv_expand = nn.Conv2d(reduced, in_chs, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * hard_sigmoid(s)


class ConvBnAct(ConvBn):
    """``conv`` (no bias) + ``bn1`` + ReLU: the final 1x1 block ``blocks.9.0``."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int = 1):
        super().__init__(OrderedDict(conv=_conv(in_chs, out_chs, kernel, 1, kernel // 2),
                                     bn1=nn.BatchNorm2d(out_chs, eps=BN_EPS), act1=nn.ReLU(inplace=True)))


class GhostModuleV2(nn.Module):
    """Ghost module (``ceil(oup / 2)`` primary + as many cheap depthwise channels, output sliced to ``oup``),
    with DFC attention when ``attn`` (paper Sec. 3.3): ``short_conv`` = 1x1 conv+BN, depthwise (1, 5)+BN,
    depthwise (5, 1)+BN on the 2x2-average-pooled input; its sigmoid is upsampled to the output size."""

    def __init__(self, inp: int, oup: int, relu: bool = True, attn: bool = False, dfc_upsample: str = "nearest"):
        super().__init__()
        self.oup, self.attn, self.dfc_upsample = oup, attn, dfc_upsample
        init = math.ceil(oup / 2)
        self.primary_conv = _conv_bn_act(inp, init, 1, relu=relu)
        self.cheap_operation = _conv_bn_act(init, init, 3, groups=init, relu=relu)
        if attn:
            self.short_conv = ConvBn(
                _conv(inp, oup, 1), nn.BatchNorm2d(oup, eps=BN_EPS),
                _conv(oup, oup, (1, 5), 1, (0, 2), oup), nn.BatchNorm2d(oup, eps=BN_EPS),
                _conv(oup, oup, (5, 1), 1, (2, 0), oup), nn.BatchNorm2d(oup, eps=BN_EPS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary_conv(x)
        out = torch.cat([x1, self.cheap_operation(x1)], dim=1)[:, :self.oup]
        if not self.attn:
            return out
        gate = torch.sigmoid(self.short_conv(F.avg_pool2d(x, kernel_size=2, stride=2)))
        return out * resize(gate, (out.shape[-2], out.shape[-1]), self.dfc_upsample)


class GhostBottleneckV2(nn.Module):
    """``ghost1`` (DFC from the third cfg row on) -> stride-2 depthwise ``conv_dw``/``bn_dw`` -> SE ->
    ``ghost2`` (no ReLU) + shortcut (identity, or depthwise k x k + BN + 1x1 + BN)."""

    def __init__(self, spec: BlockSpec, dfc_upsample: str = "nearest"):
        super().__init__()
        s, mid, k = spec, spec.mid_chs, spec.kernel
        self.stride = s.stride
        self.ghost1 = GhostModuleV2(s.in_chs, mid, relu=True, attn=s.dfc, dfc_upsample=dfc_upsample)
        if s.stride > 1:
            self.conv_dw = _conv(mid, mid, k, s.stride, (k - 1) // 2, mid)
            self.bn_dw = nn.BatchNorm2d(mid, eps=BN_EPS)
        self.se = SqueezeExcite(mid, s.se_ratio) if s.se_ratio > 0 else None
        self.ghost2 = GhostModuleV2(mid, s.out_chs, relu=False)
        if s.in_chs == s.out_chs and s.stride == 1:
            self.shortcut = nn.Sequential()
        else:
            self.shortcut = ConvBn(
                _conv(s.in_chs, s.in_chs, k, s.stride, (k - 1) // 2, s.in_chs), nn.BatchNorm2d(s.in_chs, eps=BN_EPS),
                _conv(s.in_chs, s.out_chs, 1), nn.BatchNorm2d(s.out_chs, eps=BN_EPS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        x = self.ghost1(x)
        if self.stride > 1:
            x = self.bn_dw(self.conv_dw(x))
        if self.se is not None:
            x = self.se(x)
        return self.ghost2(x) + self.shortcut(residual)


class GhostNetV2(nn.Module):
    """GhostNetV2 (official ``GhostNetV2``): stem, 9 stages of ``GhostBottleneckV2`` + ``ConvBnAct``,
    global pool, ``conv_head`` (1280, bias) + ReLU, dropout, ``classifier``."""

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, width: float = 1.0, drop_rate: float = 0.2,
                 dfc_upsample: str = "nearest"):
        super().__init__()
        check_dfc_upsample(dfc_upsample)
        plan = block_plan(width)
        self.num_classes, self.drop_rate, self.width = num_classes, drop_rate, width
        self.num_features, self.head_hidden_size = plan.final, plan.head
        self.conv_stem = nn.Conv2d(in_chans, plan.stem, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(plan.stem, eps=BN_EPS)
        self.act1 = nn.ReLU(inplace=True)
        stages = [nn.Sequential(*(GhostBottleneckV2(b, dfc_upsample) for b in stage)) for stage in plan.blocks]
        stages.append(nn.Sequential(ConvBnAct(plan.blocks[-1][-1].out_chs, plan.final, 1)))
        self.blocks = nn.Sequential(*stages)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_head = nn.Conv2d(plan.final, plan.head, 1, 1, 0, bias=True)
        self.act2 = nn.ReLU(inplace=True)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(plan.head, num_classes) if num_classes > 0 else nn.Identity()

    def reset_classifier(self, num_classes: int) -> None:
        """A new ``classifier`` for ``num_classes`` (0: none; the 1280-d pre-logits come out), torch init."""
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Nothing: GhostNetV2 has no epoch-dependent state."""

    def no_weight_decay(self) -> set[str]:
        """None: the official ``train.py`` (timm's ``create_optimizer``) exempts only 1-D parameters and biases."""
        return set()

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's GhostNet groups (:func:`specs.ghostnetv2.group_matcher`)."""
        return group_matcher(coarse)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.act1(self.bn1(self.conv_stem(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.flatten(self.act2(self.conv_head(self.global_pool(x))))
        x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


registry.register_family("ghostnetv2", GhostNetV2)
