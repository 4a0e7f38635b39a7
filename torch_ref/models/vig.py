"""Vision GNN (ViG) and Pyramid ViG, PyTorch reference (arXiv 2206.00272).

Follows huawei-noah/Efficient-AI-Backbones ``vig_pytorch/vig.py``, ``pyramid_vig.py`` and ``gcn_lib`` key for key
(``stem.convs.*``, ``pos_embed``, ``backbone.{i}.0`` Grapher, ``backbone.{i}.1`` FFN, pyramid ``Downsample``
entries interleaved in ``backbone``, ``prediction.*``); the frozen ``relative_pos`` of every pyramid Grapher is a
persistent buffer (official: a ``requires_grad=False`` Parameter), so it is in the state_dict as officially.

Differences from the official code, all outside its supported input (224): ``pos_embed`` is resized bicubically
(PyTorch's ``interpolate``) when the token grid is not the 224 one, where the official addition fails; the kNN
graph can be supplied from outside (``forward(x, graph=...)``, for shared-graph parity checks).
``forward_features``/``forward_head``/``reset_classifier`` follow timm's style.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from specs.vig import (FFN_RATIO, HEAD_DIM, ISO_GRID, NORM_EPS, PYR_GRID, GrapherPlan, drop_path_rates,
                       group_matcher, iso_plan, pyr_plan, relative_pos)

from .._registry import registry
from ..layers import DropPath, resize

Graph = Sequence[torch.Tensor] | None


def conv_bn(in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1) -> nn.Sequential:
    """``Sequential(Conv2d(bias), BatchNorm2d)`` with PyTorch-default BN (official fc1/fc2/Downsample)."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2), nn.BatchNorm2d(out_ch))


class DilatedKnnGraph(nn.Module):
    """Dense dilated kNN (official ``DenseDilatedKnnGraph``, ``stochastic=False``): L2-normalised features,
    ``dist = |x|^2 - 2 x.y + |y|^2 (+ relative_pos)``, top ``k*d`` by ``-dist``, every ``d``-th kept.

    Returns the neighbour indices (B, N, k) into the key set; ``given`` indices are returned unchanged
    (shared-graph mode). The last indices are kept in ``last_index``.
    """

    def __init__(self, k: int, dilation: int):
        super().__init__()
        self.k, self.dilation = k, dilation
        self.last_index: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, y: torch.Tensor, rel: torch.Tensor | None = None,
                given: torch.Tensor | None = None) -> torch.Tensor:
        if given is None:
            with torch.no_grad():
                xn = x / x.norm(dim=1, keepdim=True).clamp_min(NORM_EPS)      # (B, C, N)
                yn = y / y.norm(dim=1, keepdim=True).clamp_min(NORM_EPS)      # (B, C, M)
                dist = (xn * xn).sum(1).unsqueeze(2) + (-2 * xn.transpose(1, 2) @ yn) + (yn * yn).sum(1).unsqueeze(1)
                if rel is not None:
                    dist = dist + rel
                given = torch.topk(-dist, self.k * self.dilation)[1][..., ::self.dilation]
        self.last_index = given
        return given


