"""Vision Transformer (ViT), MindSpore (arXiv 2010.11929).

Mirrors ``torch_ref/models/vit.py`` cell for cell, so parameter names equal timm's keys
(huggingface/pytorch-image-models@8ef7380, v1.0.28, ``timm/models/vision_transformer.py``) with LayerNorm's
``weight``/``bias`` as MindSpore's ``gamma``/``beta``. The MindSpore defaults that differ from timm are set
explicitly: LayerNorm eps 1e-6 (MindSpore 1e-7), exact-erf GELU (MindSpore's ``nn.GELU`` defaults to the tanh
form), the attention softmax over the last axis in float32, the patch conv with bias and no padding.
"""
from __future__ import annotations

from mindspore import nn

from specs.vit import LN_EPS, MLP_RATIO, NO_WEIGHT_DECAY, drop_path_rates, group_matcher

from .._registry import registry
from ..layers import Attention, DropPath, Identity, Mlp, PatchEmbed, dense, refresh_graph, torch_init_dense
from ..layers.pos_embed import add_class_token_and_pos, class_token, learned_pos_embed


def layer_norm(dim: int, eps: float = LN_EPS) -> nn.LayerNorm:
    """timm's ``LayerNorm(dim)``: eps 1e-6 (unless given) over the last axis."""
    return nn.LayerNorm((dim,), epsilon=eps)


class Block(nn.Cell):
    """``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``, each branch through stochastic depth (timm ``Block``;
    ``eps`` as the torch twin's)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = MLP_RATIO, qkv_bias: bool = True,
                 drop_path: float = 0.0, eps: float = LN_EPS):
        super().__init__()
        self.norm1 = layer_norm(dim, eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = layer_norm(dim, eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path2 = DropPath(drop_path)

    def construct(self, x):
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Cell):
    """timm ``VisionTransformer`` (see the torch reference): same constructor, API and outputs."""

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
        self.blocks = nn.SequentialCell([Block(embed_dim, num_heads, mlp_ratio, True, dpr[i]) for i in range(depth)])
        self.norm = layer_norm(embed_dim)
        self.head_drop = nn.Dropout(p=drop_rate)
        self.head = dense(embed_dim, num_classes) if num_classes > 0 else Identity()

    def reset_classifier(self, num_classes: int) -> None:
        """A new ``head`` for ``num_classes`` (0: the pooled class token), torch's default Linear init (timm)."""
        self.num_classes = num_classes
        self.head = torch_init_dense(self.embed_dim, num_classes) if num_classes > 0 else Identity()
        refresh_graph(self)

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Nothing: ViT has no epoch-dependent state."""

    def no_weight_decay(self) -> set[str]:
        """timm's: the position embedding and the class token (the engine adds norms and biases)."""
        return set(NO_WEIGHT_DECAY)

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's (:func:`specs.vit.group_matcher`)."""
        return group_matcher(coarse)

    def forward_features(self, x):
        x = add_class_token_and_pos(self.patch_embed(x), self.cls_token, self.pos_embed)
        return self.norm(self.blocks(x))

    def forward_head(self, x, pre_logits: bool = False):
        x = self.head_drop(x[:, 0])
        return x if pre_logits else self.head(x)

    def construct(self, x):
        return self.forward_head(self.forward_features(x))


registry.register_family("vit", VisionTransformer)
