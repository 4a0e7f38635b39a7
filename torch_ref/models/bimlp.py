"""BiMLP, PyTorch reference (arXiv 2212.14158), written from the official MindSpore code.

Follows mindspore-ai/models ``research/cv/BiMLP/src/bimlp.py`` (a binarised Wave-MLP ``WaveNet``) class for
class: keys are the official MindSpore parameter names under PyTorch's layer names (BN/GroupNorm
``weight/bias/running_mean/running_var``), so a checkpoint of the official network converts name for name.

Code versus paper (the code is followed, ``act_binarize="sign"`` gives the paper's activations):
- activations are quantised by ``Rint(clip(x, -1, 1))`` into {-1, 0, +1} (``dorefa_a`` with 1 bit), not by sign;
- XNOR weight scale ``mean(|W|)`` is taken over the input-channel axis only, per output channel and kernel
  tap: the depthwise strip convolutions ``sfc_h``/``sfc_w`` therefore keep their full-precision weights.
Other details reproduced: every binary conv has a full-precision shortcut (channel tiling or 4-way strided
averaging when widths change), the downsample averages four stride-2 max-pools (k = 2, 3, 5, 7) with
MindSpore's ``same`` padding (bottom/right get the extra row, padded with -inf), ``GroupNorm(1, C)`` outer norms
in BiMLP-M. Differences: the head flattens the pooled features (the official ``Squeeze`` also drops a batch
of one); ``forward_features``/``forward_head``/``reset_classifier`` are added in timm's style; the official
``DropPath`` (rate 0 in both variants) and the zero-rate dropouts are left out.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from specs.bimlp import POOL_KERNELS, STRIP, check_arch, check_norm, group_matcher, no_weight_decay

from .._registry import registry
from ..layers.binary import RPReLU, LearnableBias, XnorConv2d


def _norm(kind: str, channels: int) -> nn.Module:
    if check_norm(kind) == "batch":
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(1, channels)     # official ``MyNorm``


def channel_shortcut(x: torch.Tensor, out_ch: int, tile: int) -> torch.Tensor:
    """The binary MLP's universal shortcut (official ``Mlp.construct``): ``tile`` copies of ``x`` along the
    channels when ``out // in == tile``, else the mean of the four strided channel slices ``x[:, i::4]``."""
    if out_ch // x.shape[1] == tile:
        return x.repeat(1, tile, 1, 1)
    x0, x1, x2, x3 = strided_channels(x, 4)
    return (x0 + x1 + x2 + x3) / 4.0


