"""AdderNet ResNets (arXiv 1912.13200) and their post-training quantization (arXiv 2212.10200).

Model cfgs follow huawei-noah/AdderNet ``resnet20.py`` / ``resnet50.py``. The quantization math follows
mindspore-ai/models ``research/cv/AdderQuant/adder_quant.py`` (``QAdder2dKmeansGroupShare``) and ``eval.py``;
it lives here, on NumPy, so that both frameworks compute the same groups, scales, clamped weights and biases
from the same inputs. Only the activation quantizer runs inside the frameworks (same op order in both).

Differences from the official quantization code, all documented in the functions below:
- the official ``construct`` returns after the first group (the ``concat``/``return`` lines are indented
  inside the group loop); here every group's output is used (the intended concatenation);
- k-means is a seeded 1-D k-means++ in NumPy (the official code calls scikit-learn's unseeded ``KMeans``),
  groups are numbered by ascending centre;
- weights are quantized once at quantization time (the official code re-quantizes them every forward; same
  values).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ._registry import ModelCfg, register_cfgs
from .errors import ZooError
from .param_groups import Matcher, resnet_matcher

PAPER = "1912.13200"
QUANT_PAPER = "2212.10200"
OFFICIAL_CODE = "huawei-noah/AdderNet adder.py, resnet20.py, resnet50.py"
QUANT_CODE = "mindspore-ai/models research/cv/AdderQuant/adder_quant.py, eval.py"
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)        # AdderQuant eval.py normalisation
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
URLS = ("https://drive.google.com/drive/folders/11ZdIst5Vwqx9Y5zHhirfaI94_7RhcBZH",
        "https://download.mindspore.cn/model_zoo/research/cv/AdderQuant/")

GRAD_ETA = 0.2                  # adaptive learning-rate scaling of the weight gradient, eta (official 1/5)
CALIB_PERCENTILE = 0.9997       # official ``a_select_range``
MIN_ACT_RANGE = 1e-3            # official ``set_para`` floor
SUPPORTED_BITS = (4, 5, 6, 8)


def _arch(cifar: bool, layers: Sequence[int], width: int = 16) -> dict:
    return dict(layers=tuple(layers), cifar_stem=cifar, width=width)


def infer_kwargs(shapes: Mapping[str, tuple]) -> dict:
    """Model kwargs a state dict (torch keys) implies: number of classes and quantization groups."""
    out: dict = {}
    if "fc.weight" in shapes:
        out["num_classes"] = int(shapes["fc.weight"][0])
    groups = [v[0] for k, v in shapes.items() if k.endswith(".scale_para")]
    if groups:
        out["quant_groups"] = int(groups[0])
    return out


# The official MindSpore AdderQuant ResNet-20 (research/cv/AdderQuant/adder_quant.py) saves per adder layer a
# copy ``adder_new`` and a placeholder ``scale_para`` next to ``adder``; optimizer state may come along too.
_ADDERQUANT_EXTRA = (".adder_new", ".scale_para")
_OPTIMIZER_KEYS = ("learning_rate", "global_step", "momentum")


def checkpoint_filter(state: Mapping[str, np.ndarray], model=None) -> dict[str, np.ndarray]:
    """A state in the official MindSpore AdderQuant layout with its extra entries dropped (float weights are
    ``adder``; ``adder_new``/``scale_para`` are only filled by its quantization step); other states unchanged.
    The model loaded into plays no part."""
    if not any(k.endswith(".adder_new") for k in state):
        return dict(state)
    return {k: v for k, v in state.items() if not k.endswith(_ADDERQUANT_EXTRA)
            and not k.startswith(("moments.", "accum.")) and k not in _OPTIMIZER_KEYS}


def group_matcher(coarse: bool = False) -> Matcher:
    """timm's ResNet groups: stem ``conv1``/``bn1``, ``layer{i}[.{j}]``; the head (``fc``, ``bn2``) last."""
    return resnet_matcher(("conv1", "bn1"), coarse)


