"""``python -m convert quantize``: post-training quantization of an AdderNet checkpoint (arXiv 2212.10200).

Calibration data: ``digits`` (scikit-learn's handwritten digits, upsampled, for 32 px CIFAR-style models; the
default at input size 32) or ``synthetic`` (seeded Gaussian images; the default otherwise). See
:mod:`builtin_data`. The output holds the quantized model's state (torch names, or MindSpore names with
``framework='mindspore'``): each adder layer's quantized ``adder`` plus ``scale_para`` (G,), ``group`` (O,)
and ``qbias`` (O,), and the re-estimated BN statistics. Load it with
``convert.api.torch_model_from(name, OUT, quant_bits=BITS)`` (the group count is read off the file) or
``create_model(name, quant_groups=G, quant_bits=BITS, checkpoint=OUT)``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from specs import get_model_cfg
from specs.addernet import check_bits
from builtin_data import calibration_source
from specs.errors import ZooError

from .api import ms_state_of, ms_twin, torch_model_from, torch_state_of
from .io import write_checkpoint


def quantize_file(name: str, src: str | os.PathLike, dst: str | os.PathLike, bits: int, groups: int,
                  framework: str = "torch", calib_batches: int = 8, batch_size: int = 32,
                  source: str | None = None, seed: int = 0, progress: bool = True) -> Path:
    """Quantize the float AdderNet checkpoint ``src`` of model ``name`` and write ``dst`` atomically."""
    cfg = get_model_cfg(name)
    if cfg.family != "addernet":
        raise ZooError(f"{name} has no adder layers to quantize (family {cfg.family})")
    check_bits(bits)
    if groups < 1:
        raise ZooError(f"groups must be at least 1, got {groups}")
    if framework not in ("torch", "mindspore"):
        raise ZooError(f"framework must be torch or mindspore, not {framework!r}")
    size = cfg.input_size[-1]
    batches = calibration_source(source or ("digits" if size == 32 else "synthetic"), calib_batches, batch_size,
                                 size, cfg.mean, cfg.std, seed)
    model = torch_model_from(name, src)
    if getattr(model, "quant_groups", 0):
        raise ZooError(f"{src}: already quantized ({model.quant_groups} groups)")
    if framework == "torch":
        from torch_ref.methods.quantize import quantize
        quantize(model, batches, bits, groups, seed=seed, progress=progress)
        state = torch_state_of(model)
    else:
        import mindspore as ms
        from ms_models.methods.quantize import quantize
        mm = ms_twin(model, ms.PYNATIVE_MODE)
        quantize(mm, batches, bits, groups, seed=seed, progress=progress)
        state = ms_state_of(mm)
    return write_checkpoint({k: np.asarray(v) for k, v in state.items()}, dst)
