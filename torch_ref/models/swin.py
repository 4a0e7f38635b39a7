"""Swin Transformer, PyTorch reference (arXiv 2103.14030, sections 3.1-3.3).

Follows the FastMIM fine-tune model, ggjy/FastMIM.pytorch@d4eea0d ``mim_swin_finetune.py`` (microsoft's Swin with
the final norm named ``fc_norm``), key for key: ``patch_embed.{proj, norm}``, ``layers.i.blocks.j.{norm1,
attn.relative_position_bias_table, attn.relative_position_index, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``,
``layers.i.blocks.j.attn_mask`` (shifted blocks only), ``layers.i.downsample.{reduction, norm}`` (patch merging at
the END of stages 0..2, not timm >= 0.9's start of the next stage), ``fc_norm``, ``head``. Both buffers are
persistent as upstream: ``relative_position_index`` int64 (:func:`specs.relpos.relative_position_index`),
``attn_mask`` float32 (:func:`specs.swin.shifted_window_mask`). Pre-norm blocks (LayerNorm eps 1e-5, or ``eps``
for every norm but the blocks' ``norm2``; exact GELU),
W-MSA / SW-MSA alternating (shift ``window // 2`` in odd blocks, cyclic roll, the official -100 mask), the window
clamped to the grid when the grid is no larger (:func:`specs.swin.block_window`), global average pooling after
``fc_norm``, ``drop_path_rate`` rising linearly over all blocks.

Not here (off in the registered models): absolute position embedding (``ape``), qk_scale, patch / attention /
projection / MLP dropout (``drop_rate`` is the head dropout, as timm's), gradient checkpointing. The input must be
``img_size`` (the official ``PatchEmbed`` asserts it).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from specs.relpos import num_relative_distance, relative_position_index
from specs.swin import (LN_EPS, MLP_RATIO, block_window, drop_path_rates, group_matcher, no_weight_decay,
                        shifted_window_mask, stage_resolution)
from specs.vit import to_2tuple

from .._registry import registry
from ..layers import DropPath, Mlp, PatchEmbed, trunc_normal_init


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, window * window, C), windows row-major (official ``window_partition``)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nW, window * window, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.reshape(-1, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


class WindowAttention(nn.Module):
    """W-MSA with relative position bias (section 3.2, eq. 4): ``softmax(q k^T / sqrt(d) + B [+ mask]) v`` per
    window, ``B`` gathered from ``relative_position_bias_table`` by the int64 ``relative_position_index`` buffer."""

    def __init__(self, dim: int, window_size: tuple[int, int], num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.window_size, self.num_heads = window_size, num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros(num_relative_distance(window_size), num_heads))
        self.register_buffer("relative_position_index", torch.tensor(relative_position_index(window_size)))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)].reshape(n, n, -1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.reshape(b // nw, nw, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0))
            attn = attn.reshape(-1, self.num_heads, n, n)
        return self.proj((attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c))


class SwinTransformerBlock(nn.Module):
    """``x + attn(norm1(x))`` over (shifted) windows, then ``x + mlp(norm2(x))`` (section 3.1, eq. 3); the shift
    is a cyclic roll by ``-shift`` before and ``+shift`` after the window attention (section 3.2). ``eps`` is
    ``norm1``'s; ``norm2`` keeps torch's default 1e-5 (LocalMIM's ``models_swin.py`` builds it as a plain
    ``nn.LayerNorm(dim)`` whatever its ``norm_layer``)."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], num_heads: int, window_size: int = 7,
                 shift_size: int = 0, mlp_ratio: float = MLP_RATIO, qkv_bias: bool = True, drop_path: float = 0.0,
                 eps: float = LN_EPS):
        super().__init__()
        self.input_resolution = input_resolution
        self.window_size, self.shift_size = block_window(input_resolution, window_size, shift_size)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = WindowAttention(dim, to_2tuple(self.window_size), num_heads, qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        mask = shifted_window_mask(input_resolution, self.window_size, self.shift_size) if self.shift_size else None
        self.register_buffer("attn_mask", None if mask is None else torch.tensor(mask))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.input_resolution
        b, _, c = x.shape
        s, win = self.shift_size, self.window_size
        y = self.norm1(x).reshape(b, h, w, c)
        if s:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        y = window_reverse(self.attn(window_partition(y, win), self.attn_mask), win, h, w)
        if s:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        x = x + self.drop_path(y.reshape(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2 x 2 neighbours concatenated in the official order (``x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2],
    x[1::2, 1::2]``, here as one reshape/permute), LayerNorm(4C), ``reduction`` to 2C without bias (section 3.1)."""

    def __init__(self, input_resolution: tuple[int, int], dim: int, eps: float = LN_EPS):
        super().__init__()
        self.input_resolution = input_resolution
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.input_resolution
        b, _, c = x.shape
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).reshape(b, h * w // 4, 4 * c)
        return self.reduction(self.norm(x))


class BasicLayer(nn.Module):
    """One stage: ``depth`` blocks (shift ``window // 2`` in odd ones), then the optional patch merging."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], depth: int, num_heads: int, window_size: int,
                 mlp_ratio: float = MLP_RATIO, qkv_bias: bool = True, drop_path: Sequence[float] = (),
                 downsample: bool = False, eps: float = LN_EPS):
        super().__init__()
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(dim, input_resolution, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2,
                                 mlp_ratio, qkv_bias, drop_path[i] if drop_path else 0.0, eps) for i in range(depth)])
        self.downsample = PatchMerging(input_resolution, dim, eps) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x if self.downsample is None else self.downsample(x)


