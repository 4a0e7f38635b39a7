"""AdaBin binary ResNets (arXiv 2208.08084, ECCV 2022): variant table, cfgs and the temperature schedule.

Official PyTorch: huawei-noah/Efficient-Computing ``BinaryNetworks/AdaBin/`` (``cifar10/nets/resnet20.py``,
``cifar10/nets/resnet18.py``, ``imagenet/nets/resnet18.py``, ``imagenet/nets/resnet34.py``,
``*/utils/binarylib.py``, ``*/main.py``). Official MindSpore: mindspore-ai/models ``research/cv/AdaBin``
(CIFAR-10 ResNet-20, inference only). The temperature schedule lives here (plain Python/NumPy) so both
frameworks set bit-identical float32 ``t``/``k``.
"""
from __future__ import annotations

import math
import re
from typing import Mapping, Sequence

import numpy as np

from ._registry import IMAGENET_MEAN, IMAGENET_STD, ModelCfg, register_cfgs
from .param_groups import Matcher, resnet_matcher

PAPER = "2208.08084"
OFFICIAL_CODE = "huawei-noah/Efficient-Computing BinaryNetworks/AdaBin/{cifar10,imagenet}/nets, utils/binarylib.py"
CIFAR_CKPT = ("https://github.com/huawei-noah/Efficient-Computing/blob/master/BinaryNetworks/AdaBin/cifar10/"
              "checkpoints/resnet20_1w1a/model.th")
MS_CKPT = "https://download.mindspore.cn/models/r1.8/adabin_ascend_v180_cifar10_research_cv_acc88.15.ckpt"
REPO = "https://github.com/huawei-noah/Efficient-Computing/tree/master/BinaryNetworks/AdaBin"

T_MIN, T_MAX = 1e-3, 1e1        # official ``Log_UP`` bounds (cifar10/utils/utils.py, imagenet/main.py)
T_INIT, K_INIT = 0.1, 10.0      # ``AdaBin_Conv2d.__init__`` values, in force until the first ``set_epoch``


def temperature(epoch: int, epochs: int, t_min: float = T_MIN, t_max: float = T_MAX) -> tuple[np.float32, np.float32]:
    """(t, k) of the weight estimator at ``epoch`` of ``epochs`` (official ``Log_UP`` + main loop):
    ``t = float32(10 ** (log_min + (log_max - log_min) / epochs * epoch))`` with ``log_x = ln(x) / ln(10)``,
    ``k = 1 / t`` (float32 division) while ``t < 1``, else 1."""
    if epochs <= 0 or not 0 <= epoch <= epochs:
        raise ValueError(f"need 0 <= epoch <= epochs and epochs > 0, got epoch={epoch}, epochs={epochs}")
    lo, hi = math.log(t_min) / math.log(10), math.log(t_max) / math.log(10)
    t = np.float32(math.pow(10, lo + (hi - lo) / epochs * epoch))
    k = np.float32(1) / t if t < 1 else np.float32(1)
    return t, k


def group_matcher(coarse: bool = False) -> Matcher:
    """timm's ResNet groups with the stem Maxout: ``conv1``/``bn1``/``nonlinear1``, ``layer{i}[.{j}]``; the head
    (``bn2``, ``linear``/``fc``, the ImageNet nets' unused ``nonlinear2``/``bn3``) last."""
    return resnet_matcher(("conv1", "bn1", "nonlinear1"), coarse)


def infer_kwargs(shapes: Mapping[str, tuple]) -> dict:
    """Number of classes a state dict (torch keys) implies."""
    for head in ("linear.weight", "fc.weight"):
        if head in shapes:
            return {"num_classes": int(shapes[head][0])}
    return {}


