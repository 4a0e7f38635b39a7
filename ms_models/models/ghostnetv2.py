"""GhostNetV2, MindSpore (arXiv 2211.12905), mirroring ``torch_ref/ghostnetv2.py`` name for name.

Follows the official PyTorch file huawei-noah/Efficient-AI-Backbones ``ghostnetv2_pytorch/model/
ghostnetv2_torch.py`` (keys, rounding, nearest DFC upsampling), not the official MindSpore port
(mindspore-ai/models ``research/cv/ghostnetv2/src/ghostnetv2.py``: ceil rounding, unsliced ghost outputs,
bilinear gate upsampling, flat ``blocks.0..16``); ``convert.official_ms`` maps that port's checkpoint onto
this model and ``dfc_upsample='bilinear'`` reproduces its gate upsampling.

MindSpore-specific: the DFC gate is upsampled by :func:`ms_models.layers.resize` (explicit index gathers from
static shapes, equal to PyTorch's legacy nearest rule and ONNX-exportable); the depthwise (1, 5) / (5, 1)
convs use stride-1 ``pad_mode='same'``, which for odd kernels is PyTorch's symmetric ``(0, 2)`` / ``(2, 0)``
padding (and avoids the exporter's wrong order for asymmetric 4-tuple paddings). Weights are initialised like
PyTorch's defaults (the official file has no custom init).

Speed (MindSpore 2.8 CPU, GRAPH_MODE; figures in ``docs/ghostnetv2.md``): every conv + BN pair is a :class:`~ms_models.layers.ConvBn` (or, where
the official keys make it two named attributes, runs through :meth:`~ms_models.layers.ConvBn.forward_pair`):
depthwise convs run the compiled kernel of :mod:`ms_models.layers.kernels` and in eval mode the BN is folded
into the conv (a few float32 ulps from conv-then-BN); a DFC gate upsampled by whole factors multiplies as a
broadcast (:func:`~ms_models.layers.mul_resized`) and the SE mean is a MatMul
(:func:`~ms_models.layers.spatial_mean`). The cells and parameter names are the torch reference's; training
mode runs real BatchNorm.
"""
from __future__ import annotations

import math
from collections import OrderedDict

from mindspore import nn, ops

from specs.ghostnetv2 import BN_EPS, BlockSpec, block_plan, check_dfc_upsample, group_matcher, se_channels

from .._registry import registry
from ..layers import (ConvBn, GlobalAvgPool, Identity, batch_norm, hard_sigmoid, mul_resized, refresh_graph,
                     spatial_mean, torch_init_conv2d, torch_init_dense)


def _depthwise(chs: int, kernel: int | tuple[int, int], stride: int = 1, pad_mode: str = "pad") -> nn.Conv2d:
    """A bias-free depthwise conv (PyTorch padding ``(k - 1) // 2``, or ``'same'``)."""
    padding = (kernel - 1) // 2 if pad_mode == "pad" else 0
    return torch_init_conv2d(chs, chs, kernel, stride, padding, group=chs, pad_mode=pad_mode)


