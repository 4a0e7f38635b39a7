"""Swin Transformer, MindSpore (arXiv 2103.14030).

Mirrors ``torch_ref/models/swin.py`` cell for cell, so parameter names equal the FastMIM fine-tune model's keys
(ggjy/FastMIM.pytorch@d4eea0d ``mim_swin_finetune.py``) with LayerNorm's ``weight``/``bias`` as ``gamma``/``beta``.
The official persistent buffers are Parameters with ``requires_grad=False`` of the same names, shapes and dtypes
(``relative_position_index`` int64, ``attn_mask`` float32), so they are in the checkpoint, pair with torch's keys
in the converter and load strictly, and stay out of the optimizer. MindSpore defaults set explicitly: LayerNorm
eps 1e-5 (MindSpore 1e-7), exact-erf GELU. For speed (same values as the torch twin): windows by reshape/transpose,
the cyclic shift as two slices concatenated, the bias gathered once per block and forward, q/k/v split along the
last axis (see ``ms_models.layers.Attention``).
"""
from __future__ import annotations

from typing import Sequence

from mindspore import Parameter, Tensor, nn, ops

from specs.relpos import num_relative_distance, relative_position_index
from specs.swin import (LN_EPS, MLP_RATIO, block_window, drop_path_rates, group_matcher, no_weight_decay,
                        shifted_window_mask, stage_resolution)
from specs.vit import to_2tuple

from .._registry import registry
from ..layers import DropPath, Identity, Mlp, PatchEmbed, dense, refresh_graph, torch_init_dense, trunc_normal


def layer_norm(dim: int, eps: float = LN_EPS) -> nn.LayerNorm:
    """The official ``nn.LayerNorm(dim)``: eps 1e-5 (or ``eps``) over the last axis."""
    return nn.LayerNorm((dim,), epsilon=eps)