def _cfg(name: str, arch: dict, cifar: bool) -> ModelCfg:
    size = (3, 32, 32) if cifar else (3, 224, 224)
    return ModelCfg(
        name=name, family="addernet", arch=arch, paper=PAPER, official_code=OFFICIAL_CODE, urls=URLS,
        input_size=size, test_input_size=(3, 32, 32), min_input_size=(3, 8, 8) if cifar else (3, 32, 32),
        mean=CIFAR10_MEAN if cifar else (0.485, 0.456, 0.406), std=CIFAR10_STD if cifar else (0.229, 0.224, 0.225),
        crop_pct=1.0 if cifar else 0.875, interpolation="bilinear", num_classes=10 if cifar else 1000,
        first_conv="conv1", classifier=("fc",), infer_kwargs=infer_kwargs, checkpoint_filter=checkpoint_filter,
        notes=f"post-training quantization: arXiv {QUANT_PAPER} ({QUANT_CODE})")


CFGS = [
    _cfg("adder_resnet20", _arch(True, (3, 3, 3)), True),
    _cfg("adder_resnet50", _arch(False, (3, 4, 6, 3), 64), False),
]
register_cfgs(CFGS)


# ---------------------------------------------------------------- calibration
def calib_index(n: int, q: float = CALIB_PERCENTILE) -> int:
    """Index into ``sort(|x|)`` of the outlier-clamped maximum (official ``a_select_len``):
    ``int((round(n * q) - 1) * q)``, about the 99.94th percentile for q = 0.9997."""
    return int((round(n * q) - 1) * q)


def calib_batch_max(x: np.ndarray, q: float = CALIB_PERCENTILE) -> float:
    """Outlier-clamped max of ``|x|`` over one batch: the ``calib_index``-th smallest absolute value."""
    a = np.abs(np.asarray(x, dtype=np.float32)).ravel()
    if a.size == 0:
        raise ZooError("calibration got an empty activation tensor")
    k = calib_index(a.size, q)
    return float(np.partition(a, k)[k])


# ---------------------------------------------------------------- k-means grouping
def kmeans_1d(values: np.ndarray, k: int, seed: int = 0, max_iter: int = 300, tol: float = 1e-4) -> np.ndarray:
    """Seeded k-means++ on scalars; returns labels 0..k-1 numbered by ascending centre.

    Same algorithm and stopping rule as scikit-learn's ``KMeans(init='k-means++', max_iter=300, tol=1e-4)``
    that the official ``cluster_by_kmeans`` calls (tol relative to the data variance), but deterministic
    and in float64. An empty cluster takes the point farthest from its centre.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if not 1 <= k <= v.size:
        raise ZooError(f"cannot split {v.size} output channels into {k} groups")
    rng = np.random.default_rng(seed)
    centres = [v[rng.integers(v.size)]]
    for _ in range(1, k):
        d2 = np.min((v[:, None] - np.array(centres)[None]) ** 2, axis=1)
        total = d2.sum()
        centres.append(v[rng.choice(v.size, p=d2 / total)] if total > 0 else v[rng.integers(v.size)])
    c = np.array(centres)
    thresh = tol * v.var()
    for _ in range(max_iter):
        labels = np.argmin(np.abs(v[:, None] - c[None]), axis=1)
        new = c.copy()
        for j in range(k):
            members = v[labels == j]
            if members.size:
                new[j] = members.mean()
            else:
                far = np.argmax(np.abs(v - c[labels]))
                new[j], labels[far] = v[far], j
        shift = ((new - c) ** 2).sum()
        c = new
        if shift <= thresh:
            break
    labels = np.argmin(np.abs(v[:, None] - c[None]), axis=1)
    rank = np.argsort(np.argsort(c, kind="stable"), kind="stable")
    return rank[labels].astype(np.int64)


def kernel_feature(weight: np.ndarray) -> np.ndarray:
    """Clustering feature of each output kernel: ``max_j |W[o, j]|`` (official ``w_max``)."""
    w = np.asarray(weight, dtype=np.float32)
    return np.abs(w.reshape(w.shape[0], -1)).max(axis=1)


# ---------------------------------------------------------------- quantization parameters
@dataclass
class LayerQuant:
    """The quantized state of one adder layer: what both frameworks load into their ``Adder2d``."""

    weight: np.ndarray      # quantized (dequantized) weights on the grid 2 s / (2^b - 1), float32 (O, C, k, k)
    scale: np.ndarray       # per-group shared scale s_g, float32 (G,)
    group: np.ndarray       # group of each output channel, int64 (O,)
    bias: np.ndarray        # compensating bias of the lossless clamp, float32 (O,) (0 where nothing clamped)


def check_bits(bits: int) -> int:
    if bits not in SUPPORTED_BITS:
        raise ZooError(f"bits must be one of {', '.join(map(str, SUPPORTED_BITS))}, got {bits}")
    return bits


def clamp_weights(weight: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray]:
    """The lossless weight range clamp: ``(clamp(W, -s, s), -sum_j max(|W[o, j]| - s, 0))``.

    For inputs ``0 <= x <= s``: ``|x - w| = |x - clamp(w)| + (|w| - s)`` whenever ``|w| > s``, so the adder
    output is unchanged once the bias is added (paper Sec. 4.2; official ``set_para``).
    """
    w = np.asarray(weight, dtype=np.float32)
    s32 = np.float32(s)
    over = np.maximum(np.abs(w) - s32, np.float32(0))
    bias = -over.reshape(w.shape[0], -1).sum(axis=1, dtype=np.float32)
    return np.clip(w, -s32, s32), bias.astype(np.float32)


def quantize_weight(weight: np.ndarray, scale: np.ndarray | float, bits: int) -> np.ndarray:
    """Symmetric weight quantizer on the shared grid (official order of operations, float32):
    ``clamp(round(w * (2^b - 1) / s / 2), -2^(b-1), 2^(b-1) - 1) * 2 * s / (2^b - 1)``; round is half to
    even like MindSpore's ``Round`` on CPU and ``torch.round``. ``scale`` broadcasts over output channels."""
    w = np.asarray(weight, dtype=np.float32)
    s = np.asarray(scale, dtype=np.float32).reshape((-1,) + (1,) * (w.ndim - 1)) if np.ndim(scale) else np.float32(scale)
    m = np.float32(2.0 ** bits - 1)
    q = np.clip(np.round(w * m / s / np.float32(2)), -2.0 ** (bits - 1), 2.0 ** (bits - 1) - 1).astype(np.float32)
    return (q * np.float32(2) * s / m).astype(np.float32)