class MRConv(nn.Module):
    """Max-relative graph conv (official ``MRConv2d``): ``max_j (y_j - x_i)``, channels interleaved with x
    (``[x_0, d_0, x_1, d_1, ...]``), then ``nn = [Conv1x1 groups=4, BN, GELU]``."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.nn = nn.Sequential(nn.Conv2d(2 * in_ch, out_ch, 1, groups=4), nn.BatchNorm2d(out_ch), nn.GELU())

    def forward(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        b, c, n = x.shape
        m, k = y.shape[2], idx.shape[2]
        flat = (idx + torch.arange(b, device=idx.device).view(-1, 1, 1) * m).reshape(-1)
        xj = y.transpose(1, 2).reshape(b * m, c)[flat].view(b, n, k, c)
        rel = torch.max(xj - x.transpose(1, 2).unsqueeze(2), 2)[0]              # (B, N, C)
        feats = torch.stack([x, rel.transpose(1, 2)], 2).reshape(b, 2 * c, n, 1)
        return self.nn(feats)


class DyGraphConv(nn.Module):
    """Official ``DyGraphConv2d`` (conv 'mr'): keys average-pooled by r, kNN graph, max-relative conv."""

    def __init__(self, in_ch: int, out_ch: int, k: int, dilation: int, r: int):
        super().__init__()
        self.r = r
        self.gconv = MRConv(in_ch, out_ch)
        self.dilated_knn_graph = DilatedKnnGraph(k, dilation)

    def forward(self, x: torch.Tensor, rel: torch.Tensor | None = None,
                graph: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        y = F.avg_pool2d(x, self.r, self.r).reshape(b, c, -1) if self.r > 1 else None
        x = x.reshape(b, c, -1)
        y = x if y is None else y
        idx = self.dilated_knn_graph(x, y, rel, graph)
        return self.gconv(x, y, idx).reshape(b, -1, h, w)


class Grapher(nn.Module):
    """``fc1 -> DyGraphConv (C -> 2C) -> fc2 -> DropPath -> + shortcut`` (official ``Grapher``)."""

    def __init__(self, channels: int, plan: GrapherPlan, drop_path: float = 0.0):
        super().__init__()
        self.n, self.r = plan.n, plan.r
        self.fc1 = conv_bn(channels, channels)
        self.graph_conv = DyGraphConv(channels, 2 * channels, plan.k, plan.d, plan.r)
        self.fc2 = conv_bn(2 * channels, channels)
        self.drop_path = DropPath(drop_path)
        if plan.relative_pos:
            self.register_buffer("relative_pos", torch.tensor(relative_pos(channels, plan.n, plan.r)))
        else:
            self.relative_pos = None

    def _relative_pos(self, h: int, w: int) -> torch.Tensor | None:
        if self.relative_pos is None or h * w == self.n:
            return self.relative_pos
        size = (h * w, h * w // (self.r * self.r))
        return resize(self.relative_pos.unsqueeze(0), size, "bicubic").squeeze(0)

    def forward(self, x: torch.Tensor, graph: torch.Tensor | None = None) -> torch.Tensor:
        shortcut = x
        x = self.fc1(x)
        x = self.graph_conv(x, self._relative_pos(x.shape[2], x.shape[3]), graph)
        return self.drop_path(self.fc2(x)) + shortcut


class FFN(nn.Module):
    """``fc1 -> GELU -> fc2 -> DropPath -> + shortcut`` (official ``FFN``)."""

    def __init__(self, channels: int, hidden: int, drop_path: float = 0.0):
        super().__init__()
        self.fc1 = conv_bn(channels, hidden)
        self.act = nn.GELU()
        self.fc2 = conv_bn(hidden, channels)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path(self.fc2(self.act(self.fc1(x)))) + x


class Block(nn.Sequential):
    """``Seq(Grapher, FFN)`` (keys ``0.*``, ``1.*``); ``slot`` picks this block's indices from a given graph."""

    def __init__(self, channels: int, plan: GrapherPlan, slot: int, drop_path: float = 0.0):
        super().__init__(Grapher(channels, plan, drop_path), FFN(channels, channels * FFN_RATIO, drop_path))
        self.slot = slot

    def forward(self, x: torch.Tensor, graph: Graph = None) -> torch.Tensor:
        return self[1](self[0](x, None if graph is None else graph[self.slot]))


