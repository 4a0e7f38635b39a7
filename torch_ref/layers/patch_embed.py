"""Patch embedding (mirrors ``ms_models/layers/patch_embed.py``)."""
from __future__ import annotations

import torch
from torch import nn

from specs.errors import InputSizeError
from specs.vit import grid_size, to_2tuple


class PatchEmbed(nn.Module):
    """timm ``PatchEmbed`` (``timm/layers/patch_embed.py``) as ViT uses it: a ``patch_size`` conv with stride
    ``patch_size`` (``proj``, with bias, PyTorch's default init), the map flattened to tokens (B, H*W, D).
    As timm's ``strict_img_size=True``: an input of another size than ``img_size`` is an :class:`InputSizeError`
    (``create_model(name, img_size=...)`` builds a model for another size)."""

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768):
        super().__init__()
        self.img_size, self.patch_size = to_2tuple(img_size), to_2tuple(patch_size)
        self.grid_size = grid_size(self.img_size, self.patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, self.patch_size, stride=self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and tuple(x.shape[-2:]) != self.img_size:    # traced: fixed size anyway
            raise InputSizeError(f"input {x.shape[-2]}x{x.shape[-1]} does not match the model's img_size "
                                 f"{self.img_size[0]}x{self.img_size[1]} (build it with img_size=...)")
        return self.proj(x).flatten(2).transpose(1, 2)
