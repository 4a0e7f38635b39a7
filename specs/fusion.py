"""Re-parameterisation math on NumPy arrays, shared by both frameworks' ``switch_to_deploy``.

The formulas and their order of operations follow VanillaNet's official ``_fuse_bn_tensor`` and
``switch_to_deploy`` (huawei-noah/VanillaNet ``models/vanillanet.py``), in float32 like the original.
"""
from __future__ import annotations

import numpy as np


def fold_bn(weight: np.ndarray, bias: np.ndarray | None, gamma: np.ndarray, beta: np.ndarray,
            mean: np.ndarray, var: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Fold an eval-mode BatchNorm into the conv before it: ``(W * g/std, beta + (b - mean) * g / std)``."""
    std = np.sqrt(var + np.float32(eps))
    t = (gamma / std).reshape(-1, 1, 1, 1)
    b = np.zeros_like(mean) if bias is None else bias
    return weight * t, beta + (b - mean) * gamma / std


def merge_1x1(w_first: np.ndarray, b_first: np.ndarray, w_second: np.ndarray,
              b_second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One conv equal to ``conv_second(conv_first(x))`` where ``conv_second`` is 1x1 with no padding.

    ``W[o, i] = sum_k W2[o, k] W1[k, i]`` and ``b[o] = b2[o] + sum_k W2[o, k] b1[k]``; exact (up to float
    rounding) because nothing non-linear sits between the two convs once the leaky-ReLU slope is 1.
    """
    out_ch, mid = w_second.shape[:2]
    w2 = w_second.reshape(out_ch, mid)
    w = (w2 @ w_first.reshape(mid, -1)).reshape((out_ch,) + w_first.shape[1:])
    b = b_second + (b_first.reshape(1, -1) * w2).sum(1)
    return w.astype(np.float32), b.astype(np.float32)
