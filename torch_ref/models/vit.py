"""Vision Transformer (ViT), PyTorch reference (arXiv 2010.11929, sections 3.1 and 4.1).

Follows timm's ``VisionTransformer`` (huggingface/pytorch-image-models@8ef7380, v1.0.28,
``timm/models/vision_transformer.py``) with its defaults for the registered ``vit_*_patch16_224`` models, key for
key: ``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1,
mlp.fc2}``, ``norm``, ``head``. Pre-norm blocks (LayerNorm eps 1e-6, exact-erf GELU, qkv bias), class-token
pooling, timm's init (trunc-normal 0.02 linear weights, zero biases, class token N(0, 1e-6)), ``drop_rate`` on the
pooled features before ``head`` and ``drop_path_rate`` rising linearly over the blocks (timm's rules).

Not here (timm options off in these models): register tokens, global average pooling / ``fc_norm``, layer
scale, qk-norm, patch / position / attention / projection dropout, dynamic input sizes. The input must be
``img_size`` (timm's strict default); a checkpoint of another grid is resampled at load
(:func:`specs.vit.checkpoint_filter`).
"""
from __future__ import annotations

import torch
from torch import nn

from specs.vit import LN_EPS, MLP_RATIO, NO_WEIGHT_DECAY, drop_path_rates, group_matcher

from .._registry import registry
from ..layers import Attention, DropPath, Mlp, PatchEmbed, trunc_normal_init
from ..layers.pos_embed import add_class_token_and_pos, class_token, learned_pos_embed


class Block(nn.Module):
    """``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``, each branch through stochastic depth (timm ``Block``;
    ``eps`` of the two LayerNorms: timm's 1e-6, or torch's default 1e-5 where a caller passes plain ``nn.LayerNorm``
    as ``norm_layer``)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = MLP_RATIO, qkv_bias: bool = True,
                 drop_path: float = 0.0, eps: float = LN_EPS):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """timm ``VisionTransformer``: patch embedding, class token and position embedding, ``depth`` blocks, final
    norm, class-token head. ``forward_features`` returns the normalised tokens (B, 1 + N, D) (``output_fmt``
    'NLC', as timm's transformers), ``forward_head`` pools the class token."""

    output_fmt = "NLC"

    def __init__(self, num_classes: int = 1000, img_size: int | tuple[int, int] = 224, patch_size: int = 16,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = MLP_RATIO,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0):
        super().__init__()
        self.num_classes, self.drop_rate = num_classes, drop_rate
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim)
        self.img_size = self.patch_embed.img_size
        self.cls_token = class_token(embed_dim)
        self.pos_embed = learned_pos_embed(self.patch_embed.num_patches + 1, embed_dim)
        dpr = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, True, dpr[i]) for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = self._classifier(num_classes)
        for m in self.modules():           # timm init_weights_vit_timm: every Linear (the conv keeps torch's init)
            if isinstance(m, nn.Linear):
                trunc_normal_init(m)

    def _classifier(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def reset_classifier(self, num_classes: int) -> None:
        """A new ``head`` for ``num_classes`` (0: the pooled class token), PyTorch's default Linear init (timm)."""
        self.num_classes = num_classes
        self.head = self._classifier(num_classes)

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Nothing: ViT has no epoch-dependent state."""

    def no_weight_decay(self) -> set[str]:
        """timm's: the position embedding and the class token (the engine adds norms and biases, ``ndim <= 1``)."""
        return set(NO_WEIGHT_DECAY)

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's: stem (tokens, patch embedding), one group per block (``norm`` with the last), head
        (:func:`specs.vit.group_matcher`)."""
        return group_matcher(coarse)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = add_class_token_and_pos(self.patch_embed(x), self.cls_token, self.pos_embed)
        return self.norm(self.blocks(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x[:, 0])
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


registry.register_family("vit", VisionTransformer)
