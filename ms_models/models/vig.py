"""Vision GNN (ViG) and Pyramid ViG, MindSpore (arXiv 2206.00272).

Mirrors ``torch_ref/vig.py`` cell for cell, so parameter names equal the official PyTorch keys
(huawei-noah/Efficient-AI-Backbones ``vig_pytorch``), BatchNorm renamed as usual; the frozen ``relative_pos`` is a
non-trainable Parameter with the torch buffer's name. Exact semantics as the official code: kNN on features
divided by ``max(||x||, 1e-12)`` (not ``L2Normalize``'s eps), top ``k*d`` then every ``d``-th, max-relative
features interleaved with the centre features, exact erf GELU, PyTorch's bicubic resize (A = -0.75) of
``relative_pos``/``pos_embed`` for non-224 inputs. ``construct(x, graph)`` takes precomputed neighbour indices
(one (B, N, k) tensor per Grapher, e.g. torch's ``graph_indices``) for shared-graph parity checks.
"""
from __future__ import annotations

from typing import Sequence

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import HeNormal

from specs.vig import (FFN_RATIO, HEAD_DIM, ISO_GRID, NORM_EPS, PYR_GRID, GrapherPlan, drop_path_rates,
                       group_matcher, iso_plan, pyr_plan, relative_pos)

from .._registry import registry
from ..layers import DropPath, GlobalAvgPool, Identity, batch_norm, refresh_graph, resize


def _conv(in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, group: int = 1) -> nn.Conv2d:
    """torch ``Conv2d(bias=True, padding=kernel // 2)`` with the official init (kaiming_normal_, zero bias)."""
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, pad_mode="pad", padding=kernel // 2, group=group,
                     has_bias=True, weight_init=HeNormal(mode="fan_in", nonlinearity="relu"), bias_init="zeros")


def conv_bn(in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1) -> nn.SequentialCell:
    return nn.SequentialCell([_conv(in_ch, out_ch, kernel, stride), batch_norm(out_ch)])


class DilatedKnnGraph(nn.Cell):
    """Dense dilated kNN (official ``DenseDilatedKnnGraph``); returns (B, N, k) indices, or ``given`` unchanged."""

    def __init__(self, k: int, dilation: int):
        super().__init__()
        self.k, self.dilation = k, dilation

    def construct(self, x, y, rel=None, given=None):
        if given is not None:
            return given.astype(ms.int32)
        x, y = ops.stop_gradient(x), ops.stop_gradient(y)
        xn = x / ops.maximum(ops.sqrt((x * x).sum(1, keepdims=True)), NORM_EPS)
        yn = y / ops.maximum(ops.sqrt((y * y).sum(1, keepdims=True)), NORM_EPS)
        dist = (xn * xn).sum(1).expand_dims(2) + (-2 * ops.matmul(xn.transpose(0, 2, 1), yn)) \
            + (yn * yn).sum(1).expand_dims(1)
        if rel is not None:
            dist = dist + rel
        idx = ops.topk(-dist, self.k * self.dilation, sorted=True)[1]
        return idx[:, :, ::self.dilation].astype(ms.int32)


