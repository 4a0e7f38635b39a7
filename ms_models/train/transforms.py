"""Image transforms for training and evaluation with timm's semantics, as ``mindspore.dataset`` ops.

Eval (timm ``transforms_imagenet_eval``): MindSpore's ``ToPIL``, ``Resize(floor(size / crop_pct))`` (shorter
side), ``CenterCrop(size)``, ``ToTensor``, ``Normalize``. On PIL images MindSpore's ``Resize``/``CenterCrop`` run
Pillow, as torchvision does for timm, so the numbers equal timm's.

With ``data.train_resize`` both are CAN's ``resize_and_crop`` (SFDA-DE's loaders): a square bilinear
``Resize((r, r))``, then :class:`RandomCrop` (train) or ``CenterCrop`` (eval) of ``size``.

Train (timm ``transforms_imagenet_train``): :class:`RandomResizedCrop` (or :class:`RandomCropPad`, CIFAR style),
:class:`RandomHorizontalFlip`, :class:`RandAugment` / :class:`AutoAugment` / :class:`AugMix` from a timm string
(timm ``auto_augment.py``), :class:`ColorJitter` (off when an auto-augment policy other than ``3a`` is given, as in
timm), ``ToTensor``, ``Normalize``, :class:`RandomErasing` (timm ``random_erasing.py``), then :class:`Mixup` per batch
(timm ``mixup.py``). The random ops are :class:`RandomOp` s: their parameters are drawn from a
``numpy.random.Generator`` passed per image (:func:`apply_transforms`), so a pipeline's output is a function of
each image's seed only, whatever the number of workers. Where MindSpore's own random ops differ from timm's, and
why these are written here, is in ``docs/training_data.md``.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

import mindspore.dataset.vision as vision
from specs import ModelCfg
from specs.errors import DataError

_PIL_INTERP = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
               "bicubic": Image.Resampling.BICUBIC}
_MS_INTERP = {"nearest": vision.Inter.NEAREST, "bilinear": vision.Inter.BILINEAR, "bicubic": vision.Inter.BICUBIC}
_RANDOM_INTERP = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)     # timm's "random" interpolation


class RandomOp:
    """A random transform whose draws come from a ``numpy.random.Generator``: ``apply(x, rng)`` with a per-image
    generator (what the loader does), or ``op(x)`` with the op's own generator (seeded by ``seed``)."""

    def __init__(self, seed: int | None = None):
        self._rng = np.random.default_rng(seed)

    def __call__(self, x: Any) -> Any:
        return self.apply(x, self._rng)

    def apply(self, x: Any, rng: np.random.Generator) -> Any:
        raise NotImplementedError


def apply_transforms(ops: Sequence[Callable], image: Any, seed: int) -> Any:
    """``image`` through ``ops`` in order; every :class:`RandomOp` draws from one generator seeded by ``seed``."""
    rng = np.random.default_rng(seed)
    for op in ops:
        image = op.apply(image, rng) if isinstance(op, RandomOp) else op(image)
    return image


# --- geometry and colour (timm transforms.py, torchvision) -------------------------------------------------------

