"""ResNet, PyTorch reference (arXiv 1512.03385; ResNet v1.5 as in torchvision and timm).

Follows huggingface/pytorch-image-models@aa4b5850c154 ``timm/models/resnet.py`` (``BasicBlock``, ``Bottleneck``,
``make_blocks``, ``ResNet``) for the plain ``resnet18/34/50/101/152``: keys ``conv1``, ``bn1``,
``layer{1..4}.{j}.{conv1,bn1,conv2,bn2[,conv3,bn3],downsample.0/1}``, ``fc`` (torchvision's too), stride on
the bottleneck's 3x3 conv, kaiming-normal (fan-out) conv init, ``zero_init_last`` zeroing each block's last BN
gamma, stochastic depth on the residual branch before the shortcut is added (rates from
:func:`specs.resnet.block_plan`), dropout before ``fc``. Not carried over: timm's options the five models do not
use (deep stems, average-pool shortcuts, ResNeXt groups, SE, anti-aliasing, DropBlock, dilation, other global
pools). Difference: every block has a ``drop_path`` module (identity at rate 0) where timm has ``None``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from specs.resnet import BN_EPS, CHANNELS, STEM_WIDTH, BlockSpec, block_plan, group_matcher

from .._registry import registry
from ..layers import ConvBn, DropPath


def _conv(in_chs: int, out_chs: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """Bias-free conv with padding ``kernel // 2`` (timm's convs at dilation 1)."""
    return nn.Conv2d(in_chs, out_chs, kernel, stride, kernel // 2, bias=False)


def _downsample(spec: BlockSpec) -> nn.Module | None:
    """timm ``downsample_conv``: 1x1 conv at the block's stride + BN (``downsample.0/1``), or None."""
    if not spec.downsample:
        return None
    return ConvBn(_conv(spec.in_chs, spec.out_chs, 1, spec.stride), nn.BatchNorm2d(spec.out_chs, eps=BN_EPS))


@torch.no_grad()
def _draw_last_gamma(bn: nn.BatchNorm2d, g: torch.Generator) -> None:
    """Trained-like test values (``torch_ref.testing``) for a branch's last BN: gammas in [0.1, 0.5). Trained
    ResNets keep them small (timm zero-inits them); the generic draw in [0.5, 1.5) lets the residual stream of
    the deep nets grow block by block until float32 alone moves ResNet-152's test logits by 2e-4 of their
    scale against float64 (1.9e-5 with these)."""
    bn.weight.copy_(torch.rand(bn.weight.shape, generator=g) * 0.4 + 0.1)


class BasicBlock(nn.Module):
    """3x3 conv (stride) + BN + ReLU, 3x3 conv + BN, drop path, + shortcut, ReLU (ResNet-18/34)."""

    def __init__(self, spec: BlockSpec):
        super().__init__()
        self.conv1 = _conv(spec.in_chs, spec.planes, 3, spec.stride)
        self.bn1 = nn.BatchNorm2d(spec.planes, eps=BN_EPS)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = _conv(spec.planes, spec.out_chs, 3)
        self.bn2 = nn.BatchNorm2d(spec.out_chs, eps=BN_EPS)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample = _downsample(spec)
        self.drop_path = DropPath(spec.drop_path)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def draw_test_values(self, g: torch.Generator) -> None:
        _draw_last_gamma(self.bn2, g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(self.drop_path(out) + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """1x1 conv + BN + ReLU, 3x3 conv (stride, v1.5) + BN + ReLU, 1x1 conv (x4) + BN, drop path, + shortcut,
    ReLU (ResNet-50/101/152)."""

    def __init__(self, spec: BlockSpec):
        super().__init__()
        self.conv1 = _conv(spec.in_chs, spec.planes, 1)
        self.bn1 = nn.BatchNorm2d(spec.planes, eps=BN_EPS)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = _conv(spec.planes, spec.planes, 3, spec.stride)
        self.bn2 = nn.BatchNorm2d(spec.planes, eps=BN_EPS)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = _conv(spec.planes, spec.out_chs, 1)
        self.bn3 = nn.BatchNorm2d(spec.out_chs, eps=BN_EPS)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = _downsample(spec)
        self.drop_path = DropPath(spec.drop_path)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def draw_test_values(self, g: torch.Generator) -> None:
        _draw_last_gamma(self.bn3, g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))))
        out = self.bn3(self.conv3(out))
        return self.act3(self.drop_path(out) + (x if self.downsample is None else self.downsample(x)))


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """timm ``ResNet`` with the plain 7x7 stem: ``conv1``/``bn1``/ReLU, 3x3 stride-2 max pool, ``layer1..4``,
    global average pool, dropout, ``fc``."""

    def __init__(self, block: str = "bottleneck", layers: Sequence[int] = (3, 4, 6, 3), in_chans: int = 3,
                 num_classes: int = 1000, channels: Sequence[int] = CHANNELS, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, zero_init_last: bool = True):
        super().__init__()
        plan = block_plan(block, layers, channels, drop_path_rate)
        self.num_classes, self.drop_rate = num_classes, drop_rate
        self.num_features = self.head_hidden_size = plan[-1][-1].out_chs
        self.conv1 = nn.Conv2d(in_chans, STEM_WIDTH, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_WIDTH, eps=BN_EPS)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for s, stage in enumerate(plan):
            self.add_module(f"layer{s + 1}", nn.Sequential(*(BLOCKS[block](spec) for spec in stage)))
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    m.zero_init_last()

    def reset_classifier(self, num_classes: int) -> None:
        """A new ``fc`` for ``num_classes`` (0: none; the pooled features come out), torch init."""
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Nothing: ResNet has no epoch-dependent state."""

    def no_weight_decay(self) -> set[str]:
        """None: timm's ResNet declares none (its optimizer factory exempts 1-D parameters and biases)."""
        return set()

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's ResNet groups (:func:`specs.resnet.group_matcher`)."""
        return group_matcher(coarse)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.flatten(self.global_pool(x))
        x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


registry.register_family("resnet", ResNet)
