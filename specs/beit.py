"""BEiT v2 variants and checkpoint rules (arXiv 2208.06366, the BEiT backbone of arXiv 2106.08254), as the
VanillaKD teacher: Hao840/vanillaKD@a27b029 ``models/beit.py`` (timm 0.6.5's ``beit.py`` plus the
``beitv2_*`` entries).

Framework-free: the variant table, the parameter-name rules (``no_weight_decay``, ``group_matcher``) and the
checkpoint rules both frameworks and the converter read. The relative position index is
:func:`specs.relpos.relative_position_index` (with the class-token rows).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import numpy as np

from ._registry import IMAGENET_MEAN, IMAGENET_STD, ModelCfg, register_cfgs
from .errors import CheckpointError
from .param_groups import MATCH_PREV_GROUP, Matcher
from .relpos import relative_position_index
from .vig import drop_path_rates  # noqa: F401  (upstream: torch.linspace(0, rate, depth))

PAPER = "2208.06366"
VANILLAKD_COMMIT = "a27b029f693a13d67b85c61a52e25a85f9414e70"
OFFICIAL_CODE = (f"Hao840/vanillaKD@{VANILLAKD_COMMIT[:7]} models/beit.py (Beit, Block, Attention, "
                 "gen_relative_position_index; on timm 0.6.5's PatchEmbed and Mlp)")
LN_EPS = 1e-6            # upstream ``norm_layer=partial(nn.LayerNorm, eps=1e-6)``
MLP_RATIO = 4.0
PATCH = 16
IMG_SIZE = 224
HEAD_INIT_SCALE = 1e-3   # upstream ``head_init_scale``: the head's trunc-normal(0.02) weight times 0.001
# name -> (embed_dim, depth, num_heads, init_values, crop_pct); upstream ``beitv2_{base,large}_patch16_224`` and
# their default_cfgs (use_abs_pos_emb=False, use_rel_pos_bias=True, qkv_bias=True, global_pool 'avg')
VARIANTS: dict[str, tuple[int, int, int, float, float]] = {
    "beitv2_base_patch16_224": (768, 12, 12, 1e-5, 0.9),
    "beitv2_large_patch16_224": (1024, 24, 16, 1e-5, 0.95),
}
# VanillaKD registers both with url='' (the teacher comes through --teacher-pretrained); the weights its authors'
# scripts name are microsoft/unilm beit2's ImageNet-21k -> 1k fine-tuned files ({'model': ...}, unilm/beit2/README.md)
_UNILM = "https://conversationhub.blob.core.windows.net/beit-share-public/beitv2"
URLS = {
    "beitv2_base_patch16_224": (f"{_UNILM}/beitv2_base_patch16_224_pt1k_ft21kto1k.pth",),
    "beitv2_large_patch16_224": (f"{_UNILM}/beitv2_large_patch16_224_pt1k_ft21kto1k.pth",),
}
_NOTES = {
    "beitv2_base_patch16_224": "VanillaKD teacher (BEiTv2-B); unilm beit2 pt1k ft21k->1k: 86.5 % ImageNet top-1",
    "beitv2_large_patch16_224": "VanillaKD teacher list (BEiTv2-L); unilm beit2 pt1k ft21k->1k: 88.4 % ImageNet top-1",
}
TABLE = "relative_position_bias_table"
INDEX = "relative_position_index"


def window_of_table(rows: int) -> int:
    """Side ``W`` of the square token grid a bias table of ``rows = (2W-1)**2 + 3`` rows belongs to."""
    side = math.isqrt(rows - 3)
    if side * side != rows - 3 or side % 2 == 0:
        raise CheckpointError(f"{TABLE} has {rows} rows, not (2W-1)**2 + 3 for a square grid")
    return (side + 1) // 2


def checkpoint_filter(state: Mapping[str, np.ndarray], model: Any = None) -> dict[str, np.ndarray]:
    """Official layouts into these models: a missing ``relative_position_index`` (files saved by timm >= 0.9, where
    the buffer is not persistent) is added from :func:`specs.relpos.relative_position_index` for the grid of its
    block's table (int64, as torch's buffer); a present one must equal it (a one-line :class:`CheckpointError`
    otherwise). No resampling of the tables to another grid: upstream has none (its FIXME)."""
    out = dict(state)
    for key in [k for k in state if k.endswith(TABLE)]:
        index_key = key[: -len(TABLE)] + INDEX
        w = window_of_table(state[key].shape[0])
        want = relative_position_index((w, w), class_token=True)
        if index_key not in out:
            out[index_key] = want
        elif not np.array_equal(np.asarray(out[index_key]), want):
            raise CheckpointError(f"{index_key} is not the relative position index of a {w}x{w} grid")
    return out


def infer_kwargs(shapes: Mapping[str, tuple]) -> dict:
    """Model kwargs a state dict implies: the number of classes (0 without ``head``) and the input size its bias
    tables were made for (``W * patch``: 224 for 14 x 14)."""
    out = {"num_classes": int(shapes["head.weight"][0]) if "head.weight" in shapes else 0}
    table = f"blocks.0.attn.{TABLE}"
    if table in shapes and "patch_embed.proj.weight" in shapes:
        out["img_size"] = window_of_table(shapes[table][0]) * int(shapes["patch_embed.proj.weight"][-1])
    return out


def no_weight_decay(names: Iterable[str]) -> set[str]:
    """Upstream ``Beit.no_weight_decay``: ``cls_token`` and every ``relative_position_bias_table`` (its
    ``pos_embed`` left out: these models have none). Layer scale, norms and biases are 1-D: the engine's
    ``ndim <= 1`` rule (timm's) exempts them."""
    return {"cls_token"} | {n for n in names if TABLE in n}


def group_matcher(coarse: bool = False) -> Matcher:
    """Upstream ``Beit.group_matcher`` (coarse and fine alike): stem ``cls_token``/``patch_embed``, one group
    per block, ``norm`` with the last block (no such module under mean pooling); ``fc_norm`` and ``head``
    match nothing: the last group."""
    return dict(stem=r"^cls_token|pos_embed|patch_embed|rel_pos_bias",
                blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (MATCH_PREV_GROUP,))])


def _cfg(name: str) -> ModelCfg:
    dim, depth, heads, init_values, crop_pct = VARIANTS[name]
    size = (3, IMG_SIZE, IMG_SIZE)
    return ModelCfg(
        name=name, family="beit", paper=PAPER, official_code=OFFICIAL_CODE, urls=URLS[name],
        arch=dict(embed_dim=dim, depth=depth, num_heads=heads, init_values=init_values, patch_size=PATCH,
                  img_size=IMG_SIZE),
        # fixed input size (upstream fixed_input_size=True): both variants are heavy (built only in the registry
        # tests); tests/models/test_beit.py tests a reduced configuration of the same classes
        input_size=size, test_input_size=size, min_input_size=size,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct=crop_pct, interpolation="bicubic",
        first_conv="patch_embed.proj", classifier=("head",), notes=_NOTES[name],
        infer_kwargs=infer_kwargs, checkpoint_filter=checkpoint_filter)


CFGS = [_cfg(name) for name in VARIANTS]
register_cfgs(CFGS)
