"""VanillaNet, MindSpore (arXiv 2305.12972), mirroring ``torch_ref/vanillanet.py`` name for name.

Follows huawei-noah/VanillaNet ``models/vanillanet.py`` (the official MindSpore port in mindspore-ai/models
``research/cv/vanillanet`` is a different, deploy-only network and is not followed). Parameter names are the
official PyTorch keys under MindSpore's layer names (BN ``gamma/beta/moving_mean/moving_variance``).

MindSpore-specific: the deep-training slope ``act_learn`` is one non-trainable Parameter of the model, passed
to every block, so ``change_act`` takes effect in GRAPH_MODE without recompiling (the official per-block
Python floats are always set together by ``change_act`` anyway). It is MindSpore-only state: the converter
fills it with 1.0 from torch checkpoints and drops it towards torch.
"""
from __future__ import annotations

from typing import Sequence

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from specs.fusion import fold_bn, merge_1x1
from specs.vanillanet import (ACT_NUM, BN_EPS, DECAY_EPOCHS, check_act_learn, check_arch, deep_training_lambda,
                              group_matcher)

from .._registry import registry
from ..layers.kernels import depthwise_conv, kernel_cfg
from ..layers import (AdaptiveMaxPool2d, GlobalAvgPool, Identity, batch_norm, bn_arrays, conv2d, conv_arrays, conv_bn, fused_conv,
                     leaky_relu, refresh_graph, scalar_param, trunc_normal)


class Activation(nn.Cell):
    """Series-informed activation ``BN(DWConv7x7(ReLU(x)))``; deploy form folds the BN into ``bias``."""

    def __init__(self, dim: int, act_num: int = ACT_NUM, deploy: bool = False):
        super().__init__()
        self.act_num, self.dim, self.deploy = act_num, dim, deploy
        k = 2 * act_num + 1
        self.weight = Parameter(trunc_normal((dim, 1, k, k)), name="weight")
        # tuple kernel/pad: MindSpore's ONNX exporter fails on int attributes of Conv2D (2.8.0)
        self.conv = ops.Conv2D(out_channel=dim, kernel_size=(k, k), mode=1, pad_mode="pad", pad=(act_num,) * 4,
                               group=dim)
        self.relu = nn.ReLU()
        self.fused = depthwise_conv(1, act_num, has_bias=deploy)     # compiled CPU kernel, or None: native ops
        self.fused_cfg = kernel_cfg(1, act_num, relu=True)
        if deploy:
            self.bias = Parameter(ops.zeros(dim, ms.float32), name="bias")
        else:
            self.bn = batch_norm(dim, BN_EPS)

    def construct(self, x):
        if self.fused is not None and x.dtype == ms.float32:
            if self.deploy:
                return self.fused(x, self.weight, self.bias, self.fused_cfg)
            return self.bn(self.fused(x, self.weight, self.fused_cfg))
        x = self.conv(self.relu(x), self.weight)
        if self.deploy:
            return ops.bias_add(x, self.bias)
        return self.bn(x)

    def switch_to_deploy(self) -> None:
        w, b = fold_bn(self.weight.asnumpy(), None, *bn_arrays(self.bn))
        self.weight.set_data(Tensor(w))
        self.bias = Parameter(Tensor(b), name="bias")
        del self.bn
        self.fused = depthwise_conv(1, self.act_num, has_bias=True)
        self.deploy = True


def _pool(stride: int, ada_pool: int | None) -> nn.Cell:
    if stride == 1:
        return Identity()
    if ada_pool:
        return AdaptiveMaxPool2d((ada_pool, ada_pool))
    return nn.MaxPool2d(kernel_size=stride, stride=stride, pad_mode="valid")


class Block(nn.Cell):
    """``conv1x1+BN -> leaky_relu(act_learn) -> conv1x1+BN -> pool -> Activation``."""

    def __init__(self, dim: int, dim_out: int, act_num: int = ACT_NUM, stride: int = 2,
                 deploy: bool = False, ada_pool: int | None = None):
        super().__init__()
        self.deploy = deploy
        if deploy:
            self.conv = conv2d(dim, dim_out, 1)
        else:
            self.conv1 = conv_bn(dim, dim, 1, eps=BN_EPS)
            self.conv2 = conv_bn(dim, dim_out, 1, eps=BN_EPS)
        self.pool = _pool(stride, ada_pool)
        self.act = Activation(dim_out, act_num, deploy=deploy)

    def construct(self, x, act_learn):
        if self.deploy:
            x = self.conv(x)
        else:
            x = self.conv2(leaky_relu(self.conv1(x), act_learn))
        return self.act(self.pool(x))

    def switch_to_deploy(self) -> None:
        w1, b1 = fold_bn(*conv_arrays(self.conv1[0]), *bn_arrays(self.conv1[1]))
        w2, b2 = fold_bn(*conv_arrays(self.conv2[0]), *bn_arrays(self.conv2[1]))
        self.conv = fused_conv(self.conv2[0], *merge_1x1(w1, b1, w2, b2))
        del self.conv1, self.conv2
        self.act.switch_to_deploy()
        self.deploy = True


