"""Small built-in image sources for calibration and the AdderNet demonstration (no downloads).

- ``digits``: scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), upsampled by nearest-neighbour
  repetition to ``size`` (a multiple of 8), grey copied to 3 channels, scaled to [0, 1] and normalised
  with the given mean/std;
- ``synthetic``: seeded Gaussian images (any size), for models without a matching built-in data set.
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np

from specs.errors import ZooError

SOURCES = ("digits", "synthetic")


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