class MRConv(nn.Cell):
    """Max-relative graph conv (official ``MRConv2d``), centre/difference channels interleaved."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.nn = nn.SequentialCell([_conv(2 * in_ch, out_ch, group=4), batch_norm(out_ch),
                                     nn.GELU(approximate=False)])

    def construct(self, x, y, idx):
        b, c, n = x.shape
        m, k = y.shape[2], idx.shape[2]
        flat = (idx + ops.arange(b, dtype=ms.int32).reshape(-1, 1, 1) * m).reshape(-1)
        xj = ops.gather(y.transpose(0, 2, 1).reshape(b * m, c), flat, 0).reshape(b, n, k, c)
        rel = ops.max(xj - x.transpose(0, 2, 1).expand_dims(2), 2)[0]
        feats = ops.stack([x, rel.transpose(0, 2, 1)], 2).reshape(b, 2 * c, n, 1)
        return self.nn(feats)


class DyGraphConv(nn.Cell):
    """Official ``DyGraphConv2d`` (conv 'mr'): keys average-pooled by r, kNN graph, max-relative conv."""

    def __init__(self, in_ch: int, out_ch: int, k: int, dilation: int, r: int):
        super().__init__()
        self.r = r
        self.gconv = MRConv(in_ch, out_ch)
        self.dilated_knn_graph = DilatedKnnGraph(k, dilation)
        self.pool = nn.AvgPool2d(r, r) if r > 1 else None

    def construct(self, x, rel=None, graph=None):
        b, c, h, w = x.shape
        xf = x.reshape(b, c, -1)
        y = xf if self.pool is None else self.pool(x).reshape(b, c, -1)
        idx = self.dilated_knn_graph(xf, y, rel, graph)
        return self.gconv(xf, y, idx).reshape(b, -1, h, w)


class Grapher(nn.Cell):
    """``fc1 -> DyGraphConv (C -> 2C) -> fc2 -> DropPath -> + shortcut`` (official ``Grapher``)."""

    def __init__(self, channels: int, plan: GrapherPlan, drop_path: float = 0.0):
        super().__init__()
        self.n, self.r = plan.n, plan.r
        self.fc1 = conv_bn(channels, channels)
        self.graph_conv = DyGraphConv(channels, 2 * channels, plan.k, plan.d, plan.r)
        self.fc2 = conv_bn(2 * channels, channels)
        self.drop_path = DropPath(drop_path)
        self.relative_pos = Parameter(Tensor(relative_pos(channels, plan.n, plan.r)), name="relative_pos",
                                      requires_grad=False) if plan.relative_pos else None

    def construct(self, x, graph=None):
        shortcut = x
        x = self.fc1(x)
        h, w = x.shape[2], x.shape[3]
        rel = self.relative_pos
        if rel is not None and h * w != self.n:
            rel = resize(rel.expand_dims(0), (h * w, h * w // (self.r * self.r)), "bicubic").squeeze(0)
        x = self.graph_conv(x, rel, graph)
        return self.drop_path(self.fc2(x)) + shortcut


class FFN(nn.Cell):
    """``fc1 -> GELU -> fc2 -> DropPath -> + shortcut`` (official ``FFN``)."""

    def __init__(self, channels: int, hidden: int, drop_path: float = 0.0):
        super().__init__()
        self.fc1 = conv_bn(channels, hidden)
        self.act = nn.GELU(approximate=False)
        self.fc2 = conv_bn(hidden, channels)
        self.drop_path = DropPath(drop_path)

    def construct(self, x):
        return self.drop_path(self.fc2(self.act(self.fc1(x)))) + x


class Block(nn.SequentialCell):
    """``(Grapher, FFN)`` under names ``0``, ``1``; ``slot`` picks this block's indices from a given graph."""

    def __init__(self, channels: int, plan: GrapherPlan, slot: int, drop_path: float = 0.0):
        super().__init__([Grapher(channels, plan, drop_path), FFN(channels, channels * FFN_RATIO, drop_path)])
        self.slot = slot

    def construct(self, x, graph=None):
        g = None if graph is None else graph[self.slot]
        return self.cell_list[1](self.cell_list[0](x, g))


