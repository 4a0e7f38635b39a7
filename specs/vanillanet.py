"""VanillaNet variants and schedules (arXiv 2305.12972; official huawei-noah/VanillaNet ``models/vanillanet.py``).

The variant table is the only place the widths and strides are written; both frameworks, the converter
and the tests read it from here.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from ._registry import ModelCfg, register_cfgs
from .param_groups import Matcher

PAPER = "2305.12972"
OFFICIAL_CODE = "huawei-noah/VanillaNet models/vanillanet.py"
URL = "https://github.com/huawei-noah/VanillaNet/releases/download/ckpt/{}.pth"
BN_EPS = 1e-6
ACT_NUM = 3          # the series-informed activation's kernel is (2 * ACT_NUM + 1) wide
DECAY_EPOCHS = 100   # official main.py ``--decay_epochs``: length of the deep-training decay

# depth -> (widths in units, pooling strides); units are 512 channels (x1.5 variants: 768)
_PLANS: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    5: ((1, 2, 4, 8), (2, 2, 2)),
    6: ((1, 2, 4, 8, 8), (2, 2, 2, 1)),
    7: ((1, 1, 2, 4, 8, 8), (1, 2, 2, 2, 1)),
    8: ((1, 1, 2, 4, 4, 8, 8), (1, 2, 2, 1, 2, 1)),
    9: ((1, 1, 2, 4, 4, 4, 8, 8), (1, 2, 2, 1, 1, 2, 1)),
    10: ((1, 1, 2, 4, 4, 4, 4, 8, 8), (1, 2, 2, 1, 1, 1, 2, 1)),
    11: ((1, 1, 2, 4, 4, 4, 4, 4, 8, 8), (1, 2, 2, 1, 1, 1, 1, 2, 1)),
    12: ((1, 1, 2, 4, 4, 4, 4, 4, 4, 8, 8), (1, 2, 2, 1, 1, 1, 1, 1, 2, 1)),
    13: ((1, 1, 2, 4, 4, 4, 4, 4, 4, 4, 8, 8), (1, 2, 2, 1, 1, 1, 1, 1, 1, 2, 1)),
}
_ADA_POOL_13 = (0, 38, 19, 0, 0, 0, 0, 0, 0, 10, 0)


def _arch(depth: int, unit: int = 512, ada_pool: tuple[int, ...] | None = None) -> dict:
    widths, strides = _PLANS[depth]
    return dict(dims=tuple(w * unit for w in widths), strides=strides, ada_pool=ada_pool)


def min_input_size(arch: Mapping) -> int:
    """Smallest square input every layer accepts: the stem's and pools' strides (or, with adaptive pools,
    the size at which the stem output is not smaller than the first adaptive pool)."""
    if arch.get("ada_pool"):
        first = max(arch["ada_pool"])
        return 3 * (first - 1) + 4 - 2      # stem: kernel 4, stride 3, padding 1
    return 4 * math.prod(arch["strides"])


def infer_kwargs(shapes: Mapping[str, tuple]) -> dict:
    """Model kwargs a state dict (torch key names) implies: deploy form and number of classes."""
    deploy = "stem.0.weight" in shapes
    head = "cls.2.weight" if deploy else "cls2.0.weight"
    out: dict = {"deploy": deploy}
    if head in shapes:
        out["num_classes"] = int(shapes[head][0])
    return out


def deep_training_lambda(epoch: int, decay_epochs: int = DECAY_EPOCHS, linear: bool = True) -> float:
    """The leaky-ReLU slope of the deep-training strategy at ``epoch`` (official ``main.py``).

    Linear (default) ``epoch / decay_epochs`` or cosine ``(1 - cos(pi * epoch / decay_epochs)) / 2``;
    1 (identity, mergeable) from ``decay_epochs`` on.
    """
    if decay_epochs <= 0 or epoch >= decay_epochs:
        return 1.0
    r = epoch / decay_epochs
    return r if linear else 0.5 * (1.0 - math.cos(math.pi * r))


# the deep-training slope: a MindSpore Parameter (read at run time in GRAPH_MODE), a Python float in torch
MS_ONLY_PARAMS = ("act_learn",)


def group_matcher(coarse: bool = False) -> Matcher:
    """Layer-decay groups of the official ``optim_factory.get_num_layer_for_vanillanet``: the stem (``stem1``,
    ``stem2``; deploy ``stem``), one group per ``stages.i``, the head (``cls*``) last. A stage is one block,
    so ``coarse`` groups the same way."""
    return dict(stem=r"^stem", blocks=r"^stages\.(\d+)\.")


def _cfg(name: str, arch: dict, notes: str = "") -> ModelCfg:
    m = min_input_size(arch)
    return ModelCfg(
        name=name, family="vanillanet", arch=arch, paper=PAPER, official_code=OFFICIAL_CODE,
        urls=(URL.format(name),), min_input_size=(3, m, m),
        test_input_size=(3, max(m, 64), max(m, 64)),
        first_conv="stem1.0", classifier=("cls1.2", "cls2.0"), notes=notes, infer_kwargs=infer_kwargs,
        ms_only_params=MS_ONLY_PARAMS)


CFGS = [_cfg(f"vanillanet_{d}", _arch(d)) for d in sorted(_PLANS)] + [
    _cfg("vanillanet_13_x1_5", _arch(13, unit=768)),
    _cfg("vanillanet_13_x1_5_ada_pool", _arch(13, unit=768, ada_pool=_ADA_POOL_13),
         notes="stem stride 3 / padding 1; adaptive max pools 75->38->19->10 at 224"),
]
register_cfgs(CFGS)


def check_arch(dims: Sequence[int], strides: Sequence[int]) -> None:
    """One width per stage boundary: ``dims`` has one entry more than ``strides``."""
    if len(dims) != len(strides) + 1:
        raise ValueError(f"dims needs one entry more than strides, got {len(dims)} and {len(strides)}")


def check_act_learn(m: float) -> float:
    """The deep-training leaky-ReLU slope (Sec. 3.1) lies in [0, 1]: 0 is ReLU, 1 the identity."""
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"the deep-training slope must lie in [0, 1], got {m}")
    return float(m)
