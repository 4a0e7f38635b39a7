"""ResNet, MindSpore (arXiv 1512.03385), mirroring ``torch_ref/models/resnet.py`` name for name.

Follows huggingface/pytorch-image-models@aa4b5850c154 ``timm/models/resnet.py`` for the plain
``resnet18/34/50/101/152`` (see the torch reference for what is and is not carried over). Every layer is built
with explicit torch-equivalent arguments: ``pad_mode='pad'`` convs without bias (kaiming-normal, fan-out),
BN eps 1e-5 and momentum 0.9 (= torch's 0.1), the stem max pool with ``padding=1``
(:class:`~ms_models.layers.MaxPool2d`: -inf padding, exportable to ONNX).

MindSpore-specific (GRAPH_MODE): each conv + BN pair runs through :meth:`~ms_models.layers.ConvBn.forward_pair`
(the ``downsample`` pair as a :class:`~ms_models.layers.ConvBn` cell), so in eval mode the BN is folded into
the conv (one conv and a BiasAdd; a few float32 ulps from conv-then-BN); the global pool is a MatMul
(:class:`~ms_models.layers.GlobalAvgPool`). Training mode and PyNative run the plain cells.
"""
from __future__ import annotations

from typing import Sequence

import mindspore as ms
from mindspore import nn
from mindspore.common.initializer import HeNormal, initializer

from specs.resnet import BN_EPS, CHANNELS, STEM_WIDTH, BlockSpec, block_plan, group_matcher

from .._registry import registry
from ..layers import (ConvBn, DropPath, GlobalAvgPool, Identity, MaxPool2d, batch_norm, refresh_graph,
                      torch_init_dense)


def _conv(in_chs: int, out_chs: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """Bias-free conv with padding ``kernel // 2``, timm's init ``kaiming_normal_(mode='fan_out', relu)``."""
    return nn.Conv2d(in_chs, out_chs, kernel, stride=stride, pad_mode="pad", padding=kernel // 2, has_bias=False,
                     weight_init=HeNormal(mode="fan_out", nonlinearity="relu"))


def _downsample(spec: BlockSpec) -> nn.Cell:
    """1x1 conv at the block's stride + BN (``downsample.0/1``), or the identity."""
    if not spec.downsample:
        return Identity()
    return ConvBn(_conv(spec.in_chs, spec.out_chs, 1, spec.stride), batch_norm(spec.out_chs, BN_EPS))


def _zero_gamma(bn: nn.BatchNorm2d) -> None:
    bn.gamma.set_data(initializer("zeros", bn.gamma.shape, ms.float32))


class BasicBlock(nn.Cell):
    """3x3 conv (stride) + BN + ReLU, 3x3 conv + BN, drop path, + shortcut, ReLU (ResNet-18/34)."""

    def __init__(self, spec: BlockSpec):
        super().__init__()
        self.conv1 = _conv(spec.in_chs, spec.planes, 3, spec.stride)
        self.bn1 = batch_norm(spec.planes, BN_EPS)
        self.act1 = nn.ReLU()
        self.conv2 = _conv(spec.planes, spec.out_chs, 3)
        self.bn2 = batch_norm(spec.out_chs, BN_EPS)
        self.act2 = nn.ReLU()
        self.downsample = _downsample(spec)
        self.drop_path = DropPath(spec.drop_path)

    def zero_init_last(self) -> None:
        _zero_gamma(self.bn2)

    def construct(self, x):
        out = self.act1(ConvBn.forward_pair(self.conv1, self.bn1, x))
        out = ConvBn.forward_pair(self.conv2, self.bn2, out)
        return self.act2(self.drop_path(out) + self.downsample(x))


class Bottleneck(nn.Cell):
    """1x1 conv + BN + ReLU, 3x3 conv (stride) + BN + ReLU, 1x1 conv (x4) + BN, drop path, + shortcut, ReLU."""

    def __init__(self, spec: BlockSpec):
        super().__init__()
        self.conv1 = _conv(spec.in_chs, spec.planes, 1)
        self.bn1 = batch_norm(spec.planes, BN_EPS)
        self.act1 = nn.ReLU()
        self.conv2 = _conv(spec.planes, spec.planes, 3, spec.stride)
        self.bn2 = batch_norm(spec.planes, BN_EPS)
        self.act2 = nn.ReLU()
        self.conv3 = _conv(spec.planes, spec.out_chs, 1)
        self.bn3 = batch_norm(spec.out_chs, BN_EPS)
        self.act3 = nn.ReLU()
        self.downsample = _downsample(spec)
        self.drop_path = DropPath(spec.drop_path)

    def zero_init_last(self) -> None:
        _zero_gamma(self.bn3)

    def construct(self, x):
        out = self.act1(ConvBn.forward_pair(self.conv1, self.bn1, x))
        out = self.act2(ConvBn.forward_pair(self.conv2, self.bn2, out))
        out = ConvBn.forward_pair(self.conv3, self.bn3, out)
        return self.act3(self.drop_path(out) + self.downsample(x))


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Cell):
    """ResNet; same constructor, attributes and methods as the torch reference."""

    def __init__(self, block: str = "bottleneck", layers: Sequence[int] = (3, 4, 6, 3), in_chans: int = 3,
                 num_classes: int = 1000, channels: Sequence[int] = CHANNELS, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, zero_init_last: bool = True):
        super().__init__()
        plan = block_plan(block, layers, channels, drop_path_rate)
        self.num_classes, self.drop_rate = num_classes, drop_rate
        self.num_features = self.head_hidden_size = plan[-1][-1].out_chs
        self.conv1 = _conv(in_chans, STEM_WIDTH, 7, 2)
        self.bn1 = batch_norm(STEM_WIDTH, BN_EPS)
        self.act1 = nn.ReLU()
        self.maxpool = MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            nn.SequentialCell([BLOCKS[block](spec) for spec in stage]) for stage in plan)
        self.global_pool = GlobalAvgPool()
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(p=drop_rate)
        self.fc = torch_init_dense(self.num_features, num_classes) if num_classes > 0 else Identity()
        if zero_init_last:
            for _, cell in self.cells_and_names():
                if isinstance(cell, (BasicBlock, Bottleneck)):
                    cell.zero_init_last()

    def reset_classifier(self, num_classes: int) -> None:
        """A new ``fc`` for ``num_classes`` (0: none); refreshes the compiled graph."""
        self.num_classes = num_classes
        self.fc = torch_init_dense(self.num_features, num_classes) if num_classes > 0 else Identity()
        refresh_graph(self)

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Nothing: ResNet has no epoch-dependent state."""

    def no_weight_decay(self) -> set[str]:
        """None (timm's ResNet declares none; see the torch reference)."""
        return set()

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's ResNet groups (:func:`specs.resnet.group_matcher`)."""
        return group_matcher(coarse)

    def forward_features(self, x):
        x = self.maxpool(self.act1(ConvBn.forward_pair(self.conv1, self.bn1, x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x, pre_logits: bool = False):
        x = self.dropout(self.flatten(self.global_pool(x)))
        return x if pre_logits else self.fc(x)

    def construct(self, x):
        return self.forward_head(self.forward_features(x))


registry.register_family("resnet", ResNet)
