"""VanillaNet, PyTorch reference (arXiv 2305.12972).

Follows huawei-noah/VanillaNet ``models/vanillanet.py`` class for class and key for key, so the official
``vanillanet_*.pth`` files load with ``strict=True`` in train form and the files written by the official
``--switch_to_deploy`` load in deploy form. Differences from the official file: the BN fusion runs through
``specs.fusion`` (same formulas, NumPy float32); ``forward_features``/``forward_head``/``reset_classifier``
are added in timm's style.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from specs.fusion import fold_bn, merge_1x1
from specs.vanillanet import (ACT_NUM, BN_EPS, DECAY_EPOCHS, check_act_learn, check_arch, deep_training_lambda,
                              group_matcher)

from .._registry import registry
from ..layers import AdaptiveMaxPool2d, bn_arrays, conv_arrays, conv_bn, fused_conv, trunc_normal_init


class Activation(nn.ReLU):
    """Series-informed activation (paper Sec. 3.2, official ``activation``): ``BN(DWConv7x7(ReLU(x)))``.

    Like the official class it subclasses ``nn.ReLU`` and owns ``weight`` itself (key ``act.weight``);
    deploy form folds the BN into ``bias``.
    """

    def __init__(self, dim: int, act_num: int = ACT_NUM, deploy: bool = False):
        super().__init__()
        self.act_num, self.dim, self.deploy = act_num, dim, deploy
        self.weight = nn.Parameter(torch.empty(dim, 1, 2 * act_num + 1, 2 * act_num + 1))
        nn.init.trunc_normal_(self.weight, std=0.02)
        if deploy:
            self.bias = nn.Parameter(torch.zeros(dim))
        else:
            self.bias = None
            self.bn = nn.BatchNorm2d(dim, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(F.relu(x), self.weight, self.bias, padding=self.act_num, groups=self.dim)
        return x if self.deploy else self.bn(x)

    def switch_to_deploy(self) -> None:
        w, b = fold_bn(self.weight.detach().numpy(), None, *bn_arrays(self.bn))
        with torch.no_grad():
            self.weight.copy_(torch.from_numpy(w))
        self.bias = nn.Parameter(torch.from_numpy(b))
        del self.bn
        self.deploy = True


def _pool(stride: int, ada_pool: int | None) -> nn.Module:
    if stride == 1:
        return nn.Identity()
    return AdaptiveMaxPool2d((ada_pool, ada_pool)) if ada_pool else nn.MaxPool2d(stride)


class Block(nn.Module):
    """``conv1x1+BN -> leaky_relu(act_learn) -> conv1x1+BN -> pool -> Activation`` (official ``Block``)."""

    def __init__(self, dim: int, dim_out: int, act_num: int = ACT_NUM, stride: int = 2,
                 deploy: bool = False, ada_pool: int | None = None):
        super().__init__()
        self.act_learn = 1.0
        self.deploy = deploy
        if deploy:
            self.conv = nn.Conv2d(dim, dim_out, 1)
        else:
            self.conv1 = conv_bn(dim, dim, 1, eps=BN_EPS)
            self.conv2 = conv_bn(dim, dim_out, 1, eps=BN_EPS)
        self.pool = _pool(stride, ada_pool)
        self.act = Activation(dim_out, act_num, deploy=deploy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:
            x = self.conv(x)
        else:
            x = self.conv2(F.leaky_relu(self.conv1(x), self.act_learn))
        return self.act(self.pool(x))

    def switch_to_deploy(self) -> None:
        w1, b1 = fold_bn(*conv_arrays(self.conv1[0]), *bn_arrays(self.conv1[1]))
        w2, b2 = fold_bn(*conv_arrays(self.conv2[0]), *bn_arrays(self.conv2[1]))
        self.conv = fused_conv(self.conv2[0], *merge_1x1(w1, b1, w2, b2))
        del self.conv1, self.conv2
        self.act.switch_to_deploy()
        self.deploy = True


class VanillaNet(nn.Module):
    """VanillaNet (official ``VanillaNet``): stem, ``len(strides)`` blocks, conv classifier; no residuals.

    ``change_act(lam)`` sets the deep-training slope (``set_epoch`` by the official schedule, over
    ``decay_epochs``, linear or with ``decay_linear=False`` cosine); ``switch_to_deploy()`` folds every BN and
    merges the conv pairs into the official deploy layout (``stem.0``, ``stem.1``, ``stages.i.conv``, ``cls.2``).
    """

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, dims: Sequence[int] = (96, 192, 384, 768),
                 drop_rate: float = 0.0, act_num: int = ACT_NUM, strides: Sequence[int] = (2, 2, 2, 1),
                 deploy: bool = False, ada_pool: Sequence[int] | None = None, decay_epochs: int = DECAY_EPOCHS,
                 decay_linear: bool = True):
        super().__init__()
        check_arch(dims, strides)
        self.deploy = deploy
        self.decay_epochs, self.decay_linear = decay_epochs, decay_linear
        self.num_classes, self.num_features, self.drop_rate = num_classes, dims[-1], drop_rate
        stride, padding = (3, 1) if ada_pool else (4, 0)
        if deploy:
            self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], 4, stride, padding),
                                      Activation(dims[0], act_num, deploy=True))
        else:
            self.stem1 = conv_bn(in_chans, dims[0], 4, stride, padding, eps=BN_EPS)
            self.stem2 = nn.Sequential(*conv_bn(dims[0], dims[0], 1, eps=BN_EPS), Activation(dims[0], act_num))
        self.act_learn = 1.0
        self.stages = nn.ModuleList(
            Block(dims[i], dims[i + 1], act_num, strides[i], deploy, ada_pool[i] if ada_pool else None)
            for i in range(len(strides)))
        self.depth = len(strides)
        self._build_head(num_classes)
        self.apply(trunc_normal_init)

    def _build_head(self, num_classes: int) -> None:
        pool = [nn.AdaptiveAvgPool2d((1, 1)), nn.Dropout(self.drop_rate)]
        for name in ("cls", "cls1", "cls2"):
            if hasattr(self, name):
                delattr(self, name)
        if num_classes <= 0:
            self.cls = nn.Sequential(*pool)
        elif self.deploy:
            self.cls = nn.Sequential(*pool, nn.Conv2d(self.num_features, num_classes, 1))
        else:
            self.cls1 = nn.Sequential(*pool, *conv_bn(self.num_features, num_classes, 1, eps=BN_EPS))
            self.cls2 = nn.Sequential(nn.Conv2d(num_classes, num_classes, 1))

    def reset_classifier(self, num_classes: int) -> None:
        """A new head for ``num_classes`` (0: pooled features), initialised like the official one."""
        self.num_classes = num_classes
        self._build_head(num_classes)
        for m in ("cls", "cls1", "cls2"):
            if hasattr(self, m):
                getattr(self, m).apply(trunc_normal_init)

    def change_act(self, m: float) -> None:
        """Set the leaky-ReLU slope of the stem, every block and the head (deep training, Sec. 3.1)."""
        m = check_act_learn(m)
        for stage in self.stages:
            stage.act_learn = m
        self.act_learn = m

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Deep-training slope at the start of ``epoch`` (official ``main.py``): ``epoch / decay_epochs`` (or its
        cosine form), 1 from ``decay_epochs`` on; ``total_epochs`` plays no part."""
        self.change_act(deep_training_lambda(epoch, self.decay_epochs, self.decay_linear))

    def no_weight_decay(self) -> set[str]:
        """None: the official ``main.py`` passes no skip list and the model defines none; its
        ``optim_factory.get_parameter_groups`` exempts only 1-D parameters and ``.bias/.alpha/.beta`` names,
        all 1-D here (BN, biases), which the optimizer factory's own rule covers."""
        return set()

    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer-decay groups (:func:`specs.vanillanet.group_matcher`: the official ``LayerDecayValueAssigner``'s)."""
        return group_matcher(coarse)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:
            x = self.stem(x)
        else:
            x = self.stem2(F.leaky_relu(self.stem1(x), self.act_learn))
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if pre_logits or self.num_classes <= 0:
            return torch.flatten(self.cls[:2](x) if hasattr(self, "cls") else self.cls1[:2](x), 1)
        if self.deploy:
            x = self.cls(x)
        else:
            x = self.cls2(F.leaky_relu(self.cls1(x), self.act_learn))
        return x.view(x.size(0), -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        """Fold BNs and merge conv pairs (official ``switch_to_deploy``); outputs equal train form at lambda=1."""
        if self.deploy:
            return
        self.stem2[2].switch_to_deploy()
        w1, b1 = fold_bn(*conv_arrays(self.stem1[0]), *bn_arrays(self.stem1[1]))
        w2, b2 = fold_bn(*conv_arrays(self.stem2[0]), *bn_arrays(self.stem2[1]))
        self.stem = nn.Sequential(fused_conv(self.stem1[0], *merge_1x1(w1, b1, w2, b2)), self.stem2[2])
        del self.stem1, self.stem2
        for stage in self.stages:
            stage.switch_to_deploy()
        if self.num_classes > 0:
            w1, b1 = fold_bn(*conv_arrays(self.cls1[2]), *bn_arrays(self.cls1[3]))
            fused_conv(self.cls1[2], *merge_1x1(w1, b1, *conv_arrays(self.cls2[0])))
            self.cls = nn.Sequential(*self.cls1[:3])
            del self.cls1, self.cls2
        self.deploy = True


registry.register_family("vanillanet", VanillaNet)
