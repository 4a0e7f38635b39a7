"""Patch embedding (mirrors ``torch_ref/layers/patch_embed.py``)."""
from __future__ import annotations

from mindspore import nn
from mindspore.ops.primitive import constexpr

from specs.errors import InputSizeError
from specs.vit import grid_size, to_2tuple

from .conv_bn import torch_init_conv2d


@constexpr
def check_img_size(h: int, w: int, img_size: tuple[int, int]) -> None:
    """:class:`InputSizeError` unless ``(h, w) == img_size``; a compile-time check in GRAPH_MODE (the graph cannot
    raise the project's error types), a plain one in PyNative."""
    if (h, w) != tuple(img_size):
        raise InputSizeError(f"input {h}x{w} does not match the model's img_size {img_size[0]}x{img_size[1]} "
                             f"(build it with img_size=...)")


class PatchEmbed(nn.Cell):
    """timm ``PatchEmbed`` as ViT uses it (see ``torch_ref.layers.PatchEmbed``): ``proj`` conv (kernel = stride =
    ``patch_size``, bias, torch's default init), flattened to (B, H*W, D); the input must be ``img_size``."""

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768):
        super().__init__()
        self.img_size, self.patch_size = to_2tuple(img_size), to_2tuple(patch_size)
        self.grid_size = grid_size(self.img_size, self.patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = torch_init_conv2d(in_chans, embed_dim, self.patch_size, stride=self.patch_size[0], bias=True)

    def construct(self, x):
        check_img_size(x.shape[2], x.shape[3], self.img_size)
        x = self.proj(x)
        return x.reshape(x.shape[0], x.shape[1], -1).transpose(0, 2, 1)
