"""Relative position index of windowed attention, shared by Swin and BEiT (framework-free, NumPy).

Swin (arXiv 2103.14030 section 3.2; microsoft/Swin-Transformer ``models/swin_transformer.py``
``WindowAttention.__init__``) and BEiT (arXiv 2106.08254; microsoft/unilm ``beit/modeling_finetune.py``
``RelativePositionBias`` / ``Attention``, as Hao840/vanillaKD ``models/beit.py`` copies it) index a learned table of
``(2*Wh-1)*(2*Ww-1)`` biases (BEiT: plus 3 for the class token) with the same integer map, computed here once and
stored by both frameworks as the ``relative_position_index`` buffer (int64, as torch's).
"""
from __future__ import annotations

import numpy as np


def num_relative_distance(window: tuple[int, int], class_token: bool = False) -> int:
    """Rows of the bias table: ``(2*Wh-1)*(2*Ww-1)``, plus cls->token, token->cls and cls->cls with a class token."""
    wh, ww = window
    return (2 * wh - 1) * (2 * ww - 1) + (3 if class_token else 0)


def relative_position_index(window: tuple[int, int], class_token: bool = False) -> np.ndarray:
    """The (N, N) index of the official code, N = Wh*Ww (``(N+1, N+1)`` with a class token): coordinates in
    ``meshgrid(..., indexing='ij')`` order, the pairwise differences shifted to start at 0, the row offset scaled by
    ``2*Ww-1``; with a class token, the three extra table rows in the official order: row 0 (cls -> token) ``n-3``,
    column 0 (token -> cls) ``n-2``, the corner (cls -> cls) ``n-1``, for a table of ``n`` rows."""
    wh, ww = window
    coords = np.stack(np.meshgrid(np.arange(wh), np.arange(ww), indexing="ij")).reshape(2, -1)    # (2, N)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0)                          # (N, N, 2)
    index = (rel[..., 0] + wh - 1) * (2 * ww - 1) + (rel[..., 1] + ww - 1)
    if not class_token:
        return index.astype(np.int64)
    n = wh * ww
    total = num_relative_distance(window, class_token=True)
    out = np.zeros((n + 1, n + 1), np.int64)
    out[1:, 1:] = index
    out[0, 0:] = total - 3
    out[0:, 0] = total - 2
    out[0, 0] = total - 1
    return out
