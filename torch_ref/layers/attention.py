"""Multi-head self-attention (mirrors ``ms_models/layers/attention.py``)."""
from __future__ import annotations

import torch
from torch import nn


class Attention(nn.Module):
    """timm ``Attention`` (``timm/layers/attention.py``), its non-fused path: ``qkv`` projects to (3, B, heads,
    N, head_dim), ``q * head_dim ** -0.5`` before ``q @ k^T``, softmax over the keys, ``@ v``, heads
    concatenated, ``proj``. (timm's default ``F.scaled_dot_product_attention`` computes the same up to float
    rounding; timm 0.6.5 scaled ``q @ k^T`` after the product: bit-identical whenever the scale is a power of
    two, as for head_dim 64.)"""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