def window_partition(x, window: int):
    """(B, H, W, C) -> (B * nW, window * window, C), windows row-major (official ``window_partition``)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_reverse(windows, window: int, h: int, w: int):
    """Inverse of :func:`window_partition`: (B * nW, window * window, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.reshape(-1, h // window, w // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def roll_hw(x, shift: int):
    """``torch.roll(x, (shift, shift), dims=(1, 2))`` on (B, H, W, C) as slices and concatenations."""
    h, w = x.shape[1], x.shape[2]
    s_h, s_w = shift % h, shift % w
    x = ops.concat((x[:, h - s_h:], x[:, :h - s_h]), axis=1)
    return ops.concat((x[:, :, w - s_w:], x[:, :, :w - s_w]), axis=2)


class WindowAttention(nn.Cell):
    """W-MSA with relative position bias (see the torch reference)."""

    def __init__(self, dim: int, window_size: tuple[int, int], num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.window_size, self.num_heads, self.head_dim = window_size, num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.relative_position_bias_table = Parameter(
            trunc_normal((num_relative_distance(window_size), num_heads)), name="relative_position_bias_table")
        self.relative_position_index = Parameter(Tensor(relative_position_index(window_size)),
                                                 name="relative_position_index", requires_grad=False)
        self.qkv = dense(dim, dim * 3, bias=qkv_bias)
        self.proj = dense(dim, dim)

    def construct(self, x, mask=None):
        b, n, c = x.shape
        q, k, v = (t.reshape(b, n, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)
                   for t in ops.split(self.qkv(x), c, axis=-1))
        attn = ops.matmul(q * self.scale, k.swapaxes(-2, -1))
        bias = ops.gather(self.relative_position_bias_table, self.relative_position_index.reshape(-1), 0)
        attn = attn + bias.reshape(n, n, -1).transpose(2, 0, 1).expand_dims(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.reshape(b // nw, nw, self.num_heads, n, n) + mask.reshape(1, nw, 1, n, n)
            attn = attn.reshape(-1, self.num_heads, n, n)
        attn = ops.softmax(attn, axis=-1)
        return self.proj(ops.matmul(attn, v).transpose(0, 2, 1, 3).reshape(b, n, c))


class SwinTransformerBlock(nn.Cell):
    """(Shifted-)window attention and MLP, pre-norm residuals (see the torch reference)."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], num_heads: int, window_size: int = 7,
                 shift_size: int = 0, mlp_ratio: float = MLP_RATIO, qkv_bias: bool = True, drop_path: float = 0.0,
                 eps: float = LN_EPS):
        super().__init__()
        self.input_resolution = input_resolution
        self.window_size, self.shift_size = block_window(input_resolution, window_size, shift_size)
        self.norm1 = layer_norm(dim, eps)
        self.attn = WindowAttention(dim, to_2tuple(self.window_size), num_heads, qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.attn_mask = None
        if self.shift_size:
            mask = shifted_window_mask(input_resolution, self.window_size, self.shift_size)
            self.attn_mask = Parameter(Tensor(mask), name="attn_mask", requires_grad=False)

    def construct(self, x):
        h, w = self.input_resolution
        b, _, c = x.shape
        s, win = self.shift_size, self.window_size
        y = self.norm1(x).reshape(b, h, w, c)
        if s:
            y = roll_hw(y, -s)
        y = window_reverse(self.attn(window_partition(y, win), self.attn_mask), win, h, w)
        if s:
            y = roll_hw(y, s)
        x = x + self.drop_path(y.reshape(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Cell):
    """2 x 2 neighbours in the official order, LayerNorm(4C), bias-free ``reduction`` to 2C."""

    def __init__(self, input_resolution: tuple[int, int], dim: int, eps: float = LN_EPS):
        super().__init__()
        self.input_resolution = input_resolution
        self.reduction = dense(4 * dim, 2 * dim, bias=False)
        self.norm = layer_norm(4 * dim, eps)

    def construct(self, x):
        h, w = self.input_resolution
        b, _, c = x.shape
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5).reshape(b, h * w // 4, 4 * c)
        return self.reduction(self.norm(x))


class BasicLayer(nn.Cell):
    """One stage: ``depth`` blocks (shift ``window // 2`` in odd ones), then the optional patch merging."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], depth: int, num_heads: int, window_size: int,
                 mlp_ratio: float = MLP_RATIO, qkv_bias: bool = True, drop_path: Sequence[float] = (),
                 downsample: bool = False, eps: float = LN_EPS):
        super().__init__()
        self.blocks = nn.CellList([
            SwinTransformerBlock(dim, input_resolution, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2,
                                 mlp_ratio, qkv_bias, drop_path[i] if drop_path else 0.0, eps) for i in range(depth)])
        self.downsample = PatchMerging(input_resolution, dim, eps) if downsample else None

    def construct(self, x):
        for blk in self.blocks:
            x = blk(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


class NormedPatchEmbed(PatchEmbed):
    """The official Swin ``PatchEmbed``: the shared patch conv, then LayerNorm over the tokens."""

    def __init__(self, img_size: int | tuple[int, int], patch_size: int, in_chans: int, embed_dim: int,
                 eps: float = LN_EPS):
        super().__init__(img_size, patch_size, in_chans, embed_dim)
        self.norm = layer_norm(embed_dim, eps)

    def construct(self, x):
        return self.norm(super().construct(x))


class SwinTransformer(nn.Cell):
    """The FastMIM fine-tune ``SwinTransformer`` (see the torch reference): same constructor, API and outputs."""

    output_fmt = "NLC"

    def __init__(self, num_classes: int = 1000, img_size: int | tuple[int, int] = 224, patch_size: int = 4,
                 embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: int = 7, mlp_ratio: float = MLP_RATIO, qkv_bias: bool = True, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, eps: float = LN_EPS):
        super().__init__()
        self.num_classes, self.drop_rate, self.window_size = num_classes, drop_rate, window_size
        self.num_features = self.head_hidden_size = int(embed_dim * 2 ** (len(depths) - 1))
        self.patch_embed = NormedPatchEmbed(img_size, patch_size, 3, embed_dim, eps)
        self.img_size = self.patch_embed.img_size
        dpr = drop_path_rates(drop_path_rate, sum(depths))
        self.layers = nn.CellList([
            BasicLayer(int(embed_dim * 2 ** i), stage_resolution(self.img_size, patch_size, i), depths[i],
                       num_heads[i], window_size, mlp_ratio, qkv_bias, dpr[sum(depths[:i]):sum(depths[:i + 1])],
                       downsample=i < len(depths) - 1, eps=eps) for i in range(len(depths))])
        self.fc_norm = layer_norm(self.num_features, eps)
        self.head_drop = nn.Dropout(p=drop_rate)
        self.head = dense(self.num_features, num_classes) if num_classes > 0 else Identity()

    def reset_classifier(self, num_classes: int) -> None:
        """A new ``head`` for ``num_classes`` (0: the pooled features), torch's default Linear init."""
        self.num_classes = num_classes
        self.head = torch_init_dense(self.num_features, num_classes) if num_classes > 0 else Identity()
        refresh_graph(self)

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Nothing: Swin has no epoch-dependent state."""

    def no_weight_decay(self) -> set[str]:
        """Every relative position bias table (:func:`specs.swin.no_weight_decay`)."""
        return no_weight_decay([n for n, _ in self.parameters_and_names()])

    def group_matcher(self, coarse: bool = False) -> dict:
        """FastMIM's layer-wise decay layers (:func:`specs.swin.group_matcher`)."""
        return group_matcher(coarse)

    def forward_tokens(self, x):
        """The last stage's tokens (B, L, C): patch embedding and the four stages."""
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return x

    def forward_features(self, x):
        return self.fc_norm(self.forward_tokens(x))

    def forward_head(self, x, pre_logits: bool = False):
        x = self.head_drop(x.mean(axis=1))
        return x if pre_logits else self.head(x)

    def construct(self, x):
        return self.forward_head(self.forward_features(x))


registry.register_family("swin", SwinTransformer)