class RandomResizedCrop(RandomOp):
    """timm ``RandomResizedCropAndInterpolation``: area fraction uniform in ``scale``, log aspect ratio uniform in
    ``log(ratio)``, 10 attempts, then a centre crop clamped to ``ratio``; Pillow crop + resize to ``size``;
    ``interpolation="random"`` picks bilinear or bicubic per image."""

    def __init__(self, size: int, scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                 interpolation: str = "bilinear", seed: int | None = None):
        super().__init__(seed)
        self.size, self.scale, self.ratio = size, tuple(scale), tuple(ratio)
        self.interpolation = _RANDOM_INTERP if interpolation == "random" else _PIL_INTERP[interpolation]

    def get_params(self, width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the crop (timm ``get_params``)."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = rng.uniform(*self.scale) * area
            aspect = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if w <= width and h <= height:
                return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            h, w = height, int(round(height * max(self.ratio)))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def apply(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        top, left, h, w = self.get_params(*img.size, rng)
        interp = self.interpolation
        if isinstance(interp, tuple):
            interp = interp[rng.integers(len(interp))]
        return img.crop((left, top, left + w, top + h)).resize((self.size, self.size), interp)


class RandomCropPad(RandomOp):
    """torchvision ``RandomCrop(size, padding)``: zero padding on every side, then a uniformly placed crop.

    One addition: an image that is not ``size`` x ``size`` (a CIFAR recipe on another data set) is first fitted to
    it (``ImageOps.fit``: centre crop to a square, bilinear resize), where torchvision fails on a smaller image and
    crops a corner of a larger one."""

    def __init__(self, size: int, padding: int, seed: int | None = None):
        super().__init__(seed)
        self.size, self.padding = size, padding

    def apply(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        if img.size != (self.size, self.size):
            img = ImageOps.fit(img, (self.size, self.size), Image.Resampling.BILINEAR)
        img = ImageOps.expand(img, border=self.padding, fill=0)
        top = int(rng.integers(0, img.size[1] - self.size + 1))
        left = int(rng.integers(0, img.size[0] - self.size + 1))
        return img.crop((left, top, left + self.size, top + self.size))


class RandomCrop(RandomOp):
    """torchvision ``RandomCrop(size)`` of an image at least ``size`` on each side: a uniformly placed crop."""

    def __init__(self, size: int, seed: int | None = None):
        super().__init__(seed)
        self.size = size

    def apply(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        top = int(rng.integers(0, img.size[1] - self.size + 1))
        left = int(rng.integers(0, img.size[0] - self.size + 1))
        return img.crop((left, top, left + self.size, top + self.size))


class RandomHorizontalFlip(RandomOp):
    """torchvision ``RandomHorizontalFlip(p)``."""

    def __init__(self, p: float = 0.5, seed: int | None = None):
        super().__init__(seed)
        self.p = p

    def apply(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < self.p else img


class ColorJitter(RandomOp):
    """torchvision ``ColorJitter(brightness, contrast, saturation)`` as timm builds it from one ``color_jitter``
    value: factors uniform in ``[max(0, 1 - v), 1 + v]``, applied in a random order with Pillow ``ImageEnhance``."""

    def __init__(self, brightness: float, contrast: float, saturation: float, seed: int | None = None):
        super().__init__(seed)
        self.ranges = [(max(0.0, 1 - v), 1 + v) if v > 0 else None for v in (brightness, contrast, saturation)]

    def apply(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        order = rng.permutation(3)
        factors = [None if r is None else rng.uniform(*r) for r in self.ranges]
        enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
        for k in order:
            if factors[k] is not None:
                img = enhancers[k](img).enhance(factors[k])
        return img


# --- AutoAugment / RandAugment / AugMix (timm auto_augment.py) ----------------------------------------------------

_LEVEL_DENOM = 10.0


def _negate(v: float, rng: np.random.Generator) -> float:
    return -v if rng.random() > 0.5 else v


def _affine(img, matrix, kw):
    return img.transform(img.size, Image.Transform.AFFINE, matrix, resample=kw["resample"], fillcolor=kw["fillcolor"])


def _posterize(img, bits, **_):
    """Keep the ``bits`` high bits (Pillow >= 11 refuses 0 bits, which older Pillow, and so timm, turn black)."""
    if bits >= 8:
        return img
    mask = ~(2 ** (8 - bits) - 1) & 0xFF
    return img.point([i & mask for i in range(256)] * len(img.getbands()))


def _solarize_add(img, add, thresh=128, **_):
    lut = [min(255, i + add) if i < thresh else i for i in range(256)]
    return img.point(lut * len(img.getbands()))


_OPS: dict[str, Callable] = {
    "AutoContrast": lambda img, **_: ImageOps.autocontrast(img),
    "Equalize": lambda img, **_: ImageOps.equalize(img),
    "Invert": lambda img, **_: ImageOps.invert(img),
    "Rotate": lambda img, deg, **kw: img.rotate(deg, resample=kw["resample"], fillcolor=kw["fillcolor"]),
    "Posterize": _posterize,
    "Solarize": lambda img, thresh, **_: ImageOps.solarize(img, thresh),
    "SolarizeAdd": _solarize_add,
    "Color": lambda img, f, **_: ImageEnhance.Color(img).enhance(f),
    "Contrast": lambda img, f, **_: ImageEnhance.Contrast(img).enhance(f),
    "Brightness": lambda img, f, **_: ImageEnhance.Brightness(img).enhance(f),
    "Sharpness": lambda img, f, **_: ImageEnhance.Sharpness(img).enhance(f),
    "ShearX": lambda img, f, **kw: _affine(img, (1, f, 0, 0, 1, 0), kw),
    "ShearY": lambda img, f, **kw: _affine(img, (1, 0, 0, f, 1, 0), kw),
    "TranslateXRel": lambda img, pct, **kw: _affine(img, (1, 0, pct * img.size[0], 0, 1, 0), kw),
    "TranslateYRel": lambda img, pct, **kw: _affine(img, (1, 0, 0, 0, 1, pct * img.size[1]), kw),
    "Desaturate": lambda img, f, **_: ImageEnhance.Color(img).enhance(min(1.0, max(0.0, 1.0 - f))),
    "GaussianBlur": lambda img, r, **_: img.filter(ImageFilter.GaussianBlur(radius=r)),
    "GaussianBlurRand": lambda img, f, **kw: img.filter(ImageFilter.GaussianBlur(kw["rng"].uniform(0.1, 2.0 * f))),
}
for _base in ("Color", "Contrast", "Brightness", "Sharpness"):
    _OPS[_base + "Increasing"] = _OPS[_base]
_OPS["PosterizeIncreasing"] = _OPS["PosterizeOriginal"] = _OPS["Posterize"]
_OPS["SolarizeIncreasing"] = _OPS["Solarize"]


def _enhance(m, rng, hp):
    return m / _LEVEL_DENOM * 1.8 + 0.1


def _enhance_inc(m, rng, hp):
    return max(0.1, 1.0 + _negate(m / _LEVEL_DENOM * 0.9, rng))


def _posterize_bits(m, rng, hp):
    return int(m / _LEVEL_DENOM * 4)


def _solarize(m, rng, hp):
    return min(256, int(m / _LEVEL_DENOM * 256))


def _minmax(lo: float, hi: float) -> Callable:
    return lambda m, rng, hp: max(lo, min(hi, lo + (hi - lo) * m / _LEVEL_DENOM))


# magnitude (0..10) -> the op's argument (timm LEVEL_TO_ARG); None: the op takes no argument
_LEVEL: dict[str, Callable | None] = {
    "AutoContrast": None, "Equalize": None, "Invert": None,
    "Rotate": lambda m, rng, hp: _negate(m / _LEVEL_DENOM * 30.0, rng),
    "Posterize": _posterize_bits,
    "PosterizeIncreasing": lambda m, rng, hp: 4 - _posterize_bits(m, rng, hp),
    "PosterizeOriginal": lambda m, rng, hp: _posterize_bits(m, rng, hp) + 4,
    "Solarize": _solarize,
    "SolarizeIncreasing": lambda m, rng, hp: 256 - _solarize(m, rng, hp),
    "SolarizeAdd": lambda m, rng, hp: min(128, int(m / _LEVEL_DENOM * 110)),
    "Color": _enhance, "Contrast": _enhance, "Brightness": _enhance, "Sharpness": _enhance,
    "ColorIncreasing": _enhance_inc, "ContrastIncreasing": _enhance_inc, "BrightnessIncreasing": _enhance_inc,
    "SharpnessIncreasing": _enhance_inc,
    "ShearX": lambda m, rng, hp: _negate(m / _LEVEL_DENOM * 0.3, rng),
    "ShearY": lambda m, rng, hp: _negate(m / _LEVEL_DENOM * 0.3, rng),
    "TranslateXRel": lambda m, rng, hp: _negate(m / _LEVEL_DENOM * hp.get("translate_pct", 0.45), rng),
    "TranslateYRel": lambda m, rng, hp: _negate(m / _LEVEL_DENOM * hp.get("translate_pct", 0.45), rng),
    "Desaturate": _minmax(0.5, 1.0), "GaussianBlur": _minmax(0.1, 2.0), "GaussianBlurRand": _minmax(0.0, 1.0),
}


class AugmentOp:
    """timm ``AugmentOp``: applied with probability ``prob``; magnitude ``m`` with Gaussian noise ``mstd``
    (uniform in [0, m] when ``mstd`` is inf), clipped to [0, ``mmax`` or 10], mapped to the op's argument."""

    def __init__(self, name: str, prob: float, magnitude: float, hparams: dict):
        self.name, self.prob, self.magnitude, self.hparams = name, prob, magnitude, hparams
        self.fill = hparams.get("img_mean", (128, 128, 128))
        self.resample = hparams.get("interpolation", _RANDOM_INTERP)
        self.mstd = hparams.get("magnitude_std", 0.0)
        self.mmax = hparams.get("magnitude_max") or _LEVEL_DENOM

    def apply(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        if self.prob < 1.0 and rng.random() > self.prob:
            return img
        m = self.magnitude
        if self.mstd == float("inf"):
            m = rng.uniform(0, m)
        elif self.mstd > 0:
            m = rng.normal(m, self.mstd)
        m = max(0.0, min(m, self.mmax))
        level = _LEVEL[self.name]          # looked up by name: the op pickles into dataset worker processes
        args = () if level is None else (level(m, rng, self.hparams),)
        resample = self.resample
        if isinstance(resample, tuple):
            resample = resample[rng.integers(len(resample))]
        return _OPS[self.name](img, *args, resample=resample, fillcolor=self.fill, rng=rng)

    def __repr__(self) -> str:
        return f"AugmentOp({self.name}, p={self.prob}, m={self.magnitude}, mstd={self.mstd})"


_RAND = ["AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color", "Contrast",
         "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"]
_RAND_INC = ["AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
             "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
             "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"]
_RAND_CHOICES: dict[str, Any] = {
    "3a": ["SolarizeIncreasing", "Desaturate", "GaussianBlur"],
    "weights": {"Rotate": 3, "ShearX": 2, "ShearY": 2, "TranslateXRel": 1, "TranslateYRel": 1, "ColorIncreasing": .25,
                "SharpnessIncreasing": .25, "AutoContrast": .25, "SolarizeIncreasing": .05, "SolarizeAdd": .05,
                "ContrastIncreasing": .05, "BrightnessIncreasing": .05, "Equalize": .05, "PosterizeIncreasing": .05,
                "Invert": .05},
    "3aw": {"SolarizeIncreasing": 6, "Desaturate": 6, "GaussianBlur": 6, "Rotate": 3, "ShearX": 2, "ShearY": 2,
            "PosterizeIncreasing": 1, "AutoContrast": 1, "ColorIncreasing": 1, "SharpnessIncreasing": 1,
            "ContrastIncreasing": 1, "BrightnessIncreasing": 1, "Equalize": 1, "Invert": 1},
}
_AUGMIX = ["AutoContrast", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
           "Equalize", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "ShearX", "ShearY", "TranslateXRel",
           "TranslateYRel"]

# AutoAugment ImageNet sub-policies (timm auto_augment_policy_*): (op, probability, magnitude) pairs
_V0 = [[("Equalize", 0.8, 1), ("ShearY", 0.8, 4)], [("Color", 0.4, 9), ("Equalize", 0.6, 3)],
       [("Color", 0.4, 1), ("Rotate", 0.6, 8)], [("Solarize", 0.8, 3), ("Equalize", 0.4, 7)],
       [("Solarize", 0.4, 2), ("Solarize", 0.6, 2)], [("Color", 0.2, 0), ("Equalize", 0.8, 8)],
       [("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)], [("ShearX", 0.2, 9), ("Rotate", 0.6, 8)],
       [("Color", 0.6, 1), ("Equalize", 1.0, 2)], [("Invert", 0.4, 9), ("Rotate", 0.6, 0)],
       [("Equalize", 1.0, 9), ("ShearY", 0.6, 3)], [("Color", 0.4, 7), ("Equalize", 0.6, 0)],
       [("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)], [("Solarize", 0.6, 8), ("Color", 0.6, 9)],
       [("Solarize", 0.2, 4), ("Rotate", 0.8, 9)], [("Rotate", 1.0, 7), ("TranslateYRel", 0.8, 9)],
       [("ShearX", 0.0, 0), ("Solarize", 0.8, 4)], [("ShearY", 0.8, 0), ("Color", 0.6, 4)],
       [("Color", 1.0, 0), ("Rotate", 0.6, 2)], [("Equalize", 0.8, 4), ("Equalize", 0.0, 8)],
       [("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)], [("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)],
       [("Posterize", 0.8, 2), ("Solarize", 0.6, 10)], [("Solarize", 0.6, 8), ("Equalize", 0.6, 1)],
       [("Color", 0.8, 6), ("Rotate", 0.4, 5)]]
_ORIGINAL = [[("PosterizeOriginal", 0.4, 8), ("Rotate", 0.6, 9)], [("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)],
             [("Equalize", 0.8, 8), ("Equalize", 0.6, 3)],
             [("PosterizeOriginal", 0.6, 7), ("PosterizeOriginal", 0.6, 6)],
             [("Equalize", 0.4, 7), ("Solarize", 0.2, 4)], [("Equalize", 0.4, 4), ("Rotate", 0.8, 8)],
             [("Solarize", 0.6, 3), ("Equalize", 0.6, 7)], [("PosterizeOriginal", 0.8, 5), ("Equalize", 1.0, 2)],
             [("Rotate", 0.2, 3), ("Solarize", 0.6, 8)], [("Equalize", 0.6, 8), ("PosterizeOriginal", 0.4, 6)],
             [("Rotate", 0.8, 8), ("Color", 0.4, 0)], [("Rotate", 0.4, 9), ("Equalize", 0.6, 2)],
             [("Equalize", 0.0, 7), ("Equalize", 0.8, 8)], [("Invert", 0.6, 4), ("Equalize", 1.0, 8)],
             [("Color", 0.6, 4), ("Contrast", 1.0, 8)], [("Rotate", 0.8, 8), ("Color", 1.0, 2)],
             [("Color", 0.8, 8), ("Solarize", 0.8, 7)], [("Sharpness", 0.4, 7), ("Invert", 0.6, 8)],
             [("ShearX", 0.6, 5), ("Equalize", 1.0, 9)], [("Color", 0.4, 0), ("Equalize", 0.6, 3)],
             [("Equalize", 0.4, 7), ("Solarize", 0.2, 4)], [("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)],
             [("Invert", 0.6, 4), ("Equalize", 1.0, 8)], [("Color", 0.6, 4), ("Contrast", 1.0, 8)],
             [("Equalize", 0.8, 8), ("Equalize", 0.6, 3)]]


def _research_posterize(policy: list, name: str) -> list:
    return [[("PosterizeIncreasing" if op == name else op, p, m) for op, p, m in sub] for sub in policy]


_AA_POLICIES = {"v0": _V0, "v0r": _research_posterize(_V0, "Posterize"), "original": _ORIGINAL,
                "originalr": _research_posterize(_ORIGINAL, "PosterizeOriginal"),
                "3a": [[("Solarize", 1.0, 5)], [("Desaturate", 1.0, 10)], [("GaussianBlurRand", 1.0, 10)]]}


class RandAugment(RandomOp):
    """timm ``RandAugment``: ``num_layers`` ops chosen uniformly with replacement (or by weight, without), each
    an :class:`AugmentOp` applied with its probability (0.5 by default)."""

    def __init__(self, ops: list[AugmentOp], num_layers: int = 2, choice_weights: np.ndarray | None = None,
                 seed: int | None = None):
        super().__init__(seed)
        self.ops, self.num_layers, self.choice_weights = ops, num_layers, choice_weights

    def apply(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        chosen = rng.choice(len(self.ops), self.num_layers, replace=self.choice_weights is None, p=self.choice_weights)
        for k in chosen:
            img = self.ops[k].apply(img, rng)
        return img


class AutoAugment(RandomOp):
    """timm ``AutoAugment``: one sub-policy chosen uniformly per image, its ops applied in order."""

    def __init__(self, policy: list[list[AugmentOp]], seed: int | None = None):
        super().__init__(seed)
        self.policy = policy

    def apply(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        for op in self.policy[rng.integers(len(self.policy))]:
            img = op.apply(img, rng)
        return img


class AugMix(RandomOp):
    """timm ``AugMixAugment`` (basic mode): Dirichlet-weighted chains of 1-3 ops blended with a Beta weight.
    (timm's ``blended`` variant, ``-b1``, is not provided.)"""

    def __init__(self, ops: list[AugmentOp], alpha: float = 1.0, width: int = 3, depth: int = -1,
                 seed: int | None = None):
        super().__init__(seed)
        self.ops, self.alpha, self.width, self.depth = ops, alpha, width, depth

    def apply(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        weights = np.float32(rng.dirichlet([self.alpha] * self.width))
        m = np.float32(rng.beta(self.alpha, self.alpha))
        mixed = np.zeros((img.size[1], img.size[0], len(img.getbands())), np.float32)
        for w in weights:
            depth = self.depth if self.depth > 0 else int(rng.integers(1, 4))
            aug = img
            for k in rng.choice(len(self.ops), depth, replace=True):
                aug = self.ops[k].apply(aug, rng)
            mixed += w * np.asarray(aug, dtype=np.float32)
        mixed = Image.fromarray(np.clip(mixed, 0, 255).astype(np.uint8))
        return Image.blend(img, mixed, float(m))


def _sections(text: str, allowed: Sequence[str]) -> dict[str, str]:
    """The ``key<number>`` sections after the policy name (``t<name>``: a transform set), checked against
    ``allowed``."""
    out = {}
    for part in text.split("-")[1:]:
        if part.startswith("t") and "t" in allowed:
            out["t"] = part[1:]
            continue
        match = re.fullmatch(r"([a-z]+)(\d.*)", part)
        if match is None or match.group(1) not in allowed:
            raise DataError(f"data.auto_augment {text!r}: unknown section {part!r} (allowed: {', '.join(allowed)})")
        out[match.group(1)] = match.group(2)
    return out


def auto_augment_transform(text: str, image_size: int, mean: Sequence[float], interpolation: str) -> RandomOp:
    """The transform a timm auto-augment string names (timm ``rand_augment_transform`` /
    ``auto_augment_transform`` / ``augment_and_mix_transform`` with the hparams of ``transforms_imagenet_train``:
    translate_const = 0.45 * size, fill = the mean colour, the train interpolation unless "random")."""
    hparams: dict[str, Any] = {"translate_const": int(image_size * 0.45),
                               "img_mean": tuple(min(255, round(255 * x)) for x in mean)}
    if interpolation != "random":
        hparams["interpolation"] = _PIL_INTERP[interpolation]
    policy = text.split("-")[0]
    try:
        if policy == "rand":
            s = _sections(text, ("m", "n", "p", "mstd", "mmax", "inc", "t"))
            mstd = float(s.get("mstd", 0))
            hparams["magnitude_std"] = float("inf") if mstd > 100 else mstd
            if "mmax" in s:
                hparams["magnitude_max"] = int(s["mmax"])
            increasing = bool(int(s.get("inc", 0)))
            names: Any = _RAND_CHOICES.get(s["t"]) if "t" in s else None
            if "t" in s and names is None:
                raise DataError(f"data.auto_augment {text!r}: unknown transform set {s['t']!r} "
                                f"(known: {', '.join(_RAND_CHOICES)})")
            names = names or (_RAND_INC if increasing else _RAND)
            weights = None
            if isinstance(names, dict):
                names, weights = list(names), np.array(list(names.values()), np.float64)
                weights = weights / weights.sum()
            ops = [AugmentOp(n, float(s.get("p", 0.5)), int(s.get("m", 10)), hparams) for n in names]
            return RandAugment(ops, int(s.get("n", 2)), weights)
        if policy == "augmix":
            s = _sections(text, ("m", "w", "d", "a", "mstd"))
            hparams["translate_pct"] = 0.3
            hparams["magnitude_std"] = float(s.get("mstd", "inf"))
            ops = [AugmentOp(n, 1.0, int(s.get("m", 3)), hparams) for n in _AUGMIX]
            return AugMix(ops, float(s.get("a", 1.0)), int(s.get("w", 3)), int(s.get("d", -1)))
        if policy in _AA_POLICIES:
            s = _sections(text, ("mstd",))
            hparams["magnitude_std"] = float(s.get("mstd", 0))
            return AutoAugment([[AugmentOp(n, p, m, hparams) for n, p, m in sub] for sub in _AA_POLICIES[policy]])
    except ValueError as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"data.auto_augment {text!r}: {exc}") from None
    raise DataError(f"data.auto_augment {text!r}: unknown policy {policy!r} "
                    f"(rand, augmix, {', '.join(_AA_POLICIES)})")


# --- after normalisation: random erasing (timm random_erasing.py) ------------------------------------------------

class RandomErasing(RandomOp):
    """timm ``RandomErasing`` on a normalised CHW float image: with probability ``probability``, ``count`` boxes
    (uniform in [min_count, max_count]), each of area uniform in [min_area, max_area] * area / count and log aspect
    uniform in log([min_aspect, 1 / min_aspect]), 10 attempts each; filled per pixel with N(0, 1) ("pixel"),
    one N(0, 1) colour per box ("rand") or zeros ("const")."""

    def __init__(self, probability: float = 0.5, min_area: float = 0.02, max_area: float = 1 / 3,
                 min_aspect: float = 0.3, max_aspect: float | None = None, mode: str = "const", min_count: int = 1,
                 max_count: int | None = None, seed: int | None = None):
        super().__init__(seed)
        self.probability, self.min_area, self.max_area = probability, min_area, max_area
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect or 1 / min_aspect))
        self.min_count, self.max_count = min_count, max_count or min_count
        if mode not in ("pixel", "rand", "const"):
            raise DataError(f"random erasing mode must be pixel, rand or const, got {mode!r}")
        self.mode = mode

    def boxes(self, chw_shape: Sequence[int], rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
        """The (top, left, h, w) boxes one call erases (timm ``_erase``'s sampling)."""
        if rng.random() > self.probability:
            return []
        _, img_h, img_w = chw_shape
        area = img_h * img_w
        count = self.min_count if self.min_count == self.max_count else int(rng.integers(self.min_count,
                                                                                         self.max_count + 1))
        out = []
        for _ in range(count):
            for _attempt in range(10):
                target_area = rng.uniform(self.min_area, self.max_area) * area / count
                aspect = math.exp(rng.uniform(*self.log_aspect))
                h = int(round(math.sqrt(target_area * aspect)))
                w = int(round(math.sqrt(target_area / aspect)))
                if w < img_w and h < img_h:
                    out.append((int(rng.integers(0, img_h - h + 1)), int(rng.integers(0, img_w - w + 1)), h, w))
                    break
        return out

    def apply(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        img = np.array(img, dtype=np.float32, copy=True)
        chans = img.shape[0]
        for top, left, h, w in self.boxes(img.shape, rng):
            if self.mode == "pixel":
                fill = rng.standard_normal((chans, h, w), dtype=np.float32)
            elif self.mode == "rand":
                fill = rng.standard_normal((chans, 1, 1), dtype=np.float32)
            else:
                fill = np.float32(0)
            img[:, top:top + h, left:left + w] = fill
        return img


# --- per batch: Mixup / CutMix (timm mixup.py) -------------------------------------------------------------------

def mixup_target(labels: np.ndarray, num_classes: int, lam: float | np.ndarray = 1.0,
                 smoothing: float = 0.0) -> np.ndarray:
    """timm ``mixup_target``: smoothed one-hots (``1 - smoothing + smoothing / C`` on, ``smoothing / C`` off) of the
    labels and of the labels reversed, mixed as ``lam * y + (1 - lam) * y_reversed``; float32 (B, C)."""
    off = smoothing / num_classes
    eye = np.full((len(labels), num_classes), off, np.float64)
    y1 = eye.copy()
    y1[np.arange(len(labels)), labels] = 1.0 - smoothing + off
    y2 = y1[::-1]
    lam = np.reshape(np.asarray(lam, np.float64), (-1, 1))
    return (y1 * lam + y2 * (1.0 - lam)).astype(np.float32)


def rand_bbox(img_hw: tuple[int, int], lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """timm ``rand_bbox``: a box of side ``sqrt(1 - lam)`` times the image's, centred uniformly, clipped."""
    ratio = math.sqrt(1 - lam)
    img_h, img_w = img_hw
    cut_h, cut_w = int(img_h * ratio), int(img_w * ratio)
    cy, cx = int(rng.integers(0, img_h)), int(rng.integers(0, img_w))
    return (int(np.clip(cy - cut_h // 2, 0, img_h)), int(np.clip(cy + cut_h // 2, 0, img_h)),
            int(np.clip(cx - cut_w // 2, 0, img_w)), int(np.clip(cx + cut_w // 2, 0, img_w)))


def rand_bbox_minmax(img_hw: tuple[int, int], minmax: Sequence[float], rng: np.random.Generator
                     ) -> tuple[int, int, int, int]:
    """timm ``rand_bbox_minmax``: box sides uniform in [min, max) of the image's, placed uniformly."""
    img_h, img_w = img_hw
    cut_h = int(rng.integers(int(img_h * minmax[0]), int(img_h * minmax[1])))
    cut_w = int(rng.integers(int(img_w * minmax[0]), int(img_w * minmax[1])))
    yl, xl = int(rng.integers(0, img_h - cut_h)), int(rng.integers(0, img_w - cut_w))
    return yl, yl + cut_h, xl, xl + cut_w


class Mixup:
    """timm ``Mixup`` on numpy batches: ``mixup(images (B,C,H,W), labels (B,)) -> (mixed images, soft targets
    (B, num_classes) float32)``. Per ``mode`` ("batch": one lambda per batch; "pair": per pair (i, B-1-i); "elem":
    per image), with probability ``prob`` Mixup (lambda ~ Beta(mixup_alpha)) or, with ``switch_prob`` when both are
    on, CutMix (lambda ~ Beta(cutmix_alpha); the box pasted from the reversed batch; lambda then corrected to
    1 - box area / image area, always when ``cutmix_minmax`` is set). Targets: :func:`mixup_target` with
    ``label_smoothing``. Draws from its own generator (``seed``), or from ``rng`` per call."""

    def __init__(self, mixup_alpha: float = 1.0, cutmix_alpha: float = 0.0,
                 cutmix_minmax: Sequence[float] | None = None, prob: float = 1.0, switch_prob: float = 0.5,
                 mode: str = "batch", correct_lam: bool = True, label_smoothing: float = 0.1,
                 num_classes: int = 1000, seed: int | None = None):
        self.mixup_alpha, self.cutmix_alpha, self.cutmix_minmax = mixup_alpha, cutmix_alpha, cutmix_minmax
        if cutmix_minmax is not None:
            if len(cutmix_minmax) != 2:
                raise DataError(f"cutmix_minmax must be a (min, max) pair, got {cutmix_minmax!r}")
            self.cutmix_alpha = 1.0           # timm: cutmix_minmax forces CutMix on
        if mode not in ("batch", "pair", "elem"):
            raise DataError(f"mixup mode must be batch, pair or elem, got {mode!r}")
        if self.mixup_alpha <= 0 and self.cutmix_alpha <= 0:
            raise DataError("Mixup needs mixup_alpha > 0 or cutmix_alpha > 0 (or cutmix_minmax)")
        self.prob, self.switch_prob, self.mode, self.correct_lam = prob, switch_prob, mode, correct_lam
        self.label_smoothing, self.num_classes = label_smoothing, num_classes
        self._rng = np.random.default_rng(seed)

    def _cutmix_box(self, hw: tuple[int, int], lam: float, rng: np.random.Generator
                    ) -> tuple[tuple[int, int, int, int], float]:
        """timm ``cutmix_bbox_and_lam``."""
        box = rand_bbox_minmax(hw, self.cutmix_minmax, rng) if self.cutmix_minmax is not None else \
            rand_bbox(hw, lam, rng)
        if self.correct_lam or self.cutmix_minmax is not None:
            yl, yh, xl, xh = box
            lam = 1.0 - (yh - yl) * (xh - xl) / float(hw[0] * hw[1])
        return box, lam

    def _params_per_batch(self, rng: np.random.Generator) -> tuple[float, bool]:
        lam, use_cutmix = 1.0, False
        if rng.random() < self.prob:
            if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
                use_cutmix = bool(rng.random() < self.switch_prob)
                alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
                lam = float(rng.beta(alpha, alpha))
            elif self.mixup_alpha > 0:
                lam = float(rng.beta(self.mixup_alpha, self.mixup_alpha))
            else:
                use_cutmix, lam = True, float(rng.beta(self.cutmix_alpha, self.cutmix_alpha))
        return lam, use_cutmix

    def _params_per_elem(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        lam = np.ones(n, np.float32)
        use_cutmix = np.zeros(n, bool)
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = rng.random(n) < self.switch_prob
            lam_mix = np.where(use_cutmix, rng.beta(self.cutmix_alpha, self.cutmix_alpha, size=n),
                               rng.beta(self.mixup_alpha, self.mixup_alpha, size=n))
        elif self.mixup_alpha > 0:
            lam_mix = rng.beta(self.mixup_alpha, self.mixup_alpha, size=n)
        else:
            use_cutmix = np.ones(n, bool)
            lam_mix = rng.beta(self.cutmix_alpha, self.cutmix_alpha, size=n)
        lam = np.where(rng.random(n) < self.prob, lam_mix.astype(np.float32), lam)
        return lam, use_cutmix

    def _mix_pairs(self, x: np.ndarray, rng: np.random.Generator, pairs_only: bool) -> np.ndarray:
        """timm ``_mix_elem`` (every i mixed with B-1-i) / ``_mix_pair`` (both of a pair mixed with one lambda)."""
        n = len(x)
        lam_batch, use_cutmix = self._params_per_elem(n // 2 if pairs_only else n, rng)
        orig = x.copy()
        for i in range(len(lam_batch)):
            j = n - i - 1
            lam = float(lam_batch[i])
            if lam == 1.0:
                continue
            if use_cutmix[i]:
                (yl, yh, xl, xh), lam = self._cutmix_box(x.shape[-2:], lam, rng)
                x[i, :, yl:yh, xl:xh] = orig[j, :, yl:yh, xl:xh]
                if pairs_only:
                    x[j, :, yl:yh, xl:xh] = orig[i, :, yl:yh, xl:xh]
                lam_batch[i] = lam
            else:
                x[i] = orig[i] * lam + orig[j] * (1 - lam)
                if pairs_only:
                    x[j] = orig[j] * lam + orig[i] * (1 - lam)
        return np.concatenate([lam_batch, lam_batch[::-1]]) if pairs_only else lam_batch

    def __call__(self, images: np.ndarray, labels: np.ndarray, rng: np.random.Generator | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        rng = self._rng if rng is None else rng
        if len(images) % 2:
            raise DataError(f"Mixup/CutMix needs an even batch size, got {len(images)}")
        x = np.array(images, dtype=np.float32, copy=True)
        if self.mode == "batch":
            lam, use_cutmix = self._params_per_batch(rng)
            if lam != 1.0:
                if use_cutmix:
                    (yl, yh, xl, xh), lam = self._cutmix_box(x.shape[-2:], lam, rng)
                    x[:, :, yl:yh, xl:xh] = x[::-1, :, yl:yh, xl:xh]
                else:
                    x = x * np.float32(lam) + x[::-1] * np.float32(1.0 - lam)
        else:
            lam = self._mix_pairs(x, rng, pairs_only=self.mode == "pair")
        return x, mixup_target(np.asarray(labels), self.num_classes, lam, self.label_smoothing)


def create_mixup(data_cfg: Any, num_classes: int, seed: int | None = None) -> Mixup:
    """A :class:`Mixup` from the ``data`` section (timm train.py's arguments)."""
    return Mixup(mixup_alpha=data_cfg.mixup, cutmix_alpha=data_cfg.cutmix, cutmix_minmax=data_cfg.cutmix_minmax,
                 prob=data_cfg.mixup_prob, switch_prob=data_cfg.mixup_switch_prob, mode=data_cfg.mixup_mode,
                 label_smoothing=data_cfg.smoothing, num_classes=num_classes, seed=seed)


# --- the factory -------------------------------------------------------------------------------------------------

def _norm(data_cfg: Any, model_cfg: ModelCfg) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean = tuple(data_cfg.mean) if data_cfg.mean is not None else tuple(model_cfg.mean)
    std = tuple(data_cfg.std) if data_cfg.std is not None else tuple(model_cfg.std)
    return mean, std


def create_transforms(data_cfg: Any, model_cfg: ModelCfg, is_training: bool) -> list:
    """The per-image ops (HWC uint8 image in, normalised CHW float32 out) for ``data_cfg.image_size``: timm's
    ``transforms_imagenet_eval`` / ``transforms_imagenet_train`` (module docstring). ``data_cfg.mean``, ``std``
    and ``crop_pct`` override the model cfg's when set; eval uses the model cfg's interpolation, train
    ``data_cfg.interpolation``. Run them with :func:`apply_transforms` (or a MindSpore ``map`` when there is no
    :class:`RandomOp`)."""
    size = data_cfg.image_size
    mean, std = _norm(data_cfg, model_cfg)
    tail = [vision.ToTensor(), vision.Normalize(list(mean), list(std), is_hwc=False)]
    square = data_cfg.train_resize
    if not is_training:
        if square is not None:          # CAN's resize_and_crop test transform
            return [vision.ToPIL(), vision.Resize((square, square), vision.Inter.BILINEAR), vision.CenterCrop(size),
                    *tail]
        crop_pct = data_cfg.crop_pct if data_cfg.crop_pct is not None else model_cfg.crop_pct
        interp = _MS_INTERP.get(model_cfg.interpolation, vision.Inter.BICUBIC)
        return [vision.ToPIL(), vision.Resize(int(math.floor(size / crop_pct)), interp), vision.CenterCrop(size),
                *tail]
    ops: list = [vision.ToPIL()]
    if square is not None:
        ops += [vision.Resize((square, square), vision.Inter.BILINEAR), RandomCrop(size)]
    elif data_cfg.random_crop_padding is not None:
        ops.append(RandomCropPad(size, data_cfg.random_crop_padding))
    else:
        ops.append(RandomResizedCrop(size, data_cfg.scale, data_cfg.ratio, data_cfg.interpolation))
    if data_cfg.hflip > 0:
        ops.append(RandomHorizontalFlip(data_cfg.hflip))
    aa = data_cfg.auto_augment
    if aa:
        ops.append(auto_augment_transform(aa, size, mean, data_cfg.interpolation))
    if data_cfg.color_jitter > 0 and (not aa or "3a" in aa):
        ops.append(ColorJitter(*(data_cfg.color_jitter,) * 3))
    ops += tail
    if data_cfg.reprob > 0:
        ops.append(RandomErasing(data_cfg.reprob, mode=data_cfg.remode, max_count=data_cfg.recount))
    return ops