class Downsample(nn.Cell):
    """Official pyramid ``Downsample``: ``conv = [Conv3x3 s2, BN]``."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = conv_bn(in_ch, out_ch, 3, 2)

    def construct(self, x, graph=None):
        return self.conv(x)


class Stem(nn.Cell):
    """Official ``Stem.convs``: ``[Conv3x3, BN, GELU] * (len - 1) + [Conv3x3, BN]``."""

    def __init__(self, widths: Sequence[int], strides: Sequence[int]):
        super().__init__()
        layers: list[nn.Cell] = []
        for i, (cin, cout, s) in enumerate(zip((3, *widths[:-1]), widths, strides)):
            layers += [_conv(cin, cout, 3, s), batch_norm(cout)]
            if i < len(widths) - 1:
                layers.append(nn.GELU(approximate=False))
        self.convs = nn.SequentialCell(layers)

    def construct(self, x):
        return self.convs(x)


class _GraphNet(nn.Cell):
    """Shared body of ViG and Pyramid ViG; same API as the torch reference.

    ``drop_path_rate``: stochastic depth of every Grapher and FFN branch, rising linearly from 0 over the blocks
    (official ``dpr``, ``specs.vig.drop_path_rates``); 0 (the official default) switches it off.
    """

    def _finish(self, num_classes: int, drop_rate: float) -> None:
        self.num_classes, self.drop_rate = num_classes, drop_rate
        self.pool = GlobalAvgPool()
        self.prediction = nn.SequentialCell([_conv(self.num_features, HEAD_DIM), batch_norm(HEAD_DIM),
                                             nn.GELU(approximate=False), nn.Dropout(p=drop_rate),
                                             self._classifier(num_classes)])

    @staticmethod
    def _classifier(num_classes: int) -> nn.Cell:
        return _conv(HEAD_DIM, num_classes) if num_classes > 0 else Identity()

    def reset_classifier(self, num_classes: int) -> None:
        """A new last conv for ``num_classes`` (0: the 1024-d hidden head output), kaiming-initialised."""
        self.num_classes = num_classes
        cells = list(self.prediction.cell_list)[:4] + [self._classifier(num_classes)]
        self.prediction = nn.SequentialCell(cells)
        refresh_graph(self)

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Nothing: ViG has no epoch-dependent state."""

    def no_weight_decay(self) -> set[str]:
        """None (official ``train.py`` decays ``pos_embed``; see the torch reference)."""
        return set()

    def group_matcher(self, coarse: bool = False) -> dict:
        """Stem + ``pos_embed``, backbone entries (coarse pyramid: stages), head (:func:`specs.vig.group_matcher`)."""
        return group_matcher([isinstance(b, Downsample) for b in self.backbone], coarse)

    def forward_features(self, x, graph=None):
        x = self.stem(x)
        x = x + resize(self.pos_embed, (x.shape[2], x.shape[3]), "bicubic")
        for blk in self.backbone:
            x = blk(x, graph)
        return x

    def forward_head(self, x, pre_logits: bool = False):
        x = self.pool(x)
        if pre_logits:
            return x.reshape(x.shape[0], -1)
        x = self.prediction(x)
        return x.reshape(x.shape[0], -1)

    def construct(self, x, graph=None):
        return self.forward_head(self.forward_features(x, graph))


class ViG(_GraphNet):
    """Isotropic ViG (official ``vig.py`` ``DeepGCN``)."""

    def __init__(self, num_classes: int = 1000, channels: int = 192, n_blocks: int = 12, k: int = 9,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0):
        super().__init__()
        self.num_features = channels
        self.stem = Stem([channels // 8, channels // 4, channels // 2, channels, channels], [2, 2, 2, 2, 1])
        self.pos_embed = Parameter(ops.zeros((1, channels, ISO_GRID, ISO_GRID), ms.float32), name="pos_embed")
        dpr = drop_path_rates(drop_path_rate, n_blocks)
        self.backbone = nn.SequentialCell([Block(channels, p, i, dpr[i])
                                           for i, p in enumerate(iso_plan(channels, n_blocks, k))])
        self._finish(num_classes, drop_rate)


class PyramidViG(_GraphNet):
    """Pyramid ViG (official ``pyramid_vig.py`` ``DeepGCN``): Downsample entries interleaved in ``backbone``."""

    def __init__(self, num_classes: int = 1000, channels: Sequence[int] = (48, 96, 240, 384),
                 blocks: Sequence[int] = (2, 2, 6, 2), k: int = 9, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0):
        super().__init__()
        self.num_features = channels[-1]
        self.stem = Stem([channels[0] // 2, channels[0], channels[0]], [2, 2, 1])
        self.pos_embed = Parameter(ops.zeros((1, channels[0], PYR_GRID, PYR_GRID), ms.float32), name="pos_embed")
        dpr = drop_path_rates(drop_path_rate, sum(blocks))
        entries: list[nn.Cell] = []
        slot = 0
        for s, stage in enumerate(pyr_plan(tuple(channels), tuple(blocks), k)):
            if s > 0:
                entries.append(Downsample(channels[s - 1], channels[s]))
            for p in stage:
                entries.append(Block(channels[s], p, slot, dpr[slot]))
                slot += 1
        self.backbone = nn.SequentialCell(entries)
        self._finish(num_classes, drop_rate)


registry.register_family("vig", ViG)
registry.register_family("pvig", PyramidViG)
