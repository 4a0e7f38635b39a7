"""AdaBin binary ResNets, PyTorch reference (arXiv 2208.08084; official huawei-noah/Efficient-Computing
``BinaryNetworks/AdaBin/cifar10/nets/resnet20.py``, ``resnet18.py``, ``imagenet/nets/resnet18.py``,
``resnet34.py``). Binary layers: ``torch_ref/binary.py``.

One class for the four official networks; every block is
``out = Maxout1(BN1(AdaBinConv1(x)) + shortcut(x))``, ``out = Maxout2(BN2(AdaBinConv2(out)) + out)``.
- ``stem='cifar'``: FP 3x3 conv + BN + Maxout; head ``bn2`` (BatchNorm1d) -> ``linear``. Shortcut ``'A'``
  (ResNet-20): ``pad(x[:, :, ::2, ::2])`` with ``planes // 4`` zero channels each side (no keys); ``'conv'``
  (ResNet-18): ``shortcut = [Conv1x1(stride), BN]`` in full precision.
- ``stem='imagenet'``: FP 7x7/2 conv + BN + Maxout + MaxPool 3/2; ``downsample = [AvgPool2d(stride, ceil_mode,
  count_include_pad=False), Conv1x1, BN]`` (``avg_down``); head ``bn2`` -> ``fc``. ``nonlinear2`` (Maxout) and
  ``bn3`` (BatchNorm1d(num_classes)) are defined but unused by the official forward; they are kept (unused)
  so that official checkpoints load strictly, with ``requires_grad=False`` (they never get a gradient; the
  official SGD skips them the same way).
Keys equal the official ones; the official checkpoints' ``module.`` prefix and ``{'state_dict': ...}``
container are removed by ``convert.io``.

Difference from the official code: the final pooling is a global average. The official fixed windows
(``avg_pool2d(out, W)``, ``avg_pool2d(out, 4)``, ``AvgPool2d(7, stride=1)``) cover the whole map at the
nominal sizes (32 px CIFAR, 224 px ImageNet; identical there) but reject other sizes (ImageNet: any final map
but 7x7) or average only the top-left window (CIFAR ResNet-18 at 33-63 px).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from specs.adabin import check_arch, group_matcher, temperature

from .._registry import registry
from ..layers.binary import AdaBinConv2d, Maxout, set_temperature


class ShortcutA(nn.Module):
    """Option-A shortcut of the CIFAR ResNet-20: stride-2 subsampling, ``pad`` zero channels on both sides."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0)


class BasicBlock(nn.Module):
    """AdaBin basic block (official ``BasicBlock_1w1a`` / ``BasicBlock``); the shortcut module is named
    ``shortcut`` in the CIFAR networks and ``downsample`` in the ImageNet ones, like the official keys."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, shortcut: str = "A"):
        super().__init__()
        self.conv1 = AdaBinConv2d(inplanes, planes, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.nonlinear1 = Maxout(planes)
        self.conv2 = AdaBinConv2d(planes, planes, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.nonlinear2 = Maxout(planes)
        self.short_name = "downsample" if shortcut == "avg_down" else "shortcut"
        short: nn.Module = nn.Identity()
        if stride != 1 or inplanes != planes:
            if shortcut == "A":
                short = ShortcutA(planes // 4)
            elif shortcut == "conv":
                short = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
            else:
                short = nn.Sequential(nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False),
                                      nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes))
        setattr(self, self.short_name, short)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.nonlinear1(self.bn1(self.conv1(x)) + getattr(self, self.short_name)(x))
        return self.nonlinear2(self.bn2(self.conv2(out)) + out)


def _init_weights(model: nn.Module, init: str) -> None:
    """Official initialisers: ``he_in`` = ResNet-20's ``kaiming_normal_`` on conv and linear weights, ``he_out``
    = the ImageNet nets' ``normal(0, sqrt(2 / (k*k*C_out)))`` on convs, ``default`` = PyTorch's."""
    for m in model.modules():
        if init == "he_in" and isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
        elif init == "he_out" and isinstance(m, nn.Conv2d):
            m.weight.data.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))


class AdaBinResNet(nn.Module):
    """AdaBin ResNet (see the module docstring); ``set_epoch`` drives the weight-estimator temperature."""

    def __init__(self, layers: Sequence[int] = (3, 3, 3), stem: str = "cifar", shortcut: str = "A", width: int = 16,
                 init: str = "he_in", num_classes: int = 10):
        super().__init__()
        check_arch(layers, stem, shortcut)
        self.stem, self.init = stem, init
        self.head_name = "linear" if stem == "cifar" else "fc"
        if stem == "cifar":
            self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.nonlinear1 = Maxout(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem == "imagenet" else nn.Identity()
        inplanes = width
        for i, n in enumerate(layers):
            planes = width * 2 ** i
            blocks = [BasicBlock(inplanes if j == 0 else planes, planes, (1 if i == 0 else 2) if j == 0 else 1, shortcut)
                      for j in range(n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = planes
        self.num_stages = len(layers)
        self.num_features = inplanes
        self.bn2 = nn.BatchNorm1d(inplanes)
        if stem == "imagenet":
            self.nonlinear2 = Maxout(inplanes).requires_grad_(False)    # unused (see the module docstring)
        self.reset_classifier(num_classes)
        _init_weights(self, init)

    def reset_classifier(self, num_classes: int) -> None:
        """A new classifier (``linear``/``fc``, plus the ImageNet nets' unused ``bn3``); 0: pre-logits features."""
        self.num_classes = num_classes
        for name in (self.head_name, "bn3"):
            if hasattr(self, name):
                delattr(self, name)
        if num_classes > 0:
            setattr(self, self.head_name, nn.Linear(self.num_features, num_classes))
            if self.stem == "imagenet":
                self.bn3 = nn.BatchNorm1d(num_classes).requires_grad_(False)   # unused (see the module docstring)
            _init_weights(getattr(self, self.head_name), self.init)

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Per-epoch estimator temperature (official ``--progressive`` training): see
        :func:`specs.adabin.temperature`."""
        set_temperature(self, *temperature(epoch, total_epochs))

    def no_weight_decay(self) -> set[str]:
        """None: the official ``main.py`` (CIFAR-10 and ImageNet) hands every parameter to one SGD with weight
        decay; nothing beyond the optimizer factory's 1-D rule is exempted (that rule exempts the BN, Maxout
        and activation scalars, which the official SGD decays)."""
        return set()

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's ResNet groups, stem Maxout included (:func:`specs.adabin.group_matcher`)."""
        return group_matcher(coarse)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.nonlinear1(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.bn2(x.mean((2, 3)))
        if pre_logits or self.num_classes <= 0:
            return x
        return getattr(self, self.head_name)(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


registry.register_family("adabin", AdaBinResNet)
