"""BiMLP, MindSpore (arXiv 2212.14158), mirroring ``torch_ref/bimlp.py`` name for name.

Follows mindspore-ai/models ``research/cv/BiMLP/src/bimlp.py`` and ``src/quan_conv.py``: parameter names are
the official ones, so a checkpoint of the official network loads directly (strict). The code-versus-paper
notes are in ``torch_ref/bimlp.py``. MindSpore-specific: the official network cannot be trained as released
(its activation quantiser ends in ``Rint``, which has no gradient in MindSpore; 2.8.0 raises "Rint's bprop
not defined"); here the quantiser is a Cell with the straight-through ``bprop`` of ``ms_models.layers.binary``. The
weight quantiser keeps the official ``XnorM`` bprop. Same omissions as torch_ref (zero-rate ``DropPath`` and
dropouts); the head flattens instead of ``Squeeze`` (which also drops a batch of one).
"""
from __future__ import annotations

from typing import Sequence

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import initializer

from specs.bimlp import POOL_KERNELS, STRIP, check_arch, check_norm, group_matcher, no_weight_decay

from .._registry import registry
from ..layers.binary import LearnableBias, RPReLU, XnorConv2d
from ..layers import Identity, batch_norm, refresh_graph, torch_init_conv2d, torch_init_dense


def _norm(kind: str, channels: int) -> nn.Cell:
    if check_norm(kind) == "batch":
        return batch_norm(channels)
    return nn.GroupNorm(1, channels, eps=1e-5)     # official ``MyNorm``


def channel_shortcut(x, out_ch: int, tile: int):
    """The binary MLP's universal shortcut (official ``Mlp.construct``): ``tile`` copies along the channels when
    ``out // in == tile``, else the mean of the four strided channel slices."""
    if out_ch // x.shape[1] == tile:
        return ops.tile(x, (1, tile, 1, 1))
    x0, x1, x2, x3 = strided_channels(x, 4)
    return (x0 + x1 + x2 + x3) / 4.0