def quantize_act(x: np.ndarray, scale: float, bits: int) -> np.ndarray:
    """Unsigned activation quantizer, step ``s / (2^b - 1)`` = half the weight step (NumPy reference of the
    in-framework ``Adder2d`` code): ``clamp(round(x * (2^b - 1) / s), 0, 2^b - 1) * s / (2^b - 1)``."""
    m = np.float32(2.0 ** bits - 1)
    s = np.float32(scale)
    return (np.clip(np.round(np.asarray(x, np.float32) * m / s), 0, m) * s / m).astype(np.float32)


def layer_quant(weight: np.ndarray, act_range: float, bits: int, groups: int, seed: int = 0,
                clamp: bool = True) -> LayerQuant:
    """Groups, scales, clamp and weight quantization of one adder layer (official ``cluster_by_kmeans`` +
    ``set_para``): per group, ``s_g = act_range`` with the lossless clamp if ``max|W_g| > act_range``,
    else ``s_g = max|W_g|``. ``clamp=False`` is the prior single-shared-scale method used as a baseline:
    ``s_g = max(max|W_g|, act_range)`` and no clamp."""
    check_bits(bits)
    w = np.asarray(weight, dtype=np.float32)
    a = max(float(act_range), MIN_ACT_RANGE)
    group = kmeans_1d(kernel_feature(w), groups, seed) if groups > 1 else np.zeros(w.shape[0], np.int64)
    out = w.copy()
    bias = np.zeros(w.shape[0], np.float32)
    scale = np.zeros(groups, np.float32)
    for g in range(groups):
        idx = np.flatnonzero(group == g)
        wmax = float(np.abs(w[idx]).max())
        if clamp and wmax > np.float32(a):
            scale[g] = a
            out[idx], bias[idx] = clamp_weights(w[idx], scale[g])
        else:
            scale[g] = max(wmax, a) if not clamp else wmax
    scale = np.maximum(scale, np.float32(1e-12))        # an all-zero group would divide by zero
    return LayerQuant(quantize_weight(out, scale[group], bits), scale, group, bias)


def check_arch(layers: Sequence[int]) -> None:
    """The adder ResNets of the official code have 3 (CIFAR) or 4 (ImageNet) stages."""
    if len(layers) not in (3, 4):
        raise ValueError(f"AdderResNet has 3 or 4 stages, got {len(layers)}")