def strided_channels(x: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    """``(x[:, 0::n], ..., x[:, n-1::n])`` (as ``ms_models``: one reshape and unbind)."""
    return x.unflatten(1, (-1, n)).unbind(2)


def _strip(in_ch: int, out_ch: int, vertical: bool, act_binarize: str) -> XnorConv2d:
    """Grouped binary strip conv, ``1 x 7`` (``vertical=False``) or ``7 x 1``, groups = ``out_ch``."""
    kernel, pad = ((STRIP, 1), (STRIP // 2, 0)) if vertical else ((1, STRIP), (0, STRIP // 2))
    return XnorConv2d(in_ch, out_ch, kernel, pad, groups=out_ch, act_binarize=act_binarize)


class Mlp(nn.Module):
    """Binary channel MLP with universal shortcuts (official ``Mlp``): two 1x1 binary convs, each followed by BN,
    the channel shortcut of its input and RPReLU."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_binarize: str = "round"):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.in_features, self.hidden_features, self.out_features = in_features, hidden_features, out_features
        self.move1 = LearnableBias(in_features)
        self.fc1 = XnorConv2d(in_features, hidden_features, act_binarize=act_binarize)
        self.act1 = RPReLU(hidden_features)
        self.act2 = RPReLU(hidden_features)
        self.act3 = RPReLU(out_features)
        self.move2 = LearnableBias(hidden_features)
        self.fc2 = XnorConv2d(hidden_features, out_features, act_binarize=act_binarize)
        self.norm1 = nn.BatchNorm2d(hidden_features)
        self.norm2 = nn.BatchNorm2d(out_features)
        self.norm0 = nn.BatchNorm2d(hidden_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp = self.act1(self.norm0(channel_shortcut(x, self.hidden_features, 4)))
        x = self.act2(self.norm1(self.fc1(self.move1(x))) + inp)
        inp = channel_shortcut(x, self.out_features, 12)
        return self.act3(self.norm2(self.fc2(self.move2(x))) + inp)


class PATM(nn.Module):
    """Binary phase-aware token mixing (official ``PATM``, mode 'fc'): amplitude branches ``fc_h``/``fc_w`` and
    phase branches ``theta_h_conv``/``theta_w_conv`` (1x1 binary, residual), the complex-valued strip mixing
    ``tfc_h``/``tfc_w`` on ``[x cos(theta), x sin(theta)]`` with a pairwise-mean shortcut, the channel branch
    ``fc_c``, softmax reweighting of the three branches by a binary ``Mlp``, the input added back, and a
    binary 1x1 ``proj`` with residual."""

    def __init__(self, dim: int, act_binarize: str = "round"):
        super().__init__()
        ab = act_binarize
        self.fc_h = XnorConv2d(dim, dim, act_binarize=ab)
        self.fc_w = XnorConv2d(dim, dim, act_binarize=ab)
        self.fc_c = XnorConv2d(dim, dim, act_binarize=ab)
        self.move_fch = LearnableBias(dim)
        self.move_fcw = LearnableBias(dim)
        self.move_fcc = LearnableBias(dim)
        self.fc_h_bn = nn.BatchNorm2d(dim)
        self.fc_w_bn = nn.BatchNorm2d(dim)
        self.fc_h_act = RPReLU(dim)
        self.fc_w_act = RPReLU(dim)
        self.tfc_h = _strip(2 * dim, dim, False, ab)
        self.tfc_w = _strip(2 * dim, dim, True, ab)
        self.move_tfch = LearnableBias(2 * dim)
        self.move_tfcw = LearnableBias(2 * dim)
        self.reweight = Mlp(dim, dim // 4, dim * 3, act_binarize=ab)
        self.proj = XnorConv2d(dim, dim, act_binarize=ab)
        self.move_proj = LearnableBias(dim)
        self.move_thetah = LearnableBias(dim)
        self.theta_h_conv = XnorConv2d(dim, dim, act_binarize=ab)
        self.theta_h_bn = nn.BatchNorm2d(dim)
        self.theta_h_act = RPReLU(dim)
        self.move_thetaw = LearnableBias(dim)
        self.theta_w_conv = XnorConv2d(dim, dim, act_binarize=ab)
        self.theta_w_bn = nn.BatchNorm2d(dim)
        self.theta_w_act = RPReLU(dim)
        self.act_c = RPReLU(dim)
        self.act_h = RPReLU(dim)
        self.act_w = RPReLU(dim)
        self.act_proj = RPReLU(dim)
        self.norm_c = nn.BatchNorm2d(dim)
        self.norm_h = nn.BatchNorm2d(dim)
        self.norm_w = nn.BatchNorm2d(dim)
        self.norm_proj = nn.BatchNorm2d(dim)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = inp.shape
        t = self.move_thetah(inp)
        theta_h = self.theta_h_act(self.theta_h_bn(self.theta_h_conv(t)) + t)
        t = self.move_thetaw(inp)
        theta_w = self.theta_w_act(self.theta_w_bn(self.theta_w_conv(t)) + t)
        t = self.move_fch(inp)
        x_h = self.fc_h_act(self.fc_h_bn(self.fc_h(t)) + t)
        t = self.move_fcw(inp)
        x_w = self.fc_w_act(self.fc_w_bn(self.fc_w(t)) + t)
        x_h = self.move_tfch(torch.cat([x_h * torch.cos(theta_h), x_h * torch.sin(theta_h)], 1))
        x_w = self.move_tfcw(torch.cat([x_w * torch.cos(theta_w), x_w * torch.sin(theta_w)], 1))
        fc_c_in = self.move_fcc(inp)
        h0, h1 = strided_channels(x_h, 2)
        w0, w1 = strided_channels(x_w, 2)
        th = h0 + h1
        tw = w0 + w1
        h = self.act_h(self.norm_h(self.tfc_h(x_h)) + th / 2.0)
        w = self.act_w(self.norm_w(self.tfc_w(x_w)) + tw / 2.0)
        c_ = self.act_c(self.norm_c(self.fc_c(fc_c_in)) + fc_c_in)
        a = F.adaptive_avg_pool2d(h + w + c_ + inp, 1)
        a = self.reweight(a).reshape(b, c, 3).permute(2, 0, 1).softmax(dim=0).unsqueeze(-1).unsqueeze(-1)
        x = h * a[0] + w * a[1] + c_ * a[2] + inp
        x_in = self.move_proj(x)
        return self.act_proj(self.norm_proj(self.proj(x_in)) + x_in)


class WaveBlock(nn.Module):
    """BiMLP block (official ``WaveBlock``): ``x + PATM(norm1(x))``, then three branches on ``norm2(x)`` mixed by
    the learnable ``weight`` (2,): binary strip convs ``sfc_h`` (1x7) and ``sfc_w`` (7x1), depthwise with
    residual, and the binary ``Mlp``: ``x + w0 * b + w1 * c + (1 - w0 - w1) * mlp``."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, norm: str = "batch", act_binarize: str = "round"):
        super().__init__()
        self.norm1 = _norm(norm, dim)
        self.attn = PATM(dim, act_binarize)
        self.norm2 = _norm(norm, dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_binarize=act_binarize)
        self.move_h = LearnableBias(dim)
        self.move_w = LearnableBias(dim)
        self.sfc_h = _strip(dim, dim, False, act_binarize)
        self.sfc_w = _strip(dim, dim, True, act_binarize)
        self.act1 = RPReLU(dim)
        self.act2 = RPReLU(dim)
        self.norm_h = nn.BatchNorm2d(dim)
        self.norm_w = nn.BatchNorm2d(dim)
        self.weight = nn.Parameter(torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        mid = self.norm2(x)
        a = self.mlp(mid)
        mid_h, mid_w = self.move_h(mid), self.move_w(mid)
        b = self.act1(self.norm_h(self.sfc_h(mid_h)) + mid_h)
        c = self.act2(self.norm_w(self.sfc_w(mid_w)) + mid_w)
        return x + (self.weight[0] * b + self.weight[1] * c + (1 - self.weight[0] - self.weight[1]) * a)


class PatchEmbedOverlapping(nn.Module):
    """Full-precision stem (official ``PatchEmbedOverlapping``): conv 7x7 / 4, padding 2, bias, norm, RPReLU."""

    def __init__(self, in_chans: int, embed_dim: int, norm: str):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, 7, 4, 2)
        self.norm = _norm(norm, embed_dim)
        self.act = RPReLU(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.proj(x)))


def max_pool_same(x: torch.Tensor, kernel: int, stride: int = 2) -> torch.Tensor:
    """MindSpore's ``MaxPool2d(pad_mode='same')``: output ``ceil(n / stride)``, total padding
    ``max((out - 1) * stride + kernel - n, 0)`` split ``floor`` before / rest after, padded with -inf."""
    pads = []
    for n in (x.shape[3], x.shape[2]):            # F.pad order: last axis first
        total = max((math.ceil(n / stride) - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    return F.max_pool2d(F.pad(x, pads, value=float("-inf")), kernel, stride)


class Downsample(nn.Module):
    """Full-precision downsample (official ``Downsample``): conv 1x1 (bias), norm, RPReLU, then the mean of four
    stride-2 ``same`` max-pools with kernels 2, 3, 5, 7 (attributes ``pool0..3`` hold no weights)."""

    def __init__(self, in_dim: int, out_dim: int, norm: str):
        super().__init__()
        self.proj = nn.Conv2d(in_dim, out_dim, 1)
        self.norm = _norm(norm, out_dim)
        self.act = RPReLU(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm(self.proj(x)))
        p0, p1, p2, p3 = (max_pool_same(x, k) for k in POOL_KERNELS)
        return (p0 + p1 + p2 + p3) / 4.0


class BiMLP(nn.Module):
    """BiMLP (official ``WaveNet`` as built by ``BiMLP_S``/``BiMLP_M``): stem, four stages of ``WaveBlock``s
    in ``network`` (stages at even indices, ``Downsample`` between them), final norm, pooled linear head."""

    def __init__(self, layers: Sequence[int] = (2, 2, 4, 2), embed_dims: Sequence[int] = (64, 128, 320, 512),
                 mlp_ratios: Sequence[float] = (4, 4, 4, 4), norm: str = "batch", in_chans: int = 3,
                 num_classes: int = 1000, act_binarize: str = "round"):
        super().__init__()
        check_arch(embed_dims, mlp_ratios)
        self.num_classes, self.num_features = num_classes, embed_dims[-1]
        self.patch_embed = PatchEmbedOverlapping(in_chans, embed_dims[0], norm)
        network: list[nn.Module] = []
        for i, depth in enumerate(layers):
            network.append(nn.Sequential(*(WaveBlock(embed_dims[i], mlp_ratios[i], norm, act_binarize)
                                           for _ in range(depth))))
            if i < len(layers) - 1:
                network.append(Downsample(embed_dims[i], embed_dims[i + 1], norm))
        self.network = nn.ModuleList(network)
        self.norm = _norm(norm, embed_dims[-1])
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Nothing: BiMLP has no epoch-dependent state."""

    def no_weight_decay(self) -> set[str]:
        """The learnable shifts and PReLU slopes, stored (1, C, 1, 1) (:func:`specs.bimlp.no_weight_decay`; no
        official training code exists)."""
        return no_weight_decay(n for n, _ in self.named_parameters())

    def group_matcher(self, coarse: bool = False) -> dict:
        """Stem, blocks / Downsamples (coarse: stages), head (:func:`specs.bimlp.group_matcher`)."""
        return group_matcher(len(self.network), coarse)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for stage in self.network:
            x = stage(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


registry.register_family("bimlp", BiMLP)
