"""Masked-image-modelling pieces of FastMIM (arXiv 2212.06593) and LocalMIM (arXiv 2303.05251): the HOG targets
and the masking helpers, as the official ggjy/FastMIM.pytorch@d4eea0d (``util/hog_layer.py``,
``mim_vit_pretrain.py``) and Haoqing-Wang/LocalMIM@314a6e5 (``ViT/models_mim.py``) compute them. Mirrors
``torch_ref/mim.py`` name for name.

HOG (both papers §3, "HOG as the target", after MaskFeat): per pixel and colour channel the reflect-padded
cross-correlation with ``kx = [[1,0,-1],[2,0,-2],[1,0,-1]]`` and ``ky = kxᵀ``, ``mag = sqrt(gx² + gy²)``, the
hard bin ``floor(atan2(gx, gy) / π · nbins) mod nbins`` (unsigned orientation), a per-cell histogram (FastMIM
sums the ``pool×pool`` cell, LocalMIM averages it) and an L2 normalisation of each cell over its bins,
``x / max(‖x‖, 1e-12)``. The HOG layers compile in GRAPH_MODE; the masking helpers run in PyNative.

MindSpore specifics: the gradients are separable slice differences after ``ops.pad(mode='reflect')`` (exactly 0
on the reflected borders, as upstream's convolution gives; a convolution kernel of another summation order
need not cancel); the phase is scaled as ``phase / π * nbins`` in float32 in that order; ``ops.L2Normalize``
clamps the norm at 1e-4, so the normalisation is written out with torch's 1e-12; upstream's ``scatter_add_``
is a one-hot product (each pixel writes once). Indices and masks are int32 (torch: int64).
"""
from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Uniform, initializer

__all__ = ["HOGLayerC", "HOGLayer", "SobelConv", "sobel_gradients", "orientation_bins", "block_masking",
           "random_masking", "recal_mask"]

SOBEL_X = ((1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0))   # kx; ky = kxᵀ
NORM_EPS = 1e-12    # torch F.normalize's eps