class Downsample(nn.Module):
    """Official pyramid ``Downsample``: ``conv = [Conv3x3 s2, BN]``."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = conv_bn(in_ch, out_ch, 3, 2)

    def forward(self, x: torch.Tensor, graph: Graph = None) -> torch.Tensor:
        return self.conv(x)


def _stem(widths: Sequence[int], strides: Sequence[int]) -> nn.Sequential:
    """Official ``Stem.convs``: ``[Conv3x3, BN, GELU] * (len - 1) + [Conv3x3, BN]``."""
    layers: list[nn.Module] = []
    for i, (cin, cout, s) in enumerate(zip((3, *widths[:-1]), widths, strides)):
        layers += [nn.Conv2d(cin, cout, 3, s, 1), nn.BatchNorm2d(cout)]
        if i < len(widths) - 1:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class Stem(nn.Module):
    def __init__(self, widths: Sequence[int], strides: Sequence[int]):
        super().__init__()
        self.convs = _stem(widths, strides)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


class _GraphNet(nn.Module):
    """Shared body of ViG and Pyramid ViG: stem + pos_embed, ``backbone`` entries, ``prediction`` head.

    ``drop_path_rate``: stochastic depth of every Grapher and FFN branch, rising linearly from 0 over the blocks
    (official ``dpr``, ``specs.vig.drop_path_rates``); 0 (the official default) switches it off.
    """

    grid: int

    def _finish(self, num_classes: int, drop_rate: float) -> None:
        self.num_classes, self.drop_rate = num_classes, drop_rate
        self.prediction = nn.Sequential(nn.Conv2d(self.num_features, HEAD_DIM, 1), nn.BatchNorm2d(HEAD_DIM),
                                        nn.GELU(), nn.Dropout(drop_rate), self._classifier(num_classes))
        for m in self.modules():                 # official model_init: kaiming_normal_, zero bias
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _classifier(num_classes: int) -> nn.Module:
        return nn.Conv2d(HEAD_DIM, num_classes, 1) if num_classes > 0 else nn.Identity()

    def reset_classifier(self, num_classes: int) -> None:
        """A new last conv for ``num_classes`` (0: the 1024-d hidden head output), kaiming-initialised."""
        self.num_classes = num_classes
        self.prediction[4] = self._classifier(num_classes)
        if num_classes > 0:
            nn.init.kaiming_normal_(self.prediction[4].weight)
            nn.init.zeros_(self.prediction[4].bias)

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Nothing: ViG has no epoch-dependent state."""

    def no_weight_decay(self) -> set[str]:
        """None: the official ``vig.py``/``pyramid_vig.py`` define no ``no_weight_decay``, so their ``train.py``
        (timm's ``create_optimizer``) decays ``pos_embed`` too and exempts only 1-D parameters and biases
        (``relative_pos`` is frozen)."""
        return set()

    def group_matcher(self, coarse: bool = False) -> dict:
        """Stem + ``pos_embed``, backbone entries (coarse pyramid: stages), head (:func:`specs.vig.group_matcher`)."""
        return group_matcher([isinstance(b, Downsample) for b in self.backbone], coarse)

    def graphers(self) -> list[Grapher]:
        return [m for m in self.modules() if isinstance(m, Grapher)]

    @torch.no_grad()
    def graph_indices(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The neighbour indices (B, N, k) every Grapher computes on ``x`` (in the current train/eval mode),
        in backbone order: pass them as ``graph=`` to this model or its MindSpore twin (shared-graph mode)."""
        self.forward_features(x)
        return [g.graph_conv.dilated_knn_graph.last_index for g in self.graphers()]

    def forward_features(self, x: torch.Tensor, graph: Graph = None) -> torch.Tensor:
        x = self.stem(x)
        x = x + resize(self.pos_embed, tuple(x.shape[2:]), "bicubic")
        for blk in self.backbone:
            x = blk(x, graph)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(x, 1)
        if pre_logits:
            return torch.flatten(x, 1)
        return self.prediction(x).flatten(1)

    def forward(self, x: torch.Tensor, graph: Graph = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, graph))


class ViG(_GraphNet):
    """Isotropic ViG (official ``vig.py`` ``DeepGCN``): 1/16 stem, ``n_blocks`` x (Grapher, FFN) at width C."""

    def __init__(self, num_classes: int = 1000, channels: int = 192, n_blocks: int = 12, k: int = 9,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0):
        super().__init__()
        self.num_features = channels
        self.stem = Stem([channels // 8, channels // 4, channels // 2, channels, channels], [2, 2, 2, 2, 1])
        self.pos_embed = nn.Parameter(torch.zeros(1, channels, ISO_GRID, ISO_GRID))
        dpr = drop_path_rates(drop_path_rate, n_blocks)
        self.backbone = nn.Sequential(*[Block(channels, p, i, dpr[i])
                                        for i, p in enumerate(iso_plan(channels, n_blocks, k))])
        self._finish(num_classes, drop_rate)


class PyramidViG(_GraphNet):
    """Pyramid ViG (official ``pyramid_vig.py`` ``DeepGCN``): 1/4 stem, four stages, Downsample between."""

    def __init__(self, num_classes: int = 1000, channels: Sequence[int] = (48, 96, 240, 384),
                 blocks: Sequence[int] = (2, 2, 6, 2), k: int = 9, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0):
        super().__init__()
        self.num_features = channels[-1]
        self.stem = Stem([channels[0] // 2, channels[0], channels[0]], [2, 2, 1])
        self.pos_embed = nn.Parameter(torch.zeros(1, channels[0], PYR_GRID, PYR_GRID))
        dpr = drop_path_rates(drop_path_rate, sum(blocks))
        entries: list[nn.Module] = []
        for s, stage in enumerate(pyr_plan(tuple(channels), tuple(blocks), k)):
            if s > 0:
                entries.append(Downsample(channels[s - 1], channels[s]))
            entries += [Block(channels[s], p, len(entries) - s + i, dpr[len(entries) - s + i])
                        for i, p in enumerate(stage)]
        self.backbone = nn.Sequential(*entries)
        self._finish(num_classes, drop_rate)


registry.register_family("vig", ViG)
registry.register_family("pvig", PyramidViG)
