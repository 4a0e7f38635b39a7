"""AdderNet ResNets, MindSpore (arXiv 1912.13200), mirroring ``torch_ref/addernet.py`` name for name.

The official MindSpore ResNet-20 (mindspore-ai/models ``research/cv/AdderQuant/res20_adder.py``) has the same
parameter names plus per-layer ``adder_new``/``scale_para`` placeholders; ``convert.api`` drops those when it
reads a checkpoint in that layout.
"""
from __future__ import annotations

from typing import Sequence

from mindspore import nn
from mindspore.common.initializer import HeNormal, HeUniform

from specs.addernet import check_arch, group_matcher

from .._registry import registry
from ..layers.adder import Adder2d
from ..layers import GlobalAvgPool, Identity, batch_norm, refresh_graph


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int, padding: int, bias: bool, init) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, pad_mode="pad", padding=padding, has_bias=bias,
                     weight_init=init, bias_init="zeros")


class BasicBlock(nn.Cell):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Cell | None = None, **q):
        super().__init__()
        self.conv1 = Adder2d(inplanes, planes, 3, stride, 1, **q)
        self.bn1 = batch_norm(planes)
        self.relu = nn.ReLU()
        self.conv2 = Adder2d(planes, planes, 3, 1, 1, **q)
        self.bn2 = batch_norm(planes)
        self.downsample = downsample if downsample is not None else Identity()

    def construct(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class Bottleneck(nn.Cell):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Cell | None = None, **q):
        super().__init__()
        self.conv1 = Adder2d(inplanes, planes, 1, **q)
        self.bn1 = batch_norm(planes)
        self.conv2 = Adder2d(planes, planes, 3, stride, 1, **q)
        self.bn2 = batch_norm(planes)
        self.conv3 = Adder2d(planes, planes * 4, 1, **q)
        self.bn3 = batch_norm(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample if downsample is not None else Identity()

    def construct(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.downsample(x))


class AdderResNet(nn.Cell):
    """Adder ResNet; same constructor, API and parameter names as ``torch_ref.models.addernet.AdderResNet``."""

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
            self.conv1 = _conv(3, width, 3, 1, 1, False, HeUniform(negative_slope=5 ** 0.5))
            self.maxpool = Identity()
        else:
            self.conv1 = _conv(3, width, 7, 2, 3, False, HeNormal(mode="fan_out", nonlinearity="relu"))
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="pad", padding=1)
        self.bn1 = batch_norm(width)
        self.relu = nn.ReLU()
        for i, n in enumerate(layers):
            setattr(self, f"layer{i + 1}", self._make_layer(block, width * 2 ** i, n, 1 if i == 0 else 2, q))
        self.num_stages = len(layers)
        self.num_features = self.inplanes
        self.avgpool = GlobalAvgPool()
        self._build_head(num_classes)

    def _make_layer(self, block: type, planes: int, blocks: int, stride: int, q: dict) -> nn.SequentialCell:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.SequentialCell([Adder2d(self.inplanes, planes * block.expansion, 1, stride, **q),
                                            batch_norm(planes * block.expansion)])
        layers = [block(self.inplanes, planes, stride, downsample, **q)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, **q) for _ in range(1, blocks)]
        return nn.SequentialCell(layers)

    def _build_head(self, num_classes: int) -> None:
        self.num_classes = num_classes
        for name in ("fc", "bn2"):
            if name in self.name_cells():
                delattr(self, name)
        if num_classes > 0:
            init = HeUniform(negative_slope=5 ** 0.5) if self.cifar_stem else HeNormal(mode="fan_out",
                                                                                      nonlinearity="relu")
            self.fc = _conv(self.num_features, num_classes, 1, 1, 0, not self.cifar_stem, init)
            self.bn2 = batch_norm(num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        """A new ``fc`` + ``bn2`` for ``num_classes`` (0: pooled features); refreshes the compiled graph."""
        self._build_head(num_classes)
        refresh_graph(self)

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Nothing: AdderNet has no epoch-dependent state."""

    def no_weight_decay(self) -> set[str]:
        """None (official ``main.py``: one SGD over every parameter)."""
        return set()

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's ResNet groups (:func:`specs.addernet.group_matcher`)."""
        return group_matcher(coarse)

    def forward_features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        if self.num_stages == 4:
            x = self.layer4(x)
        return x

    def forward_head(self, x, pre_logits: bool = False):
        x = self.avgpool(x)
        if pre_logits or self.num_classes <= 0:
            return x.reshape(x.shape[0], -1)
        x = self.bn2(self.fc(x))
        return x.reshape(x.shape[0], -1)

    def construct(self, x):
        return self.forward_head(self.forward_features(x))


registry.register_family("addernet", AdderResNet)
