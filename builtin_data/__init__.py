"""Small built-in image sources for calibration and the AdderNet demonstration (no downloads).

- ``digits``: scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), upsampled by nearest-neighbour
  repetition to ``size`` (a multiple of 8), grey copied to 3 channels, scaled to [0, 1] and normalised
  with the given mean/std;
- ``synthetic``: seeded Gaussian images (any size), for models without a matching built-in data set.

For training (``ms_models.train.data``, ``data.dir: builtin:<name>``) the same sources come as uint8 HWC images,
so that the ImageFolder transforms apply unchanged: :func:`digits_images` (any size), :func:`digits_shifted_images`
(the same digits rendered otherwise: the target domain of the SFDA-DE demonstration) and :func:`shapes_images`
(procedural colour images, 10 classes), split into train/val by :func:`stratified_split` with a fixed seed.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Iterator, Sequence

import numpy as np

from specs.errors import ZooError

SOURCES = ("digits", "synthetic")
DIGIT_CLASSES = tuple(str(i) for i in range(10))
SHAPE_CLASSES = ("circle", "square", "triangle", "ring", "cross", "star", "hexagon", "stripes", "checker", "dots")
SHAPES_SIZE = 64                 # the resolution shapes_images draws at (loaders resize to their image size)


def digits(size: int = 32, mean: Sequence[float] = (0.5,) * 3, std: Sequence[float] = (0.5,) * 3
           ) -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as float32 (N, 3, size, size) and int64 labels."""
    from sklearn.datasets import load_digits
    if size % 8:
        raise ZooError(f"digits are upsampled from 8x8 by an integer factor: size must be a multiple of 8, got {size}")
    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0).repeat(size // 8, 1).repeat(size // 8, 2)
    x = np.repeat(x[:, None], 3, axis=1)
    x = (x - np.float32(mean).reshape(1, 3, 1, 1)) / np.float32(std).reshape(1, 3, 1, 1)
    return x.astype(np.float32), d.target.astype(np.int64)


def calibration_source(source: str, num_batches: int, batch_size: int, size: int,
                       mean: Sequence[float], std: Sequence[float], seed: int = 0
                       ) -> Callable[[], Iterator[np.ndarray]]:
    """A re-iterable source of ``num_batches`` float32 batches (the quantizer iterates it twice)."""
    if num_batches < 1 or batch_size < 1:
        raise ZooError(f"need at least one calibration batch of at least one image, got {num_batches} x {batch_size}")
    if source == "digits":
        x, _ = digits(size, mean, std)
        order = np.random.RandomState(seed).permutation(len(x))
        x = x[order]
        if num_batches * batch_size > len(x):
            raise ZooError(f"digits has {len(x)} images, {num_batches} x {batch_size} requested")
        return lambda: (x[i * batch_size:(i + 1) * batch_size] for i in range(num_batches))
    if source == "synthetic":
        def gen() -> Iterator[np.ndarray]:
            r = np.random.RandomState(seed)
            for _ in range(num_batches):
                yield r.randn(batch_size, 3, size, size).astype(np.float32)
        return gen
    raise ZooError(f"unknown calibration source {source!r}; use one of {', '.join(SOURCES)}")


# --- uint8 HWC sources for training -----------------------------------------------------------------------------

def digits_images(size: int) -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as uint8 (N, size, size, 3) (0..16 scaled to 0..255, nearest-neighbour upsampling: pixel
    repetition when ``size`` is a multiple of 8) and int64 labels."""
    from PIL import Image
    from sklearn.datasets import load_digits
    d = load_digits()
    grey = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    if size % 8 == 0:
        up = grey.repeat(size // 8, 1).repeat(size // 8, 2)
    else:
        up = np.stack([np.asarray(Image.fromarray(g).resize((size, size), Image.Resampling.NEAREST)) for g in grey])
    return np.repeat(up[..., None], 3, axis=3), d.target.astype(np.int64)


@functools.lru_cache(maxsize=2)
def digits_shifted_images(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The 1797 digits of :func:`digits_images` rendered as another domain (a distribution shift for source-free
    domain adaptation, as MNIST -> MNIST-M is): bilinear instead of pixel-repeat upsampling (smooth strokes), each
    digit rotated by a seeded angle in [-20, 20] degrees, its strokes drawn in a random bright colour over a random
    dark colour with Gaussian pixel noise (sd 12). uint8 (N, size, size, 3), int64 labels; seeded; cached (about
    0.5 s at 32 px)."""
    from PIL import Image
    from sklearn.datasets import load_digits
    d = load_digits()
    rng = np.random.default_rng(seed)
    images = np.empty((len(d.images), size, size, 3), np.uint8)
    for i, digit in enumerate(d.images):
        grey = Image.fromarray((digit * (255.0 / 16.0)).astype(np.float32), mode="F")
        grey = grey.resize((size, size), Image.Resampling.BILINEAR).rotate(rng.uniform(-20, 20),
                                                                         Image.Resampling.BILINEAR)
        ink = (np.asarray(grey, np.float32) / 255.0).clip(0, 1)[..., None]
        fg, bg = rng.uniform(150, 255, 3), rng.uniform(0, 90, 3)
        img = bg + (fg - bg) * ink + 12 * rng.standard_normal((size, size, 3))
        images[i] = np.round(img).clip(0, 255).astype(np.uint8)
    return images, d.target.astype(np.int64)


def _polygon(n: int, cx: float, cy: float, r: float, angle: float, inner: float | None = None) -> list:
    """Vertices of a regular ``n``-gon (or an ``n``-pointed star with inner radius ``inner * r``)."""
    pts = []
    steps = 2 * n if inner else n
    for k in range(steps):
        rad = r * (inner if inner and k % 2 else 1.0)
        a = angle + 2 * math.pi * k / steps
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _shape_mask(cls: int, rng: np.random.Generator, s: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Coverage in [0, 1] of class ``cls`` drawn at ``s`` px (a random size, position and rotation)."""
    from PIL import Image, ImageDraw
    r = rng.uniform(0.14, 0.32) * s
    cx, cy = rng.uniform(r, s - r), rng.uniform(r, s - r)
    angle = rng.uniform(0, 2 * math.pi)
    if cls >= 7:                  # textures fill a rotated rectangular patch
        half_w, half_h = r * rng.uniform(1.0, 1.5), r * rng.uniform(1.0, 1.5)
        u = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
        v = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
        patch = (np.abs(u) <= half_w) & (np.abs(v) <= half_h)
        period = rng.uniform(0.07, 0.14) * s
        if cls == 7:
            texture = np.sin(2 * math.pi * u / period) > 0
        elif cls == 8:
            texture = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
        else:
            du, dv = (u / period) % 1 - 0.5, (v / period) % 1 - 0.5
            texture = du * du + dv * dv < 0.09
        return (patch & texture).astype(np.float32)
    if cls in (0, 3):
        d2 = (xx - cx) ** 2 + (yy - cy) ** 2
        inside = d2 <= r * r
        return (inside & (d2 >= (0.55 * r) ** 2) if cls == 3 else inside).astype(np.float32)
    if cls == 4:
        u = np.abs((xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle))
        v = np.abs(-(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle))
        w = 0.3 * r
        return (((u <= r) & (v <= w)) | ((u <= w) & (v <= r))).astype(np.float32)
    points = {1: _polygon(4, cx, cy, r * 1.2, angle), 2: _polygon(3, cx, cy, r * 1.25, angle),
              5: _polygon(5, cx, cy, r * 1.25, angle, inner=0.45), 6: _polygon(6, cx, cy, r, angle)}[cls]
    mask = Image.new("L", (s, s), 0)
    ImageDraw.Draw(mask).polygon(points, fill=255)
    return np.asarray(mask, dtype=np.float32) / 255.0


def _background(rng: np.random.Generator, s: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A solid colour, a linear gradient between two colours, or coloured noise, float (s, s, 3) in 0..255."""
    kind = rng.integers(3)
    c0 = rng.uniform(0, 255, 3).astype(np.float32)
    if kind == 0:
        return np.broadcast_to(c0, (s, s, 3))
    if kind == 1:
        a = rng.uniform(0, 2 * math.pi)
        t = ((xx * math.cos(a) + yy * math.sin(a)) / (s * 1.5) + 0.5).clip(0, 1)[..., None]
        return c0 * (1 - t) + rng.uniform(0, 255, 3).astype(np.float32) * t
    return (c0 + 30 * rng.standard_normal((s, s, 3), dtype=np.float32)).clip(0, 255)


@functools.lru_cache(maxsize=2)
def shapes_images(per_class: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Procedural colour images: ``10 * per_class`` uint8 (N, 64, 64, 3) images and int64 labels
    (:data:`SHAPE_CLASSES`: seven filled shapes and three textured patches), each of a random size, position,
    rotation and colour on a random background (solid, gradient or noise), with pixel noise. Drawn at twice the
    size and averaged down (anti-aliased edges); seeded; cached (about 1 s for the default 3000 images)."""
    rng = np.random.default_rng(seed)
    s = 2 * SHAPES_SIZE
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    labels = np.repeat(np.arange(len(SHAPE_CLASSES)), per_class)
    images = np.empty((len(labels), SHAPES_SIZE, SHAPES_SIZE, 3), np.uint8)
    for i, cls in enumerate(labels):
        bg = _background(rng, s, yy, xx)
        bg_mean, fg = bg[::16, ::16].mean((0, 1)), rng.uniform(0, 255, 3)
        while np.abs(fg - bg_mean).sum() < 150:        # keep the foreground visible
            fg = rng.uniform(0, 255, 3)
        m = _shape_mask(int(cls), rng, s, yy, xx)[..., None]
        img = bg + (fg.astype(np.float32) - bg) * m
        img = (0.25 * (img[0::2, 0::2] + img[1::2, 0::2] + img[0::2, 1::2] + img[1::2, 1::2])
               + 4 * rng.standard_normal((SHAPES_SIZE, SHAPES_SIZE, 3), dtype=np.float32))
        images[i] = np.round(img).clip(0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


def stratified_split(labels: np.ndarray, val_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train indices, val indices): per class, ``round(val_fraction * count)`` images chosen by a seeded
    permutation go to val."""
    rng = np.random.default_rng(seed)
    val = []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        val.append(rng.permutation(idx)[:int(round(val_fraction * len(idx)))])
    val = np.sort(np.concatenate(val))
    return np.setdiff1d(np.arange(len(labels)), val), val
