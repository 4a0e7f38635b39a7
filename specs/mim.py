"""FastMIM / LocalMIM pretraining models and the MAE-style fine-tune ViT: the framework-free part (arXiv 2212.06593,
2303.05251). Both frameworks build from these tables and apply the same checkpoint rule.

- The default architectures: FastMIM's ``mim_vit_base`` with the README ViT-B pretraining flags
  (ggjy/FastMIM.pytorch@d4eea0d ``mim_vit_pretrain.py``; ``num_heads=6`` as the official code has it), FastMIM's
  ``mim_swin_base`` with the README Swin-B flags (``mim_swin_pretrain.py``), LocalMIM's
  ``MIM_vit_base_patch16`` (Haoqing-Wang/LocalMIM@314a6e5 ``ViT/models_mim.py``) and MAE's ``vit_base_patch16``
  (``models_vit.py`` of both repositories, timm-0.3.2 ViT-B/16 with global pooling).
- The fixed 2-D sin-cos position table with its zero class-token row (``util/pos_embed.py``).
- The fine-tune loading rule of ``main_finetune.py`` / ``run_finetune.py`` on ``{name: ndarray}``: ``head.*`` dropped
  when its shape differs, an ``encoder.`` prefix stripped, the patch part of ``pos_embed`` resized bicubically
  (torch's ``interpolate(mode='bicubic', align_corners=False)``, no antialias, the class row kept).
"""
from __future__ import annotations

import re
from dataclasses import replace
from typing import Mapping, Sequence

import numpy as np

from ._registry import ModelCfg, get_model_cfg, register_cfgs
from .errors import CheckpointError, ConfigError
from .swin import infer_kwargs as swin_infer_kwargs, resize_bias_table
from .vig import resize_bicubic, sincos_2d

PAPERS = {"fastmim": "2212.06593", "localmim": "2303.05251"}
LN_EPS = 1e-6
# constructor defaults; the overridable names are the upstream constructor's
FASTMIM_VIT_BASE = dict(img_size=128, patch_size=16, embed_dim=768, depth=12, num_heads=6, mlp_ratio=4.0,
                        block_size=16, decoder_embed_dim=256, decoder_depth=1, norm_pix_loss=True, mim_loss="HOG")
# README Swin-B: --window_size 4 --decoder_embed_dim 256 --decoder_depth 4 --block_size 32 --input_size 128
# --mim_loss HOG --norm_pix_loss; mim_swin_base: patch_size=32 (the token's image side), embed 128, heads 4-32
FASTMIM_SWIN_BASE = dict(img_size=128, patch_size=32, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32),
                         window_size=4, block_size=32, decoder_embed_dim=256, decoder_depth=4, mlp_ratio=4.0,
                         norm_pix_loss=True, mim_loss="HOG")
LOCALMIM_VIT_BASE = dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0,
                         decoder_embed_dim=256, decoder_depth=1, decoder_num_heads=8, hog_nbins=9, hog_bias=False)
VIT_BASE_FINETUNE = dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0,
                         global_pool=True, drop_path_rate=0.1)
# README Swin-B (HOG): --model mim_swin_base_patch4_win7 --target HOG --hog_nbins 18 --hog_bias
LOCALMIM_SWIN_BASE = dict(img_size=224, patch_size=4, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32),
                          window_size=7, mlp_ratio=4.0, decoder_embed_dim=128, decoder_depth=1, decoder_num_heads=4,
                          target="HOG", hog_nbins=18, hog_bias=True, norm_pix_loss=False)
