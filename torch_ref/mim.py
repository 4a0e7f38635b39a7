"""Masked-image-modelling pieces of FastMIM (arXiv 2212.06593) and LocalMIM (arXiv 2303.05251): the HOG targets
and the masking helpers, as the official ggjy/FastMIM.pytorch@d4eea0d (``util/hog_layer.py``,
``mim_vit_pretrain.py``) and Haoqing-Wang/LocalMIM@314a6e5 (``ViT/models_mim.py``) compute them. Mirrors
``ms_models/mim.py`` name for name.

HOG (both papers §3, "HOG as the target", after MaskFeat): per pixel and colour channel the reflect-padded
cross-correlation with ``kx = [[1,0,-1],[2,0,-2],[1,0,-1]]`` and ``ky = kxᵀ``, ``mag = sqrt(gx² + gy²)``, the
hard bin ``floor(atan2(gx, gy) / π · nbins) mod nbins`` (unsigned orientation), a per-cell histogram (FastMIM
sums the ``pool×pool`` cell, LocalMIM averages it) and an L2 normalisation of each cell over its bins,
``x / max(‖x‖, 1e-12)``. The gradients are computed as separable slice differences, so on the reflected borders
gx (left/right) and gy (top/bottom) are exactly 0, as upstream's convolution gives there; the phase is scaled as
``phase / π * nbins`` in float32 in that order, which keeps those pixels on upstream's side of the bin edge.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HOGLayerC", "HOGLayer", "SobelConv", "sobel_gradients", "orientation_bins", "block_masking",
           "random_masking", "recal_mask"]

SOBEL_X = ((1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0))   # kx; ky = kxᵀ
NORM_EPS = 1e-12    # F.normalize's eps


def sobel_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gx, gy)`` of every channel of ``x`` (B, C, H, W): reflect padding by 1, then the cross-correlation with
    ``kx`` and ``ky = kxᵀ`` (``gx = left − right``, ``gy = top − bottom``), as separable smoothing ``[1, 2, 1]``
    and a slice difference. A reflected border column (row) subtracts two bitwise-equal sums, so gx (gy) is
    exactly 0 there whatever the input."""
    p = F.pad(x, (1, 1, 1, 1), mode="reflect")
    rows = p[..., :-2, :] + 2 * p[..., 1:-1, :] + p[..., 2:, :]       # [1, 2, 1] down the rows
    cols = p[..., :, :-2] + 2 * p[..., :, 1:-1] + p[..., :, 2:]       # [1, 2, 1] along the columns
    return rows[..., :, :-2] - rows[..., :, 2:], cols[..., :-2, :] - cols[..., 2:, :]


def orientation_bins(gx: torch.Tensor, gy: torch.Tensor, nbins: int,
                     max_angle: float = math.pi) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mag, bin)``: ``sqrt(gx² + gy²)`` and ``floor(atan2(gx, gy) / max_angle * nbins) mod nbins`` (int64),
    the float32 operations in upstream's order (a precomputed ``nbins / π`` moves the exact-edge pixels)."""
    mag = torch.sqrt(gx * gx + gy * gy)
    phase = torch.atan2(gx, gy) / max_angle * nbins
    return mag, torch.floor(phase).long() % nbins


def _histogram(mag: torch.Tensor, bins: torch.Tensor, nbins: int, pool: int, mean: bool) -> torch.Tensor:
    """Per-cell orientation histograms (B, C, nbins, H//pool, W//pool) of ``mag`` (B, C, H, W) in ``bins``; the
    trailing rows and columns that do not fill a cell are dropped, as ``unfold`` / ``AvgPool2d`` do."""
    b, c, h, w = mag.shape
    hp, wp = h // pool, w // pool
    levels = torch.arange(nbins, device=bins.device).view(1, 1, nbins, 1, 1)
    hist = (bins.unsqueeze(2) == levels).to(mag.dtype) * mag.unsqueeze(2)            # scatter of one pixel
    hist = hist[..., :hp * pool, :wp * pool].reshape(b, c, nbins, hp, pool, wp, pool)
    return hist.mean(dim=(4, 6)) if mean else hist.sum(dim=(4, 6))