def strided_channels(x, n: int) -> tuple:
    """``(x[:, 0::n], ..., x[:, n-1::n])`` as one reshape and unstack (strided slicing is slow in PyNative)."""
    b, c, h, w = x.shape
    return ops.unstack(x.reshape(b, c // n, n, h, w), axis=2)


def _strip(in_ch: int, out_ch: int, vertical: bool, act_binarize: str) -> XnorConv2d:
    """Grouped binary strip conv, ``1 x 7`` (``vertical=False``) or ``7 x 1``, groups = ``out_ch``."""
    kernel, pad = ((STRIP, 1), (STRIP // 2, 0)) if vertical else ((1, STRIP), (0, STRIP // 2))
    return XnorConv2d(in_ch, out_ch, kernel, pad, groups=out_ch, act_binarize=act_binarize)


class Mlp(nn.Cell):
    """Binary channel MLP with universal shortcuts (official ``Mlp``)."""

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
        self.norm1 = batch_norm(hidden_features)
        self.norm2 = batch_norm(out_features)
        self.norm0 = batch_norm(hidden_features)

    def construct(self, x):
        inp = self.act1(self.norm0(channel_shortcut(x, self.hidden_features, 4)))
        x = self.act2(self.norm1(self.fc1(self.move1(x))) + inp)
        inp = channel_shortcut(x, self.out_features, 12)
        return self.act3(self.norm2(self.fc2(self.move2(x))) + inp)


class PATM(nn.Cell):
    """Binary phase-aware token mixing (official ``PATM``, mode 'fc'); see torch_ref."""

    def __init__(self, dim: int, act_binarize: str = "round"):
        super().__init__()
        ab = act_binarize
        self.fc_h = XnorConv2d(dim, dim, act_binarize=ab)
        self.fc_w = XnorConv2d(dim, dim, act_binarize=ab)
        self.fc_c = XnorConv2d(dim, dim, act_binarize=ab)
        self.move_fch = LearnableBias(dim)
        self.move_fcw = LearnableBias(dim)
        self.move_fcc = LearnableBias(dim)
        self.fc_h_bn = batch_norm(dim)
        self.fc_w_bn = batch_norm(dim)
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
        self.theta_h_bn = batch_norm(dim)
        self.theta_h_act = RPReLU(dim)
        self.move_thetaw = LearnableBias(dim)
        self.theta_w_conv = XnorConv2d(dim, dim, act_binarize=ab)
        self.theta_w_bn = batch_norm(dim)
        self.theta_w_act = RPReLU(dim)
        self.act_c = RPReLU(dim)
        self.act_h = RPReLU(dim)
        self.act_w = RPReLU(dim)
        self.act_proj = RPReLU(dim)
        self.norm_c = batch_norm(dim)
        self.norm_h = batch_norm(dim)
        self.norm_w = batch_norm(dim)
        self.norm_proj = batch_norm(dim)

    def construct(self, inp):
        b, c, _, _ = inp.shape
        t = self.move_thetah(inp)
        theta_h = self.theta_h_act(self.theta_h_bn(self.theta_h_conv(t)) + t)
        t = self.move_thetaw(inp)
        theta_w = self.theta_w_act(self.theta_w_bn(self.theta_w_conv(t)) + t)
        t = self.move_fch(inp)
        x_h = self.fc_h_act(self.fc_h_bn(self.fc_h(t)) + t)
        t = self.move_fcw(inp)
        x_w = self.fc_w_act(self.fc_w_bn(self.fc_w(t)) + t)
        x_h = self.move_tfch(ops.concat((x_h * ops.cos(theta_h), x_h * ops.sin(theta_h)), 1))
        x_w = self.move_tfcw(ops.concat((x_w * ops.cos(theta_w), x_w * ops.sin(theta_w)), 1))
        fc_c_in = self.move_fcc(inp)
        h0, h1 = strided_channels(x_h, 2)
        w0, w1 = strided_channels(x_w, 2)
        th = h0 + h1
        tw = w0 + w1
        h = self.act_h(self.norm_h(self.tfc_h(x_h)) + th / 2.0)
        w = self.act_w(self.norm_w(self.tfc_w(x_w)) + tw / 2.0)
        c_ = self.act_c(self.norm_c(self.fc_c(fc_c_in)) + fc_c_in)
        a = (h + w + c_ + inp).mean(axis=(2, 3), keep_dims=True)
        a = ops.softmax(self.reweight(a).reshape(b, c, 3).transpose(2, 0, 1), axis=0)
        a = a.expand_dims(-1).expand_dims(-1)
        x = h * a[0] + w * a[1] + c_ * a[2] + inp
        x_in = self.move_proj(x)
        return self.act_proj(self.norm_proj(self.proj(x_in)) + x_in)


class WaveBlock(nn.Cell):
    """BiMLP block (official ``WaveBlock``); see torch_ref."""

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
        self.norm_h = batch_norm(dim)
        self.norm_w = batch_norm(dim)
        self.weight = Parameter(initializer("zeros", (2,), ms.float32), name="weight")

    def construct(self, x):
        x = x + self.attn(self.norm1(x))
        mid = self.norm2(x)
        a = self.mlp(mid)
        mid_h = self.move_h(mid)
        mid_w = self.move_w(mid)
        b = self.act1(self.norm_h(self.sfc_h(mid_h)) + mid_h)
        c = self.act2(self.norm_w(self.sfc_w(mid_w)) + mid_w)
        return x + (self.weight[0] * b + self.weight[1] * c + (1 - self.weight[0] - self.weight[1]) * a)


class PatchEmbedOverlapping(nn.Cell):
    """Full-precision stem: conv 7x7 / 4, padding 2, bias, norm, RPReLU."""

    def __init__(self, in_chans: int, embed_dim: int, norm: str):
        super().__init__()
        self.proj = torch_init_conv2d(in_chans, embed_dim, 7, 4, 2, bias=True)
        self.norm = _norm(norm, embed_dim)
        self.act = RPReLU(embed_dim)

    def construct(self, x):
        return self.act(self.norm(self.proj(x)))


class Downsample(nn.Cell):
    """Full-precision downsample: conv 1x1 (bias), norm, RPReLU, mean of the official four stride-2
    ``MaxPool2d(pad_mode='same')`` (kernels 2, 3, 5, 7)."""

    def __init__(self, in_dim: int, out_dim: int, norm: str):
        super().__init__()
        self.pool0, self.pool1, self.pool2, self.pool3 = (
            nn.MaxPool2d(kernel_size=k, stride=2, pad_mode="same") for k in POOL_KERNELS)
        self.proj = torch_init_conv2d(in_dim, out_dim, 1, bias=True)
        self.norm = _norm(norm, out_dim)
        self.act = RPReLU(out_dim)

    def construct(self, x):
        x = self.act(self.norm(self.proj(x)))
        return (self.pool0(x) + self.pool1(x) + self.pool2(x) + self.pool3(x)) / 4.0


class BiMLP(nn.Cell):
    """BiMLP (official ``WaveNet`` of ``BiMLP_S``/``BiMLP_M``); see torch_ref."""

    def __init__(self, layers: Sequence[int] = (2, 2, 4, 2), embed_dims: Sequence[int] = (64, 128, 320, 512),
                 mlp_ratios: Sequence[float] = (4, 4, 4, 4), norm: str = "batch", in_chans: int = 3,
                 num_classes: int = 1000, act_binarize: str = "round"):
        super().__init__()
        check_arch(embed_dims, mlp_ratios)
        self.num_classes, self.num_features = num_classes, embed_dims[-1]
        self.patch_embed = PatchEmbedOverlapping(in_chans, embed_dims[0], norm)
        network = []
        for i, depth in enumerate(layers):
            network.append(nn.SequentialCell([WaveBlock(embed_dims[i], mlp_ratios[i], norm, act_binarize)
                                              for _ in range(depth)]))
            if i < len(layers) - 1:
                network.append(Downsample(embed_dims[i], embed_dims[i + 1], norm))
        self.network = nn.CellList(network)
        self.norm = _norm(norm, embed_dims[-1])
        self.head = torch_init_dense(self.num_features, num_classes) if num_classes > 0 else Identity()

    def reset_classifier(self, num_classes: int) -> None:
        """A new head (0: pooled features); refreshes the compiled graph."""
        self.num_classes = num_classes
        self.head = torch_init_dense(self.num_features, num_classes) if num_classes > 0 else Identity()
        refresh_graph(self)

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Nothing: BiMLP has no epoch-dependent state."""

    def no_weight_decay(self) -> set[str]:
        """The learnable shifts and PReLU slopes (:func:`specs.bimlp.no_weight_decay`; see the torch reference)."""
        return no_weight_decay(n for n, _ in self.parameters_and_names())

    def group_matcher(self, coarse: bool = False) -> dict:
        """Stem, blocks / Downsamples (coarse: stages), head (:func:`specs.bimlp.group_matcher`)."""
        return group_matcher(len(self.network), coarse)

    def forward_features(self, x):
        x = self.patch_embed(x)
        for stage in self.network:
            x = stage(x)
        return self.norm(x)

    def forward_head(self, x, pre_logits: bool = False):
        x = x.mean(axis=(2, 3))
        return x if pre_logits else self.head(x)

    def construct(self, x):
        return self.forward_head(self.forward_features(x))


registry.register_family("bimlp", BiMLP)
