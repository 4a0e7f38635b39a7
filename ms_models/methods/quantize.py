"""Post-training quantization of AdderNet (arXiv 2212.10200; official mindspore-ai/models
``research/cv/AdderQuant``): calibrate the adder layers' input ranges, quantize each layer (the shared NumPy
math of :mod:`specs.addernet`), re-estimate BN. Mirrors ``torch_ref/methods/quantize.py`` name for name."""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn
from tqdm import tqdm

from specs.addernet import calib_batch_max, check_bits, layer_quant

from ..context import in_execution_mode
from ..layers.adder import adder_layers
from ..layers.modes import refresh_graph


@in_execution_mode(ms.PYNATIVE_MODE)
def calibrate(model: nn.Cell, batches: Iterable[np.ndarray], progress: bool = True) -> dict[str, float]:
    """Running max over batches of each adder layer's outlier-clamped input range (official ``count_scale``;
    eval mode; forward pre-hooks, so it runs in PyNative); the per-batch rule is
    :func:`specs.addernet.calib_batch_max`."""
    ranges: dict[str, float] = {}

    def hook(name: str) -> Callable:
        def record(_cell, inputs):
            ranges[name] = max(ranges.get(name, -1000.0), calib_batch_max(inputs[0].asnumpy()))
        return record

    model.set_train(False)
    handles = [c.register_forward_pre_hook(hook(n)) for n, c in adder_layers(model).items()]
    try:
        for x in tqdm(batches, desc="calibrating", unit="batch", disable=not progress or None, leave=False):
            model(Tensor(np.asarray(x, np.float32)))
    finally:
        for h in handles:
            h.remove()
    return ranges


def reestimate_bn(model: nn.Cell, batches: Iterable[np.ndarray], progress: bool = True) -> None:
    """Re-estimate BN moving statistics in train mode (official ``adjust_BN``); ends in eval mode."""
    model.set_train(True)
    for x in tqdm(batches, desc="re-estimating BN", unit="batch", disable=not progress or None, leave=False):
        model(Tensor(np.asarray(x, np.float32)))
    model.set_train(False)


def quantize(model: nn.Cell, batches: Callable[[], Iterable[np.ndarray]], bits: int, groups: int,
             seed: int = 0, clamp: bool = True, progress: bool = True) -> dict[str, float]:
    """Post-training quantization of every adder layer (arXiv 2212.10200), same steps and shared NumPy math
    as ``torch_ref.methods.quantize.quantize``. Returns the calibrated input ranges."""
    check_bits(bits)
    ranges = calibrate(model, batches(), progress)
    if hasattr(model, "quant_groups"):         # the model-level record the converter reads
        model.quant_groups, model.quant_bits = groups, bits
    for name, layer in adder_layers(model).items():
        layer.set_quant(layer_quant(layer.adder.asnumpy(), ranges[name], bits, groups, seed, clamp), bits)
    refresh_graph(model)
    reestimate_bn(model, batches(), progress)
    return ranges
