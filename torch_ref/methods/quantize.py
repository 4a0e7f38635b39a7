"""Post-training quantization of AdderNet (arXiv 2212.10200; official ``eval.py``): calibrate the adder layers'
input ranges, quantize each layer (the shared NumPy math of :mod:`specs.addernet`), re-estimate BN. Mirrors
``ms_models/methods/quantize.py`` name for name."""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from specs.addernet import calib_batch_max, check_bits, layer_quant

from ..layers.adder import adder_layers


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[np.ndarray], progress: bool = True) -> dict[str, float]:
    """Running max over batches of each adder layer's outlier-clamped input range (official ``count_scale``,
    model in eval mode); the per-batch rule is :func:`specs.addernet.calib_batch_max`."""
    ranges: dict[str, float] = {}

    def hook(name: str) -> Callable:
        def record(_m, inputs):
            ranges[name] = max(ranges.get(name, -1000.0), calib_batch_max(inputs[0].numpy()))
        return record

    model.eval()
    handles = [m.register_forward_pre_hook(hook(n)) for n, m in adder_layers(model).items()]
    try:
        for x in tqdm(batches, desc="calibrating", unit="batch", disable=not progress or None, leave=False):
            model(torch.from_numpy(np.asarray(x, np.float32)))
    finally:
        for h in handles:
            h.remove()
    return ranges


@torch.no_grad()
def reestimate_bn(model: nn.Module, batches: Iterable[np.ndarray], progress: bool = True) -> None:
    """Re-estimate BN running statistics in train mode (official ``adjust_BN``); ends in eval mode."""
    model.train()
    for x in tqdm(batches, desc="re-estimating BN", unit="batch", disable=not progress or None, leave=False):
        model(torch.from_numpy(np.asarray(x, np.float32)))
    model.eval()


def quantize(model: nn.Module, batches: Callable[[], Iterable[np.ndarray]], bits: int, groups: int,
             seed: int = 0, clamp: bool = True, progress: bool = True) -> dict[str, float]:
    """Post-training quantization of every adder layer (arXiv 2212.10200, official ``eval.py``): calibrate,
    k-means groups, scales + lossless clamp, quantize, re-estimate BN. ``batches()`` yields NumPy batches
    (called twice: calibration, BN). Returns the calibrated input ranges."""
    check_bits(bits)
    ranges = calibrate(model, batches(), progress)
    if hasattr(model, "quant_groups"):         # the model-level record the converter reads
        model.quant_groups, model.quant_bits = groups, bits
    for name, layer in adder_layers(model).items():
        layer.set_quant(layer_quant(layer.adder.detach().numpy(), ranges[name], bits, groups, seed, clamp), bits)
    reestimate_bn(model, batches(), progress)
    return ranges
