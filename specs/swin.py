"""Swin Transformer variants and checkpoint rules (arXiv 2103.14030) in the layout of the FastMIM fine-tune code,
ggjy/FastMIM.pytorch@d4eea0d ``mim_swin_finetune.py`` (``SwinTransformer``), which LocalMIM's
(Haoqing-Wang/LocalMIM@314a6e5 ``Swin/models_swin.py``) and microsoft/Swin-Transformer's share apart from the final
norm (see docs/swin.md).

Framework-free: the variant table, the shifted-window attention mask and the window clamp of
``SwinTransformerBlock.__init__``, the relative-position bias table resize of FastMIM's fine-tune loading
(``util/pos_embed.py`` ``remap_pretrained_keys_swin``: its default SimMIM geometric spline resampling, bit for bit,
or its ``interpolate`` mode, torch's bicubic ``F.interpolate``), and the checkpoint rules built on them. The relative position index
is :func:`specs.relpos.relative_position_index`.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from ._registry import ModelCfg, register_cfgs
from .errors import CheckpointError
from .param_groups import MATCH_PREV_GROUP, Matcher
from .pooling import bicubic_taps
from .relpos import relative_position_index  # noqa: F401  (the buffer both frameworks store)
from .vig import drop_path_rates  # noqa: F401  (torch.linspace(0, rate, sum(depths)), the official rule)
from .vit import to_2tuple

PAPER = "2103.14030"
FASTMIM_COMMIT = "d4eea0dc8caf3db4be3d3ed4c7a8bc07c59b6111"
OFFICIAL_CODE = (f"ggjy/FastMIM.pytorch@{FASTMIM_COMMIT[:7]} mim_swin_finetune.py (SwinTransformer, BasicLayer, "
                 "SwinTransformerBlock, WindowAttention, PatchMerging, PatchEmbed); util/pos_embed.py "
                 "(remap_pretrained_keys_swin)")
LN_EPS = 1e-5            # torch's nn.LayerNorm default, as the official norm_layer
MLP_RATIO = 4.0
PATCH = 4
WINDOW = 7
IMG_SIZE = 224
MASK_VALUE = -100.0      # the official attention mask's fill between tokens of different regions
# name -> (embed_dim, depths, num_heads); the official (microsoft) Swin-T/S/B, as FastMIM registers S/B
VARIANTS: dict[str, tuple[int, tuple[int, ...], tuple[int, ...]]] = {
    "swin_tiny_patch4_window7_224": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "swin_small_patch4_window7_224": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "swin_base_patch4_window7_224": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
}
_MS_RELEASE = "https://github.com/SwinTransformer/storage/releases/download/v1.0.0"
URLS = {
    "swin_tiny_patch4_window7_224": (f"{_MS_RELEASE}/swin_tiny_patch4_window7_224.pth",),
    "swin_small_patch4_window7_224": (f"{_MS_RELEASE}/swin_small_patch4_window7_224.pth",),
    "swin_base_patch4_window7_224": (
        "https://github.com/ggjy/FastMIM.pytorch/releases/download/release-cls/"
        "swin_base_fastmim_hog_400e_finetune_100e.pth",),
}
_NOTES = {
    "swin_tiny_patch4_window7_224": "microsoft/Swin-Transformer ImageNet-1k release: 81.2 % top-1 (its final norm "
                                    "'norm' is loaded as 'fc_norm')",
    "swin_small_patch4_window7_224": "microsoft/Swin-Transformer ImageNet-1k release: 83.2 % top-1 (its final norm "
                                     "'norm' is loaded as 'fc_norm')",
    "swin_base_patch4_window7_224": "FastMIM Swin-B (HOG, 400-epoch pre-training at 128 px with window 4, "
                                    "100-epoch fine-tune at 224): 84.1 % top-1",
}
_BUFFERS = ("relative_position_index", "attn_mask")


def stage_resolution(img_size: int | Sequence[int], patch_size: int, stage: int) -> tuple[int, int]:
    """Token grid of stage ``stage``: the patch grid halved per earlier stage (floor, as the official code)."""
    h, w = to_2tuple(img_size)
    p = to_2tuple(patch_size)
    return h // p[0] // 2 ** stage, w // p[1] // 2 ** stage


def block_window(resolution: Sequence[int], window_size: int, shift_size: int) -> tuple[int, int]:
    """The official ``SwinTransformerBlock`` clamp: a grid no larger than the window (``min(res) <= window``) is one
    window of side ``min(res)``, unshifted; returns ``(window_size, shift_size)``."""
    if min(resolution) <= window_size:
        return min(resolution), 0
    return window_size, shift_size


def shifted_window_mask(resolution: Sequence[int], window_size: int, shift_size: int) -> np.ndarray:
    """The official SW-MSA mask (nW, N, N), float32: the grid cut into 3 x 3 regions by ``-window`` and ``-shift``,
    windows partitioned row-major, 0 between tokens of one region and :data:`MASK_VALUE` (-100) otherwise."""
    h, w = resolution
    img = np.zeros((h, w), np.float32)
    cuts = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
    for i, (hs, ws) in enumerate((a, b) for a in cuts for b in cuts):
        img[hs, ws] = i
    win = img.reshape(h // window_size, window_size, w // window_size, window_size).transpose(0, 2, 1, 3)
    win = win.reshape(-1, window_size * window_size)
    diff = win[:, None, :] - win[:, :, None]
    return np.where(diff != 0, np.float32(MASK_VALUE), np.float32(0.0)).astype(np.float32)


def _bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64 weights of torch's plain bicubic resize (:func:`specs.pooling.bicubic_taps`)."""
    idx, w = bicubic_taps(n_in, n_out)
    out = np.zeros((n_out, n_in))
    for k in range(4):
        np.add.at(out, (np.arange(n_out), idx[:, k]), w[:, k])
    return out