class VanillaNet(nn.Cell):
    """VanillaNet: stem, ``len(strides)`` blocks, conv classifier; same API as the torch reference."""

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
            self.stem = nn.SequentialCell([conv2d(in_chans, dims[0], 4, stride, padding),
                                           Activation(dims[0], act_num, deploy=True)])
        else:
            self.stem1 = conv_bn(in_chans, dims[0], 4, stride, padding, eps=BN_EPS)
            self.stem2 = nn.SequentialCell([conv2d(dims[0], dims[0], 1), batch_norm(dims[0], BN_EPS),
                                            Activation(dims[0], act_num)])
        self.act_learn = scalar_param(1.0, "act_learn")
        self.stages = nn.CellList([
            Block(dims[i], dims[i + 1], act_num, strides[i], deploy, ada_pool[i] if ada_pool else None)
            for i in range(len(strides))])
        self.depth = len(strides)
        self._build_head(num_classes)

    def _build_head(self, num_classes: int) -> None:
        pool = [GlobalAvgPool(), nn.Dropout(p=self.drop_rate)]
        for name in ("cls", "cls1", "cls2"):
            if name in self.name_cells():
                delattr(self, name)
        self.has_logits = num_classes > 0
        if not self.has_logits:
            self.cls = nn.SequentialCell(pool)
        elif self.deploy:
            self.cls = nn.SequentialCell(pool + [conv2d(self.num_features, num_classes, 1)])
        else:
            self.cls1 = nn.SequentialCell(pool + list(conv_bn(self.num_features, num_classes, 1, eps=BN_EPS)))
            self.cls2 = nn.SequentialCell([conv2d(num_classes, num_classes, 1)])

    def reset_classifier(self, num_classes: int) -> None:
        """A new head for ``num_classes`` (0: pooled features), initialised like the official one."""
        self.num_classes = num_classes
        self._build_head(num_classes)
        refresh_graph(self)

    def change_act(self, m: float) -> None:
        """Set the deep-training leaky-ReLU slope in [0, 1]; no recompilation needed in GRAPH_MODE."""
        self.act_learn.set_data(Tensor(check_act_learn(m), ms.float32))

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Deep-training slope at the start of ``epoch`` (official ``main.py``, see the torch reference);
        no recompilation in GRAPH_MODE."""
        self.change_act(deep_training_lambda(epoch, self.decay_epochs, self.decay_linear))

    def no_weight_decay(self) -> set[str]:
        """None (official ``main.py``; see the torch reference). ``act_learn`` is not trainable."""
        return set()

    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer-decay groups (:func:`specs.vanillanet.group_matcher`); the frozen ``act_learn`` is in the head's."""
        return group_matcher(coarse)

    def forward_features(self, x):
        if self.deploy:
            x = self.stem(x)
        else:
            x = self.stem2(leaky_relu(self.stem1(x), self.act_learn))
        for stage in self.stages:
            x = stage(x, self.act_learn)
        return x

    def forward_head(self, x, pre_logits: bool = False):
        if pre_logits or not self.has_logits:
            pooled = self.cls[1](self.cls[0](x)) if self.deploy or not self.has_logits \
                else self.cls1[1](self.cls1[0](x))
            return pooled.reshape(pooled.shape[0], -1)
        if self.deploy:
            x = self.cls(x)
        else:
            x = self.cls2(leaky_relu(self.cls1(x), self.act_learn))
        return x.reshape(x.shape[0], -1)

    def construct(self, x):
        return self.forward_head(self.forward_features(x))

    def switch_to_deploy(self) -> None:
        """Fold BNs and merge conv pairs into the official deploy layout; refreshes the compiled graph."""
        if self.deploy:
            return
        self.stem2[2].switch_to_deploy()
        w1, b1 = fold_bn(*conv_arrays(self.stem1[0]), *bn_arrays(self.stem1[1]))
        w2, b2 = fold_bn(*conv_arrays(self.stem2[0]), *bn_arrays(self.stem2[1]))
        self.stem = nn.SequentialCell([fused_conv(self.stem1[0], *merge_1x1(w1, b1, w2, b2)), self.stem2[2]])
        del self.stem1, self.stem2
        for stage in self.stages:
            stage.switch_to_deploy()
        if self.has_logits:
            w1, b1 = fold_bn(*conv_arrays(self.cls1[2]), *bn_arrays(self.cls1[3]))
            conv = fused_conv(self.cls1[2], *merge_1x1(w1, b1, *conv_arrays(self.cls2[0])))
            self.cls = nn.SequentialCell([self.cls1[0], self.cls1[1], conv])
            del self.cls1, self.cls2
        self.deploy = True
        refresh_graph(self)


registry.register_family("vanillanet", VanillaNet)
