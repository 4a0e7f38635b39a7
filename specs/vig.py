"""Vision GNN variants, schedules and position tables (arXiv 2206.00272; official huawei-noah/Efficient-AI-Backbones
``vig_pytorch/vig.py``, ``pyramid_vig.py``, ``gcn_lib/{torch_vertex,torch_edge,pos_embed}.py``).

Framework-free: the variant tables, the k / dilation / reduce-ratio schedules, the 2-D sin-cos relative position
table and PyTorch's bicubic resize (``F.interpolate(mode='bicubic', align_corners=False)``, A = -0.75, border
indices clamped) are written here once, in NumPy, and read by both frameworks.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ._registry import ModelCfg, register_cfgs
from .param_groups import Matcher
from .pooling import bicubic_taps

PAPER = "2206.00272"
REPO = "huawei-noah/Efficient-AI-Backbones"
ISO_CODE = f"{REPO} vig_pytorch/vig.py"
PYR_CODE = f"{REPO} vig_pytorch/pyramid_vig.py"
_REL = f"https://github.com/{REPO}/releases/download"
NORM_EPS = 1e-12         # F.normalize's eps: x / max(||x||, eps)
HEAD_DIM = 1024          # the head's hidden 1x1 conv
FFN_RATIO = 4
ISO_GRID = 14            # isotropic: 224 / 16; pos_embed is 14 x 14
PYR_GRID = 56            # pyramid: 224 / 4; pos_embed is 56 x 56
PYR_REDUCE = (4, 2, 1, 1)

# name -> (channels, blocks); isotropic k = 9, pyramid k = 9 (official OptInit)
ISO_VARIANTS: dict[str, tuple[int, int]] = {"ti": (192, 12), "s": (320, 16), "b": (640, 16)}
PYR_VARIANTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "ti": ((48, 96, 240, 384), (2, 2, 6, 2)),
    "s": ((80, 160, 400, 640), (2, 2, 6, 2)),
    "m": ((96, 192, 384, 768), (2, 2, 16, 2)),
    "b": ((128, 256, 512, 1024), (2, 2, 18, 2)),
}
_ISO_FILES = {"ti": "vig_ti_74.5.pth", "s": "vig_s_80.6.pth", "b": "vig_b_82.6.pth"}
_PYR_FILES = {"ti": "pvig_ti_78.5.pth.tar", "s": "pvig_s_82.1.pth.tar", "m": "pvig_m_83.1.pth.tar",
              "b": "pvig_b_83.66.pth.tar"}


@dataclass(frozen=True)
class GrapherPlan:
    """One Grapher: neighbours k, dilation d, key-pooling ratio r, nodes n at 224 (for relative_pos)."""

    k: int
    d: int
    r: int = 1
    n: int = ISO_GRID ** 2
    relative_pos: bool = False


def iso_plan(channels: int, n_blocks: int, k: int = 9) -> list[GrapherPlan]:
    """``num_knn = int(linspace(k, 2k, n_blocks))``, dilation ``min(i // 4 + 1, 196 // max(num_knn))``."""
    knn = [int(v) for v in np.linspace(k, 2 * k, n_blocks, dtype=np.float32)]
    max_d = ISO_GRID ** 2 // max(knn)
    return [GrapherPlan(knn[i], min(i // 4 + 1, max_d)) for i in range(n_blocks)]


def pyr_plan(channels: tuple[int, ...], blocks: tuple[int, ...], k: int = 9) -> list[list[GrapherPlan]]:
    """Per stage: k everywhere, dilation ``min(idx // 4 + 1, 49 // k)`` on the global block index, r = 4, 2, 1, 1."""
    max_d = (PYR_GRID // 8) ** 2 // k
    plan, idx = [], 0
    for s, nb in enumerate(blocks):
        n = (PYR_GRID >> s) ** 2
        plan.append([GrapherPlan(k, min((idx + j) // 4 + 1, max_d), PYR_REDUCE[s], n, True) for j in range(nb)])
        idx += nb
    return plan


def drop_path_rates(rate: float, n_blocks: int) -> list[float]:
    """The official stochastic-depth schedule ``[x.item() for x in torch.linspace(0, rate, n_blocks)]`` (block i's
    Grapher and FFN share rate i; pyramid: i counts blocks over all stages), in torch's float32 arithmetic:
    ``step = rate / (n - 1)``, then ``i * step`` for the first half and ``rate - (n - 1 - i) * step`` (one
    rounding, as torch's fused kernel) for the second."""
    if n_blocks == 1:
        return [0.0]
    end = np.float32(rate)
    step = float(end / np.float32(n_blocks - 1))
    return [float(np.float32(i * step if i < n_blocks // 2 else float(end) - (n_blocks - 1 - i) * step))
            for i in range(n_blocks)]


def _conv_out(size: int) -> int:
    return (size - 1) // 2 + 1          # 3x3, stride 2, padding 1


def _fits(grid: int, plans: list[GrapherPlan]) -> bool:
    return all(grid % p.r == 0 and (grid // p.r) ** 2 >= p.k * p.d for p in plans)


def iso_min_input(arch: Mapping) -> int:
    """Smallest multiple of 16 whose 1/16 grid holds k*d nodes for every block (topk needs them)."""
    plan = iso_plan(arch["channels"], arch["n_blocks"], arch["k"])
    size = 16
    while not _fits(_conv_out(_conv_out(_conv_out(_conv_out(size)))), plan):
        size += 16
    return size


def pyr_min_input(arch: Mapping) -> int:
    """Smallest multiple of 32 at which every stage's (pooled) key set holds k*d nodes."""
    plan = pyr_plan(arch["channels"], arch["blocks"], arch["k"])
    size = 32
    while True:
        grid, ok = _conv_out(_conv_out(size)), True
        for s, stage in enumerate(plan):
            grid = grid if s == 0 else _conv_out(grid)
            ok = ok and _fits(grid, stage)
        if ok:
            return size
        size += 32


# ---------------------------------------------------------------- position tables (official pos_embed.py)
def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, grid: int) -> np.ndarray:
    """(grid*grid, dim): first half encodes the row (official ``grid[0]``, from meshgrid(w, h)), second the column."""
    gw, gh = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    return np.concatenate([sincos_1d(dim // 2, gw), sincos_1d(dim // 2, gh)], axis=1)


def resize_bicubic(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bicubic resize of the last two axes, PyTorch semantics, in float64."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape[-2] != out_h:            # an axis of unchanged size is an exact identity (weights 0, 1, 0, 0)
        ih, wh = bicubic_taps(x.shape[-2], out_h)
        x = np.einsum("...hkw,hk->...hw", x[..., ih, :], wh)
    if x.shape[-1] != out_w:
        iw, ww = bicubic_taps(x.shape[-1], out_w)
        x = np.einsum("...hwk,wk->...hw", x[..., iw], ww)
    return x


def relative_pos(channels: int, n: int, r: int) -> np.ndarray:
    """The frozen ``relative_pos`` of a pyramid Grapher, (1, n, n // r**2) float32: ``-(2 P P^T / C)`` resized
    bicubically to (n, n // r**2) (official ``Grapher.__init__`` and ``get_2d_relative_pos_embed``)."""
    return _relative_pos(channels, n, r).copy()


@functools.lru_cache(maxsize=16)
def _relative_pos(channels: int, n: int, r: int) -> np.ndarray:
    p = sincos_2d(channels, int(round(n ** 0.5)))
    rel = np.float32(2 * p @ p.T / p.shape[1])
    return -resize_bicubic(rel, n, n // (r * r)).astype(np.float32)[None]


def group_matcher(downsample: Sequence[bool], coarse: bool = False) -> Matcher:
    """Stem and ``pos_embed``, then one group per ``backbone`` entry, the ``prediction`` head last.
    ``downsample`` flags the backbone entries that are pyramid ``Downsample``s: with ``coarse`` each opens a
    stage group with the blocks after it. Isotropic ViG (no Downsample) has one group per block either way,
    like timm's ViT."""
    blocks: str | list = r"^backbone\.(\d+)\."
    if coarse and any(downsample):
        stages = [sum(downsample[:i + 1]) for i in range(len(downsample))]
        blocks = [(rf"^backbone\.{i}\.", (s,)) for i, s in enumerate(stages)]
    return dict(stem=r"^(?:stem\.|pos_embed$)", blocks=blocks)


# ---------------------------------------------------------------- cfgs
def infer_kwargs(shapes: Mapping[str, tuple]) -> dict:
    return {"num_classes": int(shapes["prediction.4.weight"][0])} if "prediction.4.weight" in shapes else {}


def _cfg(name: str, family: str, arch: dict, min_size: int, code: str, url: str, crop_pct: float = 0.9) -> ModelCfg:
    return ModelCfg(
        name=name, family=family, arch=arch, paper=PAPER, official_code=code, urls=(url,),
        min_input_size=(3, min_size, min_size), test_input_size=(3, min_size, min_size),
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=crop_pct, first_conv="stem.convs.0",
        classifier=("prediction.4",), infer_kwargs=infer_kwargs,
        notes="kNN graph needs k*dilation nodes per block: min/test input is the smallest size that has them")


def _iso(v: str) -> ModelCfg:
    ch, nb = ISO_VARIANTS[v]
    arch = dict(channels=ch, n_blocks=nb, k=9)
    return _cfg(f"vig_{v}_224_gelu", "vig", arch, iso_min_input(arch), ISO_CODE, f"{_REL}/vig/{_ISO_FILES[v]}")


def _pyr(v: str) -> ModelCfg:
    ch, nb = PYR_VARIANTS[v]
    arch = dict(channels=ch, blocks=nb, k=9)
    return _cfg(f"pvig_{v}_224_gelu", "pvig", arch, pyr_min_input(arch), PYR_CODE,
                f"{_REL}/pyramid-vig/{_PYR_FILES[v]}", crop_pct=0.95 if v == "b" else 0.9)


CFGS = [_iso(v) for v in ISO_VARIANTS] + [_pyr(v) for v in PYR_VARIANTS]
register_cfgs(CFGS)
