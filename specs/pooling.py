"""Framework-free pooling and resampling geometry shared by both frameworks."""
from __future__ import annotations

import numpy as np

CUBIC_A = -0.75          # PyTorch's bicubic coefficient


def adaptive_bins(in_size: int, out_size: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling windows: ``[floor(i * in / out), ceil((i + 1) * in / out))`` for each i.

    Non-divisible sizes give overlapping windows of unequal length (75 -> 38: lengths 2 and 3).
    """
    return [((i * in_size) // out_size, -((-(i + 1) * in_size) // out_size)) for i in range(out_size)]


def nearest_indices(in_size: int, out_size: int) -> tuple[int, ...]:
    """Source index of each output position of PyTorch's legacy ``interpolate(mode='nearest')``:
    ``floor(i * in / out)`` (3 -> 7: 0, 0, 0, 1, 1, 2, 2).

    PyTorch computes ``floorf(i * (float)(in / out))``; the exact integer form here equals it whenever no
    ``i * in / out`` lands within float rounding of an integer it does not equal (true for the DFC sizes,
    ``out`` in ``(2 * in, 2 * in + 1)``, and checked against torch in the tests).
    """
    return tuple(min((i * in_size) // out_size, in_size - 1) for i in range(out_size))


def linear_taps(in_size: int, out_size: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[float, ...]]:
    """``align_corners=True`` linear resampling: output i reads ``(1 - w) * x[lo] + w * x[hi]`` at source
    position ``i * (in - 1) / (out - 1)`` (MindSpore 1.x ``ResizeBilinear`` / torch ``align_corners=True``)."""
    scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    lo, hi, w = [], [], []
    for i in range(out_size):
        src = i * scale
        a = min(int(src), in_size - 1)
        lo.append(a)
        hi.append(min(a + 1, in_size - 1))
        w.append(src - a)
    return tuple(lo), tuple(hi), tuple(w)


def _cubic_near(x, a: float):
    """Keys' cubic convolution kernel for ``0 <= x < 1``."""
    return ((a + 2) * x - (a + 3)) * x * x + 1


def _cubic_far(x, a: float):
    """Keys' cubic convolution kernel for ``1 <= x < 2``."""
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a


def cubic_weights(t):
    """The four tap weights of PyTorch's bicubic kernel (A = -0.75) at fractional offset ``t`` in [0, 1), for taps
    ``floor(src) - 1 .. floor(src) + 2``. Only ``+ - *``: evaluates on NumPy arrays (float64 references) and on
    framework tensors alike (MindSpore's graph-mode resize), so the kernel is written once."""
    a = CUBIC_A
    return _cubic_far(t + 1, a), _cubic_near(t, a), _cubic_near(1 - t, a), _cubic_far((1 - t) + 1, a)


def bicubic_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (n_out, 4) and weights (n_out, 4) of PyTorch's bicubic resize along one axis
    (``align_corners=False``: src = (dst + 0.5) * in / out - 0.5, no clamping of src; taps clamped to the border)."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    i0 = np.floor(src)
    w = np.stack(cubic_weights(src - i0), axis=1)
    idx = np.clip(i0[:, None].astype(np.int64) + np.arange(-1, 3)[None, :], 0, n_in - 1)
    return idx, w


AA_CUBIC_A = -0.5        # PyTorch's antialiased bicubic kernel (``aa_filter``, as PIL)


def bicubic_aa_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64 weights of PyTorch's ``interpolate(mode='bicubic', antialias=True,
    align_corners=False)`` along one axis (``UpSampleKernel.cpp`` ``_compute_indices_min_size_weights_aa``):
    output i is centred at ``c = (i + 0.5) * s`` (``s = in / out``) and reads inputs ``j`` in
    ``[max(int(c - support + 0.5), 0), min(int(c + support + 0.5), in))`` with weight ``k((j - c + 0.5) / max(s,
    1))`` of the A = -0.5 cubic kernel ``k``, the weights of each output normalised to sum 1; ``support = 2
    max(s, 1)``: downsampling widens the kernel (the anti-aliasing), upsampling keeps it but, unlike the plain
    bicubic resize, drops the taps beyond the border instead of clamping them."""
    scale = n_in / n_out
    support, inv = (2.0 * scale, 1.0 / scale) if scale >= 1.0 else (2.0, 1.0)
    out = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
        x = np.abs((np.arange(lo, hi) - center + 0.5) * inv)
        w = np.where(x < 1.0, _cubic_near(x, AA_CUBIC_A), np.where(x < 2.0, _cubic_far(x, AA_CUBIC_A), 0.0))
        out[i, lo:hi] = w / w.sum() if w.sum() != 0.0 else w
    return out