class NormedPatchEmbed(PatchEmbed):
    """The official Swin ``PatchEmbed``: the shared patch conv, then LayerNorm over the tokens (``patch_norm``)."""

    def __init__(self, img_size: int | tuple[int, int], patch_size: int, in_chans: int, embed_dim: int,
                 eps: float = LN_EPS):
        super().__init__(img_size, patch_size, in_chans, embed_dim)
        self.norm = nn.LayerNorm(embed_dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(x))


class SwinTransformer(nn.Module):
    """The FastMIM fine-tune ``SwinTransformer``: patch embedding, 4 stages, ``fc_norm``, average pool, head.
    ``forward_features`` returns the normalised last-stage tokens (B, H/32 * W/32, C) ('NLC'), ``forward_head``
    pools them (the official ``avgpool``)."""

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
        self.layers = nn.ModuleList([
            BasicLayer(int(embed_dim * 2 ** i), stage_resolution(self.img_size, patch_size, i), depths[i],
                       num_heads[i], window_size, mlp_ratio, qkv_bias, dpr[sum(depths[:i]):sum(depths[:i + 1])],
                       downsample=i < len(depths) - 1, eps=eps) for i in range(len(depths))])
        self.fc_norm = nn.LayerNorm(self.num_features, eps=eps)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = self._classifier(num_classes)
        for m in self.modules():      # official _init_weights: Linear trunc-normal 0.02, zero bias (conv: torch's)
            if isinstance(m, nn.Linear):
                trunc_normal_init(m)

    def _classifier(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def reset_classifier(self, num_classes: int) -> None:
        """A new ``head`` for ``num_classes`` (0: the pooled features), PyTorch's default Linear init."""
        self.num_classes = num_classes
        self.head = self._classifier(num_classes)

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Nothing: Swin has no epoch-dependent state."""

    def no_weight_decay(self) -> set[str]:
        """Upstream's ``no_weight_decay`` / ``no_weight_decay_keywords``: every relative position bias table
        (:func:`specs.swin.no_weight_decay`; the engine adds norms and biases)."""
        return no_weight_decay([n for n, _ in self.named_parameters()])

    def group_matcher(self, coarse: bool = False) -> dict:
        """FastMIM's layer-wise decay layers (:func:`specs.swin.group_matcher`)."""
        return group_matcher(coarse)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's tokens (B, L, C): patch embedding and the four stages."""
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_norm(self.forward_tokens(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x.mean(dim=1))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


registry.register_family("swin", SwinTransformer)
