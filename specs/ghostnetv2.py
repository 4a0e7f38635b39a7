"""GhostNetV2 variants (arXiv 2211.12905; official huawei-noah/Efficient-AI-Backbones
``ghostnetv2_pytorch/model/ghostnetv2_torch.py``, identical to timm's ``ghostnetv2_*``).

The block table is written once here; both frameworks, the converter and the tests derive every channel
count, stride and DFC flag from :func:`block_plan`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from ._registry import ModelCfg, register_cfgs
from .param_groups import MATCH_PREV_GROUP, Matcher

PAPER = "2211.12905"
OFFICIAL_CODE = "huawei-noah/Efficient-AI-Backbones ghostnetv2_pytorch/model/ghostnetv2_torch.py"
URL = "https://github.com/huawei-noah/Efficient-AI-Backbones/releases/download/GhostNetV2/ck_ghostnetv2_{}.pth.tar"
BN_EPS = 1e-5
DIVISOR = 4
STEM_CHANNELS = 16
HEAD_CHANNELS = 1280          # conv_head width, not scaled by ``width``
DFC_FROM_LAYER = 2            # official ``layer_id <= 1``: the first two cfg rows have no DFC attention
DFC_UPSAMPLE = ("nearest", "bilinear")   # official PyTorch / official MindSpore (align_corners) gate upsampling

# Stages of rows [kernel, expansion, out channels, SE ratio, stride] (official ``cfgs``).
STAGES: tuple[tuple[tuple[int, int, int, float, int], ...], ...] = (
    ((3, 16, 16, 0, 1),),
    ((3, 48, 24, 0, 2),),
    ((3, 72, 24, 0, 1),),
    ((5, 72, 40, 0.25, 2),),
    ((5, 120, 40, 0.25, 1),),
    ((3, 240, 80, 0, 2),),
    ((3, 200, 80, 0, 1), (3, 184, 80, 0, 1), (3, 184, 80, 0, 1), (3, 480, 112, 0.25, 1),
     (3, 672, 112, 0.25, 1)),
    ((5, 672, 160, 0.25, 2),),
    ((5, 960, 160, 0, 1), (5, 960, 160, 0.25, 1), (5, 960, 160, 0, 1), (5, 960, 160, 0.25, 1)),
)
WIDTHS = {"ghostnetv2_100": 1.0, "ghostnetv2_130": 1.3, "ghostnetv2_160": 1.6}
_URL_TAGS = {1.0: "10", 1.3: "13", 1.6: "16"}


def make_divisible(v: float, divisor: int = DIVISOR, min_value: int | None = None) -> int:
    """Official ``_make_divisible``: round to the nearest multiple of ``divisor``, never below 90% of ``v``."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


@dataclass(frozen=True)
class BlockSpec:
    """One ``GhostBottleneckV2`` (one cfg row): ``blocks.{stage}.{index}``."""

    stage: int
    index: int
    layer_id: int               # global row number: DFC attention iff layer_id >= DFC_FROM_LAYER
    in_chs: int
    mid_chs: int
    out_chs: int
    kernel: int
    stride: int
    se_ratio: float

    @property
    def dfc(self) -> bool:
        return self.layer_id >= DFC_FROM_LAYER


@dataclass(frozen=True)
class Plan:
    stem: int                              # conv_stem output channels
    blocks: tuple[tuple[BlockSpec, ...], ...]
    final: int                             # blocks.9.0 (ConvBnAct) output channels == num_features
    head: int = HEAD_CHANNELS


def block_plan(width: float = 1.0, stages: Sequence[Sequence[Sequence]] = STAGES) -> Plan:
    """Every channel count of the network at ``width``, exactly as the official constructor computes them."""
    in_chs = stem = make_divisible(STEM_CHANNELS * width)
    layer_id, out = 0, []
    for s, rows in enumerate(stages):
        blocks = []
        for j, (k, exp, c, se, stride) in enumerate(rows):
            mid, oc = make_divisible(exp * width), make_divisible(c * width)
            blocks.append(BlockSpec(s, j, layer_id, in_chs, mid, oc, k, stride, float(se)))
            in_chs, layer_id = oc, layer_id + 1
        out.append(tuple(blocks))
    final = make_divisible(stages[-1][-1][1] * width)      # official: the last row's expansion width
    return Plan(stem, tuple(out), final)


def se_channels(mid_chs: int, se_ratio: float) -> int:
    """``SqueezeExcite.conv_reduce`` width (official: ``_make_divisible(in_chs * se_ratio, 4)``)."""
    return make_divisible(mid_chs * se_ratio)


