"""Multi-head self-attention (mirrors ``torch_ref/layers/attention.py``)."""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from .linear import dense


class Attention(nn.Cell):
    """timm ``Attention``, its non-fused path (see ``torch_ref.layers.Attention``): ``qkv`` to (3, B, heads, N,
    head_dim), ``q * head_dim ** -0.5`` before ``q @ k^T``, softmax over the keys (last axis) in float32 whatever
    the compute dtype (mixed precision), ``@ v``, heads concatenated, ``proj``."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = dense(dim, dim * 3, bias=qkv_bias)
        self.proj = dense(dim, dim)

    def construct(self, x):
        b, n, c = x.shape
        # timm's reshape(b, n, 3, heads, head_dim) as a split into q, k, v along the last axis: slicing the
        # permuted tensor (qkv[0], qkv[1], qkv[2]) took a quarter of ViT-S's time (MindSpore 2.8's CPU StridedSlice)
        q, k, v = (t.reshape(b, n, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)
                   for t in ops.split(self.qkv(x), c, axis=-1))
        attn = ops.matmul(q * self.scale, k.swapaxes(-2, -1))
        if attn.dtype != ms.float32:
            attn = ops.softmax(attn.astype(ms.float32), axis=-1).astype(v.dtype)
        else:
            attn = ops.softmax(attn, axis=-1)
        return self.proj(ops.matmul(attn, v).transpose(0, 2, 1, 3).reshape(b, n, c))