# the other upstream sizes: MIM_vit_small_patch16 (no README recipe: the constructor's 9 bins, no bias),
# MIM_vit_large_patch16 with the README ViT-L flags (--hog_nbins 18 --hog_bias), mim_swin_base_patch4_win14,
# mim_swin_large_patch4_win14 with the README Swin-L flags (HOG, 18 bins, hog_bias), and FastMIM's mim_swin_large
# with the Swin-B README flags (no Swin-L recipe upstream; its decoder_num_heads=16 reaches the encoder's **kwargs
# and is ignored: the decoder keeps decoder_embed_dim // 32 heads)
LOCALMIM_VIT_SMALL = dict(LOCALMIM_VIT_BASE, embed_dim=384, num_heads=6)
LOCALMIM_VIT_LARGE = dict(LOCALMIM_VIT_BASE, embed_dim=1024, depth=24, num_heads=16, hog_nbins=18, hog_bias=True)
LOCALMIM_SWIN_BASE_WIN14 = dict(LOCALMIM_SWIN_BASE, window_size=14)
LOCALMIM_SWIN_LARGE_WIN14 = dict(LOCALMIM_SWIN_BASE, embed_dim=192, num_heads=(6, 12, 24, 48), window_size=14)
FASTMIM_SWIN_LARGE = dict(FASTMIM_SWIN_BASE, embed_dim=192, num_heads=(6, 12, 24, 48))
# LocalMIM's fine-tune Swin (Swin/models_swin.py swin_base_patch4_win7 / _win14, swin_large_patch4_win14) with the
# README fine-tune --drop_path (Swin-B 0.1, Swin-L 0.3)
_SWIN_B, _SWIN_L = dict(embed_dim=128, num_heads=(4, 8, 16, 32)), dict(embed_dim=192, num_heads=(6, 12, 24, 48))
LOCALMIM_SWIN_BASE_FINETUNE = dict(img_size=224, patch_size=4, depths=(2, 2, 18, 2), window_size=7,
                                   drop_path_rate=0.1, **_SWIN_B)
LOCALMIM_SWIN_BASE_WIN14_FINETUNE = dict(LOCALMIM_SWIN_BASE_FINETUNE, window_size=14)
LOCALMIM_SWIN_LARGE_FINETUNE = dict(LOCALMIM_SWIN_BASE_FINETUNE, window_size=14, drop_path_rate=0.3, **_SWIN_L)
LOCALMIM_SCALES = (4.0, 2.0, 1.0, 0.5)     # decoder k predicts at grid * scale[k]
LOCALMIM_POOLS = (4, 8, 16, 32)            # HOG cell of target k (matches the grids for patch 16)
FASTMIM_HOG = dict(nbins=9, pool=8)
# LocalMIM Swin (Swin/models_mim.py): stage k's output (after its patch merging) feeds decoder k
LOCALMIM_SWIN_UNITS = 7                    # the mask grid: 7 x 7 units, the last stage's tokens
LOCALMIM_SWIN_DIMS = (2, 4, 8, 8)          # stage k's output width / embed_dim (norm.k, decoder k's input)
LOCALMIM_SWIN_POOLS = (8, 16, 32, 32)      # HOG cell / pixel patch of target k
LOCALMIM_SWIN_SCALES = (4, 2, 1, 1)        # the 7 x 7 mask upsampled by scale[k] for level k


def is_pretraining(model_name: str) -> bool:
    """Whether ``model_name`` is a masked-image-modeling pretraining model (registry task ``mim_pretrain``: images
    -> its own loss, no classifier), which the training engine trains, validates and checks differently."""
    return get_model_cfg(model_name).task == "mim_pretrain"


def localmim_taps(depth: int) -> list[int]:
    """The blocks whose outputs the four decoders read, ``[1, 3, depth - 3, depth - 1]`` (0-indexed)."""
    return [1, 3, depth - 3, depth - 1]


def localmim_swin_masked(mask_ratio: float, units: int = LOCALMIM_SWIN_UNITS ** 2) -> int:
    """How many of the ``units`` mask units upstream masks: ``randperm(units) <= int(mask_ratio * units)`` masks the
    ranks 0..int(r·n), one more than ``int(r·n)`` (37 of 49 at 0.75)."""
    return min(units, int(mask_ratio * units) + 1)


