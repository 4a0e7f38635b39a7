"""Vision Transformer variants and checkpoint rules (arXiv 2010.11929; timm's ``VisionTransformer``,
huggingface/pytorch-image-models@8ef7380 (v1.0.28) ``timm/models/vision_transformer.py``).

Framework-free: the variant table, the position-embedding resampling of timm's ``resample_abs_pos_embed``
(``timm/layers/pos_embed.py``: bicubic, ``align_corners=False``, ``antialias=True`` as ``checkpoint_filter_fn``
calls it, the class token kept) in NumPy, and the checkpoint rules that apply it when a checkpoint's token grid
differs from the model's (``checkpoint_filter``) or build the model the checkpoint's grid implies
(``infer_kwargs``). Both frameworks, the converter and the tests read them.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from ._registry import ModelCfg, register_cfgs
from .errors import CheckpointError
from .param_groups import MATCH_PREV_GROUP, Matcher
from .pooling import bicubic_aa_matrix
from .vig import drop_path_rates  # noqa: F401  (timm calculate_drop_path_rates: torch.linspace(0, rate, n))

PAPER = "2010.11929"
TIMM_COMMIT = "8ef73809f622e0031bd7f4940265734aef8b9978"   # tag v1.0.28
OFFICIAL_CODE = (f"huggingface/pytorch-image-models@{TIMM_COMMIT[:7]} (v1.0.28) timm/models/vision_transformer.py "
                 "(VisionTransformer, Block); timm/layers/{attention,mlp,patch_embed,pos_embed}.py")
LN_EPS = 1e-6            # timm's ``LayerNorm`` default
MLP_RATIO = 4.0
PATCH = 16
IMG_SIZE = 224
NUM_PREFIX_TOKENS = 1    # the class token (timm ``class_token=True``, no register tokens)
# name -> (embed_dim, depth, num_heads); timm's ``vit_{tiny,small,base}_patch16_224`` model_args
VARIANTS: dict[str, tuple[int, int, int]] = {
    "vit_tiny_patch16_224": (192, 12, 3),
    "vit_small_patch16_224": (384, 12, 6),
    "vit_base_patch16_224": (768, 12, 12),
}
_VANILLAKD = "https://github.com/Hao840/vanillaKD/releases/download/checkpoint"
URLS = {
    "vit_tiny_patch16_224": (f"{_VANILLAKD}/vit_tiny_patch16_224-78.106.pth",),
    "vit_small_patch16_224": (f"{_VANILLAKD}/vit_small_patch16_224-84.328.pth",),
    # timm vit_base_patch16_224.orig_in21k_ft_in1k (the original paper's weights, ported to PyTorch)
    "vit_base_patch16_224": ("https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-vitjx/"
                             "jx_vit_base_p16_224-80ecf9dd.pth",),
}
_NOTES = {
    "vit_tiny_patch16_224": "VanillaKD student (Hao840/vanillaKD, timm 0.6.5): 78.11 % ImageNet top-1",
    "vit_small_patch16_224": "VanillaKD student (Hao840/vanillaKD, timm 0.6.5): 84.33 % ImageNet top-1",
    "vit_base_patch16_224": "timm vit_base_patch16_224.orig_in21k_ft_in1k (JAX ImageNet-21k, fine-tuned on 1k)",
}


def to_2tuple(size: int | Sequence[int]) -> tuple[int, int]:
    """``(h, w)`` from an int or a pair (timm ``to_2tuple``)."""
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return int(h), int(w)


def grid_size(img_size: int | Sequence[int], patch_size: int | Sequence[int] = PATCH) -> tuple[int, int]:
    """Token grid of a ``PatchEmbed`` (timm: ``img_size // patch_size`` per axis, the remainder cropped)."""
    (h, w), (ph, pw) = to_2tuple(img_size), to_2tuple(patch_size)
    return h // ph, w // pw


def resample_abs_pos_embed(posemb: np.ndarray, new_size: Sequence[int], old_size: Sequence[int] | None = None,
                           num_prefix_tokens: int = NUM_PREFIX_TOKENS) -> np.ndarray:
    """timm ``resample_abs_pos_embed`` (bicubic, ``antialias=True``) on a (1, prefix + H*W, D) array: the prefix
    tokens kept, the grid (``old_size``, square from the token count if None) resampled separably to
    ``new_size`` with PyTorch's antialiased bicubic weights (:func:`specs.pooling.bicubic_aa_matrix`), in float64,
    returned in the input's dtype. As timm, a square target of the same token count returns the input."""
    posemb = np.asarray(posemb)
    new_size = to_2tuple(new_size)
    if posemb.shape[1] == new_size[0] * new_size[1] + num_prefix_tokens and new_size[0] == new_size[1]:
        return posemb
    n = posemb.shape[1] - num_prefix_tokens
    if old_size is None:
        side = math.isqrt(n)
        if side * side != n:
            raise CheckpointError(f"pos_embed holds {n} grid tokens, not a square grid: cannot resample it")
        old_size = (side, side)
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    grid = grid.reshape(old_size[0], old_size[1], -1).astype(np.float64)
    wh, ww = bicubic_aa_matrix(old_size[0], new_size[0]), bicubic_aa_matrix(old_size[1], new_size[1])
    out = np.einsum("Hh,Ww,hwd->HWd", wh, ww, grid).reshape(1, -1, grid.shape[-1]).astype(posemb.dtype)
    return np.concatenate([prefix, out], axis=1)


def checkpoint_filter(state: Mapping[str, np.ndarray], model: Any = None) -> dict[str, np.ndarray]:
    """timm ``checkpoint_filter_fn`` for the layouts registered here: ``pre_logits`` entries (the representation
    layer of timm's old ImageNet-21k files) dropped and, when loading into ``model`` (either framework; None when
    converting a file on its own), a ``pos_embed`` of another token count resampled to the model's
    ``patch_embed.grid_size`` (square source grid, as timm assumes)."""
    out = {k: v for k, v in state.items() if "pre_logits" not in k}
    target = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    pos = out.get("pos_embed")
    if target is not None and pos is not None and pos.shape[1] != target[0] * target[1] + NUM_PREFIX_TOKENS:
        out["pos_embed"] = resample_abs_pos_embed(pos, target)
    return out


def infer_kwargs(shapes: Mapping[str, tuple]) -> dict:
    """Model kwargs a state dict implies: the number of classes (0 without ``head``) and, from a square
    ``pos_embed`` grid, the input size it was trained at (``grid * patch``; 384 for a 24 x 24 grid)."""
    out = {"num_classes": int(shapes["head.weight"][0]) if "head.weight" in shapes else 0}
    if "pos_embed" in shapes and "patch_embed.proj.weight" in shapes:
        n = shapes["pos_embed"][1] - NUM_PREFIX_TOKENS
        side = math.isqrt(n)
        if side * side == n:
            out["img_size"] = side * int(shapes["patch_embed.proj.weight"][-1])
    return out


NO_WEIGHT_DECAY = frozenset({"pos_embed", "cls_token"})   # timm's set minus the tokens this model does not have


def group_matcher(coarse: bool = False) -> Matcher:
    """timm ``VisionTransformer.group_matcher`` (coarse and fine alike): stem ``cls_token``/``pos_embed``/
    ``patch_embed``, one group per block, the final ``norm`` joining the last block, ``head`` last."""
    return dict(stem=r"^cls_token|reg_token|pos_embed|patch_embed",
                blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (MATCH_PREV_GROUP,))])


def _cfg(name: str) -> ModelCfg:
    dim, depth, heads = VARIANTS[name]
    size = (3, IMG_SIZE, IMG_SIZE)
    return ModelCfg(
        name=name, family="vit", paper=PAPER, official_code=OFFICIAL_CODE, urls=URLS[name],
        arch=dict(embed_dim=dim, depth=depth, num_heads=heads, patch_size=PATCH, img_size=IMG_SIZE),
        # timm's default: the input must be img_size (create_model(name, img_size=...) for another one), so the
        # tests run at 224 (vit_small/base are then heavy: built only, helpers.is_heavy)
        input_size=size, test_input_size=size, min_input_size=size,
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.9, interpolation="bicubic",   # timm _cfg
        first_conv="patch_embed.proj", classifier=("head",), notes=_NOTES[name],
        infer_kwargs=infer_kwargs, checkpoint_filter=checkpoint_filter)


CFGS = [_cfg(name) for name in VARIANTS]
register_cfgs(CFGS)