def _conv_bn_act(in_chs: int, out_chs: int, kernel: int, group: int = 1, relu: bool = True) -> ConvBn:
    """``[Conv(k, pad k//2, no bias), BN, ReLU or nothing]`` (official ``primary_conv``/``cheap_operation``)."""
    return ConvBn(torch_init_conv2d(in_chs, out_chs, kernel, 1, kernel // 2, group=group),
                  batch_norm(out_chs, BN_EPS), nn.ReLU() if relu else Identity())


class SqueezeExcite(nn.Cell):
    """SE with a hard-sigmoid gate: ``x * hard_sigmoid(conv_expand(relu(conv_reduce(mean(x)))))``."""

    def __init__(self, in_chs: int, se_ratio: float = 0.25):
        super().__init__()
        reduced = se_channels(in_chs, se_ratio)
        self.conv_reduce = torch_init_conv2d(in_chs, reduced, 1, bias=True)
        self.act1 = nn.ReLU()
        self.conv_expand = torch_init_conv2d(reduced, in_chs, 1, bias=True)

    def construct(self, x):
        s = self.conv_expand(self.act1(self.conv_reduce(spatial_mean(x))))
        return x * hard_sigmoid(s)


class ConvBnAct(ConvBn):
    """``conv`` (no bias) + ``bn1`` + ReLU: the final 1x1 block ``blocks.9.0``."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int = 1):
        super().__init__(OrderedDict(conv=torch_init_conv2d(in_chs, out_chs, kernel, 1, kernel // 2),
                                     bn1=batch_norm(out_chs, BN_EPS), act1=nn.ReLU()))


class GhostModuleV2(nn.Cell):
    """Ghost module with optional DFC attention (see the torch reference)."""

    def __init__(self, inp: int, oup: int, relu: bool = True, attn: bool = False, dfc_upsample: str = "nearest"):
        super().__init__()
        self.oup, self.attn, self.dfc_upsample = oup, attn, dfc_upsample
        init = math.ceil(oup / 2)
        self.sliced = 2 * init != oup
        self.primary_conv = _conv_bn_act(inp, init, 1, relu=relu)
        self.cheap_operation = _conv_bn_act(init, init, 3, group=init, relu=relu)
        if attn:
            self.pool = nn.AvgPool2d(kernel_size=2, stride=2, pad_mode="valid")
            self.short_conv = ConvBn(
                torch_init_conv2d(inp, oup, 1), batch_norm(oup, BN_EPS),
                _depthwise(oup, (1, 5), pad_mode="same"), batch_norm(oup, BN_EPS),
                _depthwise(oup, (5, 1), pad_mode="same"), batch_norm(oup, BN_EPS))

    def construct(self, x):
        x1 = self.primary_conv(x)
        out = ops.concat((x1, self.cheap_operation(x1)), 1)
        if self.sliced:
            out = out[:, :self.oup]
        if not self.attn:
            return out
        gate = ops.sigmoid(self.short_conv(self.pool(x)))
        return mul_resized(out, gate, self.dfc_upsample)


class GhostBottleneckV2(nn.Cell):
    """``ghost1`` -> stride-2 ``conv_dw``/``bn_dw`` -> SE -> ``ghost2`` + shortcut (see the torch reference)."""

    def __init__(self, spec: BlockSpec, dfc_upsample: str = "nearest"):
        super().__init__()
        s, mid, k = spec, spec.mid_chs, spec.kernel
        self.stride = s.stride
        self.ghost1 = GhostModuleV2(s.in_chs, mid, relu=True, attn=s.dfc, dfc_upsample=dfc_upsample)
        if s.stride > 1:
            self.conv_dw = ConvBn.with_kernel(_depthwise(mid, k, s.stride))
            self.bn_dw = batch_norm(mid, BN_EPS)
        self.has_se = s.se_ratio > 0
        if self.has_se:
            self.se = SqueezeExcite(mid, s.se_ratio)
        self.ghost2 = GhostModuleV2(mid, s.out_chs, relu=False)
        if s.in_chs == s.out_chs and s.stride == 1:
            self.shortcut = Identity()
        else:
            self.shortcut = ConvBn(
                _depthwise(s.in_chs, k, s.stride), batch_norm(s.in_chs, BN_EPS),
                torch_init_conv2d(s.in_chs, s.out_chs, 1), batch_norm(s.out_chs, BN_EPS))

    def construct(self, x):
        residual = x
        x = self.ghost1(x)
        if self.stride > 1:
            x = ConvBn.forward_pair(self.conv_dw, self.bn_dw, x)
        if self.has_se:
            x = self.se(x)
        return self.ghost2(x) + self.shortcut(residual)


class GhostNetV2(nn.Cell):
    """GhostNetV2; same constructor, attributes and methods as the torch reference."""

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, width: float = 1.0, drop_rate: float = 0.2,
                 dfc_upsample: str = "nearest"):
        super().__init__()
        check_dfc_upsample(dfc_upsample)
        plan = block_plan(width)
        self.num_classes, self.drop_rate, self.width = num_classes, drop_rate, width
        self.num_features, self.head_hidden_size = plan.final, plan.head
        self.conv_stem = torch_init_conv2d(in_chans, plan.stem, 3, 2, 1)
        self.bn1 = batch_norm(plan.stem, BN_EPS)
        self.act1 = nn.ReLU()
        stages = [nn.SequentialCell([GhostBottleneckV2(b, dfc_upsample) for b in stage]) for stage in plan.blocks]
        stages.append(nn.SequentialCell([ConvBnAct(plan.blocks[-1][-1].out_chs, plan.final, 1)]))
        self.blocks = nn.SequentialCell(stages)
        self.global_pool = GlobalAvgPool()
        self.conv_head = torch_init_conv2d(plan.final, plan.head, 1, bias=True)
        self.act2 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(p=drop_rate)
        self.classifier = torch_init_dense(plan.head, num_classes) if num_classes > 0 else Identity()

    def reset_classifier(self, num_classes: int) -> None:
        """A new ``classifier`` for ``num_classes`` (0: none); refreshes the compiled graph."""
        self.num_classes = num_classes
        self.classifier = torch_init_dense(self.head_hidden_size, num_classes) if num_classes > 0 else Identity()
        refresh_graph(self)

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Nothing: GhostNetV2 has no epoch-dependent state."""

    def no_weight_decay(self) -> set[str]:
        """None (official ``train.py``; see the torch reference)."""
        return set()

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's GhostNet groups (:func:`specs.ghostnetv2.group_matcher`)."""
        return group_matcher(coarse)

    def forward_features(self, x):
        return self.blocks(self.act1(ConvBn.forward_pair(self.conv_stem, self.bn1, x)))

    def forward_head(self, x, pre_logits: bool = False):
        x = self.dropout(self.flatten(self.act2(self.conv_head(self.global_pool(x)))))
        return x if pre_logits else self.classifier(x)

    def construct(self, x):
        return self.forward_head(self.forward_features(x))


registry.register_family("ghostnetv2", GhostNetV2)
