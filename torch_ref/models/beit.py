"""BEiT v2 (arXiv 2208.06366; the BEiT backbone of arXiv 2106.08254, section 2.2 and appendix), PyTorch reference.

Follows Hao840/vanillaKD@a27b029 ``models/beit.py`` (timm 0.6.5's ``Beit``) with the ``beitv2_*_patch16_224``
settings, key for key: ``cls_token``, ``patch_embed.proj``, ``blocks.N.{norm1, attn.{q_bias, v_bias, qkv.weight,
relative_position_bias_table, relative_position_index, proj}, norm2, mlp.fc1, mlp.fc2, gamma_1, gamma_2}``,
``fc_norm``, ``head``. Pre-norm blocks with layer scale, attention with a q and v bias (no k bias: a zero
non-persistent buffer) and a learned relative position bias per block, indexed by a persistent int64
``relative_position_index`` buffer (in the state_dict, as upstream); mean pooling of the patch tokens through
``fc_norm`` (upstream's ``norm`` is an Identity then, and left out). Upstream's init: trunc-normal(0.02) linear
weights and class token, zero biases and tables, ``fix_init_weight`` (``attn.proj`` and ``mlp.fc2`` of block i
divided by sqrt(2 i)), the head scaled by 0.001; the patch conv keeps torch's init.

Not here (upstream options off in these models): absolute position embedding, a shared relative position bias,
class-token pooling, ``attn_head_dim``, gradient checkpointing. The input must be ``img_size``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from specs.beit import HEAD_INIT_SCALE, LN_EPS, MLP_RATIO, drop_path_rates, group_matcher, no_weight_decay
from specs.relpos import num_relative_distance, relative_position_index

from .._registry import registry
from ..layers import Attention as _Attention, DropPath, Mlp as _Mlp, PatchEmbed, trunc_normal_init


class Attention(_Attention):
    """Upstream ``Attention``: the shared layer's ``qkv`` (no bias) and ``proj``, plus ``q_bias``/``v_bias``
    (the k bias a zero buffer, not saved), ``q * scale @ k^T`` plus the relative position bias
    ``table[index]`` (gathered once per call), softmax, ``@ v``."""

    def __init__(self, dim: int, num_heads: int, window_size: tuple[int, int], attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__(dim, num_heads, qkv_bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("k_bias", torch.zeros(dim), persistent=False)
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.window_size = window_size
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros(num_relative_distance(window_size, class_token=True), num_heads))
        self.register_buffer("relative_position_index",
                             torch.from_numpy(relative_position_index(window_size, class_token=True)))
        self.attn_drop = nn.Dropout(attn_drop) if attn_drop > 0 else nn.Identity()
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()

    def rel_pos_bias(self) -> torch.Tensor:
        """(heads, N + 1, N + 1): the table's rows at the index (upstream ``_get_rel_pos_bias`` without its
        leading batch axis)."""
        n = self.relative_position_index.shape[0]
        return self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = F.linear(x, self.qkv.weight, torch.cat((self.q_bias, self.k_bias, self.v_bias)))
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1) + self.rel_pos_bias()).softmax(dim=-1)
        x = (self.attn_drop(attn) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class Mlp(_Mlp):
    """timm 0.6.5 ``Mlp``: the shared ``fc1 -> GELU -> fc2`` with upstream's dropout after the GELU and after
    ``fc2`` (``drop_rate``; identity at 0, the registered models' value)."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0):
        super().__init__(in_features, hidden_features)
        self.drop1 = nn.Dropout(drop) if drop > 0 else nn.Identity()
        self.drop2 = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Block(nn.Module):
    """``x + gamma_1 * attn(norm1(x))``, then ``x + gamma_2 * mlp(norm2(x))``, each branch through stochastic
    depth (upstream ``Block`` with ``init_values``)."""

    def __init__(self, dim: int, num_heads: int, window_size: tuple[int, int], mlp_ratio: float = MLP_RATIO,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0, init_values: float = 1e-5):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads, window_size, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.gamma_1 = nn.Parameter(init_values * torch.ones(dim))
        self.gamma_2 = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.gamma_1 * self.attn(self.norm1(x)))
        return x + self.drop_path(self.gamma_2 * self.mlp(self.norm2(x)))


class Beit(nn.Module):
    """Upstream ``Beit`` (mean pooling, relative position bias per block, layer scale): patch embedding, class
    token, ``depth`` blocks; ``forward_features`` returns the tokens (B, 1 + N, D) ('NLC'), ``forward_head``
    averages the patch tokens, ``fc_norm``, ``head``."""

    output_fmt = "NLC"

    def __init__(self, num_classes: int = 1000, img_size: int | tuple[int, int] = 224, patch_size: int = 16,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = MLP_RATIO,
                 init_values: float = 1e-5, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0):
        super().__init__()
        self.num_classes, self.drop_rate = num_classes, drop_rate
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim)
        self.img_size = self.patch_embed.img_size
        self.cls_token = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, 1, embed_dim), std=0.02))
        self.pos_drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        dpr = drop_path_rates(drop_path_rate, depth)
        grid = self.patch_embed.grid_size
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, grid, mlp_ratio, drop_rate, attn_drop_rate,
                                            dpr[i], init_values) for i in range(depth)])
        self.fc_norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.head = self._classifier(num_classes)
        for m in self.modules():           # upstream _init_weights: every Linear (LayerNorms are torch's 1 / 0)
            if isinstance(m, nn.Linear):
                trunc_normal_init(m)
        self.fix_init_weight()
        if isinstance(self.head, nn.Linear):
            with torch.no_grad():
                self.head.weight.mul_(HEAD_INIT_SCALE)

    def fix_init_weight(self) -> None:
        """Upstream: block i's (from 1) ``attn.proj`` and ``mlp.fc2`` weights divided by sqrt(2 i)."""
        with torch.no_grad():
            for i, block in enumerate(self.blocks, 1):
                block.attn.proj.weight.div_(math.sqrt(2.0 * i))
                block.mlp.fc2.weight.div_(math.sqrt(2.0 * i))

    def _classifier(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def reset_classifier(self, num_classes: int) -> None:
        """A new ``head`` for ``num_classes`` (0: the pooled features), PyTorch's default Linear init (upstream)."""
        self.num_classes = num_classes
        self.head = self._classifier(num_classes)

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Nothing: BEiT has no epoch-dependent state."""

    def no_weight_decay(self) -> set[str]:
        """Upstream's: ``cls_token`` and the relative position bias tables (:func:`specs.beit.no_weight_decay`)."""
        return no_weight_decay(n for n, _ in self.named_parameters())

    def group_matcher(self, coarse: bool = False) -> dict:
        """Upstream's: stem, one group per block, ``fc_norm`` and ``head`` last (:func:`specs.beit.group_matcher`)."""
        return group_matcher(coarse)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = self.pos_drop(torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1))
        return self.blocks(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.fc_norm(x[:, 1:].mean(dim=1))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


registry.register_family("beit", Beit)