def _l2_normalize(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x / max(‖x‖₂, 1e-12)`` along ``dim`` (``F.normalize``)."""
    return x / torch.sqrt((x * x).sum(dim, keepdim=True)).clamp_min(NORM_EPS)


class HOGLayerC(nn.Module):
    """FastMIM's HOG target (paper §3.2; official ``util/hog_layer.py::HOGLayerC``, from MaskFeat): (B, 3, H, W)
    -> (B, 3·nbins, H//pool, W//pool), the R bins, then G, then B; cell histograms are **sums**, L2-normalised
    per cell and channel when ``norm_pix_loss``. ``weight_x`` / ``weight_y`` are upstream's (3, 1, 3, 3) kernel
    buffers; the forward uses the same fixed kernels as exact slice differences (:func:`sobel_gradients`).
    Upstream's ``gaussian_window`` (always 0 in FastMIM) is not kept."""

    def __init__(self, nbins: int = 9, pool: int = 8, norm_pix_loss: bool = True) -> None:
        super().__init__()
        self.nbins = nbins
        self.pool = pool
        self.pi = math.pi
        self.norm_pix_loss = norm_pix_loss
        weight_x = torch.tensor(SOBEL_X).view(1, 1, 3, 3).repeat(3, 1, 1, 1)
        self.register_buffer("weight_x", weight_x)
        self.register_buffer("weight_y", weight_x.transpose(2, 3).contiguous())

    def orientation(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mag, bin)`` per pixel and channel, each (B, 3, H, W): the step part of the layer."""
        return orientation_bins(*sobel_gradients(x), self.nbins, self.pi)

    def histogram(self, mag: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
        """The output from the per-pixel ``(mag, bin)``: summed cells, optional L2 norm, channels flattened."""
        out = _histogram(mag, bins, self.nbins, self.pool, mean=False)
        if self.norm_pix_loss:
            out = _l2_normalize(out, 2)
        return out.flatten(1, 2)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.histogram(*self.orientation(x))


class SobelConv(nn.Module):
    """The frozen ``conv`` of LocalMIM's ``HOGLayer`` (upstream an ``nn.Conv2d(1, 2, 3, padding=1,
    padding_mode='reflect', bias=bias)``): ``weight`` (2, 1, 3, 3) is the (kx, ky) pair and ``bias`` (2,), when
    present, starts at ``nn.Conv2d``'s default U(−1/3, 1/3) as upstream leaves it (checkpoints carry the values
    that count). (B, 1, H, W) -> (B, 2, H, W); computed as :func:`sobel_gradients` plus the bias."""

    def __init__(self, bias: bool = False) -> None:
        super().__init__()
        kx = torch.tensor(SOBEL_X)
        self.weight = nn.Parameter(torch.stack([kx, kx.t()])[:, None], requires_grad=False)
        if bias:
            self.bias = nn.Parameter(torch.empty(2).uniform_(-1 / 3, 1 / 3), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gxy = torch.cat(sobel_gradients(x), 1)
        return gxy if self.bias is None else gxy + self.bias.view(1, 2, 1, 1)


class HOGLayer(nn.Module):
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

    def orientation(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mag, bin)`` per pixel, each (B, 1, H, W): the step part of the layer."""
        if x.shape[1] != 1:
            raise ValueError(f"HOGLayer takes one channel (B, 1, H, W), got {tuple(x.shape)}")
        gxy = self.conv(x)
        return orientation_bins(gxy[:, :1], gxy[:, 1:], self.nbins, self.max_angle)

    def histogram(self, mag: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
        """The output from the per-pixel ``(mag, bin)``: averaged cells, L2-normalised over the bins."""
        return _l2_normalize(_histogram(mag, bins, self.nbins, self.pool, mean=True)[:, 0], 1)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.histogram(*self.orientation(x))


def block_masking(imgs: torch.Tensor, mask_ratio: float, img_size: int, block_size: int = 16, patch_size: int = 16,
                  noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """FastMIM's per-sample block masking (paper §3.1; official ``mim_vit_pretrain.py::
    mim_per_sample_block_masking``): ``(mask (B, 1, H, W), loss_mask (B, 1, img_size//patch_size, ...))``, int64,
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
        noise = torch.rand(batch, mask_size ** 2, device=imgs.device)
    ids_restore = torch.argsort(torch.argsort(noise, dim=1), dim=1)
    loss_mask = (ids_restore >= len_keep).long().reshape(batch, 1, mask_size, mask_size)
    mask = loss_mask.repeat_interleave(bw_ratio, dim=2).repeat_interleave(bw_ratio, dim=3)
    if block_size > patch_size:
        rep = block_size // patch_size
        loss_mask = loss_mask.repeat_interleave(rep, dim=2).repeat_interleave(rep, dim=3)
    return mask, loss_mask


def random_masking(x: torch.Tensor, mask_ratio: float,
                   noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's per-sample random masking, as LocalMIM uses it (official ``ViT/models_mim.py::random_masking``):
    ``(x_keep (N, len_keep, D), mask (N, L) float, ids_restore (N, L) int64)`` for ``x`` (N, L, D); the
    ``int(L·(1 − mask_ratio))`` tokens of smallest ``noise`` (N, L) (drawn U[0, 1) when None) are kept, in
    ascending noise order; ``mask`` is 1 for a removed token, in the original order."""
    n, length, dim = x.shape
    len_keep = int(length * (1 - mask_ratio))
    if noise is None:
        noise = torch.rand(n, length, device=x.device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_keep = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
    mask = (ids_restore >= len_keep).float()
    return x_keep, mask, ids_restore


def recal_mask(mask: torch.Tensor, scale: float) -> torch.Tensor:
    """LocalMIM's mask at the grid of one decoder scale (paper §3.2; official ``ViT/models_mim.py::recal_mask``):
    ``mask`` (B, L) on a square √L×√L token grid -> (B, L·scale²) float. ``scale ≥ 1``: nearest upsampling by
    ``int(scale)``; ``scale < 1``: the **mean** over each ``int(1/scale)``² group (multiples of 0.25 at 0.5)."""
    mask = mask.float()
    b, length = mask.shape
    h = int(length ** .5)
    if scale >= 1.:
        s = int(scale)
        return mask.reshape(b, h, 1, h, 1).expand(b, h, s, h, s).reshape(b, -1)
    s = int(1 / scale)
    return mask.reshape(b, h // s, s, h // s, s).transpose(2, 3).mean((-2, -1)).reshape(b, -1)


# ================================================================== pretraining models and fine-tuning (2.3, 2.4)
# FastMIM ``mim_vit_pretrain.py::MaskedAutoencoderViT`` (SimMIM-style: every token encoded, masked pixels replaced
# by a learnable RGB token), LocalMIM ``ViT/models_mim.py::MaskedAutoencoderViT`` (MAE-style: visible tokens only,
# four decoders reading blocks ``[1, 3, depth-3, depth-1]`` at scales 4, 2, 1, 0.5) and MAE's ``models_vit.py``
# fine-tune ViT with global pooling. The blocks are timm-0.3.2 ``Block``s (qkv bias, exact-erf GELU, LayerNorm eps
# 1e-6, scale head_dim^-0.5): the project's ViT ``Block``, whose keys are timm's.

import os  # noqa: E402
from functools import partial  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from specs import mim as _spec  # noqa: E402
from specs.errors import ConfigError, InputSizeError  # noqa: E402

from typing import Sequence  # noqa: E402

from specs import swin as swin_spec  # noqa: E402
from specs.swin import stage_resolution  # noqa: E402

from .layers import PatchEmbed  # noqa: E402
from .layers import Mlp  # noqa: E402
from .models.swin import (BasicLayer, NormedPatchEmbed, PatchMerging, SwinTransformer,  # noqa: E402
                          WindowAttention)
from .models.vit import Block, VisionTransformer as _TimmViT  # noqa: E402

__all__ += ["FastMIMBase", "MaskedAutoencoderViT", "MIMSwinEncoder", "PretrainSwin", "LocalMIMViT", "MAEDecoder",
            "LocalMIMSwin", "VisibleSwinEncoder", "SwinMIMDecoder", "localmim_swin_base_patch4",
            "LayerNorm2d", "FinetuneViT", "fastmim_vit_base_patch16", "fastmim_swin_base_patch4",
            "localmim_vit_base_patch16", "vit_base_patch16", "load_pretrained", "load_official", "hog_c",
            "fastmim_swin_large_patch4", "localmim_vit_small_patch16", "localmim_vit_large_patch16",
            "localmim_swin_base_patch4_win14", "localmim_swin_large_patch4_win14", "FinetuneSwin",
            "swin_base_patch4_win7", "swin_base_patch4_win14", "swin_large_patch4_win14"]

_LN = partial(nn.LayerNorm, eps=_spec.LN_EPS)


def hog_c(imgs: torch.Tensor, nbins: int = 9, pool: int = 8, norm_pix_loss: bool = True) -> torch.Tensor:
    """:class:`HOGLayerC` as a function (no buffers): FastMIM builds the layer inside every loss call, so its
    kernels are not part of the pretraining state dict."""
    with torch.no_grad():
        mag, bins = orientation_bins(*sobel_gradients(imgs), nbins, math.pi)
        out = _histogram(mag, bins, nbins, pool, mean=False)
        return (_l2_normalize(out, 2) if norm_pix_loss else out).flatten(1, 2)


def _fixed_pos_embed(dim: int, grid: int) -> nn.Parameter:
    """The frozen sin-cos table (1, 1 + grid², dim) with a zero class row (a ``requires_grad=False`` parameter)."""
    return nn.Parameter(torch.from_numpy(_spec.sincos_pos_embed(dim, grid)), requires_grad=False)


def _xavier_linears(module: nn.Module) -> None:
    """MAE's ``_init_weights``: xavier-uniform Linear weights, zero biases, LayerNorm (1, 0)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _init_patch_embed(patch_embed: PatchEmbed) -> None:
    w = patch_embed.proj.weight.data
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))


class FastMIMBase(nn.Module):
    """What FastMIM's pretraining models share (paper §3; official ``mim_vit_pretrain.py`` and
    ``mim_swin_pretrain.py``): ``forward(imgs, mask_ratio=0.75, noise=None) -> (loss, pred, mask)`` runs the
    subclass's ``forward_encoder`` (block masking, masked pixels replaced by ``mask_token`` (1, 3, 1, 1), the
    encoder; returns the latent tokens and the loss mask (B, 1, h, w), 1 = masked) and the light decoder
    (``decoder_embed``, the ``decoder_blocks``, ``decoder_norm``, ``decoder_pred``; the first
    ``num_prefix_tokens`` outputs dropped). The loss is the masked-token MSE to the HOG target
    (``HOGLayerC(9, 8, norm_pix_loss)``, each token's cells unfolded in (channel·bin, dy, dx) order) or, with
    ``mim_loss='l2'``, to the patchified pixels ((p, q, c) order; per-patch normalised with the unbiased variance
    when ``norm_pix_loss``); ``patch_size`` is the image side one output token covers."""

    num_prefix_tokens = 0

    def _check(self, mim_loss: str, decoder_depth: int, block_size: int, patch_size: int) -> None:
        if mim_loss not in ("HOG", "l2"):
            raise ConfigError(f"mim_loss must be 'HOG' or 'l2', not {mim_loss!r}")
        if decoder_depth < 1 or block_size < patch_size:
            raise ConfigError("FastMIM here needs decoder_depth >= 1 and block_size >= the token's patch "
                              f"({patch_size}), got decoder_depth={decoder_depth}, block_size={block_size}")

    def forward_decoder(self, x: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(x)
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, self.num_prefix_tokens:]

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, p²·3, h, w), channels in (p, q, c) order (upstream's, channel-first)."""
        p = self.patch_size
        b, c, hh, ww = imgs.shape
        x = imgs.reshape(b, c, hh // p, p, ww // p, p)
        return torch.einsum("nchpwq->npqchw", x).reshape(b, p * p * c, hh // p, ww // p)

    def forward_l2_loss(self, imgs, pred, mask):
        b, n, c = pred.shape
        side = int(n ** 0.5)
        pred = pred.transpose(-1, -2).reshape(b, c, side, side)
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            target = (target - target.mean(1, keepdim=True)) / (target.var(1, keepdim=True) + 1e-6) ** .5
        m = mask.to(pred.dtype)
        return (((pred - target) ** 2) * m).sum() / (m.sum() * c)

    def hog_target(self, imgs: torch.Tensor, side: int) -> torch.Tensor:
        """(B, L, 27·u²): each token's ``u × u`` HOG cells, (channel·bin, dy, dx) order."""
        t = hog_c(imgs, 9, 8, self.norm_pix_loss)
        b, ch, th, tw = t.shape
        u = th // side
        return t.reshape(b, ch, side, u, side, u).permute(0, 2, 4, 1, 3, 5).reshape(b, side * side, ch * u * u)

    def forward_hog_loss(self, imgs, pred, mask):
        b, n, c = pred.shape
        target = self.hog_target(imgs, int(n ** 0.5))
        m = mask.flatten(1).to(pred.dtype).unsqueeze(-1)
        return (((pred - target) ** 2) * m).sum() / (m.sum() * c)

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None):
        latent, mask = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent)
        loss = self.forward_hog_loss(imgs, pred, mask) if self.mim_loss == "HOG" else \
            self.forward_l2_loss(imgs, pred, mask)
        return loss, pred, mask


def _output_dim(mim_loss: str, patch_size: int, in_chans: int) -> int:
    """``decoder_pred``'s width: a token's HOG cells (pool 8, 9 bins, 3 channels) or its pixels."""
    return (patch_size // 8) ** 2 * 9 * 3 if mim_loss == "HOG" else patch_size ** 2 * in_chans


class MaskedAutoencoderViT(FastMIMBase):
    """FastMIM's ViT pretraining model (paper §3; official ``mim_vit_pretrain.py::MaskedAutoencoderViT``;
    :class:`FastMIMBase`): :func:`block_masking` with ``noise`` (B, (img_size//block_size)²), all tokens
    patch-embedded with the fixed sin-cos ``pos_embed`` and a class token, the blocks, ``norm``; decoder blocks of
    ``decoder_embed_dim // 32`` heads, no decoder position embedding, class token dropped. Upstream's branch for a
    block smaller than a patch (``decoder_depth=0``, ``block_size < patch_size``) is not supported."""

    num_prefix_tokens = 1

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 1024,
                 depth: int = 24, num_heads: int = 16, block_size: int = 16, decoder_embed_dim: int = 512,
                 decoder_depth: int = 8, mlp_ratio: float = 4.0, norm_pix_loss: bool = False, mim_loss: str = "l2"):
        super().__init__()
        self._check(mim_loss, decoder_depth, block_size, patch_size)
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        grid = self.patch_embed.grid_size[0]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = _fixed_pos_embed(embed_dim, grid)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, True) for _ in range(depth)])
        self.norm = _LN(embed_dim)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.decoder_blocks = nn.ModuleList([Block(decoder_embed_dim, decoder_embed_dim // 32, mlp_ratio, True)
                                             for _ in range(decoder_depth)])
        self.decoder_norm = _LN(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, _output_dim(mim_loss, patch_size, in_chans))
        self.img_size, self.patch_size, self.block_size = img_size, patch_size, block_size
        self.norm_pix_loss, self.mim_loss = norm_pix_loss, mim_loss
        _init_patch_embed(self.patch_embed)
        nn.init.normal_(self.cls_token, std=.02)
        nn.init.normal_(self.mask_token, std=.02)
        _xavier_linears(self)
        self.set_input_size(img_size)

    def set_input_size(self, side: int) -> None:
        """FastMIM-P's progressive resolution (paper §4.3, "pre-training resolution"; upstream's ``--mim_pt_size``
        sets a ``mim_pt_size`` attribute no model reads, so its ViT keeps the ``img_size`` grid and fails at other
        sizes): take ``side``-px inputs from now on, with the sin-cos table of the ``side // patch_size`` grid (the
        ``pos_embed`` parameter itself at ``img_size``; the table is fixed, so this is the model built for ``side``
        with the same weights) and ``block_size``-px blocks over the input (``side // block_size`` a side: the
        block keeps its pixel size, the masked fraction its ratio). The state dict does not change."""
        if side % self.block_size or side % self.patch_size:
            raise ConfigError(f"input side {side} must be a multiple of block_size {self.block_size} and "
                              f"patch_size {self.patch_size}")
        self.input_side = side
        self.register_buffer("pos_grid", None if side == self.img_size else torch.from_numpy(
            _spec.sincos_pos_embed(self.pos_embed.shape[-1], side // self.patch_size)), persistent=False)

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        if self.input_side == self.img_size:
            pos, tokens = self.pos_embed, self.patch_embed
        else:
            if imgs.shape[-1] != self.input_side:
                raise InputSizeError(f"input {imgs.shape[-2]}x{imgs.shape[-1]} does not match the model's input "
                                     f"size {self.input_side} (set_input_size)")
            pos, tokens = self.pos_grid, (lambda v: self.patch_embed.proj(v).flatten(2).transpose(1, 2))
        mask, loss_mask = block_masking(imgs, mask_ratio, self.input_side, self.block_size, self.patch_size, noise)
        x = imgs * (1 - mask) + mask * self.mask_token
        x = tokens(x) + pos[:, 1:]
        cls = (self.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), loss_mask


class MIMSwinEncoder(nn.Module):
    """FastMIM's Swin encoder (official ``mim_swin_pretrain.py::SwinTransformer``, SimMIM's): the Swin patch
    embedding and stages of :mod:`torch_ref.models.swin` (keys ``patch_embed``, ``layers``), the final ``norm``
    (LayerNorm eps 1e-5), no head. ``forward(x, mask_ratio, mask_token, noise)`` masks first: upstream's
    ``mim_block_masking`` is :func:`block_masking` at the total stride (32: the loss mask is per output token,
    repeated when ``block_size`` is larger), the masked pixels replaced by ``mask_token``. Returns
    ``(tokens (B, L, C), loss_mask)``. Not here, as upstream's defaults: ``ape``, dropouts, drop path
    (``mim_swin_base`` sets 0)."""

    def __init__(self, img_size: int, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96,
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: int = 7, mlp_ratio: float = 4.0, block_size: int = 32):
        super().__init__()
        self.patch_embed = NormedPatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.layers = nn.ModuleList([
            BasicLayer(int(embed_dim * 2 ** i), stage_resolution(self.patch_embed.img_size, patch_size, i),
                       depths[i], num_heads[i], window_size, mlp_ratio, True, (), downsample=i < len(depths) - 1)
            for i in range(len(depths))])
        self.num_features = int(embed_dim * 2 ** (len(depths) - 1))
        self.norm = nn.LayerNorm(self.num_features, eps=swin_spec.LN_EPS)
        self.img_size, self.block_size = img_size, block_size
        self.stride = patch_size * 2 ** (len(depths) - 1)

    def forward(self, x: torch.Tensor, mask_ratio: float, mask_token: torch.Tensor,
                noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        mask, loss_mask = block_masking(x, mask_ratio, self.img_size, self.block_size, self.stride, noise)
        x = self.patch_embed(x * (1 - mask) + mask * mask_token)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x), loss_mask


class PretrainSwin(FastMIMBase):
    """FastMIM's Swin pretraining model (paper §3, Table 2; official ``mim_swin_pretrain.py::PretrainSwin``;
    :class:`FastMIMBase`): ``encoder`` (:class:`MIMSwinEncoder`, ``noise`` (B, (img_size//block_size)²)), then
    the decoder on the last stage's tokens, decoder blocks of ``decoder_embed_dim // 32`` heads whose LayerNorms,
    like ``decoder_norm``, are torch's default (eps 1e-5: upstream passes ``nn.LayerNorm``). ``patch_size`` is the
    image side of one output token, the encoder's total stride (32); upstream's ``mim_swin_base`` passes
    ``norm_layer=None``, ``mlp_ratio`` and ``qkv_bias`` to the decoder only, so the encoder keeps LayerNorm, ratio 4
    and qkv bias. Every Linear is xavier-uniform (upstream's ``apply`` runs after the encoder's own init). The
    ``block_size < 32`` branch of upstream's HOG loss (a loss mask finer than the tokens) is not supported."""

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
        self.decoder_embed = nn.Linear(self.encoder.num_features, decoder_embed_dim)
        self.decoder_blocks = nn.ModuleList([
            Block(decoder_embed_dim, decoder_embed_dim // 32, mlp_ratio, True, eps=swin_spec.LN_EPS)
            for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=swin_spec.LN_EPS)
        self.decoder_pred = nn.Linear(decoder_embed_dim, _output_dim(mim_loss, patch_size, in_chans))
        self.mask_token = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.img_size, self.patch_size, self.block_size = img_size, patch_size, block_size
        self.norm_pix_loss, self.mim_loss = norm_pix_loss, mim_loss
        _xavier_linears(self)
        nn.init.normal_(self.mask_token, std=.02)

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        return self.encoder(imgs, mask_ratio, self.mask_token, noise)


class LayerNorm2d(nn.Module):
    """LocalMIM's channels-first ``LayerNorm`` (ConvNeXt's): normalise (B, C, H, W) over C, biased variance."""

    def __init__(self, normalized_shape: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def _pred_head(embed_dim: int, out_dim: int, scale: float) -> nn.Sequential:
    """The per-scale prediction head (keys ``pred.0/1/3/4`` at 4, ``pred.0/1`` at 2, ``pred.0`` at 1, ``pred.1``
    at 0.5)."""
    if scale == 4.0:
        layers = [nn.ConvTranspose2d(embed_dim, embed_dim // 2, 2, 2), LayerNorm2d(embed_dim // 2), nn.GELU(),
                  nn.ConvTranspose2d(embed_dim // 2, embed_dim // 4, 2, 2)]
        hidden = embed_dim // 4
    elif scale == 2.0:
        layers, hidden = [nn.ConvTranspose2d(embed_dim, embed_dim // 2, 2, 2)], embed_dim // 2
    elif scale == 1.0:
        layers, hidden = [], embed_dim
    elif scale == 0.5:
        layers, hidden = [nn.AvgPool2d(2, 2)], embed_dim
    else:
        raise ConfigError(f"scale {scale} is not supported (4, 2, 1 or 0.5)")
    return nn.Sequential(*layers, nn.Conv2d(hidden, out_dim, 1))


class MAEDecoder(nn.Module):
    """LocalMIM's ``MAE_Decoder``: ``embed``, mask tokens inserted and unshuffled by ``ids_restore``, the fixed
    sin-cos ``pos_embed``, ``depth`` blocks, ``norm``, the tokens as a √L×√L map through ``pred``;
    returns (B, L·scale², out_dim)."""

    def __init__(self, inp_dim: int, embed_dim: int = 256, out_dim: int = 27, scale: float = 1.0,
                 num_patches: int = 196, depth: int = 1, num_heads: int = 8, mlp_ratio: float = 4.0):
        super().__init__()
        self.num_patches = num_patches
        self.embed = nn.Linear(inp_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = _fixed_pos_embed(embed_dim, int(num_patches ** .5))
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, True) for _ in range(depth)])
        self.norm = _LN(embed_dim)
        self.pred = _pred_head(embed_dim, out_dim, scale)
        nn.init.normal_(self.mask_token, std=.02)
        _xavier_linears(self)

    def forward(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        b, _, d = x.shape
        tokens = self.mask_token.expand(b, ids_restore.shape[1] + 1 - x.shape[1], -1)
        x_ = torch.cat([x[:, 1:], tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))
        x = torch.cat([x[:, :1], x_], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        side = int(self.num_patches ** .5)
        x = self.pred(x[:, 1:].transpose(1, 2).reshape(b, d, side, side))
        return x.flatten(2).transpose(1, 2)


def rgb_hog(enc: HOGLayer, imgs: torch.Tensor) -> torch.Tensor:
    """A LocalMIM HOG target: (B, h·w, 3·nbins), the R, G, B histograms of ``enc`` (upstream's ``HOG``)."""
    feat = torch.cat([enc(imgs[:, c:c + 1]) for c in range(3)], 1)
    return feat.flatten(2).transpose(1, 2)


class LocalMIMViT(nn.Module):
    """LocalMIM's ViT pretraining model (paper §3.2; official ``ViT/models_mim.py::MaskedAutoencoderViT``).

    ``forward(imgs, mask_ratio=0.75, noise=None, return_levels=False)``: patch embedding plus ``pos_embed[1:]``,
    :func:`random_masking` (``noise`` (B, L)), the class token, the blocks; the outputs of blocks
    ``[1, 3, depth-3, depth-1]`` each through its own ``norm.k`` feed decoder ``k`` at scale ``[4, 2, 1, 0.5][k]``;
    target ``k`` is the per-colour-channel ``HOGLayer(hog_nbins, [4, 8, 16, 32][k], hog_bias)`` (R, G, B);
    ``levels[k] = Σ mean_d(pred−target)² · M / Σ M`` with ``M = recal_mask(mask, scale[k])``, ``loss = Σ levels``.
    Use ``depth ≥ 7`` (shallower models repeat a tap, which upstream silently collapses to fewer levels)."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 1024,
                 depth: int = 24, num_heads: int = 16, decoder_embed_dim: int = 512, decoder_depth: int = 1,
                 decoder_num_heads: int = 16, mlp_ratio: float = 4.0, hog_nbins: int = 9, hog_bias: bool = False):
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = _fixed_pos_embed(embed_dim, self.patch_embed.grid_size[0])
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, True) for _ in range(depth)])
        self.ID = _spec.localmim_taps(depth)
        self.scale = list(_spec.LOCALMIM_SCALES)
        self.norm = nn.ModuleList([_LN(embed_dim) for _ in self.ID])
        _init_patch_embed(self.patch_embed)
        nn.init.normal_(self.cls_token, std=.02)
        _xavier_linears(self)
        self.decoder = nn.ModuleList([
            MAEDecoder(embed_dim, decoder_embed_dim, in_chans * hog_nbins, s, num_patches, decoder_depth,
                       decoder_num_heads, mlp_ratio) for s in self.scale])
        self.hog_enc = nn.ModuleList([HOGLayer(hog_nbins, k, hog_bias) for k in _spec.LOCALMIM_POOLS])

    def hog(self, imgs: torch.Tensor, k: int) -> torch.Tensor:
        return rgb_hog(self.hog_enc[k], imgs)

    def forward_encoder(self, x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        x = self.patch_embed(x) + self.pos_embed[:, 1:]
        x, mask, ids_restore = random_masking(x, mask_ratio, noise)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        latent = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in self.ID:
                latent.append(self.norm[self.ID.index(i)](x))
        return latent, mask, ids_restore

    def forward_loss(self, imgs: torch.Tensor, pred: list, mask: torch.Tensor) -> torch.Tensor:
        levels = []
        for k in range(len(pred)):
            m = recal_mask(mask, self.scale[k])
            levels.append((((pred[k] - self.hog(imgs, k)) ** 2).mean(-1) * m).sum() / m.sum())
        return torch.stack(levels)

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None,
                return_levels: bool = False):
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = [self.decoder[i](latent[i], ids_restore) for i in range(len(latent))]
        levels = self.forward_loss(imgs, pred, mask)
        loss = levels.sum()
        return (loss, levels) if return_levels else loss


# ------------------------------------------------------------------------- LocalMIM Swin (Swin/models_mim.py)

def window_geometry(coords: torch.Tensor, window: int, shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream ``GroupingModule`` for the tokens at ``coords`` (N, 2): ``(index, same)`` (N, N), the
    relative-position index of each pair in the same window (0 elsewhere) and whether the pair shares a window.
    Windows are ``(coords + (window - shift) % window) // window``: the shifted partition without the cyclic roll."""
    group = torch.div(coords + (window - shift) % window, window, rounding_mode="floor")
    same = (group[:, None] == group[None]).all(-1)
    rel = coords[:, None] - coords[None] + (window - 1)
    index = rel[..., 0] * (2 * window - 1) + rel[..., 1]
    return torch.where(same, index, 0), same


class VisibleWindowAttention(WindowAttention):
    """GreenMIM's window attention over the visible tokens (LocalMIM ``Swin/models_mim.py::WindowAttention``) in a
    dense masked form: every visible token attends to every visible token, a pair in different windows with bias 0
    and upstream's additive -100. Upstream packs the windows into groups (``group_windows``, a knapsack) or, for
    few tokens, uses this same dense form ('masking' mode); the cross-window pairs it keeps get exp(-100) ≈ 4e-44
    of a softmax weight either way, so both give the same output to float32 rounding (checked against the official
    code in its 'grouping' stages). The ``relative_position_index`` buffer is kept for the keys (upstream: unused
    in pretraining)."""

    def forward(self, x: torch.Tensor, index: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[index.reshape(-1)].reshape(n, n, -1) * same.unsqueeze(-1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        attn = attn + torch.where(same, 0.0, swin_spec.MASK_VALUE)
        return self.proj((attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c))


class VisibleSwinBlock(nn.Module):
    """Upstream ``SwinTransformerBlock``: ``x + attn(norm1(x))``, ``x + mlp(norm2(x))`` on the visible tokens."""

    def __init__(self, dim: int, window: int, num_heads: int, mlp_ratio: float, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = VisibleWindowAttention(dim, (window, window), num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, index: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), index, same)
        return x + self.mlp(self.norm2(x))


class UnitPatchMerging(PatchMerging):
    """Upstream ``PatchMerging`` on unit-ordered tokens: each unit's 2 x 2 neighbours concatenated in (dy, dx)
    order ``(0,0), (0,1), (1,0), (1,1)`` (GreenMIM's; the Swin merge takes ``(0,0), (1,0), (0,1), (1,1)``)."""

    def forward(self, x: torch.Tensor, unit: int) -> torch.Tensor:
        b, n, c = x.shape
        h = unit // 2
        x = x.reshape(b, -1, h, 2, h, 2, c).permute(0, 1, 2, 4, 3, 5, 6).reshape(b, n // 4, 4 * c)
        return self.reduction(self.norm(x))


class VisibleSwinStage(nn.Module):
    """Upstream ``BasicLayer`` (keys ``blocks``, ``downsample``): the window clamped to the grid as the official
    block does (:func:`specs.swin.block_window`), shift ``window // 2`` in odd blocks unless clamped, one
    :func:`window_geometry` per shift, then the unit-ordered merging."""

    def __init__(self, dim: int, resolution: tuple[int, int], depth: int, num_heads: int, window_size: int,
                 mlp_ratio: float, downsample: bool, eps: float, units: int):
        super().__init__()
        self.window, shift = swin_spec.block_window(resolution, window_size, window_size // 2)
        self.shifts = [0 if i % 2 == 0 else shift for i in range(depth)]
        self.blocks = nn.ModuleList([VisibleSwinBlock(dim, self.window, num_heads, mlp_ratio, eps)
                                     for _ in range(depth)])
        self.downsample = UnitPatchMerging(resolution, dim, eps) if downsample else None
        self.unit = resolution[0] // units

    def forward(self, x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        geometry = {s: window_geometry(coords, self.window, s) for s in set(self.shifts)}
        for blk, s in zip(self.blocks, self.shifts):
            x = blk(x, *geometry[s])
        return x if self.downsample is None else self.downsample(x, self.unit)


class VisibleSwinEncoder(nn.Module):
    """Upstream ``SwinTransformer`` of ``Swin/models_mim.py`` (keys ``patch_embed``, ``layers``, ``norm.k``):
    the patch embedding, the visible units' tokens in unit order (:func:`specs.mim.localmim_swin_geometry`), the
    four stages; returns each stage's output (after its merging) through ``norm.k`` (LayerNorm(dim · [2, 4, 8, 8]))."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, depths: Sequence[int],
                 num_heads: Sequence[int], window_size: int, mlp_ratio: float, eps: float = _spec.LN_EPS):
        super().__init__()
        units = _spec.LOCALMIM_SWIN_UNITS
        self.patch_embed = NormedPatchEmbed(img_size, patch_size, in_chans, embed_dim, eps)
        grid = self.patch_embed.grid_size[0]
        self.layers = nn.ModuleList([
            VisibleSwinStage(embed_dim * 2 ** i, stage_resolution(self.patch_embed.img_size, patch_size, i),
                             depths[i], num_heads[i], window_size, mlp_ratio, i < len(depths) - 1, eps, units)
            for i in range(len(depths))])
        self.norm = nn.ModuleList([nn.LayerNorm(embed_dim * k, eps=eps) for k in _spec.LOCALMIM_SWIN_DIMS])
        gather, coords = _spec.localmim_swin_geometry(grid, len(depths), units)
        self.register_buffer("gather", torch.from_numpy(gather).long(), persistent=False)
        for i, c in enumerate(coords):
            self.register_buffer(f"coords{i}", torch.from_numpy(c).long(), persistent=False)

    def forward(self, x: torch.Tensor, visible: torch.Tensor) -> list[torch.Tensor]:
        """``visible``: the visible units' indices, ascending."""
        x = self.patch_embed(x)[:, self.gather[visible].reshape(-1)]
        latent = []
        for i, (layer, norm) in enumerate(zip(self.layers, self.norm)):
            x = layer(x, getattr(self, f"coords{i}")[visible].reshape(-1, 2))
            latent.append(norm(x))
        return latent


class SwinMIMDecoder(nn.Module):
    """Upstream ``ViT_Decoder``: ``embed``, mask tokens placed by ``ids_restore`` (unit order), the tokens
    reordered row-major, the fixed sin-cos ``pos_embed`` (no class row), ``depth`` blocks (qkv bias), ``norm``,
    the Linear ``pred``; returns (B, L, out_dim)."""

    def __init__(self, inp_dim: int, embed_dim: int, out_dim: int, num_patches: int, depth: int, num_heads: int,
                 mlp_ratio: float):
        super().__init__()
        self.embed = nn.Linear(inp_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.from_numpy(_spec.sincos_pos_embed(embed_dim, int(num_patches ** .5),
                                                                              cls_token=False)), requires_grad=False)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, True) for _ in range(depth)])
        self.norm = _LN(embed_dim)
        self.pred = nn.Linear(embed_dim, out_dim)
        self.units = _spec.LOCALMIM_SWIN_UNITS
        self.unit = int(num_patches ** .5) // self.units
        nn.init.normal_(self.mask_token, std=.02)
        _xavier_linears(self)

    def forward(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        b, n, d = x.shape
        length = ids_restore.shape[1]
        x = torch.cat([x, self.mask_token.expand(b, length - n, d)], dim=1)
        x = torch.gather(x, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))
        u, w = self.units, self.unit
        x = x.reshape(b, u, u, w, w, d).transpose(2, 3).reshape(b, length, d) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.pred(self.norm(x))


class LocalMIMSwin(nn.Module):
    """LocalMIM's Swin pretraining model (paper §3.2; official ``Swin/models_mim.py::MaskedAutoencoderSwin``, after
    GreenMIM). ``forward(imgs, mask_ratio=0.75, noise=None, return_levels=False)``:

    - one mask for the whole batch over the 7 x 7 grid of 32-px units: the ``int(mask_ratio·49) + 1`` units of
      smallest ``noise[0]`` (``noise`` (B, 49), drawn U[0, 1) when None) are masked, 37 of 49 at 0.75, as
      upstream's ``randperm(49) <= int(0.75·49)`` (whose per-sample copies the encoder reduces to ``mask[:1]``);
    - :class:`VisibleSwinEncoder` on the visible units only; stage ``k``'s output feeds decoder ``k``
      (:class:`SwinMIMDecoder`, width ``decoder_embed_dim // [2, 1, 1, 1][k]``) at grid 28, 14, 7, 7;
    - target ``k``: the R, G, B ``HOGLayer(hog_nbins, [8, 16, 32, 32][k], hog_bias)`` or, with ``target='Pixel'``,
      the patchified pixels of side ``[8, 16, 32, 32][k]`` ((p, q, c) order; per-patch normalised with the
      unbiased variance and eps 1e-6 when ``norm_pix_loss``);
    - ``levels[k] = Σ mean_d(pred − target)² · M / Σ M`` with the mask upsampled by ``[4, 2, 1, 1][k]``,
      ``loss = Σ levels``.

    The image must be 224 px of 4-px patches (upstream hard-codes the 7 x 7 units and the targets' cells)."""

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
        _xavier_linears(self.encoder)
        units = _spec.LOCALMIM_SWIN_UNITS ** 2
        self.decoder = nn.ModuleList([
            SwinMIMDecoder(embed_dim * s, decoder_embed_dim // k,
                           in_chans * (hog_nbins if target == "HOG" else p * p), units * t * t, decoder_depth,
                           decoder_num_heads, mlp_ratio)
            for s, k, t, p in zip(_spec.LOCALMIM_SWIN_DIMS, (2, 1, 1, 1), _spec.LOCALMIM_SWIN_SCALES,
                                  _spec.LOCALMIM_SWIN_POOLS)])
        if target == "HOG":
            self.hog_enc = nn.ModuleList([HOGLayer(hog_nbins, k, hog_bias) for k in _spec.LOCALMIM_SWIN_POOLS])
        self.target, self.norm_pix_loss = target, norm_pix_loss

    def target_of(self, imgs: torch.Tensor, k: int) -> torch.Tensor:
        """Target ``k`` (B, L_k, out_dim)."""
        if self.target == "HOG":
            return rgb_hog(self.hog_enc[k], imgs)
        p = _spec.LOCALMIM_SWIN_POOLS[k]
        b, c, h, w = imgs.shape
        x = torch.einsum("nchpwq->nhwpqc", imgs.reshape(b, c, h // p, p, w // p, p)).reshape(b, -1, p * p * c)
        if self.norm_pix_loss:
            x = (x - x.mean(-1, keepdim=True)) / (x.var(-1, keepdim=True) + 1e-6) ** .5
        return x

    def no_weight_decay(self) -> set[str]:
        """Upstream's ``skip_list`` (``run_pretrain.py``): the bias tables and the mask tokens."""
        return {n for n, _ in self.named_parameters() if "position_bias" in n or "token" in n}

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None,
                return_levels: bool = False):
        b = imgs.shape[0]
        units = _spec.LOCALMIM_SWIN_UNITS ** 2
        if noise is None:
            noise = torch.rand(b, units)
        n_masked = _spec.localmim_swin_masked(mask_ratio, units)
        masked = torch.argsort(torch.argsort(noise[0])) < n_masked
        visible = torch.argsort(masked.long() * units + torch.arange(units))[:units - n_masked]
        latent = self.encoder(imgs, visible)
        levels = []
        for k, (x, decoder) in enumerate(zip(latent, self.decoder)):
            t = _spec.LOCALMIM_SWIN_SCALES[k]
            hidden = masked.repeat_interleave(t * t)                        # unit order
            key = hidden.long() * hidden.numel() + torch.arange(hidden.numel())
            ids_restore = torch.argsort(torch.argsort(key)).unsqueeze(0).expand(b, -1)
            pred = decoder(x, ids_restore)
            m = recal_mask(masked.float().unsqueeze(0).expand(b, -1), float(t))
            levels.append((((pred - self.target_of(imgs, k)) ** 2).mean(-1) * m).sum() / m.sum())
        levels = torch.stack(levels)
        loss = levels.sum()
        return (loss, levels) if return_levels else loss


class FinetuneViT(_TimmViT):
    """MAE's fine-tune ViT (``models_vit.py`` of both repositories: timm-0.3.2 ``VisionTransformer`` plus global
    pooling). With ``global_pool`` (default) there is ``fc_norm`` and no ``norm``, and ``forward_features(x)`` is
    ``fc_norm(mean of the patch tokens)`` (B, D); without, ``norm`` and the class token. ``drop_path_rate``
    rises linearly over the blocks (timm)."""

    output_fmt = "NC"

    def __init__(self, num_classes: int = 1000, img_size: int = 224, patch_size: int = 16, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, global_pool: bool = True,
                 drop_path_rate: float = 0.1):
        super().__init__(num_classes, img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio,
                         drop_path_rate=drop_path_rate)
        self.global_pool = global_pool
        if global_pool:
            self.fc_norm = _LN(embed_dim)
            del self.norm

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), self.patch_embed(x)], dim=1) + self.pos_embed
        x = self.blocks(x)
        if self.global_pool:
            return self.fc_norm(x[:, 1:].mean(dim=1))
        return self.norm(x)[:, 0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)


class FinetuneSwin(SwinTransformer):
    """LocalMIM's fine-tune Swin (``Swin/models_swin.py`` ``SwinTransformer``, microsoft's layout): the project's
    Swin (same keys but the final norm's) with ``norm_layer`` eps 1e-6 in every LayerNorm but the blocks' ``norm2``
    (a plain ``nn.LayerNorm``: 1e-5), and the final ``norm`` applied after the average pooling:
    ``forward_features(x)`` is ``norm(mean of the last-stage tokens)`` (B, C). Layer decay is upstream's
    ``util/lr_decay.py`` ``get_swin_layer`` (``norm`` and ``head`` share the last layer); ``no_weight_decay()`` is
    upstream's ``{'absolute_pos_embed'}``, a parameter this model does not have, so the bias tables decay as
    ``run_finetune.py`` has it (the 1-D tensors and biases do not: the engine's rule, upstream's too)."""

    output_fmt = "NC"

    def __init__(self, num_classes: int = 1000, eps: float = _spec.LN_EPS, **kwargs: Any):
        super().__init__(num_classes, eps=eps, **kwargs)
        self.norm = self.fc_norm
        del self.fc_norm

    def no_weight_decay(self) -> set[str]:
        return set()

    def group_matcher(self, coarse: bool = False) -> dict:
        return swin_spec.group_matcher(coarse, final_norm=None)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.forward_tokens(x).mean(dim=1))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)


def fastmim_vit_base_patch16(**overrides: Any) -> MaskedAutoencoderViT:
    """FastMIM ViT-B/16 pretraining model with the README flags (128 px, 6 heads as upstream, decoder 256 × 1,
    HOG, ``norm_pix_loss``); ``overrides`` use the upstream constructor names."""
    return MaskedAutoencoderViT(**{**_spec.FASTMIM_VIT_BASE, **overrides})


def fastmim_swin_base_patch4(**overrides: Any) -> PretrainSwin:
    """FastMIM ``mim_swin_base`` with the README flags (128 px, window 4, block 32, decoder 256 × 4, HOG,
    ``norm_pix_loss``); ``overrides`` use the upstream constructor names."""
    return PretrainSwin(**{**_spec.FASTMIM_SWIN_BASE, **overrides})


def localmim_vit_base_patch16(**overrides: Any) -> LocalMIMViT:
    """LocalMIM ``MIM_vit_base_patch16(hog_nbins=9, hog_bias=False)``; ``overrides`` use upstream's names."""
    return LocalMIMViT(**{**_spec.LOCALMIM_VIT_BASE, **overrides})


def localmim_swin_base_patch4(**overrides: Any) -> LocalMIMSwin:
    """LocalMIM ``mim_swin_base_patch4_win7`` with the README's Swin-B flags (HOG, 18 bins, ``hog_bias``);
    ``overrides`` use upstream's names (``target='Pixel', norm_pix_loss=True`` for the pixel model)."""
    return LocalMIMSwin(**{**_spec.LOCALMIM_SWIN_BASE, **overrides})


def fastmim_swin_large_patch4(**overrides: Any) -> PretrainSwin:
    """FastMIM ``mim_swin_large`` (embed 192, heads 6-48) with the Swin-B README flags; upstream's
    ``decoder_num_heads=16`` is swallowed by the encoder's ``**kwargs``, so the decoder keeps 256 // 32 heads."""
    return PretrainSwin(**{**_spec.FASTMIM_SWIN_LARGE, **overrides})


def localmim_vit_small_patch16(**overrides: Any) -> LocalMIMViT:
    """LocalMIM ``MIM_vit_small_patch16`` (embed 384, 6 heads; 9 bins, no README recipe)."""
    return LocalMIMViT(**{**_spec.LOCALMIM_VIT_SMALL, **overrides})


def localmim_vit_large_patch16(**overrides: Any) -> LocalMIMViT:
    """LocalMIM ``MIM_vit_large_patch16`` with the README ViT-L flags (18 bins, ``hog_bias``)."""
    return LocalMIMViT(**{**_spec.LOCALMIM_VIT_LARGE, **overrides})


def localmim_swin_base_patch4_win14(**overrides: Any) -> LocalMIMSwin:
    """LocalMIM ``mim_swin_base_patch4_win14`` with the Swin-B README target flags (HOG, 18 bins, ``hog_bias``)."""
    return LocalMIMSwin(**{**_spec.LOCALMIM_SWIN_BASE_WIN14, **overrides})


def localmim_swin_large_patch4_win14(**overrides: Any) -> LocalMIMSwin:
    """LocalMIM ``mim_swin_large_patch4_win14`` with the README Swin-L flags (HOG, 18 bins, ``hog_bias``)."""
    return LocalMIMSwin(**{**_spec.LOCALMIM_SWIN_LARGE_WIN14, **overrides})


def vit_base_patch16(num_classes: int = 1000, **overrides: Any) -> FinetuneViT:
    """MAE ``models_vit.vit_base_patch16`` as both fine-tune scripts build it (global pool, drop path 0.1)."""
    return FinetuneViT(num_classes, **{**_spec.VIT_BASE_FINETUNE, **overrides})


def swin_base_patch4_win7(num_classes: int = 1000, **overrides: Any) -> FinetuneSwin:
    """LocalMIM ``swin_base_patch4_win7`` with the README Swin-B fine-tune ``--drop_path 0.1``."""
    return FinetuneSwin(num_classes, **{**_spec.LOCALMIM_SWIN_BASE_FINETUNE, **overrides})


def swin_base_patch4_win14(num_classes: int = 1000, **overrides: Any) -> FinetuneSwin:
    """LocalMIM ``swin_base_patch4_win14`` (window 14; drop path 0.1 as the Swin-B command)."""
    return FinetuneSwin(num_classes, **{**_spec.LOCALMIM_SWIN_BASE_WIN14_FINETUNE, **overrides})


def swin_large_patch4_win14(num_classes: int = 1000, **overrides: Any) -> FinetuneSwin:
    """LocalMIM ``swin_large_patch4_win14`` with the README Swin-L fine-tune ``--drop_path 0.3``."""
    return FinetuneSwin(num_classes, **{**_spec.LOCALMIM_SWIN_LARGE_FINETUNE, **overrides})


def _read_model_state(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``checkpoint['model']`` of an official file, read with ``weights_only=True`` (``argparse.Namespace`` is the
    one allow-listed class; :func:`convert.io.read_checkpoint`); a plain state dict is accepted too."""
    from convert.io import read_checkpoint
    return read_checkpoint(path)


def load_official(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Strictly load an official pretraining checkpoint (``{'model', 'epoch', 'args', ...}``) into ``model``;
    a missing, extra or mis-shaped key is a one-line :class:`specs.errors.KeyMismatchError`."""
    from convert.state import check_keys
    state = _read_model_state(path)
    check_keys(state, {k: tuple(v.shape) for k, v in model.state_dict().items()}, (), str(path))
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)
    return model


def load_pretrained(model: nn.Module, path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Fine-tune initialisation as ``main_finetune.py`` / ``run_finetune.py`` of a :class:`FinetuneViT` or a
    registered Swin (FastMIM's ``swin_base_patch4_window7_224``): ``checkpoint['model']``, ``head.*`` dropped when
    its shape differs, an ``encoder.`` prefix stripped, ``pos_embed`` resized bicubically, Swin bias tables of
    another window resampled and the geometry buffers dropped (:func:`specs.mim.finetune_state`), then a non-strict
    load. A :class:`FinetuneSwin` follows LocalMIM's ``Swin/run_finetune.py`` instead
    (:func:`specs.mim.localmim_swin_finetune_state`: the ``encoder.`` keys only, nothing resized or dropped). Returns ``(missing, unexpected)`` (torch key names). Upstream then redraws the head
    (``trunc_normal_(std=2e-5)``, random): not done here. A ``.ckpt`` / ``.safetensors`` file in MindSpore names
    (an engine checkpoint) is renamed first (:func:`convert.api.mim_torch_state`, which imports MindSpore)."""
    from convert.io import file_format
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if file_format(path) == "torch":
        state = _read_model_state(path)
    else:
        from convert.api import mim_torch_state
        state = mim_torch_state(path)
    state = (_spec.localmim_swin_finetune_state(state) if isinstance(model, FinetuneSwin)
             else _spec.finetune_state(state, shapes, model.patch_embed.num_patches))
    missing, unexpected = _spec.split_keys(state, shapes, str(path))
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items() if k in shapes},
                          strict=False)
    return missing, unexpected


from ._registry import registry  # noqa: E402

registry.register_family("fastmim", MaskedAutoencoderViT)
registry.register_family("fastmim_swin", PretrainSwin)
registry.register_family("localmim", LocalMIMViT)
registry.register_family("localmim_swin", LocalMIMSwin)
registry.register_family("mim_vit", FinetuneViT)
registry.register_family("mim_swin", FinetuneSwin)
