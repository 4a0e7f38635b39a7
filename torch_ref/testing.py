"""Deterministic, well-conditioned weights for tests and the demo (no downloads here).

Freshly initialised networks have identity BatchNorm statistics, so BN folding is trivial and deep
activations vanish; parity on such weights proves little. :func:`deterministic_weights` seeds the official
initialiser, draws non-trivial BN (and GroupNorm, LayerNorm) affine parameters, then re-estimates every BN's running statistics on
seeded random images, so each layer's output has a realistic scale.
"""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def deterministic_weights(model: nn.Module, seed: int = 0, input_size: int = 64, batches: int = 2,
                          batch_size: int = 4) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    norms = bns + [m for m in model.modules() if isinstance(m, (nn.GroupNorm, nn.LayerNorm))]
    for m in model.modules():
        for p in m.parameters(recurse=False):
            if m in norms:
                continue
            p.copy_(torch.randn(p.shape, generator=g) * 0.02 if p.dim() > 1 else torch.randn(p.shape, generator=g) * 0.01)
    for norm in norms:
        norm.weight.copy_(torch.rand(norm.weight.shape, generator=g) + 0.5)
        norm.bias.copy_(torch.randn(norm.bias.shape, generator=g) * 0.1)
    for m in model.modules():            # layers whose scalars act as scales/thresholds draw their own values
        if hasattr(m, "draw_test_values"):
            m.draw_test_values(g)
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None                  # cumulative average over the calibration batches
    model.train()
    for _ in range(batches):
        model(torch.randn(batch_size, 3, input_size, input_size, generator=g))
    for bn in bns:
        bn.momentum = 0.1
        bn.num_batches_tracked.fill_(0)
    return model.eval()