def sobel_gradients(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(gx, gy)`` of every channel of ``x`` (B, C, H, W): reflect padding by 1, then the cross-correlation with
    ``kx`` and ``ky = kxᵀ`` (``gx = left − right``, ``gy = top − bottom``), as separable smoothing ``[1, 2, 1]``
    and a slice difference. A reflected border column (row) subtracts two bitwise-equal sums, so gx (gy) is
    exactly 0 there whatever the input."""
    p = ops.pad(x, (1, 1, 1, 1), mode="reflect")
    rows = p[:, :, :-2, :] + 2 * p[:, :, 1:-1, :] + p[:, :, 2:, :]       # [1, 2, 1] down the rows
    cols = p[:, :, :, :-2] + 2 * p[:, :, :, 1:-1] + p[:, :, :, 2:]       # [1, 2, 1] along the columns
    return rows[:, :, :, :-2] - rows[:, :, :, 2:], cols[:, :, :-2, :] - cols[:, :, 2:, :]


def orientation_bins(gx: Tensor, gy: Tensor, nbins: int, max_angle: float = math.pi) -> tuple[Tensor, Tensor]:
    """``(mag, bin)``: ``sqrt(gx² + gy²)`` and ``floor(atan2(gx, gy) / max_angle * nbins) mod nbins`` (int32),
    the float32 operations in upstream's order (a precomputed ``nbins / π`` moves the exact-edge pixels)."""
    mag = ops.sqrt(gx * gx + gy * gy)
    phase = ops.atan2(gx, gy) / max_angle * nbins
    bins = ops.cast(ops.floor(phase), ms.int32)
    return mag, ops.floor_mod(bins, nbins)


def _histogram(mag: Tensor, bins: Tensor, levels: Tensor, pool: int, mean: bool) -> Tensor:
    """Per-cell orientation histograms (B, C, nbins, H//pool, W//pool) of ``mag`` (B, C, H, W) in ``bins``
    (``levels``: the int32 bin numbers, shaped (1, 1, nbins, 1, 1)); the trailing rows and columns that do not
    fill a cell are dropped, as upstream's ``unfold`` / ``AvgPool2d`` do."""
    b, c, h, w = mag.shape
    nbins = levels.shape[2]
    hp, wp = h // pool, w // pool
    hist = ops.cast(ops.equal(bins.expand_dims(2), levels), mag.dtype) * mag.expand_dims(2)   # scatter of a pixel
    hist = hist[:, :, :, :hp * pool, :wp * pool].reshape(b, c, nbins, hp, pool, wp, pool)
    return hist.mean(axis=(4, 6)) if mean else hist.sum(axis=(4, 6))


def _l2_normalize(x: Tensor, axis: int) -> Tensor:
    """``x / max(‖x‖₂, 1e-12)`` along ``axis`` (torch ``F.normalize``; not ``ops.L2Normalize``, eps 1e-4)."""
    return x / ops.maximum(ops.sqrt((x * x).sum(axis, keepdims=True)), NORM_EPS)


def _levels(nbins: int) -> Tensor:
    return Tensor(np.arange(nbins, dtype=np.int32).reshape(1, 1, nbins, 1, 1))


class HOGLayerC(nn.Cell):
    """FastMIM's HOG target (paper §3.2; official ``util/hog_layer.py::HOGLayerC``, from MaskFeat): (B, 3, H, W)
    -> (B, 3·nbins, H//pool, W//pool), the R bins, then G, then B; cell histograms are **sums**, L2-normalised
    per cell and channel when ``norm_pix_loss``. ``weight_x`` / ``weight_y`` are upstream's (3, 1, 3, 3) kernel
    buffers (frozen Parameters); the forward uses the same fixed kernels as exact slice differences
    (:func:`sobel_gradients`). Upstream's ``gaussian_window`` (always 0 in FastMIM) is not kept."""

    def __init__(self, nbins: int = 9, pool: int = 8, norm_pix_loss: bool = True) -> None:
        super().__init__()
        self.nbins = nbins
        self.pool = pool
        self.pi = math.pi
        self.norm_pix_loss = norm_pix_loss
        weight_x = np.tile(np.array(SOBEL_X, np.float32).reshape(1, 1, 3, 3), (3, 1, 1, 1))
        self.weight_x = Parameter(Tensor(weight_x), name="weight_x", requires_grad=False)
        self.weight_y = Parameter(Tensor(np.ascontiguousarray(weight_x.transpose(0, 1, 3, 2))), name="weight_y",
                                  requires_grad=False)
        self.levels = _levels(nbins)

    def orientation(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(mag, bin)`` per pixel and channel, each (B, 3, H, W): the step part of the layer."""
        gx, gy = sobel_gradients(x)
        return orientation_bins(gx, gy, self.nbins, self.pi)

    def histogram(self, mag: Tensor, bins: Tensor) -> Tensor:
        """The output from the per-pixel ``(mag, bin)``: summed cells, optional L2 norm, channels flattened."""
        out = _histogram(mag, bins, self.levels, self.pool, False)
        if self.norm_pix_loss:
            out = _l2_normalize(out, 2)
        b, c, n, h, w = out.shape
        return out.reshape(b, c * n, h, w)

    def construct(self, x: Tensor) -> Tensor:
        mag, bins = self.orientation(x)
        return ops.stop_gradient(self.histogram(mag, bins))


class SobelConv(nn.Cell):
    """The frozen ``conv`` of LocalMIM's ``HOGLayer`` (upstream an ``nn.Conv2d(1, 2, 3, padding=1,
    padding_mode='reflect', bias=bias)``): ``weight`` (2, 1, 3, 3) is the (kx, ky) pair and ``bias`` (2,), when
    present, starts at torch ``nn.Conv2d``'s default U(−1/3, 1/3) as upstream leaves it (checkpoints carry the
    values that count). (B, 1, H, W) -> (B, 2, H, W); computed as :func:`sobel_gradients` plus the bias."""

    def __init__(self, bias: bool = False) -> None:
        super().__init__()
        kx = np.array(SOBEL_X, np.float32)
        self.weight = Parameter(Tensor(np.stack([kx, kx.T])[:, None]), name="weight", requires_grad=False)
        self.has_bias = bias
        self.bias = Parameter(initializer(Uniform(1 / 3), (2,), ms.float32), name="bias",
                              requires_grad=False) if bias else None

    def construct(self, x: Tensor) -> Tensor:
        gx, gy = sobel_gradients(x)
        gxy = ops.cat((gx, gy), 1)
        if self.has_bias:
            gxy = gxy + self.bias.reshape(1, 2, 1, 1)
        return gxy


class HOGLayer(nn.Cell):
    """LocalMIM's HOG target of one channel (paper §3.3; official ``ViT/models_mim.py::HOGLayer``; the Swin one
    is the same): (B, 1, H, W) -> (B, nbins, H//pool, W//pool); cell histograms are **means** (``AvgPool2d``),
    always L2-normalised. ``max_angle`` divides the phase (π upstream). With ``bias`` the frozen ``conv.bias``
    is added to (gx, gy), so a flat region has the constant gradient ``bias`` and a flat cell is one-hot.
    Upstream's comment says "linear interpolation", its code (kept here) assigns hard bins."""

    def __init__(self, nbins: int, pool: int, bias: bool = False, max_angle: float = math.pi) -> None:
        super().__init__()
        self.nbins = nbins
        self.pool = pool
        self.max_angle = max_angle
        self.conv = SobelConv(bias)
        self.levels = _levels(nbins)

    def orientation(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(mag, bin)`` per pixel, each (B, 1, H, W): the step part of the layer."""
        if x.shape[1] != 1:
            raise ValueError("HOGLayer takes one channel (B, 1, H, W)")
        gxy = self.conv(x)
        return orientation_bins(gxy[:, :1], gxy[:, 1:], self.nbins, self.max_angle)

    def histogram(self, mag: Tensor, bins: Tensor) -> Tensor:
        """The output from the per-pixel ``(mag, bin)``: averaged cells, L2-normalised over the bins."""
        return _l2_normalize(_histogram(mag, bins, self.levels, self.pool, True)[:, 0], 1)

    def construct(self, x: Tensor) -> Tensor:
        mag, bins = self.orientation(x)
        return ops.stop_gradient(self.histogram(mag, bins))


def _repeat_hw(x: Tensor, r: int) -> Tensor:
    """Nearest upsampling of (B, C, H, W) by ``r`` on both spatial axes (``repeat_interleave`` on dims 2, 3)."""
    b, c, h, w = x.shape
    return ops.broadcast_to(x.reshape(b, c, h, 1, w, 1), (b, c, h, r, w, r)).reshape(b, c, h * r, w * r)


def block_masking(imgs: Tensor, mask_ratio: float, img_size: int, block_size: int = 16, patch_size: int = 16,
                  noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """FastMIM's per-sample block masking (paper §3.1; official ``mim_vit_pretrain.py::
    mim_per_sample_block_masking``): ``(mask (B, 1, H, W), loss_mask (B, 1, img_size//patch_size, ...))``, int32,
    1 = masked. The ``n = (img_size//block_size)²`` blocks are ranked by ``noise`` (B, n) (drawn U[0, 1) when
    None); the ``int(n·(1 − mask_ratio))`` smallest are kept. ``mask`` spreads each block over ``H // √n`` pixels;
    ``loss_mask`` is at block resolution, repeated to token resolution when ``block_size > patch_size``."""
    batch, _, height, width = imgs.shape
    if height != width:
        raise ValueError(f"Input height and width doesn't match ({height} != {width}).")
    mask_size = img_size // block_size
    bw_ratio = height // mask_size
    if bw_ratio * mask_size != height:
        raise ValueError(f"image size {height} is not a multiple of the {mask_size}x{mask_size} block grid")
    len_keep = int(mask_size ** 2 * (1 - mask_ratio))
    if noise is None:
        noise = ops.rand(batch, mask_size ** 2, dtype=ms.float32)
    ids_restore = ops.argsort(ops.argsort(noise, axis=1), axis=1)
    loss_mask = ops.cast(ids_restore >= len_keep, ms.int32).reshape(batch, 1, mask_size, mask_size)
    mask = _repeat_hw(loss_mask, bw_ratio)
    if block_size > patch_size:
        loss_mask = _repeat_hw(loss_mask, block_size // patch_size)
    return mask, loss_mask


def random_masking(x: Tensor, mask_ratio: float, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """MAE's per-sample random masking, as LocalMIM uses it (official ``ViT/models_mim.py::random_masking``):
    ``(x_keep (N, len_keep, D), mask (N, L) float32, ids_restore (N, L) int32)`` for ``x`` (N, L, D); the
    ``int(L·(1 − mask_ratio))`` tokens of smallest ``noise`` (N, L) (drawn U[0, 1) when None) are kept, in
    ascending noise order; ``mask`` is 1 for a removed token, in the original order."""
    n, length, dim = x.shape
    len_keep = int(length * (1 - mask_ratio))
    if noise is None:
        noise = ops.rand(n, length, dtype=ms.float32)
    ids_shuffle = ops.argsort(noise, axis=1)
    ids_restore = ops.argsort(ids_shuffle, axis=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_keep = ops.gather_elements(x, 1, ops.broadcast_to(ids_keep.expand_dims(-1), (n, len_keep, dim)))
    mask = ops.cast(ids_restore >= len_keep, ms.float32)
    return x_keep, mask, ids_restore


def recal_mask(mask: Tensor, scale: float) -> Tensor:
    """LocalMIM's mask at the grid of one decoder scale (paper §3.2; official ``ViT/models_mim.py::recal_mask``):
    ``mask`` (B, L) on a square √L×√L token grid -> (B, L·scale²) float32. ``scale ≥ 1``: nearest upsampling by
    ``int(scale)``; ``scale < 1``: the **mean** over each ``int(1/scale)``² group (multiples of 0.25 at 0.5)."""
    mask = ops.cast(mask, ms.float32)
    b, length = mask.shape
    h = int(length ** .5)
    if scale >= 1.:
        return _repeat_hw(mask.reshape(b, 1, h, h), int(scale)).reshape(b, -1)
    s = int(1 / scale)
    return mask.reshape(b, h // s, s, h // s, s).swapaxes(2, 3).mean((-2, -1)).reshape(b, -1)


# ================================================================== pretraining models and fine-tuning (2.3, 2.4)
# Mirrors the torch section of ``torch_ref/mim.py`` cell for cell (FastMIM ``mim_vit_pretrain.py``, LocalMIM
# ``ViT/models_mim.py``, MAE ``models_vit.py``); the parameter names are the torch keys with LayerNorm's
# ``gamma``/``beta``. MindSpore specifics: LayerNorm epsilon 1e-6 and exact-erf GELU set explicitly (the project's
# ViT ``Block``); FastMIM's boolean-indexed means are masked sums over the mask count; the constructs compile in
# GRAPH_MODE. An official torch file loads through the converter's computed name map (:func:`load_official`).

import os  # noqa: E402
from typing import Any, Sequence  # noqa: E402

from specs import mim as _spec  # noqa: E402
from specs import swin as swin_spec  # noqa: E402
from specs.swin import stage_resolution  # noqa: E402
from specs.errors import CheckpointError, ConfigError  # noqa: E402

from .layers import GELU, Mlp, PatchEmbed  # noqa: E402
from .layers.patch_embed import check_img_size  # noqa: E402
from .models.swin import (BasicLayer, NormedPatchEmbed, PatchMerging, SwinTransformer,  # noqa: E402
                          WindowAttention, layer_norm as swin_layer_norm)
from .models.vit import Block, VisionTransformer as _TimmViT, layer_norm  # noqa: E402

__all__ += ["FastMIMBase", "MaskedAutoencoderViT", "MIMSwinEncoder", "PretrainSwin", "LocalMIMViT", "MAEDecoder",
            "LocalMIMSwin", "VisibleSwinEncoder", "SwinMIMDecoder", "localmim_swin_base_patch4",
            "LayerNorm2d", "FinetuneViT", "fastmim_vit_base_patch16", "fastmim_swin_base_patch4",
            "localmim_vit_base_patch16", "vit_base_patch16", "load_pretrained", "load_official", "hog_c",
            "fastmim_swin_large_patch4", "localmim_vit_small_patch16", "localmim_vit_large_patch16",
            "localmim_swin_base_patch4_win14", "localmim_swin_large_patch4_win14", "FinetuneSwin",
            "swin_base_patch4_win7", "swin_base_patch4_win14", "swin_large_patch4_win14"]


def hog_c(imgs: Tensor, levels: Tensor, pool: int = 8, norm_pix_loss: bool = True) -> Tensor:
    """:class:`HOGLayerC` as a function of the int32 bin numbers ``levels`` (1, 1, nbins, 1, 1): no parameters, as
    FastMIM builds the layer inside every loss call (its kernels are not in the pretraining state dict)."""
    gx, gy = sobel_gradients(imgs)
    mag, bins = orientation_bins(gx, gy, levels.shape[2], math.pi)
    out = _histogram(mag, bins, levels, pool, False)
    if norm_pix_loss:
        out = _l2_normalize(out, 2)
    b, c, n, h, w = out.shape
    return ops.stop_gradient(out.reshape(b, c * n, h, w))


def _fixed_pos_embed(dim: int, grid: int, name: str = "pos_embed") -> Parameter:
    return Parameter(Tensor(_spec.sincos_pos_embed(dim, grid)), name=name, requires_grad=False)


def _xavier_dense(in_ch: int, out_ch: int) -> nn.Dense:
    """MAE's Linear init: xavier-uniform weight, zero bias."""
    return nn.Dense(in_ch, out_ch, weight_init="xavier_uniform", bias_init="zeros")


def _init_patch_embed(patch_embed: PatchEmbed) -> None:
    """xavier-uniform over the (out, in·k·k) view of the patch conv (upstream's ``w.view([w.shape[0], -1])``)."""
    w = patch_embed.proj.weight
    fan_out, fan_in = w.shape[0], int(np.prod(w.shape[1:]))
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    w.set_data(initializer(Uniform(bound), w.shape, ms.float32))


def _normal(shape: tuple, name: str, std: float = 0.02) -> Parameter:
    from mindspore.common.initializer import Normal
    return Parameter(initializer(Normal(sigma=std), shape, ms.float32), name=name)


def _xavier_dense_cells(cell: nn.Cell) -> None:
    """MAE's ``_init_weights`` on every ``nn.Dense`` under ``cell``: xavier-uniform weight, zero bias."""
    for _, c in cell.cells_and_names():
        if isinstance(c, nn.Dense):
            c.weight.set_data(initializer("xavier_uniform", c.weight.shape, ms.float32))
            if c.bias is not None:
                c.bias.set_data(initializer("zeros", c.bias.shape, ms.float32))


class FastMIMBase(nn.Cell):
    """What FastMIM's pretraining models share (see ``torch_ref.mim.FastMIMBase``): ``construct(imgs,
    mask_ratio=0.75, noise=None) -> (loss, pred, mask)`` over the subclass's ``forward_encoder``, the light
    decoder and the HOG or pixel loss."""

    num_prefix_tokens = 0

    def _check(self, mim_loss: str, decoder_depth: int, block_size: int, patch_size: int) -> None:
        if mim_loss not in ("HOG", "l2"):
            raise ConfigError(f"mim_loss must be 'HOG' or 'l2', not {mim_loss!r}")
        if decoder_depth < 1 or block_size < patch_size:
            raise ConfigError("FastMIM here needs decoder_depth >= 1 and block_size >= the token's patch "
                              f"({patch_size}), got decoder_depth={decoder_depth}, block_size={block_size}")
        self.hog_levels = _levels(_spec.FASTMIM_HOG["nbins"])

    def forward_decoder(self, x):
        x = self.decoder_embed(x)
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, self.num_prefix_tokens:]

    def patchify(self, imgs):
        """(B, 3, H, W) -> (B, p²·3, h, w), channels in (p, q, c) order."""
        p = self.patch_size
        b, c, hh, ww = imgs.shape
        x = imgs.reshape(b, c, hh // p, p, ww // p, p).transpose(0, 3, 5, 1, 2, 4)
        return x.reshape(b, p * p * c, hh // p, ww // p)

    def forward_l2_loss(self, imgs, pred, mask):
        b, n, c = pred.shape
        side = int(n ** 0.5)
        pred = pred.swapaxes(-1, -2).reshape(b, c, side, side)
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(1, keep_dims=True)
            var = ((target - mean) ** 2).sum(1, keepdims=True) / (target.shape[1] - 1)
            target = (target - mean) / ops.sqrt(var + 1e-6)
        m = ops.cast(mask, pred.dtype)
        return (((pred - target) ** 2) * m).sum() / (m.sum() * c)

    def hog_target(self, imgs, side: int):
        """(B, L, 27·u²): each token's ``u × u`` HOG cells, (channel·bin, dy, dx) order."""
        t = hog_c(imgs, self.hog_levels, _spec.FASTMIM_HOG["pool"], self.norm_pix_loss)
        b, ch, th, _ = t.shape
        u = th // side
        return t.reshape(b, ch, side, u, side, u).transpose(0, 2, 4, 1, 3, 5).reshape(b, side * side, ch * u * u)

    def forward_hog_loss(self, imgs, pred, mask):
        b, n, c = pred.shape
        target = self.hog_target(imgs, int(n ** 0.5))
        m = ops.cast(mask, pred.dtype).reshape(b, n, 1)
        return (((pred - target) ** 2) * m).sum() / (m.sum() * c)

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Nothing: no epoch-dependent state (the engine's per-epoch hook)."""

    def construct(self, imgs, mask_ratio=0.75, noise=None):
        latent, mask = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent)
        if self.mim_loss == "HOG":
            loss = self.forward_hog_loss(imgs, pred, mask)
        else:
            loss = self.forward_l2_loss(imgs, pred, mask)
        return loss, pred, mask


def _output_dim(mim_loss: str, patch_size: int, in_chans: int) -> int:
    """``decoder_pred``'s width: a token's HOG cells (pool 8, 9 bins, 3 channels) or its pixels."""
    return (patch_size // 8) ** 2 * 9 * 3 if mim_loss == "HOG" else patch_size ** 2 * in_chans


def _masked_pixels(imgs, mask, mask_token):
    """``imgs * (1 - mask) + mask * mask_token``: the masked pixels replaced by the RGB token."""
    m = ops.cast(mask, imgs.dtype)
    return imgs * (1 - m) + m * mask_token


class MaskedAutoencoderViT(FastMIMBase):
    """FastMIM's ViT pretraining model (see ``torch_ref.mim.MaskedAutoencoderViT``): same constructor and
    ``construct(imgs, mask_ratio=0.75, noise=None) -> (loss, pred, mask)``."""

    num_prefix_tokens = 1

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 1024,
                 depth: int = 24, num_heads: int = 16, block_size: int = 16, decoder_embed_dim: int = 512,
                 decoder_depth: int = 8, mlp_ratio: float = 4.0, norm_pix_loss: bool = False, mim_loss: str = "l2"):
        super().__init__()
        self._check(mim_loss, decoder_depth, block_size, patch_size)
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = _normal((1, 1, embed_dim), "cls_token")
        self.pos_embed = _fixed_pos_embed(embed_dim, self.patch_embed.grid_size[0])
        self.blocks = nn.CellList([Block(embed_dim, num_heads, mlp_ratio, True) for _ in range(depth)])
        self.norm = layer_norm(embed_dim)
        self.decoder_embed = nn.Dense(embed_dim, decoder_embed_dim)
        self.mask_token = _normal((1, 3, 1, 1), "mask_token")
        self.decoder_blocks = nn.CellList([Block(decoder_embed_dim, decoder_embed_dim // 32, mlp_ratio, True)
                                           for _ in range(decoder_depth)])
        self.decoder_norm = layer_norm(decoder_embed_dim)
        self.decoder_pred = nn.Dense(decoder_embed_dim, _output_dim(mim_loss, patch_size, in_chans))
        _xavier_dense_cells(self)
        _init_patch_embed(self.patch_embed)
        self.img_size, self.patch_size, self.block_size = img_size, patch_size, block_size
        self.norm_pix_loss, self.mim_loss = norm_pix_loss, mim_loss
        self.set_input_size(img_size)

    def set_input_size(self, side: int) -> None:
        """FastMIM-P's progressive resolution (see the torch twin): ``side``-px inputs from now on, the sin-cos
        table of their grid (a constant of the graphs compiled after the call) and ``side // block_size`` blocks."""
        if side % self.block_size or side % self.patch_size:
            raise ConfigError(f"input side {side} must be a multiple of block_size {self.block_size} and "
                              f"patch_size {self.patch_size}")
        self.input_side = side
        self.pos_grid = None if side == self.img_size else Tensor(
            _spec.sincos_pos_embed(self.pos_embed.shape[-1], side // self.patch_size))

    def forward_encoder(self, imgs, mask_ratio, noise=None):
        mask, loss_mask = block_masking(imgs, mask_ratio, self.input_side, self.block_size, self.patch_size, noise)
        x = _masked_pixels(imgs, mask, self.mask_token)
        if self.input_side == self.img_size:
            pos = self.pos_embed
            x = self.patch_embed(x)
        else:
            check_img_size(imgs.shape[2], imgs.shape[3], (self.input_side, self.input_side))
            pos = self.pos_grid
            x = self.patch_embed.proj(x)
            x = x.reshape(x.shape[0], x.shape[1], -1).transpose(0, 2, 1)
        x = x + pos[:, 1:]
        cls = ops.broadcast_to(self.cls_token + pos[:, :1], (x.shape[0], -1, -1))
        x = ops.concat((cls, x), axis=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), loss_mask


class MIMSwinEncoder(nn.Cell):
    """FastMIM's Swin encoder (see ``torch_ref.mim.MIMSwinEncoder``): the Swin patch embedding and stages of
    :mod:`ms_models.models.swin`, the final ``norm``; ``construct(x, mask_ratio, mask_token, noise) -> (tokens,
    loss_mask)``."""

    def __init__(self, img_size: int, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96,
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: int = 7, mlp_ratio: float = 4.0, block_size: int = 32):
        super().__init__()
        self.patch_embed = NormedPatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.layers = nn.CellList([
            BasicLayer(int(embed_dim * 2 ** i), stage_resolution(self.patch_embed.img_size, patch_size, i),
                       depths[i], num_heads[i], window_size, mlp_ratio, True, (), downsample=i < len(depths) - 1)
            for i in range(len(depths))])
        self.num_features = int(embed_dim * 2 ** (len(depths) - 1))
        self.norm = swin_layer_norm(self.num_features)
        self.img_size, self.block_size = img_size, block_size
        self.stride = patch_size * 2 ** (len(depths) - 1)

    def construct(self, x, mask_ratio, mask_token, noise=None):
        mask, loss_mask = block_masking(x, mask_ratio, self.img_size, self.block_size, self.stride, noise)
        x = self.patch_embed(_masked_pixels(x, mask, mask_token))
        for layer in self.layers:
            x = layer(x)
        return self.norm(x), loss_mask


class PretrainSwin(FastMIMBase):
    """FastMIM's Swin pretraining model (see ``torch_ref.mim.PretrainSwin``): same constructor and
    ``construct(imgs, mask_ratio=0.75, noise=None) -> (loss, pred, mask)``."""

    def __init__(self, img_size: int = 224, patch_size: int = 32, in_chans: int = 3, embed_dim: int = 96,
                 depths: Sequence[int] = (2, 2, 18, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: int = 7, block_size: int = 32, decoder_embed_dim: int = 512, decoder_depth: int = 8,
                 mlp_ratio: float = 4.0, norm_pix_loss: bool = False, mim_loss: str = "l2"):
        super().__init__()
        self._check(mim_loss, decoder_depth, block_size, patch_size)
        self.encoder = MIMSwinEncoder(img_size, swin_spec.PATCH, in_chans, embed_dim, depths, num_heads,
                                      window_size, 4.0, block_size)
        if self.encoder.stride != patch_size:
            raise ConfigError(f"patch_size {patch_size} must be the Swin encoder's total stride "
                              f"{self.encoder.stride}")
        self.decoder_embed = nn.Dense(self.encoder.num_features, decoder_embed_dim)
        self.decoder_blocks = nn.CellList([
            Block(decoder_embed_dim, decoder_embed_dim // 32, mlp_ratio, True, eps=swin_spec.LN_EPS)
            for _ in range(decoder_depth)])
        self.decoder_norm = swin_layer_norm(decoder_embed_dim)
        self.decoder_pred = nn.Dense(decoder_embed_dim, _output_dim(mim_loss, patch_size, in_chans))
        self.mask_token = _normal((1, 3, 1, 1), "mask_token")
        _xavier_dense_cells(self)
        self.img_size, self.patch_size, self.block_size = img_size, patch_size, block_size
        self.norm_pix_loss, self.mim_loss = norm_pix_loss, mim_loss

    def forward_encoder(self, imgs, mask_ratio, noise=None):
        return self.encoder(imgs, mask_ratio, self.mask_token, noise)


class LayerNorm2d(nn.Cell):
    """LocalMIM's channels-first ``LayerNorm`` (parameters ``weight``/``bias``, as the torch keys)."""

    def __init__(self, normalized_shape: int, eps: float = 1e-6):
        super().__init__()
        self.weight = Parameter(Tensor(np.ones(normalized_shape, np.float32)), name="weight")
        self.bias = Parameter(Tensor(np.zeros(normalized_shape, np.float32)), name="bias")
        self.eps = eps

    def construct(self, x):
        u = x.mean(1, keep_dims=True)
        s = ((x - u) ** 2).mean(1, keep_dims=True)
        x = (x - u) / ops.sqrt(s + self.eps)
        return self.weight.reshape(1, -1, 1, 1) * x + self.bias.reshape(1, -1, 1, 1)


def _conv_t(in_ch: int, out_ch: int) -> nn.Conv2dTranspose:
    bound = 1.0 / math.sqrt(out_ch * 4)     # torch's default for ConvTranspose2d (fan_in from weight dim 1)
    return nn.Conv2dTranspose(in_ch, out_ch, 2, 2, pad_mode="valid", has_bias=True, weight_init=Uniform(bound),
                              bias_init=Uniform(bound))


def _conv1x1(in_ch: int, out_ch: int) -> nn.Conv2d:
    bound = 1.0 / math.sqrt(in_ch)
    return nn.Conv2d(in_ch, out_ch, 1, has_bias=True, weight_init=Uniform(bound), bias_init=Uniform(bound))


class _AvgPool2(nn.Cell):
    def construct(self, x):
        b, c, h, w = x.shape
        return x.reshape(b, c, h // 2, 2, w // 2, 2).mean((3, 5))


def _pred_head(embed_dim: int, out_dim: int, scale: float) -> nn.SequentialCell:
    if scale == 4.0:
        layers = [_conv_t(embed_dim, embed_dim // 2), LayerNorm2d(embed_dim // 2), GELU(),
                  _conv_t(embed_dim // 2, embed_dim // 4)]
        hidden = embed_dim // 4
    elif scale == 2.0:
        layers, hidden = [_conv_t(embed_dim, embed_dim // 2)], embed_dim // 2
    elif scale == 1.0:
        layers, hidden = [], embed_dim
    elif scale == 0.5:
        layers, hidden = [_AvgPool2()], embed_dim
    else:
        raise ConfigError(f"scale {scale} is not supported (4, 2, 1 or 0.5)")
    return nn.SequentialCell(layers + [_conv1x1(hidden, out_dim)])


class MAEDecoder(nn.Cell):
    """LocalMIM's ``MAE_Decoder`` (see ``torch_ref.mim.MAEDecoder``)."""

    def __init__(self, inp_dim: int, embed_dim: int = 256, out_dim: int = 27, scale: float = 1.0,
                 num_patches: int = 196, depth: int = 1, num_heads: int = 8, mlp_ratio: float = 4.0):
        super().__init__()
        self.num_patches = num_patches
        self.side = int(num_patches ** .5)
        self.embed = _xavier_dense(inp_dim, embed_dim)
        self.mask_token = _normal((1, 1, embed_dim), "mask_token")
        self.pos_embed = _fixed_pos_embed(embed_dim, self.side)
        self.blocks = nn.CellList([Block(embed_dim, num_heads, mlp_ratio, True) for _ in range(depth)])
        self.norm = layer_norm(embed_dim)
        self.pred = _pred_head(embed_dim, out_dim, scale)

    def construct(self, x, ids_restore):
        x = self.embed(x)
        b, n, d = x.shape
        tokens = ops.broadcast_to(self.mask_token, (b, ids_restore.shape[1] + 1 - n, d))
        x_ = ops.concat((x[:, 1:], tokens), axis=1)
        x_ = ops.gather_elements(x_, 1, ops.broadcast_to(ids_restore.expand_dims(-1), (b, ids_restore.shape[1], d)))
        x = ops.concat((x[:, :1], x_), axis=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        x = self.pred(x[:, 1:].swapaxes(1, 2).reshape(b, d, self.side, self.side))
        return x.reshape(b, x.shape[1], -1).swapaxes(1, 2)


def rgb_hog(enc: HOGLayer, imgs: Tensor) -> Tensor:
    """A LocalMIM HOG target: (B, h·w, 3·nbins), the R, G, B histograms of ``enc``."""
    feat = ops.concat((enc(imgs[:, 0:1]), enc(imgs[:, 1:2]), enc(imgs[:, 2:3])), axis=1)
    b, c, h, w = feat.shape
    return feat.reshape(b, c, h * w).swapaxes(1, 2)


class LocalMIMViT(nn.Cell):
    """LocalMIM's ViT pretraining model (see ``torch_ref.mim.LocalMIMViT``): same constructor and
    ``construct(imgs, mask_ratio=0.75, noise=None, return_levels=False)``."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 1024,
                 depth: int = 24, num_heads: int = 16, decoder_embed_dim: int = 512, decoder_depth: int = 1,
                 decoder_num_heads: int = 16, mlp_ratio: float = 4.0, hog_nbins: int = 9, hog_bias: bool = False):
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = _normal((1, 1, embed_dim), "cls_token")
        self.pos_embed = _fixed_pos_embed(embed_dim, self.patch_embed.grid_size[0])
        self.blocks = nn.CellList([Block(embed_dim, num_heads, mlp_ratio, True) for _ in range(depth)])
        self.ID = _spec.localmim_taps(depth)
        self.taps = tuple(self.ID.index(i) if i in self.ID else -1 for i in range(depth))   # block -> norm index
        self.scale = tuple(_spec.LOCALMIM_SCALES)
        self.norm = nn.CellList([layer_norm(embed_dim) for _ in self.ID])
        self.decoder = nn.CellList([
            MAEDecoder(embed_dim, decoder_embed_dim, in_chans * hog_nbins, s, num_patches, decoder_depth,
                       decoder_num_heads, mlp_ratio) for s in self.scale])
        self.hog_enc = nn.CellList([HOGLayer(hog_nbins, k, hog_bias) for k in _spec.LOCALMIM_POOLS])
        for _, cell in self.cells_and_names():
            if isinstance(cell, nn.Dense):
                cell.weight.set_data(initializer("xavier_uniform", cell.weight.shape, ms.float32))
                cell.bias.set_data(initializer("zeros", cell.bias.shape, ms.float32))
        _init_patch_embed(self.patch_embed)

    def hog(self, imgs, k: int):
        return rgb_hog(self.hog_enc[k], imgs)

    def forward_encoder(self, x, mask_ratio, noise=None):
        x = self.patch_embed(x) + self.pos_embed[:, 1:]
        x, mask, ids_restore = random_masking(x, mask_ratio, noise)
        cls = ops.broadcast_to(self.cls_token + self.pos_embed[:, :1], (x.shape[0], -1, -1))
        x = ops.concat((cls, x), axis=1)
        latent = []
        i = 0
        for blk in self.blocks:
            x = blk(x)
            if self.taps[i] >= 0:
                latent.append(self.norm[self.taps[i]](x))
            i += 1
        return latent, mask, ids_restore

    def forward_loss(self, imgs, pred, mask):
        levels = []
        for k in range(len(pred)):
            m = recal_mask(mask, self.scale[k])
            levels.append((((pred[k] - self.hog(imgs, k)) ** 2).mean(-1) * m).sum() / m.sum())
        return ops.stack(levels)

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Nothing: no epoch-dependent state (the engine's per-epoch hook)."""

    def construct(self, imgs, mask_ratio=0.75, noise=None, return_levels=False):
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = []
        for i in range(len(latent)):
            pred.append(self.decoder[i](latent[i], ids_restore))
        levels = self.forward_loss(imgs, pred, mask)
        loss = levels.sum()
        if return_levels:
            return loss, levels
        return loss


# ------------------------------------------------------------------------- LocalMIM Swin (Swin/models_mim.py)
# Mirrors the torch section (see ``torch_ref.mim.LocalMIMSwin``): the visible tokens' geometry is computed in the
# graph from the visible unit indices, so one compiled graph serves every mask (all shapes are static).

def window_geometry(coords: Tensor, window: int, shift: int) -> tuple[Tensor, Tensor]:
    """``(index (N, N) int32, same (N, N) float32 0/1)`` for the tokens at ``coords`` (N, 2) int32."""
    group = (coords + (window - shift) % window) // window
    same = ops.logical_and(group[:, None, 0] == group[None, :, 0], group[:, None, 1] == group[None, :, 1])
    rel = coords[:, None] - coords[None] + (window - 1)
    index = rel[..., 0] * (2 * window - 1) + rel[..., 1]
    return ops.select(same, index, ops.zeros_like(index)), ops.cast(same, ms.float32)


class VisibleWindowAttention(WindowAttention):
    """GreenMIM's window attention over the visible tokens, dense masked form (see the torch twin)."""

    def construct(self, x, index, same):
        b, n, c = x.shape
        q, k, v = (t.reshape(b, n, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)
                   for t in ops.split(self.qkv(x), c, axis=-1))
        attn = ops.matmul(q * self.scale, k.swapaxes(-2, -1))
        bias = ops.gather(self.relative_position_bias_table, index.reshape(-1), 0).reshape(n, n, -1)
        attn = attn + (bias * same.expand_dims(-1)).transpose(2, 0, 1).expand_dims(0)
        attn = attn + (1.0 - same) * swin_spec.MASK_VALUE
        attn = ops.softmax(attn, axis=-1)
        return self.proj(ops.matmul(attn, v).transpose(0, 2, 1, 3).reshape(b, n, c))


class VisibleSwinBlock(nn.Cell):
    """Upstream ``SwinTransformerBlock`` on the visible tokens."""

    def __init__(self, dim: int, window: int, num_heads: int, mlp_ratio: float, eps: float):
        super().__init__()
        self.norm1 = swin_layer_norm(dim, eps)
        self.attn = VisibleWindowAttention(dim, (window, window), num_heads)
        self.norm2 = swin_layer_norm(dim, eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def construct(self, x, index, same):
        x = x + self.attn(self.norm1(x), index, same)
        return x + self.mlp(self.norm2(x))


class UnitPatchMerging(PatchMerging):
    """Upstream ``PatchMerging`` on unit-ordered tokens, (dy, dx) concatenation order (see the torch twin)."""

    def construct(self, x, unit: int):
        b, n, c = x.shape
        h = unit // 2
        x = x.reshape(b, -1, h, 2, h, 2, c).transpose(0, 1, 2, 4, 3, 5, 6).reshape(b, n // 4, 4 * c)
        return self.reduction(self.norm(x))


class VisibleSwinStage(nn.Cell):
    """Upstream ``BasicLayer`` (see the torch twin)."""

    def __init__(self, dim: int, resolution: tuple[int, int], depth: int, num_heads: int, window_size: int,
                 mlp_ratio: float, downsample: bool, eps: float, units: int):
        super().__init__()
        self.window, shift = swin_spec.block_window(resolution, window_size, window_size // 2)
        self.shifts = tuple(0 if i % 2 == 0 else shift for i in range(depth))
        self.shift = shift
        self.blocks = nn.CellList([VisibleSwinBlock(dim, self.window, num_heads, mlp_ratio, eps)
                                   for _ in range(depth)])
        self.downsample = UnitPatchMerging(resolution, dim, eps) if downsample else None
        self.unit = resolution[0] // units

    def construct(self, x, coords):
        index, same = window_geometry(coords, self.window, 0)
        index_s, same_s = index, same
        if self.shift:
            index_s, same_s = window_geometry(coords, self.window, self.shift)
        i = 0
        for blk in self.blocks:
            if self.shifts[i]:
                x = blk(x, index_s, same_s)
            else:
                x = blk(x, index, same)
            i += 1
        if self.downsample is not None:
            x = self.downsample(x, self.unit)
        return x


class VisibleSwinEncoder(nn.Cell):
    """Upstream ``SwinTransformer`` of ``Swin/models_mim.py`` (see the torch twin); the geometry tables are
    constants, not parameters."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, depths: Sequence[int],
                 num_heads: Sequence[int], window_size: int, mlp_ratio: float, eps: float = _spec.LN_EPS):
        super().__init__()
        units = _spec.LOCALMIM_SWIN_UNITS
        self.patch_embed = NormedPatchEmbed(img_size, patch_size, in_chans, embed_dim, eps)
        grid = self.patch_embed.grid_size[0]
        self.layers = nn.CellList([
            VisibleSwinStage(embed_dim * 2 ** i, stage_resolution(self.patch_embed.img_size, patch_size, i),
                             depths[i], num_heads[i], window_size, mlp_ratio, i < len(depths) - 1, eps, units)
            for i in range(len(depths))])
        self.norm = nn.CellList([swin_layer_norm(embed_dim * k, eps) for k in _spec.LOCALMIM_SWIN_DIMS])
        gather, coords = _spec.localmim_swin_geometry(grid, len(depths), units)
        self.gather = Tensor(gather)
        self.coords = tuple(Tensor(c) for c in coords)

    def construct(self, x, visible):
        x = self.patch_embed(x)
        x = ops.gather(x, ops.gather(self.gather, visible, 0).reshape(-1), 1)
        latent = []
        i = 0
        for layer in self.layers:
            x = layer(x, ops.gather(self.coords[i], visible, 0).reshape(-1, 2))
            latent.append(self.norm[i](x))
            i += 1
        return latent


class SwinMIMDecoder(nn.Cell):
    """Upstream ``ViT_Decoder`` (see the torch twin)."""

    def __init__(self, inp_dim: int, embed_dim: int, out_dim: int, num_patches: int, depth: int, num_heads: int,
                 mlp_ratio: float):
        super().__init__()
        self.embed = _xavier_dense(inp_dim, embed_dim)
        self.mask_token = _normal((1, 1, embed_dim), "mask_token")
        self.pos_embed = Parameter(Tensor(_spec.sincos_pos_embed(embed_dim, int(num_patches ** .5), cls_token=False)),
                                   name="pos_embed", requires_grad=False)
        self.blocks = nn.CellList([Block(embed_dim, num_heads, mlp_ratio, True) for _ in range(depth)])
        self.norm = layer_norm(embed_dim)
        self.pred = _xavier_dense(embed_dim, out_dim)
        self.units = _spec.LOCALMIM_SWIN_UNITS
        self.unit = int(num_patches ** .5) // self.units
        _xavier_dense_cells(self)

    def construct(self, x, ids_restore):
        x = self.embed(x)
        b, n, d = x.shape
        length = ids_restore.shape[1]
        x = ops.concat((x, ops.broadcast_to(self.mask_token, (b, length - n, d))), axis=1)
        x = ops.gather_elements(x, 1, ops.broadcast_to(ids_restore.expand_dims(-1), (b, length, d)))
        u, w = self.units, self.unit
        x = x.reshape(b, u, u, w, w, d).swapaxes(2, 3).reshape(b, length, d) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.pred(self.norm(x))


class LocalMIMSwin(nn.Cell):
    """LocalMIM's Swin pretraining model (see ``torch_ref.mim.LocalMIMSwin``): same constructor and
    ``construct(imgs, mask_ratio=0.75, noise=None, return_levels=False)``."""

    def __init__(self, img_size: int = 224, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96,
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: int = 7, mlp_ratio: float = 4.0, decoder_embed_dim: int = 256, decoder_depth: int = 1,
                 decoder_num_heads: int = 16, target: str = "HOG", hog_nbins: int = 9, hog_bias: bool = False,
                 norm_pix_loss: bool = True):
        super().__init__()
        _spec.check_localmim_swin(img_size, patch_size, depths, target)
        self.encoder = VisibleSwinEncoder(img_size, patch_size, in_chans, embed_dim, depths, num_heads, window_size,
                                          mlp_ratio)
        _init_patch_embed(self.encoder.patch_embed)
        _xavier_dense_cells(self.encoder)
        units = _spec.LOCALMIM_SWIN_UNITS ** 2
        self.decoder = nn.CellList([
            SwinMIMDecoder(embed_dim * s, decoder_embed_dim // k,
                           in_chans * (hog_nbins if target == "HOG" else p * p), units * t * t, decoder_depth,
                           decoder_num_heads, mlp_ratio)
            for s, k, t, p in zip(_spec.LOCALMIM_SWIN_DIMS, (2, 1, 1, 1), _spec.LOCALMIM_SWIN_SCALES,
                                  _spec.LOCALMIM_SWIN_POOLS)])
        self.hog_enc = None
        if target == "HOG":
            self.hog_enc = nn.CellList([HOGLayer(hog_nbins, k, hog_bias) for k in _spec.LOCALMIM_SWIN_POOLS])
        self.target, self.norm_pix_loss = target, norm_pix_loss
        self.units = units
        self.scales = tuple(_spec.LOCALMIM_SWIN_SCALES)
        self.pools = tuple(_spec.LOCALMIM_SWIN_POOLS)
        self.order = Tensor(np.arange(units, dtype=np.float32))
        self.orders = tuple(Tensor(np.arange(units * t * t, dtype=np.float32)) for t in self.scales)

    def target_of(self, imgs, k: int):
        """Target ``k`` (B, L_k, out_dim)."""
        if self.target == "HOG":
            return rgb_hog(self.hog_enc[k], imgs)
        p = self.pools[k]
        b, c, h, w = imgs.shape
        x = imgs.reshape(b, c, h // p, p, w // p, p).transpose(0, 2, 4, 3, 5, 1).reshape(b, -1, p * p * c)
        if self.norm_pix_loss:
            mean = x.mean(-1, keep_dims=True)
            var = ((x - mean) ** 2).sum(-1, keepdims=True) / (p * p * c - 1)
            x = (x - mean) / (var + 1e-6) ** .5
        return x

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Nothing: no epoch-dependent state (the engine's per-epoch hook)."""

    def no_weight_decay(self) -> set[str]:
        """Upstream's ``skip_list`` (``run_pretrain.py``): the bias tables and the mask tokens."""
        return {p.name for p in self.get_parameters() if "position_bias" in p.name or "token" in p.name}

    def construct(self, imgs, mask_ratio=0.75, noise=None, return_levels=False):
        b = imgs.shape[0]
        n_masked = _spec.localmim_swin_masked(mask_ratio, self.units)
        if noise is None:
            noise = ops.rand(b, self.units, dtype=ms.float32)
        masked = ops.cast(ops.argsort(ops.argsort(noise[0], axis=-1), axis=-1) < n_masked, ms.float32)
        visible = ops.argsort(masked * self.units + self.order, axis=-1)[:self.units - n_masked]
        latent = self.encoder(imgs, visible)
        levels = []
        for k in range(len(latent)):
            t = self.scales[k]
            hidden = ops.broadcast_to(masked.reshape(-1, 1), (self.units, t * t)).reshape(-1)      # unit order
            key = hidden * hidden.shape[0] + self.orders[k]
            ids_restore = ops.broadcast_to(ops.argsort(ops.argsort(key, axis=-1), axis=-1).expand_dims(0),
                                           (b, hidden.shape[0]))
            pred = self.decoder[k](latent[k], ids_restore)
            m = recal_mask(ops.broadcast_to(masked.expand_dims(0), (b, self.units)), float(t))
            levels.append((((pred - self.target_of(imgs, k)) ** 2).mean(-1) * m).sum() / m.sum())
        levels = ops.stack(levels)
        loss = levels.sum()
        if return_levels:
            return loss, levels
        return loss


class FinetuneViT(_TimmViT):
    """MAE's fine-tune ViT with global pooling (see ``torch_ref.mim.FinetuneViT``)."""

    output_fmt = "NC"

    def __init__(self, num_classes: int = 1000, img_size: int = 224, patch_size: int = 16, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, global_pool: bool = True,
                 drop_path_rate: float = 0.1):
        super().__init__(num_classes, img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio,
                         drop_path_rate=drop_path_rate)
        self.global_pool = global_pool
        if global_pool:
            self.fc_norm = layer_norm(embed_dim)
            del self.norm

    def forward_features(self, x):
        cls = ops.broadcast_to(self.cls_token, (x.shape[0], -1, -1))
        x = ops.concat((cls, self.patch_embed(x)), axis=1) + self.pos_embed
        x = self.blocks(x)
        if self.global_pool:
            return self.fc_norm(x[:, 1:].mean(1))
        return self.norm(x)[:, 0]

    def forward_head(self, x, pre_logits: bool = False):
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)


class FinetuneSwin(SwinTransformer):
    """LocalMIM's fine-tune Swin: eps 1e-6 but in ``norm2``, the final ``norm`` after the pooling (see
    ``torch_ref.mim.FinetuneSwin``)."""

    output_fmt = "NC"

    def __init__(self, num_classes: int = 1000, eps: float = _spec.LN_EPS, **kwargs: Any):
        super().__init__(num_classes, eps=eps, **kwargs)
        self.norm = self.fc_norm
        del self.fc_norm

    def no_weight_decay(self) -> set[str]:
        return set()

    def group_matcher(self, coarse: bool = False) -> dict:
        return swin_spec.group_matcher(coarse, final_norm=None)

    def forward_features(self, x):
        return self.norm(self.forward_tokens(x).mean(1))

    def forward_head(self, x, pre_logits: bool = False):
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)


def _tagged(model, factory: str, kwargs: dict):
    model.mim_factory, model.build_kwargs = factory, dict(kwargs)   # the torch twin for the name map
    return model


def fastmim_vit_base_patch16(**overrides: Any) -> MaskedAutoencoderViT:
    """FastMIM ViT-B/16 pretraining model (see ``torch_ref.mim.fastmim_vit_base_patch16``)."""
    return _tagged(MaskedAutoencoderViT(**{**_spec.FASTMIM_VIT_BASE, **overrides}), "fastmim_vit_base_patch16",
                   overrides)


def fastmim_swin_base_patch4(**overrides: Any) -> PretrainSwin:
    """FastMIM Swin-B pretraining model (see ``torch_ref.mim.fastmim_swin_base_patch4``)."""
    return _tagged(PretrainSwin(**{**_spec.FASTMIM_SWIN_BASE, **overrides}), "fastmim_swin_base_patch4", overrides)


def localmim_vit_base_patch16(**overrides: Any) -> LocalMIMViT:
    """LocalMIM ViT-B/16 pretraining model (see ``torch_ref.mim.localmim_vit_base_patch16``)."""
    return _tagged(LocalMIMViT(**{**_spec.LOCALMIM_VIT_BASE, **overrides}), "localmim_vit_base_patch16", overrides)


def localmim_swin_base_patch4(**overrides: Any) -> LocalMIMSwin:
    """LocalMIM Swin-B pretraining model (see ``torch_ref.mim.localmim_swin_base_patch4``)."""
    return _tagged(LocalMIMSwin(**{**_spec.LOCALMIM_SWIN_BASE, **overrides}), "localmim_swin_base_patch4", overrides)


def fastmim_swin_large_patch4(**overrides: Any) -> PretrainSwin:
    """FastMIM Swin-L pretraining model (see ``torch_ref.mim.fastmim_swin_large_patch4``)."""
    return _tagged(PretrainSwin(**{**_spec.FASTMIM_SWIN_LARGE, **overrides}), "fastmim_swin_large_patch4", overrides)


def localmim_vit_small_patch16(**overrides: Any) -> LocalMIMViT:
    """LocalMIM ViT-S/16 pretraining model (see ``torch_ref.mim.localmim_vit_small_patch16``)."""
    return _tagged(LocalMIMViT(**{**_spec.LOCALMIM_VIT_SMALL, **overrides}), "localmim_vit_small_patch16", overrides)


def localmim_vit_large_patch16(**overrides: Any) -> LocalMIMViT:
    """LocalMIM ViT-L/16 pretraining model (see ``torch_ref.mim.localmim_vit_large_patch16``)."""
    return _tagged(LocalMIMViT(**{**_spec.LOCALMIM_VIT_LARGE, **overrides}), "localmim_vit_large_patch16", overrides)


def localmim_swin_base_patch4_win14(**overrides: Any) -> LocalMIMSwin:
    """LocalMIM Swin-B window-14 pretraining model (see ``torch_ref.mim.localmim_swin_base_patch4_win14``)."""
    return _tagged(LocalMIMSwin(**{**_spec.LOCALMIM_SWIN_BASE_WIN14, **overrides}), "localmim_swin_base_patch4_win14",
                   overrides)


def localmim_swin_large_patch4_win14(**overrides: Any) -> LocalMIMSwin:
    """LocalMIM Swin-L window-14 pretraining model (see ``torch_ref.mim.localmim_swin_large_patch4_win14``)."""
    return _tagged(LocalMIMSwin(**{**_spec.LOCALMIM_SWIN_LARGE_WIN14, **overrides}),
                   "localmim_swin_large_patch4_win14", overrides)


def vit_base_patch16(num_classes: int = 1000, **overrides: Any) -> FinetuneViT:
    """MAE ``models_vit.vit_base_patch16`` with global pool and drop path 0.1 (see the torch twin)."""
    return _tagged(FinetuneViT(num_classes, **{**_spec.VIT_BASE_FINETUNE, **overrides}), "vit_base_patch16",
                   {"num_classes": num_classes, **overrides})


def swin_base_patch4_win7(num_classes: int = 1000, **overrides: Any) -> FinetuneSwin:
    """LocalMIM's fine-tune Swin-B, window 7 (see ``torch_ref.mim.swin_base_patch4_win7``)."""
    return _tagged(FinetuneSwin(num_classes, **{**_spec.LOCALMIM_SWIN_BASE_FINETUNE, **overrides}),
                   "swin_base_patch4_win7", {"num_classes": num_classes, **overrides})


def swin_base_patch4_win14(num_classes: int = 1000, **overrides: Any) -> FinetuneSwin:
    """LocalMIM's fine-tune Swin-B, window 14 (see ``torch_ref.mim.swin_base_patch4_win14``)."""
    return _tagged(FinetuneSwin(num_classes, **{**_spec.LOCALMIM_SWIN_BASE_WIN14_FINETUNE, **overrides}),
                   "swin_base_patch4_win14", {"num_classes": num_classes, **overrides})


def swin_large_patch4_win14(num_classes: int = 1000, **overrides: Any) -> FinetuneSwin:
    """LocalMIM's fine-tune Swin-L, window 14 (see ``torch_ref.mim.swin_large_patch4_win14``)."""
    return _tagged(FinetuneSwin(num_classes, **{**_spec.LOCALMIM_SWIN_LARGE_FINETUNE, **overrides}),
                   "swin_large_patch4_win14", {"num_classes": num_classes, **overrides})


def _name_map(model):
    """The converter's computed torch <-> MindSpore name map of ``model`` (its torch twin built on the meta device;
    needs torch, imported here only): a model of this module by its factory, any other registered model (a Swin
    to fine-tune) by the registry's rule."""
    import torch
    import torch_ref.mim as tm
    from convert.mapping import build_name_map
    factory = getattr(model, "mim_factory", None)
    if factory is None:                    # built by create_model
        cfg = getattr(model, "pretrained_cfg", None)
        if cfg is None:
            raise CheckpointError("build the model with create_model(...) or ms_models.mim.<factory>(...) to load "
                                  "a torch checkpoint")
        if cfg.name not in tm.__all__:
            from convert.api import model_name_map
            return model_name_map(model)
        factory = cfg.name
    kwargs = dict(getattr(model, "build_kwargs", {}))
    if isinstance(model, (FinetuneViT, FinetuneSwin)):
        kwargs["num_classes"] = model.num_classes
    with torch.device("meta"):
        twin = getattr(tm, factory)(**kwargs)
    return build_name_map(twin, model, factory)


def _read_model_state(path) -> dict:
    from convert.io import read_checkpoint   # weights_only torch.load, argparse.Namespace allow-listed
    return read_checkpoint(path)


def load_official(model, path: str | os.PathLike):
    """Strictly load an official (torch) pretraining checkpoint into ``model`` through the name map; a missing,
    extra or mis-shaped key is a one-line :class:`specs.errors.KeyMismatchError`."""
    from convert.mapping import torch_to_ms
    from convert.state import assign_ms_state
    return assign_ms_state(model, torch_to_ms(_read_model_state(path), _name_map(model)), str(path))


def load_pretrained(model: nn.Cell, path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Fine-tune initialisation as upstream (see ``torch_ref.mim.load_pretrained``) of a :class:`FinetuneViT` or a
    registered Swin, from an official file or an engine checkpoint (MindSpore names:
    :func:`convert.api.mim_torch_state`); returns ``(missing, unexpected)`` in torch key names."""
    from convert.api import mim_torch_state
    nm = _name_map(model)
    state = mim_torch_state(path)
    state = (_spec.localmim_swin_finetune_state(state) if isinstance(model, FinetuneSwin)
             else _spec.finetune_state(state, nm.torch_shapes, model.patch_embed.num_patches))
    missing, unexpected = _spec.split_keys(state, nm.torch_shapes, str(path))
    # set each parameter directly: load_param_into_net(strict_load=False) retries unmatched names with a prefix
    # removed ('patch_embed.norm.gamma' -> 'norm.gamma'), which loads the wrong tensor into a missing ``norm``
    params = dict(model.parameters_and_names())
    for k, v in state.items():
        if k in nm.torch_to_ms:
            param = params[nm.torch_to_ms[k]]
            param.set_data(Tensor(np.asarray(v), param.dtype))
    return missing, unexpected


from ._registry import registry  # noqa: E402

registry.register_family("fastmim", MaskedAutoencoderViT)
registry.register_family("fastmim_swin", PretrainSwin)
registry.register_family("localmim", LocalMIMViT)
registry.register_family("localmim_swin", LocalMIMSwin)
registry.register_family("mim_vit", FinetuneViT)
registry.register_family("mim_swin", FinetuneSwin)
