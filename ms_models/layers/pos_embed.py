"""Class token and learned absolute position embedding (mirrors ``torch_ref/layers/pos_embed.py``; resampling:
:func:`specs.vit.resample_abs_pos_embed`, NumPy, at checkpoint load)."""
from __future__ import annotations

import mindspore as ms
from mindspore import Parameter, ops
from mindspore.common.initializer import Normal, initializer

from .conv_bn import trunc_normal


def class_token(dim: int, name: str = "cls_token") -> Parameter:
    """A (1, 1, dim) class token, timm's init N(0, 1e-6)."""
    return Parameter(initializer(Normal(sigma=1e-6), (1, 1, dim), ms.float32), name=name)


def learned_pos_embed(num_tokens: int, dim: int, name: str = "pos_embed") -> Parameter:
    """A (1, num_tokens, dim) position embedding, timm's init trunc-normal(0.02)."""
    return Parameter(trunc_normal((1, num_tokens, dim), 0.02), name=name)


def add_class_token_and_pos(x, cls_token, pos_embed):
    """timm ``_pos_embed``: the class token prepended to the (B, N, D) tokens, then the position embedding added."""
    cls = ops.broadcast_to(cls_token, (x.shape[0], -1, -1)).astype(x.dtype)
    return ops.concat((cls, x), axis=1) + pos_embed