def _down(size: int, stride: int) -> int:
    """Output size of the stride-``stride`` convs here (kernel k, padding (k - 1) // 2, k odd): ceil(size / s)."""
    return -(-size // stride)


def dfc_sizes(size: int, stages: Sequence[Sequence[Sequence]] = STAGES) -> list[int]:
    """The spatial size (one axis) each DFC attention block sees, for an input of ``size`` (224: 56, 56, 28,
    28, 14 x6, 7 x4). Its 2x2 average pool needs at least 2."""
    size = _down(size, 2)
    out, layer_id = [], 0
    for rows in stages:
        for row in rows:
            if layer_id >= DFC_FROM_LAYER:
                out.append(size)
            size, layer_id = _down(size, row[4]), layer_id + 1
    return out


def min_input_size(stages: Sequence[Sequence[Sequence]] = STAGES) -> int:
    """Smallest input side every DFC average pool accepts (33: the last stage is then 2x2)."""
    size = 1
    while min(dfc_sizes(size, stages)) < 2:
        size += 1
    return size


def infer_kwargs(shapes: Mapping[str, tuple]) -> dict:
    """Model kwargs a state dict (torch key names) implies: the number of classes (0 without a classifier)."""
    return {"num_classes": int(shapes["classifier.weight"][0]) if "classifier.weight" in shapes else 0}


# The official MindSpore checkpoint ``ghostnetv2_1x.ckpt`` (mindspore-ai/models
# ``research/cv/ghostnetv2/src/ghostnetv2.py``): a flat ``blocks.0..15`` (one per cfg row) plus ``blocks.16``
# (the final ConvUnit), ``ConvUnit`` children ``conv``/``bn``. Official flat block index -> our "stage.index":
_OFFICIAL_MS_BLOCKS = [f"{s}.{j}" for s, rows in enumerate(STAGES) for j in range(len(rows))] + [f"{len(STAGES)}.0"]
_BN = r"(gamma|beta|moving_mean|moving_variance)"
# (pattern inside one official block, replacement); ConvUnit i of a Sequential -> children 2i (conv), 2i+1 (bn)
_OFFICIAL_MS_RULES: tuple[tuple[str, Callable[[re.Match], str]], ...] = (
    (r"^(ghost[12]\.(?:primary_conv|cheap_operation))\.conv\.weight$", lambda m: f"{m[1]}.0.weight"),
    (rf"^(ghost[12]\.(?:primary_conv|cheap_operation))\.bn\.{_BN}$", lambda m: f"{m[1]}.1.{m[2]}"),
    (r"^(ghost1\.short_conv|shortcut)\.(\d)\.conv\.weight$", lambda m: f"{m[1]}.{2 * int(m[2])}.weight"),
    (rf"^(ghost1\.short_conv|shortcut)\.(\d)\.bn\.{_BN}$", lambda m: f"{m[1]}.{2 * int(m[2]) + 1}.{m[3]}"),
    (r"^dw\.conv\.weight$", lambda m: "conv_dw.weight"),
    (rf"^dw\.bn\.{_BN}$", lambda m: f"bn_dw.{m[1]}"),
    (r"^(se\.conv_(?:reduce|expand)\.(?:weight|bias))$", lambda m: m[1]),
)
_OFFICIAL_MS_FINAL_RULES = (
    (r"^conv\.weight$", lambda m: "conv.weight"),
    (rf"^bn\.{_BN}$", lambda m: f"bn1.{m[1]}"),
)
_OFFICIAL_MS_TOP = re.compile(rf"^(conv_stem\.weight|bn1\.{_BN}|conv_head\.(weight|bias)|classifier\.(weight|bias))$")


def official_ms_entry(key: str, value: np.ndarray) -> tuple[str, np.ndarray] | None:
    """Our MindSpore name of one ``ghostnetv2_1x.ckpt`` entry (see above), value unchanged; None if the layout
    has no such name. That network upsamples the DFC gate bilinearly (align_corners): load the result into a
    model built with ``dfc_upsample='bilinear'`` to reproduce it. Its ``ceil`` channel rounding equals the
    PyTorch rounding at width 1.0 only."""
    if _OFFICIAL_MS_TOP.match(key):
        return key, value
    m = re.match(r"^blocks\.(\d+)\.(.+)$", key)
    if not m or int(m[1]) >= len(_OFFICIAL_MS_BLOCKS):
        return None
    final = int(m[1]) == len(_OFFICIAL_MS_BLOCKS) - 1
    for pattern, repl in (_OFFICIAL_MS_FINAL_RULES if final else _OFFICIAL_MS_RULES):
        hit = re.match(pattern, m[2])
        if hit:
            return f"blocks.{_OFFICIAL_MS_BLOCKS[int(m[1])]}.{repl(hit)}", value
    return None


def group_matcher(coarse: bool = False) -> Matcher:
    """timm's GhostNet matcher (``ghostnet.py``): stem ``conv_stem``/``bn1``, then ``blocks.i`` (coarse) or
    ``blocks.i.j``, ``conv_head`` joining the last block; ``classifier`` last."""
    blocks = r"^blocks\.(\d+)\." if coarse else r"^blocks\.(\d+)\.(\d+)\."
    return dict(stem=r"^(?:conv_stem|bn1)\.", blocks=[(blocks, None), (r"^conv_head\.", (MATCH_PREV_GROUP,))])


def _cfg(name: str, width: float) -> ModelCfg:
    m = min_input_size()
    return ModelCfg(
        name=name, family="ghostnetv2", arch=dict(width=width), paper=PAPER, official_code=OFFICIAL_CODE,
        urls=(URL.format(_URL_TAGS[width]),), min_input_size=(3, m, m),
        # 112 x 80: the last stride-2 block's DFC sees 7 x 5 (pool 3 x 2, non-integer upsample 3->7, 2->5),
        # the last stage sees 4 x 3; non-square on purpose.
        test_input_size=(3, 112, 80), first_conv="conv_stem", classifier=("classifier",),
        notes=f"width {width}; timm ghostnetv2_{name[-3:]}.in1k holds the same weights under the same keys",
        infer_kwargs=infer_kwargs, official_ms_entry=official_ms_entry)


CFGS = [_cfg(name, w) for name, w in WIDTHS.items()]
register_cfgs(CFGS)


def check_dfc_upsample(mode: str) -> str:
    if mode not in DFC_UPSAMPLE:
        raise ValueError(f"dfc_upsample must be one of {DFC_UPSAMPLE}, not {mode!r}")
    return mode