def check_localmim_swin(img_size: int, patch_size: int, depths: Sequence[int], target: str) -> None:
    """Upstream's fixed geometry: four stages on a 56 x 56 grid of 4-px patches (224 px), whose last stage is the
    7 x 7 mask grid and whose targets have cells of 8, 16, 32 and 32 px; a HOG or Pixel target."""
    if target not in ("HOG", "Pixel"):
        raise ConfigError(f"target must be 'HOG' or 'Pixel', not {target!r}")
    if len(depths) != 4 or patch_size != 4 or img_size != 224:
        raise ConfigError(f"LocalMIM Swin needs 4 stages of 4-px patches at 224 px (its 7 x 7 mask and target cells "
                          f"are fixed), got {len(depths)} stages, patch {patch_size}, img_size {img_size}")


def localmim_swin_geometry(grid: int, stages: int, units: int = LOCALMIM_SWIN_UNITS) -> tuple[np.ndarray, list]:
    """The tables LocalMIM's visible-token Swin (GreenMIM's, ``Swin/models_mim.py``) indexes by the visible units.

    Upstream orders the tokens unit by unit (the ``units x units`` mask grid row-major; inside a unit of side
    ``w = grid / units`` row-major) and keeps the visible units' tokens. Returns ``(gather, coords)``:
    ``gather`` (units², w²) int32, the row-major patch index of each unit's tokens (stage 0); ``coords[s]``
    (units², w_s², 2) int32, the (row, col) upstream attaches to those tokens at stage ``s``. At stage 0 they are the
    true positions. Quirk reproduced: after each patch merging (``PatchMerging.forward``) upstream takes the
    *row-major* coordinates of the merged grid and selects them with the *unit-ordered* visibility mask, so at
    stage ``s >= 1`` the token at unit-order position ``j`` gets ``divmod(j, grid_s)``, not its position; the window
    groups and relative-position indices of those stages follow these coordinates (exact at 7 x 7, where unit order
    is row-major)."""
    if grid % units:
        raise ValueError(f"the {grid} x {grid} token grid is not a multiple of the {units} x {units} mask grid")
    n = units * units
    coords = []
    for s in range(stages):
        side = grid >> s
        w = side // units
        u = np.arange(n)[:, None]
        t = np.arange(w * w)[None, :]
        if s == 0:
            rows, cols = (u // units) * w + t // w, (u % units) * w + t % w
            gather = (rows * side + cols).astype(np.int32)
        else:
            rows, cols = divmod(u * w * w + t, side)
        coords.append(np.stack([rows, cols], -1).astype(np.int32))
    return gather, coords


def sincos_pos_embed(dim: int, grid: int, cls_token: bool = True) -> np.ndarray:
    """MAE's ``get_2d_sincos_pos_embed`` as a (1, [1 +] grid², dim) float32 array: half the channels encode the
    column index (``meshgrid(w, h)[0]``), half the row; sin then cos; a zero row for the class token."""
    table = sincos_2d(dim, grid)
    if cls_token:
        table = np.concatenate([np.zeros((1, dim)), table], axis=0)
    return table.astype(np.float32)[None]


def interpolate_pos_embed(pos: np.ndarray, num_patches: int, num_extra_tokens: int = 1) -> np.ndarray:
    """``util/pos_embed.py::interpolate_pos_embed``: the (1, extra + n, D) table's square grid resized to
    ``√num_patches`` per side by torch's plain bicubic resize (``align_corners=False``), the extra rows kept; the
    input itself when the sides agree."""
    pos = np.asarray(pos)
    orig = int((pos.shape[-2] - num_extra_tokens) ** 0.5)
    new = int(num_patches ** 0.5)
    if orig == new:
        return pos
    extra, grid = pos[:, :num_extra_tokens], pos[:, num_extra_tokens:]
    grid = grid.reshape(-1, orig, orig, pos.shape[-1]).transpose(0, 3, 1, 2)
    grid = resize_bicubic(grid, new, new).transpose(0, 2, 3, 1).reshape(grid.shape[0], new * new, -1)
    return np.concatenate([extra, grid.astype(pos.dtype)], axis=1)


# the geometry buffers FastMIM's remap_pretrained_keys_swin deletes (the fine-tuned model keeps its own)
REINIT_BUFFERS = ("relative_position_index", "relative_coords_table", "attn_mask")


def finetune_state(checkpoint_model: Mapping[str, np.ndarray], model_shapes: Mapping[str, tuple],
                   num_patches: int) -> dict[str, np.ndarray]:
    """The state ``load_pretrained`` loads non-strictly: upstream's steps on ``checkpoint['model']`` (torch names)
    for a model with the given ``{key: shape}`` and patch count. FastMIM's ``main_finetune.py`` runs both resizes
    for every model: ``interpolate_pos_embed`` (ViT), then ``remap_pretrained_keys_swin`` (default mode 'simmim':
    each ``relative_position_bias_table`` of another size resampled by :func:`specs.swin.resize_bias_table`, one
    with another head count left to fail as a shape mismatch; every ``relative_position_index``,
    ``relative_coords_table`` and ``attn_mask`` dropped, so the model keeps its own: they are reported missing,
    as upstream's ``load_state_dict`` message lists them); both are no-ops on a checkpoint without such keys."""
    state = dict(checkpoint_model)
    for k in ("head.weight", "head.bias"):
        if k in state and k in model_shapes and tuple(state[k].shape) != tuple(model_shapes[k]):
            del state[k]
    state = {(k[len("encoder."):] if k.startswith("encoder.") else k): v for k, v in state.items()}
    if "pos_embed" in state and "pos_embed" in model_shapes:
        extra = model_shapes["pos_embed"][-2] - num_patches
        state["pos_embed"] = interpolate_pos_embed(state["pos_embed"], num_patches, extra)
    for k, v in list(state.items()):
        if k.endswith("relative_position_bias_table") and k in model_shapes:
            rows, heads = model_shapes[k]
            if v.shape[1] == heads and v.shape[0] != rows:
                state[k] = resize_bias_table(v, rows, "simmim")
    return {k: v for k, v in state.items() if k.rsplit(".", 1)[-1] not in REINIT_BUFFERS}


def localmim_swin_finetune_state(checkpoint_model: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """LocalMIM ``Swin/run_finetune.py`` on ``checkpoint['model']``: the keys containing ``'encoder.'``, their first
    8 characters cut; nothing resized or dropped (the fine-tune Swin has the pretraining window), so the geometry
    buffers load and the decoders and HOG filters are not even reported."""
    return {k[8:]: v for k, v in checkpoint_model.items() if "encoder." in k}


def split_keys(state: Mapping[str, np.ndarray], model_shapes: Mapping[str, tuple],
               source: str = "checkpoint") -> tuple[list[str], list[str]]:
    """``(missing, unexpected)`` as torch's ``load_state_dict(strict=False)`` reports them; a shared key of
    another shape is a one-line :class:`CheckpointError` (torch raises on it too)."""
    bad = [k for k in state if k in model_shapes and tuple(state[k].shape) != tuple(model_shapes[k])]
    if bad:
        k = bad[0]
        raise CheckpointError(f"{source}: {k} has shape {tuple(state[k].shape)}, the model "
                              f"{tuple(model_shapes[k])} ({len(bad)} mismatched key(s))")
    return [k for k in model_shapes if k not in state], [k for k in state if k not in model_shapes]


def _vit_kwargs(shapes: Mapping[str, tuple], default_heads: int) -> dict:
    """The shape-setting ViT encoder kwargs of a state (names shared by the torch and MindSpore namings)."""
    dim, _, patch, _ = shapes["patch_embed.proj.weight"]
    grid = int(round((shapes["pos_embed"][-2] - 1) ** 0.5))
    depth = sum(1 for k in shapes if re.fullmatch(r"blocks\.\d+\.attn\.qkv\.weight", k))
    # num_heads sets no shape: the default when it divides the width (it only has to be valid)
    return dict(img_size=grid * patch, patch_size=patch, embed_dim=dim, depth=depth,
                num_heads=default_heads if dim % default_heads == 0 else 1)


def infer_fastmim_kwargs(shapes: Mapping[str, tuple]) -> dict:
    """FastMIM constructor kwargs from a state's shapes (converter): encoder, decoder width and depth, target."""
    kw = _vit_kwargs(shapes, FASTMIM_VIT_BASE["num_heads"])
    out, dec = shapes["decoder_pred.weight"]
    kw.update(decoder_embed_dim=dec, mim_loss="l2" if out == kw["patch_size"] ** 2 * 3 else "HOG",
              decoder_depth=sum(1 for k in shapes if re.fullmatch(r"decoder_blocks\.\d+\.attn\.qkv\.weight", k)),
              block_size=max(FASTMIM_VIT_BASE["block_size"], kw["patch_size"]))
    return kw


def infer_fastmim_swin_kwargs(shapes: Mapping[str, tuple]) -> dict:
    """FastMIM Swin constructor kwargs from a state's shapes (converter): the encoder's by the Swin rule
    (:func:`specs.swin.infer_kwargs`; ``img_size`` from the first shift mask, else the default 128), the decoder
    width and depth, the target (pixels: ``32² · 3`` outputs)."""
    enc = swin_infer_kwargs({k[len("encoder."):]: v for k, v in shapes.items() if k.startswith("encoder.")})
    out, dec = shapes["decoder_pred.weight"]
    kw = {k: enc[k] for k in ("embed_dim", "depths", "num_heads", "window_size") if k in enc}
    if "depths" not in kw:
        raise KeyError("encoder.layers")            # not this layout (the converter tries the next model)
    kw.update(img_size=enc.get("img_size", FASTMIM_SWIN_BASE["img_size"]), decoder_embed_dim=dec,
              decoder_depth=sum(1 for k in shapes if re.fullmatch(r"decoder_blocks\.\d+\.attn\.qkv\.weight", k)),
              mim_loss="l2" if out == FASTMIM_SWIN_BASE["patch_size"] ** 2 * 3 else "HOG")
    return kw


def infer_localmim_kwargs(shapes: Mapping[str, tuple]) -> dict:
    """LocalMIM constructor kwargs from a state's shapes (converter)."""
    kw = _vit_kwargs(shapes, LOCALMIM_VIT_BASE["num_heads"])
    dec = shapes["decoder.0.embed.weight"][0]
    kw.update(decoder_embed_dim=dec, decoder_num_heads=LOCALMIM_VIT_BASE["decoder_num_heads"]
              if dec % LOCALMIM_VIT_BASE["decoder_num_heads"] == 0 else 1,
              decoder_depth=sum(1 for k in shapes if re.fullmatch(r"decoder\.0\.blocks\.\d+\.attn\.qkv\.weight", k)),
              hog_nbins=shapes["decoder.2.pred.0.weight"][0] // 3, hog_bias="hog_enc.0.conv.bias" in shapes)
    return kw


def infer_localmim_swin_kwargs(shapes: Mapping[str, tuple]) -> dict:
    """LocalMIM Swin constructor kwargs from a state's shapes (converter): the encoder's by the Swin rule
    (:func:`specs.swin.infer_kwargs`), the decoder width and depth, the target (HOG: ``3 · nbins`` outputs at
    level 0 and a ``hog_enc``; else pixels)."""
    enc = swin_infer_kwargs({k[len("encoder."):]: v for k, v in shapes.items() if k.startswith("encoder.")})
    if "depths" not in enc or "decoder.0.pred.weight" not in shapes:
        raise KeyError("encoder.layers")            # not this layout (the converter tries the next model)
    kw = {k: enc[k] for k in ("embed_dim", "depths", "num_heads", "window_size")}
    heads = LOCALMIM_SWIN_BASE["decoder_num_heads"]
    dec = shapes["decoder.1.embed.weight"][0]
    kw.update(decoder_embed_dim=dec, decoder_num_heads=heads if dec % (2 * heads) == 0 else 1,
              decoder_depth=sum(1 for k in shapes if re.fullmatch(r"decoder\.0\.blocks\.\d+\.attn\.qkv\.weight", k)))
    hog = "hog_enc.0.conv.weight" in shapes
    kw.update(target="HOG" if hog else "Pixel", hog_bias="hog_enc.0.conv.bias" in shapes,
              norm_pix_loss=LOCALMIM_SWIN_BASE["norm_pix_loss"] if hog else True)
    if hog:
        kw["hog_nbins"] = shapes["decoder.0.pred.weight"][0] // 3
    return kw


def infer_finetune_kwargs(shapes: Mapping[str, tuple]) -> dict:
    """Fine-tune ViT kwargs from a state's shapes (converter): encoder, head size, global pool."""
    kw = _vit_kwargs(shapes, VIT_BASE_FINETUNE["num_heads"])
    kw.update(num_classes=shapes["head.weight"][0], global_pool=any(k.startswith("fc_norm.") for k in shapes))
    return kw



# ---------------------------------------------------------------- registry entries (not classification sweeps)
_FASTMIM_CODE = "ggjy/FastMIM.pytorch@d4eea0d mim_vit_pretrain.py (MaskedAutoencoderViT, mim_vit_base)"
_FASTMIM_SWIN_CODE = "ggjy/FastMIM.pytorch@d4eea0d mim_swin_pretrain.py (PretrainSwin, {})"
_LOCALMIM_CODE = "Haoqing-Wang/LocalMIM@314a6e5 ViT/models_mim.py (MaskedAutoencoderViT, {})"
_LOCALMIM_SWIN_CODE = "Haoqing-Wang/LocalMIM@314a6e5 Swin/models_mim.py (MaskedAutoencoderSwin, {})"
_FINETUNE_CODE = ("ggjy/FastMIM.pytorch@d4eea0d models_vit.py, main_finetune.py; Haoqing-Wang/LocalMIM@314a6e5 "
                  "ViT/models_vit.py, ViT/run_finetune.py (vit_base_patch16, global_pool)")
CFGS = [
    ModelCfg(name="fastmim_vit_base_patch16", family="fastmim", paper=PAPERS["fastmim"], official_code=_FASTMIM_CODE,
             arch=dict(FASTMIM_VIT_BASE), task="mim_pretrain", num_classes=0, input_size=(3, 128, 128),
             test_input_size=(3, 64, 64), min_input_size=(3, 32, 32), first_conv="patch_embed.proj",
             infer_kwargs=infer_fastmim_kwargs,
             notes="FastMIM ViT-B pretraining (README flags: 128 px, block 16, decoder 256 x 1, HOG); returns "
                   "(loss, pred, mask)"),
    ModelCfg(name="fastmim_swin_base_patch4", family="fastmim_swin", paper=PAPERS["fastmim"],
             official_code=_FASTMIM_SWIN_CODE.format("mim_swin_base"), arch=dict(FASTMIM_SWIN_BASE),
             task="mim_pretrain", num_classes=0,
             input_size=(3, 128, 128), test_input_size=(3, 64, 64), min_input_size=(3, 64, 64),
             first_conv="encoder.patch_embed.proj", infer_kwargs=infer_fastmim_swin_kwargs,
             notes="FastMIM Swin-B pretraining (README flags: 128 px, window 4, block 32, decoder 256 x 4, HOG); "
                   "input must be img_size (the official PatchEmbed asserts it); returns (loss, pred, mask)"),
    ModelCfg(name="localmim_vit_base_patch16", family="localmim", paper=PAPERS["localmim"],
             official_code=_LOCALMIM_CODE.format("MIM_vit_base_patch16"), arch=dict(LOCALMIM_VIT_BASE),
             task="mim_pretrain", num_classes=0,
             input_size=(3, 224, 224), test_input_size=(3, 64, 64), min_input_size=(3, 64, 64),
             first_conv="patch_embed.proj", infer_kwargs=infer_localmim_kwargs,
             notes="LocalMIM ViT-B pretraining (hog_nbins 9); returns the loss"),
    ModelCfg(name="localmim_swin_base_patch4", family="localmim_swin", paper=PAPERS["localmim"],
             official_code=_LOCALMIM_SWIN_CODE.format("mim_swin_base_patch4_win7"),
             arch=dict(LOCALMIM_SWIN_BASE), task="mim_pretrain", num_classes=0,
             input_size=(3, 224, 224), test_input_size=(3, 224, 224), min_input_size=(3, 224, 224),
             first_conv="encoder.patch_embed.proj", infer_kwargs=infer_localmim_swin_kwargs,
             notes="LocalMIM Swin-B pretraining (README flags: window 7, HOG, 18 bins, hog_bias); one mask per "
                   "batch, visible tokens only (dense masked window attention); 224 px only; returns the loss"),
    *[ModelCfg(name=name, family="mim_swin", paper=PAPERS["localmim"],
               official_code=f"Haoqing-Wang/LocalMIM@314a6e5 Swin/models_swin.py ({name}), Swin/run_finetune.py",
               arch=dict(arch), task="mim_finetune", input_size=(3, 224, 224), test_input_size=(3, 224, 224),
               min_input_size=(3, 224, 224), first_conv="patch_embed.proj", classifier=("head",),
               interpolation="bicubic", infer_kwargs=swin_infer_kwargs,
               notes=f"LocalMIM's fine-tune Swin (final norm after the pooling, eps 1e-6 but norm2): "
                     f"mim.load_pretrained from a LocalMIM Swin pretraining file; {note}")
      for name, arch, note in (
          ("swin_base_patch4_win7", LOCALMIM_SWIN_BASE_FINETUNE, "README Swin-B, drop path 0.1"),
          ("swin_base_patch4_win14", LOCALMIM_SWIN_BASE_WIN14_FINETUNE, "window 14, drop path 0.1"),
          ("swin_large_patch4_win14", LOCALMIM_SWIN_LARGE_FINETUNE, "README Swin-L, drop path 0.3"))],
    ModelCfg(name="vit_base_patch16", family="mim_vit", paper=PAPERS["fastmim"], official_code=_FINETUNE_CODE,
             arch={k: v for k, v in VIT_BASE_FINETUNE.items()}, task="mim_finetune", input_size=(3, 224, 224),
             test_input_size=(3, 224, 224), min_input_size=(3, 224, 224), first_conv="patch_embed.proj",
             classifier=("head",), interpolation="bicubic", infer_kwargs=infer_finetune_kwargs,
             notes="MAE-style fine-tune ViT-B/16 (global pool, drop path 0.1) for FastMIM / LocalMIM "
                   "checkpoints: mim.load_pretrained"),
]
# the other upstream sizes (the constants above): the base model's cfg with their constructor and arch
_BY_NAME = {c.name: c for c in CFGS}
CFGS += [replace(_BY_NAME[base], name=name, official_code=_BY_NAME[base].official_code.rsplit(", ", 1)[0]
                 + f", {upstream})", arch=dict(arch), notes=notes)
         for name, base, upstream, arch, notes in (
             ("fastmim_swin_large_patch4", "fastmim_swin_base_patch4", "mim_swin_large", FASTMIM_SWIN_LARGE,
              "FastMIM Swin-L pretraining with the Swin-B README flags (upstream gives no Swin-L recipe; its "
              "decoder_num_heads=16 is ignored upstream, the decoder has 8 heads); returns (loss, pred, mask)"),
             ("localmim_vit_small_patch16", "localmim_vit_base_patch16", "MIM_vit_small_patch16", LOCALMIM_VIT_SMALL,
              "LocalMIM ViT-S pretraining (the constructor's hog_nbins 9; no README recipe); returns the loss"),
             ("localmim_vit_large_patch16", "localmim_vit_base_patch16", "MIM_vit_large_patch16", LOCALMIM_VIT_LARGE,
              "LocalMIM ViT-L pretraining (README flags: hog_nbins 18, hog_bias); returns the loss"),
             ("localmim_swin_base_patch4_win14", "localmim_swin_base_patch4", "mim_swin_base_patch4_win14",
              LOCALMIM_SWIN_BASE_WIN14, "LocalMIM Swin-B pretraining with window 14 (the Swin-B README target "
              "flags); 224 px only; returns the loss"),
             ("localmim_swin_large_patch4_win14", "localmim_swin_base_patch4", "mim_swin_large_patch4_win14",
              LOCALMIM_SWIN_LARGE_WIN14, "LocalMIM Swin-L pretraining (README flags: window 14, HOG, 18 bins, "
              "hog_bias); 224 px only; returns the loss"))]
register_cfgs(CFGS)
