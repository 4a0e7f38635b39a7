"""Class token and learned absolute position embedding (mirrors ``ms_models/layers/pos_embed.py``; resampling a
position embedding to another grid: :func:`specs.vit.resample_abs_pos_embed`, NumPy, at checkpoint load)."""
from __future__ import annotations

import torch
from torch import nn


def class_token(dim: int) -> nn.Parameter:
    """A (1, 1, dim) class token, timm's init ``normal_(std=1e-6)``."""
    return nn.Parameter(nn.init.normal_(torch.empty(1, 1, dim), std=1e-6))


def learned_pos_embed(num_tokens: int, dim: int) -> nn.Parameter:
    """A (1, num_tokens, dim) position embedding, timm's init ``trunc_normal_(std=0.02)``."""
    return nn.Parameter(nn.init.trunc_normal_(torch.empty(1, num_tokens, dim), std=0.02))


def add_class_token_and_pos(x: torch.Tensor, cls_token: torch.Tensor, pos_embed: torch.Tensor) -> torch.Tensor:
    """timm ``VisionTransformer._pos_embed`` (class token, ``no_embed_class=False``): the class token prepended
    to the (B, N, D) tokens, then the (1, 1 + N, D) position embedding added to all of them."""
    return torch.cat([cls_token.expand(x.shape[0], -1, -1), x], dim=1) + pos_embed
