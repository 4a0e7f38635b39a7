"""AdderNet ResNets, PyTorch reference (arXiv 1912.13200; official huawei-noah/AdderNet ``resnet20.py``,
``resnet50.py``).

One class for both official networks: ``cifar_stem=True`` is ``resnet20.py`` (3x3 FP stem, BasicBlocks,
``fc`` = bias-free 1x1 conv), ``False`` is ``resnet50.py`` (7x7 FP stem + max pool, Bottlenecks, ``fc`` with
bias). Keys equal the official ones (``conv1``, ``layerX.Y.convZ.adder``, ``downsample.0.adder``, ``fc``,
``bn2``; the ``module.`` prefix of the official DataParallel checkpoints is stripped by the converter).
Difference: ``resnet20.py``'s ``AvgPool2d(8)`` is a global average (the same at 32 px, defined at any size).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from specs.addernet import check_arch, group_matcher

from .._registry import registry
from ..layers.adder import Adder2d


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, **q):
        super().__init__()
        self.conv1 = Adder2d(inplanes, planes, 3, stride, 1, **q)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = Adder2d(planes, planes, 3, 1, 1, **q)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, **q):
        super().__init__()
        self.conv1 = Adder2d(inplanes, planes, 1, **q)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = Adder2d(planes, planes, 3, stride, 1, **q)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = Adder2d(planes, planes * 4, 1, **q)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class AdderResNet(nn.Module):
    """Adder ResNet; ``quant_groups``/``quant_bits`` build the quantized form (see ``torch_ref.layers.adder``)."""

    def __init__(self, layers: Sequence[int] = (3, 3, 3), cifar_stem: bool = True, width: int = 16,
                 num_classes: int = 10, quant_groups: int = 0, quant_bits: int = 8):
        super().__init__()
        check_arch(layers)
        self.cifar_stem = cifar_stem
        self.quant_groups, self.quant_bits = quant_groups, quant_bits
        block = BasicBlock if cifar_stem else Bottleneck
        q = dict(quant_groups=quant_groups, quant_bits=quant_bits)
        self.inplanes = width
        if cifar_stem:
            self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if cifar_stem else nn.MaxPool2d(3, 2, 1)
        for i, n in enumerate(layers):
            planes = width * 2 ** i
            setattr(self, f"layer{i + 1}", self._make_layer(block, planes, n, 1 if i == 0 else 2, q))
        self.num_stages = len(layers)
        self.num_features = self.inplanes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.reset_classifier(num_classes)

    def _make_layer(self, block: type, planes: int, blocks: int, stride: int, q: dict) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(Adder2d(self.inplanes, planes * block.expansion, 1, stride, **q),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, **q)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, **q) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def reset_classifier(self, num_classes: int) -> None:
        """A new ``fc`` (1x1 conv; bias in the ImageNet model, like the official) + ``bn2``; 0: pooled features."""
        self.num_classes = num_classes
        for name in ("fc", "bn2"):
            if hasattr(self, name):
                delattr(self, name)
        if num_classes > 0:
            self.fc = nn.Conv2d(self.num_features, num_classes, 1, bias=not self.cifar_stem)
            if not self.cifar_stem:
                nn.init.kaiming_normal_(self.fc.weight, mode="fan_out", nonlinearity="relu")
            self.bn2 = nn.BatchNorm2d(num_classes)

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Nothing: AdderNet has no epoch-dependent state."""

    def no_weight_decay(self) -> set[str]:
        """None: the official ``main.py`` hands every parameter to one SGD with weight decay (5e-4)."""
        return set()

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's ResNet groups (:func:`specs.addernet.group_matcher`)."""
        return group_matcher(coarse)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.avgpool(x)
        if pre_logits or self.num_classes <= 0:
            return torch.flatten(x, 1)
        return torch.flatten(self.bn2(self.fc(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


registry.register_family("addernet", AdderResNet)
