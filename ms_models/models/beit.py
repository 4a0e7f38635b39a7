"""BEiT v2 (arXiv 2208.06366), MindSpore.

Mirrors ``torch_ref/models/beit.py`` cell for cell, so parameter names equal the keys of Hao840/vanillaKD@a27b029
``models/beit.py`` (timm 0.6.5's ``Beit``) with LayerNorm's ``weight``/``bias`` as MindSpore's ``gamma``/``beta``;
``relative_position_index`` is a frozen int64 parameter (torch's persistent buffer, converted as it is). The
MindSpore defaults that differ from torch are set explicitly: LayerNorm eps 1e-6, exact-erf GELU, the attention
softmax over the last axis in float32.
"""
from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import initializer

from specs.beit import HEAD_INIT_SCALE, LN_EPS, MLP_RATIO, drop_path_rates, group_matcher, no_weight_decay
from specs.relpos import num_relative_distance, relative_position_index

from .._registry import registry
from ..layers import (Attention as _Attention, DropPath, Identity, Mlp as _Mlp, PatchEmbed, dense, refresh_graph,
                      torch_init_dense, trunc_normal)


def layer_norm(dim: int) -> nn.LayerNorm:
    """Upstream's ``LayerNorm(dim, eps=1e-6)`` over the last axis."""
    return nn.LayerNorm((dim,), epsilon=LN_EPS)


def dropout(p: float) -> nn.Cell:
    """``nn.Dropout(p)``, or an identity at 0 (the registered models' rate: nothing in the graph)."""
    return nn.Dropout(p=p) if p > 0 else Identity()


