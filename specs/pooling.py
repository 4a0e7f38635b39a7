"""Framework-free pooling geometry shared by both frameworks."""
from __future__ import annotations


def adaptive_bins(in_size: int, out_size: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling windows: ``[floor(i * in / out), ceil((i + 1) * in / out))`` for each i.

    Non-divisible sizes give overlapping windows of unequal length (75 -> 38: lengths 2 and 3).
    """
    return [((i * in_size) // out_size, -((-(i + 1) * in_size) // out_size)) for i in range(out_size)]
