"""AdaBin binary ResNets, MindSpore (arXiv 2208.08084), mirroring ``torch_ref/adabin.py`` name for name
(architecture, official sources and the global-pool difference documented there). Binary layers:
``ms_models/binary.py``.

The official MindSpore port (mindspore-ai/models ``research/cv/AdaBin/src/resnet.py``, CIFAR-10 ResNet-20)
has our parameter names except its (1, C, 1, 1) ``Maxout`` parameters; ``convert.official_ms`` maps it.
"""
from __future__ import annotations

import math
from typing import Sequence

import mindspore as ms
from mindspore import Tensor, nn, ops
from mindspore.common.initializer import HeNormal, HeUniform, Normal

from specs.adabin import check_arch, group_matcher, temperature

from .._registry import registry
from ..layers.binary import AdaBinConv2d, Maxout, set_temperature
from ..layers import BN_MOMENTUM, Identity, batch_norm, refresh_graph, torch_init_dense


def _weight_init(init: str, kernel: int, out_ch: int):
    """MindSpore initializer of the official conv init (see ``torch_ref.models.adabin._init_weights``)."""
    if init == "he_in":
        return HeNormal()
    if init == "he_out":
        return Normal(sigma=math.sqrt(2.0 / (kernel * kernel * out_ch)))
    return HeUniform(negative_slope=math.sqrt(5))


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int, padding: int, init: str) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, pad_mode="pad", padding=padding, has_bias=False,
                     weight_init=_weight_init(init, kernel, out_ch))


def _freeze(cell: nn.Cell) -> None:
    for p in cell.get_parameters():
        p.requires_grad = False


class ShortcutA(nn.Cell):
    """Option-A shortcut of the CIFAR ResNet-20: stride-2 subsampling, ``pad`` zero channels on both sides.
    ``x[:, :, ::2, ::2]`` is taken by two gathers with static indices and the channel padding is a concat of
    zeros (same values): on the 2.8.0 CPU backend the strided slice's gradient fails ("StridedSliceGrad ...
    input memory out of bounds"), and with ``ops.pad`` every GRAPH_MODE run of a compiled gradient after the
    first returned wrong gradients upstream of the shortcut."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def construct(self, x):
        x = ops.gather(x, Tensor(tuple(range(0, x.shape[2], 2)), ms.int32), 2)
        x = ops.gather(x, Tensor(tuple(range(0, x.shape[3], 2)), ms.int32), 3)
        zeros = ops.zeros((x.shape[0], self.pad, x.shape[2], x.shape[3]), x.dtype)
        return ops.concat((zeros, x, zeros), 1)


class BasicBlock(nn.Cell):
    """AdaBin basic block; shortcut named ``shortcut`` (CIFAR) or ``downsample`` (ImageNet) like the official keys."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, shortcut: str = "A", init: str = "he_in"):
        super().__init__()
        self.conv1 = AdaBinConv2d(inplanes, planes, 3, stride, 1, _weight_init(init, 3, planes))
        self.bn1 = batch_norm(planes)
        self.nonlinear1 = Maxout(planes)
        self.conv2 = AdaBinConv2d(planes, planes, 3, 1, 1, _weight_init(init, 3, planes))
        self.bn2 = batch_norm(planes)
        self.nonlinear2 = Maxout(planes)
        self.short_name = "downsample" if shortcut == "avg_down" else "shortcut"
        short: nn.Cell = Identity()
        if stride != 1 or inplanes != planes:
            if shortcut == "A":
                short = ShortcutA(planes // 4)
            elif shortcut == "conv":
                short = nn.SequentialCell([_conv(inplanes, planes, 1, stride, 0, init), batch_norm(planes)])
            else:
                short = nn.SequentialCell([
                    nn.AvgPool2d(stride, stride, pad_mode="pad", ceil_mode=True, count_include_pad=False),
                    _conv(inplanes, planes, 1, 1, 0, init), batch_norm(planes)])
        setattr(self, self.short_name, short)

    def construct(self, x):
        out = self.nonlinear1(self.bn1(self.conv1(x)) + getattr(self, self.short_name)(x))
        return self.nonlinear2(self.bn2(self.conv2(out)) + out)


class AdaBinResNet(nn.Cell):
    """AdaBin ResNet; same constructor, API and parameter names as ``torch_ref.models.adabin.AdaBinResNet``."""

    def __init__(self, layers: Sequence[int] = (3, 3, 3), stem: str = "cifar", shortcut: str = "A", width: int = 16,
                 init: str = "he_in", num_classes: int = 10):
        super().__init__()
        check_arch(layers, stem, shortcut)
        self.stem, self.init = stem, init
        self.head_name = "linear" if stem == "cifar" else "fc"
        if stem == "cifar":
            self.conv1 = _conv(3, width, 3, 1, 1, init)
            self.maxpool = Identity()
        else:
            self.conv1 = _conv(3, width, 7, 2, 3, init)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="pad", padding=1)
        self.bn1 = batch_norm(width)
        self.nonlinear1 = Maxout(width)
        inplanes = width
        for i, n in enumerate(layers):
            planes = width * 2 ** i
            blocks = [BasicBlock(inplanes if j == 0 else planes, planes, (1 if i == 0 else 2) if j == 0 else 1,
                                 shortcut, init) for j in range(n)]
            setattr(self, f"layer{i + 1}", nn.SequentialCell(blocks))
            inplanes = planes
        self.num_stages = len(layers)
        self.num_features = inplanes
        self.bn2 = nn.BatchNorm1d(inplanes, eps=1e-5, momentum=BN_MOMENTUM)
        if stem == "imagenet":
            self.nonlinear2 = Maxout(inplanes)          # unused, frozen (see torch_ref.models.adabin)
            _freeze(self.nonlinear2)
        self._build_head(num_classes)

    def _build_head(self, num_classes: int) -> None:
        self.num_classes = num_classes
        for name in (self.head_name, "bn3"):
            if name in self.name_cells():
                delattr(self, name)
        if num_classes > 0:
            head = torch_init_dense(self.num_features, num_classes)
            if self.init == "he_in":
                head.weight.set_data(ms.common.initializer.initializer(HeNormal(), head.weight.shape, ms.float32))
            setattr(self, self.head_name, head)
            if self.stem == "imagenet":
                self.bn3 = nn.BatchNorm1d(num_classes, eps=1e-5, momentum=BN_MOMENTUM)   # unused, frozen
                _freeze(self.bn3)

    def reset_classifier(self, num_classes: int) -> None:
        """A new classifier for ``num_classes`` (0: pre-logits features); refreshes the compiled graph."""
        self._build_head(num_classes)
        refresh_graph(self)

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Per-epoch estimator temperature (:func:`specs.adabin.temperature`); no GRAPH_MODE recompile."""
        set_temperature(self, *temperature(epoch, total_epochs))

    def no_weight_decay(self) -> set[str]:
        """None (official ``main.py``: one SGD over every parameter; see the torch reference)."""
        return set()

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's ResNet groups, stem Maxout included (:func:`specs.adabin.group_matcher`)."""
        return group_matcher(coarse)

    def forward_features(self, x):
        x = self.maxpool(self.nonlinear1(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        if self.num_stages == 4:
            x = self.layer4(x)
        return x

    def forward_head(self, x, pre_logits: bool = False):
        x = self.bn2(x.mean(axis=(2, 3)))
        if pre_logits or self.num_classes <= 0:
            return x
        return getattr(self, self.head_name)(x)

    def construct(self, x):
        return self.forward_head(self.forward_features(x))


registry.register_family("adabin", AdaBinResNet)