# The official MindSpore CIFAR-10 ResNet-20 (mindspore-ai/models ``research/cv/AdaBin/src/resnet.py``, checkpoint
# ``adabin_ascend_v180_cifar10_research_cv_acc88.15.ckpt``) has our names; its ``Maxout`` scales are (1, C, 1, 1).
_BN = r"(gamma|beta|moving_mean|moving_variance)"
_OFFICIAL_MS = re.compile(rf"^(conv1\.weight|bn[12]\.{_BN}|nonlinear1\.(neg|pos)_scale|linear\.(weight|bias)|"
                          rf"layer\d\.\d+\.(conv[12]\.(weight|binary_a\.(alpha_a|beta_a))|bn[12]\.{_BN}|"
                          r"nonlinear[12]\.(neg|pos)_scale))$")
# the estimator temperatures: MindSpore Parameters, non-persistent buffers in torch (official state dicts lack them)
MS_ONLY_PARAMS = ("*.t", "*.k")


def official_ms_entry(key: str, value: np.ndarray) -> tuple[str, np.ndarray] | None:
    """One entry of the official MindSpore checkpoint (see above): same name, ``Maxout`` scales (1, C, 1, 1)
    -> our (C,); None if the layout has no such name. The temperatures ``t``/``k`` it lacks keep their
    initial values (:data:`MS_ONLY_PARAMS`)."""
    if not _OFFICIAL_MS.match(key):
        return None
    return key, value.reshape(-1) if key.endswith(("neg_scale", "pos_scale")) else value


def _arch(layers: tuple[int, ...], stem: str, shortcut: str, width: int, init: str) -> dict:
    return dict(layers=layers, stem=stem, shortcut=shortcut, width=width, init=init)


def _cfg(name: str, arch: dict, official: str, cifar: bool, notes: str = "", urls: tuple[str, ...] = (REPO,)) -> ModelCfg:
    return ModelCfg(
        name=name, family="adabin", arch=arch, paper=PAPER, official_code=f"{OFFICIAL_CODE} ({official})",
        urls=urls, input_size=(3, 32, 32) if cifar else (3, 224, 224),
        test_input_size=(3, 32, 32) if cifar else (3, 64, 64), min_input_size=(3, 8, 8) if cifar else (3, 32, 32),
        mean=IMAGENET_MEAN, std=IMAGENET_STD,              # the official CIFAR-10 main.py normalises with these too
        crop_pct=1.0 if cifar else 0.875, interpolation="bilinear", num_classes=10 if cifar else 1000,
        first_conv="conv1", classifier=("linear",) if cifar else ("fc",), infer_kwargs=infer_kwargs,
        official_ms_entry=official_ms_entry, ms_only_params=MS_ONLY_PARAMS, notes=notes)


CFGS = [
    _cfg("adabin_resnet20_cifar", _arch((3, 3, 3), "cifar", "A", 16, "he_in"), "resnet20_1w1a", True,
         "CIFAR-10 top-1 88.1% (README); MindSpore port 88.15%", (CIFAR_CKPT, MS_CKPT)),
    _cfg("adabin_resnet18_cifar", _arch((2, 2, 2, 2), "cifar", "conv", 64, "default"), "resnet18_1w1a", True),
    _cfg("adabin_resnet18", _arch((2, 2, 2, 2), "imagenet", "avg_down", 64, "he_out"), "imagenet resnet18_1w1a",
         False, "ImageNet top-1 63.1% (README); no checkpoint published"),
    _cfg("adabin_resnet34", _arch((3, 4, 6, 3), "imagenet", "avg_down", 64, "he_out"), "imagenet resnet34_1w1a",
         False, "ImageNet top-1 66.4% (README); no checkpoint published"),
]
register_cfgs(CFGS)


STEMS = ("cifar", "imagenet")
SHORTCUTS = ("A", "conv", "avg_down")


def check_arch(layers: Sequence[int], stem: str, shortcut: str) -> None:
    """The AdaBin ResNets the official code defines: a CIFAR or ImageNet stem, option-A / conv / avg-down
    shortcuts, 3 or 4 stages."""
    if stem not in STEMS or shortcut not in SHORTCUTS:
        raise ValueError(f"unknown AdaBin stem/shortcut {stem!r}/{shortcut!r}")
    if len(layers) not in (3, 4):
        raise ValueError(f"AdaBinResNet has 3 or 4 stages, got {len(layers)}")