class Attention(_Attention):
    """Upstream ``Attention`` (see the torch reference): the shared layer's ``qkv`` (no bias) split into q, k, v
    with ``q_bias``/``v_bias`` added (the k bias is zero), ``q * scale @ k^T`` plus the relative position bias
    ``table[index]`` (one gather per call), softmax in float32, ``@ v``, ``proj``."""

    def __init__(self, dim: int, num_heads: int, window_size: tuple[int, int], attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__(dim, num_heads, qkv_bias=False)
        self.q_bias = Parameter(initializer("zeros", (dim,), ms.float32), name="q_bias")
        self.v_bias = Parameter(initializer("zeros", (dim,), ms.float32), name="v_bias")
        self.window_size = window_size
        self.relative_position_bias_table = Parameter(
            initializer("zeros", (num_relative_distance(window_size, class_token=True), num_heads), ms.float32),
            name="relative_position_bias_table")
        index = relative_position_index(window_size, class_token=True)
        self.relative_position_index = Parameter(Tensor(index), name="relative_position_index", requires_grad=False)
        self.num_tokens = index.shape[0]
        self.attn_drop = dropout(attn_drop)
        self.proj_drop = dropout(proj_drop)

    def rel_pos_bias(self):
        """(heads, N + 1, N + 1): the table's rows at the index (upstream ``_get_rel_pos_bias``)."""
        n = self.num_tokens
        bias = ops.gather(self.relative_position_bias_table, self.relative_position_index.reshape(-1), 0)
        return bias.reshape(n, n, -1).transpose(2, 0, 1)

    def construct(self, x):
        b, n, c = x.shape
        q, k, v = ops.split(self.qkv(x), c, axis=-1)
        q = (q + self.q_bias).reshape(b, n, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)
        k = k.reshape(b, n, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)
        v = (v + self.v_bias).reshape(b, n, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)
        attn = ops.matmul(q * self.scale, k.swapaxes(-2, -1)) + self.rel_pos_bias().astype(q.dtype)
        if attn.dtype != ms.float32:
            attn = ops.softmax(attn.astype(ms.float32), axis=-1).astype(v.dtype)
        else:
            attn = ops.softmax(attn, axis=-1)
        x = ops.matmul(self.attn_drop(attn), v).transpose(0, 2, 1, 3).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class Mlp(_Mlp):
    """timm 0.6.5 ``Mlp``: the shared ``fc1 -> GELU -> fc2`` with dropout after the GELU and after ``fc2``."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0):
        super().__init__(in_features, hidden_features)
        self.drop1 = dropout(drop)
        self.drop2 = dropout(drop)

    def construct(self, x):
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Block(nn.Cell):
    """``x + gamma_1 * attn(norm1(x))``, then ``x + gamma_2 * mlp(norm2(x))``, each branch through stochastic
    depth (upstream ``Block`` with ``init_values``)."""

    def __init__(self, dim: int, num_heads: int, window_size: tuple[int, int], mlp_ratio: float = MLP_RATIO,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0, init_values: float = 1e-5):
        super().__init__()
        self.norm1 = layer_norm(dim)
        self.attn = Attention(dim, num_heads, window_size, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.gamma_1 = Parameter(Tensor(np.full(dim, init_values, np.float32)), name="gamma_1")
        self.gamma_2 = Parameter(Tensor(np.full(dim, init_values, np.float32)), name="gamma_2")

    def construct(self, x):
        x = x + self.drop_path(self.gamma_1 * self.attn(self.norm1(x)))
        return x + self.drop_path(self.gamma_2 * self.mlp(self.norm2(x)))


class Beit(nn.Cell):
    """Upstream ``Beit`` (see the torch reference): same constructor, API and outputs."""

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
        self.cls_token = Parameter(trunc_normal((1, 1, embed_dim), 0.02), name="cls_token")
        self.pos_drop = dropout(drop_rate)
        dpr = drop_path_rates(drop_path_rate, depth)
        grid = self.patch_embed.grid_size
        self.blocks = nn.SequentialCell([Block(embed_dim, num_heads, grid, mlp_ratio, drop_rate, attn_drop_rate,
                                               dpr[i], init_values) for i in range(depth)])
        self.fc_norm = layer_norm(embed_dim)
        self.head = dense(embed_dim, num_classes, std=0.02 * HEAD_INIT_SCALE) if num_classes > 0 else Identity()
        self.fix_init_weight()

    def fix_init_weight(self) -> None:
        """Upstream: block i's (from 1) ``attn.proj`` and ``mlp.fc2`` weights divided by sqrt(2 i) (drawn here
        from the trunc-normal of the divided std)."""
        for i, block in enumerate(self.blocks, 1):
            for w in (block.attn.proj.weight, block.mlp.fc2.weight):
                w.set_data(trunc_normal(w.shape, 0.02 / math.sqrt(2.0 * i)))

    def reset_classifier(self, num_classes: int) -> None:
        """A new ``head`` for ``num_classes`` (0: the pooled features), torch's default Linear init (upstream)."""
        self.num_classes = num_classes
        self.head = torch_init_dense(self.embed_dim, num_classes) if num_classes > 0 else Identity()
        refresh_graph(self)

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Nothing: BEiT has no epoch-dependent state."""

    def no_weight_decay(self) -> set[str]:
        """Upstream's (:func:`specs.beit.no_weight_decay`)."""
        return no_weight_decay(n for n, _ in self.parameters_and_names())

    def group_matcher(self, coarse: bool = False) -> dict:
        """Upstream's (:func:`specs.beit.group_matcher`)."""
        return group_matcher(coarse)

    def forward_features(self, x):
        x = self.patch_embed(x)
        cls = ops.broadcast_to(self.cls_token, (x.shape[0], -1, -1)).astype(x.dtype)
        return self.blocks(self.pos_drop(ops.concat((cls, x), axis=1)))

    def forward_head(self, x, pre_logits: bool = False):
        x = self.fc_norm(x[:, 1:].mean(axis=1))
        return x if pre_logits else self.head(x)

    def construct(self, x):
        return self.forward_head(self.forward_features(x))


registry.register_family("beit", Beit)