REMAP_MODES = ("simmim", "interpolate")


def _geometric_positions(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """SimMIM's source and target offsets along one axis (FastMIM ``remap_pretrained_keys_swin``, mode 'simmim'):
    the ratio ``q`` of a geometric progression found by bisection so that ``src // 2`` terms reach ``dst // 2``, the
    source offsets ``-d..-1, 0, 1..d`` at its partial sums, the target offsets the integers ``-dst // 2..dst // 2``.
    Computed in Python floats, step for step as the official loop."""
    left, right = 0.5, 2.0
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if (1.0 - q ** (src // 2)) / (1.0 - q) > dst // 2:
            right = q
        else:
            left = q
    dis, cur = [], 1
    for i in range(src // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    t = dst // 2.0
    return np.array([-d for d in reversed(dis)] + [0] + dis, np.float64), np.arange(-t, t + 0.1, 1.0)


def _geometric_resize(grid: np.ndarray, dst: int) -> np.ndarray:
    """One head's (src, src) grid resampled as SimMIM's code does with ``scipy.interpolate.interp2d(x, y, z,
    kind)`` (``kind`` 'cubic', 'linear' for ``src <= 3``) evaluated at ``(dx, dy)``: interp2d takes ``z`` as
    (len(y), len(x)), fits FITPACK's interpolating spline (``regrid_smth``, ``s=0``) and returns ``bisplev``'s
    transpose, which is ``RectBivariateSpline(x, y, z.T)(dx, dy).T`` bit for bit (checked against SciPy 1.13's
    interp2d; interp2d left SciPy in 1.14, the spline it called did not)."""
    from scipy.interpolate import RectBivariateSpline
    src = grid.shape[0]
    x, dx = _geometric_positions(src, dst)
    k = 1 if src <= 3 else 3
    return RectBivariateSpline(x, x, grid.T, kx=k, ky=k, s=0)(dx, dx).T


def resize_bias_table(table: np.ndarray, rows: int, mode: str = "simmim") -> np.ndarray:
    """FastMIM's ``remap_pretrained_keys_swin`` on one (L1, heads) table: the square ``sqrt(L1)`` grid of each head
    resized to ``sqrt(rows)``. ``mode`` 'simmim' (FastMIM's default, ``--remap_mode``): SimMIM's geometric
    resampling per head from the float32 table, in float64 (:func:`_geometric_resize`); 'interpolate': torch's
    bicubic ``F.interpolate`` (``align_corners=False``, no antialias), separably in float64. Returned in the
    input's dtype."""
    if mode not in REMAP_MODES:
        raise CheckpointError(f"bias-table remap mode must be one of {REMAP_MODES}, got {mode!r}")
    table = np.asarray(table)
    src, dst = math.isqrt(table.shape[0]), math.isqrt(rows)
    if src * src != table.shape[0] or dst * dst != rows:
        raise CheckpointError(f"relative_position_bias_table of {table.shape[0]} rows cannot be resized to {rows}: "
                              "not square grids")
    if mode == "simmim":
        grids = table.astype(np.float32).astype(np.float64).T.reshape(-1, src, src)     # official: .float().numpy()
        return np.stack([_geometric_resize(g, dst).reshape(-1) for g in grids], axis=1).astype(table.dtype)
    m = _bicubic_matrix(src, dst)
    grid = table.reshape(src, src, -1).astype(np.float64)
    return np.einsum("Hh,Ww,hwc->HWc", m, m, grid).reshape(rows, -1).astype(table.dtype)


def _model_state_shapes(model: Any) -> dict[str, tuple]:
    """(torch key -> shape) of the model's buffers and tables, read from either framework's model."""
    if hasattr(model, "state_dict"):
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return {k: tuple(p.shape) for k, p in model.parameters_and_names()}


def _model_buffers(model: Any) -> dict[str, np.ndarray]:
    """The model's own ``relative_position_index`` / ``attn_mask`` arrays, under torch keys (same in MindSpore)."""
    if hasattr(model, "state_dict"):
        items = ((k, v.numpy()) for k, v in model.state_dict().items())
    else:
        items = ((k, p.asnumpy()) for k, p in model.parameters_and_names())
    return {k: v for k, v in items if k.rsplit(".", 1)[-1] in _BUFFERS}


def checkpoint_filter(state: Mapping[str, np.ndarray], model: Any = None,
                      remap_mode: str = "simmim") -> dict[str, np.ndarray]:
    """Fits an official-layout state to this model (timm ``checkpoint_filter_fn`` pattern):

    - microsoft/Swin-Transformer files name the final LayerNorm ``norm`` (FastMIM: ``fc_norm``; same maths): renamed;
    - loading into ``model`` (either framework; None when converting a file on its own): a
      ``relative_position_bias_table`` of another window resized as FastMIM's fine-tune loading does
      (:func:`resize_bias_table` in ``remap_mode``: 'simmim', FastMIM's default, or 'interpolate'), and the geometry buffers (``relative_position_index``, ``attn_mask``) of a
      checkpoint of another window replaced by the model's own, as FastMIM re-initialises them.
    """
    out = {("fc_norm." + k[5:] if k.startswith("norm.") else k): v for k, v in state.items()}
    if model is None:
        return out
    shapes = _model_state_shapes(model)
    resized = False
    for k, v in list(out.items()):
        if k.endswith("relative_position_bias_table") and k in shapes and tuple(v.shape) != shapes[k]:
            if v.shape[1] != shapes[k][1]:
                raise CheckpointError(f"{k}: {v.shape[1]} heads in the checkpoint, {shapes[k][1]} in the model")
            out[k] = resize_bias_table(v, shapes[k][0], remap_mode)
            resized = True
    if resized:
        out = {k: v for k, v in out.items() if k.rsplit(".", 1)[-1] not in _BUFFERS}
        out.update(_model_buffers(model))
    return out


def infer_kwargs(shapes: Mapping[str, tuple]) -> dict:
    """Model kwargs a state dict implies: the number of classes (0 without ``head``), ``embed_dim`` and
    ``patch_size`` from the patch conv, ``depths`` and ``num_heads`` from the blocks' bias tables, ``window_size``
    from the first table (``(2w - 1) ** 2`` rows: window 4 for FastMIM's 128-px pre-training) and, when the first
    stage has a shift mask (nW, N, N), the square input it was built for (``sqrt(nW * N) * patch``)."""
    out = {"num_classes": int(shapes["head.weight"][0]) if "head.weight" in shapes else 0}
    conv = shapes.get("patch_embed.proj.weight")
    if conv is not None:
        out.update(embed_dim=int(conv[0]), patch_size=int(conv[-1]))
    tables = {}
    for k, shape in shapes.items():
        parts = k.split(".")
        if k.endswith("attn.relative_position_bias_table") and parts[0] == "layers":
            tables[(int(parts[1]), int(parts[3]))] = shape
    if tables:
        stages = sorted({i for i, _ in tables})
        out["depths"] = tuple(1 + max(j for i, j in tables if i == s) for s in stages)
        out["num_heads"] = tuple(int(tables[(s, 0)][1]) for s in stages)
        out["window_size"] = (math.isqrt(int(tables[(0, 0)][0])) + 1) // 2
    mask = shapes.get("layers.0.blocks.1.attn_mask")
    if mask is not None and conv is not None:
        side = math.isqrt(int(mask[0]) * int(mask[1]))
        if side * side == mask[0] * mask[1]:
            out["img_size"] = side * int(conv[-1])
    return out


def no_weight_decay(names: Sequence[str]) -> set[str]:
    """Upstream's lists applied to a model's parameter names: ``no_weight_decay`` ``{'absolute_pos_embed'}`` (no
    such parameter here: ``ape=False``) and ``no_weight_decay_keywords`` ``{'relative_position_bias_table'}``."""
    return {n for n in names if n == "absolute_pos_embed" or "relative_position_bias_table" in n}


def group_matcher(coarse: bool = False, final_norm: str | None = "fc_norm") -> Matcher:
    """FastMIM's layer-wise lr decay (``util/lr_decay.py`` ``get_layer_id_for_swin``) in timm's matcher form: stem
    ``patch_embed``, one group per block (``layers.i.blocks.j``), each stage's ``downsample`` joining that stage's
    last block, ``head`` last; coarse: one group per stage. ``fc_norm`` joins the last block (timm's rule for the
    final norm; the project's head group holds only what ``forward_head`` runs), where FastMIM gives it the head's
    layer (lr scale 1 instead of ``layer_decay``). ``final_norm=None``: no such rule, the final norm is left to the
    head's group (LocalMIM's fine-tune Swin, whose ``norm`` runs in the head after the pooling; its
    ``get_swin_layer`` gives it the head's layer too)."""
    tail = [(rf"^{final_norm}\.", (MATCH_PREV_GROUP,))] if final_norm else []
    if coarse:
        return dict(stem=r"^absolute_pos_embed|patch_embed", blocks=[(r"^layers\.(\d+)\.", None)] + tail)
    return dict(stem=r"^absolute_pos_embed|patch_embed",
                blocks=[(r"^layers\.(\d+)\.blocks\.(\d+)\.", None),
                        (r"^layers\.(\d+)\.downsample\.", (MATCH_PREV_GROUP,))] + tail)


def _cfg(name: str) -> ModelCfg:
    dim, depths, heads = VARIANTS[name]
    size = (3, IMG_SIZE, IMG_SIZE)
    return ModelCfg(
        name=name, family="swin", paper=PAPER, official_code=OFFICIAL_CODE, urls=URLS[name],
        arch=dict(embed_dim=dim, depths=depths, num_heads=heads, patch_size=PATCH, window_size=WINDOW,
                  img_size=IMG_SIZE),
        # the official PatchEmbed asserts the input size: the tests run at 224 (heavy: built only)
        input_size=size, test_input_size=size, min_input_size=size,
        crop_pct=0.875, interpolation="bicubic",          # FastMIM/MAE eval transform: resize 256, crop 224
        first_conv="patch_embed.proj", classifier=("head",), notes=_NOTES[name],
        infer_kwargs=infer_kwargs, checkpoint_filter=checkpoint_filter)


CFGS = [_cfg(name) for name in VARIANTS]
register_cfgs(CFGS)
