"""BiMLP variants (arXiv 2212.14158, NeurIPS 2022; official MindSpore code mindspore-ai/models
``research/cv/BiMLP/src/bimlp.py`` and ``src/quan_conv.py``, eval only, no published checkpoint).

BiMLP is a binarised Wave-MLP: the official ``WaveNet`` class with 1-bit XNOR weights and {-1, 0, +1}
activations in every 1x1 and strip convolution of the blocks (stem, downsamples and head stay full precision).
The variant table is the only place the depths and widths are written.
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping

from ._registry import ModelCfg, register_cfgs
from .param_groups import MATCH_PREV_GROUP, Matcher

PAPER = "2212.14158"
OFFICIAL_CODE = "mindspore-ai/models research/cv/BiMLP/src/bimlp.py, src/quan_conv.py"
ACT_BINARIZE = ("round", "sign")    # the code's Rint(clip(x, -1, 1)) (default) or the paper's sign(clip(x, -1, 1))
STRIP = 7                           # kernel length of the strip (1x7 / 7x1) binary convolutions
POOL_KERNELS = (2, 3, 5, 7)         # the downsample's four 'same' max-pools, stride 2
NO_CHECKPOINT = "no checkpoint is published (the official README: 'checkpoint can be produced in training process')"


def _arch(layers: tuple[int, ...], norm: str) -> dict:
    return dict(layers=layers, embed_dims=(64, 128, 320, 512), mlp_ratios=(4, 4, 4, 4), norm=norm)


def check_arch(embed_dims, mlp_ratios) -> None:
    """The official channel shortcuts only fit these widths: the token MLP's hidden width must be 4x its input
    (tiled shortcut), the reweighting MLP's input a multiple of 4 (4-way averaging shortcut)."""
    for dim, ratio in zip(embed_dims, mlp_ratios):
        if dim % 4 or int(dim * ratio) != 4 * dim:
            raise ValueError(f"BiMLP needs widths divisible by 4 and mlp_ratio 4, got dim {dim}, ratio {ratio}")


def infer_kwargs(shapes: Mapping[str, tuple]) -> dict:
    """Model kwargs a state dict (torch keys) implies: the number of classes."""
    return {"num_classes": int(shapes["head.weight"][0])} if "head.weight" in shapes else {}


# ``LearnableBias.bias`` (``move*``) and the PReLU slope ``RPReLU.act.w``: per-channel vectors stored (1, C, 1, 1)
_PER_CHANNEL = re.compile(r"(^|.*\.)(move[^.]*\.bias|act\.w)$")


def no_weight_decay(names: Iterable[str]) -> set[str]:
    """The per-channel shifts and PReLU slopes among ``names``: stored (1, C, 1, 1), so a 1-D rule misses them.
    There is no official training code (the MindSpore port is inference-only); they are excluded as the
    timm-style factory excludes the same kind of parameter stored 1-D (BN, biases)."""
    return {n for n in names if _PER_CHANNEL.match(n)}


def group_matcher(num_entries: int, coarse: bool = False) -> Matcher:
    """Stem ``patch_embed``, then the ``network`` entries (stage ``s`` at ``2s``, a ``Downsample`` at ``2s + 1``):
    one group per block (``network.2s.j``) and per Downsample, or (``coarse``) per stage with the Downsample
    that opens it; the final ``norm`` joins the last group (timm), ``head`` last."""
    if coarse:
        blocks = [(rf"^network\.{i}\.", ((i + 1) // 2,)) for i in range(num_entries)]
    else:
        blocks = [(r"^network\.(\d+)\.(\d+)\.", None), (r"^network\.(\d+)\.", None)]
    return dict(stem=r"^patch_embed\.", blocks=blocks + [(r"^norm\.", (MATCH_PREV_GROUP,))])


def _cfg(name: str, arch: dict, notes: str) -> ModelCfg:
    return ModelCfg(
        name=name, family="bimlp", arch=arch, paper=PAPER, official_code=OFFICIAL_CODE,
        test_input_size=(3, 64, 64), min_input_size=(3, 3, 3),
        crop_pct=0.875, interpolation="bilinear",          # official eval.py: Resize(256), CenterCrop(224)
        first_conv="patch_embed.proj", classifier=("head",), infer_kwargs=infer_kwargs,
        notes=f"{notes}; {NO_CHECKPOINT}")


CFGS = [
    _cfg("bimlp_s", _arch((2, 2, 4, 2), "batch"), "official BiMLP_S (BatchNorm outer norms)"),
    _cfg("bimlp_m", _arch((2, 3, 10, 3), "group"),
         "official BiMLP_M (GroupNorm(1, C) outer norms); official README: 71.56% ImageNet top-1"),
]
register_cfgs(CFGS)


NORMS = ("batch", "group")          # the outer norms: BatchNorm (BiMLP-S) or GroupNorm(1, C) (official ``MyNorm``)


def check_norm(kind: str) -> str:
    if kind not in NORMS:
        raise ValueError(f"norm must be 'batch' or 'group', not {kind!r}")
    return kind


def quantiser_kinks(mode: str) -> tuple[float, ...]:
    """Inputs where the activation quantiser's gradient steps (its straight-through clip, +-1) or its value does
    (+-0.5 when it rounds, 0 for the sign)."""
    return (-1.0, 1.0) + ((-0.5, 0.5) if check_act_binarize(mode) == "round" else (0.0,))


def check_act_binarize(mode: str) -> str:
    if mode not in ACT_BINARIZE:
        raise ValueError(f"act_binarize must be one of {', '.join(ACT_BINARIZE)}, not {mode!r}")
    return mode
